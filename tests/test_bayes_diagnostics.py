"""R̂, bulk and tail ESS, PSIS, LOO and WAIC (numpy) against ArviZ, and their behaviour
on draws whose answer is known."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from glmmjax._bayes import diagnostics as diag


def _ar_draws(seed=0, chains=4, draws=400):
    """AR(1) chains with different autocorrelations; one chain of parameter 3 shifted,
    parameter 5 lognormal (skewed)."""
    rng = np.random.default_rng(seed)
    phis = np.array([0.0, 0.5, 0.9, -0.3, 0.95, 0.2])
    x = np.zeros((chains, draws, phis.size))
    for t in range(1, draws):
        x[:, t] = phis * x[:, t - 1] + rng.normal(size=(chains, phis.size))
    x[1, :, 3] += 0.5
    x[..., 5] = np.exp(x[..., 5])
    return x


def test_rhat_and_ess_match_arviz():
    az = pytest.importorskip("arviz")
    x = _ar_draws()
    ours = np.stack([diag.rhat(x), diag.ess_bulk(x), diag.ess_tail(x)])
    theirs = np.array([
        [float(az.rhat(x[..., k], method="rank")) for k in range(x.shape[2])],
        [float(az.ess(x[..., k], method="bulk")) for k in range(x.shape[2])],
        [float(az.ess(x[..., k], method="tail")) for k in range(x.shape[2])],
    ])
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)


def test_diagnostics_on_known_cases():
    rng = np.random.default_rng(1)
    iid = rng.normal(size=(4, 1000, 3))
    assert np.all(np.abs(diag.rhat(iid) - 1) < 0.01)
    assert np.all(np.abs(diag.ess_bulk(iid) / 4000 - 1) < 0.15)
    stuck = iid.copy()
    stuck[0] += 3.0  # one chain elsewhere
    assert np.all(diag.rhat(stuck) > 1.1)
    table = diag.summarize(iid, ["a", "b", "c"], probs=(0.05, 0.95))
    assert list(table.columns) == ["mean", "sd", "q5", "q95", "rhat", "ess_bulk", "ess_tail"]
    np.testing.assert_allclose(table["q5"], np.quantile(iid.reshape(-1, 3), 0.05, axis=0))


def test_psis_loo_waic_match_arviz():
    az = pytest.importorskip("arviz")
    rng = np.random.default_rng(2)
    # Heavy-tailed pointwise log-likelihoods, some with tied draws (stuck chains).
    loglik = rng.standard_t(3, size=(2, 500, 40)) * np.linspace(0.1, 2.0, 40) - 1.0
    loglik[0, 100:110, :5] = loglik[0, 100, :5]
    flat = loglik.reshape(-1, 40)
    lw, k = diag.psis(-flat, reff=0.7)
    lw_az, k_az = az.psislw(-flat.T, reff=0.7)
    np.testing.assert_allclose(k, k_az, atol=1e-10)
    np.testing.assert_allclose(lw, lw_az.T, atol=1e-10)
    idata = az.from_dict(posterior={"a": rng.normal(size=(2, 500))}, log_likelihood={"y": loglik})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loo_az = az.loo(idata, reff=1.0, pointwise=True)
        waic_az = az.waic(idata, pointwise=True)
        loo = diag.loo(flat, reff=1.0)
        waic = diag.waic(flat)
    assert loo.elpd == pytest.approx(loo_az["elpd_loo"], abs=1e-9)
    assert loo.se == pytest.approx(loo_az["se"], abs=1e-9)
    assert loo.p == pytest.approx(loo_az["p_loo"], abs=1e-9)
    np.testing.assert_allclose(loo.pareto_k, loo_az["pareto_k"], atol=1e-10)
    # The WAIC penalty is a sum of sample variances: S − 1 in the denominator as in the
    # loo R package, where ArviZ divides by S.
    s = flat.shape[0]
    assert waic.p == pytest.approx(waic_az["p_waic"] * s / (s - 1), abs=1e-9)
    assert waic.elpd == pytest.approx(waic_az["elpd_waic"] - (waic.p - waic_az["p_waic"]), abs=1e-9)


def test_psis_of_equal_weights_is_uniform():
    lw, k = diag.psis(np.zeros((400, 3)))
    np.testing.assert_allclose(lw, -np.log(400))
    assert np.all(np.isinf(k))  # a constant tail cannot be fitted (and needs no smoothing)
    with pytest.warns(diag.ParetoKWarning, match="Pareto k"):
        diag.loo(np.zeros((400, 3)))
