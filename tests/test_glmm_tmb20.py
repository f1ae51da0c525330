"""glmmTMB's compois (Conway–Maxwell–Poisson, mean parameterization) against glmmTMB
1.1.5 (tests/reference/glmm_tmb20.R -> glmm_tmb20.json): GLMMs with under- and
overdispersion, a zero-inflated GLMM and a GLM; its closed-form partials against the
JAX twin's autodiff; bad input.

Tolerances as tests/test_glmm_families_tmb2.py: −2 log L within 1e-6 relative of
glmmTMB's and never above it by more, estimates 1e-4 relative, SEs 1e-3.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from conftest import REFERENCE, cached, load_reference, rel_close

import glmmjax
from glmmjax import _family_math_compois as cmp

COMPOIS_GLMMS = ["compois_under", "compois_over"]


@pytest.fixture(scope="module")
def reference():
    return load_reference("glmm_tmb20")


def _data(ref):
    return pd.read_csv(REFERENCE / ref["data"], dtype={"g": str})


def _fit(ref):
    return cached(("glmm_tmb20", ref["name"]), lambda: glmmjax.glmer(
        ref["formula"], _data(ref), family=ref["family"], ziformula=ref.get("ziformula")))


def test_log_normalizer_and_mean_match_a_long_direct_sum():
    from scipy.special import gammaln, logsumexp

    x = np.log(np.array([0.05, 0.7, 3.0, 12.0, 40.0]))
    nu = np.array([2.5, 0.4, 1.0, 0.3, 1.7])
    L, m = cmp.loglambda_numpy(x, nu)
    j = np.arange(6000.0)
    log_t = j * L[:, None] - nu[:, None] * gammaln(j + 1.0)
    log_z = logsumexp(log_t, axis=1)
    rel_close(m["log_z"], log_z, 1e-14, atol=1e-14)
    p = np.exp(log_t - log_z[:, None])
    rel_close(p @ j, np.exp(x), 1e-13)
    rel_close(m["k2"], p @ j**2 - np.exp(2 * x), 1e-10)
    # ν = 1 is the Poisson: log λ = log μ.
    rel_close(cmp.loglambda_numpy(x, np.ones(5))[0], x, 1e-12, atol=1e-13)


_Y = np.array([0.0, 1.0, 3.0, 7.0, 20.0, 0.0])
_X = np.log(np.array([0.5, 2.0, 3.0, 6.0, 15.0, 0.05]))
_PSI = np.array([0.3, -0.5, 1.2, 0.0, 2.0, -1.0])


def test_closed_form_partials_match_central_differences():
    def parts(x, psi):
        return cmp.compois_partials(np, _Y, x, psi, np.ones(6), True)

    got = parts(_X, _PSI)
    h = 1e-5
    for field, lower, by_psi in (("f1", "value", False), ("f2", "f1", False),
                                 ("f3", "f2", False), ("f_psi", "value", True),
                                 ("f1_psi", "f1", True), ("f2_psi", "f2", True)):
        up = parts(_X + h * (not by_psi), _PSI + h * by_psi)
        down = parts(_X - h * (not by_psi), _PSI - h * by_psi)
        diff = (getattr(up, lower) - getattr(down, lower)) / (2 * h)
        rel_close(getattr(got, field), diff, 1e-6, atol=1e-8), field


@pytest.mark.slow
def test_closed_form_partials_match_the_jax_twin():
    """The host engine's partials (moments of j and log j!, implicit derivatives of
    log λ) against nested autodiff of the JAX log-density (custom JVP of log λ)."""
    y, x, psi = _Y, _X, _PSI
    got = cmp.compois_partials(np, y, x, psi, np.ones(6), True)
    with jax.enable_x64(True):
        def f(xi, pi, yi):
            return cmp.compois_value(jnp, yi, xi, pi, 1.0)

        args = (jnp.asarray(x), jnp.asarray(psi), jnp.asarray(y))
        d = jax.grad
        want = [jax.vmap(g)(*args) for g in (
            f, d(f), d(d(f)), d(d(d(f))), d(f, 1), d(d(f), 1), d(d(d(f)), 1))]
    for name, a, b in zip(got._fields, got, want):
        rel_close(a, np.asarray(b), 1e-9, atol=1e-11), name


@pytest.mark.parametrize("name", COMPOIS_GLMMS)
def test_compois_glmm_matches_glmmtmb(reference, name):
    ref = reference["models"][name]
    tmb = ref["glmmTMB"]
    fit = _fit(ref)
    assert fit.engine == "host"
    assert fit.converged, fit.convergence
    assert fit.nobs == tmb["nobs"]
    assert fit.deviance <= tmb["minus2loglik"] + 1e-6 * abs(tmb["minus2loglik"])
    rel_close(fit.deviance, tmb["minus2loglik"], 1e-6)
    rel_close(fit.fixef, tmb["fixef"], 1e-4)
    rel_close(fit.fixef_se, tmb["fixef_se"], 1e-3)
    rel_close(fit.dispersion, tmb["dispersion"], 1e-4)
    vc = fit.varcorr
    rel_close(vc["sdcor"].to_numpy(), [tmb["re_sd"]["g"]["(Intercept)"]], 1e-4)


def test_zero_inflated_compois_matches_glmmtmb(reference):
    ref = reference["models"]["compois_zi"]
    tmb = ref["glmmTMB"]
    fit = _fit(ref)
    assert fit.converged, fit.convergence
    assert fit.criterion <= tmb["minus2loglik"] + 1e-6 * abs(tmb["minus2loglik"])
    rel_close(fit.criterion, tmb["minus2loglik"], 1e-6)
    rel_close(fit.fixef["cond"], tmb["fixef"], 1e-4)
    rel_close(fit.fixef["zi"], tmb["zi_fixef"], 1e-4)
    rel_close(np.exp(fit.fixef["disp"].to_numpy()), [tmb["dispersion"]], 1e-4)
    rel_close(fit.fixef_se["cond"], tmb["fixef_se"], 1e-3)
    rel_close(fit.fixef_se["zi"], tmb["zi_fixef_se"], 1e-3)
    rel_close(fit.fixef_se["disp"], tmb["log_dispersion_se"], 1e-3)
    # predict: the response mean (1 − π)μ, μ the CMP mean.
    mu = fit.predict(type="conditional").to_numpy()
    pi = fit.predict(type="zprob").to_numpy()
    rel_close(fit.predict(type="response").to_numpy(), (1 - pi) * mu, 1e-12)


def test_compois_predict_and_simulate(reference):
    fit = _fit(reference["models"]["compois_under"])
    eta = fit.predict(type="link").to_numpy()
    rel_close(fit.predict(type="response").to_numpy(), np.exp(eta), 1e-12)
    sims = fit.simulate(2, seed=1)
    values = np.asarray(sims)
    assert values.shape[0] == fit.nobs
    assert np.all(values >= 0) and np.all(values == np.round(values))


@pytest.mark.slow
def test_compois_glm_matches_glmmtmb(reference):
    ref = reference["models"]["compois_glm"]
    tmb = ref["glmmTMB"]
    fit = glmmjax.glm(ref["formula"], _data(ref), family="compois")
    assert fit.converged
    got = -2.0 * fit.loglik
    assert got <= tmb["minus2loglik"] + 1e-6 * abs(tmb["minus2loglik"])
    rel_close(got, tmb["minus2loglik"], 1e-6)
    rel_close(fit.fixef, tmb["fixef"], 1e-4)
    rel_close(fit.fixef_se, tmb["fixef_se"], 1e-3)
    rel_close(fit.dispersion, tmb["dispersion"], 1e-4)


@pytest.mark.slow
def test_compiled_engine_agrees_on_compois(reference):
    ref = reference["models"]["compois_under"]
    host = _fit(ref)
    jax_fit = glmmjax.glmer(ref["formula"], _data(ref), family="compois", engine="jax")
    assert jax_fit.converged, jax_fit.convergence
    rel_close(jax_fit.deviance, host.deviance, 1e-9)
    rel_close(jax_fit.fixef, host.fixef, 1e-5)


@pytest.mark.parametrize("bad", [[-1.0, 2.0, 3.0], [0.5, 2.0, 3.0]])
def test_compois_refuses_bad_counts(bad):
    data = pd.DataFrame({"y": bad * 4, "x": np.arange(12.0), "g": list("abcd") * 3})
    with pytest.raises(ValueError, match="compois response must be a non-negative integer"):
        glmmjax.glmer("y ~ x + (1 | g)", data, family="compois")
