"""The differentiable API (issue 14): MixedModel.from_arrays, Params, log_likelihood and
glmmjax.solve, against central finite differences, refits and lmer/glmer.

Everything runs in float64 inside ``jax.enable_x64(True)``. Models are small and each
compiled function is built once per module (``_jit``), so the fast tests compile a few
programs only; fits of GLMMs (their compiled pipeline) are marked slow.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import glmmjax
from glmmjax import DataError, MixedModel, Params

SLEEP = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


@functools.cache
def _jit(name):
    """One compiled function per name for the whole module."""
    functions = {
        "loglik": lambda m, p: m.log_likelihood(p),
        "grad_params": jax.grad(lambda p, m: m.log_likelihood(p)),
        "grad_model": eqx.filter_grad(lambda m, p: m.log_likelihood(p)),
        "solve": lambda m: glmmjax.solve(m),
        "solve_info": lambda m: glmmjax.solve(m, info=True),
    }
    return eqx.filter_jit(functions[name])


def _simulated(family: str, n: int = 48, m: int = 6, seed: int = 0):
    """A GLMM with a correlated random slope (one term) and an offset."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(m), n // m)
    x = rng.normal(size=n)
    X = np.column_stack([np.ones(n), x])
    b = rng.normal(size=(m, 2)) * [0.6, 0.3]
    offset = 0.1 * rng.normal(size=n)
    eta = 0.2 + 0.5 * x + np.sum(X * b[g], axis=1) + offset
    weights = np.ones(n)
    if family == "binomial":
        weights = rng.integers(1, 6, size=n).astype(float)
        y = rng.binomial(weights.astype(int), 1 / (1 + np.exp(-eta))) / weights
    elif family == "poisson":
        y = rng.poisson(np.exp(eta)).astype(float)
    elif family == "negative_binomial":
        mu = np.exp(eta)
        y = rng.negative_binomial(3.0, 3.0 / (3.0 + mu)).astype(float)
    else:
        raise ValueError(family)
    return MixedModel.from_arrays(X, y, [(g, X)], family=family, weights=weights,
                                  offset=offset)


def _sleepstudy(reml=True):
    return MixedModel.from_formula(SLEEP, glmmjax.datasets.load("sleepstudy"), reml=reml)


def _perturbed_params(model, seed=1):
    params = model.init_params()
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda a: a + 0.1 * jnp.asarray(rng.normal(size=a.shape)), params)


def _central(f, x, index, step):
    e = np.zeros(x.shape)
    e[index] = step
    return (f(x + e) - f(x - e)) / (2 * step)


def _check_param_gradient(model, params, rtol=1e-6):
    grad = _jit("grad_params")(params, model)
    for name in ("beta", "theta", "log_dispersion"):
        value = np.asarray(getattr(params, name))
        for i in range(value.shape[0]):
            def f(v, name=name):
                return float(_jit("loglik")(model, eqx.tree_at(
                    lambda p: getattr(p, name), params, jnp.asarray(v))))
            fd = _central(f, value, i, 1e-5 * max(1.0, abs(value[i])))
            np.testing.assert_allclose(getattr(grad, name)[i], fd, rtol=rtol, atol=1e-7)


def _check_data_gradient(model, params, leaves=("y", "offset", "weights", "X"), rows=(0, 5),
                         rtol=1e-6):
    grad = _jit("grad_model")(model, params)
    for leaf in leaves:
        value = np.asarray(getattr(model, leaf))
        for row in rows:
            index = (row, 1) if value.ndim == 2 else row

            def f(v, leaf=leaf):
                changed = eqx.tree_at(lambda m: getattr(m, leaf), model, jnp.asarray(v))
                return float(_jit("loglik")(changed, params))

            fd = _central(f, value, index, 1e-5 * max(1.0, abs(value[index])))
            np.testing.assert_allclose(getattr(grad, leaf)[index], fd, rtol=rtol, atol=1e-7,
                                       err_msg=f"d loglik / d {leaf}{index}")


# ---- LMM ---------------------------------------------------------------------------

@pytest.mark.parametrize("reml", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_lmm_solve_matches_lmer(reml):
    model = _sleepstudy(reml)
    params, info = _jit("solve_info")(model)
    fit = glmmjax.lmer(SLEEP, glmmjax.datasets.load("sleepstudy"), reml=reml)
    assert bool(info.converged)
    np.testing.assert_allclose(float(_jit("loglik")(model, params)), fit.loglik,
                               rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(params.beta, fit.fixef.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(params.theta, fit.theta, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(params.sigma[0]), fit.sigma, rtol=1e-6)


@pytest.mark.parametrize("reml", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_lmm_gradients_against_finite_differences(reml):
    model = _sleepstudy(reml)
    params = _perturbed_params(model)
    params = eqx.tree_at(lambda p: p.log_dispersion, params, jnp.log(jnp.array([650.0])))
    _check_param_gradient(model, params)
    _check_data_gradient(model, params)


@pytest.mark.slow  # ~8 s idle; weight gradients vs finite differences stay fast
def test_lmm_weights_jacobian_matches_refits():
    model = _sleepstudy()
    w0 = jnp.asarray(model.weights)

    def beta_of(w):
        return glmmjax.solve(eqx.tree_at(lambda m: m.weights, model, w)).beta

    jacobian = jax.jit(jax.jacobian(beta_of))(w0)
    assert jacobian.shape == (2, w0.shape[0])
    solve = _jit("solve")
    for row in (0, 37, 101):
        step = 1e-4
        e = np.zeros(w0.shape[0])
        e[row] = step
        up = solve(eqx.tree_at(lambda m: m.weights, model, w0 + e)).beta
        down = solve(eqx.tree_at(lambda m: m.weights, model, w0 - e)).beta
        np.testing.assert_allclose(jacobian[:, row], (up - down) / (2 * step), rtol=1e-5,
                                   atol=1e-8)


@pytest.mark.slow
def test_lmm_solve_under_vmap_equals_single_solves():
    model = _sleepstudy()
    key = jax.random.PRNGKey(0)
    Y = jnp.asarray(model.y)[None] + 20.0 * jax.random.normal(key, (8, model.y.shape[0]))
    batched = jax.jit(jax.vmap(
        lambda y: glmmjax.solve(eqx.tree_at(lambda m: m.y, model, y))))(Y)
    solve = _jit("solve")
    for k in (0, 5):
        single = solve(eqx.tree_at(lambda m: m.y, model, Y[k]))
        np.testing.assert_allclose(batched.beta[k], single.beta, rtol=1e-8)
        np.testing.assert_allclose(batched.theta[k], single.theta, rtol=1e-6, atol=1e-8)


def test_lmm_loglik_jit_equals_eager():
    model = _sleepstudy()
    params = _perturbed_params(model)
    eager = model.log_likelihood(params)
    np.testing.assert_allclose(_jit("loglik")(model, params), eager, rtol=1e-12)


# ---- GLMM log-likelihood -------------------------------------------------------------

@pytest.mark.parametrize("family", [
    "binomial",
    pytest.param("poisson", marks=pytest.mark.slow),
    pytest.param("negative_binomial", marks=pytest.mark.slow),
])
def test_glmm_gradients_against_finite_differences(family):
    model = _simulated(family)
    params = _perturbed_params(model)
    _check_param_gradient(model, params)
    # The binomial's weights are its trials (integers): its data leaves are y, offset, X.
    leaves = ("offset", "X", "y") if family == "binomial" else ("y", "offset", "weights", "X")
    _check_data_gradient(model, params, leaves=leaves)


def test_glmm_offset_gradient_is_total_derivative():
    """The regression behind issue 14: d(−2 log L)/d offset missed the mode's change."""
    data = glmmjax.datasets.load("cbpp")
    model = MixedModel.from_formula(
        "cbind(incidence, size - incidence) ~ period + (1 | herd)", data, family="binomial")
    params = Params(beta=jnp.array([-1.4, -1.0, -1.1, -1.6]), theta=jnp.array([0.64]),
                    log_dispersion=jnp.zeros(0))
    _check_data_gradient(model, params, leaves=("offset",), rows=(0, 20))


@pytest.mark.slow
def test_glmm_loglik_under_vmap_equals_loop():
    model = _simulated("poisson")
    params = _perturbed_params(model)
    rng = np.random.default_rng(3)
    Y = jnp.asarray(rng.poisson(2.0, size=(8, model.y.shape[0])).astype(float))
    batched = jax.jit(jax.vmap(
        lambda y: eqx.tree_at(lambda m: m.y, model, y).log_likelihood(params)))(Y)
    for k in (0, 7):
        single = _jit("loglik")(eqx.tree_at(lambda m: m.y, model, Y[k]), params)
        np.testing.assert_allclose(batched[k], single, rtol=1e-10)


@pytest.mark.slow
def test_agq_loglik_reduces_to_laplace_with_one_node_and_differs_with_more():
    laplace = _simulated("poisson")
    params = _perturbed_params(laplace)
    agq = MixedModel.from_arrays(laplace.X, laplace.y, [(laplace.structure.refs[0], laplace.X)],
                                 family="poisson", offset=laplace.offset, n_agq=5)
    grid = agq.log_likelihood(params)
    value = laplace.log_likelihood(params)
    assert abs(float(grid - value)) < 0.05 * abs(float(value))
    assert float(grid) != pytest.approx(float(value), rel=1e-10)
    grad = jax.grad(lambda p: agq.log_likelihood(p))(params)
    assert np.all(np.isfinite(grad.theta))


# ---- from_arrays ---------------------------------------------------------------------

def test_from_arrays_equals_from_formula():
    data = glmmjax.datasets.load("sleepstudy")
    formula_model = _sleepstudy()
    subject = data["Subject"].astype("category").cat.codes.to_numpy()
    X = np.column_stack([np.ones(len(data)), data["Days"].to_numpy(float)])
    array_model = MixedModel.from_arrays(X, data["Reaction"].to_numpy(float), [(subject, X)])
    params = _perturbed_params(formula_model)
    np.testing.assert_allclose(array_model.log_likelihood(params),
                               formula_model.log_likelihood(params), rtol=1e-12)


def _crossed(seed=0):
    rng = np.random.default_rng(seed)
    n = 40
    a = rng.integers(0, 5, size=n)
    b = rng.integers(0, 3, size=n)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    y = rng.poisson(1.5, size=n).astype(float)
    return X, y, a, b


def test_from_arrays_inside_jit_equals_concrete_crossed_terms():
    """Traced level indices use the complete coupling pattern: same likelihood."""
    X, y, a, b = _crossed()
    # Given in the "wrong" order: sorted to (a, b) by levels, θ in that order.
    concrete = MixedModel.from_arrays(X, y, [(b, None), (a, None)], family="poisson")
    assert concrete.term_order == (1, 0)
    params = Params(beta=jnp.array([0.3, -0.2]), theta=jnp.array([0.8, 0.5]),
                    log_dispersion=jnp.zeros(0))

    @jax.jit
    def traced(X, y, a, b, params):
        model = MixedModel.from_arrays(X, y, [(b, None, 3), (a, None, 5)], family="poisson")
        return model.log_likelihood(params)

    np.testing.assert_allclose(traced(X, y, a, b, params), concrete.log_likelihood(params),
                               rtol=1e-12)


def test_zero_weight_rows_and_padded_levels_change_nothing():
    X, y, a, _ = _crossed()
    model = MixedModel.from_arrays(X, y, [(a, None)], family="poisson")
    pad = 7
    padded = MixedModel.from_arrays(
        np.vstack([X, np.ones((pad, 2))]), np.concatenate([y, np.ones(pad)]),
        [(np.concatenate([a, np.full(pad, 6)]), None, 9)], family="poisson",
        weights=np.concatenate([np.ones(len(y)), np.zeros(pad)]))
    params = Params(beta=jnp.array([0.3, -0.2]), theta=jnp.array([0.8]),
                    log_dispersion=jnp.zeros(0))
    loglik = _jit("loglik")
    np.testing.assert_allclose(loglik(padded, params), loglik(model, params), rtol=1e-12)
    lmm = MixedModel.from_arrays(X, y, [(a, None)])
    lmm_padded = MixedModel.from_arrays(
        padded.X, padded.y, [(np.asarray(padded.structure.refs[0]), None, 9)],
        weights=padded.weights)
    lmm_params = lmm.init_params()
    np.testing.assert_allclose(lmm_padded.log_likelihood(lmm_params),
                               lmm.log_likelihood(lmm_params), rtol=1e-12)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(y=np.ones(5)), "y must have shape (40,)"),
        (dict(X=np.ones(40)), "X must have shape (n, p)"),
        (dict(weights=np.ones(3)), "weights must have shape (40,)"),
        (dict(offset=np.ones((40, 2))), "offset must have shape (40,)"),
        (dict(terms=[(np.arange(40) * 0.5, None)]), "integer array of level indices"),
        (dict(terms=[(np.full(40, 9), None, 5)]), "refs must lie in [0, 5)"),
        (dict(terms=[(np.zeros(39, int), None)]), "terms[0] refs must have shape (40,)"),
        (dict(terms=[(np.zeros(40, int), np.ones((40, 2, 2)))]), "terms[0] z must have shape"),
        (dict(terms=[]), "at least one random-effects term"),
        (dict(terms=[np.zeros(40, int)]), "terms[0] must be (refs, z)"),
        (dict(weights=-np.ones(40)), "weights must be non-negative"),
        (dict(y=-np.ones(40), family="poisson"), "non-negative integer count"),
        (dict(y=np.full(40, np.nan)), "y has non-finite values"),
    ],
)
def test_from_arrays_bad_input(kwargs, message):
    X, y, a, _ = _crossed()
    arguments = dict(X=X, y=y, terms=[(a, None)])
    arguments.update(kwargs)
    with pytest.raises(DataError) as error:
        MixedModel.from_arrays(arguments.pop("X"), arguments.pop("y"), arguments.pop("terms"),
                               **arguments)
    assert message in str(error.value)


def test_traced_refs_need_n_levels():
    X, y, a, _ = _crossed()
    with pytest.raises(DataError, match="needs n_levels"):
        jax.jit(lambda a: MixedModel.from_arrays(X, y, [(a, None)]).X)(a)


def test_log_likelihood_checks_param_shapes():
    model = _sleepstudy()
    with pytest.raises(ValueError, match=r"params.theta must have shape \(3,\)"):
        model.log_likelihood(Params(beta=jnp.zeros(2), theta=jnp.zeros(1),
                                    log_dispersion=jnp.zeros(1)))
    with pytest.raises(TypeError, match="glmmjax.Params"):
        model.log_likelihood({"beta": jnp.zeros(2)})


def test_grad_through_front_doors_names_the_differentiable_api():
    data = glmmjax.datasets.load("sleepstudy")
    with pytest.raises(TypeError, match="MixedModel.*glmmjax.solve"):
        jax.grad(lambda w: glmmjax.lmer(SLEEP, data, weights=w).loglik)(np.ones(len(data)))
    with pytest.raises(TypeError, match="MixedModel.*glmmjax.solve"):
        jax.jit(lambda o: glmmjax.glm("Reaction ~ Days", data, offset=o).loglik)(
            np.zeros(len(data)))


def test_array_model_fit_points_to_solve():
    X, y, a, _ = _crossed()
    with pytest.raises(TypeError, match="glmmjax.solve"):
        MixedModel.from_arrays(X, y, [(a, None)]).fit()


# ---- GLMM solve (compiles the whole glmer pipeline: slow) ---------------------------

@pytest.mark.slow
def test_glmm_solve_matches_glmer_and_its_jacobian_matches_refits():
    data = glmmjax.datasets.load("cbpp")
    formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    model = MixedModel.from_formula(formula, data, family="binomial")
    params, info = _jit("solve_info")(model)
    fit = glmmjax.glmer(formula, data, family="binomial")
    assert bool(info.converged)
    np.testing.assert_allclose(float(_jit("loglik")(model, params)), fit.loglik, rtol=1e-10,
                               atol=1e-8)
    np.testing.assert_allclose(params.beta, fit.fixef.to_numpy(), rtol=1e-5)


def _polished_glmm_beta(model):
    """β̂ of a refit, with two Newton steps on the exact deviance after the fit: the
    optimizer stops at max|∇| <= 1e-6, whose error over a finite-difference step of 1e-4
    would swamp the comparison."""
    params = _jit("solve")(model)
    n_theta, p = params.theta.shape[0], params.beta.shape[0]

    def deviance(x):
        return -2.0 * model.log_likelihood(Params(
            theta=x[:n_theta], beta=x[n_theta : n_theta + p], log_dispersion=x[n_theta + p :]))

    x = jnp.concatenate([params.theta, params.beta, params.log_dispersion])
    step = jax.jit(lambda x: x - jnp.linalg.solve(jax.hessian(deviance)(x), jax.grad(deviance)(x)))
    x = step(step(x))
    return x[n_theta : n_theta + p]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["poisson", "negative_binomial"])
def test_glmm_solve_jacobian_in_weights_matches_refits(family):
    model = _simulated(family)
    w0 = jnp.asarray(model.weights)

    def beta_of(w):
        return glmmjax.solve(eqx.tree_at(lambda m: m.weights, model, w)).beta

    jacobian = jax.jit(jax.jacobian(beta_of))(w0)
    for row in (0, 17):
        step = 1e-4
        e = np.zeros(w0.shape[0])
        e[row] = step
        up = _polished_glmm_beta(eqx.tree_at(lambda m: m.weights, model, w0 + e))
        down = _polished_glmm_beta(eqx.tree_at(lambda m: m.weights, model, w0 - e))
        np.testing.assert_allclose(jacobian[:, row], (up - down) / (2 * step), rtol=1e-5,
                                   atol=1e-7)
    # Forward mode gives the same derivative.
    e = jnp.zeros_like(w0).at[17].set(1.0)
    _, forward = jax.jvp(beta_of, (w0,), (e,))
    np.testing.assert_allclose(forward, jacobian[:, 17], rtol=1e-8)


@pytest.mark.slow
def test_glmm_solve_under_vmap_and_with_optax():
    import optax

    model = _simulated("poisson")
    rng = np.random.default_rng(5)
    Y = jnp.asarray(rng.poisson(np.exp(0.3), size=(8, model.y.shape[0])).astype(float))
    batched = jax.jit(jax.vmap(
        lambda y: glmmjax.solve(eqx.tree_at(lambda m: m.y, model, y))))(Y)
    solve = _jit("solve")
    for k in (0, 3):
        single = solve(eqx.tree_at(lambda m: m.y, model, Y[k]))
        np.testing.assert_allclose(batched.beta[k], single.beta, rtol=1e-6)
    reference = solve(model)
    with_lbfgs, info = jax.jit(lambda m: glmmjax.solve(m, optimizer=optax.lbfgs(), info=True))(
        model)
    assert bool(info.converged)
    np.testing.assert_allclose(model.log_likelihood(with_lbfgs),
                               model.log_likelihood(reference), rtol=1e-8)


@pytest.mark.slow
def test_boundary_fit_differentiates_on_the_active_set():
    """dyestuff2's REML fit is singular (θ = 0): θ stays at 0 under small changes of the
    weights, so its derivative is 0 and β̂'s is that of the fit on the boundary."""
    model = MixedModel.from_formula("Yield ~ 1 + (1 | Batch)", glmmjax.datasets.load("dyestuff2"))
    params, info = _jit("solve_info")(model)
    assert bool(info.singular) and float(params.theta[0]) == 0.0
    w0 = jnp.asarray(model.weights)

    def fitted(w):
        out = glmmjax.solve(eqx.tree_at(lambda m: m.weights, model, w))
        return jnp.concatenate([out.beta, out.theta, out.log_dispersion])

    jacobian = jax.jit(jax.jacobian(fitted))(w0)
    assert np.all(jacobian[1] == 0.0)
    solve = _jit("solve")
    for row in (0, 11):
        e = np.zeros(w0.shape[0])
        e[row] = 1e-4
        up = solve(eqx.tree_at(lambda m: m.weights, model, w0 + e))
        down = solve(eqx.tree_at(lambda m: m.weights, model, w0 - e))
        assert float(up.theta[0]) == float(down.theta[0]) == 0.0
        np.testing.assert_allclose(jacobian[0, row], (up.beta[0] - down.beta[0]) / 2e-4,
                                   rtol=1e-6)
        np.testing.assert_allclose(jacobian[2, row], (up.log_dispersion[0]
                                                      - down.log_dispersion[0]) / 2e-4,
                                   rtol=1e-6)


def test_conditional_modes_equal_lmer_ranef():
    model = _sleepstudy(True)
    params, _ = _jit("solve_info")(model)
    (b,) = model.conditional_modes(params)
    fit = glmmjax.lmer(SLEEP, glmmjax.datasets.load("sleepstudy"))
    np.testing.assert_allclose(np.asarray(b), fit.ranef["Subject"].to_numpy(), rtol=1e-5,
                               atol=1e-4)
    # And they give the conditional linear predictor.
    eta = model.linear_predictor(params.beta, (b,))
    np.testing.assert_allclose(np.asarray(eta), np.asarray(fit.fitted()), rtol=1e-6)
