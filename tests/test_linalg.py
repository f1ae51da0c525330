"""glmmjax._linalg: small Cholesky factors and triangular solves written in jax.numpy
(jaxlib's batched LAPACK kernels deadlock XLA:CPU's thread pool, see the module) equal
LAPACK's, with the same derivatives."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.linalg import solve_triangular as lapack_solve

from glmmjax import _linalg


def _spd(rng, batch, n):
    a = rng.normal(size=batch + (n, n))
    return a @ np.swapaxes(a, -1, -2) + n * np.eye(n)


def test_empty_matrices_pass_through():
    # A model without a dense rest (no fixed effects in it) has 0 × 0 blocks.
    empty = jnp.zeros((3, 0, 0))
    assert _linalg.cholesky(empty).shape == (3, 0, 0)
    assert _linalg.solve_triangular(empty, jnp.zeros((3, 0))).shape == (3, 0)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 9])
def test_cholesky_equals_lapack(n):
    with jax.enable_x64(True):
        a = jnp.asarray(_spd(np.random.default_rng(n), (4, 3), n))
        np.testing.assert_allclose(_linalg.cholesky(a), jnp.linalg.cholesky(a), rtol=1e-12,
                                   atol=1e-12)
        not_pd = a.at[..., 0, 0].set(-1.0)
        assert np.isnan(np.asarray(_linalg.cholesky(not_pd))).any(axis=(-1, -2)).all()


@pytest.mark.parametrize("n", [1, 3, 8, 9])
@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("trans", [0, "T"])
@pytest.mark.parametrize("width", [None, 4])
def test_solve_triangular_equals_lapack(n, lower, trans, width):
    rng = np.random.default_rng(10 * n + 2 * lower + (trans == "T"))
    with jax.enable_x64(True):
        factor = np.linalg.cholesky(_spd(rng, (5,), n))
        a = jnp.asarray(factor if lower else np.swapaxes(factor, -1, -2))
        b = jnp.asarray(rng.normal(size=(5, n) if width is None else (5, n, width)))
        expected = jax.vmap(lambda m, v: lapack_solve(m, v, lower=lower, trans=trans))(a, b)
        got = _linalg.solve_triangular(a, b, lower=lower, trans=trans)
        np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-12)


def test_derivatives_equal_lapack_under_jit_and_vmap():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        a = jnp.asarray(_spd(rng, (6,), 3))
        b = jnp.asarray(rng.normal(size=(6, 3)))

        def loss(solve, chol, a, b):
            factor = chol(a)
            return jnp.sum(solve(factor, b) ** 2) + jnp.sum(jnp.log(jnp.diagonal(factor)))

        mine = jax.jit(jax.vmap(jax.grad(
            lambda a, b: loss(_linalg.solve_triangular, _linalg.cholesky, a, b), (0, 1))))
        lapack = jax.vmap(jax.grad(
            lambda a, b: loss(lambda f, v: lapack_solve(f, v, lower=True), jnp.linalg.cholesky,
                              a, b), (0, 1)))
        (got_a, got_b), (expected_a, expected_b) = mine(a, b), lapack(a, b)
        np.testing.assert_allclose(got_b, expected_b, rtol=1e-10, atol=1e-12)
        # LAPACK's rule spreads the gradient over both triangles of the symmetric input,
        # these functions read the lower one: equal along every symmetric direction.
        symmetric = 0.5 * (got_a + jnp.swapaxes(got_a, -1, -2))
        np.testing.assert_allclose(symmetric, expected_a, rtol=1e-10, atol=1e-12)


def test_batch_programs_make_no_small_lapack_calls():
    # The vmapped LMM fit of fit_many: its blocks are 2×2 (one per subject) and its
    # dense rest 3×3, so no LAPACK factorization or solve may be left in it.
    import glmmjax
    from glmmjax._batching import fit_many as _batch

    sleep = glmmjax.datasets.load("sleepstudy")
    design = _batch._design_for("~ Days + (Days | Subject)", sleep, None, None)
    structure = _batch.build_structure(design.terms, design.X.shape[1] + 1)
    setup = _batch._LMMSetup(X=np.asarray(design.X), weights=np.asarray(design.weights),
                             structure=structure, reml=True, gtol=1e-8, loose_gtol=1e-3,
                             satterthwaite=True)
    with jax.enable_x64(True):
        Y = jnp.zeros((4, len(sleep)))
        text = jax.jit(jax.vmap(_batch._lmm_one, in_axes=(0, None))).lower(Y, setup).as_text()
    assert "potrf" not in text and "trsm" not in text
