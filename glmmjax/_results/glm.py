"""The result of ``glmmjax.glm``: estimates, tests, intervals, predictions, summary.

Everything here is numpy/pandas on arrays that the fit already computed; only
``predict`` on new data rebuilds a model matrix. Names follow the LMM result
(``fixef``, ``fixef_se``, ``vcov``, ``coef_table()``, ``summary()``) so a user moves
between ``lmer``-style and ``glm`` results without relearning them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._display import (
    check_names,
    format_column,
    format_table,
    html_summary,
    plural,
    short_repr,
    show,
    with_r_aliases,
)
from .._engines.seam import GLMFit
from .._families import math as fm
from .._families import math_tmb as tmb_math
from .._families.base import Family
from .._families.distributions import norm_ppf, norm_sf, t_ppf, t_sf
from .._lazyjax import jax, jnp
from .._model.design import Design, new_data_design
from .._precision import with_x64

__all__ = ["GLMResult"]


class GLMResult:
    """A fitted generalized linear model.

    Attributes:
        fixef (alias ``coef``): β̂ as a pandas Series by coefficient name (NaN for
            aliased columns).
        fixef_se: standard errors; ``statistic`` (z, or t where the dispersion is
            estimated from Pearson residuals), ``pvalues``.
        vcov: Var(β̂) as a DataFrame (estimable coefficients only).
        deviance: the residual deviance (also ``null_deviance``, ``df_residual``,
            ``df_null``, ``dispersion``, ``loglik``, ``aic``, ``bic``, ``nobs``,
            ``n_dropped``, ``converged``, ``iterations``, ``family``).
        success_level: the level of a categorical response counted as success, else None.
        separated: names of coefficients that diverge because of separation.
        extra_params: shapes estimated with the dispersion, by name (``df`` of
            ``t_family``, ``power`` of ``tweedie``, ``lower_cutpoint`` and
            ``upper_cutpoint`` of ``ordbeta``); empty for other families.

    Example:
        >>> import glmmjax
        >>> fit = glmmjax.glm("Reaction ~ Days", glmmjax.datasets.load("sleepstudy"))
        >>> print(round(float(fit.fixef["Days"]), 4))
        10.4673
    """

    def __init__(self, *, fit: GLMFit, family: Family, design: Design, y, weights, aliased,
                 null_deviance: float, has_intercept: bool, success_level, separated,
                 formula: str, response_name: str, extra_params: dict | None = None):
        self._fit = fit
        self.family = family
        self._design = design
        self._y = np.asarray(y)
        self._weights = np.asarray(weights)
        self._aliased = np.asarray(aliased)
        self.formula = formula
        self.response_name = response_name
        self.success_level = success_level
        # Shapes estimated with the dispersion (Student-t's df, Tweedie's power,
        # ordered beta's cutpoints), by name; the family carries them fixed.
        self.extra_params = dict(extra_params or {})
        self.separated = tuple(separated)
        names = list(design.fixef_names)
        self._names = [n for n, a in zip(names, aliased) if not a]
        coef = np.full(len(names), np.nan)
        se = np.full(len(names), np.nan)
        coef[~self._aliased] = fit.coef
        se[~self._aliased] = np.sqrt(np.diag(fit.vcov))
        # R's names (`(Intercept)`, `period2`) are accepted as aliases on lookup.
        self.fixef = with_r_aliases(pd.Series(coef, index=names, name="Estimate"))
        self.fixef_se = with_r_aliases(pd.Series(se, index=names, name="Std. Error"))
        self.vcov = with_r_aliases(pd.DataFrame(np.asarray(fit.vcov), index=self._names,
                                         columns=self._names))
        self.nobs = int(np.sum(self._weights > 0))
        self.n_dropped = int(design.n_dropped)
        self.rank = int(np.sum(~self._aliased))
        # R's glm and glm.nb: n − rank; glmmTMB (whose convention the beta family
        # follows, with joint_vcov) also subtracts the dispersion parameter.
        joint = family.dispersion_method == "ml" and family.joint_vcov
        n_extra = len(self.extra_params)
        self.df_residual = self.nobs - self.rank - int(joint) - n_extra
        self.df_null = self.nobs - int(has_intercept)
        self.deviance = float(fit.deviance)
        self.null_deviance = float(null_deviance)
        self.dispersion = float(fit.dispersion)
        self.dispersion_se = float(fit.dispersion_se)
        self.loglik = float(fit.loglik)
        method = family.dispersion_method
        self.df = self.rank + int(method in ("pearson", "ml")) + n_extra
        self.aic = -2.0 * self.loglik + 2.0 * self.df
        self.bic = -2.0 * self.loglik + np.log(self.nobs) * self.df
        self.converged = bool(fit.converged)
        self.iterations = int(fit.iterations)
        self.uses_t = method == "pearson"
        stat = self.fixef / self.fixef_se
        self.statistic = stat.rename("t value" if self.uses_t else "z value")
        if self.uses_t:
            p = 2.0 * t_sf(np.abs(stat.to_numpy()), self.df_residual)
        else:
            p = 2.0 * norm_sf(np.abs(stat.to_numpy()))
        self.pvalues = with_r_aliases(pd.Series(p, index=names,
                                         name="Pr(>|t|)" if self.uses_t else "Pr(>|z|)"))

    # ---- aliases and fitted quantities ----------------------------------------------
    @property
    def coef(self) -> pd.Series:
        """Alias of ``fixef``."""
        return self.fixef

    @property
    def fitted_values(self) -> pd.Series:
        """μ̂ = E[y] for the rows used in fitting (indexed by the data's row labels); for
        zero-truncated families μ/P(y > 0), not the mean parameter μ (glmmTMB's
        response scale)."""
        return pd.Series(self._response_mean(), index=self._design.rows)

    @with_x64
    def _response_mean(self) -> np.ndarray:
        mu = np.asarray(self._fit.mu)
        if not getattr(self.family, "truncated", False):
            return mu
        if tmb_math.truncated_supported(self.family):  # numpy: nothing to import or trace
            return tmb_math.truncated_mean(self.family, np, mu, self._family_dispersion())
        return np.asarray(self.family.response_mean(mu, self._family_dispersion()))

    @property
    def linear_predictor(self) -> pd.Series:
        return pd.Series(np.asarray(self._fit.eta), index=self._design.rows)

    @property
    def response(self) -> pd.Series:
        """y as the family sees it (proportions for binomial models)."""
        return pd.Series(self._y, index=self._design.rows)

    @property
    def prior_weights(self) -> pd.Series:
        return pd.Series(self._weights, index=self._design.rows)

    def logLik(self) -> float:  # noqa: N802 (R's name)
        return self.loglik

    def fitted(self, type: str = "response") -> pd.Series:  # noqa: A002 (R's argument)
        """Fitted values on the "response" (μ̂) or "link" (η̂) scale."""
        if type not in ("response", "link"):
            raise ValueError(f"type must be 'response' or 'link', got {type!r}")
        return self.fitted_values if type == "response" else self.linear_predictor

    # ---- tables -----------------------------------------------------------------------
    def _quantile(self, level: float) -> float:
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {show(level)}")
        upper = 0.5 + level / 2
        if self.uses_t:
            return float(t_ppf(upper, self.df_residual))
        return float(norm_ppf(upper))

    def conf_int(self, level: float = 0.95, names: str = "glmmjax") -> pd.DataFrame:
        """Wald intervals β̂ ± q·SE (q from t with df_residual where the dispersion is a
        Pearson estimate, else normal). ``names="r"`` names the rows as R does."""
        q = self._quantile(level)
        lo, hi = (1 - level) / 2, (1 + level) / 2
        return with_r_aliases(pd.DataFrame(
            {f"{100 * lo:.3g} %": self.fixef - q * self.fixef_se,
             f"{100 * hi:.3g} %": self.fixef + q * self.fixef_se}
        ), check_names(names))

    def coef_table(self, names: str = "glmmjax") -> pd.DataFrame:
        """Estimate, Std. Error, z (or t) value and p-value per coefficient
        (``names="r"``: rows named as R names them, ``(Intercept)``, ``period2``)."""
        table = pd.concat([pd.Series(self.fixef), pd.Series(self.fixef_se),
                           pd.Series(self.statistic), pd.Series(self.pvalues)], axis=1)
        return with_r_aliases(table, check_names(names))

    def exp_coef_table(self, level: float = 0.95) -> pd.DataFrame:
        """exp(β̂) with exponentiated Wald intervals: odds ratios for logit links, rate
        ratios for log links."""
        ci = np.exp(self.conf_int(level))
        table = pd.concat([np.exp(self.fixef).rename("exp(Estimate)"), ci], axis=1)
        return table

    # ---- residuals and prediction ---------------------------------------------------
    @with_x64
    def residuals(self, type: str = "deviance") -> pd.Series:  # noqa: A002 (R's argument)
        """Residuals of ``type`` "deviance" (default), "pearson", "response", "working"."""
        y, w = self._y, self._weights
        mu, eta = np.asarray(self._fit.mu), np.asarray(self._fit.eta)
        disp = self._family_dispersion()
        mean = self._response_mean()  # E[y]; μ but for zero-truncated families
        if type == "response":
            values = y - mean
        elif type == "pearson":
            var = fm.variance(self.family, np, mu, disp)  # numpy for the built-in ones
            if var is None:
                var = np.asarray(self.family.variance(mu, disp))
            values = (y - mean) * np.sqrt(w) / np.sqrt(var)
        elif type in ("deviance", "working"):
            from .._engines.host import glm as _glm_host

            values = _glm_host.numpy_residuals(self.family, type, y, mu, eta, w, disp)
            if values is None:  # families and links only JAX knows
                values = np.asarray(
                    self.family.deviance_residuals(y, mu, w, disp) if type == "deviance"
                    else (y - mu) / self.family.link.mu_eta(eta))
        else:
            raise ValueError(
                f"type must be 'deviance', 'pearson', 'response' or 'working', got {type!r}"
            )
        return pd.Series(values, index=self._design.rows, name=f"{type} residuals")

    def _family_dispersion(self):
        return self.dispersion if self.family.dispersion_method in ("ml", "fixed") else 1.0

    @with_x64
    def predict(self, newdata: pd.DataFrame | None = None, type: str = "link",  # noqa: A002
                se_fit: bool = False, offset=None):
        """Predictions on the link (η) or response (μ) scale.

        Args:
            newdata: DataFrame with the predictor columns; None predicts the fitted rows.
            type: "link" or "response".
            se_fit: also return standard errors: √(x'Vx) on the link scale, times
                |dμ/dη| on the response scale (the delta method, as R).
            offset: for ``newdata``, an offset to add besides ``offset(...)`` terms of
                the formula (array or column name).

        Returns:
            A Series of predictions indexed like the rows, or with ``se_fit`` a DataFrame
            with columns ``fit`` and ``se_fit``.
        """
        if type not in ("link", "response"):
            raise ValueError(f"type must be 'link' or 'response', got {type!r}")
        if newdata is None:
            X = self._design.X[:, ~self._aliased]
            eta = np.asarray(self._fit.eta)
            index = self._design.rows
        else:
            X_full, formula_offset, _ = new_data_design(self._design, newdata,
                                                        allow_new_levels=True)
            X = X_full[:, ~self._aliased]
            eta = X @ np.asarray(self._fit.coef) + formula_offset
            if offset is not None:
                extra = newdata[offset] if isinstance(offset, str) else offset
                eta = eta + np.asarray(extra, dtype=float)
            index = newdata.index
        family = self.family
        truncated = getattr(family, "truncated", False)
        disp = self._family_dispersion()

        def response(e):  # E[y] at η (μ/P(y > 0) for zero-truncated families)
            mu = family.link.inverse(e)
            return family.response_mean(mu, disp) if truncated else mu

        # Built-in links and families in numpy (no JAX to import or trace), others
        # through JAX.
        closed_form = fm.link_supported(family.link) and (
            not truncated or tmb_math.truncated_supported(family))
        if type == "link":
            fit = eta
        elif closed_form:
            fit = fm.inverse_link(family.link, np, np.asarray(eta, dtype=np.float64))
            if truncated:
                fit = tmb_math.truncated_mean(family, np, fit, disp)
        else:
            fit = np.asarray(response(jnp.asarray(eta)))
        if not se_fit:
            return pd.Series(fit, index=index, name=type)
        se = np.sqrt(np.einsum("ij,jk,ik->i", X, np.asarray(self._fit.vcov), X))
        if type == "response":
            if truncated:
                slope = jax.vmap(jax.grad(response))(jnp.asarray(eta, dtype=float))
            elif closed_form:  # (not truncated)
                slope = fm.mean_derivatives(family.link, np, np.asarray(eta, dtype=np.float64))[1]
            else:
                slope = self.family.link.mu_eta(eta)
            se = se * np.abs(np.asarray(slope))
        return pd.DataFrame({"fit": fit, "se_fit": se}, index=index)

    # ---- printing -----------------------------------------------------------------------
    def summary(self, names: str = "glmmjax") -> str:
        """A text summary laid out like R's ``summary.glm`` (``names="r"``: coefficients
        named as R names them)."""
        fam = self.family
        lines = ["", "Call:", f"glm(formula = {self.formula}, family = {fam})", ""]
        if self.success_level is not None:
            lines += [f"Response: {self.response_name} == {self.success_level!r} counts as "
                      "success", ""]
        lines.append("Coefficients:")
        # Each column formatted as a whole; p-values as R's format.pval.
        lines += [format_table(self.coef_table(names=names), stars=True), ""]
        method = fam.dispersion_method
        if method == "none":
            lines.append(f"(Dispersion parameter for {fam.name} family taken to be 1)")
        elif method == "pearson":
            lines.append(
                f"(Dispersion parameter for {fam.name} family taken to be {self.dispersion:.6g})"
            )
        else:
            label = "estimated" if method == "ml" else "fixed at"
            extra = (f" (std. error {self.dispersion_se:.4g})"
                     if np.isfinite(self.dispersion_se) else "")
            lines.append(f"({fam.dispersion_name} of the {fam.name} family {label} "
                         f"{self.dispersion:.6g}{extra})")
        for name, value in self.extra_params.items():
            lines.append(f"({name} of the {fam.name} family estimated {value:.6g})")
        # R formats the two deviances (and the two df) together: one number of decimals.
        null_dev, dev = format_column([self.null_deviance, self.deviance], digits=5)
        width = max(len(null_dev), len(dev))
        df_width = max(len(str(self.df_null)), len(str(self.df_residual)))
        lines += [
            "",
            f"    Null deviance: {null_dev:>{width}}  on {self.df_null:>{df_width}}  "
            "degrees of freedom",
            f"Residual deviance: {dev:>{width}}  on {self.df_residual:>{df_width}}  "
            "degrees of freedom",
        ]
        if self.n_dropped:
            lines.append(f"  ({plural(self.n_dropped, 'observation')} deleted due to "
                         "missingness)")
        lines.append(f"AIC: {self.aic:.5g}   BIC: {self.bic:.5g}   logLik: {self.loglik:.5g} "
                     f"(df = {self.df})")
        lines += ["", f"Number of iterations: {self.iterations}"
                  + ("" if self.converged else "  (NOT CONVERGED)")]
        if self.separated:
            lines.append(f"Warning: separation; infinite estimates for {list(self.separated)}")
        return "\n".join(lines) + "\n"

    def plot_effect(self, term: str, ax=None, level: float = 0.95, n_points: int = 50):
        """Predicted means across ``term`` (other predictors at their mean or first
        level) with ``level`` Wald intervals (needs matplotlib)."""
        from .plots import plot_effect

        return plot_effect(self, term, ax=ax, level=level, n_points=n_points)

    def print_summary(self) -> None:
        print(self.summary())

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        status = "yes" if self.converged else "NO (see summary())"
        if self.separated:
            status += f"; separation: infinite estimates for {', '.join(self.separated)}"
        return short_repr("GLMResult", [
            ("formula", self.formula),
            ("family", str(self.family)),
            ("nobs", self.nobs if not self.n_dropped
             else f"{self.nobs} ({plural(self.n_dropped, 'row')} with missing values dropped)"),
            ("criterion", f"deviance {self.deviance:.6g}, AIC {self.aic:.6g}"),
            ("converged", f"{status} ({plural(self.iterations, 'iteration')})"),
        ])

    def _repr_html_(self) -> str:
        return html_summary("GLMResult", self.summary())
