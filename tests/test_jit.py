"""Fit programs and the host engines limit BLAS to one thread while they run and restore
the user's setting afterwards, also when called from several Python threads at once."""

from __future__ import annotations

import threading

import pytest
import scipy.linalg  # noqa: F401  (its OpenBLAS is limited too: load it before measuring)
import threadpoolctl

import glmmjax
from glmmjax._engines import blas as _blas


def _blas_threads():
    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


@pytest.fixture(params=["openblas", "threadpoolctl"])
def limiter(request, monkeypatch):
    """Both ways of setting the limit: OpenBLAS's own setter and threadpoolctl's."""
    monkeypatch.setitem(_blas._state, "limiter", None)
    if request.param == "threadpoolctl":
        monkeypatch.setattr(_blas, "_find_openblas", lambda: None)
    return request.param


def test_single_threaded_blas_nests_and_restores(limiter):
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = _blas_threads()
        with _blas.single_threaded_blas():
            assert all(n == 1 for n in _blas_threads())
            with _blas.single_threaded_blas():
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


def _record_threads_during(monkeypatch, module, name, seen):
    original = getattr(module, name)

    def recording(*args, **kwargs):
        seen.append(_blas_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, recording)


def test_host_fits_run_with_one_blas_thread_from_their_first_product(monkeypatch):
    """The whole host fit, cross-products and start values included, whatever the size
    of its dense blocks (OpenBLAS threads small ones too)."""
    from glmmjax._engines.host import glmm as _host_glmm
    from glmmjax._engines.host import lmm as _host_lmm

    seen = []
    _record_threads_during(monkeypatch, _host_lmm, "host_model", seen)
    _record_threads_during(monkeypatch, _host_glmm, "moment_start", seen)
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        glmmjax.lmer("Yield ~ 1 + (1 | Batch)", glmmjax.datasets.load("dyestuff"))
        glmmjax.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)",
                      glmmjax.datasets.load("cbpp"), family="binomial")
        assert all(n == 2 for n in _blas_threads())
    assert len(seen) == 2 and all(n == 1 for threads in seen for n in threads)
