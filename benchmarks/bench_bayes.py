"""Effective samples per second: glmmjax's generated NumPyro model against a hand-written
NumPyro model of the same GLMM, and against the Laplace fit's time.

Model: binomial (10 trials) with a correlated random intercept and slope,

    logit p = β₀ + β₁x + b₀[g] + b₁[g]x,   (b₀, b₁) ~ N(0, Σ),  SDs 0.6, 0.3, corr 0.3,

simulated for ``--groups`` groups of ``--per-group`` rows. Both Bayesian fits use NUTS
with 4 vectorized chains of 1000 warmup and 1000 kept draws, the same priors (glmmjax's
defaults for this model) and the same non-centred parameterization; the hand-written
model is what a NumPyro user would write (one vector site for β, ``dist.LKJCholesky``,
``dist.Binomial(logits=...)``, no centring of x), run by NumPyro's own ``MCMC``.

Efficiency = the smallest bulk ESS over β, the SDs and the correlation, divided by the
wall time of a warm run (compiled program reused; warmup included). Each sampler also
has its first-run time (compilation included).

Run:  python benchmarks/bench_bayes.py [--groups 50] [--per-group 40]
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
from numpyro.infer import MCMC, NUTS

import glmmjax
from glmmjax import bayes
from glmmjax._bayes_diagnostics import ess_bulk

FORMULA = "cbind(s, 10 - s) ~ x + (1 + x | g)"


def simulate(n_groups: int, per_group: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), per_group)
    x = rng.normal(size=g.size)
    sd, corr = np.array([0.6, 0.3]), 0.3
    cov = np.outer(sd, sd) * np.array([[1, corr], [corr, 1]])
    b = rng.multivariate_normal([0, 0], cov, n_groups)
    eta = -0.5 + 0.8 * x + b[g, 0] + b[g, 1] * x
    s = rng.binomial(10, 1 / (1 + np.exp(-eta)))
    return pd.DataFrame({"g": [f"g{i:03d}" for i in g], "x": x, "s": s})


def hand_written(priors, x, g, n_groups, trials, successes=None):
    """The GLMM as a NumPyro user writes it (same priors as glmmjax's defaults)."""
    intercept = numpyro.sample("b_Intercept", priors["b_Intercept"])
    slope = numpyro.sample("b_x", priors["b_x"])
    sd = jnp.stack([
        numpyro.sample("sd_0", priors["sd_g__Intercept"]),
        numpyro.sample("sd_1", priors["sd_g__x"]),
    ])
    chol = numpyro.sample("L", dist.LKJCholesky(2, 2.0))
    z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([n_groups, 2]).to_event(2))
    b = z @ (sd[:, None] * chol).T
    eta = intercept + slope * x + b[g, 0] + b[g, 1] * x
    numpyro.sample("y", dist.Binomial(trials, logits=eta), obs=successes)


def min_ess(draws: dict) -> float:
    return float(np.min(ess_bulk(np.stack([np.asarray(v) for v in draws.values()], axis=-1))))


def run_glmmjax(frame, seeds):
    bm = bayes.build(FORMULA, frame, "binomial")
    times, ess = [], []
    for seed in seeds:
        fit = bm.sample(seed=seed, warn=False)
        times.append(fit.seconds)
        names, values = fit.scalar_draws("all")
        keep = [i for i, n in enumerate(names) if not n.startswith("r_")]
        ess.append(float(np.min(ess_bulk(values[..., keep]))))
    return bm, times, ess


def run_hand_written(bm, frame, seeds):
    g = frame["g"].astype("category").cat.codes.to_numpy()
    args = (bm.priors, jnp.asarray(frame["x"].to_numpy()), jnp.asarray(g), int(g.max()) + 1,
            jnp.full(len(frame), 10.0))
    times, ess = [], []
    for seed in seeds:
        mcmc = MCMC(NUTS(hand_written), num_warmup=1000, num_samples=1000, num_chains=4,
                    chain_method="vectorized", progress_bar=False)
        start = time.perf_counter()
        mcmc.run(jax.random.PRNGKey(seed), *args, successes=jnp.asarray(frame["s"].to_numpy(float)))
        samples = mcmc.get_samples(group_by_chain=True)
        jax.block_until_ready(samples)
        times.append(time.perf_counter() - start)
        chol = np.asarray(samples["L"])
        scalars = {k: samples[k] for k in ("b_Intercept", "b_x", "sd_0", "sd_1")}
        scalars["cor"] = chol[..., 1, 0]
        ess.append(min_ess(scalars))
    return times, ess


def run_laplace(frame, repeats=2):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        glmmjax.glmer(FORMULA, frame, "binomial")
        times.append(time.perf_counter() - start)
    return times


def main(n_groups: int = 50, per_group: int = 40) -> pd.DataFrame:
    frame = simulate(n_groups, per_group)
    seeds = [1, 2]
    with jax.enable_x64(True):
        bm, ours_t, ours_e = run_glmmjax(frame, seeds)
        hand_t, hand_e = run_hand_written(bm, frame, seeds)
    laplace_t = run_laplace(frame)
    rows = [
        ("glmmjax.bayes (generated)", ours_t[0], ours_t[1], ours_e[1], ours_e[1] / ours_t[1]),
        ("hand-written NumPyro", hand_t[0], hand_t[1], hand_e[1], hand_e[1] / hand_t[1]),
        ("glmmjax.glmer (Laplace)", laplace_t[0], laplace_t[1], np.nan, np.nan),
    ]
    table = pd.DataFrame(rows, columns=["fit", "first run (s)", "warm run (s)", "min bulk ESS",
                                        "ESS/s (warm)"]).set_index("fit")
    print(f"n = {len(frame)} rows, {n_groups} groups; {platform.machine()}, "
          f"JAX {jax.__version__} ({jax.default_backend()}), NumPyro {numpyro.__version__}")
    print(table.round(2).to_string())
    print(f"ESS/s ratio generated / hand-written: {table.iloc[0, 3] / table.iloc[1, 3]:.2f}")
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", type=int, default=50)
    parser.add_argument("--per-group", type=int, default=40)
    args = parser.parse_args()
    main(args.groups, args.per_group)
