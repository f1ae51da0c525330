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

from ..._model.structure import PlainStructure, ReStructure, plain_structure
from ..compiled.cholesky import CrossProducts


def segment_sum(values, ids, n_segments):
    """Σ of ``values`` (n, ...) over observations with equal ``ids``, (n_segments, ...)."""
    if n_segments == 1:  # one level of many effects: a column-by-column loop is q² calls
        return np.sum(values, axis=0, keepdims=True, dtype=np.float64)
    flat = values.reshape(values.shape[0], int(np.prod(values.shape[1:])))
    out = np.zeros((n_segments, flat.shape[1]))  # (no columns: GLMM stages without dense)
    for k in range(flat.shape[1]):
        out[:, k] = np.bincount(ids, weights=flat[:, k], minlength=n_segments)
    return out.reshape((n_segments,) + values.shape[1:])


def _rest_pattern(s: PlainStructure):
    """Each observation's indices in the rest (n, w), their model-matrix values, and the
    flat (R·R) positions of their products; kept in the structure's cache (the GLMM
    host engine forms the products at every Newton step)."""
    if "rest_pattern" not in s.cache:
        R = s.rest_size
        index = np.concatenate(
            [s.offsets[t] + np.asarray(s.refs[t])[:, None] * s.sizes[t] + np.arange(s.sizes[t])
             for t in range(1, s.n_terms)], axis=1)
        values = np.concatenate([np.asarray(z, dtype=np.float64) for z in s.z[1:]], axis=1)
        s.cache["rest_pattern"] = (index, values, (index[:, :, None] * R + index[:, None, :]).ravel())
    return s.cache["rest_pattern"]


def host_cross_products(s: ReStructure, weights, dense) -> CrossProducts:
    """:func:`glmmjax._engines.compiled.cholesky.cross_products` in numpy (float64 arrays)."""
    s = plain_structure(s)
    weights = np.asarray(weights, dtype=np.float64)
    dense = np.asarray(dense, dtype=np.float64)
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
        index, values, flat = _rest_pattern(s)
        wv = values * weights[:, None]
        rest += np.bincount(flat, weights=(wv[:, :, None] * values[:, None, :]).ravel(),
                            minlength=R * R).reshape(R, R)
        re_dense = np.zeros((R, s.n_dense))
        products = wv[:, :, None] * dense[:, None, :]  # (n, w, n_dense)
        for k in range(s.n_dense):
            re_dense[:, k] = np.bincount(index.ravel(), weights=products[:, :, k].ravel(),
                                         minlength=R)
        rest[:, dense_start:] += re_dense
        rest[dense_start:, :] += re_dense.T
    return CrossProducts(first, coupling, dense_first, rest)
