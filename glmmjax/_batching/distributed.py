"""Batches over several processes (hosts): each fits its share, every one gets the whole.

With ``jax.distributed.initialize()`` called on every process, ``fit_many(...,
distributed=True)`` fits the models of :func:`process_share` on the process's local
devices (no communication while fitting: the models are independent) and then
:func:`gather_batches` collects every process's :class:`~glmmjax.BatchResult` on every
process, in process order, so each returns the result a single-process run gives.

The results travel as pickled bytes through ``jax.experimental.multihost_utils.
process_allgather``: a BatchResult holds DataFrames with model names and status
strings, which no array collective carries, and the bytes are a small fraction of
the fit (tens of bytes per model and coefficient). The bytes come only from the
job's own processes, which the user started.
"""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pandas as pd


def process_share(n_models: int, process_index: int | None = None,
                  process_count: int | None = None) -> slice:
    """The models ``[start, stop)`` that process ``process_index`` fits, as a slice.

    Contiguous blocks whose sizes differ by at most one, in process order, so that
    concatenating the processes' results in that order gives the models' order.
    Defaults: ``jax.process_index()`` and ``jax.process_count()``.

    Example:
        >>> import glmmjax
        >>> [glmmjax.process_share(10, i, 3) for i in range(3)]
        [slice(0, 4, None), slice(4, 7, None), slice(7, 10, None)]
    """
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    base, extra = divmod(int(n_models), int(process_count))
    start = process_index * base + min(process_index, extra)
    return slice(start, start + base + (process_index < extra))


def _allgather_bytes(payload: bytes) -> list[bytes]:
    from jax.experimental import multihost_utils

    size = np.array([len(payload)], dtype=np.int64)
    sizes = np.asarray(multihost_utils.process_allgather(size)).reshape(-1)
    buffer = np.zeros(int(sizes.max()), dtype=np.uint8)
    buffer[: len(payload)] = np.frombuffer(payload, dtype=np.uint8)
    gathered = np.asarray(multihost_utils.process_allgather(buffer))
    return [gathered[i, : int(n)].tobytes() for i, n in enumerate(sizes)]


def gather_batches(result):
    """Every process's :class:`~glmmjax.BatchResult`, concatenated in process order.

    A collective: every process of ``jax.distributed`` must call it (with its own
    result; all from the same formula, family and options), and every process gets the
    combined result. Model names must be unique across processes (give responses as a
    DataFrame with named columns, or use ``fit_many(..., distributed=True)``, which
    keeps the models' positions as names). With one process, ``result`` comes back
    unchanged.

    Example (on each of the job's processes)::

        jax.distributed.initialize()          # or with coordinator_address=..., ...
        mine = Y.iloc[:, glmmjax.process_share(Y.shape[1])]   # or only the share is read
        batch = glmmjax.gather_batches(glmmjax.fit_many("~ x + (1 | g)", data, mine))
    """
    import jax

    if jax.process_count() == 1:
        return result
    parts = [pickle.loads(b) for b in _allgather_bytes(pickle.dumps(result))]
    return concatenate_batches(parts)


def concatenate_batches(parts):
    """One BatchResult from several over disjoint models (see :func:`gather_batches`)."""

    first = parts[0]
    for index, part in enumerate(parts[1:], start=1):
        if (part.method, part.inference, list(part.fixef.columns)) != (
                first.method, first.inference, list(first.fixef.columns)):
            raise ValueError(
                f"process {index}'s batch ({part.method}, {part.inference}, terms "
                f"{list(part.fixef.columns)}) differs from process 0's ({first.method}, "
                f"{first.inference}, terms {list(first.fixef.columns)}): every process must "
                "fit the same formula, family and options")
    models = pd.concat([p.models for p in parts], ignore_index=True)
    duplicated = models["model"][models["model"].duplicated()].unique()
    if len(duplicated):
        raise ValueError(
            f"model names {duplicated[:5].tolist()} occur in several processes' batches: give "
            "responses as a DataFrame with unique column names, or use fit_many(..., "
            "distributed=True), which numbers the models over all processes")
    return dataclasses.replace(
        first,
        coefficients=pd.concat([p.coefficients for p in parts], ignore_index=True),
        models=models,
        fixef=pd.concat([p.fixef for p in parts]),
        fixef_se=pd.concat([p.fixef_se for p in parts]),
        theta=np.concatenate([p.theta for p in parts]),
        n_devices=sum(p.n_devices for p in parts),
        n_processes=sum(p.n_processes for p in parts),
    )
