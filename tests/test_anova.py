"""Likelihood-ratio tests and AIC/BIC comparisons against lme4's anova
(tests/reference/inference.json, "lrt")."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import cached, load_reference, rel_close
from scipy import stats

import glmmjax


@pytest.fixture(scope="module")
def sleepstudy():
    return glmmjax.datasets.load("sleepstudy")


def m1_fit(data):
    return cached(("lmm", "sleepstudy_reml"),
                  lambda: glmmjax.lmer("Reaction ~ Days + (Days | Subject)", data))


def m0_fit(data):
    return cached(("lmm", "sleepstudy_intercept_reml"),
                  lambda: glmmjax.lmer("Reaction ~ Days + (1 | Subject)", data))


def test_lrt_matches_lme4(sleepstudy):
    ref = load_reference("inference")["lrt"]
    m0, m1 = m0_fit(sleepstudy), m1_fit(sleepstudy)
    # Given in either order, models are sorted by their number of parameters.
    table = glmmjax.anova(m1, m0, names=["m1", "m0"])
    assert list(table.index) == ref["models"]
    assert "refitting model(s) with ML" in table.attrs["note"]
    np.testing.assert_array_equal(table["npar"], ref["npar"])
    for column, key in [("AIC", "AIC"), ("BIC", "BIC"), ("logLik", "logLik"),
                        ("deviance", "deviance")]:
        rel_close(table[column], ref[key], 1e-7)
    assert np.isnan(table["Chisq"].iloc[0])
    rel_close(table["Chisq"].iloc[1], ref["Chisq"][1], 1e-6)
    assert table["Df"].iloc[1] == ref["Df"][1]
    rel_close(table["Pr(>Chisq)"].iloc[1], ref["p"][1], 1e-5)
    # m1 adds one variance (Days) and its covariance: ½χ²(1) + ½χ²(2).
    chisq = table["Chisq"].iloc[1]
    expected = 0.5 * stats.chi2.sf(chisq, 1) + 0.5 * stats.chi2.sf(chisq, 2)
    rel_close(table["Pr(>Chisq) boundary"].iloc[1], expected, 1e-12)
    assert "mixture" in table.attrs["note"]


def test_single_variance_component_against_glm(sleepstudy):
    # (1 | Subject) against no random effects: the boundary p-value is half the plain one.
    m0 = m0_fit(sleepstudy)
    lm = cached(("glm", "sleepstudy_days"), lambda: glmmjax.glm("Reaction ~ Days", sleepstudy))
    table = glmmjax.anova(lm, m0, names=["lm", "m0"])
    assert list(table.index) == ["lm", "m0"]
    assert table["Df"].iloc[1] == 1
    expected_chisq = -2 * lm.loglik - (-2 * m0.refit(reml=False).loglik)
    rel_close(table["Chisq"].iloc[1], expected_chisq, 1e-9)
    rel_close(table["Pr(>Chisq) boundary"].iloc[1], 0.5 * table["Pr(>Chisq)"].iloc[1], 1e-12)


def test_different_data_is_an_error(sleepstudy):
    m0 = m0_fit(sleepstudy)
    shifted = sleepstudy.assign(Reaction=sleepstudy["Reaction"] + 1.0)
    other = cached(("lmm", "sleepstudy_intercept_shifted"),
                   lambda: glmmjax.lmer("Reaction ~ Days + (1 | Subject)", shifted, reml=False))
    with pytest.raises(ValueError, match="different data"):
        glmmjax.anova(m0, other)
    with pytest.raises(ValueError, match="different data"):
        glmmjax.compare(m0, other)


def test_non_nested_models(sleepstudy):
    m0 = m0_fit(sleepstudy)
    quadratic = cached(
        ("lmm", "sleepstudy_quadratic_ml"),
        lambda: glmmjax.lmer("Reaction ~ I(Days**2) + (1 | Subject)", sleepstudy, reml=False),
    )
    with pytest.raises(ValueError, match=r"not nested.*compare\(\)"):
        glmmjax.anova(m0, quadratic)
    table = glmmjax.compare(m0, quadratic, names=["linear", "quadratic"])
    assert list(table.index) == ["linear", "quadratic"]  # the linear trend fits better
    assert table["dAIC"].iloc[0] == 0 and table["dAIC"].iloc[1] > 0
    rel_close(table["AIC weight"].sum(), 1.0, 1e-12)
    rel_close(table.loc["quadratic", "AIC"], quadratic.aic, 1e-12)


def test_random_effects_nesting(sleepstudy):
    from glmmjax._inference.anova import _Entry, nesting_problem

    m0, m1 = m0_fit(sleepstudy), m1_fit(sleepstudy)
    small, big = _Entry(m0, "m0"), _Entry(m1, "m1")
    assert nesting_problem(small, big) is None
    assert "fewer parameters" in nesting_problem(big, small)


def test_bad_arguments(sleepstudy):
    m0 = m0_fit(sleepstudy)
    with pytest.raises(ValueError, match="at least two"):
        glmmjax.anova(m0)
    with pytest.raises(TypeError):
        glmmjax.anova(m0, "m1")
    with pytest.raises(ValueError, match="names"):
        glmmjax.anova(m0, m0, names=["a"])
    with pytest.raises(ValueError, match="by must be"):
        glmmjax.compare(m0, m0, by="DIC")
