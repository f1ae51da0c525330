"""Effective samples per second: glmmjax's generated NumPyro model against a hand-written
NumPyro model of the same GLMM, and against the Laplace fit's time.

Model: binomial (10 trials) with a correlated random intercept and slope,

    logit p = β₀ + β₁x + b₀[g] + b₁[g]x,   (b₀, b₁) ~ N(0, Σ),  SDs 0.6, 0.3, corr 0.3,

simulated for ``--groups`` groups of ``--per-group`` rows. Both Bayesian fits use NUTS
with 4 vectorized chains of 1000 warmup and 1000 kept draws, the same priors (glmmjax's
defaults for this model) and the same non-centred parameterization; the hand-written
model is what a NumPyro user would write (a site per coefficient, ``dist.LKJCholesky``,
``dist.Binomial(logits=...)``, no centring of x), run by NumPyro's own ``MCMC``.

Efficiency = the smallest bulk ESS over β, the SDs and the correlation, divided by the
wall time (and by the process's CPU time, steadier on a shared machine) of a warm run
(compiled program reused; warmup included): medians over ``--repeats`` warm runs with
seeds 2, 3, ...; the warm runs of the two samplers alternate, with the same seeds and
the same ``--target-accept`` (0.8 here, NumPyro's default; glmmjax's own default is
0.99). Each sampler also has its first-run time (compilation included). The
hand-written model runs through one ``MCMC`` object with ``jit_model_args=True``, so
that its warm runs reuse its compiled sampler too.

Run:  python benchmarks/bench_bayes.py [--groups 50] [--per-group 40] [--repeats 2] [--target-accept 0.8]
"""

from __future__ import annotations

import argparse
import functools
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
from glmmjax._bayes.diagnostics import ess_bulk

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


def hand_written(priors, x, g, trials, successes=None, *, n_groups):
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


def glmmjax_runner(frame, target_accept):
    bm = bayes.build(FORMULA, frame, "binomial")

    def run(seed):
        cpu = time.process_time()
        fit = bm.sample(seed=seed, target_accept=target_accept, warn=False)
        cpu = time.process_time() - cpu
        names, values = fit.scalar_draws("all")
        keep = [i for i, n in enumerate(names) if not n.startswith("r_")]
        return fit.seconds, cpu, float(np.min(ess_bulk(values[..., keep]))), fit.num_steps.mean()

    return bm, run


def hand_written_runner(bm, frame, target_accept):
    g = frame["g"].astype("category").cat.codes.to_numpy()
    model = functools.partial(hand_written, n_groups=int(g.max()) + 1)
    args = (bm.priors, jnp.asarray(frame["x"].to_numpy()), jnp.asarray(g),
            jnp.full(len(frame), 10.0))
    successes = jnp.asarray(frame["s"].to_numpy(float))
    # One MCMC object with jit_model_args: later runs reuse its compiled sampler, as
    # glmmjax's do (a new MCMC object would compile again).
    mcmc = MCMC(NUTS(model, target_accept_prob=target_accept), num_warmup=1000,
                num_samples=1000, num_chains=4, chain_method="vectorized", progress_bar=False,
                jit_model_args=True)

    def run(seed):
        start, cpu = time.perf_counter(), time.process_time()
        mcmc.run(jax.random.PRNGKey(seed), *args, successes=successes,
                 extra_fields=("num_steps",))
        samples = jax.tree_util.tree_map(np.asarray, mcmc.get_samples(group_by_chain=True))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        scalars = {k: samples[k] for k in ("b_Intercept", "b_x", "sd_0", "sd_1")}
        scalars["cor"] = samples["L"][..., 1, 0]
        steps = np.asarray(mcmc.get_extra_fields()["num_steps"]).mean()
        return wall, cpu, min_ess(scalars), steps

    return run


def run_laplace(frame, repeats=2):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        glmmjax.glmer(FORMULA, frame, "binomial")
        times.append(time.perf_counter() - start)
    return times


def main(n_groups: int = 50, per_group: int = 40, repeats: int = 2,
         target_accept: float = 0.8) -> pd.DataFrame:
    frame = simulate(n_groups, per_group)
    # The first run of each compiles; the warm runs alternate between the two samplers
    # (same seeds), so that a change of load on a shared machine hits both alike.
    results = {"generated": [], "hand": []}
    with jax.enable_x64(True):
        bm, ours = glmmjax_runner(frame, target_accept)
        hand = hand_written_runner(bm, frame, target_accept)
        first = {"generated": ours(1), "hand": hand(1)}
        for seed in range(2, repeats + 2):
            results["generated"].append(ours(seed))
            results["hand"].append(hand(seed))
    laplace_t = run_laplace(frame)

    def row(name, key):
        wall, cpu, ess, steps = (np.array(v) for v in zip(*results[key]))
        return (name, first[key][0], np.median(wall), np.median(cpu), np.median(steps),
                np.median(ess), np.median(ess / wall), np.median(ess / cpu))

    rows = [
        row("glmmjax.bayes (generated)", "generated"),
        row("hand-written NumPyro", "hand"),
        ("glmmjax.glmer (Laplace)", laplace_t[0], laplace_t[1], np.nan, np.nan, np.nan, np.nan,
         np.nan),
    ]
    table = pd.DataFrame(rows, columns=["fit", "first run (s)", "warm wall (s)", "warm CPU (s)",
                                        "steps/draw", "min bulk ESS", "ESS/s wall",
                                        "ESS/s CPU"]).set_index("fit")
    print(f"n = {len(frame)} rows, {n_groups} groups; 4 chains x (1000 warmup + 1000 draws), "
          f"target_accept {target_accept}; medians over {repeats} warm runs; "
          f"{platform.machine()}, JAX {jax.__version__} ({jax.default_backend()}), "
          f"NumPyro {numpyro.__version__}")
    print(table.round(2).to_string())

    def ratio(column):
        ours_r = np.array([r[2] / r[column] for r in results["generated"]])
        hand_r = np.array([r[2] / r[column] for r in results["hand"]])
        return ours_r / hand_r

    wall_ratio, cpu_ratio = ratio(0), ratio(1)
    print(f"ESS/s ratio generated / hand-written, per seed: wall {np.round(wall_ratio, 2)}, "
          f"CPU {np.round(cpu_ratio, 2)}; warm Bayesian fit / Laplace fit time: "
          f"{table.iloc[0, 1] / laplace_t[1]:.0f}x")
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", type=int, default=50)
    parser.add_argument("--per-group", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--target-accept", type=float, default=0.8)
    args = parser.parse_args()
    main(args.groups, args.per_group, args.repeats, args.target_accept)
