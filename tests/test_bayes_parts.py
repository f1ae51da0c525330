"""Bayesian fits with glmmTMB's response parts (``ziformula=``, ``dispformula=``): the
NumPyro model's log density against the frequentist engine's pieces (exact), names,
priors and result paths without NUTS; marked slow, NUTS against the Laplace fit."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

numpyro = pytest.importorskip("numpyro")
dist = pytest.importorskip("numpyro.distributions")

import glmmjax  # noqa: E402
from glmmjax import bayes  # noqa: E402
from glmmjax._bayes.result import BayesResult  # noqa: E402
from glmmjax._engines.compiled.parts import _assemble  # noqa: E402
from glmmjax._model.covariance import tril_indices  # noqa: E402
from glmmjax._parts_fit import parts_data  # noqa: E402


def _frame(seed=0, n_groups=5, per_group=8):
    rng = np.random.default_rng(seed)
    n = n_groups * per_group
    g = np.repeat([f"g{i}" for i in range(n_groups)], per_group)
    x, z = rng.normal(size=n), rng.normal(size=n)
    b = rng.normal(0.0, 0.5, n_groups)[np.repeat(np.arange(n_groups), per_group)]
    mu = np.exp(0.6 + 0.4 * x + b)
    theta = np.exp(0.5 + 0.3 * z)
    counts = rng.negative_binomial(theta, theta / (theta + mu))
    zero = rng.uniform(size=n) < 0.3
    positive = rng.poisson(mu) + 1
    return pd.DataFrame({
        "g": g, "x": x, "z": z,
        "count": np.where(zero, 0, counts),
        "hurdle": np.where(zero, 0, positive),
        "y": 1.0 + x + rng.normal(size=n) * np.exp(0.4 * z),
        "pos": rng.gamma(2.0, mu / 2.0),
        "s": rng.binomial(6, 0.4, n) * (~zero),
    })


# formula, family, ziformula, dispformula, extra arguments of build
CASES = {
    "zinb_zi_re_disp": ("count ~ x + (1 | g)", "nbinom2", "~ z + (1 | g)", "~ z", {}),
    "zinb1_slopes": ("count ~ x + (1 + x | g)", "nbinom1", "~ 1", None, {}),
    "hurdle_poisson": ("hurdle ~ x + (1 | g)", "truncated_poisson", "~ x", None, {}),
    "gaussian_disp": ("y ~ x + (1 | g)", None, None, "~ z", {}),
    "gaussian_disp0": ("y ~ x + (1 | g)", None, None, "~ 0", {}),
    "gamma_disp": ("pos ~ x + (1 | g)", glmmjax.families.Gamma(link="log"), None, "~ z", {}),
    "zip_offset": ("count ~ x + (1 | g)", "poisson", "~ z", None, {"offset": "z"}),
    "zi_betabinomial": ("cbind(s, 6 - s) ~ x + (1 | g)", "betabinomial", "~ 1", None, {}),
}


def _fake_result(bm, num_samples=30, seed=0):
    """Random draws of every sampled site (no NUTS), for the result paths."""
    rng = np.random.default_rng(seed)
    layout, shape = bm.layout, (1, num_samples)
    samples = {}
    for j in range(len(layout.fixef_names)):
        samples[layout.fixef_site(j)] = rng.normal(size=shape) * 0.3
    for extra in layout.extra_fixef:
        for j in range(len(extra.coef_names)):
            samples[extra.site(j)] = rng.normal(size=shape) * 0.3
    for t, label in enumerate(layout.labels):
        size = len(layout.coef_names[t])
        for name in layout.sd_names(t):
            samples[name] = np.abs(rng.normal(size=shape)) + 0.1
        samples[f"z_{label}"] = rng.normal(size=shape + (len(layout.levels[t]), size))
        if size > 1:
            a = rng.normal(size=shape + (size, size + 2))
            cov = a @ np.swapaxes(a, -1, -2)
            corr = cov / np.sqrt(np.einsum("...ii,...jj->...ij", cov, cov))
            samples[f"L_{label}"] = np.linalg.cholesky(corr)
    if layout.dispersion is not None:
        samples[layout.dispersion] = np.abs(rng.normal(size=shape)) + 0.5
    assert sorted(samples) == sorted(bm.sampled_sites())
    return BayesResult(bm, samples, np.zeros(shape, bool), np.ones(shape, int), 0, 0.0)


def _frequentist_params(bm, draws, sites):
    """The frequentist parameter vector (θ_c, θ_z, β, β_zi, β_disp) of one draw (named
    parameters of ``BayesModel.derived`` and the sampled sites, scalars)."""
    layout = bm.layout
    thetas = {"cond": [], "zi": []}
    for t, label in enumerate(layout.labels):
        sd = np.array([draws[n] for n in layout.sd_names(t)])
        chol = np.asarray(sites.get(f"L_{label}", np.eye(len(sd))))
        lam = sd[:, None] * chol
        rows, cols = tril_indices(len(sd))
        thetas[layout.term_part(t)].append(lam[rows, cols])
    beta = [draws[f"b_{n}"] for n in layout.fixef_names]
    extra = {part: [] for part in ("zi", "disp")}
    for f in layout.extra_fixef:
        extra[f.part] = [draws[n] for n in f.names()]
    if layout.dispersion is not None and bm.parts.disp is not None:
        from glmmjax._bayes.parts import scalar_log_phi

        extra["disp"] = [float(scalar_log_phi(layout.dispersion, bm.family,
                                              draws[layout.dispersion]))]
    return np.concatenate([np.concatenate(thetas["cond"] or [np.zeros(0)]),
                           np.concatenate(thetas["zi"] or [np.zeros(0)]),
                           beta, extra["zi"], extra["disp"]]).astype(np.float64)


@pytest.mark.parametrize("name", list(CASES))
def test_log_density_is_the_frequentist_conditional_loglik(name):
    """log p(θ, u, y) of the NumPyro model = Σ log priors (sampled sites, centred) +
    log N(u; 0, I) + the frequentist engine's conditional log-likelihood at the same
    parameters: −g(v)/2 − q/2·log 2π with g(v) = −2Σℓᵢ + |v|² of
    :mod:`glmmjax._engines.compiled.parts` (zero-inflation, hurdle, per-row and fixed
    dispersion, offsets, trials, vector terms)."""
    from numpyro.infer.util import log_density

    formula, family, zi, disp, extra = CASES[name]
    frame = _frame()
    extra = {k: frame[v] for k, v in extra.items()}
    with jax.enable_x64(True):
        bm = bayes.build(formula, frame, family, ziformula=zi, dispformula=disp, **extra)
        fake = _fake_result(bm, 1, seed=3)
        sites = {k: v[0, 0] for k, v in fake.samples.items()}
        draws = {k: np.asarray(v)[0, 0] for k, v in fake.draws.items()}

        @jax.jit
        def density(sites):
            got, _ = log_density(bm.glmm, (bm.jax_data(), bm.priors, bm.family),
                                 {"y": jnp.asarray(bm.model.y)}, sites)
            prior = 0.0
            for site, value in sites.items():
                if site.startswith("z_"):
                    continue
                key = {"Intercept": "b_Intercept"}.get(site, site)
                if site.startswith("Intercept_"):
                    key = f"b_{site.split('_', 1)[1]}_Intercept"
                if site.startswith("L_"):
                    key = "cor_" + site[2:]
                prior = prior + bm.priors[key].log_prob(value)
            return got, prior

        got, prior = density(sites)
        data = parts_data(bm.parts, bm.family, bm.model.y, bm.model.weights)
        params = _frequentist_params(bm, draws, sites)
        assert params.size == sum(data.layout)
        v = np.concatenate([np.asarray(sites[f"z_{label}"]).reshape(-1)
                            for label in bm.layout.labels])
        g = jax.jit(lambda v, p: _assemble(v, p, data, floor=False)[0])(v, params)
    expected = float(prior) - 0.5 * float(g) - 0.5 * v.size * math.log(2 * math.pi)
    assert np.isfinite(float(got))
    np.testing.assert_allclose(float(got), expected, rtol=1e-10)


def test_names_priors_and_refusals():
    frame = _frame()
    bm = bayes.build("count ~ x + (1 | g)", frame, "nbinom2", ziformula="~ z + (1 | g)",
                     dispformula="~ z",
                     priors={"b_zi": dist.Normal(0, 1), "b_disp_Intercept": dist.Normal(0, 3)})
    table = bm.prior_table().set_index("parameter")
    assert list(table.index) == ["b_Intercept", "b_x", "b_zi_Intercept", "b_zi_z",
                                 "b_disp_Intercept", "b_disp_z", "sd_g__Intercept",
                                 "sd_g__zi__Intercept"]
    assert table.loc["b_zi_Intercept", "prior"] == "logistic(0, 1)"
    assert table.loc["b_zi_z", "source"] == "b_zi"
    assert table.loc["b_disp_Intercept", "prior"] == "normal(0, 3)"
    assert "theta" not in table.index  # the dispersion model replaces the family's θ
    # Without a dispformula the family keeps its dispersion parameter and prior.
    bm2 = bayes.build("count ~ x + (1 | g)", frame, "nbinom2", ziformula="~ 1")
    assert "theta" in bm2.priors and "b_disp_Intercept" not in bm2.priors
    with pytest.raises(ValueError, match="cannot be zero-inflated"):
        bayes.build("y ~ x + (1 | g)", frame, None, ziformula="~ 1")
    with pytest.raises(ValueError, match="random-effects"):
        bayes.build("y ~ x + (1 | g)", frame, None, dispformula="~ z + (1 | g)")
    with pytest.raises(ValueError, match="not supported"):
        bayes.build("count ~ x + (1 | g)", frame, "poisson", ziformula="~ 1", ar1="x")
    model = glmmjax.MixedModel.from_formula("count ~ x + (1 | g)", frame, "poisson")
    with pytest.raises(ValueError, match="formula"):
        bayes.build(model, frame, ziformula="~ 1")


def test_result_paths_by_part():
    """fixef by part, summary blocks, pointwise log-likelihood = row_loglik at each draw,
    predictions of every type (in sample and on new data, a new level included)."""
    from glmmjax._families.response_parts import row_loglik

    frame = _frame()
    bm = bayes.build("count ~ x + (1 | g)", frame, "nbinom2", ziformula="~ z + (1 | g)",
                     dispformula="~ z")
    fit = _fake_result(bm, 8)
    fixef = fit.fixef
    assert list(fixef) == ["cond", "zi", "disp"]
    assert list(fixef["zi"].index) == ["Intercept", "z"]
    np.testing.assert_allclose(fixef["disp"]["z"], fit.draws["b_disp_z"].mean())
    text = fit.summary()
    for piece in ["   zi: ~ z + (1 | g)", "   disp: ~ z",
                  "~g (zero-inflation model; Number of levels: 5)",
                  "Regression Coefficients (conditional model):",
                  "Zero-inflation model (logit link):", "Dispersion model (log link"]:
        assert piece in text, piece
    ll = fit.log_likelihood()
    assert ll.shape == (1, 8, len(frame))
    d = {k: np.asarray(v)[0, 2] for k, v in fit.draws.items()}
    eta = frame["x"].to_numpy() * d["b_x"] + d["b_Intercept"] + d["r_g"][:, 0][
        bm.data.refs[0]]
    zeta = d["b_zi_Intercept"] + d["b_zi_z"] * frame["z"].to_numpy() + d["r_g__zi"][:, 0][
        bm.data.refs[1]]
    log_phi = d["b_disp_Intercept"] + d["b_disp_z"] * frame["z"].to_numpy()
    with jax.enable_x64(True):
        expected = row_loglik(bm.family, jnp.asarray(bm.model.y), jnp.ones(len(frame)),
                              jnp.asarray(eta), jnp.asarray(zeta), jnp.asarray(log_phi),
                              zero_inflated=True)
    np.testing.assert_allclose(ll[0, 2], np.asarray(expected), rtol=1e-10)
    zprob = fit.posterior_predict(type="zprob").to_numpy()
    np.testing.assert_allclose(zprob[2], 1 / (1 + np.exp(-zeta)), rtol=1e-10)
    response = fit.posterior_predict(type="response").to_numpy()
    np.testing.assert_allclose(response[2], np.exp(eta) / (1 + np.exp(zeta)), rtol=1e-10)
    draws = fit.posterior_predict(seed=1).to_numpy()
    assert draws.shape == (8, len(frame)) and np.all(draws >= 0)
    assert np.all(draws == np.round(draws))
    new = frame.head(4).assign(g=["g0", "g0", "new", "new"])
    on_new = fit.posterior_predict(new, type="response").to_numpy()
    np.testing.assert_allclose(on_new[2, :2], response[2, :2], rtol=1e-10)
    assert np.all(np.isfinite(on_new))
    with pytest.raises(ValueError, match="zprob"):
        fit.posterior_predict(type="zlink")


@pytest.mark.slow  # NUTS compiles (~30-60 s on a small CPU) and samples
def test_nuts_agrees_with_the_laplace_fit():
    """A ZINB GLMM with a dispersion model on 600 simulated rows: posterior means within
    1.5 posterior SDs of glmer's Laplace estimates with the same ziformula/dispformula
    (the priors are weak, the data many; measured: within 0.3 SDs, R-hat ≤ 1.017)."""
    rng = np.random.default_rng(11)
    n_groups, per = 30, 20
    n = n_groups * per
    g = np.repeat(np.arange(n_groups), per)
    x, z = rng.normal(size=n), rng.normal(size=n)
    mu = np.exp(1.0 + 0.5 * x + rng.normal(0, 0.4, n_groups)[g])
    theta = np.exp(0.8 + 0.4 * z)
    y = rng.negative_binomial(theta, theta / (theta + mu))
    y = np.where(rng.uniform(size=n) < 1 / (1 + np.exp(-(-0.8 + 0.7 * z))), 0, y)
    frame = pd.DataFrame({"y": y, "x": x, "z": z, "g": [f"g{i}" for i in g]})
    args = ("y ~ x + (1 | g)", frame, "nbinom2")
    ml = glmmjax.glmer(*args, ziformula="~ z", dispformula="~ z")
    fit = bayes.fit(*args, ziformula="~ z", dispformula="~ z", num_chains=2,
                    num_warmup=300, num_samples=300, seed=2, chain_method="sequential",
                    warn=False)
    table = fit.posterior_summary("all")
    for part, prefix in (("cond", "b_"), ("zi", "b_zi_"), ("disp", "b_disp_")):
        for coef, value in ml.fixef[part].items():
            name = prefix + coef
            mean, sd = table.loc[name, "mean"], table.loc[name, "sd"]
            assert abs(mean - value) < 1.5 * sd, (name, mean, sd, value)
    sd_ml = float(np.sqrt(ml.varcorr["vcov"].iloc[0]))
    mean, sd = table.loc["sd_g__Intercept", "mean"], table.loc["sd_g__Intercept", "sd"]
    assert abs(mean - sd_ml) < 1.5 * sd
    for part in ("cond", "zi", "disp"):
        assert list(fit.fixef[part].index) == list(ml.fixef[part].index)
    # The prior predictive path (eager NumPyro: seconds of compiling, so here).
    prior = fit.bayes_model.prior_predictive(num_samples=4, seed=1)
    assert prior["y"].shape == (4, n) and np.all(prior["y"] >= 0)
    assert prior["b_zi_z"].shape == (4,) and np.any(prior["y"] == 0)


@pytest.mark.slow  # NUTS compiles and samples (~30 s at load 5)
def test_nuts_agrees_with_the_laplace_fit_of_a_hurdle_with_zi_random_effects():
    """A hurdle Poisson (truncated_poisson with ziformula) with random intercepts in
    both parts, 600 simulated rows: posterior means within 1.5 posterior SDs of the
    Laplace fit, fixed effects of both parts and both SDs (measured: within 0.2 SDs)."""
    rng = np.random.default_rng(12)
    n_groups, per = 30, 20
    n = n_groups * per
    g = np.repeat(np.arange(n_groups), per)
    x, z = rng.normal(size=n), rng.normal(size=n)
    mu = np.exp(0.8 + 0.5 * x + rng.normal(0, 0.4, n_groups)[g])
    y = rng.poisson(mu)
    while np.any(y == 0):  # zero-truncated Poisson by rejection
        y[y == 0] = rng.poisson(mu[y == 0])
    zeta = -0.3 + 0.7 * z + rng.normal(0, 0.6, n_groups)[g]
    y = np.where(rng.uniform(size=n) < 1 / (1 + np.exp(-zeta)), 0, y)
    frame = pd.DataFrame({"y": y, "x": x, "z": z, "g": [f"g{i}" for i in g]})
    args = ("y ~ x + (1 | g)", frame, "truncated_poisson")
    ml = glmmjax.glmer(*args, ziformula="~ z + (1 | g)")
    fit = bayes.fit(*args, ziformula="~ z + (1 | g)", num_chains=2, num_warmup=300,
                    num_samples=300, seed=2, chain_method="sequential", warn=False)
    table = fit.posterior_summary("all")
    estimates = {"b_" + k: v for k, v in ml.fixef["cond"].items()}
    estimates.update({"b_zi_" + k: v for k, v in ml.fixef["zi"].items()})
    estimates["sd_g__Intercept"] = ml.varcorr["sdcor"].iloc[0]
    estimates["sd_g__zi__Intercept"] = ml.varcorr_zi["sdcor"].iloc[0]
    for name, value in estimates.items():
        mean, sd = table.loc[name, "mean"], table.loc[name, "sd"]
        assert abs(mean - value) < 1.5 * sd, (name, mean, sd, value)
    assert list(fit.ranef) == ["g", "g__zi"]
