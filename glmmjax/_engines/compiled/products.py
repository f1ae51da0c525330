"""[Z D]'W[Z D] for the GLMM inner problem, with the dense columns D laid out by column.

Same result as :func:`glmmjax._engines.compiled.cholesky.cross_products`, which the GLMM calls once or
more per Newton step. XLA on CPU runs products over the rows with a short second
dimension (D'WD and D'r for D of shape (n, k), and their transposes under autodiff)
as slow small-matrix kernels: at 10⁶ rows and k = 2 they cost more than the rest of a
Newton step together. Here D is transposed to (k, n), and D'WD comes from the
k(k+1)/2 row products d_i·d_j (formed once per call) times w, a matrix-vector product
over contiguous rows.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..._model.structure import ReStructure
from .cholesky import CrossProducts, random_blocks, random_rest

# Above this many stored entries, D'WD is formed as a (k, n)·(n, k) product instead.
_MAX_PAIR_ENTRIES = 30_000_000


class DenseLayout(NamedTuple):
    """D by column, (k, n), and the row products d_i·d_j (i ≤ j) when not too many."""

    t: jnp.ndarray
    pairs: jnp.ndarray | None


def dense_layout(dense) -> DenseLayout:
    """Form once per Newton solve (loop-invariant, and XLA does not hoist it)."""
    n, k = dense.shape
    dense_t = dense.T
    if k == 0 or k * (k + 1) // 2 * n > _MAX_PAIR_ENTRIES:
        return DenseLayout(dense_t, None)
    rows, cols = np.triu_indices(k)
    return DenseLayout(dense_t, dense_t[rows] * dense_t[cols])


def _dense_gram(layout: DenseLayout, weights):
    dense_t = layout.t
    k = dense_t.shape[0]
    if layout.pairs is None:
        return dense_t @ (dense_t * weights).T
    rows, cols = np.triu_indices(k)
    upper = layout.pairs @ weights
    gram = jnp.zeros((k, k), dtype=dense_t.dtype).at[rows, cols].set(upper)
    return gram.at[cols, rows].set(upper)


def cross_products(s: ReStructure, weights, layout: DenseLayout) -> CrossProducts:
    """As :func:`glmmjax._engines.compiled.cholesky.cross_products` (same blocks), D given by column."""
    m0, S0 = s.n_levels[0], s.sizes[0]
    dense_t = layout.t
    k = dense_t.shape[0]
    z0, first, coupling = random_blocks(s, weights)
    # One segment sum per column: stacking the columns into an (n, k·S0) operand
    # first costs more than the sums themselves.
    columns = [
        jax.ops.segment_sum(dense_t[i] * z0[:, a], s.refs[0], num_segments=m0)
        for i in range(k) for a in range(S0)
    ]
    if columns:
        dense_first = jnp.stack(columns, axis=1).reshape(m0, k, S0)
    else:
        dense_first = jnp.zeros((m0, 0, S0), dtype=z0.dtype)
    R = s.rest_size
    rest = jnp.zeros((R, R), dtype=z0.dtype)
    if k:
        rest = rest.at[R - k :, R - k :].set(_dense_gram(layout, weights))
    if s.n_terms > 1:
        rest = rest + _random_rest(s, weights, dense_t)
    return CrossProducts(first, coupling, dense_first, rest)


def _random_rest(s: ReStructure, weights, dense_t):
    """The rest's blocks that involve later terms' random effects (as compiled.cholesky)."""
    R = s.rest_size
    k = dense_t.shape[0]
    rest, index, wv = random_rest(s, weights, dense_t)
    if k:
        re_dense = jnp.stack([wv * dense_t[j][:, None] for j in range(k)], axis=2)
        cols = R - k + jnp.arange(k)
        flat = (index[:, :, None] * R + cols[None, None, :]).ravel()
        rest = rest.at[flat].add(re_dense.ravel())
        flat_t = (cols[None, None, :] * R + index[:, :, None]).ravel()
        rest = rest.at[flat_t].add(re_dense.ravel())
    return rest.reshape(R, R)
