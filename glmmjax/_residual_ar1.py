"""nlme's residual ``corAR1`` within groups for Gaussian LMMs: ``lmer(...,
correlation=cor_ar1(time="Days", group="Subject"))``.

The residuals of one group (a series) have correlation ρ^|t_i − t_j| at integer times t
(nlme's ``corAR1(form = ~ time | group)``; with gaps between the times nlme switches to
``corARMA(p = 1)``, the same correlation at the gaps' lags). With R that block-diagonal
correlation, V = σ²(ZΛΛ'Z' + R), and the AR(1) process is Markov, so R = L·L' with L⁻¹
bidiagonal in closed form: sorted by time within a series,

    ỹ_1 = y_1,   ỹ_i = (y_i − r_i·y_(i−1)) / √(1 − r_i²),   r_i = ρ^(t_i − t_(i−1)),

and the same for the rows of X and Z. The whitened model is an ordinary LMM with white
noise, and its ML or REML criterion plus log|R| = Σ log(1 − r_i²) is the criterion of
the correlated model (the Jacobian of the whitening; REML's log|X'V⁻¹X| is unchanged).
Whitening keeps the rows' sparsity only when each random-effects term's level is constant
within a series (the series nested in every grouping factor: stores within regions,
days within subjects); other designs are refused.

ρ is profiled: an outer bounded Brent search over atanh(ρ), each step an ordinary LMM fit
of the whitened data (host engine: no compilation), warm-free and cheap for the models this
is for. Fixed-effect standard errors are conditional on ρ and θ, as nlme's.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pandas as pd
import scipy.optimize

from ._model.design import DataError, Design
from ._precision import with_x64
from ._results.lmm import LMMResult


@dataclasses.dataclass(frozen=True)
class CorAR1:
    """The residual correlation ρ^|t_i − t_j| within each ``group`` at integer ``time``s
    (nlme's ``corAR1(form = ~ time | group)``); ``time=None``: the rows' order within
    the group; ``group=None``: all rows one series."""

    time: str | None = None
    group: str | None = None

    def __str__(self) -> str:
        within = f" within {self.group}" if self.group else ""
        return f"AR(1){within} over {self.time or 'row order'}"


def cor_ar1(time: str | None = None, group: str | None = None) -> CorAR1:
    """nlme's ``corAR1(form = ~ time | group)`` for ``lmer(..., correlation=...)``."""
    for name, value in (("time", time), ("group", group)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"cor_ar1({name}=...) takes a column name, got {value!r}")
    return CorAR1(time, group)


@dataclasses.dataclass(frozen=True)
class Series:
    """The rows of a design sorted by (series, time), and each row's lag to its
    predecessor in its series (0 for a series' first row)."""

    order: np.ndarray
    lags: np.ndarray
    n_series: int


def series_of(design: Design, correlation: CorAR1) -> Series:
    """Check ``correlation`` against the kept rows of ``design`` (before any fitting)."""
    if not isinstance(correlation, CorAR1):
        raise ValueError("correlation= takes glmmjax.cor_ar1(time=..., group=...), got "
                         f"{correlation!r}")
    data = design.source_data
    rows = data.loc[design.rows] if data is not None else None
    n = design.nobs
    for name in (correlation.time, correlation.group):
        if name is not None and (rows is None or name not in rows.columns):
            raise DataError(f"cor_ar1: column {name!r} is not in data; columns: "
                            f"{list(data.columns)[:10] if data is not None else []}")
    if correlation.group is None:
        codes = np.zeros(n, dtype=np.int64)
    else:
        column = rows[correlation.group]
        if column.isna().any():
            raise DataError(f"cor_ar1: group column {correlation.group!r} has missing values "
                            "in rows the model uses")
        codes = pd.factorize(column, sort=True)[0].astype(np.int64)
    if correlation.time is None:
        times = np.zeros(n)
        for code in np.unique(codes):
            where = codes == code
            times[where] = np.arange(where.sum())
    else:
        raw = rows[correlation.time]
        if not pd.api.types.is_numeric_dtype(raw) or raw.isna().any():
            raise DataError(f"cor_ar1: time column {correlation.time!r} must be numeric "
                            "with no missing values in the rows the model uses")
        times = raw.to_numpy(dtype=np.float64)
        if np.any(times != np.round(times)) or not np.all(np.isfinite(times)):
            raise DataError(
                f"cor_ar1: time column {correlation.time!r} must hold integer times (nlme's "
                "corAR1); e.g. days or visit numbers")
    order = np.lexsort((times, codes))
    sorted_codes, sorted_times = codes[order], times[order]
    same = np.append(False, sorted_codes[1:] == sorted_codes[:-1])
    lags = np.where(same, np.append(0.0, np.diff(sorted_times)), 0.0)
    if np.any(same & (lags == 0)):
        where = int(np.flatnonzero(same & (lags == 0))[0])
        raise DataError(
            f"cor_ar1: time {sorted_times[where]:g} appears twice in group "
            f"{_label(rows, correlation.group, order[where])} (times must be unique within "
            "a group, as nlme's corAR1)")
    for term in design.terms:
        refs = term.refs[order]
        mixed = same & (refs != np.append(refs[:1], refs[:-1]))
        if np.any(mixed):
            where = int(np.flatnonzero(mixed)[0])
            raise DataError(
                f"cor_ar1: the random-effects term ({term.spec}) changes level within group "
                f"{_label(rows, correlation.group, order[where])}; residual AR(1) needs each "
                "group (series) nested in every grouping factor (e.g. days within a subject, "
                "stores within a region)")
    if np.any(design.weights != 1.0):
        raise DataError("cor_ar1: prior weights are not supported with a residual "
                        "correlation; fit without weights=")
    return Series(order, lags, int(codes.max()) + 1)


def _lag_correlation(design: Design, series: Series) -> float:
    """A start for ρ: the lag-1 correlation within series of the least-squares residuals
    with each series' mean removed (as a random intercept would), clipped to ±0.9."""
    y = np.asarray(design.response, dtype=np.float64) - design.offset
    X = np.asarray(design.X, dtype=np.float64)
    r = (y - X @ np.linalg.lstsq(X, y, rcond=None)[0])[series.order]
    codes = np.cumsum(series.lags == 0) - 1  # the series of each sorted row
    r = r - (np.bincount(codes, r) / np.bincount(codes))[codes]
    follows = series.lags == 1
    previous = np.append(0, np.arange(len(r) - 1))
    denominator = np.sum(r * r)
    if not np.any(follows) or denominator <= 0:
        return 0.0
    value = np.sum(r[follows] * r[previous][follows]) / denominator * len(r) / np.sum(follows)
    return float(np.clip(value, -0.9, 0.9)) if np.isfinite(value) else 0.0


def _label(rows, group, position) -> str:
    return "(all rows)" if group is None else repr(rows[group].iloc[int(position)])


def whiten(design: Design, series: Series, rho: float) -> tuple[Design, float]:
    """The whitened design (rows in series order) and log|R|."""
    order, lags = series.order, series.lags
    follows = lags > 0
    r = np.where(follows, np.sign(rho) ** lags * np.abs(rho) ** lags, 0.0)
    scale = np.sqrt(1.0 - r * r)
    previous = np.append(0, np.arange(len(order) - 1))  # the row before, in series order

    def apply(values):
        v = np.asarray(values, dtype=np.float64)[order]
        r_ = r.reshape((-1,) + (1,) * (v.ndim - 1))
        s_ = scale.reshape(r_.shape)
        return (v - r_ * v[previous]) / s_

    terms = tuple(dataclasses.replace(t, refs=t.refs[order], z=apply(t.z))
                  for t in design.terms)
    whitened = dataclasses.replace(
        design, X=apply(design.X), response=apply(design.response),
        offset=apply(design.offset), weights=design.weights[order], terms=terms,
        rows=design.rows[order])
    return whitened, float(np.sum(np.log(scale[follows] ** 2)))


@with_x64
def fit_with_ar1(design: Design, reml: bool, correlation: CorAR1, engine, max_iter: int):
    """Fit the LMM of ``design`` with residual AR(1) (see the module docstring)."""
    from ._lmer import check_lmm_response, fit_lmm_design
    from ._results.mixed import warn_if_not_converged, warn_if_singular

    series = series_of(design, correlation)
    if not np.any(series.lags > 0):
        raise DataError("cor_ar1: every group has a single row, so there is no residual "
                        "correlation to estimate")
    check_lmm_response(design)
    profile = _Profile(design, series, reml, max_iter)
    # Brent's search in atanh(ρ) from a bracket around a moment estimate of ρ (a few
    # evaluations fewer than a bounded search from (−4, 4)); where it leaves
    # |atanh ρ| ≤ 4 (|ρ| ≤ 0.9993), the bounded search.
    eta0 = math.atanh(_lag_correlation(design, series))
    try:
        search = scipy.optimize.minimize_scalar(
            profile, bracket=(eta0 - 0.25, eta0 + 0.25), method="brent",
            options={"xtol": 1e-6, "maxiter": 200})
        inside = abs(float(search.x)) <= 4.0 and np.isfinite(search.fun)
    except (ValueError, RuntimeError):
        inside = False
    if not inside:
        search = scipy.optimize.minimize_scalar(profile, bounds=(-4.0, 4.0),
                                                method="bounded",
                                                options={"xatol": 1e-9, "maxiter": 200})
    eta = float(search.x)
    rho = math.tanh(eta)
    # The fit at ρ̂ through lmer's own path (checks, rescaling, engine, results).
    whitened, logdet = whiten(design, series, rho)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit_lmm_design(whitened, reml, engine=engine or "host", max_iter=max_iter,
                                theta0=profile.thetas.get(eta))
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    fields.update(design=design, criterion=result.criterion + logdet,
                  n_params=result.n_params + 1, extra_params={"rho": rho})
    out = AR1ResidualLMMResult(**fields, correlation=correlation, rho=rho,
                               rho_search=search)
    if abs(eta) > 4.0 - 1e-6:
        warnings.warn(f"cor_ar1: rho = {rho:.6f} is at the search's bound |atanh(rho)| = 4",
                      stacklevel=3)
    warn_if_not_converged(out, "lmer")
    warn_if_singular(out)
    return out


class _Profile:
    """The criterion profiled over θ at atanh(ρ) = η: one host LMM fit of the whitened
    data (no results built), warm-started from the last η's θ; cached per η."""

    def __init__(self, design: Design, series: Series, reml: bool, max_iter: int):
        self.design, self.series, self.reml, self.max_iter = design, series, reml, max_iter
        self.values, self.thetas, self.last = {}, {}, None

    def __call__(self, eta: float) -> float:
        eta = float(eta)
        if eta in self.values:
            return self.values[eta]
        from ._engines.lmm_shared import build_structure_for, moment_theta
        from ._engines.seam import fit_lmm
        from ._model.covariance import diagonal_mask

        whitened, logdet = whiten(self.design, self.series, math.tanh(eta))
        structure = build_structure_for(whitened, whitened.X.shape[1] + 1)
        y = np.asarray(whitened.response, dtype=np.float64) - whitened.offset
        theta0 = self.last
        if theta0 is None:
            theta0 = moment_theta(whitened.terms, whitened.X, y, whitened.weights)
        try:
            _, theta, pls, _ = fit_lmm(structure, whitened.weights, whitened.X, y,
                                       self.reml, theta0, engine="host",
                                       max_iter=self.max_iter)
            value = float(pls.criterion) + logdet
        except FloatingPointError:
            theta, value = None, math.inf
        # Warm starts not from the boundary (a zero SD, e.g. at ρ near ±1): the
        # optimizer works on log SDs and would stay there.
        mask = diagonal_mask(structure.structures)
        ok = theta is not None and np.all(np.isfinite(theta)) and np.all(
            np.abs(np.asarray(theta)[mask]) > 1e-6)
        self.last = np.asarray(theta, dtype=np.float64) if ok else None
        if theta is not None:
            self.thetas[eta] = np.asarray(theta, dtype=np.float64)
        self.values[eta] = value if np.isfinite(value) else math.inf
        return self.values[eta]


class _Refused:
    """A method that raises: what it would compute ignores the residual correlation."""

    def __init__(self, what: str):
        self.what = what

    def __get__(self, instance, owner=None):
        what = self.what

        def refused(*args, **kwargs):
            raise NotImplementedError(
                f"{what} is not implemented for a fit with a residual correlation "
                "(cor_ar1); the estimates, fixef SEs (conditional on rho, as nlme's), "
                "loglik, AIC, fitted values and residuals are")

        return refused


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class AR1ResidualLMMResult(LMMResult):
    """An LMM with nlme's residual AR(1) (``rho``: the lag-1 correlation); fitted values
    and residuals are lme's (Xβ + Zb, y minus that, without the AR(1) prediction)."""

    correlation: CorAR1 = None
    rho: float = math.nan
    rho_search: object = None

    profile = _Refused("profile()")
    simulate = _Refused("simulate()")
    refit = _Refused("refit()")
    bootstrap = _Refused("bootstrap()")
    scaled_residuals = _Refused("scaled_residuals()")

    def confint(self, method: str = "wald", level: float = 0.95, parm=None, **kwargs):
        if method != "wald":
            raise NotImplementedError(
                f"confint(method={method!r}) is not implemented with cor_ar1; use "
                "method='wald' (fixed effects)")
        return super().confint(method=method, level=level, parm=parm, **kwargs)

    def coef_table(self, ddf: str | None = None, names: str = "glmmjax") -> pd.DataFrame:
        if ddf is not None:
            raise NotImplementedError(
                f"ddf={ddf!r} is not implemented with cor_ar1 (the t table without "
                "denominator df is)")
        return super().coef_table(names=names)

    def summary(self, ddf: str | None = None, names: str = "glmmjax") -> str:
        text = super().summary(ddf=ddf, names=names)
        marker = "\nNumber of obs:"
        line = f"\nCorrelation structure: {self.correlation}, rho {self.rho:.4g}"
        return text.replace(marker, line + marker, 1)

