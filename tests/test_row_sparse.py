"""The host parts engine's row-sparse random-effects matrix (glmmjax._engines.host.row_sparse)
against the dense ZΛ(θ) it replaces (glmmjax._engines.compiled.parts.random_matrix)."""

import jax
import numpy as np

from glmmjax._engines.compiled.parts import random_matrix as _random_matrix
from glmmjax._engines.host.row_sparse import TermPattern, gram, quadratic
from glmmjax._engines.parts_shared import dense_terms


class _Term:
    def __init__(self, refs, n_levels, z):
        self.refs, self.n_levels, self.z = refs, n_levels, z
        self.size = z.shape[1]


def _terms(n, rng):
    x = rng.normal(size=n)
    return [_Term(rng.integers(0, 5, n), 5, np.ones((n, 1))),
            _Term(rng.integers(0, 3, n), 3, np.column_stack([np.ones(n), x])),
            # A level no row uses, and rows outside every level (ref -1: no entries).
            _Term(np.where(rng.uniform(size=n) < 0.2, -1, rng.integers(0, 4, n)), 5,
                  x[:, None])]


def random_matrix(theta, terms, n, dtype):
    with jax.enable_x64(True):
        return np.asarray(_random_matrix(theta, terms, n, dtype))


def test_row_sparse_products_equal_dense():
    rng = np.random.default_rng(0)
    n = 40
    terms = dense_terms(_terms(n, rng), n)
    pattern = TermPattern(terms, n)
    theta = rng.normal(size=terms.n_theta)
    A = pattern.matrix(theta)
    dense = np.asarray(random_matrix(theta, terms, n, np.float64))
    np.testing.assert_allclose(A.toarray(), dense, rtol=1e-14)
    v, g, M = rng.normal(size=terms.q), rng.normal(size=n), rng.normal(size=(n, 3))
    w = rng.uniform(size=n)
    np.testing.assert_allclose(A.dot(v), dense @ v, rtol=1e-12)
    np.testing.assert_allclose(A.tdot(g), dense.T @ g, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(A.tdot(M), dense.T @ M, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gram(A, w, A), dense.T @ (w[:, None] * dense), rtol=1e-12,
                               atol=1e-14)
    S = rng.normal(size=(terms.q + 2, terms.q + 2))
    want = np.einsum("ij,jk,ik->i", dense, S[2:, 2:], dense)
    np.testing.assert_allclose(quadratic(S, A, 2, A, 2), want, rtol=1e-12, atol=1e-14)
    for k in range(terms.n_theta):
        unit = np.zeros(terms.n_theta)
        unit[k] = 1.0
        dA = pattern.unit(k)
        want_dA = np.asarray(random_matrix(unit, terms, n, np.float64))
        np.testing.assert_allclose(dA.toarray(), want_dA, rtol=1e-14)
        np.testing.assert_allclose(quadratic(S, A, 0, dA, 2),
                                   np.einsum("ij,jk,ik->i", dense, S[:-2, 2:], want_dA),
                                   rtol=1e-12, atol=1e-14)
