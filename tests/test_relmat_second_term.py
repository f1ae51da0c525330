"""A dense known K beside a second random-effects term (``(1 | animal) + (1 | herd)``).

The K term is one group of q effects; with a second term it lands in the dense "rest"
of the factor, where the products over observations used to be formed as
(n, q, q) arrays: 93 GB at q = 2,500 for ``glmer`` and ``fit_many``. They are now
formed from the nonzeros (host engine) and by matmuls (compiled engine). Checked here:
every engine's cross-products against [Z D]'W[Z D] formed densely, the host products'
memory at a size where n·q² would show (tracemalloc), the compiled programs' largest
array (traced, not run), the leverages, and K = I against the plain model."""

from __future__ import annotations

import tracemalloc

import jax
import numpy as np
import pandas as pd
import pytest

import glmmjax as gj
from glmmjax._engines.compiled import cholesky as compiled_cholesky
from glmmjax._engines.compiled import products as compiled_products
from glmmjax._engines.host import glmm as host_glmm
from glmmjax._engines.host.products import host_cross_products
from glmmjax._model.design import build_design
from glmmjax._model.structure import build_structure, plain_structure


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _data(q=30, n=80, herds=5, seed=0):
    rng = np.random.default_rng(seed)
    G = rng.normal(size=(q, 2 * q))
    K = G @ G.T / (2 * q) + 0.1 * np.eye(q)
    names = [f"a{i:03d}" for i in range(q)]
    animal = rng.integers(0, q, n)
    herd = rng.integers(0, herds, n)
    x = rng.normal(size=n)
    eta = 0.3 * x + 0.5 * (np.linalg.cholesky(K) @ rng.normal(size=q))[animal] \
        + 0.5 * rng.normal(size=herds)[herd]
    data = pd.DataFrame({"animal": [names[i] for i in animal], "herd": herd.astype(str),
                         "x": x, "y": rng.binomial(1, 1 / (1 + np.exp(-eta)))})
    return data, pd.DataFrame(K, index=names, columns=names)


def _structure(q, n):
    data, K = _data(q=q, n=n)
    design = build_design("y ~ x + (1 | animal) + (1 | herd)", data, relmat={"animal": K})
    return design, build_structure(design.terms, design.X.shape[1])


def _dense_rest(s, weights, dense):
    """The rest block of [Z D]'W[Z D] from Z formed column by column."""
    n = weights.shape[0]
    Z = np.zeros((n, s.rest_size - s.n_dense))
    for t in range(1, s.n_terms):
        cols = s.offsets[t] + np.asarray(s.refs[t])[:, None] * s.sizes[t] + np.arange(s.sizes[t])
        Z[np.arange(n)[:, None], cols] += np.asarray(s.z[t])
    full = np.hstack([Z, dense])
    return full.T @ (full * weights[:, None])


def test_the_known_K_term_sits_in_the_rest_and_every_engine_forms_its_products():
    design, s = _structure(q=30, n=80)
    assert s.n_levels == (5, 1) and s.sizes == (1, 30)  # herd first, K's q effects after
    rng = np.random.default_rng(1)
    weights = rng.uniform(0.1, 2.0, 80)
    dense = np.asarray(design.X, dtype=np.float64)
    expected = _dense_rest(s, weights, dense)
    host = host_cross_products(s, weights, dense)
    reused = host_cross_products(plain_structure(s), weights, dense, reuse=True)
    compiled = compiled_cholesky.cross_products(s, weights, dense)
    by_column = compiled_products.cross_products(s, weights,
                                                 compiled_products.dense_layout(dense))
    for products in (host, reused, compiled, by_column):
        np.testing.assert_allclose(np.asarray(products.rest), expected, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(products.coupling[0]),
                                   np.asarray(host.coupling[0]), rtol=1e-12, atol=1e-12)


def test_host_products_and_leverages_need_no_n_q_squared_memory():
    # q = 300, n = 400: one (n, q, q) float array is 288 MB; the fix needs a few MB.
    design, s = _structure(q=300, n=400)
    s = plain_structure(s)
    weights = np.ones(400)
    dense = np.asarray(design.X, dtype=np.float64)
    tracemalloc.start()
    try:
        host_cross_products(s, weights, dense)
        host_cross_products(s, weights, dense, reuse=True)
        factors = [np.eye(1), 0.7 * s.structures[1].matrix]
        R = s.rest_size
        h = host_glmm._leverages(s, factors, np.ones((5, 1, 1)), np.zeros((s.entry_rest.size, 1)),
                                 np.eye(R))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40e6, f"peak {peak / 1e6:.0f} MB"
    # h_i = z_i'Λ Σ_rr Λ'z_i with Σ_rr = I: the squared norm of the row of ZΛ (plus the
    # herd term's 1·1·1), as the (n, q, q) gather computed it.
    a = s.z[1] @ factors[1]
    np.testing.assert_allclose(h, 1.0 + np.sum(a * a, axis=1), rtol=1e-12)


def test_identity_K_beside_a_second_term_is_the_plain_glmm():
    data, K = _data(q=30, n=120, seed=2)
    eye = pd.DataFrame(np.eye(30), index=K.index, columns=K.columns)
    formula = "y ~ x + (1 | animal) + (1 | herd)"
    known = gj.glmer(formula, data, family="binomial", relmat={"animal": eye})
    plain = gj.glmer(formula, data, family="binomial")
    np.testing.assert_allclose(known.deviance, plain.deviance, rtol=1e-9)
    np.testing.assert_allclose(known.fixef.to_numpy(), plain.fixef.to_numpy(), rtol=1e-5)
    for group in ("animal", "herd"):
        sd = [float(f.varcorr.loc[f.varcorr["group"] == group, "sdcor"].iloc[0])
              for f in (known, plain)]
        np.testing.assert_allclose(sd[0], sd[1], rtol=1e-5)


def _largest_intermediate(fun, *args) -> int:
    """The most elements of any array the traced program of ``fun`` forms (no memory
    is allocated: the program is only traced)."""
    closed = jax.make_jaxpr(fun)(*args)
    sizes = [0]

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            sizes.extend(int(np.prod(v.aval.shape)) for v in eqn.outvars)
            for param in eqn.params.values():
                inner = getattr(param, "jaxpr", None)
                if inner is not None:
                    visit(getattr(inner, "jaxpr", inner))

    visit(closed.jaxpr)
    return max(sizes)


def test_compiled_products_form_no_n_q_squared_array():
    # q = 300, n = 400: n·q² = 36 M elements (the old scatter of the rest); now the
    # largest is the rest itself, (q + p)², or Z's n·q.
    design, s = _structure(q=300, n=400)
    weights = jax.numpy.ones(400)
    dense = jax.numpy.asarray(design.X, dtype=jax.numpy.float64)
    layout = compiled_products.dense_layout(dense)
    bound = 2 * max(s.rest_size**2, 400 * 300)
    assert _largest_intermediate(
        lambda w: compiled_cholesky.cross_products(s, w, dense).rest, weights) <= bound
    assert _largest_intermediate(
        lambda w: compiled_products.cross_products(s, w, layout).rest, weights) <= bound
