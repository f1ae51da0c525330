"""Bundled datasets: every name loads with the shape, column types and factor levels that
data/SOURCES.md documents (R's level order), and an unknown name is a clear error."""

from __future__ import annotations

import re
from importlib import resources

import numpy as np
import pandas as pd
import pytest

from glmmjax import datasets


def _documented() -> dict[str, dict]:
    """The table of data/SOURCES.md: rows and column types per file, with factor levels
    where listed."""
    text = (resources.files("glmmjax") / "data" / "SOURCES.md").read_text()
    table = {}
    for line in text.splitlines():
        match = re.match(r"\| (\w+)\.csv \| [^|]+ \| (\d+) \| (.+) \|$", line)
        if not match:
            continue
        name, rows, columns = match.groups()
        spec = {}
        for column in re.split(r"; (?![^()]*\))", columns):
            col, kind = column.split(": ", 1)
            factor = re.match(r"factor\((\d+) levels(?:: (.+))?\)", kind)
            if factor:
                levels = factor.group(2).split(", ") if factor.group(2) else None
                spec[col] = ("factor", int(factor.group(1)), levels)
            else:
                spec[col] = (kind, None, None)
        table[name] = {"rows": int(rows), "columns": spec}
    return table


DOCUMENTED = _documented()


def test_every_name_is_documented_and_bundled():
    assert set(DOCUMENTED) == set(datasets.NAMES)
    files = {p.name for p in (resources.files("glmmjax") / "data").iterdir()}
    for name in datasets.NAMES:
        assert f"{name}.csv" in files or f"{name}.csv.gz" in files


@pytest.mark.parametrize("name", datasets.NAMES)
def test_load_matches_documentation(name):
    frame = datasets.load(name)
    expected = DOCUMENTED[name]
    assert isinstance(frame, pd.DataFrame)
    assert frame.shape == (expected["rows"], len(expected["columns"]))
    assert list(frame.columns) == list(expected["columns"])
    for column, (kind, n_levels, levels) in expected["columns"].items():
        series = frame[column]
        if kind == "factor":
            assert isinstance(series.dtype, pd.CategoricalDtype), column
            categories = list(series.cat.categories)
            assert len(categories) == n_levels, column
            assert all(isinstance(c, str) for c in categories), column
            # every value is one of the levels, and every level is used
            assert not series.isna().any(), column
            assert set(series.unique()) == set(categories), column
            if levels is not None:
                assert categories == levels, column
        else:
            assert pd.api.types.is_numeric_dtype(series), column
            if kind == "integer":
                np.testing.assert_array_equal(series, np.round(series))


@pytest.mark.parametrize(
    "name, column, levels",
    [
        ("cbpp", "period", ["1", "2", "3", "4"]),
        ("verbagg", "r2", ["N", "Y"]),
        ("verbagg", "resp", ["no", "perhaps", "yes"]),
        ("verbagg", "mode", ["want", "do"]),  # not alphabetical: R's order
        ("salamanders", "mined", ["yes", "no"]),
        ("contraception", "livch", ["0", "1", "2", "3+"]),
        ("grouseticks", "YEAR", ["95", "96", "97"]),
        ("dyestuff", "Batch", ["A", "B", "C", "D", "E", "F"]),
        ("pastes", "cask", ["a", "b", "c"]),
    ],
)
def test_r_level_order(name, column, levels):
    assert list(datasets.load(name)[column].cat.categories) == levels


def test_r_level_order_of_larger_factors():
    assert datasets.load("salamanders")["spp"].cat.categories[0] == "GP"
    assert list(datasets.load("salamanders")["spp"].cat.categories) == [
        "GP", "PR", "DM", "EC-A", "EC-L", "DES-L", "DF",
    ]
    # numeric-looking levels in numeric order, not text order
    subjects = list(datasets.load("sleepstudy")["Subject"].cat.categories)
    assert subjects[:3] == ["308", "309", "310"] and subjects[-1] == "372"
    herds = list(datasets.load("cbpp")["herd"].cat.categories)
    assert herds == [str(i) for i in range(1, 16)]
    items = datasets.load("verbagg")["item"].cat.categories
    assert list(items[:3]) == ["S1WantCurse", "S1WantScold", "S1WantShout"]
    assert list(datasets.load("pastes")["sample"].cat.categories[:2]) == ["A:a", "A:b"]


def test_names_are_case_insensitive_and_frames_independent():
    first = datasets.load("SleepStudy")
    pd.testing.assert_frame_equal(first, datasets.load("sleepstudy"))
    first.loc[0, "Reaction"] = -1.0
    assert datasets.load("sleepstudy").loc[0, "Reaction"] > 0


def test_unknown_name():
    with pytest.raises(ValueError, match=r"unknown dataset 'sleepstudies'") as info:
        datasets.load("sleepstudies")
    for name in datasets.NAMES:
        assert name in str(info.value)
