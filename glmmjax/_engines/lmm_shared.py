"""The LMM pieces both engines share, importing no JAX.

The host engine (:mod:`glmmjax._engines.host.lmm`, numpy and LAPACK) and the compiled
one (:mod:`glmmjax._engines.compiled.lmm`, one XLA program) fit the same criterion from
the same containers: the cross-products (:class:`CrossProducts`), the PLS solution at θ
(:class:`PLSSolution`), the optimizer's coordinates for θ (diagonal entries on the log
scale), its first metric and start. They live here, as pytree dataclasses
(:mod:`glmmjax._lazyjax`) and functions generic in the array module, so that a host fit
never imports JAX; the compiled modules re-export them under their old names.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .._lazyjax import jnp, pytree_dataclass
from .._model.cov_structures import term_structures
from .._model.covariance import initial_theta, start_from_sds, theta_to_factors
from .._model.design import Design
from .._model.structure import ReStructure, build_structure

# lme4's isSingular() tolerance on the diagonal of Λ.
SINGULAR_TOL = 1e-4
# Diagonal θ entries are optimized on the log scale above this, linearly below it (see
# _from_log_scale; 0.01 and 0.3 took more evaluations on dyestuff2 and InstEval).
_LOG_FLOOR = 0.1


@pytree_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class CrossProducts:
    """The blocks of [Z D]'W[Z D] that the factorization needs.

    ``first`` (m0, S0, S0): the first term's diagonal blocks; ``coupling[t-1]``
    (pairs_t, S_t, S0): later term t against the first, per co-occurring pair;
    ``dense_first`` (m0, k, S0): the dense columns against the first term, per level;
    ``rest`` (R, R): everything else, dense.
    """

    first: jnp.ndarray
    coupling: tuple
    dense_first: jnp.ndarray
    rest: jnp.ndarray


@pytree_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class PLSSolution:
    """β̂, the spherical conditional modes u, r² and the pieces of the criterion at θ."""

    beta: jnp.ndarray
    u_first: jnp.ndarray  # (m0, S0)
    u_rest: jnp.ndarray  # (R_re,)
    r2: jnp.ndarray
    logdet_z: jnp.ndarray
    logdet_x: jnp.ndarray
    criterion: jnp.ndarray
    fixef_factor: jnp.ndarray  # L_X (p, p): β's block of the factor, Var(β̂) = σ²·(L_X·L_X')⁻¹


def build_structure_for(design: Design, n_dense: int) -> ReStructure:
    return build_structure(design.terms, n_dense)


def _from_log_scale(phi, mask, xp=jnp):
    """θ from the optimizer's coordinates φ: exp(φ) for a diagonal entry above
    _LOG_FLOOR = c, below it the tangent line c·(1 + φ − log c), which reaches 0 (and
    negative values) at finite φ. The criterion is even in a scalar θ near 0, hence
    quadratic in φ there, so a fit at the boundary converges as fast as on the plain
    scale instead of marching φ to −∞. ``xp``: jax.numpy, or numpy for the host engine."""
    a = np.log(_LOG_FLOOR)
    diag = xp.where(phi >= a, xp.exp(xp.minimum(phi, 700.0)),
                     _LOG_FLOOR * (1.0 + phi - a))
    return xp.where(mask, diag, phi)


def _to_log_scale(theta, mask, xp=jnp):
    a = np.log(_LOG_FLOOR)
    above = xp.log(xp.maximum(theta, _LOG_FLOOR))
    below = a + theta / _LOG_FLOOR - 1.0
    return xp.where(mask, xp.where(theta >= _LOG_FLOOR, above, below), theta)


def _log_scale_slope(phi, mask, xp=jnp):
    """dθ/dφ."""
    a = np.log(_LOG_FLOOR)
    diag = xp.where(phi >= a, xp.exp(xp.minimum(phi, 700.0)), _LOG_FLOOR)
    return xp.where(mask, diag, 1.0)


def inverse_hessian_guess(structure: ReStructure) -> np.ndarray:
    """diag(1 / (2·m_t)) for the θ entries of a term with m_t levels.

    Near the optimum the criterion's Hessian in θ is close to diagonal with entries of
    the order of 2·m_t/θ², i.e. 2·m_t in log θ (the coordinates :func:`fit_theta`
    uses; log|Λ'Z'ZΛ + I| grows like 2·m_t·log θ; InstEval: 5.7e4, 1.7e4, 6.8e3 against
    7.8e4, 1.2e4, 6.4e3), so at θ = 1 this is a far better first metric than
    the identity, whose first step BFGS must rescale: on InstEval 14 iterations instead
    of 26.
    """
    scale = np.concatenate([
        np.full(cov.n_params, 1.0 / (2.0 * max(m, 1)))
        for cov, m in zip(structure.structures, structure.n_levels)
    ])
    return np.diag(scale)


def term_values(s: ReStructure, u_first, u_rest) -> list:
    """A vector over the random effects, split per term into (m_t, S_t) arrays (numpy or
    jax.numpy alike)."""
    out = [u_first]
    for t in range(1, s.n_terms):
        start, m, size = s.offsets[t], s.n_levels[t], s.sizes[t]
        out.append(u_rest[start : start + m * size].reshape(m, size))
    return out


def random_effects(theta, structure: ReStructure, u_first, u_rest, xp=None) -> list:
    """b_t = Λ_t·u_t per term, each as an (m_t, S_t) array (relative to σ); arrays of
    ``xp`` (``jax.numpy`` by default, ``numpy`` for the host engines)."""
    factors = theta_to_factors(theta, structure.structures, xp)
    return [u @ lam.T for u, lam in zip(term_values(structure, u_first, u_rest), factors)]


def start_theta(structure: ReStructure) -> np.ndarray:
    return initial_theta(structure.structures)


# Moment starts are kept within these bounds for diagonal entries of θ: θ = 0 is a
# stationary point of the criterion (it depends on Λ through ΛΛ'), so no start sits on it.
_MOMENT_FLOOR, _MOMENT_CAP = 0.05, 100.0


def moment_theta(terms, X, y, weights) -> np.ndarray:
    """A start for θ from moments of the least-squares residuals e (numpy, no tracing).

    For each column k of a term's model matrix, with g_l = Σ z_k·e and a_l = Σ z_k² over
    the observations of level l, E Σ_l g_l² ≈ τ_k²·Σ_l a_l² + s²·Σ_l a_l, where s² is
    the residual variance (random effects included) and the overlap of τ_k² with s² is
    removed with the average z_k²; then θ_kk = τ_k / σ_e, with σ_e² the part of s² no
    term explains, and zero correlations. Crude (crossed and nested terms leak into each
    other's sums), but it puts BFGS's first point near the optimum. REML evaluations
    from it (with :func:`fit_theta`'s stopping rules), against lme4's start at identity
    factors before: InstEval 7 (9), sleepstudy 12 (12), penicillin 10 (15), pastes 10
    (12), dyestuff2 5 (10).
    """
    X = np.asarray(X, dtype=float)
    root_w = np.sqrt(np.asarray(weights, dtype=float))
    beta, *_ = np.linalg.lstsq(X * root_w[:, None], y * root_w, rcond=None)
    e = (y - X @ beta) * root_w
    n, p = X.shape
    s2 = float(e @ e) / max(n - p, 1)
    variances = []
    for term in terms:
        z = np.asarray(term.z, dtype=float) * root_w[:, None]
        tau2 = np.zeros(z.shape[1])
        for k in range(z.shape[1]):
            g = np.bincount(term.refs, weights=z[:, k] * e, minlength=term.n_levels)
            a = np.bincount(term.refs, weights=z[:, k] ** 2, minlength=term.n_levels)
            denominator = np.sum(a**2) - np.sum(a) * np.mean(z[:, k] ** 2)
            if denominator > 0:
                tau2[k] = max((np.sum(g**2) - s2 * np.sum(a)) / denominator, 0.0)
        variances.append(tau2)
    explained = sum(float(np.mean(np.asarray(t.z, dtype=float) ** 2 @ v))
                    for t, v in zip(terms, variances))
    sigma2 = max(s2 - explained, 0.05 * s2)
    structures = term_structures(terms)
    theta = start_from_sds(structures, [np.clip(np.sqrt(tau2 / sigma2), _MOMENT_FLOOR, _MOMENT_CAP)
                                        for tau2 in variances])
    return theta if np.all(np.isfinite(theta)) else initial_theta(structures)
