"""The host (numpy/LAPACK) LMM engine against the traceable JAX one: criterion, gradient
and PLS solution at arbitrary θ, the whole fit, and the shared BFGS algorithm."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import glmmjax
from glmmjax._engines.compiled.lmm import (
    host_lmm_model,
    lmm_criterion,
    moment_theta,
    solve_pls,
)
from glmmjax._engines.compiled.optimize import Status, minimize, minimize_host
from glmmjax._engines.host import lmm as _host_lmm
from glmmjax._engines.seam import fit_lmm
from glmmjax._model.design import build_design
from glmmjax._model.structure import build_structure

CASES = [
    ("sleepstudy", "Reaction ~ Days + (Days | Subject)", None),
    ("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", True),
    ("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", False),
    ("pastes", "strength ~ 1 + (1 | batch/cask)", False),
    ("sleepstudy", "Reaction ~ Days + (Days | Subject) + (1 | Days)", False),
]


def _models(name, formula, dense_update, reml, weighted):
    design = build_design(formula, glmmjax.datasets.load(name), require_random=True)
    structure = build_structure(design.terms, design.X.shape[1] + 1, dense_update=dense_update)
    weights = (np.random.default_rng(2).uniform(0.5, 2.0, design.nobs) if weighted
               else design.weights)
    y = np.asarray(design.response, float)
    host = _host_lmm.host_model(structure, weights, design.X, y, reml)
    return design, structure, weights, y, host


@pytest.mark.parametrize("name, formula, dense_update", CASES)
@pytest.mark.parametrize("reml", [True, False])
def test_criterion_gradient_and_solution_equal_jax(name, formula, dense_update, reml):
    design, structure, weights, y, host = _models(name, formula, dense_update, reml,
                                                  weighted=name == "pastes")
    theta = np.abs(np.random.default_rng(0).normal(size=structure.n_theta)) + 0.3
    value, gradient, solution = _host_lmm.evaluate(theta, host)
    with jax.enable_x64(True):
        model = host_lmm_model(structure, weights, design.X, y, reml)
        (expected_value, expected_gradient), expected = jax.jit(
            lambda th, m: (jax.value_and_grad(lmm_criterion)(th, m), solve_pls(th, m)))(
            jnp.asarray(theta), model)
    np.testing.assert_allclose(value, float(expected_value), rtol=1e-12)
    np.testing.assert_allclose(gradient, np.asarray(expected_gradient), rtol=1e-9,
                               atol=1e-10 * np.max(np.abs(gradient)))
    for field in ("beta", "u_first", "u_rest", "r2", "logdet_z", "logdet_x", "fixef_factor"):
        np.testing.assert_allclose(getattr(solution, field), np.asarray(getattr(expected, field)),
                                   rtol=1e-9, atol=1e-10, err_msg=field)


def test_gradient_matches_finite_differences_off_the_diagonal():
    """A correlated term's off-diagonal θ entry, which the scalar cases don't exercise."""
    *_, host = _models("sleepstudy", "Reaction ~ Days + (Days | Subject)", None, True, False)
    theta = np.array([0.9, -0.2, 0.3])
    _, gradient, _ = _host_lmm.evaluate(theta, host)
    h = 1e-6
    for k in range(3):
        step = np.eye(3)[k] * h
        numeric = (_host_lmm.evaluate(theta + step, host, gradient=False)[0]
                   - _host_lmm.evaluate(theta - step, host, gradient=False)[0]) / (2 * h)
        np.testing.assert_allclose(gradient[k], numeric, rtol=1e-6, atol=1e-6)


def test_not_positive_definite_is_infinite_not_an_error():
    *_, host = _models("sleepstudy", "Reaction ~ Days + (Days | Subject)", None, True, False)
    value, gradient, solution = _host_lmm.evaluate(np.array([np.nan, 0.0, 1.0]), host)
    assert value == np.inf and solution is None and np.all(np.isnan(gradient))


@pytest.mark.parametrize("name, formula", [
    ("sleepstudy", "Reaction ~ Days + (Days | Subject)"),
    ("dyestuff2", "Yield ~ 1 + (1 | Batch)"),  # optimum on the boundary
])
def test_host_fit_equals_compiled_fit(name, formula):
    design = build_design(formula, glmmjax.datasets.load(name), require_random=True)
    structure = build_structure(design.terms, design.X.shape[1] + 1)
    y = np.asarray(design.response, float)
    theta0 = moment_theta(design.terms, design.X, y, design.weights)
    fits = {}
    with jax.enable_x64(True):
        for engine in ("host", "jax"):
            fits[engine] = fit_lmm(structure, design.weights, design.X, y, True, theta0,
                                   engine=engine)
    (sol_h, theta_h, pls_h, b_h), (sol_j, theta_j, pls_j, b_j) = fits["host"], fits["jax"]
    assert int(sol_h.status) == int(sol_j.status) == Status.CONVERGED
    np.testing.assert_allclose(float(pls_h.criterion), float(pls_j.criterion), rtol=1e-12)
    np.testing.assert_allclose(theta_h, np.asarray(theta_j), atol=1e-6)
    np.testing.assert_allclose(pls_h.beta, np.asarray(pls_j.beta), rtol=1e-6)
    for a, b in zip(b_h, b_j):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-5, atol=1e-6)
    if name == "dyestuff2":
        assert theta_h[0] == 0.0


def test_unknown_engine():
    design = build_design("Yield ~ 1 + (1 | Batch)", glmmjax.datasets.load("dyestuff"),
                          require_random=True)
    structure = build_structure(design.terms, 2)
    with pytest.raises(ValueError, match="engine must be"):
        fit_lmm(structure, design.weights, design.X, np.asarray(design.response, float), True,
                engine="gpu")


def _quartic(x):
    return 0.5 * x @ _A @ x - x.sum() + 0.1 * (x**4).sum()


_A = np.array([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]])


@pytest.mark.parametrize("options", [
    {},
    {"expensive": True, "xtol": 1e-7, "decrease_tol": 1e-14},
    {"max_iterations": 3},
])
def test_minimize_host_takes_the_compiled_steps(options):
    """One algorithm (``compiled.optimize._advance``) in both loops: same iterates (to the
    rounding of XLA's fused arithmetic), evaluation counts and status when both see the
    same values and gradients."""
    def host(x):
        return _quartic(x), _A @ x - 1.0 + 0.4 * x**3

    def traced(x):
        return jax.pure_callback(lambda v: np.float64(_quartic(np.asarray(v))),
                                 jax.ShapeDtypeStruct((), jnp.float64), x)

    @jax.custom_vjp
    def objective(x):
        return traced(x)

    def forward(x):
        gradient = jax.pure_callback(lambda v: host(np.asarray(v))[1],
                                     jax.ShapeDtypeStruct(x.shape, x.dtype), x)
        return traced(x), gradient

    objective.defvjp(forward, lambda g, ct: (ct * g,))
    with jax.enable_x64(True):
        compiled = jax.jit(lambda x0: minimize(objective, x0, gtol=1e-10, **options))(
            jnp.zeros(3))
    on_host = minimize_host(host, np.zeros(3), gtol=1e-10, **options)
    np.testing.assert_allclose(on_host.x, np.asarray(compiled.x), rtol=1e-12)
    assert int(on_host.n_evaluations) == int(compiled.n_evaluations)
    assert int(on_host.status) == int(compiled.status)


@pytest.mark.parametrize("name, formula, dense_update", [CASES[0], CASES[2], CASES[4]])
def test_conditional_covariances_equal_jax(name, formula, dense_update):
    from glmmjax._lmer import _conditional_blocks

    design, structure, weights, y, host = _models(name, formula, dense_update, True, False)
    theta = np.abs(np.random.default_rng(3).normal(size=structure.n_theta)) + 0.3
    blocks = _host_lmm.conditional_covariances(theta, host)
    with jax.enable_x64(True):
        model = host_lmm_model(structure, weights, design.X, y, True)
        expected = _conditional_blocks(model, jnp.asarray(theta))
    assert len(blocks) == len(expected) == structure.n_terms
    for a, b in zip(blocks, expected):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-10, atol=1e-13)


def test_lmer_engine_argument():
    data = glmmjax.datasets.load("sleepstudy")
    host = glmmjax.lmer("Reaction ~ Days + (Days | Subject)", data, engine="host")
    compiled = glmmjax.lmer("Reaction ~ Days + (Days | Subject)", data, engine="jax")
    np.testing.assert_allclose(host.deviance, compiled.deviance, rtol=1e-12)
    np.testing.assert_allclose(host.fixef, compiled.fixef, rtol=1e-7)
    assert (host.engine, compiled.engine) == ("host", "jax")
    for fit in (host, compiled):  # the optimizer summary: start, end, objective
        summary = fit.opt_summary
        assert summary.converged and summary.optimizer == f"BFGS ({fit.engine})"
        np.testing.assert_allclose(summary.final, fit.theta_values, rtol=1e-12)
        np.testing.assert_allclose(summary.objective, fit.criterion, rtol=1e-12)
        assert summary.initial.shape == summary.final.shape and summary.iterations > 0
    with pytest.raises(ValueError, match="engine must be"):
        glmmjax.lmer("Reaction ~ Days + (Days | Subject)", data, engine="cuda")
    # glmer hands a Gaussian identity-link model to lmer, with the user's engine.
    ml = glmmjax.glmer("Reaction ~ Days + (Days | Subject)", data, family="gaussian",
                       engine="jax")
    assert ml.engine == "jax" and ml.method == "ML"


@pytest.mark.parametrize("name, formula, reml", [
    ("sleepstudy", "Reaction ~ Days + (Days | Subject)", True),
    ("sleepstudy", "Reaction ~ Days + (Days | Subject)", False),
    # Crossed terms: 12 s of autodiff compilation, so slow (as test_ddf.py's penicillin
    # comparison with lmerTest); the fast suite keeps sleepstudy's REML and ML.
    pytest.param("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", True,
                 marks=pytest.mark.slow),
])
def test_satterthwaite_pieces_host_equal_autodiff(name, formula, reml):
    from glmmjax._inference.ddf import satterthwaite_pieces

    fit = glmmjax.lmer(formula, glmmjax.datasets.load(name), reml=reml)
    host = satterthwaite_pieces(fit, engine="host")
    exact = satterthwaite_pieces(fit, engine="jax")
    np.testing.assert_allclose(host.hessian, exact.hessian, rtol=1e-6,
                               atol=1e-7 * np.max(np.abs(exact.hessian)))
    np.testing.assert_allclose(host.jacobian, exact.jacobian, rtol=1e-6,
                               atol=1e-8 * np.max(np.abs(exact.jacobian)))
    np.testing.assert_allclose(host.vcov, exact.vcov, rtol=1e-10)
