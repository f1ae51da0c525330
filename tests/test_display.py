"""How results look: R's number formats (against R's own output), R's coefficient
names as aliases, short reprs and notebook HTML for every result type."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from conftest import cached, load_reference

import glmmjax
from glmmjax._display import format_column, format_pvalues, plural, r_name, r_names, show


@pytest.mark.parametrize("case", load_reference("display")["pval"])
def test_pvalues_formatted_as_r_format_pval(case):
    assert format_pvalues(case["p"]) == case["text"]


@pytest.mark.parametrize("case", load_reference("display")["format"])
def test_columns_formatted_as_r_format(case):
    assert format_column(case["x"]) == case["text"]


def test_r_names():
    assert r_name("Intercept") == "(Intercept)"
    assert r_name("period[T.2]") == "period2"
    assert r_name("C(period)[T.2]:x") == "C(period)2:x"
    assert r_name("sd_Intercept|Subject") == "sd_(Intercept)|Subject"
    assert r_name("cor_Days.Intercept|Subject") == "cor_Days.(Intercept)|Subject"
    assert r_name("Days") == "Days" and r_name("sigma") == "sigma"
    assert plural(1, "row") == "1 row" and plural(2, "row") == "2 rows"


def _sleep():
    return cached("display_sleep", lambda: glmmjax.lmer(
        "Reaction ~ Days + (Days | Subject)", glmmjax.datasets.load("sleepstudy")))


def _cbpp_glmm():
    return cached("display_cbpp_glmm", lambda: glmmjax.glmer(
        "cbind(incidence, size - incidence) ~ period + (1 | herd)",
        glmmjax.datasets.load("cbpp"), family="binomial"))


def _cbpp_glm():
    return cached("display_cbpp_glm", lambda: glmmjax.glm(
        "cbind(incidence, size - incidence) ~ period", glmmjax.datasets.load("cbpp"),
        family="binomial"))


@pytest.mark.parametrize("make", [_cbpp_glmm, _cbpp_glm])
def test_r_names_are_aliases_on_lookup(make):
    fit = make()
    assert fit.fixef["(Intercept)"] == fit.fixef["Intercept"]
    assert fit.fixef.loc["period2"] == fit.fixef["period[T.2]"]
    assert list(fit.fixef[["(Intercept)", "period4"]].index) == ["Intercept", "period[T.4]"]
    assert fit.fixef_se["period3"] == fit.fixef_se["period[T.3]"]
    assert fit.vcov.loc["(Intercept)", "period2"] == fit.vcov.loc["Intercept", "period[T.2]"]
    assert fit.vcov["period2"].equals(fit.vcov["period[T.2]"])
    table = fit.coef_table()
    assert table.loc["period2", "Estimate"] == fit.fixef["period[T.2]"]
    r_table = fit.coef_table(names="r")
    assert list(r_table.index) == ["(Intercept)", "period2", "period3", "period4"]
    assert "(Intercept)" in fit.summary(names="r") and "period[T.2]" in fit.summary()
    if hasattr(fit, "ranef"):
        ranef = fit.ranef["herd"]
        assert ranef["(Intercept)"].equals(ranef["Intercept"])
    # Anything computed from the tables is plain pandas again.
    assert type(fit.fixef * 2) is pd.Series
    with pytest.raises(KeyError):
        fit.fixef["period9"]
    with pytest.raises(ValueError, match="names must be"):
        fit.coef_table(names="R-ish")


def test_confint_rows_in_r_names():
    fit = _sleep()
    ci = fit.confint("wald", names="r")
    assert list(ci.index) == ["sd_(Intercept)|Subject", "cor_Days.(Intercept)|Subject",
                              "sd_Days|Subject", "sigma", "(Intercept)", "Days"]
    default = fit.confint("wald")
    assert default.loc["(Intercept)"].equals(default.loc["Intercept"])
    assert r_names(fit.vcov).columns.tolist() == ["(Intercept)", "Days"]


def test_summary_p_values_and_columns_as_r():
    text = _cbpp_glmm().summary(names="r")
    # glmer's coefficient table (lme4 prints the same p-values: format.pval, 3 digits).
    assert "(Intercept) -1.39853    0.23247  -6.016 1.79e-09 ***" in text
    assert "period2     -0.99233    0.30664  -3.236 0.001212 **" in text
    glm_text = _cbpp_glm().summary(names="r")
    assert "(Intercept)  -1.2690    0.14492  -8.757  < 2e-16 ***" in glm_text
    assert "Signif. codes:" in glm_text
    lmm = _sleep().summary(ddf="satterthwaite")
    assert "< 2e-16 ***" in lmm and "np.float64" not in lmm


def _short(text: str, must: list[str]):
    assert len(text.splitlines()) <= 8, text
    assert "array(" not in text and "DataFrame" not in text and len(text) < 600, text
    for piece in must:
        assert piece in text, (piece, text)


def test_short_reprs_and_html():
    lmm, glmm, glm = _sleep(), _cbpp_glmm(), _cbpp_glm()
    _short(repr(lmm), ["LMMResult", "Reaction ~ Days + (Days | Subject)", "nobs", "180",
                       "Subject (18)", "REML criterion 1743.63", "converged  yes"])
    _short(repr(glmm), ["GLMMResult", "binomial (logit)", "herd (15)", "deviance 184.05"])
    _short(repr(glm), ["GLMResult", "binomial", "56", "deviance 114.102"])
    model = glmmjax.MixedModel.from_formula("Reaction ~ Days + (Days | Subject)",
                                            glmmjax.datasets.load("sleepstudy"))
    _short(repr(model), ["MixedModel", "LMM, REML", "Subject (18)", "nobs"])
    for fit in (lmm, glmm, glm):
        html = fit._repr_html_()
        assert html.startswith("<div") and "Fixed effects" in html or "Coefficients" in html
        assert str(fit) == fit.summary()


def test_batch_and_bootstrap_reprs():
    sleep = glmmjax.datasets.load("sleepstudy")
    Y = sleep["Reaction"].to_numpy()[:, None] + np.random.default_rng(0).normal(0, 20, (180, 3))
    # ddf=None and three replicates: the bootstrap's refits (fit_many without ddf) reuse
    # the batch's compiled program instead of compiling a second one (Satterthwaite
    # batches are checked in test_batch.py and test_batch_inference.py).
    batch = glmmjax.fit_many("~ Days + (Days | Subject)", sleep, Y, progress=False, ddf=None)
    _short(repr(batch), ["BatchResult", "3 fitted by REML", "Intercept, Days", "3 of 3",
                         "Wald z tests"])
    assert "<table" in batch._repr_html_()
    boot = _sleep().bootstrap(3, seed=1, progress=False)
    _short(repr(boot), ["BootstrapResult", "replicates", "sigma"])
    assert "<table" in boot._repr_html_()


def test_messages_show_plain_numbers():
    frame = glmmjax.datasets.load("sleepstudy")
    frame["Reaction"] = -frame["Reaction"]
    with pytest.raises(glmmjax.DataError) as err:
        glmmjax.glm("Reaction ~ Days", frame, family="poisson")
    assert "np." not in str(err.value) and "180 rows fail" in str(err.value)
    assert "[-249.56, -258.7047" in str(err.value)
    with pytest.raises(glmmjax.DataError) as err:
        glmmjax.glm("Reaction ~ Days", frame.iloc[:3], family="gaussian",
                    weights=np.array([1.0, -1.0, 1.0]))
    assert "np." not in str(err.value) and "[-1.0]" in str(err.value)
    frame.loc[0, "Reaction"] = 1.0
    frame["Reaction"] = frame["Reaction"].abs().round()
    frame.loc[5, "Reaction"] = -3.0
    with pytest.raises(glmmjax.DataError, match="1 row fails"):
        glmmjax.glm("Reaction ~ Days", frame, family="poisson")


@pytest.mark.parametrize("call", [
    lambda fit: fit.confint("wald", level=np.float64(1.5)),
    lambda fit: fit.bootstrap(np.int64(1)),
    lambda fit: fit.simulate(np.int64(0)),
    lambda fit: glmmjax.fit_many("~ Days + (1 | Subject)", glmmjax.datasets.load("sleepstudy"),
                                 np.zeros((180, 1)), chunk_size=np.int64(0)),
    lambda fit: glmmjax.families.NegativeBinomial(theta=np.float64(-1.0)),
    lambda fit: glmmjax.families.StudentT(df=np.float64(-2.0)),
    lambda fit: glmmjax.families.Tweedie(power=np.float64(3.5)),
    lambda fit: glmmjax.lmer("Reaction ~ Days + (1 | Subject)",
                             glmmjax.datasets.load("sleepstudy"), max_iter=np.int64(0)),
    lambda fit: glmmjax.glm("Reaction ~ Days", glmmjax.datasets.load("sleepstudy"),
                            tol=np.float64(-1.0)),
])
def test_arguments_echoed_as_plain_numbers(call):
    # NumPy 2 writes its scalars as np.float64(1.5): messages echo arguments as written.
    with pytest.raises(ValueError) as err:
        call(_sleep())
    assert "np." not in str(err.value) and "got" in str(err.value), str(err.value)


def test_unseen_level_of_a_numeric_factor_named_plainly():
    data = glmmjax.datasets.load("sleepstudy")
    data["f"] = (data["Days"] % 3).astype(float)
    fit = glmmjax.lmer("Reaction ~ C(f) + (1 | Subject)", data)
    new = data.iloc[:3].assign(f=[7.0, 8.0, 0.0])
    # Formulaic's own message was "{np.float64(8.0), np.float64(7.0)} ... cast to nan".
    with pytest.raises(glmmjax.DataError, match=r"newdata column 'f' has level\(s\) \[7, 8\]") as err:
        fit.predict(new)
    assert "np." not in str(err.value)


def test_counts_in_words():
    assert show(np.float64(1.5)) == "1.5" and show([np.int64(3), "a"]) == "[3, 'a']"
    # Intercept-only model: "1 coefficient"; a 2-model batch on one chunk: "2 models".
    model = glmmjax.MixedModel.from_formula("Yield ~ 1 + (1 | Batch)",
                                            glmmjax.datasets.load("dyestuff"))
    assert "1 coefficient\n" in repr(model) + "\n" and "1 coefficients" not in repr(model)
    from glmmjax._batching.memory import MemoryEstimate

    fields = {f.name for f in dataclasses.fields(MemoryEstimate)}
    estimate = MemoryEstimate(**{name: 1 for name in fields} | {"source": "host memory"})
    assert "chunks of 1 model (" in str(estimate)


def test_glm_deviances_share_their_decimals_as_r():
    text = _cbpp_glm().summary()
    # R 4.x, summary(glm(cbind(incidence, size - incidence) ~ period, cbpp, binomial)):
    assert "    Null deviance: 154.82  on 55  degrees of freedom" in text
    assert "Residual deviance: 114.10  on 52  degrees of freedom" in text


def test_zero_inflated_repr_is_short_and_names_its_parts():
    sal = glmmjax.datasets.load("salamanders").iloc[:200]
    fit = cached("display_zip", lambda: glmmjax.glmer(
        "count ~ mined + (1 | site)", sal, family="poisson", ziformula="~ 1"))
    _short(repr(fit), ["GLMMPartsResult", "poisson (log), zero-inflated ~ 1", "site (23)",
                       "converged  yes"])
    html = fit._repr_html_()
    assert html.startswith("<div") and "Zero-inflation model:" in html
    text = fit.summary(names="r")
    assert "(Intercept)" in text and "Zero-inflation model:" in text and "np." not in text


def test_variance_table_as_lme4_prints_it():
    from glmmjax._results.mixed import variance_table

    rows = [("Subject", "Intercept", 612.1, 24.741, ""),
            ("", "Days", 35.07, 5.922, f"{0.066:6.3f}"),
            ("", "x", 36.75, 6.062, f"{-0.114:6.3f} {0.058:6.3f}"),
            ("Residual", "", 654.94, 25.592, "")]
    # lme4: one number of decimals per column (format(digits = 4)), text left-aligned and
    # the correlations' lower triangle in columns.
    assert variance_table(rows).splitlines() == [
        " Groups   Name      Variance Std.Dev. Corr",
        " Subject  Intercept   612.10   24.741",
        "          Days         35.07    5.922  0.066",
        "          x            36.75    6.062 -0.114  0.058",
        " Residual             654.94   25.592",
    ]
    assert " Residual             654.94   25.592" in _sleep().summary()
