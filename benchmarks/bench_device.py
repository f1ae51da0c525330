"""glmmjax on whatever device JAX's default backend is (meant for a GPU): single fits on
the compiled path, batches in float64 and float32, and float32's accuracy.

No R here (GPU machines have none); the CPU figures and lme4's are in the other scripts
and benchmarks/README.md. Each line gives the first call (tracing and compilation
included) and a warm call in this process.

1. InstEval LMM ``y ~ 1 + service + (1|s) + (1|d) + (1|dept:service)``, REML, on the
   compiled ("jax") engine: on a CPU backend ``lmer`` would use the host engine instead.
2. verbagg GLMM ``r2 ~ Anger + Gender + btype + situ + (1|id) + (1|item)``, Laplace.
3. ``--models`` random-intercept logistic GLMMs (bench_batch.py's simulation) by
   ``fit_many`` in float64 and float32; float32's largest deviation from float64 in
   the fixed effects and θ, over the models both converged on.
4. The large Bernoulli GLMM (bench_glmm.py's simulation), ``--rows`` rows.

Usage: python benchmarks/bench_device.py [--models 10000] [--rows 1000000] [--quick]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from bench_batch import simulate  # benchmarks/ is sys.path[0] when run as a script
from bench_glmm import VERBAGG_FORMULA, simulate_large

import glmmjax


def _twice(label, fn):
    """Run fn twice; print first/warm seconds; return the second result."""
    times, result = [], None
    for _ in range(2):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    print(f"{label}: first call {times[0]:.2f} s, warm {times[1]:.3f} s", flush=True)
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a CPU check")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["insteval", "verbagg", "batch", "large"])
    args = parser.parse_args()
    if args.quick:
        args.models, args.rows = 64, 20_000
    print(f"devices: {jax.devices()}; jax {jax.__version__}", flush=True)

    if "insteval" not in args.skip:
        from glmmjax._engines.compiled.lmm import build_structure_for, fit_lmm_arrays, moment_theta
        from glmmjax._model.design import build_design

        data = glmmjax.datasets.load("insteval")
        formula = "y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept:service)"

        def insteval():
            with jax.enable_x64(True):
                design = build_design(formula, data, require_random=True)
                structure = build_structure_for(design, design.X.shape[1] + 1)
                y = np.asarray(design.response, float)
                theta0 = moment_theta(design.terms, design.X, y, design.weights)
                out = fit_lmm_arrays(structure, design.weights, design.X, y, True, theta0,
                                     engine="jax")
                return float(out[2].criterion)

        criterion = _twice("[insteval] REML fit, compiled engine", insteval)
        print(f"[insteval] REML criterion {criterion:.4f} (lme4: 237661.5357)")

    if "verbagg" not in args.skip:
        verbagg = glmmjax.datasets.load("verbagg")
        fit = _twice("[verbagg] glmer Laplace", lambda: glmmjax.glmer(
            VERBAGG_FORMULA, verbagg, family="binomial"))
        print(f"[verbagg] deviance {fit.deviance:.4f}, converged {fit.converged}")

    if "batch" not in args.skip:
        data, Y = simulate(args.models)
        fits = {}
        for precision in ("float64", "float32"):
            fits[precision] = _twice(
                f"[batch] {args.models} logistic GLMMs, {precision}",
                lambda precision=precision: glmmjax.fit_many(
                    "~ x + (1 | g)", data, Y, family="binomial", precision=precision,
                    progress=False))
        a, b = fits["float64"], fits["float32"]
        both = a.converged & b.converged
        fixef = np.max(np.abs(np.asarray(a.fixef)[both] - np.asarray(b.fixef)[both]))
        theta = np.max(np.abs(np.asarray(a.theta)[both] - np.asarray(b.theta)[both]))
        print(f"[batch] converged float64 {int(a.converged.sum())}, float32 "
              f"{int(b.converged.sum())}; float32 vs float64 max |Δβ| {fixef:.2e}, "
              f"max |Δθ| {theta:.2e}", flush=True)

    if "large" not in args.skip:
        data = simulate_large(args.rows, max(args.rows // 100, 10))
        fit = _twice(f"[large] {args.rows}-row Bernoulli GLMM, Laplace",
                     lambda: glmmjax.glmer("y ~ x + (1 | g)", data, family="binomial"))
        print(f"[large] deviance {fit.deviance:.4f}, converged {fit.converged}")


if __name__ == "__main__":
    main()
