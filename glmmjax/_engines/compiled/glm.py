"""The compiled GLM engine: the fit as a pure JAX function (jit and vmap apply).

``fit_glm(X, y, weights, offset, family)`` sees only arrays and the family (a pytree),
runs inside ``lax.while_loop`` and reports convergence through flags, so it jits once per
shape and vmaps over responses. ``glm`` wraps it: formula to design (numpy checks with
row labels, before tracing), aliased columns, the fit, the null deviance, a separation
check for binomial models, and the result object.

IRLS follows R's ``glm.fit`` step for step (same starting means, same working weights,
same convergence rule |D − D_old|/(|D| + 0.1) < ε, and Var(β̂) from the weights of the
last weighted least-squares solve), so coefficients and standard errors agree with R to
far better than the convergence tolerance. Unlike R, a step that raises the deviance is
halved (as in the glm2 package), and the working weights are formed without dividing by
dμ/dη, so observations deep in a binomial tail neither produce NaNs nor need clipping.

Families with a dispersion estimated by maximum likelihood (negative binomial θ, beta φ)
start from least squares on the linked response (as betareg does) and a moment estimate
of the dispersion, then take damped Newton steps with the exact Hessian in
(β, log dispersion) jointly.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..._families.base import Family
from ..._linalg import cholesky, solve_triangular
from ..._progress import noted
from ..seam import GLMFit
from .jit import program

_MAX_HALVINGS = 40


class IRLSResult(NamedTuple):
    """Output of :func:`irls`; shapes for n observations and p coefficients."""

    coef: jax.Array  # (p,)
    eta: jax.Array  # (n,) linear predictor, offset included
    deviance: jax.Array  # ()
    cov_unscaled: jax.Array  # (p, p): (X'WX)⁻¹ with W from the last WLS solve
    working_weights: jax.Array  # (n,) W of the last WLS solve
    iterations: jax.Array  # () int
    converged: jax.Array  # () bool


def _deviance(family: Family, y, eta, weights, dispersion):
    return jnp.sum(jnp.where(weights > 0, family.deviance_eta(y, eta, weights, dispersion),
                             0.0))


def _working_system(family: Family, X, y, weights, offset, eta, dispersion):
    """X'WX and X'Wz for the IRLS step, with z never formed explicitly.

    W = w·(dμ/dη)²/V(μ) and Wz = W·(η − offset) + w·(dμ/dη)·(y − μ)/V(μ): no division by
    dμ/dη, which underflows to zero in the tails of the probability links.
    """
    mu = family.link.inverse(eta)
    mu_eta = family.link.mu_eta(eta)
    var = family.variance_eta(eta, dispersion)
    usable = (weights > 0) & (var > 0) & jnp.isfinite(var) & jnp.isfinite(mu_eta)
    safe_var = jnp.where(usable, var, 1.0)
    w = jnp.where(usable, weights * mu_eta**2 / safe_var, 0.0)
    wz = w * (eta - offset) + jnp.where(usable, weights * mu_eta * (y - mu) / safe_var, 0.0)
    xtwx = (X * w[:, None]).T @ X
    return xtwx, X.T @ wz, w


def _solve_spd(matrix, rhs):
    """Solve a symmetric positive-definite system by Cholesky (NaN if not SPD).

    Written with ``cholesky`` and two triangular solves rather than
    ``cho_factor``/``cho_solve``, which take about four times as long to compile.
    """
    lower = cholesky(matrix)
    half = solve_triangular(lower, rhs, lower=True)
    return solve_triangular(lower, half, lower=True, trans=1), lower


def irls(X, y, weights, offset, family: Family, dispersion=1.0, eta_start=None, *,
         tol: float = 1e-8, max_iter: int = 25) -> IRLSResult:
    """Fit β by iteratively reweighted least squares (Fisher scoring), as R's glm.fit.

    Args:
        X: (n, p) full-rank model matrix.
        y, weights, offset: (n,) response (proportions for the binomial), prior weights
            and offset, as returned by ``Family.prepare_response``.
        family: the family; ``dispersion`` is passed to its variance and deviance (only
            the negative binomial and beta use it here).
        eta_start: (n,) starting linear predictor; default g(``family.initialize``).
        tol: R's ``epsilon``: stop when |D − D_old|/(|D| + 0.1) < tol.
        max_iter: R's ``maxit``.

    Returns:
        IRLSResult. Pure and traceable: jit and vmap apply.
    """
    dtype = X.dtype
    dispersion = jnp.asarray(dispersion, dtype=dtype)
    if eta_start is None:
        eta_start = family.link.link(family.initialize(y, weights))
    eta_start = jnp.asarray(eta_start, dtype=dtype)
    p = X.shape[1]

    def deviance(eta):
        return _deviance(family, y, eta, weights, dispersion)

    def acceptable(eta, dev, dev_old, first):
        valid = jnp.all(family.link.valid_eta(eta) & family.valid_mu(family.link.inverse(eta)))
        rising = (dev - dev_old) / (jnp.abs(dev) + 0.1) > 1e-10
        return valid & jnp.isfinite(dev) & (first | ~rising)

    def body(state):
        it, coef, eta, dev_old, _, _, _, _ = state
        xtwx, xtwz, w = _working_system(family, X, y, weights, offset, eta, dispersion)
        coef_full, _ = _solve_spd(xtwx, xtwz)
        eta_full = X @ coef_full + offset
        first = it == 0

        # The full step, then step halving towards the previous iterate (R halves only
        # for invalid or infinite deviance; we also halve a rising deviance after the
        # first step). The full step is the loop's first pass, so the deviance appears
        # once in the compiled program.
        def halve(h):
            k, t, _, _, _ = h
            t = jnp.where(k == 0, t, 0.5 * t)
            e = eta + t * (eta_full - eta)
            return k + 1, t, coef + t * (coef_full - coef), e, deviance(e)

        def keep_halving(h):
            k, _, _, e, d = h
            return (k == 0) | ((k <= _MAX_HALVINGS) & ~acceptable(e, d, dev_old, first))

        _, _, coef_new, eta_new, dev_new = jax.lax.while_loop(
            keep_halving, halve,
            (0, jnp.asarray(1.0, dtype), coef_full, eta_full, jnp.asarray(0.0, dtype)),
        )
        converged = jnp.abs(dev_new - dev_old) / (jnp.abs(dev_new) + 0.1) < tol
        return it + 1, coef_new, eta_new, dev_new, converged, xtwx, w, ~jnp.isfinite(dev_new)

    def cond(state):
        it, _, _, _, converged, _, _, broken = state
        return (it < max_iter) & ~converged & ~broken

    init = (
        jnp.asarray(0),
        jnp.zeros(p, dtype),
        eta_start,
        deviance(eta_start),
        jnp.asarray(False),
        jnp.eye(p, dtype=dtype),
        jnp.zeros_like(y),
        jnp.asarray(False),
    )
    it, coef, eta, dev, converged, xtwx, w, _ = jax.lax.while_loop(cond, body, init)
    cov_unscaled, _ = _solve_spd(xtwx, jnp.eye(p, dtype=dtype))
    return IRLSResult(coef, eta, dev, cov_unscaled, w, it, converged)


def _fisher_information(family: Family, X, weights, eta, dispersion):
    mu_eta = family.link.mu_eta(eta)
    var = family.variance_eta(eta, dispersion)
    usable = (weights > 0) & (var > 0)
    w = jnp.where(usable, weights * mu_eta**2 / jnp.where(usable, var, 1.0), 0.0)
    return (X * w[:, None]).T @ X


def _newton_ml(X, y, weights, offset, family: Family, coef0, dispersion0, *,
               max_iter: int = 100, with_dispersion: bool = True):
    """Maximize the log-likelihood over (β, ψ = log dispersion) by damped Newton steps.

    The Hessian is assembled from per-observation derivatives of ℓ(η, ψ) (two scalars),
    [X'D_ηη X, X'd_ηψ; ·, Σ d_ψψ], which compiles far faster than ``jax.hessian`` of the
    whole (p + 1)-parameter objective (the log-gamma derivatives dominate compile time).
    Returns (β̂, dispersion, Hessian of −ℓ at the optimum, iterations, converged).
    ``with_dispersion=False``: β alone, the dispersion held at ``dispersion0`` (families
    that IRLS does not fit, such as the zero-truncated Poisson).
    """
    p = X.shape[1]
    k = p + int(with_dispersion)

    def point(eta, psi, y_i, w_i):
        ll = family.loglik_eta(y_i, eta, w_i, jnp.exp(psi))
        return -jnp.where(w_i > 0, ll, 0.0)

    # Nested scalar grads: much cheaper to compile than jax.hessian, whose batched
    # tangents through the log-gamma derivatives XLA compiles slowly.
    d_eta = jax.grad(point, 0)
    d_psi = jax.grad(point, 1)
    per_obs = jax.vmap(
        lambda e, s, y_i, w_i: (
            point(e, s, y_i, w_i), d_eta(e, s, y_i, w_i), d_psi(e, s, y_i, w_i),
            jax.grad(d_eta, 0)(e, s, y_i, w_i), jax.grad(d_eta, 1)(e, s, y_i, w_i),
            jax.grad(d_psi, 1)(e, s, y_i, w_i),
        ),
        in_axes=(0, None, 0, 0),
    )

    fixed_psi = jnp.log(jnp.asarray(dispersion0, X.dtype))

    def psi_of(params):
        return params[p] if with_dispersion else fixed_psi

    def negloglik(params):
        eta = X @ params[:p] + offset
        return jnp.sum(jax.vmap(point, in_axes=(0, None, 0, 0))(eta, psi_of(params), y,
                                                                 weights))

    def derivatives(params):
        eta = X @ params[:p] + offset
        values, g_e, g_s, h_ee, h_es, h_ss = per_obs(eta, psi_of(params), y, weights)
        h_bb = (X * h_ee[:, None]).T @ X
        if not with_dispersion:
            return jnp.sum(values), X.T @ g_e, h_bb
        grad = jnp.concatenate([X.T @ g_e, jnp.sum(g_s)[None]])
        h_bp = X.T @ h_es
        hess = jnp.block([[h_bb, h_bp[:, None]], [h_bp[None, :], jnp.sum(h_ss)[None, None]]])
        return jnp.sum(values), grad, hess

    def body(state):
        it, params, _, _, _ = state
        value, grad, hess = derivatives(params)
        step, _ = _solve_spd(hess, grad)
        decrement = jnp.dot(grad, step)
        # Away from the optimum the Hessian may be indefinite: fall back to a diagonally
        # scaled gradient step; the halving below guarantees descent either way.
        newton_ok = jnp.all(jnp.isfinite(step)) & (decrement > 0)
        step = jnp.where(newton_ok, step, grad / (jnp.abs(jnp.diag(hess)) + 1.0))
        decrement = jnp.where(newton_ok, decrement, jnp.inf)
        # Converged when the Newton decrement g'H⁻¹g (twice the log-likelihood still to
        # gain, to second order) is at rounding level: then β̂ is within ~1e-9 SE.
        done = decrement < 1e-18

        # The full step is the first pass of the halving loop (one copy of the
        # objective in the compiled program).
        def halve(h):
            t, _, _ = h
            t = 0.5 * t
            trial = params - t * step
            return t, trial, negloglik(trial)

        def keep_halving(h):
            t, _, v = h
            return (t > 1e-12) & ~(v <= value + 1e-13 * jnp.abs(value))

        t, new_params, trial_value = jax.lax.while_loop(
            keep_halving, halve,
            (jnp.asarray(2.0, params.dtype), params, jnp.asarray(jnp.inf, params.dtype)),
        )
        stalled = t <= 1e-12
        # Near the optimum a step that does not lower −ℓ is lost in its rounding (the
        # host twin's ``newton`` says more).
        flat = (decrement < 1e-8) & ~(trial_value < value)
        new_params = jnp.where(done | stalled | flat, params, new_params)
        converged = done | ((stalled | flat) & (decrement < 1e-8))
        return it + 1, new_params, hess, converged, stalled | flat

    def cond(state):
        it, _, _, converged, stalled = state
        return (it < max_iter) & ~converged & ~stalled

    params0 = jnp.concatenate([coef0, jnp.log(jnp.atleast_1d(dispersion0))[:k - p]])
    hess0 = jnp.eye(k, dtype=params0.dtype)
    it, params, hess, converged, _ = jax.lax.while_loop(
        cond, body, (jnp.asarray(0), params0, hess0, jnp.asarray(False), jnp.asarray(False))
    )
    return params[:p], jnp.exp(psi_of(params)), hess, it, converged


def family_uses_irls(family: Family) -> bool:
    """Whether IRLS maximizes the family's likelihood (an exponential-family score);
    glmmTMB's families that are not (the zero-truncated Poisson) say ``irls = False``
    and are fitted by Newton's method on their log-likelihood."""
    return getattr(family, "irls", True)


def fit_glm(X, y, weights, offset, family: Family, *, tol: float = 1e-8,
            max_iter: int = 25, null_model: str = "none") -> GLMFit:
    """Fit a GLM to arrays: a pure JAX function (jit and vmap apply).

    The dispersion follows ``family.dispersion_method``: ``"none"`` (1), ``"fixed"``
    (the family's own value), ``"pearson"`` (the Pearson χ²/(n − p) as R's summary.glm
    computes it, Σ W·r²/(n − p) with working residuals r and the last IRLS weights W;
    the log-likelihood uses R's deviance/n instead) or ``"ml"`` (joint maximum
    likelihood).

    Args:
        X: (n, p) full-rank model matrix; y, weights, offset: (n,) arrays.
        family: a :class:`~glmmjax.families.Family`.
        tol, max_iter: IRLS convergence tolerance and iteration cap (R's defaults).
        null_model: R's null model for the null deviance: ``"mean"`` (intercept, no
            offset: μ = weighted mean of y), ``"intercept"`` (intercept-only fit with
            the offset), ``"offset"`` (no intercept: η = offset) or ``"none"``.

    Returns:
        GLMFit. Failures are reported through ``converged``, never raised.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from glmmjax.families import Poisson
        >>> with jax.enable_x64(True):
        ...     X = jnp.ones((4, 1)); y = jnp.array([1.0, 2.0, 3.0, 2.0])
        ...     fit = fit_glm(X, y, jnp.ones(4), jnp.zeros(4), Poisson())
        ...     print(round(float(jnp.exp(fit.coef[0])), 6))
        2.0
    """
    X = jnp.asarray(X)
    dtype = X.dtype
    y, weights, offset = (jnp.asarray(a, dtype=dtype) for a in (y, weights, offset))
    n_used = jnp.sum(weights > 0)
    p = X.shape[1]
    method = family.dispersion_method
    nan = jnp.asarray(jnp.nan, dtype)

    if method == "ml" or not family_uses_irls(family):
        # Start as betareg does: least squares of g(μ_start) − offset on X, then the
        # family's moment estimate of the dispersion; Newton does the rest.
        eta_start = family.link.link(family.initialize(y, weights)) - offset
        gram = (X * weights[:, None]).T @ X
        coef0, _ = _solve_spd(gram, X.T @ (weights * eta_start))
        mu0 = family.link.inverse(X @ coef0 + offset)
        with_dispersion = method == "ml"
        dispersion0 = (family.dispersion_start(y, mu0, weights) if with_dispersion
                       else jnp.asarray(1.0, dtype))
        coef, dispersion, hessian, iterations, converged = _newton_ml(
            X, y, weights, offset, family, coef0, dispersion0,
            with_dispersion=with_dispersion
        )
        eta = X @ coef + offset
        info = _fisher_information(family, X, weights, eta, dispersion)
        cov_unscaled, _ = _solve_spd(info, jnp.eye(p, dtype=dtype))
        if not with_dispersion:
            # The observed information: the Fisher information of IRLS's working model
            # is not this family's.
            cov_unscaled, _ = _solve_spd(hessian, jnp.eye(p, dtype=dtype))
            vcov = cov_unscaled
            dispersion_se = nan
        elif family.joint_vcov:
            full, _ = _solve_spd(hessian, jnp.eye(p + 1, dtype=dtype))
            vcov = full[:p, :p]
            dispersion_se = dispersion * jnp.sqrt(full[p, p])
        else:
            vcov = cov_unscaled
            dispersion_se = dispersion / jnp.sqrt(hessian[p, p])
        deviance = None  # computed below, with the null deviance
        loglik_dispersion = dispersion
    else:
        if method == "fixed":
            dispersion = jnp.asarray(family.theta if hasattr(family, "theta") else 1.0, dtype)
        else:
            dispersion = jnp.asarray(1.0, dtype)
        result = irls(X, y, weights, offset, family, dispersion, tol=tol, max_iter=max_iter)
        coef, eta, deviance = result.coef, result.eta, result.deviance
        cov_unscaled = result.cov_unscaled
        iterations, converged = result.iterations, result.converged
        dispersion_se = nan
        loglik_dispersion = dispersion
        if method == "pearson":
            # R's summary.glm: Σ W·r² / (n − p) with the working residuals r at the final
            # fit and the working weights W of the last WLS solve (one step behind), which
            # is the Pearson χ² up to the last step's change in μ.
            mu = family.link.inverse(eta)
            working = (y - mu) / family.link.mu_eta(eta)
            w_last = result.working_weights
            pearson = jnp.sum(jnp.where(w_last > 0, w_last * working**2, 0.0))
            dispersion = pearson / (n_used - p)
            loglik_dispersion = family.loglik_dispersion(deviance, weights)
        vcov = dispersion * cov_unscaled
    mu = family.link.inverse(eta)
    ll = family.loglik_eta(y, eta, weights, loglik_dispersion)
    loglik = jnp.sum(jnp.where(weights > 0, ll, 0.0))
    null_dispersion = dispersion if method in ("ml", "fixed") else jnp.asarray(1.0, dtype)
    eta_null = _null_eta(X, y, weights, offset, family, null_dispersion, null_model, tol,
                         max_iter)
    # One vmapped deviance for fit and null model: a single copy in the compiled program.
    both = jax.vmap(lambda e: _deviance(family, y, e, weights, null_dispersion))(
        jnp.stack([eta, eta_null])
    )
    if deviance is None:
        deviance = both[0]
    # IRLS fits the null model; families it does not fit have none (glmmTMB gives no
    # deviance for them either).
    has_null = null_model != "none" and family_uses_irls(family)
    null_deviance = both[1] if has_null else jnp.asarray(jnp.nan, dtype)
    return GLMFit(
        coef=coef, vcov=vcov, cov_unscaled=cov_unscaled, dispersion=jnp.asarray(dispersion),
        dispersion_se=jnp.asarray(dispersion_se, dtype), eta=eta, mu=mu, deviance=deviance,
        loglik=loglik, iterations=iterations, converged=converged,
        null_deviance=null_deviance,
    )


def _null_eta(X, y, weights, offset, family, dispersion, null_model, tol, max_iter):
    """η of R's null model: weighted mean, intercept-only fit, or η = offset."""
    if null_model == "none":
        return offset
    if null_model == "mean":
        mean = jnp.sum(weights * y) / jnp.sum(weights)
        return family.link.link(jnp.full_like(y, mean))
    if null_model == "offset":
        return offset
    if null_model == "intercept":
        ones = jnp.ones((X.shape[0], 1), X.dtype)
        return irls(ones, y, weights, offset, family, dispersion, tol=tol,
                    max_iter=max_iter).eta
    raise ValueError(
        f"null_model must be 'none', 'mean', 'intercept' or 'offset', got {null_model!r}"
    )


fit_glm_program = program(noted(fit_glm, "the GLM fit"))
