"""The host GLMM engine (numpy Laplace objective with its exact gradient) against the
compiled JAX objective and pipeline."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import glmmjax
from glmmjax import _host_glmm
from glmmjax._design import build_design
from glmmjax._families import get_family
from glmmjax._glmm_fit import glmm_pipeline_jit, make_setup
from glmmjax._laplace import laplace_objective
from glmmjax._pirls import GLMMData

CASES = {
    "cbpp": ("cbind(incidence, size - incidence) ~ period + (1 | herd)", "binomial"),
    "grouseticks": ("TICKS ~ YEAR + cHEIGHT + (1 | INDEX) + (1 | BROOD) + (1 | LOCATION)",
                    "poisson"),
    "sleepstudy": ("I(Reaction > 300) ~ Days + (Days | Subject)", "binomial"),
}


def _prepared(name):
    formula, family_name = CASES[name]
    family = get_family(family_name)
    design = build_design(formula, glmmjax.datasets.load(name), require_random=True,
                          numeric_response=False)
    y, w, _ = family.prepare_response(design.response, design.weights,
                                      design.response_levels, design.rows)
    return design, family, y, w


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("stage", [1, 2])
def test_value_and_gradient_equal_jax(name, stage):
    """Stage 1 is lme4's nAGQ=0 (β inside the inner problem), stage 2 the Laplace
    objective in (θ, β); both from a cold start of the inner Newton."""
    design, family, y, w = _prepared(name)
    model = _host_glmm.host_models(design, family, y, w)[stage - 1]
    s = model.structure
    rng = np.random.default_rng(0)
    theta = np.abs(rng.normal(size=s.n_theta)) * 0.5 + 0.3
    p = design.X.shape[1]
    kind = model.kind
    glm_start = np.linalg.lstsq(design.X, _host_glmm.link(kind, family.initialize(y, w)),
                                rcond=None)[0]
    beta = glm_start + 0.1 * rng.normal(size=p) if stage == 2 else np.zeros(0)
    q = s.n_levels[0] * s.sizes[0] + s.rest_size
    value, gradient, *_ , converged = _host_glmm.laplace(theta, beta, model, np.zeros(q))
    assert converged
    params = np.concatenate([theta, beta])
    with jax.enable_x64(True):
        data = GLMMData(s.original, jnp.asarray(model.X), jnp.asarray(model.inner),
                        jnp.asarray(y), jnp.asarray(w), jnp.asarray(model.offset), family)
        expected_value, expected_gradient = jax.jit(jax.value_and_grad(
            lambda x: laplace_objective(x, data, jnp.zeros(q), s.n_theta, beta.shape[0])))(
            jnp.asarray(params))
    np.testing.assert_allclose(value, float(expected_value), rtol=1e-12)
    np.testing.assert_allclose(gradient, np.asarray(expected_gradient), rtol=1e-8,
                               atol=1e-9 * np.max(np.abs(gradient)))


def test_fit_equals_compiled_pipeline():
    """Estimates, objective and standard errors (central differences of the exact
    gradient here, the autodiff Hessian there)."""
    design, family, y, w = _prepared("cbpp")
    host = _host_glmm.fit(design, family, y, w)
    with jax.enable_x64(True):
        setup = make_setup(design, family, 1)
        compiled = glmm_pipeline_jit(jnp.asarray(y), jnp.asarray(w), setup,
                                     with_cond_cov=False)
    np.testing.assert_allclose(host["value"], float(compiled["value"]), rtol=1e-12)
    np.testing.assert_allclose(host["params"], np.asarray(compiled["params"]), rtol=1e-5)
    np.testing.assert_allclose(host["hessian"], np.asarray(compiled["hessian"]), rtol=1e-6,
                               atol=1e-6 * np.max(np.abs(host["hessian"])))
    np.testing.assert_allclose(np.sqrt(np.diag(host["beta_cov"])),
                               np.sqrt(np.diag(np.asarray(compiled["beta_cov"]))), rtol=1e-5)
    assert int(host["status"]) == int(compiled["status"]) == 0


def test_glmer_uses_the_host_engine_for_logit_and_log_only(monkeypatch):
    calls = []
    original = _host_glmm.fit

    def spy(*args, **kwargs):
        calls.append(args[1].name)
        return original(*args, **kwargs)

    monkeypatch.setattr("glmmjax._glmer.host_fit", spy)
    data = glmmjax.datasets.load("cbpp")
    fit = glmmjax.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", data)
    assert calls == ["binomial"] and fit.converged
    condsd = fit.ranef_condsd["herd"]
    assert condsd.shape == (15, 1) and np.all(condsd.to_numpy() > 0)
    assert _host_glmm.host_kind(get_family("binomial")) == "binomial_logit"
    assert _host_glmm.host_kind(glmmjax.families.Binomial(link="probit")) is None
    assert _host_glmm.host_kind(get_family("gamma")) is None


def test_boundary_fit_equals_compiled_pipeline():
    """No group effect in the data: both engines end at θ = 0 exactly, with one value."""
    import pandas as pd

    rng = np.random.default_rng(11)
    data = pd.DataFrame({"x": rng.normal(size=400), "g": np.repeat(np.arange(40), 10)})
    data["y"] = (rng.random(400) < 1 / (1 + np.exp(-(0.3 + 0.8 * data["x"])))).astype(float)
    family = get_family("binomial")
    design = build_design("y ~ x + (1 | g)", data, require_random=True, numeric_response=False)
    y, w, _ = family.prepare_response(design.response, design.weights,
                                      design.response_levels, design.rows)
    host = _host_glmm.fit(design, family, y, w)
    with jax.enable_x64(True):
        compiled = glmm_pipeline_jit(jnp.asarray(y), jnp.asarray(w), make_setup(design, family, 1),
                                     with_cond_cov=False)
    assert host["params"][0] == 0.0 == float(compiled["params"][0])
    np.testing.assert_allclose(host["value"], float(compiled["value"]), rtol=1e-12)
    np.testing.assert_allclose(host["params"][1:], np.asarray(compiled["params"])[1:], rtol=1e-6)
    with pytest.warns(glmmjax.SingularFitWarning):
        fit = glmmjax.glmer("y ~ x + (1 | g)", data, family="binomial")
    assert fit.is_singular and fit.converged


def test_engine_argument():
    data = glmmjax.datasets.load("cbpp")
    formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    host = glmmjax.glmer(formula, data)
    compiled = glmmjax.glmer(formula, data, engine="jax")
    np.testing.assert_allclose(host.fixef, compiled.fixef, rtol=1e-5)
    np.testing.assert_allclose(host.fixef_se, compiled.fixef_se, rtol=1e-5)
    np.testing.assert_allclose(host.deviance, compiled.deviance, rtol=1e-12)
    with pytest.raises(ValueError, match="engine='host' fits Laplace"):
        glmmjax.glmer(formula, data, n_agq=5, engine="host")
    with pytest.raises(ValueError, match="engine must be"):
        glmmjax.glmer(formula, data, engine="gpu")
