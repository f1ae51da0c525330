"""``fit_many`` on the CPU without compiling anything: a lockstep Laplace fit of many GLMMs
at once in numpy, vectorized over the models (issues 19 and 20).

Every model shares the design (X, Z, the zero-inflation and dispersion designs) and
differs in its response. The arrays of one evaluation are (models × rows) and the
per-row terms ℓ, ℓ', W = −ℓ'', W' and their dispersion / zero-inflation derivatives are
the closed forms of :mod:`glmmjax._families.math` (and, with zero-inflation, the mixture
algebra of :mod:`glmmjax._engines.host.parts_rows`), one call for all models: nothing is traced or
compiled, so the first call of a batch costs what any later call costs.

Random effects. Row i has J = Σ_t S_t random-effect coefficients (S_t per term); its
entries of A = ZΛ are aᵢ (J values per model, aᵢ = z_{i,t}'Λ_t per term). The inner
Hessian H = I + Λ'Z'WZΛ is kept as B blocks of s×s: with one term, one block per level
(s = S, block diagonal); with several terms (crossed or nested), one dense block
(s = q, all random effects). Sums over rows into the blocks (Λ'Z'ℓ', Λ'Z'WZΛ) are
products with fixed sparse scatter matrices; blocks of s ≤ 8 are factored by an
unrolled Cholesky over the (models × blocks) arrays, larger ones by numpy's stacked LAPACK.

Criterion and gradient: those of :mod:`glmmjax._engines.host.parts` (the host engine of single
zero-inflation / dispersion fits), the conditional part's random effects only:

    F(ψ) = −2 Σ ℓᵢ(ηᵢ, ζᵢ, δᵢ) + |û|² + log|H(û)|,

with ψ = (θ, β, β_zi, β_d) (β_d: the log dispersion, or the dispersion model's
coefficients), the exact gradient by the implicit function theorem (third derivatives
of ℓ in the log-determinant's term). Models without zero-inflation have no ζ; the
log dispersion of a GLMM is δ = ψ_d on every row (``glmer``'s parameterization).

Outer optimizer: Newton's method per model with the Hessian from forward differences of
the exact gradient (one more gradient per parameter, each from the mode extrapolated
along dû/dψ, so one inner Newton step), an Armijo line search, a final full step once
the Newton decrement is below 1e-10·(1 + |F|) with a fresh Hessian (or 1e-15·(1 + |F|)
with a kept one: between refreshes the Hessian is kept and BFGS-updated while the
decrement falls fast), then near-zero diagonal entries of Λ tried at exactly zero (kept
where F is no worse, as the single fits), and standard errors from forward differences
of the exact gradient at the optimum.

Binomial-logit and Poisson-log GLMMs (no dispersion, zero-inflation or quadrature) use
F's exact Hessian instead (:meth:`LockstepModels._hessian`: second derivatives through
the mode's sensitivities dû/dψ and the row terms' third and fourth derivatives):
Newton's method proper, the Hessian computed with every accepted point
(:data:`EXACT_EVERY`), the last step evaluated from the extrapolated mode, a tiny last
step (:data:`TRUSTED_STEP`) taken without evaluating its end point (F there from the
quadratic model, exact to far below its rounding), and the standard errors from the
exact Hessian at the returned point: about 4.4 evaluations per crossed logistic model
instead of 16. Models move in lockstep, but every step works on the models still running (index subsets): a
model that converged costs nothing more, and one slow model does not hold the others.
Failures are flagged per model (status, inner convergence, Hessian).
"""

from __future__ import annotations

import threading

import numpy as np
import scipy.sparse

from .._engines.compiled.optimize import Status
from .._engines.seam import BOUNDARY_TRY
from .._families import math as fm

MAX_INNER = 60
INNER_TOL = 1e-10
TRUSTED_TOL = 1e-20  # a start taken as the mode (LockstepModels.evaluate's ``trusted``)  # Newton decrement of the inner problem (as _parts_host, _host_glmm)
MAX_OUTER = 100
MAX_HALVINGS = 30
FINAL_TOL = 1e-10  # outer Newton decrement, relative to 1 + |F|, with a fresh Hessian
DONE_TOL = 1e-15  # outer Newton decrement, relative to 1 + |F|, with any Hessian
TRIAL_TOL = 1e-10  # the boundary trial's allowance (as _optimize.minimize_host)
FD_STEP = 1e-6  # forward differences for the Newton Hessian (relative to max(1, |ψ_j|))
SE_STEP = 1e-6  # forward differences for the standard errors
# Central differences (step 1e-4) for the standard errors of one-scalar-term GLMMs, the
# scalar path's models whose first calls this engine fits (fit_many's SCALAR_ROUTE):
# there the compiled path's exact Hessian gives SEs equal to glmer's to 1e-7, forward
# differences only to 2e-5 on a flat objective (θ̂ ≈ 11), central ones to 6e-8, for 3
# more gradient evaluations per model.
SE_CENTRAL_STEP = 1e-4
CHORD_RATE = 0.3  # keep the Hessian (BFGS-updated) while the decrement falls by this factor
BFGS = True  # update kept Hessians by BFGS (fewer refreshes; measured)
# With the exact Hessian (LockstepModels.exact_hessian): computed at every accepted point
# (Newton's method proper), or only where the difference Hessian would be refreshed.
EXACT_EVERY = True
TRUSTED_STEP = 1e-6  # the largest last step taken without evaluating its end point
SMALL_BLOCK = 8  # blocks up to this size are factored by the unrolled Cholesky
MAX_DENSE = 100  # largest dense block: q, or q less the first term's levels (_Schur)
MAX_SCHUR = 50_000  # largest (first term's levels) × (the rest) of a _Schur factor


def applies(design, family, n_agq: int) -> bool:
    """Whether the lockstep engine fits this structure: Laplace, a built-in family and
    link with closed forms and no shape parameter, unstructured terms, one term of at
    most :data:`SMALL_BLOCK` coefficients or several with q ≤ :data:`MAX_DENSE`; or
    adaptive Gauss–Hermite quadrature (``n_agq`` > 1) for one scalar term (glmer's
    nAGQ; with an estimated dispersion too)."""
    if n_agq < 1 or not fm.supported(family) or getattr(family, "n_shape", 0):
        return False
    if n_agq > 1:
        return len(design.terms) == 1 and design.terms[0].size == 1
    return _terms_apply(design.terms)


# -- work arrays ------------------------------------------------------------------------------
class _Scratch:
    """Work arrays kept from one evaluation to the next, per thread (chunks may run in
    threads): ``scratch(name, shape)`` is a view of the buffer ``name``, grown when too
    small, its contents undefined. The exact Hessian's and the sensitivities' (models ×
    parameters × rows) temporaries, allocated afresh at each evaluation, made the heap
    grow and shrink by tens of MB each time: a third of a crossed logistic batch's time
    went to page faults (measured with getrusage). A view handed out must not outlive
    the next request of its name, nor leave the evaluation that asked for it."""

    def __init__(self):
        self._local = threading.local()

    def __call__(self, name: str, shape) -> np.ndarray:
        buffers = self._local.__dict__.setdefault("buffers", {})
        size = int(np.prod(shape))
        buffer = buffers.get(name)
        if buffer is None or buffer.size < size:
            buffer = buffers[name] = np.empty(size)
        return buffer[:size].reshape(shape)


# -- small symmetric positive-definite blocks ------------------------------------------
def _rowdot(a, b):
    """Σ over the last axis of a·b (broadcasting), unrolled: these axes have 1–8 entries,
    where einsum's and sum's per-call overheads dominate."""
    n = max(a.shape[-1], b.shape[-1])
    if n == 0:
        return np.zeros(np.broadcast_shapes(a.shape[:-1], b.shape[:-1]))
    if n > SMALL_BLOCK:
        return np.sum(a * b, axis=-1)
    out = a[..., 0] * b[..., 0]
    for j in range(1, n):
        out = out + a[..., j] * b[..., j]
    return out


def _matvec(M, v):
    """M @ v over the last axes ((..., s, s) @ (..., s))."""
    if M.shape[-1] > SMALL_BLOCK:
        return np.matmul(M, v[..., None])[..., 0]
    return _rowdot(M, v[..., None, :])


def _extrapolate(S, d):
    """dû/dψ·Δψ: (k, B·s, P) times (k, P)."""
    return _rowdot(S, d[:, None, :])


def _rowdot_slots(a, b):
    """Σ_j a[j]·b[j] over the leading (slot) axis."""
    out = a[0] * b[0]
    for j in range(1, a.shape[0]):
        out = out + a[j] * b[j]
    return out


def _factor(H):
    """(log det, inverse, positive definite) of each s×s block of H (..., s, s)."""
    s = H.shape[-1]
    if s > SMALL_BLOCK:
        return _factor_lapack(H)
    L = np.zeros_like(H)
    ok = np.ones(H.shape[:-2], bool)
    for j in range(s):
        d = H[..., j, j] - _rowdot(L[..., j, :j], L[..., j, :j])
        ok &= d > 0
        root = np.sqrt(np.where(d > 0, d, 1.0))
        L[..., j, j] = root
        for i in range(j + 1, s):
            L[..., i, j] = (H[..., i, j] - _rowdot(L[..., i, :j], L[..., j, :j])) / root
    # L⁻¹ by forward substitution, then H⁻¹ = L⁻ᵀL⁻¹.
    M = np.zeros_like(H)
    for j in range(s):
        M[..., j, j] = 1.0 / L[..., j, j]
        for i in range(j + 1, s):
            M[..., i, j] = -_rowdot(L[..., i, j:i], M[..., j:i, j]) / L[..., i, i]
    inverse = np.empty_like(H)
    for i in range(s):
        for j in range(i, s):
            inverse[..., i, j] = inverse[..., j, i] = _rowdot(M[..., j:, i], M[..., j:, j])
    logdet = 2.0 * np.sum(np.log(np.diagonal(L, axis1=-2, axis2=-1)), axis=-1)
    return logdet, inverse, ok


def _factor_lapack(H):
    lead = H.shape[:-2]
    flat = H.reshape(-1, *H.shape[-2:])
    try:
        L = np.linalg.cholesky(flat)
        ok = np.ones(flat.shape[0], bool)
    except np.linalg.LinAlgError:
        L = np.empty_like(flat)
        ok = np.ones(flat.shape[0], bool)
        for k in range(flat.shape[0]):
            try:
                L[k] = np.linalg.cholesky(flat[k])
            except np.linalg.LinAlgError:
                ok[k] = False
                L[k] = np.eye(flat.shape[-1])
    logdet = 2.0 * np.sum(np.log(np.diagonal(L, axis1=-2, axis2=-1)), axis=-1)
    inverse = np.linalg.inv(np.where(ok[:, None, None], flat, np.eye(flat.shape[-1])))
    return (logdet.reshape(lead), inverse.reshape(H.shape), ok.reshape(lead))


class _Schur:
    """H⁻¹ of H = [[D, C], [C', E]] with D (m × m) diagonal, through the Schur
    complement S = E − C'D⁻¹C (several terms whose first is scalar: that term's levels
    are a diagonal block, each row having one of them). Holds D⁻¹ (k, m), D⁻¹C (k, m, q₂),
    M = D⁻¹CS⁻¹ and S⁻¹ (k, q₂, q₂); H⁻¹ = [[D⁻¹ + MC'D⁻¹, −M], [−M', S⁻¹]]."""

    def __init__(self, d, C, E, light: bool = False, positive: bool = False):
        ok_d = np.all(d > 0, axis=-1)
        self.d_inv = 1.0 / np.where(d > 0, d, 1.0)
        self.C = C
        self.DC = self.d_inv[:, :, None] * C
        schur = E - np.matmul(np.swapaxes(C, 1, 2), self.DC)
        self.m = d.shape[1]
        self.light = light
        if light:  # solves only (the inner Newton's steps): no S⁻¹, S kept
            self.schur = schur
            # (W ≥ 0 on every row: H = I + A'WA and its Schur complement are positive
            # definite, no Cholesky needed to say so)
            self.ok = ok_d if positive else ok_d & _positive_definite(schur)
            return
        logdet_s, self.S_inv, ok_s = _factor(schur)
        self.M = np.matmul(self.DC, self.S_inv)
        self.diag_top = self.d_inv + np.einsum("kiq,kiq->ki", self.M, self.DC)
        self.logdet = np.sum(np.log(np.where(d > 0, d, 1.0)), axis=-1) + logdet_s
        self.ok = ok_d & ok_s

    def solve(self, v):
        """H⁻¹v for v (..., k, q) (leading axes broadcast)."""
        m = self.m
        w1 = v[..., :m] * self.d_inv
        rhs = v[..., m:] - np.matmul(w1[..., None, :], self.C)[..., 0, :]
        if self.light:
            safe = np.where(self.ok[:, None, None], self.schur, np.eye(self.schur.shape[-1]))
            y2 = np.linalg.solve(safe, rhs[..., None])[..., 0]
        else:
            y2 = np.matmul(self.S_inv, rhs[..., None])[..., 0]
        return np.concatenate([w1 - np.matmul(self.DC, y2[..., None])[..., 0], y2], axis=-1)

    def replace(self, mask, other):
        keys = (("d_inv", "C", "DC", "schur", "ok") if self.light else
                ("d_inv", "C", "DC", "S_inv", "M", "diag_top", "logdet", "ok"))
        for key in keys:
            getattr(self, key)[mask] = getattr(other, key)


def _positive_definite(S):
    """Whether each matrix of S (k, q, q) is positive definite (a Cholesky per matrix
    only where the stacked one fails)."""
    try:
        np.linalg.cholesky(S)
        return np.ones(S.shape[0], bool)
    except np.linalg.LinAlgError:
        return _factor_lapack(S)[2]


# -- the shared design ---------------------------------------------------------------------
def _transposed_map(n: int, positions, width: int, rows=None):
    """The (width, n) 0/1 matrix that sums row values into ``positions`` (csr): used as
    ``(M @ values.T).T`` on (models, rows) arrays, the fastest of the sums tried."""
    positions = np.asarray(positions)
    rows = np.arange(n) if rows is None else rows
    return scipy.sparse.csr_matrix((np.ones(positions.size), (positions, rows)),
                                   shape=(width, n))


class Layout:
    """Where each row's random-effect coefficients sit in u (models, B·s) and in the
    blocks of H (models, B, s, s). Per-row arrays of the J coefficients are slot-first:
    (J, models, rows)."""

    def __init__(self, terms, n: int):
        self.sizes = tuple(int(t.size) for t in terms)
        self.J = J = sum(self.sizes)
        self.z = [np.asarray(t.z, np.float64) for t in terms]
        self.refs = [np.asarray(t.refs, np.int64) for t in terms]
        self.n_levels = [int(t.n_levels) for t in terms]
        self.n = n
        if len(terms) == 1:
            term = terms[0]
            self.B, self.s = int(term.n_levels), int(term.size)
            blk = np.asarray(term.refs, np.int64)
            loc = np.broadcast_to(np.arange(self.s), (n, self.s)).copy()
        else:
            self.B, self.s = 1, int(sum(t.size * t.n_levels for t in terms))
            blk = np.zeros(n, np.int64)
            loc = np.empty((n, J), np.int64)
            start, col = 0, 0
            for t in terms:
                for c in range(t.size):
                    loc[:, col + c] = start + np.asarray(t.refs) * t.size + c
                start += t.size * t.n_levels
                col += t.size
        s = self.s
        self.loc = loc
        # Several terms whose first is scalar: that term's levels form a diagonal block
        # of H (each row has one of them), factored through the Schur complement.
        self.n_diag = self.n_levels[0] if len(terms) > 1 and self.sizes[0] == 1 else 0
        self.width = self.B * s
        self.flat = [blk * s + loc[:, j] for j in range(J)]  # (n,) index into u
        self.flat_all = np.concatenate(self.flat)
        self.G_maps = [_transposed_map(n, f, self.width) for f in self.flat]
        self.pairs = [(i, j) for i in range(J) for j in range(i, J)]
        self.H_maps = []
        for i, j in self.pairs:
            pos = blk * s * s + loc[:, i] * s + loc[:, j]
            if i == j:
                self.H_maps.append(_transposed_map(n, pos, self.B * s * s))
            else:
                mirror = blk * s * s + loc[:, j] * s + loc[:, i]
                self.H_maps.append(_transposed_map(
                    n, np.concatenate([pos, mirror]), self.B * s * s,
                    np.concatenate([np.arange(n), np.arange(n)])))
        self.inverse_index = [[(blk * s + loc[:, i]) * s + loc[:, j] for j in range(J)]
                              for i in range(J)]
        if self.n_diag:
            m1, q2 = self.n_diag, s - self.n_diag
            self.q2 = q2
            self.schur_maps = []
            for i, j in self.pairs:
                if i == 0 and j == 0:
                    self.schur_maps.append((0, _transposed_map(n, loc[:, 0], m1)))
                elif i == 0:
                    self.schur_maps.append((1, _transposed_map(
                        n, loc[:, 0] * q2 + loc[:, j] - m1, m1 * q2)))
                else:
                    pos = (loc[:, i] - m1) * q2 + loc[:, j] - m1
                    mirror = (loc[:, j] - m1) * q2 + loc[:, i] - m1
                    both = (pos if i == j else np.concatenate([pos, mirror]))
                    rows_ = np.arange(n) if i == j else np.concatenate([np.arange(n)] * 2)
                    self.schur_maps.append((2, _transposed_map(n, both, q2 * q2, rows_)))
        self.eye_flat = np.eye(s).ravel()
        self.scalar = all(size == 1 for size in self.sizes)
        # (scalar terms: the slot, i.e. the term and its θ, of each entry of u)
        self.column_slot = np.zeros(self.width, np.int64)
        for j, f in enumerate(self.flat):
            self.column_slot[f] = j
        self._z_maps = None
        self._gz_maps = None
        # (the widths of assemble's targets: the block(s), or D's diagonal, C and E)
        self._target_widths = ((self.n_diag, self.n_diag * (s - self.n_diag),
                                (s - self.n_diag) ** 2) if self.n_diag else (self.B * s * s,))
        # (the θ of each term: Λ_t's lower triangle, column by column, lme4's order)
        self.offsets = np.cumsum((0,) + self.sizes)[:-1]
        self.theta_index = []
        for t, size in enumerate(self.sizes):
            cols, rws = np.triu_indices(size)
            self.theta_index += [(t, int(r), int(c)) for r, c in zip(rws, cols)]
        self.n_theta = len(self.theta_index)
        self.diagonal = np.array([r == c for _, r, c in self.theta_index], bool)
        # Each θ's slot and its z column, None where z ≡ 1 (intercepts): the exact
        # Hessian's per-θ terms (found once here, not by an n-long scan per evaluation).
        self.theta_slots = []
        for t, r, c in self.theta_index:
            z = self.z[t][:, r]
            self.theta_slots.append((int(self.offsets[t] + c), None if np.all(z == 1.0) else z))

    def rows_a(self, theta):
        """aᵢ per model, slot-first: (J, k, n)."""
        out = np.zeros((self.J, theta.shape[0], self.n))
        for j, (t, r, c) in enumerate(self.theta_index):
            out[self.offsets[t] + c] += theta[:, j, None] * self.z[t][:, r]
        return out

    def gather(self, u):
        """u's entries at each row's coefficients: (J, k, n) from (k, B·s)."""
        k = u.shape[0]
        return np.moveaxis(u[:, self.flat_all].reshape(k, self.J, self.n), 1, 0)

    def linear(self, a, u, theta=None):
        """Σ_j aᵢⱼu at row i's coefficients, (k, n) (η less its fixed part). Scalar
        terms with ``theta``: θ_j applied to u's (k, B·s) entries, then one gather per
        slot (z_j where not 1), no (J, k, n) copies."""
        if theta is None or not self.scalar:
            return _rowdot_slots(a, self.gather(u))
        ut = u * theta[:, self.column_slot]
        out = None
        for j, f in enumerate(self.flat):
            part = np.take(ut, f, axis=1)
            if self.theta_slots[j][1] is not None:
                part *= self.theta_slots[j][1]
            out = part if out is None else out + part
        return out

    def scatter(self, values):
        """Σ over rows into u's positions: (J, k, n) -> (k, B·s)."""
        out = self.G_maps[0] @ values[0].T
        for j in range(1, self.J):
            out += self.G_maps[j] @ values[j].T
        return np.ascontiguousarray(out.T)

    def scatter_a(self, a, g, theta=None):
        """:meth:`scatter` of aᵢ·g (g (k, n)). Scalar terms (aᵢ = θ_j z_{i,j} at slot j)
        with ``theta``: Σ_j θ_j·(the z_j-weighted sums of g), one transposed copy of g,
        no (J, k, n) product."""
        if theta is None or not self.scalar:
            return self.scatter(a * g)
        if self._gz_maps is None:
            self._gz_maps = []
            for M, z in zip(self.G_maps, self.z):
                Mz = M.copy()
                Mz.data = Mz.data * z[Mz.indices, 0]
                self._gz_maps.append(Mz)
        gt = np.ascontiguousarray(g.T)
        out = (self._gz_maps[0] @ gt) * theta[:, 0]  # (scalar terms: slot j is θ_j's)
        for j in range(1, self.J):
            out += (self._gz_maps[j] @ gt) * theta[:, j]
        return np.ascontiguousarray(out.T)

    def hessian(self, a, W, theta=None):
        """I + Λ'Z'WZΛ, (k, B, s, s); with a diagonal leading block (:class:`_Schur`)
        its pieces (D's diagonal, C, E). Scalar terms with ``theta``: each pair's sums
        of Wzᵢzⱼ (the z's in the maps, only the positions some row sums into) times
        θᵢθⱼ, from one transposed copy of W."""
        k = W.shape[0]
        if theta is not None and self.scalar:
            return self._hessian_scalar(W, theta)
        if self.n_diag:
            m1, q2 = self.n_diag, self.q2
            parts = [None, None, None]
            for (i, j), (target, M) in zip(self.pairs, self.schur_maps):
                prod = (W * a[i] * a[j]).T
                parts[target] = M @ prod if parts[target] is None else parts[target] + M @ prod
            # (copied model-first: the Schur complement's products run over m1, q2)
            d = np.ascontiguousarray(parts[0].T) + 1.0
            C = (np.zeros((k, m1, q2)) if parts[1] is None
                 else np.ascontiguousarray(parts[1].T).reshape(k, m1, q2))
            E = (np.zeros((k, q2, q2)) if parts[2] is None
                 else np.ascontiguousarray(parts[2].T).reshape(k, q2, q2)) + np.eye(q2)
            return d, C, E
        out = None
        for (i, j), M in zip(self.pairs, self.H_maps):
            prod = W * a[i] * a[j]
            out = M @ prod.T if out is None else out + M @ prod.T
        H = out.T.reshape(k, self.B, self.s, self.s) + np.eye(self.s)
        return H

    def _hessian_scalar(self, W, theta):
        """:meth:`hessian` for scalar terms (the maps of :meth:`_compact_z_maps`)."""
        if self._z_maps is None:
            self._z_maps = self._compact_z_maps()
        k = W.shape[0]
        Wt = np.ascontiguousarray(W.T)
        sums = [None, None, None] if self.n_diag else [None]
        for (i, j), (target, M) in zip(self.pairs, self._z_maps["maps"]):
            part = M @ Wt
            part *= theta[:, i] * theta[:, j]
            if sums[target] is None:
                sums[target] = part
            else:
                sums[target] += part
        rows = self._z_maps["rows"]
        # (fresh arrays: the factors keep them)
        pieces = [np.zeros((k, width)) if x is None else
                  self._model_first(x, rows_t, width, k, np.empty((k, width)))
                  for x, rows_t, width in zip(sums, rows, self._target_widths)]
        if not self.n_diag:
            return pieces[0].reshape(k, self.B, self.s, self.s) + np.eye(self.s)
        m1, q2 = self.n_diag, self.q2
        d, C, E = pieces
        d += 1.0
        E = E.reshape(k, q2, q2)
        E += np.eye(q2)
        return d, C.reshape(k, m1, q2), E

    def assemble(self, weights):
        """Σᵢ over rows of per-row, per-slot-pair weights (one (m, n) array per pair of
        :attr:`pairs`) into H's structure without its identity: (m, B, s, s), or with a
        diagonal leading block the pieces (D's diagonal, C, E) as :meth:`hessian`."""
        m = weights[0].shape[0]
        if self.n_diag:
            m1, q2 = self.n_diag, self.q2
            parts = [None, None, None]
            for w_ij, (target, M) in zip(weights, self.schur_maps):
                prod = M @ w_ij.T
                parts[target] = prod if parts[target] is None else parts[target] + prod
            # (copied model-first: the products that take them run over m1 and q2)
            d = np.ascontiguousarray(parts[0].T)
            C = (np.zeros((m, m1, q2)) if parts[1] is None
                 else np.ascontiguousarray(parts[1].T).reshape(m, m1, q2))
            E = (np.zeros((m, q2, q2)) if parts[2] is None
                 else np.ascontiguousarray(parts[2].T).reshape(m, q2, q2))
            return d, C, E
        out = None
        for w_ij, M in zip(weights, self.H_maps):
            out = M @ w_ij.T if out is None else out + M @ w_ij.T
        return np.ascontiguousarray(out.T).reshape(m, self.B, self.s, self.s)

    def assemble_scalar(self, e, W_e, W, theta, scratch):
        """:meth:`assemble` of Ḣ_a for scalar terms (aᵢ = θ_j z_{i,j} at slot j): the
        pair (i, j)'s weights are θᵢθⱼ·W'e_a zᵢzⱼ, plus θⱼ·Wzᵢzⱼ for a = θᵢ and θᵢ·Wzᵢzⱼ
        for a = θⱼ, so each pair takes one product of W'e (from e (k, P, n) and W'), one
        of W, both n-major (no per-pair weights), with the z's in the maps' values and
        only the positions some row sums into. With a diagonal leading block, (D's
        diagonal, C, E as (positions, values (k·P, positions))): E's blocks of scalar
        terms are mostly zero. Work arrays from ``scratch``."""
        if self._z_maps is None:
            self._z_maps = self._compact_z_maps()
        k, P, n = e.shape
        EWt = scratch("EWt", (n, k, P))
        np.multiply(np.moveaxis(e, 2, 0), W_e.T[:, :, None], out=EWt)
        EWt = EWt.reshape(n, k * P)
        Wt = np.ascontiguousarray(W.T)
        sums = [None, None, None] if self.n_diag else [None]
        for (i, j), (target, M) in zip(self.pairs, self._z_maps["maps"]):
            part = (M @ EWt).reshape(-1, k, P)
            part *= (theta[:, i] * theta[:, j])[None, :, None]
            extra = M @ Wt  # (positions, k)
            if i == j:
                part[:, :, i] += 2.0 * theta[:, i] * extra
            else:
                part[:, :, i] += theta[:, j] * extra
                part[:, :, j] += theta[:, i] * extra
            if sums[target] is None:
                sums[target] = part
            else:
                sums[target] += part
        rows = self._z_maps["rows"]
        if not self.n_diag:
            return self._model_first(sums[0], rows[0], self.B * self.s * self.s, k * P,
                                     scratch("dH", (k * P, self.B * self.s * self.s))
                                     ).reshape(k * P, self.B, self.s, self.s)
        m1, q2 = self.n_diag, self.q2
        d, C = (np.zeros((k * P, width)) if x is None else
                self._model_first(x, rows_t, width, k * P, scratch(name, (k * P, width)))
                for x, rows_t, width, name in zip(sums[:2], rows[:2], (m1, m1 * q2),
                                                  ("dH_d", "dH_C")))
        E = (rows[2], np.zeros((k * P, 0)) if sums[2] is None else
             np.ascontiguousarray(np.moveaxis(sums[2], 0, 2)).reshape(k * P, -1))
        return d, C.reshape(k * P, m1, q2), E

    def _compact_z_maps(self):
        """Per target of :meth:`assemble_scalar` the positions some row sums into (the
        union over its pairs) and per pair its map restricted to them, z's in the values."""
        maps = [M for _, M in self.schur_maps] if self.n_diag else self.H_maps
        targets = [t for t, _ in self.schur_maps] if self.n_diag else [0] * len(self.pairs)
        zmaps = []
        for M, (i, j) in zip(maps, self.pairs):
            Mz = M.tocoo()
            Mz.data = Mz.data * (self.z[i][:, 0] * self.z[j][:, 0])[Mz.col]
            zmaps.append(Mz.tocsr())
        rows = []
        for target in range(3 if self.n_diag else 1):
            hit = [np.flatnonzero(np.diff(M.indptr)) for M, t in zip(zmaps, targets)
                   if t == target]
            rows.append(np.unique(np.concatenate(hit)) if hit else np.zeros(0, np.int64))
        return dict(rows=rows, maps=[(t, M[rows[t]]) for M, t in zip(zmaps, targets)])

    @staticmethod
    def _model_first(x, rows, width, m, out):
        """(m, width) from sums at ``rows`` of (rows, ...) with m entries after the first
        axis, into ``out``."""
        x = x.reshape(len(rows), m)
        if len(rows) == width:  # (rows sorted and unique: every position)
            np.copyto(out, x.T)
        else:
            out[:] = 0.0
            out[:, rows] = x.T
        return out

    def trace_products(self, inverse, dH, P: int, scratch=None):
        """tr(H⁻¹Ḣ_a H⁻¹Ḣ_b) per model for the P matrices Ḣ_a of :meth:`assemble`
        (stacked model-first, k·P): (k, P, P). With a diagonal leading block
        H⁻¹ = D̃ + US⁻¹U' (D̃ = diag(D⁻¹, 0), U = [−D⁻¹C; I]), so with T_a = C_a − D_aD⁻¹C
        and K_a = U'Ḣ_aU = E_a − Y'V_a − V_a'Y (Y = D⁻¹C, V_a = C_a − ½D_aY: one
        product for both cross terms) the trace is Σ D⁻²D_aD_b + 2 tr(S⁻¹T_a'D⁻¹T_b) +
        tr(S⁻¹K_a S⁻¹K_b), the last from N_b' = K_bS⁻¹ and N_a = S⁻¹K_a = (K_aS⁻¹)'
        (products batched over the models, each over all P at once). E may come as
        (positions, values) (:meth:`assemble_scalar`). Work arrays from ``scratch``."""
        scratch = _Scratch() if scratch is None else scratch
        if isinstance(inverse, _Schur):
            d, C, E = dH
            k = inverse.d_inv.shape[0]
            m1, q2 = self.n_diag, self.q2
            Y, S_inv = np.ascontiguousarray(inverse.DC), np.ascontiguousarray(inverse.S_inv)
            d_inv, C0 = inverse.d_inv, np.ascontiguousarray(inverse.C)  # (no copies: made so)
            dd = d.reshape(k, P, m1) * d_inv[:, None, :]
            C = C.reshape(k, P, m1, q2)
            T = scratch("T", (k, P, m1, q2))
            np.multiply(dd[..., None], C0[:, None], out=T)
            np.subtract(C, T, out=T)  # C_a − D_aD⁻¹C
            V = scratch("V_a", (k, P, m1, q2))
            np.add(T, C, out=V)
            V *= 0.5  # C_a − ½D_aY
            Yt = np.ascontiguousarray(np.swapaxes(Y, 1, 2))[:, None]  # (k, 1, q2, m1)
            YV = np.matmul(Yt, V, out=scratch("YV", (k, P, q2, q2)))
            K = scratch("K", (k, P, q2, q2))
            np.add(YV, np.swapaxes(YV, 2, 3), out=K)
            np.negative(K, out=K)
            if isinstance(E, tuple):
                positions, values = E
                K.reshape(k, P, q2 * q2)[:, :, positions] += values.reshape(k, P, -1)
            else:
                K += E.reshape(k, P, q2, q2)
            # K_aS⁻¹ for all a as one product per model (rows of the K_a stacked), and
            # S⁻¹K_a = (K_aS⁻¹)' by transposition (K_a, S⁻¹ symmetric)
            Nt = np.matmul(K.reshape(k, P * q2, q2), S_inv,
                           out=scratch("Nt", (k, P * q2, q2))).reshape(k, P, q2, q2)
            N = scratch("N", (k, P, q2, q2))
            np.copyto(N, np.swapaxes(Nt, 2, 3))
            R = np.matmul(T.reshape(k, P * m1, q2), S_inv,
                          out=scratch("R", (k, P * m1, q2))).reshape(k, P, m1 * q2)
            R *= np.repeat(d_inv, q2, axis=1)[:, None, :]  # D⁻¹T_aS⁻¹
            out = np.matmul(dd, np.swapaxes(dd, 1, 2))
            out += 2.0 * np.matmul(R, np.swapaxes(T.reshape(k, P, -1), 1, 2))
            out += np.matmul(N.reshape(k, P, -1), np.swapaxes(Nt.reshape(k, P, -1), 1, 2))
            return out
        k = inverse.shape[0]
        N = np.matmul(inverse[:, None], dH.reshape((k, P) + dH.shape[1:]))  # (k, P, B, s, s)
        Nt = np.swapaxes(N, 3, 4).reshape(k, P, -1)
        return np.matmul(N.reshape(k, P, -1), np.swapaxes(Nt, 1, 2))

    def inverse_rows(self, inverse):
        """H⁻¹'s entries between each row's coefficients: (J, J, k, n)."""
        if isinstance(inverse, _Schur):
            m1, q2 = self.n_diag, self.q2
            top = self.loc[:, 0]
            S_flat = inverse.S_inv.reshape(inverse.S_inv.shape[0], -1)
            M_flat = inverse.M.reshape(inverse.M.shape[0], -1)
            out = np.empty((self.J, self.J, S_flat.shape[0], self.n))
            out[0, 0] = inverse.diag_top[:, top]
            for j in range(1, self.J):
                out[0, j] = out[j, 0] = -M_flat[:, top * q2 + self.loc[:, j] - m1]
                for i in range(1, self.J):
                    out[i, j] = S_flat[:, (self.loc[:, i] - m1) * q2 + self.loc[:, j] - m1]
            return out
        flat = inverse.reshape(inverse.shape[0], -1)
        return np.stack([np.stack([flat[:, ix] for ix in row]) for row in self.inverse_index])

    def factor(self, H, light: bool = False, positive: bool = False):
        """(log det, inverse, positive definite) per block of H (k, B, s, s): the
        inverse an array, or a :class:`_Schur` (log det and ok then (k, 1); with
        ``light``, for solves only, no log det)."""
        if self.n_diag:
            F = _Schur(*H, light=light, positive=positive)
            return (None if light else F.logdet[:, None]), F, F.ok[:, None]
        return _factor(H)

    @staticmethod
    def replace(inverse, mask, other):
        """``inverse`` with the models ``mask`` taken from ``other``."""
        if isinstance(inverse, _Schur):
            inverse.replace(mask, other)
        else:
            inverse[mask] = other
        return inverse

    def subset_hessian(self, H, mask):
        return tuple(h[mask] for h in H) if self.n_diag else H[mask]

    def solve(self, inverse, v):
        """H⁻¹v blockwise: (k, B, s, s) with (..., k, B·s) -> (..., k, B·s)."""
        if isinstance(inverse, _Schur):
            return inverse.solve(v)
        lead = v.shape[:-1]
        return _matvec(inverse, v.reshape(lead + (self.B, self.s))).reshape(v.shape)


class RowModel:
    """The per-row terms of one family (with or without zero-inflation), on (models,
    rows) arrays."""

    def __init__(self, family, zero_inflated: bool, has_dispersion: bool, power: float = 1.0):
        self.family = family
        self.zero_inflated = zero_inflated
        self.has_dispersion = has_dispersion
        self.power = power
        name, link = type(family).__name__, type(family.link).__name__
        builtin = (type(family).__module__.startswith("glmmjax.")
                   and type(family.link).__module__.startswith("glmmjax."))
        self.fast = None
        if builtin and not zero_inflated:
            self.fast = {("Binomial", "Logit"): "binomial", ("Poisson", "Log"): "poisson",
                         ("NegativeBinomial", "Log"): "nb"}.get((name, link))
            if self.fast == "nb" and not has_dispersion:
                self.fast = None
        if zero_inflated:
            from .._engines.host.parts_rows import RowKernel, is_truncated

            self.kernel = RowKernel(family, True)
            if builtin and (name, link) == ("Poisson", "Log") and not is_truncated(family):
                self.fast = "zip"
        self._cache = None
        self.unit = False

    def constant(self, Y, Wt) -> np.ndarray:
        """Per model, the part of Σ log f left out of ``ll`` (free of every parameter)."""
        if self.fast == "zip":
            import scipy.special as sc

            return -np.sum(Wt * sc.gammaln(Y + 1.0), axis=1)
        if self.zero_inflated:
            return np.zeros(Y.shape[0])
        if self.fast == "binomial" and not np.any((Y != 0.0) & (Y != 1.0)):
            # 0/1 data: log C(w, wy) = 0 on every row (C(n, 0) = C(n, n) = 1), as
            # fm.loglik_constant, without a call per model.
            return np.zeros(Y.shape[0])
        return np.array([float(fm.loglik_constant(self.family, np, y, w))
                         for y, w in zip(Y, Wt)])

    def prepare(self, K: int, n: int):
        """Room for the negative binomial's log Γ(y + θ) and ψ(y + θ) per model (they
        change only when θ does: Newton's Hessian columns in β and Λ reuse them)."""
        if self.fast == "nb":
            self._cache = (np.full(K, np.nan), np.empty((K, n)), np.empty((K, n)))

    def unit_weights(self, Wt):
        """Prior weights all 1 (the binomial's closed form then skips them)."""
        self.unit = bool(np.all(Wt == 1.0))

    def __call__(self, y, w, eta, zeta, delta, third: bool, idx=None, complete=None):
        """dict of (k, n) arrays: ll, g_e, W and with ``third`` g_z, g_d, h_ez, h_ed
        (∂²ℓ/∂η∂ζ, ∂²ℓ/∂η∂δ), W_e, W_z, W_d (∂W/∂η, ∂W/∂ζ, ∂W/∂δ). ``complete``
        (default: ``third``): ``ll`` with its terms in the dispersion alone (the inner
        Newton, at a fixed dispersion, does without them)."""
        complete = third if complete is None else complete
        shape = eta.shape
        with np.errstate(all="ignore"):
            if self.fast == "zip":
                return _zip_rows(y, w, eta, zeta, third)
            if self.zero_inflated:
                d = delta if delta is not None else np.zeros(shape)
                args = (y.ravel(), w.ravel(), eta.ravel(), zeta.ravel(),
                        np.broadcast_to(d, shape).ravel())
                if not third:  # the inner Newton: no third derivatives, no δ terms
                    ll, g_e, _, w_ee, _, _ = self.kernel.newton(*args)
                    return dict(ll=ll.reshape(shape), g_e=g_e.reshape(shape),
                                W=w_ee.reshape(shape))
                rows = self.kernel.terms(*args)
                return {key: value.reshape(shape) for key, value in (
                    ("ll", rows.ll), ("g_e", rows.g_e), ("W", rows.w_ee), ("g_z", rows.g_z),
                    ("g_d", rows.g_d), ("h_ez", -rows.w_ez), ("h_ed", rows.h_ed),
                    ("W_e", rows.t_ee_e), ("W_z", rows.t_ee_z), ("W_d", rows.t_ee_d))}
            if self.fast == "binomial":
                # (in place where a temporary would do: the same operations in the same
                # order, fewer passes over (models × rows) arrays)
                e = np.abs(eta)
                np.negative(e, out=e)
                np.exp(e, out=e)  # exp(−|η|)
                softplus = 1.0 + e
                prob = np.where(eta >= 0, 1.0, e)
                prob /= softplus
                W = 1.0 - prob
                W *= prob
                np.log1p(e, out=softplus)
                softplus += np.maximum(eta, 0.0)
                if self.unit:
                    ll = y * eta
                    ll -= softplus
                    out = dict(ll=ll, g_e=y - prob, W=W)
                else:
                    W = w * W
                    s = w * y
                    out = dict(ll=s * eta - w * softplus, g_e=s - w * prob, W=W)
                if third:
                    out["W_e"] = W * (1.0 - 2.0 * prob)
                    out["W_ee"] = W * (1.0 - 6.0 * prob * (1.0 - prob))  # ∂²W/∂η²
                return out
            if self.fast == "poisson":
                mu = np.exp(eta)
                W = w * mu
                out = dict(ll=w * y * eta - W, g_e=w * y - W, W=W)
                if third:
                    out["W_e"] = out["W_ee"] = W
                return out
            theta = np.exp(self.power * delta) if self.has_dispersion else None
            if self.fast == "nb" and np.all(theta <= 1e4):
                return self._negative_binomial(y, w, eta, delta, theta, third, idx, complete)
            r = fm.row_terms(self.family, np, y, eta, w, theta, third=third,
                             dispersion_derivatives=third and self.has_dispersion)
            # log y! is left out (in the constant), as by the closed form below.
            out = dict(ll=r.value + np.zeros(shape), g_e=r.d1 + np.zeros(shape),
                       W=r.w + np.zeros(shape))
            if third:
                out["W_e"] = r.w1 + np.zeros(shape)
                if self.has_dispersion:
                    p = self.power
                    out.update(g_d=p * r.value_psi + np.zeros(shape),
                               h_ed=p * r.d1_psi + np.zeros(shape),
                               W_d=p * r.w_psi + np.zeros(shape))
            return out

    def _negative_binomial(self, y, w, eta, delta, theta, third, idx, complete):
        """NB2 with the log link (as :func:`glmmjax._families.math._negative_binomial`,
        μ = e^η, p = μ/(θ + μ)); ``ll`` without log y! and, unless ``third``, without
        log Γ(y + θ) − log Γ(θ) (constant in the inner Newton, θ fixed) unless
        ``complete``."""
        import scipy.special as sc

        mu = np.exp(eta)
        total = mu + theta
        log_total = np.log(total)
        p = mu / total
        one_mp = theta / total
        yt = y + theta
        f1 = w * (y - yt * p)
        W = w * yt * p * one_mp
        ll = w * (theta * delta + y * eta - yt * log_total)
        out = dict(ll=ll, g_e=f1, W=W)
        if not (third or complete):
            return out
        lg, dg = self._gamma_terms(y, theta, yt, idx)
        out["ll"] = ll + w * (lg - sc.gammaln(theta))
        if not third:
            return out
        out["W_e"] = W * (one_mp - p)
        out["g_d"] = (w * theta * (dg - sc.digamma(theta) + delta - log_total + 1.0)
                      - w * yt * one_mp)
        out["h_ed"] = p * f1
        out["W_d"] = w * p * one_mp * (theta - yt * (one_mp - p))
        return out

    def _gamma_terms(self, y, theta, yt, idx):
        """log Γ(y + θ), ψ(y + θ), from the cache where θ (one per model) is unchanged."""
        import scipy.special as sc

        if self._cache is None or idx is None or theta.shape[1] != 1:
            return sc.gammaln(yt), sc.digamma(yt)
        known, lg_all, dg_all = self._cache
        stale = known[idx] != theta[:, 0]
        if stale.any():
            rows = idx[stale]
            lg_all[rows] = sc.gammaln(yt[stale])
            dg_all[rows] = sc.digamma(yt[stale])
            known[rows] = theta[stale, 0]
        return lg_all[idx], dg_all[idx]


def _zip_rows(y, w, eta, zeta, third):
    """Zero-inflated Poisson with the log link: :class:`glmmjax._engines.host.parts_rows.RowKernel`'s
    mixture algebra written out for a = log f(0) = −μ (each of its η-derivatives −μ),
    ``ll`` without −log y! (:meth:`RowModel.constant`). On zeros, with r = σ(ζ + μ) and
    c = r(1 − r): ℓ = −μ + softplus(ζ + μ) − softplus(ζ), ℓ_η = −(1 − r)μ,
    W = (1 − r)μ − cμ²; on y > 0 rows the Poisson's own terms and log σ(−ζ)."""
    mu = np.exp(eta)
    zero = y == 0
    e_z = np.exp(-np.abs(zeta))
    sp_z = np.maximum(zeta, 0.0) + np.log1p(e_z)
    x = zeta + mu
    e = np.exp(-np.abs(x))
    pos = x >= 0
    r = np.where(pos, 1.0, e) / (1.0 + e)
    one_r = np.where(pos, e, 1.0) / (1.0 + e)
    sp_x = np.maximum(x, 0.0) + np.log1p(e)
    weight = np.where(zero, one_r, 1.0)
    zc = np.where(zero, r * one_r, 0.0)
    mu2 = mu * mu
    out = dict(ll=w * (y * eta - mu - sp_z + np.where(zero, sp_x, 0.0)),
               g_e=w * (y - weight * mu), W=w * (weight * mu - zc * mu2))
    if third:
        s = np.where(zeta >= 0, 1.0, e_z) / (1.0 + e_z)
        k = zc * (one_r - r)
        out.update(g_z=w * (np.where(zero, r, 0.0) - s), h_ez=w * zc * mu,
                   W_e=w * (weight * mu - 3.0 * zc * mu2 - k * mu2 * mu),
                   W_z=-w * (k * mu2 + zc * mu))
    return out


class LockstepModels:
    """K models sharing a design: the criterion, its gradient and the fit, vectorized.

    Arguments: X (n, p), offset (n,), terms (the conditional part's random-effects
    terms), Y and Wt (n, K) responses and prior weights, ``rows`` (a :class:`RowModel`),
    optionally X_zi/offset_zi (zero-inflation) and X_d/offset_d (dispersion; an
    intercept column alone with no offset is one dispersion per model, kept as a
    (models, 1) column).
    """

    def __init__(self, X, offset, terms, Y, Wt, rows: RowModel, X_zi=None, offset_zi=None,
                 X_d=None, offset_d=None):
        n = X.shape[0]
        self.X = np.asarray(X, np.float64)
        self.offset = np.asarray(offset, np.float64)
        self.layout = Layout(terms, n)
        self.rows = rows
        self.central_se = False  # central differences for the SEs (SE_CENTRAL_STEP)
        self.n_agq = 1  # > 1: adaptive Gauss–Hermite quadrature (one scalar term; _agq)
        self.Y = np.ascontiguousarray(np.asarray(Y, np.float64).T)  # (K, n)
        self.Wt = np.ascontiguousarray(np.asarray(Wt, np.float64).T)
        empty = np.zeros((n, 0))
        self.X_zi = empty if X_zi is None else np.asarray(X_zi, np.float64)
        self.offset_zi = np.zeros(n) if offset_zi is None else np.asarray(offset_zi, np.float64)
        self.X_d = empty if X_d is None else np.asarray(X_d, np.float64)
        self.offset_d = np.zeros(n) if offset_d is None else np.asarray(offset_d, np.float64)
        self.scalar_dispersion = (self.X_d.shape[1] == 1 and np.all(self.X_d == 1.0)
                                  and np.all(self.offset_d == 0.0))
        L = self.layout
        self.sizes = (L.n_theta, self.X.shape[1], self.X_zi.shape[1], self.X_d.shape[1])
        self.P = sum(self.sizes)
        rows.prepare(*self.Y.shape)
        rows.unit_weights(self.Wt)
        self._scratch = _Scratch()

    @property
    def exact_hessian(self) -> bool:
        """Whether :meth:`evaluate` gives F's exact Hessian (the binomial's logit and
        the Poisson's log closed forms, no dispersion, zero-inflation or quadrature);
        elsewhere the fit takes differences of the exact gradient."""
        return (self.rows.fast in ("binomial", "poisson") and not self.rows.has_dispersion
                and self.n_agq == 1)

    # -- pieces ----------------------------------------------------------------------------
    def _data(self, idx):
        """Y and the prior weights of the models ``idx`` (views where ``idx`` is a run of
        consecutive models; no weights where the row terms do without them)."""
        if idx.size and idx[-1] - idx[0] + 1 == idx.size and np.all(np.diff(idx) == 1):
            take = slice(idx[0], idx[-1] + 1)
        else:
            take = idx
        return self.Y[take], (None if self.rows.unit and self.rows.fast == "binomial"
                              else self.Wt[take])

    def split(self, psi):
        a, b, c, _ = np.cumsum(self.sizes)
        return psi[:, :a], psi[:, a:b], psi[:, b:c], psi[:, c:]

    def _predictors(self, psi):
        theta, beta, beta_zi, beta_d = self.split(psi)
        base = beta @ self.X.T + self.offset
        zeta = beta_zi @ self.X_zi.T + self.offset_zi if self.rows.zero_inflated else None
        delta = None
        if self.rows.has_dispersion:
            delta = (beta_d[:, :1].copy() if self.scalar_dispersion
                     else beta_d @ self.X_d.T + self.offset_d)
        return self.layout.rows_a(theta), base, zeta, delta

    def mode(self, idx, a, base, zeta, delta, u0, theta=None):
        """û for the models ``idx`` by Newton's method with per-model step halving
        (``theta``: the models' θ, for the scalar terms' sums).

        Returns (û, converged)."""
        L = self.layout
        y, w = self._data(idx)
        u = u0.copy()
        k = u.shape[0]
        converged = np.zeros(k, bool)

        def take(x, sub, axis=0):
            # (sub: sorted, distinct; all of them mostly, where copies would be waste)
            if x is None or len(sub) == k:
                return x
            return x[:, sub] if axis else x[sub]

        def terms(sub, v):
            eta = take(base, sub) + L.linear(take(a, sub, 1), v, take(theta, sub))
            r = self.rows(take(y, sub), take(w, sub), eta, take(zeta, sub), take(delta, sub),
                          third=False, idx=idx[sub])
            value = -2.0 * np.sum(r["ll"], axis=1) + np.sum(v * v, axis=1)
            return value, r

        active = np.arange(k)
        value, r = terms(active, u)
        for _ in range(MAX_INNER):
            if active.size == 0:
                break
            sub_a = take(a, active, 1)
            sub_theta = take(theta, active)
            G = u[active] - L.scatter_a(sub_a, r["g_e"], sub_theta)
            W = r["W"]
            H = L.hessian(sub_a, W, sub_theta)
            _, inv, ok = L.factor(H, light=True, positive=bool(np.all(W >= 0)))
            ok = ok.all(axis=1)
            if not ok.all():
                # Not log-concave here (zero-inflation): steps with W floored.
                floor = np.maximum(W[~ok], 1e-10 * (1.0 + np.abs(W[~ok])))
                _, inv_f, _ = L.factor(L.hessian(sub_a[:, ~ok], floor), light=True)
                inv = L.replace(inv, ~ok, inv_f)
            step = -L.solve(inv, G)
            decrement = -np.sum(G * step, axis=1)
            with np.errstate(invalid="ignore"):
                done = decrement < INNER_TOL
            finished = active[done]
            u[finished] += step[done]
            converged[finished] = True
            keep = ~done & np.isfinite(decrement)
            active, step, value, r = (active[keep], step[keep], value[keep],
                                      {key: v[keep] for key, v in r.items()})
            if active.size == 0:
                break
            # Step halving per model: the trial points of the models not yet accepted.
            t = np.ones(active.size)
            new_value = np.full(active.size, np.nan)
            new_r = {key: np.empty_like(v) for key, v in r.items()}
            pending = np.arange(active.size)
            for _ in range(MAX_HALVINGS):
                trial = u[active[pending]] + t[pending, None] * step[pending]
                f_t, r_t = terms(active[pending], trial)
                good = np.isfinite(f_t) & (f_t <= value[pending]
                                           + 1e-13 * (1 + np.abs(value[pending])))
                acc = pending[good]
                new_value[acc] = f_t[good]
                for key in new_r:
                    new_r[key][acc] = r_t[key][good]
                u[active[acc]] = trial[good]
                pending = pending[~good]
                t[pending] *= 0.5
                if pending.size == 0:
                    break
            moved = np.isfinite(new_value)
            active, value = active[moved], new_value[moved]
            r = {key: v[moved] for key, v in new_r.items()}
        return u, converged

    def evaluate(self, idx, psi, u0, gradient: bool = True, sensitivity: bool = False,
                 trusted: bool = False, hessian: bool = False):
        """F, ∇F, û (and dû/dψ, (k, B·s, P); with ``hessian`` F's exact Hessian "hess",
        (k, P, P), where :attr:`exact_hessian`) of the models ``idx`` at ``psi`` (k, P),
        the inner Newton started from ``u0`` (k, B·s). F is NaN where H is not
        positive definite at the mode or the mode was not found.

        ``trusted``: ``u0`` is the mode extrapolated over a tiny step (the difference
        quotients' points): where its Newton decrement is below :data:`TRUSTED_TOL`
        (|u0 − û| ~ 1e-10) it is taken as the mode, without the inner Newton's pass."""
        a, base, zeta, delta = self._predictors(psi)
        if not trusted:
            u, inner_ok = self.mode(idx, a, base, zeta, delta, u0, psi[:, :self.layout.n_theta])
            return self._at(idx, a, base, zeta, delta, u, inner_ok, gradient, sensitivity,
                            hessian=hessian, theta=psi[:, :self.layout.n_theta])
        out = self._at(idx, a, base, zeta, delta, u0, np.ones(len(idx), bool), gradient,
                       sensitivity, check=True, hessian=hessian,
                       theta=psi[:, :self.layout.n_theta])
        redo = ~(out.pop("decrement") < TRUSTED_TOL)
        if redo.any():
            sub = lambda x: None if x is None else x[redo]  # noqa: E731
            u, inner_ok = self.mode(idx[redo], a[:, redo], base[redo], sub(zeta), sub(delta),
                                    u0[redo], psi[redo, :self.layout.n_theta])
            again = self._at(idx[redo], a[:, redo], base[redo], sub(zeta), sub(delta), u,
                             inner_ok, gradient, sensitivity, hessian=hessian,
                             theta=psi[redo, :self.layout.n_theta])
            for key, value in again.items():
                out[key][redo] = value
        return out

    def _at(self, idx, a, base, zeta, delta, u, inner_ok, gradient, sensitivity,
            check=False, hessian=False, theta=None):
        """:meth:`evaluate` at random effects ``u`` (the mode, or with ``check`` a point
        whose Newton decrement is returned too)."""
        L = self.layout
        y, w = self._data(idx)
        ug = L.gather(u)
        eta = base + _rowdot_slots(a, ug)
        r = self.rows(y, w, eta, zeta, delta, third=gradient, idx=idx, complete=True)
        H = L.hessian(a, r["W"], theta)
        logdet, inv, ok = L.factor(H)
        ok = ok.all(axis=1) & inner_ok
        value = -2.0 * np.sum(r["ll"], axis=1) + np.sum(u * u, axis=1) + logdet.sum(axis=1)
        agq = None
        if self.n_agq > 1:
            agq = self._agq(idx, a, base, u, H, r, inv, ug, gradient, delta)
            value = value + agq[0]
        value = np.where(ok & np.isfinite(value), value, np.nan)
        out = dict(value=value, u=u, inner_ok=inner_ok)
        if check:
            G = u - L.scatter_a(a, r["g_e"], theta)
            out["decrement"] = np.sum(G * L.solve(inv, G), axis=1)
        if not gradient:
            return out
        # Gradient (module docstring; notation of glmmjax._engines.host.parts.value_grad).
        with np.errstate(all="ignore"):
            Hr = L.inverse_rows(inv)  # (J, J, k, n)
            PH = np.stack([_rowdot_slots(Hr[i], a) for i in range(L.J)])  # (H⁻¹aᵢ)
            p_ee = _rowdot_slots(PH, a)
            c_e = p_ee * r["W_e"]
            zg = L.gather(L.solve(inv, L.scatter_a(a, c_e, theta)))
            az = _rowdot_slots(a, zg)
            W, g_e = r["W"], r["g_e"]
            rho_e = -2.0 * g_e + c_e - az * W
            parts = []
            # θ: Σᵢ z_{i,r}·Q_{i,(t,c)}, Q = u·ρ_η + 2W·(H⁻¹a) + ℓ'·z.
            Q = ug * rho_e + 2.0 * W * PH + g_e * zg
            for t, r_, c in L.theta_index:
                parts.append((Q[L.offsets[t] + c] @ L.z[t][:, r_])[:, None])
            parts.append(rho_e @ self.X)
            if self.rows.zero_inflated:
                rho_z = -2.0 * r["g_z"] + p_ee * r["W_z"] + az * r["h_ez"]
                parts.append(rho_z @ self.X_zi)
            if self.rows.has_dispersion:
                rho_d = -2.0 * r["g_d"] + p_ee * r["W_d"] + az * r["h_ed"]
                parts.append(rho_d @ self.X_d)
            grad = np.concatenate(parts, axis=1)
            if agq is not None:
                grad = grad + agq[1]
        out["grad"] = np.where(ok[:, None], grad, np.nan)
        if sensitivity or hessian:
            out["S"] = agq[2] if agq is not None else self._sensitivity(a, ug, r, inv)
        if hessian:
            with np.errstate(all="ignore"):
                hess = self._hessian(a, ug, r, inv, Hr, PH, p_ee, zg, az, rho_e, out["S"],
                                     theta)
            out["hess"] = np.where(ok[:, None, None], hess, np.nan)
        return out

    def _hessian(self, a, ug, r, inv, Hr, PH, p_ee, zg, az, rho_e, S, theta=None):
        """F's exact Hessian (k, P, P) at the mode, for θ and β (no zero-inflation,
        dispersion or quadrature: :attr:`exact_hessian`).

        With Φ(ψ, u) = g + log|H|, g = −2Σℓ + |u|², F(ψ) = Φ(ψ, û(ψ)) and
        d²F/dψ_adψ_b = D²Φ[δ_a, δ_b] + c'd²û/dψ_adψ_b along δ_a = (e_a, S_a) (S = dû/dψ;
        η is bilinear in (θ, u) and A = ZΛ linear in θ), c = ∂log|H|/∂u = Σ W'ᵢpᵢᵢaᵢ,
        and c'd²û = −½v'T_ab with v = H⁻¹c and T_ab the second derivative of ∂g/∂u
        along the δ's (the stationarity ∂g/∂u = 0 differentiated twice). Per row, with
        e_a = dη/dψ_a (∂η/∂ψ_a + aᵢ'S_a), α_a = ∂aᵢ/∂θ_a (z_{i,t,r} at the slot of
        (t, c)), η''_ab = α_a'S_b + α_b'S_a, pᵢᵢ = aᵢ'H⁻¹aᵢ and Ḣ_a = Σᵢ W'ᵢe_a aᵢaᵢ' +
        Wᵢ(α_aaᵢ' + aᵢα_a'):

            Σᵢ [(2W + W''p − W'a'v) e_a e_b + ρ η''_ab + e_a γ_b + e_b γ_a
                + 2W α_a'H⁻¹α_b] + 2S_a'S_b − tr(H⁻¹Ḣ_aH⁻¹Ḣ_b),

        ρ = −2ℓ' + W'p − W a'v (the gradient's β weight), γ_a = 2W'α_a'H⁻¹aᵢ − Wα_a'v."""
        L = self.layout
        W, W_e, W_ee = r["W"], r["W_e"], r["W_ee"]
        J, k, n = a.shape
        P = self.P
        scratch = self._scratch
        # Everything per parameter model-first, (k, P, n), in work arrays (_Scratch).
        St = np.ascontiguousarray(np.swapaxes(S, 1, 2))  # (k, P, B·s)
        e = scratch("e", (k, P, n))  # e_a = ∂η/∂ψ_a + aᵢ'S_a
        F = scratch("F", (k, P, n))
        scalar = L.scalar and theta is not None
        if scalar:  # aᵢ's entry at slot j is θ_j z_{i,j}: θ_j applied to S's columns first
            Sa = St * theta[:, None, L.column_slot]
        for j in range(J):
            part = e if j == 0 else F  # S at slot j's rows, times aᵢ's entry there
            np.take(Sa if scalar else St, L.flat[j], axis=2, out=part, mode="clip")
            if not scalar:
                np.multiply(part, a[j][:, None], out=part)
            elif L.theta_slots[j][1] is not None:  # (scalar terms: slot j is θ_j's)
                part *= L.theta_slots[j][1]
            if j:
                e += F
        for p0, (col, z) in enumerate(L.theta_slots):
            e[:, p0] += ug[col] if z is None else z * ug[col]
        n_theta = L.n_theta
        e[:, n_theta:] += self.X.T[None]
        # Σᵢ c₁e_ae_b + e_aγ_b + e_bγ_a as one product: 2γ_a added to the θ rows of
        # c₁e (the result is symmetrized below: each cross term counted once each way).
        np.multiply(e, (2.0 * W + W_ee * p_ee - W_e * az)[:, None], out=F)
        for i, (col, z) in enumerate(L.theta_slots):
            gamma = 2.0 * W_e * PH[col] - W * zg[col]
            if z is not None:
                gamma *= z
            F[:, i] += 2.0 * gamma
        out = np.matmul(F, np.swapaxes(e, 1, 2))
        out += 2.0 * np.matmul(St, S)
        # θ's terms ρη''_ab = ρ(α_a'S_b + α_b'S_a) (ρz summed per level first, then
        # against S at those levels) and 2Wα_a'H⁻¹α_b.
        thetas = L.theta_slots
        for i, (col, z) in enumerate(thetas):
            rz = rho_e if z is None else rho_e * z
            level = L.G_maps[col] @ np.ascontiguousarray(rz.T)  # (B·s, k)
            row = np.matmul(St, np.ascontiguousarray(level.T)[:, :, None])[..., 0]
            out[:, i, :] += row
            out[:, :, i] += row
            for j in range(i, n_theta):
                col_j, z_j = thetas[j]
                wz = W if z is None else W * z
                wz = wz if z_j is None else wz * z_j
                h = 2.0 * np.sum(wz * Hr[col, col_j], axis=1)
                out[:, i, j] += h
                if j != i:
                    out[:, j, i] += h
        # −tr(H⁻¹Ḣ_aH⁻¹Ḣ_b): Ḣ_a's per-row weights on each slot pair (i, j),
        # W'e_a aᵢaⱼ + W(α_a,ᵢaⱼ + aᵢα_a,ⱼ), stacked model-first.
        if scalar:
            dH = L.assemble_scalar(e, W_e, W, theta, scratch)
            out -= L.trace_products(inv, dH, P, scratch)
            return 0.5 * (out + np.swapaxes(out, 1, 2))
        np.multiply(e, W_e[:, None], out=F)  # W'e
        weights = []
        for i, j in L.pairs:
            w_ij = F * (a[i] * a[j])[:, None, :]
            for p0, (col, z) in enumerate(thetas):
                wz = W if z is None else W * z
                if col == i:
                    w_ij[:, p0] += wz * a[j]
                if col == j:
                    w_ij[:, p0] += wz * a[i]
            weights.append(w_ij.reshape(k * P, n))
        out -= L.trace_products(inv, L.assemble(weights), P, scratch)
        return 0.5 * (out + np.swapaxes(out, 1, 2))

    def _agq(self, idx, a, base, u, H, r, inv, ug, gradient, delta=None):
        """Adaptive Gauss–Hermite quadrature for one scalar term, as glmer's nAGQ > 1:
        (Δ, ∇Δ, dû/dψ) where the deviance is the Laplace value plus
        Δ = −2 Σ_j log Σ_k w_k exp(−½[D_j(û_j + z_k s_j) − D_j(û_j)] + ½z_k²),
        D_j(u) = −2 Σ_{i∈j} ℓ_i + u² at level j, s_j = H_j^{-1/2} (nodes z_k, weights
        w_k of the standard normal). ∇Δ is exact: the node values' partial derivatives
        plus the chain through û(ψ) (the sensitivities) and s(ψ) (through H's
        derivative: W' = ∂W/∂η). With an estimated dispersion (its log the last
        parameter, glmer's parameterization) the node values depend on it too (∂ℓ/∂δ at
        the nodes; ∂W/∂δ in H's derivative)."""
        L = self.layout
        y, w = self.Y[idx], self.Wt[idx]
        dispersion = self.rows.has_dispersion
        z_nodes, w_nodes = np.polynomial.hermite_e.hermegauss(self.n_agq)
        w_nodes = w_nodes / w_nodes.sum()
        a0 = a[0]
        Hj = H.reshape(u.shape)  # (k, B, 1, 1): one scalar term
        sd = 1.0 / np.sqrt(Hj)

        def level_sum(v):
            return L.scatter(v[None])

        D0 = -2.0 * level_sum(r["ll"]) + u * u
        node_terms = []
        log_e = []
        for zk, wk in zip(z_nodes, w_nodes):
            uk = u + zk * sd
            eta = base + a0 * L.gather(uk)[0]
            rk = self.rows(y, w, eta, None, delta, third=gradient and dispersion, idx=idx,
                           complete=True)
            Dk = -2.0 * level_sum(rk["ll"]) + uk * uk
            log_e.append(np.log(wk) - 0.5 * (Dk - D0) + 0.5 * zk * zk)
            node_terms.append((zk, uk, rk["g_e"], rk.get("g_d")))
        log_e = np.stack(log_e)  # (nodes, k, B)
        top = np.max(log_e, axis=0)
        e = np.exp(log_e - top)
        tmp = e.sum(axis=0)
        delta = -2.0 * np.sum(np.log(tmp) + top, axis=1)
        if not gradient:
            return delta, None, None
        pi = e / tmp  # (nodes, k, B)
        S = self._sensitivity(a, ug, r, inv)  # (k, B, P)
        k, B = u.shape
        p = self.X.shape[1]
        z = L.z[0][:, 0]
        # Partial derivatives at fixed nodes: rows' weights ρ (β) and ρ_θ (θ).
        g0 = r["g_e"]
        u0_rows = ug[0]
        rho = 2.0 * g0
        rho_t = 2.0 * g0 * u0_rows
        rho_d = 2.0 * r["g_d"] if dispersion else None
        A = np.zeros((k, B))
        Bc = np.zeros((k, B))
        for (zk, uk, gk, gdk), pk in zip(node_terms, pi):
            pk_rows = L.gather(pk)[0]
            uk_rows = L.gather(uk)[0]
            rho = rho - 2.0 * pk_rows * gk
            rho_t = rho_t - 2.0 * pk_rows * gk * uk_rows
            if dispersion:
                rho_d = rho_d - 2.0 * pk_rows * gdk
            Dp = -2.0 * level_sum(gk * a0) + 2.0 * uk  # D_j'(u_k)
            A += pk * Dp
            Bc += pk * Dp * zk
        pieces = [(rho_t @ z)[:, None], rho @ self.X]
        if dispersion:
            pieces.append(rho_d @ self.X_d)
        partial = np.concatenate(pieces, axis=1)  # (k, P)
        # dH_j/dψ = Σ_{i∈j} W'_i a_i² ∂η_i/∂ψ + (Σ_{i∈j} W'_i a_i³) dû_j/dψ
        #           + [θ] Σ_{i∈j} W_i·2θ z_i².
        We, W = r["W_e"], r["W"]
        wa2 = We * a0 * a0
        dH = np.empty((k, B, self.P))
        with np.errstate(invalid="ignore", divide="ignore"):
            theta_val = np.sum(a0 * z, axis=1) / np.sum(z * z)
        dH[:, :, 0] = level_sum(wa2 * z * u0_rows) + level_sum(2.0 * W * theta_val[:, None]
                                                                * z * z)
        for c in range(p):
            dH[:, :, 1 + c] = level_sum(wa2 * self.X[:, c])
        if dispersion:  # ∂W/∂δ at fixed η
            for c in range(self.X_d.shape[1]):
                dH[:, :, 1 + p + c] = level_sum(np.broadcast_to(r["W_d"], W.shape) * a0 * a0
                                                * self.X_d[:, c])
        dH += level_sum(wa2 * a0)[:, :, None] * S
        dsd = -0.5 * (sd ** 3)[:, :, None] * dH
        chain = np.einsum("kb,kbp->kp", A, S) + np.einsum("kb,kbp->kp", Bc, dsd)
        return delta, partial + chain, S

    def _sensitivity(self, a, ug, r, inv):
        """dû/dψ = −H⁻¹ s_j, s_j = ∂(∇ᵤg/2)/∂ψ_j at fixed u: (k, B·s, P)."""
        L = self.layout
        W, g_e = r["W"], r["g_e"]
        aW = a * W
        J, k, n = a.shape
        P = self.P
        # Per slot, row and parameter, the rows summed into s_j: n-major, so that the
        # sums over rows (sparse products) take it as it is, in a work array (_Scratch).
        V = self._scratch("sensitivity", (J, n, P, k))
        aWt = aW.transpose(0, 2, 1)
        p0 = 0
        for t, r_, c in L.theta_index:
            col = L.offsets[t] + c
            z_r = L.z[t][:, r_]
            np.multiply(aWt, (ug[col] * z_r).T[None], out=V[:, :, p0])
            V[col, :, p0] -= (z_r * g_e).T
            p0 += 1
        blocks = [(self.X, aW)]
        if self.rows.zero_inflated:
            blocks.append((self.X_zi, -(a * r["h_ez"])))
        if self.rows.has_dispersion:
            blocks.append((self.X_d, -(a * np.broadcast_to(r["h_ed"], W.shape))))
        for X, rows_ in blocks:
            width = X.shape[1]
            np.multiply(rows_.transpose(0, 2, 1)[:, :, None, :], X[None, :, :, None],
                        out=V[:, :, p0 : p0 + width])
            p0 += width
        summed = L.G_maps[0] @ V[0].reshape(n, P * k)
        for j in range(1, J):
            summed += L.G_maps[j] @ V[j].reshape(n, P * k)
        cols = summed.T.reshape(P, k, -1)
        S = -np.moveaxis(L.solve(inv, cols), 0, -1)
        return np.where(np.isfinite(S), S, 0.0)

    # -- the fit -------------------------------------------------------------------------
    def _gradient_at(self, idx, psi, u, S, base_psi, trusted=True):
        start = u + _extrapolate(S, psi - base_psi)
        return self.evaluate(idx, psi, start, trusted=trusted)["grad"]

    def _evaluate_mixed(self, idx, psi, start, final, **options):
        """:meth:`evaluate` of line-search points, ``final`` per model (boolean (k,)):
        the models taking their last, tiny step start from the extrapolated mode and
        skip the inner Newton where that start's decrement says it is the mode (the
        criterion and its derivatives are still those at ``psi``), and get the exact
        Hessian there (the standard errors')."""
        final = np.asarray(final, bool)
        every = bool(options.pop("every", False))
        if not final.any():
            return self.evaluate(idx, psi, start, hessian=every, **options)
        two = self.evaluate(idx[final], psi[final], start[final], trusted=True, hessian=True,
                            **options)
        if final.all():
            return two
        one = self.evaluate(idx[~final], psi[~final], start[~final], hessian=every, **options)
        out = {}
        for key, value in two.items():
            out[key] = np.full((len(idx),) + value.shape[1:], np.nan, value.dtype)
            out[key][final] = value
            if key in one:
                out[key][~final] = one[key]
        return out

    def _fd_hessian(self, idx, psi, u, S, grad, step=None, central=0):
        """Forward differences of the exact gradient, (k, P, P), symmetrized; central
        differences (step ``step``) along the first ``central`` parameters (forward
        ones with :data:`SE_STEP` along the rest)."""
        k, P = psi.shape
        H = np.empty((k, P, P))
        for j in range(P):
            base = FD_STEP if step is None else step
            if central and j >= central:
                base = SE_STEP
            h = base * np.maximum(1.0, np.abs(psi[:, j]))
            up = psi.copy()
            up[:, j] += h
            if j < central:
                down = psi.copy()
                down[:, j] -= h
                H[:, :, j] = (self._gradient_at(idx, up, u, S, psi)
                              - self._gradient_at(idx, down, u, S, psi)) / (2 * h[:, None])
            else:
                H[:, :, j] = (self._gradient_at(idx, up, u, S, psi) - grad) / h[:, None]
        return 0.5 * (H + np.swapaxes(H, 1, 2))

    def fit(self, psi0, idx=None, max_outer: int = MAX_OUTER, u0=None) -> dict:
        """Fit the models ``idx`` (default: all) from ``psi0`` (k, P), the first inner
        Newton from ``u0`` (k, B·s; default zeros)."""
        L = self.layout
        K = self.Y.shape[0] if idx is None else len(idx)
        idx = np.arange(K) if idx is None else np.asarray(idx)
        psi = np.array(psi0, np.float64)
        u = np.zeros((K, L.width)) if u0 is None else np.array(u0, np.float64)
        exact = self.exact_hessian
        every = exact and EXACT_EVERY
        ev = self.evaluate(idx, psi, u, sensitivity=True, hessian=exact)
        f, g, u, S = ev["value"], ev["grad"], ev["u"], ev["S"]
        status = np.full(K, -1)
        status[~(np.isfinite(f) & np.all(np.isfinite(g), axis=1))] = Status.NON_FINITE
        iterations = np.zeros(K, int)
        hess = ev["hess"].copy() if exact else np.zeros((K, self.P, self.P))
        here = np.full(K, exact)  # ``hess`` is the exact Hessian at ``psi``
        refresh = np.ones(K, bool)
        fresh = np.zeros(K, bool)
        last_decrement = np.full(K, np.inf)
        inner = ev["inner_ok"].copy()
        for _ in range(max_outer):
            act = np.flatnonzero(status < 0)
            if act.size == 0:
                break
            iterations[act] += 1
            # The Hessian by forward differences of the exact gradient (P evaluations),
            # where ``refresh`` says so.
            new = act[refresh[act]]
            if new.size:
                if exact:  # (at the mode found for psi: no inner Newton)
                    lazy = new[~here[new]]
                    if lazy.size:
                        hess[lazy] = self.evaluate(idx[lazy], psi[lazy], u[lazy], trusted=True,
                                                   hessian=True)["hess"]
                        here[lazy] = True
                else:
                    hess[new] = self._fd_hessian(idx[new], psi[new], u[new], S[new], g[new])
                refresh[new] = False
                fresh[new] = True
            d, decrement = _newton_direction(g[act], hess[act])
            bad = ~np.isfinite(decrement)
            status[act[bad]] = Status.NON_FINITE
            act, d, decrement = act[~bad], d[~bad], decrement[~bad]
            if act.size == 0:  # (every active model just failed: no line search)
                continue
            # Stop after a last step once the decrement is below DONE_TOL, or below
            # FINAL_TOL with a Hessian computed at this point (a kept one leaves an
            # error of its own inaccuracy times the step: chord steps first shrink it).
            scale_f = 1.0 + np.abs(f[act])
            near = decrement <= FINAL_TOL * scale_f
            final = (decrement <= DONE_TOL * scale_f) | (near & fresh[act])
            if exact:
                # A trusted last step: a final Newton step with the exact Hessian at this
                # point that moves no parameter by more than TRUSTED_STEP (relative) is
                # taken without evaluating its end point: F there is F − λ²/2 (the
                # quadratic model, exact to O(|d|³), far below F's rounding), the
                # gradient g + Hd, the mode û + (dû/dψ)d, and the Hessian the one here
                # (O(|d|) off: 1e-6 relative at most in the SEs, as differences).
                tiny = final & here[act] & (np.max(np.abs(d) / (1.0 + np.abs(psi[act])), axis=1)
                                            <= TRUSTED_STEP)
                if tiny.any():
                    m, dm = act[tiny], d[tiny]
                    psi[m] += dm
                    f[m] -= 0.5 * decrement[tiny]
                    g[m] += np.matmul(hess[m], dm[:, :, None])[:, :, 0]
                    u[m] += _extrapolate(S[m], dm)
                    status[m] = Status.CONVERGED
                    keep = ~tiny
                    act, d, decrement = act[keep], d[keep], decrement[keep]
                    scale_f, near, final = scale_f[keep], near[keep], final[keep]
                    if act.size == 0:
                        break
            scale = np.minimum(1.0, 2.0 / np.maximum(np.max(np.abs(d), axis=1), 1e-300))
            d *= scale[:, None]
            slope = np.sum(g[act] * d, axis=1)
            # Near the optimum f changes by less than its rounding: no Armijo decrease.
            slack = np.where(near, 1e-11 * scale_f, 0.0)
            t = np.ones(act.size)
            pending = np.arange(act.size)
            moved = np.zeros(act.size, bool)
            g_old, psi_old = g[act].copy(), psi[act].copy()
            for _ in range(MAX_HALVINGS + 1):
                m = act[pending]
                trial = psi[m] + t[pending, None] * d[pending]
                start = u[m] + _extrapolate(S[m], trial - psi[m])
                e = self._evaluate_mixed(idx[m], trial, start, final[pending] & exact,
                                         sensitivity=True, every=every)
                good = (np.isfinite(e["value"]) & np.all(np.isfinite(e["grad"]), axis=1)
                        & (e["value"] <= f[m] + np.where(near[pending], 0.0, 1e-4 * t[pending]
                                                         * slope[pending]) + slack[pending]))
                acc = m[good]
                psi[acc], f[acc], g[acc] = trial[good], e["value"][good], e["grad"][good]
                u[acc], S[acc] = e["u"][good], e["S"][good]
                if exact:
                    last = good & (final[pending] | every)
                    if last.any():
                        hess[m[last]] = e["hess"][last]
                    here[acc] = last[good]
                inner[acc] = e["inner_ok"][good]
                moved[pending[good]] = True
                # A near step not taken: the current point is as good (or the Hessian
                # is renewed below).
                pending = pending[~good & ~near[pending]]
                t[pending] *= 0.5
                if pending.size == 0:
                    break
            # Keep the Hessian (a chord step, BFGS-updated) while Newton's decrement
            # falls fast; a new one after a halved step, a slow decrease or a rejected
            # near step.
            fresh[act[moved]] = False
            slow = decrement > CHORD_RATE * last_decrement[act]
            refresh[act[(moved & (t < 1.0)) | slow | (near & ~moved & ~final)]] = True
            last_decrement[act] = decrement
            if every:
                refresh[act] = True
            elif BFGS:
                upd = np.flatnonzero(moved & (t == 1.0) & ~final & ~slow)
                if upd.size:
                    hess[act[upd]] = _bfgs_update(hess[act[upd]], psi[act[upd]] - psi_old[upd],
                                                  g[act[upd]] - g_old[upd])
            status[act[final]] = Status.CONVERGED
            failed = ~moved & ~near
            status[act[failed]] = Status.LINE_SEARCH_FAILED
        status[status < 0] = Status.MAX_ITERATIONS
        # Near-zero diagonal entries of Λ tried at exactly zero (as the single fits).
        theta = psi[:, : L.n_theta]
        near = (np.abs(theta) < BOUNDARY_TRY) & L.diagonal
        tryit = np.flatnonzero(near.any(axis=1) & (status == Status.CONVERGED))
        if tryit.size:
            trial = psi[tryit].copy()
            trial[:, : L.n_theta] = np.where(near[tryit], 0.0, theta[tryit])
            start = u[tryit] + _extrapolate(S[tryit], trial - psi[tryit])
            e = self.evaluate(idx[tryit], trial, start, sensitivity=True, hessian=exact)
            good = np.isfinite(e["value"]) & (e["value"] <= f[tryit] + TRIAL_TOL * (1 + np.abs(f[tryit])))
            acc = tryit[good]
            if exact:
                hess[acc], here[acc] = e["hess"][good], True
            psi[acc], f[acc], g[acc], u[acc], S[acc] = (trial[good], e["value"][good],
                                                        e["grad"][good], e["u"][good],
                                                        e["S"][good])
        # Standard errors from the exact Hessian at the returned point where there is
        # one (computed here where the last step kept a BFGS one), else from forward
        # differences of the exact gradient at the optimum (steps SE_STEP: truncation
        # and rounding errors about 1e-6 relative).
        if exact:
            lazy = np.flatnonzero(~here)
            if lazy.size:
                hess[lazy] = self.evaluate(idx[lazy], psi[lazy], u[lazy], trusted=True,
                                           hessian=True)["hess"]
            hessian = hess
        elif self.central_se:
            # (Central along θ only: 4e-6 on that flat model, for about as much time
            # as central along all, measured.)
            hessian = self._fd_hessian(idx, psi, u, S, g, SE_CENTRAL_STEP, central=self.P)
        else:
            hessian = self._fd_hessian(idx, psi, u, S, g, SE_STEP)
        finite = np.all(np.isfinite(hessian), axis=(1, 2))
        safe = np.where(finite[:, None, None], hessian, np.eye(self.P))
        cov = 2.0 * np.linalg.pinv(safe)
        cov[~finite] = np.nan
        pd = finite & np.all(np.linalg.eigvalsh(safe) > 0, axis=1)
        return dict(params=psi, value=f, grad=g, u=u, status=status, iterations=iterations,
                    params_cov=cov, hessian_pd=pd, inner_converged=inner,
                    hessian=hessian)


def _bfgs_update(H, s, y):
    """BFGS's update of Hessian approximations H (k, P, P) with steps s and gradient
    changes y; unchanged where s'y ≤ 0 (curvature not positive along the step)."""
    sy = np.sum(s * y, axis=1)
    Hs = np.matmul(H, s[:, :, None])[:, :, 0]
    sHs = np.sum(s * Hs, axis=1)
    ok = (sy > 1e-12 * np.sqrt(np.sum(s * s, axis=1) * np.sum(y * y, axis=1))) & (sHs > 0)
    with np.errstate(all="ignore"):
        new = (H - Hs[:, :, None] * Hs[:, None, :] / sHs[:, None, None]
               + y[:, :, None] * y[:, None, :] / sy[:, None, None])
    return np.where(ok[:, None, None] & np.isfinite(new), new, H)


def _newton_direction(g, H):
    """−H⁻¹g per model with H's eigenvalues made positive (|λ|, floored at 1e-8 of the
    largest): a descent direction where H is indefinite; and the decrement −g'd."""
    with np.errstate(all="ignore"):
        finite = np.all(np.isfinite(H), axis=(1, 2)) & np.all(np.isfinite(g), axis=1)
        Hs = np.where(finite[:, None, None], H, np.eye(H.shape[1]))
        lam, V = np.linalg.eigh(Hs)
        lam = np.abs(lam)
        lam = np.maximum(lam, 1e-8 * np.max(lam, axis=1, keepdims=True) + 1e-300)
        d = -np.einsum("kij,kj->ki", V, np.einsum("kji,kj->ki", V, np.where(finite[:, None], g, 0)) / lam)
        decrement = np.where(finite, -np.sum(g * d, axis=1), np.nan)
    return d, decrement


# -- start values ----------------------------------------------------------------------------
def start_values(models: LockstepModels, family, idx=None, modes: bool = False):
    """ψ₀ per model: β from a GLM without random effects (Newton, vectorized), the log
    dispersion from moments at that fit (negative binomial θ from Var y = μ + μ²/θ,
    Pearson's estimate for the families with one), Λ's diagonal from moments of the
    one-step random effects per level (as the blocked batch path), zero-inflation 0.
    With ``modes``: (ψ₀, u₀), u₀ a start for the first inner Newton (None: zeros) where
    the inner problem is log-concave (:attr:`LockstepModels.exact_hessian`'s families:
    one mode, whatever the start) and every term scalar (:func:`_theta_start`)."""
    idx = np.arange(models.Y.shape[0]) if idx is None else np.asarray(idx)
    Y, Wt = models.Y[idx], models.Wt[idx]
    X, offset = models.X, models.offset
    k, n = Y.shape
    base_rows = RowModel(family, False, models.rows.has_dispersion, models.rows.power)
    zero = np.zeros((k, n))
    with np.errstate(all="ignore"):
        if type(family).__name__ in _ELEMENTWISE_START and type(family).__module__.startswith(
                "glmmjax."):
            mu0 = np.asarray(family.initialize(Y, Wt), np.float64)  # elementwise: all at once
        else:
            # (imported here: its module loads scipy.special, which a binomial batch
            # does without)
            from .._engines.host.parts_rows import _initial_mean

            mu0 = np.stack([_initial_mean(family, Y[j], Wt[j]) for j in range(k)])
        eta0 = fm.link_function(family.link, np, mu0)
        eta0 = np.where(np.isfinite(eta0), eta0, 0.0) - offset
        beta = eta0 @ np.linalg.pinv(X).T
        delta = zero if models.rows.has_dispersion else None

        def deviance(b, sub):
            if len(sub) == k:  # (sub sorted and distinct: every model, no copies)
                sub = slice(None)
            r = base_rows(Y[sub], Wt[sub], b @ X.T + offset, None,
                          None if delta is None else delta[sub], third=False)
            return -2.0 * np.sum(r["ll"], axis=1), r

        dev, r = deviance(beta, np.arange(k))
        bad = ~np.isfinite(dev)
        if bad.any():
            # η outside the link's range somewhere (e.g. the Gamma's inverse link below
            # 0): start those models from their mean, the same η on every row.
            mean = np.sum(Wt[bad] * Y[bad], axis=1) / np.maximum(np.sum(Wt[bad], axis=1), 1e-300)
            mean = np.asarray(family.initialize(mean, np.ones_like(mean)), np.float64) \
                if type(family).__name__ in _ELEMENTWISE_START else mean
            flat = fm.link_function(family.link, np, mean)[:, None] - offset
            beta[bad] = np.where(np.isfinite(flat), flat, 0.0) @ np.linalg.pinv(X).T
            dev[bad], r_bad = deviance(beta[bad], np.flatnonzero(bad))
            for key in r:
                r[key][bad] = r_bad[key]
        dev = np.where(np.isfinite(dev), dev, np.inf)
        p = X.shape[1]
        XX = (X[:, :, None] * X[:, None, :]).reshape(n, p * p)  # X'WX as one product
        for _ in range(25):
            W = np.maximum(r["W"], 1e-10 * (1.0 + np.abs(r["W"])))
            M = (W @ XX).reshape(k, p, p) + 1e-10 * np.eye(p)
            step = np.linalg.solve(M, (r["g_e"] @ X)[:, :, None])[:, :, 0]
            t = np.ones(k)
            new_beta, new_dev, new_r = beta.copy(), dev.copy(), r
            pending = np.arange(k)
            for _ in range(20):
                trial = beta[pending] + t[pending, None] * step[pending]
                d_t, r_t = deviance(trial, pending)
                good = np.isfinite(d_t) & (d_t <= dev[pending] + 1e-12 * np.abs(dev[pending]))
                acc = pending[good]
                new_beta[acc], new_dev[acc] = trial[good], d_t[good]
                if acc.size:
                    new_r = {key: v.copy() for key, v in new_r.items()}
                    for key in new_r:
                        new_r[key][acc] = r_t[key][good]
                pending = pending[~good]
                t[pending] *= 0.5
                if pending.size == 0:
                    break
            change = np.max(np.abs(new_beta - beta))
            beta, dev, r = new_beta, new_dev, new_r
            if change < 1e-8:
                break
        eta = beta @ X.T + offset
        mu = fm.inverse_link(family.link, np, eta)
        parts = [None, beta, np.zeros((k, models.X_zi.shape[1])), np.zeros((k, 0))]
        if models.rows.has_dispersion:
            log_d = _dispersion_start(family, Y, mu, Wt, X.shape[1])
            pinv_d = np.linalg.pinv(models.X_d)
            parts[3] = (log_d[:, None] / models.rows.power - models.offset_d) @ pinv_d.T
        parts[0], u0 = _theta_start(models.layout, r)
        scale = _attenuation(family, models.layout, parts[0])
        if scale is not None and not models.rows.zero_inflated:
            parts[0], parts[1] = parts[0] * scale, parts[1] * scale
    psi = np.concatenate(parts, axis=1)
    if not modes:
        return psi
    return psi, (u0 if models.exact_hessian else None)


# c² of the marginal attenuation of binomial GLMM coefficients (Zeger, Liang & Albert
# 1988): β_marginal ≈ β/√(1 + c²σ²), c² = (16√3/15π)² for the logit link, 1 for probit.
_ATTENUATION = {"Logit": (16.0 * np.sqrt(3.0) / (15.0 * np.pi)) ** 2, "Probit": 1.0}


def _attenuation(family, layout: Layout, theta) -> np.ndarray | None:
    """Per model, √(1 + c²σ²) for a binomial model with the logit or probit link (σ²:
    the start's variances of each term's first coefficient, usually its intercept), else
    None. The GLM start estimates marginal coefficients and the one-step moment start
    random effects of the same (attenuated) scale; scaling both by it brings them nearer
    the GLMM's conditional ones (measured on 500 crossed logistic models: 17.6 → 16.1
    evaluations per model). A start only: the optimum does not depend on it."""
    c2 = _ATTENUATION.get(type(family.link).__name__)
    if type(family).__name__ != "Binomial" or c2 is None:
        return None
    first = [j for j, (_, r, c) in enumerate(layout.theta_index) if r == 0 and c == 0]
    sigma2 = np.sum(theta[:, first] ** 2, axis=1, keepdims=True)
    return np.sqrt(1.0 + c2 * sigma2)


# Built-in families whose ``initialize`` is elementwise arithmetic (numpy in, numpy out).
_ELEMENTWISE_START = ("Binomial", "Poisson", "NegativeBinomial")


def _dispersion_start(family, Y, mu, Wt, p):
    real = Wt > 0
    resid2 = np.where(real, (Y - mu) ** 2, 0.0)
    if family.name in ("negative_binomial", "nbinom2"):
        excess = np.sum(resid2 - np.where(real, mu, 0.0), axis=1)
        size = np.sum(np.where(real, mu**2, 0.0), axis=1) / np.where(excess > 0, excess, 1.0)
        log_d = np.where(excess > 0, np.log(np.clip(size, 0.05, 1e4)), np.log(1e4))
    elif family.dispersion_method == "pearson":
        n_eff = np.maximum(np.sum(real, axis=1) - p, 1.0)
        variance = np.where(real, np.asarray(family.variance(mu, None)), 1.0)
        pearson = np.sum(resid2 / variance, axis=1) / n_eff
        log_d = np.log(np.clip(pearson, 1e-8, 1e8))
    else:
        log_d = np.zeros(Y.shape[0])
    return np.where(np.isfinite(log_d), log_d, 0.0)


def _theta_start(layout: Layout, r):
    """Λ's diagonal from moments per term: one Newton step per level at u = 0 gives
    b̂_j = M_j⁻¹Σzℓ' (M_j = ΣWzz'), whose covariance is about Σ_b + M_j⁻¹; SDs
    sqrt(mean b̂² − mean diag M⁻¹) clipped to [0.1, 5], correlations 0.

    Returns (θ₀, u₀): u₀ (k, B·s) the scalar terms' own Newton steps from u = 0 at
    that θ (u_j = σΣzℓ'/(1 + σ²M_j), each term alone), a start for the first
    evaluation's inner Newton (measured on 1,000 crossed logistic models: 4.2–4.5 →
    3.1–3.2 steps there); None unless every term is scalar."""
    k = r["W"].shape[0]
    theta = np.zeros((k, layout.n_theta))
    u = np.zeros((k, layout.width)) if layout.scalar else None
    start = 0
    W = np.maximum(r["W"], 1e-10)
    for t, (z, size) in enumerate(zip(layout.z, layout.sizes)):
        levels = layout.refs[t]
        m = layout.n_levels[t]
        onehot = scipy.sparse.csr_matrix((np.ones(len(levels)), (np.arange(len(levels)), levels)),
                                         shape=(len(levels), m))
        zz = (z[:, :, None] * z[:, None, :]).reshape(len(levels), -1)
        M = np.asarray((W[:, :, None] * zz[None]).transpose(0, 2, 1).reshape(-1, len(levels))
                        @ onehot).reshape(k, size, size, m).transpose(0, 3, 1, 2)
        M = M + 1e-8 * (1.0 + np.trace(M, axis1=2, axis2=3))[:, :, None, None] * np.eye(size)
        rhs = np.asarray((r["g_e"][:, :, None] * z[None]).transpose(0, 2, 1).reshape(-1, len(levels))
                          @ onehot).reshape(k, size, m).transpose(0, 2, 1)
        _, inv, _ = _factor(M)
        b_hat = np.einsum("kmst,kmt->kms", inv, rhs)
        var = np.mean(b_hat**2, axis=1) - np.mean(np.diagonal(inv, axis1=2, axis2=3), axis=1)
        with np.errstate(invalid="ignore"):
            sd = np.sqrt(np.clip(var, 0.01, 25.0))
        sd = np.where(np.isfinite(sd), sd, 1.0)
        for j, (tt, rr, cc) in enumerate(layout.theta_index):
            if tt == t and rr == cc:
                theta[:, j] = sd[:, rr]
        if u is not None:  # (term t's levels: u's entries start .. start + m)
            u[:, start:start + m] = sd * rhs[:, :, 0] / (1.0 + sd * sd * M[:, :, 0, 0])
        start += m * size
    return theta, u


# -- fit_many's entry point --------------------------------------------------------------------
THREADS = 1  # threads running chunks (None: one per CPU; no gain measured on 2 busy cores)
CHUNK = 250  # models per lockstep pass: (models × rows) arrays that stay in cache (measured: 250 beat 50, 100 and 1,000)


def glmm_models(design, family, Y, W) -> LockstepModels:
    """The lockstep models of a GLMM ``fit_many`` (no zero-inflation, ``glmer``'s
    parameterization: ψ = (θ, β, log dispersion))."""
    has_dispersion = bool(family.has_dispersion and family.dispersion_method != "fixed")
    n = design.X.shape[0]
    rows = RowModel(family, False, has_dispersion)
    return LockstepModels(design.X, design.offset, design.terms, Y, W, rows,
                          X_d=np.ones((n, 1)) if has_dispersion else None)


def fit_glmm_many(design, family, Y, W, progress=None, chunk=None, n_agq: int = 1) -> dict:
    """Fit every column of Y (n, K) with prior weights W (n, K); the outputs
    :func:`glmmjax._batching.fit_many._assemble` takes, one row per model. ``n_agq``
    > 1: glmer's adaptive quadrature (one scalar term)."""
    models = glmm_models(design, family, Y, W)
    models.central_se = len(design.terms) == 1 and design.terms[0].size == 1
    models.n_agq = int(n_agq)
    out = _fit_chunks(models, family, Y.shape[1], progress, chunk)
    n_theta, p = models.layout.n_theta, design.X.shape[1]
    cov = out["params_cov"]
    return dict(params=out["params"], beta=out["params"][:, n_theta : n_theta + p],
                beta_cov=cov[:, n_theta : n_theta + p, n_theta : n_theta + p],
                value=out["value"] - 2.0 * models.rows.constant(models.Y, models.Wt),
                status=out["status"], iterations=out["iterations"],
                grad_max=np.max(np.abs(out["grad"]), axis=1), hessian_pd=out["hessian_pd"],
                inner_converged=out["inner_converged"])


def parts_applies(parts, family) -> bool:
    """Whether the lockstep engine fits a ``ziformula``/``dispformula`` batch: closed
    forms for the family (:func:`glmmjax._engines.host.parts_rows.supported`), no random effects in
    the zero-inflation part, the conditional part's terms as :func:`applies`."""
    from .._engines.host.parts_rows import supported

    if not supported(family) or (parts.zi is not None and parts.zi.terms):
        return False
    return _terms_apply(parts.cond.terms)


def _terms_apply(terms) -> bool:
    from .._model.cov_structures import term_structures

    if not terms or any(s.name != "us" for s in term_structures(terms)):
        return False
    if len(terms) == 1:
        return terms[0].size <= SMALL_BLOCK
    q = sum(t.size * t.n_levels for t in terms)
    if terms[0].size == 1:  # the first term's levels a diagonal block (_Schur)
        rest = q - terms[0].n_levels
        return rest <= MAX_DENSE and rest * terms[0].n_levels <= MAX_SCHUR
    return q <= MAX_DENSE


def fit_parts_many(parts, family, Y, W, progress=None, chunk=None) -> dict:
    """The lockstep fits of a ``ziformula``/``dispformula`` batch (ψ = (θ, β, β_zi,
    β_d), the host parts engine's parameters); the outputs
    :func:`glmmjax._batching.parts._assemble_parts` takes."""
    from .._families.response_parts import dispersion_power

    design = parts.cond
    has_dispersion = parts.disp is not None
    rows = RowModel(family, parts.zi is not None, has_dispersion,
                    dispersion_power(family) if has_dispersion else 1.0)
    models = LockstepModels(
        design.X, design.offset, design.terms, Y, W, rows,
        X_zi=None if parts.zi is None else parts.zi.X,
        offset_zi=None if parts.zi is None else parts.zi.offset,
        X_d=None if parts.disp is None else parts.disp.X,
        offset_d=None if parts.disp is None else parts.disp.offset)
    out = _fit_chunks(models, family, Y.shape[1], progress, chunk)
    return dict(params=out["params"], params_cov=out["params_cov"],
                value=out["value"] - 2.0 * rows.constant(models.Y, models.Wt),
                status=out["status"], iterations=out["iterations"],
                hessian_pd=out["hessian_pd"] & out["inner_converged"])


def _fit_chunks(models, family, K, progress, chunk=None) -> dict:
    """Chunks of :data:`CHUNK` models, run by :data:`THREADS` threads (numpy releases the
    GIL in its array loops; each chunk's models are its own rows of every array), BLAS
    at one thread meanwhile (its tiny products gain nothing from more)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from .._engines.blas import single_threaded_blas
    from .._progress import bar

    chunk = CHUNK if chunk is None else int(chunk)
    chunks = [np.arange(s, min(s + chunk, K)) for s in range(0, K, chunk)]

    def one(idx):
        psi0, u0 = start_values(models, family, idx, modes=True)
        return models.fit(psi0, idx, u0=u0)

    workers = max(1, min(THREADS or (os.cpu_count() or 1), len(chunks)))
    with single_threaded_blas():
        if workers == 1:
            pieces = [one(idx) for idx in bar(chunks, enabled=progress if len(chunks) > 1
                                              else False, desc="fitting models", unit="chunk")]
        else:
            with ThreadPoolExecutor(workers) as pool:
                pieces = list(bar(pool.map(one, chunks), enabled=progress, total=len(chunks),
                                  desc="fitting models", unit="chunk"))
    return {key: np.concatenate([p[key] for p in pieces]) for key in pieces[0]}
