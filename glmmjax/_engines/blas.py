"""``single_threaded_blas``: OpenBLAS held to one thread while glmmjax computes.

OpenBLAS (NumPy's and SciPy's wheels each bundle one) threads even small factorizations
and its idle workers wait by spinning. On a machine with few cores that costs
several-fold as soon as anything else runs (verbagg's host fit and InstEval's compiled
fit: benchmarks/README.md, "Design measurements"). The host engines and every
XLA program call (XLA:CPU runs its Cholesky factorizations in SciPy's OpenBLAS) therefore
hold BLAS to one thread, and restore the user's setting when they finish.

Finding the libraries must be cheap, since a small fit takes tens of milliseconds.
threadpoolctl resolves the real path of every loaded library (about 160 with JAX loaded:
16–28 ms on first use); here the OpenBLAS builds are picked from ``/proc/self/maps`` by
name (or, for NumPy's and SciPy's wheels, from their bundled ``*.libs`` folders, which
is cheaper still) and set through their own ``openblas_set_num_threads`` (a few
microseconds per call). Other BLAS libraries (MKL, BLIS, FlexiBLAS, OpenBLAS built on OpenMP) and other
systems go through threadpoolctl.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import threading

_OPENBLAS_NAMES = ("libopenblas", "libscipy_openblas")
_OTHER_BLAS_NAMES = ("libmkl_rt", "mkl_rt", "libblis", "libflexiblas", "libblas")
_SYMBOL_AFFIXES = tuple(itertools.product(("", "scipy_"), ("", "64_", "_64")))
_OPENBLAS_PTHREADS = 1  # openblas_get_parallel(): 0 sequential, 1 pthreads, 2 OpenMP


class _OpenBLAS:
    """get/set of one loaded OpenBLAS's process-wide thread count."""

    def __init__(self, path: str):
        library = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | os.RTLD_LOCAL)
        for prefix, suffix in _SYMBOL_AFFIXES:
            getter = getattr(library, f"{prefix}openblas_get_num_threads{suffix}", None)
            if getter is not None:
                self.get = getter
                self.set = getattr(library, f"{prefix}openblas_set_num_threads{suffix}")
                self.set.argtypes = [ctypes.c_int]
                parallel = getattr(library, f"{prefix}openblas_get_parallel{suffix}", None)
                self.pthreads = parallel is not None and parallel() == _OPENBLAS_PTHREADS
                return
        raise OSError(f"{path} exports no openblas_get_num_threads")


def _mapped_libraries() -> set[str]:
    """Paths of the shared libraries mapped into this process (Linux)."""
    paths = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/") and ".so" in fields[5]:
                paths.add(fields[5].rstrip("\n"))
    return paths


def _wheel_openblas() -> list[_OpenBLAS] | None:
    """The OpenBLAS builds that NumPy's and SciPy's wheels bundle (``numpy.libs``,
    ``scipy.libs``), if both have one and both are loaded: the BLAS those packages
    (and jaxlib's LAPACK kernels, SciPy's) call. A directory listing each, where reading
    /proc/self/maps takes ~10 ms with JAX loaded. None for other installations."""
    import numpy
    import scipy

    found = []
    for module in (numpy, scipy):
        folder = os.path.join(os.path.dirname(os.path.dirname(module.__file__)),
                              f"{module.__name__}.libs")
        try:
            names = [n for n in os.listdir(folder) if n.startswith(_OPENBLAS_NAMES)]
        except OSError:
            return None
        if len(names) != 1:
            return None
        try:
            found.append(_OpenBLAS(os.path.join(folder, names[0])))
        except (OSError, AttributeError):  # not loaded (RTLD_NOLOAD) or not OpenBLAS
            return None
    return found if all(lib.pthreads for lib in found) else None


def _find_openblas() -> list[_OpenBLAS] | None:
    """The loaded OpenBLAS libraries if they are all the BLAS there is, else None."""
    wheels = _wheel_openblas()
    if wheels is not None:
        return wheels
    try:
        paths = _mapped_libraries()
    except OSError:
        return None
    names = {path: os.path.basename(path) for path in paths}
    if any(name.startswith(_OTHER_BLAS_NAMES) for name in names.values()):
        return None
    try:
        found = [_OpenBLAS(p) for p, name in names.items() if name.startswith(_OPENBLAS_NAMES)]
    except (OSError, AttributeError):
        return None
    return found if found and all(lib.pthreads for lib in found) else None


class _Limiter:
    """Sets one thread and restores the previous counts; found once per process."""

    def __init__(self):
        import numpy  # noqa: F401  (NumPy's and SciPy's BLAS must be loaded to be found)
        import scipy.linalg  # noqa: F401  (jaxlib's LAPACK kernels are SciPy's)

        self.openblas = _find_openblas()
        if self.openblas is None:
            from threadpoolctl import ThreadpoolController

            self.controller = ThreadpoolController()

    def limit(self):
        """Limit to one thread; returns the function that undoes it."""
        if self.openblas is None:
            return self.controller.limit(limits=1, user_api="blas").restore_original_limits
        previous = [(lib, lib.get()) for lib in self.openblas]
        for lib, threads in previous:
            if threads != 1:
                lib.set(1)

        def restore():
            for lib, threads in previous:
                if threads != 1:
                    lib.set(threads)

        return restore


_lock = threading.Lock()
_state = {"calls": 0, "restore": None, "limiter": None}


@contextlib.contextmanager
def single_threaded_blas():
    """BLAS limited to one thread while any glmmjax computation runs.

    The limit is process-wide, so calls from several Python threads share one: the
    first to enter sets it and the last to leave restores the user's setting (nested
    limits restored out of order would otherwise leave it at 1).
    """
    with _lock:
        if _state["calls"] == 0:
            if _state["limiter"] is None:
                _state["limiter"] = _Limiter()
            _state["restore"] = _state["limiter"].limit()
        _state["calls"] += 1
    try:
        yield
    finally:
        with _lock:
            _state["calls"] -= 1
            if _state["calls"] == 0:
                _state["restore"]()
                _state["restore"] = None
