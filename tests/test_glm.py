"""glm(): agreement with R (tests/reference/glm.json), results, prediction, bad input."""

from __future__ import annotations

import json
import pathlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import glmmjax
from glmmjax import families
from glmmjax._engines.compiled.glm import fit_glm
from glmmjax._glm import detect_separation

REFERENCE = pathlib.Path(__file__).parent / "reference"
MODELS = json.loads((REFERENCE / "glm.json").read_text())["models"]
FAMILY_NAMES = {
    "binomial": "binomial",
    "poisson": "poisson",
    "Gamma": "gamma",
    "inverse.gaussian": "inverse_gaussian",
    "negative.binomial (NB2)": "negative_binomial",
    "beta": "beta",
    "gaussian": "gaussian",
}
_FITS: dict = {}


def reference_data(model: dict) -> pd.DataFrame:
    if model["dataset"]:
        return glmmjax.datasets.load(model["dataset"])
    return pd.read_csv(REFERENCE / model["data"])


def reference_fit(name: str):
    """Fit the reference model ``name`` once per test session."""
    if name not in _FITS:
        model = MODELS[name]
        family = families.get_family(FAMILY_NAMES[model["family"]], model["link"])
        _FITS[name] = glmmjax.glm(model["formula"], reference_data(model), family=family,
                                  weights=model["weights"])
    return _FITS[name]


# glmmTMB's optimizer stops earlier than our Newton iterations (our log-likelihood is
# higher, by 1e-9), so its beta coefficients agree to ~1e-5 only; everything else
# agrees to rounding level.
COEF_RTOL = {"beta_logit": 5e-5, "salamanders_nb2": 1e-7}


@pytest.mark.parametrize("name", list(MODELS))
def test_matches_r(name):
    model = MODELS[name]
    fit = reference_fit(name)
    assert len(fit.coef) == len(model["coef_names"])
    # Names differ (formulaic's "period[T.2]" vs R's "period2"): compare by position.
    rtol = COEF_RTOL.get(name, 1e-6)
    np.testing.assert_allclose(fit.coef.to_numpy(), model["coef"], rtol=rtol)
    np.testing.assert_allclose(fit.fixef_se.to_numpy(), model["se"], rtol=1e-6)
    np.testing.assert_allclose(fit.statistic.to_numpy(), model["stat"], rtol=rtol)
    np.testing.assert_allclose(fit.pvalues.to_numpy(), model["p"], rtol=1e-3 if name in COEF_RTOL
                               else 1e-5, atol=1e-300)
    np.testing.assert_allclose(fit.vcov.to_numpy(), np.asarray(model["vcov"]),
                               rtol=max(rtol, 1e-6),
                               atol=1e-12 * np.max(np.abs(model["vcov"])))
    np.testing.assert_allclose(fit.loglik, model["loglik"], rtol=1e-8)
    np.testing.assert_allclose(fit.aic, model["aic"], rtol=1e-8)
    np.testing.assert_allclose(fit.bic, model["bic"], rtol=1e-8)
    assert fit.df == model["df"]
    assert fit.nobs == model["nobs"]
    assert fit.df_residual == model["df_residual"]
    assert fit.converged
    if model["deviance"] is not None:
        np.testing.assert_allclose(fit.deviance, model["deviance"], rtol=1e-8)
        np.testing.assert_allclose(fit.null_deviance, model["null_deviance"], rtol=1e-8)
    if name.startswith("salamanders"):
        np.testing.assert_allclose(fit.dispersion, model["theta"], rtol=1e-6)
        # MASS reports the SE at the theta before its last Newton step (theta.ml).
        np.testing.assert_allclose(fit.dispersion_se, model["theta_se"], rtol=1e-4)
    elif name.startswith("beta"):
        np.testing.assert_allclose(fit.dispersion, model["phi"], rtol=1e-5)
        np.testing.assert_allclose(fit.dispersion_se / fit.dispersion, model["log_phi_se"],
                                   rtol=1e-5)
        assert fit.loglik >= model["loglik"] - 1e-10
    elif model["dispersion"] is not None:
        np.testing.assert_allclose(fit.dispersion, model["dispersion"], rtol=1e-8)
    if "iterations" in model and model["engine"] == "stats::glm":
        assert fit.iterations == model["iterations"]
    np.testing.assert_allclose(fit.fitted_values.to_numpy()[:10], model["fitted_head"],
                               rtol=max(rtol, 1e-6))


def test_categorical_response_counts_second_level_as_success():
    fit = reference_fit("contraception_logit")
    assert fit.success_level == "Y"
    assert "Y" in fit.summary()


def test_result_tables_and_summary():
    fit = reference_fit("cbpp_binomial_logit")
    table = fit.coef_table()
    assert list(table.columns) == ["Estimate", "Std. Error", "z value", "Pr(>|z|)"]
    assert fit.coef is fit.fixef or fit.coef.equals(fit.fixef)
    ci = fit.conf_int()
    np.testing.assert_allclose(ci.iloc[:, 0], fit.coef - 1.959963984540054 * fit.fixef_se)
    odds = fit.exp_coef_table()
    np.testing.assert_allclose(odds.iloc[:, 0], np.exp(fit.coef))
    np.testing.assert_allclose(odds.iloc[:, 2], np.exp(ci.iloc[:, 1]))
    text = fit.summary()
    for piece in ["Coefficients:", "Null deviance", "Residual deviance", "AIC",
                  "Dispersion parameter for binomial family taken to be 1"]:
        assert piece in text
    assert str(fit) == text
    gaussian = reference_fit("sleepstudy_gaussian")
    assert list(gaussian.coef_table().columns)[2] == "t value"


def test_residuals_and_predictions():
    fit = reference_fit("poisson_offset")
    y, mu = fit.response.to_numpy(), fit.fitted_values.to_numpy()
    np.testing.assert_allclose(fit.residuals("response"), y - mu)
    np.testing.assert_allclose(fit.residuals("pearson"), (y - mu) / np.sqrt(mu))
    np.testing.assert_allclose(np.sum(fit.residuals("deviance") ** 2), fit.deviance)
    np.testing.assert_allclose(fit.residuals("working"), (y - mu) / mu)
    with pytest.raises(ValueError, match="type"):
        fit.residuals("partial")
    data = reference_data(MODELS["poisson_offset"])
    link = fit.predict(data.iloc[:5])
    np.testing.assert_allclose(link, fit.linear_predictor.iloc[:5])
    response = fit.predict(data.iloc[:5], type="response", se_fit=True)
    np.testing.assert_allclose(response["fit"], mu[:5])
    with_se = fit.predict(type="link", se_fit=True)
    X = np.column_stack([np.ones(len(data)), data["x"], data["f"] == "b", data["f"] == "c"])
    expected_se = np.sqrt(np.einsum("ij,jk,ik->i", X, fit.vcov.to_numpy(), X))
    np.testing.assert_allclose(with_se["se_fit"], expected_se, rtol=1e-10)
    np.testing.assert_allclose(response["se_fit"], mu[:5] * expected_se[:5], rtol=1e-10)


def test_offset_argument_equals_offset_in_formula():
    data = reference_data(MODELS["poisson_offset"])
    by_argument = glmmjax.glm("y ~ x + f", data, family="poisson",
                              offset=np.log(data["exposure"]))
    np.testing.assert_allclose(by_argument.coef, reference_fit("poisson_offset").coef,
                               rtol=1e-12)


def test_cbind_and_proportion_forms_agree():
    cbpp = glmmjax.datasets.load("cbpp")
    by_cbind = glmmjax.glm("cbind(incidence, size - incidence) ~ period", cbpp,
                           family=families.Binomial(link="probit"))
    by_weights = reference_fit("cbpp_binomial_probit")
    np.testing.assert_allclose(by_cbind.coef, by_weights.coef, rtol=1e-12)
    np.testing.assert_allclose(by_cbind.loglik, by_weights.loglik, rtol=1e-12)


def test_fixed_theta_negative_binomial():
    sal = glmmjax.datasets.load("salamanders")
    estimated = reference_fit("salamanders_nb2")
    fixed = glmmjax.glm("count ~ spp + mined", sal,
                        family=families.NegativeBinomial(theta=estimated.dispersion))
    # R's IRLS stopping rule (relative deviance change < 1e-8) leaves ~1e-5 here.
    np.testing.assert_allclose(fixed.coef, estimated.coef, rtol=1e-4)
    assert fixed.df == estimated.df - 1
    assert "fixed at" in fixed.summary()


def test_fit_glm_is_pure_jit_and_vmap():
    """vmap over responses equals one glm() fit per response."""
    data = reference_data(MODELS["poisson_offset"])
    single = reference_fit("poisson_offset")
    permuted = data.assign(y=data["y"].to_numpy()[::-1])
    other = glmmjax.glm(MODELS["poisson_offset"]["formula"], permuted, family="poisson")
    X = np.column_stack([np.ones(len(data)), data["x"], data["f"] == "b", data["f"] == "c"])
    offset = np.log(data["exposure"].to_numpy())
    ys = np.stack([data["y"].to_numpy(), permuted["y"].to_numpy()]).astype(float)
    with jax.enable_x64(True):
        batched = jax.jit(jax.vmap(
            lambda y: fit_glm(X, y, np.ones(len(data)), offset, families.Poisson())
        ))(jnp.asarray(ys))
    np.testing.assert_allclose(batched.coef[0], single.coef, rtol=1e-10)
    np.testing.assert_allclose(batched.coef[1], other.coef, rtol=1e-10)
    np.testing.assert_allclose(batched.deviance, [single.deviance, other.deviance], rtol=1e-10)
    assert bool(jnp.all(batched.converged))


def test_separation_is_detected_and_named():
    x = np.array([-3.0, -2, -1, -0.5, 0.5, 1, 2, 3])
    data = pd.DataFrame({"y": (x > 0).astype(float), "x": x, "z": np.tile([0.0, 1.0], 4)})
    with pytest.warns(glmmjax.SeparationWarning, match=r"\['x'\]"):
        fit = glmmjax.glm("y ~ x + z", data, family="binomial")
    assert fit.separated == ("x",)
    mask = detect_separation(np.column_stack([np.ones(8), x]), (x > 0).astype(float),
                             np.ones(8))
    assert mask[1]
    overlap = np.column_stack([np.ones(8), x])
    y = np.array([0, 1, 0, 0, 1, 1, 0, 1.0])
    assert not detect_separation(overlap, y, np.ones(8)).any()


@pytest.mark.parametrize(
    "family, column, bad_row",
    [
        ("poisson", "neg", 7),
        ("poisson", "frac", 3),
        ("negative_binomial", "neg", 7),
        ("binomial", "big", 2),
        ("gamma", "zero", 5),
        ("inverse_gaussian", "zero", 5),
        ("beta", "one", 4),
    ],
)
def test_response_outside_support_is_a_data_error_naming_rows(family, column, bad_row):
    index = pd.RangeIndex(10) * 10 + 1  # labels 1, 11, 21, ...: not positions
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"x": rng.normal(size=10)}, index=index)
    base = np.full(10, 0.5)
    frame["neg"] = np.where(np.arange(10) == 7, -1.0, 2.0)
    frame["frac"] = np.where(np.arange(10) == 3, 1.5, 2.0)
    frame["big"] = np.where(np.arange(10) == 2, 1.5, np.r_[0, 1] .repeat(5))
    frame["zero"] = np.where(np.arange(10) == 5, 0.0, 1.0 + base)
    frame["one"] = np.where(np.arange(10) == 4, 1.0, base)
    with pytest.raises(glmmjax.DataError, match=rf"rows \[{index[bad_row]}\]"):
        glmmjax.glm(f"{column} ~ x", frame, family=family)


def test_bad_links_and_weights():
    cbpp = glmmjax.datasets.load("cbpp")
    with pytest.raises(ValueError, match="allowed links"):
        glmmjax.glm("incidence ~ period", cbpp, family=families.get_family("poisson", "logit"))
    weights = cbpp["size"].astype(float).copy()
    weights.iloc[3] = -1.0
    with pytest.raises(ValueError, match="weights"):
        glmmjax.glm("incidence/size ~ period", cbpp, family="binomial", weights=weights)
    weights.iloc[3] = np.inf
    with pytest.raises(ValueError, match="weights"):
        glmmjax.glm("incidence/size ~ period", cbpp, family="binomial", weights=weights)


def test_aliased_columns_are_reported_as_nan():
    data = reference_data(MODELS["gamma_log"]).copy()
    data["x2"] = 2.0 * data["x"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fit = glmmjax.glm("y ~ x + x2", data, family=families.Gamma(link="log"))
    assert np.isnan(fit.coef["x2"])
    np.testing.assert_allclose(fit.coef.iloc[:2], reference_fit("gamma_log").coef, rtol=1e-10)


class Exponential(families.Family):
    """A family written from scratch by a user: exponential responses (Gamma shape 1)."""

    name = "exponential"
    canonical_link = "inverse"

    def variance(self, mu, dispersion=None):
        return mu * mu

    def loglik(self, y, mu, weights, dispersion=None):
        return weights * (-jnp.log(mu) - y / mu)

    def unit_deviance(self, y, mu, dispersion=None):
        return 2.0 * (y / mu - jnp.log(y / mu) - 1.0)

    def valid_mu(self, mu):
        return mu > 0


class MyLog(glmmjax.links.Link):
    """A user-defined link: the log, written without the built-in's extras."""

    name = "my_log"

    def link(self, mu):
        return jnp.log(mu)

    def inverse(self, eta):
        return jnp.exp(eta)


def test_user_defined_family_and_link_work_like_built_in_ones():
    data = reference_data(MODELS["gamma_log"])
    gamma = reference_fit("gamma_log")
    fit = glmmjax.glm("y ~ x", data, family=Exponential(link=MyLog()))
    # Same estimating equations as the Gamma with log link; the exponential fixes φ = 1.
    np.testing.assert_allclose(fit.coef, gamma.coef, rtol=1e-10)
    np.testing.assert_allclose(fit.fixef_se, gamma.fixef_se / np.sqrt(gamma.dispersion),
                               rtol=1e-8)
    mu = fit.fitted_values.to_numpy()
    y = data["y"].to_numpy()
    np.testing.assert_allclose(fit.loglik, np.sum(-np.log(mu) - y / mu), rtol=1e-12)
    np.testing.assert_allclose(fit.deviance, gamma.deviance, rtol=1e-10)
    assert families.Poisson(link=MyLog()).link.name == "my_log"


def test_zero_weights_drop_rows_and_non_convergence_warns():
    data = reference_data(MODELS["sleepstudy_gaussian"])
    weights = np.ones(len(data))
    weights[[3, 50]] = 0.0
    fit = glmmjax.glm("Reaction ~ Days", data, weights=weights)
    dropped = glmmjax.glm("Reaction ~ Days", data.drop(index=[3, 50]))
    np.testing.assert_allclose(fit.coef, dropped.coef, rtol=1e-12)
    np.testing.assert_allclose(fit.loglik, dropped.loglik, rtol=1e-12)
    assert fit.nobs == dropped.nobs == len(data) - 2
    cbpp = glmmjax.datasets.load("cbpp")
    with pytest.warns(glmmjax.GLMConvergenceWarning, match="did not converge"):
        slow = glmmjax.glm("incidence/size ~ period", cbpp, family="binomial", weights="size",
                           max_iter=2)
    assert not slow.converged and "NOT CONVERGED" in slow.summary()


def test_r_arithmetic_in_formulas():
    """R's ``^`` inside calls is a power; response and offset expressions are arithmetic
    (``incidence/size`` is a ratio, ``size - incidence`` a difference)."""
    parsed = glmmjax.parse_formula("y ~ I(age^2) + (a + b)^2 + offset(log(t^2))")
    assert "I(age**2)" in parsed.fixed and "(a + b)^2" in parsed.fixed
    assert parsed.offsets == ("log(t**2)",)
    from glmmjax._model.design import build_design

    cbpp = glmmjax.datasets.load("cbpp")
    design = build_design("cbind(incidence, size - incidence) ~ period", cbpp)
    np.testing.assert_allclose(design.response[:, 1], cbpp["size"] - cbpp["incidence"])
    ratio = build_design("incidence/size ~ period", cbpp)
    np.testing.assert_allclose(ratio.response, cbpp["incidence"] / cbpp["size"])
