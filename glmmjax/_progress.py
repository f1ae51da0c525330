"""Feedback where people wait: a note before a compilation, progress bars in sessions.

Compiled paths (GLMM families other than the host engine's, quadrature, GLMs,
``fit_many``, the bootstrap, profiles, NUTS) trace and compile an XLA program on their
first call for a model structure, which takes seconds to tens of seconds on a CPU with
nothing on screen. :func:`noted` wraps such a program's Python function so that, while
JAX traces it (that is, only when a compilation follows), one line says so on stderr.

Set the environment variable ``GLMMJAX_QUIET=1`` to silence the notes.
"""

from __future__ import annotations

import functools
import os
import sys
import time

_LAST: dict[str, float] = {}
# A program may be traced several times in a row (say, for two argument layouts): one
# note per burst is enough.
_BURST_SECONDS = 10.0


def quiet() -> bool:
    return os.environ.get("GLMMJAX_QUIET", "") not in ("", "0")


def interactive() -> bool:
    """True in a terminal, IPython or Jupyter session (where progress bars help)."""
    if "ipykernel" in sys.modules or hasattr(sys, "ps1"):
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def compile_note(what: str) -> None:
    """Say, once per burst of compilations, that ``what`` is being compiled."""
    if quiet():
        return
    now = time.monotonic()
    if now - _LAST.get(what, -1e9) < _BURST_SECONDS:
        return
    _LAST[what] = now
    print(
        f"glmmjax: compiling {what} for this model structure (first call only: later "
        "calls with the same shapes and options reuse it) ...",
        file=sys.stderr,
        flush=True,
    )


def noted(fun, what: str):
    """``fun``, saying :func:`compile_note` ``(what)`` whenever it is traced."""

    @functools.wraps(fun)
    def traced(*args, **kwargs):
        compile_note(what)
        return fun(*args, **kwargs)

    return traced


def bar(iterable, *, enabled: bool | None, **tqdm_options):
    """``iterable`` wrapped in a tqdm bar when ``enabled`` (None: in interactive
    sessions only)."""
    if enabled is None:
        enabled = interactive() and not quiet()
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **tqdm_options)


class StalledComputationError(RuntimeError):
    """An XLA:CPU computation stopped using the CPU before it finished (a deadlock)."""


# A running XLA:CPU program burns CPU time; one that has used almost none (less than
# this share of the wall time, which the polling itself stays far below) over
# STALL_SECONDS while unfinished is parked for good (see glmmjax._linalg).
STALL_SECONDS = 120.0
_STALL_CPU_SHARE = 0.01


def wait_interruptibly(tree, poll_seconds: float = 0.05, what: str = "the computation",
                       stall_seconds: float | None = None):
    """``tree`` once every JAX array in it is computed, waiting in short sleeps.

    ``jax.block_until_ready`` (and ``np.asarray`` on a pending result) waits inside
    XLA, where Python's signal handlers cannot run: a Ctrl-C during a long batch, NUTS
    run or bootstrap would be ignored until the computation ends. Polling
    ``Array.is_ready`` from Python lets a ``KeyboardInterrupt`` through within
    ``poll_seconds``. (The interrupted computation itself still finishes in the
    background: XLA cannot cancel it.)

    On the CPU backend the wait also watches the process's CPU time: a computation
    that is not ready although the process used no CPU for ``stall_seconds``
    (default :data:`STALL_SECONDS`) is deadlocked, and waiting longer would hang the
    caller forever, so :class:`StalledComputationError` is raised instead. (On a GPU
    the host legitimately sleeps while the device works; no check there.)
    """
    import jax

    if stall_seconds is None:
        stall_seconds = STALL_SECONDS
    watch = jax.default_backend() == "cpu"
    delay = 0.0005
    for leaf in jax.tree_util.tree_leaves(tree):
        is_ready = getattr(leaf, "is_ready", None)
        if is_ready is None:
            continue
        since_wall, since_cpu = time.monotonic(), time.process_time()
        while not is_ready():
            time.sleep(delay)
            delay = min(2 * delay, poll_seconds)
            if not watch:
                continue
            now_wall = time.monotonic()
            if now_wall - since_wall < stall_seconds:
                continue
            now_cpu = time.process_time()
            if now_cpu - since_cpu > _STALL_CPU_SHARE * (now_wall - since_wall):
                since_wall, since_cpu = now_wall, now_cpu  # busy: watch a new window
            else:
                raise StalledComputationError(
                    f"{what} stopped making progress: it is unfinished, yet this process "
                    f"used almost no CPU for {now_wall - since_wall:.0f} s. XLA:CPU's thread "
                    "pool is deadlocked (jaxlib 0.10's batched LAPACK kernels wait for work "
                    "queued behind themselves; see glmmjax._linalg) and waiting longer would "
                    "never return. Run the work again in a fresh process, in smaller pieces "
                    "(fit_many's chunk_size=), or with jaxlib 0.11 or newer."
                )
    return tree
