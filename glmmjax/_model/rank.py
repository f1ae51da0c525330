"""Aliased fixed-effect columns dropped before a mixed-model fit, as lme4 does.

lme4 (``lmerControl(check.rankX = "message+drop.cols")``, its default for ``lmer`` and
``glmer``) factors X by R's ``qr(X, tol = 1e-7)`` — LINPACK's ``dqrdc2``, which keeps the
columns in their order and moves a column to the end when what is left of it after the
earlier kept columns is below ``tol`` times its own norm — and drops the columns beyond
the rank, saying "fixed-effect model matrix is rank deficient so dropping 1 column /
coefficient". ``fixef()`` then omits them and ``fixef(fit, add.dropped = TRUE)`` reports
them as NA. glmmjax does the same before any fit (``lmer``, ``glmer``, ``fit_many``):
the fit sees only the kept columns, and the results report the dropped ones as NaN.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

RANK_TOL = 1e-7  # lme4's chkRank.drop.cols default


class RankDeficiencyWarning(UserWarning):
    """The fixed-effect model matrix was rank deficient: aliased columns were dropped."""


def aliased_columns(X: np.ndarray, tol: float = RANK_TOL) -> np.ndarray:
    """Boolean mask of the columns ``dqrdc2`` would pivot to the end (left to right).

    Gram–Schmidt with one re-orthogonalization against the kept columns, compared with
    each column's own norm as ``dqrdc2`` does; O(n·p²), a few milliseconds for tall X.
    """
    X = np.asarray(X, dtype=float)
    n, p = X.shape
    basis = np.empty((n, 0))
    aliased = np.zeros(p, dtype=bool)
    for j in range(p):
        column = X[:, j]
        norm = np.linalg.norm(column)
        if norm == 0.0:
            aliased[j] = True
            continue
        residual = column - basis @ (basis.T @ column)
        residual -= basis @ (basis.T @ residual)
        left = np.linalg.norm(residual)
        if left < tol * norm:
            aliased[j] = True
        else:
            basis = np.column_stack([basis, residual / left])
    return aliased


def drop_aliased_columns(design):
    """``design`` without its aliased fixed-effect columns, warning which (lme4's
    message); the design itself when X has full column rank."""
    aliased = aliased_columns(design.X)
    if not aliased.any():
        return design
    dropped = tuple(name for name, a in zip(design.fixef_names, aliased) if a)
    if aliased.all():
        from .design import DataError

        raise DataError(f"every fixed-effect column is zero or aliased: {list(dropped)}")
    count = len(dropped)
    suffix = "" if count == 1 else "s"
    from .._stacklevel import external_stacklevel

    warnings.warn(
        f"fixed-effect model matrix is rank deficient so dropping {count} column{suffix} / "
        f"coefficient{suffix}: {list(dropped)} (linear combinations of the columns before "
        "them; reported as NaN)",
        RankDeficiencyWarning,
        stacklevel=external_stacklevel(),
    )
    kept = np.flatnonzero(~aliased)
    return dataclasses.replace(
        design,
        X=np.ascontiguousarray(design.X[:, kept]),
        fixef_names=tuple(design.fixef_names[i] for i in kept),
        dropped_fixef=dropped,
        x_columns=tuple(int(i) for i in kept),
    )


def all_fixef_names(design) -> tuple[str, ...]:
    """Every column name of the model matrix, the dropped ones included, in order."""
    if not design.dropped_fixef:
        return tuple(design.fixef_names)
    names = [None] * (len(design.fixef_names) + len(design.dropped_fixef))
    for position, name in zip(design.x_columns, design.fixef_names):
        names[position] = name
    dropped = iter(design.dropped_fixef)
    return tuple(name if name is not None else next(dropped) for name in names)
