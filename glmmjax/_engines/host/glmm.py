"""The GLMM Laplace fit on the host: numpy/LAPACK evaluations, exact gradients, no compile.

The same objective as the compiled pipeline (:mod:`glmmjax._engines.compiled.laplace`,
:mod:`glmmjax._engines.compiled.glmm`): g(v) = −2 Σ ℓ(η) + |u|², with v = u (Laplace) or v = (u, β)
(lme4's nAGQ=0, the first stage), and

    L = g(v̂) + log|M|,   M = I + Λ'Z'WZΛ,   W = −ℓ''(η) at the mode v̂.

Gradient (exact; the mode's derivative by the implicit function theorem, not by
unrolling Newton). With Ω = ∇²g(v)/2 (M, plus β's rows for nAGQ=0), h_i = z_i'Λ M⁻¹ Λ'z_i
(from the selected inverse of M, :func:`glmmjax._engines.host.lmm._selected_inverse`), W' =
dW/dη, D' = −2ℓ', D'' = 2W:

    a = Ω⁻¹·[Λ'Z'; X'](h∘W')/2     (the adjoint of log|M| through v̂; X' only for nAGQ=0)
    t = ZΛa_u (+ X·a_β),   q = D' + h∘W' − D''∘t
    ∂L/∂β = X'q                    (Laplace: β outside)
    ∂L/∂θ_k = Σ q_i (ZΛ_k û)_i − Σ D'_i (ZΛ_k a_u)_i + ∂⟨M⁻¹, Λ'Z'WZΛ⟩/∂θ_k

(Λ_k = ∂Λ/∂θ_k; the last term is the LMM's contraction, ``host.lmm._gradient``).
tests/test_host_glmm.py checks values and gradients against the JAX objective.

With a dispersion parameter φ estimated (ψ = log φ an outer parameter, as in the
compiled pipeline), ψ enters g directly and W = −ℓ''(η; φ):

    ∂L/∂ψ = Σ [−2 ∂ℓ/∂ψ + h ∂W/∂ψ + 2 t ∂ℓ'/∂ψ]

(the last term is the mode's response, ∂v̂/∂ψ = Ω⁻¹[Λ'Z'; X']∂ℓ'/∂ψ, seen through
log|M|).

Every built-in family and link is covered: the per-row terms ℓ, ℓ', W, W' and their
dispersion derivatives are the closed forms of :mod:`glmmjax._families.math` (the same
text the compiled engine runs with ``jax.numpy``). User-defined families and links,
quadrature and accelerators use the compiled pipeline (:mod:`glmmjax._engines.seam` decides).
Standard errors come from central differences of the exact gradient (``fit``), which
agree with the pipeline's autodiff Hessian to 1e-6 relative in the tests
(``glmer(engine="jax")`` gives the autodiff one). Starting values differ from the
pipeline's (:func:`moment_start`; Student-t with an identity link: the Gaussian LMM's
estimates, :func:`_lmm_start`, from which the nAGQ=0 stage is skipped); the optimum
does not.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg

from ..._families import math as fm
from ..._families.shapes import shape_parameters, shape_starts, shape_values
from ..._model.cov_structures import factor_derivatives, search_metric, term_structures
from ..._model.covariance import (
    diagonal_mask,
    initial_theta,
    split_theta,
    start_from_sds,
    unit_scaled_mask,
)
from ..._model.structure import ReStructure, build_structure, plain_structure, split
from ..blas import single_threaded_blas
from ..compiled.optimize import minimize_host
from ..lmm_shared import random_effects, term_values
from ..seam import BOUNDARY_TRY, GLMMFit, opt_summary
from . import lmm
from .products import host_cross_products, term_matrices

MAX_NEWTON = 60
NEWTON_TOL = 1e-10  # as compiled.pirls
_FIRST_STEP = 0.5  # as compiled.glmm's stage 1
# The nAGQ=0 stage only starts and preconditions the Laplace stage, which refines to
# ``gtol``: it stops once max|∇| <= 0.1 (deviance per unit of the log-scale parameters).
# Run to 1e-3 it spends its last evaluations creeping along flat ridges (Matérn's range
# and ν: 29 evaluations instead of 20 on the spatial Poisson reference before its search
# metric, and the Laplace stage then needs 29 instead of 10); the optima are unchanged
# (tests/test_covstruct.py, tests/test_glmm_reference.py).
START_GTOL = 0.1


def applies(family) -> bool:
    """Whether this engine has the family's closed forms (every built-in family and
    link; not user-defined ones)."""
    return fm.supported(family)


def estimates_dispersion(family) -> bool:
    """Whether the fit has log φ among its outer parameters (as the compiled pipeline)."""
    return bool(family.has_dispersion and family.dispersion_method != "fixed")


def n_dispersion_parameters(family) -> int:
    """Outer parameters after β: log φ where it is estimated, and the unconstrained
    parameter of a shape estimated with it (``family.n_shape``: Student-t's log ν,
    Tweedie's logit(p − 1))."""
    return int(estimates_dispersion(family)) + getattr(family, "n_shape", 0)


@dataclasses.dataclass(frozen=True)
class HostGLMM:
    """One GLMM's data on the host, for one stage: ``inner`` dense columns (X for
    nAGQ=0, none for Laplace) ride in the inner problem."""

    structure: ReStructure  # built with n_dense = number of inner dense columns
    X: np.ndarray
    inner: np.ndarray  # (n, k) columns whose coefficients are inner variables
    y: np.ndarray
    weights: np.ndarray
    offset: np.ndarray
    family: object
    constant: float  # Σ(ℓ − value): the part of the log-likelihood free of η and φ

    @property
    def n_dispersion(self) -> int:
        return n_dispersion_parameters(self.family)

    def dispersion(self, log_dispersion):
        """φ on its natural scale: exp(ψ), the family's fixed value, or None; with a
        shape parameter estimated too (Student-t's ν, Tweedie's power), the array
        (φ, shape), the shape from its unconstrained outer parameter
        (``family.shape_value``: ν = e^κ, p = 1 + logistic(ξ))."""
        if log_dispersion.shape[0] > 1:
            return np.array([np.exp(log_dispersion[0]),
                             *shape_values(self.family, log_dispersion[1:])])
        if log_dispersion.shape[0]:
            return float(np.exp(log_dispersion[0]))
        return getattr(self.family, "theta", None)


def log_likelihood_constant(family, y, weights) -> float:
    """:func:`glmmjax._families.math.loglik_constant` as a float."""
    return float(fm.loglik_constant(family, np, y, weights))


def row_terms(model: HostGLMM, eta, dispersion, *, third=False, dispersion_derivatives=False):
    """The family's per-row terms at η (:func:`glmmjax._families.math.row_terms`)."""
    return fm.row_terms(model.family, np, model.y, eta, model.weights, dispersion, third=third,
                        dispersion_derivatives=dispersion_derivatives)


# -- ZΛ products --------------------------------------------------------------------------


# Z_t and Z_t' are sparse matrices built once per structure (``products.term_matrices``):
# one sparse product per term instead of a gather and a segment sum per column.


def z_lambda_times(factors, s: ReStructure, u_terms):
    """ZΛu (n,) from u per term."""
    out = np.zeros(s.refs[0].shape[0])
    for t in range(s.n_terms):
        out += term_matrices(s, t)[0] @ (u_terms[t] @ factors[t].T).reshape(-1)
    return out


def _z_transpose_times(s: ReStructure, t: int, r):
    """Z_t'r per level, (m_t, S_t)."""
    return (term_matrices(s, t)[1] @ r).reshape(s.n_levels[t], s.sizes[t])


def lambda_z_transpose_times(factors, s: ReStructure, r):
    """Λ'Z'r per term, (m_t, S_t) each."""
    return [_z_transpose_times(s, t, r) @ factors[t] for t in range(s.n_terms)]


def _flat(parts_first, parts_rest_terms, beta_part=None):
    pieces = [parts_first.reshape(-1)] + [p.reshape(-1) for p in parts_rest_terms]
    if beta_part is not None:
        pieces.append(beta_part)
    return np.concatenate(pieces)


def _weighted_term_outer(s: ReStructure, r, x_terms):
    """Per term, Σ_i r_i·z_it ⊗ x_t[l_it] (S_t × S_t): Σ_i r_i (ZΛ_k x)_i for every entry
    (row, column) of Λ_t."""
    return [_z_transpose_times(s, t, r).T @ x_terms[t] for t in range(s.n_terms)]


# -- factor, Newton, value ----------------------------------------------------------------


def _factor(theta, model: HostGLMM, w):
    products = host_cross_products(model.structure, w, model.inner, reuse=True)
    holder = lmm.HostLMM(model.structure, products, 0.0, 0.0, 0, False)
    return lmm._factorize(theta, holder), products


def _solve(s: ReStructure, factor, rhs):
    """Ω·x = rhs for a flat rhs laid out as the inner variable."""
    q0 = s.n_levels[0] * s.sizes[0]
    y_first, y_rest = lmm._solve_lower(s, factor, rhs[:q0].reshape(-1, s.sizes[0]), rhs[q0:])
    x_first, x_rest = lmm._solve_upper(s, factor, y_first, y_rest)
    return np.concatenate([x_first.reshape(-1), x_rest])


class _Point:
    """η and the likelihood terms at (θ, β, dispersion, v); ``third`` and
    ``dispersion_derivatives`` as :func:`row_terms` (``terms`` keeps them)."""

    def __init__(self, theta, beta, dispersion, v, model: HostGLMM, *, third=False,
                 dispersion_derivatives=False):
        s = model.structure
        self.dispersion = dispersion
        self.factors = lmm.factors_of(theta, s.structures)
        u_first, u_rest, beta_in = split(v, s)
        self.u_terms = term_values(s, u_first, u_rest)
        eta = model.offset + z_lambda_times(self.factors, s, self.u_terms)
        if model.X.shape[1]:
            eta = eta + model.X @ beta
        if beta_in.shape[0]:
            eta = eta + model.inner @ beta_in
        self.eta = eta
        terms = row_terms(model, eta, dispersion, third=third,
                          dispersion_derivatives=dispersion_derivatives)
        self.terms = terms
        self.l1, self.w = terms.d1, terms.w
        penalty = sum(float(np.sum(u**2)) for u in self.u_terms)
        self.g = -2.0 * (float(np.sum(terms.value)) + model.constant) + penalty

    def half_gradient(self, v, model: HostGLMM):
        """∇g/2 = [u − Λ'Z'ℓ'; −X_in'ℓ']."""
        s = model.structure
        parts = lambda_z_transpose_times(self.factors, s, self.l1)
        grad = v[: v.shape[0] - model.inner.shape[1]] - _flat(parts[0], parts[1:])
        return np.concatenate([grad, -(model.inner.T @ self.l1)])


def conditional_mode(theta, beta, dispersion, model: HostGLMM, v0):
    """v̂ by Newton with step halving from ``v0`` (as :func:`glmmjax._engines.compiled.pirls._newton`),
    and whether it converged."""
    s = model.structure
    v = np.asarray(v0, dtype=np.float64)
    point = _Point(theta, beta, dispersion, v, model)
    value = point.g
    if not np.isfinite(value):
        return v, False
    for _ in range(MAX_NEWTON):
        grad = point.half_gradient(v, model)
        # Exact Newton wherever Ω is positive definite, also for log-likelihoods that
        # are not concave in η (NB1 at outlying counts has W < 0 on some rows): with W
        # floored there, Newton converges only linearly and can stop short of the mode,
        # which makes L depend on the start. Floored W (as compiled.pirls) where Ω is not
        # positive definite.
        factor = _factor(theta, model, point.w)[0] if np.any(point.w < 0) else None
        if factor is None:
            w = np.maximum(point.w, 1e-10 * (1.0 + np.abs(point.w)))
            factor, _ = _factor(theta, model, w)
        if factor is None:
            return v, False
        step = -_solve(s, factor, grad)
        decrement = -float(grad @ step)
        if decrement < NEWTON_TOL:
            return v + step, True
        t = 1.0
        for _ in range(30):
            trial = v + t * step
            trial_point = _Point(theta, beta, dispersion, trial, model)
            if np.isfinite(trial_point.g) and trial_point.g <= value:
                break
            t *= 0.5
        else:
            return v, False
        if abs(value - trial_point.g) <= 1e-14 * (1 + abs(trial_point.g)):
            return trial, True
        v, point, value = trial, trial_point, trial_point.g
    return v, False


def laplace(theta, beta, log_dispersion, model: HostGLMM, v0, gradient: bool = True):
    """(L, ∂L/∂(θ, β_outer, ψ) or None, v̂, factor of Ω at v̂, converged) — see the
    module docstring. L is +inf where the inner problem fails."""
    s = model.structure
    theta = np.asarray(theta, dtype=np.float64)
    dispersion = model.dispersion(log_dispersion)
    v, ok = conditional_mode(theta, beta, dispersion, model, v0)
    estimated = log_dispersion.shape[0] > 0
    # The gradient's terms (W', the dispersion derivatives) with the mode's own: one
    # family evaluation at v̂, not two.
    point = _Point(theta, beta, dispersion, v, model, third=gradient,
                   dispersion_derivatives=gradient and estimated)
    factor, products = _factor(theta, model, point.w)
    if factor is None or not np.isfinite(point.g):
        return np.inf, None, v, None, False
    R_re = s.n_re_rest
    logdet = (2.0 * np.sum(np.log(np.diagonal(factor.first, axis1=1, axis2=2)))
              + 2.0 * np.sum(np.log(np.diagonal(factor.rest)[:R_re])))
    value = point.g + logdet
    if not gradient:
        return value, None, v, factor, ok
    terms = point.terms
    sigma_00, sigma_r0, sigma_rr = lmm._selected_inverse(s, factor, R_re)
    h = _leverages(s, point.factors, sigma_00, sigma_r0, sigma_rr)
    hw = h * terms.w1
    parts = lambda_z_transpose_times(point.factors, s, hw)
    rhs = _flat(parts[0], parts[1:], model.inner.T @ hw if model.inner.shape[1] else None)
    a = 0.5 * _solve(s, factor, rhs)
    a_first, a_rest, a_beta = split(a, s)
    a_terms = term_values(s, a_first, a_rest)
    t = z_lambda_times(point.factors, s, a_terms)
    if a_beta.shape[0]:
        t = t + model.inner @ a_beta
    d1, d2 = -2.0 * point.l1, 2.0 * point.w
    q = d1 + hw - d2 * t
    outer_q = _weighted_term_outer(s, q, point.u_terms)
    outer_a = _weighted_term_outer(s, d1, a_terms)
    contraction = lmm._gradient(s, products, theta, factor, sigma_00, 2.0 * sigma_r0, sigma_rr)
    # ∂/∂θ_t of ⟨G_t, Λ_t(θ_t)⟩: the structure's vector-Jacobian product.
    grads = [cov.pullback(part, gq - ga) for cov, part, gq, ga in
             zip(s.structures, split_theta(theta, s.structures), outer_q, outer_a)]
    pieces = [np.concatenate(grads) + contraction]
    if model.X.shape[1]:
        pieces.append(model.X.T @ q)
    if estimated:
        # One entry per dispersion parameter (rows of the terms where there are two).
        pieces.append(np.atleast_1d(np.sum(
            -2.0 * terms.value_psi + h * terms.w_psi + 2.0 * t * terms.d1_psi, axis=-1)))
    return value, np.concatenate(pieces), v, factor, ok


def _nonzero_pairs(s: ReStructure):
    """The first term's pairs (a, b) of nonzero entries within each row of Z_1: (row, a,
    b, z_ia·z_ib, the row's level), kept in the structure's cache."""
    if "nonzero_pairs" not in s.cache:
        z = np.asarray(s.z[0], dtype=np.float64)
        nonzero = z != 0
        obs, first, second = np.nonzero(nonzero[:, :, None] & nonzero[:, None, :])
        s.cache["nonzero_pairs"] = (obs, first, second, z[obs, first] * z[obs, second],
                                    np.asarray(s.refs[0])[obs])
    return s.cache["nonzero_pairs"]


def _leverages(s: ReStructure, factors, sigma_00, sigma_r0, sigma_rr):
    """h_i = z_i'Λ·M⁻¹·Λ'z_i from M⁻¹'s selected entries (diagonal blocks of the first
    term, its coupling entries, the dense rest)."""
    a = [s.z[t] @ factors[t] for t in range(s.n_terms)]  # rows of ZΛ per term: (n, S_t)
    if s.n_levels[0] == 1:  # one level of q effects (known relatedness): no (n, q, q)
        h = np.sum((a[0] @ sigma_00[0]) * a[0], axis=1)
    else:
        # z_i'·(Λ Σ_l Λ')·z_i over the nonzero pairs of z_i: one product per row where
        # z is a factor's indicator (ar1, cs, toep, spatial terms), no (n, S, S) gather.
        obs, first, second, product, level = _nonzero_pairs(s)
        blocks = factors[0] @ sigma_00 @ factors[0].T
        h = np.bincount(obs, weights=product * blocks[level, first, second],
                        minlength=a[0].shape[0])
    entry = 0
    for t in range(1, s.n_terms):
        size = s.sizes[t]
        n_pairs = s.pair_first[t - 1].shape[0]
        block = sigma_r0[entry : entry + n_pairs * size].reshape(n_pairs, size, -1)
        entry += n_pairs * size
        h += 2.0 * np.einsum("ia,iab,ib->i", a[t], block[s.obs_pair[t - 1]], a[0])
        start = s.offsets[t]
        if s.n_levels[t] == 1:  # q effects of one group (known K): (n, R), not (n, q, ·)
            row_products = a[t] @ sigma_rr[start : start + size]
        for t2 in range(1, s.n_terms):
            size2, start2 = s.sizes[t2], s.offsets[t2]
            cols = start2 + s.refs[t2][:, None] * size2 + np.arange(size2)
            if s.n_levels[t] == 1:
                picked = np.take_along_axis(row_products, cols, axis=1)  # (n, S_t2)
                h += np.sum(picked * a[t2], axis=1)
                continue
            rows = start + s.refs[t][:, None] * size + np.arange(size)  # (n, S_t)
            sub = sigma_rr[rows[:, :, None], cols[:, None, :]]  # (n, S_t, S_t2)
            h += np.einsum("ia,iab,ib->i", a[t], sub, a[t2])
    return h


# -- the fit (as compiled.glmm.glmm_pipeline's two stages) -------------------------------------


def host_models(design, family, y, weights):
    """The two stages' models: nAGQ=0 (β inner) and Laplace (β outer)."""
    X = np.asarray(design.X, dtype=np.float64)
    n, p = X.shape
    y = np.asarray(y, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    offset = np.asarray(design.offset, dtype=np.float64)
    constant = log_likelihood_constant(family, y, weights)
    empty = np.zeros((n, 0))
    stage1 = HostGLMM(plain_structure(build_structure(design.terms, p)), empty, X, y,
                      weights, offset, family, constant)
    stage2 = HostGLMM(plain_structure(build_structure(design.terms, 0)), X, empty, y,
                      weights, offset, family, constant)
    return stage1, stage2


def _outer_split(params, model: HostGLMM):
    """(θ, β_outer, log dispersion) from params laid out as the compiled pipeline's."""
    n_theta, p = model.structure.n_theta, model.X.shape[1]
    return params[:n_theta], params[n_theta : n_theta + p], params[n_theta + p :]


def mode_derivatives(params, v, model: HostGLMM):
    """dv̂/dψ at the mode v̂ (columns per outer parameter ψ = (θ, β_outer, log φ)), by
    the implicit function theorem: −Ω⁻¹·∂(∇g/2)/∂ψ, with ∂(∇g/2)/∂θ_k =
    [−Λ_k'Z'ℓ' + Λ'Z'(W∘ZΛ_k·u); X_in'(W∘ZΛ_k·u)] (Λ_k = ∂Λ/∂θ_k; Λ(e_k) for lme4's θ,
    in which Λ is linear), ∂(∇g/2)/∂β_j = [Λ'Z'(W∘x_j); X_in'(W∘x_j)] and ∂(∇g/2)/∂log φ = −[Λ'Z'; X_in']∂ℓ'/∂log φ.
    Start points for the finite-difference Hessian's inner solves: from v̂ + (dv̂/dψ)·Δψ
    one Newton step suffices."""
    s = model.structure
    theta, beta, log_dispersion = _outer_split(params, model)
    dispersion = model.dispersion(log_dispersion)
    point = _Point(theta, beta, dispersion, v, model)
    factor, _ = _factor(theta, model, point.w)
    if factor is None:
        # Ω is not positive definite at v̂ (a fit that stopped where the mode is not a
        # minimum): no prediction; the difference Hessian's solves start from v̂ itself.
        return np.zeros((v.shape[0], np.asarray(params).shape[0]))

    def mixed(r, minus=None):
        parts = lambda_z_transpose_times(point.factors, s, r)
        if minus is not None:
            parts = [b - a for a, b in zip(minus, parts)]
        return _flat(parts[0], parts[1:], model.inner.T @ r if model.inner.shape[1] else None)

    columns = []
    for unit in factor_derivatives(theta, s.structures):
        shift = point.w * z_lambda_times(unit, s, point.u_terms)
        columns.append(mixed(shift, lambda_z_transpose_times(unit, s, point.l1)))
    for j in range(model.X.shape[1]):
        columns.append(mixed(point.w * model.X[:, j]))
    if log_dispersion.shape[0]:
        terms = row_terms(model, point.eta, dispersion, dispersion_derivatives=True)
        columns.extend(mixed(-row) for row in np.atleast_2d(terms.d1_psi))
    return np.stack([-_solve(s, factor, c) for c in columns], axis=1)


def _start_mean(family, y, weights):
    """Starting means (R's ``mustart``) in numpy, inside the family's mean space."""
    name = type(family).__name__
    if name == "Binomial":
        return (weights * y + 0.5) / (weights + 1.0)
    if name == "Poisson":
        return y + 0.1
    if name == "NegativeBinomial":
        return y + (y == 0) / 6.0
    return y


def eta_unit(family, y, weights) -> float:
    """:func:`glmmjax._families.math.link_scale_spread` at the starting means (1 for
    families and links without closed forms). The searches' step sizes, difference
    steps, stopping rule (max|∇| in these units) and the boundary rule (|θ| below
    ``BOUNDARY_TRY``) assume parameters of order 1: with θ and β in the response's
    units, sleepstudy's Reaction in ms × 10⁴ stalled at the start (θ ~ 10⁵; 500
    iterations, not converged), and a Gamma GLMM with the inverse link (η ~ 0.004) did
    not even start."""
    if not fm.supported(family):
        return 1.0
    with np.errstate(all="ignore"):
        return float(fm.link_scale_spread(family.link, np, _start_mean(family, y, weights),
                                          weights))


def theta_unit(structures, unit: float) -> np.ndarray:
    """Per entry of θ, ``unit`` where it scales with the random effects' units
    (:func:`glmmjax._model.covariance.unit_scaled_mask`), else 1."""
    return np.where(unit_scaled_mask(structures), unit, 1.0)


def _glm_start(model: HostGLMM, dispersion):
    """β of the GLM without random effects at a fixed dispersion: Newton's method (W
    floored positive, for likelihoods that are not concave) with step halving, from
    the least-squares fit of g(μ₀) or, where that leaves η outside the link's domain
    (a sqrt or inverse link with η ≤ 0), from the constant η = g(ȳ)."""
    family, X, y, w, offset = model.family, model.X, model.y, model.weights, model.offset
    with np.errstate(all="ignore"):
        mean_eta = fm.link_function(family.link, np, np.sum(w * y) / np.sum(w))
        eta = fm.link_function(family.link, np, _start_mean(family, y, w))
        eta = np.where(np.isfinite(eta), eta, mean_eta)

        def loglik(b):
            value = float(np.sum(row_terms(model, X @ b + offset, dispersion).value))
            return value if np.isfinite(value) else -np.inf

        beta = np.linalg.lstsq(X, eta - offset, rcond=None)[0]
        current = loglik(beta)
        if not np.isfinite(current):
            beta = np.linalg.lstsq(X, np.full(y.shape, mean_eta) - offset, rcond=None)[0]
            current = loglik(beta)
        for _ in range(25):
            terms = row_terms(model, X @ beta + offset, dispersion)
            W = np.maximum(terms.w, 1e-10 * (1.0 + np.abs(terms.w)))
            step = np.linalg.lstsq(X.T @ (X * W[:, None]), X.T @ terms.d1, rcond=None)[0]
            if not np.all(np.isfinite(step)):
                break
            for _ in range(30):
                trial = loglik(beta + step)
                if trial >= current:
                    break
                step = 0.5 * step
            else:
                break
            beta, current = beta + step, trial
            if np.max(np.abs(step)) < 1e-8 * (1.0 + np.max(np.abs(beta))):
                break
    return beta


def _dispersion_start(model: HostGLMM, mu) -> float:
    """Moment estimates at the GLM fit: Pearson's for Gaussian, Gamma and inverse
    Gaussian (variance φV(μ)), MASS::theta.ml's start for the negative binomial size,
    the method of moments for the beta precision."""
    name = type(model.family).__name__
    y, w = model.y, model.weights
    used = w > 0
    dof = max(int(np.sum(used)) - model.X.shape[1], 1)
    if hasattr(model.family, "moment_dispersion"):  # glmmTMB's families
        value = float(model.family.moment_dispersion(np, y, mu, w))
    elif name == "NegativeBinomial":
        value = np.sum(w) / np.sum(w * (y / mu - 1.0) ** 2)
    elif name == "Beta":
        ratio = np.sum(w * mu * (1.0 - mu)) / np.sum(w * (y - mu) ** 2)
        value = max(ratio - 1.0, 0.5)
    else:
        power = {"Gaussian": 0.0, "Gamma": 2.0, "InverseGaussian": 3.0}[name]
        value = np.sum(w * (y - mu) ** 2 / mu**power) / dof
    return float(np.clip(value, 1e-4, 1e6)) if np.isfinite(value) else 1.0


def _residual_sd_scale(family):
    """σ per unit of a Gaussian residual SD for families y = μ + σ·ε with an identity link
    and σ estimated (Student-t: sqrt((ν − 2)/ν) at the fixed or starting ν, the SD of
    t_ν being σ·sqrt(ν/(ν − 2))); None for every other family."""
    if (type(family).__name__ != "StudentT" or family.link.name != "identity"
            or not estimates_dispersion(family)):
        return None
    df = family.df if family.df is not None else shape_starts(family)[0]
    return float(np.sqrt((df - 2.0) / df)) if df > 2.0 else 1.0


def _lmm_start(random_terms, model: HostGLMM):
    """Start values (θ, β, log σ [, shape]) from the Gaussian LMM of the same formula (ML,
    the host LMM engine: a few ms) for the families of :func:`_residual_sd_scale`: θ in
    absolute units (the LMM's relative θ times its σ̂), β̂, and σ̂ times that scale. On
    the identity scale in the response's units the moment start's SDs (kept within
    [0.1, 5] units of :func:`eta_unit`) are far off (sleepstudy's Student-t: θ = [5, 0, 5]
    for an optimum [27.4, −0.4, 6.3], and 35 nAGQ=0 evaluations instead of 6, where the
    per-level moment estimates are themselves inflated: 81 and 77). None where the
    family has no such scale, a term's θ does not scale with σ, or the LMM fails."""
    scale = _residual_sd_scale(model.family)
    if scale is None:
        return None
    from ..lmm_shared import moment_theta

    structures = term_structures(random_terms)
    if any(cov.row_scaled(np.ones(cov.size)) is None for cov in structures):
        return None
    X, w = model.X, model.weights
    y = model.y - model.offset
    structure = build_structure(random_terms, X.shape[1] + 1)
    try:
        lmm_model = lmm.host_model(structure, w, X, y, reml=False)
        _, theta, pls, _ = lmm.fit(lmm_model, moment_theta(random_terms, X, y, w))
    except (np.linalg.LinAlgError, ValueError, FloatingPointError):
        return None
    sigma = float(np.sqrt(float(pls.r2) / lmm_model.nobs))
    # Λ(θ·m) = σ·Λ(θ) (``row_scaled``: SDs times σ, correlation parameters unchanged).
    theta = np.asarray(theta, dtype=np.float64) * np.concatenate(
        [cov.row_scaled(np.full(cov.size, sigma)) for cov in structures])
    beta = np.asarray(pls.beta, dtype=np.float64)
    if not (sigma > 0 and np.all(np.isfinite(theta)) and np.all(np.isfinite(beta))):
        return None
    log_dispersion = np.array([np.log(sigma * scale)]
                              + shape_parameters(model.family, shape_starts(model.family)))
    return theta, beta, log_dispersion


def moment_start(random_terms, model: HostGLMM):
    """Start values (θ, β, log dispersion): β from the GLM without random effects, the
    dispersion by moments at that fit (:func:`_dispersion_start`), and θ from one
    Newton step per level at that fit, b̂_l = Σ z·ℓ' / Σ z²·W, whose variance is about
    σ² + mean(1/Σ z²·W) (per column of each term, correlations 0, each SD kept within
    [0.1, 5] times :func:`eta_unit`, which is 1 for log and probability links; as
    ``_batching.scalar._theta_start`` for one scalar term). From it the
    nAGQ=0 stage needs fewer evaluations than from θ = 1 (verbagg 8 instead of 12,
    cbpp 5 instead of 7). Falls back to θ = 1 where the moments are not finite."""
    X, offset = model.X, model.offset
    estimated = estimates_dispersion(model.family)
    # A shape parameter estimated with the dispersion (Student-t's ν, Tweedie's p)
    # starts at the family's choice; the dispersion argument is then (φ, shape).
    shape = shape_starts(model.family)

    def with_shape(value):
        return np.array([value] + shape) if shape else value

    dispersion = 1.0 if estimated else model.dispersion(np.zeros(0))
    beta = _glm_start(model, with_shape(dispersion))
    log_dispersion = np.zeros(0)
    if estimated:
        eta = X @ beta + offset
        mu = fm.inverse_link(model.family.link, np, eta)
        dispersion = _dispersion_start(model, mu)
        log_dispersion = np.array([np.log(dispersion)]
                                  + shape_parameters(model.family, shape))
    terms = row_terms(model, X @ beta + offset, with_shape(dispersion))
    unit = eta_unit(model.family, model.y, model.weights)
    l1, W = terms.d1, np.maximum(terms.w, 1e-8 / unit**2)
    sds = []
    for term in random_terms:
        z = np.asarray(term.z, dtype=np.float64)
        sd = np.ones(z.shape[1])
        for k in range(z.shape[1]):
            precision = np.maximum(
                np.bincount(term.refs, weights=z[:, k] ** 2 * W, minlength=term.n_levels),
                1e-8 / unit**2)
            b = np.bincount(term.refs, weights=z[:, k] * l1, minlength=term.n_levels) / precision
            sd[k] = unit * np.sqrt(np.clip(
                (np.mean(b**2) - np.mean(1.0 / precision)) / unit**2, 0.01, 25.0))
        sds.append(sd)
    structures = term_structures(random_terms)
    theta = start_from_sds(structures, sds)
    if not (np.all(np.isfinite(theta)) and np.all(np.isfinite(beta))):
        theta = initial_theta(structures) * theta_unit(structures, unit)
        beta = np.zeros_like(beta) if not np.all(np.isfinite(beta)) else beta
    return theta, beta, log_dispersion


def _difference_metric(objective, x0, carry):
    """(H⁻¹, the carry at x0) for H the forward-difference Hessian of ``objective``'s
    gradient at x0 (len(x0) + 1 evaluations), or (None, carry) where H is not positive
    definite. From the LMM start (:func:`_lmm_start`) the searches are then a few
    Newton-like steps; with the default metric they crawl: θ is in the response's units,
    where the deviance's curvature is 10⁴ times log σ's smaller (sleepstudy's Student-t:
    36 evaluations for the nAGQ=0 stage from the moment start, 26 from the LMM's with
    the default metric)."""
    (_, g0), carry0 = objective(x0, carry)
    if not np.all(np.isfinite(g0)):
        return None, carry
    H = lmm.forward_differences(lambda x: objective(x, carry0)[0][1], x0, g0, 1e-4)
    H = 0.5 * (H + H.T)
    if not np.all(np.isfinite(H)):
        return None, carry
    eigenvalues, vectors = np.linalg.eigh(H)
    if eigenvalues[0] <= 1e-8 * max(eigenvalues[-1], 0.0) or eigenvalues[0] <= 0.0:
        return None, carry
    return (vectors / eigenvalues) @ vectors.T, carry0


def _nagq0_stage(objective1, theta0, disp0, v0, p, q1, structures, difference_metric,
                 gtol, loose_gtol, max_iter, unit=1.0):
    """Stage 1 (nAGQ=0) over (θ, log φ): the Laplace stage's start (θ, β, log φ), its
    starting inverse Hessian and its inner start u. θ (``theta0``, ``objective1``'s and
    the results') is in units of ``unit`` (:func:`eta_unit`), as β in the results; the
    inner v (``v0``, the carry) in the model's own."""
    n_theta, n_disp = theta0.shape[0], disp0.shape[0]
    x0 = np.concatenate([theta0, disp0])
    carry = (v0, np.eye(p))
    metric = None
    if difference_metric:
        metric, _ = _difference_metric(objective1, x0, carry)
    if metric is None:
        metric = search_metric(structures, n_disp)
    sol1 = minimize_host(objective1, x0, carry=carry, inverse_hessian=metric,
                         gtol=max(gtol, loose_gtol, START_GTOL), loose_gtol=loose_gtol,
                         first_step=_FIRST_STEP, expensive=True, max_iterations=max_iter)
    v1, L_x = sol1.carry
    L_x_inv = scipy.linalg.solve_triangular(L_x, np.eye(p), lower=True)
    beta_cov1 = L_x_inv.T @ L_x_inv
    theta1 = sol1.x[:n_theta].copy()
    theta1[diagonal_mask(structures) & (np.abs(theta1) < BOUNDARY_TRY)] = 0.1
    params2 = np.concatenate([theta1, v1[q1 - p :] / unit, sol1.x[n_theta:]])
    k = n_theta + p + n_disp
    keep = np.r_[np.arange(n_theta), n_theta + p + np.arange(n_disp)]
    hinv0 = np.zeros((k, k))
    hinv0[np.ix_(keep, keep)] = sol1.inverse_hessian
    hinv0[n_theta : n_theta + p, n_theta : n_theta + p] = 0.5 * beta_cov1 / unit**2
    return hinv0, params2, v1[: q1 - p]


@single_threaded_blas()  # moment start and cross-products included
def fit(design, family, y, weights, gtol: float = 1e-6, loose_gtol: float = 1e-3,
        max_iter: int = 500) -> GLMMFit:
    """Fit a GLMM by Laplace on the host, in the compiled pipeline's two stages (nAGQ=0
    over (θ, log φ), then Laplace over (θ, β, log φ) preconditioned by the first); from
    the LMM start (:func:`_lmm_start`) the Laplace stage alone, preconditioned by a
    difference Hessian there."""
    stage1, stage2 = host_models(design, family, y, weights)
    s1, s2 = stage1.structure, stage2.structure
    n_theta, p = s2.n_theta, stage2.X.shape[1]
    start = _lmm_start(design.terms, stage2)
    theta0, beta0, disp0 = moment_start(design.terms, stage2) if start is None else start
    n_disp = disp0.shape[0]
    # The searches run in x = params / scale: θ and β in units of eta_unit (its
    # docstring says why), log φ and shapes as they are.
    unit = eta_unit(family, stage2.y, stage2.weights)
    theta_scale = theta_unit(s2.structures, unit)
    scale = np.concatenate([theta_scale, np.full(p, unit), np.ones(n_disp)])
    scale1 = np.concatenate([theta_scale, np.ones(n_disp)])
    q1 = s1.n_levels[0] * s1.sizes[0] + s1.rest_size
    v0 = np.zeros(q1)
    v0[q1 - p :] = beta0
    empty = np.zeros(0)

    # Stage 1 (nAGQ=0): (θ, log φ); a start and a preconditioner for stage 2.
    def objective1(x, carry):
        params = x * scale1
        value, grad, v, factor, _ = laplace(params[:n_theta], empty, params[n_theta:],
                                            stage1, carry[0])
        if factor is None:
            return (np.inf, np.full(params.shape, np.nan)), carry
        return (value, grad * scale1), (v, factor.rest[-p:, -p:])

    # Stage 2: Laplace in (θ, β, log φ).
    def objective2(x, u):
        value, grad, v, factor, _ = laplace(*_outer_split(x * scale, stage2), stage2, u)
        if factor is None:
            return (np.inf, np.full(x.shape, np.nan)), u
        return (value, grad * scale), v

    diagonal = diagonal_mask(s2.structures)

    def to_boundary(params):
        theta = params[:n_theta]
        near = diagonal & (np.abs(theta) < BOUNDARY_TRY)
        return np.concatenate([np.where(near, 0.0, theta), params[n_theta:]])

    # Trial points (line searches, the inner Newton's halvings, the central differences)
    # may leave a link's domain; their non-finite values are rejected, not errors.
    with single_threaded_blas(), np.errstate(all="ignore"):
        hinv0 = None
        if start is not None:
            # From the LMM's estimates the Laplace stage needs no nAGQ=0 stage to start
            # or precondition it: its own difference metric there (sleepstudy's
            # Student-t: 7 evaluations instead of the nAGQ=0 stage's 10, and then 4
            # instead of 6 Laplace iterations).
            theta_start = theta0 / theta_scale
            theta_start[diagonal & (np.abs(theta_start) < BOUNDARY_TRY)] = 0.1
            params2 = np.concatenate([theta_start, beta0 / unit, disp0])
            hinv0, u2 = _difference_metric(objective2, params2, np.zeros(q1 - p))
        if hinv0 is None:
            hinv0, params2, u2 = _nagq0_stage(objective1, theta0 / theta_scale, disp0, v0, p, q1,
                                                 s2.structures, start is not None, gtol,
                                                 loose_gtol, max_iter, unit)

        sol2 = minimize_host(objective2, params2, carry=u2, inverse_hessian=hinv0,
                             gtol=gtol, loose_gtol=loose_gtol, expensive=True,
                             final_trial=to_boundary, max_iterations=max_iter)
        x, v = sol2.x, sol2.carry
        params = x * scale
        # Central differences of the exact gradient (module docstring), in the search's
        # units (steps relative to parameters of order 1), each inner solve starting
        # from the mode's first-order prediction.
        dv = mode_derivatives(params, v, stage2) * scale
        H = lmm.central_differences(
            lambda x_: objective2(x_, v + dv @ (x_ - x))[0][1], x)
        H = 0.5 * (H + H.T) / np.outer(scale, scale)
    # A non-finite Hessian (differences stepping where the Laplace value is not
    # finite, e.g. at a boundary): no covariance, and the fit is reported as such
    # (fit_glmm_design: Hessian not positive definite) instead of LAPACK's SVD error.
    params_cov = (2.0 * np.linalg.pinv(H) if np.all(np.isfinite(H))
                  else np.full(H.shape, np.nan))
    theta, beta, log_dispersion = _outer_split(params, stage2)
    effects = random_effects(theta, s2.original, *split(v, s2)[:2], np)
    cache = []

    def conditional_cov():
        if not cache:
            with single_threaded_blas():
                cache.append(conditional_covariances(params, v, stage2))
        return cache[0]

    return GLMMFit(
        engine="host", params=params, n_theta=n_theta, beta=beta,
        beta_cov=params_cov[n_theta : n_theta + p, n_theta : n_theta + p],
        params_cov=params_cov, hessian=H, value=float(sol2.value), v=v,
        effects=tuple(effects), dispersion=stage2.dispersion(log_dispersion),
        estimated_dispersion=bool(n_disp),
        opt=opt_summary("host", sol2._replace(x=params), params2 * scale),
        conditional_covariances=conditional_cov,
    )


def conditional_covariances(params, v, model: HostGLMM) -> list:
    """Conditional covariances of the random effects at the mode (as the compiled
    ``compiled.glmm.conditional_covariances``)."""
    s = model.structure
    theta, beta, log_dispersion = _outer_split(np.asarray(params, dtype=np.float64), model)
    point = _Point(theta, beta, model.dispersion(log_dispersion), v, model)
    products = host_cross_products(s, point.w, model.inner)
    holder = lmm.HostLMM(s, products, 0.0, 0.0, 0, False)
    return lmm.conditional_covariances(theta, holder)
