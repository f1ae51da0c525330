"""``glmmjax.solve``: maximum-likelihood parameters as a differentiable JAX function.

The optimizer runs on the model's arrays with their derivatives stopped; derivatives of
the result come from the implicit function theorem at the optimum (DESIGN.md,
"Differentiating through data and through the fit"). With r(x, D) = 0 the optimality
condition in the optimized variables x for data D,

    dx̂/dD = −[∂r/∂x]⁻¹ · ∂r/∂D,

so a JVP costs one JVP of r in the data and one solve with ∂r/∂x (the objective's
Hessian, already at hand from the fit for GLMMs), and a VJP, by transposition, the
same. The optimizer is never unrolled.

- LMM: x = θ and r = ∇_θ of the profiled deviance (ML) or REML criterion; then β̂(θ̂, D)
  and σ̂²(θ̂, D) follow in closed form (plain autodiff).
- GLMM: x = (θ, β, log dispersion) and r = the gradient of the Laplace/AGQ deviance.

At the boundary (a diagonal entry of θ exactly 0, a singular fit), the condition for
that entry is θ_j = 0 instead (the active set): its derivative is zero and the others
are those of the fit restricted to the boundary face.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._engines.compiled.glmm import GLMMSetup, glmm_pipeline
from ._engines.compiled.laplace import gauss_hermite_grid
from ._engines.compiled.lmm import _criterion_from_pieces, _plain_solution, fit_theta, lmm_pieces
from ._engines.compiled.marginal import glmm_data, glmm_deviance, lmm_arrays
from ._engines.compiled.optimize import Status
from ._engines.compiled.pirls import inner_size
from ._model.cov_structures import as_structures
from ._model.covariance import diagonal_mask, initial_theta, split_theta
from ._model.params import Params


class SolveInfo(eqx.Module):
    """How :func:`solve` ended (arrays; batched under ``vmap``).

    Attributes:
        converged: bool, the optimizer met its gradient tolerance.
        status: int, a :class:`glmmjax.Convergence`-style code (0 converged, 1 maximum
            iterations, 2 line search failed, 3 non-finite).
        iterations: optimizer iterations (the last stage's for GLMMs).
        deviance: −2 log L at the solution (the REML criterion for REML).
        grad_norm: max |gradient| of the deviance in the optimized variables.
        singular: bool, some variance component is exactly zero (a boundary fit).
    """

    converged: jnp.ndarray
    status: jnp.ndarray
    iterations: jnp.ndarray
    deviance: jnp.ndarray
    grad_norm: jnp.ndarray
    singular: jnp.ndarray


def _stop(tree):
    return jax.tree_util.tree_map(
        lambda x: jax.lax.stop_gradient(x) if eqx.is_inexact_array(x) else x, tree)


def column_signs(theta, covariances) -> list:
    """Per term, ±1 per column of Λ_t: −1 where an unstructured term's column has a
    negative diagonal (a structured term's Λ_t depends on |SD| only: all +1)."""
    structures = as_structures(covariances)
    return [cov.column_signs(part, jnp) for cov, part in
            zip(structures, split_theta(theta, structures))]


def canonical_signs(theta, covariances) -> jnp.ndarray:
    """±1 per θ entry such that θ·signs is the reported θ (flipping a column's sign
    leaves Λ_tΛ_t', hence the likelihood, unchanged)."""
    structures = as_structures(covariances)
    signs = [cov.entry_signs(part, jnp) for cov, part in
             zip(structures, split_theta(theta, structures))]
    return jnp.concatenate(signs) if signs else jnp.zeros(0, theta.dtype)


def _flip_modes(v, theta, structure):
    """The spherical modes u after flipping Λ's columns to lme4's signs: b = Λu is
    unchanged when a column of Λ and the matching component of u change sign together."""
    parts = [jnp.tile(c, m) for c, m in zip(column_signs(theta, structure.structures),
                                            structure.n_levels)]
    flip = jnp.concatenate(parts)
    return v.at[: flip.shape[0]].multiply(flip)


@eqx.filter_custom_jvp
def _implicit(x_hat, model, residual, active, hessian, v_hat):
    """``x_hat``, a root of ``residual(x, model, v_hat)``, differentiable in ``model``'s
    float leaves by the implicit function theorem (module docstring). ``hessian``:
    ∂residual/∂x at the root (None: formed here by forward mode). ``active``: entries
    held at their value (boundary)."""
    return x_hat


@_implicit.def_jvp
def _implicit_jvp(primals, tangents):
    x_hat, model, residual, active, hessian, v_hat = primals
    t_model = tangents[1]
    x = jax.lax.stop_gradient(x_hat)
    dynamic, static = eqx.partition(model, eqx.is_inexact_array)
    if t_model is None:
        t_model = jax.tree_util.tree_map(lambda _: None, dynamic)
    t_dynamic = jax.tree_util.tree_map(
        lambda p, t: None if p is None else (jnp.zeros_like(p) if t is None else t),
        dynamic, t_model, is_leaf=lambda a: a is None)
    _, rhs = jax.jvp(lambda d: residual(x, eqx.combine(d, static), v_hat),
                     (dynamic,), (t_dynamic,))
    if hessian is None:
        hessian = jax.jacfwd(lambda z: residual(z, model, v_hat))(x)
    hessian = jax.lax.stop_gradient(hessian)
    eye = jnp.eye(x.shape[0], dtype=x.dtype)
    matrix = jnp.where(active[:, None], eye, 0.5 * (hessian + hessian.T))
    rhs = jnp.where(active, 0.0, rhs)
    return x_hat, -jnp.linalg.solve(matrix, rhs)


def _profiled_criterion(theta, model):
    lmm = lmm_arrays(model)
    logdet_z, logdet_x, r2, _ = lmm_pieces(theta, lmm)
    return _criterion_from_pieces(lmm, logdet_z, logdet_x, r2)


def _lmm_residual(theta, model, _v):
    return jax.grad(_profiled_criterion)(theta, model)


def _glmm_residual(x, model, v):
    n_theta, p = model.structure.n_theta, model.X.shape[1]

    def deviance(z):
        params = Params(theta=z[:n_theta], beta=z[n_theta : n_theta + p],
                        log_dispersion=z[n_theta + p :])
        return glmm_deviance(model, params, v0=v)

    return jax.grad(deviance)(x)


def _boundary(theta, sizes):
    return jnp.asarray(diagonal_mask(sizes)) & (theta == 0)


def _solve_lmm(model, optimizer, max_steps):
    fixed = _stop(model)
    lmm = lmm_arrays(fixed)
    dtype = lmm.products.rest.dtype
    theta0 = jnp.asarray(initial_theta(model.structure.structures), dtype)
    if optimizer is None:
        solution, theta = fit_theta(lmm, theta0)
        status, iterations = solution.status, solution.iterations
    else:
        theta, status, iterations = _optax_minimize(
            lambda t: _profiled_criterion(t, fixed), theta0, optimizer, max_steps)
    theta = theta * canonical_signs(theta, model.structure.structures)
    active = _boundary(theta, model.structure.structures)
    theta = _implicit(theta, model, _lmm_residual, active, None, None)
    lmm = lmm_arrays(model)
    pls = _plain_solution(theta, lmm)
    dof = lmm.nobs - (lmm.n_fixef if model.reml else 0)
    params = Params(beta=pls.beta, theta=theta, log_dispersion=jnp.log(pls.r2 / dof)[None])
    grad = jax.lax.stop_gradient(_lmm_residual(theta, fixed, None))
    info = _info(status, iterations, pls.criterion, jnp.where(active, 0.0, grad), active)
    return params, info


def glmm_setup(model) -> GLMMSetup:
    """The compiled GLMM pipeline's setup from the model's arrays (traceable)."""
    X = jnp.asarray(model.X)
    family = model.family
    grid, log_w = gauss_hermite_grid(max(model.n_agq, 1), model.structure.sizes[0])
    float64 = X.dtype == jnp.float64
    return GLMMSetup(
        X=X,
        X_pinv=jnp.linalg.pinv(X),
        offset=jnp.asarray(model.offset),
        inner=model.dense_structure,
        outer=model.structure,
        family=family,
        grid=jnp.asarray(grid, X.dtype),
        log_w=jnp.asarray(log_w, X.dtype),
        n_agq=model.n_agq,
        has_dispersion=bool(family.has_dispersion and family.dispersion_method != "fixed"),
        gtol=1e-6 if float64 else 1e-2,
        loose_gtol=1e-3 if float64 else 1.0,
    )


def _solve_glmm(model, optimizer, max_steps):
    fixed = _stop(model)
    n_theta, p = model.structure.n_theta, model.X.shape[1]
    sizes = model.structure.structures
    if optimizer is None:
        out = glmm_pipeline(jnp.asarray(fixed.y), jnp.asarray(fixed.weights),
                            glmm_setup(fixed), forward_hessian=False, with_cond_cov=False)
        x, hessian, v = out["params"], out["hessian"], out["v"]
        status, iterations = out["status"], out["iterations"]
    else:
        data = glmm_data(fixed)
        x0 = _glmm_start(fixed)
        v0 = jnp.zeros(inner_size(model.structure), x0.dtype)

        def deviance(z):
            params = Params(theta=z[:n_theta], beta=z[n_theta : n_theta + p],
                            log_dispersion=z[n_theta + p :])
            return glmm_deviance(fixed, params, v0=v0)

        del data
        x, status, iterations = _optax_minimize(deviance, x0, optimizer, max_steps)
        hessian = None
        v = v0
    signs = jnp.concatenate([canonical_signs(x[:n_theta], sizes),
                             jnp.ones(x.shape[0] - n_theta, x.dtype)])
    v = _flip_modes(v, x[:n_theta], model.structure)
    x = x * signs
    if hessian is not None:
        hessian = hessian * signs[:, None] * signs[None, :]
    active = jnp.concatenate([_boundary(x[:n_theta], sizes),
                              jnp.zeros(x.shape[0] - n_theta, bool)])
    x = _implicit(x, model, _glmm_residual, active, hessian, jax.lax.stop_gradient(v))
    params = Params(theta=x[:n_theta], beta=x[n_theta : n_theta + p],
                    log_dispersion=x[n_theta + p :])
    deviance = jax.lax.stop_gradient(glmm_deviance(fixed, _stop(params), v0=v))
    grad = jax.lax.stop_gradient(_glmm_residual(jax.lax.stop_gradient(x), fixed, v))
    info = _info(status, iterations, deviance, jnp.where(active, 0.0, grad), active[:n_theta])
    return params, info


def _glmm_start(model):
    from ._model.arrays import initial_params

    params = initial_params(model)
    return jnp.concatenate([params.theta, params.beta, params.log_dispersion])


def _info(status, iterations, deviance, grad, active):
    status = jnp.asarray(status)
    return SolveInfo(
        converged=status == int(Status.CONVERGED),
        status=status,
        iterations=jnp.asarray(iterations),
        deviance=deviance,
        grad_norm=jnp.max(jnp.abs(grad)) if grad.shape[0] else jnp.zeros((), grad.dtype),
        singular=jnp.any(active),
    )


def _optax_minimize(fun, x0, optimizer, max_steps, gtol=1e-6):
    """Minimize ``fun`` with an optax optimizer inside ``lax.while_loop``: stops when
    max|∇f| <= ``gtol``·max(1, |f|/10⁴) or after ``max_steps`` steps. Optimizers that
    take the objective (``optax.lbfgs``'s line search) get it as ``value_fn``."""
    import optax

    value_and_grad = optax.value_and_grad_from_state(fun)
    state0 = optimizer.init(x0)

    def small(f, g):
        return jnp.max(jnp.abs(g)) <= gtol * jnp.maximum(1.0, jnp.abs(f) / 1e4)

    def cond(carry):
        _, _, k, done = carry
        return (k < max_steps) & ~done

    def body(carry):
        x, state, k, _ = carry
        f, g = value_and_grad(x, state=state)
        updates, state = optimizer.update(g, state, x, value=f, grad=g, value_fn=fun)
        x_new = optax.apply_updates(x, updates)
        return x_new, state, k + 1, small(f, g) | ~jnp.isfinite(f)

    x, state, k, done = jax.lax.while_loop(
        cond, body, (x0, state0, jnp.zeros((), jnp.int32), jnp.zeros((), bool)))
    f, g = jax.value_and_grad(fun)(x)
    status = jnp.where(~jnp.isfinite(f), int(Status.NON_FINITE),
                       jnp.where(small(f, g), int(Status.CONVERGED),
                                 int(Status.MAX_ITERATIONS)))
    return x, status, k


def solve(model, *, optimizer=None, max_steps: int = 500, info: bool = False):
    """Maximum-likelihood parameters of ``model``, as a differentiable JAX function.

    LMMs by (RE)ML per ``model.reml``, GLMMs by Laplace or adaptive quadrature per
    ``model.n_agq``: the same optimum as ``lmer``/``glmer`` (lme4's two GLMM stages and
    boundary check, on the compiled engine). Pure JAX: works under ``jax.jit``, and
    ``jax.vmap`` over stacked models (e.g. many responses). Derivatives of the result
    in the model's arrays (y, X, weights, offset, Z), forward and reverse mode, come
    from the implicit function theorem at the optimum, never by unrolling the
    optimizer: a VJP costs one solve with the Hessian the fit already formed plus one
    VJP of the gradient in the data. On the boundary (a variance exactly 0) the
    derivative is taken on the active set: that θ entry is held at 0.

    Args:
        model: a :class:`~glmmjax.MixedModel` (from a formula or from arrays).
        optimizer: ``None`` for glmmjax's BFGS (with lme4's stages and boundary
            check), or an optax optimizer (``optax.lbfgs()``, ``optax.adam(1e-2)``, ...)
            run for at most ``max_steps`` steps on the same objective (no boundary
            check; θ starts at lme4's start, β at least squares on the linked response).
        max_steps: the optax loop's step limit.
        info: also return a :class:`SolveInfo` (convergence status, iterations,
            deviance, gradient norm, singular). Inside ``jit`` nothing can raise or
            warn: check ``info.converged``.

    Returns:
        :class:`~glmmjax.Params` (θ in lme4's convention: non-negative diagonals;
        ``log_dispersion`` log σ̂² for an LMM), or ``(Params, SolveInfo)``.

    Example:
        >>> import jax, glmmjax
        >>> with jax.enable_x64(True):
        ...     model = glmmjax.MixedModel.from_formula(
        ...         "Reaction ~ Days + (Days | Subject)",
        ...         glmmjax.datasets.load("sleepstudy"))
        ...     params = jax.jit(glmmjax.solve)(model)
        >>> [round(float(b), 3) for b in params.beta]
        [251.405, 10.467]
    """
    from ._model.model import MixedModel

    if not isinstance(model, MixedModel):
        raise TypeError(f"solve() takes a glmmjax.MixedModel, got {type(model).__name__}")
    if not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    if not model.is_lmm and model.n_agq == 0:
        raise ValueError(
            "solve() needs n_agq >= 1: nAGQ=0 is a fitting shortcut, not a likelihood "
            "to differentiate; build the model with n_agq=1 (Laplace)")
    params, solve_info = _solve_compiled(model, optimizer, int(max_steps))
    return (params, solve_info) if info else params


def _solve_any(model, optimizer, max_steps):
    if model.is_lmm:
        return _solve_lmm(model, optimizer, max_steps)
    return _solve_glmm(model, optimizer, max_steps)


# Called eagerly, the fit runs as one compiled program (op by op it takes minutes);
# inside the caller's jit this is inlined.
_solve_compiled = eqx.filter_jit(_solve_any)
