"""Results of Bayesian fits: posterior summaries, diagnostics, predictions, LOO.

:class:`BayesResult` keeps the raw draws of the sampled sites, grouped by chain, and
derives every named parameter from them (``draws``). Summaries and diagnostics are numpy
(:mod:`glmmjax._bayes.diagnostics`); predictions and pointwise log-likelihoods run in
JAX, mapped over draws in batches.
"""

from __future__ import annotations

import dataclasses
import warnings
from functools import cached_property

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._display import plural
from .._families.base import Gaussian
from .._families.response_parts import response_mean, row_loglik
from .._model.design import DataError, new_data_design
from .._precision import precision_scope
from .._stacklevel import external_stacklevel
from . import ar1 as ar1_lib
from . import diagnostics as diag
from .model import BayesModel, SamplingWarning

_KINDS = ("fixef", "sd", "cor", "family", "ranef")
_BATCH = 256  # draws per batch when mapping over draws (bounds memory: batch × n)


def _linear_predictor(beta, effects, X, offset, refs, zs):
    eta = X @ beta + offset
    for b, r, z in zip(effects, refs, zs):
        eta = eta + jnp.sum(z * b[r], axis=1)
    return eta


def _map_draws(fn, params: dict, batch: int = _BATCH) -> np.ndarray:
    """``fn`` over the leading axis of ``params`` (numpy), in compiled batches: the draws
    are padded to whole batches so the function is traced and compiled once."""
    n = len(jax.tree_util.tree_leaves(params)[0])
    size = min(batch, n)
    count = -(-n // size)

    def pad(a):
        a = np.asarray(a)
        a = np.concatenate([a, np.repeat(a[-1:], count * size - n, axis=0)])
        return a.reshape((count, size) + a.shape[1:])

    batched = jax.tree_util.tree_map(pad, params)
    out = jax.jit(lambda tree: jax.lax.map(jax.vmap(fn), tree))(batched)
    out = np.asarray(out)
    return out.reshape((count * size,) + out.shape[2:])[:n]


def _new_level_refs(term, newdata: pd.DataFrame, refs: np.ndarray) -> tuple[np.ndarray, int]:
    """Give each level unseen in fitting its own index after the fitted ones."""
    unseen = refs < 0
    if not unseen.any():
        return refs, 0
    labels = newdata[list(term.spec.group_columns)].astype(str).agg(":".join, axis=1).to_numpy()
    codes, uniques = pd.factorize(labels[unseen])
    out = refs.copy()
    out[unseen] = term.n_levels + codes
    return out, len(uniques)


@dataclasses.dataclass(frozen=True, eq=False)
class BayesResult:
    """Posterior draws of a Bayesian mixed model and what is computed from them.

    Attributes:
        bayes_model: the :class:`~glmmjax.bayes.BayesModel` that was sampled.
        samples: sampled sites, numpy arrays of shape (chains, draws, ...) (``Intercept``
            is the intercept at centred predictors; ``z_<group>`` the spherical u).
        diverging: (chains, draws) booleans, divergent transitions after warmup.
        num_steps: (chains, draws) leapfrog steps per draw.
        num_warmup: warmup iterations per chain.
        seconds: wall time of sampling (compilation included).
    """

    bayes_model: BayesModel
    samples: dict
    diverging: np.ndarray
    num_steps: np.ndarray
    num_warmup: int
    seconds: float
    precision: str = "float64"
    _cache: dict = dataclasses.field(default_factory=dict, repr=False)

    # ---- draws ------------------------------------------------------------------------
    @cached_property
    def draws(self) -> dict:
        """Every named parameter, (chains, draws, ...): ``b_*`` (uncentred), ``sd_*``,
        ``cor_*``, ``r_<group>`` (levels × coefficients), dispersion, ``ar1_*``."""
        return self.bayes_model.derived(self.samples)

    @property
    def num_chains(self) -> int:
        return self.diverging.shape[0]

    @property
    def num_samples(self) -> int:
        """Kept draws per chain."""
        return self.diverging.shape[1]

    @property
    def divergences(self) -> int:
        return int(np.sum(self.diverging))

    @property
    def layout(self):
        return self.bayes_model.layout

    def _names(self, kind: str) -> list[str]:
        layout = self.layout
        if kind == "fixef":
            return layout.all_fixef_names()
        if kind == "sd":
            return [n for t in range(len(layout.labels)) for n in layout.sd_names(t)]
        if kind == "cor":  # LKJ correlations, and structured terms' correlation parameters
            return [name for t in range(len(layout.labels))
                    for name in [n for *_, n in layout.cor_pairs(t)]
                    + [p.name for p in layout.structure_params(t)]]
        if kind == "family":
            return [n for n in (layout.dispersion, "ar1_rho", "ar1_sd") if n in self.draws]
        raise ValueError(f"kind must be one of {('all',) + _KINDS}, got {kind!r}")

    def scalar_draws(self, kind: str = "all") -> tuple[list[str], np.ndarray]:
        """Names and (chains, draws, K) draws of the scalar parameters of one kind:
        ``"fixef"``, ``"sd"``, ``"cor"``, ``"family"`` (dispersion, AR(1)), ``"ranef"``
        (named ``r_<group>[<level>,<coef>]``) or ``"all"``."""
        kinds = _KINDS if kind == "all" else (kind,)
        names, arrays = [], []
        c, n = self.num_chains, self.num_samples
        for k in kinds:
            if k == "ranef":
                layout = self.layout
                for t, label in enumerate(layout.labels):
                    r = self.draws[f"r_{label}"]
                    names += [
                        f"r_{label}[{lev},{coef}]"
                        for lev in layout.levels[t]
                        for coef in layout.coef_names[t]
                    ]
                    arrays.append(r.reshape(c, n, -1))
            else:
                for name in self._names(k):
                    names.append(name)
                    arrays.append(self.draws[name].reshape(c, n, 1))
        values = np.concatenate(arrays, axis=2) if arrays else np.zeros((c, n, 0))
        return names, values

    def posterior_summary(self, kind: str = "all", probs=(0.025, 0.975)) -> pd.DataFrame:
        """Posterior mean, sd, quantiles, R̂, bulk and tail ESS, one row per parameter.

        Args:
            kind: ``"all"``, ``"fixef"``, ``"sd"``, ``"cor"``, ``"family"`` or
                ``"ranef"``.
            probs: the quantiles (columns ``q2.5``, ``q97.5`` for the default).
        """
        names, values = self.scalar_draws(kind)
        return diag.summarize(values, names, probs)

    @cached_property
    def _default_summary(self) -> pd.DataFrame:
        return self.posterior_summary("all")

    @property
    def fixef(self):
        """Posterior means of the fixed effects (indexed like ``lmer``'s ``fixef``); with
        ``ziformula``/``dispformula`` a dict by part, ``{"cond", "zi", "disp"}``, as the
        frequentist result's (``"disp"`` on glmmTMB's log φ: without a ``dispformula``
        the posterior mean of log φ from the family's dispersion parameter)."""
        layout = self.layout
        means = [self.draws[f"b_{n}"].mean() for n in layout.fixef_names]
        cond = pd.Series(means, index=list(layout.fixef_names), name="posterior_mean")
        if not layout.parts_model:
            return cond
        from .._display import with_r_aliases

        out = {"cond": cond}
        for part in ("zi", "disp"):
            extra = layout.part_fixef(part)
            names, values = [], []
            if extra is not None:
                names = list(extra.coef_names)
                values = [self.draws[n].mean() for n in extra.names()]
            elif part == "disp" and layout.dispersion is not None:
                names = list(self.bayes_model.parts.disp.fixef_names)
                values = [float(np.mean(self.log_phi_draws()))]
            out[part] = pd.Series(values, index=names, name="posterior_mean", dtype=float)
        return {k: with_r_aliases(v) for k, v in out.items()}

    def log_phi_draws(self) -> np.ndarray:
        """Draws of glmmTMB's log φ from the family's scalar dispersion parameter
        (``sigma``: log σ², ``phi``/``theta``; Gamma's shape 1/φ), (chains, draws)."""
        from .parts import scalar_log_phi

        layout = self.layout
        return np.asarray(scalar_log_phi(layout.dispersion, self.bayes_model.family,
                                         np.asarray(self.draws[layout.dispersion])))

    @property
    def ranef(self) -> dict[str, pd.DataFrame]:
        """Posterior means of the group-level effects, one DataFrame per term."""
        layout = self.layout
        return {
            label: pd.DataFrame(
                self.draws[f"r_{label}"].mean(axis=(0, 1)),
                index=list(layout.levels[t]),
                columns=list(layout.coef_names[t]),
            )
            for t, label in enumerate(layout.labels)
        }

    # ---- diagnostics ----------------------------------------------------------------
    def check(self) -> list[str]:
        """Warn (:class:`SamplingWarning`) about divergences, R̂ > 1.01 and bulk or tail
        ESS below 100 per chain; returns the messages."""
        messages = []
        total = self.diverging.size
        if self.divergences:
            messages.append(
                f"{self.divergences} of {total} draws after warmup were divergent transitions: "
                "NUTS could not explore part of the posterior, so estimates may be biased. "
                "Raise target_accept (e.g. sample(target_accept=0.999)), or simplify the model "
                "or its priors."
            )
        table = self._default_summary
        if self.num_chains >= 2:
            high = table[table["rhat"] > 1.01]
            if len(high):
                messages.append(
                    f"R-hat above 1.01 for {plural(len(high), 'parameter')} (max {high['rhat'].max():.3f}"
                    f", e.g. {', '.join(high.index[:3])}): the chains have not mixed; run longer "
                    "chains (num_warmup, num_samples), or try sample(dense_mass=True) when "
                    "the data inform each group's effects well (many rows per level)."
                )
        floor = 100 * self.num_chains
        for column, what in (("ess_bulk", "means and medians"), ("ess_tail", "intervals and quantiles")):
            low = table[table[column] < floor]
            if len(low):
                messages.append(
                    f"{column.replace('_', ' ')} below {floor} (100 per chain) for "
                    f"{plural(len(low), 'parameter')} (min {low[column].min():.0f}, e.g. {', '.join(low.index[:3])}): "
                    f"posterior {what} may be unreliable; run more draws."
                )
        for message in messages:
            warnings.warn(message, SamplingWarning, stacklevel=external_stacklevel())
        return messages

    # ---- per-draw parameters -------------------------------------------------------
    def _flat_draws(self, num_draws=None) -> dict:
        """Parameters for prediction, flattened over chains: (S, ...) numpy arrays."""
        total = self.num_chains * self.num_samples
        take = np.arange(total)
        if num_draws is not None and num_draws < total:
            take = np.round(np.linspace(0, total - 1, num_draws)).astype(int)
        layout = self.layout
        flat = lambda a: np.asarray(a).reshape((total,) + np.shape(a)[2:])[take]  # noqa: E731
        out = {
            "beta": np.stack([flat(self.draws[f"b_{n}"]) for n in layout.fixef_names], axis=-1),
            "effects": tuple(flat(self.draws[f"r_{label}"]) for label in layout.labels),
        }
        factors = []
        for t, label in enumerate(layout.labels):
            sd = np.stack([flat(self.draws[n]) for n in layout.sd_names(t)], axis=-1)
            if layout.structure(t) is not None:
                factors.append(self.bayes_model.structured_factor(
                    t, {k: flat(v) for k, v in self.samples.items()
                        if k in layout.sd_names(t)
                        or k in [p.name for p in layout.structure_params(t)]}))
            elif len(layout.coef_names[t]) > 1:
                factors.append(sd[..., :, None] * flat(self.samples[f"L_{label}"]))
            else:
                factors.append(sd[..., :, None])
        out["factors"] = tuple(factors)
        for extra in layout.extra_fixef:
            out[f"beta_{extra.part}"] = np.stack([flat(self.draws[n]) for n in extra.names()],
                                                 axis=-1)
        if layout.dispersion is not None:
            value = flat(self.draws[layout.dispersion])
            out["dispersion"] = value**2 if layout.dispersion == "sigma" else value
            out["dispersion_raw"] = value
            if layout.dispersion == "sigma":
                out["sigma"] = value
        if layout.ar1 is not None:
            out["rho"] = flat(self.draws["ar1_rho"])
        if layout.ar1 == "latent":
            out["ar_sd"] = flat(self.draws["ar1_sd"])
            out["ar_z"] = flat(self.samples["ar1_z"])
        return out

    def _training_eta(self, params, rows=None):
        """η at the fitted rows (all, or the index array ``rows``) for one draw."""
        model = self.bayes_model.model
        pick = (lambda a: np.asarray(a)) if rows is None else (lambda a: np.asarray(a)[rows])  # noqa: E731
        return _linear_predictor(
            params["beta"], params["effects"], pick(model.X), pick(model.offset),
            [pick(r) for r in model.structure.refs], [pick(z) for z in model.structure.z],
        )

    def _parts_predictors(self, params, arrays=None):
        """(ζ, log φ) of a parts model for one draw, on the fitting rows or on
        ``arrays`` = (X_zi, offset_zi, zi refs, zi z, X_disp, offset_disp, zi effects)."""
        bm = self.bayes_model
        layout = bm.layout
        n_cond = len(bm.model.design.terms)
        if arrays is None:
            X_zi, off_zi = bm.parts_arrays["zi"]
            X_disp, off_disp = bm.parts_arrays["disp"]
            refs, zs = bm.data.refs[n_cond:], bm.data.z[n_cond:]
            effects = params["effects"][n_cond:]
        else:
            X_zi, off_zi, refs, zs, X_disp, off_disp, effects = arrays
        beta_zi = params.get("beta_zi", jnp.zeros(X_zi.shape[1]))
        zeta = _linear_predictor(beta_zi, effects, X_zi, off_zi, refs, zs)
        log_phi = off_disp
        if "beta_disp" in params:
            log_phi = log_phi + X_disp @ params["beta_disp"]
        if layout.dispersion is not None:
            from .parts import scalar_log_phi

            log_phi = log_phi + scalar_log_phi(layout.dispersion, bm.family,
                                               params["dispersion_raw"])
        return zeta, log_phi

    def _series_ends(self, params):
        """The AR(1) process at the last fitted row of each series, for one draw."""
        bm = self.bayes_model
        idx = bm.ar1
        if bm.layout.ar1 == "errors":
            eta = self._training_eta(params, idx.last_row)
            return np.asarray(bm.model.y)[idx.last_row] - bm.family.link.inverse(eta)
        return self._latent(params)[idx.last_row]

    def _latent(self, params):
        idx = self.bayes_model.ar1
        return ar1_lib.latent_process(
            params["ar_z"], params["rho"], params["ar_sd"], idx.first, idx.gap, idx.series,
            idx.position, idx.grid,
        )

    def _conditionals(self, params, eta):
        """Gaussian AR(1) errors: mean and variance of each y given the previous one."""
        bm = self.bayes_model
        idx = bm.ar1
        return ar1_lib.gaussian_conditionals(
            np.asarray(bm.model.y), bm.family.link.inverse(eta), params["sigma"], params["rho"],
            idx.first, idx.gap, idx.prev,
        )

    # ---- log-likelihood, WAIC, LOO ------------------------------------------------------
    def log_likelihood(self) -> np.ndarray:
        """Pointwise log-likelihood, (chains, draws, n): log p(yᵢ | θ) per observation
        (with AR(1) Gaussian errors, log p(yᵢ | y_prev, θ), the conditional density)."""
        if "loglik" not in self._cache:
            self._cache["loglik"] = self._compute_log_likelihood()
        return self._cache["loglik"]

    def _compute_log_likelihood(self) -> np.ndarray:
        bm = self.bayes_model
        family, kind = bm.family, bm.layout.ar1
        y, w = np.asarray(bm.model.y), np.asarray(bm.model.weights)

        def one(params):
            eta = self._training_eta(params)
            if bm.layout.parts_model:
                zeta, log_phi = self._parts_predictors(params)
                return row_loglik(family, y, w, eta, zeta, log_phi,
                                  zero_inflated=bm.layout.zero_inflated)
            if kind == "errors":
                mean, var = self._conditionals(params, eta)
                return Gaussian().loglik_eta(y, mean, jnp.ones_like(mean), var)
            if kind == "latent":
                eta = eta + self._latent(params)
            return family.loglik_eta(y, eta, w, params.get("dispersion"))

        with precision_scope(self.precision):
            values = _map_draws(one, self._flat_draws())
        return values.reshape(self.num_chains, self.num_samples, -1)

    def waic(self) -> diag.InformationCriterion:
        """WAIC (Watanabe's widely applicable information criterion), as ``loo::waic``."""
        ll = self.log_likelihood()
        return diag.waic(ll.reshape(-1, ll.shape[-1]))

    def loo(self, reff: float | None = None) -> diag.InformationCriterion:
        """PSIS-LOO: approximate leave-one-out cross-validation by Pareto-smoothed
        importance sampling (our own PSIS, see :mod:`glmmjax._bayes.diagnostics`).

        Args:
            reff: relative efficiency of the draws for the tail length; by default the
                mean ESS/S of the pointwise likelihoods, as the ``loo`` package does.

        Warns:
            ParetoKWarning: observations with k̂ above min(1 − 1/log₁₀ S, 0.7).
        """
        ll = self.log_likelihood()
        if reff is None:
            reff = diag.relative_efficiency(ll)
        return diag.loo(ll.reshape(-1, ll.shape[-1]), reff=reff)

    # ---- prediction -------------------------------------------------------------------
    def posterior_predict(
        self,
        newdata: pd.DataFrame | None = None,
        *,
        type: str = "prediction",
        allow_new_levels: bool = True,
        weights=None,
        offset=None,
        num_draws: int | None = None,
        seed: int = 0,
    ) -> pd.DataFrame:
        """Posterior predictive draws: a DataFrame with one row per draw and one column
        per row of ``newdata`` (its index labels; the fitting data's row labels when
        None). ``.to_numpy()`` gives the (draws, rows) array.

        Args:
            newdata: rows to predict (the fitting data when None). Levels of a grouping
                factor not seen in fitting get group effects drawn from the population
                distribution N(0, Σ) of each posterior draw (brms's
                ``sample_new_levels = "gaussian"``). With an AR(1) term, new rows continue
                their group's series from its last fitted time (they must come after
                it); rows of new groups start from the stationary distribution.
            type: ``"prediction"`` (new responses, on the model's scale: binomial
                proportions), ``"response"`` (the mean μ, including the AR(1) term's
                conditional mean) or ``"link"`` (η; without Gaussian AR(1) errors).
            allow_new_levels: False raises an error on levels not seen in fitting.
            weights: prior weights of the new rows (binomial: trials), an array or a
                column name; default 1.
            offset: the ``offset=`` argument of the fit, for the new rows (offset()
                terms of the formula are evaluated from newdata).
            num_draws: use this many draws, evenly spaced (default: all).
            seed: random seed.

        Returns:
            DataFrame (draws, rows): index ``draw`` (0, 1, ...), columns the rows' labels.

        Raises:
            DataError: unseen levels with ``allow_new_levels=False``, bad weights, or (AR(1))
                new rows that do not come after their series' last fitted time.
        """
        types = ("prediction", "response", "link")
        if self.layout.parts_model:
            types += ("conditional", "zprob")
        if type not in types:
            raise ValueError(f"type must be one of {types}, got {type!r}")
        with precision_scope(self.precision):
            params = self._flat_draws(num_draws)
            if newdata is None:
                fn = self._in_sample_fn(type)
            else:
                fn = self._new_data_fn(newdata, type, allow_new_levels, weights, offset)
            n_draws = params["beta"].shape[0]
            # Raw threefry keys from numpy: no eager JAX (each eager op compiles).
            params["key"] = np.random.default_rng(seed).integers(
                0, 2**32, size=(n_draws, 2), dtype=np.uint32
            )
            values = _map_draws(lambda p: fn(p.pop("key"), p), params)
        rows = self.bayes_model.model.design.rows if newdata is None else newdata.index
        return pd.DataFrame(values, columns=rows,
                            index=pd.RangeIndex(values.shape[0], name="draw"))

    def _finish_parts(self, key, eta, zeta, log_phi, weights, type):
        """A parts model's prediction of ``type`` from (η, ζ, log φ)."""
        from .._families.response_parts import conditional_mean
        from .parts import simulate

        family = self.bayes_model.family
        zero_inflated = self.layout.zero_inflated
        if type == "link":
            return eta
        if type == "zprob":
            return jax.nn.sigmoid(zeta) if zero_inflated else jnp.zeros_like(eta)
        if type == "conditional":
            return conditional_mean(family, eta, log_phi)
        if type == "response":
            return response_mean(family, eta, zeta, log_phi, zero_inflated=zero_inflated)
        return simulate(key, family, eta, zeta, log_phi, weights, zero_inflated)

    def _finish(self, key, eta, weights, dispersion, type):
        family = self.bayes_model.family
        if type == "link":
            return eta
        mu = family.link.inverse(eta)
        if type == "response":
            return mu
        return family.simulate(key, mu, weights, dispersion)

    def _in_sample_fn(self, type):
        bm = self.bayes_model
        w = np.asarray(bm.model.weights)

        def fn(key, params):
            eta = self._training_eta(params)
            if bm.layout.parts_model:
                zeta, log_phi = self._parts_predictors(params)
                return self._finish_parts(key, eta, zeta, log_phi, w, type)
            if bm.layout.ar1 == "errors":
                if type == "link":
                    return eta
                mean, var = self._conditionals(params, eta)
                if type == "response":
                    return mean
                return mean + jnp.sqrt(var) * jax.random.normal(key, mean.shape, mean.dtype)
            if bm.layout.ar1 == "latent":
                eta = eta + self._latent(params)
            return self._finish(key, eta, w, params.get("dispersion"), type)

        return fn

    def _new_data_fn(self, newdata, type, allow_new_levels, weights, offset):
        bm = self.bayes_model
        design = bm.model.design
        X, off, parts = new_data_design(design, newdata, allow_new_levels=allow_new_levels)
        n_new = len(newdata)
        if offset is not None:
            extra = newdata[offset] if isinstance(offset, str) else offset
            off = off + np.asarray(extra, dtype=np.float64)
        if weights is None:
            w = np.ones(n_new)
        else:
            w = newdata[weights] if isinstance(weights, str) else weights
            w = np.asarray(w, dtype=np.float64)
            if w.shape != (n_new,):
                raise DataError(f"weights must have one value per row of newdata ({n_new})")
        terms, parts = list(design.terms), list(parts)
        extra = None
        if bm.layout.parts_model:
            extra = {}
            for name in ("zi", "disp"):
                part = getattr(bm.parts, name)
                X_p, _ = bm.parts_arrays[name]
                if part is None:
                    extra[name] = (np.zeros((n_new, X_p.shape[1])), np.zeros(n_new))
                    continue
                if X_p.shape[1] == 0:  # no columns: a fixed log φ (its offset), or none
                    value = bm.parts_arrays[name][1][0] if len(bm.parts_arrays[name][1]) else 0.0
                    extra[name] = (np.zeros((n_new, 0)), np.full(n_new, value))
                    continue
                X_p, off_p, parts_p = new_data_design(part.design, newdata,
                                                      allow_new_levels=allow_new_levels)
                extra[name] = (np.asarray(X_p, np.float64), np.asarray(off_p, np.float64))
                if name == "zi":
                    terms += list(part.terms)
                    parts += list(parts_p)
        refs, n_new_levels = [], []
        for term, (r, _) in zip(terms, parts):
            r, k = _new_level_refs(term, newdata, np.asarray(r))
            refs.append(r)
            n_new_levels.append(k)
        zs = [np.asarray(z, dtype=np.float64) for _, z in parts]
        n_cond = len(design.terms)
        kind = bm.layout.ar1
        forecast = None if kind is None else ar1_lib.forecast_index(bm.ar1, newdata)
        sizes = [len(c) for c in bm.layout.coef_names]

        def fn(key, params):
            key_re, key_ar, key_y = jax.random.split(key, 3)
            effects = []
            for t, (b, factor, k) in enumerate(zip(params["effects"], params["factors"], n_new_levels)):
                if k:
                    u = jax.random.normal(jax.random.fold_in(key_re, t), (k, sizes[t]), dtype=b.dtype)
                    b = jnp.concatenate([b, u @ factor.T], axis=0)
                effects.append(b)
            eta = _linear_predictor(params["beta"], effects[:n_cond], X, off, refs[:n_cond],
                                    zs[:n_cond])
            if extra is not None:
                zeta, log_phi = self._parts_predictors(params, (
                    *extra["zi"], refs[n_cond:], zs[n_cond:], *extra["disp"], effects[n_cond:]))
                return self._finish_parts(key_y, eta, zeta, log_phi, w, type)
            if kind is None or (kind == "errors" and type == "link"):
                return self._finish(key_y, eta, w, params.get("dispersion"), type)
            ends = self._series_ends(params)
            start_value = jnp.where(forecast["start"] >= 0, ends[np.maximum(forecast["start"], 0)], 0.0)
            sd = params["sigma"] if kind == "errors" else params["ar_sd"]
            # ξ = 0 gives the process's conditional mean, for "response" and "link"; for
            # Gaussian errors the simulated process is the whole residual.
            xi = jax.random.normal(key_ar, eta.shape, dtype=eta.dtype)
            if type != "prediction":
                xi = jnp.zeros_like(xi)
            process = ar1_lib.forecast_process(xi, params["rho"], sd, start_value, forecast)
            if kind == "errors":
                return bm.family.link.inverse(eta) + process
            return self._finish(key_y, eta + process, w, params.get("dispersion"), type)

        return fn

    # ---- plots ------------------------------------------------------------------------------
    def plot_posterior(self, kind: str = "fixef", axes=None, prob: float = 0.95):
        """Histograms of the marginal posteriors of one kind of parameter (``"fixef"``,
        ``"sd"``, ``"cor"``, ``"family"``) with ``prob`` intervals (needs matplotlib)."""
        from .._results.plots import plot_posterior

        return plot_posterior(self, kind=kind, axes=axes, prob=prob)

    def plot_ppc(self, num_draws: int = 50, ax=None, seed: int = 0):
        """Posterior predictive check: densities of replicated data sets over the
        observed response (needs matplotlib)."""
        from .._results.plots import plot_ppc

        return plot_ppc(self, num_draws=num_draws, ax=ax, seed=seed)

    # ---- ArviZ ------------------------------------------------------------------------------
    def to_inference_data(self, posterior_predictive: bool = True, seed: int = 0):
        """An ``arviz.InferenceData`` with the posterior (named parameters), the
        posterior predictive draws of y (one replicated data set per draw, so that
        ``az.plot_ppc`` works; ``posterior_predictive=False`` leaves them out), the
        pointwise log-likelihood, the observed data and sampler statistics.

        Raises:
            ImportError: when ArviZ is not installed (``pip install arviz``).
        """
        try:
            import arviz as az
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "to_inference_data needs ArviZ: pip install 'glmmjax[bayes]' (or arviz)"
            ) from err
        layout = self.layout
        coords = {"obs": np.arange(len(self.bayes_model.model.y))}
        dims = {"y": ["obs"]}
        for t, label in enumerate(layout.labels):
            coords[f"{label}_level"] = list(layout.levels[t])
            coords[f"{label}_coef"] = list(layout.coef_names[t])
            dims[f"r_{label}"] = [f"{label}_level", f"{label}_coef"]
        extra = {}
        if posterior_predictive:
            draws = self.posterior_predict(seed=seed).to_numpy()
            extra["posterior_predictive"] = {
                "y": draws.reshape(self.num_chains, self.num_samples, -1)}
        return az.from_dict(
            **extra,
            posterior=dict(self.draws),
            log_likelihood={"y": self.log_likelihood()},
            observed_data={"y": np.asarray(self.bayes_model.model.y)},
            sample_stats={"diverging": self.diverging, "n_steps": self.num_steps},
            coords=coords,
            dims=dims,
        )

    # ---- text --------------------------------------------------------------------------
    def summary(self, prob: float = 0.95) -> str:
        """A text summary in the layout of brms's ``summary(brmsfit)``."""
        bm = self.bayes_model
        lo, hi = (1 - prob) / 2, 1 - (1 - prob) / 2
        table = self.posterior_summary("all", probs=(lo, hi))
        pct = f"{100 * prob:g}%"
        columns = ["Estimate", "Est.Error", f"l-{pct} CI", f"u-{pct} CI", "Rhat", "Bulk_ESS", "Tail_ESS"]

        def block(names, labels):
            sub = table.loc[names]
            frame = pd.DataFrame(
                {
                    columns[0]: sub["mean"].map("{:.2f}".format),
                    columns[1]: sub["sd"].map("{:.2f}".format),
                    columns[2]: sub.iloc[:, 2].map("{:.2f}".format),
                    columns[3]: sub.iloc[:, 3].map("{:.2f}".format),
                    columns[4]: sub["rhat"].map("{:.2f}".format),
                    columns[5]: sub["ess_bulk"].map(lambda v: f"{v:.0f}"),
                    columns[6]: sub["ess_tail"].map(lambda v: f"{v:.0f}"),
                }
            )
            frame.index = labels
            return frame.to_string()

        layout = self.layout
        family = bm.family
        model = bm.model
        draws = self.num_chains * self.num_samples
        lines = [
            f" Family: {family.name}",
            f"  Links: mu = {family.link.name}",
            f"Formula: {model.design.formula.text}",
            f"   Data: {model.design.nobs} observations",
            f"  Draws: {plural(self.num_chains, 'chain')}, each with iter = "
            f"{self.num_warmup + self.num_samples}; "
            f"warmup = {self.num_warmup}; thin = 1;",
            f"         total post-warmup draws = {draws}",
        ]
        if bm.parts is not None:
            extra_lines = [f"   {name}: {getattr(bm.parts, name).formula}"
                           for name in ("zi", "disp") if getattr(bm.parts, name) is not None]
            lines[3:3] = extra_lines
        if bm.ar1 is not None:
            group = f" within {bm.ar1.group_column}" if bm.ar1.group_column else ""
            lines.insert(4, f"Autocor: AR(1) over {bm.ar1.time_column}{group}")
        lines += ["", "Multilevel Hyperparameters:"]
        for t, label in enumerate(layout.labels):
            if layout.term_part(t) == "zi":
                lines.append(f"~{label.removesuffix('__zi')} (zero-inflation model; Number of "
                             f"levels: {len(layout.levels[t])})")
            else:
                lines.append(f"~{label} (Number of levels: {len(layout.levels[t])})")
            names = layout.sd_names(t)
            labels = [f"sd({c})" for c in layout.coef_names[t]]
            if layout.structure(t) is not None and len(names) == 1:
                labels = [f"sd({layout.structure(t).name})"]
            for i, j, name in layout.cor_pairs(t):
                names.append(name)
                labels.append(f"cor({layout.coef_names[t][j]},{layout.coef_names[t][i]})")
            for param in layout.structure_params(t):
                names.append(param.name)
                labels.append(f"{param.name[: -len(label) - 1]}({layout.structure(t).name})")
            lines += [block(names, labels), ""]
        heading = "Regression Coefficients:"
        if layout.parts_model:
            heading = "Regression Coefficients (conditional model):"
        lines.append(heading)
        lines += [block([f"b_{n}" for n in layout.fixef_names], list(layout.fixef_names)), ""]
        for extra in layout.extra_fixef:
            lines.append("Zero-inflation model (logit link):" if extra.part == "zi" else
                         "Dispersion model (log link, glmmTMB's phi):")
            lines += [block(extra.names(), list(extra.coef_names)), ""]
        if layout.ar1 is not None:
            names = [n for n in ("ar1_rho", "ar1_sd") if n in self.draws]
            lines += ["Correlation Structures:", block(names, [n.replace("ar1_rho", "ar[1]") for n in names]), ""]
        if layout.dispersion is not None:
            lines += ["Further Distributional Parameters:", block([layout.dispersion], [layout.dispersion]), ""]
        lines.append(
            f"Draws were sampled using NUTS (NumPyro) in {self.seconds:.1f} s; "
            f"{plural(self.divergences, 'divergent transition')} after warmup. For each parameter, "
            "Bulk_ESS and Tail_ESS are effective sample size measures, and Rhat is the "
            "potential scale reduction factor on split chains (at convergence, Rhat = 1)."
        )
        return "\n".join(lines)

    def __repr__(self) -> str:
        # Short on purpose: the draws are arrays of (chains, draws, ...).
        from .._display import plural, short_repr

        model = self.bayes_model.model
        family = model.family
        groups = ", ".join(f"{t.group} ({t.n_levels})" for t in model.design.terms)
        sampling = (f"{plural(self.num_chains, 'chain')} × {plural(self.num_samples, 'draw')}, "
                    f"{plural(self.divergences, 'divergent transition')}, "
                    f"{self.seconds:.1f} s")
        return short_repr("BayesResult: NUTS (NumPyro)", [
            ("formula", model.design.formula.text),
            ("family", "gaussian (identity)" if family is None
             else f"{family.name} ({family.link.name})"),
            ("nobs", model.design.nobs),
            ("groups", groups or None),
            ("sampling", sampling),
        ])

    def _repr_html_(self) -> str:
        from .._display import html_summary

        return html_summary("BayesResult", self.summary())

    def __str__(self) -> str:
        return self.summary()
