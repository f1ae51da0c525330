"""fit_many over several processes (issue 19, item 6): two processes on this machine,
a localhost coordinator, two CPU devices each, fit one batch together; every process's
gathered result equals a single-process run.

The processes run as subprocesses with a timeout, and both are killed when it expires:
a process that dies leaves the other waiting in a collective, which must fail the test
rather than stall the suite.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

import glmmjax
from glmmjax._batching.distributed import concatenate_batches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DATA = """
    import numpy as np, pandas as pd
    rng = np.random.default_rng(3)
    G, m, K = 6, 4, {K}
    g = np.repeat(np.arange(G), m)
    x = rng.normal(size=G * m)
    data = pd.DataFrame({{"g": [f"g{{i}}" for i in g], "x": x}})
    eta = 0.5 + 0.5 * x[:, None] + rng.normal(size=(G, K))[g]
    if {family!r} == "poisson":
        Y = rng.poisson(np.exp(eta)).astype(float)
        Y[:, 3] = -1.0        # outside the support: flagged, never dropped
    else:
        Y = eta + rng.normal(size=(G * m, K))
        Y[:, 3] = np.nan      # flagged, never dropped
    options = dict(family={family!r}, chunk_size={chunk_size!r}, ddf={ddf!r})
"""

WORKER = """
    import pickle, sys
    import jax
    jax.config.update("jax_num_cpu_devices", 2)
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                               process_id=int(sys.argv[2]))
    import glmmjax
    assert jax.process_count() == 2 and jax.local_device_count() == 2
""" + DATA + """
    together = glmmjax.fit_many("~ x + (1 | g)", data, Y, distributed=True, **options)
    out = {{"together": together}}
    if jax.process_index() == 0 and {reference_here!r}:
        # The same program (chunk size, local devices) over all models in one process.
        out["alone"] = glmmjax.fit_many("~ x + (1 | g)", data, Y, **options)
    with open(sys.argv[3], "wb") as handle:
        pickle.dump(out, handle)
"""


GATHER_ONLY = """
    import pickle, sys
    import jax
    jax.config.update("jax_num_cpu_devices", 2)
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                               process_id=int(sys.argv[2]))
    import numpy as np, pandas as pd, glmmjax
    i = jax.process_index()
    names = [f"gene{{k}}" for k in range(3 * i, 3 * i + 2 + i)]   # 2 and 3 models
    part = glmmjax.BatchResult(
        coefficients=pd.DataFrame({{"model": names, "term": "x"}}),
        models=pd.DataFrame({{"model": names, "status": ["converged"] * len(names)}}),
        fixef=pd.DataFrame({{"x": np.arange(len(names)) + 10.0 * i}}, index=names),
        fixef_se=pd.DataFrame({{"x": np.ones(len(names))}}, index=names),
        theta=np.full((len(names), 1), float(i)), method="REML", inference="z",
        chunk_size=2, n_devices=jax.local_device_count())
    with open(sys.argv[3], "wb") as handle:
        pickle.dump({{"together": glmmjax.gather_batches(part)}}, handle)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes(tmp_path, timeout: float, worker=WORKER, **options) -> list[dict]:
    code = textwrap.dedent(worker.format(**options))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XLA_FLAGS", None)
    address = f"127.0.0.1:{_free_port()}"
    outputs = [tmp_path / f"process{i}.pkl" for i in range(2)]
    processes = [subprocess.Popen([sys.executable, "-c", code, address, str(i), str(outputs[i])],
                                  cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        errors = [p.communicate(timeout=timeout)[1] for p in processes]
    except subprocess.TimeoutExpired:
        for p in processes:
            p.kill()
        tails = [p.communicate()[1][-1500:] for p in processes]
        pytest.fail(f"the two processes did not finish in {timeout} s; stderr tails: {tails}")
    for i, p in enumerate(processes):
        assert p.returncode == 0, f"process {i} failed:\n{errors[i][-3000:]}"
    results = []
    for path in outputs:
        with open(path, "rb") as handle:
            results.append(pickle.load(handle))
    return results


def _assert_same_batch(got, want):
    assert list(got.models["model"]) == list(want.models["model"])
    assert list(got.models["status"]) == list(want.models["status"])
    np.testing.assert_array_equal(got.converged, want.converged)
    np.testing.assert_allclose(got.fixef.to_numpy(), want.fixef.to_numpy(), rtol=1e-8, atol=0)
    np.testing.assert_allclose(got.fixef_se.to_numpy(), want.fixef_se.to_numpy(), rtol=1e-8)
    np.testing.assert_allclose(got.models["criterion"], want.models["criterion"], rtol=1e-10)
    np.testing.assert_allclose(got.theta, want.theta, rtol=1e-8, atol=1e-12)
    pd.testing.assert_frame_equal(got.coefficients[["model", "term"]],
                                  want.coefficients[["model", "term"]])
    np.testing.assert_allclose(got.coefficients["p_value"], want.coefficients["p_value"],
                               rtol=1e-8)


def test_two_processes_gather_their_batches(tmp_path):
    # The collective itself, without a fit to compile (the fits: the slow tests below).
    results = _run_two_processes(tmp_path, timeout=60, worker=GATHER_ONLY)
    for result in results:
        together = result["together"]
        assert list(together.models["model"]) == ["gene0", "gene1", "gene3", "gene4", "gene5"]
        assert list(together.fixef.index) == list(together.models["model"])
        np.testing.assert_array_equal(together.fixef["x"], [0, 1, 10, 11, 12])
        np.testing.assert_array_equal(together.theta[:, 0], [0, 0, 1, 1, 1])
        assert (together.n_processes, together.n_devices) == (2, 4)


def test_each_process_fits_its_share_and_the_shares_make_the_batch(monkeypatch):
    # Two processes played in turn by this one (the collective: the test above), on
    # test_batch.py's compiled LMM program (sleepstudy, random slope, chunks of 4).
    import jax

    from glmmjax._batching import distributed as _distributed

    data = glmmjax.datasets.load("sleepstudy")
    rng = np.random.default_rng(0)
    Y = data["Reaction"].to_numpy()[:, None] + rng.normal(0, 25, (len(data), 7))
    Y[3, 4] = np.inf
    Y[[5, 6], 1] = Y[7, 5] = np.nan  # missing responses in both shares (weight-0 rows)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(_distributed, "gather_batches", lambda result: result)
    parts = []
    for index in (0, 1):
        monkeypatch.setattr(jax, "process_index", lambda i=index: i)
        parts.append(glmmjax.fit_many("~ Days + (Days | Subject)", data, Y, chunk_size=4,
                                      distributed=True))
    assert [len(p) for p in parts] == [4, 3]
    assert list(parts[1].models["model"]) == [4, 5, 6]
    monkeypatch.undo()
    alone = glmmjax.fit_many("~ Days + (Days | Subject)", data, Y, chunk_size=4)
    together = concatenate_batches(parts)
    assert together.models.loc[4, "status"].startswith("non-finite response")
    assert together.models.loc[[1, 5], "converged"].all()
    _assert_same_batch(together, alone)


@pytest.mark.slow
def test_two_processes_fit_one_batch_together(tmp_path):
    first, second = _run_two_processes(tmp_path, timeout=120, K=10, family=None,
                                       chunk_size=4, ddf=None, reference_here=True)
    together, alone = first["together"], first["alone"]
    assert (together.n_processes, together.n_devices) == (2, 4)
    assert len(together) == 10
    assert together.models.loc[3, "status"].startswith("non-finite response")
    assert together.converged.sum() == 9
    _assert_same_batch(together, alone)
    _assert_same_batch(second["together"], alone)  # every process gets the whole batch


@pytest.mark.slow
def test_two_processes_equal_an_independent_single_process_glmm_run(tmp_path):
    # The reference here is a plain run in this process (its own devices and chunk
    # size), not the workers' program: the split must not change any model.
    first, second = _run_two_processes(tmp_path, timeout=300, K=13, family="poisson",
                                       chunk_size=None, ddf="auto", reference_here=False)
    ns: dict = {}
    exec(textwrap.dedent(DATA.format(K=13, family="poisson", chunk_size=None, ddf="auto")), ns)
    alone = glmmjax.fit_many("~ x + (1 | g)", ns["data"], ns["Y"], **ns["options"])
    assert first["together"].n_processes == 2
    assert first["together"].models.loc[3, "status"].startswith("a Poisson response must be")
    _assert_same_batch(first["together"], alone)
    _assert_same_batch(second["together"], alone)


def test_process_share_covers_every_model_once_in_order():
    for n_models in (0, 1, 5, 10, 11):
        for count in (1, 2, 3, 4):
            shares = [glmmjax.process_share(n_models, i, count) for i in range(count)]
            covered = [k for s in shares for k in range(n_models)[s]]
            assert covered == list(range(n_models))
            sizes = [s.stop - s.start for s in shares]
            assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="process_index"):
        glmmjax.process_share(4, 2, 2)


def test_concatenated_batches_must_have_distinct_names_and_one_formula():
    import dataclasses

    frame = pd.DataFrame({"model": [0, 1]})
    part = glmmjax.BatchResult(
        coefficients=pd.DataFrame({"model": [0, 1], "term": ["a", "a"]}), models=frame,
        fixef=pd.DataFrame({"a": [1.0, 2.0]}), fixef_se=pd.DataFrame({"a": [1.0, 1.0]}),
        theta=np.ones((2, 1)), method="REML", inference="z", chunk_size=2, n_devices=1)
    with pytest.raises(ValueError, match="occur in several processes"):
        concatenate_batches([part, part])
    other = dataclasses.replace(part, method="ML",
                                models=pd.DataFrame({"model": [2, 3]}))
    with pytest.raises(ValueError, match="same formula, family and options"):
        concatenate_batches([part, other])
