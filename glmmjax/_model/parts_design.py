"""Designs of the zero-inflation and dispersion parts (``ziformula=``, ``dispformula=``).

Checks the one-sided formulas against the family before anything is traced, then builds
each part's fixed-effects matrix, offset and random-effects terms on the same rows as
the conditional model: a row with a missing value in any part's columns is dropped from
all of them, as glmmTMB's model frame does.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from .._families.response_parts import ZERO_DISPERSION_LOG, zero_inflatable
from .design import (
    DataError,
    Design,
    TermDesign,
    build_design,
    complete_rows,
    shared_matrices,
)
from .formula import FormulaError, ParsedFormula, parse_formula


@dataclasses.dataclass(frozen=True, eq=False)
class PartDesign:
    """One extra linear predictor: ``X @ beta + offset`` plus its random-effects terms.

    ``formula`` is the one-sided formula as given (``"~ mined + (1 | site)"``);
    ``design`` the full :class:`~glmmjax._model.design.Design` (for predictions on new data).
    """

    name: str  # "zi" or "disp"
    formula: str
    design: Design

    @property
    def X(self) -> np.ndarray:
        return self.design.X

    @property
    def offset(self) -> np.ndarray:
        return self.design.offset

    @property
    def terms(self) -> tuple[TermDesign, ...]:
        return self.design.terms

    @property
    def fixef_names(self) -> tuple[str, ...]:
        return self.design.fixef_names


@dataclasses.dataclass(frozen=True, eq=False)
class PartsDesign:
    """The conditional design and the optional zero-inflation and dispersion parts.

    ``disp`` is None where the family has no dispersion; its matrix has no columns for
    a fixed dispersion (``dispformula="~0"``, or a negative binomial θ given by the
    user), the fixed log φ then being its offset.
    """

    cond: Design
    zi: PartDesign | None
    disp: PartDesign | None


def _rhs(formula, argument: str) -> str:
    if not isinstance(formula, str):
        raise FormulaError(f"{argument} must be a one-sided formula string such as '~ x', "
                           f"got {formula!r}")
    text = formula.strip()
    if text.startswith("~"):
        text = text[1:].strip()
    elif "~" in text:
        raise FormulaError(f"{argument} must be one-sided (no response), like '~ x + (1|g)'; "
                           f"got {formula!r}")
    if not text:
        raise FormulaError(f"{argument} {formula!r} has no terms; use '~1' or '~0'")
    return text


def _is_zero(rhs: str) -> bool:
    return rhs.replace(" ", "") in ("0", "-1")


def check_parts(family, ziformula, dispformula) -> tuple[str | None, str | None]:
    """The right-hand sides of ``ziformula`` and ``dispformula`` after the checks that need
    no data (None where the part is absent). Raises before any fit.

    Raises:
        ValueError: ``ziformula`` with a family that cannot be zero-inflated,
            ``dispformula`` for a family without a dispersion parameter, with random
            effects (glmmTMB 1.1.5 has none in the dispersion model), or ``~0`` for a
            family other than Gaussian.
        FormulaError: a formula that is not one-sided.
    """
    if getattr(family, "n_shape", 0):
        raise ValueError(
            f"ziformula/dispformula with {family}: its shape parameter (Student-t df, "
            "Tweedie power) would be estimated, which the zero-inflation/dispersion fit "
            "does not do yet; fix it, e.g. family=glmmjax.families.StudentT(df=5)")
    zi_rhs = None if ziformula is None else _rhs(ziformula, "ziformula")
    if zi_rhs is not None and _is_zero(zi_rhs):
        zi_rhs = None
    if zi_rhs is not None and not zero_inflatable(family):
        raise ValueError(
            f"ziformula={ziformula!r}: the {family.name} family cannot be zero-inflated; "
            "ziformula applies to count families (poisson, negative_binomial, nbinom1, "
            "genpois, betabinomial) and, as a hurdle, to truncated families "
            "(truncated_poisson, truncated_nbinom1/2)")
    disp_rhs = None if dispformula is None else _rhs(dispformula, "dispformula")
    if disp_rhs is not None and not family.has_dispersion:
        if disp_rhs.replace(" ", "") == "1":
            disp_rhs = None
        else:
            raise ValueError(
                f"dispformula={dispformula!r}: the {family.name} family has no dispersion "
                "parameter; dispformula applies to Gaussian, Gamma, negative binomial, "
                "beta and the other families with one")
    if disp_rhs is not None:
        if parse_formula(f"y ~ {disp_rhs}").random:
            raise ValueError(
                f"dispformula={dispformula!r} has random-effects terms; the dispersion "
                "model takes fixed effects only (as in glmmTMB 1.1.5)")
        if _is_zero(disp_rhs) and family.name != "gaussian":
            raise ValueError(
                f"dispformula='~0' (a fixed, near-zero dispersion) is for the gaussian "
                f"family only (as in glmmTMB), not {family.name}")
        if getattr(family, "dispersion_method", "") == "fixed":
            raise ValueError(
                f"dispformula={dispformula!r} models a dispersion that the family fixes "
                f"({family}); leave the family's dispersion unset to model it")
    return zi_rhs, disp_rhs


def _subset_argument(value, data: pd.DataFrame, keep: np.ndarray):
    """A weights=/offset= argument given per row of ``data``, restricted to ``keep``."""
    if value is None or isinstance(value, str) or np.ndim(value) == 0:
        return value
    array = np.asarray(value)
    if array.shape[:1] != (len(data),):
        return value  # build_design names the mismatch
    return array[keep]


def build_parts(formula: str, data: pd.DataFrame, family, zi_rhs, disp_rhs, *,
                weights=None, offset=None, require_random=True) -> PartsDesign:
    """Designs of the conditional, zero-inflation and dispersion parts on common rows.

    Raises:
        FormulaError, DataError: as :func:`glmmjax._model.design.build_design`, naming the part.
    """
    # The parts share the conditional model's rows: a matrix or grouping of the same text
    # (``mined`` in both parts, the same ``(1 | site)``) is built once.
    with shared_matrices():
        return _build_parts(formula, data, family, zi_rhs, disp_rhs, weights=weights,
                            offset=offset, require_random=require_random)


def _build_parts(formula, data, family, zi_rhs, disp_rhs, *, weights, offset,
                 require_random) -> PartsDesign:
    parsed = parse_formula(formula)
    response = parsed.response
    texts = {"zi": zi_rhs, "disp": None if disp_rhs is None or _is_zero(disp_rhs) else disp_rhs}
    part_formulas: dict[str, ParsedFormula] = {
        name: parse_formula(f"{response} ~ {rhs}") for name, rhs in texts.items() if rhs
    }
    if isinstance(data, pd.DataFrame):
        used = set().union(*(p.variables() for p in part_formulas.values())) if part_formulas \
            else set()
        missing = sorted(used - set(data.columns))
        if missing:
            raise DataError(f"column(s) {missing} used in ziformula/dispformula are not in "
                            f"data; available columns: {list(data.columns)}")
        keep = complete_rows(data, sorted(used))
    else:
        keep = None
    frame = data if keep is None or keep.all() else data.loc[keep]
    if keep is not None and not keep.all():
        weights = _subset_argument(weights, data, keep)
        offset = _subset_argument(offset, data, keep)
    cond = build_design(parsed, frame, weights=weights, offset=offset,
                        require_random=require_random, numeric_response=False,
                        drop_aliased=True)
    if frame is not data:
        cond = dataclasses.replace(cond, n_dropped=cond.n_dropped + int((~keep).sum()),
                                   source_data=data)
    # No copy of the frame when the conditional model kept every row (the common case).
    rows = frame if cond.rows.equals(frame.index) else frame.loc[cond.rows]
    parts = {}
    for name, parsed_part in part_formulas.items():
        argument = "ziformula" if name == "zi" else "dispformula"
        try:
            design = build_design(parsed_part, rows, numeric_response=False, drop_aliased=True)
        except (FormulaError, DataError) as err:
            raise type(err)(f"{argument}: {err}") from None
        parts[name] = PartDesign(name, f"~ {texts[name]}", design)
    zi = parts.get("zi")
    disp = None
    if family.has_dispersion:
        disp = parts.get("disp") or _constant_dispersion(rows, response, family, disp_rhs)
    return PartsDesign(cond=cond, zi=zi, disp=disp)


def _constant_dispersion(rows: pd.DataFrame, response: str, family, disp_rhs) -> PartDesign:
    """The dispersion part of ``~1`` (one estimated log φ) or of a fixed φ (``~0`` for a
    Gaussian model; a negative binomial with θ given): no columns, the log φ as offset."""
    fixed_theta = getattr(family, "theta", None) if getattr(
        family, "dispersion_method", "") == "fixed" else None
    if disp_rhs is not None and _is_zero(disp_rhs):
        log_phi, text = ZERO_DISPERSION_LOG, "~ 0"
    elif fixed_theta is not None:
        log_phi, text = float(np.log(fixed_theta)), "~ 0"
    else:
        design = build_design(f"{response} ~ 1", rows, numeric_response=False)
        return PartDesign("disp", "~ 1", design)
    design = build_design(f"{response} ~ 0", rows, numeric_response=False)
    design = dataclasses.replace(design, offset=np.full(design.nobs, log_phi))
    return PartDesign("disp", text, design)
