"""Parametric bootstrap on the sparse pedigree path (glmmjax._inference.sparse_bootstrap).

- the draws of the relatedness effects have covariance exactly A (pedigree, through the
  LDL' of A⁻¹) or K (sparse K, through F·F' = K): with the identity as noise, X·X' = A;
- each sparse refit of a simulated response equals the dense path's fit of the same
  response (small pedigree, both paths): fixed effects, σ and the SDs;
- the bootstrap's statistics are named as the dense bootstrap's.
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
