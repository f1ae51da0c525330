"""Wald intervals and the parametric bootstrap of zero-inflation / dispersion-model fits
(GLMMPartsResult), the Wald intervals against glmmTMB 1.1.5's estimates and standard
errors (tests/reference/glmm_zi_tmb.json: glmmTMB's confint(method = "Wald") of a fixed
effect is its estimate ± z·SE)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import glmmjax
from glmmjax._display import r_name
from glmmjax._families.distributions import norm_ppf

REFERENCE = Path(__file__).parent / "reference"
MODELS = json.loads((REFERENCE / "glmm_zi_tmb.json").read_text())["models"]


def _fit(name):
    model = MODELS[name]
    if "dataset" in model:
        data = glmmjax.datasets.load(model["dataset"])
    else:
        data = pd.read_csv(REFERENCE / model["data"], dtype={"g": str})
    zi = None if model["ziformula"] == "~0" else model["ziformula"]
    disp = None if model["dispformula"] == "~1" else model["dispformula"]
    family = glmmjax.families.get_family(model["family"], link=model["link"])
    return glmmjax.glmer(model["formula"], data, family=family, ziformula=zi,
                         dispformula=disp)


# Zero-inflation with random effects in both parts; a dispersion model.
@pytest.mark.parametrize("name", ["salamanders_zip_zi_re", "owls_nb2_disp"])
def test_wald_intervals_match_glmmtmb(name):
    reference = MODELS[name]["glmmTMB"]
    fit = _fit(name)
    table = fit.confint(method="wald", names="r")
    z = norm_ppf(0.975)
    prefixes = {"cond": "", "zi": "zi~", "disp": "d~"}
    rows = []
    for part, prefix in prefixes.items():
        est = np.array(reference[f"fixef_{part}"])
        se = np.array(reference[f"se_{part}"])
        for i, coef in enumerate(reference[f"fixef_{part}_names"]):
            rows.append(prefix + coef)
            got = table.loc[prefix + coef].to_numpy()
            want = np.array([est[i] - z * se[i], est[i] + z * se[i]])
            # Estimates within 1e-4 relative and SEs within 1e-3 (the reference tests'
            # tolerances), so each bound within 1e-4·|β| + 1e-3·z·SE.
            np.testing.assert_allclose(got, want, rtol=0,
                                       atol=1e-4 * abs(est[i]) + 1e-3 * z * se[i] + 1e-8,
                                       err_msg=prefix + coef)
    assert list(table.index[-len(rows):]) == rows
    # The random-effect SDs come first, without Wald intervals (as lme4's).
    sd_rows = table.index[:-len(rows)]
    assert len(sd_rows) == len(fit.design.terms) + len(fit._zi_terms())
    assert all(r.startswith(("sd_", "zi~sd_")) for r in sd_rows)
    assert table.loc[sd_rows].isna().all().all()
    # glmmjax's own names, the selection of fixed effects, another level.
    own = fit.confint(method="wald", parm="beta_", level=0.9)
    assert list(own.columns) == ["5 %", "95 %"]
    assert [r_name(n) for n in own.index] == rows
    half = 0.5 * (own.iloc[:, 1] - own.iloc[:, 0]).to_numpy()
    se = np.concatenate([fit.fixef_se[p].to_numpy() for p in prefixes])
    np.testing.assert_allclose(half, norm_ppf(0.95) * se, rtol=1e-12)


def test_confint_bad_methods_and_parameters():
    fit = _fit("gamma_log_disp")
    with pytest.raises(ValueError, match="method must be"):
        fit.confint(method="exact")
    with pytest.raises(ValueError, match="unknown parameter"):
        fit.confint(method="wald", parm="nothing")


@pytest.fixture(scope="module")
def small_zip():
    """A zero-inflated Poisson GLMM on a quarter of the salamander rows (161)."""
    data = glmmjax.datasets.load("salamanders").iloc[::4].reset_index(drop=True)
    return glmmjax.glmer("count ~ mined + (1 | site)", data, family="poisson",
                         ziformula="~ mined")


@pytest.mark.slow  # 12 refits and the first compilation of the simulation
def test_bootstrap_of_a_zero_inflated_fit(small_zip):
    fit = small_zip
    boot = fit.bootstrap(12, seed=5)
    labels = ["Intercept", "mined[T.no]", "zi~Intercept", "zi~mined[T.no]",
              "sd_Intercept|site"]
    assert list(boot.replicates.columns) == labels
    assert boot.replicates.shape == (12, 5)
    assert boot.n_failed <= 2
    original = np.concatenate([fit.fixef["cond"], fit.fixef["zi"]])
    np.testing.assert_allclose(boot.original.to_numpy()[:4], original, rtol=1e-12)
    np.testing.assert_allclose(boot.original["sd_Intercept|site"],
                               fit.varcorr["sdcor"].iloc[0], rtol=1e-12)
    # Replicates scatter around the estimates by about their standard errors: a
    # simulation without the zero-inflation (or refits without ziformula) would move
    # the zero-inflation intercept by many standard errors. Medians and quartiles: on
    # 161 rows some replicates have no excess zeros where mined = yes, and their
    # zero-inflation intercept runs off to about −26 (π → 0), as glmmTMB's would.
    ok = boot.replicates[boot.batch.converged].iloc[:, :4]
    se = np.concatenate([fit.fixef_se["cond"], fit.fixef_se["zi"]])
    assert np.all(np.abs(ok.median().to_numpy() - original) < 1.5 * se)
    spread = (ok.quantile(0.75) - ok.quantile(0.25)).to_numpy() / 1.349
    ratio = spread / se
    assert np.all((ratio > 0.3) & (ratio < 3.0)), ratio
    # Reproducible from the seed: the first replicates are those of a shorter run.
    again = fit.bootstrap(2, seed=5)
    np.testing.assert_allclose(again.replicates, boot.replicates.iloc[:2], rtol=1e-10)
    assert not np.allclose(boot.replicates.iloc[0], boot.replicates.iloc[1])


def test_bootstrap_intervals_rows_as_wald(small_zip):
    fit = small_zip
    boot = fit.confint(method="boot", n_boot=4, seed=2)
    wald = fit.confint(method="wald")
    assert list(boot.index) == list(wald.index)
    assert np.all(boot.iloc[:, 0] <= boot.iloc[:, 1])
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        fit.bootstrap(1)
