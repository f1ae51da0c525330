"""The LMM criterion, its gradient and the fit, evaluated with numpy and LAPACK on the host.

Same mathematics as the traceable version (:mod:`glmmjax._engines.compiled.cholesky`, :mod:`glmmjax._engines.compiled.lmm`),
which stays the one that ``jax.grad``/``jax.hessian``/``vmap`` work on (Satterthwaite and
Kenward–Roger df, ``fit_many``, the bootstrap, accelerators). A single float64 fit on
the CPU runs here instead: its cost is a handful of evaluations dominated by one dense
Cholesky and one inverse of the rest, which LAPACK does as fast as XLA, and nothing has
to be traced or compiled first (on InstEval, compiling the fit program took longer than
all of its evaluations). :func:`glmmjax._engines.compiled.optimize.minimize_host` runs the same BFGS
steps and stopping rules as the compiled fit; tests/test_host_lmm.py checks criterion,
gradient and fit against the JAX version.

Notation as in :mod:`glmmjax._engines.compiled.cholesky`: Ω(θ) = Λ'AΛ + J with A = [Z X y]'W[Z X y],
first term (block diagonal, m0 blocks of S0) and the dense "rest" (R×R).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg
import scipy.sparse

from ..._model.covariance import diagonal_mask, split_theta, theta_to_factors
from ..._model.structure import ReStructure, plain_structure
from ..blas import single_threaded_blas
from ..compiled.optimize import minimize_host
from ..lmm_shared import (
    CrossProducts,
    PLSSolution,
    _from_log_scale,
    _log_scale_slope,
    _to_log_scale,
    inverse_hessian_guess,
    random_effects,
)
from ..seam import BOUNDARY_TRY
from .products import host_cross_products, level_sums


@dataclasses.dataclass(frozen=True)
class HostLMM:
    """An LMM's cross-products and structure as numpy arrays (see ``LinearMixedModel``)."""

    structure: ReStructure
    products: CrossProducts
    nobs: float
    sum_log_weights: float
    n_fixef: int
    reml: bool



def _einsum(spec: str, *operands):
    """np.einsum, contracted pairwise through BLAS when an operand is large (a known
    relatedness term is one level of q effects: q×q blocks, where numpy's default
    single-loop contraction of three operands costs q⁴); small blocks (every S×S block
    of lme4-style terms, however many levels) keep the plain call, whose path search
    would cost more than the product."""
    large = any(np.ndim(o) >= 2 and min(np.shape(o)[-2:]) > 32 for o in operands)
    return np.einsum(spec, *operands, optimize="greedy" if large else False)

def host_model(structure: ReStructure, weights, X, y, reml: bool) -> HostLMM:
    """The model for float64 data: cross-products by numpy (``host.products``)."""
    weights = np.asarray(weights, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    dense = np.concatenate([X, np.asarray(y, dtype=np.float64)[:, None]], axis=1)
    positive = weights > 0
    structure = plain_structure(structure)
    return HostLMM(structure, host_cross_products(structure, weights, dense),
                   float(np.sum(positive)), float(np.sum(np.log(weights[positive]))),
                   X.shape[1], reml)


def factors_of(theta, covariances) -> list:
    """Λ_t per term from θ, as numpy arrays."""
    return theta_to_factors(theta, covariances, np)


def _rest_scale(s: ReStructure, factors):
    """Λ_r's diagonal as a vector when every later term is scalar (else None): then
    products with Λ_r are column scalings, one pass over the rest instead of a reshape
    and matmul per term."""
    if any(size != 1 for size in s.sizes[1:]):
        return None
    scale = np.ones(s.rest_size)
    for t in range(1, s.n_terms):
        scale[s.offsets[t] : s.offsets[t] + s.n_levels[t]] = factors[t][0, 0]
    return scale


def _rest_times_lambda(s: ReStructure, factors, matrix):
    """M·Λ_r: the random-effects columns of the rest (R×R) times their factors."""
    scale = _rest_scale(s, factors)
    if scale is not None:
        return matrix * scale
    out = matrix.copy()
    for t in range(1, s.n_terms):
        start, size, m = s.offsets[t], s.sizes[t], s.n_levels[t]
        block = matrix[:, start : start + m * size].reshape(-1, m, size)
        out[:, start : start + m * size] = (block @ factors[t]).reshape(-1, m * size)
    return out


def _lambda_rest_lambda(s: ReStructure, factors, matrix):
    """Λ_r'·A_rr·Λ_r (A symmetric) in one new R×R array: Λ_r' is applied in place, a
    block of levels at a time (at R = 2,000 each R×R array is 32 MB)."""
    scale = _rest_scale(s, factors)
    out = _rest_times_lambda(s, factors, matrix)
    if scale is not None:
        out *= scale[:, None]
        return out
    for t in range(1, s.n_terms):
        start, size, m = s.offsets[t], s.sizes[t], s.n_levels[t]
        step = max(1, _ROW_BLOCK // size)
        for lo in range(0, m, step):
            rows = slice(start + lo * size, start + min(lo + step, m) * size)
            block = out[rows].reshape(-1, size, out.shape[1])
            out[rows] = (factors[t].T @ block).reshape(-1, out.shape[1])
    return out


def _coupling_rows_of(s: ReStructure, products: CrossProducts, factors):
    """Λ_r'·A_r0 in ``entry_rest`` order, before the first term's factor: (E, S0)."""
    rows = [_einsum("ba,ibc->iac", factors[t], products.coupling[t - 1]).reshape(
        -1, s.sizes[0]) for t in range(1, s.n_terms)]
    rows.append(products.dense_first.reshape(-1, s.sizes[0]))
    return np.concatenate(rows, axis=0)


@dataclasses.dataclass
class _Factor:
    first: np.ndarray  # (m0, S0, S0) lower factors of the first term's blocks
    first_inv: np.ndarray  # their inverses
    coupling_rows: np.ndarray  # (E, S0) rows of L_r0
    rest: np.ndarray  # (R, R) lower factor of the Schur complement
    half_rows: np.ndarray  # Λ_r'·A_r0, (E, S0), for the gradient


def _factorize(theta, model: HostLMM) -> _Factor | None:
    """The blocked Cholesky factor of Ω(θ); None where Ω is not positive definite."""
    s, products = model.structure, model.products
    factors = factors_of(theta, s.structures)
    if not all(np.all(np.isfinite(f)) for f in factors):
        return None  # a structure with no factor there (toep or gau near singular)
    lam0 = factors[0]
    S0 = s.sizes[0]
    # Λ0'·A_j·Λ0 per level as broadcast matmuls: einsum's single loop over three operands
    # costs S⁴ per level (0.9 ms against 11 µs for 30 levels of S = 9).
    diag_blocks = lam0.T @ products.first @ lam0 + np.eye(S0)
    half_rows = _coupling_rows_of(s, products, factors)
    rest = _lambda_rest_lambda(s, factors, products.rest)
    rest[np.arange(s.n_re_rest), np.arange(s.n_re_rest)] += 1.0
    try:
        first = np.linalg.cholesky(diag_blocks)
    except np.linalg.LinAlgError:
        return None
    levels = s.entry_first
    if S0 == 1:
        first_inv = 1.0 / first
        coupling_rows = (half_rows * lam0[0, 0]) * first_inv[levels, 0]
    else:
        first_inv = np.linalg.inv(first)
        coupling_rows = _einsum("eab,eb->ea", first_inv[levels], half_rows @ lam0)
    if rest.shape[0] == 0:  # no rest (a GLMM's Laplace stage with one term): nothing to factor
        return _Factor(first, first_inv, coupling_rows, rest, half_rows)
    _subtract_coupling_gram(s, coupling_rows, rest)  # the Schur complement, in place
    try:
        # ``rest`` is symmetric: in whichever of its two orders is Fortran's, LAPACK
        # factors it where it lies (a C-ordered array would be copied first).
        rest_factor = scipy.linalg.cholesky(rest if rest.flags.f_contiguous else rest.T,
                                            lower=True, overwrite_a=True,
                                            check_finite=False)
    except np.linalg.LinAlgError:
        return None
    return _Factor(first, first_inv, coupling_rows, rest_factor, half_rows)


def _diagonal_pairs(s):
    """Positions of the pairs (e, e) in the update lists (their products count once);
    kept in the (plain) structure's cache: 2 M comparisons on InstEval."""
    if "diagonal_pairs" not in s.cache:
        s.cache["diagonal_pairs"] = np.flatnonzero(s.update_a == s.update_b)
    return s.cache["diagonal_pairs"]


def _subtract_coupling_gram(s: ReStructure, coupling_rows, out) -> None:
    """``out`` −= L_r0·L_r0' (R×R), from the rows of L_r0, a block of rows at a time:
    the product is never whole (at R = 2,000 a sparse R×R product and its dense copy
    were 80 MB on top of ``out``)."""
    R = s.rest_size
    S0 = coupling_rows.shape[1]
    if s.dense_update:
        lower = np.zeros((R, s.n_levels[0] * S0))
        lower[s.entry_rest[:, None], s.entry_first[:, None] * S0 + np.arange(S0)] = coupling_rows
        for lo in range(0, R, _ROW_BLOCK):
            out[lo:lo + _ROW_BLOCK] -= lower[lo:lo + _ROW_BLOCK] @ lower.T
        return
    # Sparse times sparse (scipy's SpGEMM), about 2.5x faster than gathering the pairs'
    # products and summing them into the R×R bins on InstEval.
    columns = (s.entry_first[:, None] * S0 + np.arange(S0)).ravel()
    rows = np.repeat(s.entry_rest, S0)
    lower = scipy.sparse.csr_matrix((coupling_rows.ravel(), (rows, columns)),
                                    shape=(R, s.n_levels[0] * S0))
    upper = lower.T.tocsr()
    for lo in range(0, R, _ROW_BLOCK):
        out[lo:lo + _ROW_BLOCK] -= (lower[lo:lo + _ROW_BLOCK] @ upper).toarray()


def _solve_lower(s: ReStructure, factor: _Factor, rhs_first, rhs_rest):
    """L·x = b, split as (m0, S0) and (R,)."""
    x_first = (factor.first_inv @ rhs_first[:, :, None])[:, :, 0]
    if s.rest_size == 0:
        return x_first, rhs_rest
    contrib = np.sum(factor.coupling_rows * x_first[s.entry_first], axis=1)
    x_rest = scipy.linalg.solve_triangular(
        factor.rest, rhs_rest - np.bincount(s.entry_rest, weights=contrib, minlength=s.rest_size),
        lower=True, check_finite=False)
    return x_first, x_rest


def _solve_upper(s: ReStructure, factor: _Factor, rhs_first, rhs_rest):
    """L'·x = b, split as (m0, S0) and (R,)."""
    if s.rest_size == 0:
        return (rhs_first[:, None, :] @ factor.first_inv)[:, 0, :], rhs_rest
    x_rest = scipy.linalg.solve_triangular(factor.rest, rhs_rest, lower=True, trans="T",
                                           check_finite=False)
    contrib = factor.coupling_rows * x_rest[s.entry_rest][:, None]
    reduced = rhs_first - level_sums(s, "entry_first", contrib, s.entry_first, s.n_levels[0])
    x_first = (reduced[:, None, :] @ factor.first_inv)[:, 0, :]
    return x_first, x_rest


def _selected_inverse(s: ReStructure, factor: _Factor, n_keep: int, overwrite: bool = False):
    """P⁻¹ on the pattern of Ω (``glmmjax._engines.compiled.cholesky.selected_inverse``).

    ``overwrite``: the rest's factor is no longer needed, and Σ_rr is formed in its place.
    Memory, not time, is why: at R = 2,000 every R×R array is 32 MB, and the pairs of a
    crossed design number millions, so they are visited in chunks."""
    R = s.rest_size
    S0, m0 = s.sizes[0], s.n_levels[0]
    if n_keep > 0:
        sigma_rr = factor.rest if overwrite else factor.rest.copy(order="K")
        # Rows and columns past n_keep become an identity block (its own inverse, zeroed
        # after), so that LAPACK's dpotri inverts (L·L')⁻¹ in place on the whole array
        # (n³/3 + n³/3 flops); a C-ordered lower factor is an F-ordered upper one.
        sigma_rr[n_keep:, :] = 0.0
        sigma_rr[:, n_keep:] = 0.0
        sigma_rr[np.arange(n_keep, R), np.arange(n_keep, R)] = 1.0
        fortran = sigma_rr.flags.f_contiguous
        inverse, info = scipy.linalg.lapack.dpotri(sigma_rr if fortran else sigma_rr.T,
                                                   lower=int(fortran), overwrite_c=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"LAPACK dpotri failed (info {info})")
        if not np.shares_memory(inverse, sigma_rr):  # LAPACK worked on a copy
            sigma_rr[...] = inverse if fortran else inverse.T
        del inverse
        sigma_rr[n_keep:, n_keep:] = 0.0
        # The inverse is in the lower triangle; the upper is copied from it by row blocks
        # (``+= .T`` would allocate a third R×R array).
        for lo in range(0, n_keep, _ROW_BLOCK):
            hi = min(lo + _ROW_BLOCK, n_keep)
            block = sigma_rr[lo:hi, lo:hi]
            upper = np.triu_indices(hi - lo, 1)
            block[upper] = block.T[upper]
            sigma_rr[lo:hi, hi:n_keep] = sigma_rr[hi:n_keep, lo:hi].T
    else:
        sigma_rr = np.zeros((R, R))
    inside = (s.entry_rest < n_keep)[:, None]
    C = np.where(inside, _einsum("ea,eab->eb", factor.coupling_rows,
                                   factor.first_inv[s.entry_first]), 0.0)
    if s.dense_update:
        column = s.entry_first[:, None] * S0 + np.arange(S0)
        dense = np.zeros((R, m0 * S0))
        dense[s.entry_rest[:, None], column] = C
        sigma_r0 = -(sigma_rr @ dense)[s.entry_rest[:, None], column]
    else:
        # Σ_rr at each pair (r_a, r_b), both ways round (pairs are listed once). Σ_rr is
        # symmetric, so its memory order does not change the entry a flat index reads.
        flat_sigma = sigma_rr.reshape(-1, order="A")
        diagonal = _diagonal_pairs(s)
        E = s.entry_rest.shape[0]
        sigma_r0 = np.zeros((E, S0))
        n_pairs = s.update_flat.shape[0]
        for lo in range(0, n_pairs, _PAIR_CHUNK):
            hi = min(lo + _PAIR_CHUNK, n_pairs)
            weights = flat_sigma[s.update_flat[lo:hi]]
            on_diagonal = diagonal[(diagonal >= lo) & (diagonal < hi)] - lo
            weights[on_diagonal] *= 0.5
            a, b = s.update_a[lo:hi], s.update_b[lo:hi]
            for k in range(S0):
                column = np.ascontiguousarray(C[:, k])
                sigma_r0[:, k] -= (np.bincount(a, weights=weights * column[b], minlength=E)
                                   + np.bincount(b, weights=weights * column[a], minlength=E))
    sigma_00 = np.swapaxes(factor.first_inv, 1, 2) @ factor.first_inv - level_sums(
        s, "entry_first", C[:, :, None] * sigma_r0[:, None, :], s.entry_first, m0)
    return sigma_00, sigma_r0, sigma_rr


# Chunk sizes that bound the temporaries of the selected inverse (see its docstring).
_ROW_BLOCK = 256
_PAIR_CHUNK = 1 << 18


def _gradient(s: ReStructure, products: CrossProducts, theta, factor: _Factor, w_00, w_r0,
              w_rr):
    """∂/∂θ of ⟨W, Ω(θ)⟩ at fixed W (blocks as in ``compiled.lmm._solution_and_contraction``).

    With Λ block diagonal and A, W symmetric, ∂⟨W, Λ'AΛ⟩/∂Λ = 2·A·Λ·W; the derivative
    in a term's factor Λ_t sums that matrix's diagonal blocks over the term's levels,
    and only those blocks are formed (O(R²·S) for the dense rest).
    """
    factors = factors_of(theta, s.structures)
    lam0 = factors[0]
    S0, R = s.sizes[0], s.rest_size
    # First term: its diagonal blocks and its coupling rows (w_r0 counts both triangles).
    grads = [2.0 * np.sum(products.first @ lam0 @ w_00, axis=0)
             + _einsum("ea,eb->ab", factor.half_rows, w_r0)]
    start_row = 0
    for t in range(1, s.n_terms):
        size, m = s.sizes[t], s.n_levels[t]
        coupling = products.coupling[t - 1]  # (pairs, S_t, S0)
        n_rows = coupling.shape[0] * size
        w_pairs = w_r0[start_row : start_row + n_rows].reshape(-1, size, S0)
        start_row += n_rows
        g = _einsum("ibc,cd,iad->ba", coupling, lam0, w_pairs)
        # The term's rows of A_rr·Λ_r, formed a block of levels at a time (never the
        # whole R×R product); W is symmetric: its columns of the term are read as rows.
        step = max(1, _ROW_BLOCK // size)
        for first_level in range(0, m, step):
            lo = s.offsets[t] + first_level * size
            hi = s.offsets[t] + min(first_level + step, m) * size
            rows = _rest_times_lambda(s, factors, products.rest[lo:hi]).reshape(-1, size, R)
            g += 2.0 * _einsum("lar,lbr->ab", rows, w_rr[lo:hi].reshape(-1, size, R))
        grads.append(g)
    # ∂/∂θ_t of ⟨G_t, Λ_t(θ_t)⟩: the structure's vector-Jacobian product.
    return np.concatenate([cov.pullback(part, g) for cov, part, g in
                           zip(s.structures, split_theta(theta, s.structures), grads)])


def evaluate(theta, model: HostLMM, gradient: bool = True, r2_weight: float | None = None):
    """(criterion, ∂criterion/∂θ, :class:`PLSSolution` of numpy arrays) at θ; an
    infinite criterion (and no solution) where Ω(θ) is not positive definite. With
    ``gradient=False`` the gradient is None (no selected inverse is formed).

    ``r2_weight`` = c: the gradient returned is that of log|P| + c·r²(θ) instead of the
    profiled criterion's (whose c is (n − p)/r² or n/r² at θ): with c = 1/σ², the
    (RE)ML deviance at a fixed σ (Satterthwaite's, :func:`varpar_derivatives`)."""
    theta = np.asarray(theta, dtype=np.float64)
    s = model.structure
    factor = _factorize(theta, model)
    if factor is None or not np.all(np.isfinite(factor.rest)):
        return np.inf, np.full(theta.shape, np.nan), None
    R, p = s.rest_size, model.n_fixef
    diag = np.diagonal(factor.rest)
    logdet_z = (2.0 * np.sum(np.log(np.diagonal(factor.first, axis1=1, axis2=2)))
                + 2.0 * np.sum(np.log(diag[: R - p - 1])))
    logdet_x = 2.0 * np.sum(np.log(diag[R - p - 1 : R - 1]))
    r2 = diag[R - 1] ** 2
    n = model.nobs
    if model.reml:
        dof = n - p
        criterion = logdet_z + logdet_x + dof * (1.0 + np.log(2.0 * np.pi * r2 / dof))
        n_keep, scale = R - 1, dof
    else:
        criterion = logdet_z + n * (1.0 + np.log(2.0 * np.pi * r2 / n))
        n_keep, scale = R - 1 - p, n
    criterion -= model.sum_log_weights
    rhs_rest = np.zeros(R)
    rhs_rest[R - 1] = -factor.rest[R - 1, R - 1]
    u_first, x_rest = _solve_upper(s, factor, np.zeros((s.n_levels[0], s.sizes[0])), rhs_rest)
    solution = PLSSolution(
        beta=x_rest[R - 1 - p : R - 1], u_first=u_first, u_rest=x_rest[: R - 1 - p], r2=r2,
        logdet_z=logdet_z, logdet_x=logdet_x, criterion=criterion,
        fixef_factor=factor.rest[R - 1 - p : R - 1, R - 1 - p : R - 1].copy())
    if not gradient:
        return criterion, None, solution
    sigma_00, sigma_r0, sigma_rr = _selected_inverse(s, factor, n_keep, overwrite=True)
    v_rest = np.concatenate([solution.u_rest, solution.beta, [-1.0]])
    c = scale / r2 if r2_weight is None else r2_weight
    w_00 = sigma_00 + c * u_first[:, :, None] * u_first[:, None, :]
    w_r0 = 2.0 * (sigma_r0 + c * v_rest[s.entry_rest][:, None] * u_first[s.entry_first])
    w_rr = sigma_rr  # Σ_rr + c·v·v', in place by row blocks (no R×R temporaries)
    for lo in range(0, R, _ROW_BLOCK):
        w_rr[lo : lo + _ROW_BLOCK] += c * np.outer(v_rest[lo : lo + _ROW_BLOCK], v_rest)
    return criterion, _gradient(s, model.products, theta, factor, w_00, w_r0, w_rr), solution


# -- the fit ------------------------------------------------------------------------------


def central_differences(function, x, relative_step: float = 1e-4):
    """∂function/∂x by central differences (steps relative_step·max(1, |x_j|)), with the
    derivative in x_j on the result's last axis. Applied to exact gradients it gives
    Hessians good to about 1e-7 relative (truncation O(step²), rounding ~1e-16/step)."""
    columns = []
    for j in range(x.shape[0]):
        step = relative_step * max(1.0, abs(x[j]))
        up, down = x.copy(), x.copy()
        up[j] += step
        down[j] -= step
        columns.append((function(up) - function(down)) / (2.0 * step))
    return np.stack(columns, axis=-1)


def forward_differences(function, x, value, relative_step: float):
    """∂function/∂x by forward differences from ``value`` = function(x) (steps
    relative_step·max(1, |x_j|)), the derivative in x_j on the result's last axis: half
    the evaluations of :func:`central_differences`, for starting metrics of searches,
    not for standard errors."""
    columns = []
    for j in range(x.shape[0]):
        step = relative_step * max(1.0, abs(x[j]))
        moved = x.copy()
        moved[j] += step
        columns.append((function(moved) - value) / step)
    return np.stack(columns, axis=-1)


def fit(model: HostLMM, theta0, gtol: float = 1e-8, loose_gtol: float = 1e-3,
        max_iter: int = 500):
    """Minimize the criterion over θ as ``compiled.lmm._fit_program`` does (same coordinates,
    metric, steps and stopping rules), then try near-zero diagonals at exactly zero.

    Returns (solution with ``x``/``grad`` in θ, θ, :class:`PLSSolution`, [b_t]) in numpy.
    """
    s = model.structure
    mask = diagonal_mask(s.structures)

    def value_and_grad(phi, carry):
        f, g, solution = evaluate(_from_log_scale(phi, mask, np), model)
        return (f, g * _log_scale_slope(phi, mask, np)), (carry if solution is None else solution)

    theta0 = np.asarray(theta0, dtype=np.float64)
    with single_threaded_blas():
        solution, theta, pls = _minimize(model, value_and_grad, theta0, mask, gtol, loose_gtol,
                                         max_iter)
    return solution, theta, pls, random_effects(theta, s, pls.u_first, pls.u_rest, np)


def _minimize(model: HostLMM, value_and_grad, theta0, mask, gtol, loose_gtol, max_iter=500):
    s = model.structure
    solution = minimize_host(
        value_and_grad, _to_log_scale(theta0, mask, np), gtol=gtol, loose_gtol=loose_gtol,
        max_iterations=max_iter,
        inverse_hessian=inverse_hessian_guess(s), xtol=1e-7, decrease_tol=1e-14,
        expensive=True, carry=())
    pls = solution.carry
    if not isinstance(pls, PLSSolution):  # not even the start was finite
        raise FloatingPointError("the LMM criterion is not finite at the starting θ")
    theta = _from_log_scale(solution.x, mask, np)
    solution = solution._replace(x=theta, grad=solution.grad / _log_scale_slope(solution.x, mask, np),
                                 carry=None)
    trial = np.where(mask & (np.abs(theta) < BOUNDARY_TRY), 0.0, theta)
    if np.any(trial != theta):
        f_trial, _, pls_trial = evaluate(trial, model, gradient=False)
        if np.isfinite(f_trial) and f_trial <= solution.value + 1e-10 * (1 + abs(solution.value)):
            theta, pls = trial, pls_trial
    return solution, theta, pls


def conditional_covariances(theta, model: HostLMM) -> list:
    """Λ_t·(diagonal blocks of (L_Z·L_Z')⁻¹)·Λ_t' per term, (m_t, S_t, S_t) each, relative
    to σ² (numpy twin of ``compiled.cholesky.inverse_diagonal_blocks`` and ``_lmer``'s program).

    With Y = L_rr⁻¹·L_r0 (dense: formed once per fit), block j of the first term is
    L00_j⁻ᵀ·(I + Y_j'Y_j)·L00_j⁻¹ and the rest is L_rr⁻ᵀ·L_rr⁻¹.
    """
    theta = np.asarray(theta, dtype=np.float64)
    s = model.structure
    factor = _factorize(theta, model)
    if factor is None:
        raise np.linalg.LinAlgError("Ω(θ) is not positive definite at the fitted θ")
    R_re, S0, m0 = s.n_re_rest, s.sizes[0], s.n_levels[0]
    first_inv = factor.first_inv
    blocks = [_einsum("jba,jbc->jac", first_inv, first_inv)]
    if R_re:
        keep = s.entry_rest < R_re
        coupling = np.zeros((R_re, m0 * S0))
        columns = s.entry_first[keep][:, None] * S0 + np.arange(S0)
        coupling[s.entry_rest[keep][:, None], columns] = factor.coupling_rows[keep]
        rest_factor = factor.rest[:R_re, :R_re]
        Y = scipy.linalg.solve_triangular(rest_factor, coupling, lower=True,
                                          check_finite=False).reshape(R_re, m0, S0)
        YL = _einsum("rjb,jbc->jrc", Y, first_inv)
        blocks[0] = blocks[0] + _einsum("jra,jrc->jac", YL, YL)
        rest_inv = scipy.linalg.solve_triangular(rest_factor, np.eye(R_re), lower=True,
                                                 check_finite=False)
        for t in range(1, s.n_terms):
            start, size, m = s.offsets[t], s.sizes[t], s.n_levels[t]
            cols = rest_inv[:, start : start + m * size].reshape(R_re, m, size)
            blocks.append(_einsum("rla,rlb->lab", cols, cols))
    factors = factors_of(theta, s.structures)
    return [lam @ block @ lam.T for lam, block in zip(factors, blocks)]


def varpar_derivatives(theta, sigma, model: HostLMM):
    """Satterthwaite's pieces on the host (as ``_inference.ddf._varpar_derivatives``): the Hessian
    of the (RE)ML deviance d(ψ) in ψ = (θ, σ) with σ not profiled out, Var(β̂) =
    σ²·(L_X L_X')⁻¹ and its Jacobian in ψ, (p, p, k).

    d's gradient is exact (θ: :func:`evaluate` with ``r2_weight`` = 1/σ²; σ: −2r²/σ³ +
    2·n_eff/σ); its Hessian and Var(β̂)'s Jacobian come from central differences of
    both, one evaluation per point; lmerTest differentiates d itself twice numerically."""
    psi = np.append(np.asarray(theta, dtype=np.float64), float(sigma))
    k, p = psi.shape[0], model.n_fixef
    n_eff = model.nobs - (p if model.reml else 0)

    def gradient_and_vcov(point):
        """(∇_ψ d, Var(β̂)) at ψ, flat: both from one evaluation."""
        theta_, sigma_ = point[:-1], point[-1]
        _, grad, solution = evaluate(theta_, model, r2_weight=1.0 / sigma_**2)
        if solution is None:
            raise np.linalg.LinAlgError("Ω(θ) is not positive definite near the estimate")
        inverse = scipy.linalg.solve_triangular(np.tril(solution.fixef_factor), np.eye(p),
                                                lower=True)
        return np.concatenate([grad, [-2.0 * solution.r2 / sigma_**3 + 2.0 * n_eff / sigma_],
                               sigma_**2 * (inverse.T @ inverse).ravel()])

    with single_threaded_blas():
        derivatives = central_differences(gradient_and_vcov, psi)
        vcov = gradient_and_vcov(psi)[k:].reshape(p, p)
    hessian = derivatives[:k]
    return 0.5 * (hessian + hessian.T), derivatives[k:].reshape(p, p, k), vcov
