"""The host parts engine's random-effects matrix A = ZΛ(θ) held row by row: each row of
A has few nonzeros (one per effect of each term: K = Σₜ Sₜ), at columns fixed by the
row's levels, so A is kept as (n, K) column indices and values (:class:`RowSparse`)
instead of a dense n × q array. Its products (Av, A'g, A'diag(w)B and the rows'
quadratic forms aᵢ'Maᵢ) are then O(nK) or O(nK²) gathers and ``np.bincount`` sums
rather than O(nq) or O(nq²) dense products (:mod:`glmmjax._engines.host.parts`).
"""

from __future__ import annotations

import numpy as np

from ..._model.covariance import _tril_indices_colmajor


class RowSparse:
    """An n × q matrix with K stored entries per row: ``cols`` (n, K) int, ``vals`` (n, K).

    Entries of one row may repeat a column (their values add) or hold zeros."""

    __slots__ = ("cols", "vals", "q")

    def __init__(self, cols: np.ndarray, vals: np.ndarray, q: int):
        self.cols, self.vals, self.q = cols, vals, int(q)

    @property
    def shape(self) -> tuple[int, int]:
        return self.cols.shape[0], self.q

    def dot(self, v: np.ndarray) -> np.ndarray:
        """A·v, (n,)."""
        if self.cols.shape[1] == 1:
            return self.vals[:, 0] * v[self.cols[:, 0]]
        return np.einsum("ik,ik->i", self.vals, v[self.cols])

    def tdot(self, g: np.ndarray) -> np.ndarray:
        """A'·g for g (n,) or (n, p): (q,) or (q, p)."""
        if g.ndim == 1:
            if self.cols.shape[1] == 1:
                return np.bincount(self.cols[:, 0], self.vals[:, 0] * g, minlength=self.q)
            return np.bincount(self.cols.ravel(), (self.vals * g[:, None]).ravel(),
                               minlength=self.q)
        out = np.empty((self.q, g.shape[1]))
        for j in range(g.shape[1]):
            out[:, j] = self.tdot(np.ascontiguousarray(g[:, j]))
        return out

    def toarray(self) -> np.ndarray:
        n = self.cols.shape[0]
        out = np.zeros((n, self.q))
        np.add.at(out, (np.repeat(np.arange(n), self.cols.shape[1]), self.cols.ravel()),
                  self.vals.ravel())
        return out


def gram(a: RowSparse, w: np.ndarray, b: RowSparse, index=None) -> np.ndarray:
    """A'·diag(w)·B, (q_a, q_b); ``index`` (:func:`gram_index`) may be passed to reuse."""
    if index is None:
        index = gram_index(a, b)
    weights = (a.vals[:, :, None] * (w[:, None, None] * b.vals[:, None, :])).ravel()
    return np.bincount(index, weights, minlength=a.q * b.q).reshape(a.q, b.q)


def gram_index(a: RowSparse, b: RowSparse) -> np.ndarray:
    """The flat (q_a × q_b) index of every pair of entries of a row, for :func:`gram`."""
    return (a.cols[:, :, None] * b.q + b.cols[:, None, :]).ravel()


def quadratic(M: np.ndarray, a: RowSparse, a_offset: int, b: RowSparse,
              b_offset: int) -> np.ndarray:
    """Per row i: aᵢ'·M[a_offset + ·, b_offset + ·]·bᵢ (rows of A and B as sparse vectors
    into blocks of M), (n,)."""
    if a.cols.shape[1] == 1 and b.cols.shape[1] == 1:
        return a.vals[:, 0] * M[a_offset + a.cols[:, 0], b_offset + b.cols[:, 0]] * b.vals[:, 0]
    block = M[(a_offset + a.cols)[:, :, None], (b_offset + b.cols)[:, None, :]]
    return np.einsum("ik,ikl,il->i", a.vals, block, b.vals)


class TermPattern:
    """The fixed sparsity of one part's A: per term its levels and model matrix, with
    every row's column indices (level l, effect s of term t: column offsetₜ + l·Sₜ + s)."""

    def __init__(self, terms, n: int):
        self.n = n
        self.sizes = tuple(terms.sizes)
        self.q = int(terms.q)
        self.z, cols, present, offset = [], [], [], 0
        for J, z, size, levels in zip(terms.indicators, terms.z, terms.sizes, terms.n_levels):
            J = np.asarray(J)
            refs = np.argmax(J, axis=1) if levels else np.zeros(n, np.int64)
            # A row outside every level (indicator row of zeros) has no entries: value 0.
            present.append(np.repeat(J[np.arange(n), refs][:, None], size, axis=1)
                           if levels else np.zeros((n, size)))
            cols.append(offset + refs[:, None] * size + np.arange(size)[None, :])
            self.z.append(np.asarray(z, np.float64))
            offset += levels * size
        self.cols = (np.concatenate(cols, axis=1).astype(np.intp) if cols
                     else np.zeros((n, 0), np.intp))
        self.present = (np.concatenate(present, axis=1).astype(np.float64) if present
                        else np.zeros((n, 0)))
        # The entries of each term among a row's K.
        self.spans, start = [], 0
        for size in self.sizes:
            self.spans.append(slice(start, start + size))
            start += size
        self._units: dict = {}

    def matrix(self, theta) -> RowSparse:
        """A = ZΛ(θ)."""
        vals, start = [], 0
        for z, size in zip(self.z, self.sizes):
            count = size * (size + 1) // 2
            if size == 1:
                vals.append(z * theta[start])
            else:
                lam = np.zeros((size, size))
                rows, cols = _tril_indices_colmajor(size)
                lam[rows, cols] = theta[start : start + count]
                vals.append(z @ lam)
            start += count
        if not vals:
            return RowSparse(self.cols, np.zeros((self.n, 0)), self.q)
        return RowSparse(self.cols, np.concatenate(vals, axis=1) * self.present, self.q)

    def unit(self, k: int) -> RowSparse:
        """∂A/∂θ_k (Λ is linear in θ: the same at every θ, kept), on the entries of θ_k's
        term only."""
        if k not in self._units:
            start = 0
            for t, (z, size) in enumerate(zip(self.z, self.sizes)):
                count = size * (size + 1) // 2
                if k < start + count:
                    rows, cols = _tril_indices_colmajor(size)
                    r, c = rows[k - start], cols[k - start]
                    # (z'E_rc)_s = z_r where s = c, else 0.
                    vals = np.zeros((self.n, size))
                    vals[:, c] = z[:, r]
                    span = self.spans[t]
                    self._units[k] = RowSparse(self.cols[:, span],
                                               vals * self.present[:, span], self.q)
                    break
                start += count
        return self._units[k]
