"""Large known-relatedness LMMs (pedigrees, sparse K) with sparse mixed-model equations.

The dense path (:mod:`glmmjax._model.relmat`) turns ``(1 | animal)`` with K = L·L' into one
group of q effects: q × q blocks, q³ work per evaluation. For a pedigree of 20,000
animals that is gigabytes and minutes per evaluation, while the mixed-model equations
are sparse: Henderson's A⁻¹ has a handful of non-zeros per animal
(:class:`glmmjax.Pedigree`). Here every term keeps its levels (the relatedness term is a
random intercept per animal of the pedigree, ancestors without records included) and
the random effects are written b = Λ(θ)·c with c ~ N(0, σ²·Q⁻¹), Q fixed and sparse:

- a pedigree term: Λ_t = θ·I, Q_t = A⁻¹ (precision form);
- a sparse K: Λ_t = θ·F with F·F' = K a sparse Cholesky factor (fill-reducing order),
  Q_t = I;
- every other term as lme4 has it: Λ_t = I ⊗ λ_t(θ_t), Q_t = I.

With M(θ) = Λ'Z'WZΛ + Q, the criterion of lme4 (log|Λ'Z'WZΛ + I| in its terms) is

    ML:   log|M| − log|Q| + n·(1 + log(2π r²/n))
    REML: log|M| − log|Q| + log|L_X|² + (n−p)·(1 + log(2π r²/(n−p)))

(minus Σ log wᵢ), since |Λ'Z'WZΛ + Q| / |Q| = |Q^-½Λ'Z'WZΛQ^-½ + I|. M is factored by
SuperLU (scipy, already a dependency) with a minimum-degree order and diagonal pivots
(an LDL' in effect, M being symmetric positive definite); β and r² come from the
(p+1) × (p+1) Schur complement of [Z X y]'W[Z X y]. θ has one or a few entries and is
optimized without derivatives by COBYQA (scipy; quadratic models in a trust region, as
lme4's bobyqa; θ's SDs bounded below by zero); the minimum-degree order of M is found once (its pattern does not depend on θ).

A fit from here (an :class:`~glmmjax.LMMResult`, built by the front door) has β, its covariance, σ, VarCorr,
the BLUPs of every animal (ranef), logLik/AIC/BIC, fitted values, residuals, predict
and the conditional variances of the BLUPs (computed on request, by solves with M).
The parametric bootstrap refits simulated responses here
(:mod:`glmmjax._inference.sparse_bootstrap`) and Satterthwaite's df take their derivatives
here (:func:`varpar_derivatives`), profiles use its deviance
(:mod:`glmmjax._inference.sparse_profile`); methods that need the dense machinery
(Kenward–Roger, refit, fit_many) say so; with a pedigree of up to a few thousand animals they are
available through the dense path (:data:`SPARSE_MIN_LEVELS`).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.sparse
import scipy.sparse.linalg

from ..._model.cov_structures import term_structures
from ..._model.covariance import canonical_theta, diagonal_mask, split_theta
from ..._model.sparse_relmat import (
    SparseRelatedness,
)
from ..seam import SparseLMMFit

# -- the fit -----------------------------------------------------------------------------

@dataclasses.dataclass
class _SparseModel:
    structures: tuple
    terms: tuple
    ztwz: scipy.sparse.csc_matrix
    ztw_xy: np.ndarray  # (Q, p+1)
    xy_w_xy: np.ndarray  # (p+1, p+1)
    precision: scipy.sparse.csc_matrix
    log_det_precision: float
    nobs: float
    sum_log_weights: float
    n_fixef: int
    reml: bool
    order: np.ndarray | None = None  # M's fill-reducing symmetric order, found once
    # W·Z and the response's pieces, to refit another response (the bootstrap).
    wz: scipy.sparse.csr_matrix | None = None
    X: np.ndarray | None = None
    weights: np.ndarray | None = None


def with_response(model: _SparseModel, y) -> _SparseModel:
    """The same model (M's pattern and order included) for another response y (offset
    already subtracted): only Z'Wy and the (p+1)² block change."""
    xy = np.column_stack([model.X, np.asarray(y, dtype=np.float64)])
    return dataclasses.replace(model, ztw_xy=np.asarray(model.wz.T @ xy),
                               xy_w_xy=(xy * model.weights[:, None]).T @ xy)


class _Factor:
    """SuperLU's factor of M[order][:, order] (diagonal pivots: an LDL'), solving with M."""

    def __init__(self, M, order):
        self.order = order
        self.inverse = np.argsort(order)
        self.lu = scipy.sparse.linalg.splu(M[order][:, order].tocsc(), permc_spec="NATURAL",
                                           diag_pivot_thresh=0.0,
                                           options={"SymmetricMode": True})

    def logdet(self) -> float:
        diag = self.lu.U.diagonal()
        if np.any(diag <= 0):
            raise np.linalg.LinAlgError("M is not positive definite")
        return float(np.sum(np.log(diag)))

    def solve(self, rhs):
        return self.lu.solve(np.asarray(rhs)[self.order])[self.inverse]


def _model(design, reml: bool) -> _SparseModel:
    terms = design.terms
    structures = term_structures(terms)
    weights = np.asarray(design.weights, dtype=np.float64)
    y = np.asarray(design.response, dtype=np.float64) - design.offset
    X = np.asarray(design.X, dtype=np.float64)
    n = X.shape[0]
    blocks, precisions, log_det_q = [], [], 0.0
    for term, cov in zip(terms, structures):
        S = term.size
        cols = (term.refs[:, None] * S + np.arange(S)[None, :]).ravel()
        rows = np.repeat(np.arange(n), S)
        blocks.append(scipy.sparse.csr_matrix((np.asarray(term.z, float).ravel(), (rows, cols)),
                                              shape=(n, term.n_levels * S)))
        if isinstance(cov, SparseRelatedness) and cov.precision is not None:
            precisions.append(scipy.sparse.csc_matrix(cov.precision))
            log_det_q -= cov.log_det
        else:
            precisions.append(scipy.sparse.identity(term.n_levels * S, format="csc"))
    Z = scipy.sparse.hstack(blocks, format="csr")
    wz = scipy.sparse.diags(weights) @ Z
    xy = np.column_stack([X, y])
    positive = weights > 0
    model = _SparseModel(
        structures=structures, terms=terms,
        ztwz=(Z.T @ wz).tocsc(), ztw_xy=np.asarray(wz.T @ xy),
        xy_w_xy=(xy * weights[:, None]).T @ xy,
        precision=scipy.sparse.block_diag(precisions, format="csc"),
        log_det_precision=log_det_q, nobs=float(np.sum(positive)),
        sum_log_weights=float(np.sum(np.log(weights[positive]))),
        n_fixef=X.shape[1], reml=reml, wz=wz, X=X, weights=weights)
    # The pattern of M is the same for every θ with non-zero SDs: its minimum-degree
    # order (most of one factorization's time) is found once, at θ = 1.
    theta = np.ones(int(sum(c.n_params for c in structures)))
    lam = _lambda(theta, model)
    pattern = (abs(lam.T) @ abs(model.ztwz) @ abs(lam) + abs(model.precision)).tocsc()
    lu = scipy.sparse.linalg.splu(pattern, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                                  options={"SymmetricMode": True})
    model.order = np.argsort(lu.perm_c)
    return model


def _lambda(theta, model: _SparseModel) -> scipy.sparse.csc_matrix:
    blocks = []
    for term, cov, part in zip(model.terms, model.structures,
                               split_theta(np.asarray(theta, float), model.structures)):
        if isinstance(cov, SparseRelatedness):
            scale = abs(float(part[0]))
            base = (cov.lower if cov.lower is not None
                    else scipy.sparse.identity(term.n_levels, format="csc"))
            blocks.append(scale * base)
        else:
            lam = np.asarray(cov.factor(np.asarray(part, float), np), dtype=np.float64)
            if lam.shape[0] == term.size:
                blocks.append(scipy.sparse.kron(scipy.sparse.identity(term.n_levels),
                                                scipy.sparse.csr_matrix(lam)))
            else:  # one group whose effects are the levels (a dense known K)
                blocks.append(scipy.sparse.csr_matrix(lam))
    return scipy.sparse.block_diag(blocks, format="csc")


@dataclasses.dataclass
class _Evaluation:
    criterion: float
    beta: np.ndarray
    fixef_factor: np.ndarray
    r2: float
    modes: np.ndarray  # c (the effects are Λ·c)
    lam: scipy.sparse.csc_matrix
    lu: object


def _evaluate(theta, model: _SparseModel, need_modes: bool = False) -> _Evaluation:
    lam = _lambda(theta, model)
    M = (lam.T @ model.ztwz @ lam + model.precision).tocsr()
    lu = _Factor(M, model.order)
    logdet_z = lu.logdet() - model.log_det_precision
    B = np.asarray(lam.T @ model.ztw_xy)
    C = lu.solve(B)
    schur = model.xy_w_xy - B.T @ C
    schur = 0.5 * (schur + schur.T)
    factor = np.linalg.cholesky(schur)
    p = model.n_fixef
    L_x = factor[:p, :p]
    r2 = float(factor[p, p] ** 2)
    beta = scipy.linalg.solve_triangular(L_x.T, factor[p, :p], lower=False)
    n = model.nobs
    if model.reml:
        dof = n - p
        logdet_x = 2.0 * float(np.sum(np.log(np.diag(L_x))))
        value = logdet_z + logdet_x + dof * (1.0 + np.log(2.0 * np.pi * r2 / dof))
    else:
        value = logdet_z + n * (1.0 + np.log(2.0 * np.pi * r2 / n))
    value -= model.sum_log_weights
    modes = C[:, p] - C[:, :p] @ beta if need_modes else None
    return _Evaluation(float(value), beta, L_x, r2, modes, lam, lu)


def _pieces(theta, model: _SparseModel, with_beta: bool = False):
    """(log|M| − log|Q|, L_X, r²) at θ: the criterion's pieces before σ is profiled
    (and β̂(θ) after them, ``with_beta``)."""
    lam = _lambda(theta, model)
    lu = _Factor((lam.T @ model.ztwz @ lam + model.precision).tocsr(), model.order)
    B = np.asarray(lam.T @ model.ztw_xy)
    schur = model.xy_w_xy - B.T @ lu.solve(B)
    factor = np.linalg.cholesky(0.5 * (schur + schur.T))
    p = model.n_fixef
    pieces = (lu.logdet() - model.log_det_precision, factor[:p, :p], float(factor[p, p] ** 2))
    if with_beta:
        beta = scipy.linalg.solve_triangular(factor[:p, :p].T, factor[p, :p], lower=False)
        return pieces + (beta,)
    return pieces


def varpar_deviance(varpar, model: _SparseModel) -> float:
    """(RE)ML deviance at ψ = (θ, σ), σ not profiled (as
    :func:`glmmjax._inference.ddf.varpar_deviance`)."""
    theta, sigma = np.asarray(varpar[:-1], float), float(varpar[-1])
    logdet_z, L_x, r2 = _pieces(theta, model)
    log_2pi_s2 = np.log(2.0 * np.pi * sigma**2)
    value = logdet_z + r2 / sigma**2 + model.nobs * log_2pi_s2
    if model.reml:
        value += 2.0 * float(np.sum(np.log(np.diag(L_x)))) - model.n_fixef * log_2pi_s2
    return float(value - model.sum_log_weights)


def beta_vcov(varpar, model: _SparseModel) -> np.ndarray:
    """Var(β̂) = σ²·(L_X L_X')⁻¹ at ψ = (θ, σ)."""
    _, L_x, _ = _pieces(np.asarray(varpar[:-1], float), model)
    L_inv = scipy.linalg.solve_triangular(L_x, np.eye(L_x.shape[0]), lower=True)
    return float(varpar[-1]) ** 2 * (L_inv.T @ L_inv)


def varpar_derivatives(design, reml: bool, theta, sigma, step: float = 1e-4):
    """Satterthwaite's pieces on the sparse path: the Hessian of the deviance in
    ψ = (θ, σ) (k × k) and the Jacobian of Var(β̂) (p × p × k), by central differences
    with steps ``step``·max(1, |ψ_i|) (one sparse factorization per point; θ has a few
    entries), and Var(β̂) at ψ̂. Returned as ``glmmjax._engines.host.lmm.varpar_derivatives``."""
    model = _model(design, reml)
    psi = np.append(np.asarray(theta, dtype=np.float64), float(sigma))
    k = psi.size
    h = step * np.maximum(1.0, np.abs(psi))
    _, hessian = _central_differences(lambda v: varpar_deviance(v, model), psi, h,
                                      np.arange(k))
    jacobian = np.zeros((model.n_fixef, model.n_fixef, k))
    for a in range(k):
        e = np.zeros(k)
        e[a] = h[a]
        jacobian[:, :, a] = (beta_vcov(psi + e, model) - beta_vcov(psi - e, model)) / (2 * h[a])
    return hessian, jacobian, beta_vcov(psi, model)


def _objective(theta, model):
    try:
        return _evaluate(theta, model).criterion
    except (np.linalg.LinAlgError, RuntimeError):
        return np.inf


def _central_differences(function, x, h, index) -> tuple[np.ndarray, np.ndarray]:
    """Gradient and Hessian of ``function`` at ``x`` by central differences with steps
    ``h`` in the entries ``index`` (zero elsewhere): 1 + 2k + 2k(k − 1) evaluations, each
    one sparse factorization here (k is small)."""
    k = x.size
    grad, hess = np.zeros(k), np.zeros((k, k))
    f0 = function(x)
    for a in index:
        e = np.zeros(k)
        e[a] = h[a]
        fp, fm = function(x + e), function(x - e)
        grad[a] = (fp - fm) / (2 * h[a])
        hess[a, a] = (fp - 2 * f0 + fm) / h[a] ** 2
        for b in index[index < a]:
            f = np.zeros(k)
            f[b] = h[b]
            hess[a, b] = hess[b, a] = (
                function(x + e + f) - function(x + e - f)
                - function(x - e + f) + function(x - e - f)
            ) / (4 * h[a] * h[b])
    return grad, hess


def _derivatives(theta, model, free) -> tuple[np.ndarray, np.ndarray]:
    """Central differences of the criterion in the free entries of θ (those not on a
    bound): gradient and Hessian."""
    h = 1e-4 * np.maximum(1.0, np.abs(theta))
    return _central_differences(lambda t: _objective(t, model), theta, h,
                                np.flatnonzero(free))


def _polish(theta, model, mask, steps: int = 3):
    """Newton steps on the free entries from a derivative-free optimum (while they lower
    the criterion), then lme4's convergence check: the gradient scaled by the Hessian's
    Cholesky factor (or the gradient, where smaller) below 2e-3 (check.conv.grad)."""
    value = _objective(theta, model)
    for _ in range(steps + 1):
        free = ~(mask & (theta < 1e-6))
        grad, hess = _derivatives(theta, model, free)
        index = np.flatnonzero(free)
        try:
            chol = np.linalg.cholesky(hess[np.ix_(index, index)])
            scaled = scipy.linalg.solve_triangular(chol, grad[index], lower=True)
            step = scipy.linalg.cho_solve((chol, True), grad[index])
        except np.linalg.LinAlgError:
            scaled, step = grad[index], None
        measure = float(np.max(np.minimum(np.abs(scaled), np.abs(grad[index])), initial=0.0))
        if step is None or measure < 1e-6:
            break
        trial = theta.copy()
        trial[index] -= step
        trial = np.where(mask, np.maximum(trial, 0.0), trial)
        new = _objective(trial, model)
        if not new < value:
            break
        theta, value = trial, new
    return theta, grad, measure


def fit_sparse_lmm(design, reml: bool, max_iter: int, theta0, model=None) -> SparseLMMFit:
    """Fit an LMM with a sparse relatedness term (see the module docstring); the front
    door (:func:`glmmjax._lmer.sparse_lmm_result`) makes it an LMMResult. ``model``: the
    design's :class:`_SparseModel` (for another response: :func:`with_response`), built
    here when None."""
    from ..compiled.optimize import Status
    from ..lmm_shared import SINGULAR_TOL

    if model is None:
        model = _model(design, reml)
    structures = model.structures
    mask = diagonal_mask(structures)
    bounds = [(0.0, None) if m else (None, None) for m in mask]
    start = np.where(mask, np.maximum(np.asarray(theta0, float), 1e-3), theta0)
    # θ has a few entries and each evaluation is one sparse factorization: COBYQA
    # (quadratic models in a trust region with bounds, as lme4's bobyqa) took 43
    # evaluations on a two-term pedigree model where L-BFGS-B on central differences
    # took 215 and Powell 278 (forward differences were too noisy for a criterion of
    # 10⁴ and more).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            solution = scipy.optimize.minimize(
                _objective, start, args=(model,), method="COBYQA", bounds=bounds,
                options={"maxfev": 50 * max_iter, "final_tr_radius": 1e-9,
                         "initial_tr_radius": 0.2 * max(1.0, float(np.max(np.abs(start))))})
        except ValueError:  # scipy < 1.14 has no COBYQA
            solution = scipy.optimize.minimize(
                _objective, start, args=(model,), method="Powell", bounds=bounds,
                options={"xtol": 1e-9, "ftol": 1e-14, "maxiter": max_iter})
    theta_raw, grad, measure = _polish(np.asarray(solution.x, dtype=np.float64), model, mask)
    final = _evaluate(theta_raw, model, need_modes=True)
    theta = canonical_theta(theta_raw, structures)
    n, p = model.nobs, model.n_fixef
    sigma2 = final.r2 / (n - p) if reml else final.r2 / n
    L_x_inv = np.linalg.solve(np.tril(final.fixef_factor), np.eye(p))
    b = np.asarray(final.lam @ final.modes)
    effects, start_at = [], 0
    for term in design.terms:
        width = term.n_levels * term.size
        effects.append(b[start_at:start_at + width].reshape(term.n_levels, term.size))
        start_at += width
    converged = measure < 2e-3
    message = (Status.CONVERGED.describe() if converged
               else f"COBYQA stopped: {solution.message}")

    def effect_cov():
        return _conditional_covariances(final, design.terms, sigma2)

    return SparseLMMFit(
        theta=theta, beta=final.beta, beta_cov=sigma2 * L_x_inv.T @ L_x_inv,
        sigma=float(np.sqrt(sigma2)), effects=tuple(effects), conditional_covariances=effect_cov,
        criterion=final.criterion, converged=converged, message=message,
        grad_max=float(np.max(np.abs(grad), initial=0.0)), iterations=int(solution.nit),
        n_evaluations=int(solution.nfev),
        singular=bool(np.any(np.abs(theta[mask]) < SINGULAR_TOL)))


def _conditional_covariances(final: _Evaluation, terms, sigma2: float) -> list:
    """σ²·(Λ·M⁻¹·Λ')'s diagonal blocks per term, (m_t, S_t, S_t): by solves with M's
    factor in chunks of columns (no q × q matrix)."""
    lam = final.lam.tocsc()
    out, start = [], 0
    for term in terms:
        S, m = term.size, term.n_levels
        blocks = np.empty((m, S, S))
        chunk = max(1, 512 // S)  # q × 512 right-hand sides at a time
        for first in range(0, m, chunk):
            levels = np.arange(first, min(first + chunk, m))
            columns = start + (levels[:, None] * S + np.arange(S)).ravel()
            # (Λ M⁻¹ Λ')[:, cols] = Λ·M⁻¹·(Λ'[:, cols]); its rows cols hold the blocks.
            rhs = np.asarray(lam.T[:, columns].toarray())
            solved = lam[columns] @ final.lu.solve(rhs)
            blocks[levels] = solved.reshape(len(levels), S, len(levels), S)[
                np.arange(len(levels)), :, np.arange(len(levels)), :]
        out.append(sigma2 * blocks)
        start += m * S
    return out

