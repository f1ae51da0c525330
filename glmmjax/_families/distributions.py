"""Tail probabilities and quantiles of the normal, t, χ² and F distributions.

The same special functions that ``scipy.stats`` evaluates for these distributions
(``ndtr``, ``stdtr``, ``chdtrc``, ``fdtrc`` and their inverses), called directly:
importing ``scipy.stats`` costs over ten times as much as ``scipy.special`` after
``scipy.linalg`` (benchmarks/README.md), and every fitted result computes p-values. Arguments outside a
distribution's domain give what ``scipy.stats`` gives: NaN for degrees of freedom
≤ 0, survival 1 below the support's lower end. ``scipy.special`` itself is imported on
the first call (0.1–0.2 s: a fit whose p-values nobody asks for does not pay it).
"""

from __future__ import annotations

import numpy as np

from .._lazyjax import lazy_module

special = lazy_module("scipy.special")


def _positive(df):
    df = np.asarray(df, dtype=float)
    return np.where(df > 0, df, np.nan)


def _scalar_or_array(value):
    # ``x[()]`` turns a 0-d result into a NumPy scalar, as scipy.stats returns.
    return value[()]


def norm_sf(x):
    """P(Z > x) for a standard normal Z."""
    return _scalar_or_array(special.ndtr(-np.asarray(x, dtype=float)))


def norm_ppf(q):
    """The standard normal quantile Φ⁻¹(q)."""
    return _scalar_or_array(special.ndtri(np.asarray(q, dtype=float)))


def t_sf(x, df):
    """P(T > x) for Student's t with ``df`` degrees of freedom (``df`` may be inf)."""
    x, df = np.asarray(x, dtype=float), _positive(df)
    return _scalar_or_array(np.where(np.isinf(df), special.ndtr(-x), special.stdtr(df, -x)))


def t_ppf(q, df):
    """Student's t quantile with ``df`` degrees of freedom (``df`` may be inf)."""
    q, df = np.asarray(q, dtype=float), _positive(df)
    # stdtrit(df, 0) is +inf in SciPy 1.17; the quantile at 0 is -inf.
    finite = np.where(q == 0, -np.inf, special.stdtrit(df, q))
    return _scalar_or_array(np.where(np.isinf(df), special.ndtri(q), finite))


def chi2_sf(x, df):
    """P(X > x) for χ² with ``df`` degrees of freedom."""
    x, df = np.asarray(x, dtype=float), _positive(df)
    below = np.where(np.isnan(df), np.nan, 1.0)
    return _scalar_or_array(np.where(x <= 0, below, special.chdtrc(df, x)))


def f_sf(x, dfn, dfd):
    """P(F > x) for F with (``dfn``, ``dfd``) degrees of freedom."""
    x, dfn, dfd = np.asarray(x, dtype=float), _positive(dfn), _positive(dfd)
    below = np.where(np.isnan(dfn + dfd), np.nan, 1.0)
    return _scalar_or_array(np.where(x <= 0, below, special.fdtrc(dfn, dfd, x)))
