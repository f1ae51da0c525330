"""The ``glmmjax`` command: ``glmmjax demo`` and ``glmmjax fit FORMULA --data FILE.csv``.

``demo`` fits classic lme4 examples on the bundled datasets and prints their summaries.
``fit`` fits a model to a CSV file and prints its summary, or with ``--json`` a JSON
document for other programs. Which fitting function runs follows from the formula and
``--family``, as in R:

=====================  ====================  ====================================
random-effects terms   ``--family``          function
=====================  ====================  ====================================
none                   any (gaussian)        :func:`glmmjax.glm`
some                   none or gaussian      :func:`glmmjax.lmer` (REML or ML)
some                   any other             ``glmmjax.glmer`` (where available)
=====================  ====================  ====================================

Mistakes in the input (a missing file, a bad formula, an unknown column) are reported
as one line on stderr with exit status 2, without a traceback.

Example:
    $ glmmjax fit "Reaction ~ Days + (Days | Subject)" --data sleepstudy.csv --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Collection

import numpy as np
import pandas as pd

# (dataset, formula, family); family None fits a linear mixed model.
DEMO_MODELS: tuple[tuple[str, str, str | None], ...] = (
    ("sleepstudy", "Reaction ~ Days + (Days | Subject)", None),
    ("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", None),
    ("pastes", "strength ~ 1 + (1 | batch/cask)", None),
    ("cbpp", "cbind(incidence, size - incidence) ~ period + (1 | herd)", "binomial"),
)

EXIT_USAGE = 2


class _UsageError(ValueError):
    """A request the command line cannot serve (reported like a data or formula error)."""


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="glmmjax",
        description="Fit GLMs and (generalized) linear mixed models with lme4 formulas.",
    )
    parser.add_argument("--version", action="version", version=f"glmmjax {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser(
        "demo",
        help="fit classic lme4 examples on the bundled datasets and print their summaries",
        description="Fit sleepstudy, Penicillin and Pastes (and cbpp, where glmer is "
        "available) and print their summaries.",
    )

    fit = commands.add_parser(
        "fit",
        help="fit a model to a CSV file",
        description="Fit FORMULA to the columns of a CSV file. Without random-effects "
        "terms this is glm(); with them lmer() (or glmer() with a non-gaussian --family).",
    )
    fit.add_argument("formula", metavar="FORMULA",
                     help="lme4-style formula, e.g. 'y ~ x + (1 | g)' (quote it)")
    fit.add_argument("--data", required=True, metavar="FILE.csv",
                     help="CSV file with a header row naming the columns")
    method = fit.add_mutually_exclusive_group()
    method.add_argument("--reml", dest="reml", action="store_true", default=None,
                        help="restricted maximum likelihood (default for linear mixed models)")
    method.add_argument("--ml", dest="reml", action="store_false",
                        help="maximum likelihood")
    fit.add_argument("--family", metavar="NAME", default=None,
                     help="response family: gaussian (default), binomial, poisson, gamma, "
                     "inverse_gaussian, negative_binomial, beta")
    fit.add_argument("--n-agq", type=int, default=1, metavar="N",
                     help="adaptive Gauss-Hermite points for glmer (default 1: Laplace)")
    fit.add_argument("--max-iter", type=int, default=None, metavar="N",
                     help="iteration cap: BFGS iterations for lmer/glmer (default 500), "
                     "IRLS iterations for glm (default 25); a fit that reaches it is "
                     "reported as not converged")
    fit.add_argument("--json", action="store_true",
                     help="print a JSON document instead of the summary")
    return parser


# -- reading data ------------------------------------------------------------------------


def _r_factor_order(values: pd.Series) -> list[str]:
    # R's factor() sorts numbers numerically and strings alphabetically.
    unique = [str(v) for v in pd.unique(values.dropna())]
    try:
        return sorted(unique, key=lambda v: (float(v), v))
    except ValueError:
        return sorted(unique)


def read_csv(path: str, group_columns: Collection[str] = ()) -> pd.DataFrame:
    """Read a CSV file as R's ``read.csv`` + factor conversion would see it.

    Grouping-factor columns are read as text, so that labels such as ``"007"`` or
    ``"1.0"`` stay distinct, and every text column becomes a categorical in R's level
    order (numeric where all labels are numbers, else alphabetical), so that treatment
    coding picks R's reference level.

    Raises:
        OSError: the file cannot be read. pandas' ``ParserError``/``EmptyDataError``
            (ValueErrors) for malformed files.
    """
    # pandas ignores dtype entries for columns the file lacks; glmmjax names those later
    as_text = {c: str for c in group_columns}
    frame = pd.read_csv(path, dtype=as_text)
    for column in frame.columns:
        series = frame[column]
        if column in as_text or not (
            pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)
        ):
            text = series.where(series.isna(), series.astype(str))
            frame[column] = pd.Categorical(text, categories=_r_factor_order(text))
    return frame


# -- fitting -----------------------------------------------------------------------------


def fit_formula(formula: str, data: pd.DataFrame, family: str | None = None,
                reml: bool | None = None, n_agq: int = 1, max_iter: int | None = None):
    """Fit ``formula`` with the function R would use: glm, lmer or glmer.

    Returns:
        ``(kind, result)`` with kind ``"glm"``, ``"lmer"`` or ``"glmer"``.

    Raises:
        FormulaError, DataError: from glmmjax, for bad input.
        ValueError: ``--reml`` for a model that is not a linear mixed model.
    """
    import glmmjax

    has_random = bool(glmmjax.parse_formula(formula).random)
    gaussian = family is None or family.lower() == "gaussian"
    cap = {} if max_iter is None else {"max_iter": max_iter}
    if n_agq != 1 and not (has_random and not gaussian):
        raise _UsageError(f"--n-agq {n_agq} applies to generalized linear mixed models only "
                          "(random-effects terms and a non-gaussian --family)")
    if has_random and gaussian:
        return "lmer", glmmjax.lmer(formula, data, reml=True if reml is None else reml, **cap)
    if reml:
        raise _UsageError("--reml applies to linear mixed models only (a formula with "
                          "random-effects terms and the gaussian family)")
    if not has_random:
        return "glm", glmmjax.glm(formula, data, family=family or "gaussian", **cap)
    return "glmer", glmmjax.glmer(formula, data, family=family, n_agq=n_agq, **cap)


def _number(value):
    value = float(value)
    return value if math.isfinite(value) else None


def _series(series: pd.Series) -> dict:
    return {str(k): _number(v) for k, v in series.items()}


def result_document(kind: str, result) -> dict:
    """A JSON-ready dict of a fit's estimates (NaN and infinities become None)."""
    from ._results.mixed import MixedModelResult

    doc = {"model": kind, "formula": result.formula}
    if isinstance(result, MixedModelResult):
        varcorr = [
            {key: (_number(v) if isinstance(v, (float, np.floating)) else v)
             for key, v in row.items()}
            for row in result.varcorr.astype(object)
            .where(result.varcorr.notna(), None).to_dict(orient="records")
        ]
        doc.update(
            family=result.family_name,
            link=result.link_name,
            method=result.method,
            fixef=_series(result.fixef),
            se=_series(result.fixef_se),
            varcorr=varcorr,
            theta=_series(result.theta),
            sigma=_number(result.sigma),
            ngroups={k: int(v) for k, v in result.ngroups.items()},
            singular=bool(result.is_singular),
        )
    else:
        family = result.family
        has_sigma = family.name == "gaussian"
        doc.update(
            family=family.name,
            link=family.link.name,
            method="ML",
            fixef=_series(result.fixef),
            se=_series(result.fixef_se),
            varcorr=[],
            theta={},
            sigma=_number(math.sqrt(result.dispersion)) if has_sigma else None,
            dispersion=_number(result.dispersion),
            ngroups={},
            singular=False,
        )
    doc.update(
        loglik=_number(result.loglik),
        deviance=_number(result.deviance),
        aic=_number(result.aic),
        bic=_number(result.bic),
        nobs=int(result.nobs),
        converged=bool(result.converged),
    )
    return doc


# -- commands ----------------------------------------------------------------------------


def _report_warnings(caught, stream, in_summary=()) -> list[str]:
    """Print the caught warnings on ``stream`` and return their messages; categories in
    ``in_summary`` are returned but not printed (the summary printed after says it)."""
    # Deprecations concern developers of glmmjax's dependencies, not the user's model.
    developer = (DeprecationWarning, PendingDeprecationWarning)
    messages = []
    for w in caught:
        if issubclass(w.category, developer):
            continue
        message = " ".join(str(w.message).split())
        messages.append(message)
        if not (in_summary and issubclass(w.category, in_summary)):
            print(f"glmmjax: warning: {message}", file=stream)
    return messages


def _dropped_rows(data: pd.DataFrame, result) -> list:
    """Labels (0-based data row numbers for a CSV) of the rows the fit left out."""
    design = getattr(result, "design", None) or getattr(result, "_design", None)
    rows = getattr(design, "rows", None)
    if rows is None:
        return []
    kept = set(pd.Index(rows).tolist())
    return [int(r) if isinstance(r, (int, np.integer)) else str(r)
            for r in data.index if r not in kept]


def _demo(out) -> int:
    import glmmjax

    for name, formula, family in DEMO_MODELS:
        data = glmmjax.datasets.load(name)
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            kind, result = fit_formula(formula, data, family=family)
        seconds = time.perf_counter() - start
        # A singular fit is reported once, by the summary.
        _report_warnings(caught, sys.stderr, in_summary=(glmmjax.SingularFitWarning,))
        print(f"# {name}: {kind}({formula!r}"
              + (f", family={family!r}" if family else "")
              + f") in {seconds:.1f} s (first call: any tracing and compilation included)",
              file=out)
        print(result.summary().rstrip("\n"), file=out)
        print(file=out)
    return 0


def _fit(args, out, err) -> int:
    from ._model.formula import parse_formula

    groups = {c for term in parse_formula(args.formula).random for c in term.group_columns}
    data = read_csv(args.data, groups)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kind, result = fit_formula(args.formula, data, family=args.family, reml=args.reml,
                                   n_agq=args.n_agq, max_iter=args.max_iter)
    from ._results.mixed import SingularFitWarning

    # In text mode the summary states a singular fit: say it once, there.
    messages = _report_warnings(caught, err,
                                in_summary=() if args.json else (SingularFitWarning,))
    if args.json:
        doc = result_document(kind, result)
        dropped = _dropped_rows(data, result)
        doc["n_dropped"] = len(dropped)
        doc["dropped_rows"] = dropped
        doc["warnings"] = messages
        print(json.dumps(doc, indent=2, allow_nan=False), file=out)
    else:
        print(result.summary().rstrip("\n"), file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the ``glmmjax`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 for mistakes in the input (reported on stderr
        as one line starting ``glmmjax: error:``).
    """
    args = _parser().parse_args(argv)
    out, err = sys.stdout, sys.stderr
    try:
        if args.command == "demo":
            return _demo(out)
        return _fit(args, out, err)
    except BrokenPipeError:
        # the reader went away (`glmmjax demo | head`): stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (ValueError, OSError) as error:
        # FormulaError and DataError are ValueErrors, as are pandas' CSV parse errors
        # and unknown family names; OSError covers missing or unreadable files.
        message = " ".join(str(error).split()) or type(error).__name__
        if isinstance(error, FileNotFoundError) and error.filename:
            message = f"no such file: {error.filename}"
        print(f"glmmjax: error: {message}", file=err)
        return EXIT_USAGE
