"""The design's shortcuts around formulaic give what formulaic gives (design15)."""

import pickle

import formulaic
import numpy as np
import pandas as pd
import pytest

from glmmjax._model.design import (
    _evaluate,
    _numeric_matrix,
    build_design,
    grouping_levels,
    new_data_design,
    shared_matrices,
)
from glmmjax._model.formula import _required

FRAME = pd.DataFrame({
    "y": [1.0, 2.0, 0.0, 4.0, 3.0, 5.0],
    "n": [1, 2, 3, 4, 5, 6],
    "x": [0.5, 0.1, 0.2, 0.3, 0.9, 0.4],
    "g": pd.Categorical(["b", "a", "b", "c", "a", "c"], categories=["c", "z", "b", "a"]),
})


@pytest.mark.parametrize("expr", ["x", "I(x)", " x ", "1", "0", "-1", "C", "np", "log", "pi",
                                  "True", "I(C)", "(x)", "I( x )", "I(log(x))", "x + n"])
def test_required_matches_formulaic(expr):
    assert _required(expr) == set(formulaic.Formula(expr).required_variables)


@pytest.mark.parametrize("expr", ["log(n)", "np.log(x)", "exp(x)", "np.exp(n)"])
def test_log_offsets_match_formulaic(expr):
    ours = _evaluate(expr, FRAME).to_numpy()
    theirs = np.asarray(formulaic.model_matrix(f"0 + I({expr})", FRAME, output="numpy"))[:, 0]
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("expr", ["1", "0"])
def test_constant_matrices_and_their_spec(expr):
    values, names, spec = _numeric_matrix(expr, FRAME, "X")
    reference = formulaic.model_matrix(expr, FRAME, na_action="raise", output="numpy")
    assert np.array_equal(values, np.asarray(reference))
    assert names == list(reference.model_spec.column_names)
    assert spec.column_names == reference.model_spec.column_names
    assert spec.term_slices == reference.model_spec.term_slices
    again = pickle.loads(pickle.dumps(spec))
    assert np.asarray(_numeric_matrix(again, FRAME.iloc[:2], "X")[0]).shape == (2, len(names))


def test_categorical_levels_from_codes():
    refs, labels = grouping_levels(FRAME, ("g",))
    assert labels == ["c", "b", "a"]  # category order, unused "z" dropped
    assert refs.tolist() == [1, 2, 1, 0, 2, 0]


def test_shared_matrices_hand_out_copies():
    with shared_matrices():
        a = build_design("y ~ x + (1 | g)", FRAME)
        b = build_design("y ~ x + (1 | g)", FRAME)
    assert np.array_equal(a.X, b.X) and not np.shares_memory(a.X, b.X)
    assert not np.shares_memory(a.terms[0].refs, b.terms[0].refs)
    X, _, parts = new_data_design(b, FRAME.iloc[:3], allow_new_levels=False)
    assert np.array_equal(X, a.X[:3]) and parts[0][1].tolist() == [[1.0]] * 3


def test_direct_matrix_reused_only_when_bitwise_equal():
    """A second design from the same numeric columns gets the first's read-only X (no
    second copy) while that X is alive; any changed bit (even 0.0 → -0.0) builds anew."""
    from glmmjax._model.design import DIRECT_ROWS

    rng = np.random.default_rng(3)
    frame = pd.DataFrame(rng.normal(size=(DIRECT_ROWS, 3)), columns=["y", "a", "b"])
    frame.loc[DIRECT_ROWS - 1, "b"] = 0.0
    first = build_design("y ~ a + b", frame).X
    assert not first.flags.writeable
    assert build_design("y ~ a + b", frame).X is first
    assert build_design("y ~ b + a", frame).X is not first  # another column order
    changed = frame.copy()
    changed.loc[DIRECT_ROWS - 1, "b"] = -0.0
    rebuilt = build_design("y ~ a + b", changed).X
    assert rebuilt is not first
    assert np.signbit(rebuilt[-1, 2]) and not np.signbit(first[-1, 2])
    expected = np.column_stack([np.ones(DIRECT_ROWS), frame[["a", "b"]].to_numpy()])
    assert np.array_equal(first, expected)
