"""Rank-deficient fixed effects: aliased columns dropped before the fit, as lme4 does.

Reference: tests/reference/rank_deficient_reference.R (lme4 1.1-31), which records the
dropped columns, lme4's message and ``fixef(fit, add.dropped = TRUE)``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import load_reference

import glmmjax
from glmmjax._model.rank import RankDeficiencyWarning, aliased_columns

REF = load_reference("rank_deficient")["models"]


def _sleep():
    sleep = glmmjax.datasets.load("sleepstudy")
    return sleep.assign(Days2=2 * sleep["Days"], week=sleep["Days"] + 3)


def _cbpp():
    cbpp = glmmjax.datasets.load("cbpp")
    return cbpp.assign(late=cbpp["period"].astype(str).isin(["3", "4"]).astype(float))


def _fit_warned(fit_function, expected_message):
    with pytest.warns(RankDeficiencyWarning) as record:
        fit = fit_function()
    assert expected_message in str(record[0].message)
    return fit


def _check_against(fit, ref, rtol_beta, rtol_se, atol_crit):
    assert fit.dropped_fixef == tuple(ref["dropped"])
    full = fit.fixef_with_dropped
    assert len(full) == len(ref["fixef_all"])  # same columns, same order as lme4
    assert list(full.index[-len(ref["dropped"]):]) == ref["dropped"]
    expected = [np.nan if v is None else v for v in ref["fixef_all"].values()]
    np.testing.assert_allclose(full.to_numpy(float), expected, rtol=rtol_beta)
    np.testing.assert_allclose(fit.fixef_se.to_numpy(), list(ref["se"].values()), rtol=rtol_se)
    assert fit.vcov.shape == tuple(ref["vcov_dim"])
    # At least as good an optimum as lme4's (its cbpp fit stops 6e-4 short in -2 log L).
    assert fit.criterion == pytest.approx(ref["criterion"], abs=atol_crit)
    assert fit.criterion <= ref["criterion"] + 1e-7
    table = fit.coef_table()
    for name in ref["dropped"]:
        assert np.isnan(table.loc[name, "Estimate"])
        assert name not in fit.fixef.index


def test_lmer_drops_aliased_columns_as_lme4():
    ref = REF["lmer_sleepstudy"]
    fit = _fit_warned(lambda: glmmjax.lmer(ref["formula"], _sleep()), ref["message"])
    _check_against(fit, ref, rtol_beta=1e-6, rtol_se=1e-4, atol_crit=1e-5)
    text = fit.summary()
    assert "rank deficient so dropping 2 columns / coefficients" in text
    assert "Days2" in text and " NA " in text + " "
    # Predictions use the kept columns of new data.
    new = _sleep().head(4)
    np.testing.assert_allclose(fit.predict(new, include_re=False),
                               fit.fixef["Intercept"] + fit.fixef["Days"] * new["Days"])


def test_glmer_drops_aliased_columns_as_lme4():
    ref = REF["glmer_cbpp"]
    fit = _fit_warned(
        lambda: glmmjax.glmer(ref["formula"], _cbpp(), family="binomial"), ref["message"])
    # lme4's glmer SEs come from a finite-difference Hessian (1.3% off the exact one here).
    _check_against(fit, ref, rtol_beta=1e-3, rtol_se=2e-2, atol_crit=2e-3)
    # Exactly the model without the aliased column.
    full_rank = glmmjax.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)",
                              _cbpp(), family="binomial")
    np.testing.assert_allclose(fit.fixef.to_numpy(), full_rank.fixef.to_numpy(), rtol=1e-8)
    np.testing.assert_allclose(fit.vcov.to_numpy(), full_rank.vcov.to_numpy(), rtol=1e-6)


@pytest.mark.slow
def test_fit_many_reports_dropped_columns_as_nan():
    cbpp = _cbpp()
    Y = (cbpp["incidence"] / cbpp["size"]).to_numpy()[:, None]
    with pytest.warns(RankDeficiencyWarning, match="late"):
        batch = glmmjax.fit_many("~ period + late + (1 | herd)", cbpp, np.hstack([Y, Y]),
                                 family="binomial", weights=cbpp["size"].to_numpy(float))
    assert list(batch.fixef.columns)[-1] == "late"
    assert batch.fixef["late"].isna().all() and batch.fixef_se["late"].isna().all()
    ref = REF["glmer_cbpp"]["fixef_all"]
    np.testing.assert_allclose(batch.fixef.iloc[0, :4].to_numpy(),
                               [ref[k] for k in list(ref)[:4]], rtol=1e-3)
    assert batch.converged.all()


def test_lmm_fit_many_and_glm_agree_on_the_dropped_column():
    sleep = _sleep()
    with pytest.warns(RankDeficiencyWarning, match="Days2"):
        batch = glmmjax.fit_many("~ Days + Days2 + (1 | Subject)", sleep, ["Reaction"])
    assert np.isnan(batch.fixef.loc["Reaction", "Days2"])
    single = glmmjax.lmer("Reaction ~ Days + (1 | Subject)", sleep)
    np.testing.assert_allclose(batch.fixef.loc["Reaction", ["Intercept", "Days"]],
                               single.fixef.to_numpy(), rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        glm_fit = glmmjax.glm("Reaction ~ Days + Days2", sleep)
    assert np.isnan(glm_fit.coef_table().loc["Days2"].iloc[0])


def test_aliased_columns_follows_dqrdc2_order():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    X = np.column_stack([np.ones(50), x[:, 0], x[:, 0] * 3 - 1, x[:, 1], np.zeros(50), x[:, 2]])
    assert aliased_columns(X).tolist() == [False, False, True, False, True, False]
    # Nearly but not exactly collinear (relative residual 1e-5 > lme4's 1e-7): kept.
    X[:, 2] += 1e-5 * np.linalg.norm(X[:, 2]) / np.sqrt(50) * rng.normal(size=50)
    assert not aliased_columns(X)[2]


def test_every_column_aliased_is_an_error():
    data = pd.DataFrame({"y": np.arange(20.0), "z": np.zeros(20),
                         "g": np.repeat(["a", "b", "c", "d"], 5)})
    with pytest.raises(glmmjax.DataError, match="every fixed-effect column"):
        glmmjax.lmer("y ~ 0 + z + (1 | g)", data)


def test_lmer_inference_skips_dropped_columns():
    with pytest.warns(RankDeficiencyWarning):
        fit = glmmjax.lmer("Reaction ~ Days + Days2 + (1 | Subject)", _sleep())
    table = fit.coef_table(ddf="satterthwaite")
    assert np.isnan(table.loc["Days2"]).all() and np.isfinite(table.loc["Days"]).all()
    assert list(fit.anova().index) == ["Days"]  # Days2 has no column left to test
