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


class _State(NamedTuple):
    x: jnp.ndarray
    f: jnp.ndarray
    g: jnp.ndarray
    hinv: jnp.ndarray
    k: jnp.ndarray
    status: jnp.ndarray  # -1 while running
    evals: jnp.ndarray
    small_steps: jnp.ndarray


def minimize(
    fun,
    x0,
    args=(),
    *,
    max_iterations: int = 500,
    gtol: float = 1e-6,
    ftol: float = 1e-13,
    loose_gtol: float = 1e-3,
) -> Solution:
    """Minimize ``fun(x, *args)`` by BFGS with a backtracking Armijo line search.

    Stops with CONVERGED when max|∇f| <= ``gtol``, or when three successive steps change f by less
    than ``ftol``·(1 + |f|) while max|∇f| <= ``loose_gtol`` (the objective is flat to
    rounding). A line search that cannot decrease f ends with CONVERGED if the gradient
    is below ``loose_gtol`` and LINE_SEARCH_FAILED otherwise.
    """
    value_and_grad = jax.value_and_grad(fun)
    x0 = jnp.asarray(x0)
    dtype = x0.dtype
    f0, g0 = value_and_grad(x0, *args)
    n = x0.shape[0]
    eye = jnp.eye(n, dtype=dtype)

    def cond(state: _State):
        return state.status < 0

    def line_search(x, f, g, direction):
        slope = jnp.dot(g, direction)

        def ls_cond(carry):
            step, f_new, tries = carry
            ok = jnp.isfinite(f_new) & (f_new <= f + 1e-4 * step * slope)
            return (~ok) & (tries < 40)

        def ls_body(carry):
            step, _, tries = carry
            step = step * 0.5
            return step, fun(x + step * direction, *args), tries + 1

        f1 = fun(x + direction, *args)
        step, f_new, tries = jax.lax.while_loop(ls_cond, ls_body, (jnp.ones((), dtype), f1, 0))
        ok = jnp.isfinite(f_new) & (f_new <= f + 1e-4 * step * slope)
        return step, f_new, ok, tries + 1

    def body(state: _State):
        direction = -state.hinv @ state.g
        descent = jnp.dot(direction, state.g) < 0
        hinv = jnp.where(descent, state.hinv, eye)
        direction = jnp.where(descent, direction, -state.g)
        step, _, ok, tries = line_search(state.x, state.f, state.g, direction)
        x_new = jnp.where(ok, state.x + step * direction, state.x)
        f_new, g_new = value_and_grad(x_new, *args)
        s = x_new - state.x
        y = g_new - state.g
        sy = jnp.dot(s, y)
        first = state.k == 0
        # Scale the initial inverse Hessian (Nocedal & Wright eq. 6.20) after step one.
        hinv = jnp.where(first & (sy > 0), eye * sy / jnp.maximum(jnp.dot(y, y), 1e-300), hinv)
        rho = 1.0 / jnp.where(sy > 0, sy, 1.0)
        v = eye - rho * jnp.outer(s, y)
        updated = v @ hinv @ v.T + rho * jnp.outer(s, s)
        hinv = jnp.where(sy > 1e-12 * jnp.sqrt(jnp.dot(s, s) * jnp.dot(y, y)), updated, hinv)

        gmax = jnp.max(jnp.abs(g_new))
        tiny_change = jnp.abs(state.f - f_new) <= ftol * (1.0 + jnp.abs(f_new))
        small_steps = jnp.where(tiny_change & ok, state.small_steps + 1, 0)
        k = state.k + 1
        finite = jnp.isfinite(f_new) & jnp.all(jnp.isfinite(g_new))
        converged = (gmax <= gtol) | ((small_steps >= 3) & (gmax <= loose_gtol))
        status = jnp.where(
            ~finite,
            Status.NON_FINITE,
            jnp.where(
                converged,
                Status.CONVERGED,
                jnp.where(
                    ~ok,
                    jnp.where(gmax <= loose_gtol, Status.CONVERGED, Status.LINE_SEARCH_FAILED),
                    jnp.where(k >= max_iterations, Status.MAX_ITERATIONS, -1),
                ),
            ),
        )
        return _State(
            x_new, f_new, g_new, hinv, k, status.astype(jnp.int32), state.evals + tries + 1,
            small_steps,
        )

    start_status = jnp.where(
        jnp.max(jnp.abs(g0)) <= gtol,
        Status.CONVERGED,
        jnp.where(jnp.isfinite(f0) & jnp.all(jnp.isfinite(g0)), -1, Status.NON_FINITE),
    )
    state = _State(x0, f0, g0, eye, jnp.zeros((), jnp.int32), start_status.astype(jnp.int32),
                   jnp.ones((), jnp.int32), jnp.zeros((), jnp.int32))
    state = jax.lax.while_loop(cond, body, state)
    return Solution(state.x, state.f, state.g, state.k, state.status, state.evals)
