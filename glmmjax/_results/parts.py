"""The result of a GLMM with zero-inflation and/or a dispersion model: accessors by part
(glmmTMB's ``cond``, ``zi`` and ``disp``), predictions, simulation and summary."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pandas as pd

from .._display import plural, show, with_r_aliases
from .._families import math as fm
from .._families import math_tmb as tmb_math
from .._families.distributions import norm_sf
from .._families.response_parts import (
    conditional_mean,
    dispersion_power,
    family_dispersion,
    is_truncated,
    response_mean,
    weights_are_trials,
    zero_inflatable,
)
from .._lazyjax import jax, jnp, run_x64
from .._model.covariance import varcorr_frame
from .._model.design import new_data_design
from .glmm import GLMMResult
from .mixed import _format_table, add_random_effects

PARTS = ("cond", "zi", "disp")
_HEADINGS = {"cond": "Conditional model:", "zi": "Zero-inflation model:",
             "disp": "Dispersion model:"}
PREDICT_TYPES = ("response", "conditional", "zprob", "link", "zlink", "disp")


@functools.lru_cache(maxsize=16)
def _draw_program(family, zero_inflated: bool):
    """One compiled draw of the responses from (seed, η, ζ, log φ, trials): zeros with
    probability π, else the family's draws. One program, not its operations one by one
    (each of which would compile on its own, seconds on a first simulation)."""
    def draw(seed, eta, zeta, log_phi, trials):
        k_zero, k_count = jax.random.split(jax.random.PRNGKey(seed))
        mu = family.link.inverse(eta)
        y = family.simulate(k_count, mu, trials, family_dispersion(family, log_phi))
        if zero_inflated:
            y = jnp.where(jax.random.bernoulli(k_zero, jax.nn.sigmoid(zeta)), 0.0, y)
        return y

    return jax.jit(draw)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class GLMMPartsResult(GLMMResult):
    """A GLMM with glmmTMB's zero-inflation (``ziformula=``, a hurdle for truncated
    families) and/or dispersion model (``dispformula=``).

    Accessors by part, as glmmTMB's: :attr:`fixef`, :attr:`fixef_se` and :attr:`vcov`
    are dicts ``{"cond": ..., "zi": ..., "disp": ...}`` (a part the model lacks is
    empty); :meth:`coef_table` takes ``part=``. The dispersion model's coefficients are
    on glmmTMB's log φ scale (φ: σ² for Gaussian, shape for Gamma, size θ for the
    negative binomial, precision for beta). Random effects of the zero-inflation part:
    :attr:`ranef_zi`, :attr:`varcorr_zi`.
    """

    parts: object = None  # glmmjax._model.parts_design.PartsDesign
    layout: tuple = ()
    params: np.ndarray | None = None
    theta_zi_values: np.ndarray | None = None
    effects_zi: tuple = ()
    criterion_fn: object = None  # params (layout above, θ raw) -> −2 log L (Laplace)
    parts_data: object = None  # glmmjax._engines.compiled.parts.PartsData, for profiling

    def criterion_at(self, params) -> float:
        """−2 log L (Laplace) at another parameter vector, laid out as :attr:`params`:
        (θ_cond, θ_zi, β_cond, β_zi, β_disp), θ in lme4's Cholesky order (for a scalar
        random effect its SD, as glmmTMB's). To compare optima with other software."""
        return float(self.criterion_fn(np.asarray(params, dtype=np.float64)))

    # -- by part --------------------------------------------------------------------------
    def _part_slice(self, part: str) -> slice:
        n_theta_c, n_theta_z, p, p_zi, p_disp = self.layout
        start = n_theta_c + n_theta_z
        bounds = {"cond": (start, start + p), "zi": (start + p, start + p + p_zi),
                  "disp": (start + p + p_zi, start + p + p_zi + p_disp)}
        return slice(*bounds[part])

    def _part_names(self, part: str) -> list[str]:
        if part == "cond":
            return list(self.design.fixef_names)
        design = getattr(self.parts, part)
        return [] if design is None else list(design.fixef_names)

    @staticmethod
    def _check_part(part: str) -> None:
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {part!r}")

    @property
    def fixef(self) -> dict[str, pd.Series]:
        """Fixed effects by part: ``{"cond", "zi", "disp"}`` (glmmTMB's ``fixef``)."""
        return {part: with_r_aliases(pd.Series(self.params[self._part_slice(part)],
                                               index=self._part_names(part), name="estimate",
                                               dtype=float))
                for part in PARTS}

    @property
    def fixef_se(self) -> dict[str, pd.Series]:
        se = np.sqrt(np.diag(self.params_cov))
        return {part: with_r_aliases(pd.Series(se[self._part_slice(part)],
                                               index=self._part_names(part), name="std_error",
                                               dtype=float))
                for part in PARTS}

    @property
    def vcov(self) -> dict[str, pd.DataFrame]:
        out = {}
        for part in PARTS:
            s, names = self._part_slice(part), self._part_names(part)
            out[part] = with_r_aliases(pd.DataFrame(self.params_cov[s, s], index=names,
                                                    columns=names))
        return out

    @property
    def coef(self) -> dict[str, pd.Series]:
        return self.fixef

    @property
    def varcorr_zi(self) -> pd.DataFrame:
        """Variance components of the zero-inflation part's random effects."""
        terms = self._zi_terms()
        return varcorr_frame(self.theta_zi_values, tuple(t.size for t in terms),
                             [t.group for t in terms], [t.coef_names for t in terms], None)

    @property
    def ranef_zi(self) -> dict[str, pd.DataFrame]:
        """Conditional modes of the zero-inflation part's random effects."""
        return {t.group: pd.DataFrame(np.asarray(b), index=list(t.levels),
                                      columns=list(t.coef_names))
                for t, b in zip(self._zi_terms(), self.effects_zi)}

    def _zi_terms(self):
        return () if self.parts.zi is None else self.parts.zi.terms

    @property
    def zero_inflated(self) -> bool:
        return self.parts.zi is not None

    # -- predictions ----------------------------------------------------------------------
    def _part_eta(self, part: str, X, offset, term_parts, effects) -> np.ndarray:
        return add_random_effects(X @ self.params[self._part_slice(part)] + offset,
                                  term_parts, effects)

    def _predictors(self, newdata, include_re: bool, allow_new_levels: bool):
        """(η, ζ, log φ) on the fitting data or ``newdata``."""
        def build(design):
            if newdata is None:
                return design.X, design.offset, [(t.refs.astype(np.int64), t.z)
                                                 for t in design.terms]
            return new_data_design(design, newdata,
                                   allow_new_levels=allow_new_levels or not include_re,
                                   need_groups=include_re)

        def drop_re(term_parts):
            return term_parts if include_re else [(np.full_like(r, -1), z)
                                                  for r, z in term_parts]

        X, offset, terms = build(self.design)
        eta = self._part_eta("cond", X, offset, drop_re(terms), self.effects)
        n = len(eta)
        zeta = np.zeros(n)
        if self.parts.zi is not None:
            X, offset, terms = build(self.parts.zi.design)
            zeta = self._part_eta("zi", X, offset, drop_re(terms), self.effects_zi)
        log_phi = np.zeros(n)
        if self.parts.disp is not None:
            design = self.parts.disp.design
            if design.X.shape[1]:
                X, offset, _ = build(design)
            else:  # a fixed dispersion: its log φ is the constant offset
                X, offset = np.zeros((n, 0)), np.full(n, design.offset[0])
            log_phi = self._part_eta("disp", X, offset, [], ())
        return eta, zeta, log_phi

    def predict(self, newdata: pd.DataFrame | None = None, *, include_re: bool = True,
                allow_new_levels: bool = False, type: str = "response") -> pd.Series:
        """Predictions as glmmTMB's ``predict``.

        ``type``: ``"response"`` (the mean of y: (1 − π)μ with zero-inflation,
        (1 − π)μ/(1 − f(0)) for a hurdle), ``"conditional"`` (μ of the conditional
        model), ``"zprob"`` (π, the zero-inflation or hurdle probability), ``"link"``
        (η), ``"zlink"`` (logit π), ``"disp"`` (glmmTMB's dispersion φ). For a hurdle
        model ``"conditional"`` is the mean of the zero-truncated distribution, as
        glmmTMB's.
        """
        if type not in PREDICT_TYPES:
            raise ValueError(f"type must be one of {PREDICT_TYPES}, got {type!r}")
        eta, zeta, log_phi = self._predictors(newdata, include_re, allow_new_levels)
        family = self.family
        if (type in ("response", "conditional", "zprob") and fm.link_supported(family.link)
                and (not is_truncated(family) or tmb_math.truncated_supported(family))):
            # numpy: nothing to import or trace
            return pd.Series(self._closed_form_mean(type, eta, zeta, log_phi),
                             name="prediction",
                             index=self.design.rows if newdata is None else newdata.index)
        with run_x64():
            if type == "response":
                values = response_mean(family, jnp.asarray(eta), jnp.asarray(zeta),
                                       jnp.asarray(log_phi), zero_inflated=self.zero_inflated)
            elif type == "conditional":
                values = conditional_mean(family, jnp.asarray(eta), jnp.asarray(log_phi))
            elif type == "zprob":
                values = (jax.nn.sigmoid(jnp.asarray(zeta)) if self.zero_inflated
                          else jnp.zeros_like(jnp.asarray(eta)))
            elif type == "link":
                values = eta
            elif type == "zlink":
                values = zeta if self.zero_inflated else np.full(len(eta), -np.inf)
            else:
                values = np.exp(log_phi)
            values = np.asarray(values)
        index = self.design.rows if newdata is None else newdata.index
        return pd.Series(values, index=index, name="prediction")

    def _closed_form_mean(self, type, eta, zeta, log_phi):  # noqa: A002
        """``predict``'s means for a built-in family and link in numpy: μ = g⁻¹(η)
        (μ/P(y > 0) for the zero-truncated families), π = logistic(ζ), E y = (1 − π)μ."""
        if type == "zprob":
            if not self.zero_inflated:
                return np.zeros(len(eta))
            return fm.logistic(np, np.asarray(zeta, dtype=np.float64))
        mu = fm.inverse_link(self.family.link, np, np.asarray(eta, dtype=np.float64))
        if is_truncated(self.family):
            dispersion = np.exp(dispersion_power(self.family) * np.asarray(log_phi, np.float64))
            mu = tmb_math.truncated_mean(self.family, np, mu, dispersion)
        if type == "response" and self.zero_inflated:
            mu = mu * fm.logistic(np, -np.asarray(zeta, dtype=np.float64))
        return mu

    def fitted(self, type: str = "response") -> pd.Series:
        """Fitted values (``predict(type=...)`` on the fitting data)."""
        return self.predict(type=type).rename("fitted")

    def residuals(self, type: str = "response") -> pd.Series:
        """Response residuals y − E y (the mean including zero-inflation)."""
        if type != "response":
            raise ValueError(
                f"residuals of models with ziformula/dispformula: type must be 'response', "
                f"got {type!r}; simulation-based residuals need simulate()")
        return pd.Series(self.y - self.fitted().to_numpy(), index=self.design.rows,
                         name="residuals")

    def plot_residuals(self, ax=None, type: str = "response"):
        """Response residuals against fitted values (for DHARMa's simulated residuals,
        which suit zero-inflated models, see :meth:`scaled_residuals`)."""
        return super().plot_residuals(ax=ax, type=type)

    def plot_qq(self, ax=None, type: str = "response"):
        """Normal QQ plot of the response residuals."""
        return super().plot_qq(ax=ax, type=type)

    def _draw_effects(self, rng, terms, theta) -> tuple:
        """New random effects b ~ N(0, ΛΛ') per level of each term."""
        from .._engines.host.parts import _factors

        out = []
        for term, lam in zip(terms, _factors(np.asarray(theta), tuple(t.size for t in terms))):
            out.append(rng.standard_normal((term.n_levels, term.size)) @ lam.T)
        return tuple(out)

    def _simulate_array(self, n: int, include_re: bool, seed: int | None,
                        newdata=None, allow_new_levels: bool = False) -> np.ndarray:
        """(n_obs, n) simulated responses (see :meth:`simulate`)."""
        if not include_re and newdata is not None:
            raise ValueError("simulate(include_re=False) draws new random effects for the "
                             "fitting data's levels; with newdata use include_re=True")
        from .._inference import parts_draws as _parts_draws

        rng = np.random.default_rng(seed)
        draws = []
        with run_x64():
            if _parts_draws.supported(self.family):  # numpy: nothing to compile
                def draw(seed_k, eta, zeta, log_phi, trials):
                    return _parts_draws.draw(self.family, rng, eta, zeta, log_phi, trials,
                                             self.zero_inflated)
            else:
                try:
                    draw = _draw_program(self.family, self.zero_inflated)
                except TypeError:  # a family holding arrays is not hashable: not kept
                    draw = _draw_program.__wrapped__(self.family, self.zero_inflated)
            # Binomial-type families draw successes out of their trials (the prior
            # weights of the fitting rows; one trial on new data); others take none.
            trials = np.ones(len(self.y) if newdata is None else len(newdata))
            if newdata is None and weights_are_trials(self.family):
                trials = np.asarray(self.prior_weights, np.float64)
            if include_re:
                fixed = self._predictors(newdata, True, allow_new_levels)
            for _ in range(n):
                if include_re:
                    eta, zeta, log_phi = fixed
                else:
                    parts = dataclasses.replace(
                        self, effects=self._draw_effects(rng, self.design.terms,
                                                         self.theta_values),
                        effects_zi=self._draw_effects(rng, self._zi_terms(),
                                                      self.theta_zi_values))
                    eta, zeta, log_phi = parts._predictors(None, True, False)
                seed_k = np.uint32(rng.integers(0, 2**31 - 1))
                draws.append(np.asarray(draw(seed_k, eta, zeta, log_phi, trials)))
        return np.column_stack(draws)

    def simulate(self, n: int = 1, newdata=None, *, include_re: bool = True,
                 seed: int | None = None, weights=None, allow_new_levels: bool = False):
        """Responses drawn from the fitted model: zeros with probability π, else draws
        of the family (for a hurdle, of its zero-truncated form; the family's own
        ``simulate`` must draw that). ``include_re=True`` conditions on the random
        effects' modes; ``False`` draws new ones from N(0, ΛΛ') in both parts for each
        simulation (fitting data only). One column per simulation (``sim_1``, ...)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be a positive integer, got {show(n)}")
        if weights is not None:
            raise ValueError("weights= is not supported when simulating models with "
                             "ziformula/dispformula")
        sims = self._simulate_array(int(n), include_re, seed, newdata, allow_new_levels)
        index = self.design.rows if newdata is None else newdata.index
        return pd.DataFrame(sims, index=index, columns=[f"sim_{i + 1}" for i in range(n)])

    def scaled_residuals(self, n_sim: int = 250, seed: int | None = None, *,
                         include_re: bool = False, integer: bool | None = None):
        """Simulation-based scaled residuals (DHARMa's), from :meth:`simulate`: with
        ``test_zero_inflation()`` among the tests. Counts are treated as discrete."""
        from .._inference.diagnostics import scaled_residuals

        if integer is None:
            integer = zero_inflatable(self.family)
        return scaled_residuals(self, n_sim, seed, include_re=include_re, integer=integer)

    # -- tables ---------------------------------------------------------------------------
    def coef_table(self, names: str = "glmmjax", part: str = "cond") -> pd.DataFrame:
        """Estimates, standard errors, z values and p-values of one part."""
        self._check_part(part)
        est, se = self.fixef[part], self.fixef_se[part]
        table = pd.DataFrame({"Estimate": est, "Std. Error": se})
        table["z value"] = est / se
        table["Pr(>|z|)"] = 2 * norm_sf(np.abs(table["z value"].to_numpy()))
        return with_r_aliases(table, names)

    def _header(self) -> str:
        lines = [f" Family: {self.family_name}  ( {self.link_name} )",
                 f"Formula:          {self.formula}"]
        if self.method == "REML":  # glmmTMB's REML = TRUE (glmmjax._engines.host.parts_reml)
            lines.insert(0, "Linear mixed model fit by REML (fixed effects integrated out, "
                            "as glmmTMB's REML = TRUE)")
        if self.parts.zi is not None:
            kind = "Hurdle" if is_truncated(self.family) else "Zero inflation"
            lines.append(f"{kind + ':':<18}{self.parts.zi.formula}")
        disp = self.parts.disp
        if disp is not None and disp.formula != "~ 1":
            lines.append(f"{'Dispersion:':<18}{disp.formula}")
        return "\n".join(lines)

    def summary(self, names: str = "glmmjax") -> str:
        """A text summary in the layout of glmmTMB's ``summary``: one coefficient table
        per part."""
        lines = [self._header()]
        if self.n_dropped:
            lines.append(f"  ({plural(self.n_dropped, 'row')} with missing values dropped)")
        lines.append("")
        if not self.converged:
            lines.append(f"NOT CONVERGED: {self.convergence.message}")
        lines.append("     AIC      BIC   logLik deviance df.resid")
        lines.append(f"{self.aic:8.1f} {self.bic:8.1f} {self.loglik:8.1f} {self.criterion:8.1f}"
                     f" {self.nobs - self.n_params:8d}")
        lines += ["", "Random effects:", "", "Conditional model:",
                  self._random_effects_table()]
        if self._zi_terms():
            saved = dataclasses.replace(self, design=self.parts.zi.design,
                                        theta_values=self.theta_zi_values)
            lines += ["", "Zero-inflation model:", GLMMResult._random_effects_table(saved)]
        groups = ", ".join(f"{k}, {v}" for k, v in self.ngroups.items())
        lines.append(f"Number of obs: {self.nobs}, groups:  {groups}")
        disp = self.parts.disp
        if disp is not None and disp.formula == "~ 1":
            phi = float(np.exp(self.params[self._part_slice("disp")][0]))
            lines += ["", f"Dispersion parameter for {self.family_name} family (): {phi:.3g}"]
        for part in PARTS:
            if part == "disp" and (disp is None or disp.formula == "~ 1"):
                continue
            if part == "zi" and self.parts.zi is None:
                continue
            table = self.coef_table(names, part)
            if table.empty:
                continue
            lines += ["", _HEADINGS[part], _format_table(table)]
        lines += ["", f"Convergence: {self.convergence}"]
        if self.singular:
            lines.append(f"boundary (singular) fit: {self.singular_message()}")
        return "\n".join(lines)

    def _family_text(self) -> str:
        text = f"{self.family_name} ({self.link_name})"
        if self.parts.zi is not None:
            text += ", hurdle" if is_truncated(self.family) else ", zero-inflated"
            text += f" {self.parts.zi.formula}"
        disp = self.parts.disp
        if disp is not None and disp.formula != "~ 1":
            text += f", dispersion {disp.formula}"
        return text

    def _not_here(self, what: str):
        raise NotImplementedError(
            f"{what} is not available for models with ziformula/dispformula yet")

    def bootstrap(self, n: int = 1000, seed: int = 0, *, progress=None):
        """Parametric bootstrap: ``n`` responses simulated from the fit (new random
        effects in both parts, zeros with probability π), each refitted
        (:func:`glmmjax.fit_many` with this model's ``ziformula``/``dispformula``).
        Returns a :class:`~glmmjax.BootstrapResult`: ``replicates`` holds the fixed
        effects of every part (``zi~<name>``, ``d~<name>``) and the random-effect SDs
        (``sd_<coef>|<group>``, ``zi~sd_...``), with ``summary()`` and percentile
        ``confint()``."""
        from .._inference.parts import bootstrap

        return bootstrap(self, n, seed, progress=progress)

    def confint(self, method: str = "wald", level: float = 0.95, parm=None, *,
                n_boot: int = 500, seed: int | None = None, names: str = "glmmjax",
                progress: bool | None = None) -> pd.DataFrame:
        """Confidence intervals, rows named as :func:`glmmjax.fit_many` names these
        models' parameters: the random-effect SDs (``sd_<coef>|<group>``,
        ``zi~sd_...``), then the fixed effects of every part (the conditional model's
        as they are, ``zi~<name>``, ``d~<name>``, the latter on glmmTMB's log φ scale).

        Args:
            method: ``"wald"`` (β̂ ± z·SE from the joint covariance, as glmmTMB's
                ``confint(method = "Wald")`` for the fixed effects; NaN for the SDs) or
                ``"boot"`` (percentiles of ``n_boot`` parametric bootstrap refits) or
                ``"profile"`` (profile likelihood, as glmmTMB's ``confint(method =
                "profile")``: every fixed effect and scalar random-effect SD; not
                terms with correlations, nor a REML fit's fixed effects (its SDs and
                dispersion coefficients are profiled on the REML criterion), see
                :mod:`glmmjax._inference.parts_profile`).
            level: confidence level.
            parm: parameter names (default all), or ``"beta_"`` / ``"theta_"``.
            names: ``"glmmjax"`` or ``"r"`` (R's coefficient names).
        """
        from .._display import check_names

        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level!r}")
        check_names(names)
        key = str(method).lower()
        if key == "wald":
            from .._inference.parts import wald_confint

            return with_r_aliases(wald_confint(self, level, parm), names)
        if key in ("boot", "bootstrap"):
            from .._inference.parts import bootstrap_confint

            return with_r_aliases(bootstrap_confint(self, level, parm, n_boot, seed,
                                                    progress), names)
        if key == "profile":
            from .._inference.parts_profile import profile_confint

            return with_r_aliases(profile_confint(self, level, parm), names)
        raise ValueError(f"method must be 'wald', 'boot' or 'profile', got {method!r}")

    def profile(self, *args, **kwargs):
        self._not_here("profile")

    def refit(self, *args, **kwargs):
        self._not_here("refit")

