"""Parameter names and weakly informative default priors for Bayesian fits.

Names (the keys of ``priors=`` and the rows of summaries) follow brms:

=============================  ============================================================
name                           parameter
=============================  ============================================================
``b_<coef>``                   fixed effect, e.g. ``b_Intercept``, ``b_Days``
``sd_<group>__<coef>``         standard deviation of a random effect, ``sd_Subject__Days``
``cor_<group>``                (prior only) LKJ prior on the correlations of one term
``cor_<group>__<c1>__<c2>``    (summaries) a correlation, ``cor_Subject__Intercept__Days``
``r_<group>[<level>,<coef>]``  (summaries) a group-level effect b = Λu
``sigma``                      Gaussian residual standard deviation
``phi``                        Gamma and inverse Gaussian dispersion (Var y = φμ², φμ³),
                               beta precision (Var y = μ(1 − μ)/(1 + φ))
``theta``                      negative binomial size (Var y = μ + μ²/θ)
``ar1_rho``, ``ar1_sd``        AR(1) coefficient; SD of the latent AR(1) term
``b_zi_<coef>``                zero-inflation (or hurdle) fixed effect, logit scale
                               (``ziformula=``)
``b_disp_<coef>``              dispersion-model fixed effect, on glmmTMB's log φ
                               (``dispformula=``; then no ``sigma``/``phi``/``theta``)
``sd_<group>__zi__<coef>``     SD of a zero-inflation random effect; its term's label is
                               ``<group>__zi`` (``r_<group>__zi[...]``, ``cor_<group>__zi``)
=============================  ============================================================

``<group>`` is the grouping factor as in ``fit.varcorr`` (``g``, ``g.1``, ... when one
factor has several terms, as ``(x || g)`` gives). Class keys set several priors at once:
``"b"`` (all fixed effects but the intercept), ``"sd"`` (every SD), ``"sd_<group>"``
(the SDs of one term), ``"cor"`` (every LKJ prior). The most specific key wins.

Defaults, scaled to the data in the spirit of brms and rstanarm (s_y = SD of y,
mad = R's normal-consistent median absolute deviation, both weighted where weights are
given):

* intercept: Student-t(3, m, s) with, for a Gaussian identity-link model, m = median(y),
  s = max(2.5, mad(y)) (brms); otherwise m = g(ȳ) − mean(offset) (ȳ the weighted mean
  of the response after the family's start adjustment, g the link) and s = 2.5. As in
  brms and rstanarm the intercept is placed on the predictors centred at their means,
  so its prior concerns the mean linear predictor; ``b_Intercept`` in results is the
  usual (uncentred) intercept.
* other fixed effects: Normal(0, 2.5·s_y/s_x) for a Gaussian identity link and
  Normal(0, 2.5/s_x) otherwise (rstanarm's autoscaled priors; s_x = SD of the column).
* standard deviations: half-Student-t(3, 0, s) with s = max(2.5, mad(y)) for a Gaussian
  identity link, 2.5 otherwise (brms); correlations: LKJ(2) on each term's Cholesky
  factor.
* sigma: half-Student-t(3, 0, max(2.5, mad(y))) (brms).
* Gamma and inverse Gaussian φ: InverseGamma(0.01, 0.01), i.e. brms's Gamma(0.01, 0.01)
  on the shape 1/φ; beta φ: Gamma(0.01, 0.01) (brms); negative binomial θ:
  InverseGamma(0.4, 0.3) (brms's prior on the shape).
* ``ar1_rho``: Uniform(−1, 1); ``ar1_sd``: half-Student-t(3, 0, 2.5).
* zero-inflation part (``ziformula=``): intercept Logistic(0, 1) (brms's for ``zi``: a
  uniform prior on π at average predictors), other fixed effects Normal(0, 2.5/s_x), the
  SDs as above. Dispersion model (``dispformula=``, log link): intercept
  Student-t(3, log φ̃, 2.5) with φ̃ the moment guess of glmmTMB's φ, other fixed
  effects Normal(0, 2.5/s_x). Both intercepts are sampled at centred predictors, as the
  conditional one; class keys ``"b_zi"`` and ``"b_disp"`` set a part's other effects.
* structured terms (``diag``, ``cs``, ``ar1``, ``toep``, ``ou``, ``exp``, ``gau``,
  ``mat``) and relmat terms: the SDs as above (``sd_<group>`` where the structure has one
  SD), and their correlation parameters (``rho_<group>``, ``pacf<k>_<group>``,
  ``scale_<group>``, ``range_<group>``, ``nu_<group>``) as listed in
  :mod:`glmmjax._bayes.structures`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.util import promote_shapes
from scipy import special

from .._families.base import Family, Gaussian
from . import structures as structures_lib


class HalfStudentT(dist.Distribution):
    """|T| for T ~ Student-t(df, 0, scale): density 2·t_df(x/scale)/scale on x > 0."""

    arg_constraints = {"df": constraints.positive, "scale": constraints.positive}
    support = constraints.positive
    reparametrized_params = ["df", "scale"]

    def __init__(self, df, scale=1.0, *, validate_args=None):
        self.df, self.scale = promote_shapes(df, scale)
        batch_shape = jax.lax.broadcast_shapes(jnp.shape(df), jnp.shape(scale))
        super().__init__(batch_shape, validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        base = dist.StudentT(self.df, 0.0, self.scale)
        return jnp.abs(base.sample(key, sample_shape))

    def log_prob(self, value):
        return math.log(2.0) + dist.StudentT(self.df, 0.0, self.scale).log_prob(value)


class _UnrolledCorrCholesky(constraints._CorrCholesky):
    """Cholesky factors of correlation matrices, mapped from R^(S(S−1)/2) by
    :class:`CorrCholeskyUnrolled` (registered with ``biject_to``)."""


corr_cholesky_unrolled = _UnrolledCorrCholesky()


class CorrCholeskyUnrolled(dist.transforms.Transform):
    """x ∈ R^(S(S−1)/2) -> the Cholesky factor L of a correlation matrix.

    The canonical partial correlations z = tanh(x) (row by row below the diagonal) fill
    L by the stick-breaking rule L_ij = z_ij·√(1 − Σ_{k<j} L_ik²), L_ii = √(1 − Σ_{k<i}
    L_ik²) (Lewandowski, Kurowicka & Joe 2009; Stan's ``cholesky_factor_corr``).
    Written with the small loops unrolled: it compiles several times faster than
    NumPyro's vectorized ``CorrCholeskyTransform``, which matters inside NUTS.
    """

    domain = constraints.real_vector
    codomain = corr_cholesky_unrolled

    def _size(self, vector_length: int) -> int:
        size = int(round((1 + math.sqrt(1 + 8 * vector_length)) / 2))
        if size * (size - 1) // 2 != vector_length:
            raise ValueError(f"{vector_length} is not the length of a correlation's lower triangle")
        return size

    def _rows(self, x):
        size = self._size(x.shape[-1])
        z = jnp.tanh(x)
        rows, log_det, k = [], jnp.zeros(x.shape[:-1], dtype=x.dtype), 0
        ones, zeros = jnp.ones(x.shape[:-1], x.dtype), jnp.zeros(x.shape[:-1], x.dtype)
        rows.append([ones] + [zeros] * (size - 1))
        for i in range(1, size):
            row, remaining = [], ones
            for _ in range(i):
                zk = z[..., k]
                row.append(zk * jnp.sqrt(remaining))
                log_det = log_det + jnp.log1p(-zk * zk) + 0.5 * jnp.log(remaining)
                remaining = remaining - row[-1] ** 2
                k += 1
            row.append(jnp.sqrt(remaining))
            rows.append(row + [zeros] * (size - 1 - i))
        return rows, log_det

    def __call__(self, x):
        rows, _ = self._rows(x)
        return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)

    def _inverse(self, y):
        size = y.shape[-1]
        out = []
        for i in range(1, size):
            remaining = jnp.ones(y.shape[:-2], y.dtype)
            for j in range(i):
                z = y[..., i, j] / jnp.sqrt(remaining)
                out.append(jnp.arctanh(jnp.clip(z, -1 + 1e-15, 1 - 1e-15)))
                remaining = remaining - y[..., i, j] ** 2
        return jnp.stack(out, axis=-1) if out else jnp.zeros(y.shape[:-2] + (0,), y.dtype)

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        return self._rows(x)[1]

    def forward_shape(self, shape):
        size = self._size(shape[-1])
        return shape[:-1] + (size, size)

    def inverse_shape(self, shape):
        return shape[:-2] + (shape[-1] * (shape[-1] - 1) // 2,)

    def tree_flatten(self):
        return (), ((), {})

    def __eq__(self, other):
        return isinstance(other, CorrCholeskyUnrolled)

    def __hash__(self):
        return hash(CorrCholeskyUnrolled)


@dist.transforms.biject_to.register(_UnrolledCorrCholesky)
def _transform_to_unrolled(constraint):
    return CorrCholeskyUnrolled()


class LKJ(dist.Distribution):
    """LKJ(η) prior on the Cholesky factor L of an S×S correlation matrix:
    p(L) ∝ Π_{i≥2} L_ii^(S − i + 2η − 2), i.e. p(LL') ∝ det(LL')^(η − 1).

    The same density as ``numpyro.distributions.LKJCholesky`` (normalizing constant
    included), on a support whose unconstraining transform is
    :class:`CorrCholeskyUnrolled` (cheaper to compile). Priors given as
    ``dist.LKJCholesky(S, η)`` or as η alone are converted to it.
    """

    arg_constraints = {"concentration": constraints.positive}
    support = corr_cholesky_unrolled
    pytree_data_fields = ("concentration", "log_normalizer")
    pytree_aux_fields = ("dimension",)

    def __init__(self, dimension: int, concentration=1.0, *, validate_args=None):
        if dimension < 2:
            raise ValueError(f"an LKJ prior needs dimension >= 2, got {dimension}")
        self.dimension = int(dimension)
        self.concentration = concentration
        # LKJ's normalizing constant (Lewandowski et al. 2009, as NumPyro's LKJCholesky),
        # in numpy: eager JAX here would compile a dozen tiny programs per prior.
        dm1 = self.dimension - 1
        alpha = np.asarray(concentration, dtype=np.float64) + 0.5 * dm1
        self.log_normalizer = -(
            0.5 * dm1 * math.log(math.pi)
            + special.multigammaln(alpha - 0.5, dm1)
            - dm1 * special.gammaln(alpha)
        )
        super().__init__(
            jnp.shape(concentration), (self.dimension, self.dimension), validate_args=validate_args
        )

    def sample(self, key, sample_shape=()):
        return dist.LKJCholesky(self.dimension, self.concentration).sample(key, sample_shape)

    def log_prob(self, value):
        size = self.dimension
        log_diag = jnp.log(jnp.diagonal(value, axis1=-2, axis2=-1)[..., 1:])
        powers = size - jnp.arange(2, size + 1) + 2.0 * self.concentration - 2.0
        return jnp.sum(powers * log_diag, axis=-1) + self.log_normalizer


@dataclasses.dataclass(frozen=True)
class Layout:
    """Static names of a model's parameters (see the module docstring)."""

    fixef_names: tuple[str, ...]
    intercept_index: int | None  # the column of ones, if any
    centred: bool  # whether the other columns are centred (the intercept sampled apart)
    labels: tuple[str, ...]  # per term, as fit.varcorr's group column
    coef_names: tuple[tuple[str, ...], ...]
    levels: tuple[tuple[str, ...], ...]
    dispersion: str | None  # "sigma", "phi", "theta" or None
    ar1: str | None  # "errors" (Gaussian), "latent" (other families) or None
    ar1_grid: tuple[int, int] | None = None  # (longest series, number of series), static
    # Per term, its covariance structure where it has one (diag, cs, ar1, ..., relmat;
    # glmmjax._bayes.structures), None for lme4's unstructured terms.
    structures: tuple = ()
    # glmmTMB's extra parts (ziformula=/dispformula=; glmmjax._bayes.parts): per term its
    # part ("cond" or "zi"; missing: "cond"); the fixed effects of the zi and disp parts.
    term_parts: tuple = ()
    extra_fixef: tuple = ()  # ExtraFixef per part with columns
    parts_model: bool = False  # the likelihood is glmmTMB's row_loglik (zi, hurdle, disp)
    zero_inflated: bool = False

    def term_part(self, t: int) -> str:
        return self.term_parts[t] if t < len(self.term_parts) else "cond"

    def part_fixef(self, part: str):
        """The :class:`ExtraFixef` of part ``"zi"`` or ``"disp"``, or None."""
        return next((f for f in self.extra_fixef if f.part == part), None)

    def structure(self, t: int):
        """Term t's covariance structure, or None (unstructured)."""
        cov = self.structures[t] if t < len(self.structures) else None
        return cov if structures_lib.is_structured(cov) else None

    def structure_params(self, t: int) -> list:
        cov = self.structure(t)
        return [] if cov is None else structures_lib.structure_params(cov, self.labels[t])

    def fixef_site(self, j: int) -> str:
        """Name of the sampled site of fixed effect j (the centred intercept is
        ``Intercept``)."""
        if j == self.intercept_index and self.centred:
            return "Intercept"
        return f"b_{self.fixef_names[j]}"

    def sd_names(self, t: int) -> list[str]:
        cov = self.structure(t)
        if cov is not None and structures_lib.sd_count(cov, cov.size) == 1:
            return [f"sd_{self.labels[t]}"]
        return [f"sd_{self.labels[t]}__{c}" for c in self.coef_names[t]]

    def has_lkj(self, t: int) -> bool:
        """An unstructured term with correlations (an LKJ prior, ``cor_<group>``)."""
        return self.structure(t) is None and len(self.coef_names[t]) > 1

    def cor_pairs(self, t: int) -> list[tuple[int, int, str]]:
        if not self.has_lkj(t):
            return []
        coefs = self.coef_names[t]
        return [
            (i, j, f"cor_{self.labels[t]}__{coefs[j]}__{coefs[i]}")
            for j in range(len(coefs))
            for i in range(j + 1, len(coefs))
        ]

    def all_fixef_names(self) -> list[str]:
        """Names of every fixed effect (``b_*``), the conditional part's first."""
        return [f"b_{name}" for name in self.fixef_names] + [
            n for f in self.extra_fixef for n in f.names()]

    def prior_keys(self) -> list[str]:
        """Every parameter that has a prior, in model order."""
        keys = self.all_fixef_names()
        for t in range(len(self.coef_names)):
            keys += self.sd_names(t)
            if self.has_lkj(t):
                keys.append(f"cor_{self.labels[t]}")
            keys += [p.name for p in self.structure_params(t)]
        if self.dispersion is not None:
            keys.append(self.dispersion)
        if self.ar1 is not None:
            keys.append("ar1_rho")
            if self.ar1 == "latent":
                keys.append("ar1_sd")
        return keys

    def class_keys(self) -> dict[str, list[str]]:
        """Keys that set several priors at once, and the parameters they cover."""
        slopes = [
            f"b_{name}" for j, name in enumerate(self.fixef_names) if j != self.intercept_index
        ]
        out = {"b": slopes, "sd": [], "cor": []}
        for f in self.extra_fixef:
            out[f"b_{f.part}"] = [n for j, n in enumerate(f.names()) if j != f.intercept_index]
        for t in range(len(self.coef_names)):
            out[f"sd_{self.labels[t]}"] = self.sd_names(t)
            out["sd"] += self.sd_names(t)
            if self.has_lkj(t):
                out["cor"].append(f"cor_{self.labels[t]}")
        return {k: v for k, v in out.items() if v and k not in self.prior_keys()}


@dataclasses.dataclass(frozen=True)
class ExtraFixef:
    """The fixed effects of the zero-inflation (``part="zi"``) or dispersion (``"disp"``)
    part: names ``b_<part>_<coef>``; the intercept sampled at centred predictors as
    ``Intercept_<part>`` when ``centred``."""

    part: str
    coef_names: tuple[str, ...]
    intercept_index: int | None
    centred: bool

    def names(self) -> list[str]:
        return [f"b_{self.part}_{c}" for c in self.coef_names]

    def site(self, j: int) -> str:
        if j == self.intercept_index and self.centred:
            return f"Intercept_{self.part}"
        return self.names()[j]


def group_labels(terms) -> tuple[str, ...]:
    """lme4's labels of the terms' grouping factors: g, g.1, g.2 for repeats."""
    seen: dict[str, int] = {}
    labels = []
    for term in terms:
        count = seen.get(term.group, 0)
        labels.append(term.group if count == 0 else f"{term.group}.{count}")
        seen[term.group] = count + 1
    return tuple(labels)


def dispersion_parameter(family: Family) -> str | None:
    if isinstance(family, Gaussian):
        return "sigma"
    if not family.has_dispersion or family.dispersion_method == "fixed":
        return None
    return family.dispersion_name  # "phi" or "theta"


def _weighted_quantile(values, weights, q):
    order = np.argsort(values)
    v, w = values[order], weights[order]
    cum = np.cumsum(w) - 0.5 * w
    return float(np.interp(q * w.sum(), cum, v))


@dataclasses.dataclass(frozen=True)
class DataScale:
    """Summaries of the data that set the default priors and starting points."""

    identity_gaussian: bool
    location: float  # intercept prior location
    scale: float  # intercept (and SD) prior scale
    sd_y: float
    sd_x: np.ndarray  # per column of X
    dispersion_guess: float | None
    # Parts models: SDs of the zi/disp columns by part; log of glmmTMB's φ guess.
    extra_sd_x: dict = dataclasses.field(default_factory=dict)
    log_phi_guess: float = 0.0


def data_scale(X, y, weights, offset, family: Family, intercept_index) -> DataScale:
    """Location and scales of the response and predictors (numpy, before tracing)."""
    y = np.asarray(y, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    w_pos = np.where(w > 0, w, 0.0)
    identity_gaussian = isinstance(family, Gaussian) and family.link.name == "identity"
    mean_y = float(np.sum(w_pos * y) / np.sum(w_pos))
    sd_y = float(np.sqrt(np.sum(w_pos * (y - mean_y) ** 2) / np.sum(w_pos)))
    median_y = _weighted_quantile(y, w_pos, 0.5)
    mad = 1.4826 * _weighted_quantile(np.abs(y - median_y), w_pos, 0.5)
    sd_x = np.std(np.asarray(X), axis=0)
    if identity_gaussian:
        location, scale = median_y, max(2.5, mad)
        guess = sd_y if sd_y > 0 else 1.0
    else:
        with jax.enable_x64(True):
            mu0 = np.asarray(family.initialize(jnp.asarray(y), jnp.asarray(w)))
            mu_bar = float(np.sum(w_pos * mu0) / np.sum(w_pos))
            location = float(family.link.link(jnp.asarray(mu_bar)))
            guess = _dispersion_guess(family, y, w_pos, mu_bar)
        location = location - float(np.mean(offset)) if np.isfinite(location) else 0.0
        scale = 2.5
    return DataScale(identity_gaussian, location, scale, sd_y, sd_x, guess)


def _dispersion_guess(family: Family, y, w, mu_bar) -> float | None:
    name = dispersion_parameter(family)
    if name is None:
        return None
    resid2 = np.sum(w * (y - mu_bar) ** 2) / np.sum(w)
    variance = float(family.variance(jnp.asarray(mu_bar), 1.0))
    if name == "sigma":
        value = math.sqrt(resid2)
    elif family.dispersion_method == "pearson":  # Gamma, inverse Gaussian: Var = φ V(μ)
        value = resid2 / variance
    else:
        value = float(family.dispersion_start(jnp.asarray(y), jnp.asarray(mu_bar), jnp.asarray(w)))
    return float(np.clip(value, 1e-6, 1e6)) if np.isfinite(value) and value > 0 else 1.0


def default_priors(layout: Layout, family: Family, scale: DataScale) -> dict:
    """Default prior of every parameter (see the module docstring)."""
    priors = {}
    for j, name in enumerate(layout.fixef_names):
        if j == layout.intercept_index:
            priors[f"b_{name}"] = dist.StudentT(3.0, scale.location, scale.scale)
            continue
        sd_x = float(scale.sd_x[j]) if scale.sd_x[j] > 0 else 1.0
        s = 2.5 * (scale.sd_y if scale.identity_gaussian and scale.sd_y > 0 else 1.0) / sd_x
        priors[f"b_{name}"] = dist.Normal(0.0, s)
    for extra in layout.extra_fixef:
        sd_x = scale.extra_sd_x[extra.part]
        for j, name in enumerate(extra.names()):
            if j == extra.intercept_index:
                priors[name] = (dist.Logistic(0.0, 1.0) if extra.part == "zi" else
                                dist.StudentT(3.0, scale.log_phi_guess, 2.5))
            else:
                priors[name] = dist.Normal(0.0, 2.5 / (float(sd_x[j]) if sd_x[j] > 0 else 1.0))
    sd_scale = scale.scale
    for t, coefs in enumerate(layout.coef_names):
        for key in layout.sd_names(t):
            priors[key] = HalfStudentT(3.0, sd_scale)
        if layout.has_lkj(t):
            priors[f"cor_{layout.labels[t]}"] = LKJ(len(coefs), 2.0)
        for param in layout.structure_params(t):
            priors[param.name] = structures_lib.default_prior(layout.structure(t), param)
    if layout.dispersion == "sigma":
        priors["sigma"] = HalfStudentT(3.0, sd_scale)
    elif layout.dispersion == "theta":
        priors["theta"] = dist.InverseGamma(0.4, 0.3)
    elif layout.dispersion == "phi":
        if family.name == "beta":
            priors["phi"] = dist.Gamma(0.01, 0.01)
        else:
            priors["phi"] = dist.InverseGamma(0.01, 0.01)
    if layout.ar1 is not None:
        priors["ar1_rho"] = dist.Uniform(-1.0, 1.0)
        if layout.ar1 == "latent":
            priors["ar1_sd"] = HalfStudentT(3.0, 2.5)
    return priors


_POSITIVE = ("sd_", "sigma", "phi", "theta", "ar1_sd")


def _check_prior(key: str, prior, layout: Layout, sizes: dict[str, int]):
    if key.startswith("cor_"):
        size = sizes[key]
        if isinstance(prior, (int, float)) and not isinstance(prior, bool):
            if prior <= 0:
                raise ValueError(f"the LKJ concentration for {key!r} must be positive, got {prior}")
            return LKJ(size, float(prior))
        if not isinstance(prior, (dist.LKJCholesky, LKJ)) or prior.event_shape != (size, size):
            raise ValueError(
                f"the prior for {key!r} must be dist.LKJCholesky({size}, concentration) or a "
                f"positive number (the concentration), got {prior!r}"
            )
        return LKJ(size, float(np.asarray(prior.concentration)))
    if not isinstance(prior, dist.Distribution):
        raise ValueError(f"the prior for {key!r} must be a numpyro distribution, got {prior!r}")
    if prior.batch_shape != () or prior.event_shape != ():
        raise ValueError(
            f"the prior for {key!r} must be a scalar distribution, got batch shape "
            f"{prior.batch_shape} and event shape {prior.event_shape}"
        )
    # Supports are checked from their bounds (no sampling: eager JAX compiles).
    support = prior.support
    lower = np.asarray(getattr(support, "lower_bound", -np.inf), dtype=float)
    upper = np.asarray(getattr(support, "upper_bound", np.inf), dtype=float)
    if key.startswith(_POSITIVE) and not np.all(lower >= 0):
        raise ValueError(
            f"{key!r} is positive: its prior must be on positive values, such as "
            f"glmmjax.bayes.HalfStudentT(3, 2.5), dist.HalfNormal(5) or dist.Exponential(1); "
            f"got {prior!r}"
        )
    if key == "ar1_rho" and not (np.all(lower >= -1) and np.all(upper <= 1)):
        raise ValueError(f"ar1_rho lies in (-1, 1): its prior must too, got {prior!r}")
    for t in range(len(layout.labels)):
        for param in layout.structure_params(t):
            if key == param.name and not (np.all(lower >= param.lower)
                                          and np.all(upper <= param.upper)):
                raise ValueError(f"{key!r} lies in ({param.lower:.4g}, {param.upper:.4g}): "
                                 f"its prior must too, got {prior!r}")
    return prior


def resolve_priors(defaults: dict, user: dict | None, layout: Layout) -> tuple[dict, dict]:
    """Apply the user's priors over the defaults: exact names, then term keys
    (``sd_<group>``), then class keys (``b``, ``sd``, ``cor``); the most specific wins.

    Returns ``(priors, sources)`` where sources[name] is ``"default"`` or the user key
    that set it.

    Raises:
        ValueError: an unknown name (the message lists the valid ones) or a prior with
            the wrong support or shape.
    """
    priors = dict(defaults)
    sources = {k: "default" for k in defaults}
    if not user:
        return _float_leaves(priors), sources
    classes = layout.class_keys()
    sizes = {f"cor_{layout.labels[t]}": len(c) for t, c in enumerate(layout.coef_names)}
    unknown = [k for k in user if k not in priors and k not in classes]
    if unknown:
        raise ValueError(
            f"no parameter named {unknown}; priors can be set for {list(priors)} and, for "
            f"several at once, {list(classes)}"
        )

    def specificity(key):
        if key in priors:
            return 2
        return 1 if key.startswith(("sd_", "cor_")) else 0

    for key in sorted(user, key=specificity):
        for name in classes.get(key, [key]):
            priors[name] = _check_prior(name, user[key], layout, sizes)
            sources[name] = key
    return _float_leaves(priors), sources


def _float_leaves(priors: dict) -> dict:
    """Priors with float64 numpy leaves: ``Normal(0, 5)`` and ``Normal(0.0, 5.0)`` then
    have the same pytree types, so compiled samplers are shared between them."""

    def as_float(leaf):
        array = np.asarray(leaf)
        if array.dtype.kind in "biuf":
            return array.astype(np.float64)
        return leaf

    return {k: jax.tree_util.tree_map(as_float, v) for k, v in priors.items()}


def describe(prior) -> str:
    """A short readable form of a distribution, as brms prints priors."""

    def num(x):
        x = np.asarray(x)
        return f"{float(x):.4g}" if x.size == 1 else str(x.tolist())

    if isinstance(prior, HalfStudentT):
        return f"half_student_t({num(prior.df)}, 0, {num(prior.scale)})"
    if isinstance(prior, dist.StudentT):
        return f"student_t({num(prior.df)}, {num(prior.loc)}, {num(prior.scale)})"
    if isinstance(prior, dist.Normal):
        return f"normal({num(prior.loc)}, {num(prior.scale)})"
    if isinstance(prior, (dist.LKJCholesky, LKJ)):
        return f"lkj_corr_cholesky({num(prior.concentration)})"
    if isinstance(prior, dist.Uniform):
        return f"uniform({num(prior.low)}, {num(prior.high)})"
    if isinstance(prior, dist.InverseGamma):
        return f"inv_gamma({num(prior.concentration)}, {num(prior.rate)})"
    if isinstance(prior, dist.Gamma):
        return f"gamma({num(prior.concentration)}, {num(prior.rate)})"
    if isinstance(prior, dist.HalfNormal):
        return f"half_normal(0, {num(prior.scale)})"
    if isinstance(prior, dist.HalfCauchy):
        return f"half_cauchy(0, {num(prior.scale)})"
    if isinstance(prior, dist.Exponential):
        return f"exponential({num(prior.rate)})"
    if isinstance(prior, dist.LogNormal):
        return f"lognormal({num(prior.loc)}, {num(prior.scale)})"
    if isinstance(prior, dist.Logistic):
        return f"logistic({num(prior.loc)}, {num(prior.scale)})"
    return repr(prior)
