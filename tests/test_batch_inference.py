"""fit_many's tests of the fixed effects (glmmjax._batching.inference): calibrated with few
groups, where Wald z tests are not (issue 19, item 4)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import glmmjax
from glmmjax._batching.inference import between_within_df, check_batch_ddf
from glmmjax._model.design import build_design
from glmmjax._model.formula import parse_formula

# 400 null models: the share of p < 0.05 has SD 0.011, so a calibrated test lands in
# [0.014, 0.086] (± 3.3 SD) except once in a thousand runs. z tests give about 0.10
# (LMM) and 0.135 (Poisson GLMM) on these designs.
K = 400
BAND = (0.014, 0.086)


def _null_design(seed):
    rng = np.random.default_rng(seed)
    subjects, per = 8, 5
    subject = np.repeat(np.arange(subjects), per)
    data = pd.DataFrame({"subject": [f"s{j}" for j in subject],
                         "treat": (subject >= subjects // 2).astype(float),
                         "x": rng.normal(size=subjects * per)})
    return rng, subject, data


def _design(formula, data):
    return build_design(parse_formula(formula), data)


def test_between_within_df_as_nlme():
    sleep = glmmjax.datasets.load("sleepstudy")
    sleep = sleep.assign(late=(sleep["Subject"].cat.codes >= 9).astype(float))
    # nlme::lme(Reaction ~ Days, random = ~1 | Subject): DF 161 for both coefficients
    # (180 rows, 18 subjects); a between-subject covariate gets 18 - 1 - 1 = 16.
    np.testing.assert_array_equal(
        between_within_df(_design("Reaction ~ Days + (1 | Subject)", sleep)), [161, 161])
    np.testing.assert_array_equal(
        between_within_df(_design("Reaction ~ Days + late + (1 | Subject)", sleep)),
        [161, 161, 16])
    # A random slope makes Days a between-subject effect too (containment).
    np.testing.assert_array_equal(
        between_within_df(_design("Reaction ~ Days + late + (Days | Subject)", sleep)),
        [162, 15, 15])


@pytest.mark.slow  # two batch compilations, ~30 s each on 2 busy cores
def test_lmm_null_p_values_are_uniform_with_few_subjects():
    rng, subject, data = _null_design(0)
    Y = 1.0 + rng.normal(size=(8, K))[subject] + rng.normal(size=(len(data), K))
    batch = glmmjax.fit_many("~ treat + x + (1 | subject)", data, Y)
    assert batch.converged.all()
    for term in ("treat", "x"):
        p = batch.p_values(term).to_numpy()
        assert BAND[0] < np.mean(p < 0.05) < BAND[1], term
        # Uniform as a whole, not only at 5%: deciles within sampling error.
        counts = np.histogram(p, bins=10, range=(0, 1))[0]
        assert counts.min() > 18 and counts.max() < 66, counts
    df = batch.coefficients.query("term == 'treat'")["df"]
    # About 8 subjects - 2 between parameters, as the between-within rule says.
    assert 5.8 < df.median() < 6.1 and df.min() > 4.5 and df.max() < 6.2


@pytest.mark.slow
def test_glmm_null_p_values_are_calibrated_with_few_subjects():
    rng, subject, data = _null_design(1)
    Y = rng.poisson(np.exp(0.5 + 0.5 * rng.normal(size=(8, K))[subject])).astype(float)
    batch = glmmjax.fit_many("~ treat + x + (1 | subject)", data, Y, family="poisson")
    assert batch.inference.startswith("t tests, between-within")
    p = batch.p_values("treat").to_numpy()
    assert BAND[0] < np.mean(p < 0.05) < BAND[1]
    z = glmmjax.fit_many("~ treat + x + (1 | subject)", data, Y, family="poisson", ddf=None)
    assert z.inference.startswith("Wald z")
    np.testing.assert_allclose(z.fixef, batch.fixef)
    assert np.all(z.p_values("treat") <= batch.p_values("treat") + 1e-15)


def test_ddf_argument_is_checked():
    assert check_batch_ddf("auto", lmm=True) == "satterthwaite"
    assert check_batch_ddf("Between_Within", lmm=False) == "between-within"
    assert check_batch_ddf(None, lmm=False) is None
    with pytest.raises(ValueError, match="linear mixed models only"):
        check_batch_ddf("satterthwaite", lmm=False)
    assert check_batch_ddf("KR", lmm=True) == "kenward-roger"
    with pytest.raises(ValueError, match="linear mixed models only"):
        check_batch_ddf("kenward-roger", lmm=False)
    with pytest.raises(ValueError, match="ddf must be"):
        check_batch_ddf("containment", lmm=True)
