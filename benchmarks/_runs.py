"""Fresh-process runs shared by the first-call benchmarks (bench_families.py,
bench_zero_inflation.py, bench_glm.py, bench_fresh.py, bench_covstruct.py,
bench_corar1.py, bench_memory.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

_PYCACHE: dict[str, str] = {}
_WARMED: dict[str, bool] = {}
_WARM = ("import glmmjax, glmmjax._lmer, glmmjax._glmer, glmmjax._glm, glmmjax._parts_fit\n"
         "try:\n    import statsmodels.api\nexcept ImportError:\n    pass")


def fresh_process_env(root: Path, extra: dict | None = None) -> dict:
    """The environment of a fresh benchmark process: this checkout's glmmjax first on
    the path, byte-compiled as an installed package is.

    With PYTHONDONTWRITEBYTECODE set (as in this sandbox) every fresh process would
    compile the modules a first fit imports from source, tenths of a second on the first
    call that no user of an installed wheel pays. The bytecode goes to a temporary
    prefix (compiled once per benchmark run), not into the checkout.
    """
    key = str(root)
    if key not in _PYCACHE:
        _PYCACHE[key] = tempfile.mkdtemp(prefix="glmmjax-bench-pycache-")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        PYTHONPYCACHEPREFIX=_PYCACHE[key], **(extra or {}))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if not _WARMED.get(key):
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(root) / "glmmjax")],
                       env=env, check=True, capture_output=True)
        # With a pycache prefix, Python reads no __pycache__ beside the sources: the first
        # process would compile JAX, pandas and scipy from source (seconds, counted as
        # that process's import). One untimed process fills the prefix for the others.
        subprocess.run([sys.executable, "-c", _WARM], env=env, check=True,
                       capture_output=True)
        _WARMED[key] = True
    return env


def python_worker(script: str, name: str, root: Path) -> dict:
    """Run ``script --worker name`` in a fresh interpreter (:func:`fresh_process_env`);
    the JSON its last line prints."""
    done = subprocess.run([sys.executable, script, "--worker", name], stdout=subprocess.PIPE,
                          text=True, check=True, env=fresh_process_env(root))
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_json(command: list[str], env: dict | None = None) -> dict:
    """Run ``command`` (a Python or R worker) and return the JSON its last line prints;
    a failure raises with the end of its stderr."""
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def medians(results: list[dict], keys=("first", "second")) -> dict:
    """The median over repeats of each timing in ``keys``."""
    import statistics

    return {k: statistics.median(r[k] for r in results) for k in keys}


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
