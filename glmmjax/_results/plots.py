"""Diagnostic plots for mixed models (needs matplotlib: ``pip install 'glmmjax[plot]'``).

Each function draws on ``ax`` (a new figure's axes when None) and returns the axes, or
an array of axes for several panels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
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


def _panels(plt, n: int, axes, width: float = 3.6, height: float = 3.2):
    if axes is not None:
        return np.atleast_1d(axes).ravel()
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    _, grid = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for extra in grid.ravel()[n:]:
        extra.set_visible(False)
    return grid.ravel()[:n]


def plot_profile(result, parm=None, level: float = 0.95, axes=None, *, progress=None):
    """ζ against each parameter (lme4's ``xyplot(profile(fit))``): one panel per
    parameter, the profile from the 99% bounds (or ``level``'s, if higher), dashed
    lines at ζ = ±z and dotted verticals at the ``level`` interval."""
    plt = _pyplot()
    frame = result.profile(parm, level=max(level, 0.99), progress=progress)
    names = list(dict.fromkeys(frame["parameter"]))
    if not names:
        raise ValueError("no parameter could be profiled (see confint()'s note)")
    axes = _panels(plt, len(names), axes)
    z = stats.norm.ppf(0.5 * (1.0 + level))
    for ax, name in zip(axes, names):
        part = frame[frame["parameter"] == name]
        x, zeta = part["value"].to_numpy(), part["zeta"].to_numpy()
        ax.plot(x, zeta, "o-", ms=3, lw=1.2)
        for cut in (-z, z):
            ax.axhline(cut, color="grey", lw=0.8, ls="--")
            # The interval's end: where the (monotone) profile crosses the cut.
            order = np.argsort(zeta)
            if zeta.min() <= cut <= zeta.max():
                ax.axvline(np.interp(cut, zeta[order], x[order]), color="grey", lw=0.8, ls=":")
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set_xlabel(name)
        ax.set_ylabel("ζ")
    axes[0].figure.suptitle(f"Profile ζ ({100 * level:g}% interval dotted)")
    return axes


def effect_table(result, term: str, level: float = 0.95, n_points: int = 50):
    """Population-level predictions across ``term`` (a column of the data): numeric
    terms over a grid of ``n_points`` from their minimum to their maximum, categorical
    ones at each level; the other columns at their mean (numeric) or first level; random
    effects at zero. Columns: ``term``, ``fit``, ``lower``, ``upper`` (Wald intervals on
    the link scale, mapped through the inverse link)."""
    design = getattr(result, "design", None) or result._design
    data = design.source_data
    if data is None:
        raise ValueError("the fit does not keep its data; effect plots need it")
    data = data.loc[design.rows]
    if term not in data.columns:
        numeric = [c for c in data.columns if pd.api.types.is_numeric_dtype(data[c])]
        raise ValueError(f"term must be a column of the data, got {term!r}; columns are "
                         f"{list(data.columns)} (numeric: {numeric})")
    column = data[term]
    categorical = not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)
    if categorical:
        levels = (list(column.cat.categories) if isinstance(column.dtype, pd.CategoricalDtype)
                  else sorted(pd.unique(column.dropna()), key=str))
    else:
        levels = np.linspace(column.min(), column.max(), int(n_points))
    grid = pd.DataFrame({term: levels})
    for name in data.columns:
        if name == term:
            continue
        values = data[name]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            grid[name] = float(values.mean())
        elif isinstance(values.dtype, pd.CategoricalDtype):
            grid[name] = pd.Categorical([values.cat.categories[0]] * len(grid),
                                        categories=values.cat.categories)
        else:
            grid[name] = values.iloc[0]
    if isinstance(column.dtype, pd.CategoricalDtype):
        grid[term] = pd.Categorical(levels, categories=column.cat.categories)
    z = stats.norm.ppf(0.5 * (1.0 + level))
    if getattr(result, "parts", None) is not None:  # zero-inflation / dispersion models
        fit, lower, upper = _parts_effect(result, grid, z)
        return pd.DataFrame({term: levels, "fit": fit, "lower": lower, "upper": upper})
    if hasattr(result, "beta_cov"):  # mixed models
        from .._model.design import new_data_design

        X, offset, _ = new_data_design(design, grid, allow_new_levels=True)
        eta = X @ result.beta + offset
        se = np.sqrt(np.einsum("ij,jk,ik->i", X, result.beta_cov, X))
        inverse = result._to_response
    else:  # GLMResult
        link = result.predict(grid, type="link", se_fit=True)
        eta, se = link["fit"].to_numpy(), link["se_fit"].to_numpy()
        inverse = lambda e: np.asarray(result.family.link.inverse(e))  # noqa: E731
    import jax

    with jax.enable_x64(True):  # links are JAX functions: float64, as the fit
        fit = np.asarray(inverse(eta), dtype=float)
        bounds = [np.asarray(inverse(eta - z * se), dtype=float),
                  np.asarray(inverse(eta + z * se), dtype=float)]
    return pd.DataFrame({term: levels, "fit": fit,
                         "lower": np.minimum(*bounds), "upper": np.maximum(*bounds)})


def _parts_effect(result, grid: pd.DataFrame, z: float):
    """The mean of y (glmmTMB's ``predict(type="response")``: (1 − π)μ, or the hurdle
    mean) at ``grid`` with random effects at zero, and Wald intervals by the delta method
    on the conditional model's link scale, from the covariance of the fixed effects of
    every part (the zero part moves the mean too)."""
    import jax
    import jax.numpy as jnp

    from .._families.response_parts import response_mean
    from .._model.design import new_data_design

    n = len(grid)
    pieces = []  # (X, offset, parameter indices) for cond, zi, disp: the predictors
    for part in ("cond", "zi", "disp"):
        indices = np.arange(len(result.params))[result._part_slice(part)]
        design = result.design if part == "cond" else getattr(result.parts, part)
        design = design if part == "cond" or design is None else design.design
        if design is None:
            X, offset = np.zeros((n, 0)), np.zeros(n)
        elif design.X.shape[1] == 0:  # a fixed dispersion: a constant offset
            X, offset = np.zeros((n, 0)), np.full(n, design.offset[0])
        else:
            X, offset, _ = new_data_design(design, grid, allow_new_levels=True,
                                           need_groups=False)
        pieces.append((np.asarray(X, dtype=float), np.asarray(offset, dtype=float), indices))
    index = np.concatenate([indices for _, _, indices in pieces])
    link = result.family.link

    def link_of_mean(beta):
        predictors, start = [], 0
        for X, offset, indices in pieces:
            predictors.append(X @ beta[start:start + len(indices)] + offset)
            start += len(indices)
        return link.link(response_mean(result.family, *predictors,
                                       zero_inflated=result.zero_inflated))

    with jax.enable_x64(True):
        beta = jnp.asarray(result.params[index], dtype=jnp.float64)
        eta = np.asarray(link_of_mean(beta))
        jac = np.asarray(jax.jacfwd(link_of_mean)(beta))
        se = np.sqrt(np.einsum("ij,jk,ik->i", jac, result.params_cov[np.ix_(index, index)], jac))
        fit = np.asarray(link.inverse(eta), dtype=float)
        bounds = [np.asarray(link.inverse(eta - z * se), dtype=float),
                  np.asarray(link.inverse(eta + z * se), dtype=float)]
    return fit, np.minimum(*bounds), np.maximum(*bounds)


def plot_effect(result, term: str, ax=None, level: float = 0.95, n_points: int = 50):
    """Predictions across ``term`` with ``level`` intervals (see :func:`effect_table`):
    a line and band for a numeric term, points and error bars for a categorical one."""
    table = effect_table(result, term, level, n_points)
    ax = _axes(ax)
    x = table[term]
    if pd.api.types.is_numeric_dtype(x) and len(table) == int(n_points):
        ax.plot(x, table["fit"], lw=1.5)
        ax.fill_between(x, table["lower"], table["upper"], alpha=0.25,
                        label=f"{100 * level:g}% interval")
    else:
        pos = np.arange(len(table))
        ax.errorbar(pos, table["fit"], yerr=[table["fit"] - table["lower"],
                                             table["upper"] - table["fit"]], fmt="o", capsize=3)
        ax.set_xticks(pos)
        ax.set_xticklabels([str(v) for v in x])
    ax.set_xlabel(term)
    ax.set_ylabel("predicted mean (random effects at zero)")
    ax.set_title(f"Effect of {term}")
    return ax


# -- Bayesian fits ----------------------------------------------------------------------------


def plot_posterior(fit, kind: str = "fixef", axes=None, prob: float = 0.95, bins: int = 40):
    """Marginal posteriors of the scalar parameters of one ``kind`` (``"fixef"``,
    ``"sd"``, ``"cor"``, ``"family"``): a histogram of all chains' draws per parameter,
    with the mean and the central ``prob`` interval."""
    plt = _pyplot()
    names, values = fit.scalar_draws(kind)
    if not names:
        raise ValueError(f"the fit has no parameters of kind {kind!r}")
    axes = _panels(plt, len(names), axes, height=2.8)
    lo, hi = (1 - prob) / 2, (1 + prob) / 2
    for k, (ax, name) in enumerate(zip(axes, names)):
        draws = values[:, :, k].ravel()
        ax.hist(draws, bins=bins, density=True, alpha=0.6, color="C0")
        ax.axvline(draws.mean(), color="C3", lw=1.2)
        for q in np.quantile(draws, [lo, hi]):
            ax.axvline(q, color="C3", lw=0.8, ls="--")
        ax.set_title(name, fontsize=9)
        ax.set_yticks([])
    axes[0].figure.suptitle(f"Posterior ({100 * prob:g}% intervals dashed)")
    return axes


def plot_ppc(fit, num_draws: int = 50, ax=None, seed: int = 0):
    """Posterior predictive check (bayesplot's ``ppc_dens_overlay``): densities of
    ``num_draws`` replicated data sets against the observed response."""
    ax = _axes(ax)
    y = np.asarray(fit.bayes_model.data.y, dtype=float)
    replicated = fit.posterior_predict(num_draws=num_draws, seed=seed).to_numpy()
    low = min(y.min(), replicated.min())
    high = max(y.max(), replicated.max())
    grid = np.linspace(low, high, 200)
    distinct = np.unique(y).size
    for k, draw in enumerate(replicated):
        ax.plot(grid, _density(draw, grid, distinct), color="C0", alpha=0.15, lw=0.8,
                label="replicated" if k == 0 else None)
    ax.plot(grid, _density(y, grid, distinct), color="black", lw=1.8, label="observed")
    ax.set_xlabel("y")
    ax.set_ylabel("density")
    ax.set_title("Posterior predictive check")
    ax.legend(fontsize=8)
    return ax


def _density(values, grid, distinct):
    values = np.asarray(values, dtype=float)
    if np.unique(values).size < 2 or distinct <= 2:
        # Degenerate or binary data: a histogram on the grid, not a kernel density.
        hist, edges = np.histogram(values, bins=min(20, len(grid) - 1),
                                   range=(grid[0], grid[-1]), density=True)
        return np.interp(grid, 0.5 * (edges[1:] + edges[:-1]), hist)
    return stats.gaussian_kde(values)(grid)
