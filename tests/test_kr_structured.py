"""Kenward–Roger with structured covariance terms (glmmjax._inference.ddf.variance_parameters).

pbkrtest works on lmer fits only, so diag and homcs are checked against the lmer models
with the same covariance (tests/reference/kr_structured_reference.R):
diag(1 + Days | Subject) as (1 | Subject) + (0 + Days | Subject), and
homcs(0 + cond | subj) as (1 | subj) + (1 | subj:cond): df, adjusted SEs and the type III
F test against lmerTest's ddf = "Kenward-Roger" (pbkrtest), df against its Satterthwaite.
Non-linear structures (ar1, cs with several SDs, ou, ...) have no lmer equivalent; their
derivatives of Σ (which also enter KR's second-order term) are checked against the
analytic ones for ar1, and the fit's KR against the inequalities that must hold.
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pandas as pd
import pytest

import glmmjax as gj
from glmmjax._inference.ddf import variance_parameters
from glmmjax._model.cov_structures import AR1

REFERENCE = pathlib.Path(__file__).parent / "reference"
MODELS = json.loads((REFERENCE / "kr_structured.json").read_text())["models"]


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _data(name):
    if name == "sleepstudy":
        return gj.datasets.load("sleepstudy")
    return pd.read_csv(REFERENCE / "data" / name)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_kr_matches_pbkrtest_through_the_lmer_equivalent(name):
    model = MODELS[name]
    fit = gj.lmer(model["formula_glmmjax"], _data(model["data"]))
    np.testing.assert_allclose(fit.deviance, model["reml_criterion"], rtol=1e-9)
    table = fit.coef_table(ddf="kenward-roger")
    np.testing.assert_allclose(table["Estimate"], model["kr"]["estimate"], rtol=1e-6)
    np.testing.assert_allclose(table["Std. Error"], model["kr"]["se"], rtol=1e-5)
    np.testing.assert_allclose(table["df"], model["kr"]["df"], rtol=1e-5)
    sat = fit.coef_table(ddf="satterthwaite")
    np.testing.assert_allclose(sat["df"], model["satterthwaite"]["df"], rtol=1e-4)
    anova = fit.anova(ddf="kenward-roger")
    expected = model["anova_kr"]
    np.testing.assert_allclose(anova.loc[expected["term"], "F value"], expected["F"],
                               rtol=1e-5)
    np.testing.assert_allclose(anova.loc[expected["term"], "DenDF"], expected["DenDF"],
                               rtol=1e-5)


@pytest.mark.parametrize("x64", [True, False])  # float64 whatever the user's JAX config
def test_ar1_derivatives_of_sigma_are_the_analytic_ones(x64):
    S, sigma, rho = 4, 1.7, 0.6
    cov = AR1(S)
    params = np.array([0.9, np.arctanh(rho)])  # θ = (relative SD, atanh ρ)
    with jax.enable_x64(x64):
        basis, hessians = variance_parameters(cov, params, sigma)
    var = (sigma * 0.9) ** 2
    lag = np.abs(np.subtract.outer(np.arange(S), np.arange(S)))
    np.testing.assert_allclose(basis[0], rho**lag, atol=1e-8)  # ∂Σ/∂σ²_b
    np.testing.assert_allclose(basis[1], var * lag * rho ** np.maximum(lag - 1, 0),
                               atol=1e-6)  # ∂Σ/∂ρ
    np.testing.assert_allclose(hessians[(0, 1)], lag * rho ** np.maximum(lag - 1, 0),
                               atol=1e-5)
    np.testing.assert_allclose(hessians[(1, 1)],
                               var * lag * (lag - 1) * rho ** np.maximum(lag - 2, 0),
                               atol=1e-4)
    assert (0, 0) not in hessians  # linear in the variance


def test_kr_with_a_nonlinear_structure():
    data = _data("kr_cs.csv")
    data["t"] = pd.Categorical(data["cond"].str[1], categories=["1", "2", "3", "4"])
    fit = gj.lmer("y ~ x + ar1(t + 0 | subj)", data)
    kr = fit.coef_table(ddf="kenward-roger")
    sat = fit.coef_table(ddf="satterthwaite")
    plain = fit.coef_table()
    # No reference exists; with a non-linear Σ(ψ) the second-order term can shrink Φ_A
    # below Φ, so only closeness is checked: SEs within 5% of the unadjusted ones and
    # df within 25% of Satterthwaite's.
    np.testing.assert_allclose(kr["Std. Error"], plain["Std. Error"], rtol=0.05)
    assert np.all(np.isfinite(kr["df"])) and np.all(kr["df"] > 1)
    np.testing.assert_allclose(kr["df"], sat["df"], rtol=0.25)
