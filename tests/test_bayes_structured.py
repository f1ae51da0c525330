"""``glmmjax.bayes`` with structured random-effects terms (diag, cs, ar1, toep, ou, exp, gau,
mat) and known relatedness (relmat): the log density is the frequentist model's pieces
(the same covariance factor Λ(θ) of each term), priors on the structures' correlation
parameters, and (slow) NUTS against the ML fit."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("numpyro")
import numpyro.distributions as dist  # noqa: E402
from numpyro.infer.util import log_density  # noqa: E402

import glmmjax as gj  # noqa: E402
from glmmjax import bayes  # noqa: E402
from glmmjax._bayes.structures import structure_params  # noqa: E402

REFERENCE = pathlib.Path(__file__).parent / "reference"


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _small_data(seed=0, n_groups=5, n_times=4):
    rng = np.random.default_rng(seed)
    g = np.repeat([f"g{i}" for i in range(n_groups)], n_times)
    t = np.tile(np.arange(n_times), n_groups)
    data = pd.DataFrame({"y": rng.normal(size=g.size) + 0.3 * t, "x": rng.normal(size=g.size),
                         "g": g, "cond": np.tile(list("abcd"), n_groups)[: g.size]})
    data["timef"] = pd.Categorical(t.astype(str), categories=[str(i) for i in range(n_times)])
    data["pos"] = pd.Categorical([f"({i % 2},{i // 2})" for i in t],
                                 categories=["(0,0)", "(1,0)", "(0,1)", "(1,1)"])
    data["ou_t"] = pd.Categorical([["0", "0.5", "2", "3.5"][i] for i in t],
                                  categories=["0", "0.5", "2", "3.5"])
    return data


FORMULAS = ["y ~ x + diag(1 + x | g)", "y ~ x + cs(cond + 0 | g)", "y ~ x + homcs(cond + 0 | g)",
            "y ~ x + ar1(timef + 0 | g)", "y ~ x + toep(timef + 0 | g)",
            "y ~ x + ou(ou_t + 0 | g)", "y ~ x + exp(pos + 0 | g)", "y ~ x + mat(pos + 0 | g)"]


def _point(bm, rng):
    """Constrained values of every sampled site, inside each prior's support."""
    layout, values = bm.layout, {}
    for j in range(len(layout.fixef_names)):
        values[layout.fixef_site(j)] = rng.normal()
    for t, label in enumerate(layout.labels):
        for name in layout.sd_names(t):
            values[name] = rng.uniform(0.3, 1.5)
        for p in layout.structure_params(t):
            values[p.name] = (rng.uniform(max(p.lower, -0.9), min(p.upper, 0.9))
                              if np.isfinite(p.upper) else rng.uniform(0.4, 2.0))
        values[f"z_{label}"] = rng.normal(size=(len(layout.levels[t]), len(layout.coef_names[t])))
    values["sigma"] = 0.8
    return {k: jnp.asarray(v) for k, v in values.items()}


@pytest.mark.parametrize("formula", FORMULAS, ids=lambda f: f.split(" + ")[1].split("(")[0])
def test_log_density_is_the_frequentist_pieces(formula):
    """log p = Σ log priors + log N(u; 0, I) + Σ log N(y; Xβ + Zb, σ²) with b = σ·u·Λ(θ)',
    θ the frequentist structure's parameters (SDs relative to σ): the same Λ as lmer's."""
    data = _small_data()
    bm = bayes.build(formula, data, center=False)
    point = _point(bm, np.random.default_rng(1))
    value = jax.jit(lambda p: log_density(bm.numpyro_model, (bm.jax_data(),),
                                          {"y": bm.jax_data().y}, p)[0])(point)
    layout, design = bm.layout, bm.model.design
    assert len(layout.structure_params(0)) == len(structure_params(design.terms[0].covariance, ""))
    sigma = float(point["sigma"])
    eta = design.X @ np.array([float(point[layout.fixef_site(j)])
                               for j in range(len(layout.fixef_names))])
    expected = sum(float(bm.priors[k].log_prob(point[k])) for k in bm.priors
                   if not k.startswith("cor_"))
    for t, term in enumerate(design.terms):
        cov = term.covariance
        sd = np.array([float(point[n]) for n in layout.sd_names(t)])
        theta = cov.start(np.ones(term.size))  # then overwritten: the frequentist θ_t
        theta[cov.scale_mask()] = sd / sigma
        theta[~cov.scale_mask()] = [float(p.to_theta(point[p.name], np))
                                    for p in layout.structure_params(t)]
        u = np.asarray(point[f"z_{layout.labels[t]}"])
        b = (sigma * u) @ cov.factor(theta, np).T  # b = Λ(θ)·(σu), one row per level
        eta = eta + np.sum(term.z * b[term.refs], axis=1)
        expected += float(np.sum(-0.5 * u**2 - 0.5 * np.log(2 * np.pi)))
    y = np.asarray(design.response, dtype=float)
    expected += float(np.sum(-0.5 * ((y - eta) / sigma) ** 2 - np.log(sigma)
                             - 0.5 * np.log(2 * np.pi)))
    assert float(value) == pytest.approx(expected, rel=1e-10)


def test_priors_names_and_support():
    data = _small_data()
    bm = bayes.build("y ~ x + ar1(timef + 0 | g)", data)
    assert list(bm.prior_table()["parameter"]) == ["b_Intercept", "b_x", "sd_g", "rho_g", "sigma"]
    assert "L_g" not in bm.sampled_sites() and "rho_g" in bm.sampled_sites()
    cs = bayes.build("y ~ x + cs(cond + 0 | g)", data)
    assert [p for p in cs.prior_table()["parameter"] if p.startswith(("sd_", "rho_"))] == [
        "sd_g__cond[a]", "sd_g__cond[b]", "sd_g__cond[c]", "sd_g__cond[d]", "rho_g"]
    assert float(cs.priors["rho_g"].low) == pytest.approx(-1 / 3)
    bayes.build("y ~ x + ar1(timef + 0 | g)", data, priors={"rho_g": dist.Uniform(0.0, 1.0)})
    with pytest.raises(ValueError, match="'rho_g' lies in"):
        bayes.build("y ~ x + ar1(timef + 0 | g)", data, priors={"rho_g": dist.Normal(0, 1)})
    with pytest.raises(ValueError, match="'range_g' lies in"):
        bayes.build("y ~ x + mat(pos + 0 | g)", data, priors={"range_g": dist.Normal(1, 1)})


def test_relmat_term_uses_the_factor_of_k():
    data = pd.read_csv(REFERENCE / "data" / "relmat_pedigree.csv", dtype={"animal": str})
    K = pd.read_csv(REFERENCE / "data" / "relmat_pedigree_K.csv",
                    dtype={"id": str}).set_index("id")
    bm = bayes.build("y ~ x + (1 | animal)", data, relmat={"animal": K})
    assert bm.layout.sd_names(0) == ["sd_animal"] and bm.layout.structure_params(0) == []
    q = len(bm.layout.coef_names[0])
    u = np.random.default_rng(0).normal(size=(1, q))
    factor = bm.structured_factor(0, {"sd_animal": np.array([0.7])})[0]
    L = bm.model.design.terms[0].covariance.matrix
    np.testing.assert_allclose(factor, 0.7 * L)
    levels = list(bm.layout.coef_names[0])
    # b = 0.7·L·u has covariance 0.49·K over the data's animals
    np.testing.assert_allclose(factor @ factor.T,
                               0.49 * K.loc[[lv.split("[")[-1].strip("]").removeprefix("T.")
                                             for lv in levels],
                                            [lv.split("[")[-1].strip("]").removeprefix("T.")
                                             for lv in levels]].to_numpy(), atol=1e-12)
    assert u.shape == (1, q)


@pytest.mark.slow
def test_nuts_agrees_with_the_ml_fit():
    """ar1 on the glmmTMB reference data (360 rows): posterior means within a fraction of
    a posterior SD of the ML estimates (the posterior is concentrated; the priors are
    weak)."""
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from test_covstruct import MODELS, _reference_data

    model = MODELS["gaussian_ar1"]
    data = _reference_data(model)
    ml = gj.lmer(model["formula"], data, reml=False)
    fit = bayes.fit(model["formula"], data, num_chains=2, num_warmup=300, num_samples=300,
                    seed=1, chain_method="sequential", warn=False)
    table = fit.posterior_summary("all")
    rho = float(ml.covariance_structures["subject"].split()[-1])
    estimates = {"b_Intercept": ml.fixef["Intercept"], "b_x": ml.fixef["x"],
                 "sd_subject": ml.varcorr["sdcor"].iloc[0], "rho_subject": rho,
                 "sigma": ml.sigma}
    for name, value in estimates.items():
        mean, sd = table.loc[name, "mean"], table.loc[name, "sd"]
        assert abs(mean - value) < 0.6 * sd, (name, mean, sd, value)
