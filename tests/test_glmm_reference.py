"""GLMM fits against glmer and glmmTMB (tests/reference/glmm_reference.R -> glmm.json).

The reference for each model is the engine with the better optimum (key ``best``).
Tolerances (issue 4): −2 log L never worse than the reference by more than 1e-4,
estimates within 1e-3 relative, standard errors within 1e-2 relative.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import REFERENCE, cached, load_reference, rel_close

import glmmjax

FAMILIES = {"nbinom2": "negative_binomial", "Gamma": "gamma"}


@pytest.fixture(scope="module")
def glmm_reference():
    return load_reference("glmm")["models"]


def reference_data(ref) -> pd.DataFrame:
    if ref.get("dataset"):
        return glmmjax.datasets.load(ref["dataset"])
    return pd.read_csv(REFERENCE / ref["data"], dtype={"g": str})


def fit_reference(ref):
    def make():
        family = glmmjax.families.get_family(FAMILIES.get(ref["family"], ref["family"]),
                                             link=ref["link"])
        return glmmjax.glmer(ref["formula"], reference_data(ref), family=family,
                             n_agq=ref["nAGQ"])

    return cached(("glmm", ref["name"]), make)


def best_engine(ref):
    return ref[ref["best"]]


def re_sds(fit):
    vc = fit.varcorr
    return vc[vc["var2"].isna()]["sdcor"].to_numpy()


def check(fit, ref, objective):
    best = best_engine(ref)
    assert fit.converged, fit.convergence
    assert fit.convergence.hessian_positive_definite
    assert fit.criterion <= objective + 1e-4
    assert len(fit.fixef) == len(best["fixef"])
    rel_close(fit.fixef, best["fixef"], 1e-3, atol=1e-6)
    rel_close(fit.fixef_se, best["fixef_se"], 1e-2)
    expected_sd = [sd for group in best["re_sd"].values() for sd in group.values()]
    rel_close(np.sort(re_sds(fit)), np.sort(expected_sd), 1e-3)
    assert fit.nobs == best["nobs"]


FAST = ["cbpp_laplace", "contraception", "salamanders_nb2", "gamma_glmm", "verbagg"]
SLOW = ["grouseticks"]


@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_matches_best_reference(glmm_reference, name):
    ref = glmm_reference[name]
    fit = fit_reference(ref)
    best = best_engine(ref)
    check(fit, ref, best.get("tmb_laplace_minus2loglik", best["minus2loglik"]))
    rel_close(fit.loglik, -0.5 * fit.criterion, 1e-12)
    rel_close(fit.aic, best["aic"], 1e-6)


def test_dispersion_parameters(glmm_reference):
    nb = fit_reference(glmm_reference["salamanders_nb2"])
    rel_close(nb.dispersion, glmm_reference["salamanders_nb2"]["glmmTMB"]["nb_theta"], 1e-3)
    gamma = fit_reference(glmm_reference["gamma_glmm"])
    # glmmTMB's sigma for the Gamma family is the coefficient of variation, √φ.
    rel_close(np.sqrt(gamma.dispersion), glmm_reference["gamma_glmm"]["glmmTMB"]["sigma"], 1e-3)


def test_adaptive_quadrature_matches_lme4(glmm_reference):
    ref = glmm_reference["cbpp_agq25"]
    fit = fit_reference(ref)
    lme4 = ref["lme4"]
    # lme4 leaves the saturated-model constant out of its AGQ −2 log L; the reference
    # script adds it back (and checks it against direct numerical integration).
    assert fit.criterion <= lme4["agq_minus2loglik_with_constant"] + 1e-4
    rel_close(fit.fixef, lme4["fixef"], 1e-3)
    rel_close(fit.fixef_se, lme4["fixef_se"], 1e-2)
    rel_close(fit.theta, lme4["theta"], 1e-3)
    assert fit.method == "AGQ(25)"


def test_conditional_modes(glmm_reference):
    ref = glmm_reference["cbpp_laplace"]
    fit = fit_reference(ref)
    head = best_engine(ref)["ranef_head"]["herd"]
    expected = np.asarray(head["values"], dtype=float).ravel()
    got = fit.ranef["herd"].loc[head["levels"]].to_numpy().ravel()
    rel_close(got, expected, 1e-3, atol=1e-5)
    condsd = fit.ranef_condsd["herd"].to_numpy()
    assert np.all(condsd > 0) and np.all(condsd < fit.theta.iloc[0])


def test_predict_scales_and_new_levels(glmm_reference):
    fit = fit_reference(glmm_reference["cbpp_laplace"])
    data = glmmjax.datasets.load("cbpp")
    eta = fit.predict(data, type="link")
    mu = fit.predict(data)
    np.testing.assert_allclose(mu, 1 / (1 + np.exp(-eta)), rtol=1e-12)
    np.testing.assert_allclose(mu.to_numpy(), fit.fitted().to_numpy(), rtol=1e-10)
    new = pd.DataFrame({"period": pd.Categorical(["1"], categories=["1", "2", "3", "4"]),
                        "herd": ["99"], "incidence": [0], "size": [10]})
    population = fit.predict(new, allow_new_levels=True, type="link")
    rel_close(population.iloc[0], fit.fixef.iloc[0], 1e-12)
    with pytest.raises(glmmjax.DataError, match="99"):
        fit.predict(new)


def test_summary_mentions_family_and_z(glmm_reference):
    fit = fit_reference(glmm_reference["cbpp_laplace"])
    text = fit.summary()
    assert "Laplace" in text and "binomial" in text and "Pr(>|z|)" in text


@pytest.mark.slow  # ~8 s idle; AGQ against lme4 stays in the fast suite
def test_laplace_equals_one_node_quadrature(glmm_reference):
    """AGQ with one node is the Laplace approximation exactly (same scale)."""
    from glmmjax._engines.compiled.laplace import (
        agq_objective,
        gauss_hermite_grid,
        laplace_objective,
    )

    ref = glmm_reference["cbpp_laplace"]
    fit = fit_reference(ref)
    import jax

    with jax.enable_x64(True):
        data, v0, params = _laplace_inputs(fit)
        grid, log_w = gauss_hermite_grid(1, 1)
        lap = laplace_objective(params, data, v0, 1, 4)
        agq = agq_objective(params, data, v0, 1, 4, grid, log_w)
    rel_close(float(agq), float(lap), 1e-12)
    rel_close(float(lap), fit.criterion, 1e-9)


def _laplace_inputs(fit):
    import jax.numpy as jnp

    from glmmjax._engines.compiled.pirls import GLMMData
    from glmmjax._model.structure import build_structure

    d = fit.design
    s = build_structure(d.terms, 0)
    data = GLMMData(s, jnp.asarray(d.X), jnp.zeros((d.nobs, 0)), jnp.asarray(fit.y),
                    jnp.asarray(fit.prior_weights), jnp.asarray(d.offset), fit.family)
    params = jnp.asarray(np.concatenate([fit.theta_values, fit.beta]))
    return data, jnp.zeros(s.n_levels[0]), params


def test_bad_agq_requests():
    data = glmmjax.datasets.load("grouseticks")
    with pytest.raises(ValueError, match="single term.*Laplace"):
        glmmjax.glmer("TICKS ~ YEAR + (1|BROOD) + (1|LOCATION)", data, family="poisson",
                      n_agq=5)
    with pytest.raises(ValueError, match="at most 3"):
        glmmjax.glmer("TICKS ~ YEAR + cHEIGHT + (1 + cHEIGHT + YEAR|LOCATION)", data,
                      family="poisson", n_agq=3)
