"""fit_many with a family whose shape parameter is estimated (ordered beta's
cutpoints, Tweedie's power): each model equals its glmer fit, missing responses are
dropped per model, and a model that cannot be fitted is flagged, not lost."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import glmmjax


def _frame(n=120, groups=12, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"x": rng.normal(size=n), "g": np.repeat(np.arange(groups),
                                                                   n // groups)}), rng


def _responses(family, frame, rng):
    n = len(frame)
    if family == "ordbeta":
        Y = np.clip(rng.beta(2, 3, size=(n, 3)), 0, 1)
        Y[:5, 0], Y[5:8, 1], Y[10:12, 2] = 0.0, 1.0, 1.0
    else:  # tweedie: compound Poisson-gamma counts with exact zeros
        mu = np.exp(0.3 + 0.4 * frame["x"].to_numpy())[:, None]
        counts = rng.poisson(mu, size=(n, 3))
        Y = np.where(counts > 0, rng.gamma(np.maximum(counts, 1) * 2.0, 0.5), 0.0)
    Y[3, 2] = np.nan  # a missing response: model 2 is fitted on its other rows
    return Y


@pytest.mark.parametrize("family", ["ordbeta", "tweedie"])
def test_each_model_equals_its_single_fit(family):
    frame, rng = _frame()
    Y = _responses(family, frame, rng)
    Y = np.column_stack([Y, np.full(len(frame), 0.5)])  # constant: flagged
    batch = glmmjax.fit_many("~ x + (1 | g)", frame, Y, family=family)
    assert batch.models["status"].iloc[3] != "converged" and not batch.converged[3]
    assert np.all(np.isnan(batch.fixef.iloc[3]))
    shape_columns = {"ordbeta": ["lower_cutpoint", "upper_cutpoint"], "tweedie": ["power"]}
    for k in range(3):
        single = glmmjax.glmer("y ~ x + (1 | g)", frame.assign(y=Y[:, k]).dropna(), family)
        assert batch.converged[k]
        np.testing.assert_allclose(batch.fixef.iloc[k], single.beta, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(batch.fixef_se.iloc[k], np.sqrt(np.diag(single.beta_cov)),
                                   rtol=1e-6)
        np.testing.assert_allclose(batch.models["criterion"].iloc[k], single.criterion,
                                   rtol=1e-10)
        np.testing.assert_allclose(batch.models["dispersion"].iloc[k], single.dispersion,
                                   rtol=1e-6)
        for column in shape_columns[family]:
            np.testing.assert_allclose(batch.models[column].iloc[k],
                                       single.extra_params[column], rtol=1e-6)
    assert batch.inference.startswith("t tests, between-within")


def test_what_the_per_model_path_does_not_take():
    frame, rng = _frame(n=40, groups=4)
    Y = _responses("ordbeta", frame, rng)
    with pytest.raises(ValueError, match="shape parameter"):
        glmmjax.fit_many("~ x + (1 | g)", frame, Y, family="ordbeta", precision="float32")
