"""Closed-form GLMM row terms (binomial-logit, Poisson-log) against autodiff of the family.

kernel + constant must equal the family's log-likelihood, and ℓ', −ℓ'' and the third
derivative must match, across the tails (η to ±40) and for counts with zero successes
or failures. For the binomial the reference derivatives are written with σ(±η) from
``log_sigmoid`` (autodiff of the log-likelihood loses W to cancellation beyond |η| ≈ 30);
for the Poisson they are autodiff.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import glmmjax
from glmmjax._engines.compiled.eta_terms import kernel, kernel_terms, loglik_constant


def _autodiff_terms(family, y, eta, weights):
    one = lambda f: jax.vmap(f)(eta, y, weights)  # noqa: E731
    d1 = lambda e, yy, ww: jax.grad(lambda x: family.loglik_eta(yy, x, ww, None))(e)  # noqa: E731
    d2 = lambda e, yy, ww: -jax.grad(d1)(e, yy, ww)  # noqa: E731
    return one(d1), one(d2), one(jax.grad(d2))


def _binomial_terms(y, eta, weights):
    s, m = jnp.round(weights * y), jnp.round(weights)
    mu, one_m = jnp.exp(jax.nn.log_sigmoid(eta)), jnp.exp(jax.nn.log_sigmoid(-eta))
    return s * one_m - (m - s) * mu, m * mu * one_m, m * mu * one_m * (one_m - mu)


def _check(family, y, eta, weights, reference):
    with jax.enable_x64(True):
        y, eta, weights = (jnp.asarray(a, dtype=jnp.float64) for a in (y, eta, weights))
        value, d1, w = kernel_terms(family, y, eta, weights, None)
        constant = loglik_constant(family, y, weights)
        total = np.sum(family.loglik_eta(y, eta, weights, None))
        np.testing.assert_allclose(np.sum(value) + constant, total, rtol=1e-13)
        np.testing.assert_allclose(kernel(family, y, eta, weights, None), value, rtol=0, atol=0)
        ref_d1, ref_w, ref_w1 = reference(y, eta, weights)
        np.testing.assert_allclose(d1, ref_d1, rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(w, ref_w, rtol=1e-12, atol=1e-300)
        # dW/dη (the Laplace gradient needs it) by autodiff through the closed form.
        w1 = jax.vmap(jax.grad(lambda e, yy, ww: kernel_terms(family, yy, e, ww, None)[2]))
        np.testing.assert_allclose(w1(eta, y, weights), ref_w1, rtol=1e-10, atol=1e-300)


def test_binomial_logit_closed_forms():
    eta = np.r_[np.linspace(-40, 40, 41), 0.0, -1e-3, 1e-3]
    n = eta.size
    rng = np.random.default_rng(1)
    trials = rng.integers(1, 6, n).astype(float)
    successes = np.minimum(rng.integers(0, 6, n), trials)
    successes[:3], successes[3:6] = 0, trials[3:6]
    binomial = glmmjax.families.get_family("binomial")
    _check(binomial, successes / trials, eta, trials, _binomial_terms)
    _check(binomial, (successes > 0).astype(float), eta, np.ones(n), _binomial_terms)


def test_poisson_log_closed_forms():
    eta = np.linspace(-20, 5, 26)
    y = np.random.default_rng(2).poisson(3.0, eta.size).astype(float)
    y[:4] = 0
    poisson = glmmjax.families.get_family("poisson")
    _check(poisson, y, eta, np.full(eta.size, 2.0),
           lambda *a: _autodiff_terms(poisson, *a))
