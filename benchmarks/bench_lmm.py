"""How long does ``glmmjax.lmer`` take, with and without compilation, next to lme4?

Fits two linear mixed models by REML:

* InstEval: ``y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept:service)`` (73,421 rows,
  three crossed random intercepts with 2,972 + 1,128 + 28 levels);
* sleepstudy: ``Reaction ~ Days + (Days | Subject)`` (180 rows, one correlated term).

Each model is fitted twice by glmmjax in a fresh Python process: the first call includes
JAX's tracing and XLA compilation, the second reuses the compiled code. Where ``Rscript``
with lme4 is installed, the same models are fitted by lme4 in one R session (after one
warm-up fit, so that loading lme4's compiled code is not counted), timing only the
``lmer`` call with ``system.time``, on R's own copies of the data (``lme4::InstEval``,
``lme4::sleepstudy``). The ratio lme4 / glmmjax > 1 means glmmjax is faster. The REML
criteria of both fits are printed as a check that the two programs solved the same
problem.

Run from the repository root:

    python benchmarks/bench_lmm.py                 # both models, lme4 if available
    python benchmarks/bench_lmm.py --models sleepstudy --no-r
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

from _machine import describe  # benchmarks/ is sys.path[0] when run as a script

# name -> (glmmjax dataset, formula, R dataset)
MODELS = {
    "insteval": ("insteval", "y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept:service)",
                 "InstEval"),
    "sleepstudy": ("sleepstudy", "Reaction ~ Days + (Days | Subject)", "sleepstudy"),
}

R_SCRIPT = """
suppressPackageStartupMessages(library(lme4))
invisible(lmer(Reaction ~ Days + (Days | Subject), sleepstudy))  # warm-up
models <- list({models})
for (name in names(models)) {{
  spec <- models[[name]]
  data <- get(spec[[2]], envir = asNamespace("lme4"))
  seconds <- system.time(fit <- lmer(as.formula(spec[[1]]), data, REML = TRUE))[["elapsed"]]
  cat(sprintf("RESULT %s %.6f %.10f\\n", name, seconds, REMLcrit(fit)))
}}
"""


def _worker(name: str) -> None:
    """Fit one model twice in this (fresh) process and print the timings as JSON."""
    import glmmjax

    dataset, formula, _ = MODELS[name]
    data = glmmjax.datasets.load(dataset)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        fit = glmmjax.lmer(formula, data, reml=True)
        times.append(time.perf_counter() - start)
        print(f"  glmmjax {name}: call {len(times)} took {times[-1]:.2f} s "
              f"({fit.convergence.iterations} iterations, "
              f"{fit.convergence.n_evaluations} criterion-and-gradient evaluations; "
              f"load average {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
    print(json.dumps({"first": times[0], "second": times[1], "criterion": fit.deviance,
                      "converged": fit.converged}))


def _glmmjax_times(name: str, timeout: float) -> dict | None:
    """Timings from a fresh process, or None if the two fits took over ``timeout`` s."""
    # stderr is passed through: the worker reports each call as it finishes
    try:
        done = subprocess.run([sys.executable, __file__, "--worker", name],
                              stdout=subprocess.PIPE, text=True, check=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def _lme4_available() -> bool:
    if shutil.which("Rscript") is None:
        return False
    probe = subprocess.run(["Rscript", "-e", "library(lme4)"], capture_output=True)
    return probe.returncode == 0


def _lme4_times(names: list[str]) -> dict:
    models = ", ".join(f'{n} = c("{MODELS[n][1]}", "{MODELS[n][2]}")' for n in names)
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as handle:
        handle.write(R_SCRIPT.format(models=models))
        path = handle.name
    try:
        done = subprocess.run(["Rscript", path], capture_output=True, text=True, check=True)
    finally:
        os.unlink(path)
    results = {}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            _, name, seconds, criterion = line.split()
            results[name] = {"seconds": float(seconds), "criterion": float(criterion)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--no-r", action="store_true", help="skip the lme4 comparison")
    parser.add_argument("--timeout", type=float, default=1800, metavar="SECONDS",
                        help="give up on a model's two glmmjax fits after this long")
    parser.add_argument("--worker", choices=list(MODELS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker)
        return

    import jax

    import glmmjax

    print(f"machine: {describe()}")
    print(f"glmmjax {glmmjax.__version__}, jax {jax.__version__} ({jax.default_backend()})")
    lme4 = {}
    if not args.no_r and _lme4_available():
        version = subprocess.run(
            ["Rscript", "-e", 'cat(format(packageVersion("lme4")), R.version$version.string)'],
            capture_output=True, text=True,
        ).stdout.strip()
        print(f"lme4 {version}")
        lme4 = _lme4_times(args.models)
    else:
        print("lme4: not run (Rscript with lme4 not found, or --no-r)")
    sys.stdout.flush()
    ours = {name: _glmmjax_times(name, args.timeout) for name in args.models}
    print()
    header = (f"{'model':<11} {'glmmjax 1st (s)':>16} {'glmmjax 2nd (s)':>16} "
              f"{'lme4 (s)':>9} {'lme4/2nd':>9} {'lme4/1st':>9}  REML criterion")
    print(header)
    print("-" * len(header))
    for name in args.models:
        mine, theirs = ours[name], lme4.get(name)
        if mine is None:
            lme4_cell = f"{theirs['seconds']:>9.3f}" if theirs else f"{'-':>9}"
            print(f"{name:<11} {'> ' + format(args.timeout, '.0f'):>16} {'-':>16} "
                  f"{lme4_cell} {'-':>9} {'-':>9}  (glmmjax timed out)")
            continue
        r_cells = (f"{theirs['seconds']:>9.3f} {theirs['seconds'] / mine['second']:>9.2f} "
                   f"{theirs['seconds'] / mine['first']:>9.2f}" if theirs
                   else f"{'-':>9} {'-':>9} {'-':>9}")
        criterion = f"{mine['criterion']:.4f}" + (
            f" (lme4 {theirs['criterion']:.4f})" if theirs else "")
        if not mine["converged"]:
            criterion += " NOT CONVERGED"
        print(f"{name:<11} {mine['first']:>16.3f} {mine['second']:>16.3f} {r_cells}  "
              f"{criterion}")


if __name__ == "__main__":
    main()
