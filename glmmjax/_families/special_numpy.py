"""The special functions of the host engines' closed forms, in numpy: log Γ and the
polygamma functions ψ, ψ₁, ψ₂, ψ₃, several of them from one pass.

Why not ``scipy.special``: importing it costs ~30 ms of CPU (scipy 1.17 rewrites the
docstrings of ~90 functions at import), which every host GLMM paid on its first fit
(fits of 40–150 ms), and its ``polygamma`` is a Hurwitz ζ at ~0.2 µs an element, the
largest single cost of an NB1 fit. What this module does not define (the normal CDF and
its inverse for the probit link, ``betaln`` at large arguments, ...) is ``scipy.special``'s,
imported on first use: ``special_numpy.ndtr`` is ``scipy.special.ndtr``.

How. Below 10 the recurrence ψₙ(x) = ψₙ(x + 1) + (−1)ⁿ⁺¹ n!/xⁿ⁺¹ (log Γ(x) =
log Γ(x + 1) − log x) raises the argument by 10, and at z ≥ 10 the asymptotic (Stirling)
series is summed until the first omitted term is below 5e-17 of the function (Abramowitz &
Stegun 6.1.41, 6.3.18, 6.4.11). The ten recurrence terms are taken in pairs
(x + k, x + 9 − k), whose product is u + k(9 − k) with u = x(x + 9), so that a pair costs
about one division; each pair's sum is of positive terms. On a family's arrays numpy's
cost is per call, not per element, so :func:`polygammas` evaluates several orders from one
shared recurrence (the five pairs as one (5, n) array, every order's series as one matrix
product), and callers concatenate their arguments into one call
(:func:`glmmjax._families.math.polygamma_table`). One float (a scalar dispersion) takes
Python's floats instead.

Accuracy against scipy and mpmath (tests/test_special_numpy.py): ψ₁…ψ₃ within a few ulp;
ψ within ~1e-15 absolute near its zero and a few ulp elsewhere; log Γ within ~1e-14
absolute near its zeros at 1 and 2 (both terms of log Γ(x + 10) − log(x···(x + 9)) are
~15 there) and a few ulp elsewhere, from 1e-300 to 1e300.

At 0, ∞ and NaN (trial points of a fit that over- or underflow) the values are scipy's
limits; an array with a negative element, which the families do not meet, is handed to
``scipy.special`` whole.
"""

from __future__ import annotations

import functools
import importlib
import math

import numpy as np

_SHIFT = 10.0  # the recurrence raises x < 10 to z = x + 10 >= 10
# (x + k)(x + 9 − k) = u + k(9 − k), u = x(x + 9), k = 1..4 (k = 0 is u itself).
_PAIR_OFFSETS = (8.0, 14.0, 18.0, 20.0)
_CHUNK = 4096  # elements evaluated together (see _polygammas)
_PAIR_OFFSETS_COLUMN = np.array((0.0,) + _PAIR_OFFSETS)[:, None]
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_TOLERANCE = 5e-17  # the first omitted series term, relative to the function, at z = 10
_SCALAR_LOW = 1e-8  # one element at least this large: Python floats (no over/underflow)
# Arguments outside these bounds may over- or underflow an intermediate (to a result that
# is ±∞ or exact, as scipy's): numpy's warnings are silenced there.
_QUIET_LOW, _QUIET_HIGH = 1e-100, 1e300

# Bernoulli numbers B₂, B₄, ..., B₂₄.
_BERNOULLI = (1 / 6, -1 / 30, 1 / 42, -1 / 30, 5 / 66, -691 / 2730, 7 / 6, -3617 / 510,
              43867 / 798, -174611 / 330, 854513 / 138, -236364091 / 2730)


def _terms(n: int) -> tuple[float, ...]:
    """The coefficients aₖ of the asymptotic series of ψₙ in w = 1/z², k = 1, 2, ...:
    n = −1 (log Γ): Σ B₂ₖ/(2k(2k − 1)) z^(1−2k) = (1/z)·Σ aₖ w^(k−1);
    n = 0: −Σ B₂ₖ/(2k) z^(−2k) = Σ aₖ wᵏ;
    n ≥ 1: (−1)ⁿ⁺¹ Σ B₂ₖ (2k + n − 1)!/(2k)! z^(−2k−n) = z⁻ⁿ·Σ aₖ wᵏ;
    up to the first whose term at z = 10 is below _TOLERANCE of the function there."""
    z = _SHIFT
    if n == -1:
        size = (z - 0.5) * math.log(z) - z
        terms = [(b / (2 * k * (2 * k - 1)), z ** (1 - 2 * k))
                 for k, b in enumerate(_BERNOULLI, 1)]
    elif n == 0:
        size = math.log(z)
        terms = [(-b / (2 * k), z ** (-2 * k)) for k, b in enumerate(_BERNOULLI, 1)]
    else:
        size = math.factorial(n - 1) / z**n
        sign = (-1) ** (n + 1)
        terms = [(sign * b * math.factorial(2 * k + n - 1) / math.factorial(2 * k),
                  z ** (-2 * k - n)) for k, b in enumerate(_BERNOULLI, 1)]
    kept = next(k for k, (a, power) in enumerate(terms) if abs(a) * power < _TOLERANCE * size)
    return tuple(a for a, _ in terms[:kept])


_SERIES = {n: _terms(n) for n in (-1, 0, 1, 2, 3)}
# ψₙ(+0) and ψₙ(∞), n = −1..3, as scipy's.
_AT_ZERO = {-1: math.inf, 0: -math.inf, 1: math.inf, 2: -math.inf, 3: math.inf}
_AT_INFINITY = {-1: math.inf, 0: math.inf, 1: 0.0, 2: 0.0, 3: 0.0}


def _scipy():
    return importlib.import_module("scipy.special")


def __getattr__(name: str):
    """What this module does not define is ``scipy.special``'s (imported on first use)."""
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(_scipy(), name)


def _scipy_polygamma(n: int, x):
    sc = _scipy()
    if n == -1:
        return sc.gammaln(x)
    return sc.digamma(x) if n == 0 else sc.polygamma(n, x)


def _horner(coefficients, w):
    acc = coefficients[-1]
    for c in coefficients[-2::-1]:
        acc = acc * w + c
    return acc


def _scalar(n: int, x: float) -> float:
    """ψₙ(x) for one float x ≥ 1e-8 (n = −1: ``math.lgamma``): the recurrence and series
    above without the pairs (a numpy call on one element costs ~20 times more)."""
    if n == -1:
        return math.lgamma(x)
    shift = 0.0
    sign = (-1.0) ** (n + 1)
    scale = float(math.factorial(n))
    while x < _SHIFT:
        shift += sign * scale / x ** (n + 1)
        x += 1.0
    r = 1.0 / x
    w = r * r
    if n == 0:
        return shift + math.log(x) - 0.5 * r + _horner(_SERIES[0], w) * w
    lead = sign * (math.factorial(n - 1) + 0.5 * scale * r)
    return shift + (lead + _horner(_SERIES[n], w) * w) * r**n


def polygammas(x, orders) -> tuple:
    """(ψₙ(x) for n in ``orders``), n = −1 (log Γ, the polygamma of order −1), 0 (ψ), 1, 2
    or 3, from one recurrence; at x = 0, ∞ and NaN scipy's values. Other orders, and
    arrays with a negative element (or −0), are ``scipy.special``'s."""
    x = np.asarray(x, dtype=float)
    if any(n not in _SERIES for n in orders):
        return tuple(_scipy_polygamma(n, x) for n in orders)
    if x.size == 0:
        return tuple(np.empty_like(x) for _ in orders)
    low, high = x.min(), x.max()
    if x.ndim == 0 and _SCALAR_LOW <= low < math.inf:
        return tuple(np.float64(_scalar(n, float(x))) for n in orders)
    if low > 0.0 and high < math.inf:
        if low < _QUIET_LOW or high > _QUIET_HIGH:
            # An intermediate over- or underflows where the result is ±∞ or exact, as
            # scipy's is.
            with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
                out = _polygammas(x, orders)
        else:
            out = _polygammas(x, orders)
    elif np.any(np.signbit(x) & ~np.isnan(x)):
        return tuple(_scipy_polygamma(n, x) for n in orders)
    else:
        # 0, ∞ or NaN (a trial point's overflow, e.g. NB1's size e^(x − ψ)): computed at
        # 1, then given scipy's limits.
        regular = (x > 0.0) & (x < math.inf)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            out = _polygammas(np.where(regular, x, 1.0), orders)
        out = [np.where(regular, value,
                        np.where(x == 0.0, _AT_ZERO[n], np.where(x > 0.0, _AT_INFINITY[n],
                                                                 np.nan)))
               for n, value in zip(orders, out)]
    return tuple(value[()] for value in out) if x.ndim == 0 else tuple(out)


def _polygammas(x: np.ndarray, orders) -> list:
    flat = x.reshape(-1)
    if flat.size > _CHUNK:
        # In pieces: the (5, n) and (K, n) intermediates of a long array leave the cache
        # (n = 6000: 16× the time of n = 1288 for 4.7× the elements; in pieces, 4×).
        out = [np.empty(flat.size) for _ in orders]
        for start in range(0, flat.size, _CHUNK):
            part = slice(start, start + _CHUNK)
            for target, value in zip(out, _polygammas(flat[part], orders)):
                target[part] = value
        return [value.reshape(x.shape) for value in out]
    small = flat < _SHIFT
    z = np.where(small, flat + _SHIFT, flat)
    xs = np.where(small, flat, 1.0)  # 1 where unshifted: the unused recurrence stays finite
    u = xs * (xs + (_SHIFT - 1.0))
    pairs = u + _PAIR_OFFSETS_COLUMN  # (5, n): the products (x + k)(x + 9 − k)
    r = 1.0 / z
    w = r * r
    # Every order's series Σ aₖ wᵏ from one product: powers w¹…w^K (K, n), coefficients
    # (orders, K). On a family's arrays numpy's cost is per call: a Horner loop would
    # take 2K calls an order.
    coefficients, width = _series_matrix(tuple(orders))
    powers = np.empty((width, flat.size))
    powers[0] = w
    for k in range(1, width):  # (numpy's multiply.accumulate along axis 0 is ~30× slower)
        np.multiply(powers[k - 1], w, out=powers[k])
    series = coefficients @ powers
    log_z = np.log(z) if -1 in orders or 0 in orders else None
    s = 2.0 * xs + (_SHIFT - 1.0)  # a + b of a pair (a, b) = (x + k, x + 9 − k)
    s2 = s * s
    out = []
    for n, tail in zip(orders, series):
        if n == -1:
            # log Γ(z) − log(x(x + 1)···(x + 9)); Σ aₖ z^(1−2k) = a₁/z + (1/z)·Σ aₖ₊₁wᵏ.
            value = ((z - 0.5) * (log_z - 1.0) + (_HALF_LOG_2PI - 0.5)
                     + (_SERIES[-1][0] + tail) * r)
            shifted = value - np.log(np.multiply.reduce(pairs, axis=0))
        elif n == 0:
            # Σₖ 1/(x + k) = (2x + 9)·Σ_pairs 1/v.
            value = log_z - 0.5 * r + tail
            shifted = value - s * np.add.reduce(1.0 / pairs, axis=0)
        else:
            # Σₖ (x + k)^−(n+1) by pairs, v = ab: a⁻² + b⁻² = (s² − 2v)/v²,
            # a⁻³ + b⁻³ = s(s² − 3v)/v³, a⁻⁴ + b⁻⁴ = ((s² − 2v)² − 2v²)/v⁴, each
            # numerator at least half the sum of its positive terms.
            v2 = pairs * pairs
            if n == 1:
                total = np.add.reduce((s2 - 2.0 * pairs) / v2, axis=0)
            elif n == 2:
                total = s * np.add.reduce((s2 - 3.0 * pairs) / (v2 * pairs), axis=0)
            else:
                q = s2 - 2.0 * pairs
                total = np.add.reduce((q * q - 2.0 * v2) / (v2 * v2), axis=0)
            sign = (-1.0) ** (n + 1)
            factorial = float(math.factorial(n))
            lead = sign * (math.factorial(n - 1) + 0.5 * factorial * r)
            value = (lead + tail) * r**n
            shifted = value + sign * factorial * total
        out.append(np.where(small, shifted, value).reshape(x.shape))
    return out


@functools.lru_cache(maxsize=32)
def _series_matrix(orders: tuple) -> tuple[np.ndarray, int]:
    """(A, K): Aₙₖ the coefficient of wᵏ (k = 1..K) in the series of ψₙ for each order
    (log Γ's shifted by one: its first coefficient multiplies 1/z)."""
    rows = [_SERIES[n][1:] if n == -1 else _SERIES[n] for n in orders]
    width = max(len(row) for row in rows)
    matrix = np.zeros((len(orders), width))
    for i, row in enumerate(rows):
        matrix[i, : len(row)] = row
    return matrix, width


def gammaln(x):
    """log |Γ(x)| (``scipy.special.gammaln``)."""
    return polygammas(x, (-1,))[0]


def digamma(x):
    """ψ(x) = d log Γ(x)/dx (``scipy.special.digamma``)."""
    return polygammas(x, (0,))[0]


def polygamma(n: int, x):
    """ψₙ(x), the n-th derivative of ψ (``scipy.special.polygamma``)."""
    return polygammas(x, (n,))[0]
