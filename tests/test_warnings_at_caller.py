"""Warnings name the user's line (this file), whichever path reached them, and the
command line states a singular fit once."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd

import glmmjax
from glmmjax._cli import main


def _caught(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return caught


def _assert_here(caught, category):
    hits = [w for w in caught if issubclass(w.category, category)]
    assert hits, [str(w.message) for w in caught]
    for w in hits:
        assert w.filename == __file__, (w.filename, w.lineno, str(w.message))


def test_singular_fit_warning_points_at_the_caller():
    data = glmmjax.datasets.load("dyestuff2")
    _assert_here(_caught(lambda: glmmjax.lmer("Yield ~ 1 + (1 | Batch)", data)),
                 glmmjax.SingularFitWarning)
    model = glmmjax.MixedModel.from_formula("Yield ~ 1 + (1 | Batch)", data)
    _assert_here(_caught(model.fit), glmmjax.SingularFitWarning)


def test_separation_warning_points_at_the_caller():
    frame = pd.DataFrame({"x": np.arange(10.0), "y": [0] * 5 + [1] * 5})
    _assert_here(_caught(lambda: glmmjax.glm("y ~ x", frame, family="binomial")),
                 glmmjax.SeparationWarning)


def test_cli_states_a_singular_fit_once(tmp_path, capsys):
    path = tmp_path / "dyestuff2.csv"
    glmmjax.datasets.load("dyestuff2").to_csv(path, index=False)
    assert main(["fit", "Yield ~ 1 + (1 | Batch)", "--data", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("boundary (singular) fit") == 1
    assert "singular" not in captured.err
    assert main(["fit", "Yield ~ 1 + (1 | Batch)", "--data", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["singular"] is True and len(doc["warnings"]) == 1


def test_cli_json_reports_dropped_rows(tmp_path, capsys):
    frame = glmmjax.datasets.load("sleepstudy")
    frame.loc[[3, 17], "Reaction"] = np.nan
    path = tmp_path / "sleep.csv"
    frame.to_csv(path, index=False)
    assert main(["fit", "Reaction ~ Days + (1 | Subject)", "--data", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["nobs"] == 178 and doc["n_dropped"] == 2 and doc["dropped_rows"] == [3, 17]
