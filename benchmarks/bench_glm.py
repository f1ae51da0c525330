"""Benchmark: a large logistic regression, glmmjax against R's ``glm`` and statsmodels.

What it measures, on the same n × p data (default 1,000,000 × 20 normal covariates plus
an intercept, float64, written once to a binary file that every program reads):

- glmmjax in a fresh Python process, as a user meets it: ``import glmmjax`` + the first
  ``glmmjax.glm(formula, frame, "binomial")`` (formula to result), then a second call;
  the default engine (the host engine's numpy IRLS on the CPU) and ``engine="jax"``
  (the compiled program: its first call includes compilation);
- R's ``glm(y ~ ., family = binomial)`` in one Rscript process (``system.time`` of the
  fit alone; R's start-up and reading the data are not timed);
- statsmodels' ``GLM(...).fit()`` on the same arrays (in the glmmjax worker).

Peak memory: the rise of the process's peak resident set during the fits, after the
imports (glmmjax), and
R's ``gc()`` "max used" above what was in use before the fit (R's heap; R's ``glm`` keeps
its model frame, QR and fitted values, so that is most of its footprint).

Run:  python benchmarks/bench_glm.py [--n 1000000] [--p 20] [--no-r]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import fresh_process_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def simulate(n: int, p: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    covariates = rng.normal(size=(n, p))
    beta = rng.normal(scale=0.3, size=p)
    eta = -0.5 + covariates @ beta
    y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(np.float64)
    return covariates, y


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(path: str, n: int, p: int, engine: str) -> dict:
    """One fresh process: read the data, then import glmmjax and fit twice."""
    data = np.fromfile(path, dtype="<f8").reshape(n, p + 1)
    import pandas as pd

    frame = pd.DataFrame(data[:, 1:], columns=[f"x{j}" for j in range(p)])
    frame["y"] = data[:, 0]
    del data
    formula = "y ~ " + " + ".join(f"x{j}" for j in range(p))
    start = time.perf_counter()
    import glmmjax
    import glmmjax._glm  # noqa: F401  (what glm() needs: glmmjax imports it lazily)

    kwargs = {} if engine == "default" else {"engine": engine}
    imported = time.perf_counter()
    rss_before = _peak_rss_mb()
    fit = glmmjax.glm(formula, frame, "binomial", **kwargs)
    first = time.perf_counter()
    glmmjax.glm(formula, frame, "binomial", **kwargs)
    second = time.perf_counter()
    out = {"import": imported - start, "first_fit": first - imported,
           "second_fit": second - first, "peak_rise_mb": _peak_rss_mb() - rss_before,
           "deviance": float(fit.deviance), "coef": [float(c) for c in fit.coef]}
    if engine == "default":
        import statsmodels.api as sm

        X = np.column_stack([np.ones(n), frame.drop(columns="y").to_numpy()])
        t = time.perf_counter()
        sm_fit = sm.GLM(frame["y"].to_numpy(), X, family=sm.families.Binomial()).fit()
        out["statsmodels"] = time.perf_counter() - t
        out["statsmodels_coef_diff"] = float(np.max(np.abs(sm_fit.params - out["coef"])))
    return out


def run_worker(path: str, n: int, p: int, engine: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", path, "--n", str(n), "--p", str(p),
         "--engine", engine],
        stdout=subprocess.PIPE, text=True, check=True, env=fresh_process_env(ROOT))
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_r(path: str, n: int, p: int) -> dict:
    script = f"""
m <- matrix(readBin("{path}", "double", n = {n * (p + 1)}, endian = "little"),
            ncol = {p + 1}, byrow = TRUE)
d <- as.data.frame(m); names(d) <- c("y", paste0("x", 0:{p - 1})); rm(m)
invisible(gc(reset = TRUE)); before <- sum(gc()[, 2])
tm <- system.time(fit <- glm(y ~ ., family = binomial, data = d))[["elapsed"]]
after <- sum(gc()[, 6])
cat("RESULT", tm, format(deviance(fit), digits = 15), after - before, paste(sprintf("%.17g", coef(fit)), collapse = ","), "\\n")
"""
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as f:
        f.write(script)
    try:
        done = subprocess.run(["Rscript", f.name], stdout=subprocess.PIPE, text=True,
                              check=True)
    finally:
        os.unlink(f.name)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))
    _, seconds, deviance, memory, coef = line.split()
    return {"fit": float(seconds), "deviance": float(deviance), "peak_rise_mb": float(memory),
            "coef": [float(c) for c in coef.split(",")]}


def main(n: int, p: int, with_r: bool) -> None:
    covariates, y = simulate(n, p)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.f64")
        np.column_stack([y, covariates]).astype("<f8").tofile(path)
        del covariates, y
        host = run_worker(path, n, p, "default")
        compiled = run_worker(path, n, p, "jax")
        r = run_r(path, n, p) if with_r else None
    print(f"logistic regression, n = {n:,}, p = {p} + intercept, float64")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'':34s}{'import':>8s}{'1st fit':>9s}{'2nd fit':>9s}{'peak MB':>9s}")
    for name, res in (("glmmjax glm() (host engine)", host),
                      ("glmmjax glm(engine='jax')", compiled)):
        print(f"  {name:32s}{res['import']:8.2f}{res['first_fit']:9.2f}"
              f"{res['second_fit']:9.2f}{res['peak_rise_mb']:9.0f}")
    print(f"  {'statsmodels GLM (arrays)':32s}{'':8s}{host['statsmodels']:9.2f}")
    if r is not None:
        print(f"  {'R glm()':32s}{'':8s}{r['fit']:9.2f}{'':9s}{r['peak_rise_mb']:9.0f}")
        user_first = host["import"] + host["first_fit"]
        print("ratios (R time / glmmjax time; > 1: glmmjax faster):")
        print(f"  host engine, import + first fit  {r['fit'] / user_first:6.2f}x")
        print(f"  host engine, first fit           {r['fit'] / host['first_fit']:6.2f}x")
        print(f"  host engine, second fit          {r['fit'] / host['second_fit']:6.2f}x")
        print(f"  compiled, first fit              {r['fit'] / compiled['first_fit']:6.2f}x")
        print(f"  compiled, second fit             {r['fit'] / compiled['second_fit']:6.2f}x")
        print(f"deviance: glmmjax {host['deviance']:.6f}, R {r['deviance']:.6f}; "
              f"max |coef difference| vs R "
              f"{np.max(np.abs(np.subtract(host['coef'], r['coef']))):.1e}")
    print(f"max |coef difference| vs statsmodels {host['statsmodels_coef_diff']:.1e}, "
          f"host vs compiled {np.max(np.abs(np.subtract(host['coef'], compiled['coef']))):.1e}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="glmmjax vs R glm: logistic GLM")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--p", type=int, default=20)
    parser.add_argument("--no-r", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="default", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.p, args.engine)))
    else:
        main(args.n, args.p, not args.no_r)
