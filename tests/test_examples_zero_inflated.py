"""The zero-inflated counts example runs end to end, and its AIC table is glmmTMB's
(tests/reference/zero_inflated_example.R writes the references).

Each model compiles its own programs (fit and simulation), about 4 s of CPU apiece, so
the fast test runs the example with the Poisson model alone (the "before"); the
Poisson-against-ZIP run and the whole example are marked slow.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_example, load_reference

REFERENCE = load_reference("zero_inflated_example")
# glmmjax's −2 log L may be better than glmmTMB's, never worse by more than this
# (relative; the bound), and here both optimizers reach the same optimum.
RTOL = 1e-6


def _check_against_glmmtmb(table):
    models = REFERENCE["models"]
    for label, row in table.iterrows():
        ref = models[label]
        assert row["family"] == ref["family"]
        assert bool(row["ziformula"]) == ref["zero_inflated"]
        assert row["df"] == ref["df"], label
        assert row["logLik"] >= ref["loglik"] - RTOL * abs(ref["loglik"]), label
        np.testing.assert_allclose(row["AIC"], ref["aic"], rtol=RTOL, err_msg=label)
        assert row["converged"], label
    # The same ranking as glmmTMB's.
    by_reference = sorted(table.index, key=lambda label: models[label]["aic"])
    assert list(table.index) == by_reference


def test_poisson_alone(tmp_path, capsys):
    example = load_example("zero_inflated_counts")
    out = tmp_path / "zeros.png"
    table = example.main(models=("Poisson",), n_sim=100, out=out)
    printed = capsys.readouterr().out
    for piece in ["644 counts at 23 sites, 387 zeros", "Lowest AIC: Poisson",
                  "zeros observed/simulated"]:
        assert piece in printed, piece
    assert list(table.columns) == ["family", "ziformula", "df", "logLik", "AIC", "dAIC",
                                   "weight", "converged"]
    _check_against_glmmtmb(table)
    assert table.loc["Poisson", "dAIC"] == 0 and table.loc["Poisson", "weight"] == 1
    check = table.attrs["tests"]["Poisson"]
    assert check["observed_zeros"] == 387 and len(check["simulated_zeros"]) == 100
    # The Poisson GLMM makes too few zeros (none of 100 simulations has as many).
    assert check["zero_inflation"].statistic > 1.1
    assert check["zero_inflation"].p_value < 0.05
    if table.attrs["plot_path"] is not None:
        assert table.attrs["plot_path"] == out and out.stat().st_size > 1000


@pytest.mark.slow
def test_poisson_against_zip(tmp_path, capsys):
    example = load_example("zero_inflated_counts")
    out = tmp_path / "zeros.png"
    table = example.main(models=("Poisson", "ZIP"), n_sim=100, out=out)
    printed = capsys.readouterr().out
    for piece in ["387 zeros", "Lowest AIC: ZIP", "zeros observed/simulated", "zero part"]:
        assert piece in printed, piece
    assert list(table.columns) == ["family", "ziformula", "df", "logLik", "AIC", "dAIC",
                                   "weight", "converged"]
    _check_against_glmmtmb(table)
    assert table.attrs["chosen"] == "ZIP"
    np.testing.assert_allclose(table["weight"].sum(), 1.0)
    before, after = (table.attrs["tests"][m] for m in ("Poisson", "ZIP"))
    assert before["observed_zeros"] == after["observed_zeros"] == 387
    assert len(before["simulated_zeros"]) == 100
    # The Poisson GLMM makes too few zeros; the zero part supplies them...
    assert before["zero_inflation"].statistic > 1.1
    assert before["zero_inflation"].p_value < 0.05
    assert abs(after["zero_inflation"].statistic - 1.0) < 0.05
    assert after["zero_inflation"].p_value > 0.1
    # ...but the non-zero counts stay more spread than a Poisson allows.
    assert after["dispersion"].statistic > 1.15
    assert after["dispersion"].p_value < 0.05
    if table.attrs["plot_path"] is not None:
        assert table.attrs["plot_path"] == out and out.stat().st_size > 1000


def test_models_must_be_known_and_include_poisson():
    example = load_example("zero_inflated_counts")
    with pytest.raises(ValueError, match="must include 'Poisson'"):
        example.main(models=("ZIP",))
    with pytest.raises(ValueError, match="labels of MODELS"):
        example.fit_models(None, ("Poisson", "ZINB"))


@pytest.mark.slow
def test_whole_example(tmp_path, capsys):
    example = load_example("zero_inflated_counts")
    table = example.main(out=tmp_path / "zeros.png")
    assert "Lowest AIC: ZINB2" in capsys.readouterr().out
    assert list(table.index) == ["ZINB2", "NB2", "hurdle NB2", "ZIP", "Poisson"]
    _check_against_glmmtmb(table)
    chosen = table.attrs["fits"]["ZINB2"]
    ref = REFERENCE["models"]["ZINB2"]
    for part in ("cond", "zi"):
        np.testing.assert_allclose(chosen.fixef[part].to_numpy(), ref[f"fixef_{part}"],
                                   rtol=1e-4, atol=1e-5, err_msg=part)
    tests = table.attrs["tests"]
    assert list(tests) == ["Poisson", "NB2", "ZINB2"]
    assert tests["Poisson"]["zero_inflation"].p_value < 0.01
    for label in ("NB2", "ZINB2"):  # overdispersion alone accounts for most zeros
        assert abs(tests[label]["zero_inflation"].statistic - 1.0) < 0.05, label
        assert tests[label]["zero_inflation"].p_value > 0.1, label
        assert tests[label]["dispersion"].p_value > 0.1, label
