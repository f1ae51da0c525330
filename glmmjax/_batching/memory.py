"""The memory a batch needs, estimated before it runs, and the chunk size it chooses.

A chunk of ``fit_many`` is one vmapped program; its working memory grows linearly with
the models in it (each model's arrays are stacked along the batch axis), so the chunk
size is the one knob. Before the run, each model's working set is estimated from the
structure's sizes, in the precision's bytes:

    bytes per model ≈ itemsize · (2000 + a·n + 8·(k + 1)²·m₀·S₀² + 4·R·S₀·m₀ + 12·R²)

with n observations, k covariance parameters (θ), m₀ the levels and S₀ the size of the
term with most levels (1 for ``(1 | g)``, 2 for ``(t | g)``), R the size of the dense
remainder of the factor (the other terms' levels and the fixed effects), and a = 10
(LMM), 20 (GLMM, one scalar term) or 60·max(1, S₀(k + 1)/2) (other GLMMs) words per
observation: a fixed
part, the per-observation vectors (η, μ, W, gradients of each trial point), the
levelwise S₀×S₀ blocks carried through the second derivatives in (θ, σ) (Satterthwaite's
df, the Hessian), the coupling rows between the first term and the rest, and the dense
remainder. The constants were set against XLA's own accounting of compiled batch
programs (``Compiled.memory_analysis()``, temporaries per model, float64): LMMs with
``(1 | g)`` and ``(t | g)`` at n = 24 and 500, GLMMs on both paths; the estimate lies
above it, within a factor of three (``tests/test_batch_memory.py``).

The memory available is the device's where JAX reports it (GPUs: ``bytes_limit`` less
``bytes_in_use``), else the host's physical memory shared among the CPU devices. A chunk
may take a fifth of it on each device, at most 4,096 models, then the chunks are made equal (four of 50
rather than three of 64 and one of 8) and a multiple of the device count.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

_SHARE = 0.2  # of the available memory, for one chunk's working set
_CAP = 4096


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """The memory estimate behind a batch's chunk size (``BatchResult.memory``).

    Attributes:
        bytes_per_model: estimated working memory of one model's fit.
        chunk_size: models per compiled call (chosen from the estimate unless given).
        n_devices: devices each chunk is split over.
        available: bytes available to one device (on the CPU, the host's memory
            shared among the CPU devices).
        source: where ``available`` comes from (``"host memory"``, ``"gpu memory"``).
    """

    bytes_per_model: int
    chunk_size: int
    n_devices: int
    available: int
    source: str

    @property
    def bytes_per_device(self) -> int:
        """Estimated working memory of one chunk on each device."""
        return self.bytes_per_model * int(np.ceil(self.chunk_size / self.n_devices))

    def __str__(self) -> str:
        from .._display import plural

        share = self.bytes_per_device / self.available if self.available else float("nan")
        part = "under 0.1%" if share < 0.001 else f"{share:.1%}"
        return (f"≈{_size(self.bytes_per_device)} per device for chunks of "
                f"{plural(self.chunk_size, 'model')} ({part} of {_size(self.available)} "
                f"{self.source})")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


# Words per observation of each engine's working set: the LMM works on cross-products
# formed once, the scalar GLMM Newton on a few n-vectors per trial, the general GLMM
# pipeline on η, μ, W and gradients for each of its two stages' trial points.
PER_ROW = {"lmm": 10, "scalar": 20, "general": 60}


def bytes_per_model(engine: str, n_obs: int, sizes, n_levels, rest_size: int, n_theta: int,
                    itemsize: int) -> int:
    """The module docstring's estimate of one model's working memory, in bytes
    (``sizes``/``n_levels``: S_t and m_t per term, the term with most levels first)."""
    m0, s0 = n_levels[0], sizes[0]
    per_row = PER_ROW[engine]
    if engine == "general":
        # Its per-row vectors are carried per column of the first term and per θ (the
        # derivatives of the trial points): (t | g) Poisson GLMMs measured 183 words a
        # row (n = 500 and 1,000; 25 to 100 levels), 60 with (1 | g).
        per_row = per_row * max(1.0, s0 * (n_theta + 1) / 2.0)
    words = (2000 + per_row * n_obs + 8 * (n_theta + 1) ** 2 * m0 * s0 * s0
             + 4 * rest_size * s0 * m0 + 12 * rest_size * rest_size)
    return int(itemsize * words)


def available_memory(device) -> tuple[int, str]:
    """Bytes free on ``device`` and what they are: its own memory where JAX reports it,
    else the host's physical memory."""
    stats = None
    if device.platform != "cpu":
        try:
            stats = device.memory_stats()
        except Exception:  # noqa: BLE001 - backends without statistics raise various errors
            stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0)), \
            f"{device.platform} memory"
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "host memory"
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30, "host memory (assumed)"


def choose_chunk_size(n_models: int, per_model: int, n_devices: int, available: int,
                      cap: int = _CAP) -> int:
    """Models per chunk: a fifth of ``available`` per device, at most ``cap``, equal
    chunks, a multiple of ``n_devices``."""
    per_device = max(1, int(_SHARE * available // max(per_model, 1)))
    chunk = int(max(1, min(n_models, per_device * n_devices, cap)))
    # Equal chunks rather than full ones and a short, padded last one.
    chunk = int(np.ceil(n_models / np.ceil(n_models / chunk)))
    return int(np.ceil(chunk / n_devices) * n_devices)


def plan(n_models: int, engine: str, n_obs: int, sizes, n_levels, rest_size: int,
         n_theta: int, itemsize: int, n_devices: int, chunk_size: int | None,
         device) -> MemoryEstimate:
    """The estimate and the chunk size (``chunk_size`` when given, rounded up to a
    multiple of ``n_devices``). CPU devices share the host's memory: each gets its part."""
    per_model = bytes_per_model(engine, n_obs, sizes, n_levels, rest_size, n_theta, itemsize)
    available, source = available_memory(device)
    if device.platform == "cpu":
        available //= n_devices
    if chunk_size is None:
        chunk_size = choose_chunk_size(max(n_models, 1), per_model, n_devices, available)
    chunk_size = int(np.ceil(int(chunk_size) / n_devices) * n_devices)
    return MemoryEstimate(per_model, chunk_size, n_devices, available, source)
