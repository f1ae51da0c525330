"""The blocked batch path (glmmjax._batching.blocked): one vector random-effects term
or a family with a dispersion, per-model Newton. Each model of a batch equals its single
glmer fit; missing responses are rows of weight 0 (issue 19)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import rel_close

import glmmjax
import glmmjax._batching.fit_many as batch_module


@pytest.fixture(autouse=True)
def compiled_paths(monkeypatch):
    # These tests cover the compiled batch paths (float32, accelerators); on the CPU in
    # float64 fit_many takes the lockstep engine, tested in test_batch_lockstep.py.
    monkeypatch.setattr(batch_module, "LOCKSTEP", False)


def slope_data(n_groups=12, per_group=10, seed=3):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), per_group)
    x = rng.normal(size=groups.size)
    return pd.DataFrame({"x": x, "g": pd.Categorical(groups)}), rng


def nb2_responses(data, rng, k):
    g = data["g"].cat.codes.to_numpy()
    m = g.max() + 1
    b0, b1 = rng.normal(0, 0.5, (m, k)), rng.normal(0, 0.3, (m, k))
    mu = np.exp(1.0 + 0.4 * data["x"].to_numpy()[:, None] + b0[g] + b1[g] * data["x"].to_numpy()[:, None])
    size = rng.uniform(1.0, 5.0, k)
    return rng.poisson(rng.gamma(size, mu / size)).astype(float)


def assert_equals_alone(batch, k, formula, data, y, family):
    alone = glmmjax.glmer(formula, data.assign(y=y), family=family)
    # 1e-6 relative; coefficients near zero on an absolute 1e-6 (a flat optimum: criteria
    # equal to 1e-12 leave β free by ~1e-7 in the single fit's BFGS, gtol 1e-6).
    rel_close(batch.fixef.iloc[k].to_numpy(), alone.fixef.to_numpy(), 1e-6, atol=1e-6)
    rel_close(batch.fixef_se.iloc[k].to_numpy(), alone.fixef_se.to_numpy(), 1e-5)
    assert abs(batch.models["criterion"][k] - alone.criterion) <= 1e-8 * abs(alone.criterion)
    assert batch.models["converged"][k]
    return alone


@pytest.mark.slow
def test_nb2_random_slopes_equal_single_fits_and_missing_rows_are_weight_zero():
    data, rng = slope_data()
    Y = nb2_responses(data, rng, 4)
    Y[[3, 17, 40], 1] = np.nan  # model 1: three missing samples
    Y[data["g"].cat.codes == 5, 2] = np.nan  # model 2: a whole group missing
    batch = glmmjax.fit_many("~ x + (x | g)", data, Y, family="nbinom2", chunk_size=4)
    assert batch.method == "Laplace"
    for k in range(4):
        keep = ~np.isnan(Y[:, k])
        alone = assert_equals_alone(batch, k, "y ~ x + (x | g)", data[keep], Y[keep, k],
                                    "nbinom2")
        rel_close(batch.models["dispersion"][k], alone.dispersion, 1e-5)
    assert batch.converged.all()


@pytest.mark.slow
def test_blocked_path_equals_the_general_pipeline_poisson_slope():
    data, rng = slope_data(seed=5)
    g = data["g"].cat.codes.to_numpy()
    x = data["x"].to_numpy()
    b0, b1 = rng.normal(0, 0.6, (12, 3)), rng.normal(0, 0.4, (12, 3))
    Y = rng.poisson(np.exp(0.5 + 0.3 * x[:, None] + b0[g] + b1[g] * x[:, None])).astype(float)
    fast = glmmjax.fit_many("~ x + (x | g)", data, Y, family="poisson", chunk_size=3)
    batch_module.BLOCKED_PATH = False
    try:
        general = glmmjax.fit_many("~ x + (x | g)", data, Y, family="poisson", chunk_size=3)
    finally:
        batch_module.BLOCKED_PATH = True
    rel_close(fast.fixef.to_numpy(), general.fixef.to_numpy(), 1e-6)
    rel_close(fast.models["criterion"].to_numpy(), general.models["criterion"].to_numpy(), 1e-9)
    assert fast.converged.all() and general.converged.all()
    for k in range(3):
        assert_equals_alone(fast, k, "y ~ x + (x | g)", data, Y[:, k], "poisson")


def test_missing_responses_become_weight_zero_rows():
    Y = np.array([[1.0, np.nan], [2.0, 3.0], [np.nan, 4.0]])
    filled, W = batch_module._missing_as_weight_zero(Y, np.array([1.0, 2.0, 1.0]))
    assert np.isfinite(filled).all()
    np.testing.assert_array_equal(W, [[1.0, 0.0], [2.0, 2.0], [0.0, 1.0]])
    np.testing.assert_array_equal(filled[[0, 1], 0], [1.0, 2.0])
    assert filled[2, 0] in (1.0, 2.0) and filled[0, 1] in (3.0, 4.0)
    same, none = batch_module._missing_as_weight_zero(np.ones((2, 2)), np.ones(2))
    assert none is None
    reasons = batch_module._check_models(
        np.array([[1.0, np.nan, np.inf], [0.0, np.nan, 1.0], [1.0, 1.0, 0.0]]),
        glmmjax.families.Binomial(), np.arange(3), np.ones(3), n_fixef=2)
    assert reasons[0] == ""
    assert reasons[1].startswith("only 1 non-missing")
    assert reasons[2].startswith("non-finite response in rows [0]")


def test_blocked_path_applies_to_vector_terms_and_dispersion_families():
    from glmmjax._batching.blocked import applies
    from glmmjax._batching.fit_many import _design_for
    from glmmjax._batching.scalar import applies as scalar_applies
    from glmmjax._families.base import get_family

    data, _ = slope_data(n_groups=4, per_group=3)
    slope = _design_for("~ x + (x | g)", data, None, None)
    intercept = _design_for("~ x + (1 | g)", data, None, None)
    nb2, binomial = get_family("nbinom2"), get_family("binomial")
    assert applies(slope, nb2, 1) and applies(slope, binomial, 1)
    assert not applies(slope, binomial, 3)  # AGQ: the general pipeline
    assert applies(intercept, nb2, 1) and not scalar_applies(intercept, nb2, 1)
    diag = _design_for("~ x + diag(x | g)", data, None, None)
    assert not applies(diag, nb2, 1)


@pytest.mark.slow
def test_crossed_logistic_terms_equal_single_fits():
    rng = np.random.default_rng(11)
    a, b = (x.ravel() for x in np.meshgrid(np.arange(10), np.arange(6), indexing="ij"))
    a, b = np.repeat(a, 2), np.repeat(b, 2)
    x = rng.normal(size=a.size)
    data = pd.DataFrame({"x": x, "a": pd.Categorical(a), "b": pd.Categorical(b)})
    eta = -0.3 + 0.6 * x[:, None] + rng.normal(0, 0.8, (10, 3))[a] + rng.normal(0, 0.5, (6, 3))[b]
    Y = (rng.uniform(size=eta.shape) < 1 / (1 + np.exp(-eta))).astype(float)
    Y[[0, 7], 2] = np.nan
    # A fourth model completely separated by x: flagged, and no harm to the others.
    Y = np.column_stack([Y, (x > 0).astype(float)])
    batch = glmmjax.fit_many("~ x + (1 | a) + (1 | b)", data, Y, family="binomial",
                             chunk_size=3)
    assert not batch.converged[3] and batch.models["status"][3] != "converged"
    for k in range(3):
        keep = ~np.isnan(Y[:, k])
        assert_equals_alone(batch, k, "y ~ x + (1 | a) + (1 | b)", data[keep], Y[keep, k],
                            "binomial")


def test_dense_cholesky_and_its_derivatives():
    import jax
    import jax.numpy as jnp

    from glmmjax._batching.crossed import dense_cholesky, inv_spd, log_det_spd

    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        A = rng.normal(size=(5, 5))
        S = jnp.asarray(A @ A.T + 5 * np.eye(5))
        np.testing.assert_allclose(dense_cholesky(S), np.linalg.cholesky(np.asarray(S)),
                                   rtol=1e-12)
        np.testing.assert_allclose(inv_spd(S), np.linalg.inv(np.asarray(S)), rtol=1e-10)
        dS = jnp.asarray(rng.normal(size=(5, 5)))
        dS = dS + dS.T
        f = lambda t: log_det_spd(S + t * dS)  # noqa: E731
        second = jax.jacfwd(jax.grad(f))(0.0)
        X = np.linalg.inv(np.asarray(S))
        np.testing.assert_allclose(jax.grad(f)(0.0), np.trace(X @ dS), rtol=1e-10)
        np.testing.assert_allclose(second, -np.trace(X @ dS @ X @ dS), rtol=1e-10)


@pytest.mark.slow
def test_missing_responses_on_the_scalar_path_equal_single_fits():
    data, rng = slope_data(n_groups=10, per_group=8, seed=7)
    g = data["g"].cat.codes.to_numpy()
    eta = -0.2 + 0.5 * data["x"].to_numpy()[:, None] + rng.normal(0, 0.7, (10, 3))[g]
    Y = (rng.uniform(size=eta.shape) < 1 / (1 + np.exp(-eta))).astype(float)
    Y[[2, 11, 30, 31], 1] = np.nan
    batch = glmmjax.fit_many("~ x + (1 | g)", data, Y, family="binomial", chunk_size=3)
    for k in range(3):
        keep = ~np.isnan(Y[:, k])
        assert_equals_alone(batch, k, "y ~ x + (1 | g)", data[keep], Y[keep, k], "binomial")


@pytest.mark.slow
def test_gamma_random_intercepts_take_the_blocked_path_and_equal_single_fits():
    # A dispersion family with one scalar term: the scalar path does not apply.
    rng = np.random.default_rng(4)
    g = np.repeat(np.arange(10), 8)
    x = rng.normal(size=80)
    data = pd.DataFrame({"x": x, "g": pd.Categorical(g)})
    Y = rng.gamma(4.0, np.exp(1 + 0.3 * x[:, None] + rng.normal(0, 0.4, (10, 2))[g]) / 4.0)
    batch = glmmjax.fit_many("~ x + (1 | g)", data, Y, family="Gamma", chunk_size=2)
    for k in range(2):
        alone = assert_equals_alone(batch, k, "y ~ x + (1 | g)", data, Y[:, k], "Gamma")
        rel_close(batch.models["dispersion"][k], alone.dispersion, 1e-6)
