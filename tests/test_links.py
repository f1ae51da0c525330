"""Links: round trips, autodiff derivatives against finite differences, tail accuracy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from glmmjax import links
from glmmjax.families import Binomial

ALL = [links.get_link(name) for name in links.LINKS]
PROBABILITY = ["logit", "probit", "cloglog", "loglog", "cauchit"]


def _mu_grid(link):
    """Means inside each link's range (a seeded random sample plus fixed points)."""
    rng = np.random.default_rng(7)
    if link.name in PROBABILITY:
        return np.r_[rng.uniform(0.01, 0.99, 20), 1e-6, 0.5, 1 - 1e-6]
    if link.name == "identity":
        return np.r_[rng.normal(0, 3, 20), 0.0]
    return np.r_[rng.uniform(0.05, 20, 20), 1.0]


@pytest.mark.parametrize("link", ALL, ids=lambda link: link.name)
def test_round_trip_and_mu_eta_against_finite_differences(link):
    @jax.jit
    def evaluate(mu):
        eta = link.link(mu)
        h = 1e-6 * jnp.maximum(1.0, jnp.abs(eta))
        numeric = (link.inverse(eta + h) - link.inverse(eta - h)) / (2 * h)
        return link.inverse(eta), link.mu_eta(eta), numeric

    with jax.enable_x64(True):
        mu = _mu_grid(link)
        back, mu_eta, numeric = evaluate(jnp.asarray(mu))
    np.testing.assert_allclose(back, mu, rtol=1e-10, atol=1e-14)
    # (the fixed points near 0 and 1 are left out of the finite differences)
    np.testing.assert_allclose(mu_eta[:20], numeric[:20], rtol=1e-6, atol=1e-12)


TAIL_ETAS = np.array([-30.0, -12.0, 12.0, 30.0])


def _exact_tail_logs(name, eta):
    """log μ and log(1 − μ) from scipy/numpy reference formulas in the tails."""
    eta = np.asarray(eta, dtype=float)
    if name == "logit":
        return -np.logaddexp(0, -eta), -np.logaddexp(0, eta)
    if name == "probit":
        return special.log_ndtr(eta), special.log_ndtr(-eta)
    if name == "cloglog":
        x = np.exp(eta)
        return np.where(eta > -30, np.log(-np.expm1(-x)), eta - x / 2), -x
    if name == "loglog":
        x = np.exp(-eta)
        return -x, np.where(eta < 30, np.log(-np.expm1(-x)), -eta - x / 2)
    if name == "cauchit":
        return np.log(stats.cauchy.cdf(eta)), np.log(stats.cauchy.sf(eta))
    raise AssertionError(name)


@pytest.mark.parametrize("name", PROBABILITY)
def test_log_mu_and_log_one_minus_mu_in_the_body_and_the_tails(name):
    link = links.get_link(name)
    body = np.linspace(-1.5, 1.5, 13)

    @jax.jit
    def evaluate(eta):
        return link.inverse(eta), link.log_inverse(eta), link.log1m_inverse(eta)

    with jax.enable_x64(True):
        mu, log_mu, log_1m = evaluate(jnp.asarray(np.r_[body, TAIL_ETAS]))
    # In the body the direct forms are accurate; in the tails they are not.
    np.testing.assert_allclose(log_mu[:13], np.log(mu[:13]), rtol=1e-12)
    np.testing.assert_allclose(log_1m[:13], np.log1p(-np.asarray(mu[:13])), rtol=1e-11)
    expected_mu, expected_1m = _exact_tail_logs(name, TAIL_ETAS)
    np.testing.assert_allclose(log_mu[13:], expected_mu, rtol=1e-9)
    np.testing.assert_allclose(log_1m[13:], expected_1m, rtol=1e-9)


@pytest.mark.parametrize("name", ["logit", "probit"])
def test_binomial_loglik_gradient_in_the_tails(name):
    """The Bernoulli log-likelihood at η = ±30 is finite, correct and has a non-zero
    gradient that matches finite differences (no clipping)."""
    family = Binomial(link=name)
    eta = np.array([-30.0, 30.0, -30.0, 30.0])
    y = np.array([0.0, 0.0, 1.0, 1.0])
    h = 1e-5

    def loglik(e, yi):
        return family.loglik_eta(yi, e, 1.0, None)

    @jax.jit
    def evaluate(e, yi):
        value = jax.vmap(loglik)(e, yi)
        return value, jax.vmap(jax.grad(loglik))(e, yi), jax.vmap(loglik)(e + h, yi), \
            jax.vmap(loglik)(e - h, yi)

    with jax.enable_x64(True):
        value, grad, up, down = (np.asarray(a) for a in evaluate(jnp.asarray(eta), jnp.asarray(y)))
    log_mu, log_1m = _exact_tail_logs(name, eta)
    np.testing.assert_allclose(value, np.where(y == 1, log_mu, log_1m), rtol=1e-10)
    assert np.all(np.isfinite(grad)) and np.all(grad != 0.0)
    np.testing.assert_allclose(grad, (up - down) / (2 * h), rtol=1e-6)


def test_logit_mu_eta_in_the_far_tail_is_not_zero():
    with jax.enable_x64(True):
        value = float(links.Logit().mu_eta(jnp.asarray(40.0)))
    np.testing.assert_allclose(value, np.exp(-40.0) / (1 + np.exp(-40.0)) ** 2, rtol=1e-12)


def test_get_link_names_and_errors():
    assert isinstance(links.get_link("inverse_squared"), links.InverseSquared)
    assert isinstance(links.get_link(links.Probit()), links.Probit)
    with pytest.raises(ValueError, match="known links"):
        links.get_link("tanh")


def test_jit_vmap_and_user_defined_link():
    class Cube(links.Link):
        name = "cube"

        def link(self, mu):
            return jnp.cbrt(mu)

        def inverse(self, eta):
            return eta**3

    with jax.enable_x64(True):
        eta = jnp.linspace(0.5, 2.0, 4)
        jitted = jax.jit(lambda link, e: link.mu_eta(e))
        np.testing.assert_allclose(jitted(Cube(), eta), 3 * eta**2)
        np.testing.assert_allclose(jitted(links.Logit(), eta), links.Logit().mu_eta(eta))
        stacked = jax.vmap(links.Probit().inverse)(eta)
        np.testing.assert_allclose(stacked, special.ndtr(np.asarray(eta)))
