"""Checks of a design against a model kind, before any tracing: shared by the front
doors and :class:`~glmmjax.MixedModel` (which must not import the front doors)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._display import show
from .._errors import DataError

if TYPE_CHECKING:
    from .design import Design

def check_max_iter(max_iter) -> int:
    """``max_iter`` as an int (a light module: a first fit need not import the LMM
    front door for it)."""
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {show(max_iter)}")
    return int(max_iter)


# Adaptive quadrature's grid has n_agq^S nodes per level: S is kept small.
MAX_AGQ_DIM = 3


def check_lmm_design(design: Design) -> None:
    """lme4's identifiability checks for an LMM, before any tracing."""
    n = design.nobs
    for term in design.terms:
        # A term with a correlation structure (cs, ar1) separates its variance from the
        # residual through the correlations, as glmmTMB fits it; lme4's count rule is
        # for unstructured and diagonal terms.
        tied = getattr(term.covariance, "name", "us") not in ("us", "diag")
        if term.n_levels * term.size >= n and not tied:
            raise DataError(
                f"term {term.spec} has {term.n_levels * term.size} random effects for "
                f"{n} observations; an LMM needs fewer random effects per term than "
                "observations (the residual variance is not identifiable otherwise)"
            )
    if np.linalg.matrix_rank(design.X) < design.X.shape[1]:
        raise DataError(
            f"the fixed-effects matrix is rank deficient (columns {list(design.fixef_names)}); "
            "remove collinear terms"
        )


def validate_agq(n_agq, design) -> int:
    if not isinstance(n_agq, (int, np.integer)) or isinstance(n_agq, bool) or n_agq < 0:
        raise ValueError(f"n_agq must be a non-negative integer (0, 1 = Laplace, or > 1), got {show(n_agq)}")
    if n_agq > 1:
        if len(design.terms) != 1:
            raise ValueError(
                f"n_agq > 1 (adaptive quadrature) needs the random effects of a single "
                f"term of one grouping factor, so that the integral factorizes over its "
                f"levels; this model has {len(design.terms)} terms "
                f"({', '.join(str(t.spec) for t in design.terms)}). Use n_agq=1 (Laplace)."
            )
        size = design.terms[0].size
        if size > MAX_AGQ_DIM:
            raise ValueError(
                f"n_agq > 1 supports at most {MAX_AGQ_DIM} random effects per level (the "
                f"grid has n_agq^S nodes); term {design.terms[0].spec} has {size}. "
                "Use n_agq=1 (Laplace)."
            )
    return int(n_agq)
