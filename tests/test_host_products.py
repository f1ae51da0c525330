"""The numpy cross-products used by single ``lmer`` fits equal the traceable JAX ones
(random slopes, crossed and nested terms, prior weights)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import glmmjax
from glmmjax._engines.compiled.cholesky import cross_products
from glmmjax._engines.compiled.lmm import build_structure_for
from glmmjax._engines.host.products import host_cross_products
from glmmjax._model.design import build_design


@pytest.mark.parametrize("name, formula", [
    ("sleepstudy", "Reaction ~ Days + (Days | Subject)"),
    ("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
    ("pastes", "strength ~ 1 + (1 | batch/cask)"),
    ("sleepstudy", "Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)"),
])
def test_host_cross_products_equal_jax(name, formula):
    design = build_design(formula, glmmjax.datasets.load(name), require_random=True)
    structure = build_structure_for(design, design.X.shape[1] + 1)
    weights = np.random.default_rng(1).uniform(0.5, 2.0, design.nobs)
    dense = np.concatenate([design.X, np.asarray(design.response, float)[:, None]], axis=1)
    host = host_cross_products(structure, weights, dense)
    with jax.enable_x64(True):
        traced = cross_products(structure, jnp.asarray(weights), jnp.asarray(dense))
    host_leaves, traced_leaves = jax.tree_util.tree_leaves(host), jax.tree_util.tree_leaves(traced)
    assert len(host_leaves) == len(traced_leaves)
    for a, b in zip(host_leaves, traced_leaves):
        b = np.asarray(b)
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-12 * np.max(np.abs(b)))


@pytest.mark.parametrize("name, formula", [
    ("sleepstudy", "Reaction ~ Days + (Days | Subject)"),
    ("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
    ("pastes", "strength ~ 1 + (1 | batch/cask)"),
])
def test_reused_products_equal_the_direct_ones(name, formula):
    """The host GLMM's kept pattern of nonzero products (``reuse=True``) gives the direct
    path's numbers exactly, for new weights at every call (a zero weight included)."""
    design = build_design(formula, glmmjax.datasets.load(name), require_random=True)
    structure = build_structure_for(design, design.X.shape[1] + 1)
    dense = np.concatenate([design.X, np.asarray(design.response, float)[:, None]], axis=1)
    dense[::7, -1] = 0.0  # zeros in a column are left out of the pattern
    rng = np.random.default_rng(2)
    for _ in range(3):
        weights = rng.uniform(0.5, 2.0, design.nobs)
        weights[::5] = 0.0
        direct = host_cross_products(structure, weights, dense)
        reused = host_cross_products(structure, weights, dense, reuse=True)
        for a, b in zip(jax.tree_util.tree_leaves(direct), jax.tree_util.tree_leaves(reused)):
            assert a.shape == b.shape
            np.testing.assert_array_equal(a, b)
