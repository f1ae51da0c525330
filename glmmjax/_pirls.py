"""Conditional modes of the random effects (GLMM inner problem) with exact derivatives.

For parameters ψ = (θ, β, dispersion), the spherical random effects u minimize

    g(u) = −2 Σᵢ ℓᵢ(ηᵢ) + |u|²,   η = Xβ + offset + ZΛθu

(with lme4's nAGQ=0, β_in is found here too: η gets + D·β_in and only u is penalized).
We solve ∇g = 0 by Newton's method with step halving; the Hessian ∇²g/2 =
Λ'Z'WZΛ + I has the LMM's block structure, so the blocked Cholesky of
:mod:`glmmjax._cholesky` solves each step.

The mode is a function û(ψ) with a custom JVP from the implicit function theorem,
u̇ = −H⁻¹·∂ψ(∇g/2)·ψ̇, so gradients and Hessians of anything built on û are exact and
never unroll the Newton loop (DESIGN.md, "GLMM: Laplace").
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ._cholesky import cross_products, factorize, solve_lower, solve_upper
from ._covariance import theta_to_factors
from ._structure import ReStructure

MAX_NEWTON = 60
NEWTON_TOL = 1e-10


class GLMMData(eqx.Module):
    """The arrays of one GLMM (batched under vmap) and its static description.

    ``dense`` holds the columns whose coefficients are found in the inner problem
    (X for nAGQ=0, no columns otherwise); ``structure`` is built with that many dense
    columns.
    """

    structure: ReStructure
    X: jnp.ndarray
    dense: jnp.ndarray
    y: jnp.ndarray
    weights: jnp.ndarray
    offset: jnp.ndarray
    family: object


def z_lambda_times(theta, s: ReStructure, u_first, u_rest):
    """ZΛu as an (n,) vector, from u split as (m0, S0) and (R_re,)."""
    factors = theta_to_factors(theta, s.sizes)
    out = jnp.sum(s.z[0] * (u_first @ factors[0].T)[s.refs[0]], axis=1)
    for t in range(1, s.n_terms):
        start, m, size = s.offsets[t], s.n_levels[t], s.sizes[t]
        b = u_rest[start : start + m * size].reshape(m, size) @ factors[t].T
        out = out + jnp.sum(s.z[t] * b[s.refs[t]], axis=1)
    return out


def lambda_z_transpose_times(theta, s: ReStructure, r):
    """Λ'Z'r split as ((m0, S0), (R_re,)) for an (n,) vector r."""
    factors = theta_to_factors(theta, s.sizes)
    first = jax.ops.segment_sum(s.z[0] * r[:, None], s.refs[0], num_segments=s.n_levels[0])
    first = first @ factors[0]
    rest = [
        (
            jax.ops.segment_sum(s.z[t] * r[:, None], s.refs[t], num_segments=s.n_levels[t])
            @ factors[t]
        ).reshape(-1)
        for t in range(1, s.n_terms)
    ]
    rest = jnp.concatenate(rest) if rest else jnp.zeros((0,), dtype=r.dtype)
    return first, rest


def split(v, s: ReStructure):
    """Flat inner variable -> (u_first (m0, S0), u_rest (R_re,), beta_in (k,))."""
    m0, S0 = s.n_levels[0], s.sizes[0]
    q0 = m0 * S0
    return v[:q0].reshape(m0, S0), v[q0 : q0 + s.n_re_rest], v[q0 + s.n_re_rest :]


def inner_size(s: ReStructure) -> int:
    return s.n_levels[0] * s.sizes[0] + s.rest_size


def linear_predictor(v, theta, beta, data: GLMMData):
    s = data.structure
    u_first, u_rest, beta_in = split(v, s)
    return (
        data.X @ beta
        + data.offset
        + z_lambda_times(theta, s, u_first, u_rest)
        + data.dense @ beta_in
    )


def _loglik_derivatives(eta, dispersion, data: GLMMData):
    """ℓ(η), ℓ'(η) and W = −ℓ''(η) per observation, by autodiff of the family."""

    def total(e):
        return data.family.loglik_eta(data.y, e, data.weights, dispersion)

    def first(e):
        return jax.grad(lambda x: jnp.sum(total(x)))(e)

    value = total(eta)
    grad, second = jax.jvp(first, (eta,), (jnp.ones_like(eta),))
    return value, grad, -second


def penalized_objective(v, theta, beta, dispersion, data: GLMMData):
    """g(v) = −2 Σ ℓ + |u|²."""
    s = data.structure
    eta = linear_predictor(v, theta, beta, data)
    ll = data.family.loglik_eta(data.y, eta, data.weights, dispersion)
    u_first, u_rest, _ = split(v, s)
    return -2.0 * jnp.sum(ll) + jnp.sum(u_first**2) + jnp.sum(u_rest**2)


def half_gradient(v, theta, beta, dispersion, data: GLMMData):
    """∇g/2 = −[Λ'Z'; D']ℓ' + [u; 0]."""
    s = data.structure
    eta = linear_predictor(v, theta, beta, data)
    _, grad, _ = _loglik_derivatives(eta, dispersion, data)
    u_first, u_rest, _ = split(v, s)
    first, rest = lambda_z_transpose_times(theta, s, grad)
    dense = data.dense.T @ grad
    return jnp.concatenate(
        [(u_first - first).reshape(-1), u_rest - rest, -dense]
    )


def hessian_factor(v, theta, beta, dispersion, data: GLMMData, positive: bool = False):
    """Blocked Cholesky factor of ∇²g/2 = Ω(θ) with weights W = −ℓ''(η).

    ``positive`` floors W at a tiny positive value (for Newton steps on non-concave
    log-likelihoods); the Laplace value itself always uses the exact W.
    """
    s = data.structure
    eta = linear_predictor(v, theta, beta, data)
    _, _, w = _loglik_derivatives(eta, dispersion, data)
    if positive:
        w = jnp.maximum(w, 1e-10 * (1.0 + jnp.abs(w)))
    products = cross_products(s, w, data.dense)
    return factorize(theta, products, s)


def _solve(s: ReStructure, factor, rhs):
    """Solve Ω·x = rhs for a flat rhs laid out like the inner variable."""
    m0, S0 = s.n_levels[0], s.sizes[0]
    rhs_first = rhs[: m0 * S0].reshape(m0, S0)
    rhs_rest = rhs[m0 * S0 :]
    y_first, y_rest = solve_lower(s, factor, rhs_first, rhs_rest)
    x_first, x_rest = solve_upper(s, factor, y_first, y_rest)
    return jnp.concatenate([x_first.reshape(-1), x_rest])


def _newton_system(v, theta, beta, dispersion, data: GLMMData):
    """∇g/2 and the factor of a positive-definite ∇²g/2 from one pass over the data."""
    s = data.structure
    eta = linear_predictor(v, theta, beta, data)
    _, grad_eta, w = _loglik_derivatives(eta, dispersion, data)
    u_first, u_rest, _ = split(v, s)
    first, rest = lambda_z_transpose_times(theta, s, grad_eta)
    grad = jnp.concatenate(
        [(u_first - first).reshape(-1), u_rest - rest, -(data.dense.T @ grad_eta)]
    )
    # Floor W for the step only (non-concave log-likelihoods); see hessian_factor.
    w = jnp.maximum(w, 1e-10 * (1.0 + jnp.abs(w)))
    return grad, factorize(theta, cross_products(s, w, data.dense), s)


def _newton(theta, beta, dispersion, data: GLMMData, v0):
    s = data.structure

    def objective(v):
        return penalized_objective(v, theta, beta, dispersion, data)

    def cond(state):
        _, _, k, done = state
        return (~done) & (k < MAX_NEWTON)

    def body(state):
        v, g_value, k, _ = state
        grad, factor = _newton_system(v, theta, beta, dispersion, data)
        step = -_solve(s, factor, grad)

        def halve_cond(carry):
            t, value, tries = carry
            return ~(jnp.isfinite(value) & (value <= g_value)) & (tries < 30)

        def halve_body(carry):
            t, _, tries = carry
            t = 0.5 * t
            return t, objective(v + t * step), tries + 1

        one = jnp.ones((), dtype=v.dtype)
        t, value, _ = jax.lax.while_loop(halve_cond, halve_body, (one, objective(v + step), 0))
        ok = jnp.isfinite(value) & (value <= g_value)
        v_new = jnp.where(ok, v + t * step, v)
        # Newton decrement (squared), a scale-free measure of distance to the mode.
        decrement = -jnp.dot(grad, step)
        done = (~ok) | (decrement < NEWTON_TOL) | (jnp.abs(g_value - value) <= 1e-14 * (1 + jnp.abs(value)))
        return v_new, jnp.where(ok, value, g_value), k + 1, done

    state = (v0, objective(v0), jnp.zeros((), jnp.int32), jnp.zeros((), bool))
    v, _, _, _ = jax.lax.while_loop(cond, body, state)
    return v


@eqx.filter_custom_jvp
def conditional_mode(theta, beta, dispersion, data: GLMMData, v0):
    """The inner mode v̂(θ, β, dispersion) (u, and β_in for nAGQ=0), from start ``v0``."""
    return _newton(theta, beta, dispersion, data, v0)


@conditional_mode.def_jvp
def _conditional_mode_jvp(primals, tangents):
    theta, beta, dispersion, data, v0 = primals
    t_theta, t_beta, t_disp, _, _ = tangents
    v = conditional_mode(theta, beta, dispersion, data, jax.lax.stop_gradient(v0))
    zeros = lambda x, t: jnp.zeros_like(x) if t is None else t  # noqa: E731
    t_theta, t_beta, t_disp = zeros(theta, t_theta), zeros(beta, t_beta), zeros(dispersion, t_disp)
    _, mixed = jax.jvp(
        lambda a, b, c: half_gradient(v, a, b, c, data),
        (theta, beta, dispersion),
        (t_theta, t_beta, t_disp),
    )
    factor = hessian_factor(v, theta, beta, dispersion, data)
    return v, -_solve(data.structure, factor, mixed)
