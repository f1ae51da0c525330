"""The host GLMM engine (numpy Laplace objective with its exact gradient) against the
compiled JAX objective and pipeline."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import glmmjax
from glmmjax._engines.compiled.glmm import glmm_pipeline_jit, make_setup
from glmmjax._engines.compiled.laplace import laplace_objective
from glmmjax._engines.compiled.pirls import GLMMData
from glmmjax._engines.host import glmm as _host_glmm
from glmmjax._families.base import get_family
from glmmjax._model.design import build_design

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


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "grouseticks"
                                  else n for n in CASES])  # grouseticks: ~20 s idle
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
    glm_start = _host_glmm._glm_start(model if stage == 2 else
                                      _host_glmm.host_models(design, family, y, w)[1], None)
    beta = glm_start + 0.1 * rng.normal(size=p) if stage == 2 else np.zeros(0)
    q = s.n_levels[0] * s.sizes[0] + s.rest_size
    value, gradient, *_ , converged = _host_glmm.laplace(theta, beta, np.zeros(0), model,
                                                         np.zeros(q))
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


# Whole fit against whole fit (~14 s at load 6: a compiled GLMM pipeline): the kernels
# are compared above (value and gradient, both stages), and test_engine_argument below
# compares the public fits of both engines (estimates, SEs, deviance) on the same model.
@pytest.mark.slow
def test_fit_equals_compiled_pipeline():
    """Estimates, objective and standard errors (central differences of the exact
    gradient here, the autodiff Hessian there)."""
    design, family, y, w = _prepared("cbpp")
    host = _host_glmm.fit(design, family, y, w)
    with jax.enable_x64(True):
        setup = make_setup(design, family, 1)
        compiled = glmm_pipeline_jit(jnp.asarray(y), jnp.asarray(w), setup,
                                     with_cond_cov=False)
    np.testing.assert_allclose(host.value, float(compiled["value"]), rtol=1e-12)
    np.testing.assert_allclose(host.params, np.asarray(compiled["params"]), rtol=1e-5)
    np.testing.assert_allclose(host.hessian, np.asarray(compiled["hessian"]), rtol=1e-6,
                               atol=1e-6 * np.max(np.abs(host.hessian)))
    np.testing.assert_allclose(np.sqrt(np.diag(host.beta_cov)),
                               np.sqrt(np.diag(np.asarray(compiled["beta_cov"]))), rtol=1e-5)
    assert host.opt.status == int(compiled["status"]) == 0 and host.engine == "host"


def test_glmer_uses_the_host_engine_for_built_in_families():
    data = glmmjax.datasets.load("cbpp")
    fit = glmmjax.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", data)
    assert fit.engine == "host" and fit.converged and fit.opt_summary.converged
    assert fit.opt_summary.optimizer == "BFGS (host)"
    np.testing.assert_allclose(fit.opt_summary.objective, fit.deviance, rtol=1e-12)
    condsd = fit.ranef_condsd["herd"]
    assert condsd.shape == (15, 1) and np.all(condsd.to_numpy() > 0)
    assert _host_glmm.applies(get_family("binomial"))
    assert _host_glmm.applies(glmmjax.families.Binomial(link="probit"))
    assert _host_glmm.applies(get_family("gamma"))

    class MyPoisson(glmmjax.families.Poisson):
        pass

    assert not _host_glmm.applies(MyPoisson())


@pytest.mark.slow  # ~8 s idle (a compiled GLMM fit)
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
    assert host.params[0] == 0.0 == float(compiled["params"][0])
    np.testing.assert_allclose(host.value, float(compiled["value"]), rtol=1e-12)
    np.testing.assert_allclose(host.params[1:], np.asarray(compiled["params"])[1:], rtol=1e-6)
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
    assert (host.engine, compiled.engine) == ("host", "jax")
    assert compiled.opt_summary.optimizer == "BFGS (jax)" and compiled.opt_summary.converged
    with pytest.raises(ValueError, match="engine='host' fits Laplace"):
        glmmjax.glmer(formula, data, n_agq=5, engine="host")
    with pytest.raises(ValueError, match="engine must be"):
        glmmjax.glmer(formula, data, engine="gpu")


# -- families with a dispersion, and links other than the canonical ones -------------------

def _simulated(family, seed=3, n=120, groups=12):
    """A small seeded GLMM data set for ``family`` (one covariate, one grouping factor)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(groups), n // groups)
    x = rng.normal(size=n)
    b = 0.5 * rng.normal(size=groups)
    eta = 0.4 + 0.6 * x + b[g]
    name, link = family.name, family.link.name
    if link in ("inverse", "1/mu^2", "identity", "sqrt") and name != "binomial":
        eta = 1.0 + 0.2 * x + 0.2 * b[g]  # positive means on these links
    with jax.enable_x64(True):
        mu = np.asarray(family.link.inverse(jnp.asarray(eta)))
    weights = None
    if name == "binomial":
        y = rng.binomial(1, mu).astype(float)
    elif name == "poisson":
        y = rng.poisson(mu).astype(float)
    elif name == "negative_binomial":
        y = rng.poisson(rng.gamma(2.0, mu / 2.0)).astype(float)
    elif name == "Gamma":
        y = rng.gamma(3.0, mu / 3.0)
    elif name == "inverse.gaussian":
        y = rng.wald(mu, 5.0)
    elif name == "beta":
        y = rng.beta(mu * 8.0, (1.0 - mu) * 8.0)
    else:
        y = mu + 0.3 * rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "g": g.astype(str)}), weights


def _family_design(family, seed=3):
    data, _ = _simulated(family, seed)
    design = build_design("y ~ x + (1 | g)", data, require_random=True,
                          numeric_response=False)
    y, w, _ = family.prepare_response(design.response, design.weights,
                                      design.response_levels, design.rows)
    return design, y, w


FAMILY_CASES = {
    "gamma-log": lambda: glmmjax.families.Gamma(link="log"),
    "negative_binomial-log": lambda: glmmjax.families.NegativeBinomial(),
    "beta-logit": lambda: glmmjax.families.Beta(),
    "gaussian-log": lambda: glmmjax.families.Gaussian(link="log"),
    "inverse_gaussian-log": lambda: glmmjax.families.InverseGaussian(link="log"),
    "binomial-cloglog": lambda: glmmjax.families.Binomial(link="cloglog"),
    "poisson-sqrt": lambda: glmmjax.families.Poisson(link="sqrt"),
    "gamma-inverse": lambda: glmmjax.families.Gamma(),
}
_FAST = ("gamma-log", "negative_binomial-log")


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("case", [
    pytest.param(c, marks=() if c in _FAST else pytest.mark.slow) for c in FAMILY_CASES])
def test_value_and_gradient_with_dispersion_equal_jax(case, stage):
    """Stage 1 (nAGQ=0: β inner, θ and log φ outer) and stage 2 (Laplace in θ, β, log φ)
    at a point off the optimum, against autodiff of the compiled objective: the
    dispersion's gradient is the new term."""
    family = FAMILY_CASES[case]()
    design, y, w = _family_design(family)
    stages = _host_glmm.host_models(design, family, y, w)
    model = stages[stage - 1]
    s = model.structure
    theta, beta_start, log_disp = _host_glmm.moment_start(design.terms, stages[1])
    beta = beta_start + 0.05 if stage == 2 else np.zeros(0)
    log_disp = log_disp + 0.1
    theta = theta * 1.2 + 0.05
    q = s.n_levels[0] * s.sizes[0] + s.rest_size
    v0 = np.zeros(q)
    if stage == 1:  # the inner β starts at the GLM's, as in the fit (η must be valid)
        v0[q - beta_start.shape[0]:] = beta_start
    value, gradient, *_, converged = _host_glmm.laplace(theta, beta, log_disp, model, v0)
    assert converged
    params = np.concatenate([theta, beta, log_disp])
    with jax.enable_x64(True):
        data = GLMMData(s.original, jnp.asarray(model.X), jnp.asarray(model.inner),
                        jnp.asarray(y), jnp.asarray(w), jnp.asarray(model.offset), family)
        expected_value, expected_gradient = jax.jit(jax.value_and_grad(
            lambda x: laplace_objective(x, data, jnp.asarray(v0), s.n_theta, beta.shape[0])))(
            jnp.asarray(params))
    np.testing.assert_allclose(value, float(expected_value), rtol=1e-11)
    # (Both evaluate at their own inner Newton's mode: agreement to ~1e-7 of the
    # gradient's scale.)
    np.testing.assert_allclose(gradient, np.asarray(expected_gradient), rtol=1e-7,
                               atol=1e-7 * np.max(np.abs(gradient)))


@pytest.mark.slow
@pytest.mark.parametrize("case", list(FAMILY_CASES))
def test_fit_with_dispersion_equals_compiled_pipeline(case):
    """The whole fit, host against compiled: objective 1e-8 relative, estimates 1e-4,
    standard errors 1e-4."""
    family = FAMILY_CASES[case]()
    data, _ = _simulated(family)
    host = glmmjax.glmer("y ~ x + (1 | g)", data, family=family)
    compiled = glmmjax.glmer("y ~ x + (1 | g)", data, family=family, engine="jax")
    assert host.engine == "host" and compiled.engine == "jax"
    assert host.converged and compiled.converged
    np.testing.assert_allclose(host.deviance, compiled.deviance, rtol=1e-8)
    np.testing.assert_allclose(host.fixef, compiled.fixef, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(host.theta, compiled.theta, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(host.fixef_se, compiled.fixef_se, rtol=1e-4)
    if host.dispersion is not None:
        np.testing.assert_allclose(host.dispersion, compiled.dispersion, rtol=1e-4)


def test_a_fit_ending_where_the_mode_is_no_minimum_reports_it_instead_of_crashing():
    """Student-t on a response scaled by 1e-4: the search ends where Ω is not positive
    definite at the mode; the mode's derivatives (the Hessian's start points) used to
    be solved with no factor (AttributeError). Now the fit says it did not converge, or
    converges."""
    import warnings

    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(20), 10)
    x = rng.normal(size=200)
    y = (1 + 0.5 * x + rng.normal(size=20)[g] + rng.standard_t(5, size=200)) * 1e-4
    frame = pd.DataFrame({"y": y, "x": x, "g": g.astype(str)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = glmmjax.glmer("y ~ x + (1|g)", frame,
                            family=glmmjax.families.StudentT(df=5.0, link="identity"))
    assert fit.converged or any(issubclass(w.category, glmmjax.ConvergenceWarning)
                                for w in caught)


@pytest.mark.parametrize("family, power", [("t_family", 1), ("gamma", -1)])
def test_rescaled_response_gives_the_rescaled_fit(family, power):
    """sleepstudy's Reaction × 10⁻⁴ and × 10⁴ (Student-t, identity link; Gamma, inverse
    link): β and θ are those of the unscaled fit times s^λ (λ = 1, −1), the standard
    errors too, and log L differs by the log-Jacobian −n·log s. Before the searches
    worked in units of the link scale's spread (host.glmm.eta_unit) the ×10⁴ fits
    stalled at the start (500 iterations, not converged) and the unscaled Gamma fit
    did not start at all (η ~ 0.004, θ started at 0.1); glmmTMB 1.1.5 fails on the
    unscaled Gamma and both ×10⁴ fits, and agrees at ×10⁻⁴ (log L + n log s = −868.3066
    and −854.6694)."""
    data = glmmjax.datasets.load("sleepstudy")
    formula = "Reaction ~ Days + (Days | Subject)"
    base = glmmjax.glmer(formula, data, family=family)
    assert base.converged and not base.is_singular
    reference = {"t_family": -854.6694, "gamma": -868.3066}[family]
    assert abs(base.loglik - reference) < 1e-4
    for s in (1e-4, 1e4):
        fit = glmmjax.glmer(formula, data.assign(Reaction=data["Reaction"] * s),
                            family=family)
        assert fit.converged and not fit.is_singular
        assert abs(fit.loglik + len(data) * np.log(s) - base.loglik) <= 1e-8 * abs(base.loglik)
        c = s**power
        np.testing.assert_allclose(fit.fixef / c, base.fixef, rtol=1e-5)
        np.testing.assert_allclose(np.abs(fit.theta) / c, np.abs(base.theta), rtol=1e-4,
                                   atol=1e-6 * np.max(np.abs(base.theta)))
        np.testing.assert_allclose(fit.fixef_se / c, base.fixef_se, rtol=1e-3)
        assert fit.extra_params == pytest.approx(base.extra_params, rel=1e-4)


@pytest.mark.parametrize("family, power, reference", [
    ("t5", 1, -856.3812), ("gamma", -1, -866.6940), ("gamma-log", 0, -864.0750)])
def test_rescaled_response_with_dispformula(family, power, reference):
    """The same with ``dispformula="~ Days"`` (the parts engine): Student-t (df 5) ×10⁴
    did not converge, and a Gamma GLMM with a dispersion model (inverse or log link)
    stopped with a LinAlgError from the inner Newton at a trial point of the search.
    log L at s = 1 (s = 10⁻⁴ for the inverse link) is glmmTMB 1.1.5's."""
    from glmmjax.families import Gamma, StudentT

    fam = {"t5": StudentT(df=5), "gamma": "gamma", "gamma-log": Gamma(link="log")}[family]
    data = glmmjax.datasets.load("sleepstudy")
    formula = "Reaction ~ Days + (Days | Subject)"
    fits = {s: glmmjax.glmer(formula, data.assign(Reaction=data["Reaction"] * s), family=fam,
                             dispformula="~ Days") for s in (1.0, 1e-4, 1e4)}
    assert abs(fits[1e-4].loglik + len(data) * np.log(1e-4) - reference) < 1e-4
    for s, fit in fits.items():
        assert fit.converged and not fit.is_singular
        assert abs(fit.loglik + len(data) * np.log(s) - fits[1.0].loglik) < 1e-8 * abs(reference)
        np.testing.assert_allclose(fit.fixef["cond"] / s**power if power else
                                   fit.fixef["cond"] - [np.log(s), 0.0],
                                   fits[1.0].fixef["cond"], rtol=1e-5, atol=1e-9)


@pytest.mark.slow  # compiles the GLMM pipeline (~10-20 s)
def test_compiled_pipeline_on_rescaled_responses():
    """The compiled engines search in the same units (engine="jax"): sleepstudy's
    Gamma GLMM (inverse link) gave a NaN log L at s = 1 and 10⁴, and Student-t (df 5)
    at 10⁴ (σ started at 1 against residuals of 10⁵)."""
    from glmmjax.families import StudentT

    data = glmmjax.datasets.load("sleepstudy")
    formula = "Reaction ~ Days + (Days | Subject)"
    for family, reference in (("gamma", -868.3066), (StudentT(df=5), -856.6338)):
        for s in (1.0, 1e4):
            fit = glmmjax.glmer(formula, data.assign(Reaction=data["Reaction"] * s),
                                family=family, engine="jax")
            assert fit.converged
            assert abs(fit.loglik + len(data) * np.log(s) - reference) < 1e-4
    # The compiled parts engine (a dispersion model): at ×10⁴ the same log L, but
    # reported as not converged (max|∇| = 6 in the response's units) before.
    fit = glmmjax.glmer(formula, data.assign(Reaction=data["Reaction"] * 1e4), family="gamma",
                        dispformula="~ Days", engine="jax")
    assert fit.converged
    assert abs(fit.loglik + len(data) * np.log(1e4) - -866.6940) < 1e-4
