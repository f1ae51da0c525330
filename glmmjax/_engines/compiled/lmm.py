"""Linear mixed models: the profiled deviance / REML criterion and its optimization.

With Ω(θ) = L·L' factored as in :mod:`glmmjax._engines.compiled.cholesky` (dense columns [X y]), the
last diagonal entry of L is r(θ), the penalized residual norm, and (Bates et al. 2015)

    ML:    d(θ)  = log|L_Z|² + n·(1 + log(2π r²/n))
    REML:  dR(θ) = log|L_Z|² + log|L_X|² + (n−p)·(1 + log(2π r²/(n−p)))

minus Σ log wᵢ with prior weights. Both are pure JAX functions of θ, so ``jax.grad`` and
``jax.hessian`` work on them; :func:`fit_theta` minimizes them by BFGS with exact
gradients inside one compiled ``lax.while_loop`` (diagonal entries of θ on the log
scale). The gradient comes from a custom JVP rule (trace formulas on selected entries of
Ω⁻¹, see :func:`lmm_criterion`), about three times cheaper than reverse mode through the
dense Cholesky.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from ..._model.covariance import diagonal_mask
from ..._model.structure import ReStructure
from ..._progress import noted
from ..lmm_shared import (  # noqa: F401  (re-exported: their home before lmm_shared)
    CrossProducts,
    PLSSolution,
    _from_log_scale,
    _log_scale_slope,
    _to_log_scale,
    build_structure_for,
    inverse_hessian_guess,
    moment_theta,
    random_effects,
    start_theta,
)
from ..seam import BOUNDARY_TRY
from .cholesky import (
    cross_products,
    factorize,
    logdet_first,
    omega_blocks,
    selected_inverse,
    solve_upper,
)
from .jit import program
from .optimize import minimize


class LinearMixedModel(eqx.Module):
    """An LMM as a pytree: its cross-products and structure, nothing else.

    Build it with :func:`lmm_model_from_arrays` (or :func:`host_lmm_model`, cross-products
    formed on the host); ``objective(theta)`` is the criterion to minimize.
    Under ``jax.vmap`` every array field may carry a batch axis (many responses).
    """

    structure: ReStructure
    products: CrossProducts
    nobs: jnp.ndarray
    sum_log_weights: jnp.ndarray
    n_fixef: int = eqx.field(static=True)
    reml: bool = eqx.field(static=True)

    def objective(self, theta):
        """The profiled ML deviance or REML criterion at θ (−2 × log-likelihood)."""
        return lmm_criterion(theta, self)


def lmm_model_from_arrays(structure, weights, X, y, reml: bool) -> LinearMixedModel:
    """The model for one response vector ``y`` (traceable: used under vmap)."""
    dense = jnp.concatenate([X, y[:, None]], axis=1)
    products = cross_products(structure, weights, dense)
    positive = weights > 0
    return LinearMixedModel(
        structure=structure,
        products=products,
        nobs=jnp.sum(positive).astype(X.dtype),
        sum_log_weights=jnp.sum(jnp.where(positive, jnp.log(jnp.where(positive, weights, 1)), 0)),
        n_fixef=X.shape[1],
        reml=reml,
    )


def lmm_pieces(theta, model: LinearMixedModel):
    """log|L_Z|², log|L_X|², r² and the factor at θ."""
    s = model.structure
    factor = factorize(theta, model.products, s)
    diag = jnp.diagonal(factor.rest)
    R = s.rest_size
    p = model.n_fixef
    logdet_z = logdet_first(factor) + 2.0 * jnp.sum(jnp.log(diag[: R - p - 1]))
    logdet_x = 2.0 * jnp.sum(jnp.log(diag[R - p - 1 : R - 1]))
    r2 = diag[R - 1] ** 2
    return logdet_z, logdet_x, r2, factor


def _criterion_from_pieces(model: LinearMixedModel, logdet_z, logdet_x, r2):
    n = model.nobs
    if model.reml:
        dof = n - model.n_fixef
        value = logdet_z + logdet_x + dof * (1.0 + jnp.log(2.0 * jnp.pi * r2 / dof))
    else:
        value = logdet_z + n * (1.0 + jnp.log(2.0 * jnp.pi * r2 / n))
    return value - model.sum_log_weights


def _solution_from_factor(model: LinearMixedModel, logdet_z, logdet_x, r2, factor):
    s = model.structure
    R, p = s.rest_size, model.n_fixef
    u_first, x_rest = _modes(s, factor)
    return PLSSolution(
        beta=x_rest[R - 1 - p : R - 1],
        u_first=u_first,
        u_rest=x_rest[: R - 1 - p],
        r2=r2,
        logdet_z=logdet_z,
        logdet_x=logdet_x,
        criterion=_criterion_from_pieces(model, logdet_z, logdet_x, r2),
        fixef_factor=factor.rest[R - 1 - p : R - 1, R - 1 - p : R - 1],
    )


def _plain_solution(theta, model: LinearMixedModel) -> PLSSolution:
    return _solution_from_factor(model, *lmm_pieces(theta, model))


@jax.custom_jvp
def criterion_and_solution(theta, model: LinearMixedModel):
    """(criterion, :class:`PLSSolution`) at θ from one factorization.

    Only the criterion is differentiable (the rule below; the solution's tangent is
    zero, use it as auxiliary output). The fit carries the solution of its last
    accepted point, so no second factorization, and no second compiled copy of one,
    is needed after the optimizer stops.
    """
    solution = _plain_solution(theta, model)
    return solution.criterion, solution


def lmm_criterion(theta, model: LinearMixedModel):
    """The profiled ML deviance or REML criterion at θ.

    Its derivative in θ is given analytically (``criterion_and_solution``'s rule):
    automatic differentiation through the dense Cholesky of the rest costs about ten
    evaluations, the formula about three. Higher derivatives (``jax.hessian``, used for
    Satterthwaite's df) differentiate the rule itself, which is plain JAX.
    """
    return criterion_and_solution(theta, model)[0]


def _zero_tangent(tree):
    return jax.tree_util.tree_map(jnp.zeros_like, tree)


def _criterion_jvp(primals, tangents):
    """Directional derivative from quantities the factor already gives.

    The criterion is log|P| + c·log r² (+ constants), where P is the leading block of Ω
    without y (REML) or without X and y (ML) and c = n − p (REML) or n (ML). Then

        d log|P| = ⟨P⁻¹, dP⟩   and   dr² = v'·dΩ·v   with v = [u; β̂; −1]

    (the second by the envelope theorem: Ω·v vanishes outside y's row). Ω(θ) is
    quadratic in θ and P⁻¹ is only needed where dΩ can be non-zero (selected inverse,
    :func:`glmmjax._engines.compiled.cholesky.selected_inverse`), so the tangent is the derivative of the
    cheap map θ' ↦ ⟨W, Ω(θ')⟩ with W = P⁻¹ + (c/r²)·v·v' fixed at θ.
    """
    theta, model = primals
    dtheta, dmodel = tangents
    if any(not isinstance(leaf, SymbolicZero) for leaf in jax.tree_util.tree_leaves(
            dmodel, is_leaf=lambda x: isinstance(x, SymbolicZero))):
        # Derivatives in the data (no caller needs them) by plain autodiff.
        instantiate = lambda t, p: (_zero_cotangent(p) if isinstance(t, SymbolicZero)  # noqa: E731
                                    else t)
        dtheta = instantiate(dtheta, theta)
        dmodel = jax.tree_util.tree_map(
            instantiate, dmodel, model, is_leaf=lambda x: isinstance(x, SymbolicZero))
        solution, tangents = jax.jvp(_plain_solution, (theta, model), (dtheta, dmodel))
        return (solution.criterion, solution), (tangents.criterion, _zero_tangent(solution))
    solution, contracted = _solution_and_contraction(theta, model)
    if isinstance(dtheta, SymbolicZero):
        return (solution.criterion, solution), (jnp.zeros_like(solution.criterion),
                                                _zero_tangent(solution))
    _, tangent = jax.jvp(contracted, (theta,), (dtheta,))
    return (solution.criterion, solution), (tangent, _zero_tangent(solution))


def _solution_and_contraction(theta, model: LinearMixedModel):
    """The PLS solution at θ and the map θ' ↦ ⟨W, Ω(θ')⟩ whose derivative at θ is the
    criterion's (see :func:`_criterion_jvp`)."""
    s = model.structure
    logdet_z, logdet_x, r2, factor = lmm_pieces(theta, model)
    solution = _solution_from_factor(model, logdet_z, logdet_x, r2, factor)
    R, p = s.rest_size, model.n_fixef
    if model.reml:
        n_keep, scale = R - 1, model.nobs - p
    else:
        n_keep, scale = R - 1 - p, model.nobs
    sigma_00, sigma_r0, sigma_rr = selected_inverse(s, factor, n_keep)
    u_first = solution.u_first
    x_rest = jnp.concatenate([solution.u_rest, solution.beta, -jnp.ones(1, r2.dtype)])
    c = scale / r2
    w_00 = sigma_00 + c * u_first[:, :, None] * u_first[:, None, :]
    w_r0 = 2.0 * (sigma_r0 + c * x_rest[s.entry_rest][:, None] * u_first[s.entry_first])
    w_rr = sigma_rr + c * jnp.outer(x_rest, x_rest)

    def contracted(th):
        diag_blocks, rows, rest = omega_blocks(th, model.products, s)
        return jnp.sum(w_00 * diag_blocks) + jnp.sum(w_r0 * rows) + jnp.sum(w_rr * rest)

    return solution, contracted


criterion_and_solution.defjvp(_criterion_jvp, symbolic_zeros=True)


@jax.custom_vjp
def _fit_criterion(theta, model: LinearMixedModel):
    """:func:`criterion_and_solution` for BFGS, differentiable in reverse mode only.

    Its gradient is formed in the forward pass (the gradient of the cheap contraction,
    :func:`_solution_and_contraction`): reverse mode through the custom JVP would first
    linearize and then transpose the whole rule, which on InstEval made a third of the
    fit program's tracing and compile time.
    """
    return criterion_and_solution(theta, model)


def _fit_criterion_fwd(theta, model):
    solution, contracted = _solution_and_contraction(theta, model)
    zeros = jax.tree_util.tree_map(_zero_cotangent, model)
    return (solution.criterion, solution), (jax.grad(contracted)(theta), zeros)


def _fit_criterion_bwd(residuals, cotangents):
    gradient, model_zeros = residuals
    return cotangents[0] * gradient, model_zeros


def _zero_cotangent(leaf):
    """A zero (co)tangent for an array leaf: float0 for integer arrays, as JAX expects."""
    if jnp.issubdtype(leaf.dtype, jnp.inexact):
        return jnp.zeros_like(leaf)
    return np.zeros(leaf.shape, dtype=jax.dtypes.float0)


_fit_criterion.defvjp(_fit_criterion_fwd, _fit_criterion_bwd)


def _modes(s: ReStructure, factor):
    """v = [u; β̂; −1] from L'·v = [0; −r] (u for the first term, then the rest)."""
    R = s.rest_size
    rhs_rest = jnp.zeros(R, dtype=factor.rest.dtype).at[R - 1].set(-factor.rest[R - 1, R - 1])
    rhs_first = jnp.zeros((s.n_levels[0], s.sizes[0]), dtype=factor.rest.dtype)
    return solve_upper(s, factor, rhs_first, rhs_rest)


def fit_theta(model: LinearMixedModel, theta0, gtol=1e-8, loose_gtol=1e-3):
    """Minimize the criterion over θ; then try near-zero diagonals at exactly zero.

    BFGS works on the diagonal entries of θ on the log scale (down to _LOG_FLOOR, see
    :func:`_from_log_scale`): from lme4's start at 1 the criterion is far closer to
    quadratic in log θ than in θ, and its Hessian there is close to diag(2·m_t) (the
    starting metric's inverse): on InstEval from lme4's start, 8 iterations and 9
    evaluations instead of 15 and 37 on the plain scale.

    Pure and vmap-able (``fit_many``). Returns the optimizer's solution (its ``x`` and
    ``grad`` mapped back to θ) and the final θ (the boundary-adjusted one).
    """
    solution = _minimize_theta(model, theta0, gtol, loose_gtol)
    trial, _ = boundary_trial(solution.x, model.structure)
    keep = keep_trial(lmm_criterion(trial, model), solution.value)
    return solution, jnp.where(keep, trial, solution.x)


def _minimize_theta(model: LinearMixedModel, theta0, gtol, loose_gtol, carry=None,
                    max_iterations: int = 500):
    """BFGS in the log-scale coordinates; with ``carry`` (a :class:`PLSSolution` of the
    right shapes), ``solution.carry`` is the PLS solution at the optimum."""
    theta0 = jnp.asarray(theta0)
    mask = jnp.asarray(diagonal_mask(model.structure.structures))
    phi0 = _to_log_scale(theta0, mask)
    objective = _log_scale_criterion if carry is None else _log_scale_with_solution
    solution = minimize(
        objective, phi0, (model, mask), gtol=gtol, loose_gtol=loose_gtol,
        inverse_hessian=jnp.asarray(inverse_hessian_guess(model.structure), theta0.dtype),
        xtol=1e-7, decrease_tol=1e-14, expensive=True, carry=carry,
        max_iterations=max_iterations,
    )
    slope = _log_scale_slope(solution.x, mask)
    return solution._replace(x=_from_log_scale(solution.x, mask), grad=solution.grad / slope)


def boundary_trial(theta, structure: ReStructure):
    """θ with its near-zero diagonal entries set to exactly zero, and whether that
    changed anything (lme4 also ends on the boundary when the optimum is there)."""
    mask = jnp.asarray(diagonal_mask(structure.structures))
    trial = jnp.where(mask & (jnp.abs(theta) < BOUNDARY_TRY), 0.0, theta)
    return trial, jnp.any(trial != theta)


def keep_trial(f_trial, f_best):
    """Take the boundary point if it is no worse than the optimum (up to rounding)."""
    return jnp.isfinite(f_trial) & (f_trial <= f_best + 1e-10 * (1 + jnp.abs(f_best)))


def _log_scale_criterion(phi, model, mask):
    return _fit_criterion(_from_log_scale(phi, mask), model)[0]


def _log_scale_with_solution(phi, _carry, model, mask):
    return _fit_criterion(_from_log_scale(phi, mask), model)


def solve_pls(theta, model: LinearMixedModel) -> PLSSolution:
    """Back-substitution for [u; β] at θ: L'·[u; β; −1] = [0; −r] (see module doc)."""
    return _plain_solution(theta, model)


@program
@functools.partial(noted, what="the LMM fit")
def _fit_program(model: LinearMixedModel, theta0, max_iterations: int = 500):
    """The whole fit in one program: BFGS (carrying the PLS solution of its last
    accepted point, so the optimum is not factored again), b = Λu, and the boundary
    point to try, if any. Its compile time is most of a first fit on large data
    (InstEval), so nothing that is rarely needed is compiled into it, and the
    cross-products come in ready-made (:func:`host_lmm_model`)."""
    carry = jax.tree_util.tree_map(
        lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(_plain_solution, theta0, model))
    solution = _minimize_theta(model, theta0, 1e-8, 1e-3, carry=carry,
                               max_iterations=max_iterations)
    pls = solution.carry
    theta = solution.x
    trial, try_it = boundary_trial(theta, model.structure)
    effects = random_effects(theta, model.structure, pls.u_first, pls.u_rest)
    return solution._replace(carry=None), theta, pls, effects, trial, try_it


@program
def _solve_program(model: LinearMixedModel, theta):
    pls = solve_pls(theta, model)
    return pls, random_effects(theta, model.structure, pls.u_first, pls.u_rest)


def host_lmm_model(structure, weights, X, y, reml: bool) -> LinearMixedModel:
    """:func:`lmm_model_from_arrays` for float64 data, computed with numpy (no tracing;
    see :mod:`glmmjax._engines.host.products`)."""
    from ..host.lmm import host_model

    model = host_model(structure, weights, X, y, reml)
    return LinearMixedModel(
        structure=structure,
        products=jax.tree_util.tree_map(jnp.asarray, model.products),
        nobs=jnp.asarray(model.nobs),
        sum_log_weights=jnp.asarray(model.sum_log_weights),
        n_fixef=model.n_fixef,
        reml=reml,
    )


def fit_lmm_arrays(structure, weights, X, y, reml: bool, theta0=None, max_iter: int = 500):
    """Fit one LMM from float64 arrays with the compiled fit program; returns (solution, θ,
    PLSSolution, [b_t]) (b_t = Λ_t·u_t per term at that θ, relative to σ).

    The engine is chosen by :func:`glmmjax._engines.seam.fit_lmm` (the host engine,
    :mod:`glmmjax._engines.host.lmm`, takes the same steps and agrees to rounding). The
    boundary point (near-zero diagonals of θ set to zero) is evaluated by a second
    program, compiled only for fits that end near the boundary.
    """
    if theta0 is None:
        theta0 = start_theta(structure)
    model = host_lmm_model(structure, weights, X, y, reml)
    solution, theta, pls, effects, trial, try_it = _fit_program(
        model, jnp.asarray(theta0, jnp.float64), int(max_iter))
    if bool(try_it):
        pls_trial, effects_trial = _solve_program(model, trial)
        if bool(keep_trial(pls_trial.criterion, solution.value)):
            theta, pls, effects = trial, pls_trial, effects_trial
    return solution, theta, pls, effects
