"""Cross-products and the blocked Cholesky factor of Λ'Z'WZΛ + I (and the dense part).

For weights W and dense columns D (X, plus y for an LMM), the matrix

    Ω(θ) = [ Λ'Z'WZΛ + I   Λ'Z'WD ]
           [ D'WZΛ         D'WD   ]

is factored as L·L' with L = [[L00, 0], [Lr0, Lrr]]: L00 is block diagonal over the levels
of the first (largest) term and comes from a vmapped small Cholesky; Lr0, the coupling
of everything else to the first term, keeps its sparsity (stored as rows, see
:mod:`glmmjax._model.structure`); Lrr is the dense factor of the Schur complement. One
evaluation costs O(pairs + R³), independent of the number of observations.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..._lazyjax import ensure_pytrees
from ..._linalg import cho_solve, cholesky, solve_triangular
from ..._model.covariance import theta_to_factors
from ..._model.structure import ReStructure
from ..lmm_shared import CrossProducts

# JAX is imported here: the shared containers are pytrees from now on (a no-op where the
# import hook of glmmjax._lazyjax has registered them already).
ensure_pytrees()


def cross_products(structure: ReStructure, weights, dense) -> CrossProducts:
    """Form the blocks of [Z D]'W[Z D] by segment sums (Z is never built densely).

    Args:
        structure: the model's :class:`ReStructure`.
        weights: (n,) observation weights.
        dense: (n, k) dense columns, k = ``structure.n_dense``.
    """
    s = structure
    m0 = s.n_levels[0]
    z0, first, coupling = random_blocks(s, weights)
    if m0 == 1:  # one level of many effects (known relatedness): no (n, S, S) temporary
        dense_first = (dense.T @ z0)[None]
    else:
        dense_first = jax.ops.segment_sum(
            dense[:, :, None] * z0[:, None, :], s.refs[0], num_segments=m0
        )
    rest = _rest_cross_products(s, weights, dense)
    return CrossProducts(first, coupling, dense_first, rest)


def random_blocks(s: ReStructure, weights):
    """(W·Z0, the first term's diagonal blocks Z0'WZ0, each later term's coupling to it)."""
    z0 = s.z[0] * weights[:, None]
    if s.n_levels[0] == 1:
        first = (z0.T @ s.z[0])[None]
    else:
        first = jax.ops.segment_sum(
            z0[:, :, None] * s.z[0][:, None, :], s.refs[0], num_segments=s.n_levels[0]
        )
    coupling = tuple(
        jax.ops.segment_sum(
            s.z[t][:, :, None] * z0[:, None, :],
            s.obs_pair[t - 1],
            num_segments=s.pair_first[t - 1].shape[0],
        )
        for t in range(1, s.n_terms)
    )
    return z0, first, coupling


def random_rest(s: ReStructure, weights, dense_t=None):
    """Z_r'WZ_r of the later terms as a flat (R·R,) array (zeros outside their block),
    with each observation's rest indices (n, w) and weighted values W·Z_r (n, w) of the
    terms with several levels, for the caller's coupling to the dense columns; a term
    of one group (known K: q indicator columns) adds its products by matmuls here, its
    coupling to the dense columns too when ``dense_t`` (k, n) is given."""
    R = s.rest_size
    n = weights.shape[0]
    later = range(1, s.n_terms)
    narrow = [t for t in later if s.n_levels[t] > 1]
    wide = [t for t in later if s.n_levels[t] == 1]
    # Each observation's non-zeros in the random-effects part of the rest.
    index = jnp.concatenate(
        [jnp.zeros((n, 0), dtype=jnp.int32)]
        + [s.offsets[t] + s.refs[t][:, None] * s.sizes[t] + jnp.arange(s.sizes[t])
           for t in narrow],
        axis=1,
    )
    values = jnp.concatenate([jnp.zeros((n, 0), dtype=weights.dtype)]
                             + [s.z[t] for t in narrow], axis=1)
    width = index.shape[1]
    wv = values * weights[:, None]
    re_re = (wv[:, :, None] * values[:, None, :]).reshape(n, width * width)
    flat = (index[:, :, None] * R + index[:, None, :]).reshape(n, width * width)
    gram = jnp.zeros(R * R, dtype=weights.dtype).at[flat.ravel()].add(re_re.ravel())
    if wide:
        gram = gram.reshape(R, R)
        for t in wide:
            # One group of S_t effects (the product over observations n·S_t·S_u would
            # be n·q² for a known K): its rows of the rest by matmuls and segment sums.
            wz = s.z[t] * weights[:, None]
            rows = s.offsets[t] + np.arange(s.sizes[t])
            for u in later:
                if s.n_levels[u] == 1:  # (t, u) and later (u, t): each block once
                    cols = s.offsets[u] + np.arange(s.sizes[u])
                    gram = gram.at[rows[:, None], cols[None, :]].add(wz.T @ s.z[u])
                    continue
                block = jax.ops.segment_sum(wz[:, :, None] * s.z[u][:, None, :], s.refs[u],
                                            num_segments=s.n_levels[u])  # (m_u, S_t, S_u)
                block = jnp.transpose(block, (1, 0, 2)).reshape(s.sizes[t], -1)
                cols = s.offsets[u] + np.arange(s.n_levels[u] * s.sizes[u])
                gram = gram.at[rows[:, None], cols[None, :]].add(block)
                gram = gram.at[cols[:, None], rows[None, :]].add(block.T)
            if dense_t is not None and dense_t.shape[0]:
                k = dense_t.shape[0]
                cols = R - k + np.arange(k)
                block = wz.T @ dense_t.T  # (S_t, k)
                gram = gram.at[rows[:, None], cols[None, :]].add(block)
                gram = gram.at[cols[:, None], rows[None, :]].add(block.T)
        gram = gram.reshape(-1)
    return gram, index, wv


def _rest_cross_products(s: ReStructure, weights, dense):
    R = s.rest_size
    wd = dense * weights[:, None]
    rest = jnp.zeros((R, R), dtype=dense.dtype)
    dense_start = R - s.n_dense
    rest = rest.at[dense_start:, dense_start:].set(dense.T @ wd)
    if s.n_terms == 1:
        return rest
    gram, index, wv = random_rest(s, weights, dense.T)
    rest = rest + gram.reshape(R, R)
    re_dense = wv[:, :, None] * dense[:, None, :]  # (n, w, n_dense)
    cols = dense_start + jnp.arange(s.n_dense)
    flat = (index[:, :, None] * R + cols[None, None, :]).ravel()
    rest = rest.reshape(-1).at[flat].add(re_dense.ravel()).reshape(R, R)
    flat_t = (cols[None, None, :] * R + index[:, :, None]).ravel()
    rest = rest.reshape(-1).at[flat_t].add(re_dense.ravel()).reshape(R, R)
    return rest


class BlockedFactor(eqx.Module):
    """L = [[L00, 0], [Lr0, Lrr]] with Lr0 stored as rows (see the module docstring)."""

    first: jnp.ndarray  # (m0, S0, S0), lower triangular blocks
    coupling_rows: jnp.ndarray  # (E, S0): row e sits at rest row entry_rest[e], level entry_first[e]
    rest: jnp.ndarray  # (R, R) lower triangular


def _apply_rest_lambda(s: ReStructure, factors, matrix):
    """Λ_r'·M for the random-effects rows of the rest (dense rows untouched)."""
    pieces = []
    for t in range(1, s.n_terms):
        start = s.offsets[t]
        size, m = s.sizes[t], s.n_levels[t]
        block = matrix[start : start + m * size].reshape(m, size, -1)
        pieces.append(jnp.einsum("ba,lbr->lar", factors[t], block).reshape(m * size, -1))
    pieces.append(matrix[s.rest_size - s.n_dense :])
    return jnp.concatenate(pieces, axis=0)


def omega_blocks(theta, products: CrossProducts, structure: ReStructure):
    """The blocks of Ω(θ) before factoring: (diagonal blocks of the first term, (m0, S0,
    S0); its coupling rows Λ_r'·A_r0·Λ0 in ``entry_rest``/``entry_first`` order, (E, S0);
    the rest, Λ_r'·A_rr·Λ_r + J, (R, R)).

    Each is quadratic in θ, so its derivative is cheap: the analytic gradient of the
    LMM criterion (:mod:`glmmjax._engines.compiled.lmm`) contracts these with selected entries of Ω⁻¹.
    """
    s = structure
    factors = theta_to_factors(theta, s.structures)
    lam0 = factors[0]
    S0 = s.sizes[0]
    eye = jnp.eye(S0, dtype=products.first.dtype)
    diag_blocks = jnp.einsum("ba,jbc,cd->jad", lam0, products.first, lam0) + eye
    rows = []
    for t in range(1, s.n_terms):
        scaled = jnp.einsum("ba,ibc,cd->iad", factors[t], products.coupling[t - 1], lam0)
        rows.append(scaled.reshape(-1, S0))
    rows.append(jnp.einsum("jkc,cd->jkd", products.dense_first, lam0).reshape(-1, S0))
    scaled_rows = jnp.concatenate(rows, axis=0)
    R = s.rest_size
    transformed = _apply_rest_lambda(s, factors, products.rest)
    transformed = _apply_rest_lambda(s, factors, transformed.T).T
    identity_part = (jnp.arange(R) < s.n_re_rest).astype(transformed.dtype)
    return diag_blocks, scaled_rows, transformed + jnp.diag(identity_part)


def _right_solve_rows(first, rows, levels):
    """rows[e] · L00[levels[e]]⁻ᵀ for (E, S0) rows."""
    if first.shape[-1] == 1:  # scalar blocks: a division, far cheaper than batched solves
        return rows / first[levels, 0]
    return jax.vmap(lambda c, b: solve_triangular(c, b, lower=True))(first[levels], rows)


def factorize(theta, products: CrossProducts, structure: ReStructure) -> BlockedFactor:
    """Cholesky factor of Ω(θ) (module docstring), exploiting the block structure."""
    s = structure
    diag_blocks, scaled_rows, rest = omega_blocks(theta, products, s)
    first = cholesky(diag_blocks)
    coupling_rows = _right_solve_rows(first, scaled_rows, s.entry_first)
    schur = rest - _coupling_gram(s, coupling_rows)
    return BlockedFactor(first, coupling_rows, cholesky(schur))


def selected_inverse(s: ReStructure, factor: BlockedFactor, n_keep: int):
    """Entries of P⁻¹ on the pattern of Ω, for P the leading principal block of Ω that
    keeps the first ``n_keep`` rows of the rest (the random effects, and for REML the
    fixed effects) and the whole first term.

    P = L_P·L_P' with L_P the matching leading block of L, so no new factorization is
    needed. With C = L_r0·L00⁻¹ (as sparse as L_r0):

        P⁻¹_rr = L_rr⁻ᵀ·L_rr⁻¹,   P⁻¹_r0 = −P⁻¹_rr·C,   P⁻¹_00 = L00⁻ᵀ·L00⁻¹ + C'·P⁻¹_rr·C,

    and only the diagonal blocks of P⁻¹_00 and the entries of P⁻¹_r0 where L_r0 has
    its rows are formed, by the same same-level pairs as the Schur update. Returns
    ((m0, S0, S0), (E, S0), (R, R)) laid out as :func:`omega_blocks`, zero outside P.
    Cost: the inverse of the dense rest's factor (:func:`cholesky_inverse`), plus the
    pairs.
    """
    R = s.rest_size
    S0, m0 = s.sizes[0], s.n_levels[0]
    dtype = factor.rest.dtype
    inverse = cholesky_inverse(factor.rest[:n_keep, :n_keep])
    sigma_rr = jnp.zeros((R, R), dtype).at[:n_keep, :n_keep].set(inverse)
    inside = (s.entry_rest < n_keep)[:, None]
    C = jnp.where(inside, _right_solve_rows_transposed(factor.first, factor.coupling_rows,
                                                       s.entry_first), 0.0)
    if s.dense_update:
        column = s.entry_first[:, None] * S0 + jnp.arange(S0)
        dense = jnp.zeros((R, m0 * S0), dtype).at[s.entry_rest[:, None], column].add(C)
        full = -(sigma_rr @ dense)
        sigma_r0 = full[s.entry_rest[:, None], column]
    else:
        flat = jnp.concatenate([sigma_rr.reshape(-1), jnp.zeros(1, dtype)])
        # P⁻¹_rr at each pair (r_a, r_b), both ways round (pairs are listed once).
        weights = (flat[s.update_flat] * _pair_weight(s))[:, None]
        E = s.entry_rest.shape[0]
        sigma_r0 = -jax.ops.segment_sum(
            jnp.concatenate([weights * C[s.update_b], weights * C[s.update_a]]),
            jnp.concatenate([s.update_a, s.update_b]), num_segments=E)
    eye = jnp.eye(S0, dtype=dtype)
    first_inv = jax.vmap(lambda c: solve_triangular(c, eye, lower=True))(factor.first)
    sigma_00 = jnp.einsum("jba,jbc->jac", first_inv, first_inv) - jax.ops.segment_sum(
        C[:, :, None] * sigma_r0[:, None, :], s.entry_first, num_segments=m0)
    return sigma_00, sigma_r0, sigma_rr


# Below this size cholesky_inverse uses two triangular solves with the identity.
_SPLIT_INVERSE = 256


def cholesky_inverse(lower):
    """(L·L')⁻¹ from its lower-triangular factor L.

    Two triangular solves with the identity (cho_solve) cost 2n³ flops and ignore that
    L⁻¹ is triangular. Split L = [[A, 0], [B, C]]: then L⁻¹ = [[A⁻¹, 0], [−C⁻¹·B·A⁻¹,
    C⁻¹]] and (L·L')⁻¹ = L⁻ᵀ·L⁻¹ by blocks, about 2n³/3 flops in fewer, larger
    calls (about half the time of cho_solve on InstEval's rest block).
    """
    n = lower.shape[0]
    eye = jnp.eye(n, dtype=lower.dtype)
    if n < _SPLIT_INVERSE:
        return cho_solve(lower, eye)
    k = n // 2
    a_inv = solve_triangular(lower[:k, :k], eye[:k, :k], lower=True)
    c_inv = solve_triangular(lower[k:, k:], eye[k:, k:], lower=True)
    b_inv = -c_inv @ (lower[k:, :k] @ a_inv)
    top = a_inv.T @ a_inv + b_inv.T @ b_inv
    off = c_inv.T @ b_inv
    return jnp.block([[top, off.T], [off, c_inv.T @ c_inv]])


def _right_solve_rows_transposed(first, rows, levels):
    """rows[e] · L00[levels[e]]⁻¹ (row vectors times the inverse of the lower factor)."""
    if first.shape[-1] == 1:
        return rows / first[levels, 0]
    return jax.vmap(lambda c, b: solve_triangular(c, b, lower=True, trans="T"))(
        first[levels], rows)


def _coupling_gram(s: ReStructure, coupling_rows):
    """Lr0·Lr0' from the sparse rows of Lr0."""
    R = s.rest_size
    if s.dense_update:
        S0 = s.sizes[0]
        column = s.entry_first[:, None] * S0 + jnp.arange(S0)
        dense = jnp.zeros((R, s.n_levels[0] * S0), dtype=coupling_rows.dtype)
        dense = dense.at[s.entry_rest[:, None], column].add(coupling_rows)
        return dense @ dense.T
    # Each unordered pair of entries is listed once (a <= b): M collects them, a
    # diagonal pair at half weight, and the update is M + M'.
    products = jnp.sum(coupling_rows[s.update_a] * coupling_rows[s.update_b], axis=-1)
    products = products * _pair_weight(s)
    # Bin R·R collects padding products (stacked datasets of unequal size) and is dropped.
    gram = jax.ops.segment_sum(products, s.update_flat, num_segments=R * R + 1)
    gram = gram[: R * R].reshape(R, R)
    return gram + gram.T


def _pair_weight(s: ReStructure):
    """1 for a pair of distinct entries, 1/2 for an entry with itself (see above)."""
    return jnp.where(s.update_a == s.update_b, 0.5, 1.0)


def coupling_times(s: ReStructure, factor: BlockedFactor, vector_first):
    """Lr0 · v for v laid out per level of the first term, (m0, S0) -> (R,)."""
    contrib = jnp.sum(factor.coupling_rows * vector_first[s.entry_first], axis=-1)
    return jax.ops.segment_sum(contrib, s.entry_rest, num_segments=s.rest_size)


def coupling_transpose_times(s: ReStructure, factor: BlockedFactor, vector_rest):
    """Lr0' · v for v in the rest, (R,) -> (m0, S0)."""
    contrib = factor.coupling_rows * vector_rest[s.entry_rest][:, None]
    return jax.ops.segment_sum(contrib, s.entry_first, num_segments=s.n_levels[0])


def solve_lower(s: ReStructure, factor: BlockedFactor, rhs_first, rhs_rest):
    """Solve L·x = b; b and x split as (m0, S0) and (R,)."""
    x_first = jax.vmap(lambda c, b: solve_triangular(c, b, lower=True))(factor.first, rhs_first)
    x_rest = solve_triangular(
        factor.rest, rhs_rest - coupling_times(s, factor, x_first), lower=True
    )
    return x_first, x_rest


def solve_upper(s: ReStructure, factor: BlockedFactor, rhs_first, rhs_rest):
    """Solve L'·x = b; b and x split as (m0, S0) and (R,)."""
    x_rest = solve_triangular(factor.rest, rhs_rest, lower=True, trans="T")
    reduced = rhs_first - coupling_transpose_times(s, factor, x_rest)
    x_first = jax.vmap(lambda c, b: solve_triangular(c, b, lower=True, trans="T"))(
        factor.first, reduced
    )
    return x_first, x_rest


def logdet_first(factor: BlockedFactor):
    """log|L00|² (sum over the first term's blocks)."""
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(factor.first, axis1=1, axis2=2)))


def inverse_diagonal_blocks(s: ReStructure, factor: BlockedFactor) -> list:
    """Diagonal blocks of (L_Z·L_Z')⁻¹, the random-effects part of Ω⁻¹, per term.

    Used once after a fit (conditional variances), so the coupling is handled densely:
    with Y = L_rr⁻¹·L_r0, block j of the first term is
    L00_j⁻ᵀ·(I + Y_j'Y_j)·L00_j⁻¹ and the rest is L_rr⁻ᵀ·L_rr⁻¹.
    """
    R_re = s.n_re_rest
    S0, m0 = s.sizes[0], s.n_levels[0]
    eye = jnp.eye(S0, dtype=factor.first.dtype)
    first_inv = jax.vmap(lambda c: solve_triangular(c, eye, lower=True))(factor.first)
    first_blocks = jnp.einsum("jba,jbc->jac", first_inv, first_inv)
    if R_re == 0:
        return [first_blocks]
    keep = s.entry_rest < R_re
    column = s.entry_first[:, None] * S0 + jnp.arange(S0)
    rows = jnp.where(keep, s.entry_rest, 0)
    values = jnp.where(keep[:, None], factor.coupling_rows, 0.0)
    coupling = jnp.zeros((R_re, m0 * S0), dtype=values.dtype)
    coupling = coupling.at[rows[:, None], column].add(values)
    rest_factor = factor.rest[:R_re, :R_re]
    Y = solve_triangular(rest_factor, coupling, lower=True).reshape(R_re, m0, S0)
    YL = jnp.einsum("rjb,jbc->jrc", Y, first_inv)
    first_blocks = first_blocks + jnp.einsum("jra,jrc->jac", YL, YL)
    rest_inv = solve_triangular(rest_factor, jnp.eye(R_re, dtype=values.dtype), lower=True)
    blocks = [first_blocks]
    for t in range(1, s.n_terms):
        start, size, m = s.offsets[t], s.sizes[t], s.n_levels[t]
        cols = rest_inv[:, start : start + m * size].reshape(R_re, m, size)
        blocks.append(jnp.einsum("rla,rlb->lab", cols, cols))
    return blocks
