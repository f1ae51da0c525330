"""Float64 by default without touching the user's global JAX configuration.

JAX's ``jax_enable_x64`` flag is global. glmmjax needs float64 for results that agree
with lme4 to many digits, but a library must not flip a process-wide switch behind its
user's back. Every public entry point therefore runs inside ``jax.enable_x64(True)``,
a thread-local context (entered only once JAX is imported: a host-engine fit that needs
no JAX never imports it), and hands back numpy arrays. ``precision="float32"`` is the
opt-in for GPU throughput.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np

from ._lazyjax import run_x64

PRECISIONS = ("float64", "float32")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


@contextlib.contextmanager
def precision_scope(precision: str = "float64"):
    """Run JAX code in float64 (default) or float32, restoring the caller's setting.

    float32 also asks for full-precision float32 matrix products: by default XLA may
    run them in TF32 on recent NVIDIA GPUs (10 mantissa bits), which on an H200 left
    float32 GLMM batches 1e-3 from float64 in β against 4e-5 on a CPU."""
    import jax

    check_precision(precision)
    with jax.enable_x64(precision == "float64"):
        if precision == "float32":
            with jax.default_matmul_precision("highest"):
                yield
        else:
            yield


def float_dtype(precision: str = "float64"):
    return np.float64 if precision == "float64" else np.float32


def with_x64(func):
    """Decorator: run ``func`` with 64-bit JAX enabled (thread-locally), from the moment
    JAX is imported: a call that never needs JAX does not import it
    (:func:`glmmjax._lazyjax.run_x64`)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with run_x64():
            return func(*args, **kwargs)

    return wrapper
