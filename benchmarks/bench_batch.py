"""Throughput of batched fits against lme4, measured in the same run.

1. K random-intercept logistic GLMMs (n = 2,000 rows, 100 groups each, simulated with
   a fixed seed) by ``glmmjax.fit_many``, against a loop of ``glmer`` fits in R on the
   same data (a shorter loop: R's time per fit is constant).
2. Parametric-bootstrap refits of sleepstudy ``Reaction ~ Days + (Days | Subject)``:
   refits per second (MixedModels.jl publishes about 1,100/s on a CI CPU).

Usage: python benchmarks/bench_batch.py [--models 1000] [--r-fits 20] [--boot 1000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time

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


def time_glmer(data: pd.DataFrame, Y: np.ndarray, n_fits: int) -> float | None:
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
              glmer(y ~ x + (1 | g), data = d, family = binomial)
            }})[["elapsed"]]
            cat(t / {n_fits}, "\\n")
        """
        out = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-1000:])
            return None
        return float(out.stdout.split()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--r-fits", type=int, default=20)
    parser.add_argument("--boot", type=int, default=1000)
    args = parser.parse_args()

    data, Y = simulate(args.models)
    print(f"load average at start: {os.getloadavg()}")
    start = time.perf_counter()
    batch = glmmjax.fit_many("~ x + (1 | g)", data, Y, family="binomial", progress=False)
    first = time.perf_counter() - start
    start = time.perf_counter()
    glmmjax.fit_many("~ x + (1 | g)", data, Y, family="binomial", progress=False)
    warm = time.perf_counter() - start
    print(f"[glmm batch] {args.models} logistic GLMMs: {first:.1f} s with compilation, "
          f"{warm:.1f} s warm; {int(batch.converged.sum())} converged; "
          f"chunk {batch.chunk_size}; compilation ~{first - warm:.1f} s; "
          f"{1000 * warm / args.models:.1f} ms per model warm")
    per_fit = time_glmer(data, Y, args.r_fits)
    if per_fit is not None:
        glmer_total = per_fit * args.models
        print(f"[glmm batch] glmer: {per_fit:.3f} s per fit -> {glmer_total:.0f} s for "
              f"{args.models}; throughput ratio {glmer_total / first:.1f}x (with compilation), "
              f"{glmer_total / warm:.1f}x (warm)")

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
