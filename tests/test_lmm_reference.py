"""LMM fits against lme4 (tests/reference/lmm_reference.R -> lmm.json)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import cached, rel_close

import glmmjax

FAST = [
    "sleepstudy_reml",
    "sleepstudy_ml",
    "sleepstudy_uncorr_reml",
    "dyestuff_reml",
    "dyestuff_ml",
    "dyestuff2_reml",
    "penicillin_reml",
    "pastes_reml",
]


def fit_reference(ref):
    return cached(
        ("lmm", ref["name"]),
        lambda: glmmjax.lmer(ref["formula"], glmmjax.datasets.load(ref["dataset"]),
                             reml=ref["reml"]),
    )


def check_against_lme4(fit, ref):
    # The objective may be better than lme4's, never worse by more than 1e-6 relative.
    assert fit.criterion <= ref["objective"] * (1 + 1e-6)
    assert fit.converged, fit.convergence
    assert len(fit.fixef) == len(ref["fixef"])
    rel_close(fit.fixef, ref["fixef"], 1e-4)
    rel_close(fit.fixef_se, ref["fixef_se"], 1e-4)
    rel_close(fit.vcov.to_numpy(), np.array(ref["vcov"]), 1e-4, atol=1e-10)
    rel_close(fit.sigma, ref["sigma"], 1e-4)
    vc = fit.varcorr
    ref_vc = pd.DataFrame(ref["varcorr"])
    assert len(vc) == len(ref_vc)
    sd_ref = ref_vc["sdcor"].to_numpy(dtype=float)
    near_zero = np.abs(sd_ref) < 1e-2 * max(ref["sigma"], 1)
    # lme4's own optimum is only accurate to ~1e-3 for SDs near zero.
    rel_close(vc["sdcor"][~near_zero], sd_ref[~near_zero], 1e-4)
    np.testing.assert_allclose(vc["sdcor"][near_zero], sd_ref[near_zero], atol=1e-3 * ref["sigma"])
    rel_close(fit.loglik, ref["loglik"], 1e-6)
    rel_close(fit.aic, ref["aic"], 1e-6)
    rel_close(fit.bic, ref["bic"], 1e-6)
    assert fit.df == ref["df"]
    assert fit.nobs == ref["nobs"]
    assert sorted(fit.ngroups.values()) == sorted(ref["ngroups"].values())
    assert fit.is_singular == ref["singular"]
    rel_close(fit.fitted().to_numpy()[:10], ref["fitted_head"], 1e-5)


@pytest.mark.parametrize("name", FAST)
def test_matches_lme4(lmm_reference, name):
    ref = lmm_reference[name]
    check_against_lme4(fit_reference(ref), ref)


@pytest.mark.parametrize("name", ["sleepstudy_reml", "penicillin_reml", "pastes_reml"])
def test_conditional_modes_and_variances(lmm_reference, name):
    ref = lmm_reference[name]
    fit = fit_reference(ref)
    for (label, frame), (_group, expected) in zip(
        sorted(fit.ranef.items(), key=lambda kv: -len(kv[1])),
        sorted(ref["ranef"].items(), key=lambda kv: -len(kv[1]["levels"])),
    ):
        # Level order differs for interaction factors; compare by level label.
        expected_frame = pd.DataFrame(expected["values"], index=expected["levels"])
        if ":" in label:
            expected_frame.index = [":".join(reversed(i.split(":"))) for i in expected_frame.index]
        expected_frame = expected_frame.loc[frame.index]
        np.testing.assert_allclose(frame.to_numpy(), expected_frame.to_numpy(), rtol=1e-3,
                                   atol=1e-4 * ref["sigma"])
        sd = fit.ranef_condsd[label].to_numpy()
        expected_sd = pd.DataFrame(expected["condsd"], index=expected["levels"])
        if ":" in label:
            expected_sd.index = [":".join(reversed(i.split(":"))) for i in expected_sd.index]
        rel_close(sd, expected_sd.loc[frame.index].to_numpy(), 1e-3)


def test_singular_fit_is_exactly_zero(lmm_reference):
    fit = fit_reference(lmm_reference["dyestuff2_reml"])
    assert fit.is_singular
    assert fit.theta.iloc[0] == 0.0
    assert "boundary (singular) fit" in fit.summary()


@pytest.mark.parametrize("name", ["sleepstudy_reml", "sleepstudy_ml"])
def test_predict_newdata(lmm_reference, name):
    ref = lmm_reference[name]
    fit = fit_reference(ref)
    new = pd.DataFrame(ref["predict_newdata"]["newdata"])
    new["Subject"] = new["Subject"].astype(str)
    with_re = fit.predict(new, allow_new_levels=True)
    rel_close(with_re.to_numpy(), ref["predict_newdata"]["with_re"], 1e-5)
    fixed = fit.predict(new, include_re=False)
    rel_close(fixed.to_numpy(), ref["predict_newdata"]["fixed_only"], 1e-6)
    with pytest.raises(glmmjax.DataError, match="NEW"):
        fit.predict(new)


def test_summary_reads_like_lme4(lmm_reference):
    fit = fit_reference(lmm_reference["sleepstudy_reml"])
    text = fit.summary()
    for piece in ["REML criterion at convergence: 1743.6", "Random effects:", "Residual",
                  "Number of obs: 180, groups:  Subject, 18", "Fixed effects:", "t value"]:
        assert piece in text


@pytest.mark.slow
def test_insteval_matches_lme4(lmm_reference):
    ref = lmm_reference["insteval_reml"]
    fit = glmmjax.lmer(ref["formula"], glmmjax.datasets.load("insteval"))
    assert fit.criterion <= ref["objective"] * (1 + 1e-6)
    rel_close(fit.fixef, ref["fixef"], 1e-4)
    rel_close(fit.fixef_se, ref["fixef_se"], 1e-4)
    rel_close(fit.sigma, ref["sigma"], 1e-4)
    rel_close(fit.varcorr["sdcor"], pd.DataFrame(ref["varcorr"])["sdcor"], 1e-4)
