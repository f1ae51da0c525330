"""Which covariance structure a random-effects term gets, checked against its data.

Runs while the design is built (numpy, before any tracing), so a structure that cannot
apply to its term fails with an error naming the term and what would be valid.
"""

from __future__ import annotations

import numpy as np

from ._cov_structures import (
    AR1,
    STRUCTURE_NAMES,
    CompoundSymmetry,
    CovarianceStructure,
    Diagonal,
    Unstructured,
)
from ._formula import FormulaError


def _level_label(name: str) -> str:
    """``dayf[3]`` -> ``3`` (formulaic's names of a factor's indicator columns)."""
    if name.endswith("]") and "[" in name:
        label = name[name.index("[") + 1 : -1]
        return label[2:] if label.startswith("T.") else label
    return name


def _check_factor_of_times(spec, z: np.ndarray, coef_names) -> None:
    """ar1 needs the indicator columns of one factor (no intercept), at least two
    levels, and — where the levels are numbers — equally spaced increasing times."""
    what = f"{spec.structure}() in term {spec}"
    indicator = np.all((z == 0) | (z == 1)) and np.all(z.sum(axis=1) == 1)
    if "1" in [c.strip() for c in spec.expr.split("+")] or not indicator:
        raise FormulaError(
            f"{what} needs a factor of ordered, equally spaced times without an intercept, "
            f"e.g. ar1(time + 0 | group) with time a categorical column; got columns "
            f"{list(coef_names)[:5]}")
    if z.shape[1] < 2:
        raise FormulaError(f"{what} needs a factor with at least two times; got "
                           f"{list(coef_names)}")
    labels = [_level_label(c) for c in coef_names]
    try:
        times = np.array([float(label) for label in labels])
    except ValueError:
        return  # named levels (e.g. "early" < "late"): their order is the time order
    steps = np.diff(times)
    if np.any(steps <= 0):
        raise FormulaError(
            f"{what}: the time factor's levels {labels} are not in increasing order; "
            "order its categories by time (pd.Categorical(..., categories=sorted times))")
    if not np.allclose(steps, steps[0], rtol=1e-9, atol=0.0):
        raise FormulaError(
            f"{what} assumes equally spaced times, but the levels {labels} have gaps "
            f"(steps {sorted(set(np.round(steps, 12).tolist()))}); use ou(time + 0 | "
            "group) for unequally spaced times, or include the missing times as levels")


def term_covariance(spec, z: np.ndarray, coef_names) -> CovarianceStructure:
    """The covariance structure of term ``spec`` (its name in ``spec.structure``), whose
    model matrix is ``z`` with columns ``coef_names``."""
    name, size = spec.structure, z.shape[1]
    if name == "us":
        return Unstructured(size)
    if name == "diag":
        return Diagonal(size)
    if name in ("cs", "homcs"):
        if size < 2:
            raise FormulaError(
                f"{name}() in term {spec} needs at least two random effects per level "
                f"(it models their correlation); this term has one ({list(coef_names)}): "
                f"use ({spec.expr} | {spec.group})")
        return CompoundSymmetry(size, homogeneous=name == "homcs")
    if name == "ar1":
        _check_factor_of_times(spec, z, coef_names)
        return AR1(size)
    raise FormulaError(f"unknown covariance structure {name!r} in term {spec}; valid: "
                       f"{', '.join(STRUCTURE_NAMES)}")
