"""AR(1) residual autocorrelation over an ordered time index within groups.

Within each group, sorted by time t, a process x follows

    x₁ ~ N(0, s²),    x_k | x_{k−1} ~ N(c_k·x_{k−1}, s²(1 − c_k²)),    c_k = ρ^(t_k − t_{k−1}),

the exact AR(1) at integer time steps with unobserved steps in between (gaps of several
steps are allowed), stationary with Var x = s² and Corr(x_j, x_k) = ρ^|t_j − t_k|.

* Gaussian family: x is the residual error, s = σ; the likelihood is the product of the
  conditional densities above, so no latent variables are sampled.
* Other families: x is a latent term added to the linear predictor, s = ``ar1_sd``,
  sampled non-centred: x = A(ρ)·ξ with ξ ~ N(0, I), one ξ per observation.

The recursion x_k = c_k·x_{k−1} + e_k runs as one ``lax.scan`` over positions within a
series, vectorized across series (a grid of series length × number of series): as many
sequential steps as the longest series, each a vector operation, which compiles quickly
and suits CPUs and GPUs alike. The numpy side (:func:`ar1_index`) sorts the rows once
and checks the time values.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._model.design import DataError


@dataclasses.dataclass(frozen=True, eq=False)
class AR1Index:
    """Where each row sits in its group's time series (numpy).

    Attributes:
        time_column, group_column: the data columns (group None: one series).
        order: rows sorted by (group, time); ``first`` (n,) in original row order: the
            row starts its group's series; ``gap`` (n,): time since the previous row of
            its group (1 where first, unused); ``prev`` (n,): that row (0 where first);
            ``series``/``position`` (n,): the row's series and its place in it.
        group_levels: group labels; ``last_row``/``last_time``: per group, the last row
            and its time (to continue the series when forecasting).
        datetime: whether time was a date (converted to days).
    """

    time_column: str
    group_column: str | None
    order: np.ndarray
    first: np.ndarray
    gap: np.ndarray
    prev: np.ndarray
    series: np.ndarray
    position: np.ndarray
    group_levels: tuple[str, ...]
    last_row: np.ndarray
    last_time: np.ndarray
    datetime: bool

    @property
    def grid(self) -> tuple[int, int]:
        """(longest series, number of series): the shape of the recurrence's grid."""
        return int(self.position.max()) + 1, len(self.group_levels)


def _positions(sorted_codes: np.ndarray) -> np.ndarray:
    starts = np.r_[0, np.flatnonzero(sorted_codes[1:] != sorted_codes[:-1]) + 1]
    counts = np.diff(np.r_[starts, len(sorted_codes)])
    return np.arange(len(sorted_codes)) - np.repeat(starts, counts)


def parse_ar1(ar1) -> tuple[str, str | None]:
    if isinstance(ar1, str):
        return ar1, None
    if isinstance(ar1, (tuple, list)) and len(ar1) in (1, 2) and all(isinstance(c, str) for c in ar1):
        return ar1[0], (ar1[1] if len(ar1) == 2 else None)
    raise ValueError(
        f"ar1 must be a time column name or a (time_column, group_column) pair, got {ar1!r}"
    )


def _time_values(series: pd.Series, column: str) -> tuple[np.ndarray, bool]:
    if pd.api.types.is_datetime64_any_dtype(series):
        days = (series - pd.Timestamp("1970-01-01")) / pd.Timedelta(days=1)
        return days.to_numpy(dtype=np.float64), True
    if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        raise DataError(f"the AR(1) time column {column!r} must be numeric or dates")
    values = series.to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise DataError(f"the AR(1) time column {column!r} has missing or non-finite values")
    return values, False


def _group_labels(frame: pd.DataFrame, group: str | None) -> pd.Series:
    if group is None:
        return pd.Series("(all)", index=frame.index)
    if group not in frame.columns:
        raise DataError(f"the AR(1) group column {group!r} is not in the data")
    return frame[group].astype(str)


def ar1_index(data: pd.DataFrame, rows: pd.Index, ar1) -> AR1Index:
    """Sort the model's rows (``rows`` of ``data``) into per-group time series.

    Raises:
        DataError: a missing column, non-numeric or non-integer times, or two rows of a
            group at the same time.
    """
    time_column, group_column = parse_ar1(ar1)
    if data is None:
        raise ValueError("ar1 needs the data frame with its time and group columns: pass data=")
    if time_column not in data.columns:
        raise DataError(f"the AR(1) time column {time_column!r} is not in the data")
    frame = data.loc[rows]
    time, is_datetime = _time_values(frame[time_column], time_column)
    labels = _group_labels(frame, group_column)
    levels, codes = np.unique(labels.to_numpy(dtype=str), return_inverse=True)
    order = np.lexsort((time, codes))
    sorted_codes, sorted_time = codes[order], time[order]
    same = np.r_[False, sorted_codes[1:] == sorted_codes[:-1]]
    gaps = np.r_[1.0, np.diff(sorted_time)]
    if np.any(same & (gaps <= 0)):
        k = int(np.flatnonzero(same & (gaps <= 0))[0])
        raise DataError(
            f"AR(1): two rows of group {levels[sorted_codes[k]]!r} share the time "
            f"{sorted_time[k]:g} of {time_column!r}; each group needs distinct times"
        )
    if np.any(same & (np.abs(gaps - np.round(gaps)) > 1e-8)):
        raise DataError(
            f"AR(1): time steps of {time_column!r} within a group must be whole numbers "
            "(integers, or dates a whole number of days apart)"
        )
    n = len(order)
    first = np.empty(n, dtype=bool)
    gap = np.empty(n)
    prev = np.empty(n, dtype=np.int64)
    first[order] = ~same
    gap[order] = np.where(same, np.round(gaps), 1.0)
    prev[order] = np.where(same, np.r_[0, order[:-1]], 0)
    position = np.empty(n, dtype=np.int64)
    position[order] = _positions(sorted_codes)
    last_sorted = np.r_[np.flatnonzero(sorted_codes[1:] != sorted_codes[:-1]), n - 1]
    return AR1Index(
        time_column=time_column,
        group_column=group_column,
        order=order.astype(np.int64),
        first=first,
        gap=gap,
        prev=prev,
        series=codes.astype(np.int64),
        position=position,
        group_levels=tuple(levels),
        last_row=order[last_sorted].astype(np.int64),
        last_time=sorted_time[last_sorted],
        datetime=is_datetime,
    )


def forecast_index(index: AR1Index, newdata: pd.DataFrame) -> dict:
    """Series positions of new rows that continue the fitted series.

    Returns a dict of numpy arrays over the new rows: ``first``, ``gap``, ``series``,
    ``position`` (as in :class:`AR1Index`, series numbered among the new rows), ``start``:
    the fitted group whose last value a series-starting row continues (−1 for a group
    not seen in fitting, which starts from the stationary distribution), and ``grid``.

    Raises:
        DataError: a missing time column, or a new row at or before its group's last
            fitted time.
    """
    if index.time_column not in newdata.columns:
        raise DataError(f"newdata lacks the AR(1) time column {index.time_column!r}")
    time, _ = _time_values(newdata[index.time_column], index.time_column)
    labels = _group_labels(newdata, index.group_column).to_numpy(dtype=str)
    lookup = {name: i for i, name in enumerate(index.group_levels)}
    known = np.array([lookup.get(v, -1) for v in labels], dtype=np.int64)
    names, codes = np.unique(labels, return_inverse=True)
    order = np.lexsort((time, codes))
    sorted_codes, sorted_time = codes[order], time[order]
    same = np.r_[False, sorted_codes[1:] == sorted_codes[:-1]]
    start_group = known[order]
    last_time = np.where(start_group >= 0, index.last_time[np.maximum(start_group, 0)], np.nan)
    gaps = np.r_[1.0, np.diff(sorted_time)]
    gaps = np.where(same, gaps, np.where(start_group >= 0, sorted_time - last_time, 1.0))
    if np.any(gaps <= 0):
        k = int(np.flatnonzero(gaps <= 0)[0])
        raise DataError(
            f"AR(1) predictions continue each series forward: the new row of group "
            f"{labels[order[k]]!r} at time {sorted_time[k]:g} is not after the previous one "
            "(or after the last fitted time of that group)"
        )
    if np.any(np.abs(gaps - np.round(gaps)) > 1e-8):
        raise DataError(f"AR(1): new time steps of {index.time_column!r} must be whole numbers")
    n = len(order)
    out = {k: np.empty(n, dtype=d) for k, d in
           (("first", bool), ("gap", float), ("position", np.int64), ("start", np.int64))}
    out["first"][order] = ~same
    out["gap"][order] = np.round(gaps)
    out["position"][order] = _positions(sorted_codes)
    out["start"][order] = np.where(same, -1, start_group)
    out["series"] = codes.astype(np.int64)
    out["grid"] = (int(out["position"].max()) + 1, len(names))
    return out


# ---- traced -----------------------------------------------------------------------------
def step_coefficients(rho, gap, first):
    """c = ρ^gap (0 where a series starts), for integer gaps and any ρ in (−1, 1)."""
    odd = jnp.mod(gap, 2.0) == 1.0
    sign = jnp.where(odd & (rho < 0), -1.0, 1.0)
    power = sign * jnp.exp(gap * jnp.log(jnp.abs(rho)))
    return jnp.where(first, 0.0, power)


def series_recurrence(c, e, series, position, grid):
    """x = c·x_prev + e along each series (x = e at a series' first row, where c is
    ignored), for rows given by their ``series`` and ``position``; ``grid`` = (longest
    series, number of series) is static. One ``lax.scan`` over positions."""
    length, n_series = grid
    zeros = jnp.zeros((length, n_series), dtype=jnp.result_type(c, e))
    c_grid = zeros.at[position, series].set(jnp.where(position == 0, 0.0, c))
    e_grid = zeros.at[position, series].set(e)

    def step(previous, inputs):
        c_t, e_t = inputs
        current = c_t * previous + e_t
        return current, current

    _, x = jax.lax.scan(step, zeros[0], (c_grid, e_grid))
    return x[position, series]


def latent_process(xi, rho, sd, first, gap, series, position, grid):
    """The stationary AR(1) values of the rows (SD ``sd``) from standard normals ξ."""
    c = step_coefficients(rho, gap, first)
    return series_recurrence(c, sd * jnp.sqrt(1.0 - c * c) * xi, series, position, grid)


def gaussian_conditionals(y, mu, sigma, rho, first, gap, prev):
    """Conditional mean and variance of each y given the previous row of its series."""
    c = step_coefficients(rho, gap, first)
    mean = mu + c * (y - mu)[prev]
    return mean, sigma * sigma * (1.0 - c * c)


def forecast_process(xi, rho, sd, start_value, index: dict):
    """Continue series forward: the new rows' process values (``index`` from
    :func:`forecast_index`).

    ``start_value`` (n,): the fitted series' last value, used by the rows that continue a
    fitted group (``start`` >= 0); rows of new groups start from N(0, sd²). ``xi`` = 0
    gives the conditional mean.
    """
    first, start = index["first"], index["start"]
    c = step_coefficients(rho, index["gap"], jnp.zeros_like(first))
    c = jnp.where(first & (start < 0), 0.0, c)
    e = sd * jnp.sqrt(1.0 - c * c) * xi + jnp.where(first & (start >= 0), c * start_value, 0.0)
    return series_recurrence(c, e, index["series"], index["position"], index["grid"])
