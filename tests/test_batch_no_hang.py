"""Batches end, show progress and stop on Ctrl-C (issue 16, item 0).

The reported hang: ``fit_many`` on 200 NB2 GLMMs with a random slope never returned,
every thread asleep on a futex with the main thread in ``BlockUntilReady``. The cause
was jaxlib 0.10's batched LAPACK kernels deadlocking XLA:CPU's thread pool (see
glmmjax._linalg; tests/test_linalg.py checks that batch programs no longer call them,
and test_batch.py's bootstrap test deadlocked every time before the fix). Workloads
run here in a subprocess with a ``timeout``, so a hang fails the test instead of
stalling the suite. The cheap tests check the mechanisms: chunks run with OpenBLAS
held to one thread (XLA:CPU calls LAPACK from its worker threads), the wait for a
chunk lets a ``KeyboardInterrupt`` through, and several chunks show a bar.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"did not finish in {timeout} s (hang?); stderr tail: {str(err.stderr)[-2000:]}")


NB_SLOPE_WORKLOAD = """
    import numpy as np, pandas as pd, glmmjax
    K, n, G = {K}, {n}, {G}
    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(G), n // G)
    t = np.tile(np.arange(n // G), G).astype(float)
    data = pd.DataFrame({{"g": [f"g{{i}}" for i in g], "t": t}})
    L = np.linalg.cholesky([[0.25, 0.015], [0.015, 0.01]])
    Y = np.empty((n, K))
    for k in range(K):
        b = rng.standard_normal((G, 2)) @ L.T
        mu = np.exp(1.0 + 0.1 * t + b[g, 0] + b[g, 1] * t)
        Y[:, k] = rng.negative_binomial(3, 3 / (3 + mu))
    result = glmmjax.fit_many("~ t + (t | g)", data, Y, family="negative_binomial")
    print("models", len(result), "with_status", int((result.models["status"] != "").sum()),
          "finite", int(np.isfinite(result.fixef.to_numpy()).all(axis=1).sum()))
"""


@pytest.mark.slow
def test_fit_many_of_200_nb2_random_slope_models_returns():
    # The workload (about a minute on 2 busy cores, compilation included).
    out = _run(NB_SLOPE_WORKLOAD.format(K=200, n=500, G=50), timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    words = out.stdout.split()
    # Every model keeps its row, a status and its estimates. (Batches of 4+ general-path
    # models used to get all-NaN Hessians, flagging them all; fixed by the batch's
    # forward-over-forward Hessian, tests/test_batch_status.py.)
    assert words == ["models", "200", "with_status", "200", "finite", "200"], out.stdout


def test_chunks_run_with_one_blas_thread_and_restore_it():
    from glmmjax._batching import fit_many as _batch
    from glmmjax._engines import blas as _blas

    seen = []

    def fake_fit(block):
        limiter = _blas._state["limiter"]
        seen.append((_blas._state["calls"], [lib.get() for lib in (limiter.openblas or [])]))
        return {"beta": np.asarray(block)[:, :2]}

    Y = np.arange(30.0).reshape(3, 10)
    out = _batch._run_chunks(fake_fit, Y, list(range(10)), 4, (), np.float32, progress=False)
    np.testing.assert_array_equal(out["beta"], Y.T[:, :2])
    assert len(seen) == 3
    for calls, threads in seen:
        assert calls >= 1 and all(t == 1 for t in threads)
    assert _blas._state["calls"] == 0  # released after the batch


def test_auto_chunks_are_equal_and_capped():
    assert _auto(200, cap=64) == 50  # four chunks of 50, not 64+64+64+8
    assert _auto(200, cap=4096) == 200
    assert _auto(10, cap=64) == 10
    assert _auto(130, cap=64) == 44


def _auto(n_models, cap):
    from glmmjax._batching.memory import choose_chunk_size

    return choose_chunk_size(n_models, per_model=50_000, n_devices=1, available=2**33, cap=cap)


def test_a_long_chunk_stops_on_ctrl_c():
    code = """
        import sys, time, jax, jax.numpy as jnp, numpy as np
        from glmmjax._batching.fit_many import _run_chunks, _sharded

        @jax.jit
        def spin(x):
            # About a minute of products (longer than the test waits). XLA:CPU runs a
            # program of scalar work inline in the dispatching call; with products it
            # is dispatched asynchronously, as the fit programs are.
            return jax.lax.fori_loop(0, 200_000, lambda i, v: v @ v / jnp.linalg.norm(v), x)

        x = jnp.eye(200) + 0.01
        spin.lower(x).compile()
        print("ready", flush=True)
        start = time.time()
        try:
            # A batch whose chunk is that computation, compiled as fit_many compiles
            # its batches (np.asarray on a pending result, as the chunk loop did, and
            # eqx.filter_jit, which waits inside XLA, ignore Ctrl-C until the end).
            batched = _sharded(lambda r: {"v": spin(x + r[0])}, 1)
            _run_chunks(batched, np.zeros((3, 2)), [0, 1], 2, (), np.float32,
                        progress=False)
        except KeyboardInterrupt:
            print(f"interrupted after {time.time() - start:.2f}", flush=True)
            sys.stdout.flush()
            import os
            os._exit(3)  # the computation itself keeps running: do not wait for it
        print("finished", flush=True)
    """
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 3, (stdout, stderr[-2000:])
    assert float(stdout.split()[-1]) < 5.0


def test_several_chunks_show_a_bar_and_finish():
    out = _run("""
        import numpy as np, pandas as pd, glmmjax
        rng = np.random.default_rng(0)
        data = pd.DataFrame({"g": np.repeat(list("abcdef"), 4), "x": rng.normal(size=24)})
        Y = rng.normal(size=(24, 6)) + np.repeat(rng.normal(size=6), 4)[:, None]
        result = glmmjax.fit_many("~ x + (1 | g)", data, Y, chunk_size=2)
        print(len(result), int(result.converged.sum()))
    """, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["6", "6"]
    assert "fitting models" in out.stderr and "3/3" in out.stderr


class _NeverReady:
    def is_ready(self):
        return False


def test_a_computation_that_stops_using_the_cpu_is_reported_not_waited_for():
    # A deadlocked XLA:CPU program never becomes ready and uses no CPU: the wait
    # raises instead of hanging the caller forever.
    from glmmjax._progress import StalledComputationError, wait_interruptibly

    start = time.monotonic()
    with pytest.raises(StalledComputationError, match="chunk 2 of 3.*no CPU for"):
        wait_interruptibly([_NeverReady()], what="chunk 2 of 3", stall_seconds=0.3)
    assert time.monotonic() - start < 5


def test_a_busy_computation_is_not_taken_for_a_stalled_one():
    import threading

    from glmmjax._progress import wait_interruptibly

    done = threading.Event()

    class _ReadyAfterWork:
        def is_ready(self):
            return done.is_set()

    def work():
        # Stands for XLA's worker threads: CPU-bound for about a second.
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            sum(range(10_000))
        done.set()

    thread = threading.Thread(target=work)
    thread.start()
    wait_interruptibly([_ReadyAfterWork()], stall_seconds=0.3)
    thread.join()
    assert done.is_set()
