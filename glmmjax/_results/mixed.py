"""Results of mixed-model fits: what lme4 users expect around a fit.

:class:`MixedModelResult` holds plain numpy/pandas values (no JAX arrays), so it is
cheap to keep, pickle and inspect. LMM and GLMM results share it; the family decides
the residual scale and the response transformation.
"""

from __future__ import annotations

import dataclasses
import math
from functools import cached_property

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
from .._families.distributions import norm_sf
from .._model.cov_structures import term_structures
from .._model.covariance import (
    numpy_factors,
    split_theta,
    structure_summaries,
    theta_names,
    varcorr_frame,
)
from .._model.design import Design, new_data_design
from .._model.relmat import is_relatedness
from .._stacklevel import external_stacklevel


class SingularFitWarning(UserWarning):
    """A fit with a variance component on the boundary (lme4's "boundary (singular)
    fit"); ``result.singular_message()`` says which and what to do."""


class ConvergenceWarning(UserWarning):
    """A fit whose optimizer stopped before reaching a minimum (iteration cap, failed
    line search, a non-finite objective, a Hessian that is not positive definite, or
    estimates that are infinite): its numbers are not maximum-likelihood estimates.
    ``result.convergence`` says why."""


def warn_if_not_converged(result, what: str) -> None:
    """Warn with :class:`ConvergenceWarning` naming the cause and the final gradient."""
    if result.converged:
        return
    import warnings

    c = result.convergence
    warnings.warn(
        f"{what} did not converge: {c.message} (max|gradient| = {c.grad_max:.2e} after "
        f"{plural(c.iterations, 'iteration')}); the estimates are not a minimum of the criterion. "
        f"{c.advice}",
        ConvergenceWarning,
        stacklevel=external_stacklevel(),
    )


def warn_if_singular(result, stacklevel: int | None = None) -> None:
    """Warn, as lme4 does, when a fit is singular (at the user's line unless
    ``stacklevel`` says otherwise)."""
    if result.is_singular:
        import warnings

        warnings.warn(
            f"boundary (singular) fit: {result.singular_message()}",
            SingularFitWarning,
            stacklevel=external_stacklevel() if stacklevel is None else stacklevel,
        )


@dataclasses.dataclass(frozen=True)
class Convergence:
    """How the optimizer ended: ``converged`` is False whenever it did not reach a
    stationary point (and ``message`` says why)."""

    converged: bool
    message: str
    grad_max: float
    iterations: int
    n_evaluations: int
    hessian_positive_definite: bool | None = None
    advice: str = ("Check the model (scale of the predictors, separation, too many "
                   "random effects), or raise max_iter.")

    def __str__(self) -> str:
        hess = ""
        if self.hessian_positive_definite is not None:
            hess = f", Hessian {'positive definite' if self.hessian_positive_definite else 'NOT positive definite'}"
        return (
            f"{self.message} after {plural(self.iterations, 'iteration')} "
            f"({plural(self.n_evaluations, 'evaluation')}), "
            f"max|gradient| = {self.grad_max:.2e}{hess}"
        )


def add_random_effects(eta, term_parts, effects) -> np.ndarray:
    """η plus Z·b, term by term; rows of a level unseen in the fit (ref −1) get none."""
    for (refs, z), b in zip(term_parts, effects):
        b = np.asarray(b)
        known = refs >= 0
        contribution = np.zeros(len(refs))
        contribution[known] = np.sum(z[known] * b[refs[known]], axis=1)
        eta = eta + contribution
    return eta


def _format_table(frame: pd.DataFrame) -> str:
    # Each column formatted as a whole (R's format), p-values as R's format.pval.
    return format_table(frame, stars=True)


@dataclasses.dataclass(frozen=True, eq=False)
class MixedModelResult:
    """A fitted (generalized) linear mixed model.

    Attributes are numpy/pandas; see the properties for lme4-style accessors
    (``fixef``, ``vcov``, ``varcorr``, ``ranef``, ``loglik``, ``aic``, ...).
    """

    design: Design
    method: str  # "REML", "ML", "Laplace", "AGQ(25)"
    family_name: str
    link_name: str
    theta_values: np.ndarray
    beta: np.ndarray
    beta_cov: np.ndarray
    scale: float | None  # σ for Gaussian LMMs, dispersion scale for families with one
    effects: tuple  # per term, (m_t, S_t) conditional modes b on the response's scale
    effect_cov: object  # callable -> per term (m_t, S_t, S_t) conditional covariances
    criterion: float  # −2 log-likelihood (REML criterion for REML fits)
    n_params: int
    convergence: Convergence
    singular: bool
    extra_params: dict = dataclasses.field(default_factory=dict)
    linear_predictor_fn: object = None  # eta -> response mean, None for identity
    engine: str | None = None  # "host" or "jax": the engine that fitted the model
    opt_summary: object = None  # glmmjax._engines.seam.OptSummary: how the optimizer ran

    # -- basic accessors ---------------------------------------------------------------
    @property
    def formula(self) -> str:
        return self.design.formula.text

    @property
    def nobs(self) -> int:
        return self.design.nobs

    @property
    def n_dropped(self) -> int:
        """Rows dropped for missing values before fitting."""
        return self.design.n_dropped

    @property
    def converged(self) -> bool:
        return self.convergence.converged

    @property
    def is_singular(self) -> bool:
        return self.singular

    @property
    def fixef(self) -> pd.Series:
        """β̂ by coefficient name; R's names work too (``fit.fixef["(Intercept)"]``)."""
        return with_r_aliases(pd.Series(self.beta, index=list(self.design.fixef_names), name="estimate"))

    @property
    def coef(self) -> pd.Series:
        return self.fixef

    @property
    def dropped_fixef(self) -> tuple[str, ...]:
        """Fixed-effect columns dropped before fitting because they were linear
        combinations of earlier ones (lme4's rank-deficiency message); empty if none."""
        return tuple(self.design.dropped_fixef)

    @property
    def fixef_with_dropped(self) -> pd.Series:
        """β̂ over every column of the model matrix, NaN for the dropped (aliased) ones:
        lme4's ``fixef(fit, add.dropped = TRUE)``. :attr:`fixef` omits them, as lme4's
        ``fixef(fit)``; :attr:`vcov` covers the kept columns."""
        from .._model.rank import all_fixef_names

        return with_r_aliases(self.fixef.reindex(list(all_fixef_names(self.design))))

    @property
    def fixef_se(self) -> pd.Series:
        se = np.sqrt(np.diag(self.beta_cov))
        return with_r_aliases(pd.Series(se, index=list(self.design.fixef_names), name="std_error"))

    @property
    def vcov(self) -> pd.DataFrame:
        names = list(self.design.fixef_names)
        return with_r_aliases(pd.DataFrame(self.beta_cov, index=names, columns=names))

    @property
    def theta(self) -> pd.Series:
        groups = [t.group for t in self.design.terms]
        coefs = [t.coef_names for t in self.design.terms]
        return pd.Series(self.theta_values,
                         index=theta_names(groups, coefs, term_structures(self.design.terms)),
                         name="theta")

    @property
    def sigma(self) -> float:
        """Residual standard deviation (1.0 for families without a scale, as lme4)."""
        return 1.0 if self.scale is None else self.scale

    @property
    def varcorr(self) -> pd.DataFrame:
        """Variances, covariances, SDs and correlations as ``as.data.frame(VarCorr())``."""
        return varcorr_frame(
            self.theta_values,
            term_structures(self.design.terms),
            self._group_labels(),
            [t.coef_names for t in self.design.terms],
            self.scale,
        )

    @property
    def covariance_structures(self) -> dict[str, str]:
        """The structured terms' covariance structures and correlation parameters, per
        group label, e.g. ``{"Subject": "ar1: rho 0.64"}`` (glmmTMB prints ``0.64 (ar1)``
        in ``VarCorr``); unstructured terms are not listed."""
        return structure_summaries(self.theta_values, term_structures(self.design.terms),
                                   self._group_labels())

    def _structure_correlation(self, label: str) -> float | None:
        """The correlation parameter ρ of the structured term with this label."""
        structures = term_structures(self.design.terms)
        for lab, cov, part in zip(self._group_labels(), structures,
                                  split_theta(self.theta_values, structures)):
            if lab == label and cov.name != "us":
                values = cov.natural(part, 1.0)[1]
                kinds = cov.natural(part, 1.0)[2]
                return values[-1] if kinds[-1] == "cor" else None
        return None

    def _group_labels(self) -> list[str]:
        # lme4 labels repeated grouping factors (from `||`) as g, g.1, g.2 ...
        seen: dict[str, int] = {}
        labels = []
        for term in self.design.terms:
            count = seen.get(term.group, 0)
            labels.append(term.group if count == 0 else f"{term.group}.{count}")
            seen[term.group] = count + 1
        return labels

    @property
    def ngroups(self) -> dict[str, int]:
        """Number of levels of each grouping factor (each factor once, as lme4's ngrps)."""
        # A known-relatedness term holds its levels as the effects of one group.
        return {t.group: t.size if is_relatedness(t) else t.n_levels
                for t in self.design.terms}

    @property
    def ranef(self) -> dict[str, pd.DataFrame]:
        """Conditional modes of the random effects, one DataFrame per term."""
        return {label: _effects_frame(t, np.asarray(b))
                for label, t, b in zip(self._group_labels(), self.design.terms, self.effects)}

    @cached_property
    def ranef_condvar(self) -> dict[str, np.ndarray]:
        """Conditional covariance of each level's random effects, (m_t, S_t, S_t) per term."""
        return dict(zip(self._group_labels(), self.effect_cov()))

    @property
    def ranef_condsd(self) -> dict[str, pd.DataFrame]:
        """Conditional standard deviations of the random effects (lme4's condVar)."""
        out = {}
        for (label, cov), t in zip(self.ranef_condvar.items(), self.design.terms):
            sd = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
            out[label] = _effects_frame(t, sd)
        return out

    # -- likelihood summaries -------------------------------------------------------------
    @cached_property
    def model(self):
        """The fitted model as a :class:`~glmmjax.MixedModel` (built once, from this fit's
        design): the pure JAX objective behind the fit, for JAX programs.
        ``fit.model.log_likelihood(fit.params)`` is :attr:`loglik` (Laplace or AGQ for
        GLMMs, the REML log-likelihood for REML fits)."""
        from .._model.model import MixedModel

        if getattr(self, "parts", None) is not None:
            raise NotImplementedError(
                "zero-inflation and dispersion models have no MixedModel counterpart yet; "
                "their objective is fit.criterion_fn (−2 log L in fit.params)")
        return MixedModel.from_design(self.design, getattr(self, "family", None),
                                      reml=bool(getattr(self, "reml", False)),
                                      n_agq=int(getattr(self, "n_agq", 1)))

    @property
    def params(self):
        """The estimates as :class:`~glmmjax.Params` for :attr:`model` (β, θ in the
        model's order, the log of the estimated dispersion: σ² for LMMs)."""
        from .._model.params import Params

        model = self.model
        if model.is_lmm:
            log_dispersion = np.array([2.0 * math.log(self.sigma)])
        elif model.family.has_dispersion and model.family.dispersion_method != "fixed":
            log_dispersion = np.array([math.log(self.dispersion)])
        else:
            log_dispersion = np.zeros(0)
        if self.extra_params:
            raise NotImplementedError(
                f"Params has no field for {sorted(self.extra_params)} (estimated shape "
                "parameters), so this fit has no MixedModel counterpart yet")
        return Params(beta=np.asarray(self.beta, dtype=float),
                      theta=np.asarray(self.theta_values, dtype=float),
                      log_dispersion=log_dispersion)

    @property
    def loglik(self) -> float:
        """Log-likelihood at the optimum (the REML log-likelihood for REML fits)."""
        return -0.5 * self.criterion

    @property
    def deviance(self) -> float:
        """−2 × log-likelihood (the REML criterion for REML fits)."""
        return self.criterion

    @property
    def df(self) -> int:
        """Number of estimated parameters (fixed effects, θ, scale)."""
        return self.n_params

    @property
    def aic(self) -> float:
        return self.criterion + 2 * self.n_params

    @property
    def bic(self) -> float:
        return self.criterion + math.log(self.nobs) * self.n_params

    # -- fitted values and prediction -----------------------------------------------------
    def _linear_predictor(self, X, offset, term_parts) -> np.ndarray:
        return add_random_effects(X @ self.beta + offset, term_parts, self.effects)

    def _to_response(self, eta):
        return eta if self.linear_predictor_fn is None else self.linear_predictor_fn(eta)

    def fitted(self, type: str = "response") -> pd.Series:
        """Fitted values including the random effects (``type="link"`` for η)."""
        parts = [(t.refs.astype(np.int64), t.z) for t in self.design.terms]
        eta = self._linear_predictor(self.design.X, self.design.offset, parts)
        values = eta if type == "link" else self._to_response(eta)
        return pd.Series(values, index=self.design.rows, name="fitted")

    def residuals(self, type: str = "response") -> pd.Series:
        """Conditional residuals: ``"response"`` (y − fitted), ``"pearson"`` (divided
        by the family's SD), ``"deviance"`` or ``"working"`` (see
        :func:`glmmjax._inference.diagnostics.residuals`)."""
        from .._inference.diagnostics import residuals

        return pd.Series(residuals(self, type), index=self.design.rows, name="residuals")

    def observed_response(self) -> np.ndarray:
        return np.asarray(self.design.response, dtype=float)

    def _pearson_sd(self):
        return self.sigma

    def predict(
        self,
        newdata: pd.DataFrame | None = None,
        *,
        include_re: bool = True,
        allow_new_levels: bool = False,
        type: str = "response",
    ) -> pd.Series:
        """Predictions for ``newdata`` (the fitting data when None).

        Args:
            include_re: add the conditional modes of the random effects (lme4's
                ``re.form=NULL``); False gives the population-level prediction
                (``re.form=NA``).
            allow_new_levels: predict levels not seen in fitting with random effects of
                zero; otherwise they raise an error naming them.
            type: ``"response"`` (mean) or ``"link"`` (linear predictor).
        """
        if type not in ("response", "link"):
            raise ValueError(f"type must be 'response' or 'link', got {type!r}")
        if newdata is None:
            X, offset = self.design.X, self.design.offset
            parts = [(t.refs.astype(np.int64), t.z) for t in self.design.terms]
            index = self.design.rows
        else:
            X, offset, parts = new_data_design(
                self.design, newdata, allow_new_levels=allow_new_levels or not include_re,
                need_groups=include_re,
            )
            index = newdata.index
        if not include_re:
            parts = [(np.full_like(refs, -1), z) for refs, z in parts]
        eta = self._linear_predictor(X, offset, parts)
        values = eta if type == "link" else self._to_response(eta)
        return pd.Series(values, index=index, name="prediction")

    def bootstrap(self, n: int = 1000, seed: int = 0, *, chunk_size=None, progress=None,
                  precision: str = "float64"):
        """Parametric bootstrap: ``n`` responses simulated from the fit (new random
        effects each time, as lme4's ``bootMer``), all refitted at once by
        :func:`glmmjax.fit_many`. Returns a :class:`~glmmjax.BootstrapResult` with
        ``replicates``, ``summary()`` and percentile ``confint()``."""
        from .._inference.bootstrap import bootstrap

        return bootstrap(self, n, seed, chunk_size=chunk_size, progress=progress,
                         precision=precision)

    # -- inference, simulation, diagnostics ------------------------------------------------
    def confint(self, method: str = "profile", level: float = 0.95, parm=None, *,
                n_boot: int = 500, seed: int | None = None,
                names: str = "glmmjax", progress: bool | None = None) -> pd.DataFrame:
        """Confidence intervals for the variance parameters and fixed effects.

        Rows are named as lme4's ``confint(oldNames = FALSE)`` with glmmjax's
        coefficient names: ``sd_Intercept|Subject``, ``cor_Days.Intercept|Subject``,
        ``sigma`` (LMMs), then the fixed effects.

        Args:
            method: ``"profile"`` (profile likelihood, as lme4: LMMs on the ML
                deviance, GLMMs on the Laplace/AGQ deviance), ``"wald"`` (β̂ ± z·SE;
                NaN for variance parameters) or ``"boot"`` (parametric bootstrap
                percentiles from ``n_boot`` refits).
            level: confidence level.
            parm: parameter names to compute (default all), or ``"beta_"`` /
                ``"theta_"`` for the fixed effects / variance parameters.
            n_boot, seed: bootstrap replicates and seed (``method="boot"``).
            names: ``"glmmjax"`` (formulaic's coefficient names; R's are accepted as
                aliases on lookup) or ``"r"`` (rows named as R: ``(Intercept)``,
                ``period2``, ``sd_(Intercept)|Subject``).
            progress: a progress bar over the parameters while profiling (None: in
                interactive sessions only).

        Returns:
            A DataFrame with columns like ``"2.5 %"`` and ``"97.5 %"``; ``attrs["note"]``
            records one-sided bounds (standard deviations at zero get lower bound 0) and
            parameters that could not be profiled.

        Example:
            >>> import glmmjax
            >>> fit = glmmjax.lmer("Reaction ~ Days + (Days | Subject)",
            ...                    glmmjax.datasets.load("sleepstudy"))
            >>> ci = fit.confint(parm=["sigma"])
            >>> [round(v, 2) for v in ci.loc["sigma"]]
            [22.9, 28.86]
        """
        from .._inference import profile as _profile

        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {show(level)}")
        check_names(names)
        key = str(method).lower()
        if key == "profile":
            table = _profile.profile_confint(self, level, parm, progress=progress)
            return with_r_aliases(table, names)
        if key == "wald":
            return with_r_aliases(_profile.wald_confint(self, level, parm), names)
        if key in ("boot", "bootstrap"):
            from .._inference.simulate import bootstrap_confint

            table = bootstrap_confint(self, level, n_boot=n_boot, seed=seed, parm=parm)
            return with_r_aliases(table, names)
        raise ValueError(f"method must be 'profile', 'wald' or 'boot', got {method!r}")

    def profile(self, parm=None, level: float = 0.99, n_points: int = 6, *,
                progress: bool | None = None) -> pd.DataFrame:
        """Profile ζ of each parameter (lme4's ``profile``), as a tidy DataFrame with
        columns ``parameter``, ``value`` and ``zeta``, from the ``level`` lower to the
        upper profile bound; see :func:`glmmjax._inference.profile.profile_frame`. Plot it with
        :meth:`plot_profile`."""
        from .._inference.profile import profile_frame

        return profile_frame(self, parm, level, n_points, progress)

    def simulate(self, n: int = 1, newdata: pd.DataFrame | None = None, *,
                 include_re: bool = True, seed: int | None = None, weights=None,
                 allow_new_levels: bool = False) -> pd.DataFrame:
        """Responses simulated from the fit, one column (``sim_1``, ...) per simulation.

        ``include_re=True`` conditions on the conditional modes (lme4's
        ``use.u = TRUE``); ``include_re=False`` draws new random effects from
        N(0, σ²ΛΛ') each time (lme4's default, ``use.u = FALSE`` / ``re.form = NA``).
        Values are on the model's y scale (binomial: proportions of the trials).
        See :func:`glmmjax._inference.simulate.simulate`.

        Example:
            >>> import glmmjax
            >>> fit = glmmjax.lmer("Reaction ~ Days + (Days | Subject)",
            ...                    glmmjax.datasets.load("sleepstudy"))
            >>> fit.simulate(3, seed=1).shape
            (180, 3)
        """
        from .._inference.simulate import simulate

        return simulate(self, n, newdata, include_re=include_re, seed=seed, weights=weights,
                        allow_new_levels=allow_new_levels)

    def refit(self, response=None, *, reml: bool | None = None) -> MixedModelResult:
        """The same model fitted again: to a new response (on the y scale, as
        :meth:`simulate` gives it) and/or, for LMMs, by ML (``reml=False``) or REML."""
        from .._inference.simulate import refit

        return refit(self, response, reml=reml)

    def scaled_residuals(self, n_sim: int = 250, seed: int | None = None, *,
                         include_re: bool = False, integer: bool | None = None):
        """Simulation-based scaled residuals (DHARMa's ``simulateResiduals``): uniform
        on (0, 1) under a correct model, for every family. The returned object has
        ``test_uniformity()``, ``test_dispersion()``, ``test_zero_inflation()`` and
        ``plot_qq()``.

        Example:
            >>> import glmmjax
            >>> fit = glmmjax.lmer("Reaction ~ Days + (Days | Subject)",
            ...                    glmmjax.datasets.load("sleepstudy"))
            >>> res = fit.scaled_residuals(n_sim=100, seed=1)
            >>> res.residuals.shape
            (180,)
        """
        from .._inference.diagnostics import scaled_residuals

        return scaled_residuals(self, n_sim, seed, include_re=include_re, integer=integer)

    def plot_residuals(self, ax=None, type: str = "pearson"):
        """Residuals against fitted values (needs matplotlib: ``glmmjax[plot]``)."""
        from .plots import plot_residuals

        return plot_residuals(self, ax=ax, type=type)

    def plot_qq(self, ax=None, type: str = "pearson"):
        """Normal QQ plot of the residuals (needs matplotlib)."""
        from .plots import plot_qq

        return plot_qq(self, ax=ax, type=type)

    def plot_ranef_qq(self, term: str | None = None, axes=None):
        """Normal QQ plots of the conditional modes (needs matplotlib)."""
        from .plots import plot_ranef_qq

        return plot_ranef_qq(self, term=term, axes=axes)

    def plot_profile(self, parm=None, level: float = 0.95, axes=None, *,
                     progress: bool | None = None):
        """Profile-likelihood plot, as lme4's ``xyplot(profile(fit))``: ζ against each
        parameter, with the ``level`` interval marked (needs matplotlib)."""
        from .plots import plot_profile

        return plot_profile(self, parm=parm, level=level, axes=axes, progress=progress)

    def plot_effect(self, term: str, ax=None, level: float = 0.95, n_points: int = 50):
        """Population-level predictions (random effects at zero) across ``term``, other
        predictors at their mean or reference level, with ``level`` Wald intervals
        (needs matplotlib)."""
        from .plots import plot_effect

        return plot_effect(self, term, ax=ax, level=level, n_points=n_points)

    def plot_caterpillar(self, term: str | None = None, level: float = 0.95, axes=None):
        """Caterpillar plot: sorted conditional modes with intervals (needs matplotlib)."""
        from .plots import plot_caterpillar

        return plot_caterpillar(self, term=term, level=level, axes=axes)

    # -- tables ---------------------------------------------------------------------------
    def _statistic_name(self) -> str:
        return "t value" if self.scale is not None else "z value"

    def coef_table(self, names: str = "glmmjax") -> pd.DataFrame:
        """Estimates, standard errors and Wald statistics (with p-values for GLMMs).

        ``names="r"`` names the rows as R does (``(Intercept)``, ``period2``); with the
        default, R's names are accepted as aliases on lookup."""
        est, se = pd.Series(self.fixef), pd.Series(self.fixef_se)
        table = pd.DataFrame({"Estimate": est, "Std. Error": se})
        stat = est / se
        table[self._statistic_name()] = stat
        if self.scale is None:
            table["Pr(>|z|)"] = 2 * norm_sf(np.abs(stat))
        return with_r_aliases(with_dropped_rows(table, self.design), names)

    def _header(self) -> str:
        return f"Mixed model fit by {self.method}"

    def summary(self, names: str = "glmmjax") -> str:
        """A text summary in the layout of lme4's ``summary(merMod)`` (``names="r"``:
        coefficients named as R names them)."""
        return self._summary(self.coef_table(names=names))

    def _summary(self, coef_table: pd.DataFrame, fixed_heading: str = "Fixed effects:") -> str:
        lines = [self._header(), f"Formula: {self.formula}"]
        if self.n_dropped:
            lines.append(f"  ({plural(self.n_dropped, 'row')} with missing values dropped)")
        lines.append("")
        if not self.converged:
            # lme4 prints "at convergence" regardless; a user must not mistake these
            # numbers for estimates.
            lines.append(f"NOT CONVERGED: {self.convergence.message}")
        if self.method == "REML":
            where = "at convergence" if self.converged else "(not converged)"
            lines.append(f"REML criterion {where}: {self.criterion:.4f}")
        else:
            lines.append(
                f"     AIC      BIC   logLik deviance\n"
                f"{self.aic:8.1f} {self.bic:8.1f} {self.loglik:8.1f} {self.criterion:8.1f}"
            )
        lines.append("")
        lines.append("Random effects:")
        lines.append(self._random_effects_table())
        groups = ", ".join(f"{k}, {v}" for k, v in self.ngroups.items())
        lines.append(f"Number of obs: {self.nobs}, groups:  {groups}")
        lines.append("")
        lines.append(fixed_heading)
        lines.append(_format_table(coef_table))
        lines.append("")
        if self.dropped_fixef:
            count = len(self.dropped_fixef)
            suffix = "" if count == 1 else "s"
            lines.append(f"fit warnings:\nfixed-effect model matrix is rank deficient so "
                         f"dropping {count} column{suffix} / coefficient{suffix} "
                         f"({', '.join(self.dropped_fixef)}: NA above)")
        lines.append(f"Convergence: {self.convergence}")
        if self.singular:
            lines.append(f"boundary (singular) fit: {self.singular_message()}")
        return "\n".join(lines)

    def singular_message(self) -> str:
        """Which variance components sit on the boundary, what that means, what to do."""
        problems = []
        structures = term_structures(self.design.terms)
        # Λ in the unit the boundary test used (GLMMs on a power link: host.glmm.eta_unit).
        unit = getattr(self, "theta_unit", 1.0)
        theta = self.theta_values
        if unit != 1.0:
            from .._engines.host.glmm import theta_unit

            theta = theta / theta_unit(structures, unit)
        factors = numpy_factors(theta, structures)
        for label, term, lam, cov in zip(self._group_labels(), self.design.terms, factors,
                                         structures):
            if is_relatedness(term):  # one variance scaling K: zero or not, as a whole
                if np.all(np.abs(lam) < 1e-4):
                    problems.append(f"the variance of the {label} effects (covariance "
                                    f"proportional to the known relatedness matrix) is zero")
                continue
            if cov.name != "us":  # structured: a zero SD zeroes its rows of Λ_t
                zero_diag = np.all(np.abs(lam) < 1e-4, axis=1)
            else:
                zero_diag = np.abs(np.diag(lam)) < 1e-4
            for a in np.flatnonzero(zero_diag):
                coef = term.coef_names[a]
                if np.all(np.abs(lam[a]) < 1e-4):
                    problems.append(f"the variance of {coef} between levels of {label} is zero")
                else:
                    others = ", ".join(term.coef_names[b] for b in range(a) if abs(lam[a, b]) >= 1e-4)
                    problems.append(
                        f"the random effects ({coef} | {label}) are a linear function of "
                        f"({others} | {label}) (a correlation of ±1, a singular covariance)"
                    )
        if not problems:
            return "no variance component is on the boundary"
        return (
            "; ".join(problems)
            + ". The data carry no evidence of that variation beyond what the rest of the "
            "model explains; the estimate sits on the boundary of the parameter space, "
            "so Wald and likelihood-ratio inference about it is unreliable. Consider "
            "dropping the term, simplifying its covariance (e.g. (1 + x || g), without "
            "correlations), or a Bayesian fit (glmmjax.bayes) with a prior that keeps "
            "the variance away from zero."
        )

    def _random_effects_table(self) -> str:
        vc = self.varcorr
        rows = []
        labels = self._group_labels()
        structured = structure_summaries(self.theta_values, term_structures(self.design.terms),
                                         labels)
        for label, t in zip(labels, self.design.terms):
            sub = vc[vc["group"] == label]
            if label in structured and not t.covariance.shows_correlation_matrix:
                # glmmTMB's layout: a structure's correlation parameter once, on the
                # first row, with its name ("0.640 (ar1)"); none for diag.
                rho = self._structure_correlation(label)
                # A known relatedness K has no estimated correlation: tagged so that the
                # row is not read as an independent random intercept.
                tag = "(relmat)" if t.covariance.name == "relmat" else ""
                for i, (_, row) in enumerate(sub[sub["var2"].isna()].iterrows()):
                    corr_text = (f"{rho:6.3f} ({t.covariance.name})"
                                 if i == 0 and rho is not None else tag if i == 0 else "")
                    rows.append((label if i == 0 else "", row["var1"], row["vcov"],
                                 row["sdcor"], corr_text))
                continue
            var = sub[sub["var2"].isna()]
            cov = sub[~sub["var2"].isna()]
            corr = np.eye(t.size)
            k = 0
            for j in range(t.size):
                for i in range(j + 1, t.size):
                    corr[i, j] = cov["sdcor"].iloc[k]
                    k += 1
            for i, (_, row) in enumerate(var.iterrows()):
                corr_text = " ".join(f"{corr[i, j]:6.3f}" for j in range(i))
                rows.append(
                    (label if i == 0 else "", row["var1"], row["vcov"], row["sdcor"], corr_text)
                )
        if self.scale is not None:
            rows.append(("Residual", "", self.scale**2, self.scale, ""))
        return variance_table(rows)

    def _criterion_text(self) -> str:
        if self.method == "REML":
            return f"REML criterion {self.criterion:.6g}"
        return f"deviance {self.criterion:.6g}, AIC {self.aic:.6g}, logLik {self.loglik:.6g}"

    def _family_text(self) -> str | None:
        return None

    def __repr__(self) -> str:
        # Short on purpose: typing `fit` must not print the design's arrays.
        groups = ", ".join(f"{k} ({v})" for k, v in self.ngroups.items())
        status = "yes" if self.converged else f"NO ({self.convergence.message})"
        if self.singular:
            status += "; singular fit (a variance component on the boundary)"
        return short_repr(f"{type(self).__name__}: fit by {self.method}", [
            ("formula", self.formula),
            ("family", self._family_text()),
            ("nobs", self.nobs if not self.n_dropped
             else f"{self.nobs} ({plural(self.n_dropped, 'row')} with missing values dropped)"),
            ("groups", groups),
            ("criterion", self._criterion_text()),
            ("converged", status),
        ])

    def _repr_html_(self) -> str:
        return html_summary(f"{type(self).__name__}", self.summary())

    def __str__(self) -> str:
        return self.summary()


def variance_table(rows) -> str:
    """lme4's random-effects table: Groups and Name left-aligned, Variance and Std.Dev.
    each formatted as a column (R's ``format(digits = 4)``: one number of decimals per
    column), the correlations left-aligned so that their lower triangle lines up."""
    header = ("Groups", "Name", "Variance", "Std.Dev.", "Corr")
    groups, names, variances, sds, corrs = (list(col) for col in zip(*rows)) if rows else (
        [], [], [], [], [])
    columns = [[str(g) for g in groups], [str(n) for n in names],
               format_column(variances, digits=4), format_column(sds, digits=4),
               [str(c) if c else "" for c in corrs]]
    widths = [max([len(h)] + [len(v) for v in col]) for h, col in zip(header, columns)]
    aligns = (str.ljust, str.ljust, str.rjust, str.rjust, str.ljust)

    def line(cells):
        return " " + " ".join(align(c, w) for align, c, w in zip(aligns, cells, widths))

    lines = [line(header)] + [line(cells) for cells in zip(*columns)]
    return "\n".join(text.rstrip() for text in lines)


def with_dropped_rows(table: pd.DataFrame, design) -> pd.DataFrame:
    """A coefficient table with NaN rows for the columns dropped as aliased, in the
    model matrix's order (R's NA rows)."""
    if not design.dropped_fixef:
        return table
    from .._model.rank import all_fixef_names

    return table.reindex(list(all_fixef_names(design)))


def _effects_frame(term, values: np.ndarray) -> pd.DataFrame:
    """Per-level values of a term's effects (levels × effects), looked up by glmmjax's or
    R's names (``ranef["Subject"]["(Intercept)"]``); a known-relatedness term (one group
    whose q effects are the levels) is shown as lme4qtl does, levels as rows."""
    if is_relatedness(term):
        return with_r_aliases(pd.DataFrame(values.reshape(-1, 1),
                                           index=list(term.coef_names), columns=["Intercept"]))
    return with_r_aliases(pd.DataFrame(values, index=list(term.levels),
                                       columns=list(term.coef_names)))
