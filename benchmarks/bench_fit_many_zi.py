"""``fit_many`` of zero-inflated Poisson GLMMs against a glmmTMB loop, same machine, same
run (issue 20's target: 1,000 models at least 50x a glmmTMB loop).

Model: ``~ mined + (1 | site)`` with ``ziformula = ~ mined`` on a quarter of the
salamander rows (161 rows, 23 sites), K responses simulated as in
tests/test_zero_inflation.py's fit_many test (site effects N(0, 0.4²), log μ = 0.2 +
mined_no + b, logit π = 0.5 − 1.5·mined_no, seed 7). glmmjax: one ``fit_many`` call in
a fresh process (its modules imported first, as bench_families.py), timed; R: one
session loads glmmTMB, makes one warm-up fit, then times a loop of ``glmmTMB`` fits of
the same K responses (read from a CSV). Ratio: R loop / glmmjax.

    python benchmarks/bench_fit_many_zi.py --models 200
    python benchmarks/bench_fit_many_zi.py --models 1000 --r-fits 100   # R on a subset
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import describe  # benchmarks/ is sys.path[0] when run as a script
from _runs import fresh_process_env

ROOT = Path(__file__).resolve().parent.parent


def _data_and_responses(K: int):
    import numpy as np

    import glmmjax

    rng = np.random.default_rng(7)
    data = glmmjax.datasets.load("salamanders").iloc[::4].reset_index(drop=True)
    sites = data["site"].cat.codes.to_numpy()
    mined = (data["mined"] == "no").to_numpy(float)
    responses = []
    for _ in range(K):
        b = rng.normal(0, 0.4, sites.max() + 1)
        mu = np.exp(0.2 + 1.0 * mined + b[sites])
        zero = rng.random(len(data)) < 1 / (1 + np.exp(-(0.5 - 1.5 * mined)))
        responses.append(np.where(zero, 0, rng.poisson(mu)))
    return data, np.column_stack(responses).astype(float)


def _worker(K: int, csv: str) -> None:
    import warnings

    import glmmjax
    import glmmjax._batching.parts  # noqa: F401  (import glmmjax is lazy)
    import glmmjax._engines.host.parts  # noqa: F401

    data, Y = _data_and_responses(K)
    frame = data[["site", "mined"]].copy()
    for k in range(K):
        frame[f"y{k}"] = Y[:, k]
    frame.to_csv(csv, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        batch = glmmjax.fit_many("~ mined + (1 | site)", data, Y, family="poisson",
                                 ziformula="~ mined")
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "converged": int(batch.converged.sum()),
                      "criterion": batch.models["criterion"].tolist()}))


def _r_loop(csv: str, K: int) -> dict:
    """glmmTMB fits of the first K responses in one warm R session."""
    script = f"""
suppressPackageStartupMessages(library(glmmTMB))
d <- read.csv("{csv}"); d$site <- factor(d$site); d$mined <- factor(d$mined, c("yes", "no"))
invisible(glmmTMB(y0 ~ mined + (1 | site), data = d, family = poisson, ziformula = ~mined))
crit <- numeric({K})
t0 <- proc.time()[["elapsed"]]
for (k in seq_len({K})) {{
  f <- glmmTMB(as.formula(sprintf("y%d ~ mined + (1 | site)", k - 1)), data = d,
               family = poisson, ziformula = ~mined)
  crit[k] <- -2 * as.numeric(logLik(f))
}}
cat(sprintf("SECONDS %.4f\\n", proc.time()[["elapsed"]] - t0))
cat("CRIT", sprintf("%.10f", crit), "\\n")
"""
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as f:
        f.write(script)
    try:
        out = subprocess.run(["Rscript", f.name], stdout=subprocess.PIPE, text=True,
                             stderr=subprocess.DEVNULL, check=True).stdout
    finally:
        os.unlink(f.name)
    seconds = float(next(line.split()[1] for line in out.splitlines()
                         if line.startswith("SECONDS")))
    crit = [float(v) for v in next(line for line in out.splitlines()
                                   if line.startswith("CRIT")).split()[1:]]
    return {"seconds": seconds, "criterion": crit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--r-fits", type=int, default=None,
                        help="fit only the first N models in R and scale its time to all "
                             "(glmmTMB's time per fit is about constant); default: all")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--csv", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.csv)
        return
    import numpy as np

    print(describe())
    csv = tempfile.mktemp(suffix=".csv")
    try:
        done = subprocess.run([sys.executable, __file__, "--worker", str(args.models),
                               "--csv", csv], stdout=subprocess.PIPE, text=True, check=True,
                              env=fresh_process_env(ROOT))
        ours = json.loads(done.stdout.strip().splitlines()[-1])
        r_fits = args.models if args.r_fits is None else min(args.r_fits, args.models)
        theirs = _r_loop(csv, r_fits)
        theirs["fits"] = r_fits
        theirs["seconds"] *= args.models / r_fits
    finally:
        if os.path.exists(csv):
            os.unlink(csv)
    diff = np.array(ours["criterion"][: theirs["fits"]]) - np.array(theirs["criterion"])
    scaled = "" if theirs["fits"] == args.models else (
        f" (timed on {theirs['fits']} fits, scaled to {args.models})")
    print(f"{args.models} ZIP GLMMs: glmmjax fit_many {ours['seconds']:.1f} s "
          f"({ours['converged']} converged), glmmTMB loop {theirs['seconds']:.1f} s{scaled}: "
          f"{theirs['seconds'] / ours['seconds']:.2f}x")
    print(f"−2 log L, ours − glmmTMB's: median {np.nanmedian(diff):+.2e}, "
          f"max {np.nanmax(diff):+.2e}, min {np.nanmin(diff):+.2e}")
    print(f"load average at end {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
