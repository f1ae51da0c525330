"""Parsing lme4-style formulas.

The fixed-effects part is handed to formulaic unchanged; this module only splits off the
random-effects terms ``(expr | group)`` and ``(expr || group)``, expands the lme4
shorthands, and extracts ``offset(...)`` terms (formulaic has no notion of offsets).

    y ~ x + (1 + x || g) + (1 | a/b)
    -> fixed "x", random [(1|g), (0 + x|g), (1|a), (1|a:b)]
"""

from __future__ import annotations

import dataclasses

import formulaic


class FormulaError(ValueError):
    """A formula that cannot be parsed or does not fit the data."""


@dataclasses.dataclass(frozen=True)
class RandomTermSpec:
    """One random-effects term ``(expr | group)`` after expansion of ``||`` and ``/``."""

    expr: str
    group: str

    @property
    def group_columns(self) -> tuple[str, ...]:
        return tuple(part.strip() for part in self.group.split(":"))

    def __str__(self) -> str:
        return f"({self.expr} | {self.group})"


@dataclasses.dataclass(frozen=True)
class ParsedFormula:
    """A formula split into response, fixed part, offsets and random-effects terms."""

    text: str
    response: str
    fixed: str
    offsets: tuple[str, ...]
    random: tuple[RandomTermSpec, ...]

    @property
    def response_parts(self) -> tuple[str, ...]:
        """The response expressions: two for ``cbind(successes, failures)``, else one."""
        inner = _strip_call(self.response, "cbind")
        if inner is None:
            return (self.response,)
        parts = _split_top_level(inner, ",")
        if len(parts) != 2:
            raise FormulaError(
                f"cbind() in the response takes two columns (successes, failures), "
                f"got {len(parts)} in {self.response!r}"
            )
        return tuple(parts)

    def variables(self) -> set[str]:
        """Names of all data columns the formula uses."""
        names: set[str] = set()
        for part in self.response_parts:
            names |= _required(part)
        names |= _required(self.fixed)
        for expr in self.offsets:
            names |= _required(expr)
        for term in self.random:
            names |= _required(term.expr)
            names |= set(term.group_columns)
        return names


def _required(expr: str) -> set[str]:
    try:
        return set(formulaic.Formula(expr).required_variables)
    except Exception as err:  # formulaic raises several types for bad syntax
        raise FormulaError(f"cannot parse {expr!r}: {err}") from err


def _split_top_level(text: str, sep: str) -> list[str]:
    """Split ``text`` at ``sep`` characters that are not inside parentheses."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
            if depth < 0:
                raise FormulaError(f"unbalanced parentheses in {text!r}")
        elif char == sep and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    if depth != 0:
        raise FormulaError(f"unbalanced parentheses in {text!r}")
    parts.append(text[start:].strip())
    return parts


def _strip_call(text: str, name: str) -> str | None:
    """Return the argument text of ``name(...)`` if ``text`` is exactly such a call."""
    text = text.strip()
    if not (text.startswith(name + "(") and text.endswith(")")):
        return None
    inner = text[len(name) + 1 : -1]
    try:
        _split_top_level(inner, ",")
    except FormulaError:
        return None
    return inner


def _bar_term(term: str) -> tuple[str, str, bool] | None:
    """Parse ``(expr | group)`` or ``(expr || group)``; None for other terms."""
    inner = _strip_call(term, "")
    if inner is None:
        return None
    depth = 0
    for i, char in enumerate(inner):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            double = inner[i + 1 : i + 2] == "|"
            expr = inner[:i].strip()
            group = inner[i + (2 if double else 1) :].strip()
            if not expr or not group:
                raise FormulaError(f"random-effects term {term!r} needs 'expr | group'")
            return expr, group, not double
    return None


def _expand_nesting(group: str) -> list[str]:
    """``a/b/c`` -> ``[a, a:b, a:b:c]`` (lme4's nesting shorthand)."""
    parts = [p.strip() for p in group.split("/")]
    if any(not p for p in parts):
        raise FormulaError(f"bad grouping expression {group!r}")
    return [":".join(parts[: k + 1]) for k in range(len(parts))]


def _uncorrelated_parts(expr: str) -> list[str]:
    """``1 + x + z`` -> ``[1, 0 + x, 0 + z]``: lme4's expansion of ``||``."""
    terms = formulaic.Formula(expr).rhs if "~" in expr else formulaic.Formula(expr)
    names = [str(t) for t in terms]
    parts = []
    if "1" in names:
        parts.append("1")
    parts.extend(f"0 + {name}" for name in names if name != "1")
    return parts


def _r_powers(text: str) -> str:
    """Inside function calls (``I(age^2)``, ``offset(t^2)``), R's ``^`` is a power:
    write it as Python's ``**``. Outside calls, ``(a + b)^2`` stays formula syntax."""
    out, stack = [], []
    for i, char in enumerate(text):
        if char == "(":
            before = text[:i].rstrip()
            stack.append(bool(before) and (before[-1].isalnum() or before[-1] in "._"))
        elif char == ")" and stack:
            stack.pop()
        out.append("**" if char == "^" and any(stack) else char)
    return "".join(out)


def parse_formula(formula: str) -> ParsedFormula:
    """Split an lme4-style formula into its parts.

    Raises:
        FormulaError: for a formula without ``~`` or with malformed random-effects terms.

    Example:
        >>> parse_formula("y ~ x + (x || g)").random
        (RandomTermSpec(expr='1', group='g'), RandomTermSpec(expr='0 + x', group='g'))
    """
    if not isinstance(formula, str):
        raise FormulaError(f"formula must be a string like 'y ~ x + (1|g)', got {formula!r}")
    sides = _split_top_level(_r_powers(formula), "~")
    if len(sides) != 2 or not sides[0] or not sides[1]:
        raise FormulaError(f"formula must have the form 'response ~ terms', got {formula!r}")
    response, rhs = sides
    fixed_terms, offsets, random = [], [], []
    pending = _split_top_level(rhs, "+")
    while pending:
        term = pending.pop(0)
        if not term:
            raise FormulaError(f"empty term in {formula!r}")
        bar = _bar_term(term)
        inner = _strip_call(term, "")
        if bar is None and inner is not None and any(
            _bar_term(t) is not None for t in _split_top_level(inner, "+")
        ):
            # "((1 | g) + (0 + x | g))", as R prints an expanded `||`
            pending = _split_top_level(inner, "+") + pending
            continue
        if bar is not None:
            expr, group, correlated = bar
            exprs = [expr] if correlated else _uncorrelated_parts(expr)
            for grp in _expand_nesting(group):
                random.extend(RandomTermSpec(e, grp) for e in exprs)
            continue
        offset = _strip_call(term, "offset")
        if offset is not None:
            offsets.append(offset)
            continue
        fixed_terms.append(term)
    fixed = " + ".join(fixed_terms) if fixed_terms else "1"
    return ParsedFormula(
        text=formula,
        response=response,
        fixed=fixed,
        offsets=tuple(offsets),
        random=tuple(random),
    )
