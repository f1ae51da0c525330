"""Structured random-effects covariances (diag, cs, homcs, ar1, toep, ou, exp, gau, mat): the maps θ_t ↦ Λ_t,
their gradients on both engines, fits against glmmTMB 1.1.5 (tests/reference/
covstruct_reference.R), displays, and the errors for terms a structure cannot take."""

from __future__ import annotations

import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import scipy.special

import glmmjax as gj
from glmmjax import datasets
from glmmjax._model.cov_structures import (
    AR1,
    CompoundSymmetry,
    Diagonal,
    Matern,
    OrnsteinUhlenbeck,
    Spatial,
    Toeplitz,
    Unstructured,
)
from glmmjax._model.formula import FormulaError

REFERENCE = pathlib.Path(__file__).parent / "reference"
MODELS = json.loads((REFERENCE / "covstruct.json").read_text())["models"]


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


STRUCTURES = [Unstructured(3), Diagonal(3), CompoundSymmetry(4), CompoundSymmetry(3, True),
              AR1(5), Toeplitz(4), OrnsteinUhlenbeck(4, (0.0, 0.5, 2.0, 5.0)),
              Spatial(4, kind="exp", coords=((0.0, 0.0), (1.0, 0.0), (0.0, 2.0), (3.0, 1.0))),
              Spatial(3, kind="gau", coords=((0.0,), (1.0,), (2.5,))),
              Matern(4, coords=((0.0, 0.0), (1.0, 0.0), (0.0, 2.0), (3.0, 1.0)))]


def _random_params(cov, seed):
    rng = np.random.default_rng(seed)
    params = rng.normal(size=cov.n_params)
    mask = cov.scale_mask()
    params[mask] = rng.uniform(0.3, 2.0, mask.sum()) * rng.choice([-1.0, 1.0], mask.sum())
    return params


@pytest.mark.parametrize("cov", STRUCTURES, ids=lambda c: c.name)
def test_factor_numpy_equals_jax_and_pullback_is_its_vjp(cov):
    params = _random_params(cov, 1)
    grad = np.random.default_rng(2).normal(size=(cov.size, cov.size))
    factor = cov.factor(params, np)
    np.testing.assert_allclose(np.asarray(cov.factor(jnp.asarray(params), jnp)), factor,
                               rtol=1e-13, atol=1e-14)
    _, vjp = jax.vjp(lambda p: cov.factor(p, jnp), jnp.asarray(params))
    np.testing.assert_allclose(cov.pullback(params, grad), np.asarray(vjp(jnp.asarray(grad))[0]),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cov", STRUCTURES, ids=lambda c: c.name)
def test_canonical_keeps_the_covariance(cov):
    params = _random_params(cov, 3)
    before = cov.factor(params, np)
    canonical = cov.canonical(params)
    after = cov.factor(canonical, np)
    np.testing.assert_allclose(after @ after.T, before @ before.T, rtol=1e-12, atol=1e-13)
    assert np.all(canonical[cov.scale_mask()] >= 0)
    np.testing.assert_allclose(params * np.asarray(cov.entry_signs(jnp.asarray(params))),
                               canonical, rtol=1e-14)


def test_structured_covariances_are_the_documented_ones():
    d, eta = 1.7, 0.4
    lam = AR1(4).factor(np.array([d, eta]), np)
    lags = np.abs(np.subtract.outer(np.arange(4), np.arange(4)))
    np.testing.assert_allclose(lam @ lam.T, d**2 * np.tanh(eta) ** lags, rtol=1e-13)
    sds = np.array([0.5, 1.0, 2.0])
    cs = CompoundSymmetry(3)
    lam = cs.factor(np.append(sds, eta), np)
    rho = float(cs.rho(eta, np))
    R = np.full((3, 3), rho) + (1 - rho) * np.eye(3)
    np.testing.assert_allclose(lam @ lam.T, np.diag(sds) @ R @ np.diag(sds), rtol=1e-13)
    # ρ's range keeps R positive definite: ρ → −1/(S−1) and → 1 at the ends.
    assert float(cs.rho(-40.0, np)) == pytest.approx(-0.5)
    assert float(cs.rho(40.0, np)) == pytest.approx(1.0)
    # toep: the partial autocorrelations φ give the lag correlations (Durbin–Levinson:
    # ρ_1 = φ_1, ρ_2 = φ_1² + φ_2(1 − φ_1²)); R = Toeplitz(1, ρ_1, ρ_2).
    phi = np.array([0.6, -0.3])
    sds = np.array([0.5, 1.0, 2.0])
    lam = Toeplitz(3).factor(np.append(sds, np.arctanh(phi)), np)
    r1, r2 = phi[0], phi[0] ** 2 + phi[1] * (1 - phi[0] ** 2)
    R = np.array([[1, r1, r2], [r1, 1, r1], [r2, r1, 1]])
    np.testing.assert_allclose(lam @ lam.T, np.diag(sds) @ R @ np.diag(sds), rtol=1e-13)
    # ou: exp(−κ|t_i − t_j|) at the given times; equally spaced, it is ar1 with ρ = e^{−κ}.
    times = (0.0, 0.5, 2.0, 5.0)
    lam = OrnsteinUhlenbeck(4, times).factor(np.array([d, eta]), np)
    distance = np.abs(np.subtract.outer(times, times))
    np.testing.assert_allclose(lam @ lam.T, d**2 * np.exp(-np.exp(eta) * distance), rtol=1e-13)
    spaced = OrnsteinUhlenbeck(4, (0.0, 1.0, 2.0, 3.0)).factor(np.array([d, eta]), np)
    ar1 = AR1(4).factor(np.array([d, np.arctanh(np.exp(-np.exp(eta)))]), np)
    np.testing.assert_allclose(spaced, ar1, rtol=1e-13, atol=1e-15)
    # exp and gau: exp(−d/ℓ) and exp(−(d/ℓ)²) in the Euclidean distance, ℓ = e^η
    # (glmmTMB's parameterization, checked against its fits' correlations below).
    points = ((0.0, 0.0), (3.0, 4.0), (1.0, 0.0))
    distance = np.array([[0, 5, 1], [5, 0, np.sqrt(20)], [1, np.sqrt(20), 0]])
    for kind, corr in (("exp", np.exp(-distance / np.exp(eta))),
                       ("gau", np.exp(-((distance / np.exp(eta)) ** 2)))):
        lam = Spatial(3, kind=kind, coords=points).factor(np.array([d, eta]), np)
        np.testing.assert_allclose(lam @ lam.T, d**2 * corr, rtol=1e-13, atol=1e-15)
    # mat: (u^ν K_ν(u)) / (Γ(ν) 2^(ν−1)), u = d/φ, φ = e^η, ν = e^η₂ (TMB's matern(), as
    # glmmTMB's fits' correlations below); ν = 1/2 is exp.
    for nu in (0.5, 0.03, 1.7, 12.0):
        u = distance / np.exp(eta)
        with np.errstate(invalid="ignore"):
            corr = np.where(distance > 0, u**nu * scipy.special.kv(nu, u), 0.0)
        corr = corr / (scipy.special.gamma(nu) * 2 ** (nu - 1)) + np.eye(3)
        lam = Matern(3, coords=points).factor(np.array([d, eta, np.log(nu)]), np)
        np.testing.assert_allclose(lam @ lam.T, d**2 * corr, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(
        Matern(3, coords=points).factor(np.array([d, eta, np.log(0.5)]), np),
        Spatial(3, kind="exp", coords=points).factor(np.array([d, eta]), np), rtol=1e-13)


def _sleepstudy():
    data = datasets.load("sleepstudy")
    data["dayf"] = pd.Categorical(data["Days"].astype(int).astype(str),
                                  categories=[str(i) for i in range(10)])
    return data


def _reference_data(model):
    if "dataset" in model:
        return _sleepstudy()
    data = pd.read_csv(REFERENCE / model["data"])
    for column in ("subject", "group", "cluster", "cond"):
        if column in data:
            data[column] = data[column].astype(str)
    if "time" in data:
        data["timef"] = pd.Categorical(data["time"].astype(str),
                                       categories=[str(t) for t in sorted(data["time"].unique())])
    if "cx" in data:  # points "(x,y)" in numFactor's level order (by y, then x)
        data["pos"] = pd.Categorical(
            [f"({x},{y})" for x, y in zip(data["cx"], data["cy"])],
            categories=[f"({x},{y})" for y in sorted(data["cy"].unique())
                        for x in sorted(data["cx"].unique())])
    return data


def _fit(model, **kwargs):
    data = _reference_data(model)
    if model["family"] == "gaussian":
        return gj.lmer(model["formula"], data, reml=False, **kwargs)
    return gj.glmer(model["formula"], data, family=model["family"], **kwargs)


def _check_against_reference(fit, model):
    ours = -2.0 * fit.loglik
    ref = model["minus2loglik"]
    assert ours <= ref + 1e-6 * abs(ref), (ours, ref)
    if ours < ref - 1e-6 * abs(ref):
        # A better optimum than glmmTMB's: the lower criterion is the check.
        return
    np.testing.assert_allclose(fit.fixef.to_numpy(), model["fixef"], rtol=1e-4, atol=1e-6)
    vc = fit.varcorr
    for label, term in zip(fit._group_labels(), model["re"]):
        sub = vc[vc["group"] == label]
        sds = sub[sub["var2"].isna()]["sdcor"].to_numpy()
        np.testing.assert_allclose(sds, term["sd"], rtol=1e-4, atol=1e-6)
        corr = np.asarray(term["corr"], dtype=float)
        k = len(sds)
        ours_corr = np.eye(k)
        pairs = sub[~sub["var2"].isna()]["sdcor"].to_numpy()
        idx = 0
        for j in range(k):
            for i in range(j + 1, k):
                ours_corr[i, j] = ours_corr[j, i] = pairs[idx]
                idx += 1
        np.testing.assert_allclose(ours_corr, corr, rtol=1e-4, atol=1e-5)
    if model["family"] == "gaussian":
        assert fit.sigma == pytest.approx(model["sigma"], rel=1e-4)


LMM_REFERENCES = [k for k, m in MODELS.items() if m["family"] == "gaussian"]
GLMM_REFERENCES = [k for k, m in MODELS.items() if m["family"] != "gaussian"]


@pytest.mark.parametrize("name", LMM_REFERENCES)
def test_lmm_against_glmmtmb(name):
    model = MODELS[name]
    _check_against_reference(_fit(model, engine="host"), model)


@pytest.mark.slow
@pytest.mark.parametrize("name", LMM_REFERENCES)
def test_lmm_jax_engine_against_glmmtmb(name):
    model = MODELS[name]
    _check_against_reference(_fit(model, engine="jax"), model)


@pytest.mark.parametrize("name", GLMM_REFERENCES)
def test_glmm_against_glmmtmb(name):
    model = MODELS[name]
    _check_against_reference(_fit(model), model)


def test_sleepstudy_ar1_finds_a_lower_deviance_than_glmmtmb():
    # glmmTMB stops with a non-positive-definite Hessian on this model; glmmjax's optimum
    # has the lower −2 log L (the reference test above accepts it for that reason).
    model = MODELS["sleepstudy_ar1"]
    fit = _fit(model, engine="host")
    assert not model["pdHess"]
    assert -2.0 * fit.loglik < model["minus2loglik"] - 0.1
    assert fit.converged


def test_diag_equals_double_bar_and_host_equals_jax_criterion():
    data = _sleepstudy()
    diag = gj.lmer("Reaction ~ Days + diag(1 + Days | Subject)", data, engine="host")
    bars = gj.lmer("Reaction ~ Days + (1 + Days || Subject)", data, engine="host")
    assert diag.criterion == pytest.approx(bars.criterion, rel=1e-10)
    np.testing.assert_allclose(diag.theta_values, bars.theta_values, rtol=1e-5)


@pytest.mark.slow
def test_host_criterion_and_gradient_match_jax():
    from glmmjax._engines.compiled.lmm import (
        build_structure_for,
        lmm_criterion,
        lmm_model_from_arrays,
    )
    from glmmjax._engines.host.lmm import evaluate, host_model
    from glmmjax._model.design import build_design

    data = _sleepstudy().iloc[::2]
    design = build_design("Reaction ~ Days + (1 | Subject) + ar1(dayf + 0 | Subject)", data)
    y = np.asarray(design.response, float)
    with jax.enable_x64(True):
        structure = build_structure_for(design, design.X.shape[1] + 1)
        theta = np.array([0.8, 1.3, 0.4])
        host = host_model(structure, design.weights, design.X, y, reml=True)
        value, grad, _ = evaluate(theta, host)
        model = lmm_model_from_arrays(structure, jnp.asarray(design.weights),
                                      jnp.asarray(design.X), jnp.asarray(y), True)
        jax_value, jax_grad = jax.value_and_grad(lmm_criterion)(jnp.asarray(theta), model)
    assert value == pytest.approx(float(jax_value), rel=1e-10)
    np.testing.assert_allclose(grad, np.asarray(jax_grad), rtol=1e-6, atol=1e-8)


def test_summary_and_varcorr_show_the_structure():
    model = MODELS["gaussian_ar1"]
    fit = _fit(model, engine="host")
    rho = np.asarray(model["re"][0]["corr"])[0, 1]
    assert fit.covariance_structures == {"subject": f"ar1: rho {rho:.3g}"}
    assert f"{rho:.3f} (ar1)" in fit.summary()
    assert list(fit.theta.index) == ["subject.sd", "subject.atanh(rho)"]


@pytest.mark.parametrize("formula, message", [
    ("Reaction ~ Days + ar1(Days | Subject)", "needs a factor of ordered"),
    ("Reaction ~ Days + ar1(dayf | Subject)", "without an intercept"),
    ("Reaction ~ Days + ar1(gapf + 0 | Subject)", "use ou("),
    ("Reaction ~ Days + ar1(backf + 0 | Subject)", "not in increasing order"),
    ("Reaction ~ Days + cs(1 | Subject)", "at least two random effects"),
    ("Reaction ~ Days + toeplitz(dayf + 0 | Subject)", "unknown covariance structure 'toeplitz'"),
    ("Reaction ~ Days + rr(dayf + 0 | Subject)", "not implemented here yet"),
    ("Reaction ~ Days + mat(namedf + 0 | Subject)", "must be numbers like '(x,y)'"),
    ("Reaction ~ Days + exp(namedf + 0 | Subject)", "must be numbers like '(x,y)'"),
    ("Reaction ~ Days + gau(mixedf + 0 | Subject)", "same dimension"),
    ("Reaction ~ Days + exp(Days | Subject)", "needs a factor of points"),
    ("Reaction ~ Days + toep(1 | Subject)", "at least two random effects"),
    ("Reaction ~ Days + ou(namedf + 0 | Subject)", "must be numbers"),
    ("Reaction ~ Days + ou(backf + 0 | Subject)", "not in increasing order"),
    ("Reaction ~ Days + ou(Days | Subject)", "needs a factor of ordered times"),
    ("Reaction ~ Days + diag(1 + Days || Subject)", "'||' inside diag()"),
])
def test_structures_on_terms_they_cannot_take(formula, message):
    data = _sleepstudy()
    days = data["Days"].astype(int)
    data["gapf"] = pd.Categorical((days * days).astype(str),
                                  categories=[str(d * d) for d in range(10)])
    data["backf"] = pd.Categorical(days.astype(str), categories=[str(d) for d in range(9, -1, -1)])
    data["namedf"] = "day" + days.astype(str)
    data["mixedf"] = np.where(days < 5, "(" + days.astype(str) + ",1)", days.astype(str))
    with pytest.raises(FormulaError, match=re.escape(message)):
        gj.lmer(formula, data)


def test_kenward_roger_takes_structured_terms():
    # Against pbkrtest through lmer equivalents: tests/test_kr_structured.py.
    data = _sleepstudy()
    fit = gj.lmer("Reaction ~ Days + diag(1 + Days | Subject)", data, engine="host")
    assert np.all(np.isfinite(fit.coef_table(ddf="kenward-roger").to_numpy(dtype=float)))
    assert np.all(np.isfinite(fit.coef_table(ddf="satterthwaite").to_numpy(dtype=float)))


@pytest.mark.slow
def test_fit_many_equals_single_fits():
    model = MODELS["gaussian_ar1"]
    data = _reference_data(model)
    rng = np.random.default_rng(5)
    responses = pd.DataFrame({f"y{k}": data["y"] + 0.3 * rng.normal(size=len(data))
                              for k in range(3)})
    batch = gj.fit_many(model["formula"], data, responses=responses, reml=False)
    for k, column in enumerate(responses):
        single = gj.lmer(model["formula"], data.assign(y=responses[column]), reml=False,
                         engine="host")
        np.testing.assert_allclose(np.asarray(batch.theta)[k], single.theta_values, rtol=1e-5)


@pytest.mark.slow
def test_profile_intervals_of_ar1_parameters():
    fit = _fit(MODELS["gaussian_ar1"], engine="host")
    ci = fit.confint(method="profile", parm=["sd_ar1|subject", "rho_ar1|subject"])
    sd, rho = fit.sigma * fit.theta_values[0], np.tanh(fit.theta_values[1])
    assert ci.iloc[0, 0] < sd < ci.iloc[0, 1]
    assert -1 < ci.iloc[1, 0] < rho < ci.iloc[1, 1] < 1


@pytest.mark.parametrize("family", ["Gamma", "negative_binomial"])
def test_host_laplace_gradient_with_a_dispersion_and_structured_terms(family):
    # The merged host engine: a structure's pullback beside the dispersion's derivative.
    from glmmjax._engines.host.glmm import host_models, laplace
    from glmmjax._families.base import get_family
    from glmmjax._model.design import build_design

    rng = np.random.default_rng(11)
    n_g, n_t = 12, 4
    data = pd.DataFrame({"g": np.repeat([f"g{i}" for i in range(n_g)], n_t),
                         "t": np.tile([str(t) for t in range(n_t)], n_g)})
    data["x"] = rng.normal(size=len(data))
    data["t"] = pd.Categorical(data["t"], categories=[str(t) for t in range(n_t)])
    mu = np.exp(0.5 + 0.3 * data["x"] + rng.normal(0, 0.4, size=len(data)))
    data["y"] = rng.gamma(2.0, mu / 2.0) if family == "Gamma" else rng.poisson(mu)
    design = build_design("y ~ x + ar1(t + 0 | g) + cs(1 + x | g)", data)
    fam = get_family(family, "log")
    y, w, _ = fam.prepare_response(design.response, design.weights, design.response_levels,
                                   design.rows)
    _, model = host_models(design, fam, y, w)
    n_theta = model.structure.n_theta
    params = np.array([0.7, 0.5, 0.6, 0.4, -0.3, 0.4, 0.3, np.log(1.5)])
    assert params.shape[0] == n_theta + 2 + 1
    v0 = np.zeros(model.structure.n_levels[0] * model.structure.sizes[0]
                  + model.structure.rest_size)

    def value(p):
        return laplace(p[:n_theta], p[n_theta:-1], p[-1:], model, v0)[0]

    grad = laplace(params[:n_theta], params[n_theta:-1], params[-1:], model, v0)[1]
    step = 1e-5
    numeric = [(value(params + step * e) - value(params - step * e)) / (2 * step)
               for e in np.eye(params.shape[0])]
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-6)


def test_rescaled_slope_in_a_cs_term_is_exact():
    # lmer's column rescaling (x·1e8) maps a structured term's SDs, not its correlations.
    from glmmjax._model.rescale import column_scales

    data = _sleepstudy()
    data["Dbig"] = data["Days"] * 1e8
    plain = gj.lmer("Reaction ~ Days + cs(1 + Days | Subject)", data, engine="host")
    big = gj.lmer("Reaction ~ Dbig + cs(1 + Dbig | Subject)", data, engine="host")
    assert big.converged and column_scales(big.design) is not None
    np.testing.assert_allclose(big.theta.to_numpy() * [1, 1e8, 1], plain.theta.to_numpy(),
                               rtol=1e-5)
    assert big.criterion == pytest.approx(plain.criterion + 2 * np.log(1e8), abs=1e-6)


def test_ou_on_equal_spacing_is_ar1_and_toep_nests_it():
    model = MODELS["gaussian_ar1"]
    data = _reference_data(model)
    ar1 = gj.lmer(model["formula"], data, reml=False, engine="host")
    ou = gj.lmer(model["formula"].replace("ar1(", "ou("), data, reml=False, engine="host")
    toep = gj.lmer(model["formula"].replace("ar1(", "toep("), data, reml=False, engine="host")
    assert ou.criterion == pytest.approx(ar1.criterion, rel=1e-9)
    assert ou.covariance_structures["subject"] == (
        ar1.covariance_structures["subject"].replace("ar1", "ou") + " per unit time")
    assert toep.criterion < ar1.criterion
    assert list(toep.theta.index[-2:]) == ["subject.atanh(pacf4)", "subject.atanh(pacf5)"]
    # toep prints its correlation matrix, as us does (not one parameter with its name).
    assert "(toep)" not in toep.summary() and "(ou)" in ou.summary()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["binomial_toep", "poisson_ou", "spatial_poisson_exp",
                                  "spatial_poisson_mat"])
def test_glmm_jax_engine_against_glmmtmb(name):
    model = MODELS[name]
    _check_against_reference(_fit(model, engine="jax"), model)


@pytest.mark.slow
def test_profile_interval_of_the_ou_correlation():
    fit = _fit(MODELS["gaussian_ou"], engine="host")
    ci = fit.confint(method="profile", parm=["rho_ou|subject"])
    rho = np.exp(-np.exp(fit.theta_values[1]))
    assert 0 < ci.iloc[0, 0] < rho < ci.iloc[0, 1] < 1


def test_a_numerically_singular_correlation_is_a_rejected_point_on_the_host():
    # gau over a long scale (and toep at a partial autocorrelation of 1) has no Cholesky
    # factor in floating point: the host criterion is +inf there, as for a non-positive
    # definite Ω, so line searches step back instead of raising.
    from glmmjax._engines.compiled.lmm import build_structure_for
    from glmmjax._engines.host.lmm import evaluate, host_model
    from glmmjax._model.design import build_design

    model = MODELS["spatial_gau"]
    design = build_design(model["formula"], _reference_data(model))
    structure = build_structure_for(design, design.X.shape[1] + 1)
    host = host_model(structure, design.weights, design.X,
                      np.asarray(design.response, float), False)
    assert evaluate(np.array([1.0, 5.0]), host)[0] == np.inf
    assert np.isfinite(evaluate(np.array([1.0, 0.0]), host)[0])
    assert np.all(np.isnan(Toeplitz(3).factor(np.array([1.0, 1.0, 1.0, 40.0, 0.0]), np)))


def test_num_factor_gives_times_and_points_from_columns():
    # glmmTMB's numFactor: "(t)" levels ordered by t; "(x,y)" ordered by y, then x.
    times = gj.num_factor(pd.Series([2.0, 0.5, 0.0, 2.0]))
    assert list(times.categories) == ["(0)", "(0.5)", "(2)"]
    assert list(times) == ["(2)", "(0.5)", "(0)", "(2)"]
    points = gj.num_factor([0, 1, 0, 1], [0, 0, 1, 1])
    assert list(points.categories) == ["(0,0)", "(1,0)", "(0,1)", "(1,1)"]
    for name in ("gaussian_ou", "spatial_exp"):
        model = MODELS[name]
        data = _reference_data(model)
        if name == "gaussian_ou":
            data["timef"] = gj.num_factor(data["time"])
        else:
            data["pos"] = gj.num_factor(data["cx"], data["cy"])
        _check_against_reference(gj.lmer(model["formula"], data, reml=False, engine="host"),
                                 model)
    with pytest.raises(ValueError, match="argument 1 must be a finite numeric column"):
        gj.num_factor(["a", "b"])
    with pytest.raises(ValueError, match="differ in length"):
        gj.num_factor([0, 1], [0, 1, 2])
