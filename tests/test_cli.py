"""The ``glmmjax`` command line: fits from CSV files against lme4/R, JSON output, errors
as one line with exit status 2, the demo (run once), and the installed entry point."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import numpy as np
import pytest
from conftest import load_reference, rel_close

import glmmjax
from glmmjax._cli import main, read_csv


def _strict_json(text: str) -> dict:
    def reject(constant):
        raise AssertionError(f"{constant} is not valid JSON")

    return json.loads(text, parse_constant=reject)


@pytest.fixture(scope="module")
def sleepstudy_csv(tmp_path_factory):
    """sleepstudy with text subject labels ("S308"), which must be read as a factor."""
    frame = glmmjax.datasets.load("sleepstudy")
    frame["Subject"] = "S" + frame["Subject"].astype(str)
    path = tmp_path_factory.mktemp("cli") / "sleepstudy.csv"
    frame.to_csv(path, index=False)
    return str(path)


def test_fit_json_mixed_model_matches_lme4(sleepstudy_csv, capsys):
    ref = load_reference("lmm")["models"]["sleepstudy_ml"]
    code = main(["fit", "Reaction ~ Days + (Days | Subject)", "--data", sleepstudy_csv,
                 "--ml", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = _strict_json(captured.out)
    assert doc["model"] == "lmer" and doc["method"] == "ML"
    rel_close(list(doc["fixef"].values()), ref["fixef"], rtol=1e-6)
    rel_close(list(doc["se"].values()), ref["fixef_se"], rtol=1e-4)
    rel_close(list(doc["theta"].values()), ref["theta"], rtol=1e-3)
    rel_close(doc["sigma"], ref["sigma"], rtol=1e-4)
    rel_close(doc["loglik"], ref["loglik"], rtol=0, atol=1e-5)
    rel_close(doc["aic"], ref["aic"], rtol=0, atol=1e-5)
    assert doc["nobs"] == 180 and doc["ngroups"] == {"Subject": 18}
    assert doc["converged"] is True and doc["singular"] is False
    assert [(r["group"], r["var1"], r["var2"]) for r in doc["varcorr"]] == [
        ("Subject", "Intercept", None), ("Subject", "Days", None),
        ("Subject", "Intercept", "Days"), ("Residual", None, None),
    ]
    assert doc["warnings"] == []


def test_fit_prints_summary(sleepstudy_csv, capsys):
    code = main(["fit", "Reaction ~ Days + (Days | Subject)", "--data", sleepstudy_csv,
                 "--ml"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Linear mixed model fit by maximum likelihood" in out
    assert "Subject, 18" in out


def test_fit_without_random_effects_is_a_glm(sleepstudy_csv, capsys):
    code = main(["fit", "Reaction ~ Days", "--data", sleepstudy_csv, "--json"])
    doc = _strict_json(capsys.readouterr().out)
    assert code == 0
    assert doc["model"] == "glm" and doc["family"] == "gaussian"
    rel_close(doc["fixef"]["Days"], 10.467285959595987, rtol=1e-8)
    rel_close(doc["sigma"], math.sqrt(doc["dispersion"]), rtol=1e-12)
    assert doc["varcorr"] == [] and doc["ngroups"] == {}


def test_fit_binomial_glm_with_cbind(tmp_path, capsys):
    path = tmp_path / "cbpp.csv"
    glmmjax.datasets.load("cbpp").to_csv(path, index=False)
    # period is read as integers, as R's read.csv does; C() makes it a factor again
    code = main(["fit", "cbind(incidence, size - incidence) ~ C(period)", "--data", str(path),
                 "--family", "binomial", "--json"])
    doc = _strict_json(capsys.readouterr().out)
    assert code == 0
    # R: coef(glm(cbind(incidence, size - incidence) ~ period, binomial, lme4::cbpp))
    rel_close(list(doc["fixef"].values()), [-1.269023, -1.170763, -1.301405, -1.782279],
              rtol=0, atol=1e-6)
    assert doc["sigma"] is None


def test_read_csv_reads_grouping_and_text_columns_as_factors(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("y,g,h,treat,n\n1.0,007,b1,ctrl,3\n2.0,7,a1,trt,4\n"
                    "3.0,10,b1,ctrl,5\n4.0,2,,trt,6\n")
    frame = read_csv(str(path), {"g"})
    # "007" and "7" stay distinct; numeric-looking labels in numeric order, as R's factor
    assert list(frame["g"].cat.categories) == ["2", "007", "7", "10"]
    assert list(frame["h"].cat.categories) == ["a1", "b1"]
    assert frame["h"].isna().tolist() == [False, False, False, True]
    assert list(frame["treat"].cat.categories) == ["ctrl", "trt"]
    assert frame["n"].dtype == np.int64 and frame["y"].dtype == np.float64


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["Reaction ~ Days + (1 | Subject)", "--data", "{missing}"], "no such file"),
        (["Reaction ~ Days + (1 | Subjct)", "--data", "{csv}"], "Subjct"),
        (["Reaction ~ Days + (1 | Subject", "--data", "{csv}"], "parenthes"),
        (["Reaction ~ Days", "--family", "nonesuch", "--data", "{csv}"], "nonesuch"),
        (["Reaction ~ Days", "--reml", "--data", "{csv}"], "--reml"),
    ],
)
def test_input_errors_are_one_line_with_status_2(args, expected, sleepstudy_csv, tmp_path,
                                                 capsys):
    names = {"missing": str(tmp_path / "missing.csv"), "csv": sleepstudy_csv}
    code = main(["fit", *[a.format(**names) for a in args]])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("glmmjax: error: ")
    assert expected in lines[0]


def test_glmm_bad_response_is_a_usage_error_naming_rows(sleepstudy_csv, capsys):
    # Reaction times are not counts: the Poisson GLMM is refused before any fitting,
    # with the rows at fault, and the CLI exits with its usage-error status.
    code = main(["fit", "Reaction ~ Days + (1 | Subject)", "--family", "poisson",
                 "--data", sleepstudy_csv])
    assert code == 2
    err = capsys.readouterr().err
    assert "Poisson response must be a non-negative integer count" in err
    assert "rows [0, 1, 2" in err


def test_demo(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    for name, formula in [("sleepstudy", "Reaction ~ Days"), ("penicillin", "(1 | plate)"),
                          ("pastes", "(1 | batch/cask)")]:
        assert f"# {name}: lmer(" in out and formula in out
    assert out.count("REML criterion at convergence") == 3
    assert "batch:cask, 30, batch, 10" in out
    if hasattr(glmmjax, "glmer"):
        assert "# cbpp: glmer(" in out
    else:
        assert "# cbpp: skipped" in out


def test_installed_command():
    command = shutil.which("glmmjax")
    if command is None:
        pytest.skip("the glmmjax command is not installed (pip install -e .)")
    done = subprocess.run([command, "fit", "y ~ x", "--data", "no/such/file.csv"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip() == "glmmjax: error: no such file: no/such/file.csv"
