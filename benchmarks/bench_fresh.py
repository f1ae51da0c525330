"""What does a user wait for in a fresh process, idle and with busy neighbours?

For each model, a fresh Python process measures, in order: ``import glmmjax``; looking
up the fitting function (``glmmjax.lmer`` / ``glmmjax.glmer``, which imports what the
fit needs); loading the bundled data; the first fit; a second fit. Each model is run
``--repeats`` times (fresh processes each time) and the median is printed.

Models (both run on the host engine on a CPU, so nothing is compiled):

* verbagg: ``glmer(r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item),
  binomial)`` (7,584 rows; crossed intercepts with 316 and 24 levels);
* insteval: ``lmer(y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept:service))``
  (73,421 rows; 2,972, 1,128 and 28 levels), REML.

``--busy N`` starts N processes that spin (``while True: pass``) for the duration of
the measurements, as other users' jobs would; the figures then show how much a fit
slows down when it shares the cores. ``--blas-threads K`` sets OPENBLAS_NUM_THREADS in
the workers (to compare with the library's own BLAS thread limit). ``--modules`` also
prints which heavy packages the process imported.

Run from the repository root:

    python benchmarks/bench_fresh.py
    python benchmarks/bench_fresh.py --busy 2 --models verbagg --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _machine import describe  # benchmarks/ is sys.path[0] when run as a script
from _runs import fresh_process_env

ROOT = Path(__file__).resolve().parents[1]

MODELS = {
    "verbagg": ("glmer", "verbagg",
                "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)",
                {"family": "binomial"}),
    "insteval": ("lmer", "InstEval",
                 "y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept:service)", {"reml": True}),
    "sleepstudy": ("lmer", "sleepstudy", "Reaction ~ Days + (Days | Subject)",
                   {"reml": True}),
}
HEAVY = ("jax", "equinox", "pandas", "scipy.stats", "formulaic", "matplotlib", "numpyro")


def _worker(name: str) -> None:
    start = time.perf_counter()
    import glmmjax

    t_import = time.perf_counter()
    function_name, dataset, formula, options = MODELS[name]
    fit_function = getattr(glmmjax, function_name)
    t_lookup = time.perf_counter()
    data = glmmjax.datasets.load(dataset)
    t_data = time.perf_counter()
    fit = fit_function(formula, data, **options)
    t_first = time.perf_counter()
    fit = fit_function(formula, data, **options)
    t_second = time.perf_counter()
    loaded = [p for p in HEAVY if any(m == p or m.startswith(p + ".") for m in sys.modules)]
    print(json.dumps({
        "import": t_import - start, "lookup": t_lookup - t_import, "data": t_data - t_lookup,
        "first_fit": t_first - t_data, "second_fit": t_second - t_first,
        "import_to_first_fit": t_first - start - (t_data - t_lookup),
        "criterion": float(getattr(fit, "criterion", getattr(fit, "deviance", 0.0))),
        "loaded": loaded,
    }))


def _run(name: str, blas_threads: int | None) -> dict:
    env = fresh_process_env(ROOT, {"OPENBLAS_NUM_THREADS": str(blas_threads)}
                            if blas_threads else None)
    done = subprocess.run([sys.executable, __file__, "--worker", name], env=env,
                          stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS),
                        default=["verbagg", "insteval"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--busy", type=int, default=0, help="spinning processes alongside")
    parser.add_argument("--blas-threads", type=int, help="OPENBLAS_NUM_THREADS in workers")
    parser.add_argument("--modules", action="store_true", help="print the heavy imports")
    parser.add_argument("--worker", choices=list(MODELS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker)
        return
    print(describe())
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(args.busy)]
    try:
        time.sleep(1.0 if spinners else 0.0)
        for name in args.models:
            runs = [_run(name, args.blas_threads) for _ in range(args.repeats)]
            keys = ("import", "lookup", "first_fit", "second_fit", "import_to_first_fit")
            medians = {k: statistics.median(r[k] for r in runs) for k in keys}
            spread = {k: (min(r[k] for r in runs), max(r[k] for r in runs)) for k in keys}
            print(f"{name} (busy processes: {args.busy}, OPENBLAS_NUM_THREADS: "
                  f"{args.blas_threads or 'unset'}, load {os.getloadavg()[0]:.2f}; "
                  f"median of {args.repeats} fresh processes [min, max]):")
            for k in keys:
                print(f"  {k:22s} {medians[k]:7.3f} s  [{spread[k][0]:.3f}, {spread[k][1]:.3f}]")
            print(f"  criterion {runs[0]['criterion']:.4f}")
            if args.modules:
                print(f"  heavy packages imported: {', '.join(runs[0]['loaded']) or 'none'}")
    finally:
        for process in spinners:
            process.kill()
            process.wait()


if __name__ == "__main__":
    main()
