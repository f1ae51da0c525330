"""fit_many with a structured covariance term on the CPU in float64: the per-model host
loop (glmmjax._batching.host_loop) against the compiled general pipeline it replaced
(HOST_LOOP = False), each in a fresh process, same run.

Models (issue 19's repro): 240 rows, 40 subjects × 6 times, LMMs
``~ x + ar1(timef + 0 | subj)`` and Poisson GLMMs ``~ x + cs(timef + 0 | subj)``.
The compiled path is timed on a first call (compilation included) and on a second call
of the same size in the same process (warm: its cost per model), so its time for other
batch sizes is compile + K × warm per model.

    python benchmarks/bench_fit_many_structured.py            # 50 models each, both paths
    python benchmarks/bench_fit_many_structured.py --models 500 --paths compiled host auto
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

SHAPES = {"lmm-ar1": ("~ x + ar1(timef + 0 | subj)", None),
          "poisson-cs": ("~ x + cs(timef + 0 | subj)", "poisson")}


def _data(K: int, family, seed: int = 0):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    g, t = 40, 6
    n = g * t
    d = pd.DataFrame({"subj": np.repeat(np.arange(g), t), "time": np.tile(np.arange(t), g)})
    d["x"] = rng.normal(size=n)
    d["timef"] = pd.Categorical(d.time)
    if family is None:
        Y = d.x.to_numpy()[:, None] + rng.normal(size=(g, K))[d.subj] + rng.normal(size=(n, K))
    else:
        Y = rng.poisson(np.exp(0.2 + rng.normal(size=(g, K))[d.subj] * 0.5)).astype(float)
    return d, Y


def worker(shape: str, path: str, K: int) -> dict:
    import warnings

    import glmmjax
    import glmmjax._batching.fit_many as fm

    warnings.simplefilter("ignore")
    fm.HOST_LOOP = path != "compiled"
    if path == "host":  # the host loop whatever the size ("auto": fit_many's routing)
        fm.HOST_LOOP_FIRST_MAX = 10**9
    formula, family = SHAPES[shape]
    d, Y = _data(K, family)
    out = {}
    for call in (("first", "second") if path != "host" else ("first",)):
        t0 = time.perf_counter()
        batch = glmmjax.fit_many(formula, d, Y, family=family, progress=False)
        out[call] = time.perf_counter() - t0
        out["converged"] = int(batch.converged.sum())
    return out


def main() -> None:
    from _runs import fresh_process_env, run_json

    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, nargs="+", default=[50])
    parser.add_argument("--paths", nargs="+", default=["compiled", "host"])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    parser.add_argument("--worker", nargs=3)
    args = parser.parse_args()
    if args.worker:
        shape, path, K = args.worker
        print(json.dumps(worker(shape, path, int(K))))
        return
    env = fresh_process_env(ROOT)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"load: {load}")
    for shape in args.shapes:
        for K in args.models:
            for path in args.paths:
                r = run_json([sys.executable, __file__, "--worker", shape, path, str(K)], env)
                extra = ""
                if "second" in r:
                    extra = (f", second call {r['second']:.1f} s "
                             f"({1e3 * r['second'] / K:.0f} ms/model warm)")
                print(f"{shape:11s} K={K:4d} {path:8s}: first call {r['first']:.1f} s"
                      f" ({1e3 * r['first'] / K:.0f} ms/model){extra}, "
                      f"{r['converged']}/{K} converged", flush=True)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"load: {load}")


if __name__ == "__main__":
    main()
