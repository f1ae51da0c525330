"""Simulation from fits, residuals, DHARMa-style scaled residuals, plots and singular
fits."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import cached, rel_close
from scipy import stats

import glmmjax
from glmmjax._inference.diagnostics import ScaledResiduals, pit_residuals


@pytest.fixture(scope="module")
def sleepstudy():
    return glmmjax.datasets.load("sleepstudy")


def slope_fit(data):
    return cached(("lmm", "sleepstudy_reml"),
                  lambda: glmmjax.lmer("Reaction ~ Days + (Days | Subject)", data))


def intercept_fit(data):
    return cached(("lmm", "sleepstudy_intercept_reml"),
                  lambda: glmmjax.lmer("Reaction ~ Days + (1 | Subject)", data))


# -- simulate ---------------------------------------------------------------------------
def test_simulate_layout_and_seed(sleepstudy):
    fit = slope_fit(sleepstudy)
    sims = fit.simulate(3, seed=1)
    assert sims.shape == (180, 3)
    assert list(sims.columns) == ["sim_1", "sim_2", "sim_3"]
    assert sims.index.equals(fit.design.rows)
    pd.testing.assert_frame_equal(sims, fit.simulate(3, seed=1))
    assert not np.allclose(sims.to_numpy(), fit.simulate(3, seed=2).to_numpy())
    with pytest.raises(ValueError, match="positive integer"):
        fit.simulate(0)


def test_simulated_moments(sleepstudy):
    # Conditional: mean = fitted, variance σ². Unconditional: mean = Xβ̂, variance
    # σ² + z'Dz with D = σ²ΛΛ'.
    fit = slope_fit(sleepstudy)
    n = 4000
    conditional = fit.simulate(n, seed=11).to_numpy()
    se = fit.sigma / np.sqrt(n)
    assert np.max(np.abs(conditional.mean(axis=1) - fit.fitted().to_numpy())) < 5 * se
    rel_close(conditional.var(axis=1).mean(), fit.sigma**2, 0.02)
    fresh = fit.simulate(n, include_re=False, seed=12).to_numpy()
    population = fit.predict(include_re=False).to_numpy()
    vc = fit.varcorr
    D = np.array([[vc.vcov[0], vc.vcov[2]], [vc.vcov[2], vc.vcov[1]]])
    z = np.column_stack([np.ones(180), sleepstudy["Days"].to_numpy()])
    expected_var = fit.sigma**2 + np.einsum("ia,ab,ib->i", z, D, z)
    assert np.max(np.abs(fresh.mean(axis=1) - population) / np.sqrt(expected_var / n)) < 5
    rel_close(np.mean(fresh.var(axis=1) / expected_var), 1.0, 0.02)


def test_simulate_newdata_and_new_levels(sleepstudy):
    fit = slope_fit(sleepstudy)
    new = pd.DataFrame({"Days": [0.0, 5.0, 5.0], "Subject": ["308", "new", "new"]})
    with pytest.raises(glmmjax.DataError, match="not seen in fitting"):
        fit.simulate(2, new, seed=1)
    sims = fit.simulate(2000, new, seed=1, allow_new_levels=True)
    assert sims.shape == (3, 2000) and list(sims.index) == [0, 1, 2]
    # The new subject's two rows share one random-effect draw per simulation.
    corr = np.corrcoef(sims.iloc[1], sims.iloc[2])[0, 1]
    assert corr > 0.3
    assert fit.simulate(1, new, include_re=False, seed=1).shape == (3, 1)


def test_refit_with_new_response(sleepstudy):
    fit = intercept_fit(sleepstudy)
    shifted = fit.refit(fit.observed_response() + 10.0)
    rel_close(shifted.fixef["Intercept"], fit.fixef["Intercept"] + 10.0, 1e-8)
    rel_close(shifted.theta_values, fit.theta_values, 1e-6)
    assert fit.refit(reml=False).method == "ML"
    with pytest.raises(ValueError, match="180 values"):
        fit.refit(np.zeros(5))


# -- residuals --------------------------------------------------------------------------
def test_lmm_residual_types(sleepstudy):
    fit = slope_fit(sleepstudy)
    response = fit.residuals()
    rel_close(fit.residuals("pearson"), response / fit.sigma, 1e-12)
    rel_close(fit.residuals("deviance"), response, 1e-12)
    rel_close(fit.residuals("working"), response, 1e-12)
    with pytest.raises(ValueError, match="type must be"):
        fit.residuals("studentized")


# -- scaled residuals -------------------------------------------------------------------
def test_pit_residuals_are_uniform_for_discrete_and_continuous_data():
    rng = np.random.default_rng(0)
    mu = rng.uniform(0.2, 4.0, size=400)
    y = rng.poisson(mu)
    sims = rng.poisson(mu[:, None], size=(400, 250))
    r = pit_residuals(y, sims, integer=True, rng=rng)
    assert stats.kstest(r, "uniform").pvalue > 0.05
    # Without randomization ties would pile up: discrete data need the PIT.
    assert stats.kstest(np.mean(sims <= y[:, None], axis=1), "uniform").pvalue < 1e-6
    x = rng.normal(mu, 1.0)
    sims = rng.normal(mu[:, None], 1.0, size=(400, 250))
    assert stats.kstest(pit_residuals(x, sims, False, rng), "uniform").pvalue > 0.05


def _scaled(y, sims, fitted, rng):
    return ScaledResiduals(pit_residuals(y, sims, True, rng), sims, y.astype(float), fitted,
                           True, pd.RangeIndex(len(y)), False)


def test_dispersion_and_zero_inflation_tests_detect_misfit():
    rng = np.random.default_rng(1)
    mu = rng.uniform(1.0, 5.0, size=300)
    sims = rng.poisson(mu[:, None], size=(300, 250))
    good = _scaled(rng.poisson(mu), sims, mu, rng)
    assert good.test_dispersion().p_value > 0.05
    assert good.test_zero_inflation().p_value > 0.05
    # Overdispersed (negative binomial, size 1) data against Poisson simulations.
    over = rng.negative_binomial(1.0, 1.0 / (1.0 + mu))
    test = _scaled(over, sims, mu, rng).test_dispersion()
    assert test.statistic > 1.3 and test.p_value < 0.01
    # Extra zeros.
    zeros = np.where(rng.uniform(size=300) < 0.3, 0, rng.poisson(mu))
    test = _scaled(zeros, sims, mu, rng).test_zero_inflation(alternative="greater")
    assert test.statistic > 1.5 and test.p_value < 0.01
    assert "zero inflation" in str(test)


def _with_response(fit, y):
    import dataclasses

    return dataclasses.replace(fit, design=dataclasses.replace(fit.design, response=y))


def test_scaled_residual_tests_are_calibrated(sleepstudy):
    # Responses drawn from the model itself (given its conditional modes) and judged by
    # the same model: the scaled residuals are exactly iid uniform, so the p-values of
    # the uniformity and dispersion tests are uniform too (20 replicates).
    fit = slope_fit(sleepstudy)
    responses = fit.simulate(20, seed=31).to_numpy()
    ks, disp = [], []
    for i in range(responses.shape[1]):
        res = _with_response(fit, responses[:, i]).scaled_residuals(
            n_sim=99, seed=100 + i, include_re=True)
        assert np.all((res.residuals >= 0) & (res.residuals <= 1))
        ks.append(res.test_uniformity().p_value)
        disp.append(res.test_dispersion().p_value)
    for p in (np.array(ks), np.array(disp)):
        assert stats.kstest(p, "uniform").pvalue > 0.01
        assert 0.25 < p.mean() < 0.75


def test_scaled_residuals_of_refitted_lmms(sleepstudy):
    # Data simulated from a fitted model and refitted: with parameters estimated from
    # the same data the tests are conservative (as Lilliefors' correction of KS shows,
    # and DHARMa documents), never anti-conservative.
    fit = intercept_fit(sleepstudy)
    responses = fit.simulate(8, include_re=False, seed=21).to_numpy()
    for i in range(responses.shape[1]):
        res = fit.refit(responses[:, i]).scaled_residuals(n_sim=100, seed=i)
        assert res.residuals.shape == (180,) and res.n_sim == 100
        assert res.test_uniformity().p_value > 0.05
        assert res.test_dispersion().p_value > 0.05
    # The real data: fine on uniformity.
    assert slope_fit(sleepstudy).scaled_residuals(100, seed=0).test_uniformity().p_value > 0.01


# -- plots ------------------------------------------------------------------------------
def test_plots(sleepstudy):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fit = slope_fit(sleepstudy)
    try:
        assert fit.plot_residuals().get_xlabel() == "fitted values"
        assert "QQ" in fit.plot_qq().get_title()
        assert len(fit.plot_ranef_qq()) == 2
        axes = fit.plot_caterpillar(term="Subject")
        assert len(axes[0].get_yticklabels()) == 18
        res = fit.scaled_residuals(50, seed=1)
        assert "KS p" in res.plot_qq().get_title()
        with pytest.raises(ValueError, match="unknown term"):
            fit.plot_caterpillar(term="Days")
    finally:
        plt.close("all")


def test_plots_without_matplotlib(sleepstudy, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ImportError, match=r"glmmjax\[plot\]"):
        slope_fit(sleepstudy).plot_residuals()


# -- singular fits ----------------------------------------------------------------------
def test_singular_fit_warns_and_explains(sleepstudy):
    means = sleepstudy.groupby("Subject", observed=True)["Reaction"].transform("mean")
    flat = sleepstudy.assign(Reaction=sleepstudy["Reaction"] - means + 300.0 + sleepstudy["Days"])
    with pytest.warns(glmmjax.SingularFitWarning, match=r"boundary \(singular\) fit") as record:
        fit = glmmjax.lmer("Reaction ~ Days + (1 | Subject)", flat)
    message = str(record[0].message)
    assert "variance of Intercept between levels of Subject is zero" in message
    for advice in ("dropping the term", "(1 + x || g)", "Bayesian"):
        assert advice in message
    assert fit.is_singular and "boundary (singular) fit" in fit.summary()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not slope_fit(sleepstudy).is_singular
        glmmjax._results.mixed.warn_if_singular(slope_fit(sleepstudy))


# -- GLMMs (the cbpp fit is shared with tests/test_glmm_reference.py) --------------------
@pytest.mark.slow
def test_glmm_simulate_residuals_and_scaled_residuals():
    fit = cached(("glmm", "cbpp_laplace"), lambda: glmmjax.glmer(
        "cbind(incidence, size - incidence) ~ period + (1 | herd)",
        glmmjax.datasets.load("cbpp"), family="binomial"))
    sims = fit.simulate(50, seed=3).to_numpy()
    trials = fit.prior_weights
    counts = sims * trials[:, None]
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-9)
    assert np.all((sims >= 0) & (sims <= 1))
    y, mu = fit.y, fit.fitted().to_numpy()
    dev = fit.residuals("deviance").to_numpy()
    unit = 2 * trials * (
        np.where(y > 0, y * np.log(np.where(y > 0, y, 1) / mu), 0)
        + np.where(y < 1, (1 - y) * np.log(np.where(y < 1, 1 - y, 1) / (1 - mu)), 0)
    )
    rel_close(dev, np.sign(y - mu) * np.sqrt(unit), 1e-8, atol=1e-12)
    eta = fit.fitted(type="link").to_numpy()
    rel_close(fit.residuals("working"), (y - mu) / (mu * (1 - mu)), 1e-8, atol=1e-12)
    rel_close(fit.residuals("pearson"), (y - mu) / np.sqrt(mu * (1 - mu) / trials), 1e-8)
    assert np.all(np.isfinite(eta))
    res = fit.scaled_residuals(n_sim=200, seed=4)
    assert res.integer and res.test_uniformity().p_value > 0.01
    refitted = fit.refit(sims[:, 0])
    assert refitted.converged and refitted.nobs == fit.nobs
