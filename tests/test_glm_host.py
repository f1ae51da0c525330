"""The host GLM engine (glmmjax._engines.host.glm) against the compiled one.

Kernel parity (every family and link it covers, against the families' JAX methods
evaluated eagerly: fast, and a failure names the kernel) and whole-fit parity, host
against ``engine="jax"`` (a few shapes fast, every family and link slow). Agreement with
R is tested through ``glm()``'s default engine in test_glm.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import glmmjax
from glmmjax._engines.host import glm as _glm_host
from glmmjax.families import Binomial, Gamma, Gaussian, InverseGaussian, NegativeBinomial, Poisson

CASES = [
    (Gaussian, "identity"), (Gaussian, "log"), (Gaussian, "inverse"),
    (Binomial, "logit"), (Binomial, "probit"), (Binomial, "cloglog"), (Binomial, "loglog"),
    (Binomial, "cauchit"), (Binomial, "log"),
    (Poisson, "log"), (Poisson, "sqrt"), (Poisson, "identity"),
    (Gamma, "inverse"), (Gamma, "log"), (Gamma, "identity"),
    (InverseGaussian, "1/mu^2"), (InverseGaussian, "log"), (InverseGaussian, "inverse"),
    (NegativeBinomial, "log"), (NegativeBinomial, "sqrt"),
]


def make_family(cls, link):
    return cls(theta=2.5, link=link) if cls is NegativeBinomial else cls(link=link)


def case_id(case):
    return f"{case[0].__name__}-{case[1]}"


def simulate(family, n=80, seed=1):
    """Data the family fits well with its link (a mean inside the link's domain)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, n)
    name = type(family).__name__
    if name == "Binomial":
        p = np.clip(0.35 + 0.2 * x, 0.05, 0.95) * (0.6 if family.link.name == "log" else 1)
        trials = rng.integers(1, 8, n).astype(float)
        y = rng.binomial(trials.astype(int), p) / trials
        return pd.DataFrame({"y": y, "x": x, "w": trials})
    mean = 3.0 + x
    if name == "Gaussian":
        y = mean + 0.3 * rng.standard_normal(n)
    elif name == "Poisson":
        y = rng.poisson(mean).astype(float)
    elif name == "NegativeBinomial":
        y = rng.negative_binomial(2.5, 2.5 / (2.5 + mean)).astype(float)
    elif name == "Gamma":
        y = rng.gamma(4.0, mean / 4.0)
    else:
        y = rng.wald(mean, 20.0)
    return pd.DataFrame({"y": y, "x": x, "w": np.ones(n)})


def link_grid(family, mu):
    return np.asarray(family.link.link(jnp.asarray(mu)))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_kernels_equal_the_families_jax_methods(case):
    family = make_family(*case)
    data = simulate(family)
    y, w = data["y"].to_numpy(), data["w"].to_numpy()
    with jax.enable_x64(True):
        # η over the family's mean space, tails included for the unit families.
        mu = (np.linspace(1e-6, 1 - 1e-6, len(y)) if type(family).__name__ == "Binomial"
              else np.linspace(0.2, 9.0, len(y)))
        eta = link_grid(family, mu)
        if family.link.name in ("logit", "probit", "cloglog", "loglog", "cauchit"):
            eta = np.concatenate([eta[:-4], [-40.0, -12.0, 12.0, 40.0]])
        point = _glm_host.evaluate(family, y, w, eta)
        disp = getattr(family, "theta", None) or 1.0
        j_eta = jnp.asarray(eta)
        np.testing.assert_allclose(point.mu, family.link.inverse(j_eta), rtol=1e-12,
                                   atol=1e-300, err_msg="mu")
        np.testing.assert_allclose(point.mu_eta, family.link.mu_eta(j_eta), rtol=1e-10,
                                   atol=1e-300, err_msg="mu_eta")
        np.testing.assert_allclose(point.var, family.variance_eta(j_eta, disp), rtol=1e-10,
                                   atol=1e-300, err_msg="variance")
        deviance = float(jnp.sum(family.deviance_eta(jnp.asarray(y), j_eta, jnp.asarray(w),
                                                     disp)))
        np.testing.assert_allclose(point.deviance, deviance, rtol=1e-11, err_msg="deviance")
        valid = bool(jnp.all(family.link.valid_eta(j_eta)
                             & family.valid_mu(family.link.inverse(j_eta))))
        assert point.valid == valid
        np.testing.assert_allclose(_glm_host.initial_mean(family, y, w),
                                   family.initialize(jnp.asarray(y), jnp.asarray(w)),
                                   rtol=1e-14, err_msg="initialize")


@pytest.mark.parametrize("case", CASES + [(glmmjax.families.Beta, "logit")], ids=case_id)
def test_unit_deviances_and_working_residuals_equal_the_jax_methods(case):
    """The numpy deviance and working residuals (residuals without importing JAX) against
    the families' JAX methods, per row."""
    from glmmjax._families import math as fm

    family = make_family(*case)
    if type(family).__name__ == "Beta":
        rng = np.random.default_rng(3)
        y, w, disp = rng.beta(2.0, 3.0, 60), np.ones(60), 7.5
        mu = np.linspace(0.05, 0.95, 60)
    else:
        data = simulate(family)
        y, w = data["y"].to_numpy(), data["w"].to_numpy()
        disp = getattr(family, "theta", None)
        mu = (np.linspace(1e-4, 1 - 1e-4, len(y)) if type(family).__name__ == "Binomial"
              else np.linspace(0.2, 9.0, len(y)))
    eta = np.asarray(fm.link_function(family.link, np, mu))
    with jax.enable_x64(True):
        jd = None if disp is None else jnp.asarray(disp)
        expected = np.asarray(family.deviance_residuals(jnp.asarray(y), jnp.asarray(mu),
                                                        jnp.asarray(w), jd))
        working = np.asarray((y - mu) / family.link.mu_eta(jnp.asarray(eta)))
    np.testing.assert_allclose(_glm_host.numpy_residuals(family, "deviance", y, mu, eta, w, disp),
                               expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(_glm_host.numpy_residuals(family, "working", y, mu, eta, w, disp),
                               working, rtol=1e-12, atol=1e-300)


def test_invalid_steps_are_seen_as_invalid():
    """A Poisson-identity step to a negative mean, a Gamma-inverse step through η = 0."""
    y, w = np.array([1.0, 2.0]), np.ones(2)
    assert not _glm_host.evaluate(Poisson(link="identity"), y, w, np.array([1.0, -0.5])).valid
    assert not _glm_host.evaluate(Gamma(), y, w, np.array([1.0, 0.0])).valid
    assert _glm_host.evaluate(Gamma(), y, w, np.array([1.0, 0.5])).valid


def fit_both(family, data):
    kwargs = dict(family=family, weights="w")
    host = glmmjax.glm("y ~ x", data, engine="host", **kwargs)
    compiled = glmmjax.glm("y ~ x", data, engine="jax", **kwargs)
    return host, compiled


def assert_same_fit(host, compiled):
    np.testing.assert_allclose(host.coef, compiled.coef, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(host.vcov, compiled.vcov, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(host.deviance, compiled.deviance, rtol=1e-10)
    np.testing.assert_allclose(host.null_deviance, compiled.null_deviance, rtol=1e-10)
    np.testing.assert_allclose(host.loglik, compiled.loglik, rtol=1e-10)
    np.testing.assert_allclose(host.dispersion, compiled.dispersion, rtol=1e-9)
    assert host.iterations == compiled.iterations
    assert host.converged and compiled.converged


@pytest.mark.parametrize("case", [(Binomial, "logit"), (Gamma, "log")], ids=case_id)
def test_whole_fits_equal_the_compiled_engine(case):
    family = make_family(*case)
    assert_same_fit(*fit_both(family, simulate(family)))


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_whole_fits_equal_the_compiled_engine_every_family(case):
    family = make_family(*case)
    assert_same_fit(*fit_both(family, simulate(family)))


def test_engine_choice_and_bad_engine():
    from glmmjax._engines.seam import choose_glm

    assert choose_glm(Binomial(), None) == "host"
    assert choose_glm(NegativeBinomial(), None) == "host"  # θ by maximum likelihood
    assert choose_glm(glmmjax.families.Beta(), None) == "host"  # φ by maximum likelihood
    # glmmTMB's families: Newton on their closed forms (glmmjax._engines.host.glm_tmb).
    assert choose_glm(glmmjax.families.get_family("nbinom1"), None) == "host"
    assert choose_glm(glmmjax.families.get_family("compois"), None) == "host"
    assert choose_glm(glmmjax.families.get_family("tweedie"), None) == "host"  # p estimated
    with pytest.raises(ValueError, match="only the host"):
        choose_glm(glmmjax.families.get_family("tweedie"), "jax")

    class UserPoisson(Poisson):  # a user's subclass: no closed forms of ours
        pass

    assert choose_glm(UserPoisson(), None) == "jax"
    with pytest.raises(ValueError, match="engine='host' fits GLMs"):
        choose_glm(UserPoisson(), "host")
    with pytest.raises(ValueError, match="engine must be"):
        choose_glm(Binomial(), "gpu")


def test_non_convergence_is_reported_by_the_host_engine():
    family = Poisson()
    data = simulate(family)
    with pytest.warns(glmmjax.ConvergenceWarning, match="did not converge in 1 iterations"):
        fit = glmmjax.glm("y ~ x", data, family=family, max_iter=1, engine="host")
    assert not fit.converged


def beta_data(n=80, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, n)
    mu = 1 / (1 + np.exp(-(0.2 + 0.8 * x)))
    return pd.DataFrame({"y": rng.beta(mu * 9, (1 - mu) * 9), "x": x, "w": np.ones(n)})


@pytest.mark.parametrize("family", [NegativeBinomial(), glmmjax.families.Beta()],
                         ids=["nb2", "beta"])
def test_dispersion_curvature_equals_finite_differences(family):
    """The one closed form the host adds for ML dispersions: Σ ∂²ℓ/∂ψ², ψ = log θ or
    log φ."""
    from glmmjax._families import math as fm

    if type(family).__name__ == "Beta":
        data, eta, d = beta_data(), None, 9.0
        eta = 0.1 + 0.7 * data["x"].to_numpy()
    else:
        data, d = simulate(NegativeBinomial(theta=2.5)), 2.5
        eta = np.log(3.0 + data["x"].to_numpy())
    y, w = data["y"].to_numpy(), data["w"].to_numpy()

    def score(psi):
        return np.sum(fm.row_terms(family, np, y, eta, w, np.exp(psi),
                                   dispersion_derivatives=True).value_psi)

    psi, h = np.log(d), 1e-5
    numeric = (score(psi + h) - score(psi - h)) / (2 * h)
    exact = _glm_host._dispersion_curvature(family, y, eta, w, d)
    np.testing.assert_allclose(exact, numeric, rtol=1e-7)


# Whole fits (a compiled GLM each): beta's row terms are compared with autodiff in
# test_family_math.py, its dispersion curvature above, and the host fit with R's in
# test_glm.py (beta_logit); the compiled ML-dispersion loop stays checked by NB2-log below.
@pytest.mark.slow
def test_beta_regression_equals_the_compiled_engine():
    family = glmmjax.families.Beta()
    data = beta_data()
    host = glmmjax.glm("y ~ x", data, family=family)
    compiled = glmmjax.glm("y ~ x", data, family=family, engine="jax")
    assert_same_fit(host, compiled)
    np.testing.assert_allclose(host.dispersion_se, compiled.dispersion_se, rtol=1e-8)


# sqrt (slow): its kernels are compared in test_kernels_equal_the_families_jax_methods;
# log keeps the compiled engine's estimated-θ loop checked in the fast suite.
@pytest.mark.parametrize("link", ["log", pytest.param("sqrt", marks=pytest.mark.slow)])
def test_negative_binomial_with_estimated_theta_equals_the_compiled_engine(link):
    family = NegativeBinomial(link=link)
    data = simulate(NegativeBinomial(theta=2.5, link=link))
    host = glmmjax.glm("y ~ x", data, family=family)
    compiled = glmmjax.glm("y ~ x", data, family=family, engine="jax")
    assert_same_fit(host, compiled)
    np.testing.assert_allclose(host.dispersion_se, compiled.dispersion_se, rtol=1e-8)


# ---- large fits: IRLS from a subsample's estimate, the aliasing test on a subsample ----


def _logistic_arrays(n, seed=3, p=4):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.normal(size=(n, p - 1))])
    eta = X @ np.linspace(-0.5, 0.8, p)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-eta))).astype(float)
    return X, y, np.ones(n), np.zeros(n)


def test_irls_from_a_subsample_start_reaches_the_cold_optimum():
    X, y, w, off = _logistic_arrays(400_000)
    family = Binomial()
    cold = _glm_host.irls(X, y, w, off, family)
    start = _glm_host.subsample_start(X, y, w, off, family)
    assert start is not None and not np.allclose(start, cold[0], rtol=1e-3)
    warm = _glm_host.irls(X, y, w, off, family, start=start)
    np.testing.assert_allclose(warm[0], cold[0], rtol=1e-7)
    np.testing.assert_allclose(warm[1].deviance, cold[1].deviance, rtol=1e-12)
    assert warm[5] and warm[4] < cold[4]  # fewer passes over the whole data


def test_irls_ignores_a_start_that_is_invalid_on_the_data():
    X, y, w, off = _logistic_arrays(500)
    family = Poisson(link="identity")  # μ = η must be positive
    y = np.round(np.abs(X[:, 1]) * 3 + 1)
    cold = _glm_host.irls(X[:, :2], y, w, off, family)
    bad = _glm_host.irls(X[:, :2], y, w, off, family, start=np.array([-10.0, 0.0]))
    np.testing.assert_allclose(bad[0], cold[0], rtol=1e-12)
    assert bad[4] == cold[4]


def test_subsample_start_is_none_when_the_subsample_cannot_be_fitted():
    X, y, w, off = _logistic_arrays(400)
    X = np.column_stack([X, np.zeros(400)])
    X[3, -1] = 1.0  # a column that is zero on every 8th row: singular there
    assert _glm_host.subsample_start(X, y, w, off, Binomial()) is None


def test_large_glm_uses_the_warm_start_and_agrees_with_a_cold_fit(monkeypatch):
    X, y, w, off = _logistic_arrays(3000)
    monkeypatch.setattr(_glm_host, "WARM_START_ROWS", 1000)
    warm = _glm_host.fit_glm(X, y, w, off, Binomial())
    monkeypatch.setattr(_glm_host, "WARM_START_ROWS", 10**9)
    cold = _glm_host.fit_glm(X, y, w, off, Binomial())
    np.testing.assert_allclose(warm.coef, cold.coef, rtol=1e-7)
    np.testing.assert_allclose(warm.deviance, cold.deviance, rtol=1e-12)
    # The covariance is R's (the last WLS solve's), one iterate earlier than cold's.
    np.testing.assert_allclose(warm.vcov, cold.vcov, rtol=1e-3)


@pytest.mark.parametrize("alias", ["none", "full", "subsample-only"])
def test_aliasing_on_a_subsample_equals_the_full_test(monkeypatch, alias):
    from glmmjax import _glm

    rng = np.random.default_rng(0)
    X = np.column_stack([np.ones(800), rng.normal(size=(800, 3))])
    if alias == "full":
        X = np.column_stack([X, X[:, 1] - 2 * X[:, 2]])  # aliased on every row
    elif alias == "subsample-only":
        # Equal to column 1 on every 8th row only: aliased in the subsample, not in X.
        extra = X[:, 1].copy()
        extra[1::8] += 1.0
        X = np.column_stack([X, extra])
    full = _glm._aliased_in_gram(X.T @ X, 1e-10)
    monkeypatch.setattr(_glm, "SUBSAMPLE_ROWS", 100)
    np.testing.assert_array_equal(_glm.aliased_columns(X), full)
    assert full.any() == (alias == "full")
