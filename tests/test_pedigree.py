"""Pedigrees and the sparse known-relatedness path (glmmjax._model.pedigree, glmmjax._engines.host.sparse_lmm).

- A from Henderson's rules (A⁻¹, inbreeding, log|A|) against the tabular method;
- the sparse LMM path against the dense path on the same small pedigree (forced with
  SPARSE_MIN_LEVELS = 0): criterion, θ, β, SEs, BLUPs and their conditional SDs;
- the sparse path against lme4's relmat trick on a pedigree of 1,200 animals with a herd
  term (tests/reference/pedigree_reference.R);
- errors for unusable pedigrees and for methods the sparse path does not offer.
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pandas as pd
import pytest
import scipy.sparse

import glmmjax as gj
import glmmjax._model.sparse_relmat as sparse_relmat
from glmmjax import Pedigree, PedigreeError, RelmatError

REFERENCE = pathlib.Path(__file__).parent / "reference"


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _random_pedigree(q: int, founders: int, seed: int):
    rng = np.random.default_rng(seed)
    sire, dam = [None] * founders, [None] * founders
    for i in range(founders, q):
        s, d = int(rng.integers(0, i // 2 + 1)), int(rng.integers(i // 2, i))
        sire.append(None if rng.random() < 0.1 else s)
        dam.append(None if rng.random() < 0.1 else d)
    return list(range(q)), sire, dam


def _tabular(sire, dam) -> np.ndarray:
    q = len(sire)
    A = np.zeros((q, q))
    for i in range(q):
        s, d = sire[i], dam[i]
        row = np.zeros(i)
        if s is not None:
            row += 0.5 * A[s, :i]
        if d is not None:
            row += 0.5 * A[d, :i]
        A[i, :i] = A[:i, i] = row
        A[i, i] = 1.0 + (0.5 * A[s, d] if s is not None and d is not None else 0.0)
    return A


def test_henderson_inverse_matches_the_tabular_relationship_matrix():
    animal, sire, dam = _random_pedigree(120, 10, seed=1)
    order = np.random.default_rng(2).permutation(len(animal))  # listed in any order
    ped = Pedigree([animal[i] for i in order], [sire[i] for i in order],
                   [dam[i] for i in order])
    A = _tabular(sire, dam)
    labels = [int(v) for v in ped.labels]
    A = A[np.ix_(labels, labels)]
    assert np.max(ped.inbreeding) > 0.1  # inbred animals are covered
    np.testing.assert_allclose(ped.relationship_matrix().to_numpy(), A, atol=1e-13)
    np.testing.assert_allclose(ped.inverse().toarray() @ A, np.eye(len(A)), atol=1e-10)
    np.testing.assert_allclose(ped.log_det(), np.linalg.slogdet(A)[1], rtol=1e-12)
    np.testing.assert_allclose(ped.inbreeding, np.diag(A) - 1.0, atol=1e-13)
    # parents always precede their offspring in labels
    position = {label: i for i, label in enumerate(ped.labels)}
    for label, s in zip(animal, sire):
        if s is not None:
            assert position[str(s)] < position[str(label)]


def test_selfing_and_float_labels():
    # a parent column with missing values is read as floats: 1.0 is animal 1
    ped = Pedigree([1, 2, 3], [np.nan, np.nan, 1.0], [np.nan, np.nan, 1.0])
    np.testing.assert_allclose(ped.inbreeding, [0.0, 0.0, 0.5])
    frame = pd.DataFrame({"id": ["a", "b", "c"], "s": ["0", "0", "a"], "d": ["0", "0", "b"]})
    ped = Pedigree.from_frame(frame, animal="id", sire="s", dam="d", unknown="0")
    np.testing.assert_allclose(ped.relationship_matrix().loc["c", "a"], 0.5)


@pytest.mark.parametrize("args, kwargs, message", [
    (([1, 2, 2], [None] * 3, [None] * 3), {}, r"more than once: \['2'\]"),
    (([1, 2], [None, 5], [None, None]), {}, r"not listed as animals: \['5'\].*add_founders"),
    (([1, 2], [None, 2], [None, None]), {}, r"own parent: \['2'\]"),
    (([1, 2, 3], [None, 3, 2], [None, None, None]), {}, r"cycle.*\['2', '3'\]"),
    (([1, 2], [None], [None, None]), {}, "same length"),
    (([1, 2], [2, 1], [None, None]), {}, "no founders"),
])
def test_unusable_pedigrees_are_named(args, kwargs, message):
    with pytest.raises(PedigreeError, match=message):
        Pedigree(*args, **kwargs)


def test_add_founders():
    ped = Pedigree([1, 2], [None, 5], [None, None], add_founders=True)
    assert set(ped.labels) == {"1", "2", "5"}
    np.testing.assert_allclose(ped.relationship_matrix().loc["2", "5"], 0.5)


def _animal_data(q=200, n=400, seed=3):
    animal, sire, dam = _random_pedigree(q, 25, seed)
    ped = Pedigree(animal, sire, dam)
    rng = np.random.default_rng(seed)
    A = ped.relationship_matrix()
    u = pd.Series(np.linalg.cholesky(A.to_numpy()) @ rng.normal(size=q), index=A.index)
    recorded = rng.choice(np.arange(40, q), n)
    herd = rng.integers(0, 12, n)
    x = rng.normal(size=n)
    y = (1 + 0.5 * x + 0.8 * u[[str(a) for a in recorded]].to_numpy()
         + 0.6 * rng.normal(size=12)[herd] + rng.normal(size=n))
    return pd.DataFrame({"y": y, "x": x, "animal": recorded, "herd": herd}), ped


def _sd(fit, group):
    frame = fit.varcorr
    return float(frame.loc[frame["group"] == group, "sdcor"].iloc[0])


@pytest.mark.parametrize("formula, reml", [("y ~ x + (1 | animal)", True),
                                           ("y ~ x + (1 | animal) + (1 | herd)", False)])
def test_sparse_path_matches_the_dense_path(monkeypatch, formula, reml):
    data, ped = _animal_data()
    dense = gj.lmer(formula, data, reml=reml, relmat={"animal": ped})
    assert dense.engine != "sparse"
    monkeypatch.setattr(sparse_relmat, "SPARSE_MIN_LEVELS", 0)
    fit = gj.lmer(formula, data, reml=reml, relmat={"animal": ped})
    assert fit.engine == "sparse" and fit.converged
    assert fit.deviance <= dense.deviance + 1e-9 * abs(dense.deviance)
    np.testing.assert_allclose(fit.deviance, dense.deviance, rtol=1e-10)
    np.testing.assert_allclose(fit.fixef, dense.fixef, rtol=1e-6)
    np.testing.assert_allclose(fit.fixef_se, dense.fixef_se, rtol=1e-6)
    for group in ("animal", "herd") if "herd" in formula else ("animal",):
        np.testing.assert_allclose(_sd(fit, group), _sd(dense, group), rtol=1e-6)
    np.testing.assert_allclose(fit.sigma, dense.sigma, rtol=1e-7)
    # BLUPs of every animal of the pedigree, ancestors without records included
    b, b_dense = fit.ranef["animal"], dense.ranef["animal"]
    assert len(b) == len(ped)
    np.testing.assert_allclose(b.to_numpy(), b_dense.loc[b.index].to_numpy(), atol=1e-6)
    sd, sd_dense = fit.ranef_condsd["animal"], dense.ranef_condsd["animal"]
    np.testing.assert_allclose(sd.to_numpy(), sd_dense.loc[sd.index].to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(fit.predict(data.iloc[:5]), dense.predict(data.iloc[:5]),
                               atol=1e-6)
    assert "(relmat)" in fit.summary()


def test_sparse_K_path_matches_the_dense_path(monkeypatch):
    data, ped = _animal_data(q=120, n=240, seed=5)
    levels = [str(a) for a in sorted(data["animal"].unique())]  # the levels' order
    K = ped.relationship_matrix().loc[levels, levels]
    dense = gj.lmer("y ~ x + (1 | animal)", data, relmat={"animal": K})
    monkeypatch.setattr(sparse_relmat, "SPARSE_MIN_LEVELS", 0)
    fit = gj.lmer("y ~ x + (1 | animal)", data,
                  relmat={"animal": scipy.sparse.csc_matrix(K.to_numpy())})
    assert fit.engine == "sparse"
    np.testing.assert_allclose(fit.deviance, dense.deviance, rtol=1e-10)
    np.testing.assert_allclose(fit.fixef, dense.fixef, rtol=1e-7)
    with pytest.raises(RelmatError, match="not positive definite|singular"):
        bad = scipy.sparse.csc_matrix(np.ones((len(levels), len(levels))))
        gj.lmer("y ~ x + (1 | animal)", data, relmat={"animal": bad})


def test_sparse_path_errors(monkeypatch):
    data, ped = _animal_data(q=60, n=100, seed=7)
    monkeypatch.setattr(sparse_relmat, "SPARSE_MIN_LEVELS", 0)
    stranger = data.assign(animal=data["animal"].astype(str).where(data.index > 0, "x99"))
    with pytest.raises(RelmatError, match=r"no entry for 1 level.*\['x99'\]"):
        gj.lmer("y ~ x + (1 | animal)", stranger, relmat={"animal": ped})
    fit = gj.lmer("y ~ x + (1 | animal)", data, relmat={"animal": ped})
    with pytest.raises(ValueError, match="fitted sparsely.*dense path"):
        fit.coef_table(ddf="kenward-roger")


def test_sparse_path_matches_lme4_relmat_trick(monkeypatch):
    # 1,200 animals (lme4's dense t(L)·Zt did not finish in 20 minutes at 2,500): the
    # sparse path is forced below its threshold.
    monkeypatch.setattr(sparse_relmat, "SPARSE_MIN_LEVELS", 0)
    reference = json.loads((REFERENCE / "pedigree.json").read_text())["models"]
    animals = pd.read_csv(REFERENCE / "data" / "pedigree_animals.csv", dtype=str,
                          keep_default_na=False)
    ped = Pedigree.from_frame(animals, unknown="")
    data = pd.read_csv(REFERENCE / "data" / "pedigree_records.csv")
    for model in reference.values():
        fit = gj.lmer(model["formula"], data, reml=model["reml"], relmat={"animal": ped})
        assert fit.engine == "sparse"
        expected = model["minus2loglik"]
        assert fit.deviance <= expected + 1e-6 * abs(expected)
        np.testing.assert_allclose(fit.deviance, expected, rtol=1e-7)
        np.testing.assert_allclose(fit.fixef.to_numpy(), model["fixef"], rtol=1e-5)
        np.testing.assert_allclose(_sd(fit, "animal"), model["sd_animal"], rtol=1e-4)
        np.testing.assert_allclose(_sd(fit, "herd"), model["sd_herd"], rtol=1e-4)
        np.testing.assert_allclose(fit.sigma, model["sigma"], rtol=1e-5)
        b = fit.ranef["animal"]["Intercept"].loc[model["b_levels"]].to_numpy()
        np.testing.assert_allclose(b, model["b"], atol=1e-4)
