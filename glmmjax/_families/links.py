"""Link functions as small immutable pytrees with pure JAX methods.

(Immutable classes that become JAX pytrees once JAX is imported,
:class:`glmmjax._lazyjax.PytreeClass`: defining or using one on the host engine imports
no JAX; the methods import it on their first call.)

A link g maps the mean μ to the linear predictor η = g(μ). Only ``link`` and ``inverse``
must be written; the derivative dμ/dη comes from forward-mode autodiff, and
``log_inverse`` / ``log1m_inverse`` (log μ and log(1 − μ)) default to the obvious
compositions. The built-in links for probabilities override those two with forms that
stay accurate far into the tails (``log_sigmoid``, ``log_ndtr``, ``atan2``), so that a
binomial log-likelihood is finite and has the right, non-zero gradient at η = ±30 and
beyond. Nothing is clipped: clipping would zero the gradients that GLMM fits need.

Example:
    >>> import jax.numpy as jnp
    >>> from glmmjax.links import Logit
    >>> float(Logit().inverse(jnp.asarray(0.0)))
    0.5
"""

from __future__ import annotations

import abc

from .._lazyjax import PytreeClass, jax, jnp, lazy_module

_special = lazy_module("jax.scipy.special")

__all__ = [
    "Link",
    "Identity",
    "Log",
    "Logit",
    "Probit",
    "Cloglog",
    "Loglog",
    "Cauchit",
    "Inverse",
    "InverseSquared",
    "Sqrt",
    "get_link",
    "LINKS",
]


def log_ndtr(x):
    return _special.log_ndtr(x)


def ndtr(x):
    return _special.ndtr(x)


def ndtri(x):
    return _special.ndtri(x)


def _log1mexp(x):
    """log(1 − e^{−x}) for x > 0, accurate for small and large x (Mächler, 2012)."""
    small = x < jnp.log(2.0)
    x_small = jnp.where(small, x, 1.0)
    x_large = jnp.where(small, 1.0, x)
    return jnp.where(small, jnp.log(-jnp.expm1(-x_small)), jnp.log1p(-jnp.exp(-x_large)))


def _log_one_minus_exp_neg_exp(eta):
    """log(1 − exp(−e^η)): log μ for cloglog, log(1 − μ) for loglog at −η.

    Below η = −30, e^η < 1e-13 and log(1 − exp(−x)) = log x − x/2 + O(x²) to double
    precision; that branch never underflows (e^η would at η < −745).
    """
    tail = eta < -30.0
    eta_tail = jnp.where(tail, eta, -30.0)
    eta_body = jnp.where(tail, 0.0, eta)
    return jnp.where(tail, eta_tail - 0.5 * jnp.exp(eta_tail), _log1mexp(jnp.exp(eta_body)))


class Link(PytreeClass):
    """Abstract link function g with η = g(μ).

    Subclasses define a class attribute ``name`` and the pure functions ``link`` and
    ``inverse`` (elementwise, written with ``jax.numpy``). Everything else has a default:

    - ``mu_eta(η)`` = dμ/dη, by forward-mode autodiff of ``inverse``;
    - ``log_inverse(η)`` = log μ and ``log1m_inverse(η)`` = log(1 − μ), used by the
      stable log-likelihoods of the binomial and beta families; override them when a
      more accurate form exists;
    - ``valid_eta(η)``: elementwise boolean, where the inverse is defined.

    A user-defined link is a subclass with ``link`` and ``inverse``; it works with every
    family that allows any link, and in ``glmmjax.glm``.

    Example:
        >>> import jax.numpy as jnp
        >>> class Cube(Link):
        ...     name = "cube"
        ...     def link(self, mu):
        ...         return jnp.cbrt(mu)
        ...     def inverse(self, eta):
        ...         return eta**3
        >>> float(Cube().mu_eta(jnp.asarray(2.0)))
        12.0
    """

    name = "abstract"

    @abc.abstractmethod
    def link(self, mu):
        """η = g(μ)."""

    @abc.abstractmethod
    def inverse(self, eta):
        """μ = g⁻¹(η)."""

    def mu_eta(self, eta):
        """dμ/dη, elementwise (forward-mode autodiff of ``inverse``)."""
        eta = jnp.asarray(eta, dtype=jnp.result_type(float))
        return jax.jvp(self.inverse, (eta,), (jnp.ones_like(eta),))[1]

    def log_inverse(self, eta):
        """log μ as a function of η."""
        return jnp.log(self.inverse(eta))

    def log1m_inverse(self, eta):
        """log(1 − μ) as a function of η (meaningful for links onto (0, 1))."""
        return jnp.log1p(-self.inverse(eta))

    def valid_eta(self, eta):
        """Elementwise: is η in the domain of the inverse link?"""
        return jnp.isfinite(eta)

    def __str__(self) -> str:
        return self.name


class Identity(Link):
    name = "identity"

    def link(self, mu):
        return mu

    def inverse(self, eta):
        return eta

    def mu_eta(self, eta):
        return jnp.ones_like(jnp.asarray(eta, dtype=jnp.result_type(float)))


class Log(Link):
    name = "log"

    def link(self, mu):
        return jnp.log(mu)

    def inverse(self, eta):
        return jnp.exp(eta)

    def log_inverse(self, eta):
        return jnp.asarray(eta, dtype=jnp.result_type(float))

    def log1m_inverse(self, eta):
        return _log1mexp(-jnp.asarray(eta, dtype=jnp.result_type(float)))


class Logit(Link):
    name = "logit"

    def link(self, mu):
        return jnp.log(mu) - jnp.log1p(-mu)

    def inverse(self, eta):
        return jax.nn.sigmoid(eta)

    def mu_eta(self, eta):
        # μ(1 − μ) from the two log-sigmoids: exact in both tails, where autodiff of
        # sigmoid gives s·(1 − s) = 0 once s rounds to 1.
        return jnp.exp(jax.nn.log_sigmoid(eta) + jax.nn.log_sigmoid(-eta))

    def log_inverse(self, eta):
        return jax.nn.log_sigmoid(eta)

    def log1m_inverse(self, eta):
        return jax.nn.log_sigmoid(-eta)


class Probit(Link):
    name = "probit"

    def link(self, mu):
        return ndtri(mu)

    def inverse(self, eta):
        return ndtr(eta)

    def log_inverse(self, eta):
        return log_ndtr(eta)

    def log1m_inverse(self, eta):
        return log_ndtr(-jnp.asarray(eta, dtype=jnp.result_type(float)))


class Cloglog(Link):
    """Complementary log-log: μ = 1 − exp(−e^η)."""

    name = "cloglog"

    def link(self, mu):
        return jnp.log(-jnp.log1p(-mu))

    def inverse(self, eta):
        return -jnp.expm1(-jnp.exp(eta))

    def log_inverse(self, eta):
        return _log_one_minus_exp_neg_exp(eta)

    def log1m_inverse(self, eta):
        return -jnp.exp(eta)


class Loglog(Link):
    """Log-log: μ = exp(−e^{−η})."""

    name = "loglog"

    def link(self, mu):
        return -jnp.log(-jnp.log(mu))

    def inverse(self, eta):
        return jnp.exp(-jnp.exp(-eta))

    def log_inverse(self, eta):
        return -jnp.exp(-eta)

    def log1m_inverse(self, eta):
        return _log_one_minus_exp_neg_exp(-jnp.asarray(eta, dtype=jnp.result_type(float)))


class Cauchit(Link):
    """Cauchy CDF: μ = 1/2 + arctan(η)/π."""

    name = "cauchit"

    def link(self, mu):
        # tan(π(μ − 1/2)) = −1/tan(πμ), which keeps relative accuracy for small μ.
        return -1.0 / jnp.tan(jnp.pi * mu)

    def inverse(self, eta):
        # 1/2 + arctan(η)/π = atan2(1, −η)/π, accurate as μ → 0 (no cancellation).
        return jnp.arctan2(1.0, -jnp.asarray(eta, dtype=jnp.result_type(float))) / jnp.pi

    def log1m_inverse(self, eta):
        return jnp.log(jnp.arctan2(1.0, jnp.asarray(eta, dtype=jnp.result_type(float))) / jnp.pi)


class Inverse(Link):
    name = "inverse"

    def link(self, mu):
        return 1.0 / mu

    def inverse(self, eta):
        return 1.0 / eta

    def valid_eta(self, eta):
        return jnp.isfinite(eta) & (eta != 0)


class InverseSquared(Link):
    """η = 1/μ², the canonical link of the inverse Gaussian (R's ``"1/mu^2"``)."""

    name = "1/mu^2"

    def link(self, mu):
        return 1.0 / (mu * mu)

    def inverse(self, eta):
        return jax.lax.rsqrt(jnp.asarray(eta, dtype=jnp.result_type(float)))

    def valid_eta(self, eta):
        return jnp.isfinite(eta) & (eta > 0)


class Sqrt(Link):
    name = "sqrt"

    def link(self, mu):
        return jnp.sqrt(mu)

    def inverse(self, eta):
        return eta * eta

    def valid_eta(self, eta):
        return jnp.isfinite(eta) & (eta > 0)


#: Built-in links by name (R's names, plus a few spellings).
LINKS: dict[str, type[Link]] = {
    "identity": Identity,
    "log": Log,
    "logit": Logit,
    "probit": Probit,
    "cloglog": Cloglog,
    "loglog": Loglog,
    "cauchit": Cauchit,
    "inverse": Inverse,
    "1/mu^2": InverseSquared,
    "sqrt": Sqrt,
}

_ALIASES = {
    "inverse_squared": "1/mu^2",
    "inverse-squared": "1/mu^2",
    "inversesquared": "1/mu^2",
    "mu^-2": "1/mu^2",
}


def canonical_link_name(name: str) -> str:
    key = name.strip().lower()
    return _ALIASES.get(key, key)


def get_link(link: str | Link) -> Link:
    """Return a link object from a name (``"logit"``, ``"1/mu^2"`` ...) or a Link.

    Raises:
        ValueError: for an unknown name; the message lists the known ones.

    Example:
        >>> get_link("probit")
        Probit()
    """
    if isinstance(link, Link):
        return link
    if isinstance(link, type) and issubclass(link, Link):
        return link()
    if not isinstance(link, str):
        raise ValueError(f"link must be a name or a glmmjax.links.Link, got {link!r}")
    key = canonical_link_name(link)
    if key not in LINKS:
        raise ValueError(f"unknown link {link!r}; known links: {', '.join(LINKS)}")
    return LINKS[key]()
