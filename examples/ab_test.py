"""A/B test of a recommendation algorithm when each user contributes several sessions.

Question: does the new recommendation algorithm (B) raise the chance that a session ends
in a conversion, compared with the current one (A)? Users were randomized, but the
outcome is recorded per session, and sessions of the same user are not independent:
some users simply buy more than others. A plain logistic regression (GLM) treats every
session as an independent trial and so overstates how much information the experiment
holds; a GLMM with a random intercept per user accounts for the clustering.

Data: simulated, so the truth is known. For each of ``n_users`` users i:

    group_i     = A or B with probability 1/2 each          (randomized per user)
    u_i         ~ N(0, σ_user²),  σ_user = 1.2                (user propensity, logit scale)
    sessions_i  = 1 + Poisson(5)                              (1 to ~15 sessions, mean 6)

and for each session s of user i, independently given u_i:

    logit P(converted_is = 1) = −1.6 + 0.3·[group_i = B] + u_i

so the true (user-level, conditional) treatment effect is 0.3 on the log-odds scale,
an odds ratio of exp(0.3) = 1.35 for the same user. The GLM estimates the population-
averaged effect instead, logit E[p | B] − logit E[p | A] over users, which is attenuated
towards 0 (0.243 here; roughly 0.3/√(1 + 0.346·σ_user²) for a logit link), so the two
estimates differ as well as their standard errors; the point here is the standard error: the GLM's is too small, its
interval too narrow and its p-value too optimistic.

Run:  python examples/ab_test.py [--n-users 4000] [--out ab_test.png] [--seed 7]
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

import numpy as np
import pandas as pd
from scipy import stats

import glmmjax

INTERCEPT = -1.6
TREATMENT_EFFECT = 0.3
SIGMA_USER = 1.2
MEAN_EXTRA_SESSIONS = 5
TERM = "group[T.B]"


def simulate_sessions(n_users: int, seed: int = 7) -> pd.DataFrame:
    """One row per session, from the process in the module docstring."""
    rng = np.random.default_rng(seed)
    group = rng.choice(["A", "B"], size=n_users)
    propensity = rng.normal(0.0, SIGMA_USER, n_users)
    sessions = 1 + rng.poisson(MEAN_EXTRA_SESSIONS, n_users)
    user = np.repeat(np.arange(n_users), sessions)
    eta = INTERCEPT + TREATMENT_EFFECT * (group[user] == "B") + propensity[user]
    converted = rng.random(user.size) < 1.0 / (1.0 + np.exp(-eta))
    return pd.DataFrame({
        "user": [f"u{i:05d}" for i in user],
        "group": pd.Categorical(group[user], categories=["A", "B"]),
        "converted": converted.astype(int),
    })


def population_averaged_effect(n_nodes: int = 60) -> float:
    """The GLM's target: logit E[P(convert) | B] − logit E[P(convert) | A], averaging
    over users u ~ N(0, σ_user²) (Gauss–Hermite quadrature)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(n_nodes)
    weights = weights / weights.sum()

    def mean_probability(eta):
        return float(np.sum(weights / (1.0 + np.exp(-(eta + SIGMA_USER * nodes)))))

    def logit(p):
        return np.log(p / (1.0 - p))

    return float(logit(mean_probability(INTERCEPT + TREATMENT_EFFECT))
                 - logit(mean_probability(INTERCEPT)))


def _row(name: str, estimate: float, se: float, p_value: float) -> dict:
    q = stats.norm.ppf(0.975)
    return {"model": name, "estimate": estimate, "std_error": se, "p_value": p_value,
            "ci_low": estimate - q * se, "ci_high": estimate + q * se}


def compare_fits(sessions: pd.DataFrame) -> pd.DataFrame:
    """Treatment effect, SE, p-value and 95% Wald interval from the GLM and the GLMM."""
    glm = glmmjax.glm("converted ~ group", sessions, family="binomial")
    glmm = glmmjax.glmer("converted ~ group + (1 | user)", sessions, family="binomial")
    glm_table = glm.coef_table()
    glmm_table = glmm.coef_table()
    rows = [
        _row("GLM (sessions independent)", glm_table.loc[TERM, "Estimate"],
             glm_table.loc[TERM, "Std. Error"], glm_table.loc[TERM, "Pr(>|z|)"]),
        _row("GLMM (random intercept per user)", glmm_table.loc[TERM, "Estimate"],
             glmm_table.loc[TERM, "Std. Error"], glmm_table.loc[TERM, "Pr(>|z|)"]),
    ]
    table = pd.DataFrame(rows).set_index("model")
    table.attrs["sigma_user"] = float(glmm.varcorr["sdcor"].iloc[0])
    table.attrs["glmm_converged"] = bool(glmm.converged)
    return table


def plot_estimates(table: pd.DataFrame, out) -> pathlib.Path | None:
    """Estimates with 95% intervals, the true effect and zero; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.0))
    y = np.arange(len(table))[::-1]
    ax.errorbar(table["estimate"], y,
                xerr=[table["estimate"] - table["ci_low"], table["ci_high"] - table["estimate"]],
                fmt="o", capsize=6, color="tab:blue")
    ax.axvline(TREATMENT_EFFECT, color="tab:green", ls="--",
               label=f"true user-level effect ({TREATMENT_EFFECT}): GLMM's target")
    averaged = population_averaged_effect()
    ax.axvline(averaged, color="tab:orange", ls=":",
               label=f"true population-averaged effect ({averaged:.3f}): GLM's target")
    ax.axvline(0.0, color="grey", lw=0.8)
    ax.set_yticks(y, table.index)
    ax.set_ylim(-0.7, len(table) - 0.3)
    ax.set_xlabel("treatment effect B vs A (log-odds), 95% Wald interval")
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.35), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return pathlib.Path(out)


def main(n_users: int = 4000, out: str | pathlib.Path | None = None, seed: int = 7,
         verbose: bool = True) -> pd.DataFrame:
    """Simulate the experiment, fit both models, print and plot the comparison.

    Returns:
        DataFrame indexed by model with estimate, std_error, p_value, ci_low, ci_high;
        ``attrs`` holds the plot path (None without matplotlib), the number of sessions,
        the estimated σ_user and the SE ratio GLMM / GLM.
    """
    sessions = simulate_sessions(n_users, seed)
    table = compare_fits(sessions)
    if out is None:
        out = pathlib.Path(tempfile.gettempdir()) / "ab_test_estimates.png"
    plot_path = plot_estimates(table, out)
    se = table["std_error"]
    table.attrs.update(plot_path=plot_path, n_sessions=len(sessions),
                       se_ratio=float(se.iloc[1] / se.iloc[0]))
    if verbose:
        rates = sessions.groupby("group", observed=True)["converted"].mean()
        print(f"{n_users} users, {len(sessions)} sessions; conversion rate per session: "
              f"A {rates['A']:.3f}, B {rates['B']:.3f}")
        print(f"Treatment effect B vs A on the log-odds scale (true user-level effect "
              f"{TREATMENT_EFFECT}; σ_user estimated {table.attrs['sigma_user']:.3f}, "
              f"true {SIGMA_USER}):")
        print(table.to_string(float_format=lambda v: f"{v:.4g}"))
        print(f"(The GLM estimates the population-averaged effect, "
              f"{population_averaged_effect():.3f} here, not the user-level one.)")
        print(f"The GLMM's standard error is {table.attrs['se_ratio']:.2f}x the GLM's: "
              "treating sessions as independent understates the uncertainty.")
        print(f"Plot: {plot_path}" if plot_path else "Plot skipped (matplotlib not installed)")
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-users", type=int, default=4000, help="number of users")
    parser.add_argument("--out", default=None, help="where to save the plot (PNG)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    main(n_users=args.n_users, out=args.out, seed=args.seed)
