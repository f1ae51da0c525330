"""Benchmark: a large logistic regression, glmmjax against statsmodels in the same run.

What it measures: wall time to fit a binomial-logit GLM to n rows and p covariates
(default 1,000,000 × 20, plus an intercept), from arrays and from a DataFrame with a
formula, for

- glmmjax's ``fit_glm`` on arrays (first call includes JIT compilation; the second
  call reuses the compiled code), and ``glmmjax.glm`` on a DataFrame (formula to
  result; again first and second call);
- statsmodels' ``GLM(y, X, family=Binomial()).fit()`` on the same arrays (IRLS).

It checks that both give the same coefficients and prints the time ratios.

Run:  python benchmarks/bench_glm.py [--n 1000000] [--p 20] [--repeats 2]
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import numpy as np
import pandas as pd


def simulate(n: int, p: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    covariates = rng.normal(size=(n, p))
    beta = rng.normal(scale=0.3, size=p)
    eta = -0.5 + covariates @ beta
    y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(np.float64)
    return covariates, y


def _time(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(n: int = 1_000_000, p: int = 20, repeats: int = 2) -> dict:
    import statsmodels.api as sm

    import glmmjax
    from glmmjax._glm import _fit_glm_jit
    from glmmjax.families import Binomial

    covariates, y = simulate(n, p)
    X = np.column_stack([np.ones(n), covariates])
    weights, offset = np.ones(n), np.zeros(n)
    frame = pd.DataFrame(covariates, columns=[f"x{j}" for j in range(p)])
    frame["y"] = y
    formula = "y ~ " + " + ".join(f"x{j}" for j in range(p))
    family = Binomial()

    def core():
        with jax.enable_x64(True):
            fit = _fit_glm_jit(X, y, weights, offset, family, tol=1e-8, max_iter=25)
            return np.asarray(jax.block_until_ready(fit.coef))

    results = {}
    results["fit_glm first (compile + fit)"], coef = _time(core)
    results["fit_glm warm"] = min(_time(core)[0] for _ in range(repeats))
    results["glm() formula first"], fit = _time(lambda: glmmjax.glm(formula, frame, "binomial"))
    results["glm() formula warm"] = min(
        _time(lambda: glmmjax.glm(formula, frame, "binomial"))[0] for _ in range(repeats)
    )
    timings = [_time(lambda: sm.GLM(y, X, family=sm.families.Binomial()).fit())
               for _ in range(repeats)]
    results["statsmodels GLM"] = min(t for t, _ in timings)
    sm_coef = timings[0][1].params
    max_diff = float(np.max(np.abs(coef - sm_coef)))
    formula_diff = float(np.max(np.abs(fit.coef.to_numpy() - sm_coef)))

    print(f"logistic regression, n = {n:,}, p = {p} + intercept, float64")
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
          f"JAX {jax.__version__} on {jax.default_backend()}")
    for name, seconds in results.items():
        print(f"  {name:32s} {seconds:8.3f} s")
    base = results["statsmodels GLM"]
    print("ratios (statsmodels time / glmmjax time; > 1 means glmmjax is faster):")
    for name in ("fit_glm first (compile + fit)", "fit_glm warm", "glm() formula first",
                 "glm() formula warm"):
        print(f"  {name:32s} {base / results[name]:8.2f}x")
    print(f"max |coef difference| vs statsmodels: arrays {max_diff:.2e}, "
          f"formula {formula_diff:.2e}")
    return {"timings": results, "max_coef_diff": max_diff}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="glmmjax vs statsmodels: logistic GLM")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--p", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    main(args.n, args.p, args.repeats)
