"""Fresh-process runs shared by the first-call benchmarks against glmmTMB
(bench_families.py, bench_zero_inflation.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def python_worker(script: str, name: str, root: Path) -> dict:
    """Run ``script --worker name`` in a fresh interpreter with ``root`` first on the
    path; the JSON its last line prints."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    done = subprocess.run([sys.executable, script, "--worker", name], stdout=subprocess.PIPE,
                          text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def r_results(lines: list[str], cwd: Path) -> dict:
    """Run an R script (``lines``) in ``cwd``; its ``RESULT name seconds deviance`` lines
    as {name: (seconds, deviance)}."""
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as script:
        script.write("\n".join(lines) + "\n")
    try:
        done = subprocess.run(["Rscript", script.name], cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, check=True)
    finally:
        os.unlink(script.name)
    out = {}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            _, name, seconds, deviance = line.split()
            out[name] = (float(seconds), float(deviance))
    return out
