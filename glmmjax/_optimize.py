"""A small BFGS minimizer written with ``lax.while_loop``, so fits can be jit-compiled
and vmapped over thousands of models.

The outcome is reported, never raised (as optimistix does): a status code plus the final
gradient norm and the iteration count travel with the solution.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Status(enum.IntEnum):
    """Why the optimizer stopped."""

    CONVERGED = 0
    MAX_ITERATIONS = 1
    LINE_SEARCH_FAILED = 2
    NON_FINITE = 3

    def describe(self) -> str:
        return {
            Status.CONVERGED: "converged",
            Status.MAX_ITERATIONS: "reached the maximum number of iterations",
            Status.LINE_SEARCH_FAILED: "line search found no decrease before the gradient "
            "was small",
            Status.NON_FINITE: "the objective or its gradient became non-finite",
        }[self]


class Solution(NamedTuple):
    """Result of :func:`minimize`; all fields are arrays (batched under vmap)."""

    x: jnp.ndarray
    value: jnp.ndarray
    grad: jnp.ndarray
    iterations: jnp.ndarray
    status: jnp.ndarray
    n_evaluations: jnp.ndarray
    inverse_hessian: jnp.ndarray  # the final BFGS approximation (a preconditioner)
    carry: object = None  # the ``carry`` of the final point (see :func:`minimize`)


class _State(NamedTuple):
    x: jnp.ndarray  # current iterate
    f: jnp.ndarray
    g: jnp.ndarray
    hinv: jnp.ndarray  # inverse Hessian approximation
    direction: jnp.ndarray
    step: jnp.ndarray  # step length of the pending trial point x + step·direction
    k: jnp.ndarray  # accepted iterations
    status: jnp.ndarray  # -1 while running
    evals: jnp.ndarray
    small_steps: jnp.ndarray
    halvings: jnp.ndarray
    carry: object
    trial_pending: jnp.ndarray  # evaluating ``final_trial``'s point (see minimize)
    final_status: jnp.ndarray  # the status to report after that evaluation


def _cubic_backtrack(t, f0, slope0, f1, slope1):
    """Step length minimizing the cubic with f(0) = f0, f'(0) = slope0, f(t) = f1,
    f'(t) = slope1 (Nocedal & Wright eq. 3.59), safeguarded to [0.01·t, 0.5·t]."""
    d1 = slope0 + slope1 - 3.0 * (f1 - f0) / t
    d2 = jnp.sqrt(jnp.maximum(d1 * d1 - slope0 * slope1, 0.0))
    cubic = t - t * (slope1 + d2 - d1) / (slope1 - slope0 + 2.0 * d2)
    cubic = jnp.where(jnp.isfinite(cubic) & jnp.isfinite(f1), cubic, 0.5 * t)
    return jnp.clip(cubic, 0.01 * t, 0.5 * t)


def minimize(
    fun,
    x0,
    args=(),
    *,
    max_iterations: int = 500,
    gtol: float = 1e-6,
    ftol: float = 1e-13,
    loose_gtol: float = 1e-3,
    max_halvings: int = 40,
    inverse_hessian=None,
    max_step: float = 4.0,
    xtol: float | None = None,
    carry=None,
    first_step: float | None = None,
    expensive: bool = False,
    final_trial=None,
    decrease_tol: float | None = None,
    trial_tol: float = 1e-10,
    forward: bool = False,
) -> Solution:
    """Minimize ``fun(x, *args)`` by BFGS with a backtracking Armijo line search.

    Each pass of the loop evaluates ``value_and_grad`` once, at a trial point: the
    first point, a full step, or a halved step. Writing the loop this way traces the
    objective and its gradient exactly once, which keeps compile times low for
    objectives that themselves contain loops (the GLMM inner problem).

    Stops with CONVERGED when max|∇f| <= ``gtol``, or when three successive steps
    change f by less than ``ftol``·(1 + |f|) while max|∇f| <= ``loose_gtol``·max(1,
    |f|/10⁴) (the objective is flat to rounding). A line search that cannot decrease f ends with
    CONVERGED if the gradient is below ``loose_gtol`` and LINE_SEARCH_FAILED otherwise.

    Steps are capped at ``max_step`` in every coordinate: an unscaled first step −∇f
    can otherwise throw a log-dispersion or a variance parameter far into a region where
    the objective is flat (a negative binomial θ of 1e15), from which BFGS never returns.

    ``xtol`` (off by default): also stop with CONVERGED after a full step once the next
    quasi-Newton step is below ``xtol``·(1 + |x|) in every coordinate while max|∇f| <=
    the loose bound. On objectives whose rounding noise is far above ``ftol`` (InstEval's
    REML criterion varies by 1e-8 between neighbouring points at the optimum) this ends
    the fit as soon as the iterate is fixed, not three noisy steps later.

    ``inverse_hessian`` is an optional starting approximation of (∇²f)⁻¹; a good one
    (say from a cheaper related problem) saves many iterations on badly scaled problems.

    ``first_step``: optional cap on the largest coordinate of the first step (instead
    of ``max_step``). Without a preconditioner the first step is −∇f, whose length is
    arbitrary; on a GLMM with 10⁶ rows it jumps θ to ±4, where the inner solve needs
    dozens of Newton iterations, and the line search then halves its way back.

    ``expensive``: for objectives where every evaluation counts (GLMMs on large data):
    backtrack to the minimizer of the cubic through f and its slope at both ends of the
    rejected step (kept within [0.01, 0.5] of it) instead of halving, and accept a trial
    point whose max|∇f| meets ``gtol`` when f is within rounding (``ftol``) of the
    current value, instead of backtracking on rounding noise near the optimum.

    ``carry``: optional pytree threaded through the evaluations. When given, ``fun`` is
    called as ``fun(x, carry, *args)`` and returns ``(f, new_carry)``; each evaluation
    receives the carry of the last accepted point (e.g. an inner solution to warm-start
    from), and ``Solution.carry`` holds the final point's.

    ``decrease_tol`` (off by default): also stop with CONVERGED once the decrease the
    quasi-Newton model predicts for the next step, −½·∇f'·d, is below
    ``decrease_tol``·(1 + |f|) while max|∇f| <= the loose bound: the iterate is fixed to
    f's rounding, and further steps would follow the gradient's noise (an LMM started
    near its optimum otherwise takes up to 30 more evaluations); likewise stop when a
    step whose predicted decrease is below that bound is rejected.

    ``final_trial`` (off by default): a function x -> x'. Once the search stops (for any
    reason but a non-finite start), f is evaluated once more at x' = final_trial(x)
    when x' differs from x, and x' replaces x if f(x') <= f(x) + ``trial_tol``·(1 + |f|)
    (e.g. variance parameters near zero tried at exactly zero). The evaluation runs in
    the loop's own body, so it adds nothing to the compiled program; a separate call
    of ``fun`` after the loop would compile the objective a second time.

    ``forward`` (off by default): the gradient by forward mode (one batched JVP per
    coordinate of x) instead of reverse mode. For an objective in very few variables
    whose reverse pass is large to compile (the GLMM's nAGQ=0 stage, one or two θ):
    no transposed program, no stored residuals.
    """
    def value_and_grad(x, c, *a):
        """((f, ∇f), new carry) at x."""
        if forward:
            def with_value(x_):
                out = fun(x_, *a) if carry is None else fun(x_, c, *a)
                f_, aux = (out, None) if carry is None else out
                return f_, (f_, aux)

            g, (f, c_new) = jax.jacfwd(with_value, has_aux=True)(x)
            return (f, g), (c if carry is None else c_new)
        if carry is None:
            return jax.value_and_grad(fun)(x, *a), c
        (f, c_new), g = jax.value_and_grad(fun, has_aux=True)(x, c, *a)
        return (f, g), c_new

    x0 = jnp.asarray(x0)
    dtype = x0.dtype
    n = x0.shape[0]
    eye = jnp.eye(n, dtype=dtype)
    inf = jnp.asarray(jnp.inf, dtype)

    def body(state: _State):
        trial = state.x + state.step * state.direction
        (f_new, g_new), carry_new = value_and_grad(trial, state.carry, *args)
        first_eval = state.evals == 0
        finite = jnp.isfinite(f_new) & jnp.all(jnp.isfinite(g_new))
        slope = jnp.dot(state.g, state.direction)
        armijo = finite & (f_new <= state.f + 1e-4 * state.step * slope)
        accept = first_eval | armijo
        if expensive:
            flat = finite & (f_new <= state.f + ftol * (1.0 + jnp.abs(state.f)))
            accept = accept | (flat & (jnp.max(jnp.abs(g_new)) <= gtol))

        # BFGS update for an accepted step (skipped for the very first evaluation).
        s = trial - state.x
        y = g_new - state.g
        sy = jnp.dot(s, y)
        good_curvature = (~first_eval) & (sy > 1e-12 * jnp.sqrt(jnp.dot(s, s) * jnp.dot(y, y)))
        rho = 1.0 / jnp.where(sy > 0, sy, 1.0)
        hinv = jnp.where(
            (state.k == 0) & good_curvature & (not preconditioned),
            eye * sy / jnp.maximum(jnp.dot(y, y), 1e-300),  # Nocedal & Wright eq. 6.20
            state.hinv,
        )
        v = eye - rho * jnp.outer(s, y)
        updated = v @ hinv @ v.T + rho * jnp.outer(s, s)
        hinv = jnp.where(good_curvature, updated, hinv)

        new_direction = -hinv @ g_new
        descent = jnp.dot(new_direction, g_new) < 0
        hinv = jnp.where(descent, hinv, eye)
        new_direction = jnp.where(descent, new_direction, -g_new)
        largest = jnp.max(jnp.abs(new_direction))
        cap = max_step if first_step is None else jnp.where(first_eval, first_step, max_step)
        new_direction = new_direction * jnp.minimum(1.0, cap / jnp.maximum(largest, 1e-300))

        gmax = jnp.max(jnp.abs(g_new))
        tiny_change = jnp.abs(state.f - f_new) <= ftol * (1.0 + jnp.abs(f_new))
        small_steps = jnp.where(tiny_change & ~first_eval, state.small_steps + 1, 0)
        k = state.k + jnp.where(first_eval, 0, 1)
        # On large objectives (InstEval's REML criterion is 2.4e5) rounding leaves the
        # gradient far above any absolute tolerance once f stops changing, so the loose
        # test scales with |f|.
        loose = loose_gtol * jnp.maximum(1.0, jnp.abs(f_new) / 1e4)
        converged = (gmax <= gtol) | ((small_steps >= 3) & (gmax <= loose))
        if decrease_tol is not None:
            # The quasi-Newton model predicts a decrease of −½·∇f'·d from the next
            # step: once that is below f's rounding, further steps chase noise.
            predicted = -0.5 * jnp.dot(g_new, new_direction)
            converged = converged | (
                ~first_eval & (predicted <= decrease_tol * (1.0 + jnp.abs(f_new)))
                & (gmax <= loose))
        if xtol is not None:
            tiny_step = jnp.all(jnp.abs(new_direction) <= xtol * (1.0 + jnp.abs(trial)))
            converged = converged | ((state.step == 1) & tiny_step & (gmax <= loose))
        accepted_status = jnp.where(
            first_eval & ~finite,
            Status.NON_FINITE,
            jnp.where(converged, Status.CONVERGED,
                      jnp.where(k >= max_iterations, Status.MAX_ITERATIONS, -1)),
        )
        halvings = state.halvings + 1
        shorter = 0.5 * state.step
        if expensive:
            shorter = _cubic_backtrack(state.step, state.f, slope, f_new,
                                       jnp.dot(g_new, state.direction))
        rejected_status = jnp.where(
            halvings >= max_halvings,
            jnp.where(jnp.max(jnp.abs(state.g))
                      <= loose_gtol * jnp.maximum(1.0, jnp.abs(state.f) / 1e4),
                      Status.CONVERGED,
                      Status.LINE_SEARCH_FAILED),
            -1,
        )
        if decrease_tol is not None:
            # A rejected step whose whole predicted gain, −½·∇f'·d at the current point,
            # is below f's rounding was rejected on noise: backtracking cannot help.
            noise = -0.5 * slope * state.step <= decrease_tol * (1.0 + jnp.abs(state.f))
            flat_enough = jnp.max(jnp.abs(state.g)) <= loose_gtol * jnp.maximum(
                1.0, jnp.abs(state.f) / 1e4)
            rejected_status = jnp.where(~first_eval & noise & flat_enough,
                                        Status.CONVERGED, rejected_status)
        one = jnp.ones((), dtype)
        status = jnp.where(accept, accepted_status, rejected_status).astype(jnp.int32)
        direction = jnp.where(accept, new_direction, state.direction)
        step = jnp.where(accept, one, shorter)
        pending = jnp.zeros((), bool)
        final_status = state.final_status
        if final_trial is not None:
            # The trial point's evaluation: keep it if f does not increase beyond
            # rounding; either way the search ends with the status it stopped with.
            pending_now = state.trial_pending
            keep = finite & (f_new <= state.f + trial_tol * (1.0 + jnp.abs(state.f)))
            accept = jnp.where(pending_now, keep, accept)
            status = jnp.where(pending_now, state.final_status, status)
            # Just stopped: schedule the trial point as the next evaluation.
            x_next = jnp.where(accept, trial, state.x)
            moved = final_trial(x_next)
            start = (~pending_now & (status >= 0) & (status != Status.NON_FINITE)
                     & jnp.any(moved != x_next))
            final_status = jnp.where(start, status, state.final_status)
            status = jnp.where(start, -1, status)
            direction = jnp.where(start, moved - x_next, direction)
            step = jnp.where(start, one, step)
            pending = start
        return _State(
            x=jnp.where(accept, trial, state.x),
            f=jnp.where(accept, f_new, state.f),
            g=jnp.where(accept, g_new, state.g),
            hinv=jnp.where(accept, hinv, state.hinv),
            direction=direction,
            step=step,
            k=jnp.where(accept, k, state.k),
            status=status,
            evals=state.evals + 1,
            small_steps=jnp.where(accept, small_steps, state.small_steps),
            halvings=jnp.where(accept, 0, halvings),
            carry=jax.tree_util.tree_map(lambda a, b: jnp.where(accept, a, b), carry_new,
                                         state.carry),
            trial_pending=pending,
            final_status=final_status,
        )

    preconditioned = inverse_hessian is not None
    hinv0 = eye if inverse_hessian is None else jnp.asarray(inverse_hessian, dtype)
    state = _State(
        x=x0, f=inf, g=jnp.zeros_like(x0), hinv=hinv0, direction=jnp.zeros_like(x0),
        step=jnp.zeros((), dtype), k=jnp.zeros((), jnp.int32),
        status=-jnp.ones((), jnp.int32), evals=jnp.zeros((), jnp.int32),
        small_steps=jnp.zeros((), jnp.int32), halvings=jnp.zeros((), jnp.int32),
        carry=carry, trial_pending=jnp.zeros((), bool),
        final_status=-jnp.ones((), jnp.int32),
    )
    state = jax.lax.while_loop(lambda st: st.status < 0, body, state)
    return Solution(state.x, state.f, state.g, state.k, state.status, state.evals, state.hinv,
                    state.carry)
