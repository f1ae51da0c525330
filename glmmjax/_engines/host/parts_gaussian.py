"""Gaussian identity-link models with a dispersion model (``dispformula=``): the exact
marginal likelihood, observation-level random-effects terms (one level per row) folded
into the residual variance.

For a Gaussian response with the identity link the Laplace approximation of
:mod:`glmmjax._engines.host.parts` is exact, so its criterion is the marginal
−2 log L of y ~ N(Xβ + o, V), V = D + BB', where B = ZΛ of the terms with fewer levels
than rows and D is diagonal: φᵢ/wᵢ (φᵢ = exp(δᵢ), glmmTMB's Gaussian σ²; prior weights
multiply the row's log-likelihood, as glmmTMB: a constant in φ is added, ``_weights_term``)
plus, per observation-level term, ‖Λₜ'zᵢ‖² (that term's variance on row i). By Woodbury,
with M = I + B'D⁻¹B (q_B × q_B, q_B the other terms' effects),

    −2 log L = Σ log dᵢ + log|M| + r'V⁻¹r + n log 2π,   V⁻¹ = D⁻¹ − D⁻¹BM⁻¹B'D⁻¹,

with r = y − Xβ − o. The Laplace route forms H = I + A'WA over all q effects (q ≥ n
with an observation-level term), and where the dispersion is fixed near 0
(``dispformula=~0``: W ~ 7e7) must factor it by a QR decomposition to keep its O(1)
eigenvalues; here nothing is larger than q_B × q_B and V is as well conditioned as the
model's variances.

The search runs over (θ, β_disp) with β profiled out by generalized least squares; the
gradient of the profiled criterion is the partial one at β̂. Derivatives, with
a = V⁻¹r and G = B'V⁻¹ = M⁻¹B'D⁻¹: ∂/∂dᵢ = (V⁻¹)ᵢᵢ − aᵢ², ∂/∂B = 2G' − 2a(B'a)',
∂/∂β = −2X'a. The SEs come from the Hessian of the full criterion in (θ, β, β_disp)
(forward differences of its exact gradient), as the Laplace route's do.
"""

from __future__ import annotations

import numpy as np

from ..._model.covariance import _tril_indices_colmajor
from ..blas import single_threaded_blas
from .parts import LOOSE_GTOL, cho_factor, cho_solve, hessian_of

_LOG_2PI = float(np.log(2.0 * np.pi))


def observation_level(terms, n: int) -> tuple[bool, ...]:
    """Per random-effects term: whether it has one level per row (each row its own)."""
    return tuple(
        t.n_levels == n and np.unique(np.asarray(t.refs)).size == n for t in terms)


def applies(family, parts, weights, reml: bool) -> bool:
    """Whether this closed form serves the model: a Gaussian identity-link model (no
    zero-inflation part, maximum likelihood, positive prior weights)."""
    if reml or parts.zi is not None or family.name != "gaussian":
        return False
    return family.link.name == "identity" and bool(np.all(np.asarray(weights) > 0))


class GaussianParts:
    """The closed-form criterion of one model (module docstring)."""

    def __init__(self, data, obs: tuple[bool, ...]):
        f64 = lambda x: np.asarray(x, np.float64)  # noqa: E731
        self.y, self.w = f64(data.y), f64(data.weights)
        self.X, self.offset = f64(data.X), f64(data.offset)
        self.X_disp, self.offset_disp = f64(data.X_disp), f64(data.offset_disp)
        self.n = self.y.shape[0]
        self.p, self.p_disp = self.X.shape[1], self.X_disp.shape[1]
        terms = data.cond
        self.n_theta = terms.n_theta
        # Per term: (indicators, z, size, θ slice, column slice, observation-level).
        self.terms, t0, c0 = [], 0, 0
        for J, z, size, levels, is_obs in zip(terms.indicators, terms.z, terms.sizes,
                                              terms.n_levels, obs):
            count, width = size * (size + 1) // 2, size * levels
            self.terms.append((f64(J), f64(z), size, slice(t0, t0 + count),
                               slice(c0, c0 + width), is_obs))
            t0, c0 = t0 + count, c0 + width
        self.q = c0
        self._units: dict = {}
        # Σ w log(2πφ) − Σ log(2πφ/w): the weights' constant (0 with unit weights).
        self._unit_weights = bool(np.all(self.w == 1.0))
        self._sum_log_w = float(np.sum(np.log(self.w)))
        self.rhs = np.column_stack([self.y - self.offset, self.X])

    # -- pieces -------------------------------------------------------------------------
    @staticmethod
    def _factor(theta_t, size):
        lam = np.zeros((size, size))
        rows, cols = _tril_indices_colmajor(size)
        lam[rows, cols] = theta_t
        return lam

    def _block(self, J, z, lam):
        zl = z @ lam
        return (J[:, :, None] * zl[:, None, :]).reshape(self.n, -1)

    def matrix(self, theta, observation: bool | None = False):
        """ZΛ of the terms that are not observation-level (``observation=False``), or of
        all terms (None)."""
        blocks = [self._block(J, z, self._factor(theta[ts], size))
                  for J, z, size, ts, _, is_obs in self.terms
                  if observation is None or is_obs == observation]
        return np.concatenate(blocks, axis=1) if blocks else np.zeros((self.n, 0))

    def _unit_block(self, index, k):
        """∂(ZΛ_t)/∂θ_k of term ``index`` (Λ linear in θ: the same at every θ, kept)."""
        key = (index, k)
        if key not in self._units:
            J, z, size, ts, _, _ = self.terms[index]
            unit = np.zeros(ts.stop - ts.start)
            unit[k] = 1.0
            self._units[key] = self._block(J, z, self._factor(unit, size))
        return self._units[key]

    def _variances(self, theta, log_phi):
        """dᵢ and, per observation-level term, sᵢ = Λₜ'zᵢ (n, S_t)."""
        with np.errstate(over="ignore"):  # an infinite variance is refused by solve()
            d = np.exp(log_phi) / self.w
        spans = []
        for _J, z, size, ts, _, is_obs in self.terms:
            if is_obs:
                s = z @ self._factor(theta[ts], size)
                d = d + np.sum(s * s, axis=1)
                spans.append(s)
        return d, spans

    def _weights_term(self, log_phi):
        """−2 log L's constant from the prior weights, and its slope in each δᵢ."""
        if self._unit_weights:
            return 0.0, None
        slope = self.w - 1.0
        return float(slope @ (_LOG_2PI + log_phi) + self._sum_log_w), slope

    # -- the criterion ------------------------------------------------------------------
    def solve(self, theta, log_phi):
        """(d, spans, B, M's factor, log|M|, V⁻¹[y − o, X]) at θ and log φ; None where
        a variance is not positive or M is not positive definite."""
        d, spans = self._variances(theta, log_phi)
        if not np.all(np.isfinite(d)) or np.any(d <= 0):
            return None
        B = self.matrix(theta)
        K = self.rhs / d[:, None]
        if B.shape[1]:
            Bd = B / d[:, None]
            M = B.T @ Bd
            M.flat[:: M.shape[0] + 1] += 1.0
            try:
                factor = cho_factor(M)
            except np.linalg.LinAlgError:
                return None
            logdet = 2.0 * float(np.sum(np.log(np.diagonal(factor[0]))))
            K = K - Bd @ cho_solve(factor, B.T @ K)
        else:
            factor, logdet = None, 0.0
        return d, spans, B, factor, logdet, K

    def beta_hat(self, solved):
        """β̂ = (X'V⁻¹X)⁻¹X'V⁻¹(y − o) from :meth:`solve`'s V⁻¹[y − o, X]."""
        if not self.p:
            return np.zeros(0)
        K = solved[5]
        gram = self.X.T @ K[:, 1:]
        return np.linalg.solve(0.5 * (gram + gram.T), self.X.T @ K[:, 0])

    def value_grad(self, theta, beta, beta_disp, solved=None):
        """(−2 log L, its gradient in (θ, β, β_disp)) at the given parameters."""
        log_phi = self.X_disp @ beta_disp + self.offset_disp
        if solved is None:
            solved = self.solve(theta, log_phi)
        size = self.n_theta + self.p + self.p_disp
        if solved is None:
            return np.inf, np.full(size, np.nan)
        d, spans, B, factor, logdet, K = solved
        r = self.rhs[:, 0] - self.X @ beta
        a = K[:, 0] - K[:, 1:] @ beta
        constant, slope = self._weights_term(log_phi)
        value = float(np.sum(np.log(d)) + logdet + r @ a + self.n * _LOG_2PI + constant)
        # ∂/∂dᵢ = (V⁻¹)ᵢᵢ − aᵢ²; (V⁻¹)ᵢᵢ = 1/dᵢ − Σₖ (D⁻¹B)ᵢₖGₖᵢ with G = M⁻¹B'D⁻¹.
        diag = 1.0 / d
        if factor is not None:
            Bd = B / d[:, None]
            G = cho_solve(factor, Bd.T)
            diag = diag - np.einsum("ik,ki->i", Bd, G)
            Ba = B.T @ a
        e = diag - a * a
        grad_theta = np.zeros(self.n_theta)
        spans = iter(spans)
        for index, (_J, z, size, ts, _, is_obs) in enumerate(self.terms):
            rows, cols = _tril_indices_colmajor(size)
            if is_obs:
                s = next(spans)
                # ∂‖Λ'zᵢ‖²/∂Λ_rc = 2 sᵢ_c zᵢ_r.
                grad_theta[ts] = 2.0 * ((e[:, None] * z[:, rows]) * s[:, cols]).sum(axis=0)
                continue
            for k in range(ts.stop - ts.start):
                dB = self._unit_block(index, k)
                # Columns of dB sit among B's (the non-observation-level terms in order).
                start = sum(t[4].stop - t[4].start for t in self.terms[:index] if not t[5])
                cols_b = slice(start, start + dB.shape[1])
                grad_theta[ts.start + k] = 2.0 * (np.sum(G[cols_b].T * dB)
                                                  - (dB.T @ a) @ Ba[cols_b])
        grad_beta = -2.0 * (self.X.T @ a)
        slope_phi = e * np.exp(log_phi) / self.w
        if slope is not None:
            slope_phi = slope_phi + slope
        grad_disp = self.X_disp.T @ slope_phi
        return value, np.concatenate([grad_theta, grad_beta, grad_disp])

    def posterior(self, theta, beta, beta_disp):
        """The spherical random effects' conditional mode u = A'V⁻¹r and covariance
        I − A'V⁻¹A over all terms (A = ZΛ of all of them; the Laplace route's û and
        H⁻¹, exact here)."""
        log_phi = self.X_disp @ beta_disp + self.offset_disp
        d, _, B, factor, _, K = self.solve(theta, log_phi)
        a = K[:, 0] - K[:, 1:] @ beta
        A = self.matrix(theta, observation=None)
        VA = A / d[:, None]
        if factor is not None:
            VA = VA - (B / d[:, None]) @ cho_solve(factor, B.T @ VA)
        cov = -(A.T @ VA)
        cov.flat[:: self.q + 1] += 1.0
        return A.T @ a, 0.5 * (cov + cov.T)


def _start_metric(gradient, x0):
    """BFGS's starting inverse Hessian: the inverse of the Hessian at the start by
    forward differences of the exact gradient (len(x0) more evaluations, each cheap
    here), where that is positive definite; else None (the identity)."""
    from .lmm import forward_differences

    if not x0.size:
        return None
    H = forward_differences(gradient, x0, gradient(x0), 1e-6)
    H = 0.5 * (H + H.T)
    if not np.all(np.isfinite(H)):
        return None
    try:
        factor = cho_factor(H)
    except np.linalg.LinAlgError:
        return None
    return cho_solve(factor, np.eye(x0.size))


@single_threaded_blas()  # threaded OpenBLAS spins against XLA's threads (glmmjax._engines.blas)
def fit(params0, data, obs: tuple[bool, ...], max_iter: int = 500) -> dict:
    """The fit (:func:`glmmjax._engines.host.parts.fit`'s result): BFGS over (θ, β_disp)
    with β profiled, then the full parameters' Hessian for the SEs."""
    from ..._model.covariance import diagonal_mask
    from ..compiled.optimize import minimize_host
    from ..seam import BOUNDARY_TRY

    model = GaussianParts(data, obs)
    n_theta, p = model.n_theta, model.p
    diagonal = diagonal_mask(data.cond.sizes)

    def full(x):
        """The full parameter vector (θ, β, β_disp) from (θ, β_disp), β at β̂."""
        theta, beta_disp = x[:n_theta], x[n_theta:]
        solved = model.solve(theta, model.X_disp @ beta_disp + model.offset_disp)
        beta = model.beta_hat(solved) if solved is not None else np.full(p, np.nan)
        return theta, beta, beta_disp, solved

    def profiled(x, carry):
        """The criterion in the search's coordinates: θ/s (s the start's residual SD: θ
        is on the response's scale, β_disp on a log scale; unscaled, BFGS takes tens of
        steps to move θ by a few SDs), β_disp."""
        theta, beta, beta_disp, solved = full(np.concatenate([x[:n_theta] * scale,
                                                              x[n_theta:]]))
        value, grad = model.value_grad(theta, beta, beta_disp, solved)
        return (value, np.concatenate([grad[:n_theta] * scale, grad[n_theta + p:]])), beta

    def to_boundary(x):
        theta = x[:n_theta]
        near = diagonal & (np.abs(theta) < BOUNDARY_TRY)
        return np.concatenate([np.where(near, 0.0, theta), x[n_theta:]])

    def split(params):
        end = n_theta + p + model.p_disp
        return params[:n_theta], params[n_theta : n_theta + p], params[n_theta + p : end]

    def criterion(params):
        return model.value_grad(*split(np.asarray(params, np.float64)))[0]

    def gradient(params):
        return model.value_grad(*split(params))[1]

    params0 = np.asarray(params0, np.float64)
    residuals = model.rhs[:, 0] - model.X @ params0[n_theta : n_theta + p]
    scale = float(np.sqrt(np.mean(residuals * residuals)))
    if not np.isfinite(scale) or scale <= 0:
        scale = 1.0
    x0 = np.concatenate([params0[:n_theta] / scale, params0[n_theta + p:]])
    beta0 = params0[n_theta : n_theta + p]
    solution = minimize_host(profiled, x0, carry=beta0, inverse_hessian=_start_metric(
                                 lambda x: profiled(x, beta0)[0][1], x0),
                             gtol=1e-6, loose_gtol=LOOSE_GTOL, expensive=True, first_step=0.5,
                             final_trial=to_boundary if n_theta else None,
                             max_iterations=max_iter)
    x = np.asarray(solution.x)
    theta, beta_disp = x[:n_theta] * scale, x[n_theta:]
    params = np.concatenate([theta, np.asarray(solution.carry), beta_disp])
    value, grad = model.value_grad(*split(params))
    hessian = hessian_of(gradient, params, grad)
    v, re_cov = model.posterior(*split(params))
    return dict(params=params, v=v, value=float(value), hessian=hessian, re_cov=re_cov,
                status=int(solution.status), iterations=int(solution.iterations),
                n_evaluations=int(solution.n_evaluations), grad=grad,
                initial=params0, criterion=criterion)
