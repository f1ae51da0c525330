"""fit_many's memory estimate and the chunk size it chooses (issue 19, item 5).

The estimate is checked against XLA's own accounting of the compiled batch programs
(``Compiled.memory_analysis()``: temporaries per model, from the growth between two
chunk sizes), which it must not undercut, nor exceed by more than a small factor.
"""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest

import glmmjax
from glmmjax._batching.memory import (
    MemoryEstimate,
    bytes_per_model,
    choose_chunk_size,
    plan,
)


def test_chunks_take_at_most_a_fifth_of_the_memory_per_device():
    per_model, available = 10**6, 10**8  # 20 models' worth of a fifth per device
    for n_devices in (1, 2, 4):
        chunk = choose_chunk_size(1000, per_model, n_devices, available)
        assert chunk % n_devices == 0
        assert chunk / n_devices * per_model <= 0.2 * available
        assert chunk / n_devices >= 16  # equal chunks: close to the budget, not far below
    assert choose_chunk_size(5, per_model, 1, available) == 5
    assert choose_chunk_size(1000, 10**12, 2, available) == 2  # at least one per device


def _device(platform, stats=None):
    return types.SimpleNamespace(platform=platform, memory_stats=lambda: stats)


def test_gpu_memory_is_the_device_s_and_cpu_memory_is_shared():
    gpu = _device("gpu", {"bytes_limit": 80 * 2**30, "bytes_in_use": 16 * 2**30})
    estimate = plan(100_000, "general", 500, (2,), (50,), 2, 3, 4, 1, None, gpu)
    assert estimate.available == 64 * 2**30 and estimate.source == "gpu memory"
    assert estimate.bytes_per_device <= 0.2 * estimate.available
    assert estimate.bytes_per_model == bytes_per_model("general", 500, (2,), (50,), 2, 3, 4)
    float64 = plan(100_000, "general", 500, (2,), (50,), 2, 3, 8, 1, None, gpu)
    assert float64.bytes_per_model == 2 * estimate.bytes_per_model
    cpu1 = plan(10, "lmm", 500, (1,), (50,), 3, 1, 8, 1, None, _device("cpu"))
    cpu4 = plan(10, "lmm", 500, (1,), (50,), 3, 1, 8, 4, None, _device("cpu"))
    assert cpu1.source == "host memory" and cpu4.available == cpu1.available // 4
    given = plan(10, "lmm", 500, (1,), (50,), 3, 1, 8, 4, 6, _device("cpu"))
    assert given.chunk_size == 8  # rounded up to the devices
    assert "per device for chunks of 8 models" in str(given)


def test_fit_many_records_its_estimate():
    # test_batch.py's compiled LMM program (sleepstudy, random slope, chunks of 4).
    data = glmmjax.datasets.load("sleepstudy")
    rng = np.random.default_rng(0)
    Y = data["Reaction"].to_numpy()[:, None] + rng.normal(0, 25, (len(data), 4))
    batch = glmmjax.fit_many("~ Days + (Days | Subject)", data, Y)
    memory = batch.memory
    assert isinstance(memory, MemoryEstimate)
    assert memory.chunk_size == batch.chunk_size == 4  # all four fit in one chunk
    # (Days | Subject): S = 2, 18 subjects, θ of 3, the rest: 2 fixed effects + y.
    assert memory.bytes_per_model == bytes_per_model("lmm", 180, (2,), (18,), 3, 3, 8)
    assert "memory" in repr(batch) and "per device for chunks of 4 models" in repr(batch)


def _measured_bytes_per_model(engine, formula, data, family=None):
    """Temporaries per model of the compiled batch program, from chunks of 8 and 24."""
    import jax
    import jax.numpy as jnp

    from glmmjax._batching import fit_many as _batch
    from glmmjax._batching.scalar import make_scalar_setup
    from glmmjax._engines.compiled.glmm import make_setup
    from glmmjax._families.base import get_family
    from glmmjax._model.structure import build_structure
    from glmmjax._precision import precision_scope

    design = _batch._design_for(formula, data, None, None)
    n, p = design.X.shape
    w = jnp.ones(n)
    with precision_scope("float64"):
        if engine == "lmm":
            structure = build_structure(design.terms, p + 1)
            setup = _batch._LMMSetup(X=np.asarray(design.X), weights=np.asarray(design.weights),
                                     structure=structure, reml=True, gtol=1e-8,
                                     loose_gtol=1e-3, satterthwaite=True)
            fit = lambda Y: jax.vmap(_batch._lmm_one, in_axes=(0, None))(Y, setup)  # noqa: E731
            shape = (structure.sizes, structure.n_levels, structure.rest_size)
        elif engine == "scalar":
            setup = make_scalar_setup(design, get_family(family), jnp.float64)
            fit = lambda Y: jax.vmap(_batch._glmm_scalar_one, in_axes=(0, None, None))(  # noqa: E731
                Y, w, setup)
            shape = ((1,), (design.terms[0].n_levels,), p + 1)
        else:
            setup = make_setup(design, get_family(family), 1, jnp.float64)
            fit = lambda Y: jax.vmap(_batch._glmm_one, in_axes=(0, None, None))(  # noqa: E731
                Y, w, setup)
            shape = (setup.inner.sizes, setup.inner.n_levels, setup.inner.rest_size)
        temp = [jax.jit(fit).lower(jnp.ones((k, n))).compile().memory_analysis()
                .temp_size_in_bytes for k in (8, 24)]
    n_theta = sum(c.n_params for c in _batch.term_structures(design.terms))
    return (temp[1] - temp[0]) / 16, bytes_per_model(engine, n, *shape, n_theta, 8)


@pytest.mark.slow
@pytest.mark.parametrize("engine, formula, levels, per_level, family", [
    ("lmm", "~ t + (t | g)", 50, 10, None),
    ("lmm", "~ t + (1 | g)", 100, 5, None),
    ("scalar", "~ t + (1 | g)", 50, 10, "poisson"),
    ("general", "~ t + (t | g)", 50, 10, "poisson"),
    ("general", "~ t + (t | g)", 25, 20, "poisson"),
    ("general", "~ t + (1 | g)", 50, 10, "poisson"),
])
def test_the_estimate_bounds_xla_s_accounting(engine, formula, levels, per_level, family):
    g = np.repeat(np.arange(levels), per_level)
    data = pd.DataFrame({"g": [f"g{i}" for i in g],
                         "t": np.tile(np.arange(per_level), levels).astype(float)})
    measured, estimated = _measured_bytes_per_model(engine, formula, data, family)
    assert measured <= estimated <= 3 * measured, (measured, estimated)
