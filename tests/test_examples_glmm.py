"""The GLMM examples run end to end at a small size (so they never rot)."""

from __future__ import annotations

import numpy as np
from conftest import load_example


# Compiling the GLMM and the GLM takes ~20 s on an idle 2-core CPU (was ~30-60 s before
# the GLMM speed work), so the example runs with the default suite.
def test_ab_test(tmp_path, capsys):
    example = load_example("ab_test")
    out = tmp_path / "ab.png"
    table = example.main(n_users=150, out=out)
    printed = capsys.readouterr().out
    assert "GLM (sessions independent)" in printed and "understates" in printed
    assert list(table.columns) == ["estimate", "std_error", "p_value", "ci_low", "ci_high"]
    glm, glmm = table.iloc[0], table.iloc[1]
    # Ignoring the clustering of sessions within users understates the uncertainty.
    assert glm["std_error"] < glmm["std_error"]
    assert table.attrs["glmm_converged"]
    assert table.attrs["se_ratio"] > 1.2
    assert np.all((table["ci_low"] < table["estimate"]) & (table["estimate"] < table["ci_high"]))
    assert 0 < table.attrs["sigma_user"] < 3
    assert table.attrs["plot_path"] == out and out.stat().st_size > 1000


def test_population_averaged_effect_is_attenuated():
    example = load_example("ab_test")
    effect = example.population_averaged_effect()
    assert 0 < effect < example.TREATMENT_EFFECT
    # The usual approximation β/√(1 + 0.346σ²) lands close to the exact value.
    approx = example.TREATMENT_EFFECT / np.sqrt(1 + 0.346 * example.SIGMA_USER**2)
    assert abs(effect - approx) < 0.01
