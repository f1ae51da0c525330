"""How much will each store and each region sell over the next four weeks?

Question: forecast daily sales of a retail chain, with honest uncertainty, for every
store and every region over the next 28 days, given planned promotions. Stores in the
same region resemble each other, stores and regions react differently to promotions, and
a store's good or bad days come in runs. A Bayesian hierarchical model pools what stores
share, keeps what they do not, and its posterior predictive draws add up to intervals
for any total (a store's four weeks, a whole region).

Data: simulated, so the truth is known. Stores s = 1..S sit in regions r = 1..R (store s
in region s mod R); on day t, with promo ~ Bernoulli(0.15) (planned ahead) and weekend
= Saturday or Sunday,

    log sales[s, t] = 4.0 + 0.35·promo + 0.20·weekend
                      + a_r + c_r·promo          (region: SDs 0.30, 0.15; correlation 0.3)
                      + a_s + c_s·promo          (store:  SDs 0.40, 0.20; correlation −0.2)
                      + ε[s, t],
    ε[s, t] = 0.6·ε[s, t − 1] + innovation       (AR(1) within store, marginal SD 0.25)

and sales = exp(log sales). The model is that process:

    log_sales ~ promo + weekend + (1 + promo | store) + (1 + promo | region),
    AR(1) errors over day within store,

fitted with NUTS (``glmmjax.bayes``) under the default weakly informative priors. The
posterior predictive draws for the next 28 days continue each store's AR(1) series from
its last observed day; exp() of the draws are sales, summed per store and per region
for 90% intervals, which the simulated future (kept out of the fit) should fall in.
Beside it, the same model by REML with nlme's residual AR(1) within store
(``lmer(..., correlation=glmmjax.cor_ar1(time="day", group="store"))``, seconds), whose
plug-in forecast continues each store's residual from its last day (estimates held
fixed, so its intervals leave out the parameters' uncertainty); the two forecasts'
errors, interval widths and coverage are compared.

Run:  python examples/hierarchical_demand.py [--out fan.png]          (a few minutes)
      python examples/hierarchical_demand.py --full                     (about an hour)

The default size (20 stores in 4 regions, 70 days, 4 chains of 250 + 250 iterations)
runs in a few minutes on a 2-core CPU; ``--full`` is the size above (100 stores in 10
regions, half a year, 500 + 500 iterations), about an hour of NUTS on the same CPU and
minutes on a GPU. ``--stores``, ``--days``, ... set each size by hand.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

import numpy as np
import pandas as pd

import glmmjax

FORMULA = "log_sales ~ promo + weekend + (1 + promo | store) + (1 + promo | region)"
AR1 = ("day", "store")
TRUTH = {
    "b_Intercept": 4.0,
    "b_promo": 0.35,
    "b_weekend": 0.20,
    "sd_region__Intercept": 0.30,
    "sd_region__promo": 0.15,
    "cor_region__Intercept__promo": 0.3,
    "sd_store__Intercept": 0.40,
    "sd_store__promo": 0.20,
    "cor_store__Intercept__promo": -0.2,
    "sigma": 0.25,
    "ar1_rho": 0.6,
}


def _effects(rng, n, sd, corr):
    cov = np.array([[sd[0] ** 2, corr * sd[0] * sd[1]], [corr * sd[0] * sd[1], sd[1] ** 2]])
    return rng.multivariate_normal(np.zeros(2), cov, size=n)


def simulate(n_stores: int = 100, n_regions: int = 10, n_days: int = 182, horizon: int = 28,
             seed: int = 7) -> pd.DataFrame:
    """Simulate ``n_days + horizon`` days of sales for every store (see the docstring).

    Returns one row per store and day with columns store, region, day (0, 1, ...),
    promo, weekend, log_sales, sales and ``future`` (True for the last ``horizon`` days).
    """
    rng = np.random.default_rng(seed)
    t = TRUTH
    total = n_days + horizon
    region_of = np.arange(n_stores) % n_regions
    region = _effects(rng, n_regions, (t["sd_region__Intercept"], t["sd_region__promo"]),
                      t["cor_region__Intercept__promo"])
    store = _effects(rng, n_stores, (t["sd_store__Intercept"], t["sd_store__promo"]),
                     t["cor_store__Intercept__promo"])
    rho, sigma = t["ar1_rho"], t["sigma"]
    noise = np.empty((n_stores, total))
    noise[:, 0] = sigma * rng.standard_normal(n_stores)
    for day in range(1, total):
        innovation = sigma * np.sqrt(1 - rho**2) * rng.standard_normal(n_stores)
        noise[:, day] = rho * noise[:, day - 1] + innovation
    promo = (rng.random((n_stores, total)) < 0.15).astype(float)
    weekend = np.broadcast_to((np.arange(total) % 7 >= 5).astype(float), (n_stores, total))
    intercept = t["b_Intercept"] + region[region_of, 0] + store[:, 0]
    slope = t["b_promo"] + region[region_of, 1] + store[:, 1]
    log_sales = intercept[:, None] + slope[:, None] * promo + t["b_weekend"] * weekend + noise
    width = len(str(n_stores))
    frame = pd.DataFrame({
        "store": np.repeat([f"S{s + 1:0{width}d}" for s in range(n_stores)], total),
        "region": np.repeat([f"R{r + 1:02d}" for r in region_of], total),
        "day": np.tile(np.arange(total), n_stores),
        "promo": promo.ravel(),
        "weekend": weekend.ravel(),
        "log_sales": log_sales.ravel(),
    })
    frame["sales"] = np.exp(frame["log_sales"])
    frame["future"] = frame["day"] >= n_days
    return frame


def build_model(history: pd.DataFrame, priors=None):
    """The Bayesian model of the history (``glmmjax.bayes.BayesModel``)."""
    return glmmjax.bayes.build(FORMULA, history, priors=priors, ar1=AR1)


def interval_table(draws: np.ndarray, groups: pd.Series, actual: np.ndarray,
                   prob: float = 0.9) -> pd.DataFrame:
    """Posterior predictive intervals of group totals.

    ``draws`` (draws, rows) are sales; rows are summed within each group per draw.
    """
    codes, names = pd.factorize(groups, sort=True)
    totals = np.zeros((draws.shape[0], len(names)))
    np.add.at(totals.T, codes, draws.T)
    truth = np.bincount(codes, weights=actual, minlength=len(names))
    lo, hi = (1 - prob) / 2, 1 - (1 - prob) / 2
    table = pd.DataFrame({
        "lower": np.quantile(totals, lo, axis=0),
        "median": np.median(totals, axis=0),
        "upper": np.quantile(totals, hi, axis=0),
        "actual": truth,
    }, index=pd.Index(names, name=groups.name))
    table["covered"] = (table["lower"] <= table["actual"]) & (table["actual"] <= table["upper"])
    return table


def plot(history, future, draws, out) -> pathlib.Path | None:
    """Fan chart of the first region's daily sales and the stores' 28-day intervals."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    region = sorted(future["region"].unique())[0]
    in_region = (future["region"] == region).to_numpy()
    days = np.sort(future["day"].unique())
    daily = np.stack([draws[:, in_region & (future["day"] == d).to_numpy()].sum(axis=1) for d in days], 1)
    past = history[history["region"] == region].groupby("day")["sales"].sum().iloc[-8 * 7:]
    actual = future[in_region].groupby("day")["sales"].sum()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(past.index, past.to_numpy(), color="black", lw=1, label="history")
    left.fill_between(days, *np.quantile(daily, [0.05, 0.95], axis=0), alpha=0.25, label="90%")
    left.fill_between(days, *np.quantile(daily, [0.25, 0.75], axis=0), alpha=0.4, label="50%")
    left.plot(days, np.median(daily, axis=0), color="C0", label="forecast median")
    left.plot(actual.index, actual.to_numpy(), color="C3", lw=1, label="actual")
    left.set(title=f"Region {region}: daily sales", xlabel="day", ylabel="sales")
    left.legend(fontsize=8)
    totals = interval_table(draws, future["store"].rename("store"), future["sales"].to_numpy())
    totals = totals.sort_values("median")
    x = np.arange(len(totals))
    right.vlines(x, totals["lower"], totals["upper"], alpha=0.6, label="90% interval")
    right.scatter(x, totals["actual"], s=8, color="C3", zorder=3, label="actual")
    right.set(title="Stores: next 28 days' total sales", xlabel="store (by forecast)",
              ylabel="sales")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return pathlib.Path(out)


def fit_frequentist(history: pd.DataFrame):
    """The same model by (RE)ML: ``lmer`` with nlme's residual AR(1) within store
    (``glmmjax.cor_ar1``). Stores are nested in regions, as the residual AR(1) needs."""
    import warnings

    with warnings.catch_warnings():
        # With a few regions their (1 + promo) covariance often lands on the boundary
        # (a correlation of ±1); main() says so rather than warning.
        warnings.simplefilter("ignore", glmmjax.SingularFitWarning)
        return glmmjax.lmer(FORMULA, history,
                            correlation=glmmjax.cor_ar1(time=AR1[0], group=AR1[1]))


def frequentist_draws(fit, history: pd.DataFrame, future: pd.DataFrame, n_draws: int = 1000,
                      seed: int = 0) -> np.ndarray:
    """Forecast draws of log sales (draws, future rows) from the REML fit: the fitted
    mean Xβ̂ + Zb̂ (``fit.predict``) plus each store's AR(1) residual continued from its
    last observed day, ε_(T+h) = ρ·ε_(T+h−1) + σ·√(1 − ρ²)·z. A plug-in forecast: β, b,
    θ, σ and ρ are held at their estimates, so unlike the posterior predictive it leaves
    out their uncertainty (drawing β and b independently from their separate covariances
    would overstate it, as they are strongly correlated)."""
    rng = np.random.default_rng(seed)
    rho, sigma = fit.rho, fit.sigma
    last = history.sort_values("day").groupby("store").tail(1)
    residual = dict(zip(last["store"], last["log_sales"] - fit.predict(last, type="link")))
    last_day = dict(zip(last["store"], last["day"]))
    mean = fit.predict(future, type="link").to_numpy()
    out = np.empty((n_draws, len(future)))
    innovation_sd = sigma * np.sqrt(1.0 - rho**2)
    for store, rows in future.groupby("store").indices.items():
        order = rows[np.argsort(future["day"].to_numpy()[rows])]
        eps, day = np.full(n_draws, residual[store]), last_day[store]
        for position in order:
            for _ in range(int(future["day"].iat[position] - day)):
                eps = rho * eps + innovation_sd * rng.standard_normal(n_draws)
            day = future["day"].iat[position]
            out[:, position] = mean[position] + eps
    return out


def compare_forecasts(bayes_tables: dict, freq_tables: dict) -> pd.DataFrame:
    """Per level (stores, regions): the two forecasts' median totals against the actual
    totals (mean absolute % error), 90% interval widths and coverage."""
    rows = {}
    for level in bayes_tables:
        for name, table in (("Bayes (NUTS)", bayes_tables[level]),
                            ("REML + AR(1)", freq_tables[level])):
            error = np.abs(table["median"] / table["actual"] - 1.0)
            rows[(level, name)] = {
                "median abs % error": 100 * error.mean(),
                "mean 90% width / actual": (table["upper"] - table["lower"]).mean()
                / table["actual"].mean(),
                "coverage": table["covered"].mean(),
            }
    return pd.DataFrame(rows).T


QUICK = {"n_stores": 20, "n_regions": 4, "n_days": 70, "num_warmup": 250, "num_samples": 250}
FULL = {"n_stores": 100, "n_regions": 10, "n_days": 182, "num_warmup": 500, "num_samples": 500}


def main(n_stores: int = QUICK["n_stores"], n_regions: int = QUICK["n_regions"],
         n_days: int = QUICK["n_days"], horizon: int = 28, *, num_chains: int = 4,
         num_warmup: int = QUICK["num_warmup"], num_samples: int = QUICK["num_samples"],
         seed: int = 7, chain_method: str | None = None, progress_bar: bool | None = None,
         out: str | pathlib.Path | None = None, verbose: bool = True,
         frequentist: bool = True) -> dict:
    """Simulate, fit, forecast the next ``horizon`` days and plot (to ``out``).

    Returns:
        dict with the data (``history``, ``future``), the ``fit`` (a BayesResult), the
        ``store_intervals`` and ``region_intervals`` of total sales over the horizon
        (90% posterior predictive intervals, with the simulated actual totals), the
        plot's path (None without matplotlib), and with ``frequentist`` (default) the
        REML fit with residual AR(1) (``frequentist_fit``), its forecast intervals
        (``frequentist_intervals``: {"store": ..., "region": ...}) and the
        ``forecast_comparison`` table (None without ``frequentist``).
    """
    if chain_method is None:
        # On a CPU one chain after another wastes no work on the longest chain's trees
        # and compiles faster; on an accelerator the chains run side by side.
        import jax

        chain_method = "sequential" if jax.default_backend() == "cpu" else "vectorized"
    data = simulate(n_stores, n_regions, n_days, horizon, seed)
    history = data[~data["future"]].reset_index(drop=True)
    future = data[data["future"]].reset_index(drop=True)
    fit = build_model(history).sample(
        num_chains=num_chains, num_warmup=num_warmup, num_samples=num_samples, seed=seed,
        chain_method=chain_method, progress_bar=progress_bar, warn=verbose,
    )
    draws = np.exp(fit.posterior_predict(future, seed=seed).to_numpy())
    stores = interval_table(draws, future["store"], future["sales"].to_numpy())
    regions = interval_table(draws, future["region"], future["sales"].to_numpy())
    freq_fit = freq_tables = comparison = None
    if frequentist:
        freq_fit = fit_frequentist(history)
        freq_draws = np.exp(frequentist_draws(freq_fit, history, future, seed=seed))
        freq_tables = {level: interval_table(freq_draws, future[level], future["sales"].to_numpy())
                       for level in ("store", "region")}
        comparison = compare_forecasts({"store": stores, "region": regions}, freq_tables)
    if out is None:
        out = pathlib.Path(tempfile.gettempdir()) / "hierarchical_demand.png"
    plot_path = plot(history, future, draws, out)
    if verbose:
        print(fit.summary())
        truth = pd.Series(TRUTH, name="truth")
        table = fit.posterior_summary("all", probs=(0.05, 0.95)).loc[truth.index]
        print("\nPosterior against the simulated truth (90% intervals):")
        print(pd.concat([truth, table[["mean", "q5", "q95"]]], axis=1).round(3).to_string())
        print(f"\nRegions: total sales over the next {horizon} days (90% intervals)")
        print(regions.round(0).to_string())
        print(f"\nStores: {stores['covered'].mean():.0%} of the actual {horizon}-day totals "
              f"fall in their 90% intervals; regions: {regions['covered'].mean():.0%}")
        if freq_fit is not None:
            print("\nThe same model by REML with nlme's residual AR(1) within store "
                  "(lmer(..., correlation=cor_ar1(time='day', group='store'))):")
            print(f"  rho {freq_fit.rho:.3f} (truth {TRUTH['ar1_rho']}), sigma "
                  f"{freq_fit.sigma:.3f} (truth {TRUTH['sigma']}); fixed effects "
                  + ", ".join(f"{k} {v:.3f}" for k, v in freq_fit.fixef.items()))
            if freq_fit.is_singular:
                print(f"  (boundary fit: {freq_fit.singular_message().split('. ')[0]})")
            print(f"\n{horizon}-day totals, Bayesian posterior predictive against the REML "
                  "plug-in forecast (90% intervals):")
            print(comparison.round(3).to_string())
        if plot_path is not None:
            print(f"Plot: {plot_path}")
    return {
        "history": history,
        "future": future,
        "fit": fit,
        "store_intervals": stores,
        "region_intervals": regions,
        "plot_path": plot_path,
        "frequentist_fit": freq_fit,
        "frequentist_intervals": freq_tables,
        "forecast_comparison": comparison,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true",
                        help="the full size: 100 stores, 10 regions, 182 days, 500 + 500 "
                             "iterations (about an hour on a 2-core CPU)")
    parser.add_argument("--stores", type=int, default=None)
    parser.add_argument("--regions", type=int, default=None)
    parser.add_argument("--days", type=int, default=None)
    parser.add_argument("--horizon", type=int, default=28)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    size = dict(FULL if args.full else QUICK)
    for key, value in (("n_stores", args.stores), ("n_regions", args.regions),
                       ("n_days", args.days), ("num_warmup", args.warmup),
                       ("num_samples", args.samples)):
        if value is not None:
            size[key] = value
    print(f"Fitting {size['n_stores']} stores x {size['n_days']} days with NUTS, "
          f"{args.chains} chains of {size['num_warmup']} + {size['num_samples']} iterations"
          + ("" if args.full else " (--full for the full-size run)"))
    main(horizon=args.horizon, num_chains=args.chains, progress_bar=True, out=args.out,
         **size)
