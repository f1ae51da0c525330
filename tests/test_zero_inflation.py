"""Zero-inflation, hurdles and dispersion models (``ziformula=``, ``dispformula=``)
against glmmTMB 1.1.5 (tests/reference/glmm_zi_tmb.R writes the JSON).

The host engine's per-row terms are numpy closed forms (glmmjax/_engines/host/parts_rows.py): the
reference fits compile nothing and take well under a second each, so they run in the
fast suite; only the comparison with the compiled engine is slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import glmmjax
from glmmjax._display import r_name
from glmmjax._families.base import Poisson, get_family
from glmmjax._families.response_parts import (
    ZERO_DISPERSION_LOG,
    is_truncated,
    row_loglik,
    zero_inflatable,
)
from glmmjax._model.formula import FormulaError

REFERENCE = Path(__file__).parent / "reference"
MODELS = json.loads((REFERENCE / "glmm_zi_tmb.json").read_text())["models"]


class TruncatedPoissonForTest(Poisson):
    """Zero-truncated Poisson written here (the library's own comes with the new
    families): log f₊(y) = log f(y) − log(1 − e^{−μ}), the protocol of
    :mod:`glmmjax._families.response_parts`."""

    name = "truncated_poisson"
    is_truncated = True

    @staticmethod
    def log_prob_positive(eta, dispersion=None):
        return jnp.log(-jnp.expm1(-jnp.exp(eta)))

    def loglik_eta(self, y, eta, weights, dispersion=None):
        return weights * (super().loglik_eta(y, eta, jnp.ones_like(y))
                          - self.log_prob_positive(eta))


def _family(model):
    if model["family"] == "truncated_poisson":
        try:
            return get_family("truncated_poisson")
        except ValueError:
            return TruncatedPoissonForTest()
    try:
        return get_family(model["family"], link=model["link"])
    except ValueError:
        pytest.skip(f"family {model['family']!r} is not in glmmjax yet")


def _data(model):
    if "dataset" in model:
        data = glmmjax.datasets.load(model["dataset"])
    else:
        data = pd.read_csv(REFERENCE / model["data"], dtype={"g": str})
    if "obs" in model["formula"]:
        data = data.assign(obs=[f"o{i}" for i in range(len(data))])
    return data


def _fit(model):
    zi = None if model["ziformula"] == "~0" else model["ziformula"]
    disp = None if model["dispformula"] == "~1" else model["dispformula"]
    return glmmjax.glmer(model["formula"], _data(model), family=_family(model),
                         ziformula=zi, dispformula=disp)


# ---- fast: the per-row likelihood -------------------------------------------------------

def test_row_loglik_zero_inflated_poisson_matches_its_definition():
    rng = np.random.default_rng(1)
    y = rng.poisson(2.0, 50).astype(float)
    y[:10] = 0.0
    eta, zeta = rng.normal(0.5, 0.5, 50), rng.normal(-1.0, 1.0, 50)
    weights = rng.uniform(0.5, 2.0, 50)
    with jax.enable_x64(True):
        got = np.asarray(row_loglik(Poisson(), jnp.asarray(y), jnp.asarray(weights),
                                    jnp.asarray(eta), jnp.asarray(zeta), jnp.zeros(50),
                                    zero_inflated=True))
    pi, mu = 1 / (1 + np.exp(-zeta)), np.exp(eta)
    f = stats.poisson.pmf(y, mu)
    want = weights * np.log(np.where(y == 0, pi + (1 - pi) * f, (1 - pi) * f))
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_row_loglik_hurdle_uses_the_zero_probability_and_the_truncated_density():
    rng = np.random.default_rng(2)
    y = rng.poisson(1.5, 40).astype(float)
    eta, zeta = rng.normal(0.3, 0.4, 40), rng.normal(0.0, 1.0, 40)
    with jax.enable_x64(True):
        got = np.asarray(row_loglik(TruncatedPoissonForTest(), jnp.asarray(y), jnp.ones(40),
                                    jnp.asarray(eta), jnp.asarray(zeta), jnp.zeros(40),
                                    zero_inflated=True))
    pi, mu = 1 / (1 + np.exp(-zeta)), np.exp(eta)
    positive = np.log1p(-pi) + stats.poisson.logpmf(y, mu) - np.log1p(-np.exp(-mu))
    np.testing.assert_allclose(got, np.where(y == 0, np.log(pi), positive), rtol=1e-12)


def test_row_loglik_is_finite_with_finite_derivatives_at_extreme_zero_inflation():
    y = jnp.array([0.0, 0.0, 3.0])
    with jax.enable_x64(True):
        def total(zeta):
            return jnp.sum(row_loglik(Poisson(), y, jnp.ones(3), jnp.array([0.2, -30.0, 1.0]),
                                      zeta, jnp.zeros(3), zero_inflated=True))

        zeta = jnp.array([40.0, -40.0, -40.0])
        value, grad, hessian = jax.jit(
            lambda z: (total(z), jax.grad(total)(z), jax.hessian(total)(z)))(zeta)
        assert np.isfinite(value)
        assert np.all(np.isfinite(grad)) and np.all(np.isfinite(hessian))


def test_family_protocol_defaults():
    assert zero_inflatable(Poisson()) and not is_truncated(Poisson())
    assert is_truncated(TruncatedPoissonForTest())
    assert zero_inflatable(TruncatedPoissonForTest())
    assert not zero_inflatable(get_family("gaussian"))


# ---- fast: bad input, before any tracing ------------------------------------------------

@pytest.fixture(scope="module")
def salamanders():
    return glmmjax.datasets.load("salamanders")


@pytest.mark.parametrize("family", ["gaussian", "gamma", "beta"])
def test_ziformula_with_a_family_that_cannot_be_zero_inflated(family, salamanders):
    with pytest.raises(ValueError, match=r"ziformula=.*cannot be zero-inflated.*count"):
        glmmjax.glmer("count ~ mined + (1|site)", salamanders, family=family,
                      ziformula="~1")


def test_dispformula_with_random_effects_is_refused(salamanders):
    with pytest.raises(ValueError, match=r"dispformula=.*random-effects.*fixed effects only"):
        glmmjax.glmer("count ~ mined + (1|site)", salamanders, family="negative_binomial",
                      dispformula="~ mined + (1|site)")


def test_dispformula_for_a_family_without_dispersion(salamanders):
    with pytest.raises(ValueError, match=r"dispformula=.*poisson family has no dispersion"):
        glmmjax.glmer("count ~ mined + (1|site)", salamanders, family="poisson",
                      dispformula="~ mined")


def test_zero_dispersion_only_for_gaussian(salamanders):
    with pytest.raises(ValueError, match=r"'~0'.*gaussian family only"):
        glmmjax.glmer("count ~ mined + (1|site)", salamanders, family="negative_binomial",
                      dispformula="~0")


def test_two_sided_ziformula_and_unknown_columns(salamanders):
    with pytest.raises(FormulaError, match="ziformula must be one-sided"):
        glmmjax.glmer("count ~ mined + (1|site)", salamanders, family="poisson",
                      ziformula="count ~ mined")
    with pytest.raises(glmmjax.DataError, match=r"\['nope'\].*ziformula/dispformula"):
        glmmjax.glmer("count ~ mined + (1|site)", salamanders, family="poisson",
                      ziformula="~ nope")


# ---- against glmmTMB --------------------------------------------------------------

def _tmb_params(fit, reference) -> np.ndarray:
    """glmmTMB's estimates in our parameter layout (θ_cond, θ_zi, β, β_zi, β_d); every
    reference model has scalar random effects, whose θ is the SD."""
    zi_terms = fit.parts.zi.terms if fit.parts.zi is not None else ()
    sds = [next(iter(reference[key][term.group].values()))
           for key, terms in (("re_sd_cond", fit.design.terms), ("re_sd_zi", zi_terms))
           for term in terms]
    return np.array(sds + reference["fixef_cond"] + reference["fixef_zi"]
                    + reference["fixef_disp"])


def _check_estimates(fit, reference):
    """Estimates within 1e-4 relative. Where they are not, glmmTMB stopped short of the
    optimum, shown: our criterion at glmmTMB's estimates reproduces its −2 log L, and
    ours is lower; then the estimates must agree within 1e-3 standard errors. Returns
    whether such a better optimum was shown."""
    better = False
    for part in ("cond", "zi", "disp"):
        assert [r_name(n) for n in fit.fixef[part].index] == reference[f"fixef_{part}_names"]
        est, se = fit.fixef[part].to_numpy(), fit.fixef_se[part].to_numpy()
        want, want_se = np.array(reference[f"fixef_{part}"]), np.array(reference[f"se_{part}"])
        np.testing.assert_allclose(se, want_se, rtol=1e-3, err_msg=part)
        if np.allclose(est, want, rtol=1e-4, atol=1e-7):
            continue
        at_tmb = fit.criterion_at(_tmb_params(fit, reference))
        np.testing.assert_allclose(at_tmb, reference["minus2loglik"], rtol=1e-12)
        assert fit.criterion < at_tmb, (part, est, want)
        assert np.all(np.abs(est - want) <= 1e-3 * want_se), (part, est, want)
        better = True
    return better


# sleepstudy_gaussian_disp0 has its own test below.
@pytest.mark.parametrize("name", [n for n, m in MODELS.items()
                                  if m["glmmTMB"]["minus2loglik"] is not None
                                  and n != "sleepstudy_gaussian_disp0"])
def test_matches_glmmtmb(name):
    model = MODELS[name]
    reference = model["glmmTMB"]
    fit = _fit(model)
    assert fit.converged, fit.convergence
    # −2 log L never worse than glmmTMB's by more than 1e-6 relative.
    assert fit.criterion <= reference["minus2loglik"] + 1e-6 * abs(reference["minus2loglik"])
    np.testing.assert_allclose(fit.aic, reference["aic"], rtol=1e-6)
    assert fit.n_params == reference["df"]
    assert fit.nobs == reference["nobs"]
    better = _check_estimates(fit, reference)
    for frame, key in ((fit.varcorr, "re_sd_cond"), (fit.varcorr_zi, "re_sd_zi")):
        for group, sds in reference[key].items():
            rows = frame[(frame["group"] == group) & frame["var2"].isna()]
            np.testing.assert_allclose(rows["sdcor"].to_numpy(), list(sds.values()),
                                       rtol=2e-4, atol=1e-6, err_msg=f"{key} {group}")
    for kind in ("response", "conditional", "zprob"):
        got = fit.predict(type=kind).to_numpy()[:8]
        # At a better optimum than glmmTMB's the predictions move with the estimates.
        np.testing.assert_allclose(got, reference[f"predict_{kind}"],
                                   rtol=1e-3 if better else 1e-4, atol=1e-10, err_msg=kind)


def _exact_gaussian_deviance(fit, data, params, residual_variance):
    """−2 log L of a Gaussian LMM with scalar random-effect terms in closed form:
    y ~ N(Xβ, Σₜ θₜ²·ZₜZₜ' + σ²I), params in our layout (θ per term, then β)."""
    y = fit.parts_data.y
    X = np.asarray(fit.parts_data.X)
    V = residual_variance * np.eye(len(y))
    for theta, term in zip(params, fit.design.terms):
        codes = pd.factorize(data[term.group])[0]
        Z = (codes[:, None] == np.arange(codes.max() + 1)[None, :]).astype(float)
        V += theta**2 * Z @ Z.T
    r = y - X @ params[len(fit.design.terms):]
    _, logdet = np.linalg.slogdet(V)
    return logdet + r @ np.linalg.solve(V, r) + len(y) * np.log(2 * np.pi)


def test_gaussian_with_zero_dispersion():
    """dispformula='~0' with an observation-level random effect: the residual variance
    is fixed at 1.5e-8 (glmmTMB's zerodisp_val), so the data pin the random effects to
    a subspace and H = I + Σ aᵢWᵢaᵢ' has entries ~1e12 against eigenvalues ~1. Formed
    and Cholesky-factored, H loses those to cancellation and the criterion is noisy at
    1e-4; the host engine factors it by a QR decomposition instead
    (HostParts._refactor_if_ill_conditioned). The Laplace approximation is exact for a
    Gaussian LMM, so the criterion is checked against the closed-form marginal
    likelihood: ours equals it and is at its minimum; glmmTMB's reported −2 log L is
    5.7e-4 *below* that minimum (its own cancellation: the closed form at glmmTMB's
    estimates is 8e-5 above ours), which is within the issue's 1e-6 relative."""
    model = MODELS["sleepstudy_gaussian_disp0"]
    reference = model["glmmTMB"]
    fit = _fit(model)
    data = _data(model)
    assert fit.converged, fit.convergence
    sigma2 = np.exp(ZERO_DISPERSION_LOG)
    ours = _exact_gaussian_deviance(fit, data, np.asarray(fit.params), sigma2)
    np.testing.assert_allclose(fit.criterion, ours, rtol=1e-12)
    at_tmb = _exact_gaussian_deviance(fit, data, _tmb_params(fit, reference)[:4], sigma2)
    np.testing.assert_allclose(fit.criterion_at(_tmb_params(fit, reference)), at_tmb, rtol=1e-12)
    assert ours < at_tmb
    assert ours < reference["minus2loglik"] + 1e-6 * reference["minus2loglik"]
    # At the closed form's minimum: no coordinate step lowers it.
    x = np.asarray(fit.params)
    for j in range(x.size):
        for step in (-1e-3, 1e-3):
            moved = x.copy()
            moved[j] += step * max(1.0, abs(x[j]))
            assert _exact_gaussian_deviance(fit, data, moved, sigma2) > ours
    np.testing.assert_allclose(fit.fixef["cond"], reference["fixef_cond"], rtol=1e-3)
    np.testing.assert_allclose(fit.fixef_se["cond"], reference["se_cond"], rtol=1e-3)
    assert fit.fixef["disp"].empty and fit.n_params == reference["df"]


def test_zinb_with_random_effects_in_both_parts_is_reported_as_not_converged():
    """glmmTMB 1.1.5 ends this fit with "false convergence" and a NaN likelihood: the
    zero-inflation intercept runs off towards −∞ while its random effect's SD grows, so
    the criterion has no interior optimum. Ours must say so (a warning and
    ``converged=False``), not return numbers that look like estimates."""
    model = MODELS["salamanders_zinb2_zi_re"]
    assert model["glmmTMB"]["minus2loglik"] is None
    with pytest.warns(glmmjax.ConvergenceWarning):
        fit = _fit(model)
    assert not fit.converged


def test_lmer_dispformula_equals_glmer_gaussian():
    model = MODELS["sleepstudy_gaussian_disp"]
    fit = glmmjax.lmer(model["formula"], glmmjax.datasets.load("sleepstudy"), reml=False,
                       dispformula="~Days")
    np.testing.assert_allclose(fit.criterion, model["glmmTMB"]["minus2loglik"], rtol=1e-9)
    _check_estimates(fit, model["glmmTMB"])
    text = fit.summary()
    assert "Dispersion model:" in text and "Conditional model:" in text


def test_summary_simulate_and_predict_on_new_data():
    model = MODELS["salamanders_zip_zi_re"]
    fit = _fit(model)
    text = fit.summary()
    for heading in ("Zero inflation:", "Conditional model:", "Zero-inflation model:",
                    "Number of obs: 644"):
        assert heading in text
    data = _data(model)
    new = data.iloc[:5]
    np.testing.assert_allclose(fit.predict(new, type="response").to_numpy(),
                               fit.predict(type="response").to_numpy()[:5], rtol=1e-12)
    sims = fit.simulate(400, seed=3)
    assert sims.shape == (644, 400)
    # Simulated zeros at the rate the model implies: Σ π + (1 − π)e^{−μ} over rows.
    pi = fit.predict(type="zprob").to_numpy()
    mu = fit.predict(type="conditional").to_numpy()
    expected = np.sum(pi + (1 - pi) * np.exp(-mu))
    observed = (sims.to_numpy() == 0).sum(axis=0).mean()
    assert abs(observed - expected) < 0.02 * expected


def test_fit_many_zero_inflated_poisson_equals_glmer_one_by_one():
    rng = np.random.default_rng(7)
    data = glmmjax.datasets.load("salamanders").iloc[::4].reset_index(drop=True)
    sites = data["site"].cat.codes.to_numpy()
    mined = (data["mined"] == "no").to_numpy(float)
    responses = []
    for _ in range(3):
        b = rng.normal(0, 0.4, sites.max() + 1)
        mu = np.exp(0.2 + 1.0 * mined + b[sites])
        zero = rng.random(len(data)) < 1 / (1 + np.exp(-(0.5 - 1.5 * mined)))
        responses.append(np.where(zero, 0, rng.poisson(mu)))
    Y = np.column_stack(responses).astype(float)
    batch = glmmjax.fit_many("~ mined + (1 | site)", data, Y, family="poisson",
                             ziformula="~ mined")
    assert batch.converged.all()
    assert list(batch.fixef.columns) == ["Intercept", "mined[T.no]", "zi~Intercept",
                                         "zi~mined[T.no]"]
    for k in range(3):
        fit = glmmjax.glmer("y ~ mined + (1 | site)", data.assign(y=Y[:, k]),
                            family="poisson", ziformula="~ mined")
        want = np.concatenate([fit.fixef["cond"], fit.fixef["zi"]])
        want_se = np.concatenate([fit.fixef_se["cond"], fit.fixef_se["zi"]])
        np.testing.assert_allclose(batch.fixef.iloc[k], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(batch.fixef_se.iloc[k], want_se, rtol=1e-4)
        np.testing.assert_allclose(batch.models["criterion"][k], fit.criterion, rtol=1e-9)


def test_zeros_with_a_truncated_family_need_ziformula(salamanders):
    with pytest.raises(glmmjax.DataError, match=r"zeros.*zero-truncated.*ziformula"):
        glmmjax.glmer("count ~ mined + (1|site)", salamanders,
                      family=TruncatedPoissonForTest(), dispformula="~1")


@pytest.mark.slow
def test_host_and_compiled_engines_agree():
    """The host engine (numpy, default on the CPU) and the compiled one fit the same
    criterion with the same exact gradient (zero-inflation random effects and a
    dispersion model both in play)."""
    data = glmmjax.datasets.load("salamanders")
    fits = [glmmjax.glmer("count ~ mined + (1|site)", data, family="negative_binomial",
                          ziformula="~ mined", dispformula="~ mined", engine=engine)
            for engine in ("host", "jax")]
    assert [f.engine for f in fits] == ["host", "jax"]
    np.testing.assert_allclose(fits[0].criterion, fits[1].criterion, rtol=1e-10)
    np.testing.assert_allclose(fits[0].params, fits[1].params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fits[0].params_cov, fits[1].params_cov, rtol=1e-4, atol=1e-8)


def test_scaled_residuals_see_the_zero_inflation_the_model_removes(salamanders):
    """DHARMa's zero-inflation test on the salamander counts: excess zeros under a
    Poisson GLMM, none left under the zero-inflated one (whose simulations draw new
    random effects in both parts)."""
    formula = "count ~ mined + (1|site)"
    poisson = glmmjax.glmer(formula, salamanders, family="poisson")
    zip_fit = glmmjax.glmer(formula, salamanders, family="poisson", ziformula="~mined")
    before = poisson.scaled_residuals(n_sim=200, seed=1).test_zero_inflation()
    after = zip_fit.scaled_residuals(n_sim=200, seed=1).test_zero_inflation()
    assert before.statistic > 1.2 and before.p_value < 0.01
    assert abs(after.statistic - 1.0) < 0.05 and after.p_value > 0.1
