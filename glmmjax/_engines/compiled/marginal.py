"""The marginal log-likelihood of a :class:`~glmmjax.MixedModel` as a pure JAX function
of :class:`~glmmjax.Params` and of the model's arrays.

LMM (exact). With Ω(θ) = L·L' the blocked factor of [ZΛ X y]'W[ZΛ X y] + diag(I, 0, 0)
(:mod:`glmmjax._engines.compiled.cholesky`), r²(θ) the penalized residual sum of squares at the
conditional optimum (β̂_θ, û_θ) and L_X the fixed effects' block of L:

    ML:    −2ℓ(β, θ, σ²) = n·log(2πσ²) + log|L_Z|² + (r² + |L_X'(β − β̂_θ)|²)/σ² − Σ log wᵢ
    REML:  −2ℓ_R(θ, σ²)  = (n−p)·log(2πσ²) + log|L_Z|² + log|L_X|² + r²/σ² − Σ log wᵢ

which at σ̂² = r²/n (r²/(n−p)) are lme4's profiled deviance (REML criterion); the REML
likelihood does not depend on β. Every piece is plain JAX on the factor, so derivatives
in the parameters and in the data (y, X, weights, offset) are those of the formula.

GLMM (Laplace or adaptive Gauss–Hermite quadrature per the model's ``n_agq``):
:mod:`glmmjax._engines.compiled.laplace`, whose conditional mode carries the implicit-function derivative
in parameters and data (:func:`glmmjax._engines.compiled.pirls.at_mode`).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from ..._families.base import Gaussian
from ..._model.params import Params
from .laplace import agq_objective, gauss_hermite_grid, laplace_objective, mode_and_factor
from .lmm import lmm_model_from_arrays, lmm_pieces, random_effects
from .pirls import GLMMData, conditional_mode, inner_size, split

_LOG_2PI = 1.8378770664093453


def log_likelihood(model, params: Params):
    """log L of ``model`` at ``params`` (see :meth:`glmmjax.MixedModel.log_likelihood`)."""
    if model.is_lmm:
        return -0.5 * lmm_deviance(model, params)
    return -0.5 * glmm_deviance(model, params)


# Called eagerly, one compiled program per model structure; inlined inside the caller's jit.
log_likelihood_compiled = eqx.filter_jit(log_likelihood)


def lmm_arrays(model):
    """The LMM of ``model`` as cross-products (offset moved into the response)."""
    X = jnp.asarray(model.X)
    y = jnp.asarray(model.y) - jnp.asarray(model.offset)
    return lmm_model_from_arrays(
        model.dense_structure, jnp.asarray(model.weights), X, y, model.reml
    )


def lmm_deviance(model, params: Params):
    """−2ℓ (ML) or −2ℓ_R (REML) at (β, θ, σ²) (module docstring)."""
    lmm = lmm_arrays(model)
    logdet_z, logdet_x, r2, factor = lmm_pieces(params.theta, lmm)
    s, p = lmm.structure, lmm.n_fixef
    log_sigma2 = params.log_dispersion[0]
    sigma2 = jnp.exp(log_sigma2)
    n = lmm.nobs
    if model.reml:
        value = (n - p) * (_LOG_2PI + log_sigma2) + logdet_z + logdet_x + r2 / sigma2
    else:
        from .lmm import _solution_from_factor

        pls = _solution_from_factor(lmm, logdet_z, logdet_x, r2, factor)
        R = s.rest_size
        L_x = factor.rest[R - 1 - p : R - 1, R - 1 - p : R - 1]
        gap = L_x.T @ (params.beta - pls.beta)
        value = n * (_LOG_2PI + log_sigma2) + logdet_z + (r2 + jnp.sum(gap**2)) / sigma2
    return value - lmm.sum_log_weights


def glmm_data(model, family=None) -> GLMMData:
    n = model.X.shape[0]
    X = jnp.asarray(model.X)
    return GLMMData(
        structure=model.structure, X=X, dense=jnp.zeros((n, 0), X.dtype),
        y=jnp.asarray(model.y), weights=jnp.asarray(model.weights),
        offset=jnp.asarray(model.offset), family=model.family if family is None else family,
    )


def glmm_vector(params: Params):
    """The GLMM engine's parameter vector [θ, β, log dispersion]."""
    return jnp.concatenate([params.theta, params.beta, params.log_dispersion])


def glmm_deviance(model, params: Params, v0=None):
    """−2 log L by Laplace (``n_agq`` = 1) or AGQ (> 1), full log-density constants."""
    data = glmm_data(model)
    x = glmm_vector(params)
    if v0 is None:
        v0 = jnp.zeros(inner_size(model.structure), x.dtype)
    n_theta, p = params.theta.shape[0], params.beta.shape[0]
    if model.n_agq > 1:
        grid, log_w = gauss_hermite_grid(model.n_agq, model.structure.sizes[0])
        return agq_objective(x, data, v0, n_theta, p, grid.astype(x.dtype),
                             log_w.astype(x.dtype))
    return laplace_objective(x, data, v0, n_theta, p)


def conditional_modes(model, params: Params):
    """The random effects' conditional modes b̂_t = Λ_t·û_t at ``params``, per term.

    GLMM: the mode of the Laplace approximation's integrand (lme4's ``ranef``), with
    the implicit-function derivative in parameters and data. LMM: the conditional mean
    E[b | y] at (β, θ), the minimizer of |W^½(y − Xβ − ZΛu)|² + |u|², which does not
    depend on σ² (solved as a Gaussian GLMM with unit dispersion: one Newton step).
    """
    s = model.structure
    v0 = jnp.zeros(inner_size(s), jnp.result_type(params.beta, float))
    if model.is_lmm:
        data = glmm_data(model, family=Gaussian())
        v = conditional_mode(params.theta, params.beta, jnp.ones((), v0.dtype), data, v0)
    else:
        n_theta, p = params.theta.shape[0], params.beta.shape[0]
        v = mode_and_factor(glmm_vector(params), glmm_data(model), v0, n_theta, p)[3]
    u_first, u_rest, _ = split(v, s)
    return tuple(random_effects(params.theta, s, u_first, u_rest))


conditional_modes_compiled = eqx.filter_jit(conditional_modes)
