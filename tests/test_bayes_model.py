"""The NumPyro model built from a MixedModel, without running NUTS: the log density
against the model's own likelihood for every family, priors and their names, the AR(1)
process against its covariance, prior and posterior predictive paths, lazy import."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy import stats

numpyro = pytest.importorskip("numpyro")
dist = pytest.importorskip("numpyro.distributions")

import glmmjax  # noqa: E402
from glmmjax import bayes  # noqa: E402
from glmmjax._bayes.ar1 import forecast_index, forecast_process, latent_process  # noqa: E402
from glmmjax._bayes.model import GaussianAR1  # noqa: E402
from glmmjax._bayes.result import BayesResult  # noqa: E402
from glmmjax._model.design import DataError  # noqa: E402


def _frame(seed=0, n_groups=4, per_group=6):
    rng = np.random.default_rng(seed)
    n = n_groups * per_group
    g = np.repeat([f"g{i}" for i in range(n_groups)], per_group)
    x = rng.normal(size=n)
    mu = np.exp(0.3 + 0.4 * x)
    return pd.DataFrame({
        "g": g,
        "t": np.tile(np.arange(per_group) * 2, n_groups),  # gaps of 2
        "x": x,
        "y": 2.0 + x + rng.normal(size=n),
        "w": rng.uniform(0.5, 2.0, n),
        "s": rng.binomial(8, 0.4, n),
        "count": rng.poisson(mu),
        "expo": rng.uniform(0.5, 3.0, n),
        "pos": rng.gamma(2.0, mu / 2.0),
        "prop": rng.beta(2.0, 3.0, n),
    })


# formula, family, extra arguments of build
CASES = {
    "gaussian": ("y ~ x + (1 + x | g)", None, {"weights": "w"}),
    "binomial": ("cbind(s, 8 - s) ~ x + (1 | g)", "binomial", {}),
    "poisson": ("count ~ x + offset(log(expo)) + (1 | g)", "poisson", {"offset": "w"}),
    "gamma": ("pos ~ x + (1 | g)", glmmjax.families.Gamma(link="log"), {}),
    "inverse_gaussian": ("pos ~ x + (1 | g)", glmmjax.families.InverseGaussian(link="log"), {}),
    "negative_binomial": ("count ~ x + (1 + x | g)", "negative_binomial", {}),
    "beta": ("prop ~ x + (1 | g)", "beta", {}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_log_density_is_priors_plus_model_loglik(name):
    """log p(θ, y) of the generated model = Σ log priors + log N(u; 0, I) +
    MixedModel.loglik_given_effects(β, b = Λu, dispersion): centring, offsets, weights,
    trials, the non-centred effects and each family's dispersion are assembled right."""
    from numpyro.infer.util import log_density

    formula, family, extra = CASES[name]
    frame = _frame()
    extra = {k: frame[v] for k, v in extra.items()}
    with jax.enable_x64(True):
        bm = bayes.build(formula, frame, family, **extra)
        params = {k: v[0, 0] for k, v in _fake_result(bm, 1, seed=3).samples.items()}
        layout, model = bm.layout, bm.model

        def both(params):
            got, _ = log_density(bm.glmm, (bm.jax_data(), bm.priors, bm.family),
                                 {"y": jnp.asarray(model.y)}, params)
            expected = 0.0
            coefs = []
            for j, fixef in enumerate(layout.fixef_names):
                value = params[layout.fixef_site(j)]
                expected += bm.priors[f"b_{fixef}"].log_prob(value)
                coefs.append(value)
            beta = jnp.stack(coefs)
            beta = beta.at[layout.intercept_index].add(-jnp.dot(beta, bm.x_means))
            effects = []
            for t, label in enumerate(layout.labels):
                sd = jnp.stack([params[n] for n in layout.sd_names(t)])
                expected += sum(bm.priors[n].log_prob(params[n]) for n in layout.sd_names(t))
                u = params[f"z_{label}"]
                expected += jnp.sum(jax.scipy.stats.norm.logpdf(u))
                chol = jnp.eye(len(sd))
                if len(sd) > 1:
                    chol = params[f"L_{label}"]
                    expected += bm.priors[f"cor_{label}"].log_prob(chol)
                effects.append(u @ (sd[:, None] * chol).T)
            dispersion = None
            if layout.dispersion is not None:
                value = params[layout.dispersion]
                expected += bm.priors[layout.dispersion].log_prob(value)
                dispersion = value**2 if layout.dispersion == "sigma" else value
            expected += model.loglik_given_effects(beta, effects, dispersion)
            return got, expected

        got, expected = jax.jit(both)(params)
    assert np.isfinite(float(got))
    np.testing.assert_allclose(float(got), float(expected), rtol=1e-10)


def test_gaussian_ar1_density_is_the_multivariate_normal():
    """Product of conditionals = the joint normal with Cov = σ²ρ^|Δt| within groups,
    with gaps of several steps and rows out of order."""
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({
        "g": ["a"] * 4 + ["b"] * 3,
        "t": [0, 1, 3, 6, 2, 3, 5],
        "y": rng.normal(size=7),
        "x": rng.normal(size=7),
    }).sample(frac=1.0, random_state=2)
    bm = bayes.build("y ~ x + (1 | g)", frame, ar1=("t", "g"))
    idx = bm.ar1
    mu, sigma, rho = rng.normal(size=7), 0.8, -0.6
    with jax.enable_x64(True):
        ar = GaussianAR1(jnp.asarray(mu), sigma, rho, idx.first, idx.gap, idx.prev,
                         idx.series, idx.position, idx.grid)
        got = float(ar.log_prob(jnp.asarray(frame["y"].to_numpy())))
    t, g = frame["t"].to_numpy(), frame["g"].to_numpy()
    cov = sigma**2 * rho ** np.abs(t[:, None] - t[None, :]) * (g[:, None] == g[None, :])
    expected = stats.multivariate_normal(mu, cov).logpdf(frame["y"].to_numpy())
    assert got == pytest.approx(expected, rel=1e-10)


def test_latent_ar1_and_forecast_covariances():
    """x = A(ρ)ξ has covariance s²ρ^|Δt| within series; forecasts from a known last
    value have the AR(1) conditional mean ρ^Δ·x_last and conditional covariance."""
    first = np.array([True, False, False, True, False])
    gap = np.array([1.0, 1.0, 3.0, 1.0, 2.0])
    series = np.array([0, 0, 0, 1, 1])
    position = np.array([0, 1, 2, 0, 1])
    t = np.array([0, 1, 4, 0, 2])
    rho, s = 0.7, 1.3
    with jax.enable_x64(True):
        jac = jax.jit(jax.jacfwd(
            lambda xi: latent_process(xi, rho, s, first, gap, series, position, (3, 2))))
        a = np.asarray(jac(jnp.zeros(5)))
    same = series[:, None] == series[None, :]
    np.testing.assert_allclose(a @ a.T, s**2 * rho ** np.abs(t[:, None] - t[None, :]) * same,
                               atol=1e-12)

    index = type("Index", (), {})()
    index.time_column, index.group_column = "t", "g"
    index.group_levels, index.last_time = ("a",), np.array([10.0])
    new = pd.DataFrame({"g": ["a", "a", "zz"], "t": [12, 13, 20]})
    fi = forecast_index(index, new)
    assert list(fi["start"]) == [0, -1, -1] and list(fi["gap"][:2]) == [2.0, 1.0]
    with jax.enable_x64(True):
        fn = lambda xi: forecast_process(xi, rho, s, jnp.full(3, 2.0), fi)  # noqa: E731
        mean, a = jax.jit(lambda xi: (fn(xi), jax.jacfwd(fn)(xi)))(jnp.zeros(3))
        mean, a = np.asarray(mean), np.asarray(a)
    np.testing.assert_allclose(mean, [2.0 * rho**2, 2.0 * rho**3, 0.0], atol=1e-12)
    tt = np.array([12.0, 13.0])
    conditional = s**2 * (rho ** np.abs(tt[:, None] - tt[None, :]) - rho ** (tt[:, None] - 10) * rho ** (tt[None, :] - 10))
    np.testing.assert_allclose((a @ a.T)[:2, :2], conditional, atol=1e-12)
    assert (a @ a.T)[2, 2] == pytest.approx(s**2)
    with pytest.raises(DataError, match="continue each series forward"):
        forecast_index(index, pd.DataFrame({"g": ["a"], "t": [9]}))


def test_prior_names_defaults_and_overrides():
    sleep = glmmjax.datasets.load("sleepstudy")
    bm = bayes.build("Reaction ~ Days + (Days | Subject)", sleep, priors={
        "b_Days": dist.Normal(10, 5),
        "sd": dist.HalfNormal(30.0),
        "sd_Subject__Days": dist.HalfNormal(8.0),
        "cor_Subject": 4.0,
    })
    table = bm.prior_table().set_index("parameter")
    assert list(table.index) == ["b_Intercept", "b_Days", "sd_Subject__Intercept",
                                 "sd_Subject__Days", "cor_Subject", "sigma"]
    y = sleep["Reaction"].to_numpy()
    mad = stats.median_abs_deviation(y, scale="normal")
    assert table.loc["b_Intercept", "prior"] == f"student_t(3, {np.median(y):.4g}, {mad:.4g})"
    assert table.loc["sigma", "prior"] == f"half_student_t(3, 0, {mad:.4g})"
    assert table.loc["b_Days", "prior"] == "normal(10, 5)"
    assert table.loc["sd_Subject__Intercept", "prior"] == "half_normal(0, 30)"  # class key
    assert table.loc["sd_Subject__Days", "prior"] == "half_normal(0, 8)"  # exact name wins
    assert table.loc["cor_Subject", "prior"] == "lkj_corr_cholesky(4)"
    assert table.loc["sd_Subject__Days", "source"] == "sd_Subject__Days"
    # rstanarm's autoscaling: 2.5·sd(y)/sd(x) for a Gaussian model.
    default = bayes.build("Reaction ~ Days + (Days | Subject)", sleep).priors["b_Days"]
    assert float(default.scale) == pytest.approx(2.5 * y.std() / sleep["Days"].std(ddof=0))
    # Binomial: location g(ȳ) on the logit scale, slopes 2.5/sd(x).
    cbpp = glmmjax.datasets.load("cbpp")
    bm = bayes.build("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, "binomial")
    assert float(bm.priors["b_Intercept"].scale) == 2.5
    with pytest.raises(ValueError, match="no parameter named"):
        bayes.build("Reaction ~ Days + (Days | Subject)", sleep, priors={"b_days": dist.Normal()})
    with pytest.raises(ValueError, match="positive"):
        bayes.build("Reaction ~ Days + (1 | Subject)", sleep, priors={"sigma": dist.Normal(0, 1)})
    with pytest.raises(ValueError, match="LKJCholesky"):
        bayes.build("Reaction ~ Days + (Days | Subject)", sleep,
                    priors={"cor_Subject": dist.Normal(0, 1)})


def _fake_result(bm, num_samples=40, seed=0):
    """A BayesResult with random draws of every sampled site (numpy): exercises the
    result paths (log-likelihood, predictions, summaries) without running NUTS."""
    rng = np.random.default_rng(seed)
    layout, shape = bm.layout, (1, num_samples)
    samples = {}
    for j in range(len(layout.fixef_names)):
        samples[layout.fixef_site(j)] = rng.normal(size=shape)
    for t, label in enumerate(layout.labels):
        size = len(layout.coef_names[t])
        for name in layout.sd_names(t):
            samples[name] = np.abs(rng.normal(size=shape))
        samples[f"z_{label}"] = rng.normal(size=shape + (len(layout.levels[t]), size))
        if size > 1:
            a = rng.normal(size=shape + (size, size + 2))
            cov = a @ np.swapaxes(a, -1, -2)
            corr = cov / np.sqrt(np.einsum("...ii,...jj->...ij", cov, cov))
            samples[f"L_{label}"] = np.linalg.cholesky(corr)
    if layout.dispersion is not None:
        samples[layout.dispersion] = np.abs(rng.normal(size=shape)) + 0.5
    if layout.ar1 is not None:
        samples["ar1_rho"] = rng.uniform(-0.9, 0.9, shape)
    if layout.ar1 == "latent":
        samples["ar1_sd"] = np.abs(rng.normal(size=shape))
        samples["ar1_z"] = rng.normal(size=shape + (len(bm.data.y),))
    assert sorted(samples) == sorted(bm.sampled_sites())
    return BayesResult(bm, samples, np.zeros(shape, bool), np.ones(shape, int), 0, 0.0)


def test_result_paths_latent_ar1_binomial_and_new_levels():
    """Latent AR(1) (non-Gaussian): pointwise log-likelihood equals the family's at
    η + AR term; predictions for new groups and new times have the right shapes and
    support; unseen levels are refused when asked to."""
    frame = _frame(per_group=5)
    bm = bayes.build("cbind(s, 8 - s) ~ x + (1 + x | g)", frame, "binomial", ar1=("t", "g"))
    assert bm.layout.ar1 == "latent" and "ar1_z" in bm.sampled_sites()
    fit = _fake_result(bm)
    ll = fit.log_likelihood()
    assert ll.shape == (1, 40, len(frame)) and np.all(ll <= 0)
    with jax.enable_x64(True):
        params = {k: v[0] for k, v in fit._flat_draws(1).items()}
        eta = fit._training_eta(params) + fit._latent(params)
        expected = bm.family.loglik_eta(bm.model.y, eta, bm.model.weights, None)
    np.testing.assert_allclose(ll[0, 0], expected, rtol=1e-12)
    new = pd.DataFrame({"g": ["g0", "g0", "new"], "t": [10, 12, 0], "x": [0.0, 1.0, -1.0]})
    frame = fit.posterior_predict(new.set_index(pd.Index([7, 8, 9])),
                                  weights=np.array([8, 8, 4]))
    assert list(frame.columns) == [7, 8, 9] and frame.index.name == "draw"
    draws = frame.to_numpy()
    assert draws.shape == (40, 3)
    assert np.all((draws >= 0) & (draws <= 1))
    assert np.allclose(draws[:, 2] * 4, np.round(draws[:, 2] * 4))
    with pytest.raises(DataError, match="not seen in fitting"):
        fit.posterior_predict(new, allow_new_levels=False)
    table = fit.posterior_summary("family")
    assert list(table.index) == ["ar1_rho", "ar1_sd"]
    assert fit.posterior_summary("ranef").shape[0] == 4 * 2


def test_bayes_is_imported_lazily():
    """Only glmmjax.bayes and its private modules import NumPyro, and the package
    reaches glmmjax.bayes through a module __getattr__."""
    import pathlib
    import re

    package = pathlib.Path(glmmjax.__file__).parent
    for path in package.glob("*.py"):
        if path.name == "bayes.py" or path.name.startswith("_bayes"):
            continue
        source = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(numpyro|\.bayes|\._bayes)", source, re.M), path
    assert glmmjax.bayes is bayes and "bayes" not in glmmjax.__all__
    with pytest.raises(AttributeError, match="no attribute 'bayes_'"):
        glmmjax.bayes_  # noqa: B018


def test_import_error_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "glmmjax.bayes" or m.startswith("glmmjax._bayes")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "numpyro", None)
    with pytest.raises(ImportError, match=r'pip install "glmmjax\[bayes\]"'):
        import glmmjax.bayes  # noqa: F401
