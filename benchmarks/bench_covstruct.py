"""How long is the first fit of a model with a structured covariance, against glmmTMB?

The models are the references of tests/reference/covstruct_reference.R (glmmTMB 1.1.5:
sleepstudy with diag, cs and ar1 on a factor of days; simulated Gaussian ar1, homcs,
toep and ou (unequally spaced times), Poisson ar1 and ou, binomial cs, diag and toep,
spatial exp, gau and mat (Gaussian) and exp and mat (Poisson) on a 3 x 3 grid). For each model and repeat, a fresh Python process
imports glmmjax and loads the data (not timed), looks up the fitting function (which imports
what it needs; not timed, as R's ``library()``), then times its first fit (the call a
user waits for, compilation included where the engine compiles) and a second one; a
fresh R process loads glmmTMB and the data (not timed), then times glmmTMB's first and
second fit of the same model. Medians over ``--repeats`` are printed with the ratio
glmmTMB / glmmjax (above 1: glmmjax is faster). glmmjax's modules are byte-compiled first
(as in an installed package; see ``_runs.fresh_process_env``), and R's packages are installed
byte-compiled too.

homcs has no glmmTMB 1.1.5 structure; its glmmTMB time is that of the equivalent
(1 | subject) + (1 | subject:timef) used as its reference.

Run from the repository root:

    python benchmarks/bench_covstruct.py
    python benchmarks/bench_covstruct.py --repeats 5 --models sleepstudy_cs poisson_ar1
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
MODELS = json.loads((REFERENCE / "covstruct.json").read_text())["models"]
# glmmTMB's formula where it differs from glmmjax's (homcs: its lme4-style equivalent; ou:
# the times as a numFactor).
TMB_FORMULA = {"gaussian_homcs": "y ~ x + (1 | subject) + (1 | subject:timef)",
               "gaussian_ou": "y ~ x + ou(times + 0 | subject)",
               "poisson_ou": "y ~ x + ou(times + 0 | group)"}

PYTHON_WORKER = r"""
import json, pathlib, sys, time
import pandas as pd
import glmmjax as gj
name, root = sys.argv[1], pathlib.Path(sys.argv[2])
model = json.loads((root / "tests/reference/covstruct.json").read_text())["models"][name]
if "dataset" in model:
    data = gj.datasets.load(model["dataset"])
    data["dayf"] = pd.Categorical(data["Days"].astype(int).astype(str),
                                  categories=[str(i) for i in range(10)])
else:
    data = pd.read_csv(root / "tests/reference" / model["data"])
    for column in ("subject", "group", "cluster", "cond"):
        if column in data:
            data[column] = data[column].astype(str)
    if "time" in data:
        data["timef"] = pd.Categorical(data["time"].astype(str),
                                       categories=[str(t) for t in sorted(data["time"].unique())])
    if "cx" in data:
        data["pos"] = pd.Categorical([f"({x},{y})" for x, y in zip(data["cx"], data["cy"])])
# Looking the function up imports what it needs (jax, scipy): untimed, as R's library().
lmer, glmer = gj.lmer, gj.glmer
if model["family"] == "gaussian":
    fit = lambda: lmer(model["formula"], data, reml=False)
else:
    fit = lambda: glmer(model["formula"], data, family=model["family"])
times = []
for _ in range(2):
    start = time.perf_counter()
    result = fit()
    times.append(time.perf_counter() - start)
print(json.dumps({"first": times[0], "second": times[1], "m2ll": -2 * result.loglik}))
"""

R_WORKER = r"""
args <- commandArgs(TRUE)
suppressPackageStartupMessages({library(glmmTMB); library(jsonlite)})
setwd(args[1])
data(sleepstudy, package = "lme4")
sleepstudy$dayf <- factor(sleepstudy$Days)
data <- if (args[3] == "sleepstudy") sleepstudy else read.csv(args[3])
if (!is.null(data$time)) data$timef <- factor(data$time)
if (!is.null(data$time)) data$times <- numFactor(data$time)
if (!is.null(data$visit)) data$visit <- factor(data$visit)
if (!is.null(data$cx)) data$pos <- numFactor(data$cx, data$cy)
if (!is.null(data$cond)) data$cond <- factor(data$cond)
family <- get(args[4])()
times <- c()
for (i in 1:2) {
  t0 <- proc.time()[["elapsed"]]
  fit <- suppressWarnings(glmmTMB(as.formula(args[2]), data = data, family = family))
  times <- c(times, proc.time()[["elapsed"]] - t0)
}
cat(toJSON(list(first = times[1], second = times[2], m2ll = 2 * fit$fit$objective),
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
        header = (f"{'model':16s} {'glmmjax 1st':>11s} {'2nd':>7s} {'glmmTMB 1st':>11s} "
                  f"{'2nd':>7s} {'ratio 1st':>9s} {'-2logL glmmjax - glmmTMB':>25s}")
        print(header)
        for name in args.models:
            model = MODELS[name]
            data = "sleepstudy" if "dataset" in model else model["data"]
            ours, theirs = [], []
            for _ in range(args.repeats):
                ours.append(run_json([sys.executable, str(py_worker), name, str(ROOT)], env))
                theirs.append(run_json(["Rscript", str(r_worker), str(REFERENCE),
                                    TMB_FORMULA.get(name, model["formula"]), data,
                                    model["family"]]))
            med, ref = medians(ours), medians(theirs)
            print(f"{name:16s} {med['first']:10.3f}s {med['second']:6.3f}s "
                  f"{ref['first']:10.3f}s {ref['second']:6.3f}s "
                  f"{ref['first'] / med['first']:8.1f}x "
                  f"{ours[-1]['m2ll'] - theirs[-1]['m2ll']:25.3g}")


if __name__ == "__main__":
    main()
