"""glmmTMB's response families beyond R's: NB1, zero-truncated counts, generalized
Poisson, Conway–Maxwell–Poisson, beta-binomial, lognormal, Student-t, Tweedie and
ordered beta, with glmmTMB's parameterizations.

==========================  ==========  ====================================  ==============
family (glmmTMB name)       dispersion  variance of y                         log P(y)
==========================  ==========  ====================================  ==============
NegativeBinomial1 nbinom1   φ           μ(1 + φ)                              NB, size μ/φ
TruncatedPoisson            (none)      of the truncated distribution         P(y)/(1 − P(0))
TruncatedNegativeBinomial2  θ           of the truncated distribution         NB2 / (1 − P(0))
TruncatedNegativeBinomial1  φ           of the truncated distribution         NB1 / (1 − P(0))
GeneralizedPoisson genpois  φ           μφ                                    θ = μ/√φ, λ = 1 − 1/√φ
ConwayMaxwellPoisson        φ = 1/ν     of CMP(λ, ν) with mean μ (≈ μφ)       λʸ/(y!)^ν/Z(λ, ν)
OrderedBeta ordbeta         φ           μ(1 − μ) (glmmTMB's placeholder)      cutpoints + beta
BetaBinomial                φ           nμ(1 − μ)(1 + (n − 1)/(φ + 1)) / n²   α = μφ, β = (1 − μ)φ
LogNormal lognormal         σ           σ² (μ, σ on the data scale)           log y ~ N
StudentT t_family           σ           σ²ν/(ν − 2)                           dt((y − μ)/σ, ν)/σ
Tweedie tweedie             φ           φμᵖ, 1 < p < 2                        Dunn-Smyth series
==========================  ==========  ====================================  ==============

Student-t's ν and Tweedie's p are fixed by the user or, by default (as glmmTMB),
estimated jointly with the other parameters by ``glmer`` on the host engine, as a second
outer parameter after log φ (log ν; logit(p − 1), glmmTMB's ``psi``); the fitted
model's family then carries the estimate (``fit.family``, ``fit.extra_params``).

μ is the family's mean parameter g⁻¹(η) as glmmTMB defines it (for the truncated
families, the mean of the *untruncated* distribution, as glmmTMB's conditional mean;
:meth:`response_mean` gives E[y]). Every dispersion is estimated by maximum likelihood
jointly with β, and standard errors come from the joint Hessian, as glmmTMB does.
The log-densities are written once, in :mod:`glmmjax._families.math_tmb`, for numpy (the
host engine's closed forms) and jax.numpy (``loglik_eta`` here, autodiffed by the
compiled engine and the GLM fit).

glmmTMB defines no deviance for these families (``deviance()`` is NULL and it has no
deviance residuals): ``unit_deviance`` is −2·log-density (glmmTMB's "deviance" column
in its summary is −2 log L), and deviance residuals raise.
"""

from __future__ import annotations

import numpy as np

from .._lazyjax import jax, jnp, static_field
from . import math_compois as cmp
from . import math_tmb as tmb
from . import ordbeta
from .base import Binomial, Family, _float, _raise_bad_rows
from .links import Link

__all__ = [
    "NegativeBinomial1",
    "TruncatedPoisson",
    "TruncatedNegativeBinomial2",
    "TruncatedNegativeBinomial1",
    "GeneralizedPoisson",
    "ConwayMaxwellPoisson",
    "BetaBinomial",
    "LogNormal",
    "StudentT",
    "Tweedie",
    "OrderedBeta",
]


class _LikelihoodFamily(Family):
    """A glmmTMB family: dispersion by ML, joint vcov, −2ℓ as its 'deviance'."""

    has_dispersion = True
    dispersion_method = "ml"
    joint_vcov = True
    irls = False  # glm fits by Newton's method on the log-likelihood (glmmjax._glm)

    def fixed_dispersion(self):
        """The dispersion when it is not estimated (None: it always is)."""
        return None

    def _psi(self, dispersion):
        return jnp.log(_float(dispersion))

    def loglik(self, y, mu, weights, dispersion=None):
        return self.loglik_eta(y, self.link.link(mu), weights, dispersion)

    def unit_deviance(self, y, mu, dispersion=None):
        return -2.0 * self.loglik(y, mu, jnp.ones_like(_float(y)), dispersion)

    def unit_deviance_eta(self, y, eta, dispersion=None):
        return -2.0 * self.loglik_eta(y, eta, jnp.ones_like(_float(y)), dispersion)

    def deviance_residuals(self, y, mu, weights, dispersion=None):
        raise NotImplementedError(
            f"the {self.name} family has no deviance (glmmTMB defines none); use "
            "residuals of type 'pearson', 'response' or 'working'")

    def response_mean(self, mu, dispersion=None):
        """E[y] at the mean parameter μ (differs from μ for truncated families)."""
        return mu

    def moment_dispersion(self, xp, y, mu, weights):
        """A starting dispersion by moments (numpy on the host, jax.numpy in JAX)."""
        return 1.0 + 0.0 * xp.sum(weights)

    def dispersion_start(self, y, mu, weights):
        return self.moment_dispersion(jnp, y, mu, weights)


class _CountFamily(_LikelihoodFamily):
    canonical_link = "log"
    allowed_links = ("log", "sqrt", "identity")
    positive = False  # zero-truncated: counts ≥ 1

    @property
    def truncated(self) -> bool:
        """Zero-truncated: E[y] = μ/P(y > 0) is not the mean parameter μ."""
        return self.positive

    def valid_mu(self, mu):
        return jnp.isfinite(mu) & (mu > 0)

    def initialize(self, y, weights):
        return y + (y == 0) / 6.0

    def check_support(self, y, rows):
        if self.positive:
            _raise_bad_rows(
                f"a {self.name} response must be a positive integer count (zeros are "
                "not in a zero-truncated distribution: a hurdle model puts them in its "
                "ziformula part)", (y < 1) | (y != np.round(y)), rows, y)
        else:
            _raise_bad_rows(f"a {self.name} response must be a non-negative integer count",
                            (y < 0) | (y != np.round(y)), rows, y)


def _nb1_moment(xp, y, mu, weights):
    # Var y = μ(1 + φ): φ = mean of (y − μ)²/μ, less 1.
    ratio = xp.sum(weights * (y - mu) ** 2 / mu) / xp.sum(weights)
    return xp.maximum(ratio - 1.0, 0.1)


def _nb2_moment(xp, y, mu, weights):
    # MASS::theta.ml's start.
    return xp.sum(weights) / xp.sum(weights * (y / mu - 1.0) ** 2)


def _gamma_poisson(key, shape, scale, dtype):
    key_g, key_p = jax.random.split(key)
    rate = jax.random.gamma(key_g, shape, dtype=dtype) * scale
    return jax.random.poisson(key_p, rate, shape=jnp.shape(rate)).astype(dtype)


def _positive_by_rejection(draw, key, shape, max_rounds: int = 10_000):
    """Draws of ``draw(key)`` conditioned on being positive: redraw the zeros until none
    is left (or ``max_rounds``; the expected number of rounds is 1/(1 − P(0)))."""
    def cond(state):
        i, _, values = state
        return (i < max_rounds) & jnp.any(values < 1)

    def body(state):
        i, k, values = state
        k, sub = jax.random.split(k)
        return i + 1, k, jnp.where(values < 1, draw(sub), values)

    key, sub = jax.random.split(key)
    return jax.lax.while_loop(cond, body, (0, key, draw(sub)))[2]


class NegativeBinomial1(_CountFamily):
    """glmmTMB's ``nbinom1``: negative binomial with Var y = μ(1 + φ) (size μ/φ)."""

    name = "nbinom1"
    dispersion_name = "phi"

    def variance(self, mu, dispersion=None):
        return mu * (1.0 + dispersion)

    def loglik_eta(self, y, eta, weights, dispersion=None):
        return tmb.nb1_value(jnp, y, self.link.log_inverse(eta), self._psi(dispersion), weights)

    def simulate(self, key, mu, weights, dispersion=None):
        dtype = _float(mu).dtype
        return _gamma_poisson(key, mu / dispersion, dispersion, dtype)

    def moment_dispersion(self, xp, y, mu, weights):
        return _nb1_moment(xp, y, mu, weights)


class TruncatedPoisson(_CountFamily):
    """glmmTMB's ``truncated_poisson``: Poisson(μ) conditioned on y ≥ 1."""

    name = "truncated_poisson"
    has_dispersion = False
    dispersion_method = "none"
    joint_vcov = False
    positive = True

    def _psi(self, dispersion):
        return 0.0

    def variance(self, mu, dispersion=None):
        # glmmTMB's truncated_poisson()$variance.
        p_pos = -jnp.expm1(-mu)
        return (mu + mu * mu) / p_pos - (mu / p_pos) ** 2

    def response_mean(self, mu, dispersion=None):
        return mu / -jnp.expm1(-mu)

    def loglik_eta(self, y, eta, weights, dispersion=None):
        return tmb.truncated_value(jnp, "poisson", y, self.link.log_inverse(eta), 0.0,
                                   weights)

    def simulate(self, key, mu, weights, dispersion=None):
        # The first arrival of a rate-1 Poisson process on [0, μ], given that there is
        # one, is an exponential truncated to [0, μ]; the arrivals after it are
        # Poisson(μ − t). Exact, with no rejection.
        dtype = _float(mu).dtype
        key_u, key_p = jax.random.split(key)
        u = jax.random.uniform(key_u, jnp.shape(mu), dtype=dtype)
        first = -jnp.log1p(u * jnp.expm1(-mu))
        rest = jax.random.poisson(key_p, jnp.maximum(mu - first, 0.0), shape=jnp.shape(mu))
        return 1.0 + rest.astype(dtype)


class TruncatedNegativeBinomial2(_CountFamily):
    """glmmTMB's ``truncated_nbinom2``: NB2 (Var μ + μ²/θ before truncation) on y ≥ 1."""

    name = "truncated_nbinom2"
    dispersion_name = "theta"
    positive = True

    def _p_positive(self, mu, theta):
        return -jnp.expm1(tmb.log_zero_probability(jnp, "nbinom2", jnp.log(mu),
                                                   jnp.log(theta)))

    def variance(self, mu, dispersion=None):
        p_pos = self._p_positive(mu, dispersion)
        second = mu + mu * mu * (1.0 + 1.0 / dispersion)  # E[y²] untruncated
        return second / p_pos - (mu / p_pos) ** 2

    def response_mean(self, mu, dispersion=None):
        return mu / self._p_positive(mu, dispersion)

    def loglik_eta(self, y, eta, weights, dispersion=None):
        return tmb.truncated_value(jnp, "nbinom2", y, self.link.log_inverse(eta),
                                   self._psi(dispersion), weights)

    def simulate(self, key, mu, weights, dispersion=None):
        dtype = _float(mu).dtype
        return _positive_by_rejection(
            lambda k: _gamma_poisson(k, dispersion * jnp.ones_like(mu), mu / dispersion,
                                     dtype), key, jnp.shape(mu))

    def moment_dispersion(self, xp, y, mu, weights):
        return _nb2_moment(xp, y, mu, weights)


class TruncatedNegativeBinomial1(_CountFamily):
    """glmmTMB's ``truncated_nbinom1``: NB1 (Var μ(1 + φ) before truncation) on y ≥ 1."""

    name = "truncated_nbinom1"
    dispersion_name = "phi"
    positive = True

    def _p_positive(self, mu, phi):
        return -jnp.expm1(tmb.log_zero_probability(jnp, "nbinom1", jnp.log(mu), jnp.log(phi)))

    def variance(self, mu, dispersion=None):
        p_pos = self._p_positive(mu, dispersion)
        second = mu * (1.0 + dispersion) + mu * mu
        return second / p_pos - (mu / p_pos) ** 2

    def response_mean(self, mu, dispersion=None):
        return mu / self._p_positive(mu, dispersion)

    def loglik_eta(self, y, eta, weights, dispersion=None):
        return tmb.truncated_value(jnp, "nbinom1", y, self.link.log_inverse(eta),
                                   self._psi(dispersion), weights)

    def simulate(self, key, mu, weights, dispersion=None):
        dtype = _float(mu).dtype
        return _positive_by_rejection(
            lambda k: _gamma_poisson(k, mu / dispersion, dispersion * jnp.ones_like(mu),
                                     dtype), key, jnp.shape(mu))

    def moment_dispersion(self, xp, y, mu, weights):
        return _nb1_moment(xp, y, mu, weights)


class GeneralizedPoisson(_CountFamily):
    """glmmTMB's ``genpois``: Consul's generalized Poisson with mean μ and Var μφ
    (θ = μ/√φ, λ = 1 − 1/√φ; φ < 1 is underdispersion)."""

    name = "genpois"
    dispersion_name = "phi"

    def variance(self, mu, dispersion=None):
        return mu * dispersion

    def loglik_eta(self, y, eta, weights, dispersion=None):
        return tmb.genpois_value(jnp, y, self.link.log_inverse(eta), self._psi(dispersion),
                                 weights)

    def simulate(self, key, mu, weights, dispersion=None):
        """Total progeny of a branching process: Poisson(θ) founders, Poisson(λ)
        offspring each (exact for φ ≥ 1, λ ≥ 0; NaN for underdispersion, φ < 1)."""
        dtype = _float(mu).dtype
        root = jnp.sqrt(dispersion)
        theta, lam = mu / root, 1.0 - 1.0 / root
        key, sub = jax.random.split(key)
        first = jax.random.poisson(sub, theta, shape=jnp.shape(mu)).astype(dtype)

        def cond(state):
            return jnp.any(state[2] > 0)

        def body(state):
            k, total, current = state
            k, sub = jax.random.split(k)
            nxt = jax.random.poisson(sub, lam * current, shape=jnp.shape(mu)).astype(dtype)
            return k, total + nxt, nxt

        total = jax.lax.while_loop(cond, body, (key, first, first))[1]
        return jnp.where(lam >= 0, total, jnp.nan)

    def moment_dispersion(self, xp, y, mu, weights):
        ratio = xp.sum(weights * (y - mu) ** 2 / mu) / xp.sum(weights)
        return xp.maximum(ratio, 1.05)


class ConwayMaxwellPoisson(_CountFamily):
    """glmmTMB's ``compois``: Conway–Maxwell–Poisson in its mean parameterization, with
    mean μ and ν = 1/φ (φ > 1 overdispersion, φ < 1 underdispersion, φ = 1 Poisson):
    P(y) = λʸ/(y!)^ν / Z(λ, ν), λ solving E[y] = μ (:mod:`glmmjax._families.math_compois`:
    log Z by TMB's series in log space, λ by Newton's method)."""

    name = "compois"
    dispersion_name = "phi"

    def variance(self, mu, dispersion=None):
        return cmp.compois_variance(jnp, _float(mu), _float(dispersion))

    def loglik_eta(self, y, eta, weights, dispersion=None):
        return cmp.compois_value(jnp, y, self.link.log_inverse(eta), self._psi(dispersion),
                                 weights)

    def simulate(self, key, mu, weights, dispersion=None):
        """Exact draws by the inverse CDF over the series window around the mode (the
        window's mass is 1 − e⁻⁴⁰ or more while ~12 SDs of y fit in it), in batches of
        rows to bound memory."""
        mu = _float(mu)
        shape = jnp.shape(mu)
        nu = jnp.broadcast_to(1.0 / _float(dispersion), shape).reshape(-1)
        flat = mu.reshape(-1)
        u = jax.random.uniform(key, flat.shape, dtype=flat.dtype)

        def draw(args):
            m, n, v = args
            L = cmp.loglambda(jnp, jnp.log(m), n)
            j, log_t, _ = cmp._log_terms(jnp, L, n, cmp.COMPOIS_TERMS)
            p = jax.nn.softmax(log_t, axis=-1)
            below = jnp.sum(jnp.cumsum(p, axis=-1) < v[..., None], axis=-1)
            return jnp.take_along_axis(j, jnp.minimum(below, j.shape[-1] - 1)[..., None],
                                       axis=-1)[..., 0]

        draws = jax.lax.map(draw, (flat, nu, u), batch_size=4096)
        return draws.reshape(shape)

    def moment_dispersion(self, xp, y, mu, weights):
        # Var y ≈ μφ: φ = mean of (y − μ)²/μ, kept in [0.05, 20].
        ratio = xp.sum(weights * (y - mu) ** 2 / mu) / xp.sum(weights)
        return xp.minimum(xp.maximum(ratio, 0.05), 20.0)


class BetaBinomial(_LikelihoodFamily):
    """glmmTMB's ``betabinomial``: successes out of ``weights`` trials with a
    beta(μφ, (1 − μ)φ) success probability. The response is given as for the
    binomial (0/1, proportions with trials as weights, or ``cbind(successes,
    failures)``)."""

    name = "betabinomial"
    canonical_link = "logit"
    allowed_links = ("logit", "probit", "cloglog", "loglog", "cauchit")
    dispersion_name = "phi"

    def variance(self, mu, dispersion=None):
        # Var of the proportion, per trial: μ(1 − μ)·(1 + (n − 1)/(φ + 1)) needs n;
        # as glmmTMB's betabinomial()$variance it is returned for n = 1 trial.
        return mu * (1.0 - mu)

    def loglik_eta(self, y, eta, weights, dispersion=None):
        return tmb.betabinomial_value(jnp, y, self.link.log_inverse(eta),
                                      self.link.log1m_inverse(eta), self._psi(dispersion),
                                      weights)

    def unit_deviance_eta(self, y, eta, dispersion=None):
        raise NotImplementedError("the betabinomial deviance is per row, see deviance_eta")

    def deviance_eta(self, y, eta, weights, dispersion=None):
        return -2.0 * self.loglik_eta(y, eta, weights, dispersion)

    def valid_mu(self, mu):
        return jnp.isfinite(mu) & (mu > 0) & (mu < 1)

    def initialize(self, y, weights):
        return (weights * y + 0.5) / (weights + 1.0)

    def prepare_response(self, response, weights, response_levels=None, rows=None):
        return Binomial.prepare_response(self, response, weights, response_levels, rows)

    def simulate(self, key, mu, weights, dispersion=None):
        dtype = _float(mu).dtype
        key_b, key_n = jax.random.split(key)
        p = jax.random.beta(key_b, mu * dispersion, (1.0 - mu) * dispersion, dtype=dtype)
        trials = jnp.round(weights)
        draws = jax.random.binomial(key_n, trials, p, shape=jnp.shape(mu))
        return jnp.where(trials > 0, draws / jnp.where(trials > 0, trials, 1.0), 0.0)

    def moment_dispersion(self, xp, y, mu, weights):
        # Var(s) = nμ(1 − μ)(1 + (n − 1)ρ), ρ = 1/(φ + 1): ρ by moments over rows with
        # n > 1, kept in [0.01, 0.9].
        n = weights
        excess = (n * (y - mu)) ** 2 / (n * mu * (1.0 - mu)) - 1.0
        many = n > 1
        rho = xp.sum(xp.where(many, excess, 0.0)) / xp.maximum(
            xp.sum(xp.where(many, n - 1.0, 0.0)), 1.0)
        rho = xp.minimum(xp.maximum(rho, 0.01), 0.9)
        return 1.0 / rho - 1.0


class LogNormal(_LikelihoodFamily):
    """glmmTMB's ``lognormal``: log y normal, with mean μ and standard deviation σ of
    y itself (the data scale); σ is the dispersion."""

    name = "lognormal"
    canonical_link = "log"
    allowed_links = ("log", "identity", "inverse", "sqrt")
    dispersion_name = "sigma"

    def variance(self, mu, dispersion=None):
        return dispersion**2 * jnp.ones_like(_float(mu))

    def loglik_eta(self, y, eta, weights, dispersion=None):
        return tmb.lognormal_value(jnp, y, self.link.log_inverse(eta), self._psi(dispersion),
                                   weights)

    def valid_mu(self, mu):
        return jnp.isfinite(mu) & (mu > 0)

    def simulate(self, key, mu, weights, dispersion=None):
        dtype = _float(mu).dtype
        log_var = jnp.log1p((dispersion / mu) ** 2)
        z = jax.random.normal(key, jnp.shape(mu), dtype=dtype)
        return jnp.exp(jnp.log(mu) - 0.5 * log_var + jnp.sqrt(log_var) * z)

    def check_support(self, y, rows):
        _raise_bad_rows("a lognormal response must be positive", ~(y > 0), rows, y)

    def moment_dispersion(self, xp, y, mu, weights):
        return xp.sqrt(xp.sum(weights * (y - mu) ** 2) / xp.sum(weights))


class StudentT(_LikelihoodFamily):
    """glmmTMB's ``t_family``: y = μ + σ·t_ν.

    Args:
        df: the degrees of freedom ν > 0, fixed; None (default, as glmmTMB) estimates
            it by maximum likelihood jointly with the other parameters (``glmer`` on the
            host engine; the fitted model's family then carries ν̂). glmmTMB's fixed-ν
            fit is ``start = list(psi = log(df)), map = list(psi = factor(NA))``.
        link: ``"identity"`` (default), ``"log"`` or ``"inverse"``.
    """

    df: float | None = static_field()  # a model choice, as the link: no leaf

    name = "t_family"
    canonical_link = "identity"
    allowed_links = ("identity", "log", "inverse")
    dispersion_name = "sigma"

    def __init__(self, df: float | None = None, link: str | Link | None = None):
        if df is not None and not (np.isfinite(df) and df > 0):
            from .._display import show
            raise ValueError(f"df must be a positive number or None (estimated), got {show(df)}")
        self.df = None if df is None else float(df)
        self.link = self._resolve_link(link)

    @property
    def n_shape(self) -> int:
        """Extra outer parameters besides the dispersion: log ν when it is estimated."""
        return int(self.df is None)

    def _df(self) -> float:
        if self.df is None:
            raise ValueError(
                "this StudentT family estimates df: use the fitted model's family "
                "(fit.family), or StudentT(df=...) for a fixed df")
        return self.df

    def variance(self, mu, dispersion=None):
        df = self._df()
        inflation = df / (df - 2.0) if df > 2 else jnp.inf
        return dispersion**2 * inflation * jnp.ones_like(_float(mu))

    def loglik_eta(self, y, eta, weights, dispersion=None):
        return tmb.student_t_value(jnp, y, self.link.inverse(eta), self._psi(dispersion),
                                   weights, self._df())

    def simulate(self, key, mu, weights, dispersion=None):
        dtype = _float(mu).dtype
        return mu + dispersion * jax.random.t(key, self._df(), jnp.shape(mu), dtype=dtype)

    def shape_start(self) -> float:
        """The starting ν when it is estimated."""
        return 10.0

    @staticmethod
    def shape_value(parameter):
        """ν from its outer parameter κ = log ν."""
        return float(np.exp(parameter))

    @staticmethod
    def shape_parameter(value):
        return float(np.log(value))

    def check_support(self, y, rows):
        _raise_bad_rows("a t_family response must be finite", ~np.isfinite(y), rows, y)

    def moment_dispersion(self, xp, y, mu, weights):
        return xp.sqrt(xp.sum(weights * (y - mu) ** 2) / xp.sum(weights))

    def __str__(self) -> str:
        df = "estimated" if self.df is None else f"{self.df:g}"
        return f"{self.name}(df = {df}, link = {self.link.name})"


class Tweedie(_LikelihoodFamily):
    """glmmTMB's ``tweedie``: compound Poisson-gamma with mean μ, Var y = φμᵖ, 1 < p < 2
    (exact zeros and positive values), the density by Dunn & Smyth's series as glmmTMB.

    Args:
        power: p in (1, 2), fixed; None (default, as glmmTMB) estimates it jointly with
            the other parameters (``glmer`` on the host engine), through
            ξ = logit(p − 1), glmmTMB's ``psi``.
        link: ``"log"`` (default), ``"identity"`` or ``"sqrt"``.

    The compiled evaluation sums a window of ``math_tmb.TWEEDIE_TERMS`` series
    terms around the largest, exact while y^(2−p)/(φ(2−p)) < ~750 (the host engine
    sums as many as each fit needs).
    """

    power: float | None = static_field()

    name = "tweedie"
    canonical_link = "log"
    allowed_links = ("log", "identity", "sqrt")
    dispersion_name = "phi"

    def __init__(self, power: float | None = None, link: str | Link | None = None):
        if power is not None and not (np.isfinite(power) and 1.0 < power < 2.0):
            from .._display import show
            raise ValueError(
                f"the Tweedie power must be a number strictly between 1 and 2 (glmmTMB's "
                f"tweedie), or None to estimate it; got {show(power)}")
        self.power = None if power is None else float(power)
        self.link = self._resolve_link(link)

    @property
    def n_shape(self) -> int:
        return int(self.power is None)

    def _power(self) -> float:
        if self.power is None:
            raise ValueError(
                "this Tweedie family estimates its power: use the fitted model's family "
                "(fit.family), or Tweedie(power=...) for a fixed power")
        return self.power

    def shape_start(self) -> float:
        return 1.5

    @staticmethod
    def shape_value(parameter):
        """p = 1 + logistic(ξ)."""
        return float(1.0 + 1.0 / (1.0 + np.exp(-parameter)))

    @staticmethod
    def shape_parameter(value):
        return float(np.log((value - 1.0) / (2.0 - value)))

    def variance(self, mu, dispersion=None):
        return dispersion * mu ** self._power()

    def loglik_eta(self, y, eta, weights, dispersion=None):
        return tmb.tweedie_value(jnp, y, self.link.log_inverse(eta), self._psi(dispersion),
                                 self._power(), weights, n_terms=tmb.TWEEDIE_TERMS)

    def valid_mu(self, mu):
        return jnp.isfinite(mu) & (mu > 0)

    def initialize(self, y, weights):
        return y + 0.1 * (y == 0)

    def simulate(self, key, mu, weights, dispersion=None):
        """N ~ Poisson(λ) gamma summands: λ = μ^(2−p)/(φ(2−p)), each gamma with shape
        (2−p)/(p−1) and scale φ(p−1)μ^(p−1); their sum is Gamma(N·shape) (0 for N = 0)."""
        p = self._power()
        dtype = _float(mu).dtype
        key_n, key_g = jax.random.split(key)
        rate = mu ** (2.0 - p) / (dispersion * (2.0 - p))
        count = jax.random.poisson(key_n, rate, shape=jnp.shape(mu)).astype(dtype)
        shape = (2.0 - p) / (p - 1.0)
        scale = dispersion * (p - 1.0) * mu ** (p - 1.0)
        total = jax.random.gamma(key_g, jnp.maximum(count * shape, 1e-30), dtype=dtype)
        return jnp.where(count > 0, total * scale, 0.0)

    def check_support(self, y, rows):
        _raise_bad_rows("a tweedie response must be non-negative", ~(y >= 0), rows, y)

    def moment_dispersion(self, xp, y, mu, weights):
        power = self.shape_start() if self.power is None else self.power
        return xp.sum(weights * (y - mu) ** 2 / mu**power) / xp.sum(weights)

    def __str__(self) -> str:
        power = "estimated" if self.power is None else f"{self.power:g}"
        return f"{self.name}(power = {power}, link = {self.link.name})"


class OrderedBeta(_LikelihoodFamily):
    """glmmTMB's ``ordbeta``: ordered beta regression for proportions in [0, 1] with
    exact zeros and ones (the likelihood: :mod:`glmmjax._families.ordbeta`).

    Args:
        cutpoints: (c₀, c₁), c₀ < c₁, the logit-scale cutpoints (glmmTMB's ``psi``),
            fixed; None (default, as glmmTMB) estimates them jointly with the other
            parameters (``glmer`` on the host engine; the fitted model's family then
            carries them).
        link: ``"logit"`` (glmmTMB's, the only one: the cutpoints are on its scale).

    As glmmTMB 1.1.5, the mean (``predict(type="response")``, fitted values) is μ = σ(η),
    the beta part's mean, and the variance function μ(1 − μ).
    """

    cutpoints: tuple | None = static_field()

    name = "ordbeta"
    canonical_link = "logit"
    allowed_links = ("logit",)
    dispersion_name = "phi"
    shape_names = ("lower_cutpoint", "upper_cutpoint")

    def __init__(self, cutpoints=None, link: str | Link | None = None):
        if cutpoints is not None:
            from .._display import show

            values = np.asarray(cutpoints, dtype=np.float64).ravel()
            if values.shape != (2,) or not np.all(np.isfinite(values)) or values[0] >= values[1]:
                raise ValueError(
                    "cutpoints must be two finite numbers c0 < c1 (logit scale), or None "
                    f"to estimate them; got {show(cutpoints)}")
            cutpoints = (float(values[0]), float(values[1]))
        self.cutpoints = cutpoints
        self.link = self._resolve_link(link)

    @property
    def n_shape(self) -> int:
        return 2 if self.cutpoints is None else 0

    def _cuts(self):
        if self.cutpoints is None:
            raise ValueError(
                "this OrderedBeta family estimates its cutpoints: use the fitted model's "
                "family (fit.family), or OrderedBeta(cutpoints=(c0, c1))")
        return self.cutpoints

    def shape_starts(self):
        """The starting cutpoints when they are estimated."""
        return (-1.0, 1.0)

    @staticmethod
    def shape_values(parameters):
        return tuple(float(v) for v in parameters)

    @staticmethod
    def shape_parameters(values):
        return [float(v) for v in values]

    def with_estimates(self, values):
        return type(self)(tuple(values), link=self.link)

    def variance(self, mu, dispersion=None):
        return mu * (1.0 - mu)

    def valid_mu(self, mu):
        return jnp.isfinite(mu) & (mu > 0) & (mu < 1)

    def initialize(self, y, weights):
        return 0.02 + 0.96 * y

    def loglik_eta(self, y, eta, weights, dispersion=None):
        c0, c1 = self._cuts()
        return ordbeta.ordbeta_value(jnp, y, eta, dispersion, c0, c1, weights)

    def simulate(self, key, mu, weights, dispersion=None):
        c0, c1 = self._cuts()
        mu = _float(mu)
        dtype = mu.dtype
        eta = jnp.log(mu) - jnp.log1p(-mu)
        key_u, key_b = jax.random.split(key)
        u = jax.random.uniform(key_u, jnp.shape(mu), dtype=dtype)
        p_zero = jax.nn.sigmoid(c0 - eta)
        p_one = jax.nn.sigmoid(eta - c1)
        draws = jax.random.beta(key_b, mu * dispersion, (1.0 - mu) * dispersion, dtype=dtype)
        return jnp.where(u < p_zero, 0.0, jnp.where(u > 1.0 - p_one, 1.0, draws))

    def check_support(self, y, rows):
        _raise_bad_rows("an ordbeta response must lie in [0, 1] (exact 0 and 1 allowed)",
                        ~((y >= 0) & (y <= 1)), rows, y)

    def moment_dispersion(self, xp, y, mu, weights):
        # The beta precision by moments on the rows strictly inside (0, 1).
        mid = (y > 0) & (y < 1)
        w = xp.where(mid, weights, 0.0)
        ratio = xp.sum(w * mu * (1.0 - mu)) / xp.sum(w * (y - mu) ** 2)
        return xp.maximum(ratio - 1.0, 0.5)

    def __str__(self) -> str:
        cuts = "estimated" if self.cutpoints is None else "({:g}, {:g})".format(*self.cutpoints)
        return f"{self.name}(cutpoints = {cuts}, link = {self.link.name})"
