"""Tests of the fixed effects in a batch: which reference distribution each model's
coefficients get.

Wald z tests treat the estimated variance parameters as known. With few groups that is
far from true: fitting null responses with 8 subjects and a between-subject effect,
14% of z tests had p < 0.05. ``fit_many`` therefore uses t tests by default:

- LMMs: Satterthwaite's degrees of freedom per model and coefficient, exactly as lmerTest
  (``glmmjax._inference.ddf``), computed inside the batched program by forward-mode autodiff of the
  (RE)ML deviance in ψ = (θ, σ) and of Var(β̂)(ψ).
- GLMMs: the "between-within" rule (Pinheiro & Bates 2000, §2.4.2, as nlme's ``lme``
  and SAS's ``DDFM=BETWITHIN``), with SAS's containment refinement for random slopes: a
  coefficient whose column is constant within the levels of a grouping factor g, or that
  has a random slope over g, is a between-g effect and gets m_g − 1 − p_g degrees of
  freedom (m_g levels, p_g such non-intercept columns); any other coefficient (the
  intercept included, as nlme) gets n − m − p_w, m the levels of the innermost factor.
  With several crossed factors a coefficient takes the smallest df among the factors it
  is between. The df depend on the design only, so every model of the batch shares them.
  There is no exact small-sample theory for GLMMs (lme4 and glmmTMB report z); these df
  make the t reference account for the number of groups, which is what calibrates the
  tests of between-group effects (tests/test_batch_inference.py).

``ddf=None`` gives Wald z tests (glmer's and glmmTMB's summaries).
"""

from __future__ import annotations

import numpy as np

from .._families.distributions import norm_sf, t_sf

BATCH_DDF = ("auto", "satterthwaite", "kenward-roger", "between-within", None)


def check_batch_ddf(ddf, lmm: bool) -> str | None:
    """Resolve ``fit_many``'s ``ddf`` for an LMM (``lmm``) or a GLMM batch."""
    key = ddf if ddf is None else str(ddf).lower().replace("_", "-")
    key = {"kr": "kenward-roger", "kenwardroger": "kenward-roger"}.get(key, key)
    if key not in BATCH_DDF:
        raise ValueError(
            f"ddf must be 'auto', 'satterthwaite', 'kenward-roger', 'between-within' or None, "
            f"got {ddf!r}"
        )
    if key == "auto":
        return "satterthwaite" if lmm else "between-within"
    if key in ("satterthwaite", "kenward-roger") and not lmm:
        raise ValueError(
            f"ddf={key!r} applies to linear mixed models only; for GLMM batches use "
            "ddf='between-within' (the default) or ddf=None (Wald z tests)"
        )
    return key


def kenward_roger(design, Y, theta, sigma, beta) -> tuple[np.ndarray, np.ndarray]:
    """Kenward–Roger df and adjusted standard errors (K, p) of K REML fits of a batch
    (pbkrtest's, as :meth:`LMMResult.coef_table` with ``ddf="kenward-roger"``), each on
    its model's observed rows (NaN in ``Y`` (n, K) = missing). Numpy, model by model:
    nothing compiled; a model whose pieces cannot be formed gets NaN."""
    from .._inference.ddf import (
        check_kenward_roger_design,
        kenward_roger_arrays,
        kenward_roger_f_test,
    )
    from .._model.cov_structures import term_structures

    Z, layout = check_kenward_roger_design(design)
    structures = term_structures(design.terms)
    X = np.asarray(design.X, dtype=float)
    w = np.asarray(design.weights, dtype=float)
    K, p = beta.shape
    df = np.full((K, p), np.nan)
    se = np.full((K, p), np.nan)
    eye = np.eye(p)
    for k in range(K):
        if not (np.all(np.isfinite(theta[k])) and np.isfinite(sigma[k])
                and np.all(np.isfinite(beta[k]))):
            continue
        rows = ~np.isnan(Y[:, k])
        try:
            with np.errstate(all="ignore"):
                pieces = kenward_roger_arrays(X[rows], w[rows], Z[rows], layout, theta[k],
                                              float(sigma[k]) ** 2, structures)
                df[k] = [kenward_roger_f_test(pieces, eye[j], beta[k])[2] for j in range(p)]
            # A negative adjusted variance (a fit at a boundary, e.g. a correlation
            # at ±1) gives NaN, as the single fit's coef_table: no test, not SE 0.
            variances = np.diagonal(pieces.vcov_adjusted)
            se[k] = np.where(variances >= 0, np.sqrt(np.abs(variances)), np.nan)
        except np.linalg.LinAlgError:
            continue
    return df, se


def describe(ddf: str | None) -> str:
    return {
        "satterthwaite": "t tests, Satterthwaite df per model (as lmerTest)",
        "kenward-roger": "t tests, Kenward-Roger df and adjusted SEs per model (as pbkrtest)",
        "between-within": "t tests, between-within df (as nlme; shared by all models)",
        None: "Wald z tests (asymptotic: liberal with few groups)",
    }[ddf]


def _constant_within(column: np.ndarray, refs: np.ndarray, n_levels: int) -> bool:
    lo = np.full(n_levels, np.inf)
    hi = np.full(n_levels, -np.inf)
    np.minimum.at(lo, refs, column)
    np.maximum.at(hi, refs, column)
    seen = np.isfinite(lo)
    return bool(np.all(hi[seen] - lo[seen] <= 1e-12 * (1 + np.abs(hi[seen]))))


def between_within_df(design) -> np.ndarray:
    """Degrees of freedom of each fitted fixed effect by the between-within rule."""
    X = np.asarray(design.X, dtype=float)
    n, p = X.shape
    names = list(design.fixef_names)
    positive = np.asarray(design.weights) > 0
    X = X[positive]
    n = int(positive.sum())
    intercept = [j for j in range(p) if np.all(X[:, j] == X[0, j]) and X[0, j] != 0]
    between = {}  # factor -> (levels, set of between columns)
    for term in design.terms:
        refs = np.asarray(term.refs)[positive]
        m = len(np.unique(refs))
        cols = set(between.get(term.group, (m, set()))[1])
        for j in range(p):
            if j in intercept:
                continue
            if names[j] in term.coef_names or _constant_within(X[:, j], refs, term.n_levels):
                cols.add(j)
        between[term.group] = (m, cols)
    df = np.empty(p)
    innermost = max((m for m, _ in between.values()), default=0)
    between_any = set().union(*(cols for _, cols in between.values())) if between else set()
    within_df = n - innermost - (p - len(between_any) - len(intercept))
    for j in range(p):
        options = [m - 1 - len(cols) for m, cols in between.values() if j in cols]
        df[j] = min(options) if options else within_df
    return np.maximum(df, 1.0)


def p_values(statistic: np.ndarray, df) -> np.ndarray:
    """Two-sided p-values: t with ``df`` (broadcast), or normal where ``df`` is inf."""
    with np.errstate(invalid="ignore"):
        if df is None:
            return 2 * norm_sf(np.abs(statistic))
        return 2 * t_sf(np.abs(statistic), np.broadcast_to(df, statistic.shape))
