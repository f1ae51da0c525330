"""Simulation from glmmTMB's families (glmmjax._families.tmb): the draws have the
family's mean and variance, and a GLM fitted to a large simulated sample recovers the
coefficients and the dispersion it was drawn with."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import glmmjax
from glmmjax.families import StudentT, Tweedie, get_family

# (family, dispersion, mean parameter μ): moments checked at one μ with many draws.
MOMENTS = [("nbinom1", 1.5, 3.0), ("truncated_poisson", None, 0.7),
           ("truncated_nbinom2", 1.2, 1.5), ("truncated_nbinom1", 0.8, 1.5),
           ("genpois", 2.0, 3.0), ("betabinomial", 5.0, 0.3), ("lognormal", 1.5, 2.0),
           ("t_family", 0.7, 1.0), ("tweedie", 1.3, 2.0),
           ("compois", 0.5, 3.0), ("compois", 2.5, 4.0)]


def _family(name):
    if name == "t_family":
        return StudentT(df=6.0)
    return Tweedie(power=1.6) if name == "tweedie" else get_family(name)


# Gamma-Poisson and beta draws of 200,000 values take 5-10 s: those cases are slow.
_SLOW_DRAWS = ("compois", "nbinom1", "truncated_nbinom2", "truncated_nbinom1", "genpois", "betabinomial",
               "tweedie")


@pytest.mark.parametrize("name, dispersion, mu", [
    pytest.param(*m, id=f"{m[0]}-{m[1]}", marks=pytest.mark.slow if m[0] in _SLOW_DRAWS else ())
    for m in MOMENTS])
def test_draws_have_the_family_moments(name, dispersion, mu):
    family = _family(name)
    n = 200_000
    trials = 8.0
    with jax.enable_x64(True):
        mus = jnp.full(n, mu)
        weights = jnp.full(n, trials if name == "betabinomial" else 1.0)
        disp = None if dispersion is None else jnp.asarray(dispersion)
        y = np.asarray(family.simulate(jax.random.PRNGKey(7), mus, weights, disp))
        mean = float(family.response_mean(jnp.asarray(mu), disp))
        variance = float(family.variance(jnp.asarray(mu), disp))
    if name == "betabinomial":  # the proportion's variance for 8 trials
        variance *= (1.0 + (trials - 1.0) / (dispersion + 1.0)) / trials
    if name.startswith("truncated"):
        assert y.min() >= 1
    se = np.sqrt(variance / n)
    assert abs(y.mean() - mean) < 5 * se, (y.mean(), mean)
    # The sample variance's SE is about √((m₄ − σ⁴)/n); 3% covers every family here.
    assert abs(y.var() / variance - 1) < 0.03, (y.var(), variance)


@pytest.mark.parametrize("mu, phi", [(3.0, 0.5), (4.0, 2.5), (0.3, 2.0), (40.0, 0.3)])
def test_numpy_compois_draws_follow_the_pmf(mu, phi):
    """The numpy compois draw (math_compois.draw_numpy, glmmTMB's mean parameterization,
    φ = 1/ν): sample mean and variance against the pmf's (5 SEs, 3%), and the frequencies
    of the values against the pmf (χ² over cells of expected count ≥ 20)."""
    from scipy import stats
    from scipy.special import gammaln

    from glmmjax._families import math_compois as cmp

    n = 100_000
    rng = np.random.default_rng(5)
    y = cmp.draw_numpy(rng, np.full(n, mu), phi)
    assert np.all(y == np.round(y)) and y.min() >= 0
    L = cmp.loglambda_numpy(np.log([mu]), np.array([1.0 / phi]))[0]
    m = cmp.moments(np, L, np.array([1.0 / phi]))
    mean, variance = float(m["mean"][0]), float(m["k2"][0])
    assert abs(mean - mu) < 1e-10
    assert abs(y.mean() - mean) < 5 * np.sqrt(variance / n), (y.mean(), mean)
    assert abs(y.var() / variance - 1) < 0.03, (y.var(), variance)
    values = np.arange(int(mu + 12 * np.sqrt(variance)) + 2)
    log_p = values * L[0] - gammaln(values + 1.0) / phi - float(m["log_z"][0])
    expected = n * np.exp(log_p)
    observed = np.bincount(y.astype(int), minlength=values.size)[: values.size]
    keep = expected >= 20
    rest_obs, rest_exp = n - observed[keep].sum(), n - expected[keep].sum()
    chi2 = np.sum((observed[keep] - expected[keep]) ** 2 / expected[keep])
    chi2 += (rest_obs - rest_exp) ** 2 / max(rest_exp, 1e-300) if rest_exp > 5 else 0.0
    assert stats.chi2.sf(chi2, keep.sum()) > 1e-4, chi2


def _recovery_params():
    """Every family slow (JAX draws compile for seconds, the GLMs of 20,000 rows) but
    compois, drawn in numpy."""
    return [pytest.param(*m, id=f"{m[0]}-{m[1]}",
                         marks=() if m[0] == "compois" else pytest.mark.slow)
            for m in MOMENTS]


@pytest.mark.parametrize("name, dispersion, _mu", _recovery_params())
def test_glm_recovers_simulated_parameters(name, dispersion, _mu):
    family = _family(name)
    rng = np.random.default_rng(11)
    n = 20_000
    x = rng.normal(size=n)
    beta = np.array([-0.4, 0.6]) if name == "betabinomial" else np.array([0.5, 0.3])
    eta = beta[0] + beta[1] * x
    trials = np.full(n, 10.0) if name == "betabinomial" else np.ones(n)
    if name == "compois":  # numpy's draw: nothing to compile
        from glmmjax._families.math_compois import draw_numpy

        y = draw_numpy(rng, np.exp(eta), dispersion)
    else:
        with jax.enable_x64(True):
            mu = family.link.inverse(jnp.asarray(eta))
            disp = None if dispersion is None else jnp.asarray(dispersion)
            y = np.asarray(family.simulate(jax.random.PRNGKey(3), mu, jnp.asarray(trials),
                                           disp))
    data = pd.DataFrame({"y": y, "x": x})
    fit = glmmjax.glm("y ~ x", data, family=family,
                      weights=trials if name == "betabinomial" else None)
    assert fit.converged
    z = (fit.fixef.to_numpy() - beta) / fit.fixef_se.to_numpy()
    assert np.all(np.abs(z) < 4), (fit.fixef, beta)
    if dispersion is not None:
        z_disp = (fit.dispersion - dispersion) / fit.dispersion_se
        assert abs(z_disp) < 4, (fit.dispersion, dispersion, fit.dispersion_se)
