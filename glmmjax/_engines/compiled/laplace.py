"""GLMM objectives: Laplace, adaptive Gauss–Hermite quadrature, and lme4's nAGQ=0.

All return −2 log L on the scale of the family's full log-likelihood, so AIC and logLik
compare with R (glmmTMB; lme4's AGQ drops a saturated-model constant, see the tests).

Laplace:  −2 log L ≈ g(û) + log|Λ'Z'WZΛ + I|,  g(u) = −2 Σ ℓ + |u|²  (W at û).

AGQ (one grouping factor): the integral factorizes over levels j. With H_j = L_j L_j'
the level's block and u = û_j + L_j⁻ᵀ z,

    −2 log L_j = 2 log|L_j| − 2 log Σ_k w_k exp(−g_j(û_j + L_j⁻ᵀ z_k)/2 + |z_k|²/2)

over a tensor grid of Gauss–Hermite nodes z_k (weights for the standard normal). One
node gives the Laplace value exactly.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from ..._linalg import solve_triangular
from .cholesky import logdet_first
from .pirls import (
    GLMMData,
    at_mode,
    conditional_mode,
    hessian_factor,
    linear_predictor,
    penalized_objective,
)


def gauss_hermite_grid(n_nodes: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Tensor-product nodes (K, dim) and log-weights (K,) for N(0, I_dim) expectations."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(n_nodes)
    weights = weights / np.sqrt(2 * np.pi)
    grid = np.array(list(itertools.product(nodes, repeat=dim))).reshape(-1, dim)
    log_w = np.array(
        [np.sum(np.log(np.array(w))) for w in itertools.product(weights, repeat=dim)]
    )
    return grid, log_w


def unpack(params, n_theta: int, n_beta: int):
    theta = params[:n_theta]
    beta = params[n_theta : n_theta + n_beta]
    log_disp = params[n_theta + n_beta :]
    return theta, beta, log_disp


def dispersion_value(log_disp, data: GLMMData):
    """The family's dispersion from its log (or 1.0 when it is fixed / absent)."""
    if log_disp.shape[0] == 0:
        fixed = getattr(data.family, "theta", None)
        return jnp.asarray(1.0 if fixed is None else fixed, dtype=data.y.dtype)
    return jnp.exp(log_disp[0])


def mode_and_factor(params, data: GLMMData, v0, n_theta: int, n_beta: int,
                    known_mode: bool = False):
    """(θ, β, dispersion, v̂, factor of ∇²g/2 at v̂), v̂ found by Newton from ``v0``.

    ``known_mode``: ``v0`` already is the mode at ``params`` (no Newton iterations; the
    derivatives are the same implicit ones).
    """
    theta, beta, log_disp = unpack(params, n_theta, n_beta)
    dispersion = dispersion_value(log_disp, data)
    find = at_mode if known_mode else conditional_mode
    v = find(theta, beta, dispersion, data, v0)
    factor = hessian_factor(v, theta, beta, dispersion, data)
    return theta, beta, dispersion, v, factor


def laplace_objective(params, data: GLMMData, v0, n_theta: int, n_beta: int):
    """−2 log L by the Laplace approximation (also lme4's nAGQ=0 when β is inner)."""
    return laplace_at_mode(*mode_and_factor(params, data, v0, n_theta, n_beta), data)


def laplace_at_mode(theta, beta, dispersion, v, factor, data: GLMMData):
    s = data.structure
    logdet = logdet_first(factor) + 2.0 * jnp.sum(
        jnp.log(jnp.diagonal(factor.rest)[: s.n_re_rest])
    )
    return penalized_objective(v, theta, beta, dispersion, data) + logdet


def agq_objective(params, data: GLMMData, v0, n_theta: int, n_beta: int, grid, log_w):
    """−2 log L by adaptive Gauss–Hermite quadrature (one grouping factor)."""
    parts = mode_and_factor(params, data, v0, n_theta, n_beta)
    return agq_at_mode(*parts, data, grid, log_w)


def agq_at_mode(theta, beta, dispersion, v, factor, data: GLMMData, grid, log_w):
    s = data.structure
    m0, S0 = s.n_levels[0], s.sizes[0]
    u_hat = v[: m0 * S0].reshape(m0, S0)
    grid = jnp.asarray(grid, dtype=v.dtype)

    def level_terms(z):
        shift = jax.vmap(lambda L: solve_triangular(L, z, lower=True, trans="T"))(factor.first)
        u = u_hat + shift
        eta = linear_predictor(u.reshape(-1), theta, beta, data)
        ll = data.family.loglik_eta(data.y, eta, data.weights, dispersion)
        g = -2.0 * jax.ops.segment_sum(ll, s.refs[0], num_segments=m0) + jnp.sum(u**2, axis=1)
        return -0.5 * g + 0.5 * jnp.sum(z**2)

    per_node = jax.lax.map(level_terms, grid)  # (K, m0)
    log_integral = logsumexp(per_node + jnp.asarray(log_w, dtype=v.dtype)[:, None], axis=0)
    return logdet_first(factor) - 2.0 * jnp.sum(log_integral)
