"""Host engine for GLMMs with zero-inflation and/or a dispersion model: the Laplace
criterion of :mod:`glmmjax._engines.compiled.parts` and its exact gradient in numpy. The per-row
log-likelihood and its derivatives come from closed forms in numpy for the built-in
families (:mod:`glmmjax._engines.host.parts_rows`: nothing is compiled); a user-defined family gets
one elementwise JAX kernel (:func:`_build_kernel`), compiled on its first fit.

Notation as in :mod:`glmmjax._engines.compiled.parts`: rows i with predictors eᵢ = (ηᵢ, ζᵢ, δᵢ),
Gᵢ = ∇ℓᵢ, Wᵢ = −∇²_{ηζ}ℓᵢ (2×2), H = I + Σᵢ aᵢWᵢaᵢ' with aᵢ the q×2 matrix whose
columns are row i of [A_c | 0] and [0 | A_z]. The gradient of
F(ψ) = g(û(ψ), ψ) + log|H(û(ψ), ψ)| in each parameter ψⱼ is

    ∂ⱼg|_u + 2Σᵢ tr(aᵢ'H⁻¹∂ⱼaᵢ·Wᵢ) + Σᵢ Σₘ cᵢₘ ∂ⱼeᵢₘ|_u − (H⁻¹r)'sⱼ,

with Pᵢ = aᵢ'H⁻¹aᵢ, cᵢₘ = tr(Pᵢ ∂Wᵢ/∂eₘ) (third derivatives of ℓ), r = Σᵢ aᵢ(cᵢη, cᵢζ)',
and sⱼ = ∂ⱼ(∇ᵤg/2)|_u; the last term is the random effects' response û'(ψ) (implicit
function theorem), taken through log|H| only, since ∇ᵤg = 0 at the mode.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.linalg import lapack

from ..._families.response_parts import row_loglik
from ..._lazyjax import jax, jnp
from ..._model.covariance import _tril_indices_colmajor
from ..._progress import noted
from ..blas import single_threaded_blas
from ..compiled.jit import _CPU_OPTIONS
from .parts_rows import KernelRows, RowKernel, supported
from .row_sparse import TermPattern, gram, gram_index, quadratic

MAX_NEWTON = 100
NEWTON_TOL = 1e-10
# Largest (max/min diagonal of H's Cholesky factor)² at which the inner Newton's start
# is extrapolated along dû/dψ (:func:`fit`).
MAX_EXTRAPOLATION_CONDITION = 1e8


def cho_factor(a, lower: bool = True):
    """``scipy.linalg.cho_factor(a, lower=True)`` as LAPACK's dpotrf alone: SciPy's
    checks and wrappers cost ~20 µs a call, several times a q×q factorization here,
    and an evaluation makes about ten calls. A pivot that is not positive, or not
    finite, raises LinAlgError."""
    c, info = lapack.dpotrf(a, lower=1, clean=0)
    if info != 0 or not np.all(np.isfinite(np.diagonal(c))):
        raise np.linalg.LinAlgError("matrix not positive definite")
    return c, True


def cho_solve(factor, b):
    """``scipy.linalg.cho_solve`` for :func:`cho_factor`'s (lower) factor, as dpotrs."""
    x, info = lapack.dpotrs(factor[0], b, lower=1)
    if info != 0:
        raise ValueError(f"dpotrs: illegal argument {-info}")
    return x


def _kernels(family, zero_inflated: bool):
    """The per-row kernel: :class:`glmmjax._engines.host.parts_rows.RowKernel` (numpy, closed forms)
    for the built-in families, else :func:`_build_kernel`, cached per (family,
    zero_inflated) where the family is hashable (a user-defined family holding arrays
    is not: it gets a fresh kernel)."""
    if supported(family):
        return RowKernel(family, zero_inflated)
    try:
        hash(family)
    except TypeError:
        return _build_kernel(family, zero_inflated)
    return _cached_kernel(family, zero_inflated)


@functools.lru_cache(maxsize=32)
def _cached_kernel(family, zero_inflated: bool):
    return _build_kernel(family, zero_inflated)


def _build_kernel(family, zero_inflated: bool):
    """:func:`kernel_function` compiled for the CPU."""
    return _cpu_jit(kernel_function(family, zero_inflated))


def kernel_function(family, zero_inflated: bool):
    """The kernel for this family: a function of (y, w, η, ζ, δ), elementwise
    over rows, returning ℓ, G (3), the rows (η, ζ) of the Hessian in e = (η, ζ, δ)
    (2 × 3) and the derivatives in e of its (η, ζ) block (2 × 2 × 3). One kernel serves
    the Newton steps and the gradient: a second, smaller one would cost a second
    compilation, more than the third derivatives cost to evaluate on these sizes. Only derivatives that involve η or ζ at least
    twice are formed: a family's terms in δ alone (the negative binomial's log
    binomial coefficient in θ, whose betaln has large derivative graphs) are then
    differentiated once, which keeps these kernels quick to compile.
    """
    def ell(y, w, ez, d):
        return row_loglik(family, y, w, ez[0], ez[1], d, zero_inflated=zero_inflated)

    grad_ez = jax.grad(ell, argnums=2)
    grad_d = jax.grad(ell, argnums=3)

    def hess_rows(y, w, ez, d):
        """∂G_{ηζ}/∂(η, ζ, δ): (2, 3)."""
        by_ez = jax.jacfwd(grad_ez, argnums=2)(y, w, ez, d)
        by_d = jax.jacfwd(grad_ez, argnums=3)(y, w, ez, d)
        return jnp.concatenate([by_ez, by_d[:, None]], axis=1)

    def block(y, w, ez, d):
        return jax.jacfwd(grad_ez, argnums=2)(y, w, ez, d)

    def full(y, w, eta, zeta, delta):
        ez = jnp.stack([eta, zeta])
        g = jnp.concatenate([grad_ez(y, w, ez, delta), grad_d(y, w, ez, delta)[None]])
        t_ez = jax.jacfwd(block, argnums=2)(y, w, ez, delta)
        t_d = jax.jacfwd(block, argnums=3)(y, w, ez, delta)
        third = jnp.concatenate([t_ez, t_d[:, :, None]], axis=2)
        return ell(y, w, ez, delta), g, hess_rows(y, w, ez, delta), third

    return jax.vmap(full)


def start_values(data) -> np.ndarray:
    """The start of a fit: :func:`glmmjax._engines.host.parts_rows.start_params` (numpy, nothing
    compiled) for the built-in families, else the compiled
    :func:`glmmjax._engines.compiled.parts.start_params`."""
    from .parts_rows import start_params

    if supported(data.family):
        return start_params(data)
    from ..compiled.parts import start_params_jit

    with jax.enable_x64(True):
        return np.asarray(start_params_jit(jax.tree_util.tree_map(jnp.asarray, data)))


def _cpu_jit(fun):
    """``jax.jit`` with XLA:CPU's classic emitters (:data:`glmmjax._engines.compiled.jit._CPU_OPTIONS`:
    about half the compile time of these derivative-heavy kernels), falling back to the
    defaults where the jaxlib does not know the option. Unlike :func:`glmmjax._engines.compiled.jit.program`
    no per-call BLAS limit or wait: the host fit sets the limit once around its loop."""
    # Seconds of compilation on a first fit: say so, as the compiled paths do.
    fun = noted(fun, "the zero-inflation/dispersion fit")
    tuned = jax.jit(fun, compiler_options=_CPU_OPTIONS)
    plain = jax.jit(fun)
    usable = [jax.default_backend() == "cpu"]

    def call(*args):
        if usable[0]:
            try:
                return tuned(*args)
            except jax.errors.JaxRuntimeError as error:
                if "compile option" not in str(error):
                    raise
                usable[0] = False
        return plain(*args)

    return call


def _factors(theta, sizes) -> list[np.ndarray]:
    """Λ_t per term from θ (numpy; :func:`glmmjax._model.covariance.theta_to_factors`)."""
    factors, start = [], 0
    for size in sizes:
        count = size * (size + 1) // 2
        rows, cols = _tril_indices_colmajor(size)
        block = np.zeros((size, size))
        block[rows, cols] = theta[start : start + count]
        factors.append(block)
        start += count
    return factors


class HostParts:
    """The numpy side of one model: design arrays and the kernels."""

    def __init__(self, data):
        as_np = lambda x: np.asarray(x, np.float64)  # noqa: E731
        self.y, self.w = as_np(data.y), as_np(data.weights)
        self.X, self.offset = as_np(data.X), as_np(data.offset)
        self.X_zi, self.offset_zi = as_np(data.X_zi), as_np(data.offset_zi)
        self.X_disp, self.offset_disp = as_np(data.X_disp), as_np(data.offset_disp)
        self.cond, self.zi = data.cond, data.zi
        self.layout = data.layout
        self.q_c, self.q = data.cond.q, data.q
        self.kernel = _kernels(data.family, data.zero_inflated)
        self.in_numpy = isinstance(self.kernel, RowKernel)
        self.n = self.y.shape[0]
        # A's fixed sparsity per part (glmmjax._engines.host.row_sparse), the last A of
        # each, and the index sums of H's blocks.
        self._patterns = {id(self.cond): TermPattern(self.cond, self.n),
                          id(self.zi): TermPattern(self.zi, self.n)}
        self._last_matrix: dict = {}
        self._gram_index: dict = {}

    def _jax_call(self, eta, zeta, log_phi):
        """The JAX kernel's (ℓ, G, Hessian rows, third derivatives) as numpy arrays (the
        numpy kernel is called through :meth:`_rows` and :meth:`_newton_terms`)."""
        # The caller (fit_parts) runs under x64: no context switch per call here.
        out = self.kernel(self.y, self.w, eta, zeta, log_phi)
        return [np.asarray(o) for o in jax.device_get(out)]

    def _rows(self, eta, zeta, log_phi) -> KernelRows:
        """The kernel's per-row terms as 1-D arrays (:class:`KernelRows`)."""
        if self.in_numpy:
            return self.kernel.terms(self.y, self.w, eta, zeta, log_phi)
        ll, g, h, t = self._jax_call(eta, zeta, log_phi)
        return KernelRows(
            ll, g[:, 0], g[:, 1], g[:, 2], -h[:, 0, 0], -h[:, 0, 1], -h[:, 1, 1], h[:, 0, 2],
            h[:, 1, 2], *(-t[:, i, j, m] for i, j in ((0, 0), (0, 1), (1, 1)) for m in range(3)))

    def _newton_terms(self, eta, zeta, log_phi):
        """ℓ, G_η, G_ζ, W_ηη, W_ηζ, W_ζζ per row."""
        if self.in_numpy:
            return self.kernel.newton(self.y, self.w, eta, zeta, log_phi)
        ll, g, h, _ = self._jax_call(eta, zeta, log_phi)
        return ll, g[:, 0], g[:, 1], -h[:, 0, 0], -h[:, 0, 1], -h[:, 1, 1]

    # -- Λ, A and their derivatives ----------------------------------------------------
    def _random_matrix(self, theta, terms, derivative: int | None = None):
        """A = ZΛ(θ) (n, q_part) as a :class:`~glmmjax._engines.host.row_sparse.RowSparse`,
        or ∂A/∂θ_derivative (Λ is linear in θ: kept). The last A of each part is kept
        too: the Newton steps and the gradient of one evaluation share it. numpy only:
        eager JAX operations here would each compile."""
        pattern = self._patterns[id(terms)]
        if derivative is not None:
            return pattern.unit(derivative)
        theta = np.array(theta, np.float64)
        last = self._last_matrix.get(id(terms))
        if last is None or not np.array_equal(last[0], theta):
            last = self._last_matrix[id(terms)] = (theta, pattern.matrix(theta))
        return last[1]

    def split(self, params):
        out, start = [], 0
        for size in self.layout:
            out.append(params[start : start + size])
            start += size
        return out

    def predictors(self, params, v):
        theta_c, theta_z, beta, beta_zi, beta_disp = self.split(params)
        A_c = self._random_matrix(theta_c, self.cond)
        A_z = self._random_matrix(theta_z, self.zi)
        eta = self.X @ beta + self.offset + A_c.dot(v[: self.q_c])
        zeta = self.X_zi @ beta_zi + self.offset_zi + A_z.dot(v[self.q_c :])
        log_phi = self.X_disp @ beta_disp + self.offset_disp
        return eta, zeta, log_phi, A_c, A_z

    def _gram(self, key, a, w, b):
        if key not in self._gram_index:
            self._gram_index[key] = gram_index(a, b)
        return gram(a, w, b, self._gram_index[key])

    def _hessian(self, A_c, A_z, w_ee, w_ez, w_zz):
        q_c = A_c.shape[1]
        q = q_c + A_z.shape[1]
        H = np.empty((q, q))
        H[:q_c, :q_c] = self._gram("cc", A_c, w_ee, A_c)
        if q > q_c:
            H[:q_c, q_c:] = self._gram("cz", A_c, w_ez, A_z)
            H[q_c:, :q_c] = H[:q_c, q_c:].T
            H[q_c:, q_c:] = self._gram("zz", A_z, w_zz, A_z)
        H.flat[:: q + 1] += 1.0
        return H

    @staticmethod
    def _refactor_if_ill_conditioned(factor, A_c, A_z, w_ee, w_ez, w_zz):
        """H's Cholesky factor from a QR decomposition of [B; I] (B'B = Σᵢ aᵢWᵢaᵢ',
        rows aᵢ'·chol(Wᵢ)) where the factor of H = I + B'B formed explicitly is
        ill-conditioned (squared diagonal ratio above MAX_EXTRAPOLATION_CONDITION).

        Then H's entries are large (a dispersion fixed near 0, as glmmTMB's
        ``dispformula=~0``, with an observation-level random effect: W ~ 7e7) while its
        smallest eigenvalues are O(1), and the Cholesky factorization of the formed H
        loses them to cancellation: log|H| and H⁻¹ come out with errors of ~1e-4, which
        make the criterion noisy. The QR factor of [B; I] has the same R'R = H without
        forming B'B: its small singular values (≥ 1) are exact to rounding of B.
        Where some Wᵢ is not positive semi-definite B does not exist: the Cholesky factor
        is kept."""
        diagonal = np.diagonal(factor[0])
        if (diagonal.max() / diagonal.min()) ** 2 <= MAX_EXTRAPOLATION_CONDITION:
            return factor
        A_c, A_z = A_c.toarray(), A_z.toarray()
        q_c, q_z = A_c.shape[1], A_z.shape[1]
        if np.any(w_ee < 0):
            return factor
        l11 = np.sqrt(w_ee)
        rows = [np.concatenate([l11[:, None] * A_c, np.zeros((len(w_ee), q_z))], axis=1)]
        if q_z:
            with np.errstate(all="ignore"):
                l21 = np.where(l11 > 0, w_ez / l11, 0.0)
            l22_sq = w_zz - l21**2
            if np.any(l22_sq < 0) or np.any((l11 == 0) & (w_ez != 0)):
                return factor
            rows[0][:, q_c:] = l21[:, None] * A_z
            rows.append(np.concatenate([np.zeros((len(w_ee), q_c)),
                                        np.sqrt(l22_sq)[:, None] * A_z], axis=1))
        R = np.linalg.qr(np.concatenate(rows + [np.eye(q_c + q_z)]), mode="r")
        L = (R * np.sign(np.diagonal(R))[:, None]).T
        return L, True

    # -- the inner problem --------------------------------------------------------------
    def mode(self, params, v0):
        """û by Newton's method with step halving (as :func:`glmmjax._engines.compiled.parts._newton`),
        and the rows' Newton terms there (None once converged: the caller evaluates the
        rows at û with the third derivatives anyway)."""
        theta_c, theta_z, beta, beta_zi, beta_disp = self.split(params)
        A_c = self._random_matrix(theta_c, self.cond)
        A_z = self._random_matrix(theta_z, self.zi)
        base_eta = self.X @ beta + self.offset
        base_zeta = self.X_zi @ beta_zi + self.offset_zi
        log_phi = self.X_disp @ beta_disp + self.offset_disp

        def terms(v):
            eta = base_eta + A_c.dot(v[: self.q_c])
            zeta = base_zeta + A_z.dot(v[self.q_c :])
            return self._newton_terms(eta, zeta, log_phi)

        def objective(v, out):
            return -2.0 * np.sum(out[0]) + v @ v

        v = np.array(v0, np.float64)
        out = terms(v)
        value = objective(v, out)
        with np.errstate(all="ignore"):
            for _ in range(MAX_NEWTON):
                ll, g_e, g_z, w_ee, w_ez, w_zz = out
                grad = v - np.concatenate([A_c.tdot(g_e), A_z.tdot(g_z)])
                try:
                    factor = cho_factor(self._hessian(A_c, A_z, w_ee, w_ez, w_zz), lower=True)
                except np.linalg.LinAlgError:
                    w_ee2 = np.maximum(w_ee, 1e-10 * (1 + np.abs(w_ee)))
                    w_zz2 = np.maximum(w_zz, 1e-10 * (1 + np.abs(w_zz)))
                    bound = 0.999 * np.sqrt(w_ee2 * w_zz2)
                    try:
                        factor = cho_factor(self._hessian(A_c, A_z, w_ee2,
                                                          np.clip(w_ez, -bound, bound), w_zz2),
                                            lower=True)
                    except np.linalg.LinAlgError:
                        # Weights not finite (η far out at a search's trial point): no
                        # mode here; value_grad then reports the point as not finite
                        # and the search rejects it.
                        return v, out
                step = -cho_solve(factor, grad)
                decrement = -grad @ step
                if decrement < NEWTON_TOL:  # the caller re-evaluates the rows at û
                    return v + step, None
                t = 1.0
                while True:
                    trial_out = terms(v + t * step)
                    trial = objective(v + t * step, trial_out)
                    if np.isfinite(trial) and trial <= value:
                        break
                    t *= 0.5
                    if t < 1e-8:
                        return v, out
                v, out, value = v + t * step, trial_out, trial
        return v, out

    # -- criterion and gradient -------------------------------------------------------------
    def value_grad(self, params, v0, sensitivity: bool = False):
        """(−2 log L, its exact gradient, the mode) at ``params`` (module docstring);
        with ``sensitivity`` also dû/dψ = −H⁻¹[s₁ … s_p] (q × p; None where H is not
        positive definite), which extrapolates the mode to nearby parameters."""
        params = np.asarray(params, np.float64)
        v, _ = self.mode(params, v0)
        eta, zeta, log_phi, A_c, A_z = self.predictors(params, v)
        # ∂W/∂eₘ = −∂³ℓ: W's entries (ηη, ηζ, ζζ) by m = η, ζ, δ.
        (ll, g_e, g_z, g_d, w_ee, w_ez, w_zz, h_ed, h_zd, t_ee_e, t_ee_z, t_ee_d, t_ez_e,
         t_ez_z, t_ez_d, t_zz_e, t_zz_z, t_zz_d) = self._rows(eta, zeta, log_phi)
        H = self._hessian(A_c, A_z, w_ee, w_ez, w_zz)
        try:
            factor = cho_factor(H, lower=True)
        except np.linalg.LinAlgError:
            failed = np.nan, np.full(params.shape, np.nan), v
            return (*failed, None) if sensitivity else failed
        factor = self._refactor_if_ill_conditioned(factor, A_c, A_z, w_ee, w_ez, w_zz)
        logdet = 2.0 * np.sum(np.log(np.diagonal(factor[0])))
        value = -2.0 * np.sum(ll) + v @ v + logdet
        q_c = self.q_c
        H_inv = cho_solve(factor, np.eye(self.q))
        # Pᵢ = aᵢ'H⁻¹aᵢ from the rows' few entries (A row-sparse).
        p_ee = quadratic(H_inv, A_c, 0, A_c, 0)
        p_ez = quadratic(H_inv, A_c, 0, A_z, q_c)
        p_zz = quadratic(H_inv, A_z, q_c, A_z, q_c)

        def trace(t_ee, t_ez, t_zz):
            return p_ee * t_ee + 2.0 * p_ez * t_ez + p_zz * t_zz

        c_e = trace(t_ee_e, t_ez_e, t_zz_e)
        c_z = trace(t_ee_z, t_ez_z, t_zz_z)
        c_d = trace(t_ee_d, t_ez_d, t_zz_d)
        r = np.concatenate([A_c.tdot(c_e), A_z.tdot(c_z)])
        z = cho_solve(factor, r)

        # Each parameter ψⱼ moves the predictors by ∂ⱼe|_u (and A, for θ): its gradient
        # is explicitⱼ − z'sⱼ, with sⱼ = [A_c'·(W_ηη ∂η + W_ηζ ∂ζ − h_ηδ ∂δ);
        # A_z'·(W_ηζ ∂η + W_ζζ ∂ζ − h_ζδ ∂δ)] (− ∂A'G for θ). The fixed effects' ∂e are
        # their design columns: one block of matrix products per part.
        coef_e, coef_z, coef_d = c_e - 2.0 * g_e, c_z - 2.0 * g_z, c_d - 2.0 * g_d

        def fixed(M, coef, m_e, m_z):
            S = np.concatenate([A_c.tdot(m_e[:, None] * M), A_z.tdot(m_z[:, None] * M)])
            return M.T @ coef - S.T @ z, S

        theta_c, theta_z, _, _, _ = self.split(params)
        grads, s_columns = [], []
        for k in range(len(theta_c)):
            dA = self._random_matrix(theta_c, self.cond, derivative=k)
            d_eta = dA.dot(v[:q_c])
            s = np.concatenate([A_c.tdot(w_ee * d_eta) - dA.tdot(g_e), A_z.tdot(w_ez * d_eta)])
            # Σᵢ Wᵢ-weighted rows of aᵢ'H⁻¹ against ∂aᵢ.
            explicit = coef_e @ d_eta + 2.0 * np.sum(
                w_ee * quadratic(H_inv, A_c, 0, dA, 0) + w_ez * quadratic(H_inv, A_z, q_c, dA, 0))
            grads.append(np.array([explicit - z @ s]))
            s_columns.append(s[:, None])
        for k in range(len(theta_z)):
            dA = self._random_matrix(theta_z, self.zi, derivative=k)
            d_zeta = dA.dot(v[q_c:])
            s = np.concatenate([A_c.tdot(w_ez * d_zeta), A_z.tdot(w_zz * d_zeta) - dA.tdot(g_z)])
            explicit = coef_z @ d_zeta + 2.0 * np.sum(
                w_ez * quadratic(H_inv, A_c, 0, dA, q_c)
                + w_zz * quadratic(H_inv, A_z, q_c, dA, q_c))
            grads.append(np.array([explicit - z @ s]))
            s_columns.append(s[:, None])
        for M, coef, m_e, m_z in ((self.X, coef_e, w_ee, w_ez), (self.X_zi, coef_z, w_ez, w_zz),
                                  (self.X_disp, coef_d, -h_ed, -h_zd)):
            if M.shape[1]:
                g_block, S = fixed(M, coef, m_e, m_z)
                grads.append(g_block)
                s_columns.append(S)
        grad = np.concatenate(grads) if grads else np.zeros(0)
        if not sensitivity:
            return value, grad, v
        # Not where H is ill-conditioned (a dispersion fixed near 0 pins the random
        # effects: H's entries span 12 orders): there the solve amplifies the mode's
        # rounding, each start moves the criterion's noise (1e-4), and BFGS keeps
        # finding spurious decreases until its iteration limit.
        diagonal = np.diagonal(factor[0])
        if not s_columns or (diagonal.max() / diagonal.min()) ** 2 > MAX_EXTRAPOLATION_CONDITION:
            return value, grad, v, None
        return value, grad, v, -cho_solve(factor, np.concatenate(s_columns, axis=1))

    def gradient_rounding(self, params) -> float:
        """A bound on the rounding in the gradient's conditional fixed-effect terms at
        ``params`` (random effects at 0): each row's G_η carries about ε·|W_ηη|·(|η| + |y|)
        (the residual of y and μ, scaled by the weight), summed over the rows through
        the design. ~1e-9 for ordinary models; where a dispersion is fixed near 0
        (W ~ 7e7) it is ~1e-2, and no search can bring the gradient below it."""
        if not self.X.shape[1]:
            return 0.0
        eta, zeta, log_phi, _, _ = self.predictors(params, np.zeros(self.q))
        _, _, _, w_ee, _, _ = self._newton_terms(eta, zeta, log_phi)
        rows = np.abs(w_ee) * (np.abs(eta) + np.abs(self.y))
        return 2.0 * np.finfo(np.float64).eps * float(np.max(rows @ np.abs(self.X)))

    def re_covariance(self, params, v):
        """H⁻¹ at the mode ``v``."""
        eta, zeta, log_phi, A_c, A_z = self.predictors(params, v)
        _, _, _, w_ee, w_ez, w_zz = self._newton_terms(eta, zeta, log_phi)
        return np.linalg.inv(self._hessian(A_c, A_z, w_ee, w_ez, w_zz))


# The search's loose gradient tolerance (convergence with f no longer changing).
LOOSE_GTOL = 1e-5
# Relative step of the forward differences of the exact gradient that give the Hessian;
# relative asymmetry of that Hessian above which central differences are taken instead.
FORWARD_STEP = 1e-6
ASYMMETRY_TOL = 1e-4
NOISY_STEP = 1e-2


def hessian_of(gradient, x, grad_x, noisy: bool = False) -> np.ndarray:
    """The Hessian at ``x`` from the exact gradient: forward differences (p more
    gradients; steps FORWARD_STEP·max(1, |xⱼ|), truncation error ~1e-6 relative, rounding
    of a gradient good to ~1e-12 amplified by 1e6), symmetrized; where the result is not
    symmetric to ASYMMETRY_TOL (a gradient noisier than that) central differences with
    steps of 1e-4 (2p gradients). ``noisy`` (a gradient known to carry rounding of
    ~1e-4, :meth:`HostParts.gradient_rounding`): central differences with steps of
    NOISY_STEP, whose truncation error (~1e-4 relative) is then below the noise's."""
    from .lmm import central_differences, forward_differences  # (loaded when first used)

    if noisy:
        hessian = central_differences(gradient, x, relative_step=NOISY_STEP)
        return 0.5 * (hessian + hessian.T)
    hessian = (forward_differences(gradient, x, grad_x, FORWARD_STEP) if x.shape[0]
               else np.zeros((0, 0)))
    scale = np.sqrt(np.abs(np.outer(np.diagonal(hessian), np.diagonal(hessian))))
    with np.errstate(all="ignore"):
        asymmetric = np.abs(hessian - hessian.T) > ASYMMETRY_TOL * scale
    if np.any(asymmetric) or not np.all(np.isfinite(hessian)):
        hessian = central_differences(gradient, x)
    return 0.5 * (hessian + hessian.T)


def search_scale(data, n_params: int) -> tuple[np.ndarray, float]:
    """(scale, unit): per parameter, the unit its search runs in (x = params / scale),
    for both engines' parts fits: the conditional part's θ (unstructured factors: every
    entry an SD unit) and β in units of the link scale's spread (:func:`glmmjax._engines.host.glmm.eta_unit`:
    1 for log and probability links), so that a response in other units (×10⁴) is the
    same search; everything else as it is."""
    from .glmm import eta_unit

    n_theta_c, _, p = data.layout[:3]
    n_theta = data.cond.n_theta + data.zi.n_theta
    unit = eta_unit(data.family, np.asarray(data.y, np.float64),
                    np.asarray(data.weights, np.float64))
    scale = np.ones(n_params)
    scale[:n_theta_c] = unit
    scale[n_theta : n_theta + p] = unit
    return scale, unit


@single_threaded_blas()  # threaded OpenBLAS spins against XLA's threads (glmmjax._engines.blas)
def fit(params0, data, max_iter: int = 500, gtol: float = 1e-6) -> dict:
    """The host engine's fit: :func:`glmmjax._engines.compiled.parts.fit`'s steps with
    :meth:`HostParts.value_grad` as the evaluation."""
    from ..._model.covariance import diagonal_mask
    from ..compiled.optimize import minimize_host
    from ..seam import BOUNDARY_TRY

    model = HostParts(data)
    sizes = data.cond.sizes + data.zi.sizes
    n_theta = data.cond.n_theta + data.zi.n_theta
    diagonal = diagonal_mask(sizes) if sizes else np.zeros(0, bool)
    scale, unit = search_scale(data, np.shape(params0)[0])

    def evaluate(x, carry):
        """Criterion and gradient at x, the inner Newton started from the last accepted
        point's mode moved along its sensitivity: û(x) ≈ û(x₀) + (dû/dψ)(x − x₀), which
        saves about one Newton step per evaluation."""
        x0, v0, S = carry
        start = v0 if S is None else v0 + S @ (x - x0)
        value, grad, v_new, S_new = model.value_grad(x * scale, start, sensitivity=True)
        return (value, grad * scale), (np.array(x, np.float64), v_new,
                                       None if S_new is None else S_new * scale)

    def to_boundary(x):
        theta = x[:n_theta]
        near = diagonal & (np.abs(theta) < BOUNDARY_TRY)
        return np.concatenate([np.where(near, 0.0, theta), x[n_theta:]])

    x0 = np.asarray(params0, np.float64) / scale
    # Where the gradient's rounding exceeds the usual tolerance (HostParts.gradient_rounding),
    # stop on a gradient at that level once steps stop decreasing the criterion (a
    # predicted gain below its rounding), rather than searching the noise.
    rounding = 10.0 * model.gradient_rounding(np.asarray(params0, np.float64)) * unit
    noisy = rounding > LOOSE_GTOL
    solution = minimize_host(evaluate, x0, carry=(x0, np.zeros(data.q), None),
                             gtol=gtol, loose_gtol=max(LOOSE_GTOL, rounding),
                             decrease_tol=1e-14 if noisy else None,
                             expensive=True, first_step=0.5,
                             final_trial=to_boundary if n_theta else None,
                             max_iterations=max_iter)
    x, carry = np.asarray(solution.x), solution.carry
    params = x * scale
    # The search's carry holds the mode at its point, with the gradient there.
    v_final = v = carry[1]
    value = float(solution.value)
    hessian = hessian_of(lambda x_: evaluate(x_, carry)[0][1], x, np.asarray(solution.grad),
                         noisy=noisy) / np.outer(scale, scale)
    return dict(params=params, v=v_final, value=value, hessian=hessian,
                re_cov=model.re_covariance(params, v_final), status=int(solution.status),
                iterations=int(solution.iterations),
                n_evaluations=int(solution.n_evaluations), grad=np.asarray(solution.grad),
                initial=np.asarray(params0), criterion=lambda x: model.value_grad(x, v)[0])
