"""Import time a user waits for before a first fit, in fresh processes.

Measured per fresh process (medians over ``--repeats``): ``import jax`` alone, then in
another process ``import glmmjax`` (lazy: a few milliseconds) followed by looking up
``glmmjax.lmer`` and ``glmmjax.glmer`` (which imports what their modules need: JAX,
equinox, pandas, formulaic, scipy), and ``import glmmjax`` followed by a whole first
``lmer`` fit of sleepstudy or ``glmer`` fit of cbpp (binomial) (the host engine on a
CPU: neither imports JAX). Wall and CPU seconds, and whether the process imported JAX.

``--root DIR`` times another checkout's glmmjax (e.g. ``/work/main``) with these probes.

``--compare-ml-dtypes DIR`` runs the same measurements a second time with ``DIR`` first
on ``sys.path`` (e.g. a ``pip install --target DIR ml_dtypes==0.7.0``), to compare the
installed ml_dtypes (JAX's dtype extension) with another version in the same run.

Run: ``python benchmarks/bench_import.py [--repeats 5] [--compare-ml-dtypes DIR] [--root DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe  # noqa: E402
from _runs import fresh_process_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROBES = {
    "import jax": "import jax",
    "import glmmjax + lmer, glmer": "import glmmjax; glmmjax.lmer; glmmjax.glmer",
    "import glmmjax + lmer sleepstudy fit": (
        "import glmmjax; glmmjax.lmer('Reaction ~ Days + (Days | Subject)', "
        "glmmjax.datasets.load('sleepstudy'))"),
    "import glmmjax + glmer cbpp fit": (
        "import glmmjax; glmmjax.glmer('cbind(incidence, size - incidence) ~ period + "
        "(1 | herd)', glmmjax.datasets.load('cbpp'), family='binomial')"),
}
_TIMER = """
import json, sys, time
wall, cpu = time.perf_counter(), time.process_time()
{code}
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
jax = "jax" in sys.modules
import ml_dtypes
print(json.dumps({{"wall": wall, "cpu": cpu, "jax": jax, "ml_dtypes": ml_dtypes.__version__}}))
"""


def measure(code: str, extra_path: str | None) -> dict:
    env = fresh_process_env(ROOT)
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra_path, env.get("PYTHONPATH")]))
    # In ROOT: ``python -c`` puts the working directory first on sys.path, so run from
    # another checkout it would time that checkout's glmmjax.
    out = subprocess.run([sys.executable, "-c", _TIMER.format(code=code)], env=env,
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(repeats: int, compare: str | None) -> None:
    print(describe())
    print(f"load average at the start {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    variants = [("installed", None)] + ([("compared", compare)] if compare else [])
    print(f"{'probe':38s}{'ml_dtypes':>10s}{'wall s':>9s}{'cpu s':>8s}{'jax':>5s}  "
          f"(medians of {repeats})")
    for name, code in PROBES.items():
        runs = {label: [] for label, _ in variants}
        for _ in range(repeats):  # interleaved, so both variants see the same load
            for label, path in variants:
                runs[label].append(measure(code, path))
        for label, _ in variants:
            wall = np.median([r["wall"] for r in runs[label]])
            cpu = np.median([r["cpu"] for r in runs[label]])
            jax = "yes" if any(r["jax"] for r in runs[label]) else "no"
            print(f"{name:38s}{runs[label][0]['ml_dtypes']:>10s}{wall:9.2f}{cpu:8.2f}{jax:>5s}")
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compare-ml-dtypes", default=None)
    parser.add_argument("--root", default=None, help="time this checkout's glmmjax")
    args = parser.parse_args()
    if args.root:
        ROOT = Path(args.root).resolve()
    main(args.repeats, args.compare_ml_dtypes)
