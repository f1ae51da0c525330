"""Denominator degrees of freedom for LMMs: Satterthwaite (as lmerTest) and
Kenward–Roger (as pbkrtest), t tests of coefficients and type III F tests of terms.

Satterthwaite. With variance parameters ψ = (θ, σ), the (RE)ML deviance with σ *not*
profiled out is

    d(ψ) = log|L_Z|² + r²(θ)/σ² + n·log(2πσ²)                    (ML)
    dR(ψ) = d(ψ) + log|L_X|² − p·log(2πσ²)                        (REML)

and Var(β̂)(ψ) = σ²·(L_X L_X')⁻¹. A = 2·[∇²d(ψ̂)]⁻¹ is the asymptotic covariance of ψ̂.
For a contrast l, with v = l'Vl and gᵢ = l'(∂V/∂ψᵢ)l, the degrees of freedom are
ν = 2v²/(g'Ag). lmerTest takes the Hessian and the Jacobian by finite differences of d
and V. On the CPU glmmjax takes central differences of d's *exact* gradient and of V
(:func:`glmmjax._engines.host.lmm.varpar_derivatives`: nothing to compile, several times
faster on a CPU; benchmarks/README.md); on accelerators, or with
``engine="jax"``, both are exact (``jax.jacfwd`` through the blocked Cholesky). The two
agree to about 1e-6 relative (tests/test_host_lmm.py), and with lmerTest in its last
digits. F tests of several contrasts
follow Fai & Cornelius (1996): the contrasts are rotated to independent ones (an
eigendecomposition of LVL'), each gets its own ν_m, and the F's denominator df is
2E/(E − q) with E = Σ ν_m/(ν_m − 2).

Kenward–Roger (1997). Σ = Σ_r τ_r G_r is linear in τ (the variances and covariances of
each term, then σ²), as pbkrtest parameterizes it. With Φ = (X'Σ⁻¹X)⁻¹,
P_r = −X'Σ⁻¹G_rΣ⁻¹X, Q_rs = X'Σ⁻¹G_rΣ⁻¹G_sΣ⁻¹X and W the inverse expected REML
information (W⁻¹_rs = ½·tr(PG_rPG_s)), the adjusted covariance of β̂ is
Φ_A = Φ + 2Φ[Σ W_rs(Q_rs − P_rΦP_s − ¼R_rs)]Φ, and the F statistic of L gets a scale λ and
denominator df m from the moment-matching formulas of the paper. Σ⁻¹ is applied through
the Woodbury identity, so nothing of size n × n is formed; the random-effects
design is dense (n × q), which limits KR to models with a few thousand random effects.
Structured terms (diag, cs, ar1, toep, ou, exp, gau, mat, a dense relmat) enter through
G_r = Z_t(I ⊗ ∂Σ_t/∂ψ_r)Z_t' in their variance parameters ψ (:func:`variance_parameters`);
where Σ_t is not linear in ψ, R_rs = X'Σ⁻¹(∂²Σ/∂ψ_r∂ψ_s)Σ⁻¹X is Kenward and Roger's
second-order term (zero for us, diag and homcs, as in pbkrtest).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pandas as pd

from .._engines.compiled.jit import program
from .._engines.seam import choose_lmm
from .._families.distributions import f_sf, t_sf
from .._lazyjax import jnp
from .._linalg import solve_triangular
from .._model.cov_structures import term_structures
from .._model.covariance import split_theta

DDF_METHODS = ("satterthwaite", "kenward-roger")
# Kenward–Roger forms Z densely (n × q): refuse beyond this many random effects.
MAX_KR_RANDOM_EFFECTS = 5000


def check_ddf(ddf: str | None) -> str | None:
    """Normalize a ``ddf`` argument ("Satterthwaite", "KR", None, ...)."""
    if ddf is None:
        return None
    key = str(ddf).lower().replace("_", "-").replace(" ", "-")
    key = {"kr": "kenward-roger", "kenwardroger": "kenward-roger", "s": "satterthwaite"}.get(
        key, key
    )
    if key not in DDF_METHODS:
        raise ValueError(
            f"ddf must be 'satterthwaite', 'kenward-roger' or None, got {ddf!r}"
        )
    return key


# -- Satterthwaite -----------------------------------------------------------------------
def varpar_deviance(varpar, model):
    """(RE)ML deviance at ψ = (θ, σ), σ not profiled (module docstring)."""
    from .._engines.compiled.lmm import lmm_pieces

    theta, sigma = varpar[:-1], varpar[-1]
    logdet_z, logdet_x, r2, _ = lmm_pieces(theta, model)
    s2 = sigma**2
    log_2pi_s2 = jnp.log(2.0 * jnp.pi * s2)
    value = logdet_z + r2 / s2 + model.nobs * log_2pi_s2
    if model.reml:
        value = value + logdet_x - model.n_fixef * log_2pi_s2
    return value - model.sum_log_weights


def beta_vcov(varpar, model):
    """Var(β̂) = σ²·(L_X L_X')⁻¹ at ψ = (θ, σ)."""
    from .._engines.compiled.lmm import lmm_pieces

    theta, sigma = varpar[:-1], varpar[-1]
    *_, factor = lmm_pieces(theta, model)
    R = model.structure.rest_size
    p = model.n_fixef
    L_x = factor.rest[R - 1 - p : R - 1, R - 1 - p : R - 1]
    L_inv = solve_triangular(L_x, jnp.eye(p, dtype=L_x.dtype), lower=True)
    return sigma**2 * (L_inv.T @ L_inv)


@program
def _varpar_derivatives(model, varpar):
    import jax

    # Forward over forward: compiles faster than jax.hessian's reverse pass here.
    hessian = jax.jacfwd(jax.jacfwd(varpar_deviance))(varpar, model)
    jacobian = jax.jacfwd(beta_vcov)(varpar, model)
    return hessian, jacobian, beta_vcov(varpar, model)


@dataclasses.dataclass(frozen=True)
class SatterthwaitePieces:
    """Var(β̂) (p, p), its Jacobian in ψ (p, p, k) and A = Cov(ψ̂) (k, k)."""

    vcov: np.ndarray
    jacobian: np.ndarray
    varpar_cov: np.ndarray
    hessian: np.ndarray


@functools.cache
def _model_from_arrays_jit():
    """:func:`~glmmjax._engines.compiled.lmm.lmm_model_from_arrays` under jit (jitted on
    first use): op-by-op dispatch would compile every primitive separately."""
    import equinox as eqx

    from .._engines.compiled.lmm import lmm_model_from_arrays

    return eqx.filter_jit(lmm_model_from_arrays)


def lmm_model_for(result, reml: bool | None = None):
    """The JAX :class:`LinearMixedModel` of a fitted LMM (call under x64)."""
    design = result.design
    y = np.asarray(design.response, dtype=float) - design.offset
    return _model_from_arrays_jit()(
        result.model.dense_structure,  # (X, y) appended: the fitted model's, built once
        jnp.asarray(design.weights),
        jnp.asarray(design.X),
        jnp.asarray(y),
        result.reml if reml is None else reml,
    )


def satterthwaite_pieces(result, engine: str | None = None) -> SatterthwaitePieces:
    """``engine``: "host" (numpy: exact gradients, central differences for the Hessian
    and Jacobian; nothing to compile; the default on a CPU backend) or "jax" (both by
    forward-mode autodiff in one compiled program)."""
    if getattr(result, "engine", None) == "sparse":  # a pedigree or sparse K: no dense blocks
        from .._engines.host import sparse_lmm

        hessian, jacobian, vcov = sparse_lmm.varpar_derivatives(
            result.design, result.reml, result.theta_values, result.sigma)
    elif choose_lmm(engine) == "host":
        from .._engines.host.lmm import host_model, varpar_derivatives

        design = result.design
        y = np.asarray(design.response, dtype=float) - design.offset
        model = host_model(result._dense_structure, design.weights, design.X, y,
                           result.reml)
        hessian, jacobian, vcov = varpar_derivatives(result.theta_values, result.sigma, model)
    else:
        import jax

        with jax.enable_x64(True):
            model = lmm_model_for(result)
            varpar = jnp.asarray(np.append(result.theta_values, result.sigma))
            hessian, jacobian, vcov = _varpar_derivatives(model, varpar)
            hessian, jacobian, vcov = (np.asarray(a) for a in (hessian, jacobian, vcov))
    sym = 0.5 * (hessian + hessian.T)
    try:
        varpar_cov = 2.0 * np.linalg.inv(sym)
    except np.linalg.LinAlgError:
        varpar_cov = 2.0 * np.linalg.pinv(sym)
    return SatterthwaitePieces(vcov, jacobian, varpar_cov, sym)


def satterthwaite_t_df(pieces: SatterthwaitePieces, contrast) -> float:
    """ν = 2(l'Vl)²/(g'Ag) for one contrast l."""
    l = np.asarray(contrast, dtype=float)
    v = l @ pieces.vcov @ l
    g = np.einsum("i,ijk,j->k", l, pieces.jacobian, l)
    return float(2.0 * v**2 / (g @ pieces.varpar_cov @ g))


def _fai_cornelius(nu: np.ndarray) -> float:
    if nu.size == 1:
        return float(nu[0])
    if np.all(np.abs(nu - nu[0]) < 1e-8):
        return float(np.mean(nu))
    if np.any(nu <= 2):
        return 2.0
    E = np.sum(nu / (nu - 2.0))
    return float(2.0 * E / (E - nu.size))


def satterthwaite_f_test(pieces: SatterthwaitePieces, L, beta) -> tuple[float, int, float]:
    """(F, numerator df, denominator df) for H0: Lβ = 0."""
    L = np.atleast_2d(np.asarray(L, dtype=float))
    VL = L @ pieces.vcov @ L.T
    d, P = np.linalg.eigh(0.5 * (VL + VL.T))
    positive = d > 1e-8 * max(d.max(), 1e-300)
    d, P = d[positive], P[:, positive]
    rotated = P.T @ L
    t2 = (rotated @ beta) ** 2 / d
    nu = np.array([satterthwaite_t_df(pieces, row) for row in rotated])
    q = int(positive.sum())
    return float(np.sum(t2) / q), q, _fai_cornelius(nu)


# -- Kenward–Roger -----------------------------------------------------------------------
def _dense_z(design) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Dense Z (n, q) and, per term, (start column, n_levels, size)."""
    n = design.nobs
    blocks, layout, start = [], [], 0
    for term in design.terms:
        m, S = term.n_levels, term.size
        Z = np.zeros((n, m * S))
        cols = term.refs[:, None].astype(np.int64) * S + np.arange(S)
        Z[np.arange(n)[:, None], cols] = term.z
        blocks.append(Z)
        layout.append((start, m, S))
        start += m * S
    return np.concatenate(blocks, axis=1), layout


def variance_parameters(cov, params, sigma: float):
    """The variance parameters ψ_t of one term for Kenward–Roger: (basis, hessians) with
    basis[r] = ∂Σ_t/∂ψ_r (S × S) and hessians[(r, s)] = ∂²Σ_t/∂ψ_r∂ψ_s where not zero.

    - ``us``: the covariance entries (pbkrtest's parameters; Σ_t linear in them);
    - ``diag``: the variances; ``homcs``: Σ_t = a·I + c·11', ψ = (c, a) (SAS's CS
      parameters), both linear: the same KR as pbkrtest gives for the lmer models
      (1|g) + (0+x|g) and (1|g) + (1|g:f);
    - every other structure: its own parameters with SDs as variances and correlation
      parameters as glmmTMB reports them (ρ for ar1 and cs, the partial
      autocorrelations for toep, the correlation at distance 1 for ou, the log length
      scale for exp, gau and mat), as SAS's KR does for TYPE=AR(1) etc.; Σ_t is non-linear in them,
      so the derivatives are taken by central differences and the second derivatives
      enter Kenward–Roger's R term.
    """
    from .._model.cov_structures import CompoundSymmetry, Diagonal, Unstructured

    S = cov.size
    params = np.asarray(params, dtype=np.float64)
    if isinstance(cov, Unstructured):
        basis = []
        cols, rows = np.triu_indices(S)
        for a, b in zip(rows, cols):
            E = np.zeros((S, S))
            E[a, b] = E[b, a] = 1.0
            basis.append(E)
        return basis, {}
    if isinstance(cov, Diagonal):
        return [np.diag(np.eye(S)[a]) for a in range(S)], {}
    if isinstance(cov, CompoundSymmetry) and cov.homogeneous:
        return [np.ones((S, S)), np.eye(S)], {}
    omega, values, kinds = cov.natural(params, sigma)
    omega = np.asarray(omega, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    is_sd = np.array([kind == "sd" for kind in kinds])
    is_cor = np.array([kind == "cor" for kind in kinds])
    # ψ: variances for SDs, correlations (ω = atanh ρ) as reported, other entries (log
    # length scales, Matérn's ν) as ω.
    psi = np.where(is_sd, values**2, np.where(is_cor, values, omega))

    def covariance(psi):
        om = np.where(is_sd, np.sqrt(np.maximum(psi, 0.0)),
                      np.where(is_cor, np.arctanh(np.clip(psi, -1 + 1e-15, 1 - 1e-15)), psi))
        import jax

        with jax.enable_x64(True):  # from_natural is jnp: float64 whatever the user's config
            theta = np.asarray(cov.from_natural(jnp.asarray(om, dtype=jnp.float64), sigma),
                               dtype=np.float64)
        lam = np.asarray(cov.factor(theta, np), dtype=np.float64)
        return sigma**2 * lam @ lam.T

    k = psi.size
    steps = 1e-4 * np.maximum(np.abs(psi), 1e-2)
    base = covariance(psi)
    basis, hessians = [], {}
    for r in range(k):
        e = np.zeros(k)
        e[r] = steps[r]
        plus, minus = covariance(psi + e), covariance(psi - e)
        basis.append((plus - minus) / (2 * steps[r]))
        hessians[(r, r)] = (plus - 2 * base + minus) / steps[r] ** 2
        for s in range(r):
            f = np.zeros(k)
            f[s] = steps[s]
            H = (covariance(psi + e + f) - covariance(psi + e - f) - covariance(psi - e + f)
                 + covariance(psi - e - f)) / (4 * steps[r] * steps[s])
            hessians[(r, s)] = hessians[(s, r)] = H
    hessians = {key: 0.5 * (H + H.T) for key, H in hessians.items()
                if np.max(np.abs(H), initial=0.0) > 1e-6 * max(np.max(np.abs(base)), 1e-300)}
    return [0.5 * (E + E.T) for E in basis], hessians


@dataclasses.dataclass(frozen=True)
class KenwardRogerPieces:
    """Φ = Var(β̂), the adjusted Φ_A, the P_r (k, p, p) and W (k, k)."""

    vcov: np.ndarray
    vcov_adjusted: np.ndarray
    P: np.ndarray
    W: np.ndarray


def kenward_roger_pieces(result) -> KenwardRogerPieces:
    if not result.reml:
        raise ValueError(
            "Kenward-Roger degrees of freedom need a REML fit (as pbkrtest); refit with "
            "reml=True or use ddf='satterthwaite'"
        )
    design = result.design
    from .._model.sparse_relmat import refuse_sparse_terms

    # Z_t(I ⊗ ∂Σ_t/∂ψ)Z_t' of a sparse pedigree term would treat its animals as
    # unrelated: say so rather than give df of another model.
    refuse_sparse_terms(design.terms, "Kenward-Roger")
    Z, layout = check_kenward_roger_design(design)
    return kenward_roger_arrays(np.asarray(design.X, dtype=float),
                                np.asarray(design.weights, dtype=float), Z, layout,
                                np.asarray(result.theta_values, dtype=float),
                                float(result.sigma) ** 2, term_structures(design.terms))


def check_kenward_roger_design(design) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """What Kenward–Roger needs of a design (positive weights, at most
    MAX_KR_RANDOM_EFFECTS random effects): its dense Z and layout, else a ValueError
    saying why."""
    w = np.asarray(design.weights, dtype=float)
    if np.any(w <= 0):
        raise ValueError("Kenward-Roger needs positive weights for every observation")
    q = sum(t.n_levels * t.size for t in design.terms)
    if q > MAX_KR_RANDOM_EFFECTS:
        raise ValueError(
            f"Kenward-Roger forms the random-effects design densely; this model has {q} "
            f"random effects (limit {MAX_KR_RANDOM_EFFECTS}). Use ddf='satterthwaite'."
        )
    return _dense_z(design)


def kenward_roger_arrays(X, w, Z, layout, theta_values, sigma2, structures) -> KenwardRogerPieces:
    """Kenward–Roger's pieces of a REML fit from its arrays: X (n, p), positive prior
    weights w, dense Z (n, q) with its per-term layout (start, levels, size), θ (lme4's
    order), σ² and the terms' covariance structures. (fit_many calls it per model on the
    model's observed rows.)"""
    n, p = X.shape
    q = Z.shape[1]
    parts = split_theta(np.asarray(theta_values, dtype=float), structures)
    # Relative factor Λ (q × q, block diagonal over levels) from θ.
    Lam = np.zeros((q, q))
    for (start, m, S), cov, part in zip(layout, structures, parts):
        lam = np.asarray(cov.factor(np.asarray(part, dtype=float), np), dtype=float)
        Lam[start : start + m * S, start : start + m * S] = np.kron(np.eye(m), lam)
    U = Z @ Lam
    WU = U * w[:, None]
    C = U.T @ WU + np.eye(q)
    C_chol = np.linalg.cholesky(C)

    def sigma_inv(B):
        """Σ⁻¹B = σ⁻²(WB − WU·C⁻¹·U'WB) (Woodbury)."""
        WB = B * w[:, None] if B.ndim == 2 else B * w
        inner = np.linalg.solve(C_chol.T, np.linalg.solve(C_chol, U.T @ WB))
        return (WB - WU @ inner) / sigma2

    # Variance parameters ψ: per term, ∂Σ_t/∂ψ_r = E_r (S × S, symmetric), so that
    # G_r = ∂Σ/∂ψ_r = Z_t (I_m ⊗ E_r) Z_t' (see variance_parameters); then σ², G = W⁻¹.
    params = []  # (term index, E_r) or None for the residual
    second = {}  # (r, s) -> ∂²Σ_t/∂ψ_r∂ψ_s for non-linear structures
    for t, (cov, part) in enumerate(zip(structures, parts)):
        basis, hessians = variance_parameters(cov, part, np.sqrt(sigma2))
        first = len(params)
        params.extend((t, E) for E in basis)
        for (a, b), H in hessians.items():
            second[(first + a, first + b)] = (t, H)
    params.append(None)
    k = len(params)

    def term_times(t, E, B):
        """Z_t (I ⊗ E) Z_t'·B for an (n, c) matrix B."""
        start, m, S = layout[t]
        Zt = Z[:, start : start + m * S]
        inner = (Zt.T @ B).reshape(m, S, -1)
        return Zt @ np.einsum("ab,lbc->lac", E, inner).reshape(m * S, -1)

    def g_times(r, B):
        """G_r·B for an (n, c) matrix B."""
        if params[r] is None:
            return B / w[:, None]
        return term_times(*params[r], B)

    SX = sigma_inv(X)
    Phi = np.linalg.inv(X.T @ SX)
    Phi = 0.5 * (Phi + Phi.T)
    GSX = [g_times(r, SX) for r in range(k)]
    P = np.stack([-SX.T @ G for G in GSX])
    S_GSX = [sigma_inv(G) for G in GSX]
    Q = np.empty((k, k, p, p))
    for r in range(k):
        for s in range(k):
            Q[r, s] = GSX[r].T @ S_GSX[s]

    # tr(Σ⁻¹G_rΣ⁻¹G_s) without n × n matrices.
    SZ = sigma_inv(Z)
    M = Z.T @ SZ  # Z'Σ⁻¹Z
    N = SZ.T @ (SZ / w[:, None])  # Z'Σ⁻¹W⁻¹Σ⁻¹Z
    T = np.linalg.solve(C, U.T @ WU)
    trace_res_res = (n - 2.0 * np.trace(T) + np.sum(T * T.T)) / sigma2**2

    def e_matrix(r):
        t, E = params[r]
        start, m, S = layout[t]
        return start, m, S, E

    trace = np.empty((k, k))
    for r in range(k):
        for s in range(r, k):
            if params[r] is None and params[s] is None:
                value = trace_res_res
            elif params[r] is None or params[s] is None:
                start, m, S, E = e_matrix(s if params[r] is None else r)
                block = N[start : start + m * S, start : start + m * S].reshape(m, S, m, S)
                value = np.einsum("ab,lbla->", E, block)
            else:
                s1, m1, S1, E1 = e_matrix(r)
                s2, m2, S2, E2 = e_matrix(s)
                Mrs = M[s1 : s1 + m1 * S1, s2 : s2 + m2 * S2].reshape(m1, S1, m2, S2)
                # tr(E_r M_rs E_s M_sr) with E = I ⊗ E and M symmetric.
                value = np.einsum("ab,lbkc,cd,lakd->", E1, Mrs, E2, Mrs)
            trace[r, s] = trace[s, r] = value
    info = (
        trace
        - 2.0 * np.einsum("ij,rsji->rs", Phi, Q)
        + np.einsum("ij,rjk,kl,sli->rs", Phi, P, Phi, P)
    )
    W = 2.0 * np.linalg.inv(info)
    # Kenward & Roger (1997)'s R_rs = X'Σ⁻¹(∂²Σ/∂ψ_r∂ψ_s)Σ⁻¹X: zero where Σ is linear in
    # ψ (us, diag, homcs, pbkrtest's case), not for ar1, cs with several SDs, ou, ...
    R = np.zeros((k, k, p, p))
    for (r, s_), (t, H) in second.items():
        R[r, s_] = SX.T @ term_times(t, H, SX)
    U_sum = np.einsum("rs,rsij->ij", W,
                      Q - np.einsum("rij,jk,skl->rsil", P, Phi, P) - 0.25 * R)
    Phi_A = Phi + 2.0 * Phi @ U_sum @ Phi
    return KenwardRogerPieces(Phi, 0.5 * (Phi_A + Phi_A.T), P, W)


def kenward_roger_f_test(pieces: KenwardRogerPieces, L, beta):
    """(scaled F, numerator df, denominator df m, scale λ, unscaled F) for Lβ = 0."""
    L = np.atleast_2d(np.asarray(L, dtype=float))
    ell = np.linalg.matrix_rank(L)
    Phi = pieces.vcov
    Theta = L.T @ np.linalg.solve(L @ Phi @ L.T, L)
    TPP = np.einsum("ij,jk,rkl,lm->rim", Theta, Phi, pieces.P, Phi)  # ΘΦP_rΦ
    traces = np.einsum("rii->r", TPP)
    A1 = traces @ pieces.W @ traces
    A2 = np.einsum("rs,rij,sji->", pieces.W, TPP, TPP)
    B = (A1 + 6.0 * A2) / (2.0 * ell)
    g = ((ell + 1.0) * A1 - (ell + 4.0) * A2) / ((ell + 2.0) * A2)
    denom = 3.0 * ell + 2.0 * (1.0 - g)
    c1, c2, c3 = g / denom, (ell - g) / denom, (ell + 2.0 - g) / denom
    E_star = 1.0 / (1.0 - A2 / ell)
    V_star = (2.0 / ell) * (1.0 + c1 * B) / ((1.0 - c2 * B) ** 2 * (1.0 - c3 * B))
    rho = V_star / (2.0 * E_star**2)
    m = 4.0 + (ell + 2.0) / (ell * rho - 1.0)
    lam = m / (E_star * (m - 2.0))
    Lb = L @ beta
    F = float(Lb @ np.linalg.solve(L @ pieces.vcov_adjusted @ L.T, Lb)) / ell
    return lam * F, int(ell), float(m), float(lam), F


# -- tables ------------------------------------------------------------------------------
def coef_table(result, ddf: str) -> pd.DataFrame:
    """Estimate, SE, df, t value and Pr(>|t|) with Satterthwaite or KR df."""
    names = list(result.design.fixef_names)
    beta = np.asarray(result.beta)
    p = beta.size
    if ddf == "satterthwaite":
        pieces = result._satterthwaite
        se = np.sqrt(np.diag(result.beta_cov))
        df = np.array([satterthwaite_t_df(pieces, np.eye(p)[j]) for j in range(p)])
    else:
        pieces = result._kenward_roger
        se = np.sqrt(np.diag(pieces.vcov_adjusted))
        df = np.array([kenward_roger_f_test(pieces, np.eye(p)[j], beta)[2] for j in range(p)])
    t = beta / se
    return pd.DataFrame(
        {
            "Estimate": beta,
            "Std. Error": se,
            "df": df,
            "t value": t,
            "Pr(>|t|)": 2.0 * t_sf(np.abs(t), df),
        },
        index=names,
    )


def _term_columns(design) -> dict[str, np.ndarray]:
    slices = design.x_spec.term_slices
    # Positions in the fitted X of the model matrix's columns (-1: dropped as aliased,
    # see glmmjax._model.rank); a term left with no column is not tested.
    n_all = design.X.shape[1] + len(design.dropped_fixef)
    fitted = np.arange(n_all)
    if design.x_columns is not None:
        fitted = np.full(n_all, -1)
        fitted[list(design.x_columns)] = np.arange(design.X.shape[1])
    out = {}
    for term, sl in slices.items():
        name = str(term)
        if name in ("1", "0"):
            continue
        columns = fitted[sl]
        columns = columns[columns >= 0]
        if columns.size:
            out[name] = columns
    return out


def _sum_coded_matrix(design):
    """X re-coded with sum-to-zero contrasts for every categorical factor, or None."""
    source = getattr(design, "source_data", None)
    if source is None:
        return None
    frame = source.loc[design.rows]
    spec = design.x_spec
    categorical = {
        name
        for name, (kind, _state) in spec.encoder_state.items()
        if getattr(kind, "value", str(kind)) == "categorical"
    }
    if not categorical:
        return design.X
    pieces = []
    for term in spec.terms:
        factors = [str(f) for f in term.factors]
        if factors == ["1"]:
            pieces.append("1")
            continue
        pieces.append(
            ":".join(f"C({f}, contr.sum)" if f in categorical else f for f in factors)
        )
    has_intercept = any(str(t) == "1" for t in spec.terms)
    rhs = " + ".join(p for p in pieces if p != "1") or "1"
    rhs = rhs if has_intercept else f"0 + {rhs}"
    try:
        import formulaic

        X_sum = formulaic.model_matrix(rhs, frame, na_action="raise").to_numpy(dtype=float)
    except Exception:  # noqa: BLE001 - fall back to marginal contrasts
        return None
    if X_sum.shape != design.X.shape:
        return None
    return X_sum


def type3_contrasts(design) -> tuple[dict[str, np.ndarray], str]:
    """Contrast matrices L (rows) of each term's type III hypothesis, and a note.

    A term contained in no other term is tested by its own coefficients (the hypothesis
    does not depend on the coding). Otherwise, as in SAS and lmerTest, the hypothesis is
    "the term's coefficients are zero" in the parameterization with sum-to-zero contrasts
    for every factor, mapped back to the fitted coding (X_sum = X·T, β_sum = T⁻¹β).
    """
    columns = _term_columns(design)
    p = design.X.shape[1]
    identity = np.eye(p)
    factor_sets = {
        str(t): {str(f) for f in t.factors} for t in design.x_spec.terms
    }
    contained = {
        name: any(
            other != name and factor_sets[name] < factor_sets[other] for other in columns
        )
        for name in columns
    }
    note = ""
    T_inv = None
    if any(contained.values()):
        X_sum = _sum_coded_matrix(design)
        if X_sum is not None:
            T, *_ = np.linalg.lstsq(design.X, X_sum, rcond=None)
            if np.allclose(design.X @ T, X_sum, atol=1e-8 * max(1.0, np.abs(X_sum).max())):
                T_inv = np.linalg.inv(T)
        if T_inv is None:
            note = (
                "type III hypotheses for terms contained in interactions could not be "
                "re-coded with sum-to-zero contrasts; their tests are marginal"
            )
    out = {}
    for name, cols in columns.items():
        if contained[name] and T_inv is not None:
            out[name] = T_inv[cols]
        else:
            out[name] = identity[cols]
    return out, note


def anova_table(result, ddf: str) -> pd.DataFrame:
    """Type III F tests of each fixed-effects term (lmerTest's ``anova(fit)``)."""
    contrasts, note = type3_contrasts(result.design)
    beta = np.asarray(result.beta)
    sigma2 = result.sigma**2
    rows = []
    for name, L in contrasts.items():
        if ddf == "satterthwaite":
            F, ndf, den = satterthwaite_f_test(result._satterthwaite, L, beta)
            F_ss = F
        else:
            # lmerTest reports KR's scaled F but sums of squares from the unscaled one.
            F, ndf, den, _, F_ss = kenward_roger_f_test(result._kenward_roger, L, beta)
        rows.append(
            (name, F_ss * sigma2 * ndf, F_ss * sigma2, ndf, den, F, f_sf(F, ndf, den))
        )
    from .anova import NotedTable

    table = NotedTable(
        [r[1:] for r in rows],
        index=[r[0] for r in rows],
        columns=["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"],
    )
    method = "Satterthwaite" if ddf == "satterthwaite" else "Kenward-Roger"
    table.attrs["heading"] = f"Type III Analysis of Variance Table with {method}'s method"
    if note:
        table.attrs["note"] = note
    return table
