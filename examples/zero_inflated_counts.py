"""Excess zeros in salamander counts: Poisson, negative binomial, zero-inflated or hurdle?

Question: 60% of the salamander counts below are zero. Are there more zeros than a count
model can produce, so that a zero-inflated or hurdle model is needed, or does
overdispersion (a negative binomial) account for them? And does the chosen model still
leave zeros unexplained?

Data: glmmTMB's ``Salamanders`` (Price et al. 2016, J. Appl. Ecol. 53: 459-468; bundled:
``glmmjax.datasets.load("salamanders")``): 644 counts of stream salamanders, 23 sites
each surveyed 4 times, 7 species or life stages (``spp``) per survey; ``mined`` says
whether the site's stream was affected by mountaintop-removal coal mining.

Model: the conditional model of glmmTMB's own salamander analysis (Brooks et al. 2017,
R Journal 9: 378-400), ``count ~ spp + mined + (1 | site)`` (log link), under five
response models:

- Poisson and NB2 (negative binomial, Var = μ + μ²/θ): no zero part;
- ZIP and ZINB2: zero-inflated, ``ziformula = ~ spp + mined`` (logit link): a zero with
  probability π, else a Poisson or NB2 count (which may itself be zero);
- hurdle NB2: ``family = truncated_nbinom2`` with the same ``ziformula``, which is then
  the probability of a zero; positive counts come from a zero-truncated NB2.

They are compared by AIC (glmmTMB's, which counts the random-effect SD and the NB2 size
as parameters). DHARMa's simulation test of zero inflation (the number of zeros in the
data against the numbers in 250 data sets simulated from the fit, with new random
effects in every simulation) is run on the Poisson fit (before), on the NB2 fit (does
overdispersion alone account for the zeros?) and on the model AIC chooses (after),
with DHARMa's dispersion test from the same simulations.

Run:  python examples/zero_inflated_counts.py [--out zero_inflated.png] [--n-sim 250]
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import numpy as np
import pandas as pd

import glmmjax

FORMULA = "count ~ spp + mined + (1 | site)"
ZIFORMULA = "~ spp + mined"
# label: (glmmjax family, whether the model has the zero part ZIFORMULA)
MODELS = {
    "Poisson": ("poisson", False),
    "NB2": ("nbinom2", False),
    "ZIP": ("poisson", True),
    "ZINB2": ("nbinom2", True),
    "hurdle NB2": ("truncated_nbinom2", True),
}


def fit_models(data: pd.DataFrame, labels=tuple(MODELS)) -> dict:
    """One GLMM per label of :data:`MODELS`."""
    unknown = [label for label in labels if label not in MODELS]
    if unknown:
        raise ValueError(f"models must be labels of MODELS {list(MODELS)}, got {unknown}")
    fits = {}
    for label in labels:
        family, zero_part = MODELS[label]
        fits[label] = glmmjax.glmer(FORMULA, data, family=family,
                                    ziformula=ZIFORMULA if zero_part else None)
    return fits


def aic_table(fits: dict) -> pd.DataFrame:
    """Parameters, log-likelihood, AIC, ΔAIC and Akaike weight per model, best first."""
    rows = []
    for label, fit in fits.items():
        family, zero_part = MODELS[label]
        rows.append({"model": label, "family": family,
                     "ziformula": ZIFORMULA if zero_part else "",
                     "df": int(fit.df), "logLik": float(fit.loglik), "AIC": float(fit.aic),
                     "converged": bool(fit.converged)})
    table = pd.DataFrame(rows).set_index("model").sort_values("AIC")
    table.insert(5, "dAIC", table["AIC"] - table["AIC"].min())
    relative = np.exp(-0.5 * table["dAIC"])
    table.insert(6, "weight", relative / relative.sum())
    return table


def p_text(p_value: float, n_sim: int) -> str:
    """A two-sided simulation p-value (twice the smaller tail's share of simulations);
    0 means no simulation was as extreme as the data, i.e. p < 2 / n_sim."""
    return f"p < {2 / n_sim:.2g}" if p_value == 0 else f"p = {p_value:.3g}"


def zero_tests(fit, n_sim: int, seed: int) -> dict:
    """DHARMa's zero-inflation and dispersion tests from one set of simulations."""
    residuals = fit.scaled_residuals(n_sim=n_sim, seed=seed)
    simulated_zeros = np.sum(residuals.simulated == 0, axis=0)
    return {"zero_inflation": residuals.test_zero_inflation(),
            "dispersion": residuals.test_dispersion(),
            "observed_zeros": int(np.sum(residuals.observed == 0)),
            "simulated_zeros": simulated_zeros}


def plot_zeros(checks: dict, table: pd.DataFrame, out) -> pathlib.Path | None:
    """Simulated numbers of zeros per model against the observed number, and ΔAIC;
    None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4),
                                      gridspec_kw={"width_ratios": [3, 2]})
    observed = next(iter(checks.values()))["observed_zeros"]
    every = np.concatenate([c["simulated_zeros"] for c in checks.values()] + [[observed]])
    bins = np.arange(every.min() - 0.5, every.max() + 4.5, 4)
    for (label, check), colour in zip(checks.items(), ["tab:red", "tab:orange", "tab:blue"]):
        test = check["zero_inflation"]
        n_sim = len(check["simulated_zeros"])
        left.hist(check["simulated_zeros"], bins=bins, histtype="step", lw=1.8, color=colour,
                  label=f"{label}: observed/simulated {test.statistic:.2f}, "
                        f"{p_text(test.p_value, n_sim)}")
    left.axvline(observed, color="black", lw=2, label=f"observed ({observed})")
    left.set_xlabel("number of zeros in a simulated data set")
    left.set_ylabel("simulations")
    left.legend(fontsize=8, frameon=False, loc="upper left")
    y = np.arange(len(table))[::-1]
    right.barh(y, table["dAIC"], color="tab:grey")
    for row, delta in zip(y, table["dAIC"]):
        right.annotate(f"{delta:.1f}", (delta, row), xytext=(3, 0),
                       textcoords="offset points", va="center", fontsize=8)
    right.set_xlim(0, 3 * table["dAIC"].max() + 10)
    right.set_yticks(y, table.index)
    right.set_xscale("symlog", linthresh=10)
    right.set_xlabel("ΔAIC (0 = best)")
    fig.tight_layout()
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return pathlib.Path(out)


def main(models=tuple(MODELS), n_sim: int = 250, out: str | pathlib.Path | None = None,
         seed: int = 1, verbose: bool = True) -> pd.DataFrame:
    """Fit the models, compare them by AIC, and test for zero inflation before (Poisson)
    and after (the model with the lowest AIC).

    Args:
        models: labels of :data:`MODELS` to fit (must include "Poisson").

    Returns:
        The AIC table (one row per model, best first: family, ziformula, df, logLik,
        AIC, dAIC, weight, converged). ``attrs``: ``chosen`` (label), ``tests``
        ({"Poisson": ..., "NB2": ... (if fitted), chosen: ...}, each with the
        ``zero_inflation`` and ``dispersion`` TestResults and the numbers of zeros
        observed and simulated), ``fits``
        (the fitted models by label), ``plot_path`` (None without matplotlib) and
        ``seconds`` (wall time of the fits and the tests).
    """
    if "Poisson" not in models:
        raise ValueError(f"models must include 'Poisson' (the 'before' of the zero-"
                         f"inflation test), got {list(models)}")
    start = time.perf_counter()
    data = glmmjax.datasets.load("salamanders")
    fits = fit_models(data, models)
    table = aic_table(fits)
    chosen = table.index[0]
    # Before (Poisson), after (the chosen model), and NB2 where fitted: whether
    # overdispersion alone accounts for the zeros the Poisson model lacks.
    tested = dict.fromkeys(["Poisson"] + [m for m in ("NB2",) if m in fits] + [chosen])
    checks = {label: zero_tests(fits[label], n_sim, seed) for label in tested}
    seconds = time.perf_counter() - start
    if out is None:
        out = pathlib.Path(tempfile.gettempdir()) / "zero_inflated_counts.png"
    plot_path = plot_zeros(checks, table, out)
    table.attrs.update(chosen=chosen, tests=checks, fits=fits, plot_path=plot_path,
                       seconds=seconds)
    if verbose:
        zeros = int((data["count"] == 0).sum())
        print(f"Salamanders: {len(data)} counts at {data['site'].nunique()} sites, "
              f"{zeros} zeros ({zeros / len(data):.0%}).")
        print(f"Conditional model: {FORMULA}; zero part (ZIP, ZINB2, hurdle): {ZIFORMULA}")
        print(table.to_string(float_format=lambda v: f"{v:.4g}"))
        print(f"Lowest AIC: {chosen}.")
        print(f"Zero-inflation test ({n_sim} simulations, new random effects in each):")
        for label, check in checks.items():
            test, spread = check["zero_inflation"], check["dispersion"]
            print(f"  {label:<10} zeros observed/simulated = {test.statistic:.3f} "
                  f"({p_text(test.p_value, n_sim)}); dispersion ratio = "
                  f"{spread.statistic:.3f} ({p_text(spread.p_value, n_sim)})")
        if MODELS[chosen][1]:
            meaning = ("a zero" if MODELS[chosen][0].startswith("truncated")
                       else "an extra (structural) zero")
            print(f"{chosen}, zero part (log-odds of {meaning}):")
            print(fits[chosen].coef_table(part="zi").to_string(float_format=lambda v: f"{v:.4g}"))
        print(f"Plot: {plot_path}" if plot_path else "Plot skipped (matplotlib not installed)")
        print(f"({seconds:.1f} s for the fits and the tests)")
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="where to save the plot (PNG)")
    parser.add_argument("--n-sim", type=int, default=250,
                        help="simulations for the zero-inflation test")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    main(n_sim=args.n_sim, out=args.out, seed=args.seed)
