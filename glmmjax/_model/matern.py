"""The Matérn correlation, differentiable in the distance and in the smoothness ν.

glmmTMB's ``mat`` uses TMB's ``matern(d, φ, ν)`` (geoR's parameterization):
C(d) = u^ν·K_ν(u) / (Γ(ν)·2^(ν−1)) with u = d/φ, φ the range and ν the smoothness, both
estimated (ν = 1/2 is the exponential correlation exp(−d/φ)).

Neither jax.scipy nor scipy give K_ν's derivative in ν, so K_ν is computed here from
K_ν(u) = ∫_0^∞ exp(−u·cosh t)·cosh(νt) dt by the trapezoid rule on [0, T]: the integrand
is even and entire in t, so the rule converges geometrically in the step (its error is
like exp(−2π²σ²/h²) for a peak of width σ), and the nodes are fixed numbers of the
current (u, ν) (no derivative flows through them), so the quadrature's derivatives are the
derivatives of the same sum, on the host (written out) and in JAX (autodiff).

T = t* + Δ: the integrand's log peaks at or before t* = asinh(ν/u), and beyond t* it falls
by at least s·(cosh Δ − 1) with s = u·cosh t* = √(u² + ν²), which is 50 nats at
Δ = acosh(1 + 50/s). The peak's width is about 1/√s, and T·√s stays below ~170 for
ν ≤ 100 and u ≥ 1e-4, so 256 steps keep h under a sixth of the width there (error
below 1e-15 relative).
"""

from __future__ import annotations

import math

import numpy as np

from .._lazyjax import jnp

N_STEPS = 256
_DROP = 50.0
_UNIT = np.linspace(0.0, 1.0, N_STEPS + 1)
_LOG_WEIGHTS = np.where((np.arange(N_STEPS + 1) == 0) | (np.arange(N_STEPS + 1) == N_STEPS),
                        math.log(0.5), 0.0)
_LOG_HALF_WEIGHTS = _LOG_WEIGHTS - math.log(2.0)  # with log cosh's −log 2


def _nodes(u, nu, xp):
    s = xp.sqrt(u * u + nu * nu)
    upper = xp.arcsinh(nu / u) + xp.arccosh(1.0 + _DROP / s)
    if xp is not np:
        import jax

        upper = jax.lax.stop_gradient(upper)
    unit = _UNIT if xp is np else jnp.asarray(_UNIT, upper.dtype)
    return upper[..., None] * unit, xp.log(upper / N_STEPS)


def _log_terms(u, nu, xp):
    """(log of each node's weighted integrand, the nodes t)."""
    t, log_h = _nodes(u, nu, xp)
    log_cosh = nu * t + xp.log1p(xp.exp(-2.0 * nu * t)) - math.log(2.0)
    weights = _LOG_WEIGHTS if xp is np else jnp.asarray(_LOG_WEIGHTS, t.dtype)
    return -u[..., None] * xp.cosh(t) + log_cosh + weights + log_h[..., None], t


def log_bessel_k(u, nu, xp=jnp):
    """log K_ν(u) for u > 0 (an array) and ν > 0 (a scalar)."""
    terms, _ = _log_terms(u, nu, xp)
    if xp is np:
        import scipy.special

        return scipy.special.logsumexp(terms, axis=-1)
    import jax.scipy.special

    return jax.scipy.special.logsumexp(terms, axis=-1)


def _log_normalizer(nu, xp):
    if xp is np:
        from scipy.special import gammaln
    else:
        from jax.scipy.special import gammaln
    return gammaln(nu) + (nu - 1.0) * math.log(2.0)


def log_correlation(u, nu, xp=jnp):
    """log C at scaled distances u = d/φ > 0."""
    return nu * xp.log(u) + log_bessel_k(u, nu, xp) - _log_normalizer(nu, xp)


def correlation_and_derivatives(d, log_range, log_nu):
    """Host (numpy): C at distances d > 0, and ∂C/∂log φ, ∂C/∂log ν.

    :func:`_log_terms`' sum written out for one smoothness ν (a float): the log-sum-exp
    by hand (no ``scipy.special.logsumexp`` call), the nodes' log step added after it,
    and exp(−2νt) formed once for log cosh(νt); the JAX path (:func:`log_correlation`)
    differentiates the same sum. A fit evaluates this at every θ its search visits."""
    import scipy.special

    phi, nu = math.exp(log_range), math.exp(log_nu)
    u = np.asarray(d, dtype=np.float64) / phi
    s = np.sqrt(u * u + nu * nu)
    upper = np.arcsinh(nu / u) + np.arccosh(1.0 + _DROP / s)
    t = upper[..., None] * _UNIT
    nu_t = nu * t
    cosh_t = np.cosh(t)
    # log of each node's weighted integrand, less log h: log cosh(νt) − u·cosh t + log w.
    terms = nu_t + np.log1p(np.exp(-2.0 * nu_t)) + _LOG_HALF_WEIGHTS - u[..., None] * cosh_t
    top = np.max(terms, axis=-1)
    p = np.exp(terms - top[..., None])
    total = np.sum(p, axis=-1)
    log_k = top + np.log(total) + np.log(upper / N_STEPS)
    p /= total[..., None]  # each node's share of K_ν(u)
    d_log_k_du = -np.einsum("...j,...j->...", p, cosh_t)
    d_log_k_dnu = np.einsum("...j,...j->...", p, t * np.tanh(nu_t))
    log_u = np.log(u)
    corr = np.exp(nu * log_u + log_k - (math.lgamma(nu) + (nu - 1.0) * math.log(2.0)))
    d_log_range = -(nu + u * d_log_k_du)  # ∂u/∂log φ = −u
    d_log_nu = nu * (log_u + d_log_k_dnu - scipy.special.digamma(nu) - math.log(2.0))
    return corr, corr * d_log_range, corr * d_log_nu
