"""The GLMM Laplace fit on the host: numpy/LAPACK evaluations, exact gradients, no compile.

The same objective as the compiled pipeline (:mod:`glmmjax._laplace`,
:mod:`glmmjax._glmm_fit`): g(v) = −2 Σ ℓ(η) + |u|², with v = u (Laplace) or v = (u, β)
(lme4's nAGQ=0, the first stage), and

    L = g(v̂) + log|M|,   M = I + Λ'Z'WZΛ,   W = −ℓ''(η) at the mode v̂.

Gradient (exact; the mode's derivative by the implicit function theorem, not by
unrolling Newton). With Ω = ∇²g(v)/2 (M, plus β's rows for nAGQ=0), h_i = z_i'Λ M⁻¹ Λ'z_i
(from the selected inverse of M, :func:`glmmjax._host_lmm._selected_inverse`), W' =
dW/dη, D' = −2ℓ', D'' = 2W:

    a = Ω⁻¹·[Λ'Z'; X'](h∘W')/2     (the adjoint of log|M| through v̂; X' only for nAGQ=0)
    t = ZΛa_u (+ X·a_β),   q = D' + h∘W' − D''∘t
    ∂L/∂β = X'q                    (Laplace: β outside)
    ∂L/∂θ_k = Σ q_i (ZΛ_k û)_i − Σ D'_i (ZΛ_k a_u)_i + ∂⟨M⁻¹, Λ'Z'WZΛ⟩/∂θ_k

(Λ_k = ∂Λ/∂θ_k; the last term is the LMM's contraction, ``_host_lmm._gradient``).
tests/test_host_glmm.py checks values and gradients against the JAX objective.

Implemented for the two families whose log-likelihood terms have closed forms here,
binomial with logit link and Poisson with log link, as in :mod:`glmmjax._eta_terms`
(they are most GLMMs); ``glmer`` uses the compiled pipeline for the others, for AGQ and
on accelerators. Standard errors come from central differences of the exact gradient
(``fit``), which agree with the pipeline's autodiff Hessian to 1e-6 relative
in the tests (``glmer(engine="jax")`` gives the autodiff one). Starting values differ
from the pipeline's (:func:`moment_start`); the optimum does not.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg
from scipy.special import gammaln

from . import _host_lmm as lmm
from ._blas import single_threaded_blas
from ._cov_structures import factor_derivatives, term_structures
from ._covariance import diagonal_mask, initial_theta, split_theta, start_from_sds
from ._families import Binomial, Poisson
from ._host_products import host_cross_products, segment_sum
from ._links import Log, Logit
from ._optimize import minimize_host
from ._pirls import split
from ._structure import ReStructure, build_structure, plain_structure

MAX_NEWTON = 60
NEWTON_TOL = 1e-10  # as _pirls
_BOUNDARY_TRY = 1e-3
_FIRST_STEP = 0.5  # as _glmm_fit's stage 1


def host_kind(family) -> str | None:
    """"binomial_logit" / "poisson_log" where this module applies, else None."""
    if type(family) is Binomial and type(family.link) is Logit:
        return "binomial_logit"
    if type(family) is Poisson and type(family.link) is Log:
        return "poisson_log"
    return None


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
    kind: str
    constant: float  # Σ(ℓ − kernel): the part of the log-likelihood free of η


def log_likelihood_constant(kind: str, y, weights) -> float:
    """:func:`glmmjax._eta_terms.loglik_constant` in numpy."""
    if kind == "binomial_logit":
        trials, successes = weights, weights * y  # not rounded (Binomial._counts)
        log_choose = gammaln(trials + 1) - gammaln(successes + 1) - gammaln(trials - successes + 1)
        edge = (successes == 0) | (successes == trials)
        return float(np.sum(np.where(edge, 0.0, log_choose)))
    return float(-np.sum(weights * gammaln(y + 1.0)))


def row_terms(kind: str, y, eta, weights):
    """(ℓ without its constant, ℓ', W = −ℓ'', W' = dW/dη) per observation (closed forms
    of :func:`glmmjax._eta_terms.kernel_terms`, with the third derivative)."""
    if kind == "binomial_logit":
        s = weights * y
        f = weights - s
        # log σ(η) = min(η, 0) − log(1 + e^−|η|), accurate in both tails.
        e = np.exp(-np.abs(eta))
        log1pe = np.log1p(e)
        inv = 1.0 / (1.0 + e)
        mu = np.where(eta >= 0, inv, e * inv)
        n = s + f
        value = s * np.minimum(eta, 0.0) + f * np.minimum(-eta, 0.0) - n * log1pe
        w = n * (e * inv * inv)
        return value, s - n * mu, w, w * (1.0 - 2.0 * mu)
    mu = np.exp(eta)
    value = weights * (np.where(y > 0, y * eta, 0.0) - mu)
    w = weights * mu
    return value, weights * (y - mu), w, w


def link(kind: str, mu):
    return np.log(mu / (1.0 - mu)) if kind == "binomial_logit" else np.log(mu)


# -- ZΛ products --------------------------------------------------------------------------


def z_lambda_times(factors, s: ReStructure, u_terms):
    """ZΛu (n,) from u per term."""
    out = np.zeros(s.refs[0].shape[0])
    for t in range(s.n_terms):
        b = u_terms[t] @ factors[t].T
        out += np.einsum("ia,ia->i", s.z[t], b[s.refs[t]])
    return out


def lambda_z_transpose_times(factors, s: ReStructure, r):
    """Λ'Z'r per term, (m_t, S_t) each."""
    return [segment_sum(s.z[t] * r[:, None], s.refs[t], s.n_levels[t]) @ factors[t]
            for t in range(s.n_terms)]


def _flat(parts_first, parts_rest_terms, beta_part=None):
    pieces = [parts_first.reshape(-1)] + [p.reshape(-1) for p in parts_rest_terms]
    if beta_part is not None:
        pieces.append(beta_part)
    return np.concatenate(pieces)


def _weighted_term_outer(s: ReStructure, r, x_terms):
    """Per term, Σ_i r_i·z_it ⊗ x_t[l_it] (S_t × S_t): Σ_i r_i (ZΛ_k x)_i for every entry
    (row, column) of Λ_t."""
    return [np.einsum("i,ia,ib->ab", r, s.z[t], x_terms[t][s.refs[t]])
            for t in range(s.n_terms)]


# -- factor, Newton, value ----------------------------------------------------------------


def _factor(theta, model: HostGLMM, w):
    products = host_cross_products(model.structure, w, model.inner)
    holder = lmm.HostLMM(model.structure, products, 0.0, 0.0, 0, False)
    return lmm._factorize(theta, holder), products


def _solve(s: ReStructure, factor, rhs):
    """Ω·x = rhs for a flat rhs laid out as the inner variable."""
    q0 = s.n_levels[0] * s.sizes[0]
    y_first, y_rest = lmm._solve_lower(s, factor, rhs[:q0].reshape(-1, s.sizes[0]), rhs[q0:])
    x_first, x_rest = lmm._solve_upper(s, factor, y_first, y_rest)
    return np.concatenate([x_first.reshape(-1), x_rest])


class _Point:
    """η and the likelihood terms at (θ, β, v)."""

    def __init__(self, theta, beta, v, model: HostGLMM):
        s = model.structure
        self.factors = lmm.factors_of(theta, s.structures)
        u_first, u_rest, beta_in = split(v, s)
        self.u_terms = lmm.term_values(s, u_first, u_rest)
        eta = model.offset + z_lambda_times(self.factors, s, self.u_terms)
        if model.X.shape[1]:
            eta = eta + model.X @ beta
        if beta_in.shape[0]:
            eta = eta + model.inner @ beta_in
        self.eta = eta
        self.kernel, self.l1, self.w, self.w1 = row_terms(model.kind, model.y, eta, model.weights)
        penalty = sum(float(np.sum(u**2)) for u in self.u_terms)
        self.g = -2.0 * (float(np.sum(self.kernel)) + model.constant) + penalty

    def half_gradient(self, v, model: HostGLMM):
        """∇g/2 = [u − Λ'Z'ℓ'; −X_in'ℓ']."""
        s = model.structure
        parts = lambda_z_transpose_times(self.factors, s, self.l1)
        grad = v[: v.shape[0] - model.inner.shape[1]] - _flat(parts[0], parts[1:])
        return np.concatenate([grad, -(model.inner.T @ self.l1)])


def conditional_mode(theta, beta, model: HostGLMM, v0):
    """v̂ by Newton with step halving from ``v0`` (as :func:`glmmjax._pirls._newton`),
    and whether it converged."""
    s = model.structure
    v = np.asarray(v0, dtype=np.float64)
    point = _Point(theta, beta, v, model)
    value = point.g
    if not np.isfinite(value):
        return v, False
    for _ in range(MAX_NEWTON):
        grad = point.half_gradient(v, model)
        w = np.maximum(point.w, 1e-10 * (1.0 + np.abs(point.w)))  # as _pirls: steps only
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
            trial_point = _Point(theta, beta, trial, model)
            if np.isfinite(trial_point.g) and trial_point.g <= value:
                break
            t *= 0.5
        else:
            return v, False
        if abs(value - trial_point.g) <= 1e-14 * (1 + abs(trial_point.g)):
            return trial, True
        v, point, value = trial, trial_point, trial_point.g
    return v, False


def laplace(theta, beta, model: HostGLMM, v0, gradient: bool = True):
    """(L, ∂L/∂(θ, β_outer) or None, v̂, factor of Ω at v̂, converged) — see the module
    docstring. L is +inf where the inner problem fails."""
    s = model.structure
    theta = np.asarray(theta, dtype=np.float64)
    v, ok = conditional_mode(theta, beta, model, v0)
    point = _Point(theta, beta, v, model)
    factor, products = _factor(theta, model, point.w)
    if factor is None or not np.isfinite(point.g):
        return np.inf, None, v, None, False
    R_re = s.n_re_rest
    logdet = (2.0 * np.sum(np.log(np.diagonal(factor.first, axis1=1, axis2=2)))
              + 2.0 * np.sum(np.log(np.diagonal(factor.rest)[:R_re])))
    value = point.g + logdet
    if not gradient:
        return value, None, v, factor, ok
    sigma_00, sigma_r0, sigma_rr = lmm._selected_inverse(s, factor, R_re)
    h = _leverages(s, point.factors, sigma_00, sigma_r0, sigma_rr)
    hw = h * point.w1
    parts = lambda_z_transpose_times(point.factors, s, hw)
    rhs = _flat(parts[0], parts[1:], model.inner.T @ hw if model.inner.shape[1] else None)
    a = 0.5 * _solve(s, factor, rhs)
    a_first, a_rest, a_beta = split(a, s)
    a_terms = lmm.term_values(s, a_first, a_rest)
    t = z_lambda_times(point.factors, s, a_terms)
    if a_beta.shape[0]:
        t = t + model.inner @ a_beta
    d1, d2 = -2.0 * point.l1, 2.0 * point.w
    q = d1 + hw - d2 * t
    outer_q = _weighted_term_outer(s, q, point.u_terms)
    outer_a = _weighted_term_outer(s, d1, a_terms)
    contraction = lmm._gradient(s, products, theta, factor, sigma_00, 2.0 * sigma_r0, sigma_rr)
    grads = [cov.pullback(part, gq - ga) for cov, part, gq, ga in
             zip(s.structures, split_theta(theta, s.structures), outer_q, outer_a)]
    grad_theta = np.concatenate(grads) + contraction
    grad = np.concatenate([grad_theta, model.X.T @ q]) if model.X.shape[1] else grad_theta
    return value, grad, v, factor, ok


def _leverages(s: ReStructure, factors, sigma_00, sigma_r0, sigma_rr):
    """h_i = z_i'Λ·M⁻¹·Λ'z_i from M⁻¹'s selected entries (diagonal blocks of the first
    term, its coupling entries, the dense rest)."""
    a = [s.z[t] @ factors[t] for t in range(s.n_terms)]  # rows of ZΛ per term: (n, S_t)
    h = np.einsum("ia,iab,ib->i", a[0], sigma_00[s.refs[0]], a[0])
    entry = 0
    for t in range(1, s.n_terms):
        size = s.sizes[t]
        n_pairs = s.pair_first[t - 1].shape[0]
        block = sigma_r0[entry : entry + n_pairs * size].reshape(n_pairs, size, -1)
        entry += n_pairs * size
        h += 2.0 * np.einsum("ia,iab,ib->i", a[t], block[s.obs_pair[t - 1]], a[0])
        start = s.offsets[t]
        for t2 in range(1, s.n_terms):
            size2, start2 = s.sizes[t2], s.offsets[t2]
            rows = start + s.refs[t][:, None] * size + np.arange(size)  # (n, S_t)
            cols = start2 + s.refs[t2][:, None] * size2 + np.arange(size2)
            sub = sigma_rr[rows[:, :, None], cols[:, None, :]]  # (n, S_t, S_t2)
            h += np.einsum("ia,iab,ib->i", a[t], sub, a[t2])
    return h


# -- the fit (as _glmm_fit.glmm_pipeline's two stages) -------------------------------------


def host_models(design, family, y, weights):
    """The two stages' models: nAGQ=0 (β inner) and Laplace (β outer)."""
    kind = host_kind(family)
    X = np.asarray(design.X, dtype=np.float64)
    n, p = X.shape
    y = np.asarray(y, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    offset = np.asarray(design.offset, dtype=np.float64)
    constant = log_likelihood_constant(kind, y, weights)
    empty = np.zeros((n, 0))
    stage1 = HostGLMM(plain_structure(build_structure(design.terms, p)), empty, X, y,
                      weights, offset, kind, constant)
    stage2 = HostGLMM(plain_structure(build_structure(design.terms, 0)), X, empty, y,
                      weights, offset, kind, constant)
    return stage1, stage2


def mode_derivatives(params, v, model: HostGLMM):
    """dv̂/dψ at the mode v̂ (columns per outer parameter ψ = (θ, β_outer)), by the
    implicit function theorem: −Ω⁻¹·∂(∇g/2)/∂ψ, with ∂(∇g/2)/∂θ_k =
    [−Λ_k'Z'ℓ' + Λ'Z'(W∘ZΛ_k·u); X_in'(W∘ZΛ_k·u)] (Λ_k = ∂Λ/∂θ_k; Λ(e_k) for lme4's θ,
    in which Λ is linear) and
    ∂(∇g/2)/∂β_j = [Λ'Z'(W∘x_j); X_in'(W∘x_j)]. Start points for the finite-difference
    Hessian's inner solves: from v̂ + (dv̂/dψ)·Δψ one Newton step suffices."""
    s = model.structure
    n_theta = s.n_theta
    theta = params[:n_theta]
    point = _Point(theta, params[n_theta:], v, model)
    factor, _ = _factor(theta, model, point.w)

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
    return np.stack([-_solve(s, factor, c) for c in columns], axis=1)


def moment_start(random_terms, model: HostGLMM, family):
    """Start values: β from the GLM without random effects (IRLS), and θ from one Newton
    step per level at that fit, b̂_l = Σ z·ℓ' / Σ z²·W, whose variance is about
    σ² + mean(1/Σ z²·W) (per column of each term, correlations 0, each SD kept within
    [0.1, 5]; as ``_glmm_batch._theta_start`` for one scalar term). From it the
    nAGQ=0 stage needs fewer evaluations than from θ = 1 (verbagg 8 instead of 12,
    cbpp 5 instead of 7). Falls back to θ = 1 where the moments are not finite."""
    kind, X, y, w, offset = model.kind, model.X, model.y, model.weights, model.offset
    eta = link(kind, family.initialize(y, w))
    beta = np.linalg.lstsq(X, np.where(np.isfinite(eta), eta, 0.0) - offset, rcond=None)[0]
    for _ in range(25):
        _, l1, W, _ = row_terms(kind, y, X @ beta + offset, w)
        step = np.linalg.lstsq(X.T @ (X * W[:, None]), X.T @ l1, rcond=None)[0]
        beta = beta + step
        if np.max(np.abs(step)) < 1e-8 * (1.0 + np.max(np.abs(beta))):
            break
    _, l1, W, _ = row_terms(kind, y, X @ beta + offset, w)
    sds = []
    for term in random_terms:
        z = np.asarray(term.z, dtype=np.float64)
        sd = np.ones(z.shape[1])
        for k in range(z.shape[1]):
            precision = np.maximum(
                np.bincount(term.refs, weights=z[:, k] ** 2 * W, minlength=term.n_levels), 1e-8)
            b = np.bincount(term.refs, weights=z[:, k] * l1, minlength=term.n_levels) / precision
            sd[k] = np.sqrt(np.clip(np.mean(b**2) - np.mean(1.0 / precision), 0.01, 25.0))
        sds.append(sd)
    structures = term_structures(random_terms)
    theta = start_from_sds(structures, sds)
    if not (np.all(np.isfinite(theta)) and np.all(np.isfinite(beta))):
        return initial_theta(structures), np.linalg.pinv(X) @ (
            np.where(np.isfinite(eta), eta, 0.0) - offset)
    return theta, beta


@single_threaded_blas()  # moment start and cross-products included
def fit(design, family, y, weights, gtol: float = 1e-6, loose_gtol: float = 1e-3,
        max_iter: int = 500) -> dict:
    """Fit a GLMM by Laplace on the host; returns the pipeline's output dict (numpy)."""
    stage1, stage2 = host_models(design, family, y, weights)
    s1, s2 = stage1.structure, stage2.structure
    n_theta, p = s2.n_theta, stage2.X.shape[1]
    theta0, beta0 = moment_start(design.terms, stage2, family)
    q1 = s1.n_levels[0] * s1.sizes[0] + s1.rest_size
    v0 = np.zeros(q1)
    v0[q1 - p :] = beta0
    empty = np.zeros(0)

    # Stage 1 (nAGQ=0): θ only; a start and a preconditioner for stage 2.
    def objective1(theta, carry):
        value, grad, v, factor, _ = laplace(theta, empty, stage1, carry[0])
        if factor is None:
            return (np.inf, np.full(theta.shape, np.nan)), carry
        return (value, grad), (v, factor.rest[-p:, -p:])

    with single_threaded_blas():
        sol1 = minimize_host(objective1, theta0, carry=(v0, np.eye(p)),
                             gtol=max(gtol, loose_gtol), loose_gtol=loose_gtol,
                             first_step=_FIRST_STEP, expensive=True, max_iterations=max_iter)
        v1, L_x = sol1.carry
        L_x_inv = scipy.linalg.solve_triangular(L_x, np.eye(p), lower=True)
        beta_cov1 = L_x_inv.T @ L_x_inv
        theta1 = sol1.x.copy()
        diagonal = diagonal_mask(s2.structures)
        theta1[diagonal & (np.abs(theta1) < _BOUNDARY_TRY)] = 0.1
        params2 = np.concatenate([theta1, v1[q1 - p :]])
        hinv0 = np.zeros((n_theta + p, n_theta + p))
        hinv0[:n_theta, :n_theta] = sol1.inverse_hessian
        hinv0[n_theta:, n_theta:] = 0.5 * beta_cov1

        # Stage 2: Laplace in (θ, β).
        def objective2(params, u):
            value, grad, v, factor, _ = laplace(params[:n_theta], params[n_theta:], stage2, u)
            if factor is None:
                return (np.inf, np.full(params.shape, np.nan)), u
            return (value, grad), v

        def to_boundary(params):
            theta = params[:n_theta]
            near = diagonal & (np.abs(theta) < _BOUNDARY_TRY)
            return np.concatenate([np.where(near, 0.0, theta), params[n_theta:]])

        sol2 = minimize_host(objective2, params2, carry=v1[: q1 - p], inverse_hessian=hinv0,
                             gtol=gtol, loose_gtol=loose_gtol, expensive=True,
                             final_trial=to_boundary, max_iterations=max_iter)
        params, v = sol2.x, sol2.carry
        # Central differences of the exact gradient (module docstring), each inner solve
        # starting from the mode's first-order prediction.
        dv = mode_derivatives(params, v, stage2)
        H = lmm.central_differences(
            lambda x: objective2(x, v + dv @ (x - params))[0][1], params)
        H = 0.5 * (H + H.T)
    params_cov = 2.0 * np.linalg.pinv(H)
    return dict(
        params=params, beta=params[n_theta:], beta_cov=params_cov[n_theta:, n_theta:],
        params_cov=params_cov, value=sol2.value, hessian=H, v=v, status=sol2.status,
        iterations=sol2.iterations, n_evaluations=sol2.n_evaluations, grad=sol2.grad,
        model=stage2,
    )


def conditional_covariances(params, v, model: HostGLMM) -> list:
    """Conditional covariances of the random effects at the mode (as the compiled
    ``_glmm_fit.conditional_covariances``)."""
    s = model.structure
    theta = np.asarray(params[: s.n_theta], dtype=np.float64)
    point = _Point(theta, params[s.n_theta :], v, model)
    products = host_cross_products(s, point.w, model.inner)
    holder = lmm.HostLMM(s, products, 0.0, 0.0, 0, False)
    return lmm.conditional_covariances(theta, holder)
