"""glmmTMB's response parts in Bayesian fits: zero-inflation and hurdles (``ziformula=``)
and dispersion models (``dispformula=``).

The model is the one ``glmer(..., ziformula=, dispformula=)`` fits by the Laplace
approximation (:mod:`glmmjax._families.response_parts`): per row

    η = Xβ + o + Σ_t Z_t b_t               (conditional part, the family's link)
    ζ = X_zi β_zi + o_zi + Σ_t Z_zi,t b_zi,t  (zero-inflation or hurdle, logit link)
    log φ = X_disp β_disp + o_disp           (dispersion, log link, fixed effects only)

and y's log-likelihood is :func:`~glmmjax._families.response_parts.row_loglik`, the
function the frequentist engines maximize. The zero-inflation part's random effects are
non-centred like the conditional ones (their terms are labelled ``<group>__zi``). With
``ziformula`` but no ``dispformula`` the family's dispersion keeps its usual parameter
and prior (``sigma``, ``phi``, ``theta``); with a ``dispformula`` its coefficients
``b_disp_*`` replace it, on glmmTMB's log φ (σ² for a Gaussian model, the shape for
Gamma, θ for the negative binomial, the precision for beta).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints

from .._families.base import Family, get_family
from .._families.response_parts import (
    dispersion_power,
    family_dispersion,
    row_loglik,
    weights_are_trials,
)
from .._model.model import MixedModel
from .._model.structure import build_structure


class PartsLikelihood(dist.Distribution):
    """Independent rows of glmmTMB's response model (zero-inflation/hurdle and a
    per-row dispersion) as a NumPyro distribution over y."""

    support = constraints.real

    def __init__(self, family: Family, eta, zeta, log_phi, weights, zero_inflated: bool):
        self.family, self.eta, self.zeta, self.log_phi = family, eta, zeta, log_phi
        self.weights, self.zero_inflated = weights, zero_inflated
        super().__init__(batch_shape=jnp.shape(eta))

    def log_prob(self, value):
        return row_loglik(self.family, value, self.weights, self.eta, self.zeta, self.log_phi,
                          zero_inflated=self.zero_inflated)

    def sample(self, key, sample_shape=()):
        return simulate(key, self.family, self.eta, self.zeta, self.log_phi, self.weights,
                        self.zero_inflated, tuple(sample_shape) + self.batch_shape)


def simulate(key, family, eta, zeta, log_phi, weights, zero_inflated, shape=None):
    """Responses drawn from the rows' distributions (JAX): zeros with probability
    π = logistic(ζ), else the family's draws (a truncated family's draws are positive,
    so that a hurdle's zeros are the π ones). Binomial-type families draw proportions of
    their trials (the weights); others take one trial."""
    shape = jnp.shape(eta) if shape is None else shape
    k_zero, k_count = jax.random.split(key)
    mu = jnp.broadcast_to(family.link.inverse(eta), shape)
    trials = weights if weights_are_trials(family) else jnp.ones_like(weights)
    y = family.simulate(k_count, mu, jnp.broadcast_to(trials, shape),
                        jnp.broadcast_to(family_dispersion(family, log_phi), shape))
    if zero_inflated:
        y = jnp.where(jax.random.bernoulli(k_zero, jax.nn.sigmoid(zeta), shape), 0.0, y)
    return y


def scalar_log_phi(layout_dispersion: str | None, family, value):
    """glmmTMB's log φ from the sampled scalar dispersion (σ, φ or θ)."""
    dispersion = value * value if layout_dispersion == "sigma" else value
    return jnp.log(dispersion) / dispersion_power(family)


def build_parts_model(formula: str, data, family, ziformula, dispformula, *, weights=None,
                      offset=None):
    """The conditional :class:`~glmmjax.MixedModel` (response prepared as ``glmer``'s
    parts route does: a hurdle model's zeros kept) and the parts' designs.

    Raises:
        ValueError, FormulaError, DataError: as ``glmer(..., ziformula=, dispformula=)``.
    """
    from .._model.parts_design import build_parts, check_parts
    from .._parts_fit import checked_parts_response

    family = get_family("gaussian" if family is None else family)
    zi_rhs, disp_rhs = check_parts(family, ziformula, dispformula)
    parts = build_parts(formula, data, family, zi_rhs, disp_rhs, weights=weights, offset=offset)
    design = parts.cond
    y, w, success = checked_parts_response(family, parts)
    model = MixedModel(
        X=np.asarray(design.X), y=np.asarray(y, dtype=float), weights=np.asarray(w, dtype=float),
        offset=np.asarray(design.offset), structure=build_structure(design.terms, 0),
        dense_structure=build_structure(design.terms, design.X.shape[1]), family=family,
        reml=False, design=design, success_level=success,
    )
    return model, parts, disp_rhs is not None


def part_arrays(part, n: int):
    """(X, offset) of a part design, ((n, 0), zeros) when absent."""
    if part is None:
        return np.zeros((n, 0)), np.zeros(n)
    return np.asarray(part.X, np.float64), np.asarray(part.offset, np.float64)
