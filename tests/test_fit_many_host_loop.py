"""fit_many of models no batch-specialized solver covers (structured covariance terms)
on the CPU in float64: one host fit per model (glmmjax._batching.host_loop), each equal
to its single lmer/glmer fit; missing responses dropped per model, unusable responses
flagged, nothing lost."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import glmmjax


def _frame(subjects=10, times=4, seed=0):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"subj": np.repeat(np.arange(subjects), times),
                          "time": np.tile(np.arange(times), subjects)})
    frame["x"] = rng.normal(size=len(frame))
    frame["timef"] = pd.Categorical(frame["time"])
    return frame, rng


def _ar1_effects(rng, subjects, times, K, rho=0.6, sd=1.0):
    cov = sd**2 * rho ** np.abs(np.subtract.outer(np.arange(times), np.arange(times)))
    return rng.multivariate_normal(np.zeros(times), cov, size=(subjects, K))  # (g, K, t)


def _single(fit_fn, formula, frame, y, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_fn("y ~ " + formula.split("~")[1], frame.assign(y=y).dropna(), **kwargs)


@pytest.mark.parametrize("reml, ddf", [(True, "auto"), (False, None)])
def test_lmm_ar1_models_equal_their_lmer_fits(reml, ddf):
    frame, rng = _frame()
    formula = "~ x + ar1(timef + 0 | subj)"
    K = 3
    b = _ar1_effects(rng, 10, 4, K)
    Y = (0.5 * frame["x"].to_numpy()[:, None]
         + b[frame["subj"].to_numpy(), :, frame["time"].to_numpy()]
         + 0.5 * rng.normal(size=(len(frame), K)))
    Y[[3, 17], 1] = np.nan  # missing responses of model 1 only
    Y = np.column_stack([Y, np.full(len(frame), 2.0)])  # constant: flagged
    batch = glmmjax.fit_many(formula, frame, Y, reml=reml, ddf=ddf)
    assert batch.method == ("REML" if reml else "ML") and batch.memory is None
    assert not batch.converged[3] and batch.models["status"].iloc[3] == "constant response"
    assert np.all(np.isnan(batch.fixef.iloc[3]))
    for k in range(K):
        single = _single(glmmjax.lmer, formula, frame, Y[:, k], reml=reml)
        assert batch.converged[k], batch.models["status"].iloc[k]
        np.testing.assert_allclose(batch.fixef.iloc[k], single.beta, rtol=1e-6)
        np.testing.assert_allclose(batch.models["criterion"].iloc[k], single.criterion,
                                   rtol=1e-8)
        np.testing.assert_allclose(batch.models["sigma"].iloc[k], single.sigma, rtol=1e-6)
        np.testing.assert_allclose(batch.theta[k], single.theta_values, rtol=1e-5)
        rows = batch.coefficients[batch.coefficients["model"] == k]
        if ddf is None:
            table = single.coef_table()
            assert np.all(np.isinf(rows["df"]))
        else:
            table = single.coef_table(ddf="satterthwaite")
            np.testing.assert_allclose(rows["df"], table["df"], rtol=1e-5)
            np.testing.assert_allclose(rows["p_value"], table["Pr(>|t|)"], rtol=1e-4)
        np.testing.assert_allclose(rows["std_error"], table["Std. Error"], rtol=1e-6)
    # The structure's parameters: the SD and the correlation of the ar1 term.
    rho = batch.models["rho_ar1|subj"].to_numpy()[:K]
    assert np.all((rho > -1) & (rho < 1))
    assert "sd_ar1|subj" in batch.models


def test_lmm_ar1_kenward_roger_as_the_single_fit():
    rng = np.random.default_rng(0)
    subjects, times = 8, 3  # two replicates per subject and time: σ identified
    frame = pd.DataFrame({"subj": np.repeat(np.arange(subjects), 2 * times),
                          "time": np.tile(np.arange(times), 2 * subjects)})
    frame["x"] = rng.normal(size=len(frame))
    frame["timef"] = pd.Categorical(frame["time"])
    formula = "~ x + ar1(timef + 0 | subj)"
    K = 2
    Y = (frame["x"].to_numpy()[:, None] + rng.normal(size=(subjects, K))[frame["subj"]]
         + 0.7 * rng.normal(size=(subjects, times, K))[frame["subj"], frame["time"]]
         + rng.normal(size=(len(frame), K)))
    batch = glmmjax.fit_many(formula, frame, Y, ddf="kenward-roger")
    assert batch.inference.startswith("t tests, Kenward-Roger")
    for k in range(K):
        single = _single(glmmjax.lmer, formula, frame, Y[:, k])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = single.coef_table(ddf="kenward-roger")
        rows = batch.coefficients[batch.coefficients["model"] == k]
        np.testing.assert_allclose(batch.fixef.iloc[k], single.beta, rtol=1e-6)
        assert np.all(np.isfinite(table["Std. Error"]))
        np.testing.assert_allclose(rows["df"], table["df"], rtol=1e-5)
        np.testing.assert_allclose(rows["std_error"], table["Std. Error"], rtol=1e-5)


def test_poisson_cs_models_equal_their_glmer_fits():
    frame, rng = _frame(subjects=12, times=3, seed=2)
    formula = "~ x + cs(timef + 0 | subj)"
    K = 3
    Y = rng.poisson(np.exp(0.3 + 0.3 * frame["x"].to_numpy()[:, None]
                           + 0.6 * rng.normal(size=(12, K))[frame["subj"]])).astype(float)
    Y[5, 2] = np.nan
    Y = np.column_stack([Y, np.full(len(frame), -1.0)])  # outside the support: flagged
    batch = glmmjax.fit_many(formula, frame, Y, family="poisson")
    assert batch.method == "Laplace" and batch.memory is None
    assert not batch.converged[3] and batch.models["status"].iloc[3] != "converged"
    assert batch.inference.startswith("t tests, between-within")
    for k in range(K):
        single = _single(glmmjax.glmer, formula, frame, Y[:, k], family="poisson")
        assert batch.converged[k], batch.models["status"].iloc[k]
        np.testing.assert_allclose(batch.fixef.iloc[k], single.beta, rtol=1e-6, atol=1e-10)
        np.testing.assert_allclose(batch.fixef_se.iloc[k], np.sqrt(np.diag(single.beta_cov)),
                                   rtol=1e-6)
        np.testing.assert_allclose(batch.models["criterion"].iloc[k], single.criterion,
                                   rtol=1e-8)
    z = glmmjax.fit_many(formula, frame, Y[:, :1], family="poisson", ddf=None)
    assert np.all(np.isinf(z.coefficients["df"]))
    np.testing.assert_allclose(z.fixef.iloc[0], batch.fixef.iloc[0], rtol=1e-12)


def test_which_models_take_the_host_loop():
    from glmmjax._batching import fit_many as fm
    from glmmjax._families.base import get_family

    frame, _ = _frame()
    poisson = get_family("poisson")

    def takes(formula, family, n_agq=1, precision="float64", relmat=None):
        design = fm._design_for(formula, frame, None, None)
        return fm._host_loop_applies(design, family, n_agq, precision, relmat)

    assert takes("~ x + ar1(timef + 0 | subj)", None)
    assert takes("~ x + diag(timef + 0 | subj)", None)
    assert takes("~ x + cs(timef + 0 | subj)", poisson)
    assert not takes("~ x + (1 | subj)", None)  # the compiled LMM path
    assert not takes("~ x + (x | subj)", poisson)  # the lockstep engine
    assert not takes("~ x + ar1(timef + 0 | subj)", None, precision="float32")
    assert not takes("~ x + cs(timef + 0 | subj)", poisson, n_agq=0)  # host has no nAGQ=0
    # LMMs: at most HOST_LOOP_FIRST_MAX models, and only while their program has not
    # been compiled here; GLMMs always.
    program = ("a batch program's key",)
    assert fm._host_loop_first(None, fm.HOST_LOOP_FIRST_MAX, program)
    assert not fm._host_loop_first(None, fm.HOST_LOOP_FIRST_MAX + 1, program)
    assert fm._host_loop_first(poisson, 10 * fm.HOST_LOOP_FIRST_MAX, program)
    fm._COMPILED.add(program)
    try:
        assert not fm._host_loop_first(None, 3, program)
        assert fm._host_loop_first(poisson, 3, program)
    finally:
        fm._COMPILED.discard(program)


@pytest.mark.slow  # 8 s: 240 rows, a 6-dimensional cs term
def test_a_fit_ending_at_a_non_finite_hessian_is_flagged_not_raised():
    # Model 9 of issue 19's Poisson cs batch: the host engine's central-difference
    # Hessian is not finite where the line search stopped (glmer raised LAPACK's "SVD
    # did not converge" before); now glmer and fit_many report it as not converged.
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"subj": np.repeat(np.arange(40), 6), "time": np.tile(np.arange(6), 40)})
    frame["x"] = rng.normal(size=240)
    frame["timef"] = pd.Categorical(frame["time"])
    Y = rng.poisson(np.exp(0.2 + 0.5 * rng.normal(size=(40, 50))[frame["subj"]])).astype(float)
    formula = "~ x + cs(timef + 0 | subj)"
    single = _single(glmmjax.glmer, formula, frame, Y[:, 9], family="poisson")
    assert not single.convergence.converged
    batch = glmmjax.fit_many(formula, frame, Y[:, [9]], family="poisson")
    assert not batch.converged[0] and batch.models["status"].iloc[0] == single.convergence.message
    np.testing.assert_allclose(batch.models["criterion"].iloc[0], single.criterion, rtol=1e-10)
