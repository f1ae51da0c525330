"""Fit programs limit OpenBLAS to one thread while they run and restore the user's
setting afterwards, also when called from several Python threads at once."""

from __future__ import annotations

import threading

import threadpoolctl

import glmmjax
from glmmjax import _jit


def _blas_threads():
    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


def test_single_threaded_blas_nests_and_restores():
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = _blas_threads()
        with _jit.single_threaded_blas():
            assert all(n == 1 for n in _blas_threads())
            with _jit.single_threaded_blas():
                assert all(n == 1 for n in _blas_threads())
            assert all(n == 1 for n in _blas_threads())
        assert _blas_threads() == before


def test_threads_calling_fits_restore_the_setting():
    data = glmmjax.datasets.load("dyestuff")
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = _blas_threads()
        results = []
        workers = [threading.Thread(target=lambda: results.append(
            glmmjax.lmer("Yield ~ 1 + (1 | Batch)", data).criterion)) for _ in range(3)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert len(results) == 3 and len(set(results)) == 1
        assert _blas_threads() == before
