"""Response distributions (families) as immutable pytrees with pure JAX methods.

(Immutable classes that become JAX pytrees once JAX is imported,
:class:`glmmjax._lazyjax.PytreeClass`; the traced methods import JAX on their first call.)

A family pairs a distribution with a :class:`~glmmjax.links.Link`. Its traced methods
work elementwise over observations and take the family's extra parameter, the
*dispersion*, on its own natural scale:

==================  ==================  ====================================  ==========
family              dispersion          variance of y                         estimated
==================  ==================  ====================================  ==========
Gaussian            σ²                  σ²/w                                  Pearson
Binomial            (none)              μ(1 − μ)/w, w = trials                —
Poisson             (none)              μ                                     —
Gamma               φ = 1/shape         φμ²                                   Pearson
InverseGaussian     φ                   φμ³                                   Pearson
NegativeBinomial    θ (size)            μ + μ²/θ                              ML or fixed
Beta                φ (precision)       μ(1 − μ)/(1 + φ)                      ML
==================  ==================  ====================================  ==========

``loglik`` is the *full* log-density (normalizing constants included), as R's d*()
functions give it, so log-likelihoods and AICs agree with R. ``loglik_eta`` is the same
as a function of the linear predictor, written with the link's stable ``log_inverse`` /
``log1m_inverse`` so that it is smooth and accurate at any finite η (GLMM fits
differentiate it twice).

Checks on the response (``prepare_response``) run in numpy before any tracing and name
the offending rows.

A user-defined family is a subclass that sets the class attributes and writes
``variance``, ``loglik`` and ``unit_deviance`` (and, for simulation, ``simulate``);
``loglik_eta``, ``deviance_residuals``, ``initialize`` and ``prepare_response`` have
defaults.

Example:
    >>> from glmmjax.families import Binomial
    >>> Binomial(link="probit").link.name
    'probit'
"""

from __future__ import annotations

import warnings

import numpy as np

from .._errors import DataError
from .._lazyjax import PytreeClass, jax, jnp, lazy_module, replace_fields
from .links import LINKS, Link, canonical_link_name, get_link
from .math import count_times_log, log_binomial_coefficient

__all__ = [
    "Family",
    "Gaussian",
    "Binomial",
    "Poisson",
    "Gamma",
    "InverseGaussian",
    "NegativeBinomial",
    "Beta",
    "get_family",
    "FAMILIES",
]

_LOG_2PI = float(np.log(2.0 * np.pi))

# jax.scipy.special, imported on the first call (a family on the host engine imports no JAX).
_special = lazy_module("jax.scipy.special")


def betaln(a, b):
    return _special.betaln(a, b)


def digamma(x):
    return _special.digamma(x)


def gammaln(x):
    return _special.gammaln(x)


def polygamma(n, x):
    return _special.polygamma(n, x)


def xlog1py(x, y):
    return _special.xlog1py(x, y)


def xlogy(x, y):
    return _special.xlogy(x, y)


def _float(x):
    return jnp.asarray(x, dtype=jnp.result_type(float))


def _row_list(rows, bad: np.ndarray) -> str:
    """The first five row labels as "[0, 1, 2, 3, 4, ...]" (plain Python values: never
    np.int64(3), and no quoted '...')."""
    labels = (np.asarray(rows)[bad[:5]] if rows is not None else bad[:5]).tolist()
    return "[" + ", ".join([repr(v) for v in labels] + (["..."] if bad.size > 5 else [])) + "]"


def _plain(value):
    """A value as Python prints it (3.0, (3.0, -4.0)), not numpy's repr."""
    array = np.asarray(value)
    return array.item() if array.ndim == 0 else tuple(array.tolist())


def _raise_bad_rows(message: str, bad_mask: np.ndarray, rows, y: np.ndarray) -> None:
    bad = np.flatnonzero(bad_mask)
    if bad.size:
        raise DataError(
            f"{message}; {bad.size} {'row fails' if bad.size == 1 else 'rows fail'}, "
            f"e.g. rows {_row_list(rows, bad)} "
            f"with values {np.asarray(y)[bad[:5]].tolist()}"
        )


def _check_weights(weights: np.ndarray, rows) -> np.ndarray:
    weights = np.asarray(weights, dtype=np.float64)
    bad = ~np.isfinite(weights) | (weights < 0)
    if bad.any():
        idx = np.flatnonzero(bad)
        raise DataError(
            f"weights must be finite and non-negative; rows {_row_list(rows, idx)} have "
            f"{weights[idx[:5]].tolist()}"
        )
    return weights


class Family(PytreeClass):
    """Abstract response distribution with a link.

    Class attributes (static, describe the family):
        name: R's family name (``"binomial"``, ``"Gamma"`` ...).
        canonical_link: name of the canonical link, the default.
        allowed_links: tuple of allowed built-in link names, or None for any link
            (user-defined links are accepted by every family).
        has_dispersion: whether the distribution has an extra parameter.
        dispersion_name: its name in summaries (``"sigma^2"``, ``"phi"``, ``"theta"``).
        dispersion_method: how ``glm`` finds it: ``"none"`` (fixed at 1),
            ``"pearson"`` (Pearson χ²/df, as R's glm), ``"ml"`` (maximum likelihood,
            jointly with β) or ``"fixed"`` (given by the user).
        joint_vcov: for ML dispersion, whether Var(β̂) comes from the full observed
            Hessian in (β, log dispersion) (glmmTMB) rather than the Fisher information
            for β with the dispersion held at its estimate (MASS::glm.nb).

    Methods are pure JAX and elementwise over observations; ``weights`` are prior
    weights (trials for the binomial) and ``dispersion`` is the family's extra parameter
    on its natural scale (ignored where the family has none).
    """

    link: Link

    name = "abstract"
    canonical_link = "identity"
    allowed_links = None  # tuple of names, or None for any link
    has_dispersion = False
    dispersion_name = ""
    dispersion_method = "none"
    joint_vcov = False

    def __init__(self, link: str | Link | None = None):
        self.link = self._resolve_link(link)

    @classmethod
    def _resolve_link(cls, link) -> Link:
        resolved = get_link(cls.canonical_link if link is None else link)
        allowed = cls.allowed_links
        # Built-in links are checked by name; a user-defined Link subclass is the
        # user's responsibility and is accepted by every family.
        builtin = type(resolved) in LINKS.values()
        if builtin and allowed is not None and canonical_link_name(resolved.name) not in allowed:
            raise ValueError(
                f"link {resolved.name!r} is not allowed for the {cls.name} family; "
                f"allowed links: {', '.join(allowed)}"
            )
        return resolved

    # ---- traced, elementwise -------------------------------------------------------
    def variance(self, mu, dispersion=None):
        """Variance function V(μ), with Var(y) = scale·V(μ)/w."""
        raise NotImplementedError

    def loglik(self, y, mu, weights, dispersion):
        """Full log-density of each observation (normalizing constants included)."""
        raise NotImplementedError

    def loglik_eta(self, y, eta, weights, dispersion):
        """``loglik`` as a function of the linear predictor η (smooth for finite η)."""
        return self.loglik(y, self.link.inverse(eta), weights, dispersion)

    def unit_deviance(self, y, mu, dispersion=None):
        """d(y, μ) = 2·[ℓ(y; y) − ℓ(y; μ)] per unit weight (R's dev.resids / w)."""
        raise NotImplementedError

    def unit_deviance_eta(self, y, eta, dispersion=None):
        """``unit_deviance`` as a function of η (stable where the family overrides)."""
        return self.unit_deviance(y, self.link.inverse(eta), dispersion)

    def deviance_eta(self, y, eta, weights, dispersion=None):
        """Each row's contribution w·d(y, μ) to the deviance, as a function of η."""
        return weights * self.unit_deviance_eta(y, eta, dispersion)

    def variance_eta(self, eta, dispersion=None):
        """V(g⁻¹(η)), overridden where 1 − μ must not be formed by subtraction."""
        return self.variance(self.link.inverse(eta), dispersion)

    def deviance_residuals(self, y, mu, weights, dispersion=None):
        """sign(y − μ)·√(w·d(y, μ))."""
        d = jnp.maximum(weights * self.unit_deviance(y, mu, dispersion), 0.0)
        return jnp.sign(y - mu) * jnp.sqrt(d)

    def valid_mu(self, mu):
        """Elementwise: is μ inside the family's mean space?"""
        return jnp.isfinite(mu)

    def initialize(self, y, weights):
        """Starting means for IRLS (R's ``mustart``): y itself where the link maps it
        to a finite η inside the mean space; elsewhere (log link at y = 0, logit at 0
        or 1, ...) halfway to the weighted mean of y, and the mean itself if that is
        still outside. So a family that writes no ``initialize`` starts safely."""
        y = _float(y)
        w = jnp.where(weights > 0, weights, 0.0)
        mean = jnp.sum(w * y) / jnp.maximum(jnp.sum(w), jnp.finfo(y.dtype).tiny)

        def usable(mu):
            return self.valid_mu(mu) & jnp.isfinite(self.link.link(mu))

        halfway = 0.5 * (y + mean)
        return jnp.where(usable(y), y, jnp.where(usable(halfway), halfway, mean))

    def simulate(self, key, mu, weights, dispersion):
        """Draw responses with ``mu``'s shape, on the scale of y."""
        raise NotImplementedError(f"the {self.name} family does not implement simulate")

    # ---- numpy side, not traced -----------------------------------------------------
    def prepare_response(self, response, weights, response_levels=None, rows=None):
        """Turn the response from ``build_design`` into float arrays (y, weights).

        Checks the response against the family's support; errors name the row labels
        ``rows``. Returns ``(y, weights, success_level)`` where ``success_level`` is
        the category counted as 1 for a two-level categorical binomial response.

        Raises:
            DataError: a response outside the support, or bad weights.
        """
        weights = _check_weights(np.ones(len(response)) if weights is None else weights, rows)
        if response_levels is not None or np.asarray(response).dtype == object:
            raise DataError(
                f"the {self.name} family needs a numeric response, got categories "
                f"{list(response_levels or [])[:5]}"
            )
        y = np.asarray(response, dtype=np.float64)
        if y.ndim != 1:
            raise DataError(
                f"cbind(successes, failures) responses are for the binomial family, "
                f"not {self.name}"
            )
        self.check_support(y, rows)
        return y, weights, None

    def check_support(self, y: np.ndarray, rows) -> None:
        """Raise DataError naming rows where y is outside the family's support."""

    def dispersion_start(self, y, mu, weights):
        """A starting value for the dispersion (ML families)."""
        return 1.0

    def loglik_dispersion(self, deviance, weights):
        """The dispersion at which R evaluates logLik for Pearson-dispersion families."""
        return deviance / jnp.sum(weights)

    def __str__(self) -> str:
        return f"{self.name}(link = {self.link.name})"


class Gaussian(Family):
    """Normal distribution; dispersion σ², prior weights scale the precision."""

    name = "gaussian"
    canonical_link = "identity"
    allowed_links = None
    has_dispersion = True
    dispersion_name = "sigma^2"
    dispersion_method = "pearson"

    def variance(self, mu, dispersion=None):
        return jnp.ones_like(_float(mu))

    def loglik(self, y, mu, weights, dispersion):
        positive = weights > 0
        w = jnp.where(positive, weights, 1.0)
        value = -0.5 * (
            _LOG_2PI + jnp.log(dispersion) - jnp.log(w) + w * (y - mu) ** 2 / dispersion
        )
        return jnp.where(positive, value, 0.0)

    def unit_deviance(self, y, mu, dispersion=None):
        return (y - mu) ** 2

    def loglik_dispersion(self, deviance, weights):
        # R's gaussian()$aic uses σ² = deviance/n (the ML estimate), n counting rows.
        return deviance / jnp.sum(weights > 0)

    def simulate(self, key, mu, weights, dispersion):
        scale = jnp.sqrt(dispersion / jnp.where(weights > 0, weights, 1.0))
        return mu + scale * jax.random.normal(key, jnp.shape(mu), dtype=_float(mu).dtype)


class Binomial(Family):
    """Binomial proportions y = successes/trials with ``weights`` = trials.

    The response may be 0/1 (or boolean), proportions with trials as weights,
    ``cbind(successes, failures)``, or a two-level categorical (second level = 1).
    """

    name = "binomial"
    canonical_link = "logit"
    allowed_links = ("logit", "probit", "cloglog", "loglog", "cauchit", "log", "identity")
    dispersion_name = ""

    def variance(self, mu, dispersion=None):
        return mu * (1.0 - mu)

    def variance_eta(self, eta, dispersion=None):
        return jnp.exp(self.link.log_inverse(eta) + self.link.log1m_inverse(eta))

    @staticmethod
    def _counts(y, weights):
        # Counts as given, not rounded: with non-integer successes (R warns
        # "non-integer #successes") the estimates are those of the kernel
        # s·log μ + f·log(1 − μ), as R's and statsmodels' IRLS use it, and the binomial
        # coefficient is its log-gamma extension (statsmodels' loglik; R's AIC rounds).
        # Whole counts give R's dbinom exactly.
        trials = weights
        successes = weights * y
        return trials, successes, log_binomial_coefficient(jnp, trials, successes)

    def loglik(self, y, mu, weights, dispersion=None):
        trials, successes, log_choose = self._counts(y, weights)
        return log_choose + xlogy(successes, mu) + xlog1py(trials - successes, -mu)

    def loglik_eta(self, y, eta, weights, dispersion=None):
        trials, successes, log_choose = self._counts(y, weights)
        failures = trials - successes
        # 0·log 0 = 0: mask the log where its count is zero (and keep its gradient finite).
        log_mu = self.link.log_inverse(eta)
        log_1m = self.link.log1m_inverse(eta)
        return (
            log_choose
            + count_times_log(successes, log_mu)
            + count_times_log(failures, log_1m)
        )

    def unit_deviance(self, y, mu, dispersion=None):
        return 2.0 * (xlogy(y, y) - xlogy(y, mu) + xlog1py(1.0 - y, -y) - xlog1py(1.0 - y, -mu))

    def unit_deviance_eta(self, y, eta, dispersion=None):
        log_mu = self.link.log_inverse(eta)
        log_1m = self.link.log1m_inverse(eta)
        return 2.0 * (
            xlogy(y, y)
            + xlog1py(1.0 - y, -y)
            - jnp.where(y > 0, y * log_mu, 0.0)
            - jnp.where(y < 1, (1.0 - y) * log_1m, 0.0)
        )

    def valid_mu(self, mu):
        return jnp.isfinite(mu) & (mu >= 0) & (mu <= 1)

    def initialize(self, y, weights):
        return (weights * y + 0.5) / (weights + 1.0)

    def simulate(self, key, mu, weights, dispersion=None):
        trials = jnp.round(weights)
        draws = jax.random.binomial(key, trials, mu, shape=jnp.shape(mu))
        return jnp.where(trials > 0, draws / jnp.where(trials > 0, trials, 1.0), 0.0)

    def prepare_response(self, response, weights, response_levels=None, rows=None):
        weights = _check_weights(np.ones(len(response)) if weights is None else weights, rows)
        response = np.asarray(response)
        success_level = None
        if response_levels is not None or response.dtype == object:
            levels = list(response_levels or sorted(set(response.tolist())))
            if len(levels) != 2:
                raise DataError(
                    f"a categorical binomial response needs exactly two levels, got "
                    f"{len(levels)}: {levels[:5]}"
                )
            success_level = levels[1]
            y = (response == success_level).astype(np.float64)
            return y, weights, success_level
        response = response.astype(np.float64)
        if response.ndim == 2:
            successes, failures = response[:, 0], response[:, 1]
            bad = (successes < 0) | (failures < 0)
            _raise_bad_rows(
                "cbind(successes, failures) needs non-negative counts", bad, rows,
                [tuple(r) for r in response],
            )
            _warn_non_integer(successes, rows)
            trials = successes + failures
            y = np.where(trials > 0, successes / np.where(trials > 0, trials, 1.0), 0.0)
            return y, weights * trials, None
        y = response
        _raise_bad_rows(
            "a binomial response must be 0/1, a proportion in [0, 1] (with the trials as "
            "weights), or cbind(successes, failures)",
            (y < 0) | (y > 1), rows, y,
        )
        _warn_non_integer(weights * y, rows)
        return y, weights, None


def _warn_non_integer(successes: np.ndarray, rows) -> None:
    """R's warning for a binomial response whose counts are not whole numbers (the
    fit goes on with the exact, non-rounded likelihood kernel)."""
    bad = np.flatnonzero(np.abs(successes - np.round(successes)) > 1e-7)
    if bad.size:
        from .._stacklevel import external_stacklevel

        warnings.warn(
            f"non-integer #successes in a binomial glm! ({bad.size} row(s), e.g. rows "
            f"{_row_list(rows, bad)} with {[float(v) for v in np.asarray(successes)[bad[:5]]]} "
            "successes); the likelihood uses these counts as they are, not rounded",
            UserWarning,
            stacklevel=external_stacklevel(),
        )


class Poisson(Family):
    name = "poisson"
    canonical_link = "log"
    allowed_links = ("log", "identity", "sqrt")

    def variance(self, mu, dispersion=None):
        return mu

    def loglik(self, y, mu, weights, dispersion=None):
        return weights * (xlogy(y, mu) - mu - gammaln(y + 1.0))

    def loglik_eta(self, y, eta, weights, dispersion=None):
        log_mu = self.link.log_inverse(eta)
        return weights * (
            count_times_log(y, log_mu) - self.link.inverse(eta) - gammaln(y + 1.0)
        )

    def unit_deviance(self, y, mu, dispersion=None):
        return 2.0 * (xlogy(y, y) - xlogy(y, mu) - (y - mu))

    def valid_mu(self, mu):
        return jnp.isfinite(mu) & (mu > 0)

    def initialize(self, y, weights):
        return y + 0.1

    def simulate(self, key, mu, weights, dispersion=None):
        return jax.random.poisson(key, mu, shape=jnp.shape(mu)).astype(_float(mu).dtype)

    def check_support(self, y, rows):
        _raise_bad_rows(
            "a Poisson response must be a non-negative integer count",
            (y < 0) | (y != np.round(y)), rows, y,
        )


class Gamma(Family):
    """Gamma with mean μ and shape 1/φ (Var y = φμ²)."""

    name = "Gamma"
    canonical_link = "inverse"
    allowed_links = ("inverse", "identity", "log")
    has_dispersion = True
    dispersion_name = "phi"
    dispersion_method = "pearson"

    def variance(self, mu, dispersion=None):
        return mu * mu

    def loglik(self, y, mu, weights, dispersion):
        shape = 1.0 / dispersion
        value = (
            -gammaln(shape) - shape * jnp.log(mu * dispersion)
            + (shape - 1.0) * jnp.log(y) - y / (mu * dispersion)
        )
        return weights * value

    def loglik_eta(self, y, eta, weights, dispersion):
        shape = 1.0 / dispersion
        log_mu = self.link.log_inverse(eta)
        value = (
            -gammaln(shape) - shape * (log_mu + jnp.log(dispersion))
            + (shape - 1.0) * jnp.log(y) - y * jnp.exp(-log_mu) / dispersion
        )
        return weights * value

    def unit_deviance(self, y, mu, dispersion=None):
        return -2.0 * (jnp.log(y / mu) - (y - mu) / mu)

    def valid_mu(self, mu):
        return jnp.isfinite(mu) & (mu > 0)

    def simulate(self, key, mu, weights, dispersion):
        shape = jnp.where(weights > 0, weights, 1.0) / dispersion
        draws = jax.random.gamma(key, shape * jnp.ones_like(mu), dtype=_float(mu).dtype)
        return draws * mu / shape

    def check_support(self, y, rows):
        _raise_bad_rows("a Gamma response must be positive", ~(y > 0), rows, y)


class InverseGaussian(Family):
    """Inverse Gaussian with mean μ and dispersion φ (Var y = φμ³)."""

    name = "inverse.gaussian"
    canonical_link = "1/mu^2"
    allowed_links = ("1/mu^2", "inverse", "identity", "log")
    has_dispersion = True
    dispersion_name = "phi"
    dispersion_method = "pearson"

    def variance(self, mu, dispersion=None):
        return mu**3

    def loglik(self, y, mu, weights, dispersion):
        value = -0.5 * (_LOG_2PI + jnp.log(dispersion) + 3.0 * jnp.log(y)) - (y - mu) ** 2 / (
            2.0 * dispersion * mu * mu * y
        )
        return weights * value

    def unit_deviance(self, y, mu, dispersion=None):
        return (y - mu) ** 2 / (y * mu * mu)

    def valid_mu(self, mu):
        return jnp.isfinite(mu) & (mu > 0)

    def simulate(self, key, mu, weights, dispersion):
        # Michael, Schucany & Haas (1976): one normal and one uniform per draw.
        lam = jnp.where(weights > 0, weights, 1.0) / dispersion
        key_n, key_u = jax.random.split(key)
        dtype = _float(mu).dtype
        nu = jax.random.normal(key_n, jnp.shape(mu), dtype=dtype) ** 2
        x = mu + mu * mu * nu / (2 * lam) - mu / (2 * lam) * jnp.sqrt(
            4 * mu * lam * nu + (mu * nu) ** 2
        )
        u = jax.random.uniform(key_u, jnp.shape(mu), dtype=dtype)
        return jnp.where(u <= mu / (mu + x), x, mu * mu / x)

    def check_support(self, y, rows):
        _raise_bad_rows("an inverse Gaussian response must be positive", ~(y > 0), rows, y)


class NegativeBinomial(Family):
    """Negative binomial NB2: Var y = μ + μ²/θ.

    Args:
        theta: the size θ; None (default) estimates it by maximum likelihood as
            ``MASS::glm.nb`` does, a number fixes it (R's ``negative.binomial(theta)``).
        link: ``"log"`` (default), ``"sqrt"`` or ``"identity"``.
    """

    theta: float | None = None

    name = "negative_binomial"
    canonical_link = "log"
    allowed_links = ("log", "sqrt", "identity")
    has_dispersion = True
    dispersion_name = "theta"

    def __init__(self, theta: float | None = None, link: str | Link | None = None):
        if theta is not None and not (np.isfinite(theta) and theta > 0):
            from .._display import show
            raise ValueError(f"theta must be a positive number or None, got {show(theta)}")
        self.theta = None if theta is None else float(theta)
        self.link = self._resolve_link(link)

    @property
    def dispersion_method(self) -> str:  # type: ignore[override]
        return "ml" if self.theta is None else "fixed"

    def _size(self, dispersion):
        if dispersion is None:
            if self.theta is None:
                raise ValueError("NegativeBinomial(theta=None) needs a dispersion value")
            return self.theta
        return dispersion

    def variance(self, mu, dispersion=None):
        return mu + mu * mu / self._size(dispersion)

    def loglik(self, y, mu, weights, dispersion=None):
        theta = self._size(dispersion)
        return weights * (
            gammaln(y + theta) - gammaln(theta) - gammaln(y + 1.0)
            + theta * (jnp.log(theta) - jnp.log(theta + mu))
            + xlogy(y, mu) - xlogy(y, theta + mu)
        )

    def loglik_eta(self, y, eta, weights, dispersion=None):
        # Written so that it stays exact as θ → ∞ (the Poisson limit): the binomial
        # coefficient through betaln, and log(θ/(θ+μ)) = −softplus(log μ − log θ).
        # gammaln(y+θ) − gammaln(θ) loses every digit once θ ~ 1e15.
        theta = self._size(dispersion)
        log_mu = self.link.log_inverse(eta)
        log_theta = jnp.log(theta)
        log_ratio = log_mu - log_theta
        # betaln is only accurate to ~1e-7 for small θ, where gammaln is exact.
        big = theta > 1e4
        safe_small = jnp.where(big, 1.0, theta)
        safe_big = jnp.where(big, theta, 1e4)
        log_coef = jnp.where(
            big,
            -betaln(y + 1.0, safe_big) - jnp.log(y + safe_big),
            gammaln(y + safe_small) - gammaln(safe_small) - gammaln(y + 1.0),
        )
        return weights * (
            log_coef
            - theta * jax.nn.softplus(log_ratio)
            - count_times_log(y, jax.nn.softplus(-log_ratio))
        )

    def unit_deviance(self, y, mu, dispersion=None):
        theta = self._size(dispersion)
        return 2.0 * (xlogy(y, y / mu) - (y + theta) * jnp.log((y + theta) / (mu + theta)))

    def valid_mu(self, mu):
        return jnp.isfinite(mu) & (mu > 0)

    def initialize(self, y, weights):
        # MASS's negative.binomial()$initialize.
        return y + (y == 0) / 6.0

    def simulate(self, key, mu, weights, dispersion=None):
        theta = self._size(dispersion)
        key_g, key_p = jax.random.split(key)
        dtype = _float(mu).dtype
        rate = jax.random.gamma(key_g, theta * jnp.ones_like(mu), dtype=dtype) * mu / theta
        return jax.random.poisson(key_p, rate, shape=jnp.shape(mu)).astype(dtype)

    def check_support(self, y, rows):
        _raise_bad_rows(
            "a negative binomial response must be a non-negative integer count",
            (y < 0) | (y != np.round(y)), rows, y,
        )

    def dispersion_start(self, y, mu, weights):
        # MASS::theta.ml's moment start: n / Σ w (y/μ − 1)².
        return jnp.sum(weights) / jnp.sum(weights * (y / mu - 1.0) ** 2)


def _beta_saturated_mean(y, log_y, log_1my, phi, steps: int = 30):
    """argmax over μ of the beta density at y for precision φ (the saturated model).

    It is not μ = y: the maximizer solves ψ(μφ) − ψ((1 − μ)φ) = log(y/(1 − y)), found by
    Newton's method in t = logit μ (the left side is increasing in t) from t = logit y.
    """
    target = log_y - log_1my

    def step(_, t):
        mu = jax.nn.sigmoid(t)
        a, b = mu * phi, (1.0 - mu) * phi
        f = digamma(a) - digamma(b) - target
        slope = phi * mu * (1.0 - mu) * (polygamma(1, a) + polygamma(1, b))
        return t - jnp.clip(f / slope, -2.0, 2.0)

    t = jax.lax.fori_loop(0, steps, step, target)
    return jax.nn.sigmoid(t)


class Beta(Family):
    """Beta with mean μ and precision φ (Var y = μ(1 − μ)/(1 + φ)), as glmmTMB's
    ``beta_family``; φ is estimated by maximum likelihood."""

    name = "beta"
    canonical_link = "logit"
    allowed_links = ("logit", "probit", "cloglog", "loglog", "cauchit")
    has_dispersion = True
    dispersion_name = "phi"
    dispersion_method = "ml"
    joint_vcov = True

    def variance(self, mu, dispersion=None):
        return mu * (1.0 - mu)

    def variance_eta(self, eta, dispersion=None):
        return jnp.exp(self.link.log_inverse(eta) + self.link.log1m_inverse(eta))

    @staticmethod
    def _density(y, log_y, log_1my, mu, one_minus_mu, phi):
        a, b = mu * phi, one_minus_mu * phi
        return gammaln(phi) - gammaln(a) - gammaln(b) + (a - 1.0) * log_y + (b - 1.0) * log_1my

    def loglik(self, y, mu, weights, dispersion):
        value = self._density(y, jnp.log(y), jnp.log1p(-y), mu, 1.0 - mu, dispersion)
        return weights * value

    def loglik_eta(self, y, eta, weights, dispersion):
        mu = jnp.exp(self.link.log_inverse(eta))
        one_minus_mu = jnp.exp(self.link.log1m_inverse(eta))
        value = self._density(y, jnp.log(y), jnp.log1p(-y), mu, one_minus_mu, dispersion)
        return weights * value

    def unit_deviance(self, y, mu, dispersion=None):
        if dispersion is None:
            raise ValueError("the beta deviance depends on the precision phi; pass dispersion")
        log_y, log_1my = jnp.log(y), jnp.log1p(-y)
        best = _beta_saturated_mean(y, log_y, log_1my, dispersion)
        saturated = self._density(y, log_y, log_1my, best, 1.0 - best, dispersion)
        gap = saturated - self._density(y, log_y, log_1my, mu, 1.0 - mu, dispersion)
        return 2.0 * jnp.maximum(gap, 0.0)

    def valid_mu(self, mu):
        return jnp.isfinite(mu) & (mu > 0) & (mu < 1)

    def simulate(self, key, mu, weights, dispersion):
        dtype = _float(mu).dtype
        return jax.random.beta(key, mu * dispersion, (1.0 - mu) * dispersion, dtype=dtype)

    def check_support(self, y, rows):
        _raise_bad_rows(
            "a beta response must lie strictly between 0 and 1 (exact 0 and 1 need "
            "ordered beta: family='ordbeta')", ~((y > 0) & (y < 1)), rows, y
        )

    def dispersion_start(self, y, mu, weights):
        # Method of moments: Var y = μ(1 − μ)/(1 + φ).
        ratio = jnp.sum(weights * mu * (1.0 - mu)) / jnp.sum(weights * (y - mu) ** 2)
        return jnp.maximum(ratio - 1.0, 0.5)


#: Built-in families by name (R's names and Python spellings).
FAMILIES: dict[str, type[Family]] = {
    "gaussian": Gaussian,
    "binomial": Binomial,
    "poisson": Poisson,
    "gamma": Gamma,
    "inverse_gaussian": InverseGaussian,
    "negative_binomial": NegativeBinomial,
    "beta": Beta,
}

def _register_tmb_families() -> None:
    # glmmTMB's families live in their own module, which imports this one.
    from . import tmb

    FAMILIES.update({
        "nbinom1": tmb.NegativeBinomial1,
        "truncated_poisson": tmb.TruncatedPoisson,
        "truncated_nbinom2": tmb.TruncatedNegativeBinomial2,
        "truncated_nbinom1": tmb.TruncatedNegativeBinomial1,
        "genpois": tmb.GeneralizedPoisson,
        "compois": tmb.ConwayMaxwellPoisson,
        "betabinomial": tmb.BetaBinomial,
        "lognormal": tmb.LogNormal,
        "t_family": tmb.StudentT,
        "tweedie": tmb.Tweedie,
        "ordbeta": tmb.OrderedBeta,
    })


_register_tmb_families()

_ALIASES = {
    "normal": "gaussian",
    "inverse.gaussian": "inverse_gaussian",
    "inversegaussian": "inverse_gaussian",
    "inverse-gaussian": "inverse_gaussian",
    "negative.binomial": "negative_binomial",
    "negativebinomial": "negative_binomial",
    "negbin": "negative_binomial",
    "nb": "negative_binomial",
    "nb2": "negative_binomial",
    "beta_family": "beta",
    "nbinom2": "negative_binomial",
    "nb1": "nbinom1",
    "negative_binomial1": "nbinom1",
    "truncated_negative_binomial2": "truncated_nbinom2",
    "truncated_negative_binomial1": "truncated_nbinom1",
    "generalized_poisson": "genpois",
    "conway_maxwell_poisson": "compois",
    "cmp": "compois",
    "ordered_beta": "ordbeta",
    "beta_binomial": "betabinomial",
    "student_t": "t_family",
    "t": "t_family",
}


def get_family(family: str | Family, link: str | Link | None = None) -> Family:
    """Return a family object from a name or a Family, optionally with another link.

    Raises:
        ValueError: unknown family name (the message lists the known ones), or a link
            the family does not allow (the message lists the allowed ones).

    Example:
        >>> get_family("poisson").link
        Log()
    """
    if isinstance(family, Family):
        if link is None:
            return family
        return replace_fields(family, link=type(family)._resolve_link(link))
    if isinstance(family, type) and issubclass(family, Family):
        return family(link=link)
    if not isinstance(family, str):
        raise ValueError(f"family must be a name or a glmmjax.families.Family, got {family!r}")
    key = family.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known families: {', '.join(FAMILIES)}")
    return FAMILIES[key](link=link)
