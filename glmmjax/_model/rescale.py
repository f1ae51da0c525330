"""Badly scaled predictors: an LMM fitted on rescaled columns and reported exactly.

A predictor in units 1e8 times too small (x·1e8) leaves the fit's answer unchanged in
exact arithmetic, but its random-slope θ (SD relative to σ) becomes ~1e-9: the start is
far off, BFGS crawls, and the singularity rule (θ < 1e-4, lme4's) calls a non-zero SD
zero. lme4 warns "Some predictor variables are on very different scales: consider
rescaling" and leaves it to the user. glmmjax instead fits on columns multiplied by
powers of two (exact in binary floating point) chosen so that each column's root mean
square is near one, and maps the result back:

* X̃ = X·F (F diagonal): β = F β̃, Var β = F Var β̃ F; the REML criterion's log|X'V⁻¹X|
  term shifts by 2 Σ log f_j, which is subtracted again (the ML criterion is invariant).
* Z̃_t = Z_t·D_t for each term: b = D_t b̃, Λ_t = D_t Λ̃_t (rows of the factor, so θ's
  lower-triangular entries scale by their row's d), conditional covariances D C̃ D.
  A structured term maps its own θ (SDs scale, correlations do not); a structure with
  one SD shared by its effects (``homcs``, ``ar1``) keeps its columns unless one d
  scales them all.

Singularity is judged on the rescaled θ, i.e. relative to the predictor's own scale.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .cov_structures import term_structures

# Rescale when some column's root mean square is beyond 2**10 (~1e3, lme4's threshold for
# its warning) away from one.
_MAX_LOG2_SCALE = 10


@dataclasses.dataclass(frozen=True)
class ColumnScales:
    """Power-of-two multipliers of X's columns and of each term's columns."""

    fixed: np.ndarray
    terms: tuple[np.ndarray, ...]

    @property
    def log_fixed_sum(self) -> float:
        return float(np.sum(np.log(self.fixed)))


def _powers_of_two(matrix: np.ndarray) -> np.ndarray:
    rms = np.sqrt(np.mean(np.asarray(matrix, dtype=float) ** 2, axis=0))
    exponent = np.where(rms > 0, -np.round(np.log2(np.where(rms > 0, rms, 1.0))), 0.0)
    return np.ldexp(1.0, exponent.astype(int))


def column_scales(design) -> ColumnScales | None:
    """The multipliers, or None when every column is within 2**10 of unit scale."""
    fixed = _powers_of_two(design.X)
    terms = tuple(d if cov.row_scaled(d) is not None else np.ones_like(d)
                  for d, cov in zip((_powers_of_two(t.z) for t in design.terms),
                                    term_structures(design.terms)))
    worst = max([np.max(np.abs(np.log2(fixed)), initial=0.0)]
                + [np.max(np.abs(np.log2(d)), initial=0.0) for d in terms])
    if worst < _MAX_LOG2_SCALE:
        return None
    return ColumnScales(fixed=fixed, terms=terms)


def scaled_design(design, scales: ColumnScales):
    """``design`` with its columns multiplied by the scales (exactly)."""
    terms = tuple(dataclasses.replace(t, z=np.asarray(t.z, dtype=float) * d)
                  for t, d in zip(design.terms, scales.terms))
    return dataclasses.replace(design, X=np.asarray(design.X, dtype=float) * scales.fixed,
                               terms=terms)


def theta_row_scales(scales: ColumnScales, terms) -> np.ndarray:
    """Each θ entry's multiplier: for an unstructured term, the d of its row in the
    lower-triangular factor; for a structured one, its SDs' d (correlations: 1)."""
    parts = [cov.row_scaled(d) for d, cov in zip(scales.terms, term_structures(terms))]
    return np.concatenate(parts) if parts else np.zeros(0)


def unscale_lmm_result(result, design, scales: ColumnScales):
    """The LMM result of the scaled design, on the scale of ``design`` (its own)."""
    f = scales.fixed
    effects = tuple(np.asarray(b) * d for b, d in zip(result.effects, scales.terms))
    scaled_cov = result.effect_cov

    def effect_cov():
        return [np.asarray(c) * d[:, None] * d[None, :]
                for c, d in zip(scaled_cov(), scales.terms)]

    criterion = result.criterion
    if result.method == "REML":
        criterion = criterion - 2.0 * scales.log_fixed_sum
    return dataclasses.replace(
        result,
        design=design,
        theta_values=np.asarray(result.theta_values) * theta_row_scales(scales, design.terms),
        beta=np.asarray(result.beta) * f,
        beta_cov=np.asarray(result.beta_cov) * f[:, None] * f[None, :],
        effects=effects,
        effect_cov=effect_cov,
        criterion=float(criterion),
    )
