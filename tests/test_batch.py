"""Batched fitting: each model in a batch equals the same model fitted alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from conftest import cached, load_reference, rel_close

import glmmjax


@pytest.fixture(scope="module")
def sleepstudy():
    return glmmjax.datasets.load("sleepstudy")


def noisy_reactions(data, k, seed=0):
    rng = np.random.default_rng(seed)
    Y = data["Reaction"].to_numpy()[:, None] + rng.normal(0, 25, (len(data), k))
    Y[:, 0] = data["Reaction"]
    return Y


def test_lmm_batch_equals_single_fits(sleepstudy):
    Y = noisy_reactions(sleepstudy, 4)
    Y[5, 2] = np.inf
    # Missing responses (NaN): model 3 is fitted on its other rows alone (weight 0 on
    # its missing rows), subject 308's first five days and one more of another subject.
    missing = [0, 1, 2, 3, 4, 57]
    Y[missing, 3] = np.nan
    batch = glmmjax.fit_many("~ Days + (Days | Subject)", sleepstudy, Y, chunk_size=4)
    assert batch.models["status"][2].startswith("non-finite response in rows [5]")
    assert not batch.converged[2] and np.isnan(batch.fixef.iloc[2]).all()
    for k in (0, 1, 3):
        rows = np.isfinite(Y[:, k])
        alone = glmmjax.lmer("y ~ Days + (Days | Subject)",
                             sleepstudy.assign(y=Y[:, k])[rows])
        rel_close(batch.fixef.iloc[k], alone.fixef, 1e-8)
        # SEs depend on θ̂, which both fits reach only to the optimizer's tolerance.
        rel_close(batch.fixef_se.iloc[k], alone.fixef_se, 1e-6)
        rel_close(batch.models["criterion"][k], alone.criterion, 1e-10)
        rel_close(batch.models["sigma"][k], alone.sigma, 1e-7)
        # The criteria agree to 1e-10, but θ's small off-diagonal entry (~0.02) lies in
        # a flat direction: the two optimizers (lmer starts from moments) pin it to ~1e-6.
        rel_close(batch.theta[k], alone.theta_values, 1e-6, atol=1e-6)
        assert batch.models["converged"][k]
        # t tests with Satterthwaite's df per model, as lmer's (= lmerTest's) summary.
        table = alone.coef_table(ddf="satterthwaite")
        mine = batch.coefficients[batch.coefficients["model"] == k]
        rel_close(mine["df"], table["df"], 1e-5)
        # (p ~ 1e-17 for the intercept: t differs in its 7th digit, p in its 5th.)
        rel_close(mine["p_value"], table["Pr(>|t|)"], 1e-4)
    tidy = batch.coefficients
    assert list(tidy.columns) == ["model", "term", "estimate", "std_error", "statistic", "df",
                                  "p_value"]
    assert batch.inference.startswith("t tests, Satterthwaite")
    assert len(tidy) == 4 * 2


def test_glmm_batch_equals_glmer_and_flags_bad_models():
    cbpp = glmmjax.datasets.load("cbpp")
    size = cbpp["size"].to_numpy()
    prop = cbpp["incidence"].to_numpy() / size
    shifted = np.round(np.clip(prop + 0.1, 0, 1) * size) / size
    outside = prop.copy()
    outside[3] = 1.5
    Y = np.column_stack([prop, shifted, outside])
    batch = glmmjax.fit_many("~ period + (1 | herd)", cbpp, Y, family="binomial",
                             weights=size, chunk_size=2)
    assert "row" in batch.models["status"][2] and not batch.converged[2]
    alone = cached(("glmm", "cbpp_laplace_default"), lambda: glmmjax.glmer(
        "cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial"))
    rel_close(batch.fixef.iloc[0], alone.fixef, 1e-8)
    rel_close(batch.fixef_se.iloc[0], alone.fixef_se, 1e-6)
    rel_close(batch.models["criterion"][0], alone.criterion, 1e-10)
    # t tests on the between-within df: cbpp's period varies within herds (56 rows,
    # 15 herds, 3 within-herd coefficients: 56 - 15 - 3 = 38 df for every coefficient).
    first = batch.coefficients[batch.coefficients["model"] == 0]
    np.testing.assert_array_equal(first["df"], 38.0)
    from glmmjax._families.distributions import t_sf

    rel_close(first["p_value"], 2 * t_sf(np.abs(first["statistic"]), 38.0), 1e-12)
    assert batch.converged[:2].all()


def test_benjamini_hochberg_matches_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(1).uniform(size=50) ** 2
    p[7] = np.nan
    adjusted = glmmjax.p_adjust_bh(p)
    ok = np.isfinite(p)
    expected = multitest.multipletests(p[ok], method="fdr_bh")[1]
    np.testing.assert_allclose(adjusted[ok], expected, rtol=1e-12)
    assert np.isnan(adjusted[7])
    # A Series (say, batch.p_values("Days")) keeps its index and name.
    series = pd.Series(p, index=[f"gene{i}" for i in range(50)], name="p_value")
    by_name = glmmjax.p_adjust_bh(series)
    assert by_name.index.equals(series.index) and by_name.name == "p_value"
    np.testing.assert_allclose(by_name.to_numpy(), adjusted, rtol=0, equal_nan=True)


def test_bad_response_shapes(sleepstudy):
    with pytest.raises(glmmjax.DataError, match="one row per row of data"):
        glmmjax.fit_many("~ Days + (1 | Subject)", sleepstudy, np.zeros((10, 3)))
    with pytest.raises(glmmjax.DataError, match="not in data"):
        glmmjax.fit_many("~ Days + (1 | Subject)", sleepstudy, ["nope"])


def test_float32_mode_is_close_to_float64(sleepstudy):
    Y = noisy_reactions(sleepstudy, 4, seed=3)
    f64 = glmmjax.fit_many("~ Days + (Days | Subject)", sleepstudy, Y, chunk_size=4)
    f32 = glmmjax.fit_many("~ Days + (Days | Subject)", sleepstudy, Y, chunk_size=4,
                           precision="float32")
    rel_close(f32.fixef.to_numpy(), f64.fixef.to_numpy(), 1e-4)
    rel_close(f32.models["sigma"], f64.models["sigma"], 1e-3)


def test_bootstrap_agrees_with_bootmer(sleepstudy):
    ref = load_reference("bootstrap")
    fit = cached(("lmm", "sleepstudy_reml"), lambda: glmmjax.lmer(
        "Reaction ~ Days + (Days|Subject)", sleepstudy))
    n = 400
    boot = fit.bootstrap(n, seed=7)
    assert boot.n_failed == 0
    summary = boot.summary()
    n_ref = ref["n_replicates"]
    for ours, theirs in zip(summary.index, ref["mean"]):
        sd = ref["sd"][theirs]
        # Both are Monte Carlo estimates: allow 4 standard errors of their difference.
        assert abs(summary.loc[ours, "mean"] - ref["mean"][theirs]) < 4 * sd * np.sqrt(1 / n + 1 / n_ref)
        assert abs(summary.loc[ours, "sd"] / sd - 1) < 4 * np.sqrt(1 / (2 * n) + 1 / (2 * n_ref))
    ci = boot.confint()
    assert (ci.iloc[:, 0] < summary["original"]).all() and (summary["original"] < ci.iloc[:, 1]).all()


def test_sharding_over_four_cpu_devices(tmp_path):
    script = textwrap.dedent("""
        import json, numpy as np, glmmjax, jax
        data = glmmjax.datasets.load("sleepstudy")
        rng = np.random.default_rng(0)
        Y = data["Reaction"].to_numpy()[:, None] + rng.normal(0, 25, (180, 8))
        many = glmmjax.fit_many("~ Days + (1 | Subject)", data, Y, chunk_size=8)
        one = glmmjax.fit_many("~ Days + (1 | Subject)", data, Y, chunk_size=8, n_devices=1)
        print(json.dumps({"devices": len(jax.local_devices()), "used": many.n_devices,
                          "diff": float(np.max(np.abs(many.fixef.to_numpy() - one.fixef.to_numpy())))}))
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4 and result["used"] == 4
    assert result["diff"] < 1e-9


@pytest.mark.slow  # the example end to end (12 s); its pieces are fast tests here and in
# test_batch_inference.py
def test_per_gene_example_runs_tiny(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
    import per_gene_de

    table = per_gene_de.main(n_genes=6, n_subjects=6, cells_per_subject=8,
                             out=str(tmp_path / "volcano.png"), seed=2)
    assert isinstance(table, pd.DataFrame) and len(table) == 6
    assert {"log2_fold_change", "p_value", "q_value", "converged"} <= set(table.columns)


def _sleepstudy_parts(sleepstudy):
    subjects = sleepstudy["Subject"].cat.categories
    parts = [
        sleepstudy[sleepstudy["Subject"].isin(subjects[:6])],
        sleepstudy[sleepstudy["Subject"].isin(subjects[6:15])].iloc[5:],  # unbalanced
        sleepstudy[sleepstudy["Subject"].isin(subjects[15:])],
    ]
    return [p.assign(Subject=p["Subject"].astype(str)) for p in parts]


def test_stacked_datasets_of_different_sizes_equal_single_fits(sleepstudy):
    parts = _sleepstudy_parts(sleepstudy)
    stacked = glmmjax.fit_datasets("Reaction ~ Days + (Days | Subject)", parts)
    assert stacked.converged.all()
    for k, part in enumerate(parts):
        alone = glmmjax.lmer("Reaction ~ Days + (Days | Subject)", part)
        rel_close(stacked.fixef.iloc[k], alone.fixef, 1e-8)
        rel_close(stacked.fixef_se.iloc[k], alone.fixef_se, 1e-6)
        rel_close(stacked.models["criterion"][k], alone.criterion, 1e-10)
        rel_close(stacked.models["sigma"][k], alone.sigma, 1e-7)


@pytest.mark.slow
def test_stacked_glmm_datasets_equal_single_fits():
    cbpp = glmmjax.datasets.load("cbpp")
    herds = cbpp["herd"].cat.categories
    parts = [cbpp[cbpp["herd"].isin(herds[:8])], cbpp[cbpp["herd"].isin(herds[8:])]]
    parts = [p.assign(herd=p["herd"].astype(str)) for p in parts]
    formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    stacked = glmmjax.fit_datasets(formula, parts, family="binomial")
    for k, part in enumerate(parts):
        alone = glmmjax.glmer(formula, part, family="binomial")
        rel_close(stacked.fixef.iloc[k], alone.fixef, 1e-6)
        rel_close(stacked.models["criterion"][k], alone.criterion, 1e-9)


def test_stacked_datasets_need_matching_columns(sleepstudy):
    parts = _sleepstudy_parts(sleepstudy)
    bad = parts[1].assign(Days=pd.Categorical(parts[1]["Days"].astype(str)))
    with pytest.raises(glmmjax.DataError, match="dataset 1"):
        glmmjax.fit_datasets("Reaction ~ Days + (1 | Subject)", [parts[0], bad])


# -- the batch-specialized path for one scalar random-effect term (_batching.scalar) ----------
def _scalar_glmm_data(seed=5):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(30), 10)
    x = rng.normal(size=300)
    data = pd.DataFrame({"x": x, "g": pd.Categorical(g)})
    eta = -0.3 + 0.8 * x + rng.normal(0, 0.7, 30)[g]
    return data, eta, rng


@pytest.mark.parametrize("route", ["compiled", "auto"])
def test_scalar_glmm_path_equals_glmer_and_flags_a_failure(route, monkeypatch):
    # "compiled": the scalar path's program; "auto" (the default): a first call of a
    # small batch, fitted by the lockstep engine without compiling anything.
    from glmmjax._batching import fit_many as fit_many_module

    monkeypatch.setattr(fit_many_module, "SCALAR_ROUTE", route)
    data, eta, rng = _scalar_glmm_data()
    Y = (rng.uniform(size=(300, 4)) < 1 / (1 + np.exp(-eta[:, None]))).astype(float)
    Y[:, 1] = (data["x"] > 0).astype(float)  # complete separation: β_x → ∞
    Y[:, 2] = 0.0
    Y[:5, 2] = 1.0  # rare events, all in one group (θ̂ ≈ 11)
    batch = glmmjax.fit_many("~ x + (1 | g)", data, Y, family="binomial", chunk_size=4)
    assert not batch.converged[1]
    assert batch.models["status"][1] == "reached the maximum number of iterations"
    for k in (0, 2, 3):
        alone = glmmjax.glmer("y ~ x + (1 | g)", data.assign(y=Y[:, k]), family="binomial")
        # glmer's BFGS stops at |∇| <= 1e-6 (an error of ~1e-8 in β at this curvature),
        # Newton here at |∇| ~ 1e-10. Model 2's objective is flat (θ̂ ≈ 11), so there
        # glmer's own error is ~3e-7: we check that our point is at least as good.
        rtol = 1e-6 if k == 2 else 1e-8
        rel_close(batch.fixef.iloc[k], alone.fixef, rtol, atol=1e-8)
        rel_close(batch.fixef_se.iloc[k], alone.fixef_se, 1e-6)
        rel_close(batch.models["criterion"][k], alone.criterion, 1e-10)
        assert batch.models["criterion"][k] <= alone.criterion + 1e-9
        rel_close(batch.theta[k], alone.theta_values, 10 * rtol)
        assert batch.converged[k] and batch.models["status"][k] == "converged"
    assert (batch.memory is None) == (route == "auto")


def test_scalar_calls_fit_by_lockstep_until_compiling_pays(monkeypatch):
    """SCALAR_ROUTE "auto": calls of a batch program are fitted by the lockstep engine,
    nothing compiled, until LOCKSTEP_SAVING × the seconds they took reaches
    COMPILE_SECONDS; the next call compiles and runs the program, and so do all later
    ones; batches of more than LOCKSTEP_FIRST_MAX models compile at once."""
    from glmmjax._batching import fit_many as fit_many_module

    monkeypatch.setattr(fit_many_module, "SCALAR_ROUTE", "auto")
    monkeypatch.setattr(fit_many_module, "_PROGRAMS", {})
    data, eta, rng = _scalar_glmm_data()
    Y = (rng.uniform(size=(300, 8)) < 1 / (1 + np.exp(-eta[:, None]))).astype(float)

    def fit(Y):
        return glmmjax.fit_many("~ x + (1 | g)", data, Y, family="binomial", chunk_size=4)

    # A compilation that costs more than many lockstep calls: a second call (and a
    # third) stays on the lockstep engine, its time added up per program.
    monkeypatch.setattr(fit_many_module, "COMPILE_SECONDS", 1e6)
    first = fit(Y[:, :4])
    assert first.memory is None  # the lockstep engine
    assert fit(Y[:, :4]).memory is None
    (spent,) = fit_many_module._PROGRAMS.values()
    assert spent > 0
    # Once the lockstep time has paid for the compilation: the compiled program (test_batch's,
    # chunks of 4), for this call and every later one.
    monkeypatch.setattr(fit_many_module, "COMPILE_SECONDS", 0.5 * spent)
    again = fit(Y[:, :4])
    assert again.memory is not None
    assert list(fit_many_module._PROGRAMS.values()) == [None]
    monkeypatch.setattr(fit_many_module, "COMPILE_SECONDS", 1e6)
    assert fit(Y[:, 4:]).memory is not None  # compiled already: stays compiled
    rel_close(again.fixef.to_numpy(), first.fixef.to_numpy(), 1e-7)
    rel_close(again.fixef_se.to_numpy(), first.fixef_se.to_numpy(), 1e-6)
    rel_close(again.models["criterion"], first.models["criterion"], 1e-11)
    monkeypatch.setattr(fit_many_module, "_PROGRAMS", {})
    monkeypatch.setattr(fit_many_module, "LOCKSTEP_FIRST_MAX", 6)
    assert fit(Y).memory is not None  # more models than LOCKSTEP_FIRST_MAX


def test_scalar_glmm_path_in_float32_is_close_to_float64():
    """float32 batches of one-scalar-term GLMMs take the scalar path too (its stopping
    tolerances rise to float32's resolution) and stay close to float64."""
    data, eta, rng = _scalar_glmm_data()
    Y = (rng.uniform(size=(300, 4)) < 1 / (1 + np.exp(-eta[:, None]))).astype(float)
    f64 = glmmjax.fit_many("~ x + (1 | g)", data, Y, family="binomial", chunk_size=4)
    f32 = glmmjax.fit_many("~ x + (1 | g)", data, Y, family="binomial", chunk_size=4,
                           precision="float32")
    assert f32.converged.all() and f64.converged.all()
    np.testing.assert_allclose(f32.fixef.to_numpy(), f64.fixef.to_numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(f32.theta, f64.theta, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(f32.fixef_se.to_numpy(), f64.fixef_se.to_numpy(), rtol=1e-2)


@pytest.mark.slow
def test_scalar_glmm_path_poisson_with_offset_equals_glmer():
    data, eta, rng = _scalar_glmm_data(seed=6)
    exposure = rng.uniform(0.5, 2.0, size=300)
    data = data.assign(log_t=np.log(exposure))
    Y = rng.poisson(np.exp(eta[:, None] + data["log_t"].to_numpy()[:, None]), size=(300, 2))
    batch = glmmjax.fit_many("~ x + (1 | g)", data, Y.astype(float), family="poisson",
                             offset=data["log_t"].to_numpy(), chunk_size=2)
    alone = glmmjax.glmer("y ~ x + offset(log_t) + (1 | g)", data.assign(y=Y[:, 0]),
                          family="poisson")
    rel_close(batch.fixef.iloc[0], alone.fixef, 1e-8)
    rel_close(batch.fixef_se.iloc[0], alone.fixef_se, 1e-6)
    rel_close(batch.models["criterion"][0], alone.criterion, 1e-10)
    assert batch.converged.all()


@pytest.mark.slow  # 12–17 s of autodiff compilation; the scalar path's fits are checked
# against glmer in the fast suite (test_scalar_glmm_path_equals_glmer_and_flags_a_failure)
def test_scalar_glmm_closed_form_hessian_equals_autodiff():
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from glmmjax._batching import scalar as gb
    from glmmjax._batching.fit_many import _design_for
    from glmmjax._families.base import NegativeBinomial, get_family

    data, eta, rng = _scalar_glmm_data(seed=7)
    design = _design_for("~ x + (1 | g)", data, None, None)
    counts = rng.poisson(np.exp(eta)).astype(float)
    binary = (counts > 0).astype(float)
    # Closed-form row derivatives (logit, log) and autodiff ones (NB with a fixed θ).
    cases = [(get_family("binomial"), binary), (get_family("poisson"), counts),
             (NegativeBinomial(theta=2.0), counts)]

    @eqx.filter_jit
    def both(a, y, setup):
        yp, wp = y[setup.index], setup.mask
        u, _, ok = gb.conditional_modes(a, jnp.zeros(30), yp, wp, setup)
        return ok, gb.value_gradient_hessian(a, u, yp, wp, setup), gb.gradient_hessian(
            a, u, yp, wp, setup)[:2]

    with jax.enable_x64(True):
        for family, y in cases:
            assert gb.applies(design, family, 1)
            setup = gb.make_scalar_setup(design, family)
            ok, (g_ref, H_ref), (g, H) = both(jnp.array([0.6, -0.4, 0.3]), jnp.asarray(y), setup)
            assert ok
            np.testing.assert_allclose(g, g_ref, rtol=1e-10, atol=1e-10 * np.max(np.abs(g_ref)))
            np.testing.assert_allclose(H, H_ref, rtol=1e-10, atol=1e-10 * np.max(np.abs(H_ref)))
    assert not gb.applies(design, get_family("binomial"), 2)  # AGQ: general pipeline
    assert not gb.applies(design, get_family("Gamma"), 1)  # estimated dispersion
    slope = _design_for("~ x + (x | g)", data, None, None)
    assert not gb.applies(slope, get_family("binomial"), 1)


def test_lmm_batch_kenward_roger_equals_single_fits(sleepstudy):
    # Kenward–Roger per model (df and adjusted SEs), a model with missing responses
    # fitted on its observed rows, as lmer's coef_table(ddf="kenward-roger") (= pbkrtest,
    # tests/test_ddf.py).
    data = sleepstudy.assign(late=(sleepstudy["Subject"].cat.codes >= 9).astype(float))
    Y = noisy_reactions(data, 3, seed=3)
    Y[[10, 11, 12, 100], 2] = np.nan
    batch = glmmjax.fit_many("~ Days + late + (1 | Subject)", data, Y,
                             ddf="kenward-roger")
    assert batch.inference.startswith("t tests, Kenward-Roger")
    for k in range(3):
        rows = np.isfinite(Y[:, k])
        alone = glmmjax.lmer("y ~ Days + late + (1 | Subject)", data.assign(y=Y[:, k])[rows])
        table = alone.coef_table(ddf="kenward-roger")
        mine = batch.coefficients[batch.coefficients["model"] == k]
        rel_close(mine["estimate"], table["Estimate"], 1e-7)
        rel_close(mine["std_error"], table["Std. Error"], 1e-6)
        rel_close(mine["df"], table["df"], 1e-5)
        rel_close(mine["p_value"], table["Pr(>|t|)"], 1e-4)
        rel_close(batch.models["criterion"][k], alone.criterion, 1e-10)
    # between-subject 'late': few df (18 subjects), unlike a z test
    assert (batch.coefficients.query("term == 'late'")["df"] < 20).all()
    with pytest.raises(ValueError, match="REML"):
        glmmjax.fit_many("~ Days + (1 | Subject)", data, Y, ddf="kenward-roger", reml=False)
    with pytest.raises(ValueError, match="linear mixed models only"):
        glmmjax.fit_many("~ Days + (1 | Subject)", data, Y > 300, family="binomial",
                         ddf="kenward-roger")
