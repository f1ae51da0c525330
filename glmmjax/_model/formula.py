"""Parsing lme4-style formulas.

The fixed-effects part is handed to formulaic unchanged; this module only splits off the
random-effects terms ``(expr | group)`` and ``(expr || group)``, expands the lme4
shorthands, and extracts ``offset(...)`` terms (formulaic has no notion of offsets).

    y ~ x + (1 + x || g) + (1 | a/b)
    -> fixed "x", random [(1|g), (0 + x|g), (1|a), (1|a:b)]
"""

from __future__ import annotations

import dataclasses
import functools
import keyword
import re

import formulaic


class FormulaError(ValueError):
    """A formula that cannot be parsed or does not fit the data."""


@dataclasses.dataclass(frozen=True)
class RandomTermSpec:
    """One random-effects term ``(expr | group)`` after expansion of ``||`` and ``/``."""

    expr: str
    group: str
    structure: str = "us"

    @property
    def group_columns(self) -> tuple[str, ...]:
        return tuple(part.strip() for part in self.group.split(":"))

    def __str__(self) -> str:
        if self.structure != "us":
            return f"{self.structure}({self.expr} | {self.group})"
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
        # Responses and offsets are arithmetic, not formula terms: read inside I() as
        # design.py evaluates them, so "n - s" needs n and s (formula syntax would drop s)
        # and "5 - s" is not a syntax error.
        for part in self.response_parts:
            names |= _required(_arithmetic(part))
        names |= _required(self.fixed)
        for expr in self.offsets:
            names |= _required(_arithmetic(expr))
        for term in self.random:
            names |= _required(term.expr)
            names |= set(term.group_columns)
        return names


def _arithmetic(expr: str) -> str:
    """``expr`` as formulaic reads arithmetic: wrapped in ``I()`` unless it already is."""
    expr = expr.strip()
    return expr if _strip_call(expr, "I") is not None else f"I({expr})"


_NAME = re.compile(r"\s*(?:I\(\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*\)?\s*", re.ASCII)


def _required(expr: str) -> set[str]:
    """Data columns that formulaic reads for ``expr`` (a new set each call)."""
    return set(_required_cached(expr))


@functools.lru_cache(maxsize=512)
def _required_cached(expr: str) -> frozenset[str]:
    # A formula text's variables depend on its text only: parsed once per process. The
    # commonest texts (the intercept, a column name, ``I(column)``) need no parse at all
    # (formulaic's parse is ~0.5 ms, several per fit of a small model).
    stripped = expr.strip()
    if stripped in ("0", "1", "-1"):
        return frozenset()
    match = _NAME.fullmatch(expr)
    if match is not None and stripped.startswith("I(") == stripped.endswith(")"):
        from formulaic.transforms import TRANSFORMS

        name = match.group(1)
        if not keyword.iskeyword(name) and name not in TRANSFORMS:
            return frozenset((name,))
    try:
        return frozenset(parsed_formulaic(expr).required_variables)
    except Exception as err:  # formulaic raises several types for bad syntax
        raise FormulaError(f"cannot parse {expr!r}: {err}") from err


@functools.lru_cache(maxsize=512)
def parsed_formulaic(expr: str):
    """formulaic's Formula of ``expr``, parsed once per process (formulaic's formulas are
    immutable): the columns a term reads and its model matrix share one parse."""
    return formulaic.Formula(expr)


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


def _split_terms(rhs: str, formula: str) -> list[tuple[str, str]]:
    """Split a right-hand side at top-level ``+`` and ``-`` into (sign, term) pairs.

    lme4 finds bars under either operator, so ``x + (1 | g) - 1`` has the random term
    ``(1 | g)`` and the fixed part ``x - 1``. A ``-`` right after another operator
    (``x**-1``) or inside a number (``1e-3``) is not a separator.
    """
    _split_top_level(rhs, "+")  # balanced parentheses, with its error message
    pairs, depth, start, sign = [], 0, 0, "+"
    for i, char in enumerate(rhs):
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char in "+-" and depth == 0:
            before = rhs[start:i].rstrip()
            if char == "-" and before and (
                before[-1] in "*/:^~,%"
                or (before[-1] in "eE" and len(before) > 1 and before[-2].isdigit())
            ):
                continue
            term = rhs[start:i].strip()
            if term:
                pairs.append((sign, term))
            elif pairs or char != "-":  # only a leading minus ("-1 + x") may start it
                raise FormulaError(f"empty term in {formula!r}")
            sign, start = char, i + 1
    term = rhs[start:].strip()
    if not term:
        raise FormulaError(f"empty term in {formula!r}")
    pairs.append((sign, term))
    return pairs


def _has_top_level_bar(term: str) -> bool:
    depth = 0
    for char in term:
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == "|" and depth == 0:
            return True
    return False


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
            if "|" in group:
                raise FormulaError(
                    f"random-effects term {term!r} has more than one bar; use (expr | group)"
                )
            return expr, group, not double
    return None


# glmmTMB's structures that this package does not implement yet (for the error message).
_KNOWN_ELSEWHERE = ("rr", "propto", "homdiag")


def _structured_term(term: str, formula: str) -> tuple[str, str, str] | None:
    """``name(expr | group)`` -> (name, expr, group) for a covariance structure
    (glmmTMB's syntax); None for other terms."""
    match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_.]*)\((.*)\)", term.strip(), flags=re.S)
    if match is None or not _has_top_level_bar(match.group(2)):
        return None
    name = match.group(1)
    from .cov_structures import STRUCTURE_NAMES

    if name not in STRUCTURE_NAMES:
        later = (f" ({name!r} is glmmTMB's, not implemented here yet)"
                 if name in _KNOWN_ELSEWHERE else "")
        raise FormulaError(
            f"unknown covariance structure {name!r} in term {term!r} of {formula!r}{later}; "
            f"valid: {', '.join(STRUCTURE_NAMES)}, e.g. ar1(time + 0 | subject)")
    bar = _bar_term(f"({match.group(2)})")
    if bar is None:
        raise FormulaError(f"term {term!r} needs the form {name}(expr | group)")
    expr, group, correlated = bar
    if not correlated:
        raise FormulaError(
            f"term {term!r} uses '||' inside {name}(); the structure sets the "
            f"correlations: write {name}({expr} | {group})")
    return name, expr, group


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
    pending = _split_terms(rhs, formula)
    while pending:
        sign, term = pending.pop(0)
        structured = _structured_term(term, formula)
        if structured is not None:
            if sign == "-":
                raise FormulaError(f"cannot subtract the random-effects term {term!r}")
            name, expr, group = structured
            random.extend(RandomTermSpec(expr, grp, name) for grp in _expand_nesting(group))
            continue
        bar = _bar_term(term)
        inner = _strip_call(term, "")
        if bar is None and inner is not None and any(
            _bar_term(t) is not None for t in _split_top_level(inner, "+")
        ):
            # "((1 | g) + (0 + x | g))", as R prints an expanded `||`
            pending = [(sign, t) for _, t in _split_terms(inner, formula)] + pending
            continue
        if bar is not None:
            if sign == "-":
                raise FormulaError(f"cannot subtract the random-effects term {term!r}")
            expr, group, correlated = bar
            exprs = [expr] if correlated else _uncorrelated_parts(expr)
            for grp in _expand_nesting(group):
                random.extend(RandomTermSpec(e, grp) for e in exprs)
            continue
        if _has_top_level_bar(term):
            raise FormulaError(
                f"term {term!r} in {formula!r} uses '|' outside parentheses; write "
                "random-effects terms as (expr | group)"
            )
        offset = _strip_call(term, "offset")
        if offset is not None:
            if sign == "-":
                raise FormulaError(f"cannot subtract the offset term {term!r}")
            offsets.append(offset)
            continue
        fixed_terms.append((sign, term))
    fixed = " ".join(
        f"{'- ' if sign == '-' else ('' if i == 0 else '+ ')}{term}"
        for i, (sign, term) in enumerate(fixed_terms)
    )
    fixed = fixed or "1"
    return ParsedFormula(
        text=formula,
        response=response,
        fixed=fixed,
        offsets=tuple(offsets),
        random=tuple(random),
    )
