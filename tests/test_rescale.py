"""Badly scaled predictors (issue 16, item 9): lmer fits x·1e8 exactly and converges.

The model with Days·1e8 is the sleepstudy model in other units: its estimates are
the unscaled ones divided by 1e8 (slope) and its θ entries by 1e8 (rows of the slope),
its REML criterion is shifted by 2·log(1e8) (the log|X'V⁻¹X| term; ML is invariant),
and its tiny relative slope SD (2.3e-9) is not a zero variance.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import glmmjax
from glmmjax._model.rescale import column_scales

BIG = 1e8


@pytest.fixture(scope="module")
def sleep():
    data = glmmjax.datasets.load("sleepstudy")
    return data.assign(Dbig=data["Days"] * BIG)


@pytest.mark.parametrize("reml", [True, False])
def test_random_slope_on_a_scaled_predictor_is_exact(sleep, reml):
    plain = glmmjax.lmer("Reaction ~ Days + (Days | Subject)", sleep, reml=reml)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no singular-fit or convergence warning
        big = glmmjax.lmer("Reaction ~ Dbig + (Dbig | Subject)", sleep, reml=reml)
    assert big.converged and not big.is_singular
    np.testing.assert_allclose(big.fixef.to_numpy() * [1, BIG], plain.fixef.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(big.fixef_se.to_numpy() * [1, BIG], plain.fixef_se.to_numpy(),
                               rtol=1e-5)
    np.testing.assert_allclose(big.theta.to_numpy() * [1, BIG, BIG], plain.theta.to_numpy(),
                               rtol=1e-5)
    assert big.sigma == pytest.approx(plain.sigma, rel=1e-6)
    shift = 2 * np.log(BIG) if reml else 0.0
    assert big.criterion == pytest.approx(plain.criterion + shift, abs=1e-6)
    np.testing.assert_allclose(big.predict(sleep), plain.predict(sleep), rtol=1e-6)
    np.testing.assert_allclose(big.ranef["Subject"].to_numpy() * [1, BIG],
                               plain.ranef["Subject"].to_numpy(), rtol=1e-4, atol=1e-6)


def test_well_scaled_designs_are_fitted_as_they_are(sleep):
    fit = glmmjax.lmer("Reaction ~ Days + (Days | Subject)", sleep)
    assert column_scales(fit.design) is None
