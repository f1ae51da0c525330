"""From formula and DataFrame to model matrices (numpy, before any JAX tracing).

All checks on user input happen here, so that errors name the column or row at fault and
never come out of a traced computation. The random-effects design is kept per term as a
level index per observation and a small model matrix (MixedModels.jl's ReMat): the dense
Z is never built.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import re
import warnings
import weakref

import formulaic
import numpy as np
import pandas as pd

from .._errors import DataError
from .cov_terms import term_covariance
from .formula import (
    FormulaError,
    ParsedFormula,
    RandomTermSpec,
    _arithmetic,
    _required,
    parse_formula,
    parsed_formulaic,
)
from .relmat import check_relmat, is_relatedness, relatedness_term
from .sparse_relmat import sparse_relatedness_term, use_sparse_path


@dataclasses.dataclass(frozen=True)
class TermDesign:
    """One random-effects term: level of each observation and the term's model matrix.

    Attributes:
        spec: the parsed term, e.g. ``(1 + Days | Subject)``.
        refs: int array (n,), the level index of each observation.
        z: float array (n, S), the term's model matrix.
        levels: names of the grouping factor's levels, in index order.
        coef_names: names of the S columns of ``z``.
        z_spec: formulaic spec that rebuilds ``z`` on new data.
        covariance: the term's covariance structure (:mod:`glmmjax._model.cov_structures`);
            None: unstructured, lme4's.
    """

    spec: RandomTermSpec
    refs: np.ndarray
    z: np.ndarray
    levels: tuple[str, ...]
    coef_names: tuple[str, ...]
    z_spec: object
    covariance: object = None

    @property
    def group(self) -> str:
        return self.spec.group

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    @property
    def size(self) -> int:
        """S, the number of random effects per level."""
        return self.z.shape[1]


@dataclasses.dataclass(frozen=True, eq=False)
class Design:
    """Everything a model needs from the data, as numpy arrays.

    ``terms`` are ordered as lme4 orders them (by decreasing number of levels), which is
    also the order of θ and of the blocked Cholesky factor.
    """

    formula: ParsedFormula
    response: np.ndarray  # (n,) numeric, (n, 2) for cbind(), or object for categoricals
    X: np.ndarray
    fixef_names: tuple[str, ...]
    offset: np.ndarray
    weights: np.ndarray
    terms: tuple[TermDesign, ...]
    n_dropped: int
    rows: pd.Index
    x_spec: object
    response_levels: tuple[str, ...] | None = None
    source_data: pd.DataFrame | None = None  # the caller's frame (not copied), for refits
    offset_argument: np.ndarray | None = None  # the ``offset=`` argument on kept rows
    # Aliased columns dropped before a mixed-model fit (glmmjax._model.rank, as lme4): their
    # names, and the positions of the kept columns in the full model matrix.
    dropped_fixef: tuple[str, ...] = ()
    x_columns: tuple[int, ...] | None = None

    @property
    def nobs(self) -> int:
        return self.X.shape[0]


def _check_frame(data) -> pd.DataFrame:
    reject_tracer(data, "data")
    if isinstance(data, dict):
        for key, value in data.items():
            reject_tracer(value, f"data[{key!r}]")
    if isinstance(data, pd.DataFrame) and len(data):
        for position, dtype in enumerate(data.dtypes):
            if dtype == np.dtype(object):
                reject_tracer(data.iat[0, position], f"column {data.columns[position]!r}")
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    if data.shape[0] == 0:
        raise DataError("data has no rows")
    return data


def _check_labels(data: pd.DataFrame, used: set) -> None:
    """Column names used by the model must be unique, and so must the row labels:
    rows are matched by label (weights, dropped rows, refits), which duplicates break."""
    doubled = sorted(c for c in used if int(np.sum(data.columns == c)) > 1)
    if doubled:
        raise DataError(f"data has several columns named {doubled}; column names used by "
                        "the model must be unique")
    if not data.index.is_unique:
        repeated = list(pd.unique(data.index[data.index.duplicated()]))[:5]
        raise DataError(
            f"data's index has duplicated labels (e.g. {repeated}); glmmjax matches rows "
            "by label: use data.reset_index(drop=True)")


def _level_order(values: pd.Series) -> list:
    if isinstance(values.dtype, pd.CategoricalDtype):
        present = set(values.dropna().unique())
        return [c for c in values.cat.categories if c in present]
    unique = pd.unique(values.dropna())
    try:
        return sorted(unique)
    except TypeError:
        return sorted(unique, key=str)


def grouping_levels(data: pd.DataFrame, columns: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
    """Encode the interaction of ``columns`` as level indices (unused levels dropped)."""
    codes, names = [], []
    for column in columns:
        values = data[column]
        if isinstance(values.dtype, pd.CategoricalDtype):
            # The categories' codes, renumbered over the categories present (as
            # _level_order orders them), without a map over the values.
            raw = values.cat.codes.to_numpy()
            if raw.size and raw.min() >= 0:
                present = np.unique(raw)
                codes.append(np.searchsorted(present, raw).astype(np.int64))
                names.append([str(v) for v in values.cat.categories[present]])
                continue
        order = _level_order(values)
        lookup = {v: i for i, v in enumerate(order)}
        codes.append(values.map(lookup).to_numpy(dtype=np.int64))
        names.append([str(v) for v in order])
    key = np.zeros(len(data), dtype=np.int64)
    for code, name in zip(codes, names):
        key = key * len(name) + code
    used, refs = np.unique(key, return_inverse=True)
    labels = []
    for k in used:
        parts = []
        for name in reversed(names):
            parts.append(name[k % len(name)])
            k //= len(name)
        labels.append(":".join(reversed(parts)))
    return refs.astype(np.int32), labels


# From this many rows a formula made only of numeric columns (and the intercept) is
# assembled here rather than by formulaic, whose column stack is strided and slow: at
# 10⁶ rows × 20 columns it took 0.3-1.1 s of a 2-3 s GLM fit (see benchmarks/README.md).
DIRECT_ROWS = 50_000
_DIRECT_BLOCK = 8192


def _parsed(expr: str):
    """formulaic's Formula of ``expr`` from the per-process cache, else the text (a bad
    formula then fails in model_matrix, with its message in context)."""
    try:
        return parsed_formulaic(expr)
    except Exception:
        return expr


def _direct_matrix(expr: str, data: pd.DataFrame):
    """X for ``expr`` when every column formulaic would make is the intercept or a numeric
    column of ``data`` as it is, else None. The model spec comes from formulaic on the
    first rows (it holds no data-dependent state for such columns), so prediction on new
    data goes through formulaic as usual."""
    head = data.iloc[:64]
    try:
        matrix = formulaic.model_matrix(_parsed(expr), head, na_action="raise",
                                        output="numpy")
    except Exception:
        return None  # the full call reports the error with its context
    names = list(matrix.model_spec.column_names)
    sources = []
    for name in names:
        if name == "Intercept":
            sources.append(None)
            continue
        if name not in data.columns:
            return None
        column = data[name]
        if (isinstance(column, pd.DataFrame) or not pd.api.types.is_numeric_dtype(column)
                or pd.api.types.is_bool_dtype(column)):
            return None
        sources.append(column.to_numpy(dtype=np.float64))
    key = (expr, tuple(names), len(data))
    values = _reusable_direct(key, sources)
    if values is None:
        values = np.empty((len(data), len(names)))
        # Row blocks: each block of X stays in cache while its columns are written.
        for start in range(0, len(data), _DIRECT_BLOCK):
            _fill_direct(values[start:start + _DIRECT_BLOCK], sources, start)
        # Read-only: the same array may become the X of a later design (_reusable_direct).
        values.flags.writeable = False
        _LAST_DIRECT[0] = (key, weakref.ref(values))
    return values, names, matrix.model_spec


def _fill_direct(block, sources, start: int) -> None:
    """Rows ``start``... of a direct X: the intercept (None) or the column's values."""
    for j, source in enumerate(sources):
        block[:, j] = 1.0 if source is None else source[start:start + len(block)]


# The last direct X built, held weakly with its (expression, columns, rows). A user who
# fits a second model on the same data while the first result is alive (another family or
# link, a refit) gets the same read-only array back if its contents are bit for bit what
# would be built: no second copy of the largest array, and no fresh pages for it. Fresh
# memory is what made a second 10⁶ × 21 GLM fit slower than the first: ~0.4 s of page
# faults for 168 MB on a virtual machine, against ~0.05 s to compare (benchmarks/README.md,
# GLM). Once the first result is gone its pages are freed and reused cheaply anyway.
_LAST_DIRECT: list = [None]


def _reusable_direct(key, sources):
    """The last direct X if it was built for ``key`` and still holds exactly the values
    of ``sources`` (compared bitwise, block by block, stopping at the first difference);
    else None."""
    entry = _LAST_DIRECT[0]
    old = entry[1]() if entry is not None and entry[0] == key else None
    if old is None:
        return None
    scratch = np.empty((min(_DIRECT_BLOCK, len(old)), old.shape[1]))
    for start in range(0, len(old), _DIRECT_BLOCK):
        stored = old[start:start + _DIRECT_BLOCK]
        block = scratch[:len(stored)]
        _fill_direct(block, sources, start)
        if not np.array_equal(block.view(np.uint64), stored.view(np.uint64)):
            return None
    return old


class _ConstantSpec:
    """The model spec of ``1`` (the intercept alone) or ``0`` (no column), made by formulaic
    only when first used (prediction on new data, an ANOVA table): such a spec holds no
    state from the data, and the random intercepts, ``ziformula="~1"`` and the constant
    dispersion of most small models would otherwise each cost formulaic's parse and
    materialization (ms) at every fit. Attributes are those of formulaic's ModelSpec."""

    def __init__(self, expr: str):
        self._expr = expr

    def _spec(self):
        spec = _CONSTANT_SPECS.get(self._expr)
        if spec is None:
            frame = pd.DataFrame(index=pd.RangeIndex(1))
            spec = formulaic.model_matrix(self._expr, frame, na_action="raise",
                                          output="numpy").model_spec
            _CONSTANT_SPECS[self._expr] = spec
        return spec

    def __getattr__(self, name):
        if name.startswith("__") or name == "_expr":
            raise AttributeError(name)
        return getattr(self._spec(), name)

    def __getstate__(self):
        return {"_expr": self._expr}

    def __setstate__(self, state):
        self._expr = state["_expr"]

    def __repr__(self) -> str:
        return repr(self._spec())


_CONSTANT_SPECS: dict[str, object] = {}


# While :func:`shared_matrices` is active: matrices and level codes already built from a
# formula text on the same frame (object), e.g. ``mined`` for both the conditional and the
# zero-inflation part of a glmmTMB-style model, or the same ``(1 | site)``.
_SHARED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("glmmjax_shared",
                                                                      default=None)


@contextlib.contextmanager
def shared_matrices():
    """Within this block, build_design reuses a model matrix or grouping it already built
    from the same text on the same frame (a copy of the array, the same formulaic spec)."""
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def _shared(key, data: pd.DataFrame, build):
    """``build()``, or a copy of what it gave for ``key`` on this same frame (arrays
    copied, lists copied, specs shared: formulaic's are not changed after building)."""
    memo = _SHARED.get()
    if memo is None:
        return build()
    hit = memo.get(key)
    if hit is not None and hit[0] is data:
        return tuple(part.copy() if isinstance(part, (np.ndarray, list)) else part
                     for part in hit[1])
    result = build()
    memo[key] = (data, result)
    return result


def _numeric_matrix(spec_or_expr, data: pd.DataFrame, what: str):
    if isinstance(spec_or_expr, str):
        return _shared(("matrix", spec_or_expr), data,
                       lambda: _build_matrix(spec_or_expr, data, what))
    return _build_matrix(spec_or_expr, data, what)


def _build_matrix(spec_or_expr, data: pd.DataFrame, what: str):
    if isinstance(spec_or_expr, str) and spec_or_expr.strip() in ("1", "0"):
        expr = spec_or_expr.strip()
        width = 1 if expr == "1" else 0
        return (np.ones((len(data), width)), ["Intercept"] * width, _ConstantSpec(expr))
    if isinstance(spec_or_expr, str) and len(data) >= DIRECT_ROWS:
        direct = _direct_matrix(spec_or_expr, data)
        if direct is not None:
            return direct
    try:
        if isinstance(spec_or_expr, str):
            # numpy output: a C-ordered array at once (pandas' output is F-ordered and
            # copied again by to_numpy: at 10⁶ rows, most of the design's time).
            matrix = formulaic.model_matrix(_parsed(spec_or_expr), data, na_action="raise",
                                            output="numpy")
        else:
            matrix = spec_or_expr.get_model_matrix(data, na_action="raise")
    except Exception as err:
        # The cause first; a fitted spec is named by its formula, not its 450-character
        # repr.
        source = spec_or_expr if isinstance(spec_or_expr, str) else getattr(
            spec_or_expr, "formula", spec_or_expr)
        raise FormulaError(f"{err} (building the {what} from {str(source)!r})") from err
    values = np.ascontiguousarray(matrix, dtype=np.float64)
    return values, list(matrix.model_spec.column_names), matrix.model_spec


_TRANSFORM = re.compile(r"\s*(?:np\.)?(log|exp)\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*",
                        re.ASCII)


def _direct_transform(expr: str, data: pd.DataFrame) -> pd.Series | None:
    """``log(column)`` or ``exp(column)`` (offsets, mostly) with numpy, as formulaic
    computes it (``log`` is ``np.log`` there; the same warnings), without its parse and
    materialization;
    None for anything else, or where the result has a missing value (formulaic then
    gives its error)."""
    match = _TRANSFORM.fullmatch(expr)
    if match is None or match.group(2) not in data.columns or any(
            name in data.columns for name in ("np", "log", "exp")):
        return None  # (formulaic would read a column named like the function)
    column = data[match.group(2)]
    if isinstance(column, pd.DataFrame) or not (
            column.dtype == np.float64 or column.dtype.kind in "iu"):
        return None
    values = getattr(np, match.group(1))(column.to_numpy()).astype(np.float64, copy=False)
    if np.isnan(values).any():
        return None
    return pd.Series(values, index=data.index)


def _evaluate(expr: str, data: pd.DataFrame) -> pd.Series:
    """Evaluate a single response or offset expression (a column or a transform)."""
    if expr in data.columns:
        return data[expr]
    direct = _direct_transform(expr, data)
    if direct is not None:
        return direct
    # I(...) makes formulaic evaluate arithmetic as arithmetic: R's ``incidence/size``
    # or ``cbind(s, n - s)`` would otherwise read as nesting or term removal.
    values, _, _ = _numeric_matrix(f"0 + {_arithmetic(expr)}", data, f"expression {expr!r}")
    if values.shape[1] != 1:
        raise FormulaError(f"expression {expr!r} must give one numeric column")
    return pd.Series(values[:, 0], index=data.index)


def complete_rows(data: pd.DataFrame, columns) -> np.ndarray:
    """Boolean mask of the rows with a value in every one of ``columns``, column by
    column: ``data[columns]`` would copy those columns (at 10⁶ rows a large part of a
    GLM's fit) only to look for missing values."""
    keep = np.ones(len(data), dtype=bool)
    for column in columns:
        keep &= data[column].notna().to_numpy()
    return keep


def _check_finite(frame: pd.DataFrame, columns: list[str]) -> None:
    for column in columns:
        series = frame[column]
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            bad = np.flatnonzero(~np.isfinite(series.to_numpy(dtype=float)))
            if bad.size:
                rows = list(frame.index[bad[:5]])
                raise DataError(
                    f"column {column!r} has non-finite values (inf) in rows {rows}; "
                    "remove them or replace them by NaN to drop those rows"
                )


NOT_DIFFERENTIABLE = (
    "lmer, glmer, glm and fit_many fit on the host with numpy and cannot run under "
    "jax.grad, jax.jit or jax.vmap; to differentiate, build glmmjax.MixedModel."
    "from_formula(...) or MixedModel.from_arrays(...) and use model.log_likelihood(params) "
    "or glmmjax.solve(model)"
)


def reject_tracer(value, name: str) -> None:
    """A clear error, before any numpy conversion, for JAX tracers given to a front door."""
    import sys

    jax = sys.modules.get("jax")
    if jax is not None and isinstance(value, jax.core.Tracer):
        raise TypeError(f"{name} is a JAX tracer: {NOT_DIFFERENTIABLE}")


def _vector_argument(value, data: pd.DataFrame, name: str) -> pd.Series | None:
    if value is None:
        return None
    reject_tracer(value, name)
    if isinstance(value, str):
        if value not in data.columns:
            raise DataError(f"{name}={value!r} is not a column of data; available columns: "
                            f"{list(data.columns)}")
        column = data[value]
        if isinstance(column, pd.DataFrame):
            raise DataError(f"{name}={value!r} names {column.shape[1]} columns of data "
                            "(duplicated column name); rename them")
        if not (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)):
            raise DataError(
                f"{name}={value!r} must be a numeric column, got {column.dtype} values such "
                f"as {list(pd.unique(column.dropna()))[:3]}")
        return column.astype(float)
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as err:
        raise DataError(f"{name} must be numeric (a column name or one number per row of "
                        f"data): {err}") from None
    if array.shape != (len(data),):
        raise DataError(f"{name} must have one value per row of data ({len(data)}), "
                        f"got shape {array.shape}")
    return pd.Series(array, index=data.index)


def build_design(
    formula: str | ParsedFormula,
    data: pd.DataFrame,
    *,
    weights=None,
    offset=None,
    require_random: bool = False,
    numeric_response: bool = True,
    drop_aliased: bool = False,
    relmat: dict | None = None,
    sparse_relmat: bool = False,
) -> Design:
    """Build X, the response, weights, offset and the random-effects terms.

    Rows with a missing value in any used column (or in weights/offset) are dropped; the
    count is on the returned design. A categorical response is returned as strings with
    its levels in ``response_levels`` when ``numeric_response`` is False. With
    ``drop_aliased`` (mixed models), columns of X that are linear combinations of earlier
    ones are dropped with lme4's warning (see :mod:`glmmjax._model.rank`). ``relmat``
    (``{group: K}``) gives intercept terms a known relatedness (:mod:`glmmjax._model.relmat`);
    with ``sparse_relmat`` (lmer), a large pedigree or sparse K is kept sparse
    (:mod:`glmmjax._engines.host.sparse_lmm`).

    Raises:
        FormulaError: malformed formula, or a term that cannot be evaluated.
        DataError: unknown column, non-finite values, a grouping factor with one level,
            a non-numeric response where a number is needed, bad weights or offset.
    """
    parsed = formula if isinstance(formula, ParsedFormula) else parse_formula(formula)
    relmat = check_relmat(relmat, parsed)
    data = _check_frame(data)
    if require_random and not parsed.random:
        raise FormulaError(
            f"formula {parsed.text!r} has no random-effects term such as (1|group); "
            "use glmmjax.glm for a model without random effects"
        )
    used = parsed.variables()
    missing = sorted(used - set(data.columns))
    if missing:
        raise DataError(
            f"column(s) {missing} used in the formula are not in data; "
            f"available columns: {list(data.columns)}"
        )
    _check_labels(data, used | {v for v in (weights, offset) if isinstance(v, str)})
    columns = sorted(used)
    w = _vector_argument(weights, data, "weights")
    o = _vector_argument(offset, data, "offset")
    keep = pd.Series(complete_rows(data, columns), index=data.index)
    for extra in (w, o):
        if extra is not None:
            keep &= extra.notna()
    # No copy of the frame when no row is dropped: at 10⁶ rows a copy costs a large part
    # of a GLM's fit.
    frame = data if keep.all() else data.loc[keep]
    n_dropped = int((~keep).sum())
    if frame.shape[0] == 0:
        raise DataError("no rows left after dropping rows with missing values")
    _check_finite(frame, columns)

    response_levels = None
    parts = parsed.response_parts
    if len(parts) == 2:
        response = np.column_stack([_evaluate(p, frame).to_numpy(dtype=float) for p in parts])
    else:
        series = _evaluate(parts[0], frame)
        if pd.api.types.is_bool_dtype(series):
            response = series.to_numpy(dtype=float)
        elif pd.api.types.is_numeric_dtype(series):
            response = series.to_numpy(dtype=float)
        elif numeric_response:
            raise DataError(
                f"response {parts[0]!r} must be numeric, got values such as "
                f"{list(pd.unique(series))[:3]}"
            )
        else:
            levels = _level_order(series)
            response_levels = tuple(str(v) for v in levels)
            response = series.astype(str).to_numpy(dtype=object)

    X, fixef_names, x_spec = _numeric_matrix(parsed.fixed, frame, "fixed-effects matrix")
    if X.shape[0] != frame.shape[0]:
        raise FormulaError("the fixed-effects matrix lost rows; check the formula")

    total_offset = np.zeros(frame.shape[0])
    if o is not None:
        total_offset += o.loc[frame.index].to_numpy()
    for expr in parsed.offsets:
        total_offset += _evaluate(expr, frame).to_numpy(dtype=float)
    # Transformations (np.log(0), 1/0) and the offset= argument can make values the
    # column check above did not see; catch them here rather than as NaN in a fit.
    checks = [("offset", total_offset[:, None], ["offset"]), ("fixed-effects matrix", X, fixef_names)]
    if response.dtype != object:
        checks.append(("response", response.reshape(len(response), -1), list(parts)))
    for what, values, names in checks:
        if np.isfinite(values).all():  # the common case: no index arrays to build
            continue
        bad_rows, bad_cols = np.nonzero(~np.isfinite(values))
        if bad_rows.size:
            raise DataError(
                f"the {what} has non-finite values in column {names[bad_cols[0]]!r}, "
                f"rows {list(frame.index[np.unique(bad_rows)[:5]])}"
            )
    if w is None:
        prior_weights = np.ones(frame.shape[0])
    else:
        prior_weights = w.loc[frame.index].to_numpy()
        bad = np.flatnonzero(~np.isfinite(prior_weights) | (prior_weights < 0))
        if bad.size:
            raise DataError(
                f"weights must be finite and non-negative; rows {list(frame.index[bad[:5]])} "
                f"have {prior_weights[bad[:5]].tolist()}"
            )

    terms = []
    for spec in parsed.random:
        refs, levels = _shared(("groups", spec.group_columns), frame,
                               lambda spec=spec: grouping_levels(frame, spec.group_columns))
        if len(levels) < 2:
            raise DataError(
                f"grouping factor {spec.group!r} has a single level ({levels[0]!r}); "
                "a random effect needs at least two groups"
            )
        z, names, z_spec = _numeric_matrix(spec.expr, frame, f"random-effects term {spec}")
        if spec.group in relmat and sparse_relmat and use_sparse_path(relmat[spec.group]):
            refs, z, levels, names, covariance = sparse_relatedness_term(
                spec, relmat[spec.group], refs, levels)
        elif spec.group in relmat:
            refs, z, levels, names, covariance = relatedness_term(
                spec, relmat[spec.group], refs, levels)
        else:
            covariance = term_covariance(spec, z, names)
        terms.append(TermDesign(spec, refs, z, tuple(levels), tuple(names), z_spec, covariance))
    # lme4 orders terms by decreasing number of levels (stable), which we follow so θ
    # lines up with lme4's and the largest term gets the block-diagonal part of L.
    terms.sort(key=lambda t: -t.n_levels)
    design = Design(
        formula=parsed,
        response=response,
        X=X,
        fixef_names=tuple(fixef_names),
        offset=total_offset,
        weights=prior_weights,
        terms=tuple(terms),
        n_dropped=n_dropped,
        rows=frame.index,
        x_spec=x_spec,
        response_levels=response_levels,
        source_data=data,
        offset_argument=None if o is None else o.loc[frame.index].to_numpy(),
    )
    if drop_aliased:
        from .rank import drop_aliased_columns

        design = drop_aliased_columns(design)
    return design


def _new_level_labels(design: Design, term: TermDesign, newdata: pd.DataFrame) -> pd.Series:
    """Level labels of ``newdata``'s rows for ``term``, matched by value to the fitted
    levels: an integer column that came back as floats (2.0 for 2, as pandas makes
    integer columns with missing values) still finds its level. Missing values give
    labels no level has (they count as new levels)."""
    source = design.source_data
    parts = []
    for column in term.spec.group_columns:
        known = {}
        if source is not None and column in source.columns:
            known = {v: str(v) for v in _level_order(source.loc[design.rows, column])}

        def label(value, known=known):
            if pd.isna(value):
                return "<NA>"
            try:
                return known.get(value, str(value))
            except TypeError:  # unhashable
                return str(value)

        parts.append(newdata[column].map(label).astype(object))
    labels = parts[0]
    for part in parts[1:]:
        labels = labels + ":" + part
    return labels


def _predictor_columns(design: Design) -> list[str]:
    """Columns that X, the offsets and the random-effects model matrices read (not the
    response, not the grouping factors)."""
    names = set(_required(design.formula.fixed))
    for expr in design.formula.offsets:
        names |= _required(_arithmetic(expr))
    for term in design.terms:
        names |= _required(term.spec.expr)
    return sorted(names)


def _check_new_levels(x_spec, newdata: pd.DataFrame) -> None:
    """A fixed-effect factor's level not seen in fitting has no coefficient: an error
    naming the column and the level (as R's predict), where formulaic would cast it to
    NaN and code it as the reference level."""
    from .._display import show

    for factor, (kind, state) in getattr(x_spec, "encoder_state", {}).items():
        if getattr(kind, "value", kind) != "categorical":
            continue
        # ``C(x)`` and ``C(x, ...)`` read the column x (often a numeric one).
        column = factor if factor in newdata.columns else _c_column(factor)
        if column not in newdata.columns:
            continue
        known = list(state.get("categories", []))
        values = newdata[column].dropna()
        unseen = pd.unique(values[~values.isin(known)])
        if len(unseen):
            raise DataError(
                f"newdata column {column!r} has level(s) {show(list(unseen)[:5])} not seen "
                f"in fitting; the fixed effects know only {show(known[:10])}")


def _c_column(factor: str) -> str | None:
    """The column read by a formulaic ``C(column, ...)`` factor, else None."""
    match = re.fullmatch(r"C\(\s*([A-Za-z_][\w.]*)\s*(,.*)?\)", factor)
    return match.group(1) if match else None


def new_data_design(design: Design, newdata: pd.DataFrame, *, allow_new_levels: bool,
                    need_groups: bool = True):
    """Rebuild X, the offset and each term's (refs, z) on new data for prediction.

    Levels not seen in fitting get ref -1 (their random effects are taken as zero) when
    ``allow_new_levels``; otherwise they are an error naming the level. A row with a
    missing value in a predictor gets NaN in X (so its prediction is NaN, as R's NA);
    a new level of a fixed-effect factor is an error naming it. ``need_groups=False``
    (population-level predictions) lets grouping columns be absent.
    """
    newdata = _check_frame(newdata)
    columns = _predictor_columns(design)
    missing = [c for c in columns if c not in newdata.columns]
    if need_groups:
        missing += [c for t in design.terms for c in t.spec.group_columns
                    if c not in newdata.columns and c not in missing]
    if missing:
        raise DataError(f"newdata lacks column(s) {missing} that the model uses; it has "
                        f"{list(newdata.columns)}")
    incomplete = newdata[columns].isna().any(axis=1).to_numpy() if columns else np.zeros(
        len(newdata), bool)
    complete = newdata.loc[~incomplete] if incomplete.any() else newdata

    def rows_of(build, width):
        """``build(complete)`` (rows × width) spread over all rows, NaN where incomplete."""
        out = np.full((len(newdata), width), np.nan)
        if len(complete):
            out[~incomplete] = build(complete).reshape(len(complete), width)
        return out

    _check_new_levels(design.x_spec, complete)
    with warnings.catch_warnings():
        # Unseen levels of factors inside expressions (C(f), f:x) that the check above
        # could not match to a column: formulaic would code them as the reference level.
        warnings.filterwarnings("error", message=".*categories outside of the nominated levels")
        try:
            X = rows_of(lambda frame: _numeric_matrix(design.x_spec, frame,
                                                      "fixed-effects matrix")[0],
                        design.X.shape[1] + len(design.dropped_fixef))
        except FormulaError as err:
            raise DataError(f"newdata: {err}") from None
    if design.x_columns is not None:
        X = X[:, list(design.x_columns)]

    def offsets(frame):
        total = np.zeros(len(frame))
        for expr in design.formula.offsets:
            total += _evaluate(expr, frame).to_numpy(dtype=float)
        return total

    offset = rows_of(offsets, 1)[:, 0]
    term_parts = []
    for term in design.terms:
        if not all(c in newdata.columns for c in term.spec.group_columns):
            # Only without need_groups: population-level predictions.
            term_parts.append((np.full(len(newdata), -1, np.int64),
                               np.zeros((len(newdata), term.size))))
            continue
        labels = _new_level_labels(design, term, newdata)
        if is_relatedness(term):
            # The levels are the effects of one group: any level of K (also one without
            # records at fitting) predicts with its conditional mode.
            column = labels.map({name: i for i, name in enumerate(term.coef_names)})
            known = column.notna().to_numpy()
            z = np.zeros((len(newdata), term.size))
            z[np.flatnonzero(known), column[known].to_numpy(dtype=np.int64)] = 1.0
            refs = column.where(column.isna(), 0)
        else:
            z = rows_of(lambda frame, term=term: _numeric_matrix(
                term.z_spec, frame, f"random-effects term {term.spec}")[0], term.size)
            lookup = {name: i for i, name in enumerate(term.levels)}
            refs = labels.map(lookup)
        unknown = refs.isna()
        if unknown.any() and not allow_new_levels:
            raise DataError(
                f"newdata has level(s) {sorted(set(labels[unknown]))[:5]} of {term.group!r} "
                "not seen in fitting; pass allow_new_levels=True to predict them with "
                "random effects of zero"
            )
        term_parts.append((refs.fillna(-1).to_numpy(dtype=np.int64), z))
    return X, offset, term_parts
