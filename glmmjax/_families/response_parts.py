"""glmmTMB's response model: zero-inflation, hurdles and a dispersion model, per row.

A GLMM fitted with ``ziformula=`` or ``dispformula=`` has up to three linear predictors
per observation i (glmmTMB's "parts"):

* η_i (conditional, the family's link), with the random effects of ``formula``;
* ζ_i (zero-inflation, logit link: π_i = logistic(ζ_i)), fixed and random effects;
* δ_i (dispersion, log link: glmmTMB's φ_i = exp(δ_i)), fixed effects only.

The log-likelihood of one row, with f the family's density at dispersion φ_i, is

* zero-inflation (``ziformula`` with a count family):
  y = 0: log(π + (1 − π)·f(0)),  y > 0: log(1 − π) + log f(y);
* hurdle (``ziformula`` with a *truncated* family, π the probability of a zero):
  y = 0: log π,  y > 0: log(1 − π) + log f₊(y), f₊ the zero-truncated density;
* neither: log f(y);

times the row's prior weight (as glmmTMB) — except for binomial-type families
(binomial, betabinomial: :func:`weights_are_trials`), whose weights are the numbers of
trials and enter f itself. log π and log(1 − π) are log-sigmoids of ±ζ
and the zero case is a log-sum-exp, so the value and its derivatives are finite at any ζ.

Family protocol (what a family declares to take part; families without the attributes
are classified by name):

* ``zero_inflatable`` (class attribute, bool): ``ziformula=`` is allowed. Default: the
  count families by name (:data:`ZERO_INFLATABLE_NAMES`).
* ``is_truncated`` (class attribute, bool): the family is zero-truncated; its
  ``loglik_eta`` is log f₊(y) for y ≥ 1 (its value at y = 0 is never used), and
  ``response_mean(mu, dispersion)`` gives the truncated mean E[y | y ≥ 1] (as
  :mod:`glmmjax._families.tmb`'s truncated families; or ``log_prob_positive(eta,
  dispersion)`` = log(1 − f(0)) of the untruncated distribution), which predictions of
  the mean need. Default: a name starting with
  ``truncated_``. ``ziformula=`` with such a family is a hurdle model.
* ``tmb_dispersion_power`` (class attribute): the family's ``dispersion`` argument is
  φ^power for glmmTMB's φ = exp(δ). 1 (default) where the two agree (Gaussian σ² in
  glmmTMB 1.1.5, negative binomial θ, beta precision); −1 for Gamma, whose glmmTMB φ is
  the shape and glmmjax's dispersion 1/shape. So dispersion-model coefficients are
  glmmTMB's.
"""

from __future__ import annotations

import numpy as np

from .._lazyjax import jax, jnp

#: Families that accept ``ziformula=`` when they do not say (by ``family.name``).
ZERO_INFLATABLE_NAMES = frozenset({
    "poisson", "negative_binomial", "nbinom1", "nbinom2", "genpois", "compois",
    "betabinomial",  # zeros of the successes: y = 0 whatever the trials
})
_PHI_POWER_BY_NAME = {"Gamma": -1.0}
# glmmTMB's dispformula = ~0 for Gaussian models: log φ fixed at log(sqrt(machine
# epsilon)) (glmmTMBControl's zerodisp_val), a residual variance of about 1.5e-8.
ZERO_DISPERSION_LOG = float(np.log(np.sqrt(np.finfo(np.float64).eps)))


def is_truncated(family) -> bool:
    """Whether ``family`` is zero-truncated (see the module's protocol)."""
    flag = getattr(family, "is_truncated", None)
    if flag is not None:
        return bool(flag)
    return family.name.startswith("truncated_")


def zero_inflatable(family) -> bool:
    """Whether ``ziformula=`` applies to ``family`` (count families and truncated ones)."""
    flag = getattr(family, "zero_inflatable", None)
    if flag is not None:
        return bool(flag)
    return family.name in ZERO_INFLATABLE_NAMES or is_truncated(family)


def weights_are_trials(family) -> bool:
    """Whether the family's prior weights are numbers of trials (binomial, betabinomial:
    y is a proportion of them), which its density takes, rather than multipliers of
    the log-likelihood. A family may say so with a ``weights_are_trials`` attribute."""
    flag = getattr(family, "weights_are_trials", None)
    if flag is not None:
        return bool(flag)
    return family.name in ("binomial", "betabinomial")


def dispersion_power(family) -> float:
    """The power p with the family's ``dispersion`` argument = φ^p, φ = exp(δ)."""
    power = getattr(family, "tmb_dispersion_power", None)
    if power is not None:
        return float(power)
    return _PHI_POWER_BY_NAME.get(family.name, 1.0)


def family_dispersion(family, log_phi):
    """The family's ``dispersion`` argument per row from glmmTMB's log φ."""
    return jnp.exp(dispersion_power(family) * log_phi)


def row_loglik(family, y, weights, eta, zeta, log_phi, *, zero_inflated: bool):
    """Each row's log-likelihood (module docstring) as a pure JAX function.

    Args:
        family: the conditional family (its link maps η to the mean).
        y, weights: the response and prior weights, (n,).
        eta, zeta, log_phi: the conditional, zero-inflation and log-dispersion linear
            predictors, (n,) each (``zeta`` is ignored when not ``zero_inflated``;
            ``log_phi`` where the family has no dispersion).
        zero_inflated: whether the model has a zero-inflation (or hurdle) part.
    """
    dispersion = family_dispersion(family, log_phi)
    ones = jnp.ones_like(y)
    # Trials go into the density; other weights multiply the row's log-likelihood.
    inner, outer = (weights, ones) if weights_are_trials(family) else (ones, weights)
    truncated = is_truncated(family)
    # A truncated density is used for y ≥ 1 only: evaluate it at a harmless count where
    # y = 0, so that neither the value nor its derivatives carry a NaN into jnp.where.
    y_used = jnp.where(y > 0, y, 1.0) if truncated else y
    log_f = family.loglik_eta(y_used, eta, inner, dispersion)
    if not zero_inflated:
        return outer * log_f
    log_pi = jax.nn.log_sigmoid(zeta)
    log_not_pi = jax.nn.log_sigmoid(-zeta)
    positive = log_not_pi + log_f
    if truncated:
        zero = log_pi
    else:
        zero = jnp.logaddexp(log_pi, positive)
    return outer * jnp.where(y == 0, zero, positive)


def conditional_mean(family, eta, log_phi):
    """glmmTMB's ``predict(type="conditional")``: μ, or for a truncated family the mean
    of the zero-truncated distribution, μ/(1 − f(0))."""
    mu = family.link.inverse(eta)
    if is_truncated(family) and hasattr(family, "response_mean"):
        # glmmjax's truncated families give E[y | y ≥ 1] from μ (_families.tmb).
        return family.response_mean(mu, family_dispersion(family, log_phi))
    if is_truncated(family):
        if not hasattr(family, "log_prob_positive"):
            raise NotImplementedError(
                f"the truncated family {family.name} does not define log_prob_positive(eta, "
                "dispersion) = log(1 - f(0)), which its mean needs (see "
                "glmmjax._families.response_parts)")
        log_positive = family.log_prob_positive(eta, family_dispersion(family, log_phi))
        mu = mu * jnp.exp(-log_positive)
    return mu


def response_mean(family, eta, zeta, log_phi, *, zero_inflated: bool):
    """glmmTMB's ``predict(type="response")``: E y = (1 − π)·m with m the conditional
    mean (:func:`conditional_mean`; for a hurdle, the truncated part's mean)."""
    mu = conditional_mean(family, eta, log_phi)
    if not zero_inflated:
        return mu
    return mu * jax.nn.sigmoid(-zeta)
