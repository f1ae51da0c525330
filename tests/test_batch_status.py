"""Every model of a batch says why it failed (issue 19, item 5): an unusable response,
an outer optimizer that stopped short, an inner Newton that did not reach the mode, a
Hessian that is not positive definite, a non-finite objective."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import glmmjax
from glmmjax._batching import fit_many as _batch
from glmmjax._engines.compiled.optimize import Status


def _data(levels=6, per_level=4):
    g = np.repeat(np.arange(levels), per_level)
    return pd.DataFrame({"g": [f"g{i}" for i in g],
                         "x": np.linspace(-1, 1, levels * per_level)})


def test_each_failure_has_its_reason():
    data = _data()
    design = _batch._design_for("~ x + (1 | g)", data, None, None)
    family = glmmjax.families.Poisson()
    reasons = ["", "", "", "", "", "a Poisson response must be a non-negative integer count",
               ""]
    usable = [0, 1, 2, 3, 4, 6]
    k = len(usable)
    beta_cov = np.tile(np.eye(2), (k, 1, 1))
    beta_cov[5] = np.nan
    out = dict(
        beta=np.ones((k, 2)), beta_cov=beta_cov,
        value=np.array([10.0, 10.0, 10.0, 10.0, np.nan, 10.0]), iterations=np.full(k, 5),
        params=np.ones((k, 1)),
        status=np.array([Status.CONVERGED, Status.MAX_ITERATIONS, Status.CONVERGED,
                         Status.CONVERGED, Status.CONVERGED, Status.CONVERGED]),
        inner_converged=np.array([True, True, False, True, True, True]),
        hessian_pd=np.array([True, True, True, False, True, False]),
    )
    setup = types.SimpleNamespace(has_dispersion=False)
    result = _batch._assemble(design, family, list(range(7)), reasons, usable, out, "Laplace",
                              8, 1, setup, None)
    status = list(result.models["status"])
    assert status[0] == "converged"
    assert status[1] == "reached the maximum number of iterations"
    assert status[2].startswith("the conditional modes (inner Newton) did not converge")
    assert status[3].startswith("Hessian not positive definite at the optimum")
    assert status[4] == "non-finite objective at the optimum"
    assert status[5] == reasons[5]
    assert status[6].startswith("non-finite Hessian at the optimum")
    assert list(result.converged) == [True] + [False] * 6
    assert np.isnan(result.fixef.iloc[5]).all()


def test_the_general_path_checks_its_inner_mode():
    # The general pipeline's inner Newton reports nothing; the batch checks its result:
    # the Newton decrement at the final mode is ~0, and large at any other point.
    from glmmjax._engines.compiled.glmm import make_setup, mode_decrement
    from glmmjax._engines.compiled.pirls import GLMMData, conditional_mode
    from glmmjax._precision import precision_scope

    with precision_scope("float64"):
        at_mode, elsewhere = _decrements(make_setup, mode_decrement, GLMMData, conditional_mode)
    tolerance = _batch._inner_tolerance(jnp.float64)
    assert at_mode < 1e-3 * tolerance
    assert elsewhere > 1e3 * tolerance


def _decrements(make_setup, mode_decrement, GLMMData, conditional_mode):
    data = _data()
    design = _batch._design_for("~ x + (1 | g)", data, None, None)
    setup = make_setup(design, glmmjax.families.Poisson(), 1, jnp.float64)
    y = jnp.asarray(np.random.default_rng(0).poisson(2.0, len(data)), jnp.float64)
    w = jnp.ones(len(data))
    params = jnp.array([0.7, 0.5, 0.3])  # θ, β
    n = len(data)
    inner = GLMMData(setup.outer, setup.X, jnp.zeros((n, 0)), y, w, setup.offset,
                     setup.family)

    @jax.jit
    def decrements(params):
        v = conditional_mode(params[:1], params[1:], jnp.ones(()), inner,
                             jnp.zeros(setup.outer.n_levels[0]))
        return (mode_decrement(params, v, y, w, setup),
                mode_decrement(params, v + 0.1, y, w, setup))

    return [float(d) for d in decrements(params)]


@pytest.mark.slow
def test_general_path_batches_have_finite_standard_errors_equal_to_single_fits(monkeypatch):
    # A batch of 8 random-slope GLMMs had a NaN Hessian (so no SEs, every model flagged)
    # with the forward-over-reverse Hessian; 2 models did not show it.
    rng = np.random.default_rng(1)
    levels, per_level, k = 20, 10, 8
    g = np.repeat(np.arange(levels), per_level)
    t = np.tile(np.arange(per_level), levels).astype(float)
    data = pd.DataFrame({"g": [f"g{i}" for i in g], "t": t})
    Y = np.empty((len(data), k))
    for j in range(k):
        b = rng.normal(0, [0.5, 0.1], (levels, 2))
        Y[:, j] = rng.poisson(np.exp(1.0 + 0.1 * t + b[g, 0] + b[g, 1] * t))
    # The general pipeline itself (this structure now takes the blocked path by default).
    monkeypatch.setattr("glmmjax._batching.fit_many.BLOCKED_PATH", False)
    monkeypatch.setattr("glmmjax._batching.fit_many.LOCKSTEP", False)
    batch = glmmjax.fit_many("~ t + (t | g)", data, Y, family="poisson", chunk_size=8)
    assert batch.converged.all(), batch.models["status"].tolist()
    for j in (0, 5):
        alone = glmmjax.glmer("y ~ t + (t | g)", data.assign(y=Y[:, j]), family="poisson")
        np.testing.assert_allclose(batch.fixef.iloc[j], alone.fixef, rtol=1e-6)
        np.testing.assert_allclose(batch.fixef_se.iloc[j], alone.fixef_se, rtol=1e-4)


def test_a_batch_whose_models_all_fail_at_once_reports_them():
    """Every model of a lockstep chunk failing in the same outer iteration (a Gamma GLMM
    with the inverse link on a response in units 10⁴ times larger: the batch starts in
    the response's units) raised a reshape error of an empty line search; now each model
    is flagged with its reason (or fitted), none lost."""
    data = glmmjax.datasets.load("sleepstudy")
    rng = np.random.default_rng(0)
    Y = data["Reaction"].to_numpy()[:, None] * 1e4 * rng.uniform(0.95, 1.05, (len(data), 3))
    batch = glmmjax.fit_many("~ Days + (1 | Subject)", data, Y, family="gamma")
    status = batch.models["status"].tolist()
    assert len(status) == 3
    for ok, reason in zip(batch.converged, status):
        assert ok or "non-finite" in reason
