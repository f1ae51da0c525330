"""The LMM's cross-products [Z D]'W[Z D] computed with numpy, before any tracing.

Same blocks as :func:`glmmjax._engines.compiled.cholesky.cross_products` (which stays the traceable
version, used under ``vmap`` by ``fit_many`` and the bootstrap). A single ``lmer`` fit
forms them once, so doing that on the host keeps the segment sums over every
observation out of the compiled fit program, which then compiles about a third
faster on InstEval (benchmarks/README.md), and ``np.bincount`` forms the blocks in a
few milliseconds.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

from ..._model.structure import PlainStructure, ReStructure, plain_structure
from ..lmm_shared import CrossProducts


def segment_sum(values, ids, n_segments):
    """Σ of ``values`` (n, ...) over observations with equal ``ids``, (n_segments, ...)."""
    if n_segments == 1:  # one level of many effects: a column-by-column loop is q² calls
        return np.sum(values, axis=0, keepdims=True, dtype=np.float64)
    flat = values.reshape(values.shape[0], int(np.prod(values.shape[1:])))
    out = np.zeros((n_segments, flat.shape[1]))  # (no columns: GLMM stages without dense)
    for k in range(flat.shape[1]):
        out[:, k] = np.bincount(ids, weights=flat[:, k], minlength=n_segments)
    return out.reshape((n_segments,) + values.shape[1:])


def level_sums(s, key, values, ids, n_segments):
    """:func:`segment_sum` as one sparse product: the (n_segments, n) 0/1 indicator of
    ``ids`` is built once, as CSR, and kept in the (plain) structure's cache under
    ``key`` (the host GLMM sums over the same levels at every Newton step, and a
    ``np.bincount`` per column costs a call each). The sums run over the observations
    in the same order as ``segment_sum``'s, so they are the same numbers. A structure
    without a cache, or a single segment, goes to ``segment_sum``."""
    cache = getattr(s, "cache", None)
    if cache is None or n_segments == 1:
        return segment_sum(values, ids, n_segments)
    indicator = cache.get(("levels", key))
    if indicator is None:
        ids = np.asarray(ids)
        n = ids.shape[0]
        indicator = scipy.sparse.csr_matrix((np.ones(n), (ids, np.arange(n))),
                                            shape=(n_segments, n))
        cache[("levels", key)] = indicator
    flat = values.reshape(values.shape[0], int(np.prod(values.shape[1:])))
    return (indicator @ flat).reshape((n_segments,) + values.shape[1:])


def term_matrices(s: PlainStructure, t: int):
    """Term ``t``'s Z_t as sparse matrices, (Z_t, Z_t') in CSR: Z_t is (n, m_t·S_t) with
    z_it's nonzeros at columns l_it·S_t + a; kept in the structure's cache. Z_t·vec(b)
    is Σ_a z_ia·b[l_i, a] and Z_t'·r is Σ_i r_i·z_i per level (in the observations'
    order, as ``segment_sum``)."""
    key = ("z_matrices", t)
    if key not in s.cache:
        z = np.asarray(s.z[t], dtype=np.float64)
        refs = np.asarray(s.refs[t])
        size = z.shape[1]
        obs, column = np.nonzero(z)
        matrix = scipy.sparse.csr_matrix(
            (z[obs, column], (obs, refs[obs] * size + column)),
            shape=(z.shape[0], s.n_levels[t] * size))
        s.cache[key] = (matrix, matrix.T.tocsr())
    return s.cache[key]


def _rest_pattern(s: PlainStructure):
    """Each observation's indices in the rest (n, w) and their model-matrix values."""
    if "rest_pattern" not in s.cache:
        index = np.concatenate(
            [s.offsets[t] + np.asarray(s.refs[t])[:, None] * s.sizes[t] + np.arange(s.sizes[t])
             for t in range(1, s.n_terms)], axis=1)
        values = np.concatenate([np.asarray(z, dtype=np.float64) for z in s.z[1:]], axis=1)
        s.cache["rest_pattern"] = (index, values)
    return s.cache["rest_pattern"]


def _nonzero_products(ids, n_segments, left, right):
    """(output index, observation, left value, right value) of the nonzero products
    left_ia·right_ib summed per segment ``ids_i`` into (n_segments, A, B), observation by
    observation (the order of :func:`segment_sum`'s sums, so the sums are the same).

    Found from the nonzeros of ``left`` and ``right`` (their pairs within each
    observation), never as an (n, A, B) array: a known-K term is one group whose q
    columns are the levels' indicators, and n·q² temporaries do not fit (93 GB at
    q = 2,500)."""
    n, A = left.shape
    B = right.shape[1]
    left_obs, left_col = np.nonzero(left)  # row-major: by observation, then column
    right_obs, right_col = np.nonzero(right)
    right_count = np.bincount(right_obs, minlength=n)
    right_start = np.cumsum(right_count) - right_count
    repeats = right_count[left_obs]
    entry = np.repeat(np.arange(left_obs.size), repeats)
    within = np.arange(entry.size) - np.repeat(np.cumsum(repeats) - repeats, repeats)
    obs = left_obs[entry]
    a = left_col[entry]
    b = right_col[right_start[obs] + within]
    out = np.asarray(ids, dtype=np.int64)[obs] * (A * B) + a * B + b
    return out, obs, left[obs, a], right[obs, b]


def _rest_entries(s: PlainStructure):
    """The nonzero model-matrix entries of the later terms, observation by observation:
    (observation, rest index, value), and the flat (R·R) positions, observations and
    values of their products within each observation; kept in the structure's cache
    (the GLMM host engine forms the products at every Newton step). Sizes follow the
    nonzeros (a known-K term's indicator columns have one per observation)."""
    if "rest_entries" not in s.cache:
        index, values = _rest_pattern(s)
        obs, column = np.nonzero(values)
        entries = (obs, index[obs, column], values[obs, column])
        zero = np.zeros(values.shape[0], dtype=np.int64)
        o, i, lv, rv = _nonzero_products(zero, 1, values, values)
        a, b = np.divmod(o, values.shape[1])
        pairs = (index[i, a] * s.rest_size + index[i, b], i, lv, rv)
        s.cache["rest_entries"] = (entries, pairs)
    return s.cache["rest_entries"]


class _WeightPattern:
    """The cross-products' blocks as one linear map of the weights: every nonzero
    product of model-matrix entries with its output position, so that each new weight
    vector (the GLMM's inner Newton steps) costs one ``np.bincount`` over the nonzeros
    instead of a segment sum per column pair. Products and sums in the same order as
    :func:`host_cross_products`' direct path (``(z_a·w)·z_b``, observation by
    observation), hence the same numbers."""

    def __init__(self, s: PlainStructure, dense: np.ndarray):
        z = [np.asarray(t, dtype=np.float64) for t in s.z]
        refs = [np.asarray(r) for r in s.refs]
        m0, S0 = s.n_levels[0], s.sizes[0]
        blocks = [_nonzero_products(refs[0], m0, z[0], z[0])]
        shapes = [(m0, S0, S0)]
        for t in range(1, s.n_terms):
            pairs = np.asarray(s.pair_first[t - 1]).shape[0]
            # (z_t·(z0·w)): the weight multiplies the first term's entry, the left value.
            o, i, lv, rv = _nonzero_products(np.asarray(s.obs_pair[t - 1]), pairs, z[t], z[0])
            blocks.append((o, i, rv, lv))
            shapes.append((pairs, s.sizes[t], S0))
        o, i, lv, rv = _nonzero_products(refs[0], m0, dense, z[0])
        blocks.append((o, i, rv, lv))
        shapes.append((m0, dense.shape[1], S0))
        R = s.rest_size
        if s.n_terms > 1:
            index, values = _rest_pattern(s)
            _, pairs = _rest_entries(s)
            blocks.append(pairs)
            shapes.append((R, R))
            zero = np.zeros(values.shape[0], dtype=np.int64)
            o, i, lv, rv = _nonzero_products(zero, 1, values, dense)
            a, b = np.divmod(o, dense.shape[1])
            blocks.append((index[i, a] * dense.shape[1] + b, i, lv, rv))
            shapes.append((R, dense.shape[1]))
        starts = np.cumsum([0] + [int(np.prod(shape)) for shape in shapes])
        self.out = np.concatenate([b[0] + start for b, start in zip(blocks, starts)])
        self.obs = np.concatenate([b[1] for b in blocks])
        self.left = np.concatenate([b[2] for b in blocks])
        self.right = np.concatenate([b[3] for b in blocks])
        self.starts, self.shapes, self.total = starts, shapes, int(starts[-1])

    def blocks(self, weights):
        flat = np.bincount(self.out, weights=weights[self.obs] * self.left * self.right,
                           minlength=self.total)
        return [flat[a:b].reshape(shape)
                for a, b, shape in zip(self.starts[:-1], self.starts[1:], self.shapes)]


def _weight_pattern(s: PlainStructure, dense: np.ndarray):
    """The structure's :class:`_WeightPattern` for these dense columns (kept in its cache
    for the same array), or None where the direct path sums differently (one level of
    the first term or one pair of a coupling: ``segment_sum``'s single-segment sums)."""
    if s.n_levels[0] == 1 or any(np.asarray(p).shape[0] == 1 for p in s.pair_first):
        return None
    cached = s.cache.get("weight_pattern")
    if cached is None or cached[0] is not dense:
        cached = (dense, _WeightPattern(s, dense))
        s.cache["weight_pattern"] = cached
    return cached[1]


def host_cross_products(s: ReStructure, weights, dense,
                        reuse: bool = False) -> CrossProducts:
    """:func:`glmmjax._engines.compiled.cholesky.cross_products` in numpy (float64 arrays).

    ``reuse``: the same structure and ``dense`` array come again with other weights (the
    host GLMM's Newton steps), so the nonzero products are found once and kept."""
    s = plain_structure(s)
    weights = np.asarray(weights, dtype=np.float64)
    dense = np.asarray(dense, dtype=np.float64)
    pattern = _weight_pattern(s, dense) if reuse else None
    if pattern is not None:
        return _from_pattern(s, pattern.blocks(weights), weights, dense)
    z = [np.asarray(t, dtype=np.float64) for t in s.z]
    refs = [np.asarray(r) for r in s.refs]
    m0 = s.n_levels[0]
    z0 = z[0] * weights[:, None]
    if m0 == 1:  # one level of many effects (known relatedness): no (n, S, S) temporary
        first = (z0.T @ z[0])[None]
    else:
        first = segment_sum(z0[:, :, None] * z[0][:, None, :], refs[0], m0)
    coupling = tuple(
        segment_sum(z[t][:, :, None] * z0[:, None, :], np.asarray(s.obs_pair[t - 1]),
                     np.asarray(s.pair_first[t - 1]).shape[0])
        for t in range(1, s.n_terms)
    )
    if m0 == 1:
        dense_first = (dense.T @ z0)[None]
    else:
        dense_first = segment_sum(dense[:, :, None] * z0[:, None, :], refs[0], m0)
    R = s.rest_size
    dense_start = R - s.n_dense
    rest = np.zeros((R, R))
    rest[dense_start:, dense_start:] = dense.T @ (dense * weights[:, None])
    if s.n_terms > 1:
        # Nonzero entries only, in the order of the observations (the sums of the
        # (n, w, w) products they replace, without n·q² memory for a known-K term).
        (obs, index, value), (flat, pair_obs, left, right) = _rest_entries(s)
        rest += np.bincount(flat, weights=(weights[pair_obs] * left) * right,
                            minlength=R * R).reshape(R, R)
        re_dense = np.zeros((R, s.n_dense))
        wv = value * weights[obs]
        for k in range(s.n_dense):
            re_dense[:, k] = np.bincount(index, weights=wv * dense[obs, k], minlength=R)
        rest[:, dense_start:] += re_dense
        rest[dense_start:, :] += re_dense.T
    return CrossProducts(first, coupling, dense_first, rest)


def _from_pattern(s: PlainStructure, blocks, weights, dense) -> CrossProducts:
    """The blocks of :class:`_WeightPattern` assembled as the direct path assembles them."""
    first, *rest_blocks = blocks
    n_coupling = s.n_terms - 1
    coupling = tuple(rest_blocks[:n_coupling])
    dense_first = rest_blocks[n_coupling]
    R = s.rest_size
    dense_start = R - s.n_dense
    rest = np.zeros((R, R))
    rest[dense_start:, dense_start:] = dense.T @ (dense * weights[:, None])
    if s.n_terms > 1:
        rest += rest_blocks[n_coupling + 1]
        re_dense = rest_blocks[n_coupling + 2]
        rest[:, dense_start:] += re_dense
        rest[dense_start:, :] += re_dense.T
    return CrossProducts(first, coupling, dense_first, rest)
