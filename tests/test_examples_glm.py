"""The GLM example runs end to end at a small size (so it never rots)."""

from __future__ import annotations

import numpy as np
from conftest import load_example


def test_customer_conversion(tmp_path, capsys):
    example = load_example("customer_conversion")
    out = tmp_path / "roc.png"
    result = example.main(n=3000, out=out)
    assert out.stat().st_size > 1000
    assert result["roc_path"] == out
    printed = capsys.readouterr().out
    for piece in ["Odds ratios", "Confusion matrix", "AUC"]:
        assert piece in printed
    odds = result["odds_ratios"]
    # The true odds ratios lie inside the 95% intervals (up to one miss of six).
    inside = (odds["2.5 %"] <= odds["true"]) & (odds["true"] <= odds["97.5 %"])
    assert inside.sum() >= 5
    assert 0.6 < result["auc"] < 0.85
    assert np.isclose(result["confusion"].to_numpy().sum(), 3000)
