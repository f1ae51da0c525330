"""First call of zero-inflation, hurdle and dispersion-model GLMMs against glmmTMB's,
same machine, same run.

The models are those of tests/reference/glmm_zi_tmb.json (written by
glmm_zi_tmb.R). For every model a fresh Python process times ``import glmmjax`` with
the modules a fit loads (``import glmmjax`` is lazy; as bench_families.py), then its
first ``glmer`` fit (with ``ziformula=``/``dispformula=``; for a built-in family nothing
is compiled, a user-defined family's kernel would be) and a second fit of the same
model; the median over ``--repeats`` fresh processes is printed. In the same run an R
session loads glmmTMB, makes one warm-up fit, and times glmmTMB's first fit of each
model; ``--r-sessions`` such sessions (default 2: one before the glmmjax processes and
one after, since the load of this shared machine drifts between them), and per model
the fastest glmmTMB time (the ratios are then conservative). Ratios: glmmTMB time / glmmjax time (above 1: glmmjax faster), for the first
fit, for import + first fit, and for the second fit; "evals": the criterion evaluations of
a fit (the optimizer's and the Hessian's).

Run from the repository root (R with glmmTMB must be installed):

    python benchmarks/bench_zero_inflation.py
    python benchmarks/bench_zero_inflation.py --models salamanders_zip owls_zip --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from _machine import describe  # benchmarks/ is sys.path[0] when run as a script
from _runs import python_worker, r_results

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "tests" / "reference"
MODELS = json.loads((REFERENCE / "glmm_zi_tmb.json").read_text())["models"]
# No optimum for either tool (glmmTMB: false convergence; glmmjax reports non-convergence).
SKIP = {"salamanders_zinb2_zi_re"}
R_FAMILIES = {"poisson": "poisson", "negative_binomial": "nbinom2", "gaussian": "gaussian",
              "gamma": 'Gamma(link = "log")', "beta": "beta_family()",
              "truncated_poisson": "truncated_poisson", "truncated_nbinom2": "truncated_nbinom2",
              "betabinomial": "betabinomial"}
R_DATA = {"owls": "Owls", "salamanders": "Salamanders", "sleepstudy": "sleep", "cbpp": "lme4::cbpp"}


def _worker(name: str) -> None:
    import warnings

    import pandas as pd

    start = time.perf_counter()
    import glmmjax
    import glmmjax._engines.host.parts  # noqa: F401
    import glmmjax._glmer  # noqa: F401  (``import glmmjax`` is lazy: the fit's modules
    import glmmjax._parts_fit  # noqa: F401  load on first use)

    t_import = time.perf_counter() - start

    model = MODELS[name]
    if "dataset" in model:
        data = glmmjax.datasets.load(model["dataset"])
    else:
        data = pd.read_csv(REFERENCE / model["data"], dtype={"g": str})
    if "obs" in model["formula"]:
        data = data.assign(obs=[f"o{i}" for i in range(len(data))])
    family = glmmjax.families.get_family(model["family"], link=model["link"])
    zi = None if model["ziformula"] == "~0" else model["ziformula"]
    disp = None if model["dispformula"] == "~1" else model["dispformula"]
    times, fit = [], None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(2):
            start = time.perf_counter()
            fit = glmmjax.glmer(model["formula"], data, family=family, ziformula=zi,
                                dispformula=disp)
            times.append(time.perf_counter() - start)
    print(json.dumps({"import": t_import, "first_fit": times[0], "second_fit": times[1],
                      "deviance": fit.deviance, "converged": fit.converged,
                      "evaluations": fit.convergence.n_evaluations}))


def _python(name: str) -> dict:
    return python_worker(__file__, name, ROOT)


def _glmmtmb(names) -> dict:
    """glmmTMB's first fit of each model in one warm R session: {name: (seconds, −2 log L)}."""
    lines = [
        "suppressPackageStartupMessages({library(glmmTMB); library(lme4)})",
        "data(Owls, package = 'glmmTMB'); data(Salamanders, package = 'glmmTMB')",
        "sleep <- sleepstudy; sleep$obs <- factor(seq_len(nrow(sleep)))",
        "invisible(glmmTMB(cbind(incidence, size - incidence) ~ period + (1 | herd), "
        "data = cbpp, family = binomial))  # warm-up",
    ]
    for name in names:
        model = MODELS[name]
        data = (R_DATA[model["dataset"]] if "dataset" in model else
                f'read.csv("{model["data"]}", colClasses = c(g = "factor"))')
        lines += [
            f"d <- {data}",
            "t0 <- proc.time()[['elapsed']]",
            f"f <- glmmTMB({model['formula']}, data = d, family = {R_FAMILIES[model['family']]}, "
            f"ziformula = {model['ziformula']}, dispformula = {model['dispformula']})",
            "t1 <- proc.time()[['elapsed']]",
            f"cat(sprintf('RESULT %s %.6f %.10f\\n', '{name}', t1 - t0, "
            "-2 * as.numeric(logLik(f))))",
        ]
    return r_results(lines, REFERENCE)


def main() -> None:
    names = [n for n in MODELS if n not in SKIP]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=names, default=names)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--r-sessions", type=int, default=2,
                        help="R sessions timing glmmTMB, the first before and the others after "
                             "the glmmjax processes (on this shared machine the load drifts "
                             "between them); per model the fastest glmmTMB time is used")
    parser.add_argument("--worker", choices=list(MODELS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker)
        return
    print(describe())
    tmb_runs = [_glmmtmb(args.models)]
    print(f"{'model':28s} {'import':>7s} {'1st fit':>8s} {'2nd fit':>8s} {'glmmTMB':>8s} "
          f"{'ratio 1st':>9s} {'ratio imp+1st':>13s} {'ratio 2nd':>9s} "
          "evals  Δdeviance (ours − glmmTMB)")
    ours = {}
    for name in args.models:
        runs = [_python(name) for _ in range(args.repeats)]
        ours[name] = runs, {key: statistics.median(r[key] for r in runs)
                            for key in ("import", "first_fit", "second_fit")}
    tmb_runs += [_glmmtmb(args.models) for _ in range(args.r_sessions - 1)]
    for name in args.models:
        runs, run = ours[name]
        seconds = min(tmb[name][0] for tmb in tmb_runs)
        deviance = tmb_runs[0][name][1]
        print(f"{name:28s} {run['import']:6.2f}s {run['first_fit']:7.2f}s "
              f"{run['second_fit']:7.2f}s {seconds:7.2f}s {seconds / run['first_fit']:8.2f}x "
              f"{seconds / (run['import'] + run['first_fit']):12.2f}x "
              f"{seconds / run['second_fit']:8.2f}x {runs[0]['evaluations']:5d}  "
              f"{runs[0]['deviance'] - deviance:+.2e}")
    print(f"(glmmjax: medians of {args.repeats} fresh processes; glmmTMB: the fastest of "
          f"{len(tmb_runs)} R sessions, " + ", ".join(
              f"{name} " + "/".join(f"{tmb[name][0]:.2f}" for tmb in tmb_runs)
              for name in args.models) + ")")
    print(f"load average at end {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
