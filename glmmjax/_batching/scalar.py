"""A batch-specialized GLMM fit for one scalar random-effect term, e.g. ``(1 | g)``.

``fit_many`` vmaps a per-model fit over thousands of responses; every ``while_loop`` in
a vmapped program runs as long as its slowest member. The general pipeline
(:mod:`glmmjax._engines.compiled.glmm`: two BFGS stages with line searches, an inner Newton with
step halving, a final ``jax.hessian``) needs 30–100 outer iterations, so a batch pays
for the worst model many times over. With a single scalar term the problem is small
and regular enough for a different algorithm that converges in a few uniform steps:

* The inner Hessian Λ'Z'WZΛ + I is diagonal (one entry per level), so the conditional
  modes are found by an elementwise Newton iteration with per-level step halving
  (levels are separable: g(u) = Σ_j g_j(u_j)), warm-started from the previous outer
  iterate's modes. Rows are laid out as a padded (levels × rows-per-level) array, so
  per-level sums are reductions along an axis, not scatters.
* The outer problem has only 1 + p parameters (θ, β). We minimize the same Laplace
  objective as ``glmer`` by Newton's method with its exact Hessian (autodiff through
  the modes by the implicit function theorem), starting from a GLM fit for β and a
  moment estimate for θ. Newton converges quadratically, to the optimum itself, so
  the estimates agree with a single ``glmer`` fit to that fit's own tolerance.
* Standard errors come from the same exact Hessian (−2 log L's Hessian is twice the
  information), as in the general pipeline.

Every failure is reported per model (status code, inner convergence flag), never
hidden: the caller marks such a model not converged.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._engines.compiled.eta_terms import closed_form
from .._engines.compiled.optimize import Status
from .._engines.seam import BOUNDARY_TRY
from .._families import math as fm

MAX_OUTER = 60
MAX_INNER = 50
MAX_HALVINGS = 30


def _tol(value: float, dtype, eps_multiple: float = 10.0) -> float:
    """A relative tolerance set for float64, raised to a multiple of the machine epsilon
    where the arithmetic is coarser (float32 batches: the float64 settings, 1e-13 to
    1e-10, are below float32's resolution, and its loops would never stop)."""
    return max(value, eps_multiple * float(np.finfo(np.dtype(dtype)).eps))


def _tiny(dtype) -> float:
    return float(np.finfo(np.dtype(dtype)).tiny)


class ScalarSetup(eqx.Module):
    """Design arrays in the padded (levels, rows-per-level) layout; no response."""

    index: jnp.ndarray  # (m, w) row of each slot (padding repeats a real row)
    mask: jnp.ndarray  # (m, w) 1 for a real row, 0 for padding
    X: jnp.ndarray  # (m, w, p)
    z: jnp.ndarray  # (m, w), 0 on padding
    offset: jnp.ndarray  # (m, w)
    X_pinv: jnp.ndarray  # (p, n), for the GLM start on the unpadded rows
    X_rows: jnp.ndarray  # (n, p)
    offset_rows: jnp.ndarray  # (n,)
    family: object
    dispersion: float = eqx.field(static=True)

    has_dispersion = False  # families with an estimated dispersion use the general path

    @property
    def p(self) -> int:
        return self.X.shape[-1]


def applies(design, family, n_agq: int) -> bool:
    """Whether the fast path fits this structure (else use the general pipeline)."""
    if n_agq != 1 or len(design.terms) != 1 or design.terms[0].size != 1:
        return False
    if family.has_dispersion and family.dispersion_method != "fixed":
        return False
    counts = np.bincount(design.terms[0].refs, minlength=design.terms[0].n_levels)
    # The padded layout costs levels × largest level; refuse very unbalanced designs.
    return counts.min() > 0 and counts.max() * len(counts) <= 4 * len(design.terms[0].refs)


def warm_started(conditional_modes, gradient_hessian, y, w, setup):
    """The outer Newton's value and derivative functions over aux = (a where the modes
    were found, the modes, dû/da there): a trial point starts its inner Newton from the
    first-order prediction û + (dû/da)·Δa, one or two iterations closer than the old
    modes (the old modes where the prediction is not finite)."""

    def value_fn(a, aux):
        a_ref, u_ref, r = aux
        predicted = u_ref + r @ (a - a_ref)
        start = jnp.where(jnp.all(jnp.isfinite(predicted)), predicted, u_ref)
        u_hat, value, ok = conditional_modes(a, start, y, w, setup)
        return value, (a, u_hat, r), ok

    def derivs_fn(a, aux):
        g, H, r = gradient_hessian(a, aux[1], y, w, setup)
        return g, H, (a, aux[1], r)

    return value_fn, derivs_fn


def padded_layout(refs, m: int):
    """Rows by level, padded to the largest level: (index, mask), both (m, width); a
    padding slot repeats the level's first row and has mask 0."""
    refs = np.asarray(refs)
    counts = np.bincount(refs, minlength=m)
    width = int(counts.max())
    order = np.argsort(refs, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    index = np.empty((m, width), dtype=np.int64)
    mask = np.zeros((m, width))
    for j in range(m):
        rows = order[starts[j] : starts[j] + counts[j]]
        index[j, : counts[j]] = rows
        index[j, counts[j] :] = rows[0]
        mask[j, : counts[j]] = 1.0
    return index, mask


def make_scalar_setup(design, family, dtype=np.float64) -> ScalarSetup:
    term = design.terms[0]
    m = term.n_levels
    index, mask = padded_layout(term.refs, m)
    X = np.asarray(design.X, dtype=np.float64)
    z = np.asarray(term.z[:, 0], dtype=np.float64)
    offset = np.asarray(design.offset, dtype=np.float64)
    fixed = getattr(family, "theta", None)
    return ScalarSetup(
        index=index,
        mask=mask.astype(dtype),
        X=X[index].astype(dtype),
        z=(z[index] * mask).astype(dtype),
        offset=offset[index].astype(dtype),
        X_pinv=np.linalg.pinv(X).astype(dtype),
        X_rows=X.astype(dtype),
        offset_rows=offset.astype(dtype),
        family=family,
        dispersion=1.0 if fixed is None else float(fixed),
    )


# -- per-row log-likelihood and its η-derivatives --------------------------------------------
def _closed_form(setup: ScalarSetup) -> bool:
    return closed_form(setup.family)


def _row_terms(eta, y, w, setup: ScalarSetup):
    """ℓ (up to a constant in η), ℓ' and W = −ℓ'' per slot; padding slots give zeros.

    Canonical binomial-logit and Poisson-log use the closed forms of
    :mod:`glmmjax._families.math` (one exp and one log1p per row, instead of the family's
    log-gamma constants and autodiff); other families differentiate ``loglik_eta``. The
    optimization never needs the constant: :func:`constant_part` adds it to the final
    value."""
    if _closed_form(setup):
        return tuple(fm.row_terms(setup.family, jnp, y, eta, w)[:3])

    def total(e):
        ll = setup.family.loglik_eta(y, e, w, jnp.asarray(setup.dispersion, e.dtype))
        return jnp.where(setup.mask > 0, ll, 0.0)

    def first(e):
        return jax.grad(lambda x: jnp.sum(total(x)))(e)

    grad, second = jax.jvp(first, (eta,), (jnp.ones_like(eta),))
    return total(eta), grad, -second


def constant_part(a, u, y, w, setup):
    """−2 Σ (ℓ − ℓ as in :func:`_row_terms`): the η-free constant of the log-likelihood."""
    if not _closed_form(setup):
        return jnp.zeros((), y.dtype)
    eta = _eta(a, u, setup)
    full = setup.family.loglik_eta(y, eta, w, jnp.asarray(setup.dispersion, eta.dtype))
    full = jnp.where(setup.mask > 0, full, 0.0)
    return -2.0 * jnp.sum(full - _row_terms(eta, y, w, setup)[0])


def _eta(a, u, setup: ScalarSetup):
    theta, beta = a[0], a[1:]
    return setup.X @ beta + setup.offset + theta * setup.z * u[:, None]


def _level_terms(a, u, y, w, setup, floor: bool = False):
    """Per level j: g_j = −2 Σ ℓ + u_j², G_j = (∂g_j/∂u_j)/2 = u_j − θ Σ z ℓ' and
    h_j = (∂²g_j/∂u_j²)/2 = 1 + θ² Σ z² W. With ``floor``, also h_j with W floored
    at a tiny positive value (Newton steps on non-concave log-likelihoods)."""
    ll, grad, weight = _row_terms(_eta(a, u, setup), y, w, setup)
    theta = a[0]
    g = -2.0 * jnp.sum(ll, axis=1) + u**2
    G = u - theta * jnp.sum(setup.z * grad, axis=1)
    h = 1.0 + theta**2 * jnp.sum(setup.z**2 * weight, axis=1)
    if not floor:
        return g, G, h
    floored = jnp.maximum(weight, _tol(1e-10, weight.dtype) * (1.0 + jnp.abs(weight)))
    return g, G, h, 1.0 + theta**2 * jnp.sum(setup.z**2 * floored, axis=1)


def conditional_modes(a, u0, y, w, setup):
    """The modes û(a) by levelwise Newton with per-level step halving.

    Returns (û, the Laplace value at û without its constant, converged)."""

    def cond(state):
        k, done = state[2], state[3]
        return (~done) & (k < MAX_INNER)

    def body(state):
        u, (g_u, G_u, h_u, hf_u), k, _, _ = state
        step = -G_u / hf_u
        # Near the mode a step changes g_j by less than its rounding error; such a
        # step is taken, not halved 30 times.
        slack = _tol(1e-13, u.dtype, 100.0) * (1.0 + jnp.abs(g_u))

        def good(g_t):
            return jnp.isfinite(g_t) & (g_t <= g_u + slack)

        def halve_cond(carry):
            g_t, tries = carry[1][0], carry[2]
            return jnp.any(~good(g_t)) & (tries < MAX_HALVINGS)

        def halve_body(carry):
            t, terms, tries = carry
            t = jnp.where(good(terms[0]), t, 0.5 * t)
            return t, _level_terms(a, u + t * step, y, w, setup, True), tries + 1

        t0 = jnp.ones_like(u)
        terms0 = _level_terms(a, u + step, y, w, setup, True)
        t, terms, _ = jax.lax.while_loop(halve_cond, halve_body, (t0, terms0, 0))
        ok = good(terms[0])
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        # Quadratic convergence: the step just taken leaves an error of order step²
        # (1e-10 here), which moves ∇F by ~1e-8 and the estimates by ~1e-11.
        small = jnp.all(ok) & (jnp.max(jnp.abs(step))
                               <= max(1e-5, 10.0 * float(np.sqrt(np.finfo(np.dtype(u.dtype)).eps))))
        stuck = ~jnp.any(ok)
        return (keep(u + t * step, u), tuple(map(keep, terms, (g_u, G_u, h_u, hf_u))), k + 1,
                small | stuck, small)

    terms = _level_terms(a, u0, y, w, setup, True)
    false = jnp.zeros((), bool)
    state = (u0, terms, jnp.zeros((), jnp.int32), false, false)
    u, (g, _, h, _), _, _, converged = jax.lax.while_loop(cond, body, state)
    value = jnp.sum(g) + jnp.sum(jnp.log(h))
    return u, value, converged & jnp.all(jnp.isfinite(u))


@eqx.filter_custom_jvp
def _mode_at(a, u_hat, y, w, setup):
    """û as a differentiable function of a, evaluated where ``u_hat`` is already the mode.

    Its derivative is the implicit-function one, u̇ = −(∂G/∂u)⁻¹ ∂G/∂a · ȧ with
    ∂G/∂u = h, and the rule calls ``_mode_at`` again, so higher derivatives are exact
    too, without ever re-running (or unrolling) the Newton iteration."""
    return u_hat


@_mode_at.def_jvp
def _mode_at_jvp(primals, tangents):
    a, u_hat, y, w, setup = primals
    t_a = tangents[0]
    if t_a is None:
        t_a = jnp.zeros_like(a)
    u = _mode_at(a, u_hat, y, w, setup)
    (_, _, h), (_, mixed, _) = jax.jvp(lambda b: _level_terms(b, u, y, w, setup), (a,), (t_a,))
    return u, -mixed / h


def laplace_value(a, u_hat, y, w, setup):
    """−2 log L (Laplace, without :func:`constant_part`) at a = (θ, β), given û(a)."""
    u = _mode_at(a, jax.lax.stop_gradient(u_hat), y, w, setup)
    g, _, h = _level_terms(a, u, y, w, setup)
    return jnp.sum(g) + jnp.sum(jnp.log(h))


def value_gradient_hessian(a, u_hat, y, w, setup):
    """Gradient and exact Hessian of :func:`laplace_value` by autodiff (forward over
    reverse, through the implicit-function derivative of the modes). The reference
    for :func:`gradient_hessian`, which the fit uses."""

    def grad(b):
        g = jax.grad(laplace_value)(b, u_hat, y, w, setup)
        return g, g

    H, g = jax.jacfwd(grad, has_aux=True)(a)
    return g, H


def _row_derivatives(eta, y, w, setup: ScalarSetup):
    """ℓ', W = −ℓ'', W' and W'' per slot (η-derivatives of the log-likelihood)."""
    if _closed_form(setup):
        # W'' by forward mode through the closed-form W' (counts not rounded, as
        # Binomial._counts).
        def third(e):
            return fm.row_terms(setup.family, jnp, y, e, w, third=True)

        terms, tangent = jax.jvp(third, (eta,), (jnp.ones_like(eta),))
        return terms.d1, terms.w, terms.w1, tangent.w1

    def total(e):
        ll = setup.family.loglik_eta(y, e, w, jnp.asarray(setup.dispersion, e.dtype))
        return jnp.sum(jnp.where(setup.mask > 0, ll, 0.0))

    def nth(f):
        return lambda e: jax.jvp(f, (e,), (jnp.ones_like(e),))[1]

    d1 = jax.grad(total)
    d2 = nth(d1)
    d3 = nth(d2)
    d4 = nth(d3)
    return d1(eta), -d2(eta), -d3(eta), -d4(eta)


def gradient_hessian(a, u_hat, y, w, setup):
    """Gradient and exact Hessian of the Laplace objective F(a) = Σ_j g_j(û_j) + log h_j(û_j)
    in closed form (one pass over the rows; about 3× cheaper than autodiff).

    Per level, with d_i = ∂η_i/∂a = (z_i u, x_i), G = ∂g/∂u / 2 = u − θ Σ z ℓ' (zero
    at û) and h = ∂G/∂u: the modes move as r = dû/da = −G_a/h, and

        ∇F  = −2 Σ ℓ' d + Dh/h,
        ∇²F = 2 Σ W d d' − 2 G_a G_a'/h + D²h/h − Dh Dh'/h²,

    where Dh and D²h are the total derivatives of h(û(a), a), which need D²û from
    differentiating G(û(a), a) = 0 twice (hence W' and W''). Also returns r (m, P), the
    first-order prediction of how the modes move (a warm start for the next point)."""
    theta = a[0]
    u = u_hat
    z = setup.z
    l1, W, W1, W2 = _row_derivatives(_eta(a, u, setup), y, w, setup)
    m = u.shape[0]
    X = setup.X
    P = a.shape[0]
    e = jnp.zeros(P, a.dtype).at[0].set(1.0)

    # d = (z u_j, x) per row; u_j is constant within a level, so every sum below is a
    # contraction of a per-row weight with the shared X (no (rows, P, P) temporaries).
    def vec(c):  # Σ_rows c·d per level -> (m, P)
        return jnp.concatenate([(u * jnp.sum(c * z, axis=1))[:, None],
                                jnp.einsum("mw,mwp->mp", c, X)], axis=-1)

    def total_mat(c):  # Σ over all rows of c·d d' -> (P, P)
        cz = c * z
        tt = jnp.sum(cz * z * (u**2)[:, None])
        tb = jnp.einsum("mw,mwp->p", cz * u[:, None], X)
        bb = jnp.einsum("mw,mwpq->pq", c, jnp.einsum("mwp,mwq->mwpq", X, X))
        top = jnp.concatenate([tt[None], tb])[None, :]
        return jnp.concatenate([top, jnp.concatenate([tb[:, None], bb], axis=1)], axis=0)

    s1 = jnp.sum(z * l1, axis=1)
    s_zzw = jnp.sum(z**2 * W, axis=1)
    s_z3w1 = jnp.sum(z**3 * W1, axis=1)
    s_z4w2 = jnp.sum(z**4 * W2, axis=1)
    v_zw = vec(z * W)
    v_zzw1 = vec(z**2 * W1)
    v_z3w2 = vec(z**3 * W2)

    outer = lambda x, y_: x[:, :, None] * y_[:, None, :]  # noqa: E731
    sym = lambda M: M + jnp.swapaxes(M, 1, 2)  # noqa: E731
    E = jnp.broadcast_to(e, (m, P))
    h = 1.0 + theta**2 * s_zzw
    G_a = -s1[:, None] * E + theta * v_zw
    G_uu = theta**3 * s_z3w1
    G_ua = 2.0 * theta * s_zzw[:, None] * E + theta**2 * v_zzw1
    H_u = G_uu
    H_a = G_ua
    H_uu = theta**4 * s_z4w2
    H_ua = 3.0 * theta**2 * s_z3w1[:, None] * E + theta**3 * v_z3w2
    # G_aa and H_aa without their Σ c·d d' parts (θ Σ z W' d d' and θ² Σ z² W'' d d'),
    # which enter the Hessian only through one total sum with per-level factors.
    G_aa = sym(outer(E, v_zw))
    H_aa = 2.0 * s_zzw[:, None, None] * outer(E, E) + 2.0 * theta * sym(outer(E, v_zzw1))

    r = -G_a / h[:, None]
    Dh = H_a + H_u[:, None] * r
    D2u = -(G_aa + sym(outer(G_ua, r)) + G_uu[:, None, None] * outer(r, r)) / h[:, None, None]
    D2h = H_aa + sym(outer(H_ua, r)) + H_uu[:, None, None] * outer(r, r) + H_u[:, None, None] * D2u
    c_rows = (2.0 * W + (theta**2 / h)[:, None] * z**2 * W2
              - (H_u * theta / h**2)[:, None] * z * W1)

    grad = -2.0 * jnp.concatenate([jnp.sum(l1 * z * u[:, None])[None],
                                   jnp.einsum("mw,mwp->p", l1, X)])
    grad = grad + jnp.sum(Dh / h[:, None], axis=0)
    hess = (total_mat(c_rows)
            - 2.0 * jnp.sum(outer(G_a, G_a) / h[:, None, None], axis=0)
            + jnp.sum(D2h / h[:, None, None], axis=0)
            - jnp.sum(outer(Dh, Dh) / (h**2)[:, None, None], axis=0))
    return grad, 0.5 * (hess + hess.T), r


# -- a damped Newton minimizer with an exact Hessian ----------------------------------------
def _newton_direction(g, H):
    """−H⁻¹g with H's eigenvalues replaced by their absolute values (floored), so the
    direction descends even where the objective is not convex."""
    lam, V = jnp.linalg.eigh(0.5 * (H + H.T))
    scale = jnp.max(jnp.abs(lam))
    lam = jnp.maximum(jnp.abs(lam), _tol(1e-10, lam.dtype) * scale + _tiny(lam.dtype))
    return -V @ ((V.T @ g) / lam)


class _NewtonState(NamedTuple):
    a: jnp.ndarray  # the last accepted point, with its value, derivatives and warm starts
    aux: object
    f: jnp.ndarray
    g: jnp.ndarray
    H: jnp.ndarray
    ok: jnp.ndarray  # the inner problem converged at a
    d: jnp.ndarray  # direction, and the step length t of the pending trial a + t·d
    t: jnp.ndarray
    final: jnp.ndarray  # the pending step is the last one
    k: jnp.ndarray
    evals: jnp.ndarray
    halvings: jnp.ndarray
    status: jnp.ndarray  # -1 while running


def newton_minimize(value_fn, derivs_fn, a0, aux0, *, max_step=2.0, final_tol=1e-11):
    """Minimize by Newton with an Armijo backtracking line search.

    ``value_fn(a, aux) -> (f, aux, ok)`` (``aux`` carries warm starts, e.g. the modes;
    ``ok`` False marks an inner failure); ``derivs_fn(a, aux) -> (g, H, aux)``. When the
    squared Newton decrement gᵀH⁻¹g falls below ``final_tol``·(1 + |f|), one last full
    step is taken and the loop stops: its error is of the order of the square of an
    already tiny step. Returns (a, aux, f, g, H, iterations, status, inner_ok).

    As :func:`glmmjax._engines.compiled.optimize.minimize`, one loop pass evaluates one trial point (the
    start, a full step or a halved one), so ``value_fn`` and ``derivs_fn`` are traced
    once: the inner loops are compiled once, not once per call site."""
    dtype = a0.dtype
    P = a0.shape[0]

    def body(st: _NewtonState):
        trial = st.a + st.t * st.d
        f_t, aux_t, ok_t = value_fn(trial, st.aux)
        first = st.evals == 0
        # The last step may not decrease f beyond rounding; allow for that.
        slack = jnp.where(st.final, _tol(1e-11, dtype) * (1.0 + jnp.abs(st.f)), 0.0)
        armijo = jnp.isfinite(f_t) & (f_t <= st.f + 1e-4 * st.t * jnp.dot(st.g, st.d) + slack)
        accept = first | armijo
        g_t, H_t, aux_t = jax.lax.cond(
            accept, lambda: derivs_fn(trial, aux_t), lambda: (st.g, st.H, aux_t)
        )
        finite = jnp.isfinite(f_t) & jnp.all(jnp.isfinite(g_t)) & jnp.all(jnp.isfinite(H_t))
        d = _newton_direction(g_t, H_t)
        decrement = -jnp.dot(g_t, d)
        final = (decrement <= _tol(final_tol, dtype) * (1.0 + jnp.abs(f_t))) & (decrement >= 0)
        d = d * jnp.minimum(1.0, max_step / jnp.maximum(jnp.max(jnp.abs(d)), _tiny(dtype)))
        k = st.k + jnp.where(first, 0, 1)
        accepted_status = jnp.where(
            ~finite, Status.NON_FINITE,
            jnp.where(st.final & ~first, Status.CONVERGED,
                      jnp.where(k >= MAX_OUTER, Status.MAX_ITERATIONS, -1)))
        halvings = st.halvings + 1
        rejected_status = jnp.where(
            halvings >= MAX_HALVINGS,
            jnp.where(st.final, Status.CONVERGED, Status.LINE_SEARCH_FAILED), -1)
        pick = lambda new, old: jnp.where(accept, new, old)  # noqa: E731
        return _NewtonState(
            a=pick(trial, st.a), aux=jax.tree_util.tree_map(pick, aux_t, st.aux),
            f=pick(f_t, st.f), g=pick(g_t, st.g), H=pick(H_t, st.H), ok=pick(ok_t, st.ok),
            d=pick(d, st.d), t=pick(jnp.ones((), dtype), 0.5 * st.t),
            final=pick(final, st.final), k=pick(k, st.k), evals=st.evals + 1,
            halvings=pick(0, halvings),
            status=pick(accepted_status, rejected_status).astype(jnp.int32),
        )

    zero = jnp.zeros((), jnp.int32)
    state = _NewtonState(
        a=a0, aux=aux0, f=jnp.asarray(jnp.inf, dtype), g=jnp.zeros(P, dtype),
        H=jnp.eye(P, dtype=dtype), ok=jnp.ones((), bool), d=jnp.zeros(P, dtype),
        t=jnp.ones((), dtype), final=jnp.zeros((), bool), k=zero, evals=zero,
        halvings=zero, status=-jnp.ones((), jnp.int32),
    )
    st = jax.lax.while_loop(lambda st: st.status < 0, body, state)
    return st.a, st.aux, st.f, st.g, st.H, st.k, st.status, st.ok


# -- the per-model fit --------------------------------------------------------------------
def glm_start(y, w, setup, terms):
    """β of the GLM without random effects: Newton on −2ℓ over the padded rows from the
    usual moment start (least squares of the linked starting means), for the scalar and
    blocked paths. ``terms(beta)`` gives (ℓ, ℓ', W) per padded row (levels × width).
    Returns (β, status); β is the moment start where Newton did not give a finite one."""
    eta0 = setup.family.link.link(setup.family.initialize(y, w))
    beta0 = setup.X_pinv @ (jnp.where(jnp.isfinite(eta0), eta0, 0.0) - setup.offset_rows)
    X = setup.X

    def value_fn(beta, aux):
        return -2.0 * jnp.sum(terms(beta)[0]), aux, jnp.ones((), bool)

    def derivs_fn(beta, aux):
        _, grad, weight = terms(beta)
        return (-2.0 * jnp.einsum("mwp,mw->p", X, grad),
                2.0 * jnp.einsum("mwp,mw,mwq->pq", X, weight, X), aux)

    # Only a start: the outer Newton refines β, so a loose tolerance saves iterations.
    beta, *_, status, _ = newton_minimize(value_fn, derivs_fn, beta0, jnp.zeros((), y.dtype),
                                          max_step=4.0, final_tol=1e-5)
    return jnp.where(jnp.all(jnp.isfinite(beta)), beta, beta0), status


def _glm_start(y, w, setup: ScalarSetup):
    """:func:`glm_start` on the scalar path's rows."""
    yp, wp = y[setup.index], w[setup.index] * setup.mask
    zero_u = jnp.zeros(setup.index.shape[0], y.dtype)

    def terms(beta):
        a = jnp.concatenate([jnp.zeros(1, beta.dtype), beta])
        return _row_terms(_eta(a, zero_u, setup), yp, wp, setup)

    return glm_start(y, w, setup, terms)


def _theta_start(beta, yp, wp, setup: ScalarSetup):
    """A moment estimate of the random-effect SD from one Newton step per level at the
    GLM fit: b̂_j = Σzℓ'/Σz²W has variance ≈ σ² + 1/Σz²W."""
    a = jnp.concatenate([jnp.zeros(1, beta.dtype), beta])
    u = jnp.zeros(setup.index.shape[0], yp.dtype)
    _, grad, weight = _row_terms(_eta(a, u, setup), yp, wp, setup)
    precision = jnp.maximum(jnp.sum(setup.z**2 * weight, axis=1), 1e-8)
    b = jnp.sum(setup.z * grad, axis=1) / precision
    var = jnp.mean(b**2) - jnp.mean(1.0 / precision)
    theta = jnp.sqrt(jnp.clip(var, 0.01, 25.0))
    return jnp.where(jnp.isfinite(theta), theta, 1.0)


def fit_scalar(y, w, setup: ScalarSetup) -> dict:
    """Fit one GLMM with a single scalar random-effect term (pure; vmap-able)."""
    yp, wp = y[setup.index], w[setup.index] * setup.mask
    beta0, glm_status = _glm_start(y, w, setup)
    a0 = jnp.concatenate([_theta_start(beta0, yp, wp, setup)[None], beta0])
    m = setup.index.shape[0]
    # aux for warm_started: (a, the modes there, their derivative dû/da).
    aux0 = (a0, jnp.zeros(m, y.dtype), jnp.zeros((m, a0.shape[0]), y.dtype))

    value_fn, derivs_fn = warm_started(conditional_modes, gradient_hessian, yp, wp, setup)

    a, aux, f, g, H, k, status, inner_ok = newton_minimize(value_fn, derivs_fn, a0, aux0)

    # As the general pipeline: a θ near zero is tried at exactly zero. A while_loop that
    # runs at most once, not a cond: under vmap a cond computes both branches for every
    # model, a while_loop runs only if some model in the batch needs it.
    def boundary(state):
        a, aux, f, g, H, ok, _ = state
        a_zero = a.at[0].set(0.0)
        f_zero, aux_zero, ok_zero = value_fn(a_zero, aux)
        better = jnp.isfinite(f_zero) & (f_zero <= f + _tol(1e-10, f.dtype) * (1.0 + jnp.abs(f)))
        g_zero, H_zero, aux_zero = derivs_fn(a_zero, aux_zero)
        pick = lambda new, old: jnp.where(better, new, old)  # noqa: E731
        return (pick(a_zero, a), jax.tree_util.tree_map(pick, aux_zero, aux), pick(f_zero, f),
                pick(g_zero, g), pick(H_zero, H), pick(ok_zero, ok), jnp.ones((), bool))

    near = (jnp.abs(a[0]) < BOUNDARY_TRY) & (a[0] != 0)
    a, aux, f, g, H, inner_ok, _ = jax.lax.while_loop(
        lambda state: near & ~state[-1], boundary, (a, aux, f, g, H, inner_ok, ~near)
    )
    u = aux[1]

    sym = 0.5 * (H + H.T)
    params_cov = 2.0 * jnp.linalg.pinv(sym)
    p = setup.p
    return dict(
        params=a[:1], beta=a[1:], beta_cov=params_cov[1 : 1 + p, 1 : 1 + p],
        value=f + constant_part(a, u, yp, wp, setup), status=status, iterations=k,
        grad_max=jnp.max(jnp.abs(g)), hessian_pd=jnp.all(jnp.linalg.eigvalsh(sym) > 0),
        inner_converged=inner_ok, glm_status=glm_status,
    )
