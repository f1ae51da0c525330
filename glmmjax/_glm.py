"""``glm``: generalized linear models from a formula, as R's ``glm``.

Formula to design (numpy checks with row labels, before tracing), aliased columns, the
fit by the engine the seam chooses (:mod:`glmmjax._engines.host.glm`, R's IRLS in numpy,
or :mod:`glmmjax._engines.compiled.glm`, a pure JAX function for jit and vmap), the null
deviance, a separation check for binomial and count models, and the result object.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ._engines.blas import single_threaded_blas
from ._engines.host import glm as _glm_host
from ._engines.seam import choose_glm
from ._families.base import Binomial, Family, NegativeBinomial, Poisson, get_family
from ._model.design import DataError, build_design
from ._model.formula import FormulaError
from ._precision import with_x64
from ._results.mixed import ConvergenceWarning
from ._stacklevel import external_stacklevel

__all__ = ["glm", "GLMConvergenceWarning", "SeparationWarning"]

class GLMConvergenceWarning(ConvergenceWarning):
    """The GLM fit stopped before meeting its convergence criterion (a
    :class:`~glmmjax.ConvergenceWarning`)."""


class SeparationWarning(UserWarning):
    """(Quasi-)complete separation: some coefficients of a binomial model (or of a count
    model, from zeros) are infinite; the warning names them."""


# ---- numpy side: aliasing, null deviance, separation ----------------------------------


# From this many rows the aliasing test first tries every SUBSAMPLE_STRIDE-th row.
SUBSAMPLE_ROWS = 200_000
SUBSAMPLE_STRIDE = 8


def aliased_columns(X: np.ndarray, tol: float = 1e-10) -> np.ndarray:
    """Boolean mask of columns that are (numerically) combinations of earlier ones.

    Like R's ``dqrdc2``, columns are examined left to right and a column is dropped when
    the part of it not explained by the kept columns is tiny, so later columns are the
    ones dropped. Works on X'X (p × p), cheap for tall X.

    For tall X a subsample of rows decides first: a column's residual sum of squares on
    the kept columns can only grow with more rows, so when every column's residual on
    the subsample is above ``tol`` times its norm on *all* rows, no column is aliased in
    X either (exact, not a guess); otherwise X'X decides.
    """
    # One BLAS thread, as the fit (glmmjax._engines.blas): OpenBLAS's idle workers spin
    # after a threaded product and, on shared cores, slow the passes that follow.
    with single_threaded_blas():
        if X.shape[0] >= SUBSAMPLE_ROWS:
            sub = np.ascontiguousarray(X[::SUBSAMPLE_STRIDE])
            norms = np.einsum("ij,ij->j", X, X)
            if not _aliased_in_gram(sub.T @ sub, tol, norms).any():
                return np.zeros(X.shape[1], dtype=bool)
        return _aliased_in_gram(X.T @ X, tol)


def _aliased_in_gram(gram: np.ndarray, tol: float, norms=None) -> np.ndarray:
    """:func:`aliased_columns` from a Gram matrix; ``norms``: the squared column norms
    the residuals are compared with (default: the Gram's diagonal)."""
    p = gram.shape[0]
    if norms is None:
        norms = np.diag(gram)
    kept: list[int] = []
    aliased = np.zeros(p, dtype=bool)
    for j in range(p):
        norm2 = gram[j, j]
        if norm2 <= 0:
            aliased[j] = True
            continue
        if kept:
            g_kk = gram[np.ix_(kept, kept)]
            g_kj = gram[kept, j]
            residual2 = norm2 - g_kj @ np.linalg.solve(g_kk, g_kj)
        else:
            residual2 = norm2
        if residual2 <= tol * norms[j]:
            aliased[j] = True
        else:
            kept.append(j)
    return aliased


def detect_separation(X: np.ndarray, y: np.ndarray, weights: np.ndarray,
                      counts: bool = False) -> np.ndarray:
    """Coefficients that are infinite because of (quasi-)complete separation.

    The MLE of a binomial GLM fails to exist iff some direction d ≠ 0 has x_i'd ≥ 0
    where every trial succeeded, x_i'd ≤ 0 where every trial failed, x_i'd = 0 where
    both occurred, and x_i'd ≠ 0 somewhere (Albert & Anderson, 1984; Konis, 2007).
    ``counts=True`` asks the same of a count model with log link (Poisson, negative
    binomial): there zeros play the failures' part and y > 0 the mixed rows', so d
    with x_i'd ≤ 0 on the zeros and x_i'd = 0 elsewhere sends those means to 0. The
    same holds with random effects added (a GLMM's likelihood increases along d for
    every value of the random effects), so ``glmer`` asks it of X alone.
    We solve one linear program for the *sparsest* such direction in the L1 sense,
    normalized by Σ|x_i'd| = 1 on the separated side: it is infeasible when the MLE
    exists, and otherwise its non-zero entries name the coefficients that diverge.
    Columns are scaled to unit max-norm first. Returns a boolean mask over columns.
    """
    from scipy.optimize import linprog

    used = weights > 0
    X, y = X[used], y[used]
    p = X.shape[1]
    scale = np.max(np.abs(X), axis=0)
    scale[scale == 0] = 1.0
    Xs = X / scale
    if counts:
        sign = np.where(y <= 0, -1.0, 0.0)
    else:
        sign = np.where(y >= 1, 1.0, np.where(y <= 0, -1.0, 0.0))
    pure = sign != 0
    if not np.any(pure):
        return np.zeros(p, dtype=bool)
    signed = Xs[pure] * sign[pure, None]
    # Variables d = d⁺ − d⁻ (both ≥ 0); minimize Σ d⁺ + d⁻.
    a_ub = np.vstack([
        np.hstack([-signed, signed]),                                   # s_i x_i'd ≥ 0
        np.hstack([-signed.sum(axis=0), signed.sum(axis=0)])[None, :],  # Σ s_i x_i'd ≥ 1
    ])
    b_ub = np.r_[np.zeros(len(signed)), -1.0]
    mixed = Xs[~pure]
    a_eq = np.hstack([mixed, -mixed]) if len(mixed) else None
    b_eq = np.zeros(len(mixed)) if len(mixed) else None
    result = linprog(np.ones(2 * p), A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq,
                     bounds=[(0, None)] * (2 * p), method="highs")
    if result.status != 0:  # infeasible: the MLE exists
        return np.zeros(p, dtype=bool)
    direction = result.x[:p] - result.x[p:]
    return np.abs(direction) > 1e-9 * np.max(np.abs(direction))


def _looks_separated(mu: np.ndarray, weights: np.ndarray, converged: bool,
                     y: np.ndarray | None = None) -> bool:
    """Worth the linear program: no convergence, or fitted means at the boundary
    (binomial: 0 or 1; counts, given ``y``: 0 where y = 0)."""
    used = weights > 0
    if y is not None:
        extreme = (mu[used] < 1e-10) & (y[used] == 0)
    else:
        extreme = (mu[used] < 1e-10) | (mu[used] > 1 - 1e-10)
    return (not converged) or bool(np.any(extreme))


def _fix_estimated_shape(family, fit):
    """A family whose shapes were estimated with the dispersion (Student-t's ν, Tweedie's
    p, ordered beta's cutpoints; ``fit.dispersion`` is then (φ, shapes...)): the
    result's family carries the estimates fixed, and ``extra_params`` reports them (as
    ``glmer``)."""
    if not getattr(family, "n_shape", 0):
        return family, fit, {}
    values = [float(v) for v in np.asarray(fit.dispersion)]
    fit = fit._replace(dispersion=np.asarray(values[0]))
    if hasattr(family, "with_estimates"):  # several shapes (ordered beta's cutpoints)
        return family.with_estimates(values[1:]), fit, dict(zip(family.shape_names,
                                                                values[1:]))
    name = "df" if family.name == "t_family" else "power"
    return type(family)(values[1], link=family.link), fit, {name: values[1]}


# ---- public entry point ---------------------------------------------------------------


def _response_name(formula) -> str:
    return formula.response.strip()


@with_x64
def glm(formula: str, data: pd.DataFrame, family: str | Family = "gaussian", weights=None,
        offset=None, *, tol: float = 1e-8, max_iter: int = 25, engine: str | None = None):
    """Fit a generalized linear model, as R's ``glm`` (and ``MASS::glm.nb``).

    Args:
        formula: ``"y ~ x1 + x2"``, with ``offset(log(t))`` terms allowed; for a
            binomial model the response may be 0/1, a proportion (with ``weights`` =
            trials), ``cbind(successes, failures)`` or a two-level categorical (its
            second level, in category order, counts as success).
        data: pandas DataFrame; rows with missing values in used columns are dropped.
        family: a name (``"gaussian"``, ``"binomial"``, ``"poisson"``, ``"gamma"``,
            ``"inverse_gaussian"``, ``"negative_binomial"``, ``"beta"``; glmmTMB's
            ``"nbinom1"``, ``"truncated_poisson"``, ``"truncated_nbinom1"``,
            ``"truncated_nbinom2"``, ``"genpois"``, ``"betabinomial"``,
            ``"lognormal"``, ``"t_family"``, ``"tweedie"``, ``"compois"``, ``"ordbeta"``) or a family
            object such as
            ``glmmjax.families.Binomial(link="probit")``.
        weights: prior weights (a column name or an array; trials for proportions).
        offset: an offset added to the linear predictor (column name or array).
        tol, max_iter: IRLS convergence tolerance and iteration cap (R's defaults).
        engine: ``None`` (default: the host engine on the CPU for every built-in
            family and link: numpy IRLS for the exponential families, Newton on the
            closed-form log-likelihood for ML dispersions and glmmTMB's families; the
            compiled program otherwise), ``"host"`` or ``"jax"``. Shapes estimated
            jointly (``t_family``'s df, ``tweedie``'s power, ``ordbeta``'s cutpoints,
            reported in ``extra_params``) need the host engine.

    Returns:
        :class:`GLMResult`.

    Raises:
        DataError: a response outside the family's support (naming the rows), bad
            weights, missing columns.
        ValueError: unknown family, or a link the family does not allow.

    Warns:
        GLMConvergenceWarning: the fit did not converge.
        SeparationWarning: (quasi-)complete separation in a binomial model; the message
            names the coefficients that diverge.

    Example:
        >>> import glmmjax
        >>> cbpp = glmmjax.datasets.load("cbpp")
        >>> fit = glmmjax.glm("incidence/size ~ period", cbpp, family="binomial",
        ...                   weights="size")
        >>> print(round(float(fit.coef["Intercept"]), 4))
        -1.269
    """
    from ._results.glm import GLMResult

    fam = get_family(family)
    engine = choose_glm(fam, engine)
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        from ._display import show
        raise ValueError(f"max_iter must be a positive integer, got {show(max_iter)}")
    if not (isinstance(tol, (int, float, np.floating)) and np.isfinite(tol) and tol > 0):
        from ._display import show
        raise ValueError(f"tol must be a positive number, got {show(tol)}")
    design = build_design(formula, data, weights=weights, offset=offset, numeric_response=False)
    if design.formula.random:
        raise FormulaError(
            f"glm fits no random effects, but the formula has {[str(t) for t in design.formula.random]}; "
            "use glmmjax.lmer or glmmjax.glmer, or remove them")
    y, prior, success_level = fam.prepare_response(
        design.response, design.weights, design.response_levels, design.rows
    )
    if not np.any(prior > 0):
        raise DataError("all weights are zero; nothing to fit")
    X_full = design.X
    aliased = aliased_columns(X_full)
    if aliased.any():
        names = [n for n, a in zip(design.fixef_names, aliased) if a]
        warnings.warn(
            f"coefficients {names} are not estimable (their columns are linear combinations "
            "of earlier ones) and are reported as NaN",
            UserWarning,
            stacklevel=external_stacklevel(),
        )
    # (Indexing copies X: at 10⁶ rows that is a tenth of a second, so only when needed.)
    X = X_full[:, ~aliased] if aliased.any() else X_full
    offset_values = np.asarray(design.offset, dtype=np.float64)
    has_intercept = any(X[0, j] == 1.0 and np.all(X[:, j] == 1.0) for j in range(X.shape[1]))
    if not has_intercept:
        null_model = "offset"
    else:
        null_model = "intercept" if np.any(offset_values != 0) else "mean"
    if engine == "host":
        fit = _glm_host.fit_glm(X, y, prior, offset_values, fam, tol=tol, max_iter=max_iter,
                                null_model=null_model)
    else:
        import jax

        from ._engines.compiled.glm import fit_glm_program

        fit = fit_glm_program(X, y, prior, offset_values, fam, tol=tol, max_iter=max_iter,
                              null_model=null_model)
        fit = jax.tree_util.tree_map(np.asarray, fit)
    fam, fit, extra_params = _fix_estimated_shape(fam, fit)
    converged = bool(fit.converged)
    if not converged:
        warnings.warn(
            f"glm did not converge in {int(fit.iterations)} iterations; the estimates may "
            "be unreliable (try max_iter= or check the model)",
            GLMConvergenceWarning,
            stacklevel=external_stacklevel(),
        )
    separated: tuple[str, ...] = ()
    counts = isinstance(fam, (Poisson, NegativeBinomial)) and fam.link.name == "log"
    if ((isinstance(fam, Binomial) and _looks_separated(fit.mu, prior, converged))
            or (counts and _looks_separated(fit.mu, prior, converged, y))):
        mask = detect_separation(X, y, prior, counts=counts)
        kept_names = [n for n, a in zip(design.fixef_names, aliased) if not a]
        separated = tuple(n for n, m in zip(kept_names, mask) if m)
        if separated:
            warnings.warn(
                f"(quasi-)complete separation: the maximum likelihood estimates of "
                f"{list(separated)} are infinite; the fitted "
                + ("means of some zero counts are 0" if counts else
                   "probabilities of some observations are 0 or 1")
                + " and their reported estimates and standard "
                "errors are meaningless (consider penalized or Bayesian fits, or "
                "removing those terms)",
                SeparationWarning,
                stacklevel=external_stacklevel(),
            )
    return GLMResult(
        fit=fit,
        family=fam,
        design=design,
        y=y,
        weights=prior,
        aliased=aliased,
        null_deviance=float(fit.null_deviance),
        has_intercept=has_intercept,
        success_level=success_level,
        separated=separated,
        formula=formula,
        response_name=_response_name(design.formula),
        extra_params=extra_params,
    )
