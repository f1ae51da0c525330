"""Bayesian fits by NUTS: the demand example end to end, results (summaries, LOO/WAIC,
ArviZ, forecasts, the progress bar), calibration of posterior intervals by simulation
(SBC), and, marked slow, vectorized against sequential chains, agreement with the ML fits
on large data and convergence on classic data sets with the defaults.

The fast tests compile two samplers (tens of seconds of a small CPU each): the
example's model at a tiny size, shared by every test of results, and the calibration
model. Both use ``chain_method="sequential"`` (a single-chain program, which compiles
about twice as fast on a CPU as vectorized chains).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import cached

numpyro = pytest.importorskip("numpyro")
dist = pytest.importorskip("numpyro.distributions")

import glmmjax  # noqa: E402
from glmmjax import bayes  # noqa: E402

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"
SIZE = {"n_stores": 6, "n_regions": 3, "n_days": 30, "horizon": 7}
SAMPLER = {"num_warmup": 100, "num_samples": 100, "chain_method": "sequential"}


def _example():
    spec = importlib.util.spec_from_file_location("hierarchical_demand", EXAMPLES / "hierarchical_demand.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _demand(tmp_path_factory):
    def run():
        out = tmp_path_factory.mktemp("demand") / "demand.png"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bayes.SamplingWarning)
            return _example().main(**SIZE, num_chains=2, seed=3, out=out, progress_bar=True,
                                   **SAMPLER)

    return cached("bayes_demand", run)


def test_hierarchical_demand_example(tmp_path_factory, capsys):
    result = _demand(tmp_path_factory)
    captured = capsys.readouterr()
    printed = captured.out
    # The progress bar (tqdm, on stderr): two sequential chains of 200 iterations share it.
    assert "NUTS, 2 chain(s)" in captured.err and "400/400" in captured.err
    for piece in ["Multilevel Hyperparameters:", "~store (Number of levels: 6)",
                  "Correlation Structures:", "ar[1]", "Posterior against the simulated truth",
                  "Regions: total sales"]:
        assert piece in printed
    assert result["plot_path"].stat().st_size > 1000
    stores, regions = result["store_intervals"], result["region_intervals"]
    assert stores.shape[0] == 6 and regions.shape[0] == 3
    assert np.all(stores["lower"] < stores["median"]) and np.all(stores["median"] < stores["upper"])
    assert stores["covered"].sum() >= 4  # 90% intervals, six stores
    assert np.allclose(regions["actual"].sum(), stores["actual"].sum())
    # The REML fit with residual AR(1) beside it, and the forecasts compared.
    assert "residual AR(1) within store" in printed
    assert -1 < result["frequentist_fit"].rho < 1
    comparison = result["forecast_comparison"]
    assert comparison.shape == (4, 3) and np.all(np.isfinite(comparison.to_numpy(dtype=float)))
    freq = result["frequentist_intervals"]["store"]
    assert np.all(freq["lower"] < freq["median"]) and np.all(freq["median"] < freq["upper"])


def test_summaries_and_sampling_warnings(tmp_path_factory):
    fit = _demand(tmp_path_factory)["fit"]
    assert (fit.num_chains, fit.num_samples) == (2, 100)
    table = fit.posterior_summary("all", probs=(0.05, 0.95))
    assert list(table.columns) == ["mean", "sd", "q5", "q95", "rhat", "ess_bulk", "ess_tail"]
    expected = {"fixef": 3, "sd": 4, "cor": 2, "family": 2, "ranef": 6 * 2 + 3 * 2}
    for kind, rows in expected.items():
        assert fit.posterior_summary(kind).shape[0] == rows
    assert "r_store[S1,promo]" in table.index and "cor_region__Intercept__promo" in table.index
    assert np.all(np.isfinite(table["rhat"])) and np.all(table["ess_bulk"] > 0)
    assert list(fit.fixef.index) == ["Intercept", "promo", "weekend"]
    assert fit.ranef["store"].shape == (6, 2)
    draws = fit.draws
    assert draws["r_region"].shape == (2, 100, 3, 2)
    assert np.all((draws["ar1_rho"] > -1) & (draws["ar1_rho"] < 1))
    # b_Intercept is uncentred: the sampled Intercept minus the slopes times the means.
    shift = sum(draws[f"b_{n}"] * m for n, m in zip(["promo", "weekend"], fit.bayes_model.x_means[1:]))
    np.testing.assert_allclose(draws["b_Intercept"], fit.samples["Intercept"] - shift)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit.check()
        diverging = np.zeros_like(fit.diverging)
        diverging[0, :3] = True
        dataclasses.replace(fit, diverging=diverging, _cache={}).check()
    messages = [str(w.message) for w in caught if w.category is bayes.SamplingWarning]
    assert any(m.startswith("ess bulk below 200 (100 per chain)") for m in messages)
    assert any(m.startswith("3 of 200 draws after warmup were divergent") for m in messages)


def test_loo_waic_and_inference_data(tmp_path_factory):
    fit = _demand(tmp_path_factory)["fit"]
    n = len(fit.bayes_model.data.y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bayes.ParetoKWarning)
        loo, waic = fit.loo(reff=1.0), fit.waic()
    assert loo.pointwise.shape == (n,) and loo.pareto_k.shape == (n,)
    assert 0 < loo.p < n and abs(loo.elpd - waic.elpd) < 5
    assert "elpd_loo" in str(loo)
    az = pytest.importorskip("arviz")
    idata = fit.to_inference_data()
    assert idata.posterior["r_store"].shape == (2, 100, 6, 2)
    assert idata.log_likelihood["y"].shape == (2, 100, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = az.loo(idata, reff=1.0)
    assert theirs["elpd_loo"] == pytest.approx(loo.elpd, abs=1e-6)
    assert theirs["p_loo"] == pytest.approx(loo.p, abs=1e-6)


def test_repr_plots_and_posterior_predictive_group(tmp_path_factory):
    fit = _demand(tmp_path_factory)["fit"]
    text = repr(fit)
    assert len(text.splitlines()) <= 8 and "array(" not in text
    for piece in ["BayesResult", "log_sales ~ promo", "store (6), region (3)",
                  "2 chains × 100 draws"]:
        assert piece in text, text
    assert fit._repr_html_().startswith("<div")
    model_text = repr(fit.bayes_model)
    assert "BayesModel" in model_text and "AR(1)" in model_text and "array(" not in model_text
    ic = bayes.InformationCriterion("loo", -10.0, 1.0, 2.0, np.zeros(500))
    assert repr(ic) == "<InformationCriterion loo: elpd -10.00 (se 1.00), p 2.00, n 500>"
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for axes in (fit.plot_posterior("sd"), fit.plot_ppc(num_draws=10)):
        axes = np.atleast_1d(axes)
        axes[0].figure.canvas.draw()
        assert all(ax.has_data() for ax in axes)
        plt.close(axes[0].figure)
    az = pytest.importorskip("arviz")
    idata = fit.to_inference_data()
    n = len(fit.bayes_model.data.y)
    assert idata.posterior_predictive["y"].shape == (2, 100, n)
    ax = np.atleast_1d(az.plot_ppc(idata, num_pp_samples=10))[0]
    ax.figure.canvas.draw()
    plt.close(ax.figure)


def test_forecasts_continue_the_series(tmp_path_factory):
    """Forecast spread grows with the horizon (the AR(1) error forgets the last
    residual), and a store never seen gets a wider interval than a known one."""
    result = _demand(tmp_path_factory)
    fit, future = result["fit"], result["future"]
    draws = fit.posterior_predict(future, seed=1)
    assert draws.shape == (200, len(future))
    sd = np.std(draws, axis=0)
    first, last = future["day"] == future["day"].min(), future["day"] == future["day"].max()
    assert sd[first.to_numpy()].mean() < sd[last.to_numpy()].mean()
    new_store = future[future["store"] == "S1"].assign(store="S99")
    known = fit.posterior_predict(future[future["store"] == "S1"], type="response", seed=2)
    unseen = fit.posterior_predict(new_store, type="response", seed=2)
    assert np.std(unseen, axis=0).mean() > np.std(known, axis=0).mean()
    in_sample = fit.posterior_predict(num_draws=50)
    assert in_sample.shape == (50, len(fit.bayes_model.data.y))
    assert in_sample.columns.equals(result["history"].index)  # the data's row labels


@pytest.mark.slow
def test_vectorized_chains_match_sequential_ones():
    """The default ``chain_method="vectorized"`` (chains advance together under vmap,
    as on a GPU) draws what one-chain-at-a-time sampling draws from the same seed; a
    seed reproduces its draws and another seed does not. Slow: it compiles a vmapped and
    a single-chain sampler (about 20 s each on a small CPU); the slow convergence tests
    below also run vectorized chains, the defaults."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"g": np.repeat([f"g{i}" for i in range(5)], 4), "x": rng.normal(size=20)})
    frame["y"] = 1.0 + 0.5 * frame["x"] + np.repeat(rng.normal(size=5), 4) + rng.normal(size=20)
    bm = bayes.build("y ~ x + (1 | g)", frame)
    options = {"num_chains": 2, "num_warmup": 50, "num_samples": 50, "warn": False}
    vectorized = bm.sample(seed=4, **options)
    sequential = bm.sample(seed=4, chain_method="sequential", **options)
    again = bm.sample(seed=4, **options)
    other = bm.sample(seed=5, **options)
    assert sorted(vectorized.samples) == sorted(bm.sampled_sites())
    for name, draws in vectorized.samples.items():
        assert draws.shape[:2] == (2, 50)
        np.testing.assert_allclose(draws, sequential.samples[name], atol=1e-5)
        np.testing.assert_array_equal(draws, again.samples[name])
    assert not np.allclose(vectorized.samples["b_x"], other.samples["b_x"])
    assert not np.allclose(vectorized.samples["b_x"][0], vectorized.samples["b_x"][1])


# Fixed priors (not scaled to the data) that keep scales away from zero, where tiny
# residual or group SDs make posteriors too hard for short chains.
SBC_PRIORS = {
    "b_Intercept": dist.Normal(0.0, 1.0),
    "b": dist.Normal(0.0, 1.0),
    "sd": dist.Gamma(4.0, 8.0),
    "cor": 2.0,
    "sigma": dist.Gamma(8.0, 16.0),
    "ar1_rho": dist.Uniform(-0.7, 0.7),
}


@pytest.mark.slow  # ~10 s idle of NUTS over many replicates
def test_posterior_intervals_are_calibrated():
    """Simulation-based calibration (Cook, Gelman & Rubin 2006; Talts et al. 2018):
    truths from the prior, data from the model given them, a posterior per data set by
    NUTS; 90% central intervals then cover the truth with probability 0.9. A correlated
    random intercept and slope with AR(1) errors; 30 data sets fitted in one call."""
    rng = np.random.default_rng(0)
    groups, per_group = 8, 8
    frame = pd.DataFrame({
        "g": np.repeat([f"g{i}" for i in range(groups)], per_group),
        "t": np.tile(np.arange(per_group), groups),
        "x": rng.normal(size=groups * per_group),
        "y": rng.normal(size=groups * per_group),  # replaced by simulated responses
    })
    bm = bayes.build("y ~ x + (1 + x | g)", frame, priors=SBC_PRIORS, ar1=("t", "g"))
    replicates = 30
    truth = bm.prior_predictive(num_samples=replicates, seed=5)
    assert truth["y"].shape == (replicates, len(frame)) and truth["r_g"].shape == (replicates, 8, 2)
    # target_accept 0.8 (brms's) rather than the default 0.99: half the leapfrog steps,
    # and calibration checks the model (likelihood, priors, transforms), not the tuning.
    post = bm.sample_many(truth["y"], num_chains=1, num_warmup=100, num_samples=100, seed=6,
                          chain_method="sequential", target_accept=0.8)
    assert post["diverging"].shape == (replicates, 1, 100)
    names = ["b_Intercept", "b_x", "sd_g__Intercept", "sd_g__x", "cor_g__Intercept__x", "sigma",
             "ar1_rho"]
    covered, mismatched = [], []
    for name in names:
        draws = post[name].reshape(replicates, -1)
        lo, hi = np.quantile(draws, [0.05, 0.95], axis=1)
        covered.append((lo <= truth[name]) & (truth[name] <= hi))
        other = np.roll(truth[name], 1)  # another data set's truth
        mismatched.append((lo <= other) & (other <= hi))
    covered = np.array(covered)  # (parameters, replicates)
    rate = covered.mean()
    print(f"SBC coverage of 90% intervals: {rate:.3f} over {covered.size} intervals "
          f"(against the truth of another data set: {np.mean(mismatched):.3f}); "
          f"per parameter {dict(zip(names, covered.mean(axis=1).round(2).tolist()))}")
    # 210 intervals: the binomial SD of the rate is 0.021 (less independent across the
    # parameters of one data set), so ±0.06 is about 3 SDs; 77% coverage fails.
    assert abs(rate - 0.9) < 0.06
    assert covered.mean(axis=1).min() >= 0.7  # no parameter systematically missed (3.7 SDs)
    # The check has power: posteriors scored against the wrong data set's truth fail it.
    assert abs(np.mean(mismatched) - 0.9) >= 0.06


# ---- slow: agreement with maximum likelihood and convergence with the defaults --------
def _simulated_poisson(n_groups=60, per_group=40, seed=4):
    import pandas as pd

    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), per_group)
    x = rng.normal(size=g.size)
    u = rng.multivariate_normal([0, 0], [[0.25, 0.03], [0.03, 0.09]], n_groups)
    eta = 0.5 + 0.3 * x + u[g, 0] + u[g, 1] * x
    return pd.DataFrame({"g": g.astype(str), "x": x, "y": rng.poisson(np.exp(eta))})


@pytest.mark.slow
def test_posterior_means_approach_ml_on_large_data():
    """On 2,400 Poisson observations in 60 groups (sampled with the defaults) the
    posterior means of β are within a quarter of a standard error of glmer's Laplace
    estimates, their posterior SDs within 15% of the standard errors, and the posterior
    means of the random-effect SDs within 10% of the ML ones."""
    frame = _simulated_poisson()
    formula = "y ~ x + (1 + x | g)"
    ml = glmmjax.glmer(formula, frame, "poisson")
    fit = bayes.fit(formula, frame, "poisson", seed=1)
    table = fit.posterior_summary("all")
    print(f"max R-hat {table['rhat'].max():.4f}, min bulk ESS {table['ess_bulk'].min():.0f}, "
          f"divergences {fit.divergences}; posterior mean - ML estimate: "
          f"{(fit.posterior_summary('fixef')['mean'].to_numpy() - ml.fixef.to_numpy()).round(4)}"
          f" (SEs {ml.fixef_se.to_numpy().round(4)})")
    beta = fit.posterior_summary("fixef")
    np.testing.assert_allclose(beta["mean"], ml.fixef, atol=0.25 * ml.fixef_se.max())
    np.testing.assert_allclose(beta["sd"], ml.fixef_se, rtol=0.15)
    sd = fit.posterior_summary("sd")["mean"].to_numpy()
    vc = ml.varcorr
    ml_sd = vc[vc["var2"].isna()]["sdcor"].to_numpy()
    np.testing.assert_allclose(sd, ml_sd, rtol=0.1)


CLASSIC = {
    "sleepstudy": ("Reaction ~ Days + (Days | Subject)", None),
    "cbpp": ("cbind(incidence, size - incidence) ~ period + (1 | herd)", "binomial"),
    "penicillin": ("diameter ~ 1 + (1 | plate) + (1 | sample)", None),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CLASSIC))
def test_defaults_converge_on_classic_data(name):
    """brms's defaults (4 chains × 1000 warmup + 1000 draws) give R̂ < 1.01 and no
    divergent transitions on sleepstudy, cbpp and the crossed penicillin model."""
    formula, family = CLASSIC[name]
    fit = bayes.fit(formula, glmmjax.datasets.load(name), family, seed=2)
    table = fit.posterior_summary("all")
    print(f"{name}: max R-hat {table['rhat'].max():.4f}, min bulk ESS "
          f"{table['ess_bulk'].min():.0f}, min tail ESS {table['ess_tail'].min():.0f}, "
          f"divergences {fit.divergences}, {fit.seconds:.1f} s")
    assert table["rhat"].max() < 1.01
    assert fit.divergences == 0
