"""Which covariance structure a random-effects term gets, checked against its data.

Runs while the design is built (numpy, before any tracing), so a structure that cannot
apply to its term fails with an error naming the term and what would be valid.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .cov_structures import (
    AR1,
    STRUCTURE_NAMES,
    CompoundSymmetry,
    CovarianceStructure,
    Diagonal,
    Matern,
    OrnsteinUhlenbeck,
    Spatial,
    Toeplitz,
    Unstructured,
)
from .formula import FormulaError


def _level_label(name: str) -> str:
    """``dayf[3]`` -> ``3`` (formulaic's names of a factor's indicator columns)."""
    if name.endswith("]") and "[" in name:
        label = name[name.index("[") + 1 : -1]
        return label[2:] if label.startswith("T.") else label
    return name


def _indicator_columns(spec, z: np.ndarray, coef_names, levels: str) -> None:
    """ar1, ou, exp, gau and mat need the indicator columns of one factor (no intercept), at least
    two levels."""
    what = f"{spec.structure}() in term {spec}"
    indicator = np.all((z == 0) | (z == 1)) and np.all(z.sum(axis=1) == 1)
    if "1" in [c.strip() for c in spec.expr.split("+")] or not indicator:
        raise FormulaError(
            f"{what} needs a factor of {levels} without an intercept, e.g. "
            f"{spec.structure}(time + 0 | group) with time a categorical column; got "
            f"columns {list(coef_names)[:5]}")
    if z.shape[1] < 2:
        raise FormulaError(f"{what} needs a factor with at least two levels; got "
                           f"{list(coef_names)}")


def _increasing(spec, times, labels) -> np.ndarray:
    steps = np.diff(times)
    if np.any(steps <= 0):
        raise FormulaError(
            f"{spec.structure}() in term {spec}: the time factor's levels {labels} are not "
            "in increasing order; order its categories by time (pd.Categorical(..., "
            "categories=sorted times))")
    return steps


def _check_factor_of_times(spec, z: np.ndarray, coef_names) -> None:
    """ar1: a factor's indicator columns, where the levels are numbers equally spaced
    increasing times."""
    _indicator_columns(spec, z, coef_names, "ordered, equally spaced times")
    labels = [_level_label(c) for c in coef_names]
    try:
        times = np.array([float(label) for label in labels])
    except ValueError:
        return  # named levels (e.g. "early" < "late"): their order is the time order
    steps = _increasing(spec, times, labels)
    if not np.allclose(steps, steps[0], rtol=1e-9, atol=0.0):
        raise FormulaError(
            f"{spec.structure}() in term {spec} assumes equally spaced times, but the levels "
            f"{labels} have gaps (steps {sorted(set(np.round(steps, 12).tolist()))}); use "
            "ou(time + 0 | group) for unequally spaced times, or include the missing times "
            "as levels")


def num_factor(*columns) -> pd.Categorical:
    """Times or coordinates from numeric columns as the factor that ``ou``, ``exp``,
    ``gau`` and ``mat`` read (glmmTMB's ``numFactor``): one column gives levels "(t)"
    ordered by t, several give "(x,y)" ordered as numFactor orders them (by the last
    coordinate, then the one before, ...).

    Example: ``data["pos"] = glmmjax.num_factor(data["x"], data["y"])``, then
    ``lmer("z ~ 1 + exp(pos + 0 | plot)", data)``; ``data["times"] =
    glmmjax.num_factor(data["day"])`` for ``ou(times + 0 | subject)``.
    """
    if not columns:
        raise ValueError("num_factor needs at least one numeric column")
    arrays = []
    for k, column in enumerate(columns):
        try:
            values = None if isinstance(column, str) else np.asarray(column, dtype=np.float64)
        except (TypeError, ValueError):
            values = None
        if values is None or values.ndim != 1 or not np.all(np.isfinite(values)):
            raise ValueError(f"num_factor: argument {k + 1} must be a finite numeric column "
                             f"(a Series or 1-d array), got {column!r:.60}")
        arrays.append(values)
    if len({a.size for a in arrays}) != 1:
        raise ValueError(f"num_factor: the columns differ in length {[a.size for a in arrays]}")
    points = np.column_stack(arrays)
    unique = np.unique(points, axis=0)
    unique = unique[np.lexsort(unique.T)]  # numFactor's order: last coordinate first

    def label(point):
        return "(" + ",".join(np.format_float_positional(v, trim="-") for v in point) + ")"

    labels = [label(p) for p in unique]
    index = {tuple(p): i for i, p in enumerate(unique)}
    codes = np.array([index[tuple(p)] for p in points])
    return pd.Categorical.from_codes(codes, categories=labels)


def _times_of_levels(spec, z: np.ndarray, coef_names) -> tuple[float, ...]:
    """ou: the times are the numbers in the factor's level labels (glmmTMB's numFactor)."""
    _indicator_columns(spec, z, coef_names, "ordered times")
    labels = [_level_label(c) for c in coef_names]
    try:  # "3.5" or num_factor's (numFactor's) "(3.5)"
        times = np.array([float(label.strip().removeprefix("(").removesuffix(")"))
                          for label in labels])
    except ValueError:
        raise FormulaError(
            f"ou() in term {spec} reads the times from the factor's level labels, which "
            f"must be numbers; got {labels[:5]}. Make the column with "
            "glmmjax.num_factor(df.time) (glmmTMB's numFactor), or categorical with the "
            "times as its categories") from None
    if not np.all(np.isfinite(times)):
        raise FormulaError(f"ou() in term {spec}: the times {labels} must be finite")
    _increasing(spec, times, labels)
    return tuple(float(t) for t in times)


def _coordinates_of_levels(spec, z: np.ndarray, coef_names) -> tuple[tuple[float, ...], ...]:
    """exp/gau/mat: the points are the numbers in the factor's level labels, "(x,y)" or "x,y"
    (glmmTMB's numFactor writes "(x,y)")."""
    _indicator_columns(spec, z, coef_names, "points (coordinates in its level labels)")
    labels = [_level_label(c) for c in coef_names]
    try:
        points = [tuple(float(v) for v in label.strip().strip("()").split(","))
                  for label in labels]
    except ValueError:
        raise FormulaError(
            f"{spec.structure}() in term {spec} reads coordinates from the factor's level "
            f"labels, which must be numbers like '(x,y)' or 'x,y'; got {labels[:5]}") from None
    if len({len(p) for p in points}) != 1 or not np.all(np.isfinite(points)):
        raise FormulaError(f"{spec.structure}() in term {spec}: the levels {labels[:5]} do "
                           "not all give finite coordinates of the same dimension")
    if len(set(points)) != len(points):
        raise FormulaError(f"{spec.structure}() in term {spec}: two levels give the same "
                           "point; each level must be a distinct position")
    return tuple(points)


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
    if name == "toep":
        if size < 2:
            raise FormulaError(
                f"toep() in term {spec} needs at least two random effects per level (it "
                f"models their correlation at each lag); this term has one "
                f"({list(coef_names)}): use ({spec.expr} | {spec.group})")
        return Toeplitz(size)
    if name == "ou":
        return OrnsteinUhlenbeck(size, _times_of_levels(spec, z, coef_names))
    if name in ("exp", "gau"):
        return Spatial(size, kind=name, coords=_coordinates_of_levels(spec, z, coef_names))
    if name == "mat":
        return Matern(size, coords=_coordinates_of_levels(spec, z, coef_names))
    raise FormulaError(f"unknown covariance structure {name!r} in term {spec}; valid: "
                       f"{', '.join(STRUCTURE_NAMES)}")
