"""Parametric bootstrap of a fitted LMM/GLMM, riding on the batched fitting machinery.

Each replicate simulates a new response from the fitted model (new random effects
drawn from their estimated distribution, as lme4's ``bootMer(use.u = FALSE)``), and
all replicates are refitted at once by :func:`glmmjax.fit_many`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._batching.fit_many import BatchResult, fit_many


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class BootstrapResult:
    """Bootstrap replicates of a fit's parameters.

    Attributes:
        replicates: one row per replicate: fixed effects, ``sigma`` (LMMs) or the
            dispersion, and ``sd_<coef>|<group>`` / ``cor_<a>.<b>|<group>``.
        original: the same statistics for the original fit.
        batch: the :class:`BatchResult` of the refits (convergence per replicate).
    """

    replicates: pd.DataFrame
    original: pd.Series
    batch: BatchResult

    @property
    def n_failed(self) -> int:
        return int((~self.batch.converged).sum())

    def __repr__(self) -> str:
        # Short on purpose: `replicates` has one row per refit.
        from .._display import plural, short_repr

        n = len(self.replicates)
        return short_repr("BootstrapResult", [
            ("replicates", f"{n:,} ({plural(self.n_failed, 'refit')} not converged)"
             if self.n_failed else f"{n:,}, all converged"),
            ("statistics", ", ".join(map(str, self.replicates.columns))),
            ("methods", "summary(), confint(level=0.95)"),
        ])

    def _repr_html_(self) -> str:
        from .._display import html_summary

        return html_summary("BootstrapResult", repr(self)) + self.summary().to_html(
            float_format=lambda v: f"{v:.5g}")

    def summary(self) -> pd.DataFrame:
        """Original value, bootstrap mean, SD and bias of every statistic."""
        ok = self.replicates[self.batch.converged]
        return pd.DataFrame({
            "original": self.original,
            "mean": ok.mean(),
            "sd": ok.std(ddof=1),
            "bias": ok.mean() - self.original,
        })

    def confint(self, level: float = 0.95) -> pd.DataFrame:
        """Percentile intervals (quantile type 7, as R's default) over converged refits."""
        ok = self.replicates[self.batch.converged]
        alpha = (1 - level) / 2
        return pd.DataFrame({
            f"{100 * alpha:g} %": ok.quantile(alpha),
            f"{100 * (1 - alpha):g} %": ok.quantile(1 - alpha),
        })


def simulate_responses(result, n: int, seed: int) -> np.ndarray:
    """(n_obs, n) responses simulated from ``result`` with new random effects."""
    rng = np.random.default_rng(seed)
    design = result.design
    eta = design.X @ result.beta + design.offset
    eta = np.repeat(eta[:, None], n, axis=1)
    family = getattr(result, "family", None)
    scale = result.sigma if family is None else 1.0
    for term, cov in zip(design.terms, _term_covariances(result)):
        chol = np.linalg.cholesky(cov + 1e-300 * np.eye(cov.shape[0])) if np.any(cov) else np.zeros_like(cov)
        draws = rng.standard_normal((n, term.n_levels, term.size)) @ chol.T * scale
        eta += np.einsum("is,kis->ik", term.z, draws[:, term.refs, :])
    if family is None:
        noise = rng.standard_normal(eta.shape) * result.sigma / np.sqrt(design.weights)[:, None]
        return eta + noise
    with jax.enable_x64(True):
        mu = family.link.inverse(jnp.asarray(eta))
        disp = None if result.dispersion is None else jnp.asarray(result.dispersion)
        key = jax.random.PRNGKey(seed)
        weights = jnp.asarray(result.prior_weights)[:, None]
        return np.asarray(family.simulate(key, mu, weights, disp))


def _term_covariances(result) -> list[np.ndarray]:
    """Λ_tΛ_t' per term (relative to σ for LMMs)."""
    from .._model.cov_structures import term_structures
    from .._model.covariance import split_theta

    structures = term_structures(result.design.terms)
    factors = [cov.factor(np.asarray(part, dtype=np.float64), np) for cov, part in
               zip(structures, split_theta(result.theta_values, structures))]
    return [f @ f.T for f in factors]


def bootstrap(result, n: int = 1000, seed: int = 0, *, chunk_size=None, progress=None,
              precision: str = "float64") -> BootstrapResult:
    """Parametric bootstrap: simulate ``n`` responses, refit them all in one batch."""
    if not isinstance(n, (int, np.integer)) or n < 2:
        from .._display import show
        raise ValueError(f"n must be an integer >= 2, got {show(n)}")
    design = result.design
    if getattr(result, "engine", None) == "sparse":  # a pedigree or sparse K, refitted sparsely
        from .sparse_bootstrap import sparse_bootstrap

        return sparse_bootstrap(result, int(n), seed, progress=progress)
    Y = simulate_responses(result, int(n), seed)
    data = design_frame(result)
    family = getattr(result, "family", None)
    reml = getattr(result, "reml", True)
    formula = "~" + design.formula.text.split("~", 1)[1]
    batch = fit_many(formula, data, Y, family=family, reml=reml,
                     n_agq=getattr(result, "n_agq", 1), weights=refit_weights(result),
                     offset=design.offset_argument, chunk_size=chunk_size, progress=progress,
                     precision=precision,
                     # Replicates need estimates only: no per-model df to compute.
                     ddf=None)
    replicates = batch.fixef.reset_index(drop=True).copy()
    stat_cols = [c for c in batch.models.columns if c.startswith(("sd_", "cor_"))]
    if family is None:
        replicates["sigma"] = batch.models["sigma"].to_numpy()
    elif "dispersion" in batch.models:
        replicates["dispersion"] = batch.models["dispersion"].to_numpy()
    for c in stat_cols:
        replicates[c] = batch.models[c].to_numpy()
    original = _original_statistics(result, list(replicates.columns))
    return BootstrapResult(replicates=replicates, original=original, batch=batch)


def refit_weights(result) -> np.ndarray | None:
    """The prior weights a replicate is refitted with (None: all one).

    A GLMM's are its prior weights after the response was read: for
    ``cbind(successes, failures)`` the trials (times any weights), since the simulated
    responses are proportions of them; the formula's own offset terms and the
    ``offset=`` argument are rebuilt by ``fit_many`` from the same data.
    """
    if getattr(result, "family", None) is None:
        weights = np.asarray(result.design.weights, dtype=float)
    else:
        weights = np.asarray(result.prior_weights, dtype=float)
    return None if np.all(weights == 1) else weights


def design_frame(result) -> pd.DataFrame:
    """The fitting data as a frame ``fit_many`` can rebuild the same design from."""
    data = result.design.source_data
    if data is None:
        raise ValueError("this result does not keep its data; refit it to bootstrap")
    return data.loc[result.design.rows]


def _original_statistics(result, columns) -> pd.Series:
    values = fit_statistics(result)
    return pd.Series({c: values.get(c, np.nan) for c in columns})


def fit_statistics(result) -> dict:
    """A fit's fixed effects, σ or dispersion, SDs and correlations named as
    :func:`glmmjax.fit_many`'s columns (``sd_<coef>|<group>``, ``cor_<a>.<b>|<group>``)."""
    values = dict(result.fixef)
    if getattr(result, "family", None) is None:
        values["sigma"] = result.sigma
    elif getattr(result, "dispersion", None) is not None:
        values["dispersion"] = result.dispersion
    vc = result.varcorr
    labels = {label: t for label, t in zip(result._group_labels(), result.design.terms)}
    for _, row in vc.iterrows():
        if row["group"] == "Residual":
            continue
        group = labels[row["group"]].group
        if row["var2"] is None or (isinstance(row["var2"], float) and np.isnan(row["var2"])):
            values[f"sd_{row['var1']}|{group}"] = row["sdcor"]
        else:
            values[f"cor_{row['var2']}.{row['var1']}|{group}"] = row["sdcor"]
    return values
