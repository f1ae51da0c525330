"""A small BFGS minimizer written with ``lax.while_loop``, so fits can be jit-compiled
and vmapped over thousands of models.

The outcome is reported, never raised (as optimistix does): a status code plus the final
gradient norm and the iteration count travel with the solution.
"""

from __future__ import annotations

import enum
import inspect
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
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


class _Options(NamedTuple):
    """:func:`minimize`'s settings (documented there), as :func:`_advance` needs them."""

    max_iterations: int
    gtol: float
    ftol: float
    loose_gtol: float
    max_halvings: int
    max_step: float
    xtol: float | None
    first_step: float | None
    expensive: bool
    final_trial: object
    decrease_tol: float | None
    trial_tol: float
    preconditioned: bool


def _cubic_backtrack(xp, t, f0, slope0, f1, slope1):
    """Step length minimizing the cubic with f(0) = f0, f'(0) = slope0, f(t) = f1,
    f'(t) = slope1 (Nocedal & Wright eq. 3.59), safeguarded to [0.01·t, 0.5·t]."""
    d1 = slope0 + slope1 - 3.0 * (f1 - f0) / t
    d2 = xp.sqrt(xp.maximum(d1 * d1 - slope0 * slope1, 0.0))
    cubic = t - t * (slope1 + d2 - d1) / (slope1 - slope0 + 2.0 * d2)
    cubic = xp.where(xp.isfinite(cubic) & xp.isfinite(f1), cubic, 0.5 * t)
    return xp.clip(cubic, 0.01 * t, 0.5 * t)


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
    import jax
    import jax.numpy as jnp

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

    options = _Options(max_iterations, gtol, ftol, loose_gtol, max_halvings, max_step, xtol,
                       first_step, expensive, final_trial, decrease_tol, trial_tol,
                       inverse_hessian is not None)

    def body(state: _State):
        trial = state.x + state.step * state.direction
        (f_new, g_new), carry_new = value_and_grad(trial, state.carry, *args)
        return _advance(state, trial, f_new, g_new, carry_new, options, jnp, _select_traced)

    state = _initial_state(jnp.asarray(x0), inverse_hessian, carry, jnp)
    state = jax.lax.while_loop(lambda st: st.status < 0, body, state)
    return Solution(state.x, state.f, state.g, state.k, state.status, state.evals, state.hinv,
                    state.carry)


def minimize_host(value_and_grad, x0, args=(), *, carry=None, **options) -> Solution:
    """:func:`minimize`'s algorithm in a Python loop over numpy arrays (float64).

    For objectives evaluated on the host with their own exact gradient (the LMM
    criterion of :mod:`glmmjax._engines.host.lmm`): nothing is traced or compiled, and the
    steps, stopping rules and reported status are those of :func:`minimize`, since both
    run :func:`_advance`. ``value_and_grad(x, *args)`` returns (f, ∇f); with ``carry``
    it is called as ``value_and_grad(x, carry, *args)`` and returns ((f, ∇f), carry).
    ``final_trial`` maps numpy arrays to numpy arrays. ``options``: :func:`minimize`'s
    keyword options, with its defaults (``forward`` does not apply here).
    """
    settings = dict(_MINIMIZE_DEFAULTS)
    unknown = set(options) - set(settings)
    if unknown:
        raise TypeError(f"minimize_host got unknown options {sorted(unknown)}")
    settings.update(options)
    inverse_hessian = settings.pop("inverse_hessian")
    settings.pop("forward")
    options = _Options(**settings, preconditioned=inverse_hessian is not None)
    state = _initial_state(np.asarray(x0, dtype=np.float64), inverse_hessian, carry, np)
    # Rejected trial points may be infinite: their arithmetic is meant to give inf/nan.
    with np.errstate(all="ignore"):
        while state.status < 0:
            trial = state.x + state.step * state.direction
            if carry is None:
                f_new, g_new = value_and_grad(trial, *args)
                carry_new = None
            else:
                (f_new, g_new), carry_new = value_and_grad(trial, state.carry, *args)
            state = _advance(state, trial, np.asarray(f_new, np.float64),
                             np.asarray(g_new, np.float64), carry_new, options, _HOST_NUMPY,
                             lambda accept, new, old: new if accept else old)
    return Solution(state.x, state.f, state.g, state.k, state.status, state.evals, state.hinv,
                    state.carry)


class _HostNumpy:
    """numpy for :func:`_advance` in :func:`minimize_host`, with ``where`` on a scalar
    condition taken as a Python branch: a pass makes ~25 such calls on 0-d and p-sized
    arrays, which as ``np.where`` cost more than the rest of the pass's arithmetic. The
    values chosen are the same; a Python number chosen comes back as a 0-d array."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def where(condition, a, b):
        if getattr(condition, "ndim", 0) == 0:
            return np.asarray(a if condition else b)
        return np.where(condition, a, b)


_HOST_NUMPY = _HostNumpy()


# minimize's keyword options and their defaults (carry aside), shared by minimize_host.
_MINIMIZE_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(minimize).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name != "carry"
}


def _select_traced(accept, new, old):
    import jax
    import jax.numpy as jnp

    return jax.tree_util.tree_map(lambda a, b: jnp.where(accept, a, b), new, old)


def _initial_state(x0, inverse_hessian, carry, xp) -> _State:
    dtype = x0.dtype
    hinv0 = (xp.eye(x0.shape[0], dtype=dtype) if inverse_hessian is None
             else xp.asarray(inverse_hessian, dtype))
    int_zero = xp.zeros((), xp.int32)
    return _State(
        x=x0, f=xp.asarray(xp.inf, dtype), g=xp.zeros_like(x0), hinv=hinv0,
        direction=xp.zeros_like(x0), step=xp.zeros((), dtype), k=int_zero,
        status=-xp.ones((), xp.int32), evals=int_zero, small_steps=int_zero,
        halvings=int_zero, carry=carry, trial_pending=xp.zeros((), bool),
        final_status=-xp.ones((), xp.int32),
    )


def _advance(state: _State, trial, f_new, g_new, carry_new, o: _Options, xp,
             select) -> _State:
    """One pass of the search after evaluating f and ∇f at ``trial``: accept or reject
    the point, update the BFGS approximation and choose the next trial point.

    ``xp`` is ``jax.numpy`` inside :func:`minimize`'s compiled loop and ``numpy`` in
    :func:`minimize_host`'s Python loop: one algorithm, two executors. ``select(accept,
    new, old)`` picks the carry of the point kept.
    """
    dtype = state.x.dtype
    eye = xp.eye(state.x.shape[0], dtype=dtype)
    first_eval = state.evals == 0
    finite = xp.isfinite(f_new) & xp.all(xp.isfinite(g_new))
    slope = xp.dot(state.g, state.direction)
    armijo = finite & (f_new <= state.f + 1e-4 * state.step * slope)
    accept = first_eval | armijo
    if o.expensive:
        flat = finite & (f_new <= state.f + o.ftol * (1.0 + xp.abs(state.f)))
        accept = accept | (flat & (xp.max(xp.abs(g_new)) <= o.gtol))

    # BFGS update for an accepted step (skipped for the very first evaluation).
    s = trial - state.x
    y = g_new - state.g
    sy = xp.dot(s, y)
    good_curvature = (~first_eval) & (sy > 1e-12 * xp.sqrt(xp.dot(s, s) * xp.dot(y, y)))
    rho = 1.0 / xp.where(sy > 0, sy, 1.0)
    hinv = xp.where(
        (state.k == 0) & good_curvature & (not o.preconditioned),
        eye * sy / xp.maximum(xp.dot(y, y), 1e-300),  # Nocedal & Wright eq. 6.20
        state.hinv,
    )
    v = eye - rho * xp.outer(s, y)
    updated = v @ hinv @ v.T + rho * xp.outer(s, s)
    hinv = xp.where(good_curvature, updated, hinv)

    new_direction = -hinv @ g_new
    descent = xp.dot(new_direction, g_new) < 0
    hinv = xp.where(descent, hinv, eye)
    new_direction = xp.where(descent, new_direction, -g_new)
    largest = xp.max(xp.abs(new_direction))
    cap = o.max_step if o.first_step is None else xp.where(first_eval, o.first_step, o.max_step)
    new_direction = new_direction * xp.minimum(1.0, cap / xp.maximum(largest, 1e-300))

    gmax = xp.max(xp.abs(g_new))
    tiny_change = xp.abs(state.f - f_new) <= o.ftol * (1.0 + xp.abs(f_new))
    small_steps = xp.where(tiny_change & ~first_eval, state.small_steps + 1, 0)
    k = state.k + xp.where(first_eval, 0, 1)
    # On large objectives (InstEval's REML criterion is 2.4e5) rounding leaves the
    # gradient far above any absolute tolerance once f stops changing, so the loose
    # test scales with |f|.
    loose = o.loose_gtol * xp.maximum(1.0, xp.abs(f_new) / 1e4)
    converged = (gmax <= o.gtol) | ((small_steps >= 3) & (gmax <= loose))
    if o.decrease_tol is not None:
        # The quasi-Newton model predicts a decrease of −½·∇f'·d from the next
        # step: once that is below f's rounding, further steps chase noise.
        predicted = -0.5 * xp.dot(g_new, new_direction)
        converged = converged | (
            ~first_eval & (predicted <= o.decrease_tol * (1.0 + xp.abs(f_new)))
            & (gmax <= loose))
    if o.xtol is not None:
        tiny_step = xp.all(xp.abs(new_direction) <= o.xtol * (1.0 + xp.abs(trial)))
        converged = converged | ((state.step == 1) & tiny_step & (gmax <= loose))
    accepted_status = xp.where(
        first_eval & ~finite,
        Status.NON_FINITE,
        xp.where(converged, Status.CONVERGED,
                  xp.where(k >= o.max_iterations, Status.MAX_ITERATIONS, -1)),
    )
    halvings = state.halvings + 1
    shorter = 0.5 * state.step
    if o.expensive:
        shorter = _cubic_backtrack(xp, state.step, state.f, slope, f_new,
                                   xp.dot(g_new, state.direction))
    rejected_status = xp.where(
        halvings >= o.max_halvings,
        xp.where(xp.max(xp.abs(state.g))
                  <= o.loose_gtol * xp.maximum(1.0, xp.abs(state.f) / 1e4),
                  Status.CONVERGED,
                  Status.LINE_SEARCH_FAILED),
        -1,
    )
    if o.decrease_tol is not None:
        # A rejected step whose whole predicted gain, −½·∇f'·d at the current point,
        # is below f's rounding was rejected on noise: backtracking cannot help.
        noise = -0.5 * slope * state.step <= o.decrease_tol * (1.0 + xp.abs(state.f))
        flat_enough = xp.max(xp.abs(state.g)) <= o.loose_gtol * xp.maximum(
            1.0, xp.abs(state.f) / 1e4)
        rejected_status = xp.where(~first_eval & noise & flat_enough,
                                    Status.CONVERGED, rejected_status)
    one = xp.ones((), dtype)
    status = xp.where(accept, accepted_status, rejected_status).astype(xp.int32)
    direction = xp.where(accept, new_direction, state.direction)
    step = xp.where(accept, one, shorter)
    pending = xp.zeros((), bool)
    final_status = state.final_status
    if o.final_trial is not None:
        # The trial point's evaluation: keep it if f does not increase beyond
        # rounding; either way the search ends with the status it stopped with.
        pending_now = state.trial_pending
        keep = finite & (f_new <= state.f + o.trial_tol * (1.0 + xp.abs(state.f)))
        accept = xp.where(pending_now, keep, accept)
        status = xp.where(pending_now, state.final_status, status)
        # Just stopped: schedule the trial point as the next evaluation.
        x_next = xp.where(accept, trial, state.x)
        moved = o.final_trial(x_next)
        start = (~pending_now & (status >= 0) & (status != Status.NON_FINITE)
                 & xp.any(moved != x_next))
        final_status = xp.where(start, status, state.final_status)
        status = xp.where(start, -1, status)
        direction = xp.where(start, moved - x_next, direction)
        step = xp.where(start, one, step)
        pending = start
    return _State(
        x=xp.where(accept, trial, state.x),
        f=xp.where(accept, f_new, state.f),
        g=xp.where(accept, g_new, state.g),
        hinv=xp.where(accept, hinv, state.hinv),
        direction=direction,
        step=step,
        k=xp.where(accept, k, state.k),
        status=status,
        evals=state.evals + 1,
        small_steps=xp.where(accept, small_steps, state.small_steps),
        halvings=xp.where(accept, 0, halvings),
        carry=select(accept, carry_new, state.carry),
        trial_pending=pending,
        final_status=final_status,
    )

