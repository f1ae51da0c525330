"""The plots render (Agg backend, tiny fits): profiles, effects; the Bayesian ones are
in test_bayes_fit.py, on its shared fit. Profiles are checked against confint."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import cached

import glmmjax

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _sleep():
    return cached("plots_sleep", lambda: glmmjax.lmer(
        "Reaction ~ Days + (1 | Subject)", glmmjax.datasets.load("sleepstudy")))


def _rendered(axes):
    axes = np.atleast_1d(axes)
    fig = axes[0].figure
    fig.canvas.draw()
    assert all(ax.has_data() for ax in axes)
    plt.close(fig)


def test_profile_matches_confint_and_plots():
    fit = _sleep()
    frame = fit.profile(parm=["sigma", "Days"], level=0.95, n_points=3)
    assert set(frame["parameter"]) == {"sigma", "Days"}
    ci = fit.confint(parm=["sigma", "Days"])
    for name in ("sigma", "Days"):
        part = frame[frame["parameter"] == name].sort_values("value")
        # The profile runs from the 95% bounds (ζ = ∓1.96) through the estimate (ζ = 0).
        np.testing.assert_allclose(part["value"].iloc[[0, -1]], ci.loc[name], rtol=1e-5)
        np.testing.assert_allclose(part["zeta"].iloc[[0, -1]], [-1.959964, 1.959964], atol=1e-4)
        assert np.all(np.diff(part["zeta"]) > 0)  # ζ increases with the parameter
    _rendered(fit.plot_profile(parm=["sigma", "(Intercept)"]))


def test_effect_plots_numeric_and_categorical():
    fit = _sleep()
    table = glmmjax._results.plots.effect_table(fit, "Days", n_points=5)
    expected = fit.fixef["Intercept"] + fit.fixef["Days"] * np.linspace(0, 9, 5)
    np.testing.assert_allclose(table["fit"], expected, rtol=1e-10)
    assert np.all(table["lower"] < table["fit"]) and np.all(table["fit"] < table["upper"])
    _rendered(fit.plot_effect("Days"))
    cbpp = glmmjax.datasets.load("cbpp")
    glm = glmmjax.glm("cbind(incidence, size - incidence) ~ period", cbpp, family="binomial")
    table = glmmjax._results.plots.effect_table(glm, "period")
    np.testing.assert_allclose(table["fit"], glm.predict(table.assign(
        size=1, incidence=0), type="response"), rtol=1e-10)
    assert np.all((table["lower"] > 0) & (table["upper"] < 1))
    _rendered(glm.plot_effect("period"))
    with pytest.raises(ValueError, match="term must be a column"):
        fit.plot_effect("nope")


def _zip():
    # Shared with test_display.py (same key, same fit).
    sal = glmmjax.datasets.load("salamanders").iloc[:200]
    return cached("display_zip", lambda: glmmjax.glmer(
        "count ~ mined + (1 | site)", sal, family="poisson", ziformula="~ 1"))


def test_zero_inflated_effects_are_of_the_mean_of_y():
    fit = _zip()
    table = glmmjax._results.plots.effect_table(fit, "mined")
    data = fit.design.source_data.loc[fit.design.rows]
    grid = table[["mined"]].assign(**{c: data[c].iloc[0] for c in data if c != "mined"})
    # (1 − π)μ, as glmmTMB's predict(type = "response", re.form = NA); not μ alone.
    expected = fit.predict(grid, include_re=False, type="response").to_numpy()
    np.testing.assert_allclose(table["fit"], expected, rtol=1e-10)
    conditional = fit.predict(grid, include_re=False, type="conditional").to_numpy()
    assert np.all(np.abs(table["fit"] - conditional) > 0.01)
    assert np.all(table["lower"] < table["fit"]) and np.all(table["fit"] < table["upper"])
    _rendered(fit.plot_effect("mined"))
    _rendered(fit.plot_residuals())
    _rendered(fit.plot_qq())


def test_effect_table_is_public_and_matches_predictions():
    import glmmjax

    fit = glmmjax.lmer("Reaction ~ Days + (1 | Subject)", glmmjax.datasets.load("sleepstudy"))
    table = glmmjax.effect_table(fit, "Days", n_points=3)
    assert list(table.columns) == ["Days", "fit", "lower", "upper"]
    beta = fit.fixef.to_numpy()
    np.testing.assert_allclose(table["fit"], beta[0] + beta[1] * table["Days"], rtol=1e-12)
    assert (table["lower"] < table["fit"]).all() and (table["fit"] < table["upper"]).all()
