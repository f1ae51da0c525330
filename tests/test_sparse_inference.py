"""Inference on the sparse pedigree path: the parametric bootstrap
(glmmjax._inference.sparse_bootstrap) and Satterthwaite's df
(glmmjax._engines.host.sparse_lmm.varpar_derivatives), against the dense path.

- the draws of the relatedness effects have covariance exactly A (pedigree, through the
  LDL' of A⁻¹) or K (sparse K, through F·F' = K): with the identity as noise, X·X' = A;
- each sparse refit of a simulated response equals the dense path's fit of the same
  response (small pedigree, both paths): fixed effects, σ and the SDs;
- the bootstrap's statistics are named as the dense bootstrap's;
- Satterthwaite's df of every coefficient, and of the F test of anova, equal the dense
  path's on the same pedigree (REML and ML, with a herd term).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import scipy.sparse

import glmmjax as gj
import glmmjax._model.sparse_relmat as sparse_relmat
from glmmjax._inference.sparse_bootstrap import relatedness_draws, simulate_sparse
from glmmjax._model.sparse_relmat import SparseRelatedness
from tests.test_pedigree import _animal_data


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def test_relatedness_draws_have_covariance_A_and_K():
    _, ped = _animal_data(q=60, n=10, seed=11)
    A = ped.relationship_matrix().to_numpy()
    q = A.shape[0]
    cov = SparseRelatedness(1, precision=ped.inverse(), log_det=ped.log_det())
    X = relatedness_draws(cov, q, np.eye(q))
    np.testing.assert_allclose(X @ X.T, A, atol=1e-10)
    lower, log_det = sparse_relmat._sparse_cholesky(scipy.sparse.csc_matrix(A), "animal")
    X = relatedness_draws(SparseRelatedness(1, lower=lower, log_det=log_det), q, np.eye(q))
    np.testing.assert_allclose(X @ X.T, A, atol=1e-10)


def test_sparse_bootstrap_refits_agree_with_the_dense_path(monkeypatch):
    data, ped = _animal_data(q=80, n=160, seed=13)
    formula = "y ~ x + (1 | animal) + (1 | herd)"
    monkeypatch.setattr(sparse_relmat, "SPARSE_MIN_LEVELS", 0)
    fit = gj.lmer(formula, data, reml=True, relmat={"animal": ped})
    assert fit.engine == "sparse"
    boot = fit.bootstrap(3, seed=5)
    assert list(boot.replicates.columns) == ["Intercept", "x", "sigma",
                                            "sd_Intercept|animal", "sd_Intercept|herd"]
    assert boot.batch.converged.all()
    np.testing.assert_allclose(boot.original.to_numpy(),
                               [*fit.fixef, fit.sigma, *fit.varcorr["sdcor"].iloc[:2]])
    Y = simulate_sparse(fit, 3, 5)  # the bootstrap's responses (same seed)
    monkeypatch.setattr(sparse_relmat, "SPARSE_MIN_LEVELS", 10**9)
    for k in range(3):
        dense = gj.lmer(formula, data.assign(y=Y[:, k]), reml=True, relmat={"animal": ped})
        assert dense.engine != "sparse"
        row = boot.replicates.iloc[k]
        np.testing.assert_allclose(row[["Intercept", "x"]].to_numpy(float),
                                   dense.fixef.to_numpy(), rtol=1e-6)
        np.testing.assert_allclose(row["sigma"], dense.sigma, rtol=1e-6)
        for group in ("animal", "herd"):
            sd = dense.varcorr.loc[dense.varcorr["group"] == group, "sdcor"].iloc[0]
            np.testing.assert_allclose(row[f"sd_Intercept|{group}"], sd, rtol=1e-5)
    summary = boot.summary()
    assert list(summary.columns) == ["original", "mean", "sd", "bias"]
    assert boot.confint().shape == (5, 2)


@pytest.mark.parametrize("formula, reml", [("y ~ x + (1 | animal) + (1 | herd)", True),
                                           ("y ~ x + (1 | animal)", False)])
def test_sparse_satterthwaite_agrees_with_the_dense_path(monkeypatch, formula, reml):
    data, ped = _animal_data(q=150, n=300, seed=17)
    data["z"] = np.random.default_rng(1).normal(size=len(data))
    formula = formula.replace("x +", "x + z +")
    dense = gj.lmer(formula, data, reml=reml, relmat={"animal": ped})
    monkeypatch.setattr(sparse_relmat, "SPARSE_MIN_LEVELS", 0)
    fit = gj.lmer(formula, data, reml=reml, relmat={"animal": ped})
    assert fit.engine == "sparse" and dense.engine != "sparse"
    table, expected = fit.coef_table(ddf="satterthwaite"), dense.coef_table(ddf="satterthwaite")
    # Central differences of the sparse criterion against the dense path's derivatives:
    # they agree to about 1e-7 here.
    np.testing.assert_allclose(table["df"], expected["df"], rtol=1e-5)
    np.testing.assert_allclose(table["Pr(>|t|)"], expected["Pr(>|t|)"], rtol=1e-4, atol=1e-14)
    np.testing.assert_allclose(fit._satterthwaite.vcov, dense._satterthwaite.vcov, rtol=1e-5)
    f, f_dense = fit.anova(ddf="satterthwaite"), dense.anova(ddf="satterthwaite")
    for column in ("DenDF", "F value"):
        np.testing.assert_allclose(f[column].to_numpy(float), f_dense[column].to_numpy(float),
                                   rtol=1e-5)


def test_simulate_new_effects_on_the_sparse_path_are_related(monkeypatch):
    # simulate(include_re=False) draws b ~ N(0, σ_a²·A): records of different but
    # related animals covary by σ_a²·A_ij (an independent draw per animal gives 0).
    data, ped = _animal_data(q=60, n=120, seed=19)
    monkeypatch.setattr(sparse_relmat, "SPARSE_MIN_LEVELS", 0)
    fit = gj.lmer("y ~ x + (1 | animal)", data, relmat={"animal": ped})
    assert fit.engine == "sparse"
    sims = fit.simulate(4000, include_re=False, seed=3).to_numpy()
    A = ped.relationship_matrix()
    labels = data["animal"].astype(str).to_numpy()
    sd_a = float(fit.varcorr["sdcor"].iloc[0])
    expected = sd_a**2 * A.loc[labels, labels].to_numpy()
    expected[np.diag_indices_from(expected)] += fit.sigma**2
    observed = np.cov(sims)
    other = (labels[:, None] != labels[None, :]) & (expected > 0.05 * sd_a**2)
    slope = np.sum(observed[other] * expected[other]) / np.sum(expected[other] ** 2)
    assert abs(slope - 1.0) < 0.1, slope


@pytest.mark.slow  # ~40 s: a dense profile compiles, the sparse one factors M ~10⁴ times
def test_sparse_profile_confint_agrees_with_the_dense_path(monkeypatch):
    data, ped = _animal_data(q=80, n=160, seed=13)
    formula = "y ~ x + (1 | animal) + (1 | herd)"
    dense = gj.lmer(formula, data, relmat={"animal": ped})
    monkeypatch.setattr(sparse_relmat, "SPARSE_MIN_LEVELS", 0)
    fit = gj.lmer(formula, data, relmat={"animal": ped})
    assert fit.engine == "sparse"
    parm = ["sd_Intercept|animal", "sigma", "x"]
    table = fit.confint(method="profile", parm=parm)
    expected = dense.confint(method="profile", parm=parm).loc[table.index]
    np.testing.assert_allclose(table.to_numpy(), expected.to_numpy(), rtol=1e-5)


def test_sparse_profile_starts_at_the_ml_optimum(monkeypatch):
    from glmmjax._inference.sparse_profile import SparseProblem

    data, ped = _animal_data(q=60, n=120, seed=23)
    monkeypatch.setattr(sparse_relmat, "SPARSE_MIN_LEVELS", 0)
    fit = gj.lmer("y ~ x + (1 | animal)", data, relmat={"animal": ped})
    ml = gj.lmer("y ~ x + (1 | animal)", data, reml=False, relmat={"animal": ped})
    problem = SparseProblem(fit)  # from the REML fit
    np.testing.assert_allclose(problem.base, ml.deviance, rtol=1e-10)
    sd_animal = float(ml.varcorr["sdcor"].iloc[0])
    np.testing.assert_allclose(problem.omega_hat, [sd_animal, np.log(ml.sigma), *ml.fixef],
                               rtol=2e-5)
    assert problem.zeta(0, problem.omega_hat[0]) == pytest.approx(0.0, abs=1e-3)
    # ζ is monotone through the estimate, for a variance parameter and for β
    for j in (0, 3):
        step = problem.wald_step(j)
        below, above = (problem.zeta(j, problem.omega_hat[j] + s * step) for s in (-1, 1))
        assert -1.3 < below < -0.7 and 0.7 < above < 1.3
