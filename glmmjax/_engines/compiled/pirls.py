"""Conditional modes of the random effects (GLMM inner problem) with exact derivatives.

For parameters ψ = (θ, β, dispersion), the spherical random effects u minimize

    g(u) = −2 Σᵢ ℓᵢ(ηᵢ) + |u|²,   η = Xβ + offset + ZΛθu

(with lme4's nAGQ=0, β_in is found here too: η gets + D·β_in and only u is penalized).
We solve ∇g = 0 by Newton's method with step halving; the Hessian ∇²g/2 =
Λ'Z'WZΛ + I has the LMM's block structure, so the blocked Cholesky of
:mod:`glmmjax._engines.compiled.cholesky` solves each step.

The mode is a function û(ψ) with a custom JVP from the implicit function theorem,
u̇ = −H⁻¹·∂ψ(∇g/2)·ψ̇, so gradients and Hessians of anything built on û are exact and
never unroll the Newton loop (DESIGN.md, "GLMM: Laplace").
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ..._model.covariance import theta_to_factors
from ..._model.structure import ReStructure, split
from .cholesky import factorize, solve_lower, solve_upper
from .eta_terms import kernel, kernel_terms, loglik_constant
from .products import DenseLayout, cross_products, dense_layout

MAX_NEWTON = 60
NEWTON_TOL = 1e-10


class GLMMData(eqx.Module):
    """The arrays of one GLMM (batched under vmap) and its static description.

    ``dense`` holds the columns whose coefficients are found in the inner problem
    (X for nAGQ=0, no columns otherwise); ``structure`` is built with that many dense
    columns. ``ll_constant`` is Σ(ℓ − kernel) (:mod:`glmmjax._engines.compiled.eta_terms`); pass it when
    the same data serve many evaluations, else it is recomputed in each.
    """

    structure: ReStructure
    X: jnp.ndarray
    dense: jnp.ndarray
    y: jnp.ndarray
    weights: jnp.ndarray
    offset: jnp.ndarray
    family: object
    ll_constant: jnp.ndarray | None = None

    def constant(self):
        if self.ll_constant is not None:
            return self.ll_constant
        return loglik_constant(self.family, self.y, self.weights)


def z_lambda_times(theta, s: ReStructure, u_first, u_rest):
    """ZΛu as an (n,) vector, from u split as (m0, S0) and (R_re,)."""
    factors = theta_to_factors(theta, s.structures)
    out = jnp.sum(s.z[0] * (u_first @ factors[0].T)[s.refs[0]], axis=1)
    for t in range(1, s.n_terms):
        start, m, size = s.offsets[t], s.n_levels[t], s.sizes[t]
        b = u_rest[start : start + m * size].reshape(m, size) @ factors[t].T
        out = out + jnp.sum(s.z[t] * b[s.refs[t]], axis=1)
    return out


def lambda_z_transpose_times(theta, s: ReStructure, r):
    """Λ'Z'r split as ((m0, S0), (R_re,)) for an (n,) vector r."""
    factors = theta_to_factors(theta, s.structures)
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


def inner_size(s: ReStructure) -> int:
    return s.n_levels[0] * s.sizes[0] + s.rest_size


def linear_predictor(v, theta, beta, data: GLMMData):
    return _eta(v, theta, _fixed_part(beta, data), data.structure, dense_layout(data.dense))


def _fixed_part(beta, data: GLMMData):
    """Xβ + offset: constant during a Newton solve (X by column, see compiled.products)."""
    if data.X.shape[1] == 0:
        return data.offset
    return beta @ data.X.T + data.offset


def _eta(v, theta, fixed, s: ReStructure, layout: DenseLayout):
    u_first, u_rest, beta_in = split(v, s)
    eta = fixed + z_lambda_times(theta, s, u_first, u_rest)
    if beta_in.shape[0]:
        eta = eta + beta_in @ layout.t
    return eta


def _loglik_derivatives(eta, dispersion, data: GLMMData):
    """Kernel of ℓ(η), ℓ'(η) and W = −ℓ''(η) per observation (:mod:`glmmjax._engines.compiled.eta_terms`)."""
    return kernel_terms(data.family, data.y, eta, data.weights, dispersion)


def _penalty(v, s: ReStructure):
    u_first, u_rest, _ = split(v, s)
    return jnp.sum(u_first**2) + jnp.sum(u_rest**2)


def penalized_objective(v, theta, beta, dispersion, data: GLMMData):
    """g(v) = −2 Σ ℓ + |u|²."""
    eta = linear_predictor(v, theta, beta, data)
    ll = kernel(data.family, data.y, eta, data.weights, dispersion)
    return -2.0 * (jnp.sum(ll) + data.constant()) + _penalty(v, data.structure)


def _half_gradient_from(grad_eta, v, theta, s: ReStructure, layout: DenseLayout):
    """∇g/2 = −[Λ'Z'; D']ℓ' + [u; 0] from ℓ' per observation."""
    u_first, u_rest, _ = split(v, s)
    first, rest = lambda_z_transpose_times(theta, s, grad_eta)
    return jnp.concatenate(
        [(u_first - first).reshape(-1), u_rest - rest, -(layout.t @ grad_eta)]
    )


def half_gradient(v, theta, beta, dispersion, data: GLMMData):
    """∇g/2 at v."""
    layout = dense_layout(data.dense)
    eta = _eta(v, theta, _fixed_part(beta, data), data.structure, layout)
    _, grad_eta, _ = _loglik_derivatives(eta, dispersion, data)
    return _half_gradient_from(grad_eta, v, theta, data.structure, layout)


def hessian_factor(v, theta, beta, dispersion, data: GLMMData, positive: bool = False):
    """Blocked Cholesky factor of ∇²g/2 = Ω(θ) with weights W = −ℓ''(η).

    ``positive`` floors W at a tiny positive value (for Newton steps on non-concave
    log-likelihoods); the Laplace value itself always uses the exact W.
    """
    s = data.structure
    layout = dense_layout(data.dense)
    eta = _eta(v, theta, _fixed_part(beta, data), s, layout)
    _, _, w = _loglik_derivatives(eta, dispersion, data)
    if positive:
        w = jnp.maximum(w, 1e-10 * (1.0 + jnp.abs(w)))
    return factorize(theta, cross_products(s, w, layout), s)


def solve_inner(s: ReStructure, factor, rhs):
    """Solve Ω·x = rhs for a flat rhs laid out like the inner variable."""
    m0, S0 = s.n_levels[0], s.sizes[0]
    rhs_first = rhs[: m0 * S0].reshape(m0, S0)
    rhs_rest = rhs[m0 * S0 :]
    y_first, y_rest = solve_lower(s, factor, rhs_first, rhs_rest)
    x_first, x_rest = solve_upper(s, factor, y_first, y_rest)
    return jnp.concatenate([x_first.reshape(-1), x_rest])


def log_concave(family) -> bool:
    """Whether ℓ(η) is concave for every y, so W = −ℓ'' ≥ 0 on every row (built-in
    families and links; others are not assumed to be)."""
    from ..._families.math import supported

    pairs = {"Binomial": ("Logit", "Probit", "Cloglog", "Loglog", "Log", "Identity"),
             "Poisson": ("Log", "Identity"), "NegativeBinomial": ("Log",),
             "Gaussian": ("Identity",), "Gamma": ("Log",)}
    return supported(family) and type(family.link).__name__ in pairs.get(
        type(family).__name__, ())


def _finite_factor(factor) -> jnp.ndarray:
    return jnp.all(jnp.isfinite(factor.first)) & jnp.all(jnp.isfinite(factor.rest))


class _NewtonState(eqx.Module):
    v: jnp.ndarray  # last accepted point
    value: jnp.ndarray  # g(v) without the constant
    step: jnp.ndarray  # Newton step at v
    t: jnp.ndarray  # scale of the pending trial v + t·step (0 before the first)
    decrement: jnp.ndarray
    k: jnp.ndarray  # accepted points
    tries: jnp.ndarray  # halvings of the current step
    done: jnp.ndarray


def _newton(theta, beta, dispersion, data: GLMMData, v0):
    """Newton's method with step halving, one pass over the data per trial point.

    Each loop pass evaluates g, ∇g/2 and the factor of ∇²g/2 (W floored positive) at
    one trial point, from a single computation of η; an accepted trial yields the next
    step at once. A loop that evaluates the objective and the Newton system in separate
    passes, with an inner halving loop, does twice the work and compiles two loops.
    Converged when the Newton decrement is below ``NEWTON_TOL``; that last, tiny step
    is taken without evaluation (Newton converges quadratically there).
    """
    s = data.structure
    family = data.family
    fixed = _fixed_part(beta, data)
    layout = dense_layout(data.dense)

    def evaluate(v):
        eta = _eta(v, theta, fixed, s, layout)
        ll, grad_eta, w = kernel_terms(family, data.y, eta, data.weights, dispersion)
        value = -2.0 * jnp.sum(ll) + _penalty(v, s)
        grad = _half_gradient_from(grad_eta, v, theta, s, layout)
        floored = jnp.maximum(w, 1e-10 * (1.0 + jnp.abs(w)))
        if log_concave(family):
            # W ≥ 0 on every row: the floor only guards rounding.
            return value, grad, factorize(theta, cross_products(s, floored, layout), s)

        # Elsewhere W < 0 on some rows is possible: the exact Newton step wherever Ω is
        # positive definite (with W floored, Newton converges only linearly and may stop
        # short of the mode, so L would depend on the start), the floored W otherwise.
        def exact_or_floored():
            exact = factorize(theta, cross_products(s, w, layout), s)
            return jax.lax.cond(_finite_factor(exact), lambda: exact, lambda: factorize(
                theta, cross_products(s, floored, layout), s))

        factor = jax.lax.cond(
            jnp.any(w < 0), exact_or_floored,
            lambda: factorize(theta, cross_products(s, floored, layout), s))
        return value, grad, factor

    def cond(state):
        return ~state.done

    def body(state):
        first = state.k == 0
        trial = state.v + state.t * state.step
        value, grad, factor = evaluate(trial)
        ok = jnp.isfinite(value) & (first | (value <= state.value))
        step = -solve_inner(s, factor, grad)
        # Newton decrement (squared), a scale-free measure of distance to the mode.
        decrement = -jnp.dot(grad, step)
        stalled = ~first & (jnp.abs(state.value - value) <= 1e-14 * (1 + jnp.abs(value)))
        k = state.k + 1
        accepted_done = (decrement < NEWTON_TOL) | stalled | (k >= MAX_NEWTON)
        tries = state.tries + 1
        one = jnp.ones((), dtype=trial.dtype)
        return _NewtonState(
            v=jnp.where(ok, trial, state.v),
            value=jnp.where(ok, value, state.value),
            step=jnp.where(ok, step, state.step),
            t=jnp.where(ok, one, 0.5 * state.t),
            decrement=jnp.where(ok, decrement, state.decrement),
            k=jnp.where(ok, k, state.k),
            tries=jnp.where(ok, 0, tries),
            done=jnp.where(ok, accepted_done, (tries >= 30) | first),
        )

    zero = jnp.zeros((), dtype=v0.dtype)
    state = _NewtonState(
        v=v0, value=jnp.asarray(jnp.inf, v0.dtype), step=jnp.zeros_like(v0), t=zero,
        decrement=jnp.asarray(jnp.inf, v0.dtype), k=jnp.zeros((), jnp.int32),
        tries=jnp.zeros((), jnp.int32), done=jnp.zeros((), bool),
    )
    state = jax.lax.while_loop(cond, body, state)
    return jnp.where(state.decrement < NEWTON_TOL, state.v + state.step, state.v)


@eqx.filter_custom_jvp
def at_mode(theta, beta, dispersion, data: GLMMData, v):
    """``v``, the inner mode at these parameters, differentiable as the function v̂(ψ).

    The primal is the identity: ``v`` must already be the mode (from :func:`_newton`).
    Derivatives follow from the implicit function theorem, so objectives built on the
    mode can be differentiated (to any order) without running or unrolling Newton.
    """
    return v


@at_mode.def_jvp
def _at_mode_jvp(primals, tangents):
    """v̇ = −H⁻¹·(∂(∇g/2)/∂ψ·ψ̇ + ∂(∇g/2)/∂D·Ḋ): the total derivative of the mode, in the
    parameters ψ and in the data D (y, X, weights, offset, Z: any float leaf of
    ``data``). Leaving the data out gives wrong gradients whenever a data leaf is
    differentiated, e.g. a network's output entering as the offset."""
    theta, beta, dispersion, data, v_in = primals
    t_theta, t_beta, t_disp, t_data, _ = tangents
    # Call at_mode again so that derivatives of this rule (second order) see v̂(ψ, D).
    v = at_mode(theta, beta, dispersion, data, v_in)
    zeros = lambda x, t: jnp.zeros_like(x) if t is None else t  # noqa: E731
    t_theta, t_beta, t_disp = zeros(theta, t_theta), zeros(beta, t_beta), zeros(dispersion, t_disp)
    dynamic, static = eqx.partition(data, eqx.is_inexact_array)
    t_dynamic = jax.tree_util.tree_map(
        lambda p, t: None if p is None else (jnp.zeros_like(p) if t is None else t),
        dynamic, t_data if t_data is not None else jax.tree_util.tree_map(lambda _: None, dynamic),
        is_leaf=lambda x: x is None,
    )
    _, mixed = jax.jvp(
        lambda a, b, c, d: half_gradient(v, a, b, c, eqx.combine(d, static)),
        (theta, beta, dispersion, dynamic),
        (t_theta, t_beta, t_disp, t_dynamic),
    )
    factor = hessian_factor(v, theta, beta, dispersion, data)
    return v, -solve_inner(data.structure, factor, mixed)


def conditional_mode(theta, beta, dispersion, data: GLMMData, v0):
    """The inner mode v̂(θ, β, dispersion) (u, and β_in for nAGQ=0), from start ``v0``.

    Newton sees no tangents (its inputs are stopped); :func:`at_mode` supplies the
    exact derivatives.
    """
    sg = jax.lax.stop_gradient
    data_sg = jax.tree_util.tree_map(lambda x: sg(x) if eqx.is_array(x) else x, data)
    v = _newton(sg(theta), sg(beta), sg(dispersion), data_sg, sg(v0))
    return at_mode(theta, beta, dispersion, data, v)
