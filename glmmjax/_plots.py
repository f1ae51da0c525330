"""Diagnostic plots for mixed models (needs matplotlib: ``pip install 'glmmjax[plot]'``).

Each function draws on ``ax`` (a new figure's axes when None) and returns the axes, or
an array of axes for several panels.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - exercised by monkeypatching
        raise ImportError(
            "glmmjax's plots need matplotlib; install it with: pip install 'glmmjax[plot]'"
        ) from err
    return plt


def _axes(ax):
    if ax is not None:
        return ax
    plt = _pyplot()
    _, ax = plt.subplots()
    return ax


def plot_residuals(result, ax=None, type: str = "pearson"):  # noqa: A002
    """Residuals (``type``, default Pearson) against fitted values."""
    ax = _axes(ax)
    fitted = result.fitted().to_numpy()
    resid = result.residuals(type=type).to_numpy()
    ax.scatter(fitted, resid, s=12, alpha=0.7)
    ax.axhline(0.0, color="grey", lw=1, ls="--")
    ax.set_xlabel("fitted values")
    ax.set_ylabel(f"{type} residuals")
    ax.set_title("Residuals vs fitted")
    return ax


def _qq(ax, values, label):
    values = np.sort(np.asarray(values, dtype=float))
    n = values.size
    theoretical = stats.norm.ppf((np.arange(1, n + 1) - 0.5) / n)
    ax.scatter(theoretical, values, s=12, alpha=0.7, label=label)
    q = np.quantile(values, [0.25, 0.75])
    t = stats.norm.ppf([0.25, 0.75])
    slope = (q[1] - q[0]) / (t[1] - t[0]) if t[1] > t[0] else 1.0
    line = q[0] + slope * (theoretical - t[0])
    ax.plot(theoretical, line, color="grey", lw=1)
    ax.set_xlabel("standard normal quantiles")
    ax.set_ylabel("sample quantiles")


def plot_qq(result, ax=None, type: str = "pearson"):  # noqa: A002
    """Normal QQ plot of the residuals."""
    ax = _axes(ax)
    _qq(ax, result.residuals(type=type).to_numpy(), f"{type} residuals")
    ax.set_title(f"Normal QQ: {type} residuals")
    return ax


def _ranef_columns(result, term):
    ranef = result.ranef
    labels = list(ranef) if term is None else [term]
    for label in labels:
        if label not in ranef:
            raise ValueError(f"unknown term {label!r}; terms are {list(ranef)}")
        for column in ranef[label].columns:
            yield label, column


def plot_ranef_qq(result, term: str | None = None, axes=None):
    """Normal QQ plots of the conditional modes, one panel per term and column."""
    plt = _pyplot()
    panels = list(_ranef_columns(result, term))
    if axes is None:
        _, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
        axes = axes[0]
    for ax, (label, column) in zip(np.atleast_1d(axes), panels):
        _qq(ax, result.ranef[label][column].to_numpy(), column)
        ax.set_title(f"{column} | {label}")
    return axes


def plot_caterpillar(result, term: str | None = None, level: float = 0.95, axes=None):
    """Conditional modes with ±z·(conditional SD) intervals, sorted, per term and column."""
    plt = _pyplot()
    panels = list(_ranef_columns(result, term))
    if axes is None:
        n_rows = max(len(result.design.terms[0].levels), 5)
        _, axes = plt.subplots(
            1, len(panels), figsize=(4 * len(panels), min(0.18 * n_rows + 1, 30)), squeeze=False
        )
        axes = axes[0]
    z = stats.norm.ppf(0.5 * (1.0 + level))
    condsd = result.ranef_condsd
    for ax, (label, column) in zip(np.atleast_1d(axes), panels):
        modes = result.ranef[label][column]
        sd = condsd[label][column]
        order = np.argsort(modes.to_numpy())
        pos = np.arange(len(order))
        ax.errorbar(modes.to_numpy()[order], pos, xerr=z * sd.to_numpy()[order], fmt="o",
                    ms=3, lw=1)
        ax.axvline(0.0, color="grey", lw=1, ls="--")
        ax.set_yticks(pos)
        ax.set_yticklabels(modes.index.to_numpy()[order], fontsize=7)
        ax.set_title(f"{column} | {label}")
    return axes


def plot_scaled_qq(scaled, ax=None):
    """Uniform QQ plot of DHARMa-style scaled residuals, with the KS p-value."""
    ax = _axes(ax)
    values = np.sort(scaled.residuals)
    n = values.size
    expected = (np.arange(1, n + 1) - 0.5) / n
    ax.scatter(expected, values, s=12, alpha=0.7)
    ax.plot([0, 1], [0, 1], color="grey", lw=1)
    test = scaled.test_uniformity()
    ax.set_xlabel("expected (uniform)")
    ax.set_ylabel("observed scaled residuals")
    ax.set_title(f"QQ of scaled residuals (KS p = {test.p_value:.3g})")
    return ax
