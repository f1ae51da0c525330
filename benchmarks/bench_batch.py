"""Throughput of batched fits against lme4, measured in the same run.

1. K random-intercept logistic GLMMs (n = 2,000 rows, 100 groups each, simulated with
   a fixed seed) by ``glmmjax.fit_many``, against a loop of ``glmer`` fits in R on the
   same data (a shorter loop: R's time per fit is constant).
2. Parametric-bootstrap refits of sleepstudy ``Reaction ~ Days + (Days | Subject)``:
   refits per second (MixedModels.jl publishes about 1,100/s on a CI CPU).

The GLMM batch is timed in fresh processes, one per route of scalar-term GLMMs
(``glmmjax._batching.fit_many.SCALAR_ROUTE``): "auto" (the default: calls by the
lockstep engine until their time would have paid for compiling the program, which the
next call then compiles), "compiled" (the scalar path's
program, compiled in the first call) and "lockstep" (nothing compiled). Each makes
``--calls`` calls of the same batch (default 3) and reports each one's time and engine.

Usage: python benchmarks/bench_batch.py [--models 1000] [--r-fits 20] [--boot 1000]
       [--routes auto,compiled,lockstep] [--calls 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import glmmjax


def simulate(n_models: int, seed: int = 42):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(100), 20)
    x = rng.normal(size=2000)
    data = pd.DataFrame({"x": x, "g": pd.Categorical(groups)})
    b = rng.normal(0, 0.8, (100, n_models))
    eta = -0.5 + 0.7 * x[:, None] + b[groups]
    Y = (rng.uniform(size=eta.shape) < 1 / (1 + np.exp(-eta))).astype(float)
    return data, Y


def time_glmer(data: pd.DataFrame, Y: np.ndarray, n_fits: int, n_agq: int = 1) -> float | None:
    if shutil.which("Rscript") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        frame = data.assign(**{f"y{k}": Y[:, k] for k in range(n_fits)})
        frame.to_csv(os.path.join(tmp, "d.csv"), index=False)
        script = f"""
            suppressMessages(library(lme4))
            d <- read.csv("{tmp}/d.csv"); d$g <- factor(d$g)
            t <- system.time(for (k in 0:{n_fits - 1}) {{
              d$y <- d[[paste0("y", k)]]
              glmer(y ~ x + (1 | g), data = d, family = binomial, nAGQ = {n_agq})
            }})[["elapsed"]]
            cat(t / {n_fits}, "\\n")
        """
        out = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-1000:])
            return None
        return float(out.stdout.split()[-1])


def worker(route: str, models: int, n_agq: int = 1, calls: int = 3) -> None:
    """One fresh process: ``calls`` calls of the same batch in a row (a user fitting
    batch after batch); JSON on the last line: each call's seconds and engine."""
    from glmmjax._batching import fit_many as fit_many_module

    fit_many_module.SCALAR_ROUTE = route
    if n_agq > 1 and route == "compiled":
        fit_many_module.LOCKSTEP = False  # AGQ: the general pipeline it replaced
    data, Y = simulate(models)
    out = {"seconds": [], "engines": []}
    for _ in range(calls):
        start = time.perf_counter()
        batch = glmmjax.fit_many("~ x + (1 | g)", data, Y, family="binomial", progress=False,
                                 n_agq=n_agq)
        out["seconds"].append(time.perf_counter() - start)
        out["engines"].append("lockstep" if batch.memory is None else "compiled")
        out["converged"] = int(batch.converged.sum())
    print(json.dumps(out))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--r-fits", type=int, default=20)
    parser.add_argument("--boot", type=int, default=1000)
    parser.add_argument("--routes", default="auto,compiled")
    parser.add_argument("--n-agq", type=int, default=1,
                        help="adaptive quadrature points (glmer's nAGQ), also in R")
    parser.add_argument("--calls", type=int, default=3,
                        help="calls of the same batch per fresh process")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.models, args.n_agq, args.calls)
        return

    from _runs import fresh_process_env

    data, Y = simulate(args.models)
    print(f"load average at start: {os.getloadavg()}")
    env = fresh_process_env(Path(__file__).resolve().parents[1])
    timings = {}
    for route in args.routes.split(","):
        done = subprocess.run([sys.executable, __file__, "--worker", route, "--models",
                               str(args.models), "--n-agq", str(args.n_agq), "--calls",
                               str(args.calls)],
                              stdout=subprocess.PIPE, text=True,
                              check=True, env=env)
        timings[route] = t = json.loads(done.stdout.strip().splitlines()[-1])
        calls = ", ".join(f"{s:.1f} s ({'L' if e == 'lockstep' else 'C'})"
                          for s, e in zip(t["seconds"], t["engines"]))
        print(f"[glmm batch, {route}] {args.models} logistic GLMMs (fresh process), calls "
              f"(L lockstep, C compiled program): {calls}; total {sum(t['seconds']):.1f} s; "
              f"{t['converged']} converged; load {os.getloadavg()[0]:.1f}")
    per_fit = time_glmer(data, Y, args.r_fits, args.n_agq)
    if per_fit is not None:
        glmer_total = per_fit * args.models
        print(f"[glmm batch] glmer: {per_fit:.3f} s per fit -> {glmer_total:.0f} s for "
              f"{args.models}")
        for route, t in timings.items():
            ratios = ", ".join(f"{glmer_total / s:.1f}x" for s in t["seconds"])
            print(f"[glmm batch, {route}] throughput ratio per call: {ratios}; over all "
                  f"{len(t['seconds'])} calls {len(t['seconds']) * glmer_total / sum(t['seconds']):.1f}x")
    if args.boot <= 0:
        print(f"load average at end: {os.getloadavg()}")
        return

    fit = glmmjax.lmer("Reaction ~ Days + (Days | Subject)", glmmjax.datasets.load("sleepstudy"))
    start = time.perf_counter()
    boot = fit.bootstrap(args.boot, seed=1, progress=False)
    first = time.perf_counter() - start
    start = time.perf_counter()
    fit.bootstrap(args.boot, seed=2, progress=False)
    warm = time.perf_counter() - start
    print(f"[bootstrap] {args.boot} sleepstudy refits: {args.boot / first:.0f} refits/s with "
          f"compilation, {args.boot / warm:.0f} refits/s warm; {boot.n_failed} failed")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
