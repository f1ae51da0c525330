"""Peak memory of single fits against lme4: each program in its own fresh process.

What it measures, on one simulated crossed LMM ``y ~ x + (1 | a) + (1 | b)`` (default
200,000 rows, 5,000 levels of ``a`` and 2,000 of ``b``; the data written once to a CSV
that both programs read):

* glmmjax: the process's peak resident set (``VmHWM``) after ``lmer`` (imports, data and
  fit included), its peak before the fit (imports and data), and the fit's time;
* lme4: ``lmer(..., REML = TRUE)`` in an Rscript process, its ``VmHWM`` the same way.

Run: ``python benchmarks/bench_memory.py`` (options ``--n``, ``--levels A B``,
``--no-r``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe  # noqa: E402
from _runs import fresh_process_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FORMULA = "y ~ x + (1 | a) + (1 | b)"


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def simulate(n: int, levels_a: int, levels_b: int, path: Path) -> None:
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, levels_a, n), rng.integers(0, levels_b, n)
    x = rng.normal(size=n)
    y = (1 + 0.5 * x + 0.7 * rng.normal(size=levels_a)[a] + 0.5 * rng.normal(size=levels_b)[b]
         + rng.normal(size=n))
    pd.DataFrame({"y": y, "x": x, "a": a, "b": b}).to_csv(path, index=False)


def worker(path: str) -> None:
    frame = pd.read_csv(path, dtype={"a": "category", "b": "category"})
    import glmmjax

    glmmjax.lmer  # noqa: B018  (the fitting code's imports, outside the fit's time)
    before = _hwm_mb()
    start = time.perf_counter()
    fit = glmmjax.lmer(FORMULA, frame)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_mb": _hwm_mb(), "before_mb": before,
                      "criterion": float(fit.opt_summary.objective)}))


R_SCRIPT = """
hwm <- function() {
  s <- readLines("/proc/self/status"); as.numeric(strsplit(trimws(sub("VmHWM:", "",
    s[grepl("^VmHWM", s)])), " +")[[1]][1]) / 1024
}
suppressMessages(library(lme4))
d <- read.csv("%s"); d$a <- factor(d$a); d$b <- factor(d$b)
before <- hwm()
t <- system.time(fit <- lmer(%s, d, REML = TRUE))[["elapsed"]]
cat(sprintf("RESULT %%.3f %%.1f %%.1f %%.6f\\n", t, hwm(), before, REMLcrit(fit)))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker")
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--levels", type=int, nargs=2, default=(5000, 2000))
    parser.add_argument("--no-r", action="store_true")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    print(describe())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "crossed.csv"
        simulate(args.n, *args.levels, path)
        print(f"{FORMULA}: {args.n} rows, {args.levels[0]} × {args.levels[1]} levels")
        done = subprocess.run([sys.executable, __file__, "--worker", str(path)],
                              stdout=subprocess.PIPE, text=True, check=True,
                              env=fresh_process_env(ROOT))
        ours = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"glmmjax: fit {ours['seconds']:.2f} s, peak {ours['peak_mb']:.0f} MB "
              f"(before the fit {ours['before_mb']:.0f} MB), REML criterion "
              f"{ours['criterion']:.6f}")
        if args.no_r:
            return
        script = Path(tmp) / "lme4.R"
        script.write_text(R_SCRIPT % (path, FORMULA))
        out = subprocess.run(["Rscript", str(script)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, check=True).stdout
        line = next(x for x in out.splitlines() if x.startswith("RESULT"))
        seconds, peak, before, crit = (float(v) for v in line.split()[1:])
        print(f"lme4:    fit {seconds:.2f} s, peak {peak:.0f} MB (before the fit {before:.0f} MB), "
              f"REML criterion {crit:.6f}")
        print(f"peak ratio glmmjax / lme4: {ours['peak_mb'] / peak:.2f}; "
              f"time ratio lme4 / glmmjax: {seconds / ours['seconds']:.2f}")


if __name__ == "__main__":
    main()
