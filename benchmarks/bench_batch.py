"""Throughput of batched fits against lme4, measured in the same run.

1. K random-intercept logistic GLMMs (n = 2,000 rows, 100 groups each, simulated with
   a fixed seed) by ``glmmjax.fit_many``, against a loop of ``glmer`` fits in R on the
   same data (a shorter loop: R's time per fit is constant).
2. Parametric-bootstrap refits of sleepstudy ``Reaction ~ Days + (Days | Subject)``:
   refits per second (MixedModels.jl publishes about 1,100/s on a CI CPU).

The GLMM batch is timed in fresh processes, one per route of scalar-term GLMMs
(``glmmjax._batching.fit_many.SCALAR_ROUTE``): "auto" (the default: a first call by the
lockstep engine, a repeated one compiles the program), "compiled" (the scalar path's
program, compiled in the first call) and "lockstep" (nothing compiled). Each reports
its first, second and third call.

Usage: python benchmarks/bench_batch.py [--models 1000] [--r-fits 20] [--boot 1000]
       [--routes auto,compiled,lockstep]
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


def worker(route: str, models: int, n_agq: int = 1) -> None:
    """One fresh process: the first call, the call right after it, and (after any
    background compilation has finished) a warm call; JSON on the last line."""
    from glmmjax._batching import fit_many as fit_many_module

    fit_many_module.SCALAR_ROUTE = route
    if n_agq > 1 and route == "compiled":
        fit_many_module.LOCKSTEP = False  # AGQ: the general pipeline it replaced
    data, Y = simulate(models)
    out = {}

    def call(label):
        start = time.perf_counter()
        batch = glmmjax.fit_many("~ x + (1 | g)", data, Y, family="binomial", progress=False,
                                 n_agq=n_agq)
        out[label] = time.perf_counter() - start
        out[label + "_engine"] = "lockstep" if batch.memory is None else "compiled"
        out["converged"] = int(batch.converged.sum())
        return batch

    call("first")
    call("second")
    call("warm")
    print(json.dumps(out))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--r-fits", type=int, default=20)
    parser.add_argument("--boot", type=int, default=1000)
    parser.add_argument("--routes", default="auto,compiled")
    parser.add_argument("--n-agq", type=int, default=1,
                        help="adaptive quadrature points (glmer's nAGQ), also in R")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.models, args.n_agq)
        return

    from _runs import fresh_process_env

    data, Y = simulate(args.models)
    print(f"load average at start: {os.getloadavg()}")
    env = fresh_process_env(Path(__file__).resolve().parents[1])
    timings = {}
    for route in args.routes.split(","):
        done = subprocess.run([sys.executable, __file__, "--worker", route, "--models",
                               str(args.models), "--n-agq", str(args.n_agq)],
                              stdout=subprocess.PIPE, text=True,
                              check=True, env=env)
        timings[route] = t = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"[glmm batch, {route}] {args.models} logistic GLMMs (fresh process): first "
              f"call {t['first']:.1f} s ({t['first_engine']}), second {t['second']:.1f} s "
              f"({t['second_engine']}), third {t['warm']:.1f} s ({t['warm_engine']}; "
              f"{1000 * t['warm'] / args.models:.1f} ms per model); {t['converged']} "
              f"converged; load {os.getloadavg()[0]:.1f}")
    per_fit = time_glmer(data, Y, args.r_fits, args.n_agq)
    if per_fit is not None:
        glmer_total = per_fit * args.models
        print(f"[glmm batch] glmer: {per_fit:.3f} s per fit -> {glmer_total:.0f} s for "
              f"{args.models}")
        for route, t in timings.items():
            print(f"[glmm batch, {route}] throughput ratio {glmer_total / t['first']:.1f}x "
                  f"(first call), {glmer_total / t['second']:.1f}x (second), "
                  f"{glmer_total / t['warm']:.1f}x (third)")
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
