"""Known relatedness (``relmat={"animal": K}``): fits against lme4's relmat trick
(tests/reference/relmat_reference.R), equivalences that must hold exactly (K = I is the
plain random intercept; levels of K without records; sparse K; one K for many traits),
and the errors for unusable K."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pandas as pd
import pytest
import scipy.sparse

import glmmjax as gj
from glmmjax._model.relmat import Relatedness, RelmatError, relatedness_factor

REFERENCE = pathlib.Path(__file__).parent / "reference"
MODELS = json.loads((REFERENCE / "relmat.json").read_text())["models"]


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _data(name: str) -> pd.DataFrame:
    return pd.read_csv(REFERENCE / "data" / name, dtype={"animal": str})


def _kinship(name: str) -> pd.DataFrame:
    return pd.read_csv(REFERENCE / "data" / name, dtype={"id": str}).set_index("id")


def _fit(model: dict, **kwargs):
    data, K = _data(model["data"]), _kinship(model["kinship"])
    relmat = {model["group"]: K}
    if model["family"] == "gaussian":
        return gj.lmer(model["formula"], data, reml=model["reml"], relmat=relmat, **kwargs)
    return gj.glmer(model["formula"], data, family=model["family"], relmat=relmat, **kwargs)


def _sd(fit, group: str) -> float:
    frame = fit.varcorr
    return float(frame.loc[frame["group"] == group, "sdcor"].iloc[0])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_matches_lme4_relmat_trick(name):
    model = MODELS[name]
    fit = _fit(model)
    reference = model["minus2loglik"]
    assert fit.deviance <= reference + 1e-6 * abs(reference)  # never worse than lme4
    np.testing.assert_allclose(fit.deviance, reference, rtol=1e-6)
    assert list(fit.fixef.index) == [n.strip("()") for n in model["fixef_names"]]
    np.testing.assert_allclose(fit.fixef.to_numpy(), model["fixef"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(_sd(fit, model["group"]), model["sd"], rtol=1e-4)
    if "sigma" in model:
        np.testing.assert_allclose(_sd(fit, "Residual"), model["sigma"], rtol=1e-4)
    b = fit.ranef[model["group"]].loc[model["b_levels"], "(Intercept)"].to_numpy()
    np.testing.assert_allclose(b, model["b"], rtol=0, atol=1e-4 * np.max(np.abs(model["b"])))


@pytest.mark.slow  # compiles the JAX engine's programs
@pytest.mark.parametrize("name", ["pedigree_lmm_ml", "pedigree_binomial"])
def test_jax_engine_matches_lme4_relmat_trick(name):
    model = MODELS[name]
    fit = _fit(model, engine="jax")
    np.testing.assert_allclose(fit.deviance, model["minus2loglik"], rtol=1e-6)
    np.testing.assert_allclose(fit.fixef.to_numpy(), model["fixef"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(_sd(fit, model["group"]), model["sd"], rtol=1e-4)


def _small(seed=3, q=12, reps=3):
    rng = np.random.default_rng(seed)
    levels = [f"a{i:02d}" for i in range(q)]
    G = rng.normal(size=(q, 3 * q))
    K = G @ G.T / (3 * q) + 0.1 * np.eye(q)
    animal = np.repeat(np.arange(q), reps)
    b = np.linalg.cholesky(K) @ rng.normal(size=q)
    x = rng.normal(size=animal.size)
    y = 1 + 0.5 * x + b[animal] + rng.normal(size=animal.size)
    data = pd.DataFrame({"y": y, "x": x, "animal": [levels[i] for i in animal]})
    return data, pd.DataFrame(K, index=levels, columns=levels)


def test_identity_K_is_the_plain_random_intercept():
    data, K = _small()
    eye = pd.DataFrame(np.eye(len(K)), index=K.index, columns=K.columns)
    known = gj.lmer("y ~ x + (1 | animal)", data, relmat={"animal": eye})
    plain = gj.lmer("y ~ x + (1 | animal)", data)
    np.testing.assert_allclose(known.deviance, plain.deviance, rtol=1e-10)
    np.testing.assert_allclose(known.fixef, plain.fixef, rtol=1e-7)
    np.testing.assert_allclose(known.fixef_se, plain.fixef_se, rtol=1e-6)
    np.testing.assert_allclose(known.ranef["animal"].loc[plain.ranef["animal"].index],
                               plain.ranef["animal"], atol=1e-7)
    assert known.ngroups == {"animal": len(K)}


def test_levels_without_records_and_sparse_K_give_the_same_fit():
    # b's marginal over the recorded levels is N(0, σ²K_sub): extra levels (ancestors)
    # change nothing in the likelihood, and neither does the storage of K.
    data, K = _small()
    sub = data[data["animal"] != "a05"]
    with_ancestor = gj.lmer("y ~ x + (1 | animal)", sub, relmat={"animal": K})
    recorded = K.drop(index="a05", columns="a05")
    without = gj.lmer("y ~ x + (1 | animal)", sub, relmat={"animal": recorded})
    np.testing.assert_allclose(with_ancestor.deviance, without.deviance, rtol=1e-10)
    np.testing.assert_allclose(with_ancestor.fixef, without.fixef, rtol=1e-7)
    assert "a05" in with_ancestor.ranef["animal"].index  # predicted from its relatives
    sparse = gj.lmer("y ~ x + (1 | animal)", data,
                     relmat={"animal": scipy.sparse.csc_matrix(K.to_numpy())})
    dense = gj.lmer("y ~ x + (1 | animal)", data, relmat={"animal": K.to_numpy()})
    np.testing.assert_allclose(sparse.deviance, dense.deviance, rtol=1e-12)


def test_predict_uses_relatives_for_levels_without_records():
    data, K = _small()
    fit = gj.lmer("y ~ x + (1 | animal)", data.iloc[3:], relmat={"animal": K})
    b = fit.ranef["animal"]["(Intercept)"]
    new = data.iloc[:4]  # a00 has no records in the fit, a01 has
    expected = fit.fixef["Intercept"] + fit.fixef["x"] * new["x"] + b[new["animal"]].to_numpy()
    np.testing.assert_allclose(fit.predict(new), expected, rtol=1e-12)
    assert abs(b["a00"]) > 0
    np.testing.assert_allclose(fit.predict(data.iloc[3:]), fit.fitted(), rtol=1e-12)
    with pytest.raises(gj.DataError, match="'zz'"):
        fit.predict(new.assign(animal="zz"))


def test_singular_K_uses_an_eigen_factor():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(6, 3))
    K = W @ W.T  # rank 3
    lower = relatedness_factor(K, "animal")
    np.testing.assert_allclose(lower @ lower.T, K, atol=1e-12)


def test_structure_pullback_and_factor():
    lower = np.tril(np.random.default_rng(1).normal(size=(4, 4)))
    cov = Relatedness(4, digest="x", matrix=lower)
    params = np.array([-0.7])
    np.testing.assert_allclose(cov.factor(params, np), 0.7 * lower)
    grad = np.random.default_rng(2).normal(size=(4, 4))
    step = 1e-6
    numeric = (np.sum(grad * cov.factor(params + step, np))
               - np.sum(grad * cov.factor(params - step, np))) / (2 * step)
    np.testing.assert_allclose(cov.pullback(params, grad), [numeric], rtol=1e-7)
    np.testing.assert_allclose(cov.jacobian(params)[0], -lower)


@pytest.mark.slow  # compiles the batch program (~7 s)
def test_fit_many_with_one_K_equals_single_fits():
    data, K = _small()
    rng = np.random.default_rng(9)
    Y = data["y"].to_numpy()[:, None] + rng.normal(size=(len(data), 3))
    batch = gj.fit_many("~ x + (1 | animal)", data, Y, relmat={"animal": K})
    for k in range(3):
        single = gj.lmer("y ~ x + (1 | animal)", data.assign(y=Y[:, k]), relmat={"animal": K})
        np.testing.assert_allclose(batch.models["criterion"].iloc[k], single.deviance, rtol=1e-7)
        np.testing.assert_allclose(batch.fixef.iloc[k], single.fixef, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(
    ("relmat", "formula", "message"),
    [
        ({"animal": np.ones((3, 4))}, "y ~ x + (1 | animal)", "square"),
        ({"animal": "K"}, "y ~ x + (1 | animal)", "numeric matrix"),
        ({"sire": "K"}, "y ~ x + (1 | animal)", "not the grouping factor"),
        ({"animal": "K"}, "y ~ x + (x | animal)", "random intercept only"),
        ({"animal": np.eye(5)}, "y ~ x + (1 | animal)", "has 12 levels"),
        ([("animal", np.eye(12))], "y ~ x + (1 | animal)", "must be a dict"),
    ],
)
def test_bad_relmat_argument(relmat, formula, message):
    data, _ = _small()
    with pytest.raises(RelmatError, match=message):
        gj.lmer(formula, data, relmat=relmat)


def test_bad_K_is_named():
    data, K = _small()
    asymmetric = K.copy()
    asymmetric.iloc[0, 1] += 0.5
    with pytest.raises(RelmatError, match=r"relmat\['animal'\] is not symmetric"):
        gj.lmer("y ~ x + (1 | animal)", data, relmat={"animal": asymmetric})
    indefinite = K - 2.0 * np.eye(len(K)) * np.max(np.linalg.eigvalsh(K))
    with pytest.raises(RelmatError, match="not positive semi-definite"):
        gj.lmer("y ~ x + (1 | animal)", data, relmat={"animal": indefinite})
    missing = K.drop(index=["a03", "a07"], columns=["a03", "a07"])
    with pytest.raises(RelmatError, match=r"no row for 2 level\(s\).*'a03', 'a07'"):
        gj.glmer("y ~ x + (1 | animal)", data.assign(y=(data.y > 1) * 1.0), relmat={
            "animal": missing})
    with pytest.raises(RelmatError, match="not positive semi-definite"):
        gj.fit_many("~ x + (1 | animal)", data, data[["y"]].to_numpy(),
                    relmat={"animal": indefinite})


@pytest.mark.slow  # compiles the batched Laplace fit (~60 s under load)
def test_fit_many_binomial_with_one_K_equals_single_fits():
    data, K = _small()
    rng = np.random.default_rng(0)
    Y = (data["y"].to_numpy()[:, None] + rng.normal(size=(len(data), 2)) > 1) * 1.0
    batch = gj.fit_many("~ x + (1 | animal)", data, Y, family="binomial",
                        relmat={"animal": K})
    for k in range(2):
        single = gj.glmer("y ~ x + (1 | animal)", data.assign(y=Y[:, k]), family="binomial",
                          relmat={"animal": K})
        np.testing.assert_allclose(batch.models["criterion"].iloc[k], single.deviance, rtol=1e-7)
        np.testing.assert_allclose(batch.fixef.iloc[k], single.fixef, rtol=1e-5, atol=1e-7)


def test_relmat_with_zero_inflation_or_dispersion_formulas_is_refused():
    data = pd.DataFrame({"y": [0.0, 1, 2, 0, 3, 1], "animal": list("aabbcc")})
    K = np.eye(3)
    with pytest.raises(ValueError, match="relmat= cannot be combined"):
        gj.glmer("y ~ 1 + (1 | animal)", data, family="poisson", ziformula="~1",
                      relmat={"animal": K})
    with pytest.raises(ValueError, match="relmat= cannot be combined"):
        gj.lmer("y ~ 1 + (1 | animal)", data, reml=False, dispformula="~1",
                     relmat={"animal": K})


def test_summary_tags_the_relatedness_term():
    fit = _fit(MODELS["pedigree_lmm_reml"])
    row = next(line for line in fit.summary().splitlines() if line.strip().startswith("animal"))
    assert row.rstrip().endswith("(relmat)")
    assert fit.covariance_structures == {"animal": "relmat"}
    plain = gj.lmer("y ~ x + (1 | animal)", _data(MODELS["pedigree_lmm_reml"]["data"]))
    assert "(relmat)" not in plain.summary()


def test_a_zero_relatedness_variance_is_named_once():
    """A boundary fit of a relmat term says so in one clause, not one per animal."""
    rng = np.random.default_rng(0)
    ids = [f"a{i}" for i in range(30)]
    W = rng.standard_normal((30, 60))
    K = pd.DataFrame(W @ W.T / 60, index=ids, columns=ids)
    data = pd.DataFrame({"animal": ids * 2, "y": rng.standard_normal(60)})
    with pytest.warns(gj.SingularFitWarning) as caught:
        fit = gj.lmer("y ~ 1 + (1 | animal)", data, relmat={"animal": K})
    message = str(caught[0].message)
    assert "the variance of the animal effects" in message and "a0" not in message
    assert fit.singular_message().count("is zero") == 1
