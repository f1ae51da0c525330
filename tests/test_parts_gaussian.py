"""The exact Gaussian marginal likelihood of glmmjax._engines.host.parts_gaussian (an
observation-level random effect folded into the residual variance) against the Laplace
route it replaces (exact for a Gaussian identity-link model), and its gradient against
finite differences."""

import numpy as np
import pandas as pd
import pytest

import glmmjax
from glmmjax import families as F
from glmmjax._engines.host import parts_gaussian
from glmmjax._engines.host.parts import HostParts
from glmmjax._model.parts_design import build_parts, check_parts
from glmmjax._parts_fit import checked_parts_response, parts_data


def _data(seed=0, n=90):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 9, size=n)
    x = rng.normal(size=n)
    y = 1.0 + 0.5 * x + rng.normal(size=9)[g] + 0.7 * rng.normal(size=n) \
        + 0.3 * rng.normal(size=n) * np.exp(0.3 * x)
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{k}" for k in g],
                         "obs": [f"o{i}" for i in range(n)],
                         "w": rng.uniform(0.5, 2.0, size=n)})


def _model(formula, data, dispformula, weights=None):
    family = F.Gaussian()
    zi, disp = check_parts(family, None, dispformula)
    parts = build_parts(formula, data, family, zi, disp, weights=weights)
    y, w, _ = checked_parts_response(family, parts)
    data_ = parts_data(parts, family, y, w)
    obs = parts_gaussian.observation_level(parts.cond.terms, len(y))
    return data_, obs, parts, w


CASES = [
    ("y ~ x + (1 | g) + (1 | obs)", "~x", None),
    ("y ~ x + (1 | g) + (1 | obs)", "~x", "w"),
    ("y ~ x + (1 + x | g) + (1 | obs)", "~1", None),
    ("y ~ x + (1 | obs)", "~x", "w"),
    ("y ~ x + (1 | g) + (0 + x | obs)", "~x", None),
]


@pytest.mark.parametrize("formula, dispformula, weights", CASES)
def test_closed_form_equals_laplace_and_its_gradient(formula, dispformula, weights):
    data = _data()
    data_, obs, parts, w = _model(formula, data, dispformula, weights)
    assert any(obs) and parts_gaussian.applies(F.Gaussian(), parts, w, reml=False)
    model = parts_gaussian.GaussianParts(data_, obs)
    laplace = HostParts(data_)
    rng = np.random.default_rng(1)
    n_theta, p = model.n_theta, model.p
    for _ in range(3):
        params = np.concatenate([rng.uniform(0.3, 1.2, n_theta), rng.normal(size=p),
                                 rng.normal(-0.5, 0.3, model.p_disp)])
        split = params[:n_theta], params[n_theta : n_theta + p], params[n_theta + p:]
        value, grad = model.value_grad(*split)
        want, want_grad, _ = laplace.value_grad(params, np.zeros(data_.q))
        np.testing.assert_allclose(value, want, rtol=1e-10)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-7)
        # And against central differences of the value.
        for j in range(params.size):
            step = 1e-5
            up, down = params.copy(), params.copy()
            up[j] += step
            down[j] -= step
            value_at = lambda x: model.value_grad(  # noqa: E731
                x[:n_theta], x[n_theta : n_theta + p], x[n_theta + p:])[0]
            fd = (value_at(up) - value_at(down)) / (2 * step)
            np.testing.assert_allclose(grad[j], fd, rtol=1e-5, atol=1e-5)


def test_posterior_equals_laplace_mode_and_covariance():
    data = _data(2)
    data_, obs, _, _ = _model("y ~ x + (1 | g) + (1 | obs)", data, "~x", "w")
    model = parts_gaussian.GaussianParts(data_, obs)
    laplace = HostParts(data_)
    params = np.array([0.8, 0.5, 1.0, 0.4, -0.7, 0.2])
    u, cov = model.posterior(params[:2], params[2:4], params[4:])
    v, _ = laplace.mode(params, np.zeros(data_.q))
    np.testing.assert_allclose(u, v, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(cov, laplace.re_covariance(params, v), rtol=1e-8, atol=1e-12)


def test_fit_agrees_with_the_laplace_route():
    """The same optimum and SEs as the Laplace route (engine="host" without the closed
    form). (An observation-level intercept with a dispersion model that has an intercept
    too would not be identified: only their sum is.)"""
    data = _data(3)
    formula = "y ~ x + (1 | g) + (0 + x | obs)"
    fit = glmmjax.glmer(formula, data, family="gaussian", dispformula="~1", weights="w")
    assert fit.converged and fit.convergence.n_evaluations < 40
    data_, obs, _, _ = _model(formula, data, "~1", "w")
    from glmmjax._engines.host.parts import fit as laplace_fit
    from glmmjax._engines.host.parts import start_values

    out = laplace_fit(start_values(data_), data_)
    np.testing.assert_allclose(fit.criterion, out["value"], rtol=1e-9)
    np.testing.assert_allclose(fit.params, out["params"], rtol=2e-4, atol=2e-5)
    se = np.sqrt(np.diagonal(2.0 * np.linalg.inv(0.5 * (out["hessian"] + out["hessian"].T))))
    np.testing.assert_allclose(np.sqrt(np.diagonal(fit.params_cov)), se, rtol=1e-3)
