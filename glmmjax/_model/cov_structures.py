"""Covariance structures of a random-effects term: Λ_t as a function of its θ_t.

lme4 gives every term an unstructured covariance: θ_t is the lower triangle of Λ_t. glmmTMB
(and lme4 ≥ 2.0) also offer structured ones, written around the bar: ``diag(x | g)``,
``cs(x | g)``, ``ar1(time + 0 | g)``. Each structure here is a map θ_t ↦ Λ_t (S×S) with
σ²·Λ_tΛ_t' the term's covariance, so everything downstream of Λ (both LMM engines, the
GLMM Laplace and AGQ objectives, their gradients by autodiff, batches, profiles) works
unchanged; the numpy host engine also needs the map's vector-Jacobian product
(:meth:`CovarianceStructure.pullback`), written out here.

θ_t of a structured term holds *relative standard deviations* (the "scale" entries, SD/σ,
treated by the optimizers as lme4's diagonal entries: log-scaled, with a boundary at 0)
and unconstrained transforms of correlations. The covariance depends on a scale entry only
through its absolute value, so a negative value the optimizer may visit is the same model
(Λ itself is unchanged: no random-effect modes need their sign flipped), and the reported
θ holds |SD|.

Structures (glmmTMB's names and covariances; ρ's transform is ours):

- ``us``: unstructured (lme4's θ, the default).
- ``diag``: independent effects with their own variances, Λ = diag(θ).
- ``cs``: heterogeneous compound symmetry, Σ = D·R·D with D = σ·diag(θ_1..θ_S) and R
  one correlation ρ off the diagonal; ρ = (1 + a)·logistic(η) − a, a = 1/(S − 1), which
  keeps R positive definite. Λ = diag(θ)·R^{1/2} with the symmetric root
  R^{1/2} = √(1−ρ)·I + c·11', c = (√(1+(S−1)ρ) − √(1−ρ))/S.
- ``homcs``: compound symmetry with one variance: Σ = σ²θ_1²·R.
- ``ar1``: stationary AR(1) over S equally spaced times, Σ_ij = σ²θ_1²·ρ^|i−j|,
  ρ = tanh(η); Λ = θ_1·L with L the closed-form Cholesky factor of the AR(1)
  correlation (L_i0 = ρ^i, L_ij = ρ^(i−j)·√(1−ρ²) for 1 ≤ j ≤ i).
- ``toep``: heterogeneous Toeplitz, Σ = D·R·D with R_ij = ρ_|i−j| (S − 1 lag
  correlations). θ_t = (S relative SDs, η_1..η_{S−1}) with φ_k = tanh(η_k) the partial
  autocorrelations, mapped to ρ by the Durbin–Levinson recursion: every φ in (−1, 1)^{S−1}
  gives a positive definite R and every such R has one φ. Λ = D·chol(R).
- ``ou``: Ornstein–Uhlenbeck (continuous-time AR(1)) over S increasing times t_i (the
  numbers in a factor's level labels, as glmmTMB's ``numFactor``):
  Σ_ij = σ²θ_1²·exp(−κ|t_i − t_j|), κ = exp(η). The process is Markov, so its Cholesky
  factor is closed-form as ar1's: L_ij = r_(j+1..i)·w_j with r_k = exp(−κ(t_k − t_(k−1))),
  r_(j+1..i) their product, w_0 = 1 and w_j = √(1 − r_j²).
- ``exp`` and ``gau``: spatial correlation over S points (coordinates in a factor's level
  labels, "(x,y)" as glmmTMB's ``numFactor``): Σ_ij = σ²θ_1²·exp(−d_ij/ℓ) or
  σ²θ_1²·exp(−(d_ij/ℓ)²), d the Euclidean distance, ℓ = exp(η) (glmmTMB's scale);
  Λ = θ_1·chol(C).
- ``mat``: spatial Matérn over the same points, C_ij = u^ν·K_ν(u)/(Γ(ν)·2^(ν−1)) with
  u = d_ij/φ, range φ = exp(η_1) and smoothness ν = exp(η_2) both estimated (glmmTMB 1.1.5's
  ``mat``, TMB's ``matern``; K_ν and its ν-derivative in :mod:`glmmjax._model.matern`).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import scipy.linalg

from .._lazyjax import jnp
from .._linalg import cholesky as small_cholesky
from . import matern

STRUCTURE_NAMES = ("us", "diag", "cs", "homcs", "ar1", "toep", "ou", "exp", "gau", "mat")


@functools.cache
def _tril_cached(size: int) -> tuple[np.ndarray, np.ndarray]:
    cols, rows = np.triu_indices(size)  # column-major lower triangle (lme4's θ order)
    return rows, cols


def tril_indices(size: int) -> tuple[np.ndarray, np.ndarray]:
    # Copies: JAX caches constants made from numpy arrays by identity, and an index
    # array first converted under x64 (int64) and reused without it broke a float32 trace.
    rows, cols = _tril_cached(size)
    return rows.copy(), cols.copy()


def _is_numpy(xp) -> bool:
    return xp is np


@dataclasses.dataclass(frozen=True)
class CovarianceStructure:
    """The map θ_t ↦ Λ_t of one term (abstract; frozen, so hashable and static in
    compiled programs). ``size`` is S, the term's number of random effects per level."""

    size: int

    name = "?"
    # Summaries print the whole correlation matrix (as for ``us``) rather than one
    # correlation parameter on the term's first row (glmmTMB's layout for cs and ar1).
    shows_correlation_matrix = False

    @property
    def n_params(self) -> int:
        raise NotImplementedError

    def factor(self, params, xp=jnp):
        """Λ_t (S×S) from θ_t, with ``xp`` numpy or jax.numpy."""
        raise NotImplementedError

    def pullback(self, params, grad) -> np.ndarray:
        """Σ_ij G_ij·∂Λ_ij/∂θ_k for a gradient G = ∂f/∂Λ_t (numpy, host engines)."""
        raise NotImplementedError

    def jacobian(self, params) -> np.ndarray:
        """∂Λ_t/∂θ_k, (k, S, S) numpy: the pullback of each unit matrix."""
        S = self.size
        units = np.eye(S * S).reshape(S * S, S, S)
        columns = np.stack([self.pullback(params, unit) for unit in units])  # (S², k)
        return columns.T.reshape(-1, S, S)

    def search_metric(self) -> np.ndarray | None:
        """A starting inverse Hessian for a search over θ_t (k×k), or None for the
        search's own (identity, scaled after its first step)."""
        return None

    def scale_mask(self) -> np.ndarray:
        """True where θ_t holds a relative SD (or, for ``us``, a diagonal of Λ_t)."""
        raise NotImplementedError

    def start(self, sds) -> np.ndarray:
        """θ_t from per-effect relative SDs (moment starts), correlations zero."""
        raise NotImplementedError

    def canonical(self, params) -> np.ndarray:
        """The reported θ_t: the same covariance with every SD non-negative."""
        params = np.array(params, dtype=np.float64)
        mask = self.scale_mask()
        params[mask] = np.abs(params[mask])
        return params

    def column_signs(self, params, xp=jnp):
        """c with Λ(canonical θ) = Λ(θ)·diag(c): the signs the modes u flip by."""
        return xp.ones(self.size, dtype=params.dtype)

    def entry_signs(self, params, xp=jnp):
        """±1 per θ_t entry with canonical(θ_t) = θ_t·signs (traceable)."""
        return xp.where(self.scale_mask() & (params < 0), -1.0, 1.0).astype(params.dtype)

    def row_scaled(self, d) -> np.ndarray | None:
        """Multipliers m with Λ(θ·m) = diag(d)·Λ(θ) for every θ (the term's columns of Z
        divided by d: :mod:`glmmjax._model.rescale`), or None where the structure has no such
        θ for this d (one SD shared by effects that d scales differently)."""
        return None

    def param_names(self, group: str, coefs) -> list[str]:
        raise NotImplementedError

    def profile_names(self, label: str, coefs) -> list[str]:
        """Names of the profiled SDs and correlations (``confint``)."""
        raise NotImplementedError

    def correlation_summary(self, params) -> str | None:
        """A short description of the correlation parameters (``VarCorr``, summary)."""
        return None

    # -- profiles: ω per parameter (SDs on the response scale, atanh of correlations)
    def natural(self, params, scale: float):
        raise NotImplementedError

    def from_natural(self, omega, scale):
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Unstructured(CovarianceStructure):
    name = "us"

    @property
    def n_params(self) -> int:
        return self.size * (self.size + 1) // 2

    def factor(self, params, xp=jnp):
        rows, cols = tril_indices(self.size)
        if _is_numpy(xp):
            block = np.zeros((self.size, self.size))
            block[rows, cols] = params
            return block
        return jnp.zeros((self.size, self.size), dtype=params.dtype).at[rows, cols].set(params)

    def pullback(self, params, grad) -> np.ndarray:
        return grad[tril_indices(self.size)]

    def jacobian(self, params) -> np.ndarray:
        rows, cols = tril_indices(self.size)
        out = np.zeros((rows.size, self.size, self.size))
        out[np.arange(rows.size), rows, cols] = 1.0
        return out

    def scale_mask(self) -> np.ndarray:
        rows, cols = tril_indices(self.size)
        return rows == cols

    def start(self, sds) -> np.ndarray:
        rows, cols = tril_indices(self.size)
        return np.where(rows == cols, np.asarray(sds, dtype=np.float64)[rows], 0.0)

    def canonical(self, params) -> np.ndarray:
        # ΛΛ' is unchanged by flipping a column's sign: make the diagonal non-negative.
        block = self.factor(np.asarray(params, dtype=np.float64), np)
        block = block * np.where(np.diag(block) < 0, -1.0, 1.0)[None, :]
        return block[tril_indices(self.size)]

    def column_signs(self, params, xp=jnp):
        rows, cols = tril_indices(self.size)
        return xp.where(params[np.flatnonzero(rows == cols)] < 0, -1.0, 1.0).astype(params.dtype)

    def entry_signs(self, params, xp=jnp):
        return self.column_signs(params, xp)[tril_indices(self.size)[1]]

    def row_scaled(self, d) -> np.ndarray:
        return np.asarray(d, dtype=np.float64)[tril_indices(self.size)[0]]

    def param_names(self, group: str, coefs) -> list[str]:
        rows, cols = tril_indices(self.size)
        return [f"{group}.{coefs[r]}" if r == c else f"{group}.{coefs[r]}.{coefs[c]}"
                for r, c in zip(rows, cols)]

    def profile_names(self, label: str, coefs) -> list[str]:
        rows, cols = tril_indices(self.size)
        return [f"sd_{coefs[r]}|{label}" if r == c else f"cor_{coefs[r]}.{coefs[c]}|{label}"
                for r, c in zip(rows, cols)]

    def natural(self, params, scale: float):
        S = self.size
        rows, cols = tril_indices(S)
        lam = self.factor(np.asarray(params, dtype=np.float64), np)
        cov = scale**2 * lam @ lam.T
        sd = np.sqrt(np.diag(cov))
        omega, values, kinds = [], [], []
        for r, c in zip(rows, cols):
            if r == c:
                omega.append(sd[r])
                values.append(sd[r])
                kinds.append("sd")
            else:
                denom = sd[r] * sd[c]
                cor = cov[r, c] / denom if denom > 0 else math.nan
                values.append(cor)
                kinds.append("cor")
                omega.append(np.arctanh(np.clip(cor, -1.0, 1.0)) if np.isfinite(cor) else 0.0)
        return omega, values, kinds

    def from_natural(self, omega, scale):
        S = self.size
        rows, cols = tril_indices(S)
        diag = rows == cols
        sd = omega[np.flatnonzero(diag)]
        if S == 1:
            return sd / scale
        off = np.flatnonzero(~diag)
        R = jnp.eye(S, dtype=omega.dtype)
        R = R.at[rows[off], cols[off]].set(jnp.tanh(omega[off]))
        R = R.at[cols[off], rows[off]].set(jnp.tanh(omega[off]))
        lam = (sd[:, None] * small_cholesky(R)) / scale
        return lam[rows, cols]


@dataclasses.dataclass(frozen=True)
class Diagonal(CovarianceStructure):
    name = "diag"

    @property
    def n_params(self) -> int:
        return self.size

    def factor(self, params, xp=jnp):
        return xp.diag(xp.abs(params))

    def pullback(self, params, grad) -> np.ndarray:
        return np.diagonal(grad) * np.sign(params)

    def scale_mask(self) -> np.ndarray:
        return np.ones(self.size, dtype=bool)

    def start(self, sds) -> np.ndarray:
        return np.asarray(sds, dtype=np.float64).copy()

    def row_scaled(self, d) -> np.ndarray:
        return np.asarray(d, dtype=np.float64).copy()

    def param_names(self, group: str, coefs) -> list[str]:
        return [f"{group}.{c}" for c in coefs]

    def profile_names(self, label: str, coefs) -> list[str]:
        return [f"sd_{c}|{label}" for c in coefs]

    def natural(self, params, scale: float):
        sd = list(scale * np.abs(np.asarray(params, dtype=np.float64)))
        return sd, list(sd), ["sd"] * self.size

    def from_natural(self, omega, scale):
        return omega / scale


def _homogeneous_sd(sds) -> float:
    # One SD for all effects from per-effect moment SDs: the root mean variance.
    return float(np.sqrt(np.mean(np.square(np.asarray(sds, dtype=np.float64)))))


@dataclasses.dataclass(frozen=True)
class CompoundSymmetry(CovarianceStructure):
    """``cs`` (one SD per effect) or ``homcs`` (one SD), one correlation ρ."""

    homogeneous: bool = False

    @property
    def name(self) -> str:  # type: ignore[override]
        return "homcs" if self.homogeneous else "cs"

    @property
    def n_sd(self) -> int:
        return 1 if self.homogeneous else self.size

    @property
    def n_params(self) -> int:
        return self.n_sd + 1

    @property
    def _a(self) -> float:
        return 1.0 / (self.size - 1)

    def rho(self, eta, xp=jnp):
        a = self._a
        return (1.0 + a) / (1.0 + xp.exp(-eta)) - a

    def _root_parts(self, rho, xp):
        """(α, c, dα/dρ, dc/dρ) of R^{1/2} = α·I + c·11'."""
        S = self.size
        alpha = xp.sqrt(1.0 - rho)
        beta = xp.sqrt(1.0 + (S - 1) * rho)
        c = (beta - alpha) / S
        d_alpha = -0.5 / alpha
        d_c = (0.5 * (S - 1) / beta - d_alpha) / S
        return alpha, c, d_alpha, d_c

    def factor(self, params, xp=jnp):
        S = self.size
        sd = xp.abs(params[: self.n_sd])
        alpha, c, _, _ = self._root_parts(self.rho(params[-1], xp), xp)
        root = alpha * xp.eye(S) + c * xp.ones((S, S))
        return (sd[:, None] if not self.homogeneous else sd[0]) * root

    def pullback(self, params, grad) -> np.ndarray:
        S = self.size
        params = np.asarray(params, dtype=np.float64)
        sd = np.abs(params[: self.n_sd])
        eta = params[-1]
        rho = float(self.rho(eta, np))
        alpha, c, d_alpha, d_c = self._root_parts(rho, np)
        root = alpha * np.eye(S) + c * np.ones((S, S))
        d_root = d_alpha * np.eye(S) + d_c * np.ones((S, S))
        logistic = 1.0 / (1.0 + np.exp(-eta))
        d_rho = (1.0 + self._a) * logistic * (1.0 - logistic)
        signs = np.sign(params[: self.n_sd])
        if self.homogeneous:
            g_sd = [signs[0] * np.sum(grad * root)]
            g_eta = sd[0] * np.sum(grad * d_root) * d_rho
        else:
            g_sd = signs * np.sum(grad * root, axis=1)
            g_eta = np.sum(sd[:, None] * grad * d_root) * d_rho
        return np.append(g_sd, g_eta)

    def scale_mask(self) -> np.ndarray:
        return np.append(np.ones(self.n_sd, dtype=bool), False)

    def start(self, sds) -> np.ndarray:
        sd = [_homogeneous_sd(sds)] if self.homogeneous else list(np.asarray(sds, float))
        return np.array(sd + [math.log(self._a)])  # ρ = 0

    def row_scaled(self, d) -> np.ndarray | None:
        d = np.asarray(d, dtype=np.float64)
        if self.homogeneous:
            return np.array([d[0], 1.0]) if np.all(d == d[0]) else None
        return np.append(d, 1.0)

    def param_names(self, group: str, coefs) -> list[str]:
        sds = [f"{group}.sd"] if self.homogeneous else [f"{group}.{c}" for c in coefs]
        return sds + [f"{group}.eta(rho)"]

    def profile_names(self, label: str, coefs) -> list[str]:
        sds = ([f"sd_{self.name}|{label}"] if self.homogeneous
               else [f"sd_{c}|{label}" for c in coefs])
        return sds + [f"rho_{self.name}|{label}"]

    def correlation_summary(self, params) -> str:
        return f"{self.name}: rho {float(self.rho(np.asarray(params)[-1], np)):.3g}"

    def natural(self, params, scale: float):
        params = np.asarray(params, dtype=np.float64)
        sd = list(scale * np.abs(params[: self.n_sd]))
        rho = float(self.rho(params[-1], np))
        return sd + [float(np.arctanh(rho))], sd + [rho], ["sd"] * self.n_sd + ["cor"]

    def from_natural(self, omega, scale):
        rho = jnp.tanh(omega[-1])
        eta = jnp.log((rho + self._a) / (1.0 - rho))
        return jnp.append(omega[: self.n_sd] / scale, eta)


@dataclasses.dataclass(frozen=True)
class AR1(CovarianceStructure):
    """Stationary AR(1) over the term's S equally spaced times (a factor's levels)."""

    name = "ar1"

    @property
    def n_params(self) -> int:
        return 2

    def _lags(self):
        i, j = np.indices((self.size, self.size))
        return np.where(i >= j, i - j, 0), i >= j, j == 0

    def _correlation_factor(self, rho, xp):
        """L and dL/dρ (the latter only for numpy)."""
        powers = [xp.ones_like(rho)]
        for _ in range(self.size - 1):
            powers.append(powers[-1] * rho)
        powers = xp.stack(powers)
        lag, lower, first = self._lags()
        s = xp.sqrt(1.0 - rho * rho)
        weight = xp.where(first, 1.0, s)
        L = xp.where(lower, powers[lag] * weight, 0.0)
        if not _is_numpy(xp):
            return L, None
        d_powers = np.concatenate([[0.0], np.arange(1, self.size) * powers[:-1]])
        d_weight = np.where(first, 0.0, -rho / s)
        dL = np.where(lower, d_powers[lag] * weight + powers[lag] * d_weight, 0.0)
        return L, dL

    def factor(self, params, xp=jnp):
        L, _ = self._correlation_factor(xp.tanh(params[1]), xp)
        return xp.abs(params[0]) * L

    def pullback(self, params, grad) -> np.ndarray:
        params = np.asarray(params, dtype=np.float64)
        rho = float(np.tanh(params[1]))
        L, dL = self._correlation_factor(rho, np)
        return np.array([np.sign(params[0]) * np.sum(grad * L),
                         abs(params[0]) * np.sum(grad * dL) * (1.0 - rho * rho)])

    def scale_mask(self) -> np.ndarray:
        return np.array([True, False])

    def start(self, sds) -> np.ndarray:
        return np.array([_homogeneous_sd(sds), 0.0])

    def row_scaled(self, d) -> np.ndarray | None:
        d = np.asarray(d, dtype=np.float64)
        return np.array([d[0], 1.0]) if np.all(d == d[0]) else None

    def param_names(self, group: str, coefs) -> list[str]:
        return [f"{group}.sd", f"{group}.atanh(rho)"]

    def profile_names(self, label: str, coefs) -> list[str]:
        return [f"sd_ar1|{label}", f"rho_ar1|{label}"]

    def correlation_summary(self, params) -> str:
        return f"ar1: rho {float(np.tanh(np.asarray(params)[1])):.3g}"

    def natural(self, params, scale: float):
        params = np.asarray(params, dtype=np.float64)
        sd = scale * abs(params[0])
        return [sd, float(params[1])], [sd, float(np.tanh(params[1]))], ["sd", "cor"]

    def from_natural(self, omega, scale):
        return jnp.stack([omega[0] / scale, omega[1]])


def _cholesky(C, xp):
    """chol(C); on the host, NaN where C is not numerically positive definite (a trial
    point the optimizer then rejects, as the compiled engine's NaN from LAPACK)."""
    if not _is_numpy(xp):
        return small_cholesky(C)  # no LAPACK call in batch programs (glmmjax._linalg)
    try:
        return np.linalg.cholesky(C)
    except np.linalg.LinAlgError:
        return np.full(C.shape, np.nan)


def _cholesky_jacobian(L, dR):
    """dL/dθ_k from dR/dθ_k for L = chol(R): dL = L·Φ(L⁻¹·dR·L⁻ᵀ), Φ taking the lower
    triangle with its diagonal halved. dR: (k, S, S); returns (k, S, S)."""
    L_inv = np.linalg.inv(L)  # S is small: one inverse for every k
    inner = L_inv @ dR @ L_inv.T
    phi = np.tril(inner) - 0.5 * inner * np.eye(L.shape[0])
    return L @ phi


def _read_only(*arrays):
    for a in arrays:
        a.setflags(write=False)
    return arrays if len(arrays) > 1 else arrays[0]


@dataclasses.dataclass(frozen=True)
class Toeplitz(CovarianceStructure):
    """``toep``: one SD per effect, one correlation per lag (partial autocorrelations)."""

    name = "toep"
    shows_correlation_matrix = True

    @property
    def n_params(self) -> int:
        return 2 * self.size - 1

    def lag_correlations(self, eta, xp=jnp):
        """ρ_1..ρ_{S−1} from η (Durbin–Levinson: ρ_k = Σ_j a_j·ρ_(k−j) + φ_k·v_(k−1) with
        a the AR(k−1) coefficients and v_(k−1) = Π(1 − φ_i²), then a updated to order k).
        Written with + − × and tanh only, so that it also runs on complex numbers (the
        host's exact derivative by complex step)."""
        rho, a, v = [], [], 1.0
        for k in range(self.size - 1):
            phi = xp.tanh(eta[k])
            previous = [1.0] + rho  # ρ_0..ρ_(k)
            value = phi * v
            for j, coef in enumerate(a):  # a_(j+1) · ρ_(k−j)
                value = value + coef * previous[k - j]
            rho.append(value)
            a = [coef - phi * a[k - 1 - j] for j, coef in enumerate(a)] + [phi]
            v = v * (1.0 - phi * phi)
        return rho

    def _correlation(self, rho, xp):
        i, j = np.indices((self.size, self.size))
        lag = np.abs(i - j)
        values = xp.stack([xp.ones_like(rho[0])] + list(rho))  # S ≥ 2: rho has a lag
        return values[lag]

    def factor(self, params, xp=jnp):
        S = self.size
        sd = xp.abs(params[:S])
        if _is_numpy(xp):
            return sd[:, None] * self._host_cholesky(tuple(np.asarray(params[S:], float)))
        R = self._correlation(self.lag_correlations(params[S:], xp), xp)
        return sd[:, None] * _cholesky(R, xp)

    # The host engines ask for Λ_t and its Jacobian several times at one θ (inner
    # solves, factorization, gradient): the correlation's factor and its derivatives
    # are cached per η (read-only arrays).
    @functools.lru_cache(maxsize=32)  # noqa: B019 (structures are few and long-lived)
    def _host_cholesky(self, eta: tuple) -> np.ndarray:
        return _read_only(_cholesky(self._correlation(self.lag_correlations(np.array(eta), np),
                                                      np), np))

    @functools.lru_cache(maxsize=32)  # noqa: B019
    def _host_cholesky_derivatives(self, eta: tuple) -> np.ndarray:
        """dL/dη_k, (S − 1, S, S); dρ/dη by complex step (exact to rounding: the
        recursion is analytic)."""
        S, L = self.size, self._host_cholesky(eta)
        if not np.all(np.isfinite(L)):
            return _read_only(np.full((S - 1, S, S), np.nan))
        h = 1e-30
        dR = []
        for k in range(S - 1):
            shifted = np.array(eta, dtype=complex)
            shifted[k] += 1j * h
            d_rho = [np.imag(r) / h for r in self.lag_correlations(shifted, np)]
            dR.append(self._correlation(d_rho, np) - np.eye(S))
        return _read_only(_cholesky_jacobian(L, np.asarray(dR)))

    def jacobian(self, params) -> np.ndarray:
        S = self.size
        params = np.asarray(params, dtype=np.float64)
        sd, eta = np.abs(params[:S]), tuple(params[S:])
        L = self._host_cholesky(eta)
        out = np.zeros((self.n_params, S, S))
        if not np.all(np.isfinite(L)):
            return np.full(out.shape, np.nan)
        for i in range(S):
            out[i, i] = np.sign(params[i]) * L[i]
        out[S:] = sd[None, :, None] * self._host_cholesky_derivatives(eta)
        return out

    def pullback(self, params, grad) -> np.ndarray:
        return np.einsum("kab,ab->k", self.jacobian(params), grad)

    def scale_mask(self) -> np.ndarray:
        return np.append(np.ones(self.size, dtype=bool), np.zeros(self.size - 1, dtype=bool))

    def start(self, sds) -> np.ndarray:
        return np.append(np.asarray(sds, dtype=np.float64), np.zeros(self.size - 1))

    def row_scaled(self, d) -> np.ndarray:
        return np.append(np.asarray(d, dtype=np.float64), np.ones(self.size - 1))

    def param_names(self, group: str, coefs) -> list[str]:
        return ([f"{group}.{c}" for c in coefs]
                + [f"{group}.atanh(pacf{k})" for k in range(1, self.size)])

    def profile_names(self, label: str, coefs) -> list[str]:
        return ([f"sd_{c}|{label}" for c in coefs]
                + [f"pacf{k}_toep|{label}" for k in range(1, self.size)])

    def correlation_summary(self, params) -> str:
        rho = self.lag_correlations(np.asarray(params, dtype=np.float64)[self.size :], np)
        return "toep: rho " + ", ".join(f"{float(r):.3g}" for r in rho)

    def natural(self, params, scale: float):
        # Profiles run over the partial autocorrelations (they vary freely); lag 1's is
        # the lag-1 correlation itself.
        params = np.asarray(params, dtype=np.float64)
        S = self.size
        sd = list(scale * np.abs(params[:S]))
        eta = [float(e) for e in params[S:]]
        return (sd + eta, sd + [float(np.tanh(e)) for e in eta],
                ["sd"] * S + ["cor"] * (S - 1))

    def from_natural(self, omega, scale):
        return jnp.concatenate([omega[: self.size] / scale, omega[self.size :]])


@dataclasses.dataclass(frozen=True)
class OrnsteinUhlenbeck(CovarianceStructure):
    """``ou``: one SD, correlation exp(−κ·|t_i − t_j|) over the given increasing times."""

    times: tuple = ()
    name = "ou"

    @property
    def n_params(self) -> int:
        return 2

    def _gaps(self) -> np.ndarray:
        return np.diff(np.asarray(self.times, dtype=np.float64))

    def _correlation_factor(self, kappa, xp):
        """L, and (numpy only) dL/dκ."""
        t = np.asarray(self.times, dtype=np.float64)
        i, j = np.indices((self.size, self.size))
        lower = i >= j
        distance, gaps = np.where(lower, t[i] - t[j], 0.0), self._gaps()
        if not _is_numpy(xp):  # constants in the traced dtype (float32 batches)
            distance, gaps = xp.asarray(distance, kappa.dtype), xp.asarray(gaps, kappa.dtype)
        decay = xp.exp(-kappa * distance)
        r2 = xp.exp(-2.0 * kappa * gaps)
        w = xp.concatenate([xp.ones_like(r2[:1]), xp.sqrt(1.0 - r2)])
        L = xp.where(lower, decay * w[None, :], 0.0)
        if not _is_numpy(xp):
            return L, None
        d_w = np.concatenate([[0.0], self._gaps() * r2 / w[1:]])
        dL = np.where(lower, -distance * decay * w[None, :] + decay * d_w[None, :], 0.0)
        return L, dL

    def factor(self, params, xp=jnp):
        if _is_numpy(xp):
            return abs(params[0]) * self._host_factor(float(np.exp(params[1])))[0]
        L, _ = self._correlation_factor(xp.exp(params[1]), xp)
        return xp.abs(params[0]) * L

    @functools.lru_cache(maxsize=32)  # noqa: B019 (as Toeplitz's: one θ, many requests)
    def _host_factor(self, kappa: float):
        return _read_only(*self._correlation_factor(kappa, np))

    def pullback(self, params, grad) -> np.ndarray:
        params = np.asarray(params, dtype=np.float64)
        kappa = float(np.exp(params[1]))
        L, dL = self._host_factor(kappa)
        return np.array([np.sign(params[0]) * np.sum(grad * L),
                         abs(params[0]) * np.sum(grad * dL) * kappa])

    def unit_correlation(self, params) -> float:
        """The correlation at distance 1, exp(−κ) (glmmTMB's e^{−θ})."""
        return float(np.exp(-np.exp(np.asarray(params, dtype=np.float64)[1])))

    def scale_mask(self) -> np.ndarray:
        return np.array([True, False])

    def start(self, sds) -> np.ndarray:
        # κ with correlation 1/2 across the median gap: neither independent nor one effect.
        return np.array([_homogeneous_sd(sds), float(np.log(np.log(2.0) / np.median(
            self._gaps())))])

    def row_scaled(self, d) -> np.ndarray | None:
        d = np.asarray(d, dtype=np.float64)
        return np.array([d[0], 1.0]) if np.all(d == d[0]) else None

    def param_names(self, group: str, coefs) -> list[str]:
        return [f"{group}.sd", f"{group}.log(rate)"]

    def profile_names(self, label: str, coefs) -> list[str]:
        return [f"sd_ou|{label}", f"rho_ou|{label}"]

    def correlation_summary(self, params) -> str:
        return f"ou: rho {self.unit_correlation(params):.3g} per unit time"

    def natural(self, params, scale: float):
        # ω = atanh of the correlation at distance 1, which lies in (0, 1).
        params = np.asarray(params, dtype=np.float64)
        sd = scale * abs(params[0])
        rho = self.unit_correlation(params)
        return [sd, float(np.arctanh(rho))], [sd, rho], ["sd", "cor"]

    def from_natural(self, omega, scale):
        # Correlations at distance 1 of 0 or below are the independent limit (κ → ∞):
        # clipped to a tiny positive value, so a profile there stays finite and flat.
        rho = jnp.clip(jnp.tanh(omega[1]), 1e-12, 1.0 - 1e-15)
        return jnp.stack([omega[0] / scale, jnp.log(-jnp.log(rho))])


@dataclasses.dataclass(frozen=True)
class Spatial(CovarianceStructure):
    """``exp`` or ``gau``: one SD, a correlation decaying with distance over a length
    scale ℓ. ``coords``: the S points, a tuple of coordinate tuples."""

    kind: str = "exp"
    coords: tuple = ()
    shows_correlation_matrix = True

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.kind

    @property
    def n_params(self) -> int:
        return 2

    def distances(self) -> np.ndarray:
        points = np.asarray(self.coords, dtype=np.float64)
        return np.sqrt(np.sum((points[:, None, :] - points[None, :, :]) ** 2, axis=-1))

    def _correlation(self, log_scale, xp):
        d = self.distances()
        if not _is_numpy(xp):
            d = xp.asarray(d, log_scale.dtype)
        r = d * xp.exp(-log_scale)
        return xp.exp(-r) if self.kind == "exp" else xp.exp(-r * r), r

    def factor(self, params, xp=jnp):
        if _is_numpy(xp):
            return abs(params[0]) * self._host_cholesky(float(params[1]))[0]
        C, _ = self._correlation(params[1], xp)
        return xp.abs(params[0]) * _cholesky(C, xp)

    @functools.lru_cache(maxsize=32)  # noqa: B019 (as Toeplitz's: one θ, many requests)
    def _host_cholesky(self, log_scale: float):
        """(L, dL/dlog ℓ), read-only."""
        C, r = self._correlation(log_scale, np)
        L = _cholesky(C, np)
        if not np.all(np.isfinite(L)):
            return _read_only(L, np.full(C.shape, np.nan))
        dC = C * (r if self.kind == "exp" else 2.0 * r * r)  # ∂C/∂log ℓ
        return _read_only(L, _cholesky_jacobian(L, dC[None])[0])

    def jacobian(self, params) -> np.ndarray:
        params = np.asarray(params, dtype=np.float64)
        L, dL = self._host_cholesky(float(params[1]))
        return np.stack([np.sign(params[0]) * L, abs(params[0]) * dL])

    def pullback(self, params, grad) -> np.ndarray:
        return np.einsum("kab,ab->k", self.jacobian(params), grad)

    def scale_mask(self) -> np.ndarray:
        return np.array([True, False])

    def start(self, sds) -> np.ndarray:
        # ℓ at the nearest points' distance: correlation e^{-1} between neighbours, and a
        # well-conditioned C for gau (whose C is near singular for large ℓ).
        d = self.distances()
        return np.array([_homogeneous_sd(sds), float(np.log(np.min(d[d > 0])))])

    def row_scaled(self, d) -> np.ndarray | None:
        d = np.asarray(d, dtype=np.float64)
        return np.array([d[0], 1.0]) if np.all(d == d[0]) else None

    def param_names(self, group: str, coefs) -> list[str]:
        return [f"{group}.sd", f"{group}.log(scale)"]

    def profile_names(self, label: str, coefs) -> list[str]:
        return [f"sd_{self.kind}|{label}", f"logscale_{self.kind}|{label}"]

    def correlation_summary(self, params) -> str:
        return f"{self.kind}: scale {float(np.exp(np.asarray(params)[1])):.3g}"

    def natural(self, params, scale: float):
        params = np.asarray(params, dtype=np.float64)
        sd = scale * abs(params[0])
        return [sd, float(params[1])], [sd, float(params[1])], ["sd", "log_scale"]

    def from_natural(self, omega, scale):
        return jnp.stack([omega[0] / scale, omega[1]])



@dataclasses.dataclass(frozen=True)
class Matern(Spatial):
    """``mat``: one SD, the Matérn correlation over the points with range φ = e^{η_1} and
    smoothness ν = e^{η_2}, both estimated (glmmTMB's theta: log SD, log φ, log ν)."""

    kind: str = "mat"

    @property
    def n_params(self) -> int:
        return 3

    @functools.lru_cache(maxsize=1)  # noqa: B019 (as _host_cholesky: asked at every θ)
    def _pairs(self):
        rows, cols = np.triu_indices(self.size, k=1)
        return rows, cols, self.distances()[rows, cols]  # distinct points: all > 0

    @functools.lru_cache(maxsize=1)  # noqa: B019 (as _host_cholesky)
    def _distinct_distances(self):
        """(the distinct pair distances, each pair's index among them)."""
        return np.unique(self._pairs()[2], return_inverse=True)

    def _matrix(self, values, xp):
        rows, cols, _ = self._pairs()
        if _is_numpy(xp):
            out = np.eye(self.size)
            out[rows, cols] = out[cols, rows] = values
            return out
        eye = jnp.eye(self.size, dtype=values.dtype)
        return eye.at[rows, cols].set(values).at[cols, rows].set(values)

    def factor(self, params, xp=jnp):
        if _is_numpy(xp):
            return abs(params[0]) * self._host_cholesky(float(params[1]), float(params[2]))[0]
        _, _, d = self._pairs()
        u = jnp.asarray(d, params.dtype) * jnp.exp(-params[1])
        C = self._matrix(jnp.exp(matern.log_correlation(u, jnp.exp(params[2]), jnp)), jnp)
        return jnp.abs(params[0]) * _cholesky(C, jnp)

    @functools.lru_cache(maxsize=32)  # noqa: B019 (as Toeplitz's: one θ, many requests)
    def _host_cholesky(self, log_range: float, log_nu: float):
        """(L, dL/d(log φ, log ν)), read-only."""
        # K_ν's quadrature once per distinct distance (a grid repeats a few distances:
        # 5 among the 36 pairs of 3 x 3 points), elementwise the same numbers.
        distinct, where = self._distinct_distances()
        corr, d_range, d_nu = (values[where] for values in
                               matern.correlation_and_derivatives(distinct, log_range, log_nu))
        C = self._matrix(corr, np)
        L = _cholesky(C, np)
        if not np.all(np.isfinite(L)):
            return _read_only(L, np.full((2,) + C.shape, np.nan))
        dC = np.stack([self._matrix(d_range, np), self._matrix(d_nu, np)]) - np.eye(self.size)
        return _read_only(L, _cholesky_jacobian(L, dC))

    def jacobian(self, params) -> np.ndarray:
        params = np.asarray(params, dtype=np.float64)
        L, dL = self._host_cholesky(float(params[1]), float(params[2]))
        return np.concatenate([(np.sign(params[0]) * L)[None], abs(params[0]) * dL])

    def scale_mask(self) -> np.ndarray:
        return np.array([True, False, False])

    def search_metric(self) -> np.ndarray:
        # The likelihood is nearly flat along φ·√ν = const (for large ν the correlation
        # is about a Gaussian one in d/(φ√(2ν))): searching over (log φ + ½ log ν,
        # log ν) with an identity start, i.e. T·T' in (log φ, log ν) with T = [[1, −½],
        # [0, 1]], the spatial Poisson reference's nAGQ=0 stage takes 13 evaluations
        # instead of 20 (benchmarks/README.md).
        return np.array([[1.0, 0.0, 0.0], [0.0, 1.25, -0.5], [0.0, -0.5, 1.0]])

    def start(self, sds) -> np.ndarray:
        # ν = 1/2 (the exponential correlation) and φ at the nearest points' distance, as exp.
        return np.append(super().start(sds), math.log(0.5))

    def row_scaled(self, d) -> np.ndarray | None:
        d = np.asarray(d, dtype=np.float64)
        return np.array([d[0], 1.0, 1.0]) if np.all(d == d[0]) else None

    def param_names(self, group: str, coefs) -> list[str]:
        return [f"{group}.sd", f"{group}.log(range)", f"{group}.log(nu)"]

    def profile_names(self, label: str, coefs) -> list[str]:
        return [f"sd_mat|{label}", f"logrange_mat|{label}", f"lognu_mat|{label}"]

    def correlation_summary(self, params) -> str:
        params = np.asarray(params, dtype=np.float64)
        return f"mat: range {math.exp(params[1]):.3g}, nu {math.exp(params[2]):.3g}"

    def natural(self, params, scale: float):
        params = np.asarray(params, dtype=np.float64)
        sd = scale * abs(params[0])
        return ([sd, float(params[1]), float(params[2])], [sd, float(params[1]), float(params[2])],
                ["sd", "log_range", "log_nu"])

    def from_natural(self, omega, scale):
        return jnp.stack([omega[0] / scale, omega[1], omega[2]])


def as_structures(covariances) -> tuple[CovarianceStructure, ...]:
    """Covariance structures from a tuple of structures or of term sizes (ints: ``us``)."""
    return tuple(c if isinstance(c, CovarianceStructure) else Unstructured(int(c))
                 for c in covariances)


def term_structures(terms) -> tuple[CovarianceStructure, ...]:
    """The structures of design terms (``us`` for terms that carry none)."""
    return tuple(getattr(t, "covariance", None) or Unstructured(t.size) for t in terms)


def all_unstructured(covariances) -> bool:
    return all(isinstance(c, Unstructured) for c in as_structures(covariances))


def factor_derivatives(theta, covariances) -> list[list[np.ndarray]]:
    """Per θ entry k, the per-term matrices ∂Λ_t/∂θ_k (zero for the other terms)."""
    structures = as_structures(covariances)
    out, start = [], 0
    for t, cov in enumerate(structures):
        block = cov.jacobian(np.asarray(theta[start : start + cov.n_params], dtype=np.float64))
        for d in block:
            out.append([d if u == t else np.zeros((c.size, c.size))
                        for u, c in enumerate(structures)])
        start += cov.n_params
    return out


def search_metric(covariances, n_extra: int = 0) -> np.ndarray | None:
    """The structures' starting inverse Hessians as one block-diagonal matrix over θ and
    ``n_extra`` further parameters (identity blocks where a structure has none), or None
    where no structure has one."""
    structures = as_structures(covariances)
    blocks = [cov.search_metric() for cov in structures]
    if all(b is None for b in blocks):
        return None
    blocks = [np.eye(cov.n_params) if b is None else b for cov, b in zip(structures, blocks)]
    return scipy.linalg.block_diag(*blocks, np.eye(n_extra))
