"""The relative covariance factor Λ(θ) and the variance components it implies.

Each term t has an S_t×S_t factor Λ_t, repeated over its levels; the covariance of term
t's random effects is σ²·Λ_t·Λ_t'. θ holds the terms' parameters one after another. For
lme4's unstructured terms these are the lower triangle of Λ_t, column-major; structured
terms (``diag``, ``cs``, ``ar1``, ...) map their own parameters to Λ_t
(:mod:`glmmjax._model.cov_structures`).

Every function here takes ``covariances``: the terms' structures, or their sizes S_t
(ints, meaning unstructured terms, as before structures existed).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._lazyjax import jnp
from .cov_structures import Unstructured, as_structures, tril_indices


def _tril_indices_colmajor(size: int) -> tuple[np.ndarray, np.ndarray]:
    return tril_indices(size)


def split_theta(theta, covariances) -> list:
    """θ split into the terms' parameter vectors θ_t."""
    parts, start = [], 0
    for cov in as_structures(covariances):
        parts.append(theta[start : start + cov.n_params])
        start += cov.n_params
    return parts


def theta_to_factors(theta, covariances, xp=None) -> list:
    """The per-term factors Λ_t, as arrays of ``xp`` (``jax.numpy`` by default; ``numpy``
    for the host engines, which import no JAX)."""
    xp = jnp if xp is None else xp
    structures = as_structures(covariances)
    return [cov.factor(part, xp) for cov, part in zip(structures, split_theta(theta, structures))]


def initial_theta(covariances) -> np.ndarray:
    """lme4's start: identity factors (relative SDs 1, correlations 0)."""
    return np.concatenate([cov.start(np.ones(cov.size)) for cov in as_structures(covariances)])


def start_from_sds(covariances, sds) -> np.ndarray:
    """θ from per-term arrays of relative SDs (moment starts), correlations 0."""
    return np.concatenate([cov.start(sd) for cov, sd in zip(as_structures(covariances), sds)])


def unit_scaled_mask(covariances) -> np.ndarray:
    """True where an entry of θ scales with the random effects' units (every entry of an
    unstructured factor, a structure's SDs); False for correlations, ranges and the θ
    of structures that cannot be rescaled so (``row_scaled`` None)."""
    parts = []
    for cov in as_structures(covariances):
        scaled = cov.row_scaled(np.full(cov.size, 2.0))
        parts.append(np.zeros(len(cov.start(np.ones(cov.size))), bool) if scaled is None
                     else np.asarray(scaled) == 2.0)
    return np.concatenate(parts) if parts else np.zeros(0, bool)


def diagonal_mask(covariances) -> np.ndarray:
    """True where θ holds a relative SD: a diagonal entry of an unstructured Λ_t or a
    structured term's SD (non-negative at the optimum, with a boundary at 0)."""
    return np.concatenate([cov.scale_mask() for cov in as_structures(covariances)])


def canonical_theta(theta: np.ndarray, covariances) -> np.ndarray:
    """The reported θ: every SD non-negative (for unstructured terms, column sign flips).

    The likelihood depends on Λ only through ΛΛ', which these changes leave unchanged;
    we optimize θ unconstrained and report the lme4 convention.
    """
    theta = np.asarray(theta, dtype=np.float64)
    return np.concatenate([cov.canonical(part) for cov, part in
                           zip(as_structures(covariances), split_theta(theta, covariances))])


def canonical_thetas(thetas: np.ndarray, covariances) -> np.ndarray:
    """:func:`canonical_theta` of each row of ``thetas`` (models × θ): for scalar
    unstructured terms the sign flips at once (θ → −θ where negative), elsewhere a call
    per model (a batch of thousands of models spent ~20 ms in those calls)."""
    thetas = np.asarray(thetas, dtype=np.float64)
    structures = as_structures(covariances)
    if all(isinstance(c, Unstructured) and c.size == 1 for c in structures):
        return np.where(thetas < 0, -thetas, thetas)
    return np.array([canonical_theta(t, structures) for t in thetas]).reshape(thetas.shape)


def theta_names(groups: list[str], coef_names: list[tuple[str, ...]], covariances=None
                ) -> list[str]:
    """Names of θ entries: lme4's for unstructured terms (``Subject.Days.(Intercept)``),
    the SDs' and ``rho`` for structured ones."""
    if covariances is None:
        covariances = tuple(len(c) for c in coef_names)
    names = []
    for group, coefs, cov in zip(groups, coef_names, as_structures(covariances)):
        names.extend(cov.param_names(group, coefs))
    return names


def varcorr_frame(
    theta: np.ndarray,
    covariances,
    groups: list[str],
    coef_names: list[tuple[str, ...]],
    scale: float | None,
) -> pd.DataFrame:
    """Variance components as lme4's ``as.data.frame(VarCorr(fit))``.

    One row per variance and covariance of each term (sdcor holds standard deviations
    and correlations), then a ``Residual`` row when the family has a scale ``scale``
    (the residual standard deviation σ). Covariances are σ²·Λ_tΛ_t' (σ = 1 when
    ``scale`` is None, as for binomial and Poisson models).
    """
    rows = []
    sigma2 = 1.0 if scale is None else scale**2
    covariances = as_structures(covariances)
    for cov, part, group, coefs in zip(covariances, split_theta(theta, covariances), groups,
                                       coef_names):
        size = cov.size
        if cov.name == "relmat":  # one variance σ²θ² over the levels' known K
            sd = float(np.sqrt(sigma2) * abs(float(np.asarray(part)[0])))
            rows.append((group, "Intercept", None, sd**2, sd))
            continue
        factor = cov.factor(np.asarray(part, dtype=np.float64), np)
        matrix = sigma2 * factor @ factor.T
        sd = np.sqrt(np.diag(matrix))
        for i in range(size):
            rows.append((group, coefs[i], None, matrix[i, i], sd[i]))
        for j in range(size):
            for i in range(j + 1, size):
                denom = sd[i] * sd[j]
                corr = matrix[i, j] / denom if denom > 0 else np.nan
                rows.append((group, coefs[j], coefs[i], matrix[i, j], corr))
    if scale is not None:
        rows.append(("Residual", None, None, scale**2, scale))
    return pd.DataFrame(rows, columns=["group", "var1", "var2", "vcov", "sdcor"])


def structure_summaries(theta: np.ndarray, covariances, groups: list[str]) -> dict[str, str]:
    """Per group label, the structure and its correlation parameter where it has one
    (glmmTMB prints e.g. ``0.64 (ar1)``): ``{"Subject": "ar1: rho 0.64"}``."""
    out = {}
    covariances = as_structures(covariances)
    for cov, part, group in zip(covariances, split_theta(theta, covariances), groups):
        text = cov.correlation_summary(part)
        if text is None and cov.name != "us":
            text = cov.name
        if text is not None:
            out[group] = text
    return out


def numpy_factors(theta: np.ndarray, covariances) -> list[np.ndarray]:
    """The per-term factors Λ_t as numpy arrays (results, simulation, displays)."""
    structures = as_structures(covariances)
    return [cov.factor(np.asarray(part, dtype=np.float64), np) for cov, part in
            zip(structures, split_theta(np.asarray(theta, dtype=np.float64), structures))]
