"""Throughput of ``fit_many`` on the model shapes beyond one scalar term, against R loops
measured in the same run (issue 19).

Shapes (simulated with a fixed seed):

* ``nb2-slope``: NB2 GLMMs ``y ~ x + (x | g)``, n = 500 rows, 50 groups, a dispersion
  per model; R: a loop of ``glmmTMB(family = nbinom2)``.
* ``crossed``: logistic GLMMs ``y ~ x + (1 | a) + (1 | b)``, 30 × 20 crossed levels
  (n = 600, each cell once); R: a loop of ``glmer(family = binomial)``.

The figures are for the call a user makes, compilation included (first call in a fresh
process), plus a second (warm) call. R fits a subset of the models (its time per fit is
about constant) and the R total is extrapolated to all K. Also printed: the outer
iterations per model (mean and maximum: a vmapped loop runs as long as its slowest
model), for the profile of where the time goes.

By default (CPU, float64) these shapes take the lockstep numpy engine
(``glmmjax._batching.lockstep``). ``--path compiled`` forces the compiled blocked / crossed
Newton paths (``glmmjax._batching.blocked``, ``_glmm_batch_crossed``), ``--path
general`` the old general pipeline (vmapped ``glmm_pipeline``), for before/after
comparisons on the same data.

Usage: python benchmarks/bench_batch_general.py --shape nb2-slope --models 1000 --r-fits 20
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

# This checkout's glmmjax, not an installed one (the script's own folder comes first on
# sys.path otherwise, and an editable install elsewhere would win).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import glmmjax  # noqa: E402
import glmmjax._batching.fit_many as batch_module  # noqa: E402

SHAPES = {
    "nb2-slope": dict(formula="~ x + (x | g)", family="nbinom2"),
    "crossed": dict(formula="~ x + (1 | a) + (1 | b)", family="binomial"),
}


def simulate(shape: str, n_models: int, seed: int = 19):
    rng = np.random.default_rng(seed)
    if shape == "nb2-slope":
        groups = np.repeat(np.arange(50), 10)
        x = rng.normal(size=500)
        data = pd.DataFrame({"x": x, "g": pd.Categorical(groups)})
        b0 = rng.normal(0, 0.5, (50, n_models))
        b1 = rng.normal(0, 0.3, (50, n_models))
        size = rng.uniform(1.0, 5.0, n_models)
        mu = np.exp(1.0 + 0.4 * x[:, None] + b0[groups] + b1[groups] * x[:, None])
        rate = rng.gamma(size, mu / size)
        return data, rng.poisson(rate).astype(float)
    a, b = np.meshgrid(np.arange(30), np.arange(20), indexing="ij")
    a, b = a.ravel(), b.ravel()
    x = rng.normal(size=a.size)
    data = pd.DataFrame({"x": x, "a": pd.Categorical(a), "b": pd.Categorical(b)})
    ua = rng.normal(0, 0.8, (30, n_models))
    ub = rng.normal(0, 0.5, (20, n_models))
    eta = -0.3 + 0.6 * x[:, None] + ua[a] + ub[b]
    return data, (rng.uniform(size=eta.shape) < 1 / (1 + np.exp(-eta))).astype(float)


def time_r(shape: str, data: pd.DataFrame, Y: np.ndarray, n_fits: int) -> float | None:
    """R's seconds per fit over the first ``n_fits`` models."""
    if shutil.which("Rscript") is None or n_fits == 0:
        return None
    if shape == "nb2-slope":
        setup = "suppressMessages(library(glmmTMB)); d$g <- factor(d$g)"
        call = "glmmTMB(y ~ x + (x | g), data = d, family = nbinom2)"
    else:
        setup = "suppressMessages(library(lme4)); d$a <- factor(d$a); d$b <- factor(d$b)"
        call = "glmer(y ~ x + (1 | a) + (1 | b), data = d, family = binomial)"
    with tempfile.TemporaryDirectory() as tmp:
        frame = data.assign(**{f"y{k}": Y[:, k] for k in range(n_fits)})
        frame.to_csv(os.path.join(tmp, "d.csv"), index=False)
        script = f"""
            d <- read.csv("{tmp}/d.csv"); {setup}
            t <- system.time(for (k in 0:{n_fits - 1}) {{
              d$y <- d[[paste0("y", k)]]
              suppressWarnings(suppressMessages({call}))
            }})[["elapsed"]]
            cat(t / {n_fits}, "\\n")
        """
        out = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-1000:])
            return None
        return float(out.stdout.split()[-1])


def compare_float32(spec, data, Y, args):
    """float32 against float64 on the same models: differences in units of the float64
    standard errors (β), relative (θ, dispersion), and the share converged."""
    fits = {}
    for precision in ("float64", "float32"):
        start = time.perf_counter()
        fits[precision] = glmmjax.fit_many(spec["formula"], data, Y, family=spec["family"],
                                           progress=False, precision=precision)
        print(f"[{args.shape} {precision}] {args.models} models: "
              f"{time.perf_counter() - start:.1f} s with compilation; "
              f"{int(fits[precision].converged.sum())} converged; method {fits[precision].method}")
    f64, f32 = fits["float64"], fits["float32"]
    both = f64.converged & f32.converged
    z = np.abs(f32.fixef.to_numpy() - f64.fixef.to_numpy()) / f64.fixef_se.to_numpy()
    se = np.abs(f32.fixef_se.to_numpy() / f64.fixef_se.to_numpy() - 1)
    dtheta = np.abs(f32.theta - f64.theta)
    crit = np.abs(f32.models["criterion"].to_numpy() - f64.models["criterion"].to_numpy())
    print(f"[{args.shape}] float32 vs float64 on {int(both.sum())} models converged in both: "
          f"|Δβ|/SE median {np.median(z[both]):.1e}, max {np.max(z[both]):.1e}; "
          f"SE relative median {np.median(se[both]):.1e}, max {np.max(se[both]):.1e}; "
          f"|Δθ| median {np.median(dtheta[both]):.1e}, max {np.max(dtheta[both]):.1e}; "
          f"|Δcriterion| median {np.median(crit[both]):.1e}, max {np.max(crit[both]):.1e}")
    if "dispersion" in f64.models:
        d = np.abs(f32.models["dispersion"] / f64.models["dispersion"] - 1).to_numpy()
        print(f"[{args.shape}] dispersion relative difference median {np.median(d[both]):.1e}, "
              f"max {np.max(d[both]):.1e}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=sorted(SHAPES), default="nb2-slope")
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--r-fits", type=int, default=20)
    parser.add_argument("--path", choices=["auto", "compiled", "general"], default="auto")
    parser.add_argument("--precision", choices=["float64", "float32"], default="float64")
    parser.add_argument("--no-warm", action="store_true", help="skip the second call")
    parser.add_argument("--compare-float32", action="store_true",
                        help="fit in float64 and float32, print their differences")
    args = parser.parse_args()
    if args.path in ("compiled", "general"):
        batch_module.LOCKSTEP = False
    if args.path == "general":
        batch_module.BLOCKED_PATH = False

    spec = SHAPES[args.shape]
    data, Y = simulate(args.shape, args.models)
    print(f"load average at start: {os.getloadavg()}; glmmjax from {glmmjax.__file__}")
    if args.compare_float32:
        compare_float32(spec, data, Y, args)
        return

    def run():
        start = time.perf_counter()
        result = glmmjax.fit_many(spec["formula"], data, Y, family=spec["family"],
                                  progress=False, precision=args.precision)
        return result, time.perf_counter() - start

    batch, first = run()
    warm = None if args.no_warm else run()[1]
    it = batch.models["iterations"].to_numpy()
    label = f"[{args.shape} {args.path} {args.precision}] {args.models} models"
    print(f"{label}: {first:.1f} s with compilation ({1000 * first / args.models:.1f} ms "
          f"per model)" + ("" if warm is None else
                           f", {warm:.1f} s warm ({1000 * warm / args.models:.1f} ms per model);"
                           f" compilation ~{first - warm:.1f} s"))
    print(f"{label}: method {batch.method}; {int(batch.converged.sum())} converged; chunk "
          f"{batch.chunk_size}; outer iterations mean {it.mean():.1f}, max {it.max()}")
    failed = batch.models.loc[~batch.converged, "status"].value_counts()
    if len(failed):
        print(failed.to_string())
    per_fit = time_r(args.shape, data, Y, min(args.r_fits, args.models))
    if per_fit is not None:
        total = per_fit * args.models
        print(f"{label}: R {per_fit:.3f} s per fit -> {total:.0f} s for {args.models}; "
              f"throughput ratio {total / first:.1f}x (with compilation)"
              + ("" if warm is None else f", {total / warm:.1f}x (warm)"))
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
