"""``lmer``: fit a linear mixed model from a formula, as lme4 does."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ._engines.blas import single_threaded_blas
from ._engines.compiled.jit import program
from ._engines.compiled.optimize import Status
from ._engines.lmm_shared import (
    SINGULAR_TOL,
    build_structure_for,
    moment_theta,
    random_effects,
)
from ._engines.seam import choose_lmm, fit_lmm, opt_summary
from ._lazyjax import jnp
from ._model.checks import check_lmm_design, check_max_iter
from ._model.covariance import canonical_theta, diagonal_mask, theta_to_factors
from ._model.design import DataError, Design, build_design
from ._model.rescale import column_scales, scaled_design, unscale_lmm_result
from ._model.sparse_relmat import is_sparse_relatedness
from ._precision import with_x64
from ._results.lmm import LMMResult
from ._results.mixed import (
    Convergence,
    warn_if_not_converged,
    warn_if_singular,
)


@program
def _conditional_blocks(model, theta):
    from ._engines.compiled.cholesky import factorize, inverse_diagonal_blocks

    structure = model.structure
    factor = factorize(theta, model.products, structure)
    blocks = inverse_diagonal_blocks(structure, factor)
    factors = theta_to_factors(theta, structure.structures)
    return [jnp.einsum("ab,lbc,dc->lad", lam, blk, lam) for lam, blk in zip(factors, blocks)]


def sparse_lmm_result(design: Design, reml: bool, fit, warn: bool = True) -> LMMResult:
    """The :class:`LMMResult` of a sparse-path fit (a :class:`~glmmjax._engines.seam.
    SparseLMMFit`); warns when it did not converge (``warn``)."""
    p = design.X.shape[1]
    result = LMMResult(
        design=design,
        method="REML" if reml else "ML",
        family_name="gaussian",
        link_name="identity",
        theta_values=fit.theta,
        beta=fit.beta,
        beta_cov=fit.beta_cov,
        scale=fit.sigma,
        effects=fit.effects,
        effect_cov=fit.conditional_covariances,
        criterion=fit.criterion,
        n_params=p + len(fit.theta) + 1,
        convergence=Convergence(converged=fit.converged, message=fit.message,
                                grad_max=fit.grad_max, iterations=fit.iterations,
                                n_evaluations=fit.n_evaluations),
        singular=fit.singular,
        reml=reml,
        engine="sparse",
    )
    if warn:
        warn_if_not_converged(result, "lmer")
    return result


def lmm_result(design: Design, structure, reml: bool, solution, theta, pls,
               effects=None, engine: str | None = None, theta0=None) -> LMMResult:
    """Turn the optimizer's output into an :class:`LMMResult` (numpy values);
    ``engine`` and the start ``theta0`` go into its ``opt_summary``."""
    # Rows of prior weight 0 count neither in n nor in the criterion (as the engines'
    # models: fit_many's missing responses), so σ² matches the optimized criterion.
    n = int(np.count_nonzero(np.asarray(design.weights) > 0))
    p = design.X.shape[1]
    raw_theta = np.asarray(theta)
    theta = canonical_theta(raw_theta, structure.structures)
    r2 = float(pls.r2)
    sigma2 = r2 / (n - p) if reml else r2 / n
    sigma = float(np.sqrt(sigma2))
    L_x = np.asarray(pls.fixef_factor)
    L_x_inv = np.linalg.solve(np.tril(L_x), np.eye(p))
    beta_cov = sigma2 * L_x_inv.T @ L_x_inv
    # b = Λu (u is on the response's scale) with the θ the modes were solved at,
    # before the sign convention was applied.
    if effects is None:
        effects = random_effects(jnp.asarray(raw_theta), structure, pls.u_first, pls.u_rest)
    effects = [np.asarray(b) for b in effects]
    status = Status(int(solution.status))
    grad_max = float(np.max(np.abs(np.asarray(solution.grad)))) if solution.grad.size else 0.0
    convergence = Convergence(
        converged=status == Status.CONVERGED,
        message=status.describe(),
        grad_max=grad_max,
        iterations=int(solution.iterations),
        n_evaluations=int(solution.n_evaluations),
    )
    singular = bool(np.any(np.abs(theta[diagonal_mask(structure.structures)]) < SINGULAR_TOL))

    def effect_cov():
        y = np.asarray(design.response, dtype=float)
        if choose_lmm(None) == "host":
            from ._engines.host.lmm import conditional_covariances, host_model

            with single_threaded_blas():
                blocks = conditional_covariances(
                    theta, host_model(structure, design.weights, design.X, y, True))
            return [sigma2 * b for b in blocks]
        import jax

        from ._engines.compiled.lmm import host_lmm_model

        with jax.enable_x64(True):
            model = host_lmm_model(structure, design.weights, design.X, y, True)
            blocks = _conditional_blocks(model, jnp.asarray(theta))
            return [sigma2 * np.asarray(b) for b in blocks]

    return LMMResult(
        design=design,
        method="REML" if reml else "ML",
        family_name="gaussian",
        link_name="identity",
        theta_values=theta,
        beta=np.asarray(pls.beta),
        beta_cov=beta_cov,
        scale=sigma,
        effects=tuple(effects),
        effect_cov=effect_cov,
        criterion=float(pls.criterion),
        n_params=p + structure.n_theta + 1,
        convergence=convergence,
        singular=singular,
        reml=reml,
        engine=engine,
        opt_summary=None if engine is None else dataclasses.replace(
            opt_summary(engine, solution, raw_theta if theta0 is None else theta0),
            final=np.array(raw_theta, dtype=np.float64), objective=float(pls.criterion)),
    )


@with_x64
def lmer(
    formula: str,
    data: pd.DataFrame,
    reml: bool = True,
    *,
    weights=None,
    offset=None,
    engine: str | None = None,
    max_iter: int = 500,
    dispformula: str | None = None,
    relmat: dict | None = None,
    correlation=None,
) -> LMMResult:
    """Fit a linear mixed model with lme4's formula syntax.

    Minimizes the REML criterion (default) or the profiled ML deviance over θ by BFGS
    with exact gradients; β and σ are profiled out (Bates et al. 2015).

    Args:
        formula: e.g. ``"Reaction ~ Days + (Days | Subject)"``; random-effects terms
            ``(expr | g)``, ``(expr || g)`` (uncorrelated), ``(1 | a/b)`` (nested),
            ``(1 | a:b)``; ``offset(x)`` terms are allowed.
        data: a DataFrame; rows with missing values in used columns are dropped.
        reml: REML (True, lme4's default) or maximum likelihood.
        weights: prior weights (column name or array): residual variance σ²/wᵢ.
        offset: a known term added to the linear predictor (column name or array).
        engine: ``"host"`` (numpy and LAPACK in a Python BFGS loop: nothing to compile;
            the default on a CPU backend) or ``"jax"`` (one compiled XLA program; the
            default on accelerators, and faster when one structure is refitted often).
        max_iter: the cap on BFGS iterations over θ (lme4's ``maxfun`` plays this role).
        dispformula: glmmTMB's dispersion model: a one-sided formula of fixed effects
            for log σ²ᵢ (``"~ Days"``), or ``"~0"`` for a residual variance fixed near
            zero (about 1.5e-8, glmmTMB's). Fitted by maximum likelihood (needs
            ``reml=False``) as ``glmer(..., family="gaussian", dispformula=...)``.
        relmat: known relatedness, ``{"animal": K}``: the term ``(1 | animal)`` gets
            b ~ N(0, σ²_animal·K) (lme4qtl's and pedigreemm's relmat). K: a symmetric
            positive semi-definite numpy array, DataFrame (index and columns naming the
            levels; it may hold more levels than the data) or scipy.sparse matrix, or a
            :class:`~glmmjax.Pedigree` (K = its relationship matrix A). A pedigree or
            sparse K with 2,000 levels or more is fitted sparsely (Henderson's A⁻¹ or a
            sparse Cholesky factor of K; :mod:`glmmjax._engines.host.sparse_lmm`): tens of thousands
            of animals in seconds to minutes and a few hundred MB; its result offers the
            fit, summary, VarCorr, ranef (every animal of the pedigree), predict and
            logLik, while ddf, profiles, bootstrap and simulate need the dense path.
        correlation: residual correlation within groups, nlme's ``corAR1``:
            ``glmmjax.cor_ar1(time="Days", group="Subject")`` gives the residuals of one
            group correlation ρ^|t_i − t_j| at integer times (see
            :mod:`glmmjax._residual_ar1`); each group must be nested in every grouping
            factor of the random effects.

    Returns:
        An :class:`LMMResult`; check ``.converged`` and ``.is_singular``.

    Raises:
        FormulaError, DataError: before any computation, naming the problem (also a
            constant response, all-zero weights, a ``cbind()`` response).

    Warns:
        ConvergenceWarning: the optimizer stopped short (the message says why, with
            the final gradient); ``result.converged`` is False.
        SingularFitWarning: a variance component is estimated on the boundary (see
            ``result.singular_message()``).

    Example:
        >>> import glmmjax
        >>> fit = glmmjax.lmer("Reaction ~ Days + (Days | Subject)",
        ...                    glmmjax.datasets.load("sleepstudy"))
        >>> round(fit.fixef["Days"], 3)
        10.467
    """
    if not isinstance(reml, (bool, np.bool_)):
        raise ValueError(f"reml must be True (REML) or False (maximum likelihood), got {reml!r}")
    if correlation is not None and (dispformula is not None or relmat is not None
                                    or weights is not None):
        raise ValueError("correlation= cannot be combined with dispformula=, relmat= or "
                         "weights= yet")
    if dispformula is not None:
        if relmat is not None:
            raise ValueError("relmat= cannot be combined with ziformula= or dispformula= "
                             "yet; fit the known-relatedness model without them")
        from ._families.base import Gaussian
        from ._parts_fit import fit_parts

        return fit_parts(formula, data, Gaussian(), None, dispformula, weights=weights,
                         offset=offset, engine=engine, max_iter=max_iter,
                         method_name="REML" if reml else "ML", reml=bool(reml))
    design = build_design(formula, data, weights=weights, offset=offset, require_random=True,
                          drop_aliased=True, relmat=relmat, sparse_relmat=correlation is None)
    if correlation is not None:
        from ._residual_ar1 import fit_with_ar1

        return fit_with_ar1(design, reml, correlation, engine, check_max_iter(max_iter))
    result = fit_lmm_design(design, reml, engine=engine, max_iter=max_iter)
    warn_if_singular(result)
    return result


def check_lmm_response(design: Design) -> None:
    """A Gaussian response an LMM can be fitted to (lme4's checks, and a few more)."""
    name = design.formula.response.strip()
    response = np.asarray(design.response)
    if response.ndim != 1:
        raise DataError(
            f"response {name!r} has {response.shape[1]} columns; cbind(successes, failures) "
            "is for binomial models: use glmer(..., family='binomial'), or lmer with a "
            "single numeric response")
    if response.dtype == object:
        raise DataError(f"response {name!r} must be numeric for lmer")
    used = design.weights > 0
    if not np.any(used):
        raise DataError("all weights are zero; an LMM needs positive weights on some rows "
                        "(weights=: finite, non-negative, not all zero)")
    y = np.asarray(response, dtype=float)[used] - design.offset[used]
    if np.ptp(y) == 0:
        raise DataError(
            f"response {name!r} is constant ({y[0]:g} in every row used): there is no "
            "variation for the random effects or the residual (lme4: 'Response is "
            "constant')")
    X = design.X[used]
    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    residual = y - X @ beta
    if np.sum(residual**2) <= 1e-24 * np.sum(y**2):
        raise DataError(
            f"the fixed effects {list(design.fixef_names)} fit response {name!r} exactly "
            "(zero residual variance): the LMM likelihood is unbounded; remove terms")


@with_x64
def fit_lmm_design(design: Design, reml: bool = True, engine: str | None = None,
                   max_iter: int = 500, theta0=None) -> LMMResult:
    """Fit an LMM to an already built design (used by ``lmer`` and ``MixedModel``);
    warns with :class:`~glmmjax.ConvergenceWarning` when the optimizer stops short.
    ``theta0``: a start for θ (a nearby model's estimate; default: moment estimates)."""
    max_iter = check_max_iter(max_iter)
    check_lmm_response(design)
    check_lmm_design(design)
    if any(is_sparse_relatedness(t) for t in design.terms):
        y = np.asarray(design.response, dtype=float) - design.offset
        if theta0 is None:
            theta0 = moment_theta(design.terms, design.X, y, design.weights)
        from ._engines.host.sparse_lmm import fit_sparse_lmm

        return sparse_lmm_result(design, reml, fit_sparse_lmm(design, reml, max_iter, theta0))
    # Columns far from unit scale (x·1e8) are fitted rescaled by powers of two and the
    # result mapped back exactly (see glmmjax._model.rescale).
    scales = column_scales(design)
    fitted = design if scales is None else scaled_design(design, scales)
    structure = build_structure_for(fitted, fitted.X.shape[1] + 1)
    y = np.asarray(fitted.response, dtype=float) - fitted.offset
    if theta0 is None or scales is not None:  # a rescaled design has its own θ scale
        theta0 = moment_theta(fitted.terms, fitted.X, y, fitted.weights)
    engine = choose_lmm(engine)
    solution, theta, pls, effects = fit_lmm(structure, fitted.weights, fitted.X, y, reml,
                                            theta0, engine=engine, max_iter=max_iter)
    result = lmm_result(fitted, structure, reml, solution, theta, pls, effects, engine, theta0)
    if scales is not None:
        result = unscale_lmm_result(result, design, scales)
    warn_if_not_converged(result, "lmer")
    return result
