"""How results look: short reprs, notebook HTML, R's number formats and R's names.

Everything printed by a summary goes through here, so that every table formats numbers
the same way: p-values as R's ``format.pval`` (3 significant digits, ``<2e-16``),
other columns as R's ``format`` of the whole column (one number of decimals per
column, enough for each entry to show ``digits`` significant digits).

R names: formulaic writes ``Intercept`` and ``period[T.2]`` where R writes
``(Intercept)`` and ``period2``. :func:`r_name` translates; :class:`RSeries` and
:class:`RFrame` are the pandas objects the results return, which accept R's names as
aliases on lookup (``fit.fixef["(Intercept)"]``) and otherwise behave as pandas'.
"""

from __future__ import annotations

import html
import math
import re

import numpy as np
import pandas as pd

EPS = float(np.finfo(float).eps)  # R's .Machine$double.eps: the p-value floor "<2e-16"

# -- numbers -------------------------------------------------------------------------------


def _sig_digits(x: float, digits: int) -> tuple[int, int]:
    """(significant digits needed, decimal exponent) of |x| rounded to ``digits``
    significant digits, trailing zeros dropped (R's scientific() in format.c)."""
    if x == 0 or not math.isfinite(x):
        return 1, 0
    mantissa, exponent = f"{abs(x):.{digits - 1}e}".split("e")
    kpower = int(exponent)
    figures = mantissa.replace(".", "").rstrip("0")
    return max(len(figures), 1), kpower


def format_column(values, digits: int = 5) -> list[str]:
    """Format numbers as R's ``format(x, digits=)`` does for a whole column.

    Fixed notation with a common number of decimals, chosen so that every entry shows
    at least ``digits`` significant digits (fewer when its trailing digits are zero);
    scientific notation with a common mantissa length when that is narrower. NaN is
    ``NA``, infinities ``Inf``/``-Inf``.
    """
    values = [float(v) for v in np.asarray(values, dtype=float).ravel()]
    finite = [v for v in values if math.isfinite(v)]
    out_finite: dict[int, str] = {}
    if finite:
        pieces = [_sig_digits(v, digits) for v in finite]
        negative = int(any(v < 0 for v in finite))
        right = max(max(nsig - kp - 1, 0) for nsig, kp in pieces)
        # Digits left of the point, each entry's own sign included (R's formatReal).
        left = max(int(v < 0) + max(kp + 1, 1) for v, (_, kp) in zip(finite, pieces))
        fixed_width = left + (right > 0) + right
        mantissa = max(nsig for nsig, _ in pieces) - 1
        exp_width = 4 if max(abs(kp) for _, kp in pieces) < 100 else 5
        sci_width = negative + (mantissa > 0) + mantissa + 1 + exp_width
        if fixed_width <= sci_width:
            texts = [f"{v:.{right}f}" for v in finite]
        else:
            texts = [f"{v:.{mantissa}e}" for v in finite]
        out_finite = dict(zip([i for i, v in enumerate(values) if math.isfinite(v)], texts))
    out = []
    for i, v in enumerate(values):
        if i in out_finite:
            out.append(out_finite[i])
        elif math.isnan(v):
            out.append("NA")
        else:
            out.append("Inf" if v > 0 else "-Inf")
    return out


def format_pvalues(p, digits: int = 3, eps: float = EPS) -> list[str]:
    """R's ``format.pval(p, digits, eps)``: the column formatted as :func:`format_column`,
    values below ``eps`` as ``<2e-16`` (``"< 2e-16"`` beside wider entries, as R)."""
    p = np.asarray(p, dtype=float).ravel()
    out = ["NA"] * p.size
    tiny = [i for i, v in enumerate(p) if math.isfinite(v) and v < eps]
    rest = [i for i, v in enumerate(p) if math.isfinite(v) and v >= eps]
    width = 0
    if rest:
        texts = _format_pvalue_group(p[rest], digits)
        width = max(len(t) for t in texts)
        for i, t in zip(rest, texts):
            out[i] = t
    if tiny:
        small_digits = max(1, digits - 2)
        if rest and small_digits > 1 and small_digits + 6 > width:
            small_digits = max(1, width - 7)
        sep = "" if small_digits == 1 and (not rest or width <= 6) else " "
        text = "<" + sep + _format_pvalue_group(np.array([eps]), small_digits)[0]
        for i in tiny:
            out[i] = text
    return out


def _format_pvalue_group(p, digits):
    # format.pval formats the fixed-looking and the tiny p-values as two groups.
    expo = np.floor(np.log10(np.where(p > 0, p, 1e-50)))
    fixp = (expo >= -3) | ((expo == -4) & (digits > 1))
    out = [""] * p.size
    for mask in (fixp, ~fixp):
        idx = np.flatnonzero(mask)
        if idx.size:
            for i, t in zip(idx, format_column(p[idx], digits)):
                out[i] = t
    return out


def significance_stars(p) -> list[str]:
    """R's significance codes: ``***`` < 0.001 < ``**`` < 0.01 < ``*`` < 0.05 < ``.`` < 0.1."""
    out = []
    for v in np.asarray(p, dtype=float).ravel():
        mark = ""
        if math.isfinite(v):
            for cut, m in ((0.001, "***"), (0.01, "**"), (0.05, "*"), (0.1, ".")):
                if v < cut:
                    mark = m
                    break
        out.append(mark)
    return out


SIGNIF_LEGEND = "Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1"

_P_COLUMNS = ("Pr(>|t|)", "Pr(>|z|)", "Pr(>F)", "Pr(>Chisq)", "Pr(>Chisq) boundary",
              "p_value", "p value")
_INTEGER_LIKE = ("Df", "df", "NumDF", "npar", "Chi Df")


def format_table(frame: pd.DataFrame, digits: int = 5, stars: bool = False,
                 na: str = "NA") -> str:
    """A coefficient-style table as text: each numeric column formatted as a whole
    (:func:`format_column`; p-value columns by :func:`format_pvalues`), right-aligned,
    optionally with R's significance stars after the (last) p-value column; missing
    values print as ``na``."""
    columns = {}
    star_marks = None
    for name in frame.columns:
        col = frame[name]
        if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            columns[name] = ["" if pd.isna(v) else str(v) for v in col]
        elif name in _P_COLUMNS:
            columns[name] = format_pvalues(col.to_numpy())
            star_marks = significance_stars(col.to_numpy())
        elif name in _INTEGER_LIKE and np.all(np.isfinite(col)) and np.all(col == np.round(col)):
            columns[name] = [str(int(v)) for v in col]
        else:
            columns[name] = format_column(col.to_numpy(), digits if name != "t value"
                                          and name != "z value" else 4)
    index = [str(i) for i in frame.index]
    left = max([len(i) for i in index] + [0])
    widths = {name: max([len(str(name))] + [len(t) for t in texts])
              for name, texts in columns.items()}
    header = " " * left + "".join(" " + str(name).rjust(widths[name]) for name in columns)
    lines = [header.rstrip()]
    for r, label in enumerate(index):
        row = label.ljust(left) + "".join(" " + columns[name][r].rjust(widths[name])
                                          for name in columns)
        if stars and star_marks is not None:
            row += " " + star_marks[r]
        lines.append(row.rstrip())
    if na != "NA":
        lines = [lines[0]] + [_blank_na(line, na) for line in lines[1:]]
    if stars and star_marks is not None and any(star_marks):
        lines += ["---", SIGNIF_LEGEND]
    return "\n".join(lines)


def _blank_na(line: str, na: str) -> str:
    return re.sub(r"(?<= )NA(?= |$)", lambda m: na.rjust(2), line)


def plural(n: int, word: str, plural_word: str | None = None) -> str:
    """``"1 row"``, ``"2 rows"``."""
    return f"{n} {word if n == 1 else (plural_word or word + 's')}"


def show(value) -> str:
    """A value as a person writes it in a message: numbers without ``np.float64(...)``
    (NumPy 2's repr of its scalars), strings quoted, lists and arrays element by
    element."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple, pd.Index)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return f"{value:.6g}"
    return repr(value)


# -- short reprs and notebook HTML ---------------------------------------------------------


def short_repr(title: str, fields: list[tuple[str, object]]) -> str:
    """``<Title>`` and one ``  name: value`` line per field (None fields left out)."""
    lines = [f"<{title}>"]
    width = max([len(k) for k, v in fields if v is not None] + [0])
    for key, value in fields:
        if value is not None:
            lines.append(f"  {key.ljust(width)}  {value}")
    return "\n".join(lines)


def html_summary(title: str, text: str) -> str:
    """A notebook cell: a bold title over the text summary in monospace."""
    return (
        "<div class='glmmjax-summary'>"
        f"<strong>{html.escape(title)}</strong>"
        f"<pre style='font-size: 90%; line-height: 1.25'>{html.escape(text)}</pre>"
        "</div>"
    )


# -- R's coefficient names ------------------------------------------------------------------

_CONTRAST = re.compile(r"\[(?:T\.)?([^\[\]]*)\]")
_INTERCEPT = re.compile(r"(?:(?<=^)|(?<=[_.:|~]))Intercept(?=$|[.:|])")


def r_name(name) -> str:
    """R's name for a formulaic coefficient name: ``Intercept`` → ``(Intercept)``,
    ``period[T.2]`` → ``period2``, ``a[T.x]:b`` → ``ax:b``; also inside glmmjax's
    variance-parameter names (``sd_Intercept|Subject`` → ``sd_(Intercept)|Subject``)."""
    if not isinstance(name, str):
        return name
    return _INTERCEPT.sub("(Intercept)", _CONTRAST.sub(r"\1", name))


def r_names(obj):
    """The pandas object with R's names in its index (and, for a square table such as
    ``vcov``, its columns)."""
    if isinstance(obj, pd.Series):
        return pd.Series(obj.to_numpy(), index=[r_name(i) for i in obj.index], name=obj.name)
    # copy() keeps a NotedTable (confint's heading and note) a NotedTable.
    out = obj.copy() if isinstance(obj, pd.DataFrame) else pd.DataFrame(obj)
    out.index = [r_name(i) for i in out.index]
    if list(obj.columns) == list(obj.index):
        out.columns = list(out.index)
    out.attrs = dict(getattr(obj, "attrs", {}))
    return out


def check_names(names: str) -> str:
    if names not in ("glmmjax", "r"):
        raise ValueError(f"names must be 'glmmjax' (formulaic's) or 'r', got {names!r}")
    return names


def resolve_alias(key, labels):
    """``key``, or the label among ``labels`` whose R name it is."""
    return _translate(key, list(labels))


def _translate(key, labels):
    """``key`` with R aliases replaced by the labels they stand for."""
    if isinstance(key, str):
        if key in labels:
            return key
        for label in labels:
            if isinstance(label, str) and r_name(label) == key:
                return label
        return key
    if isinstance(key, list):
        return [_translate(k, labels) for k in key]
    return key


class _AliasIndexer:
    def __init__(self, indexer, obj):
        self._indexer = indexer
        self._obj = obj

    def _key(self, key):
        if isinstance(key, tuple) and isinstance(self._obj, pd.DataFrame):
            rows, *rest = key
            cols = tuple(_translate(c, list(self._obj.columns)) for c in rest)
            return (_translate(rows, list(self._obj.index)), *cols)
        return _translate(key, list(self._obj.index))

    def __getitem__(self, key):
        return self._indexer[self._key(key)]

    def __setitem__(self, key, value):
        self._indexer[self._key(key)] = value


class RSeries(pd.Series):
    """A pandas Series whose labels may also be given by their R names
    (``s["(Intercept)"]``, ``s.loc["period2"]``); anything derived from it is a plain
    Series."""

    @property
    def _constructor(self):
        return pd.Series

    def __getitem__(self, key):
        return super().__getitem__(_translate(key, list(self.index)))

    @property
    def loc(self):
        return _AliasIndexer(super().loc, self)


class RFrame(pd.DataFrame):
    """A pandas DataFrame whose row and column labels may also be given by their R
    names (``vcov.loc["(Intercept)", "period2"]``, ``table.loc["period2"]``)."""

    @property
    def _constructor(self):
        return pd.DataFrame

    def __getitem__(self, key):
        return super().__getitem__(_translate(key, list(self.columns)))

    @property
    def loc(self):
        return _AliasIndexer(super().loc, self)


def with_r_aliases(obj, names: str = "glmmjax"):
    """Wrap a result's table for R-name lookup, or rename it to R's names."""
    if check_names(names) == "r":
        return r_names(obj)
    if isinstance(obj, (RSeries, RFrame)):
        return obj
    if isinstance(obj, pd.Series):
        return RSeries(obj)
    out = RFrame(obj)
    out.attrs = dict(getattr(obj, "attrs", {}))
    return out
