"""Animal models with a pedigree: the sparse path (Henderson's A⁻¹, sparse mixed-model
equations; glmmjax._engines.host.sparse_lmm) against the dense path (K's Cholesky factor, q × q
blocks) and against lme4's relmat trick (tests/reference/pedigree_reference.R).

Each configuration runs in a fresh process (time of Pedigree(...) with its inbreeding,
time of the lmer fit, peak resident memory of the process). REML fits on a simulated
pedigree of G generations of N
animals (10 % of the previous generation's males as sires), records on every animal
after the founders, 200 herds; model "a" is y ~ x + (1 | animal), "ah" adds (1 | herd).

    python benchmarks/bench_pedigree.py            # q = 2,500 (both paths), 20,000 (sparse)

    python benchmarks/bench_pedigree.py --dense-large   # also the dense path at 5,000

The lme4 figure is the fit time pedigree_reference.R recorded for its 2,500-animal
pedigree (tests/reference/pedigree.json, same model; rerun that script for a same-run
figure: cd tests/reference && Rscript pedigree_reference.R).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def simulate(G: int, N: int, seed: int = 0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    q = G * N
    sire = np.full(q, -1)
    dam = np.full(q, -1)
    for g in range(1, G):
        prev = np.arange((g - 1) * N, g * N)
        sires = rng.choice(prev[: N // 2], max(N // 20, 2), replace=False)
        sire[g * N:(g + 1) * N] = rng.choice(sires, N)
        dam[g * N:(g + 1) * N] = rng.choice(prev[N // 2:], N)
    # breeding values by the recursion u_i = (u_s + u_d)/2 + m_i (m ~ N(0, d_i), F ignored
    # for the simulation only)
    u = np.zeros(q)
    for i in range(q):
        parents = [p for p in (sire[i], dam[i]) if p >= 0]
        u[i] = 0.5 * sum(u[p] for p in parents) + rng.normal() * np.sqrt(
            1.0 - 0.25 * len(parents))
    recorded = np.arange(N, q)
    herd = rng.integers(0, 200, recorded.size)
    x = rng.normal(size=recorded.size)
    y = (10 + 0.5 * x + 0.7 * u[recorded] + 0.5 * rng.normal(size=200)[herd]
         + rng.normal(size=recorded.size))
    pedigree = pd.DataFrame({"animal": np.arange(q),
                             "sire": np.where(sire >= 0, sire, np.nan),
                             "dam": np.where(dam >= 0, dam, np.nan)})
    data = pd.DataFrame({"y": y, "x": x, "animal": recorded, "herd": herd})
    return pedigree, data


FORMULAS = {"a": "y ~ x + (1 | animal)", "ah": "y ~ x + (1 | animal) + (1 | herd)"}


def worker(G: int, N: int, path: str, model: str) -> dict:
    import glmmjax as gj

    frame, data = simulate(G, N)
    start = time.perf_counter()
    ped = gj.Pedigree.from_frame(frame)
    ped.inbreeding  # noqa: B018 -- computed here, timed
    ped_seconds = time.perf_counter() - start
    relmat = {"animal": ped if path == "sparse" else ped.relationship_matrix()}
    start = time.perf_counter()
    fit = gj.lmer(FORMULAS[model], data, relmat=relmat)
    seconds = time.perf_counter() - start
    return {"q": len(ped), "n": len(data), "path": fit.engine, "model": model, "pedigree_s": ped_seconds,
            "fit_s": seconds, "criterion": fit.deviance, "converged": fit.converged,
            "n_evaluations": fit.convergence.n_evaluations,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run(G: int, N: int, path: str, model: str) -> dict:
    from _runs import fresh_process_env

    out = subprocess.run([sys.executable, __file__, "--worker", f"{G},{N},{path},{model}"],
                         env=fresh_process_env(ROOT), capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker")
    parser.add_argument("--dense-large", action="store_true")
    args = parser.parse_args()
    if args.worker:
        G, N, path, model = args.worker.split(",")
        print(json.dumps(worker(int(G), int(N), path, model)))
        return
    # The dense path cannot take the herd term beside a dense K of this size (the K term
    # is one group of q effects in the dense "rest": n·q² index arrays), so it is compared
    # on the animal term alone.
    configs = [(5, 500, "dense", "a"), (5, 500, "sparse", "a"), (5, 500, "sparse", "ah")]
    if args.dense_large:
        configs += [(5, 1000, "dense", "a"), (5, 1000, "sparse", "a")]
    configs += [(10, 2000, "sparse", "a"), (10, 2000, "sparse", "ah")]
    path = ROOT / "tests/reference/pedigree.json"
    r_seconds = (json.loads(path.read_text())["models"]["herd_reml"]["fit_seconds"]
                 if path.exists() else float("nan"))
    print(f"{'q':>7} {'n':>7} {'model':>6} {'path':>7} {'pedigree s':>11} {'fit s':>8} {'evals':>6} "
          f"{'max RSS MB':>11} {'criterion':>16}")
    for G, N, path, model in configs:
        r = run(G, N, path, model)
        print(f"{r['q']:7d} {r['n']:7d} {model:>6} {r['path']:>7} {r['pedigree_s']:11.2f} "
              f"{r['fit_s']:8.2f} {r['n_evaluations']:6d} {r['max_rss_mb']:11.0f} "
              f"{r['criterion']:16.6f}" + ("" if r["converged"] else "  (not converged)"))
    print(f"lme4 relmat trick, q = 2,500 pedigree of pedigree_reference.R (another "
          f"simulation, same sizes): fit {r_seconds:.1f} s")


if __name__ == "__main__":
    main()
