"""The relative covariance factor Λ(θ) and the variance components it implies.

Each term t has a lower-triangular S_t×S_t factor Λ_t, repeated over its levels; θ holds
the lower triangles one after another, column-major within a term (lme4's order). The
covariance of term t's random effects is σ²·Λ_t·Λ_t'.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import pandas as pd


@functools.cache
def _tril_indices_cached(size: int) -> tuple[np.ndarray, np.ndarray]:
    cols, rows = np.triu_indices(size)  # column-major lower triangle
    return rows, cols


def _tril_indices_colmajor(size: int) -> tuple[np.ndarray, np.ndarray]:
    # The host engines build Λ from θ thousands of times per fit, so the indices are
    # cached, and copied on the way out: JAX caches constants made from numpy arrays by
    # identity, and an index array first converted under x64 (int64) and reused
    # without it broke a float32 trace.
    rows, cols = _tril_indices_cached(size)
    return rows.copy(), cols.copy()


def theta_to_factors(theta, sizes: tuple[int, ...]) -> list:
    """Split θ into the per-term lower-triangular factors Λ_t (jnp)."""
    factors, start = [], 0
    for size in sizes:
        count = size * (size + 1) // 2
        rows, cols = _tril_indices_colmajor(size)
        block = jnp.zeros((size, size), dtype=theta.dtype)
        factors.append(block.at[rows, cols].set(theta[start : start + count]))
        start += count
    return factors


def initial_theta(sizes: tuple[int, ...]) -> np.ndarray:
    """lme4's start: identity factors (ones on the diagonal, zeros below)."""
    parts = []
    for size in sizes:
        rows, cols = _tril_indices_colmajor(size)
        parts.append((rows == cols).astype(np.float64))
    return np.concatenate(parts)


def diagonal_mask(sizes: tuple[int, ...]) -> np.ndarray:
    """True where θ holds a diagonal entry of some Λ_t."""
    parts = []
    for size in sizes:
        rows, cols = _tril_indices_colmajor(size)
        parts.append(rows == cols)
    return np.concatenate(parts)


def canonical_theta(theta: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
    """Flip column signs so every diagonal entry is non-negative.

    The likelihood depends on Λ only through ΛΛ', which a column sign flip leaves
    unchanged; we optimize θ unconstrained and report the lme4 convention.
    """
    theta = np.array(theta, dtype=np.float64)
    start = 0
    for size in sizes:
        count = size * (size + 1) // 2
        rows, cols = _tril_indices_colmajor(size)
        block = np.zeros((size, size))
        block[rows, cols] = theta[start : start + count]
        signs = np.where(np.diag(block) < 0, -1.0, 1.0)
        block = block * signs[None, :]
        theta[start : start + count] = block[rows, cols]
        start += count
    return theta


def theta_names(groups: list[str], coef_names: list[tuple[str, ...]]) -> list[str]:
    """lme4-style names of θ entries, e.g. ``Subject.Days.(Intercept)``."""
    names = []
    for group, coefs in zip(groups, coef_names):
        rows, cols = _tril_indices_colmajor(len(coefs))
        for r, c in zip(rows, cols):
            names.append(f"{group}.{coefs[r]}" if r == c else f"{group}.{coefs[r]}.{coefs[c]}")
    return names


def varcorr_frame(
    theta: np.ndarray,
    sizes: tuple[int, ...],
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
    start = 0
    for size, group, coefs in zip(sizes, groups, coef_names):
        count = size * (size + 1) // 2
        r_idx, c_idx = _tril_indices_colmajor(size)
        factor = np.zeros((size, size))
        factor[r_idx, c_idx] = theta[start : start + count]
        start += count
        cov = sigma2 * factor @ factor.T
        sd = np.sqrt(np.diag(cov))
        for i in range(size):
            rows.append((group, coefs[i], None, cov[i, i], sd[i]))
        for j in range(size):
            for i in range(j + 1, size):
                denom = sd[i] * sd[j]
                corr = cov[i, j] / denom if denom > 0 else np.nan
                rows.append((group, coefs[j], coefs[i], cov[i, j], corr))
    if scale is not None:
        rows.append(("Residual", None, None, scale**2, scale))
    return pd.DataFrame(rows, columns=["group", "var1", "var2", "vcov", "sdcor"])
