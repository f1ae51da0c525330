"""The whole GLMM fit as one pure function of the response, for jit and vmap.

``glmm_pipeline(y, weights, setup)`` runs lme4's two stages (nAGQ=0 over θ and the
dispersion, then Laplace/AGQ over (θ, β, log dispersion) preconditioned by the first
stage) and the final exact Hessian. ``glmer`` calls it once; ``fit_many`` vmaps it over
thousands of responses. Shapes depend only on the model's structure, so one compiled
program serves every response and every chunk.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..._families import math as fm
from ..._linalg import solve_triangular
from ..._model.covariance import (
    diagonal_mask,
    initial_theta,
    theta_to_factors,
    unit_scaled_mask,
)
from ..._model.structure import ReStructure, build_structure
from ..._progress import noted
from ..seam import BOUNDARY_TRY, GLMMFit, opt_summary
from .cholesky import inverse_diagonal_blocks
from .eta_terms import loglik_constant
from .jit import program
from .laplace import (
    agq_at_mode,
    dispersion_value,
    gauss_hermite_grid,
    laplace_at_mode,
    mode_and_factor,
    unpack,
)
from .optimize import Solution, minimize
from .pirls import (
    GLMMData,
    half_gradient,
    hessian_factor,
    inner_size,
    linear_predictor,
    solve_inner,
)

# Stage 1 starts unpreconditioned from θ = identity factors: a first step of at most 0.5
# in any of θ, log dispersion (see minimize's ``first_step``).
_FIRST_STEP = 0.5
# Rows·(parameters)² up to which the final Hessian is formed by forward over forward.
_FORWARD_HESSIAN_MAX = 2_000_000


class GLMMSetup(eqx.Module):
    """Everything but the response: design arrays, structures and static choices."""

    X: jnp.ndarray
    X_pinv: jnp.ndarray
    offset: jnp.ndarray
    inner: ReStructure  # β in the inner problem (nAGQ=0 stage)
    outer: ReStructure  # β outside (Laplace / AGQ stage)
    family: object
    grid: jnp.ndarray
    log_w: jnp.ndarray
    n_agq: int = eqx.field(static=True)
    has_dispersion: bool = eqx.field(static=True)
    gtol: float = eqx.field(static=True, default=1e-6)
    loose_gtol: float = eqx.field(static=True, default=1e-3)
    max_iter: int = eqx.field(static=True, default=500)  # BFGS iterations per stage

    @property
    def n_theta(self) -> int:
        return self.outer.n_theta

    @property
    def p(self) -> int:
        return self.X.shape[1]


def make_setup(design, family, n_agq: int, dtype=np.float64, max_iter: int = 500) -> GLMMSetup:
    """Arrays in ``dtype``; float32 gets optimizer tolerances its rounding can meet."""
    X = np.asarray(design.X, dtype=dtype)
    grid, log_w = gauss_hermite_grid(max(n_agq, 1), design.terms[0].size)
    return GLMMSetup(
        X=X,
        X_pinv=np.linalg.pinv(X).astype(dtype),
        offset=np.asarray(design.offset, dtype=dtype),
        inner=build_structure(design.terms, X.shape[1]),
        outer=build_structure(design.terms, 0),
        family=family,
        grid=grid.astype(dtype),
        log_w=log_w.astype(dtype),
        n_agq=int(n_agq),
        has_dispersion=bool(family.has_dispersion and family.dispersion_method != "fixed"),
        gtol=1e-6 if dtype == np.float64 else 1e-2,
        loose_gtol=1e-3 if dtype == np.float64 else 1.0,
        max_iter=int(max_iter),
    )


def minimize_with_boundary(objective, params0, carry0, n_theta, covariances, inverse_hessian=None,
                           *, gtol=1e-6, loose_gtol=1e-3, boundary=True, first_step=None,
                           forward=False, max_iterations=500):
    """BFGS, then near-zero diagonal entries of θ tried at exactly zero.

    ``objective(params, carry) -> (value, carry)`` finds the inner mode starting from
    the carry's; BFGS passes it the carry of its last accepted point (a warm start: a
    few Newton steps instead of a solve from scratch). The boundary trial is one more
    evaluation inside the BFGS loop (``minimize``'s ``final_trial``), so the objective is
    compiled once. Returns (solution, params, carry at params).
    """
    mask = diagonal_mask(covariances)

    def to_boundary(params):
        theta = params[:n_theta]
        near = jnp.asarray(mask) & (jnp.abs(theta) < BOUNDARY_TRY)
        return params.at[:n_theta].set(jnp.where(near, 0.0, theta))

    solution = minimize(objective, params0, inverse_hessian=inverse_hessian, gtol=gtol,
                        loose_gtol=loose_gtol, carry=carry0, first_step=first_step,
                        expensive=True, final_trial=to_boundary if boundary else None,
                        forward=forward, max_iterations=max_iterations)
    return solution, solution.x, solution.carry


def _start_beta(y, weights, setup: GLMMSetup):
    family = setup.family
    mu = family.initialize(y, weights)
    eta = family.link.link(mu)
    eta = jnp.where(jnp.isfinite(eta), eta, 0.0) - setup.offset
    return setup.X_pinv @ eta


def _hessian_value_factor(objective, params, forward: bool):
    """(exact Hessian, value, factor) of ``objective(params) -> (value, factor)`` at
    ``params``. The value and the factor come out of the same pass (as auxiliary
    outputs), so they need no separate copy of the evaluation in the program.

    ``forward``: forward over forward mode (k² directional second derivatives through
    the implicit mode) instead of forward over reverse (k). On verbagg (k = 8) it
    compiles about 1.5 s faster and traces 0.5 s faster (the reverse pass turns gathers
    into scatters, slow to compile on CPU) but runs 0.1 s (XLA's default emitters) to
    0.2 s (classic emitters) slower; the run time grows with rows·k², so large models
    use forward over reverse. Batches use forward over forward: vmapped over 4 or more
    models, forward over reverse gave a NaN Hessian for every model (issue 19; see
    glmmjax._batching.fit_many._glmm_one).
    """
    def value_aux(q):
        value, factor = objective(q)
        return value, (value, factor)

    inner = jax.jacfwd if forward else jax.jacrev
    hessian, (value, factor) = jax.jacfwd(inner(value_aux, has_aux=True),
                                          has_aux=True)(params)
    return hessian, value, factor


def _small(setup: GLMMSetup) -> bool:
    """A model whose first fit is dominated by compilation, not by its run: rows·k² up
    to ``_FORWARD_HESSIAN_MAX`` (k parameters of the final Hessian). Such models get
    the forward-over-forward Hessian (its extra run time, about 0.5 µs per row·k², stays
    well below the 1.5-2 s of compile time it saves) and XLA:CPU's classic emitters."""
    k = setup.n_theta + (setup.p if setup.n_agq else 0) + int(setup.has_dispersion)
    return setup.X.shape[0] * k * k <= _FORWARD_HESSIAN_MAX


def glmm_pipeline(y, weights, setup: GLMMSetup, forward_hessian: bool | None = None,
                  with_cond_cov: bool = True) -> dict:
    """Fit one GLMM to response ``y`` (pure; jit- and vmap-able). Returns arrays.

    Newton's loop is compiled twice (stage 1's BFGS and stage 2's, each of which also
    runs its boundary trial); everything evaluated at a known mode (the exact Hessian,
    with the final value and factor) goes through :func:`glmmjax._engines.compiled.pirls.at_mode`.

    ``forward_hessian``: how the final Hessian is formed (see
    :func:`_hessian_value_factor`); None chooses by the model's size. Batches
    (``fit_many``) pass True (see :func:`_hessian_value_factor`).

    ``with_cond_cov=False`` leaves out the conditional covariances of the random
    effects (``glmer`` computes them on request with :func:`conditional_covariances`,
    a small program of its own, instead of compiling them into every fit).
    """
    dtype = setup.X.dtype
    n, p = setup.X.shape
    n_theta = setup.n_theta
    empty = jnp.zeros((n, 0), dtype)
    n_disp = int(setup.has_dispersion)
    constant = loglik_constant(setup.family, y, weights)
    tols = dict(gtol=setup.gtol, loose_gtol=setup.loose_gtol, max_iterations=setup.max_iter)
    if forward_hessian is None:
        forward_hessian = _small(setup)

    def data(structure, X_outer, dense):
        return GLMMData(structure, X_outer, dense, y, weights, setup.offset, setup.family,
                        constant)

    # On a power link (identity, sqrt, inverse, 1/μ²) θ and β are in the response's
    # units: both stages search x = params / scale, θ's SD entries and β in units of
    # the spread of g(μ₀) (as the host engine, glmmjax._engines.host.glmm.eta_unit), so
    # that a response in other units is the same search. Other links: no scaling.
    # (Other links: nothing in the program, as before: ``scaled`` leaves x as it is.)
    unit = scale1 = scale2 = None
    if fm._builtin(setup.family.link, fm.POWER_LINKS):
        unit = fm.link_scale_spread(setup.family.link, jnp, setup.family.initialize(y, weights),
                                    weights).astype(dtype)
        s_theta = jnp.where(jnp.asarray(unit_scaled_mask(setup.outer.structures)), unit,
                            jnp.ones((), dtype))
        scale1 = jnp.concatenate([s_theta, jnp.ones(n_disp, dtype)])
        scale2 = jnp.concatenate([s_theta, jnp.full(p, unit), jnp.ones(n_disp, dtype)])

    def scaled(x, scale, power=1):
        return x if scale is None else x * scale**power

    # Stage 1: nAGQ=0.
    data0 = data(setup.inner, empty, setup.X)
    q_inner = inner_size(setup.inner)
    v0 = jnp.zeros(q_inner, dtype).at[q_inner - p :].set(_start_beta(y, weights, setup))
    # The dispersion starts at 1 (log φ = 0), but Student-t's σ (identity link) is in the
    # response's units: it starts at the unit (from σ = 1 with residuals of 10⁵ the inner
    # Newton fails at the first point).
    log_disp0 = (jnp.log(unit) if unit is not None and setup.family.name == "t_family"
                 and n_disp else jnp.zeros((), dtype))
    params1 = jnp.concatenate(
        [jnp.asarray(initial_theta(setup.outer.structures), dtype),
         jnp.full(n_disp, log_disp0, dtype)]
    )

    params1_start = params1

    def parts1(q, v, known_mode=False):
        return mode_and_factor(q, data0, v, n_theta, 0, known_mode)

    def objective1(x, carry):
        # The carry: the mode and the fixed effects' block of the factor (for β's
        # covariance, the preconditioner of stage 2), so no evaluation after the loop.
        parts = parts1(scaled(x, scale1), carry[0])
        sg = jax.lax.stop_gradient
        return laplace_at_mode(*parts, data0), (sg(parts[3]), sg(parts[4].rest[-p:, -p:]))

    # Before stage 2, stage 1 only provides a start and a preconditioner: a looser
    # gradient tolerance, and no boundary check (stage 2 moves θ off the boundary).
    # Its gradient is by forward mode: stage 1 has only θ (and the dispersion), so one
    # or a few JVPs, with no transposed pass (whose scatters are slow to compile on
    # CPU). On verbagg: about 1 s less compile time in one comparison, within the noise
    # in another; same run time.
    final = setup.n_agq == 0
    tols1 = tols if final else dict(gtol=max(setup.gtol, setup.loose_gtol),
                                    loose_gtol=setup.loose_gtol,
                                    max_iterations=setup.max_iter)
    sol1, x1, (v1, L_x) = minimize_with_boundary(
        objective1, params1, (v0, jnp.zeros((p, p), dtype)), n_theta, setup.outer.structures,
        boundary=final, first_step=_FIRST_STEP, forward=True, **tols1
    )
    params1 = scaled(x1, scale1)
    L_x_inv = solve_triangular(L_x, jnp.eye(p, dtype=dtype), lower=True)
    beta_cov1 = L_x_inv.T @ L_x_inv
    beta1 = v1[q_inner - p :]
    u1 = v1[: q_inner - p]

    if setup.n_agq == 0:
        def at_v1(q):
            parts = parts1(q, v1, known_mode=True)
            return laplace_at_mode(*parts, data0), parts[4]

        hessian, value, _ = _hessian_value_factor(at_v1, params1, forward_hessian)
        return dict(
            params=params1, beta=beta1, beta_cov=beta_cov1, initial=scaled(params1_start, scale1),
            value=value, hessian=hessian, v=v1,
            status=sol1.status, iterations=sol1.iterations,
            n_evaluations=sol1.n_evaluations, grad=sol1.grad,
            cond_cov=[jnp.full((m, s, s), jnp.nan, dtype) for m, s in
                      zip(setup.outer.n_levels, setup.outer.sizes)],
        )

    # Stage 2: Laplace or AGQ in all parameters, preconditioned by stage 1.
    data2 = data(setup.outer, setup.X, empty)
    use_agq = setup.n_agq > 1

    def criterion(parts):
        if use_agq:
            return agq_at_mode(*parts, data2, setup.grid, setup.log_w)
        return laplace_at_mode(*parts, data2)

    def objective2(x, v):
        parts = mode_and_factor(scaled(x, scale2), data2, v, n_theta, p)
        return criterion(parts), jax.lax.stop_gradient(parts[3])

    # θ = 0 is a stationary point of the objective (it depends on θ through ΛΛ'), so a
    # diagonal that stage 1 put on the boundary restarts slightly inside; stage 2's own
    # boundary check returns it to exactly zero if that is the optimum.
    theta1 = x1[:n_theta]
    diagonal = jnp.asarray(diagonal_mask(setup.outer.structures))
    theta1 = jnp.where(diagonal & (jnp.abs(theta1) < BOUNDARY_TRY), 0.1, theta1)
    x2 = jnp.concatenate([theta1, scaled(beta1, unit, -1), x1[n_theta:]])
    hinv1 = sol1.inverse_hessian
    k = n_theta + p + n_disp
    hinv0 = jnp.zeros((k, k), dtype)
    hinv0 = hinv0.at[:n_theta, :n_theta].set(hinv1[:n_theta, :n_theta])
    hinv0 = hinv0.at[n_theta : n_theta + p, n_theta : n_theta + p].set(
        0.5 * scaled(beta_cov1, unit, -2))
    if n_disp:
        hinv0 = hinv0.at[n_theta + p :, n_theta + p :].set(hinv1[n_theta:, n_theta:])
        hinv0 = hinv0.at[:n_theta, n_theta + p :].set(hinv1[:n_theta, n_theta:])
        hinv0 = hinv0.at[n_theta + p :, :n_theta].set(hinv1[n_theta:, :n_theta])
    sol2, x, v = minimize_with_boundary(
        objective2, x2, u1, n_theta, setup.outer.structures, hinv0, **tols
    )
    params = scaled(x, scale2)

    def at_v(q):
        parts = mode_and_factor(q, data2, v, n_theta, p, known_mode=True)
        return criterion(parts), parts[4]

    hessian, value, factor = _hessian_value_factor(at_v, params, forward_hessian)
    theta, beta, _ = unpack(params, n_theta, p)
    sym = 0.5 * (hessian + hessian.T)
    params_cov = 2.0 * jnp.linalg.pinv(sym)  # −2 log L has Hessian 2·(information)
    out = dict(
        params=params, beta=beta, beta_cov=params_cov[n_theta : n_theta + p, n_theta : n_theta + p],
        params_cov=params_cov, value=value, hessian=hessian, v=v, status=sol2.status,
        iterations=sol2.iterations, n_evaluations=sol2.n_evaluations, grad=sol2.grad,
        initial=scaled(x2, scale2), eta=linear_predictor(v, theta, beta, data2),
    )
    if with_cond_cov:
        out["cond_cov"] = _cond_cov_from_factor(theta, factor, setup.outer)
    return out


def mode_decrement(params, v, y, weights, setup: GLMMSetup):
    """The inner Newton decrement g'H⁻¹g (g, H: half gradient and Hessian of the
    penalized deviance in the random effects) at a fit's final ``params`` and mode ``v``.

    About zero when ``v`` is the conditional mode at ``params``, as the Laplace (or AGQ)
    value assumes; the inner Newton stops without saying whether it got there (a cap on
    iterations, a stalled step halving), so batches check its result afterwards. A
    non-finite value means the Hessian in the random effects is not positive definite
    there (possible for families with W < 0 on some rows).
    """
    n, p = setup.X.shape
    empty = jnp.zeros((n, 0), setup.X.dtype)
    if setup.n_agq == 0:  # β is inner: it is part of v
        data = GLMMData(setup.inner, empty, setup.X, y, weights, setup.offset, setup.family)
        theta, beta, log_disp = unpack(params, setup.n_theta, 0)
    else:
        data = GLMMData(setup.outer, setup.X, empty, y, weights, setup.offset, setup.family)
        theta, beta, log_disp = unpack(params, setup.n_theta, p)
    dispersion = dispersion_value(log_disp, data)
    grad = half_gradient(v, theta, beta, dispersion, data)
    factor = hessian_factor(v, theta, beta, dispersion, data)
    return jnp.dot(grad, solve_inner(data.structure, factor, grad))


def _cond_cov_from_factor(theta, factor, outer: ReStructure) -> list:
    blocks = inverse_diagonal_blocks(outer, factor)
    factors = theta_to_factors(theta, outer.structures)
    return [jnp.einsum("ab,lbc,dc->lad", lam, blk, lam) for lam, blk in zip(factors, blocks)]


def conditional_covariances(params, v, y, weights, setup: GLMMSetup) -> list:
    """Conditional covariances of the random effects, (m_t, S_t, S_t) per term, at a
    Laplace/AGQ fit (``params`` and its mode ``v`` from :func:`glmm_pipeline`): the
    same factor as the fit's, formed once more."""
    n, p = setup.X.shape
    data2 = GLMMData(setup.outer, setup.X, jnp.zeros((n, 0), setup.X.dtype), y, weights,
                     setup.offset, setup.family)
    theta, beta, log_disp = unpack(params, setup.n_theta, p)
    factor = hessian_factor(v, theta, beta, dispersion_value(log_disp, data2), data2)
    return _cond_cov_from_factor(theta, factor, setup.outer)


conditional_covariances_jit = program(conditional_covariances)
glmm_pipeline_jit = program(noted(glmm_pipeline, "the GLMM fit"))


def fit(design, family, n_agq: int, y, weights, max_iter: int = 500) -> GLMMFit:
    """Fit one GLMM with the compiled pipeline (``glmer``'s compiled engine)."""
    from .lmm import random_effects
    from .pirls import split

    setup = make_setup(design, family, n_agq, max_iter=max_iter)
    y_in, w_in = jnp.asarray(y), jnp.asarray(weights)
    out = glmm_pipeline_jit(y_in, w_in, setup, with_cond_cov=False)
    out = jax.tree_util.tree_map(np.asarray, out)
    n_theta = setup.n_theta
    params, v = out["params"], out["v"]
    if setup.has_dispersion:
        dispersion = float(np.exp(params[-1]))
    else:
        dispersion = getattr(family, "theta", None)
    u_first, u_rest, _ = split(jnp.asarray(v), setup.inner if n_agq == 0 else setup.outer)
    with jax.enable_x64(True):
        effects = tuple(np.asarray(b) for b in random_effects(
            jnp.asarray(params[:n_theta]), setup.outer, u_first, u_rest))
    cache = []

    def conditional_cov():
        # nAGQ=0 reports no conditional variances (its inner factor includes the β
        # block); otherwise a small program of its own, compiled on request only.
        if not cache:
            if n_agq == 0:
                cache.append([np.full((m, s, s), np.nan) for m, s in
                              zip(setup.outer.n_levels, setup.outer.sizes)])
            else:
                with jax.enable_x64(setup.X.dtype == np.float64):
                    blocks = conditional_covariances_jit(
                        jnp.asarray(params), jnp.asarray(v), y_in, w_in, setup)
                    cache.append([np.asarray(c) for c in blocks])
        return cache[0]

    solution = Solution(params, out["value"], out["grad"], out["iterations"], out["status"],
                        out["n_evaluations"], None)
    return GLMMFit(
        engine="jax", params=params, n_theta=n_theta, beta=out["beta"],
        beta_cov=out["beta_cov"], params_cov=out.get("params_cov"), hessian=out["hessian"],
        value=float(out["value"]), v=v, effects=effects, dispersion=dispersion,
        estimated_dispersion=setup.has_dispersion,
        opt=opt_summary("jax", solution, out["initial"]),
        conditional_covariances=conditional_cov,
    )
