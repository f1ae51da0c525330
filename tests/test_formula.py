"""lme4 formula forms, the fixed-effects language (through formulaic), missing values and
the errors raised on bad input: parsing and design building are numpy only; a single
tiny lmer structure is compiled once for the "same fit whatever the grouping type" test.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import glmmjax
from glmmjax import DataError, FormulaError, parse_formula
from glmmjax._model.design import build_design
from glmmjax._model.formula import RandomTermSpec


def _frame(n: int = 12, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "y": rng.normal(size=n),
            "x": rng.uniform(1.0, 2.0, n),
            "z": rng.normal(size=n),
            "f": pd.Categorical(np.tile(["lo", "mid", "hi"], n // 3), ["lo", "mid", "hi"]),
            "g": np.repeat(["g1", "g2", "g3"], n // 3),
            "a": np.repeat(["A", "B"], n // 2),
            "b": np.tile(np.repeat(["u", "v", "w"], 2), n // 6),
            "h": np.tile(["p", "q"], n // 2),
            "s": rng.integers(0, 5, n),
            "t": rng.uniform(1.0, 3.0, n),
        }
    )


def _random(formula: str) -> list[tuple[str, str]]:
    return [(t.expr.replace(" ", ""), t.group) for t in parse_formula(formula).random]


# --------------------------------------------------------------------------------------
# Parsing: each lme4 form


@pytest.mark.parametrize(
    "formula, fixed, random",
    [
        ("y ~ x + (1|g)", "x", [("1", "g")]),
        ("y ~ x + (x|g)", "x", [("x", "g")]),
        ("y ~ x + (0 + x|g)", "x", [("0+x", "g")]),
        ("y ~ (1 + x + z | g)", "1", [("1+x+z", "g")]),
        ("y ~ x + (x||g)", "x", [("1", "g"), ("0+x", "g")]),
        ("y ~ (1 + x + z || g)", "1", [("1", "g"), ("0+x", "g"), ("0+z", "g")]),
        ("y ~ (0 + x || g)", "1", [("0+x", "g")]),
        ("y ~ x + (1|a/b)", "x", [("1", "a"), ("1", "a:b")]),
        ("y ~ (1|a/b/h)", "1", [("1", "a"), ("1", "a:b"), ("1", "a:b:h")]),
        ("y ~ (x||a/b)", "1", [("1", "a"), ("0+x", "a"), ("1", "a:b"), ("0+x", "a:b")]),
        ("y ~ x + (1|a:b)", "x", [("1", "a:b")]),
        ("y ~ x + (1|a) + (1|b) + (x|h)", "x", [("1", "a"), ("1", "b"), ("x", "h")]),
        # as R prints an expanded `||`
        ("y ~ x + ((1 | g) + (0 + x | g))", "x", [("1", "g"), ("0+x", "g")]),
        ("y ~ x*f + ( 1 | g )", "x*f", [("1", "g")]),
    ],
)
def test_parse_forms(formula, fixed, random):
    parsed = parse_formula(formula)
    assert parsed.response == "y"
    assert parsed.fixed.replace(" ", "") == fixed.replace(" ", "")
    assert _random(formula) == random
    assert parsed.offsets == ()


def test_double_bar_and_nesting_are_their_expansions():
    assert parse_formula("y ~ x + (x||g)").random == parse_formula(
        "y ~ x + (1|g) + (0 + x|g)"
    ).random
    assert parse_formula("y ~ (1|a/b)").random == parse_formula("y ~ (1|a) + (1|a:b)").random
    term = parse_formula("y ~ (1|a:b)").random[0]
    assert term == RandomTermSpec("1", "a:b")
    assert term.group_columns == ("a", "b")
    assert str(term) == "(1 | a:b)"


def test_offsets_cbind_and_variables():
    parsed = parse_formula("cbind(s, n - s) ~ x + offset(np.log(t)) + (1|g)")
    assert parsed.response_parts == ("s", "n - s")
    assert parsed.offsets == ("np.log(t)",)
    assert parsed.fixed == "x"
    assert parsed.variables() == {"s", "n", "t", "x", "g"}
    # a constant in an arithmetic response or offset is not a formula syntax error
    assert parse_formula("cbind(s, 5 - s) ~ x + offset(2 * t)").variables() == {"s", "x", "t"}


def test_minus_terms_around_random_terms():
    """lme4 finds bars under ``-`` too: ``x + (1|g) - 1`` drops the intercept."""
    parsed = parse_formula("y ~ x + (1 | g) - 1")
    assert parsed.fixed.replace(" ", "") == "x-1"
    assert _random("y ~ x + (1 | g) - 1") == [("1", "g")]
    assert parse_formula("y ~ -1 + x + (1|g)").fixed.replace(" ", "") == "-1+x"
    # not separators: a minus inside a call, after an operator, in a number
    assert parse_formula("y ~ I(x - 1) + I(x**-1) + (1|g)").fixed == "I(x - 1) + I(x**-1)"
    design = build_design("y ~ x + (1 | g) - 1", _frame())
    assert design.fixef_names == ("x",)


@pytest.mark.parametrize(
    "formula, message",
    [
        ("y x + (1|g)", "response ~ terms"),
        ("y ~ ", "response ~ terms"),
        ("~ x + (1|g)", "response ~ terms"),
        ("y ~ x ~ z", "response ~ terms"),
        ("y ~ x + (1|g", "unbalanced parentheses"),
        ("y ~ x + 1|g)", "unbalanced parentheses"),
        ("y ~ (x + (1|g)", "unbalanced parentheses"),
        ("y ~ x + (|g)", "needs 'expr | group'"),
        ("y ~ x + (1|)", "needs 'expr | group'"),
        ("y ~ x + ( || )", "needs 'expr | group'"),
        ("y ~ x + + z", "empty term"),
        ("y ~ x -", "empty term"),
        ("y ~ (1|a//b)", "bad grouping expression"),
        ("y ~ x | g", "outside parentheses"),
        ("y ~ x + (1|g|h)", "more than one bar"),
        ("y ~ x - (1|g)", "cannot subtract"),
        ("cbind(a, b, c) ~ x + (1|g)", "cbind"),
    ],
)
def test_malformed_formulas(formula, message):
    with pytest.raises(FormulaError, match=message) as info:
        parsed = parse_formula(formula)
        _ = parsed.response_parts  # cbind() arity is checked when the parts are read
    assert isinstance(info.value, ValueError)


def test_formula_must_be_a_string():
    with pytest.raises(FormulaError, match="must be a string"):
        parse_formula(5)


# --------------------------------------------------------------------------------------
# Design: random-effects terms


def test_random_term_model_matrices():
    data = _frame()
    x, z = data["x"].to_numpy(), data["z"].to_numpy()
    design = build_design("y ~ x + (1 + x + z | g) + (0 + x | h) + (1 | a:b)", data)
    by_group = {t.group: t for t in design.terms}
    # lme4's order: decreasing number of levels (a:b 6, g 3, h 2)
    assert [t.group for t in design.terms] == ["a:b", "g", "h"]
    full = by_group["g"]
    assert full.coef_names == ("Intercept", "x", "z")
    np.testing.assert_array_equal(full.z, np.column_stack([np.ones(12), x, z]))
    assert full.levels == ("g1", "g2", "g3")
    np.testing.assert_array_equal(full.refs, np.repeat([0, 1, 2], 4))
    slope = by_group["h"]
    assert slope.coef_names == ("x",) and slope.size == 1
    np.testing.assert_array_equal(slope.z[:, 0], x)
    np.testing.assert_array_equal(slope.refs, np.tile([0, 1], 6))
    cell = by_group["a:b"]
    assert cell.levels == ("A:u", "A:v", "A:w", "B:u", "B:v", "B:w")
    labels = (data["a"] + ":" + data["b"]).to_numpy()
    np.testing.assert_array_equal(np.asarray(cell.levels)[cell.refs], labels)
    np.testing.assert_array_equal(cell.z, np.ones((12, 1)))


def test_uncorrelated_and_nested_designs():
    data = _frame()
    design = build_design("y ~ x + (x || g) + (1 | a/b)", data)
    specs = [str(t.spec) for t in design.terms]
    assert specs == ["(1 | a:b)", "(1 | g)", "(0 + x | g)", "(1 | a)"]
    sizes = [t.size for t in design.terms]
    assert sizes == [1, 1, 1, 1]
    np.testing.assert_array_equal(design.terms[2].z[:, 0], data["x"])
    # the x-slope term and the intercept term share the grouping of g
    np.testing.assert_array_equal(design.terms[1].refs, design.terms[2].refs)


def test_several_crossed_terms():
    data = _frame()
    design = build_design("y ~ 1 + (1|g) + (1|b) + (1|h)", data)
    assert [(t.group, t.n_levels) for t in design.terms] == [("g", 3), ("b", 3), ("h", 2)]
    for term in design.terms:
        np.testing.assert_array_equal(np.asarray(term.levels)[term.refs], data[term.group])


# --------------------------------------------------------------------------------------
# Design: the fixed-effects language (formulaic) and responses


def test_treatment_coding_and_interactions():
    data = _frame()
    design = build_design("y ~ x * f + (1|g)", data)
    assert design.fixef_names == (
        "Intercept", "x", "f[T.mid]", "f[T.hi]", "x:f[T.mid]", "x:f[T.hi]",
    )
    x = data["x"].to_numpy()
    mid = (data["f"] == "mid").to_numpy(float)
    hi = (data["f"] == "hi").to_numpy(float)
    expected = np.column_stack([np.ones(12), x, mid, hi, x * mid, x * hi])
    np.testing.assert_array_equal(design.X, expected)
    # string columns: levels sorted, first is the reference
    design = build_design("y ~ g:x + h + (1|b)", data)
    assert design.fixef_names == ("Intercept", "h[T.q]", "g[g1]:x", "g[g2]:x", "g[g3]:x")
    np.testing.assert_array_equal(design.X[:, 2], np.where(data["g"] == "g1", x, 0.0))


def test_transformations():
    data = _frame()
    design = build_design("y ~ np.log(x) + I(x**2) + I(z^2) + (1|g)", data)
    assert design.fixef_names == ("Intercept", "np.log(x)", "I(x ** 2)", "I(z ** 2)")
    x, z = data["x"].to_numpy(), data["z"].to_numpy()
    np.testing.assert_allclose(design.X[:, 1:], np.column_stack([np.log(x), x**2, z**2]))


def test_offsets_and_cbind_response():
    data = _frame()
    design = build_design(
        "cbind(s, 5 - s) ~ x + offset(np.log(t)) + offset(z) + (1|g)", data, offset="x"
    )
    np.testing.assert_array_equal(design.response, np.column_stack([data.s, 5 - data.s]))
    np.testing.assert_allclose(design.offset, np.log(data.t) + data.z + data.x)
    assert design.fixef_names == ("Intercept", "x")


def test_missing_values_are_dropped_and_counted():
    data = _frame()
    data.loc[1, "x"] = np.nan  # fixed effect
    data.loc[4, "g"] = None  # grouping factor
    data.loc[6, "t"] = np.nan  # offset expression
    data.loc[9, "y"] = np.nan  # response
    data["unused"] = np.nan  # not in the formula: drops nothing
    design = build_design("y ~ x + offset(t) + (1|g)", data)
    assert design.n_dropped == 4
    assert list(design.rows) == [0, 2, 3, 5, 7, 8, 10, 11]
    assert design.nobs == 8 and design.terms[0].refs.shape == (8,)
    weights = np.ones(12)
    weights[3] = np.nan
    assert build_design("y ~ x + (1|g)", data, weights=weights).n_dropped == 4
    # a column that enters the response only through subtraction still drops its row
    data.loc[2, "z"] = np.nan
    diff = build_design("y - z ~ x + (1|g)", data)
    assert diff.n_dropped == 4 and 2 not in diff.rows
    np.testing.assert_allclose(diff.response, (data.y - data.z)[diff.rows])


# --------------------------------------------------------------------------------------
# Grouping variables as strings, integers or categoricals


def test_grouping_types_give_the_same_fit():
    """Dyestuff's Batch as R's factor, as strings, and as integers whose numeric order
    differs from the text order (the model shapes are those of the lme4 reference test,
    so a full test run compiles the fit once)."""
    base = glmmjax.datasets.load("dyestuff")
    codes = {"A": 30, "B": 4, "C": 100, "D": 7, "E": 12, "F": 5}
    as_cat = base
    as_str = base.assign(Batch=base["Batch"].astype(str))
    as_int = base.assign(Batch=base["Batch"].astype(str).map(codes).astype(np.int64))
    assert pd.api.types.is_string_dtype(as_str["Batch"]) and as_int["Batch"].dtype == np.int64
    levels, fits = [], []
    for data in (as_cat, as_str, as_int):
        design = build_design("Yield ~ 1 + (1 | Batch)", data)
        term = design.terms[0]
        levels.append(term.levels)
        # the same partition of the rows whatever the labels
        np.testing.assert_array_equal(
            pd.factorize(np.asarray(term.levels)[term.refs])[0], pd.factorize(base["Batch"])[0]
        )
        fits.append(glmmjax.lmer("Yield ~ 1 + (1 | Batch)", data))
    assert levels[0] == levels[1] == ("A", "B", "C", "D", "E", "F")
    assert levels[2] == ("4", "5", "7", "12", "30", "100")  # numeric order, not text order
    reference = fits[0]
    assert reference.converged and not reference.is_singular
    for fit in fits[1:]:
        np.testing.assert_allclose(fit.theta.to_numpy(), reference.theta.to_numpy(), rtol=1e-10)
        np.testing.assert_allclose(fit.fixef.to_numpy(), reference.fixef.to_numpy(), rtol=1e-10)
        np.testing.assert_allclose(fit.sigma, reference.sigma, rtol=1e-10)
        np.testing.assert_allclose(fit.criterion, reference.criterion, rtol=1e-12)
        np.testing.assert_allclose(fit.fitted(), reference.fitted(), rtol=1e-10)
    modes = reference.ranef["Batch"]["Intercept"]
    by_code = fits[2].ranef["Batch"]["Intercept"]
    np.testing.assert_allclose(
        by_code.loc[[str(codes[k]) for k in "ABCDEF"]].to_numpy(), modes.loc[list("ABCDEF")]
    )
    # prediction matches integer levels by value: pandas turns an integer column with a
    # missing value into floats, and NaN is a new level (random effect zero)
    new = pd.DataFrame({"Batch": [30.0, 4.0, np.nan]})
    predicted = fits[2].predict(new, allow_new_levels=True).to_numpy()
    expected = reference.predict(pd.DataFrame({"Batch": ["A", "B", "A"]})).to_numpy()
    np.testing.assert_allclose(predicted[:2], expected[:2], rtol=1e-12)
    np.testing.assert_allclose(predicted[2], reference.fixef.iloc[0], rtol=1e-12)
    with pytest.raises(DataError, match="<NA>"):
        fits[2].predict(new)


# --------------------------------------------------------------------------------------
# Errors: raised before any JAX tracing, naming the problem


@pytest.fixture
def no_tracing(monkeypatch):
    """Fail the test if lmer gets as far as the (traced) fit."""

    def fail(*args, **kwargs):
        raise AssertionError("lmer reached the JAX fit; the error should come first")

    monkeypatch.setattr("glmmjax._lmer.fit_lmm", fail)
    monkeypatch.setattr("glmmjax._lmer.build_structure_for", fail)


def _with(column, row, value):
    data = _frame()
    data[column] = data[column].astype(object) if isinstance(value, str) else data[column]
    data.loc[row, column] = value
    return data


@pytest.mark.parametrize(
    "formula, data, error, message",
    [
        ("y ~ x + (1|nope)", _frame(), DataError, r"\['nope'\].*not in data"),
        ("y ~ missing_x + (1|g)", _frame(), DataError, r"\['missing_x'\].*not in data"),
        ("y ~ np.log(w) + (1|g)", _frame(), DataError, r"\['w'\].*not in data"),
        ("y ~ x + (1 + w|g)", _frame(), DataError, r"\['w'\].*not in data"),
        ("resp ~ x + (1|g)", _frame(), DataError, r"\['resp'\].*not in data"),
        ("y ~ x + offset(w) + (1|g)", _frame(), DataError, r"\['w'\].*not in data"),
        ("y ~ x + (1|g:w)", _frame(), DataError, r"\['w'\].*not in data"),
        ("y ~ x + (1|k)", _frame().assign(k="only"), DataError, "'k' has a single level"),
        ("y ~ x + (1|a) + (1|k)", _frame().assign(k=1), DataError, "'k' has a single level"),
        ("g ~ x + (1|a)", _frame(), DataError, "response 'g' must be numeric"),
        ("f ~ x + (1|a)", _frame(), DataError, "response 'f' must be numeric"),
        ("y ~ x + (1|g)", _with("y", 3, "oops"), DataError, "response 'y' must be numeric"),
        ("y ~ x + (1|g)", _with("x", 5, np.inf), DataError, r"'x' has non-finite.*rows \[5\]"),
        ("y ~ x + (1|g)", _with("y", 2, -np.inf), DataError, r"'y' has non-finite.*rows \[2\]"),
        ("y ~ x + offset(t) + (1|g)", _with("t", 7, np.inf), DataError, "'t' has non-finite"),
        ("y ~ x + (z|g)", _with("z", 0, np.inf), DataError, "'z' has non-finite"),
        ("y ~ x + (1|id)", _frame().assign(id=np.arange(12)), DataError,
         r"\(1 \| id\) has 12 random effects for 12 observations"),
        ("y ~ x + (x|a:b)", _frame(), DataError,
         r"\(x \| a:b\) has 12 random effects for 12 observations"),
        ("y ~ x", _frame(), FormulaError, "no random-effects term"),
        ("y ~ x + z", _frame(), FormulaError, "no random-effects term"),
        ("y ~ x + (1|g", _frame(), FormulaError, "unbalanced parentheses"),
        ("y x + (1|g)", _frame(), FormulaError, "response ~ terms"),
        ("y ~ x + (|g)", _frame(), FormulaError, "needs 'expr | group'"),
        ("y ~ x | g", _frame(), FormulaError, "outside parentheses"),
    ],
)
def test_lmer_input_errors(no_tracing, formula, data, error, message):
    with pytest.raises(error, match=message):
        glmmjax.lmer(formula, data)


def test_inf_in_unused_column_is_fine():
    data = _with("z", 0, np.inf)
    assert build_design("y ~ x + (1|g)", data).nobs == 12


def test_non_finite_after_transformation(no_tracing):
    with np.errstate(divide="ignore"), pytest.raises(
        DataError, match=r"non-finite values in column 'np.log\(x - 1\)', rows \[4\]"
    ):
        glmmjax.lmer("y ~ np.log(x - 1) + (1|g)", _with("x", 4, 1.0))


def test_inf_in_offset_argument(no_tracing):
    offset = np.zeros(12)
    offset[3] = np.inf
    with pytest.raises(DataError, match=r"offset has non-finite.*rows \[3\]"):
        glmmjax.lmer("y ~ x + (1|g)", _frame(), offset=offset)


def test_data_must_be_a_frame(no_tracing):
    with pytest.raises(DataError, match="DataFrame"):
        glmmjax.lmer("y ~ x + (1|g)", _frame().to_dict())
    with pytest.raises(DataError, match="no rows left"):
        glmmjax.lmer("y ~ x + (1|g)", _frame().assign(y=np.nan))
