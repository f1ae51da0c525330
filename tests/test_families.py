"""Families: log-densities against scipy.stats, deviances, simulation, input checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import glmmjax
from glmmjax import families

RNG = np.random.default_rng(20240611)
N = 12


def _loglik(family, y, mu, w, dispersion):
    with jax.enable_x64(True):
        eta = family.link.link(jnp.asarray(mu))
        y, mu, w = jnp.asarray(y), jnp.asarray(mu), jnp.asarray(w)
        by_mu = np.asarray(family.loglik(y, mu, w, dispersion))
        by_eta = np.asarray(family.loglik_eta(y, eta, w, dispersion))
    return by_mu, by_eta


def test_gaussian_matches_scipy_with_weights():
    mu, w = RNG.normal(size=N), RNG.uniform(0.5, 2, N)
    y = mu + RNG.normal(size=N)
    sigma2 = 1.7
    expected = stats.norm.logpdf(y, mu, np.sqrt(sigma2 / w))
    for got in _loglik(families.Gaussian(), y, mu, w, sigma2):
        np.testing.assert_allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize("link", ["logit", "probit", "cloglog", "cauchit"])
def test_binomial_matches_scipy_counts(link):
    trials = RNG.integers(1, 20, N).astype(float)
    mu = RNG.uniform(0.05, 0.95, N)
    successes = RNG.binomial(trials.astype(int), mu).astype(float)
    expected = stats.binom.logpmf(successes, trials, mu)
    for got in _loglik(families.Binomial(link=link), successes / trials, mu, trials, None):
        np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_poisson_matches_scipy():
    mu = RNG.uniform(0.2, 9, N)
    y = RNG.poisson(mu).astype(float)
    for got in _loglik(families.Poisson(), y, mu, np.ones(N), None):
        np.testing.assert_allclose(got, stats.poisson.logpmf(y, mu), rtol=1e-12)


@pytest.mark.parametrize("link", ["inverse", "log"])
def test_gamma_matches_scipy(link):
    mu, phi = RNG.uniform(0.5, 5, N), 0.4
    y = RNG.gamma(1 / phi, mu * phi)
    expected = stats.gamma.logpdf(y, a=1 / phi, scale=mu * phi)
    for got in _loglik(families.Gamma(link=link), y, mu, np.ones(N), phi):
        np.testing.assert_allclose(got, expected, rtol=1e-11)


def test_inverse_gaussian_matches_scipy():
    mu, phi = RNG.uniform(0.5, 3, N), 0.3
    y = RNG.wald(mu, 1 / phi)
    # scipy's invgauss(mu/λ, scale=λ) has mean μ and shape λ = 1/φ.
    expected = stats.invgauss.logpdf(y, mu * phi, scale=1 / phi)
    for got in _loglik(families.InverseGaussian(), y, mu, np.ones(N), phi):
        np.testing.assert_allclose(got, expected, rtol=1e-11)


def test_negative_binomial_matches_scipy():
    mu, theta = RNG.uniform(0.2, 15, N), 1.3
    y = RNG.negative_binomial(theta, theta / (theta + mu)).astype(float)
    expected = stats.nbinom.logpmf(y, theta, theta / (theta + mu))
    for got in _loglik(families.NegativeBinomial(), y, mu, np.ones(N), theta):
        np.testing.assert_allclose(got, expected, rtol=1e-11)
    fixed = families.NegativeBinomial(theta=theta)
    got, _ = _loglik(fixed, y, mu, np.ones(N), None)
    np.testing.assert_allclose(got, expected, rtol=1e-11)


@pytest.mark.parametrize("link", ["logit", "probit"])
def test_beta_matches_scipy(link):
    mu, phi = RNG.uniform(0.1, 0.9, N), 6.0
    y = RNG.beta(mu * phi, (1 - mu) * phi)
    expected = stats.beta.logpdf(y, mu * phi, (1 - mu) * phi)
    for got in _loglik(families.Beta(link=link), y, mu, np.ones(N), phi):
        np.testing.assert_allclose(got, expected, rtol=1e-10)


DEVIANCE_CASES = [
    (families.Gaussian(), lambda mu: mu + RNG.normal(size=N), None),
    (families.Poisson(), lambda mu: RNG.poisson(mu).astype(float), None),
    (families.Gamma(), lambda mu: RNG.gamma(3, mu / 3), None),
    (families.InverseGaussian(), lambda mu: RNG.wald(mu, 2.0), None),
    (families.NegativeBinomial(theta=2.0), lambda mu: RNG.poisson(mu).astype(float), None),
    (families.Beta(), lambda mu: np.clip(RNG.beta(4 * mu, 4 * (1 - mu)), 1e-6, 1 - 1e-6), 4.0),
]


@pytest.mark.parametrize("case", DEVIANCE_CASES, ids=lambda c: c[0].name)
def test_unit_deviance_is_twice_the_loglik_gap_to_the_saturated_model(case):
    family, draw, phi = case
    mu = RNG.uniform(0.2, 0.8, N) if family.name == "beta" else RNG.uniform(0.5, 4, N)
    y = draw(mu)
    if family.name == "inverse.gaussian" or family.name == "Gamma":
        y = np.maximum(y, 1e-3)
    dispersion = {"gaussian": 1.0, "Gamma": 1.0, "inverse.gaussian": 1.0}.get(family.name, phi)
    with jax.enable_x64(True):
        w = jnp.ones(N)
        if family.name == "beta":
            # The beta density at y peaks at a mean other than y: maximize numerically.
            grid = jnp.linspace(1e-4, 1 - 1e-4, 200001)[:, None]
            best = jnp.max(family.loglik(y[None, :], grid, 1.0, dispersion), axis=0)
        else:
            best = family.loglik(y, y, w, dispersion)
        gap = best - family.loglik(y, mu, w, dispersion)
        dev = family.unit_deviance(jnp.asarray(y), jnp.asarray(mu), dispersion)
        resid = family.deviance_residuals(jnp.asarray(y), jnp.asarray(mu), w, dispersion)
    # (the beta's grid maximum is below the exact one by up to ~1e-10)
    atol = 1e-9 if family.name == "beta" else 1e-12
    np.testing.assert_allclose(dev, 2 * np.asarray(gap), rtol=1e-9, atol=atol)
    np.testing.assert_allclose(np.asarray(resid) ** 2, dev, rtol=1e-12, atol=1e-14)
    assert np.all(np.sign(resid) == np.sign(y - mu))


def test_binomial_deviance_in_eta_is_stable_in_the_tails():
    family = families.Binomial()
    with jax.enable_x64(True):
        dev = family.unit_deviance_eta(jnp.array([0.0, 1.0]), jnp.array([-40.0, 40.0]))
    np.testing.assert_allclose(dev, 2 * np.log1p(np.exp(-40.0)), rtol=1e-10)


SIM_CASES = [
    (families.Gaussian(), 2.0, 4.0, 4.0),
    (families.Poisson(), 3.0, None, 3.0),
    (families.Binomial(), 0.3, None, 0.3 * 0.7 / 10),
    (families.Gamma(), 2.0, 0.5, 0.5 * 4),
    (families.InverseGaussian(), 1.5, 0.2, 0.2 * 1.5**3),
    (families.NegativeBinomial(), 4.0, 2.0, 4 + 16 / 2),
    (families.Beta(), 0.3, 5.0, 0.3 * 0.7 / 6),
]


def test_simulate_has_the_right_mean_and_variance():
    n = 20000

    def weights(family):
        return jnp.full(n, 10.0 if family.name == "binomial" else 1.0)

    # One compiled program for all samplers (they are costly to compile one by one).
    @jax.jit
    def simulate_all(key):
        keys = jax.random.split(key, len(SIM_CASES))
        return [family.simulate(k, jnp.full(n, mean), weights(family), dispersion)
                for k, (family, mean, dispersion, _) in zip(keys, SIM_CASES)]

    with jax.enable_x64(True):
        all_draws = simulate_all(jax.random.key(3))
    for (family, mean, _, variance), draws in zip(SIM_CASES, all_draws):
        draws = np.asarray(draws)
        assert draws.shape == (n,), family.name
        se_mean = np.sqrt(variance / n)
        assert abs(draws.mean() - mean) < 5 * se_mean, family.name
        assert abs(draws.var() / variance - 1) < 0.1, family.name


def test_get_family_names_links_and_errors():
    assert isinstance(families.get_family("Gamma"), families.Gamma)
    assert families.get_family("inverse.gaussian").link.name == "1/mu^2"
    assert families.get_family("binomial", link="probit").link.name == "probit"
    assert families.get_family(families.Poisson(), link="sqrt").link.name == "sqrt"
    with pytest.raises(ValueError, match="allowed links: log, identity, sqrt"):
        families.Poisson(link="logit")
    with pytest.raises(ValueError, match="allowed links"):
        families.get_family("beta", link="log")
    with pytest.raises(ValueError, match="known families"):
        families.get_family("zero_one_beta")
    with pytest.raises(ValueError, match="theta"):
        families.NegativeBinomial(theta=-1.0)


def test_families_pass_through_jit_and_vmap():
    with jax.enable_x64(True):
        y = jnp.array([0.0, 2.0, 5.0])
        eta = jnp.array([-1.0, 0.0, 1.0])
        # A family is a pytree: NB's fixed theta is a leaf, traced by jit (no recompiles).
        total = jax.jit(lambda fam: jnp.sum(fam.loglik_eta(y, eta, jnp.ones(3), None)))
        by_field = [float(total(families.NegativeBinomial(theta=t))) for t in (0.5, 1.0, 2.0)]
        by_vmap = jax.vmap(
            lambda t: jnp.sum(families.NegativeBinomial().loglik_eta(y, eta, jnp.ones(3), t))
        )(jnp.array([0.5, 1.0, 2.0]))
        np.testing.assert_allclose(by_vmap, by_field, rtol=1e-12)
        assert total._cache_size() == 1
        binomial = jax.jit(lambda fam, e: fam.loglik_eta(y / 5, e, jnp.full(3, 5.0), None))
        np.testing.assert_allclose(
            binomial(families.Binomial(), eta),
            stats.binom.logpmf([0, 2, 5], 5, 1 / (1 + np.exp(-np.asarray(eta)))), rtol=1e-12,
        )


ROWS = pd.Index(["a", "b", "c", "d"])


@pytest.mark.parametrize(
    "family, y, row",
    [
        (families.Poisson(), [1, 2, -1, 0], "c"),
        (families.Poisson(), [1, 2.5, 1, 0], "b"),
        (families.NegativeBinomial(), [1, 2, 3, 0.5], "d"),
        (families.Binomial(), [0, 1, 1.2, 0], "c"),
        (families.Gamma(), [1, 0, 2, 3], "b"),
        (families.InverseGaussian(), [-1, 1, 2, 3], "a"),
        (families.Beta(), [0.2, 1.0, 0.5, 0.3], "b"),
    ],
    ids=lambda v: getattr(v, "name", None),
)
def test_response_outside_the_support_names_the_rows(family, y, row):
    with pytest.raises(glmmjax.DataError, match=rf"rows \['{row}'\]"):
        family.prepare_response(np.asarray(y, dtype=float), np.ones(4), None, ROWS)


def test_binomial_response_forms():
    family = families.Binomial()
    y, w, level = family.prepare_response(np.array([[2.0, 3.0], [0.0, 4.0]]), np.ones(2))
    np.testing.assert_allclose(y, [0.4, 0.0])
    np.testing.assert_allclose(w, [5.0, 4.0])
    assert level is None
    y, w, level = family.prepare_response(np.array(["N", "Y", "Y"], dtype=object), None,
                                          ("N", "Y"))
    np.testing.assert_allclose(y, [0, 1, 1])
    assert level == "Y"
    with pytest.raises(glmmjax.DataError, match="two levels"):
        family.prepare_response(np.array(["a", "b", "c"], dtype=object), None, ("a", "b", "c"))
    with pytest.raises(glmmjax.DataError, match="non-negative"):
        family.prepare_response(np.array([[1.0, -1.0]]), None, None, pd.Index(["r1"]))
    with pytest.raises(glmmjax.DataError, match="weights"):
        family.prepare_response(np.array([0.0, 1.0]), np.array([1.0, -2.0]), None, ROWS[:2])
    with pytest.raises(glmmjax.DataError, match="weights"):
        family.prepare_response(np.array([0.0, 1.0]), np.array([1.0, np.inf]), None, ROWS[:2])
    with pytest.raises(glmmjax.DataError, match="numeric"):
        families.Poisson().prepare_response(np.array(["a"], dtype=object), None, ("a",))


def test_family_pytrees_hold_only_numbers():
    """Names, allowed links and other descriptions are static: the only leaves are
    numeric parameters (NB's fixed theta), so families pass through jax.jit as arguments."""
    for name in families.FAMILIES:
        assert jax.tree_util.tree_leaves(families.get_family(name)) == []
    assert jax.tree_util.tree_leaves(families.NegativeBinomial(theta=2.0)) == [2.0]


def test_glmmtmb_families_reject_responses_outside_their_support():
    """glmmTMB's families (issue 20): errors name the rows and what is valid."""
    rows = pd.Index(["a", "b", "c"])
    with pytest.raises(glmmjax.DataError, match=r"positive integer count.*hurdle.*rows \['b'\]"):
        families.TruncatedPoisson().prepare_response(np.array([1.0, 0.0, 3.0]), None, None, rows)
    with pytest.raises(glmmjax.DataError, match=r"positive integer.*rows \['c'\]"):
        families.get_family("truncated_nbinom2").prepare_response(
            np.array([1.0, 2.0, 2.5]), None, None, rows)
    with pytest.raises(glmmjax.DataError, match=r"non-negative integer.*rows \['a'\]"):
        families.get_family("nbinom1").prepare_response(np.array([-1.0, 0.0, 3.0]), None,
                                                        None, rows)
    with pytest.raises(glmmjax.DataError, match=r"non-negative integer.*rows \['b'\]"):
        families.get_family("genpois").prepare_response(np.array([1.0, 0.5, 3.0]), None,
                                                        None, rows)
    with pytest.raises(glmmjax.DataError, match=r"lognormal response must be positive.*\['a'\]"):
        families.LogNormal().prepare_response(np.array([0.0, 1.0, 2.0]), None, None, rows)
    with pytest.raises(glmmjax.DataError, match=r"proportion in \[0, 1\]"):
        families.BetaBinomial().prepare_response(np.array([0.5, 1.5, 0.0]), None, None, rows)
    with pytest.raises(ValueError, match="df must be a positive number"):
        families.StudentT(df=0.0)
    for power in (1.0, 2.0, 2.5, float("nan")):
        with pytest.raises(ValueError, match=r"power must be a number strictly between 1 and 2"):
            families.Tweedie(power=power)
    with pytest.raises(glmmjax.DataError, match=r"tweedie response must be non-negative.*\['c'\]"):
        families.Tweedie().prepare_response(np.array([0.0, 1.0, -2.0]), None, None, rows)
    with pytest.raises(ValueError, match="link 'logit' is not allowed for the lognormal"):
        families.get_family("lognormal", link="logit")
    with pytest.raises(NotImplementedError, match="no deviance"):
        families.get_family("nbinom1").deviance_residuals(jnp.ones(2), jnp.ones(2),
                                                          jnp.ones(2), 1.0)


def test_glmmtmb_family_names_and_aliases():
    for name, cls in [("nbinom2", families.NegativeBinomial), ("beta_family", families.Beta),
                      ("nbinom1", families.NegativeBinomial1),
                      ("truncated_poisson", families.TruncatedPoisson),
                      ("truncated_nbinom1", families.TruncatedNegativeBinomial1),
                      ("truncated_nbinom2", families.TruncatedNegativeBinomial2),
                      ("genpois", families.GeneralizedPoisson),
                      ("betabinomial", families.BetaBinomial),
                      ("lognormal", families.LogNormal), ("t_family", families.StudentT),
                      ("student_t", families.StudentT)]:
        assert type(families.get_family(name)) is cls, name
    assert families.get_family("lognormal").link.name == "log"
    assert families.get_family("t_family").link.name == "identity"


def test_student_t_with_estimated_df_is_host_only():
    data = pd.DataFrame({"y": [1.0, 2.0, 0.5, 3.0], "x": [0.0, 1.0, 2.0, 3.0],
                         "g": ["a", "a", "b", "b"]})
    with pytest.raises(ValueError, match="only the host"):
        glmmjax.glm("y ~ x", data, family="t_family", engine="jax")
    with pytest.raises(ValueError, match="only the host engine"):
        glmmjax.glmer("y ~ x + (1 | g)", data, family="t_family", engine="jax")
    with pytest.raises(ValueError, match="estimates df"):
        families.StudentT().variance(jnp.ones(2), 1.0)
