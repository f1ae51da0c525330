"""Classic mixed-model datasets bundled with glmmjax.

The files come from the R packages lme4, glmmTMB and mlmRev (see ``data/SOURCES.md``).
Columns that R holds as factors are returned as pandas categoricals whose category order
is R's level order, so that treatment coding gives the same coefficients as R.

Example:
    >>> from glmmjax import datasets
    >>> datasets.load("sleepstudy").shape
    (180, 3)
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

# Factor columns of each dataset. ``None`` means: levels in R's order, which for these
# files is numeric order when every level looks like a number and order of first
# appearance otherwise; an explicit list gives the order where that rule would not.
_FACTORS: dict[str, dict[str, list[str] | None]] = {
    "sleepstudy": {"Subject": None},
    "dyestuff": {"Batch": None},
    "dyestuff2": {"Batch": None},
    "penicillin": {"plate": None, "sample": None},
    "pastes": {"batch": None, "cask": None, "sample": None},
    "cbpp": {"herd": None, "period": None},
    "verbagg": {
        "Gender": ["F", "M"],
        "item": None,
        "resp": ["no", "perhaps", "yes"],
        "id": None,
        "btype": ["curse", "scold", "shout"],
        "situ": ["other", "self"],
        "mode": ["want", "do"],
        "r2": ["N", "Y"],
    },
    "insteval": {
        "s": None,
        "d": None,
        "studage": None,
        "lectage": None,
        "service": None,
        "dept": None,
    },
    "grouseticks": {"INDEX": None, "BROOD": None, "YEAR": None, "LOCATION": None},
    "salamanders": {"site": None, "mined": ["yes", "no"], "spp": None},
    "owls": {"Nest": None, "FoodTreatment": ["Deprived", "Satiated"],
             "SexParent": ["Female", "Male"]},
    "contraception": {
        "woman": None,
        "district": None,
        "use": ["N", "Y"],
        "livch": ["0", "1", "2", "3+"],
        "urban": ["N", "Y"],
    },
}

#: Names accepted by :func:`load`.
NAMES: tuple[str, ...] = tuple(_FACTORS)


def _r_level_order(values: pd.Series) -> list[str]:
    unique = list(pd.unique(values.astype(str)))
    try:
        return sorted(unique, key=float)
    except ValueError:
        return unique


def load(name: str) -> pd.DataFrame:
    """Return the bundled dataset ``name`` as a DataFrame with R's factor levels.

    Args:
        name: one of :data:`NAMES` (case-insensitive).

    Raises:
        ValueError: for an unknown name; the message lists the valid ones.
    """
    if not isinstance(name, str):
        raise ValueError(f"name must be a dataset name (a string), got {name!r}; "
                         f"available: {', '.join(NAMES)}")
    key = name.lower()
    if key not in _FACTORS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(NAMES)}")
    folder = resources.files("glmmjax") / "data"
    path = folder / f"{key}.csv"
    if not path.is_file():
        path = folder / f"{key}.csv.gz"
    with resources.as_file(path) as local:
        frame = pd.read_csv(local)
    for column, levels in _FACTORS[key].items():
        as_text = frame[column].astype(str)
        order = levels if levels is not None else _r_level_order(as_text)
        frame[column] = pd.Categorical(as_text, categories=order)
    return frame
