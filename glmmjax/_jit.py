"""``program``: ``eqx.filter_jit`` for glmmjax's large fit programs, with the XLA
options that make them compile fast on CPU, run with single-threaded LAPACK.

XLA:CPU's newer MLIR fusion emitters take about twice as long to compile a fit as the
classic ones (InstEval's LMM fit: 4.7 s against 2.3 s under the same load) and gave no
faster code in our fits (2.55 s against 2.57 s for the same fit). The choice is passed
to each program's compilation, never set globally: users' own JAX code is untouched.

XLA:CPU runs its Cholesky factorizations and triangular solves in the OpenBLAS that
SciPy bundles, whose worker threads wait by spinning. Next to XLA's own threads, and
worse next to any other busy process, they fight over the cores: on this project's
2-core machine with one other busy process, InstEval's fit took 5.7–10 s with two
OpenBLAS threads and 1.7–2.2 s with one. Each program call therefore limits OpenBLAS
to one thread (threadpoolctl) until its results are ready, and restores the setting.
"""

from __future__ import annotations

import contextlib
import functools
import threading

import equinox as eqx
import jax
from threadpoolctl import ThreadpoolController

_CPU_OPTIONS = {"xla_cpu_use_fusion_emitters": False}
_controller: list = []  # one ThreadpoolController, made once BLAS libraries are loaded


_lock = threading.Lock()
_active = {"calls": 0, "limiter": None}


@contextlib.contextmanager
def single_threaded_blas():
    """OpenBLAS limited to one thread while any program call runs.

    The limit is process-wide, so calls from several Python threads share one: the
    first to enter sets it and the last to leave restores the user's setting (nested
    ``threadpool_limits`` contexts restored out of order would otherwise leave it at 1).
    """
    with _lock:
        if _active["calls"] == 0:
            if not _controller:
                import scipy.linalg  # noqa: F401  (jaxlib's LAPACK kernels are SciPy's)

                _controller.append(ThreadpoolController())
            _active["limiter"] = _controller[0].limit(limits=1, user_api="blas")
        _active["calls"] += 1
    try:
        yield
    finally:
        with _lock:
            _active["calls"] -= 1
            if _active["calls"] == 0:
                _active["limiter"].restore_original_limits()
                _active["limiter"] = None


# Dense matrices below this size never reach OpenBLAS's threaded code paths, so the
# host engines skip the limit (finding the BLAS libraries costs ~30 ms on first use).
_SMALL_DENSE = 128


def blas_limit_for(size: int):
    """:func:`single_threaded_blas` when a host computation factors dense matrices of
    ``size`` rows or more, else a no-op context."""
    return single_threaded_blas() if size >= _SMALL_DENSE else contextlib.nullcontext()


def program(fun):
    """Jit ``fun`` (equinox's filtering) with :data:`_CPU_OPTIONS` on the CPU backend.

    A jaxlib that does not know an option rejects the compilation before anything runs;
    the program is then compiled with XLA's defaults (and stays so).
    """
    plain = eqx.filter_jit(fun)
    tuned = eqx.filter_jit(fun, compiler_options=_CPU_OPTIONS)
    usable = [True]

    def run(*args, **kwargs):
        if not usable[0]:
            return plain(*args, **kwargs)
        try:
            return tuned(*args, **kwargs)
        except jax.errors.JaxRuntimeError as error:
            if "compile option" not in str(error):
                raise
            usable[0] = False
            return plain(*args, **kwargs)

    @functools.wraps(fun)
    def call(*args, **kwargs):
        if jax.default_backend() != "cpu":
            return plain(*args, **kwargs)
        with single_threaded_blas():
            # Dispatch is asynchronous: wait for the results inside the limit.
            return jax.block_until_ready(run(*args, **kwargs))

    return call
