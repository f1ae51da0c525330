"""Profile, Wald and bootstrap confidence intervals against lme4's confint
(tests/reference/inference.json, "confint")."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import cached, load_reference, rel_close

import glmmjax
from glmmjax._inference import simulate as _simulate


@pytest.fixture(scope="module")
def confint_reference():
    return load_reference("inference")["confint"]


def lme4_names(names):
    """glmmjax's coefficient names -> lme4's (Intercept) and period2 spelling."""
    return [n.replace("Intercept", "(Intercept)").replace("[T.", "").replace("]", "")
            for n in names]


def sleepstudy_fit():
    return cached(("lmm", "sleepstudy_reml"), lambda: glmmjax.lmer(
        "Reaction ~ Days + (Days | Subject)", glmmjax.datasets.load("sleepstudy")))


def test_profile_sleepstudy_matches_lme4(confint_reference):
    ref = confint_reference["sleepstudy_reml"]
    fit = sleepstudy_fit()
    ci = cached(("confint", "sleepstudy_profile"), lambda: fit.confint())
    assert lme4_names(ci.index) == ref["profile"]["names"]
    assert list(ci.columns) == ["2.5 %", "97.5 %"]
    # lme4 interpolates a spline through its profile; ours solves ζ = ±z exactly.
    rel_close(ci["2.5 %"], ref["profile"]["lower"], 1e-4)
    rel_close(ci["97.5 %"], ref["profile"]["upper"], 1e-4)
    assert ci.attrs["note"] == ""


def test_wald_matches_lme4(confint_reference):
    ref = confint_reference["sleepstudy_reml"]["wald"]
    ci = sleepstudy_fit().confint(method="wald")
    lower = np.array([np.nan if v is None else v for v in ref["lower"]], dtype=float)
    upper = np.array([np.nan if v is None else v for v in ref["upper"]], dtype=float)
    np.testing.assert_array_equal(np.isnan(ci["2.5 %"]), np.isnan(lower))
    rel_close(ci["2.5 %"].dropna(), lower[~np.isnan(lower)], 1e-6)
    rel_close(ci["97.5 %"].dropna(), upper[~np.isnan(upper)], 1e-6)


def test_parameter_selection_and_level():
    fit = sleepstudy_fit()
    ci = fit.confint(parm=["sigma"], level=0.9)
    assert list(ci.index) == ["sigma"] and list(ci.columns) == ["5 %", "95 %"]
    wide = cached(("confint", "sleepstudy_profile"), lambda: fit.confint())
    assert wide.loc["sigma", "2.5 %"] < ci.loc["sigma", "5 %"] < fit.sigma
    assert list(fit.confint("wald", parm="beta_").index) == ["Intercept", "Days"]
    with pytest.raises(ValueError, match="unknown parameter"):
        fit.confint(parm=["tau"])
    with pytest.raises(ValueError, match="level"):
        fit.confint(level=95)
    with pytest.raises(ValueError, match="method"):
        fit.confint(method="bayes")


def test_profile_on_the_boundary():
    # Remove the between-subject variation: the intercept variance is estimated at 0,
    # and its profile interval is one-sided, [0, upper].
    data = glmmjax.datasets.load("sleepstudy")
    means = data.groupby("Subject", observed=True)["Reaction"].transform("mean")
    flat = data.assign(Reaction=data["Reaction"] - means + 300.0 + data["Days"])
    with pytest.warns(glmmjax.SingularFitWarning, match="variance of Intercept between"):
        fit = cached(("lmm", "sleepstudy_flat"),
                     lambda: glmmjax.lmer("Reaction ~ Days + (1 | Subject)", flat))
    assert fit.is_singular
    ci = fit.confint(parm="theta_")
    assert ci.loc["sd_Intercept|Subject", "2.5 %"] == 0.0
    upper = ci.loc["sd_Intercept|Subject", "97.5 %"]
    assert 0 < upper < fit.sigma
    assert "one-sided" in ci.attrs["note"]
    # The upper bound is where the ML deviance has risen by χ²₁(0.95).
    ml = fit.refit(reml=False)
    from glmmjax._inference.profile import _lmm_problem

    problem, *_ = _lmm_problem(fit)
    rel_close(problem.deviance_at(0, upper) - problem.base, 3.841458820694124, 1e-6)
    assert problem.base <= ml.criterion + 1e-8


def test_bootstrap_loop_percentiles():
    fit = sleepstudy_fit()
    ci = _simulate.bootstrap_confint(fit, n_boot=20, seed=3, batched=False)
    reps = ci.attrs["replicates"]
    assert reps.shape == (20, 6)
    assert "20 replicates" in ci.attrs["note"]
    expected = reps.quantile([0.025, 0.975]).T
    np.testing.assert_allclose(ci.to_numpy(), expected.to_numpy(), rtol=1e-12)
    # Replicates scatter around the estimates.
    assert abs(reps["Days"].mean() - fit.fixef["Days"]) < 3 * fit.fixef_se["Days"]


@pytest.mark.slow
def test_bootstrap_batched_percentiles():
    fit = sleepstudy_fit()
    ci = fit.confint(method="boot", n_boot=40, seed=5)
    reps = ci.attrs["replicates"]
    assert list(reps.columns) == list(ci.index)
    assert reps.shape[0] >= 38 and not reps.isna().any().any()
    assert ci.loc["Days", "2.5 %"] < fit.fixef["Days"] < ci.loc["Days", "97.5 %"]
    assert ci.loc["sigma", "2.5 %"] < fit.sigma < ci.loc["sigma", "97.5 %"]


@pytest.mark.slow
def test_profile_cbpp_matches_lme4(confint_reference):
    ref = confint_reference["cbpp_laplace"]
    fit = cached(("glmm", "cbpp_laplace"), lambda: glmmjax.glmer(
        ref["formula"], glmmjax.datasets.load("cbpp"), family="binomial"))
    ci = fit.confint()
    assert lme4_names(ci.index) == ref["profile"]["names"]
    rel_close(ci["2.5 %"], ref["profile"]["lower"], 1e-4)
    rel_close(ci["97.5 %"], ref["profile"]["upper"], 1e-4)
    wald = fit.confint(method="wald")
    # lme4's Wald SEs come from a finite-difference Hessian; ours is exact (~0.5%).
    rel_close(wald["2.5 %"].iloc[1:], ref["wald"]["lower"][1:], 1e-2)
    assert pd.isna(wald.iloc[0, 0])
