"""REML for Gaussian linear mixed models with a dispersion model (``lmer(...,
dispformula=..., reml=True)``), as glmmTMB's ``REML = TRUE``.

glmmTMB's REML integrates the fixed effects β out of the likelihood with a flat prior,
together with the random effects u (spherical: b = Λu, u ~ N(0, I)); for a Gaussian
response the integral is exact. With rows i, residual variances σᵢ² = exp(δᵢ)
(δ = X_d γ + offset, glmmTMB's dispersion model; σ² itself in glmmTMB 1.1.5), prior
weights wᵢ multiplying each row's log-density (as glmmTMB), A = ZΛ(θ) and
W = diag(wᵢ/σᵢ²), the joint precision of (u, β) is

    P = [[A'WA + I, A'WX], [X'WA, X'WX]]

and −2 log L_R(θ, γ) = Σᵢ wᵢ log(2πσᵢ²) − p·log(2π) + log|P| + r,
r = min over (u, β) of Σᵢ Wᵢ(yᵢ − aᵢ'u − xᵢ'β)² + |u|² (the penalized weighted
residual sum of squares at the joint mode). Without a dispersion model this is lme4's
REML criterion at σ² fixed.

The criterion is minimized over (θ, γ) by BFGS with central-difference gradients (a
handful of parameters; each evaluation is one dense Cholesky factorization of P). β̂
is the joint mode's β, its covariance the β block of P⁻¹ (the inverse of the Schur
complement X'V⁻¹X), as glmmTMB's ``vcov`` for REML fits; (θ, γ)'s covariance is twice
the inverse Hessian of the criterion, by central differences.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from scipy.optimize import minimize

from ..._model.covariance import numpy_factors
from ..compiled.optimize import Status

_LOG_2PI = float(np.log(2.0 * np.pi))


class GaussianREML:
    """The REML criterion of one Gaussian model with a dispersion model (module
    docstring), in numpy; ``data`` is a :class:`glmmjax._engines.compiled.parts.PartsData`."""

    def __init__(self, data, terms):
        used = np.asarray(data.weights) > 0
        self.used = used
        self.y = np.asarray(data.y, np.float64)[used] - np.asarray(data.offset)[used]
        self.w = np.asarray(data.weights, np.float64)[used]
        self.X = np.asarray(data.X, np.float64)[used]
        self.X_disp = np.asarray(data.X_disp, np.float64)[used]
        self.offset_disp = np.asarray(data.offset_disp, np.float64)[used]
        self.terms = terms
        self.n_theta = data.cond.n_theta
        self.n = int(np.sum(used))
        self.p = self.X.shape[1]
        self.q = data.cond.q

    def random_matrix(self, theta):
        """A = ZΛ(θ) on the rows used."""
        blocks = []
        factors = numpy_factors(theta, tuple(t.size for t in self.terms))
        for term, lam in zip(self.terms, factors):
            zl = np.asarray(term.z, np.float64)[self.used] @ np.asarray(lam)
            refs = np.asarray(term.refs)[self.used]
            block = np.zeros((self.n, term.n_levels, term.size))
            block[np.arange(self.n), refs] = zl
            blocks.append(block.reshape(self.n, -1))
        return np.concatenate(blocks, axis=1) if blocks else np.zeros((self.n, 0))

    def evaluate(self, x):
        """(criterion, joint mode (u, β), P's Cholesky factor) at x = (θ, γ)."""
        theta, gamma = x[: self.n_theta], x[self.n_theta :]
        log_var = self.X_disp @ gamma + self.offset_disp
        W = self.w * np.exp(-log_var)
        M = np.hstack([self.random_matrix(theta), self.X])
        P = M.T @ (W[:, None] * M)
        P[np.arange(self.q), np.arange(self.q)] += 1.0
        try:
            factor = cho_factor(P, lower=True)
        except np.linalg.LinAlgError:
            return np.inf, None, None
        mode = cho_solve(factor, M.T @ (W * self.y))
        resid = self.y - M @ mode
        pwrss = np.sum(W * resid**2) + np.sum(mode[: self.q] ** 2)
        log_det = 2.0 * np.sum(np.log(np.diagonal(factor[0])))
        value = (np.sum(self.w * (_LOG_2PI + log_var)) - self.p * _LOG_2PI + log_det + pwrss)
        return float(value), mode, factor

    def value(self, x):
        return self.evaluate(np.asarray(x, np.float64))[0]

    def gradient(self, x, h=1e-6):
        x = np.asarray(x, np.float64)
        out = np.empty_like(x)
        for k in range(x.size):
            step = h * max(1.0, abs(x[k]))
            up, down = x.copy(), x.copy()
            up[k] += step
            down[k] -= step
            out[k] = (self.value(up) - self.value(down)) / (2.0 * step)
        return out

    def hessian(self, x, h=1e-4):
        """Central second differences of the criterion."""
        x = np.asarray(x, np.float64)
        k = x.size
        steps = h * np.maximum(1.0, np.abs(x))
        f0 = self.value(x)
        out = np.empty((k, k))
        for i in range(k):
            for j in range(i, k):
                ei, ej = np.zeros(k), np.zeros(k)
                ei[i], ej[j] = steps[i], steps[j]
                if i == j:
                    out[i, i] = (self.value(x + ei) - 2.0 * f0 + self.value(x - ei)) / steps[i] ** 2
                else:
                    out[i, j] = out[j, i] = (
                        self.value(x + ei + ej) - self.value(x + ei - ej)
                        - self.value(x - ei + ej) + self.value(x - ei - ej)) / (4.0 * steps[i] * steps[j])
        return out


def fit_reml(params0, data, terms, max_iter: int = 500) -> dict:
    """Minimize the REML criterion from the parts engine's start ``params0`` (layout
    θ_c, θ_z = (), β, β_zi = (), γ); returns what :func:`glmmjax._engines.host.parts.fit` returns,
    with β the joint mode's and the Hessian's β block twice X'V⁻¹X (so that twice its
    inverse is β's REML covariance)."""
    model = GaussianREML(data, terms)
    n_theta, p = model.n_theta, model.p
    params0 = np.asarray(params0, np.float64)
    x0 = np.concatenate([params0[:n_theta], params0[n_theta + p :]])
    result = minimize(model.value, x0, jac=model.gradient, method="BFGS",
                      options={"gtol": 1e-7, "maxiter": max_iter})
    x = np.asarray(result.x)
    # A final polish: Newton steps with the difference Hessian, while they lower it.
    value, mode, factor = model.evaluate(x)
    for _ in range(5):
        grad = model.gradient(x)
        if np.max(np.abs(grad)) < 1e-9:
            break
        try:
            trial = x - np.linalg.solve(model.hessian(x), grad)
        except np.linalg.LinAlgError:
            break
        trial_value = model.value(trial)
        if not trial_value < value:
            break
        x, value = trial, trial_value
    value, mode, factor = model.evaluate(x)
    grad = model.gradient(x)
    h_tg = model.hessian(x)
    # The joint covariance as TMB's sdreport for β integrated out: (θ, γ) from the
    # criterion's Hessian, Σ = 2H⁻¹; β̂(θ, γ) the joint mode, J = dβ̂/d(θ, γ), and
    # Cov(β) = (P⁻¹)_ββ + JΣJ', Cov(β, (θ, γ)) = JΣ. The "Hessian" returned is twice
    # the inverse of that covariance, in the parts layout (θ, β, γ).
    p_inv = cho_solve(factor, np.eye(model.q + p))
    sigma = 2.0 * np.linalg.pinv(h_tg) if h_tg.size else np.zeros((0, 0))
    J = np.empty((p, x.size))
    for k in range(x.size):
        step = 1e-6 * max(1.0, abs(x[k]))
        up, down = x.copy(), x.copy()
        up[k] += step
        down[k] -= step
        J[:, k] = (model.evaluate(up)[1][model.q :] - model.evaluate(down)[1][model.q :]) / (
            2.0 * step)
    k_tg = x.size
    cov = np.zeros((k_tg + p, k_tg + p))  # ordered (θ, γ, β)
    cov[:k_tg, :k_tg] = sigma
    cov[k_tg:, :k_tg] = J @ sigma
    cov[:k_tg, k_tg:] = (J @ sigma).T
    cov[k_tg:, k_tg:] = p_inv[model.q :, model.q :] + J @ sigma @ J.T
    order = np.r_[0:n_theta, k_tg : k_tg + p, n_theta:k_tg]  # to (θ, β, γ)
    hessian = 2.0 * np.linalg.inv(cov[np.ix_(order, order)])
    params = np.concatenate([x[:n_theta], mode[model.q :], x[n_theta:]])
    if not np.isfinite(value):
        status = Status.NON_FINITE
    elif grad.size and np.max(np.abs(grad)) > 1e-4:
        status = Status.MAX_ITERATIONS if result.nit >= max_iter else Status.LINE_SEARCH_FAILED
    else:
        status = Status.CONVERGED

    def criterion(full):
        full = np.asarray(full, np.float64)
        return model.value(np.concatenate([full[:n_theta], full[n_theta + p :]]))

    return dict(params=params, v=mode[: model.q], value=value, hessian=hessian,
                re_cov=p_inv[: model.q, : model.q], status=int(status),
                iterations=int(result.nit), n_evaluations=int(result.nfev),
                grad=np.concatenate([grad[:n_theta], np.zeros(p), grad[n_theta:]]),
                initial=params0, criterion=criterion)
