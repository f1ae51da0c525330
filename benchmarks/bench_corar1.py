"""How long is the first fit of an LMM with nlme's residual corAR1, against nlme::lme?

The models are the references of tests/reference/corar1_reference.R (sleepstudy with a
random intercept, ML and REML, and a random slope, REML; simulated stores in regions with
gaps in the days, ML and REML). For each model and repeat a fresh Python process imports
glmmjax and loads the data (not timed), then times its first ``lmer(...,
correlation=cor_ar1(...))`` and a second one; a fresh R process loads nlme and the data
(not timed) and times ``lme(..., correlation = corAR1(form = ~ time | group))`` twice with
the reference script's controls. Medians over ``--repeats``, the ratio nlme / glmmjax
(above 1: glmmjax is faster), and the −2 log L difference (negative: glmmjax's is lower).

Run from the repository root:

    python benchmarks/bench_corar1.py [--repeats 3] [--models sleepstudy_ml demand_reml]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

from _machine import describe  # benchmarks/ is sys.path[0] when run as a script
from _runs import fresh_process_env, medians, run_json

ROOT = pathlib.Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "reference"
MODELS = json.loads((REFERENCE / "corar1.json").read_text())["models"]

PYTHON_WORKER = r"""
import json, pathlib, sys, time
import pandas as pd
import glmmjax as gj
name, root = sys.argv[1], pathlib.Path(sys.argv[2])
model = json.loads((root / "tests/reference/corar1.json").read_text())["models"][name]
if "dataset" in model:
    data = gj.datasets.load(model["dataset"])
else:
    data = pd.read_csv(root / "tests/reference" / model["data"], dtype={"store": str, "region": str})
lmer, cor_ar1 = gj.lmer, gj.cor_ar1  # imports what they need: untimed, as R's library()
times = []
for _ in range(2):
    start = time.perf_counter()
    result = lmer(model["formula"], data, reml=model["reml"],
                  correlation=cor_ar1(time=model["time"], group=model["group"]))
    times.append(time.perf_counter() - start)
print(json.dumps({"first": times[0], "second": times[1], "m2ll": -2 * result.loglik}))
"""

R_WORKER = r"""
args <- commandArgs(TRUE)
suppressPackageStartupMessages({library(nlme); library(jsonlite)})
setwd(args[1])
name <- args[2]
data(sleepstudy, package = "lme4")
demand <- read.csv("data/corar1_demand.csv", colClasses = c(store = "character",
                                                           region = "character"))
ctrl <- lmeControl(maxIter = 500, msMaxIter = 500, tolerance = 1e-10, msTol = 1e-12,
                   niterEM = 100)
method <- if (grepl("_ml$", name)) "ML" else "REML"
fit_once <- switch(name,
  sleepstudy_ml = , sleepstudy_reml = function()
    lme(Reaction ~ Days, random = ~ 1 | Subject, data = sleepstudy,
        correlation = corAR1(form = ~ Days | Subject), method = method, control = ctrl),
  sleepstudy_slope_reml = function()
    lme(Reaction ~ Days, random = ~ Days | Subject, data = sleepstudy,
        correlation = corAR1(form = ~ Days | Subject), method = "REML",
        control = lmeControl(opt = "optim", maxIter = 500, msMaxIter = 500)),
  function()
    lme(log_sales ~ promo, random = ~ 1 | region / store, data = demand,
        correlation = corAR1(form = ~ day | region / store), method = method, control = ctrl))
times <- c()
for (i in 1:2) {
  t0 <- proc.time()[["elapsed"]]
  fit <- fit_once()
  times <- c(times, proc.time()[["elapsed"]] - t0)
}
cat(toJSON(list(first = times[1], second = times[2], m2ll = -2 * as.numeric(logLik(fit))),
           auto_unbox = TRUE, digits = NA))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    print(describe())
    with tempfile.TemporaryDirectory() as tmp:
        env = fresh_process_env(ROOT)
        py_worker = pathlib.Path(tmp) / "worker.py"
        py_worker.write_text(PYTHON_WORKER)
        r_worker = pathlib.Path(tmp) / "worker.R"
        r_worker.write_text(R_WORKER)
        print(f"{'model':22s} {'glmmjax 1st':>11s} {'2nd':>7s} {'nlme 1st':>9s} {'2nd':>7s} "
              f"{'ratio 1st':>9s} {'-2logL glmmjax - nlme':>22s}")
        for name in args.models:
            ours, theirs = [], []
            for _ in range(args.repeats):
                ours.append(run_json([sys.executable, str(py_worker), name, str(ROOT)], env))
                theirs.append(run_json(["Rscript", str(r_worker), str(REFERENCE), name]))
            med, ref = medians(ours), medians(theirs)
            print(f"{name:22s} {med['first']:10.3f}s {med['second']:6.3f}s "
                  f"{ref['first']:8.3f}s {ref['second']:6.3f}s "
                  f"{ref['first'] / med['first']:8.1f}x "
                  f"{ours[-1]['m2ll'] - theirs[-1]['m2ll']:22.3g}")


if __name__ == "__main__":
    main()
