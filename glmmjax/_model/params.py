"""The parameters of a mixed model as a pytree: what ``log_likelihood`` takes and
``glmmjax.solve`` returns."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp


class Params(eqx.Module):
    """Parameters of a (generalized) linear mixed model, unconstrained, as a pytree.

    Attributes:
        beta: (p,) fixed effects, in the columns' order of the model's X.
        theta: (n_theta,) lme4's θ: per random-effects term, the lower triangle of its
            relative covariance factor Λ_t, column-major, terms in the model's order
            (``MixedModel.term_order``: decreasing number of levels, as lme4). The
            covariance of term t's effects is σ²·Λ_tΛ_t' for an LMM and Λ_tΛ_t' for a
            GLMM. Any real values are valid: the likelihood depends on Λ_t only
            through Λ_tΛ_t'. :func:`glmmjax.solve` returns lme4's convention
            (non-negative diagonals).
        log_dispersion: (1,) the log of the family's dispersion parameter on its
            natural scale, or (0,) where the family has none (or it is fixed): σ² for an
            LMM or a Gaussian GLMM, φ for Gamma and inverse Gaussian, the size θ for the
            negative binomial (NB2), the precision φ for beta.

    Every field is an array leaf, so ``Params`` works with ``jax.grad``, ``jax.vmap``
    and optax (``optax.apply_updates(params, updates)``) as it is.

    Example:
        >>> import glmmjax
        >>> model = glmmjax.MixedModel.from_formula(
        ...     "Reaction ~ Days + (Days | Subject)", glmmjax.datasets.load("sleepstudy"))
        >>> params = model.init_params()
        >>> params.theta.shape, params.log_dispersion.shape
        ((3,), (1,))
    """

    beta: jnp.ndarray
    theta: jnp.ndarray
    log_dispersion: jnp.ndarray

    @property
    def dispersion(self):
        """The dispersion on its natural scale (``exp(log_dispersion)``), (0,) or (1,)."""
        return jnp.exp(self.log_dispersion)

    @property
    def sigma(self):
        """σ = √dispersion, the residual standard deviation of a Gaussian model."""
        return jnp.exp(0.5 * self.log_dispersion)
