"""The blocked Cholesky factor and the LMM criterion against a dense construction.

For small designs we build the dense Z (n × Σ m_t S_t) from each term's refs and z, the
dense Λ(θ) and Ω(θ) = [[Λ'Z'WZΛ + I, Λ'Z'WD], [D'WZΛ, D'WD]] in numpy, and check that
the blocked factor of glmmjax._engines.compiled.cholesky, reassembled densely, is the Cholesky factor of
Ω; and that the profiled REML/ML criterion equals Bates et al. (2015) computed densely
(penalized least squares solved directly, no Cholesky of ours involved).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from glmmjax._engines.compiled.cholesky import cross_products, factorize
from glmmjax._engines.compiled.lmm import lmm_model_from_arrays, lmm_pieces
from glmmjax._model.design import build_design
from glmmjax._model.structure import build_structure


def _crossed_frame(n_g: int, n_h: int, n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.r_[np.arange(n_g), rng.integers(0, n_g, n - n_g)]  # every level present
    h = np.r_[np.arange(n_h), rng.integers(0, n_h, n - n_h)]
    return pd.DataFrame(
        {
            "y": rng.normal(size=n),
            "x": rng.normal(size=n),
            "g": [f"g{i:02d}" for i in g],
            "h": [f"h{i:02d}" for i in h],
        }
    )


def _nested_frame(n_a: int, per_a: int, reps: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = np.repeat(np.arange(n_a), per_a * reps)
    b = np.tile(np.repeat(np.arange(per_a), reps), n_a)
    n = a.size
    return pd.DataFrame(
        {"y": rng.normal(size=n), "x": rng.normal(size=n), "a": a, "b": [f"b{i}" for i in b]}
    )


# name -> (formula, data, whether the structure should use the dense coupling update)
CASES = {
    # (a) one term with S = 2 (a single term always takes the dense update)
    "one_term_S2": ("y ~ x + (x|g)", lambda: _crossed_frame(4, 2, 16, 0), True),
    # (b, d) two crossed terms, S0 = 2 for the first, sparse coupling rows
    "crossed_sparse": ("y ~ x + (x|g) + (1|h)", lambda: _crossed_frame(30, 20, 60, 2), False),
    # (c, d) nested and uncorrelated: (1|a:b), (0+x|a:b), (1|a), (0+x|a); dense update
    "nested_dense": ("y ~ x + (x||a/b)", lambda: _nested_frame(3, 2, 3, 3), True),
    # (c, d) nested, sparse coupling rows
    "nested_sparse": ("y ~ x + (1|a/b)", lambda: _nested_frame(10, 2, 2, 4), False),
}


# the sparse path is also covered by "crossed_sparse"; one compile less by default
NAMES = [pytest.param(n, marks=pytest.mark.slow) if n == "nested_sparse" else n for n in CASES]


def _lambda_block(theta: np.ndarray, size: int) -> np.ndarray:
    """Λ_t from its θ: the lower triangle, column by column (lme4's order)."""
    block = np.zeros((size, size))
    k = 0
    for col in range(size):
        for row in range(col, size):
            block[row, col] = theta[k]
            k += 1
    return block


def _dense_pieces(design, theta):
    """Dense Z, Λ, Ω (as numpy), and the model pieces in the structure's order."""
    n = design.nobs
    z_blocks, lam_blocks, start = [], [], 0
    for term in design.terms:
        m, S = term.n_levels, term.size
        Z_t = np.zeros((n, m * S))
        for i in range(n):
            Z_t[i, term.refs[i] * S : (term.refs[i] + 1) * S] = term.z[i]
        z_blocks.append(Z_t)
        count = S * (S + 1) // 2
        lam_blocks.append(np.kron(np.eye(m), _lambda_block(theta[start : start + count], S)))
        start += count
    Z = np.hstack(z_blocks)
    q = Z.shape[1]
    Lam = np.zeros((q, q))
    pos = 0
    for block in lam_blocks:
        Lam[pos : pos + block.shape[0], pos : pos + block.shape[0]] = block
        pos += block.shape[0]
    return Z, Lam


def _case(name):
    formula, make, dense_update = CASES[name]
    design = build_design(formula, make())
    rng = np.random.default_rng(len(name))
    weights = rng.uniform(0.5, 2.0, design.nobs)
    if name == "crossed_sparse":
        weights[3] = 0.0  # a zero prior weight: the row counts for nothing
    structure = build_structure(design.terms, design.X.shape[1] + 1)
    assert structure.dense_update is dense_update
    n_theta = structure.n_theta
    theta = rng.uniform(0.3, 1.5, n_theta) * rng.choice([-1.0, 1.0], n_theta)
    return design, structure, weights, theta


@functools.cache
def _computed(name):
    """Blocked factor and criterion pieces, one compiled program per case."""
    design, s, weights, theta = _case(name)
    y = np.asarray(design.response, dtype=float)

    def run(weights, X, y, theta):
        dense = jnp.column_stack([X, y])
        factor = factorize(theta, cross_products(s, weights, dense), s)
        reml = lmm_model_from_arrays(s, weights, X, y, True)
        ml = lmm_model_from_arrays(s, weights, X, y, False)
        logdet_z, logdet_x, r2, _ = lmm_pieces(theta, reml)
        return factor, reml.objective(theta), ml.objective(theta), logdet_z, logdet_x, r2

    with jax.enable_x64(True):
        args = [jnp.asarray(a) for a in (weights, design.X, y, theta)]
        # XLA's backend optimizations off: half the compile time, the same values
        compiled = jax.jit(run).lower(*args).compile(
            compiler_options={"xla_backend_optimization_level": 0}
        )
        out = jax.tree_util.tree_map(np.asarray, compiled(*args))
        return design, s, weights, theta, out


@pytest.mark.parametrize("name", NAMES)
def test_factor_is_cholesky_of_omega(name):
    design, s, weights, theta, (factor, *_) = _computed(name)
    X, y = design.X, np.asarray(design.response, dtype=float)
    D = np.column_stack([X, y])
    Z, Lam = _dense_pieces(design, theta)
    ZL = Z @ Lam
    W = weights[:, None]
    q = ZL.shape[1]
    omega = np.block(
        [
            [ZL.T @ (W * ZL) + np.eye(q), ZL.T @ (W * D)],
            [D.T @ (W * ZL), D.T @ (W * D)],
        ]
    )
    first, rows, rest = factor.first, factor.coupling_rows, factor.rest
    # reassemble L = [[L00, 0], [Lr0, Lrr]]
    m0, S0 = s.n_levels[0], s.sizes[0]
    R = s.rest_size
    assert q + D.shape[1] == m0 * S0 + R
    L = np.zeros((m0 * S0 + R, m0 * S0 + R))
    for j in range(m0):
        L[j * S0 : (j + 1) * S0, j * S0 : (j + 1) * S0] = np.tril(first[j])
    entry_rest, entry_first = np.asarray(s.entry_rest), np.asarray(s.entry_first)
    assert len(set(zip(entry_rest, entry_first))) == len(entry_rest)  # no duplicate entries
    for e in range(rows.shape[0]):
        j = entry_first[e]
        L[m0 * S0 + entry_rest[e], j * S0 : (j + 1) * S0] = rows[e]
    L[m0 * S0 :, m0 * S0 :] = np.tril(rest)
    np.testing.assert_allclose(np.triu(rest, 1), 0.0)
    np.testing.assert_allclose(L @ L.T, omega, rtol=1e-10, atol=1e-10 * np.abs(omega).max())
    np.testing.assert_allclose(L, np.linalg.cholesky(omega), rtol=1e-8, atol=1e-10)


def _dense_criterion(design, weights, theta, reml):
    """Bates et al. (2015), eqs. for the profiled deviance, by dense linear algebra."""
    X, y = design.X, np.asarray(design.response, dtype=float)
    Z, Lam = _dense_pieces(design, theta)
    keep = weights > 0
    X, y, ZL, w = X[keep], y[keep], (Z @ Lam)[keep], weights[keep]
    n, p = X.shape
    q = ZL.shape[1]
    W = w[:, None]
    A = ZL.T @ (W * ZL) + np.eye(q)
    C = ZL.T @ (W * X)
    # penalized least squares for [u; β]
    system = np.block([[A, C], [C.T, X.T @ (W * X)]])
    solution = np.linalg.solve(system, np.r_[ZL.T @ (w * y), X.T @ (w * y)])
    u, beta = solution[:q], solution[q:]
    resid = y - X @ beta - ZL @ u
    r2 = resid @ (w * resid) + u @ u
    logdet_z = np.linalg.slogdet(A)[1]
    logdet_x = np.linalg.slogdet(X.T @ (W * X) - C.T @ np.linalg.solve(A, C))[1]
    if reml:
        value = logdet_z + logdet_x + (n - p) * (1 + np.log(2 * np.pi * r2 / (n - p)))
    else:
        value = logdet_z + n * (1 + np.log(2 * np.pi * r2 / n))
    return value - np.sum(np.log(w)), logdet_z, logdet_x, r2


@pytest.mark.parametrize("name", NAMES)
def test_criterion_matches_dense_deviance(name):
    design, s, weights, theta, out = _computed(name)
    _, reml, ml, logdet_z, logdet_x, r2 = out
    for value, is_reml in ((reml, True), (ml, False)):
        expected, ez, ex, er2 = _dense_criterion(design, weights, theta, is_reml)
        np.testing.assert_allclose(value, expected, rtol=1e-10)
    np.testing.assert_allclose(logdet_z, ez, rtol=1e-10)
    np.testing.assert_allclose(logdet_x, ex, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(r2, er2, rtol=1e-10)


@pytest.mark.parametrize("formula", [
    "y ~ x + z", "y ~ 0 + z + x", "y ~ x + f", "y ~ x:z", "y ~ np.log(w) + x",
    "y ~ b + x", "y ~ x + I(z * 2)",
])
def test_large_numeric_designs_are_assembled_as_formulaic_would(formula, monkeypatch):
    """From DIRECT_ROWS rows, X of plain numeric columns is filled directly (formulaic's
    stack was most of a 10⁶-row GLM's design); everything else still goes to formulaic.
    Either way the matrix, its names and its spec (used for prediction) are formulaic's."""
    import glmmjax._model.design as design_module

    rng = np.random.default_rng(3)
    n = 300
    frame = pd.DataFrame({
        "y": rng.normal(size=n), "x": rng.normal(size=n), "z": rng.normal(size=n),
        "w": rng.uniform(1, 2, size=n), "f": rng.choice(["a", "b", "c"], size=n),
        "b": rng.random(n) < 0.5,
    })
    reference = build_design(formula, frame)
    monkeypatch.setattr(design_module, "DIRECT_ROWS", 1)
    monkeypatch.setattr(design_module, "_DIRECT_BLOCK", 64)  # several row blocks
    direct = build_design(formula, frame)
    np.testing.assert_array_equal(direct.X, reference.X)
    assert direct.X.flags.c_contiguous
    assert direct.fixef_names == reference.fixef_names
    newdata = frame.iloc[::7]
    np.testing.assert_array_equal(
        np.asarray(direct.x_spec.get_model_matrix(newdata)),
        np.asarray(reference.x_spec.get_model_matrix(newdata)))
