"""How fast is a mixed model with a known relatedness matrix (the animal / GWAS model)?

Data: a genomic relationship matrix K = W·W'/Σ2p(1−p) from simulated SNP genotypes
(``--levels`` individuals, 2 × levels markers, columns centred; plus 1e-3·I so that K
is positive definite and R's ``chol`` applies), one record per individual, a covariate
x, and ``--traits`` responses with heritability about 0.5.

1. ``fit_many("~ x + (1 | id)", relmat={"id": K})`` over all traits (REML, Satterthwaite
   df): K's factor and the rotation U'ZKZ'U = diag(d) computed once, then each trait is a
   scalar-block LMM. Timed end to end (compilation included), and per model.
2. One single fit, ``lmer(..., relmat=...)`` (host engine; K a DataFrame) against lme4's
   relmat trick in R (lFormula, Zt replaced by t(L) %*% Zt, optimizeLmer, mkMerMod: what
   lme4qtl and pedigreemm do), both fitting trait 0 in the same run; R's time excludes
   reading the data, includes its chol(K). Prints both −2 log L (REML) and the ratio.

Run from the repository root (prints the machine and `uptime`):

    python benchmarks/bench_relmat.py                       # 2,000 levels, 1,000 traits
    python benchmarks/bench_relmat.py --levels 500 --traits 200 --single-levels 500
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd
from _machine import describe  # benchmarks/ is sys.path[0] when run as a script

R_SCRIPT = r"""
suppressPackageStartupMessages({library(lme4); library(Matrix)})
args <- commandArgs(TRUE)
data <- read.csv(args[1], colClasses = c(id = "character"))
K <- as.matrix(read.csv(args[2], header = FALSE))
t0 <- proc.time()[["elapsed"]]
# One record per individual: lme4's count checks assume K = I (see the module docstring).
lf <- lFormula(y ~ x + (1 | id), data, REML = TRUE,
               control = lmerControl(check.nobs.vs.nlev = "ignore",
                                     check.nobs.vs.nRE = "ignore"))
levels <- levels(lf$reTrms$flist$id)
ids <- sprintf("i%05d", seq_len(nrow(K)) - 1)
dimnames(K) <- list(ids, ids)
L <- t(chol(K[levels, levels]))
lf$reTrms$Zt <- as(t(L) %*% lf$reTrms$Zt, "CsparseMatrix")
devfun <- do.call(mkLmerDevfun, lf)
opt <- optimizeLmer(devfun)
fit <- mkMerMod(environment(devfun), opt, lf$reTrms, fr = lf$fr)
seconds <- proc.time()[["elapsed"]] - t0
cat(sprintf("%.17g %.17g\n", seconds, REMLcrit(fit)))
"""


def simulate(levels: int, traits: int, seed: int = 2026):
    rng = np.random.default_rng(seed)
    markers = 2 * levels
    p = rng.uniform(0.1, 0.5, markers)
    W = rng.binomial(2, p, size=(levels, markers)).astype(float)
    W -= W.mean(axis=0)
    K = W @ W.T / np.sum(2 * p * (1 - p)) + 1e-3 * np.eye(levels)
    ids = [f"i{i:05d}" for i in range(levels)]
    L = np.linalg.cholesky(K)
    x = rng.normal(size=levels)
    genetic = L @ rng.normal(size=(levels, traits))
    Y = 1.0 + 0.2 * x[:, None] + genetic + rng.normal(size=(levels, traits))
    data = pd.DataFrame({"x": x, "id": ids})
    return data, pd.DataFrame(K, index=ids, columns=ids), Y


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def bench_batch(levels: int, traits: int) -> None:
    import glmmjax as gj

    data, K, Y = simulate(levels, traits)
    print(f"fit_many: {levels} levels (dense K), {traits} traits; {uptime()}", flush=True)
    start = time.perf_counter()
    batch = gj.fit_many("~ x + (1 | id)", data, Y, relmat={"id": K}, progress=False)
    seconds = time.perf_counter() - start
    failed = int(np.sum(batch.models["converged"] == False))  # noqa: E712
    h2 = batch.models.filter(like="sd_(Intercept)|id").iloc[:, 0] ** 2
    print(f"  {seconds:.1f} s in all, {1000 * seconds / traits:.1f} ms per trait, "
          f"{failed} not converged, median sd_id² {np.median(h2):.3f}; {uptime()}",
          flush=True)


def bench_single(levels: int) -> None:
    import glmmjax as gj

    data, K, Y = simulate(levels, 1)
    frame = data.assign(y=Y[:, 0])
    print(f"single fit: {levels} levels (dense K); {uptime()}", flush=True)
    start = time.perf_counter()
    fit = gj.lmer("y ~ x + (1 | id)", frame, relmat={"id": K})
    ours = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        folder = pathlib.Path(folder)
        frame.to_csv(folder / "data.csv", index=False)
        np.savetxt(folder / "K.csv", K.to_numpy(), delimiter=",", fmt="%.17g")
        (folder / "fit.R").write_text(R_SCRIPT)
        run = subprocess.run(["Rscript", str(folder / "fit.R"), str(folder / "data.csv"),
                              str(folder / "K.csv")], capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"the R fit failed:\n{run.stderr}")
        out = run.stdout.split()
    r_seconds, r_crit = float(out[0]), float(out[1])
    print(f"  glmmjax lmer {ours:.2f} s (REML crit {fit.deviance:.8f}); lme4 relmat trick "
          f"{r_seconds:.2f} s (REML crit {r_crit:.8f}); lme4 / glmmjax = "
          f"{r_seconds / ours:.2f}; relative difference "
          f"{(fit.deviance - r_crit) / abs(r_crit):.1e}; {uptime()}", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, default=2000)
    parser.add_argument("--traits", type=int, default=1000)
    parser.add_argument("--single-levels", type=int, default=2000)
    parser.add_argument("--skip-batch", action="store_true")
    parser.add_argument("--skip-single", action="store_true")
    args = parser.parse_args(argv)
    print(describe())
    import jax

    jax.config.update("jax_enable_x64", True)
    if not args.skip_single:
        bench_single(args.single_levels)
    if not args.skip_batch:
        bench_batch(args.levels, args.traits)


if __name__ == "__main__":
    sys.exit(main())
