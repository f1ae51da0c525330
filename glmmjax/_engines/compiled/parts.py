"""Laplace fit of GLMMs with several linear predictors (glmmTMB's conditional,
zero-inflation and dispersion parts), as one compiled program.

With spherical random effects u = (u_c, u_z) of the conditional and zero-inflation parts
(b = Λu per term, as in lme4), the linear predictors are

    η = Xβ + o + A_c(θ_c)·u_c,   ζ = X_zi β_zi + o_zi + A_z(θ_z)·u_z,   δ = X_d β_d + o_d

(A = ZΛ, formed densely), and

    −2 log L ≈ g(û) + log|H(û)|,   g(u) = −2 Σᵢ ℓᵢ(ηᵢ, ζᵢ, δᵢ) + |u|²,   H = ∇²g/2,

with ℓᵢ from :func:`glmmjax._families.response_parts.row_loglik`. ℓᵢ couples ηᵢ and ζᵢ, so H has
a cross block A_c'·W_cz·A_z; each row contributes a 2×2 weight matrix W = −∇²ℓᵢ.
Zero-inflated likelihoods are not log-concave, so Newton's steps use each row's W
made positive semi-definite (diagonal floored, cross term shrunk), which keeps H
positive definite; the Laplace value and all derivatives use the exact W.

The mode û(ψ) of ψ = (θ_c, θ_z, β, β_zi, β_d) is differentiated by the implicit function
theorem (as :mod:`glmmjax._engines.compiled.pirls`), so BFGS gets exact gradients and the standard errors
come from the exact Hessian of −2 log L. The dense A costs n·q memory and H q³ time
(q random effects in all): this engine is for models of up to a few thousand random
effects, which covers the ecological data sets glmmTMB's zero-inflation is used on.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_factor, cho_solve

from ..._families import math as fm
from ..._families.response_parts import dispersion_power, row_loglik
from ..._model.covariance import diagonal_mask, initial_theta, theta_to_factors
from ..._progress import noted
from ..parts_shared import DenseTerms, PartsData, dense_terms  # noqa: F401  (re-exported)
from .jit import program

MAX_NEWTON = 100
NEWTON_TOL = 1e-10


def random_matrix(theta, terms: DenseTerms, n: int, dtype):
    """A = ZΛ(θ), (n, q): column (level l, effect s) of term t holds J_il·(z_i'Λ_t)_s."""
    if not terms.sizes:
        return jnp.zeros((n, 0), dtype)
    blocks = []
    for J, z, lam in zip(terms.indicators, terms.z, theta_to_factors(theta, terms.sizes)):
        zl = z @ lam
        blocks.append((J[:, :, None] * zl[:, None, :]).reshape(n, -1))
    return jnp.concatenate(blocks, axis=1)


def unpack(params, layout):
    """Split the parameter vector into (θ_c, θ_z, β, β_zi, β_d)."""
    out, start = [], 0
    for size in layout:
        out.append(params[start : start + size])
        start += size
    return out


def predictors(v, params, data: PartsData):
    """(η, ζ, δ, A_c, A_z) at random effects ``v`` and parameters ``params``."""
    theta_c, theta_z, beta, beta_zi, beta_disp = unpack(params, data.layout)
    n, dtype = data.y.shape[0], data.y.dtype
    A_c = random_matrix(theta_c, data.cond, n, dtype)
    A_z = random_matrix(theta_z, data.zi, n, dtype)
    q_c = data.cond.q
    eta = data.X @ beta + data.offset + A_c @ v[:q_c]
    zeta = data.X_zi @ beta_zi + data.offset_zi + A_z @ v[q_c:]
    log_phi = data.X_disp @ beta_disp + data.offset_disp
    return eta, zeta, log_phi, A_c, A_z


def _rows(eta, zeta, log_phi, data: PartsData):
    return row_loglik(data.family, data.y, data.weights, eta, zeta, log_phi,
                      zero_inflated=data.zero_inflated)


def row_derivatives(eta, zeta, log_phi, data: PartsData):
    """(ℓ, ∂ηℓ, ∂ζℓ, W_ηη, W_ηζ, W_ζζ) per row, W = −∇²ℓ in (η, ζ)."""
    def total(e, z):
        return jnp.sum(_rows(e, z, log_phi, data))

    gradient = jax.grad(total, argnums=(0, 1))
    ones, zeros = jnp.ones_like(eta), jnp.zeros_like(eta)
    (g_e, g_z), (h_ee, h_ez) = jax.jvp(gradient, (eta, zeta), (ones, zeros))
    _, (_, h_zz) = jax.jvp(gradient, (eta, zeta), (zeros, ones))
    return _rows(eta, zeta, log_phi, data), g_e, g_z, -h_ee, -h_ez, -h_zz


def _psd_weights(w_ee, w_ez, w_zz):
    """Each row's 2×2 weight made positive semi-definite (a Newton step's, not the
    Laplace value's): diagonals floored at a tiny positive value, the cross term shrunk
    to |w_ηζ| ≤ 0.999·√(w_ηη·w_ζζ). A row whose W already is so is left unchanged."""
    w_ee = jnp.maximum(w_ee, 1e-10 * (1.0 + jnp.abs(w_ee)))
    w_zz = jnp.maximum(w_zz, 1e-10 * (1.0 + jnp.abs(w_zz)))
    bound = 0.999 * jnp.sqrt(w_ee * w_zz)
    return w_ee, jnp.clip(w_ez, -bound, bound), w_zz


def _assemble(v, params, data: PartsData, floor: bool):
    """(g(v), ∇g/2, H = ∇²g/2) at v."""
    eta, zeta, log_phi, A_c, A_z = predictors(v, params, data)
    ll, g_e, g_z, w_ee, w_ez, w_zz = row_derivatives(eta, zeta, log_phi, data)
    if floor:
        w_ee, w_ez, w_zz = _psd_weights(w_ee, w_ez, w_zz)
    value = -2.0 * jnp.sum(ll) + jnp.sum(v * v)
    grad = v - jnp.concatenate([A_c.T @ g_e, A_z.T @ g_z])
    cc = A_c.T @ (w_ee[:, None] * A_c)
    cz = A_c.T @ (w_ez[:, None] * A_z)
    zz = A_z.T @ (w_zz[:, None] * A_z)
    H = jnp.block([[cc, cz], [cz.T, zz]]) + jnp.eye(v.shape[0], dtype=v.dtype)
    return value, grad, H


def half_gradient(v, params, data: PartsData):
    return _assemble(v, params, data, floor=False)[1]


def _newton(params, data: PartsData, v0):
    """Newton's method with step halving on g.

    Each step solves with the exact H where it is positive definite (quadratic
    convergence at the mode), else with H from PSD-made row weights (a descent
    direction far from it). Once the Newton decrement is below ``NEWTON_TOL`` the last,
    tiny step is taken without a line search, so the mode is exact to rounding: its
    error would enter the implicit gradient.
    """
    def objective(v):
        eta, zeta, log_phi, _, _ = predictors(v, params, data)
        return -2.0 * jnp.sum(_rows(eta, zeta, log_phi, data)) + jnp.sum(v * v)

    def direction(v):
        eta, zeta, log_phi, A_c, A_z = predictors(v, params, data)
        _, g_e, g_z, w_ee, w_ez, w_zz = row_derivatives(eta, zeta, log_phi, data)
        grad = v - jnp.concatenate([A_c.T @ g_e, A_z.T @ g_z])

        def hessian(w_ee, w_ez, w_zz):
            cc = A_c.T @ (w_ee[:, None] * A_c)
            cz = A_c.T @ (w_ez[:, None] * A_z)
            zz = A_z.T @ (w_zz[:, None] * A_z)
            return jnp.block([[cc, cz], [cz.T, zz]]) + jnp.eye(v.shape[0], dtype=v.dtype)

        L = jnp.linalg.cholesky(hessian(w_ee, w_ez, w_zz))
        L_psd = jnp.linalg.cholesky(hessian(*_psd_weights(w_ee, w_ez, w_zz)))
        L = jnp.where(jnp.all(jnp.isfinite(L)), L, L_psd)
        step = -cho_solve((L, True), grad)
        return step, -jnp.dot(grad, step)

    def cond(state):
        return ~state[3]

    def body(state):
        v, value, k, _ = state
        step, decrement = direction(v)
        converged = decrement < NEWTON_TOL

        def halve(s):
            t, _ = s
            return t * 0.5, objective(v + 0.5 * t * step)

        def worse(s):
            t, trial = s
            return (~jnp.isfinite(trial) | (trial > value)) & (t > 1e-8) & ~converged

        t, trial = jax.lax.while_loop(worse, halve, (jnp.ones((), v.dtype),
                                                      objective(v + step)))
        accepted = converged | (jnp.isfinite(trial) & (trial <= value))
        v_new = jnp.where(accepted, v + t * step, v)
        value_new = jnp.where(accepted, trial, value)
        done = converged | ~accepted | (k + 1 >= MAX_NEWTON)
        return v_new, value_new, k + 1, done

    state = (v0, objective(v0), jnp.zeros((), jnp.int32), jnp.zeros((), bool))
    return jax.lax.while_loop(cond, body, state)[0]


@eqx.filter_custom_jvp
def at_mode(params, data: PartsData, v):
    """``v`` (already the mode at ``params``), differentiable as the function v̂(ψ)."""
    return v


@at_mode.def_jvp
def _at_mode_jvp(primals, tangents):
    """v̇ = −H⁻¹·∂ψ(∇g/2)·ψ̇ (implicit function theorem). The data are constants here:
    their tangents are ignored (this engine is not differentiated in its data)."""
    params, data, v_in = primals
    t_params = tangents[0]
    v = at_mode(params, data, v_in)
    if t_params is None:
        t_params = jnp.zeros_like(params)
    _, mixed = jax.jvp(lambda p: half_gradient(v, p, data), (params,), (t_params,))
    _, _, H = _assemble(v, params, data, floor=False)
    return v, -cho_solve(cho_factor(H, lower=True), mixed)


def conditional_mode(params, data: PartsData, v0):
    sg = jax.lax.stop_gradient
    data_sg = jax.tree_util.tree_map(lambda x: sg(x) if eqx.is_array(x) else x, data)
    v = _newton(sg(params), data_sg, sg(v0))
    return at_mode(params, data, v)


def laplace_at(params, data: PartsData, v):
    """−2 log L by the Laplace approximation with ``v`` the mode at ``params``."""
    value, _, H = _assemble(v, params, data, floor=False)
    L = jnp.linalg.cholesky(H)
    return value + 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))


def value_grad_mode(params, v0, data: PartsData, forward: bool = True):
    """(−2 log L, its gradient in the parameters, the mode û, H at û) at ``params``, the
    inner Newton starting from ``v0``. The gradient is by forward mode (one JVP per
    parameter, a handful here): no transposed program, which compiles much faster."""
    def objective(q):
        v = conditional_mode(q, data, v0)
        return laplace_at(q, data, v), jax.lax.stop_gradient(v)

    if forward:
        def with_value(q):
            value, v = objective(q)
            return value, (value, v)

        grad, (value, v) = jax.jacfwd(with_value, has_aux=True)(params)
    else:
        (value, v), grad = jax.value_and_grad(objective, has_aux=True)(params)
    _, _, H = _assemble(v, params, data, floor=False)
    return value, grad, v, H


value_grad_mode_jit = program(noted(value_grad_mode, "the zero-inflation/dispersion fit"))


def criterion_at(params, data: PartsData, v0) -> float:
    """−2 log L (Laplace) at ``params``, the inner Newton starting from ``v0``."""
    with jax.enable_x64(True):
        value, _, _, _ = value_grad_mode_jit(jnp.asarray(params, jnp.float64),
                                             jnp.asarray(v0, jnp.float64), data)
    return float(value)


def fit(params0, data: PartsData, max_iter: int = 500, gtol: float = 1e-6) -> dict:
    """Fit by BFGS (:func:`glmmjax._engines.compiled.optimize.minimize_host`: the loop on the host, each
    evaluation one call of the compiled :func:`value_grad_mode`), then try near-zero
    variance parameters at exactly zero; the Hessian of −2 log L by central differences
    of the exact gradient (as the host GLMM engine). Only one program is compiled.
    Returns numpy arrays: the optimum, mode, −2 log L, Hessian and H⁻¹ (the random
    effects' conditional covariance) and the optimizer's report."""
    from ..host.lmm import central_differences
    from ..host.parts import search_scale
    from ..seam import BOUNDARY_TRY
    from .optimize import minimize_host

    sizes = data.cond.sizes + data.zi.sizes
    n_theta = data.cond.n_theta + data.zi.n_theta
    diagonal = diagonal_mask(sizes) if sizes else np.zeros(0, bool)
    last = {}
    # The search in x = params / scale, as the host engine's (host.parts.fit).
    scale = search_scale(data, np.shape(params0)[0])[0]

    def evaluate(x, v):
        value, grad, v_new, H = value_grad_mode_jit(jnp.asarray(x * scale), jnp.asarray(v),
                                                    data)
        value, grad = float(value), np.asarray(grad) * scale
        if np.isfinite(value):
            last["H"] = H
        return (value, grad), np.asarray(v_new)

    def to_boundary(x):
        theta = x[:n_theta]
        near = diagonal & (np.abs(theta) < BOUNDARY_TRY)
        return np.concatenate([np.where(near, 0.0, theta), x[n_theta:]])

    v0 = np.zeros(data.q)
    solution = minimize_host(evaluate, np.asarray(params0, np.float64) / scale, carry=v0,
                             gtol=gtol, loose_gtol=1e-5, expensive=True, first_step=0.5,
                             final_trial=to_boundary if n_theta else None,
                             max_iterations=max_iter)
    x, v = np.asarray(solution.x), np.asarray(solution.carry)
    params = x * scale
    hessian = central_differences(lambda x_: evaluate(x_, v)[0][1], x) / np.outer(scale, scale)
    (value, _), v_final = evaluate(x, v)
    _, _, _, H = value_grad_mode_jit(jnp.asarray(params), jnp.asarray(v_final), data)
    return dict(params=params, v=v_final, value=value, hessian=0.5 * (hessian + hessian.T),
                re_cov=np.linalg.inv(np.asarray(H)), status=int(solution.status),
                iterations=int(solution.iterations),
                n_evaluations=int(solution.n_evaluations), grad=np.asarray(solution.grad),
                initial=np.asarray(params0))


def start_params(data: PartsData):
    """Starting values (pure JAX, so batches compute them per response): β from the
    family's starting means (as glm's IRLS starts), θ at identity factors (scaled by
    the residual SD for Gaussian models, whose random effects are not relative to σ
    here, and by the spread of g(μ₀) on other power links:
    :func:`glmmjax._families.math.link_scale_spread`), β_zi = 0 (π = 1/2), and the
    dispersion model's intercept at a moment estimate of φ (Pearson families) or the
    family's own start."""
    family = data.family
    y, w, offset = data.y, data.weights, data.offset
    mu0 = family.initialize(y, w)
    eta0 = family.link.link(mu0)
    eta0 = jnp.where(jnp.isfinite(eta0), eta0, 0.0) - offset
    X = data.X
    beta = jnp.linalg.pinv(X) @ eta0 if X.shape[1] else jnp.zeros(0, y.dtype)
    mu = family.link.inverse(X @ beta + offset)
    mu = jnp.where(family.valid_mu(mu), mu, mu0)
    scale = jnp.ones((), y.dtype)
    log_phi = jnp.zeros((), y.dtype)
    if family.has_dispersion:
        if family.dispersion_method == "pearson":
            resid = w * (y - mu) ** 2 / family.variance(mu, jnp.ones((), y.dtype))
            d0 = jnp.sum(resid) / jnp.maximum(jnp.sum(w > 0), 1)
        else:
            d0 = family.dispersion_start(y, mu, w)
        d0 = jnp.clip(jnp.where(jnp.isfinite(d0), d0, 1.0), 1e-4, 1e4)
        log_phi = jnp.log(d0) / dispersion_power(family)
        if family.name == "gaussian":
            scale = jnp.sqrt(d0)
    if family.name != "gaussian":
        # SDs on a power link's scale are in the response's units (1 for other links).
        scale = jnp.asarray(fm.link_scale_spread(family.link, jnp, mu0, w), y.dtype)
    X_disp = data.X_disp
    if X_disp.shape[1]:
        beta_disp = jnp.linalg.pinv(X_disp) @ (log_phi - data.offset_disp)
    else:
        beta_disp = jnp.zeros(0, y.dtype)

    def theta0(sizes):
        return jnp.asarray(initial_theta(sizes) if sizes else np.zeros(0), y.dtype)

    return jnp.concatenate([
        theta0(data.cond.sizes) * scale, theta0(data.zi.sizes),
        beta, jnp.zeros(data.X_zi.shape[1], y.dtype), beta_disp,
    ])


start_params_jit = jax.jit(start_params)
