"""Every simulate → refit path keeps the trials, prior weights and offsets of the fit.

A parametric bootstrap refits responses simulated from the fitted model, so its
replicates must centre on the estimates (their bias is small against their spread).
Refitting aggregated binomial responses (``cbind``) with unit weights instead of the
trials, or dropping an offset, moves the whole distribution away (cbpp's intercept:
replicate median -31 against the estimate -1.40). Small replicate counts keep these
fast; the seed is fixed, so the checks are deterministic.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import glmmjax
from glmmjax._inference.bootstrap import refit_weights

N_BOOT = 24


def _centred(fit, boot, terms, spread=0.75):
    """Replicate medians within ``spread`` standard errors of the estimates (with 24
    replicates a median's own sampling SD is about 0.25 SE; a lost offset or trials
    move it by several SEs), and a replicate spread of the SE's order."""
    ok = boot.replicates[boot.batch.converged]
    assert len(ok) >= 0.8 * len(boot.replicates), boot.batch.models["status"].value_counts()
    for term in terms:
        estimate = fit.fixef[term]
        sd = ok[term].std(ddof=1)
        se = fit.fixef_se[term]
        assert 0.4 * se < sd < 2.5 * se, (term, sd, se)
        assert abs(ok[term].median() - estimate) < spread * se, (term, ok[term].median(), estimate, se)


def _counts_data(seed=3, groups=12, per=10):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(groups), per)
    x = rng.normal(size=g.size)
    exposure = rng.uniform(0.5, 20.0, g.size)
    b = rng.normal(0, 0.4, groups)
    eta = 0.3 + 0.5 * x + b[g]
    return pd.DataFrame({"g": [f"g{i}" for i in g], "x": x, "exposure": exposure}), eta, rng


def test_cbind_binomial_bootstrap_refits_with_the_trials():
    cbpp = glmmjax.datasets.load("cbpp")
    fit = glmmjax.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp,
                        family="binomial")
    np.testing.assert_array_equal(refit_weights(fit), cbpp["size"].to_numpy(float))
    boot = fit.bootstrap(N_BOOT, seed=1)
    _centred(fit, boot, ["Intercept", "period[T.2]"])
    # The refits see the same trials: a replicate equal to the data refits to the fit.
    # (N_BOOT copies: the bootstrap's shape, so its compiled batch program is reused.)
    same = np.repeat((cbpp["incidence"] / cbpp["size"]).to_numpy()[:, None], N_BOOT, axis=1)
    refits = glmmjax.fit_many("~ period + (1 | herd)", cbpp, same, family="binomial",
                              weights=refit_weights(fit))
    np.testing.assert_allclose(refits.fixef.to_numpy(),
                               np.tile(fit.fixef.to_numpy(), (N_BOOT, 1)), atol=2e-4)


def test_cbind_binomial_boot_confint_covers_the_estimate():
    cbpp = glmmjax.datasets.load("cbpp")
    fit = glmmjax.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp,
                        family="binomial")
    table = fit.confint(method="boot", n_boot=N_BOOT, seed=2)
    low, high = table.loc["Intercept"].to_numpy()
    assert low < fit.fixef["Intercept"] < high
    assert high - low < 8 * fit.fixef_se["Intercept"]


def test_poisson_bootstrap_keeps_a_formula_offset():
    data, eta, rng = _counts_data()
    data["y"] = rng.poisson(data["exposure"] * np.exp(eta))
    fit = glmmjax.glmer("y ~ x + offset(np.log(exposure)) + (1 | g)", data, family="poisson")
    _centred(fit, fit.bootstrap(N_BOOT, seed=1), ["Intercept", "x"])


def test_poisson_bootstrap_keeps_an_offset_argument_and_loop_refits_agree():
    data, eta, rng = _counts_data(seed=4)
    data["y"] = rng.poisson(data["exposure"] * np.exp(eta))
    fit = glmmjax.glmer("y ~ x + (1 | g)", data, family="poisson",
                        offset=np.log(data["exposure"].to_numpy()))
    _centred(fit, fit.bootstrap(N_BOOT, seed=1), ["Intercept", "x"])
    # The one-at-a-time path (simulate, then refit) keeps the offset too.
    sims = fit.simulate(4, seed=5, include_re=False).to_numpy()
    refits = np.array([fit.refit(sims[:, i]).fixef["Intercept"] for i in range(4)])
    assert np.all(np.abs(refits - fit.fixef["Intercept"]) < 4 * fit.fixef_se["Intercept"])


def test_weighted_lmm_bootstrap_is_centred():
    sleep = glmmjax.datasets.load("sleepstudy")
    weights = np.where(np.arange(len(sleep)) % 2 == 0, 1.0, 4.0)
    fit = glmmjax.lmer("Reaction ~ Days + (1 | Subject)", sleep, weights=weights)
    np.testing.assert_array_equal(refit_weights(fit), weights)
    boot = fit.bootstrap(N_BOOT, seed=1)
    _centred(fit, boot, ["Intercept", "Days"])
    ok = boot.replicates[boot.batch.converged]
    assert abs(ok["sigma"].median() - fit.sigma) < 0.15 * fit.sigma


@pytest.mark.slow
def test_negative_binomial_bootstrap_is_centred():
    data, eta, rng = _counts_data(seed=6, groups=15, per=12)
    mu = data["exposure"].to_numpy() * np.exp(eta)
    data["y"] = rng.negative_binomial(4, 4 / (4 + mu))
    fit = glmmjax.glmer("y ~ x + offset(np.log(exposure)) + (1 | g)", data,
                        family="negative_binomial")
    boot = fit.bootstrap(N_BOOT, seed=1)
    _centred(fit, boot, ["Intercept", "x"])
    ok = boot.replicates[boot.batch.converged]
    assert ok["dispersion"].median() == pytest.approx(fit.dispersion, rel=0.5)


@pytest.mark.slow
def test_gamma_bootstrap_with_weights_is_centred():
    data, eta, rng = _counts_data(seed=7)
    shape = 5.0
    weights = np.where(np.arange(len(data)) % 3 == 0, 2.0, 1.0)
    mu = np.exp(eta)
    data["y"] = rng.gamma(shape * weights, mu / (shape * weights))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a small-sample fit may sit near the boundary
        fit = glmmjax.glmer("y ~ x + (1 | g)", data, family=glmmjax.families.Gamma("log"),
                            weights=weights)
    np.testing.assert_array_equal(refit_weights(fit), weights)
    _centred(fit, fit.bootstrap(N_BOOT, seed=1), ["Intercept", "x"])
