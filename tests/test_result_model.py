"""A fit holds its model: ``fit.model`` (a MixedModel) and ``fit.params`` (Params) give
the pure JAX objective at the estimates, equal to the fit's own log-likelihood."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import glmmjax


def loglik_at_estimates(fit):
    with jax.enable_x64(True):
        return float(fit.model.log_likelihood(fit.params))


@pytest.mark.parametrize("reml", [True, False])
def test_lmm_with_a_correlated_slope(reml):
    fit = glmmjax.lmer("Reaction ~ Days + (Days | Subject)",
                       glmmjax.datasets.load("sleepstudy"), reml=reml)
    assert fit.model is fit.model  # built once
    np.testing.assert_allclose(loglik_at_estimates(fit), fit.loglik, rtol=1e-12)


def test_lmm_with_crossed_terms_keeps_theta_order():
    fit = glmmjax.lmer("diameter ~ 1 + (1 | plate) + (1 | sample)",
                       glmmjax.datasets.load("penicillin"))
    np.testing.assert_allclose(loglik_at_estimates(fit), fit.loglik, rtol=1e-12)
    swapped = fit.params
    swapped = type(swapped)(beta=swapped.beta, theta=swapped.theta[::-1],
                            log_dispersion=swapped.log_dispersion)
    with jax.enable_x64(True):
        assert float(fit.model.log_likelihood(swapped)) < fit.loglik - 1.0


def test_glmm_binomial_and_negative_binomial():
    cbpp = glmmjax.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)",
                         glmmjax.datasets.load("cbpp"), family="binomial")
    np.testing.assert_allclose(loglik_at_estimates(cbpp), cbpp.loglik, rtol=1e-10)
    owls = glmmjax.glmer(
        "SiblingNegotiation ~ FoodTreatment + offset(log(BroodSize)) + (1 | Nest)",
        glmmjax.datasets.load("owls"), family="negative_binomial")
    assert owls.params.log_dispersion.shape == (1,)
    np.testing.assert_allclose(loglik_at_estimates(owls), owls.loglik, rtol=1e-10)


def test_structured_covariance_and_zero_inflated_fits():
    from test_covstruct import MODELS, _fit

    fit = _fit(MODELS["binomial_cs"])
    np.testing.assert_allclose(loglik_at_estimates(fit), fit.loglik, rtol=1e-10)
    zi = glmmjax.glmer("count ~ mined + (1 | site)", glmmjax.datasets.load("salamanders"),
                       family="poisson", ziformula="~ mined")
    with pytest.raises(NotImplementedError, match="criterion_fn"):
        zi.model  # noqa: B018
