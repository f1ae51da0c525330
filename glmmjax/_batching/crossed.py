"""A batch-specialized GLMM fit for several scalar random-effect terms, crossed or nested,
e.g. ``(1 | a) + (1 | b)``, with an estimated dispersion where the family has one.

The inner Hessian I + Λ'Z'WZΛ of two or more scalar terms is not block diagonal, but
its first term's block is diagonal (m₁ levels): with the other terms' q₂ levels (at
most :data:`MAX_DENSE`) the Schur complement S = D₂ − C'D₁⁻¹C is a small dense q₂×q₂
matrix, factored by a Cholesky written as a loop in jax.numpy (no batched LAPACK call
inside the vmapped program, see :mod:`glmmjax._linalg`). log det H = Σ log D₁ + log det S,
and Newton steps in u solve through the same factor.

The outer problem a = (θ, β, log dispersion) is minimized by
:func:`glmmjax._batching.blocked.newton_line_search` with the exact gradient and
Hessian ∇²F = V'∇²Ψ V of :func:`glmmjax._batching.blocked.gradient_hessian`'s
derivation (here with the whole u, as the terms share rows).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._engines.compiled.eta_terms import kernel_terms
from .._engines.seam import BOUNDARY_TRY
from .._families import math as fm
from .blocked import MAX_HALVINGS, MAX_INNER, newton_line_search
from .scalar import _tol, newton_minimize, warm_started

MAX_DESIGN = 4_000_000  # largest rows × random-effect columns of the dense layout
MAX_DENSE = 64  # largest q₂ (levels of the terms after the first) for the dense Schur part


class CrossedSetup(eqx.Module):
    X: jnp.ndarray  # (n, p)
    Z1: jnp.ndarray  # (n, m1): the first term's one-hot columns times its z
    Z2: jnp.ndarray  # (n, q2): the other terms' columns
    term2: jnp.ndarray  # (q2, T-1) one-hot: which term each Z2 column belongs to
    offset: jnp.ndarray
    X_pinv: jnp.ndarray
    family: object
    has_dispersion: bool = eqx.field(static=True)
    dispersion: float = eqx.field(static=True)

    @property
    def p(self) -> int:
        return self.X.shape[1]

    @property
    def n_theta(self) -> int:
        return 1 + self.term2.shape[1]


def applies(design, family, n_agq: int) -> bool:
    """Two or more scalar terms (one SD each), the later terms' levels at most
    :data:`MAX_DENSE` in all, rows × levels at most :data:`MAX_DESIGN`, Laplace."""
    from .._model.cov_structures import term_structures

    terms = design.terms
    if n_agq != 1 or len(terms) < 2 or getattr(family, "n_shape", 0):
        return False
    if any(t.size != 1 for t in terms) or any(s.name != "us" for s in term_structures(terms)):
        return False
    # The terms' columns are stored densely (n × levels, shared by all models).
    n_columns = sum(t.n_levels for t in terms)
    return (sum(t.n_levels for t in terms[1:]) <= MAX_DENSE
            and design.X.shape[0] * n_columns <= MAX_DESIGN)


def make_crossed_setup(design, family, dtype=np.float64) -> CrossedSetup:
    n = design.X.shape[0]

    def columns(term):
        out = np.zeros((n, term.n_levels))
        out[np.arange(n), np.asarray(term.refs)] = np.asarray(term.z[:, 0])
        return out

    rest = design.terms[1:]
    Z2 = np.concatenate([columns(t) for t in rest], axis=1)
    term2 = np.zeros((Z2.shape[1], len(rest)))
    start = 0
    for i, t in enumerate(rest):
        term2[start : start + t.n_levels, i] = 1.0
        start += t.n_levels
    X = np.asarray(design.X, dtype=np.float64)
    fixed = getattr(family, "theta", None)
    return CrossedSetup(
        X=X.astype(dtype), Z1=columns(design.terms[0]).astype(dtype), Z2=Z2.astype(dtype),
        term2=term2.astype(dtype), offset=np.asarray(design.offset, dtype),
        X_pinv=np.linalg.pinv(X).astype(dtype), family=family,
        has_dispersion=bool(family.has_dispersion and family.dispersion_method != "fixed"),
        dispersion=1.0 if fixed is None else float(fixed),
    )


# -- dense Cholesky as a loop (no LAPACK inside vmap) ----------------------------------------
def dense_cholesky(a):
    """Lower Cholesky factor of a (n, n) positive-definite matrix, column by column in a
    ``fori_loop`` (n³/3 multiply-adds as n matrix-vector products; NaN where ``a`` is not
    positive definite)."""
    n = a.shape[-1]
    idx = jnp.arange(n)

    def body(j, L):
        row = jnp.where(idx < j, L[j], 0.0)
        v = a[:, j] - L @ row
        d = jnp.sqrt(v[j])
        return L.at[:, j].set(jnp.where(idx >= j, v / d, 0.0))

    return jax.lax.fori_loop(0, n, body, jnp.zeros_like(a))


def _forward(L, b):
    """Solve L·x = b (b: (n,) or (n, k)) by forward substitution in a loop."""
    n = L.shape[0]

    def body(i, x):
        value = (b[i] - L[i] @ x) / L[i, i]
        return x.at[i].set(value)

    return jax.lax.fori_loop(0, n, body, jnp.zeros_like(b))


def _backward(L, b):
    """Solve L'·x = b."""
    n = L.shape[0]

    def body(k, x):
        i = n - 1 - k
        value = (b[i] - L[:, i] @ x) / L[i, i]
        return x.at[i].set(value)

    return jax.lax.fori_loop(0, n, body, jnp.zeros_like(b))


def _inverse_from_factor(L):
    eye = jnp.eye(L.shape[0], dtype=L.dtype)
    return _backward(L, _forward(L, eye))


@jax.custom_jvp
def inv_spd(S):
    """S⁻¹ of a positive-definite S; its derivative −S⁻¹ṠS⁻¹ is matrix products only, so
    derivatives of any order never differentiate the factorization loop."""
    return _inverse_from_factor(dense_cholesky(S))


@inv_spd.defjvp
def _inv_spd_jvp(primals, tangents):
    (S,), (dS,) = primals, tangents
    X = inv_spd(S)
    return X, -X @ dS @ X


@jax.custom_jvp
def log_det_spd(S):
    """log det S of a positive-definite S (NaN where it is not); derivative tr(S⁻¹Ṡ)."""
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(dense_cholesky(S))))


@log_det_spd.defjvp
def _log_det_spd_jvp(primals, tangents):
    (S,), (dS,) = primals, tangents
    return log_det_spd(S), jnp.sum(inv_spd(S) * dS)


# -- the objective ----------------------------------------------------------------------------
def _unpack(a, setup: CrossedSetup):
    T = setup.n_theta
    p = setup.p
    dispersion = (jnp.exp(a[T + p]) if setup.has_dispersion
                  else jnp.asarray(setup.dispersion, a.dtype))
    return a[0], setup.term2 @ a[1:T], a[T : T + p], dispersion


def _rows(eta, y, w, dispersion, setup):
    if fm.supported(setup.family):
        return fm.row_terms(setup.family, jnp, y, eta, w, dispersion)[:3]
    return kernel_terms(setup.family, y, eta, w, dispersion)


class _Parts(eqx.Module):
    g: jnp.ndarray  # −2Σℓ + |u|²
    G: jnp.ndarray  # (q,) half gradient in u
    D1: jnp.ndarray  # (m1,)
    C: jnp.ndarray  # (m1, q2)
    S: jnp.ndarray  # (q2, q2) the Schur complement D₂ − C'D₁⁻¹C
    log_det: jnp.ndarray


def _parts(a, u, y, w, setup: CrossedSetup, floor: bool = False) -> _Parts:
    m1 = setup.Z1.shape[1]
    theta1, theta2, beta, dispersion = _unpack(a, setup)
    u1, u2 = u[:m1], u[m1:]
    eta = setup.X @ beta + setup.offset + theta1 * (setup.Z1 @ u1) + setup.Z2 @ (theta2 * u2)
    ll, d1, W = _rows(eta, y, w, dispersion, setup)
    if floor:
        W = jnp.maximum(W, _tol(1e-10, W.dtype) * (1.0 + jnp.abs(W)))
    g = -2.0 * jnp.sum(ll) + jnp.sum(u**2)
    G = jnp.concatenate([u1 - theta1 * (setup.Z1.T @ d1), u2 - theta2 * (setup.Z2.T @ d1)])
    D1 = 1.0 + theta1**2 * ((setup.Z1**2).T @ W)
    ZW2 = setup.Z2 * W[:, None]
    C = theta1 * (setup.Z1.T @ ZW2) * theta2[None, :]
    D2 = jnp.eye(theta2.shape[0], dtype=a.dtype) + theta2[:, None] * (setup.Z2.T @ ZW2) * theta2
    S = D2 - C.T @ (C / D1[:, None])
    S = 0.5 * (S + S.T)
    log_det = jnp.sum(jnp.log(D1)) + log_det_spd(S)
    return _Parts(g, G, D1, C, S, log_det)


def _solve(parts: _Parts, rhs):
    """H⁻¹·rhs through the Schur complement (rhs: (q,) or (q, k))."""
    m1 = parts.D1.shape[0]
    r1, r2 = rhs[:m1], rhs[m1:]
    D1 = parts.D1 if rhs.ndim == 1 else parts.D1[:, None]
    L = dense_cholesky(parts.S)
    x2 = _backward(L, _forward(L, r2 - parts.C.T @ (r1 / D1)))
    x1 = (r1 - parts.C @ x2) / D1
    return jnp.concatenate([x1, x2])


def conditional_modes(a, u0, y, w, setup):
    """The modes û(a) by Newton with step halving on the whole u (the terms share rows).
    Returns (û, the Laplace value without the constant, converged)."""
    step_tol = max(1e-5, 10.0 * float(np.sqrt(np.finfo(np.dtype(u0.dtype)).eps)))

    def body(state):
        u, parts, k, _, _ = state
        step = -_solve(parts, parts.G)
        slack = _tol(1e-13, u.dtype, 100.0) * (1.0 + jnp.abs(parts.g))

        def good(p):
            return jnp.isfinite(p.g) & (p.g <= parts.g + slack) & jnp.isfinite(p.log_det)

        def halve_cond(c):
            return (~good(c[1])) & (c[2] <= MAX_HALVINGS)

        def halve_body(c):
            t, _, tries = c
            t = 0.5 * t
            return t, _parts(a, u + t * step, y, w, setup, True), tries + 1

        bad = jax.tree_util.tree_map(lambda x: jnp.full_like(x, jnp.nan), parts)
        t, new, _ = jax.lax.while_loop(halve_cond, halve_body, (jnp.asarray(2.0, u.dtype), bad, 0))
        ok = good(new)
        small = ok & (jnp.max(jnp.abs(step)) <= step_tol)
        pick = lambda n_, o_: jnp.where(ok, n_, o_)  # noqa: E731
        return (pick(u + t * step, u), jax.tree_util.tree_map(pick, new, parts), k + 1,
                small | ~ok, small)

    parts = _parts(a, u0, y, w, setup, True)
    false = jnp.zeros((), bool)
    u, _, _, _, converged = jax.lax.while_loop(
        lambda s: (~s[3]) & (s[2] < MAX_INNER), body,
        (u0, parts, jnp.zeros((), jnp.int32), false, false))
    final = _parts(a, u, y, w, setup)
    return u, final.g + final.log_det, converged & jnp.all(jnp.isfinite(u))


def gradient_hessian(a, u_hat, y, w, setup):
    """Exact gradient and Hessian of F(a) = φ(a, û(a)), φ = g + log det H, and
    R = dû/da: ∇²F = V'∇²Ψ V along V = [I; R], Ψ = φ − λ'G, λ = H⁻¹∂φ/∂u (see
    :func:`glmmjax._batching.blocked.gradient_hessian`)."""
    P = a.shape[0]
    G_a = jax.jacfwd(lambda b: _parts(b, u_hat, y, w, setup).G)(a)  # (q, P)
    parts = _parts(a, u_hat, y, w, setup)
    R = -_solve(parts, G_a)
    phi_u = jax.grad(lambda U: (lambda p: p.g + p.log_det)(_parts(a, U, y, w, setup)))(u_hat)
    lam = jax.lax.stop_gradient(_solve(parts, phi_u))
    R_fixed = jax.lax.stop_gradient(R)

    def h(t):
        p = _parts(a + t, u_hat + R_fixed @ t, y, w, setup)
        return p.g + p.log_det - jnp.dot(lam, p.G)

    def grad(t):
        g = jax.grad(h)(t)
        return g, g

    hess, g = jax.jacfwd(grad, has_aux=True)(jnp.zeros(P, a.dtype))
    return g, 0.5 * (hess + hess.T), R


def _glm_start(y, w, setup):
    family = setup.family
    mu = family.initialize(y, w)
    eta0 = family.link.link(mu)
    beta0 = setup.X_pinv @ (jnp.where(jnp.isfinite(eta0), eta0, 0.0) - setup.offset)
    dispersion = jnp.asarray(setup.dispersion, y.dtype)

    def value_fn(beta, aux):
        return (-2.0 * jnp.sum(_rows(setup.X @ beta + setup.offset, y, w, dispersion, setup)[0]),
                aux, jnp.ones((), bool))

    def derivs_fn(beta, aux):
        _, d1, W = _rows(setup.X @ beta + setup.offset, y, w, dispersion, setup)
        return -2.0 * setup.X.T @ d1, 2.0 * (setup.X * W[:, None]).T @ setup.X, aux

    beta, *_ = newton_minimize(value_fn, derivs_fn, beta0, jnp.zeros((), y.dtype),
                               max_step=4.0, final_tol=1e-5)
    return jnp.where(jnp.all(jnp.isfinite(beta)), beta, beta0)


def _starts(beta, y, w, setup):
    """Moment starts for each term's SD (one Newton step per level at the GLM fit, as
    the scalar path's), log dispersion as the blocked path's."""
    from .blocked import _dispersion_start

    dtype = y.dtype
    eta = setup.X @ beta + setup.offset
    _, d1, W = _rows(eta, y, w, jnp.asarray(setup.dispersion, dtype), setup)

    def variance(Z):
        precision = jnp.maximum((Z**2).T @ W, 1e-8)
        b = (Z.T @ d1) / precision
        return b**2 - 1.0 / precision

    var1 = jnp.mean(variance(setup.Z1))
    counts = jnp.sum(setup.term2, axis=0)
    var2 = (variance(setup.Z2) @ setup.term2) / counts
    sd = jnp.sqrt(jnp.clip(jnp.concatenate([var1[None], var2]), 0.01, 25.0))
    theta = jnp.where(jnp.isfinite(sd), sd, 1.0)
    if not setup.has_dispersion:
        return theta, jnp.zeros(0, dtype)
    return theta, _dispersion_start(eta, y, w, setup)


def fit_crossed(y, w, setup: CrossedSetup) -> dict:
    """Fit one GLMM with several scalar terms (pure; vmap-able)."""
    dtype = y.dtype
    beta0 = _glm_start(y, w, setup)
    theta0, log_disp0 = _starts(beta0, y, w, setup)
    a0 = jnp.concatenate([theta0, beta0, log_disp0])
    q = setup.Z1.shape[1] + setup.Z2.shape[1]
    aux0 = (a0, jnp.zeros(q, dtype), jnp.zeros((q, a0.shape[0]), dtype))

    value_fn, derivs_fn = warm_started(conditional_modes, gradient_hessian, y, w, setup)

    T = setup.n_theta

    def boundary_fn(a):  # near-zero SDs tried at exactly zero, as the single fit
        theta = a[:T]
        return a.at[:T].set(jnp.where(jnp.abs(theta) < BOUNDARY_TRY, 0.0, theta))

    a, aux, f, g, H, k, status, inner_ok = newton_line_search(
        value_fn, derivs_fn, a0, aux0, boundary_fn=boundary_fn)
    constant = fm.loglik_constant(setup.family, jnp, y, w) if fm.supported(setup.family) else 0.0
    params_cov = 2.0 * jnp.linalg.pinv(H)
    p = setup.p
    return dict(
        params=a, beta=a[T : T + p], beta_cov=params_cov[T : T + p, T : T + p],
        value=f - 2.0 * constant, status=status, iterations=k,
        grad_max=jnp.max(jnp.abs(g)), hessian_pd=jnp.all(jnp.linalg.eigvalsh(H) > 0),
        inner_converged=inner_ok,
    )
