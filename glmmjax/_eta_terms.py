"""Per-observation log-likelihood terms of the GLMM inner problem: ℓ(η), ℓ'(η), −ℓ''(η).

The inner Newton iteration and the Laplace objective pass over every observation
several times per evaluation, so on large data these terms dominate the fit. For
binomial-logit and Poisson-log they are written in closed form (one exp and one log1p
per row), and the part of ℓ that does not depend on η (log binomial coefficients,
−log y!, three and one log-gamma per row) is split off as a constant, computed once per
fit. Other families and links get ℓ', ℓ'' from autodiff of ``family.loglik_eta`` (a
forward and a reverse pass) with nothing split off.

The closed forms use exp(−|η|) written with ``where`` (not ``abs``, whose derivative at
0 is 0), so autodiff through them gives the exact higher derivatives that the Laplace
objective's gradient and Hessian need.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

from ._families import Binomial, Poisson, count_times_log
from ._links import Log, Logit


def _kind(family) -> str:
    if type(family) is Binomial and type(family.link) is Logit:
        return "binomial_logit"
    if type(family) is Poisson and type(family.link) is Log:
        return "poisson_log"
    return "generic"


def _sigmoids(eta):
    """log σ(η), log σ(−η), σ(η), σ(−η) from one exp and one log1p, accurate in both tails."""
    neg = eta < 0
    e = jnp.exp(jnp.where(neg, eta, -eta))  # exp(−|η|)
    log1pe = jnp.log1p(e)
    inv = 1.0 / (1.0 + e)
    log_mu = jnp.where(neg, eta - log1pe, -log1pe)
    log_1m = jnp.where(neg, -log1pe, -eta - log1pe)
    mu = jnp.where(neg, e * inv, inv)
    one_m = jnp.where(neg, inv, e * inv)
    return log_mu, log_1m, mu, one_m


def _binomial_counts(y, weights):
    # As Binomial.loglik_eta: the counts as given (non-integer ones are not rounded).
    trials = weights
    successes = weights * y
    return successes, trials - successes


def kernel_terms(family, y, eta, weights, dispersion):
    """(k, ℓ', W) per row: k = ℓ minus its η-free constant, W = −ℓ''."""
    kind = _kind(family)
    if kind == "binomial_logit":
        s, f = _binomial_counts(y, weights)
        log_mu, log_1m, mu, one_m = _sigmoids(eta)
        value = count_times_log(s, log_mu) + count_times_log(f, log_1m)
        return value, s * one_m - f * mu, (s + f) * mu * one_m
    if kind == "poisson_log":
        mu = jnp.exp(eta)
        value = weights * (count_times_log(y, eta) - mu)
        return value, weights * (y - mu), weights * mu

    def total(e):
        return family.loglik_eta(y, e, weights, dispersion)

    def first(e):
        return jax.grad(lambda x: jnp.sum(total(x)))(e)

    grad, second = jax.jvp(first, (eta,), (jnp.ones_like(eta),))
    return total(eta), grad, -second


def kernel(family, y, eta, weights, dispersion):
    """ℓ per row without its η-free constant (see :func:`kernel_terms`)."""
    kind = _kind(family)
    if kind == "binomial_logit":
        s, f = _binomial_counts(y, weights)
        log_mu, log_1m, _, _ = _sigmoids(eta)
        return count_times_log(s, log_mu) + count_times_log(f, log_1m)
    if kind == "poisson_log":
        return weights * (count_times_log(y, eta) - jnp.exp(eta))
    return family.loglik_eta(y, eta, weights, dispersion)


def loglik_constant(family, y, weights):
    """Σ (ℓ − kernel): the log-likelihood's part that η does not change (a scalar)."""
    kind = _kind(family)
    if kind == "binomial_logit":
        trials, successes, log_choose = Binomial._counts(y, weights)
        return jnp.sum(log_choose)
    if kind == "poisson_log":
        return -jnp.sum(weights * gammaln(y + 1.0))
    return jnp.zeros((), dtype=jnp.result_type(y, float))
