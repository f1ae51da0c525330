"""glmmTMB's compois (Conway–Maxwell–Poisson, mean parameterization) against glmmTMB
1.1.5 (tests/reference/glmm_tmb20.R -> glmm_tmb20.json): GLMMs with under- and
overdispersion, a zero-inflated GLMM and a GLM; its closed-form partials against the
JAX twin's autodiff; bad input.

Tolerances as tests/test_glmm_families_tmb2.py: −2 log L within 1e-6 relative of
glmmTMB's and never above it by more, estimates 1e-4 relative, SEs 1e-3.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from conftest import REFERENCE, cached, load_reference, rel_close

import glmmjax
from glmmjax._families import math_compois as cmp

COMPOIS_GLMMS = ["compois_under", "compois_over"]


@pytest.fixture(scope="module")
def reference():
    return load_reference("glmm_tmb20")


def _data(ref):
    return pd.read_csv(REFERENCE / ref["data"], dtype={"g": str})


def _fit(ref):
    return cached(("glmm_tmb20", ref["name"]), lambda: glmmjax.glmer(
        ref["formula"], _data(ref), family=ref["family"], ziformula=ref.get("ziformula")))


def test_log_normalizer_and_mean_match_a_long_direct_sum():
    from scipy.special import gammaln, logsumexp

    x = np.log(np.array([0.05, 0.7, 3.0, 12.0, 40.0]))
    nu = np.array([2.5, 0.4, 1.0, 0.3, 1.7])
    L, m = cmp.loglambda_numpy(x, nu)
    j = np.arange(6000.0)
    log_t = j * L[:, None] - nu[:, None] * gammaln(j + 1.0)
    log_z = logsumexp(log_t, axis=1)
    rel_close(m["log_z"], log_z, 1e-14, atol=1e-14)
    p = np.exp(log_t - log_z[:, None])
    rel_close(p @ j, np.exp(x), 1e-13)
    rel_close(m["k2"], p @ j**2 - np.exp(2 * x), 1e-10)
    # ν = 1 is the Poisson: log λ = log μ.
    rel_close(cmp.loglambda_numpy(x, np.ones(5))[0], x, 1e-12, atol=1e-13)


_Y = np.array([0.0, 1.0, 3.0, 7.0, 20.0, 0.0])
_X = np.log(np.array([0.5, 2.0, 3.0, 6.0, 15.0, 0.05]))
_PSI = np.array([0.3, -0.5, 1.2, 0.0, 2.0, -1.0])


def test_closed_form_partials_match_central_differences():
    def parts(x, psi):
        return cmp.compois_partials(np, _Y, x, psi, np.ones(6), True)

    got = parts(_X, _PSI)
    h = 1e-5
    for field, lower, by_psi in (("f1", "value", False), ("f2", "f1", False),
                                 ("f3", "f2", False), ("f_psi", "value", True),
                                 ("f1_psi", "f1", True), ("f2_psi", "f2", True)):
        up = parts(_X + h * (not by_psi), _PSI + h * by_psi)
        down = parts(_X - h * (not by_psi), _PSI - h * by_psi)
        diff = (getattr(up, lower) - getattr(down, lower)) / (2 * h)
        rel_close(getattr(got, field), diff, 1e-6, atol=1e-8), field


@pytest.mark.slow
def test_closed_form_partials_match_the_jax_twin():
    """The host engine's partials (moments of j and log j!, implicit derivatives of
    log λ) against nested autodiff of the JAX log-density (custom JVP of log λ)."""
    y, x, psi = _Y, _X, _PSI
    got = cmp.compois_partials(np, y, x, psi, np.ones(6), True)
    with jax.enable_x64(True):
        def f(xi, pi, yi):
            return cmp.compois_value(jnp, yi, xi, pi, 1.0)

        args = (jnp.asarray(x), jnp.asarray(psi), jnp.asarray(y))
        d = jax.grad
        want = [jax.vmap(g)(*args) for g in (
            f, d(f), d(d(f)), d(d(d(f))), d(f, 1), d(d(f), 1), d(d(d(f)), 1))]
    for name, a, b in zip(got._fields, got, want):
        rel_close(a, np.asarray(b), 1e-9, atol=1e-11), name


@pytest.mark.parametrize("name", COMPOIS_GLMMS)
def test_compois_glmm_matches_glmmtmb(reference, name):
    ref = reference["models"][name]
    tmb = ref["glmmTMB"]
    fit = _fit(ref)
    assert fit.engine == "host"
    assert fit.converged, fit.convergence
    assert fit.nobs == tmb["nobs"]
    assert fit.deviance <= tmb["minus2loglik"] + 1e-6 * abs(tmb["minus2loglik"])
    rel_close(fit.deviance, tmb["minus2loglik"], 1e-6)
    rel_close(fit.fixef, tmb["fixef"], 1e-4)
    rel_close(fit.fixef_se, tmb["fixef_se"], 1e-3)
    rel_close(fit.dispersion, tmb["dispersion"], 1e-4)
    vc = fit.varcorr
    rel_close(vc["sdcor"].to_numpy(), [tmb["re_sd"]["g"]["(Intercept)"]], 1e-4)


def test_zero_inflated_compois_matches_glmmtmb(reference):
    ref = reference["models"]["compois_zi"]
    tmb = ref["glmmTMB"]
    fit = _fit(ref)
    assert fit.converged, fit.convergence
    assert fit.criterion <= tmb["minus2loglik"] + 1e-6 * abs(tmb["minus2loglik"])
    rel_close(fit.criterion, tmb["minus2loglik"], 1e-6)
    rel_close(fit.fixef["cond"], tmb["fixef"], 1e-4)
    rel_close(fit.fixef["zi"], tmb["zi_fixef"], 1e-4)
    rel_close(np.exp(fit.fixef["disp"].to_numpy()), [tmb["dispersion"]], 1e-4)
    rel_close(fit.fixef_se["cond"], tmb["fixef_se"], 1e-3)
    rel_close(fit.fixef_se["zi"], tmb["zi_fixef_se"], 1e-3)
    rel_close(fit.fixef_se["disp"], tmb["log_dispersion_se"], 1e-3)
    # predict: the response mean (1 − π)μ, μ the CMP mean.
    mu = fit.predict(type="conditional").to_numpy()
    pi = fit.predict(type="zprob").to_numpy()
    rel_close(fit.predict(type="response").to_numpy(), (1 - pi) * mu, 1e-12)


def test_compois_predict_and_simulate(reference):
    fit = _fit(reference["models"]["compois_under"])
    eta = fit.predict(type="link").to_numpy()
    rel_close(fit.predict(type="response").to_numpy(), np.exp(eta), 1e-12)
    n_sim = 200
    values = np.asarray(fit.simulate(n_sim, seed=1))  # numpy's compois draw
    assert values.shape == (fit.nobs, n_sim)
    assert np.all(values >= 0) and np.all(values == np.round(values))
    # Each row's draws have its fitted mean and the family's variance there.
    mu = np.exp(eta)
    var = cmp.compois_variance(np, mu, fit.dispersion)
    z = (values.mean(axis=1) - mu) / np.sqrt(var / n_sim)
    assert abs(z.mean()) < 5 / np.sqrt(fit.nobs) and 0.8 < z.var() < 1.25, (z.mean(), z.var())


def test_compois_glm_matches_glmmtmb(reference):  # host engine: no compile
    ref = reference["models"]["compois_glm"]
    tmb = ref["glmmTMB"]
    fit = glmmjax.glm(ref["formula"], _data(ref), family="compois")
    assert fit.converged
    got = -2.0 * fit.loglik
    assert got <= tmb["minus2loglik"] + 1e-6 * abs(tmb["minus2loglik"])
    rel_close(got, tmb["minus2loglik"], 1e-6)
    rel_close(fit.fixef, tmb["fixef"], 1e-4)
    rel_close(fit.fixef_se, tmb["fixef_se"], 1e-3)
    rel_close(fit.dispersion, tmb["dispersion"], 1e-4)


@pytest.mark.slow
def test_compiled_engine_agrees_on_compois(reference):
    ref = reference["models"]["compois_under"]
    host = _fit(ref)
    jax_fit = glmmjax.glmer(ref["formula"], _data(ref), family="compois", engine="jax")
    assert jax_fit.converged, jax_fit.convergence
    rel_close(jax_fit.deviance, host.deviance, 1e-9)
    rel_close(jax_fit.fixef, host.fixef, 1e-5)


@pytest.mark.slow  # the compiled parts engine compiles for ~25 s on a small CPU
def test_compiled_engine_agrees_on_zero_inflated_compois():
    """ZI compois with a random intercept on 60 simulated rows: the compiled parts engine
    (compois's JAX twin: Newton in a custom_jvp, differentiated by jacfwd through the
    implicit inner mode) reaches the host engine's optimum."""
    rng = np.random.default_rng(4)
    n = 60
    g = np.repeat(np.arange(6), 10)
    x, z = rng.normal(size=n), rng.normal(size=n)
    y = cmp.draw_numpy(rng, np.exp(0.8 + 0.4 * x + rng.normal(0, 0.4, 6)[g]), 0.6)
    y = np.where(rng.uniform(size=n) < 1 / (1 + np.exp(0.5 - 0.8 * z)), 0, y)
    data = pd.DataFrame({"y": y, "x": x, "z": z, "g": [f"g{i}" for i in g]})
    fits = {engine: glmmjax.glmer("y ~ x + (1 | g)", data, family="compois", ziformula="~ z",
                                  engine=engine) for engine in ("host", "jax")}
    host, compiled = fits["host"], fits["jax"]
    assert compiled.engine == "jax" and host.engine == "host"
    assert host.converged and compiled.converged, compiled.convergence
    rel_close(compiled.criterion, host.criterion, 1e-8)
    np.testing.assert_allclose(compiled.params, host.params, rtol=1e-5, atol=1e-7)
    for part in ("cond", "zi", "disp"):
        rel_close(compiled.fixef_se[part], host.fixef_se[part], 1e-4)


def test_zero_inflated_compois_simulates_in_numpy(reference):
    """A ZI compois fit's simulate draws in numpy (nothing compiled): counts, zeros at
    least where the zero-inflation puts them on average."""
    from glmmjax._inference import parts_draws

    fit = _fit(reference["models"]["compois_zi"])
    assert parts_draws.supported(fit.family)
    sims = np.asarray(fit.simulate(50, seed=2))
    assert sims.shape == (fit.nobs, 50)
    assert np.all(sims >= 0) and np.all(sims == np.round(sims))
    pi = fit.predict(type="zprob").to_numpy()
    mean = fit.predict(type="response").to_numpy()
    assert np.mean(sims == 0) > np.mean(pi)
    # The simulated means against the fitted ones (loose: 50 draws per row).
    np.testing.assert_allclose(sims.mean(), mean.mean(), rtol=0.1)


@pytest.mark.parametrize("bad", [[-1.0, 2.0, 3.0], [0.5, 2.0, 3.0]])
def test_compois_refuses_bad_counts(bad):
    data = pd.DataFrame({"y": bad * 4, "x": np.arange(12.0), "g": list("abcd") * 3})
    with pytest.raises(ValueError, match="compois response must be a non-negative integer"):
        glmmjax.glmer("y ~ x + (1 | g)", data, family="compois")


# -- ordered beta ---------------------------------------------------------------------------


def test_ordbeta_row_terms_match_central_differences():
    from glmmjax._families import ordbeta as ob
    from glmmjax.families import OrderedBeta

    family = OrderedBeta()
    y = np.array([0.0, 1.0, 0.3, 0.8, 0.05, 0.0, 1.0])
    eta = np.array([0.2, -0.5, 1.0, 0.3, -1.2, 2.0, 0.7])
    disp = np.array([4.0, -1.3, 1.7])  # φ, c₀, c₁

    def terms(e, d):
        return ob.row_terms(family, np, y, e, np.ones(7), d, True, True)

    got = terms(eta, disp)
    rel_close(got.value, ob.ordbeta_value(np, y, eta, 4.0, -1.3, 1.7, 1.0), 1e-14)
    h = 1e-6
    up, down = terms(eta + h, disp), terms(eta - h, disp)
    rel_close(got.d1, (up.value - down.value) / (2 * h), 1e-7, atol=1e-8)
    rel_close(got.w, -(up.d1 - down.d1) / (2 * h), 1e-7, atol=1e-8)
    rel_close(got.w1, (up.w - down.w) / (2 * h), 1e-7, atol=1e-8)  # W' = dW/dη
    for k in range(3):  # log φ, c₀, c₁
        step = np.zeros(3)
        step[k] = h
        if k == 0:
            u, d = disp * np.exp(step), disp * np.exp(-step)
        else:
            u, d = disp + step, disp - step
        hi, lo = terms(eta, u), terms(eta, d)
        for field, base in (("value_psi", "value"), ("d1_psi", "d1"), ("w_psi", "w")):
            diff = (getattr(hi, base) - getattr(lo, base)) / (2 * h)
            rel_close(getattr(got, field)[k], diff, 1e-7, atol=1e-8), (k, field)


def test_ordbeta_glmm_matches_glmmtmb(reference):
    ref = reference["models"]["ordbeta_glmm"]
    tmb = ref["glmmTMB"]
    fit = _fit(ref)
    assert fit.engine == "host"
    assert fit.converged, fit.convergence
    assert fit.deviance <= tmb["minus2loglik"] + 1e-6 * abs(tmb["minus2loglik"])
    rel_close(fit.deviance, tmb["minus2loglik"], 1e-6)
    rel_close(fit.fixef, tmb["fixef"], 1e-4)
    rel_close(fit.fixef_se, tmb["fixef_se"], 1e-3)
    rel_close(fit.dispersion, tmb["dispersion"], 1e-4)
    rel_close([fit.extra_params["lower_cutpoint"], fit.extra_params["upper_cutpoint"]],
              tmb["psi"], 1e-4)
    assert fit.family.cutpoints == (fit.extra_params["lower_cutpoint"],
                                    fit.extra_params["upper_cutpoint"])
    rel_close(fit.varcorr["sdcor"].to_numpy(), [tmb["re_sd"]["g"]["(Intercept)"]], 1e-4)
    assert fit.n_params == 6  # as glmmTMB's logLik df: β (2), SD, φ, two cutpoints
    rel_close(fit.aic, tmb["minus2loglik"] + 12, 1e-6)
    # glmmTMB 1.1.5's response scale is the beta part's mean σ(η).
    eta = fit.predict(type="link").to_numpy()
    rel_close(fit.predict(type="response").to_numpy(), 1 / (1 + np.exp(-eta)), 1e-12)


@pytest.mark.slow
def test_ordbeta_simulation_recovers_its_parameters():
    """Draws from OrderedBeta (zeros, ones and beta values by the cutpoints) refitted by
    glmer recover β, the SD, φ and the cutpoints on a large sample."""
    from glmmjax.families import OrderedBeta

    rng = np.random.default_rng(5)
    n_groups, per = 100, 60
    g = np.repeat(np.arange(n_groups), per)
    x = rng.normal(size=g.size)
    eta = 0.2 + 0.7 * x + rng.normal(scale=0.5, size=n_groups)[g]
    family = OrderedBeta(cutpoints=(-1.5, 1.8))
    with jax.enable_x64(True):
        mu = 1 / (1 + jnp.exp(-jnp.asarray(eta)))
        y = np.asarray(family.simulate(jax.random.PRNGKey(2), mu, jnp.ones(g.size),
                                       jnp.asarray(6.0)))
    assert np.all((y >= 0) & (y <= 1)) and np.any(y == 0) and np.any(y == 1)
    rel_close(np.mean(y == 0), np.mean(1 / (1 + np.exp(eta + 1.5))), 0.05)
    data = pd.DataFrame({"y": y, "x": x, "g": [f"g{i}" for i in g]})
    fit = glmmjax.glmer("y ~ x + (1 | g)", data, family="ordbeta")
    assert fit.converged
    z = (fit.fixef.to_numpy() - [0.2, 0.7]) / fit.fixef_se.to_numpy()
    assert np.all(np.abs(z) < 4), fit.fixef
    assert abs(fit.dispersion / 6.0 - 1) < 0.05
    assert abs(fit.extra_params["lower_cutpoint"] + 1.5) < 0.15
    assert abs(fit.extra_params["upper_cutpoint"] - 1.8) < 0.15
    assert abs(fit.varcorr["sdcor"].iloc[0] - 0.5) < 0.1
    sims = np.asarray(fit.simulate(1, seed=3))
    assert np.all((sims >= 0) & (sims <= 1)) and np.any(sims == 0) and np.any(sims == 1)


@pytest.mark.parametrize("bad", [[-0.1, 0.5, 1.0], [0.2, 1.5, 0.0]])
def test_ordbeta_refuses_responses_outside_the_unit_interval(bad):
    data = pd.DataFrame({"y": bad * 4, "x": np.arange(12.0), "g": list("abcd") * 3})
    with pytest.raises(ValueError, match=r"ordbeta response must lie in \[0, 1\]"):
        glmmjax.glmer("y ~ x + (1 | g)", data, family="ordbeta")


def test_beta_points_exact_zeros_and_ones_to_ordbeta():
    data = pd.DataFrame({"y": [0.0, 0.5, 1.0] * 4, "x": np.arange(12.0),
                         "g": list("abcd") * 3})
    with pytest.raises(ValueError, match="exact 0 and 1 need ordered beta: family='ordbeta'"):
        glmmjax.glmer("y ~ x + (1 | g)", data, family="beta")


def test_ordbeta_bad_cutpoints_and_links():
    from glmmjax.families import OrderedBeta

    with pytest.raises(ValueError, match="cutpoints must be two finite numbers c0 < c1"):
        OrderedBeta(cutpoints=(1.0, -1.0))
    with pytest.raises(ValueError, match="link"):
        OrderedBeta(link="probit")
    with pytest.raises(ValueError, match="ziformula"):
        glmmjax.glmer("y ~ x + (1 | g)", pd.DataFrame({
            "y": [0.0, 0.5, 1.0] * 4, "x": np.arange(12.0), "g": list("abcd") * 3}),
            family="ordbeta", ziformula="~1")


# -- REML with a dispersion model -----------------------------------------------------------


@pytest.mark.parametrize("name", ["sleepstudy_reml_disp", "sleepstudy_reml_disp_intercept"])
def test_reml_with_dispformula_matches_glmmtmb(reference, name):
    """glmmTMB's REML = TRUE: β integrated out with the random effects; β's SEs include
    the (θ, γ) uncertainty as TMB's sdreport does for integrated parameters."""
    ref = reference["reml"][name]
    tmb = ref["glmmTMB"]
    data = glmmjax.datasets.load(ref["dataset"])
    fit = glmmjax.lmer(ref["formula"], data, dispformula=ref["dispformula"])
    assert fit.method == "REML"
    assert fit.converged, fit.convergence
    assert fit.criterion <= tmb["minus2loglik"] + 1e-6 * abs(tmb["minus2loglik"])
    rel_close(fit.criterion, tmb["minus2loglik"], 1e-6)
    assert fit.n_params == tmb["df"]
    rel_close(fit.fixef["cond"], tmb["fixef"], 1e-4)
    rel_close(fit.fixef["disp"], tmb["disp_fixef"], 1e-4)
    rel_close(fit.fixef_se["cond"], tmb["fixef_se"], 1e-3)
    rel_close(fit.fixef_se["disp"], tmb["disp_fixef_se"], 1e-3)
    vc = fit.varcorr
    sds = vc[vc["var2"].isna()]["sdcor"].to_numpy()
    rel_close(sds, list(tmb["re_sd"]["Subject"].values()), 1e-4)
    # Maximum likelihood is another fit: its criterion at the REML estimates is not the
    # REML criterion.
    ml = glmmjax.lmer(ref["formula"], data, dispformula=ref["dispformula"], reml=False)
    assert ml.method == "ML" and abs(ml.criterion - fit.criterion) > 1.0


# -- profile-likelihood intervals -----------------------------------------------------------


def _zip_fit(reference):
    ref = reference["profile"]
    data = glmmjax.datasets.load(ref["dataset"])
    return cached(("glmm_tmb20", "zip_profile"), lambda: glmmjax.glmer(
        ref["formula"], data, family=ref["family"], ziformula=ref["ziformula"])), data


def _tmb_intervals(reference):
    tmb = reference["profile"]["glmmTMB"]
    return pd.DataFrame({"lower": tmb["lower"], "upper": tmb["upper"]}, index=tmb["rows"])


def test_profile_interval_ends_are_where_the_profile_meets_the_cutoff(reference):
    """confint(method="profile") for minedno of a ZIP GLMM. glmmTMB interpolates its
    profile by a spline: its lower end is 1.2e-3 short, shown by fits with minedno held
    at each end (an offset): the profile deviance exceeds the χ²₁ cutoff by 0.024 at
    glmmTMB's end and meets it (within 1e-4) at glmmjax's."""
    fit, data = _zip_fit(reference)
    rel_close(fit.criterion, reference["profile"]["glmmTMB"]["minus2loglik"], 1e-6)
    ci = fit.confint(method="profile", parm="minedno", names="r")
    assert list(ci.columns) == ["2.5 %", "97.5 %"] and list(ci.index) == ["minedno"]
    tmb_ci = _tmb_intervals(reference)
    width = tmb_ci.loc["minedno", "upper"] - tmb_ci.loc["minedno", "lower"]
    assert np.all(np.abs(ci.loc["minedno"].to_numpy() - tmb_ci.loc["minedno"].to_numpy())
                  <= 2e-3 * width)
    mined = (data["mined"] == "no").astype(float).to_numpy()
    cutoff = 1.959963984540054**2
    ours, theirs = ci.loc["minedno"].iloc[0], tmb_ci.loc["minedno", "lower"]
    for end in (ours, theirs):
        held = glmmjax.glmer("count ~ 1 + (1 | site)", data, family="poisson",
                             ziformula="~ mined", offset=end * mined)
        gap = held.criterion - fit.criterion - cutoff
        if end == ours:
            assert abs(gap) < 1e-4, gap
        else:
            assert gap > 0.01, gap


@pytest.mark.slow
def test_profile_intervals_match_glmmtmb(reference):
    """Every row: the fixed effects of both parts within 2e-3 of glmmTMB's interval
    width (its spline interpolation, above), the site SD's ends within 1e-3 relative
    (glmmTMB profiles log SD)."""
    fit, _ = _zip_fit(reference)
    ci = fit.confint(method="profile", names="r")
    tmb_ci = _tmb_intervals(reference)
    order = ["(Intercept)", "minedno", "zi~(Intercept)", "zi~minedno"]
    width = (tmb_ci["upper"] - tmb_ci["lower"]).to_numpy()
    got = ci.loc[order].to_numpy()
    want = tmb_ci.loc[order].to_numpy()
    assert np.all(np.abs(got - want) <= 2e-3 * width[:4, None])
    sd = ci.loc["sd_(Intercept)|site"].to_numpy()
    rel_close(np.log(sd), tmb_ci.iloc[4].to_numpy(), 1e-3)
    assert ci.attrs["note"] == ""


def test_reml_profile_intervals_meet_the_cutoff_on_the_reml_criterion():
    """REML fits with a dispersion model (glmmTMB 1.1.5 refuses to profile them; lme4's
    profile of a REML fit is its ML fit's profile, so neither is a reference): the SD
    and the dispersion coefficients are profiled on the REML criterion. Each end is
    checked by an independent one-dimensional profile (bounded scalar minimization over
    the one other parameter): D(end) − F̂ = χ²₁(0.95) within 1e-4. The fixed effects,
    integrated out of the criterion, have no profile (NaN, noted)."""
    from scipy.optimize import minimize_scalar

    from glmmjax._engines.host.parts_reml import GaussianREML

    data = glmmjax.datasets.load("sleepstudy")
    fit = glmmjax.lmer("Reaction ~ Days + (1 | Subject)", data, dispformula="~ 1")
    assert fit.method == "REML"
    ci = fit.confint(method="profile")
    assert list(ci.index) == ["sd_Intercept|Subject", "Intercept", "Days", "d~Intercept"]
    assert ci.loc[["Intercept", "Days"]].isna().all().all()
    assert "integrated out of the REML criterion" in ci.attrs["note"]
    model = GaussianREML(fit.parts_data, fit.design.terms)
    cutoff = 1.959963984540054**2
    theta, gamma = fit.params[0], fit.params[-1]

    def over_gamma(t):
        return minimize_scalar(lambda g: model.value(np.array([t, g])),
                               bounds=(gamma - 2, gamma + 2), method="bounded",
                               options={"xatol": 1e-10}).fun

    def over_theta(g):
        return minimize_scalar(lambda t: model.value(np.array([t, g])),
                               bounds=(0.0, 4 * theta), method="bounded",
                               options={"xatol": 1e-10}).fun

    for end in ci.loc["sd_Intercept|Subject"]:
        assert abs(over_gamma(end) - fit.criterion - cutoff) < 1e-4, end
    for end in ci.loc["d~Intercept"]:
        assert abs(over_theta(end) - fit.criterion - cutoff) < 1e-4, end
    lo, hi = ci.loc["sd_Intercept|Subject"]
    assert lo < theta < hi
    # A dispersion slope too (one more parameter per profile point).
    fit2 = glmmjax.lmer("Reaction ~ Days + (1 | Subject)", data, dispformula="~ Days")
    ci2 = fit2.confint(method="profile", parm="d~Days")
    lo, hi = ci2.loc["d~Days"]
    se = fit2.fixef_se["disp"]["Days"]
    assert lo < fit2.fixef["disp"]["Days"] < hi
    rel_close(hi - lo, 2 * 1.96 * se, 0.2)  # near the Wald width on this well-fitted slope


@pytest.mark.slow
def test_fit_many_compois_agrees_with_single_fits(reference):
    """fit_many's compiled batch (the closed forms through jax.numpy: Newton for log λ
    in a while loop) reaches the host engine's optimum on simulated responses."""
    ref = reference["models"]["compois_under"]
    data = _data(ref)
    fit = _fit(ref)
    Y = np.asarray(fit.simulate(2, seed=4))
    batch = glmmjax.fit_many(ref["formula"], data, Y, family="compois")
    for k in range(2):
        single = glmmjax.glmer(ref["formula"], data.assign(y=Y[:, k]), family="compois")
        rel_close(batch.fixef.iloc[k].to_numpy(), single.fixef.to_numpy(), 1e-5)
