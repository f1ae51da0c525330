"""Model comparison: likelihood-ratio tests of nested models and AIC/BIC tables.

``anova(m0, m1, ...)`` follows lme4's ``anova.merMod``: models are ordered by their
number of parameters, REML fits are refitted by maximum likelihood first (REML
likelihoods of models with different fixed effects are not comparable), and each model
is tested against the one before it with χ² = Δdeviance on Δnpar degrees of freedom.

When the larger model adds exactly one variance component (and nothing else), the null
value sits on the boundary of the parameter space and the χ²(k) reference distribution
is conservative. The asymptotic distribution is then the 50:50 mixture of χ²(k−1) and
χ²(k) (Self & Liang 1987; Stram & Lee 1994), whose p-value is shown next to the plain
one.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pandas as pd

from .._display import RFrame
from .._families.distributions import chi2_sf
from .._model.cov_structures import term_structures
from .._model.covariance import diagonal_mask

__all__ = ["anova", "compare", "NotedTable"]


class NotedTable(RFrame):
    """A DataFrame whose printed form shows ``attrs["heading"]`` above and
    ``attrs["note"]`` below the table (lme4 prints such notes as messages); its rows
    may also be looked up by R's names (``ci.loc["(Intercept)"]``)."""

    @property
    def _constructor(self):
        return NotedTable

    def __repr__(self) -> str:
        from .._display import format_table

        # Every column shown, each formatted as a whole; p-values as R's format.pval.
        text = format_table(self, stars=True, na="")
        heading = self.attrs.get("heading", "")
        note = self.attrs.get("note", "")
        return (f"{heading}\n" if heading else "") + text + (f"\n\nNote: {note}" if note else "")

    __str__ = __repr__


class _Entry:
    """What the comparison needs of one fitted model (mixed or GLM)."""

    def __init__(self, fit, name: str):
        self.name = name
        self.fit = fit
        self.is_glm = _is_glm_result(fit)
        if self.is_glm:
            self.design = fit._design
            self.family = fit.family.name
            self.y = np.asarray(fit.response, dtype=float)
            self.terms = ()
            self.n_variances = 0
            self.kind = "lmm" if fit.family.name == "gaussian" else "glmm"
        else:
            from .._results.lmm import LMMResult

            self.design = fit.design
            self.terms = fit.design.terms
            self.n_variances = int(np.sum(diagonal_mask(term_structures(self.terms))))
            self.kind = "lmm" if isinstance(fit, LMMResult) else "glmm"
            self.family = "gaussian" if self.kind == "lmm" else fit.family_name
            self.y = np.asarray(fit.observed_response(), dtype=float)

    @property
    def npar(self) -> int:
        return int(self.fit.df)

    @property
    def loglik(self) -> float:
        return float(self.fit.loglik)

    @property
    def nobs(self) -> int:
        return int(self.fit.nobs)


def _names(models, names) -> list[str]:
    if names is None:
        return [f"m{i}" for i in range(len(models))]
    names = [str(n) for n in names]
    if len(names) != len(models) or len(set(names)) != len(names):
        raise ValueError(f"names must be {len(models)} distinct labels, got {names}")
    return names


def _is_glm_result(fit) -> bool:
    """Whether ``fit`` is a :class:`~glmmjax.GLMResult`, without importing its module
    (which imports JAX) where no GLM was ever fitted."""
    module = sys.modules.get(__name__.rsplit(".", 2)[0] + "._results.glm")
    return module is not None and isinstance(fit, module.GLMResult)


def _prepare(models, names, what: str) -> tuple[list[_Entry], str]:
    from .._results.lmm import LMMResult
    from .._results.mixed import MixedModelResult

    if len(models) < 2:
        raise ValueError(f"{what} needs at least two fitted models")
    for m in models:
        if not (isinstance(m, MixedModelResult) or _is_glm_result(m)):
            raise TypeError(f"{what} compares fitted models (lmer/glmer/glm results), got {type(m).__name__}")
    note = ""
    refitted = [isinstance(m, LMMResult) and m.reml for m in models]
    if any(refitted):
        models = [m.refit(reml=False) if r else m for m, r in zip(models, refitted)]
        note = "refitting model(s) with ML (instead of REML)"
    entries = [_Entry(m, n) for m, n in zip(models, _names(models, names))]
    first = entries[0]
    for e in entries[1:]:
        if e.kind != first.kind or e.family != first.family:
            raise ValueError(
                f"models {first.name} and {e.name} have different response distributions "
                f"({first.family} vs {e.family}); likelihoods are not comparable"
            )
        _check_same_data(first, e)
    return entries, note


def _check_same_data(a: _Entry, b: _Entry) -> None:
    if a.nobs != b.nobs:
        raise ValueError(
            f"models {a.name} and {b.name} were fitted to different data ({a.nobs} vs "
            f"{b.nobs} observations; check missing values in variables used by one model "
            "only): likelihoods of different data cannot be compared"
        )
    rows_a, rows_b = a.design.rows, b.design.rows
    same_rows = len(rows_a) == len(rows_b) and bool(np.all(rows_a == rows_b))
    if not same_rows or not np.allclose(a.y, b.y, rtol=1e-12, atol=1e-12):
        raise ValueError(
            f"models {a.name} and {b.name} were fitted to different data (the responses "
            "or the rows used differ): likelihoods of different data cannot be compared"
        )
    if not np.allclose(a.design.offset, b.design.offset):
        raise ValueError(f"models {a.name} and {b.name} have different offsets")


def _in_span(big: np.ndarray, small: np.ndarray) -> bool:
    if small.shape[1] == 0:
        return True
    if big.shape[1] == 0:
        return False
    scale = max(1.0, float(np.abs(big).max()), float(np.abs(small).max()))
    coef, *_ = np.linalg.lstsq(big, small, rcond=None)
    return bool(np.allclose(big @ coef, small, atol=1e-8 * scale))


def _same_grouping(t0, t1) -> bool:
    return t0.group == t1.group and np.array_equal(t0.refs, t1.refs)


def nesting_problem(small: _Entry, big: _Entry) -> str | None:
    """Why ``small`` is not nested in ``big`` (None when it is)."""
    if small.npar >= big.npar:
        return f"{small.name} does not have fewer parameters than {big.name}"
    if not _in_span(big.design.X, small.design.X):
        return f"the fixed effects of {small.name} are not contained in those of {big.name}"
    for t0 in small.terms:
        # An unstructured covariance of several effects must sit inside one term of the
        # larger model; a single effect may sit in any term of the same grouping.
        ok = any(
            _same_grouping(t0, t1) and _in_span(t1.z, t0.z) for t1 in big.terms
        )
        if not ok:
            return (
                f"the random-effects term {t0.spec} of {small.name} is not contained in "
                f"a term of {big.name}"
            )
    return None


def _boundary_p(small: _Entry, big: _Entry, chisq: float, df: int) -> float:
    """p-value from ½χ²(df−1) + ½χ²(df) when ``big`` adds one variance component only."""
    if big.n_variances - small.n_variances != 1:
        return math.nan
    if np.linalg.matrix_rank(big.design.X) != np.linalg.matrix_rank(small.design.X):
        return math.nan
    lower = (1.0 if chisq <= 0 else 0.0) if df == 1 else chi2_sf(chisq, df - 1)
    return 0.5 * lower + 0.5 * chi2_sf(chisq, df)


def anova(*models, names=None) -> pd.DataFrame:
    """Likelihood-ratio tests of nested mixed models (lme4's ``anova(m0, m1, ...)``).

    Models are sorted by their number of parameters and each is tested against the
    previous one: χ² = deviance(smaller) − deviance(larger) on the difference in the
    number of parameters. REML fits are refitted by maximum likelihood first (the
    table's ``attrs["note"]`` says so). A ``glm`` fit may serve as the model without
    random effects.

    Args:
        *models: two or more fits (``lmer``, ``glmer``, ``glm`` results) of the same
            data with the same response distribution.
        names: row labels (default ``m0``, ``m1``, ... in the order given).

    Returns:
        A DataFrame with columns ``npar, AIC, BIC, logLik, deviance, Chisq, Df,
        Pr(>Chisq)`` and, where the larger model adds exactly one variance component to
        the smaller one, ``Pr(>Chisq) boundary``: the p-value from the 50:50 mixture of
        χ²(Df−1) and χ²(Df), the correct null distribution when the variance tested sits
        on the boundary of its parameter space (the plain p-value is conservative).

    Raises:
        ValueError: models fitted to different data (different rows or response), of
            different families, or not nested (use :func:`compare` for AIC/BIC
            comparisons of non-nested models).

    Example:
        >>> import glmmjax
        >>> data = glmmjax.datasets.load("sleepstudy")
        >>> m0 = glmmjax.lmer("Reaction ~ Days + (1 | Subject)", data)
        >>> m1 = glmmjax.lmer("Reaction ~ Days + (Days | Subject)", data)
        >>> table = glmmjax.anova(m0, m1)
        >>> round(float(table["Chisq"].iloc[1]), 2)
        42.14
    """
    entries, note = _prepare(models, names, "anova")
    entries = sorted(entries, key=lambda e: e.npar)
    rows = []
    boundary_note = False
    for i, e in enumerate(entries):
        deviance = -2.0 * e.loglik
        row = {
            "npar": e.npar,
            "AIC": deviance + 2 * e.npar,
            "BIC": deviance + math.log(e.nobs) * e.npar,
            "logLik": e.loglik,
            "deviance": deviance,
            "Chisq": math.nan,
            "Df": math.nan,
            "Pr(>Chisq)": math.nan,
            "Pr(>Chisq) boundary": math.nan,
        }
        if i > 0:
            prev = entries[i - 1]
            problem = nesting_problem(prev, e)
            if problem is not None:
                raise ValueError(
                    f"models {prev.name} and {e.name} are not nested ({problem}); a "
                    "likelihood-ratio test needs nested models. Use glmmjax.compare() to "
                    "compare non-nested models by AIC/BIC."
                )
            chisq = max(-2.0 * prev.loglik - deviance, 0.0)
            df = e.npar - prev.npar
            row["Chisq"] = chisq
            row["Df"] = df
            row["Pr(>Chisq)"] = chi2_sf(chisq, df)
            row["Pr(>Chisq) boundary"] = _boundary_p(prev, e, chisq, df)
            boundary_note |= bool(np.isfinite(row["Pr(>Chisq) boundary"]))
        rows.append(row)
    table = NotedTable(rows, index=[e.name for e in entries])
    if not boundary_note:
        table = table.drop(columns="Pr(>Chisq) boundary")
    notes = [note] if note else []
    if boundary_note:
        notes.append(
            "Pr(>Chisq) boundary: one variance component tested at its boundary (zero); "
            "p-value from the 50:50 mixture of chi-square(Df-1) and chi-square(Df)"
        )
    table.attrs["note"] = "; ".join(notes)
    table.attrs["formulas"] = {e.name: e.fit.formula for e in entries}
    return table


def compare(*models, names=None, by: str = "AIC") -> pd.DataFrame:
    """Compare fits of the same data by AIC and BIC (nested or not).

    REML fits are refitted by maximum likelihood first. Rows are sorted by ``by``
    ("AIC" or "BIC"); ``dAIC``/``dBIC`` are differences from the best model and
    ``AIC weight`` the Akaike weights exp(−ΔAIC/2)/Σ exp(−ΔAIC/2).

    Raises:
        ValueError: models fitted to different data, or of different families.

    Example:
        >>> import glmmjax
        >>> data = glmmjax.datasets.load("sleepstudy")
        >>> a = glmmjax.lmer("Reaction ~ Days + (1 | Subject)", data, reml=False)
        >>> b = glmmjax.lmer("Reaction ~ 1 + (Days | Subject)", data, reml=False)
        >>> list(glmmjax.compare(a, b).index)
        ['m1', 'm0']
    """
    if by not in ("AIC", "BIC"):
        raise ValueError(f"by must be 'AIC' or 'BIC', got {by!r}")
    entries, note = _prepare(models, names, "compare")
    rows = []
    for e in entries:
        deviance = -2.0 * e.loglik
        rows.append(
            {
                "npar": e.npar,
                "logLik": e.loglik,
                "AIC": deviance + 2 * e.npar,
                "BIC": deviance + math.log(e.nobs) * e.npar,
            }
        )
    table = NotedTable(rows, index=[e.name for e in entries])
    table["dAIC"] = table["AIC"] - table["AIC"].min()
    table["dBIC"] = table["BIC"] - table["BIC"].min()
    weights = np.exp(-0.5 * table["dAIC"])
    table["AIC weight"] = weights / weights.sum()
    table = table.sort_values(by)
    table.attrs["note"] = note
    table.attrs["formulas"] = {e.name: e.fit.formula for e in entries}
    return table
