"""Host-engine GLMMs of families and links beyond binomial-logit and Poisson-log against
glmmTMB (tests/reference/glmm_families_reference.R -> glmm_families.json).

Tolerances (issue 15, the hidden-suite standard): −2 log L within 1e-6 relative of
glmmTMB's (or lower), estimates (β, random-effect SDs, dispersion) within 1e-4
relative, standard errors within 1e-3 (glmmTMB's come from its own Hessian, ours from
central differences of the exact gradient). A fixed effect near zero is also allowed
1e-4 of the smallest standard error: on Owls NB2 glmmTMB stops 2.5e-8 above our
deviance (its optimizer's tolerance) and the coefficient of SexParentMale (−0.0259,
SE 0.15) moves
6.6e-6 along that flat direction; the host and compiled engines agree to 1e-8 there.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import REFERENCE, cached, load_reference, rel_close

import glmmjax

MODELS = ["owls_nb2", "gamma_log", "beta_logit", "cbpp_probit", "contraception_probit",
          "cbpp_cloglog", "beta_probit", "sleepstudy_gaussian_log",
          "grouseticks_poisson_sqrt"]
# grouseticks_poisson_sqrt: with μ = η² the likelihood has several optima. glmmTMB's
# default start ends at −2 log L 2953.77; started from glmer's estimates it reaches
# 2470.56, where glmmjax ends from its own start. That restarted fit is the reference
# (``glmmTMB_from_glmer_start``) and test_poisson_sqrt_finds_the_better_optimum shows
# the difference.


def _reference_fit(ref):
    return ref.get("glmmTMB_from_glmer_start", ref["glmmTMB"])


@pytest.fixture(scope="module")
def references():
    return load_reference("glmm_families")["models"]


def _fit(ref):
    def make():
        if ref.get("dataset"):
            data = glmmjax.datasets.load(ref["dataset"])
        else:
            data = pd.read_csv(REFERENCE / ref["data"], dtype={"g": str})
        family = glmmjax.families.get_family(ref["family"], link=ref["link"])
        return glmmjax.glmer(ref["formula"], data, family=family)

    return cached(("glmm_families", ref["name"]), make)


@pytest.mark.parametrize("name", MODELS)
def test_host_fit_matches_glmmtmb(references, name):
    ref = references[name]
    tmb = _reference_fit(ref)
    fit = _fit(ref)
    assert fit.engine == "host", "every built-in family and link fits on the host engine"
    assert fit.converged and fit.convergence.hessian_positive_definite, fit.convergence
    assert fit.nobs == tmb["nobs"]
    # Never worse than glmmTMB's optimum by more than 1e-6 relative.
    assert fit.deviance <= tmb["minus2loglik"] + 1e-6 * abs(tmb["minus2loglik"])
    rel_close(fit.deviance, tmb["minus2loglik"], 1e-6)
    rel_close(fit.fixef, tmb["fixef"], 1e-4, atol=1e-4 * np.min(tmb["fixef_se"]))
    vc = fit.varcorr
    sds = vc[vc["var2"].isna() & (vc["group"] != "Residual")]["sdcor"].to_numpy()
    expected = [sd for group in tmb["re_sd"].values() for sd in group.values()]
    rel_close(np.sort(sds), np.sort(expected), 1e-4)
    if tmb.get("dispersion") is not None:
        rel_close(fit.dispersion, tmb["dispersion"], 1e-4)
    rel_close(fit.fixef_se, tmb["fixef_se"], 1e-3)


def test_poisson_sqrt_finds_the_better_optimum(references):
    """glmmjax's optimum is far below glmmTMB's default fit and glmer's, and equals
    glmmTMB's own fit started from glmer's estimates."""
    ref = references["grouseticks_poisson_sqrt"]
    fit = _fit(ref)
    assert fit.deviance < ref["glmmTMB"]["minus2loglik"] - 400
    assert fit.deviance < ref["glmer_minus2loglik"] - 10
    rel_close(fit.deviance, ref["glmmTMB_from_glmer_start"]["minus2loglik"], 1e-9)
