"""Profile likelihood of an LMM fitted on the sparse pedigree path.

The dense profile (:mod:`glmmjax._inference.profile`) minimizes the ML deviance over
ω = (SDs and atanh correlations, log σ, β) with a compiled BFGS on the dense blocks.
Here the same deviance comes from the sparse factorization of M(θ)
(:mod:`glmmjax._engines.host.sparse_lmm`), with β eliminated in closed form: for fixed
θ and σ the penalized residual sum of squares is r²(θ) + |L_X'(β − β̂(θ))|², so a free
β sits at β̂(θ), and with β_j fixed at x the others contribute (x − β̂_j)²/(L_X L_X')⁻¹_jj.
Only the variance parameters (a few) are optimized numerically (BFGS on central
differences), one sparse factorization per point. :class:`SparseProblem` offers what
:func:`glmmjax._inference.profile._find_bound` uses of a problem.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import scipy.optimize

from .._engines.host import sparse_lmm
from .._model.cov_structures import term_structures


class SparseProblem:
    """The ML deviance of a sparse-path LMM in ω = (variance parameters, log σ, β)."""

    def __init__(self, result):
        design = result.design
        self.model = sparse_lmm._model(design, reml=False)
        self.structures = term_structures(design.terms)
        from .profile import canonical_omega, natural_from_theta

        omega_var, values, kinds = natural_from_theta(result.theta_values, self.structures,
                                                      result.sigma)
        self.n_var = omega_var.size + 1  # with log σ
        self.p = len(result.beta)
        start = np.concatenate([omega_var, [math.log(result.sigma)]])
        # The ML optimum (the fit may be REML): variance parameters with β at β̂(θ).
        solution = self._minimize(start, np.zeros(start.size, dtype=bool), None)
        variance = canonical_omega(solution.x, self.structures) if omega_var.size else solution.x
        beta = self._beta_hat(variance)
        self.omega_hat = np.concatenate([variance, beta])
        self.base = float(solution.fun)
        self.kinds = kinds + ["sigma"] + ["beta"] * self.p
        self.values = np.concatenate([values, [math.exp(variance[-1])], beta])
        self.hessian = self._hessian(self.omega_hat)
        self.solutions: dict[int, list] = {}

    # -- the deviance ---------------------------------------------------------------------
    def _theta(self, variance):
        from .profile import omega_to_theta

        sigma = math.exp(variance[-1])
        return np.asarray(omega_to_theta(np.asarray(variance[:-1]), self.structures, sigma),
                          dtype=np.float64), sigma

    def _beta_hat(self, variance):
        theta, _ = self._theta(variance)
        return sparse_lmm._pieces(theta, self.model, with_beta=True)[3]

    def deviance(self, variance, beta_fixed=None) -> float:
        """ML deviance at the variance parameters, β at β̂(θ) except ``beta_fixed``
        = (j, x): β_j = x, the others at their minimum."""
        try:
            theta, sigma = self._theta(variance)
            logdet_z, L_x, r2, beta = sparse_lmm._pieces(theta, self.model, with_beta=True)
        except (np.linalg.LinAlgError, RuntimeError, ValueError):
            return math.inf
        penalty = 0.0
        if beta_fixed is not None:
            j, x = beta_fixed
            L_inv = scipy.linalg.solve_triangular(L_x, np.eye(self.p), lower=True)
            penalty = (x - beta[j]) ** 2 / float(np.sum(L_inv[:, j] ** 2))
        s2 = sigma**2
        value = logdet_z + (r2 + penalty) / s2 + self.model.nobs * math.log(2.0 * math.pi * s2)
        return float(value - self.model.sum_log_weights)

    def full_deviance(self, omega) -> float:
        """The deviance at every coordinate of ω (β included, not minimized)."""
        variance, beta = omega[: self.n_var], omega[self.n_var :]
        theta, sigma = self._theta(variance)
        logdet_z, L_x, r2, beta_hat = sparse_lmm._pieces(theta, self.model, with_beta=True)
        penalty = float(np.sum((L_x.T @ (beta - beta_hat)) ** 2))
        s2 = sigma**2
        value = logdet_z + (r2 + penalty) / s2 + self.model.nobs * math.log(2.0 * math.pi * s2)
        return float(value - self.model.sum_log_weights)

    def _minimize(self, start, fixed_mask, beta_fixed):
        free = ~fixed_mask

        def f(x):
            point = start.copy()
            point[free] = x
            return self.deviance(point, beta_fixed)

        def grad(x):
            g = np.empty(x.size)
            for i in range(x.size):
                h = 1e-6 * max(1.0, abs(x[i]))
                e = np.zeros(x.size)
                e[i] = h
                g[i] = (f(x + e) - f(x - e)) / (2.0 * h)
            return g

        x0 = start[free]
        if x0.size == 0:
            return scipy.optimize.OptimizeResult(x=start.copy(), fun=f(x0))
        solution = scipy.optimize.minimize(f, x0, jac=grad, method="BFGS",
                                           options={"gtol": 1e-7, "maxiter": 500})
        x = start.copy()
        x[free] = solution.x
        return scipy.optimize.OptimizeResult(x=x, fun=float(solution.fun))

    def _hessian(self, omega):
        k = omega.size
        H = np.zeros((k, k))
        h = 1e-4 * np.maximum(1.0, np.abs(omega))
        f0 = self.full_deviance(omega)
        for a in range(k):
            e = np.zeros(k)
            e[a] = h[a]
            H[a, a] = (self.full_deviance(omega + e) - 2 * f0
                       + self.full_deviance(omega - e)) / h[a] ** 2
            for b in range(a):
                f = np.zeros(k)
                f[b] = h[b]
                H[a, b] = H[b, a] = (
                    self.full_deviance(omega + e + f) - self.full_deviance(omega + e - f)
                    - self.full_deviance(omega - e + f) + self.full_deviance(omega - e - f)
                ) / (4 * h[a] * h[b])
        eig, vec = np.linalg.eigh(0.5 * (H + H.T))
        floor = max(1e-8 * max(eig.max(), 1e-12), 1e-12)
        return (vec * np.maximum(eig, floor)) @ vec.T

    # -- what the profiling code uses ---------------------------------------------------
    def wald_step(self, j: int) -> float:
        cov = 2.0 * np.linalg.inv(self.hessian)
        return float(np.sqrt(max(cov[j, j], 1e-12)))

    def deviance_at(self, j: int, x: float) -> float:
        known = self.solutions.setdefault(j, [])
        start = (min(known, key=lambda item: abs(item[0] - x))[1] if known
                 else self.omega_hat[: self.n_var])
        start = np.array(start, dtype=float)
        mask = np.zeros(self.n_var, dtype=bool)
        if j < self.n_var:
            start[j] = x
            mask[j] = True
            solution = self._minimize(start, mask, None)
        else:
            solution = self._minimize(start, mask, (j - self.n_var, x))
        if np.isfinite(solution.fun):
            known.append((x, solution.x))
        return float(solution.fun)

    def zeta(self, j: int, x: float) -> float:
        change = self.deviance_at(j, x) - self.base
        return math.copysign(math.sqrt(max(change, 0.0)), x - self.omega_hat[j])
