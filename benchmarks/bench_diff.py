"""Cost of the differentiable API (issue 14): value+gradient of ``log_likelihood`` and the
VJP of ``solve`` relative to ``solve`` itself, compiled and warm.

    python benchmarks/bench_diff.py [--rows 1000000]

Prints, per model: compile time, warm time of log_likelihood, of value_and_grad (in the
parameters and the offset), of solve, and of solve + one VJP of β̂ in the weights, with
the ratio VJP/solve (goal ≤ 3).
"""

from __future__ import annotations

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import glmmjax


def _timed(fn, *args, repeat=5):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return first, float(np.median(times))


def loglik_costs(name, model):
    params = model.init_params()
    value = jax.jit(lambda m, p: m.log_likelihood(p))
    grad = jax.jit(jax.value_and_grad(lambda p, off, m: eqx.tree_at(
        lambda mm: mm.offset, m, off).log_likelihood(p), argnums=(0, 1)))
    c_v, t_v = _timed(value, model, params)
    c_g, t_g = _timed(grad, params, model.offset, model)
    print(f"{name:<28} log_likelihood: first {c_v:6.2f} s, warm {t_v * 1e3:8.1f} ms | "
          f"value+grad (params, offset): first {c_g:6.2f} s, warm {t_g * 1e3:8.1f} ms "
          f"({t_g / t_v:.1f}x the value)")


def solve_costs(name, model):
    def beta(w):
        return glmmjax.solve(eqx.tree_at(lambda m: m.weights, model, w)).beta

    w0 = jnp.asarray(model.weights)
    solve = jax.jit(beta)
    def vjp(w):
        out, pullback = jax.vjp(beta, w)
        return pullback(jnp.ones_like(out))[0]

    vjp = jax.jit(vjp)
    c_s, t_s = _timed(solve, w0, repeat=3)
    c_j, t_j = _timed(vjp, w0, repeat=3)
    print(f"{name:<28} solve: first {c_s:6.2f} s, warm {t_s * 1e3:8.1f} ms | solve + VJP in "
          f"weights: first {c_j:6.2f} s, warm {t_j * 1e3:8.1f} ms | VJP/solve "
          f"{(t_j - t_s) / t_s:.2f} (goal <= 3)")


def big_glmm(rows: int, levels: int = 1000, seed: int = 0):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, levels, rows)
    x = rng.normal(size=rows)
    eta = -0.5 + 0.8 * x + rng.normal(0, 0.7, levels)[g]
    y = (rng.random(rows) < 1 / (1 + np.exp(-eta))).astype(float)
    X = np.column_stack([np.ones(rows), x])
    return glmmjax.MixedModel.from_arrays(X, y, [(g, None)], family="binomial")


def main(rows: int):
    import subprocess

    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    with jax.enable_x64(True):
        sleep = glmmjax.MixedModel.from_formula("Reaction ~ Days + (Days | Subject)",
                                                glmmjax.datasets.load("sleepstudy"))
        cbpp = glmmjax.MixedModel.from_formula(
            "cbind(incidence, size - incidence) ~ period + (1 | herd)",
            glmmjax.datasets.load("cbpp"), family="binomial")
        verbagg = glmmjax.MixedModel.from_formula(
            "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)",
            glmmjax.datasets.load("verbagg"), family="binomial")
        loglik_costs("verbagg (crossed, 7,584 rows)", verbagg)
        loglik_costs(f"binomial GLMM {rows:,} rows", big_glmm(rows))
        solve_costs("sleepstudy LMM (slope)", sleep)
        solve_costs("cbpp binomial GLMM", cbpp)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    main(parser.parse_args().rows)
