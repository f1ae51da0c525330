"""The profiled LMM criterion as a JAX function of θ: exact gradient against central
finite differences, a finite symmetric ``jax.hessian`` (that also agrees with second
differences), and jit equal to eager, for REML and ML on sleepstudy (one term, S = 2)
and penicillin (two crossed terms).

Per dataset, one compiled program gives values, gradients, Hessians and the criterion at
every finite-difference point (one vmapped call) for both criteria. Penicillin and the
eager evaluations are marked slow (compile time).
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import glmmjax
from glmmjax._engines.compiled.lmm import build_structure_for, lmm_criterion, lmm_model_from_arrays
from glmmjax._model.design import build_design

# θ away from the optimum (non-zero gradient), with a negative off-diagonal entry.
CASES = {
    "sleepstudy": ("Reaction ~ Days + (Days | Subject)", [0.8, -0.1, 0.3]),
    "penicillin": ("diameter ~ 1 + (1 | plate) + (1 | sample)", [1.1, 2.0]),
}
STEP = 1e-5  # central differences of the criterion (gradient)
STEP2 = 1e-3  # second differences (Hessian)


def _arrays(name):
    formula, theta = CASES[name]
    design = build_design(formula, glmmjax.datasets.load(name), require_random=True)
    structure = build_structure_for(design, design.X.shape[1] + 1)
    y = np.asarray(design.response, dtype=float)
    return structure, design.weights, design.X, y, np.asarray(theta)


def _models(structure, weights, X, y):
    return {
        reml: lmm_model_from_arrays(structure, weights, X, y, reml) for reml in (True, False)
    }


def _fd_points(k: int):
    """Shifts for central first differences, then second differences (i <= j)."""
    eye = np.eye(k)
    first = [STEP * e for e in eye] + [-STEP * e for e in eye]
    second = []
    for i, j in itertools.combinations_with_replacement(range(k), 2):
        for si, sj in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
            second.append(STEP2 * (si * eye[i] + sj * eye[j]))
    return np.array(first + second)


def _fd_estimates(values, k):
    grad = (values[:k] - values[k : 2 * k]) / (2 * STEP)
    hessian = np.zeros((k, k))
    rest = values[2 * k :].reshape(-1, 4)
    for row, (i, j) in zip(rest, itertools.combinations_with_replacement(range(k), 2)):
        pp, pm, mp, mm = row
        # (f(+i+j) - f(+i-j) - f(-i+j) + f(-i-j)) / 4h², which for i == j is
        # (f(+2i) - 2 f(θ) + f(-2i)) / 4h²
        hessian[i, j] = hessian[j, i] = (pp - pm - mp + mm) / (4 * STEP2**2)
    return grad, hessian


@functools.cache
def _compiled(name):
    """Value, gradient, Hessian and the criterion at every finite-difference point, for
    both criteria, as one program. XLA's backend optimizations are turned off for it:
    they halve the compile time and do not change the values."""
    structure, weights, X, y, theta = _arrays(name)
    k = theta.size

    def run(weights, X, y, theta, shifts):
        out = {}
        for reml, model in _models(structure, weights, X, y).items():
            f = functools.partial(lmm_criterion, model=model)
            value, grad = jax.value_and_grad(f)(theta)
            out[reml] = {
                "value": value,
                "grad": grad,
                "hessian": jax.hessian(f)(theta),
                "points": jax.vmap(f)(theta + shifts),
            }
        return out

    with jax.enable_x64(True):
        args = [jnp.asarray(a) for a in (weights, X, y, theta, _fd_points(k))]
        compiled = jax.jit(run).lower(*args).compile(
            compiler_options={"xla_backend_optimization_level": 0}
        )
        out = jax.tree_util.tree_map(np.asarray, compiled(*args))
    for result in out.values():
        result["fd_grad"], result["fd_hessian"] = _fd_estimates(result["points"], k)
    return out


# Penicillin's program and any eager evaluation take several seconds each to compile.
NAMES = ["sleepstudy", pytest.param("penicillin", marks=pytest.mark.slow)]


@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
@pytest.mark.parametrize("name", NAMES)
def test_gradient_matches_finite_differences(name, reml):
    out = _compiled(name)[reml]
    assert np.all(np.abs(out["grad"]) > 1e-2)  # a point where the check means something
    np.testing.assert_allclose(out["grad"], out["fd_grad"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
@pytest.mark.parametrize("name", NAMES)
def test_hessian_is_finite_and_symmetric(name, reml):
    hessian = _compiled(name)[reml]["hessian"]
    k = len(CASES[name][1])
    assert hessian.shape == (k, k)
    assert np.all(np.isfinite(hessian))
    np.testing.assert_allclose(hessian, hessian.T, rtol=1e-10, atol=1e-10)
    scale = np.abs(hessian).max()
    fd = _compiled(name)[reml]["fd_hessian"]
    np.testing.assert_allclose(hessian, fd, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_jit_equals_eager(name):
    """Op-by-op evaluation compiles every primitive anew: ~100 small compiles, several
    seconds per dataset, hence slow."""
    structure, weights, X, y, theta = _arrays(name)
    with jax.enable_x64(True):
        models = _models(structure, jnp.asarray(weights), jnp.asarray(X), jnp.asarray(y))
        for reml, model in models.items():
            eager = lmm_criterion(jnp.asarray(theta), model)
            np.testing.assert_allclose(
                float(eager), _compiled(name)[reml]["value"], rtol=1e-13
            )


@pytest.mark.slow  # ~9 s idle; data gradients (y, X, weights, offset) stay fast in test_differentiable.py
def test_derivative_in_the_response_matches_finite_differences():
    """The criterion's rule also handles tangents in the data (plain autodiff there)."""
    structure, weights, X, y, theta = _arrays("sleepstudy")
    with jax.enable_x64(True):
        def criterion(y):
            model = lmm_model_from_arrays(structure, jnp.asarray(weights), jnp.asarray(X), y,
                                          True)
            return lmm_criterion(jnp.asarray(theta), model)

        y = jnp.asarray(y)
        direction = jnp.linspace(-1.0, 1.0, y.shape[0])
        _, tangent = jax.jvp(criterion, (y,), (direction,))
        h = 1e-4
        central = (criterion(y + h * direction) - criterion(y - h * direction)) / (2 * h)
        np.testing.assert_allclose(float(tangent), float(central), rtol=1e-6)
        np.testing.assert_allclose(float(jax.grad(criterion)(y) @ direction), float(tangent),
                                   rtol=1e-10)
