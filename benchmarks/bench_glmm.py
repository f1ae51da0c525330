"""How long does ``glmmjax.glmer`` take, with and without compilation, next to lme4's glmer?

Two binomial-logit GLMMs, both fitted by the Laplace approximation:

* verbagg: ``r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)`` (7,584 rows,
  crossed random intercepts with 316 and 24 levels; lme4::VerbAgg);
* large: ``y ~ x + (1 | g)``, simulated with a fixed seed: ``--rows`` Bernoulli
  observations (default 1,000,000) spread uniformly at random over ``--groups`` groups
  (default 10,000), x ~ N(0, 1), b_g ~ N(0, 1), logit P(y = 1) = −1 + 0.5x + b_g.

glmmjax fits each model twice in a fresh Python process: the first call includes JAX's
tracing and XLA compilation, the second reuses the compiled code (both from the
DataFrame and formula to the result). For the large model the process's peak resident
memory (``ru_maxrss``, which is what matters for XLA: its buffers are invisible to
tracemalloc) is reported too, with the level before the first fit for scale.

Where ``Rscript`` with lme4 is installed, the same models are fitted by ``lme4::glmer``
(Laplace, the default nAGQ = 1), and the large one also with ``nAGQ = 0``, each in its
own R process after a warm-up fit (so loading lme4's compiled code is not counted);
only the ``glmer`` call is timed, with ``system.time``. verbagg uses R's own copy of the
data; the large data set is written to a temporary CSV (17 significant digits) so both
programs fit the same numbers. R's peak memory is the R process's VmHWM (peak RSS) from
/proc. Ratios lme4 / glmmjax > 1 mean glmmjax is faster. −2 log L of each fit is
printed as a check that the programs solved the same problem.

glmer's Laplace fit of the 1,000,000-row model takes about 5 minutes; ``--skip-r-laplace``
leaves it out, and ``--rows`` / ``--groups`` scale the problem down.

Run from the repository root:

    python benchmarks/bench_glmm.py                       # both models, R if available
    python benchmarks/bench_glmm.py --models large --rows 200000 --groups 2000
    python benchmarks/bench_glmm.py --skip-r-laplace      # R's nAGQ=0 only on "large"
    python benchmarks/bench_glmm.py --models verbagg --no-r --cache-dir /tmp/jaxcache  # twice
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from _machine import describe  # benchmarks/ is sys.path[0] when run as a script

VERBAGG_FORMULA = "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)"
LARGE_FORMULA = "y ~ x + (1 | g)"
SEED = 20240611

R_WARMUP = """
suppressPackageStartupMessages(library(lme4))
invisible(glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial))
peak_mb <- function() {
  status <- tryCatch(readLines("/proc/self/status"), error = function(e) character())
  line <- grep("^VmHWM:", status, value = TRUE)
  if (length(line) == 0) return(NA_real_)
  as.numeric(gsub("[^0-9]", "", line)) / 1024
}
"""

R_VERBAGG = R_WARMUP + """
seconds <- system.time(fit <- glmer(@FORMULA@, VerbAgg, binomial))[["elapsed"]]
cat(sprintf("RESULT %.6f %.10f %.1f\\n", seconds, -2 * as.numeric(logLik(fit)), peak_mb()))
"""

R_LARGE = R_WARMUP + """
d <- read.csv("@CSV@", colClasses = c("numeric", "numeric", "character"))
d$g <- factor(d$g)
seconds <- system.time(fit <- glmer(y ~ x + (1 | g), d, binomial, nAGQ = @NAGQ@))[["elapsed"]]
cat(sprintf("RESULT %.6f %.10f %.1f\\n", seconds, -2 * as.numeric(logLik(fit)), peak_mb()))
"""


def _large_script(csv: str, nagq: int) -> str:
    return R_LARGE.replace("@CSV@", csv).replace("@NAGQ@", str(nagq))


def simulate_large(rows: int, groups: int, seed: int = SEED):
    """The large model's data (see the module docstring) as a DataFrame."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, rows)
    x = rng.normal(size=rows)
    b = rng.normal(size=groups)
    eta = -1.0 + 0.5 * x + b[g]
    y = (rng.random(rows) < 1.0 / (1.0 + np.exp(-eta))).astype(np.float64)
    names = np.char.add("g", np.char.zfill(np.arange(groups).astype(str), 5))
    return pd.DataFrame({"y": y, "x": x, "g": names[g]})


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 1024**2
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _worker(name: str, rows: int, groups: int, cache_dir: str | None = None) -> None:
    """Fit one model twice in this (fresh) process and print the timings as JSON."""
    if cache_dir:
        import jax

        jax.config.update("jax_compilation_cache_dir", cache_dir)
    import glmmjax

    if name == "verbagg":
        data, formula = glmmjax.datasets.load("verbagg"), VERBAGG_FORMULA
    else:
        data, formula = simulate_large(rows, groups), LARGE_FORMULA
    rss_before = _peak_rss_mb()
    times = []
    for _ in range(2):
        start = time.perf_counter()
        fit = glmmjax.glmer(formula, data, family="binomial")
        times.append(time.perf_counter() - start)
        print(f"  glmmjax {name}: call {len(times)} took {times[-1]:.2f} s", file=sys.stderr,
              flush=True)
    print(json.dumps({"first": times[0], "second": times[1], "criterion": fit.criterion,
                      "converged": bool(fit.converged), "rss_before_mb": rss_before,
                      "peak_rss_mb": _peak_rss_mb()}))


def _glmmjax_run(name: str, rows: int, groups: int, timeout: float,
                 cache_dir: str | None = None) -> dict | None:
    """Timings from a fresh process, or None if the two fits took over ``timeout`` s."""
    command = [sys.executable, __file__, "--worker", name, "--rows", str(rows),
               "--groups", str(groups)] + (["--cache-dir", cache_dir] if cache_dir else [])
    try:  # stderr passes through: the worker reports each call as it finishes
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def _lme4_available() -> bool:
    if shutil.which("Rscript") is None:
        return False
    probe = subprocess.run(["Rscript", "-e", "library(lme4)"], capture_output=True)
    return probe.returncode == 0


def _r_run(script: str, timeout: float) -> dict | None:
    """Run an R script in a fresh process; its RESULT line as a dict (None on timeout)."""
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as handle:
        handle.write(script)
        path = handle.name
    try:
        done = subprocess.run(["Rscript", path], capture_output=True, text=True, check=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    finally:
        os.unlink(path)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            _, seconds, criterion, peak = line.split()
            return {"seconds": float(seconds), "criterion": float(criterion),
                    "peak_rss_mb": float(peak)}
    raise RuntimeError(f"no RESULT line from R:\n{done.stdout}\n{done.stderr}")


def _line(label: str, seconds: float | None, extra: str = "") -> str:
    time_cell = f"{'timed out':>10}" if seconds is None else f"{seconds:>9.2f}s"
    return f"  {label:<36} {time_cell}  {extra}".rstrip()


def _report(title: str, ours: dict | None, r_fits: dict) -> None:
    """One model's timings, −2 log L, peak memory and ratios R time / glmmjax time."""
    print(f"\n{title}")
    if ours is None:
        print(_line("glmmjax glmer, 1st call (compile)", None))
    else:
        note = f"-2logL {ours['criterion']:.4f}" + ("" if ours["converged"] else " NOT CONVERGED")
        print(_line("glmmjax glmer, 1st call (compile)", ours["first"], note))
        print(_line("glmmjax glmer, 2nd call (warm)", ours["second"]))
    for label, fit in r_fits.items():
        extra = "" if fit is None else f"-2logL {fit['criterion']:.4f}"
        if fit is not None and label == "glmer nAGQ=0":
            extra += "  (cruder criterion: β in the inner problem)"
        print(_line(label, None if fit is None else fit["seconds"], extra))
    if ours is not None:
        print(f"  peak RSS: glmmjax process {ours['peak_rss_mb']:.0f} MB "
              f"({ours['rss_before_mb']:.0f} MB before the first fit: Python, JAX, data)")
    for label, fit in r_fits.items():
        if fit is not None:
            print(f"  peak RSS: R process of {label} {fit['peak_rss_mb']:.0f} MB")
    for label, fit in r_fits.items():
        if fit is not None and ours is not None:
            print(f"  ratio {label} / glmmjax glmer: warm {fit['seconds'] / ours['second']:.2f}x,"
                  f" with compilation {fit['seconds'] / ours['first']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=["verbagg", "large"],
                        default=["verbagg", "large"])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the large model")
    parser.add_argument("--groups", type=int, default=10_000,
                        help="groups of the large model")
    parser.add_argument("--no-r", action="store_true", help="skip the lme4 comparison")
    parser.add_argument("--skip-r-laplace", action="store_true",
                        help="large model: skip glmer's (slow) Laplace fit, keep nAGQ=0")
    parser.add_argument("--timeout", type=float, default=1800, metavar="SECONDS",
                        help="give up on one program's fit(s) of a model after this long")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="JAX persistent compilation cache for the glmmjax processes "
                        "(run twice: the second run's first call reuses the compiled fit)")
    parser.add_argument("--worker", choices=["verbagg", "large"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.rows, args.groups, args.cache_dir)
        return

    import jax

    import glmmjax

    print(f"machine: {describe()}")
    print(f"glmmjax {glmmjax.__version__}, jax {jax.__version__} ({jax.default_backend()})")
    use_r = not args.no_r and _lme4_available()
    if use_r:
        version = subprocess.run(
            ["Rscript", "-e", 'cat(format(packageVersion("lme4")), R.version$version.string)'],
            capture_output=True, text=True,
        ).stdout.strip()
        print(f"lme4 {version}")
    else:
        print("lme4: not run (Rscript with lme4 not found, or --no-r)")
    sys.stdout.flush()

    if "verbagg" in args.models:
        r_fits = {}
        if use_r:
            r_fits["glmer Laplace"] = _r_run(R_VERBAGG.replace("@FORMULA@", VERBAGG_FORMULA),
                                             args.timeout)
        ours = _glmmjax_run("verbagg", args.rows, args.groups, args.timeout, args.cache_dir)
        _report(f"verbagg: {VERBAGG_FORMULA} (7,584 rows), Laplace", ours, r_fits)
        sys.stdout.flush()

    if "large" in args.models:
        r_fits = {}
        if use_r:
            with tempfile.TemporaryDirectory() as folder:
                csv = os.path.join(folder, "large.csv")
                simulate_large(args.rows, args.groups).to_csv(csv, index=False,
                                                              float_format="%.17g")
                r_fits["glmer nAGQ=0"] = _r_run(_large_script(csv, 0), args.timeout)
                if not args.skip_r_laplace:
                    r_fits["glmer Laplace"] = _r_run(_large_script(csv, 1),
                                                     args.timeout)
        ours = _glmmjax_run("large", args.rows, args.groups, args.timeout, args.cache_dir)
        _report(f"large: {LARGE_FORMULA}, {args.rows:,} rows, {args.groups:,} groups, "
                "Bernoulli, Laplace", ours, r_fits)


if __name__ == "__main__":
    main()
