"""glmmjax._families.special_numpy (log Γ and ψ₀…ψ₃ in numpy for the host closed forms)
against scipy.special and, near the zeros of log Γ and ψ, mpmath."""

import math
import subprocess
import sys

import numpy as np
import pytest
import scipy.special as sc

from glmmjax._families import math as fm
from glmmjax._families import special_numpy as sn

# From 1e-300 to 1e300, and densely where the recurrence and the series meet (x = 10).
GRID = np.concatenate([np.logspace(-300, 300, 6001), np.linspace(1e-3, 30.0, 30001),
                       np.nextafter(10.0, [0.0, 20.0]), [1.0, 2.0, 1.4616321449683622]])


def _scipy(n, x):
    with np.errstate(all="ignore"):  # scipy's polygamma warns where it overflows to ∞
        if n == -1:
            return sc.gammaln(x)
        return sc.digamma(x) if n == 0 else sc.polygamma(n, x)


def _errors(n, x):
    ours, ref = sn.polygammas(x, (n,))[0], _scipy(n, x)
    finite = np.isfinite(ref)
    np.testing.assert_array_equal(np.isfinite(ours), finite)
    np.testing.assert_array_equal(ours[~finite], ref[~finite])
    return np.abs(ours[finite] - ref[finite]), np.abs(ref[finite])


@pytest.mark.parametrize("n", [1, 2, 3])
def test_polygamma_relative_accuracy(n):
    # Every term of ψₙ (n ≥ 1) has one sign: a few ulp relative everywhere.
    error, size = _errors(n, GRID)
    normal = size > 1e-300  # ψ₂, ψ₃ at 1e300 underflow (both to 0)
    assert np.max(error[normal] / size[normal]) < 4e-15
    assert np.all(error[~normal] < 1e-300)


def test_digamma_accuracy():
    # Relative where |ψ| ≥ 1; near ψ's zero (x ≈ 1.4616) absolute, as ψ(x + 10) − Σ 1/(x + k).
    error, size = _errors(0, GRID)
    assert np.max(error / np.maximum(size, 1.0)) < 3e-15


def test_gammaln_accuracy():
    # log Γ(x + 10) − log(x···(x + 9)) near 1 and 2: both terms ~15, the difference ~0.
    error, size = _errors(-1, GRID[GRID > 1e-300])
    assert np.max(error / np.maximum(size, 1.0)) < 1.5e-14
    error, size = _errors(-1, GRID[GRID > 30.0])
    assert np.max(error / size) < 4e-15


def test_against_mpmath_near_zeros():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    x = np.concatenate([np.linspace(0.9, 2.6, 171), [1.4616321449683622]])
    for n, f in ((-1, mpmath.loggamma), (0, mpmath.digamma)):
        exact = np.array([float(f(mpmath.mpf(float(v)))) for v in x])
        ours = sn.polygammas(x, (n,))[0]
        assert np.max(np.abs(ours - exact)) < (1.5e-14 if n == -1 else 2e-15)


def test_orders_from_one_call_match_separate_calls():
    x = np.random.default_rng(0).gamma(0.7, 4.0, size=(7, 9))
    together = sn.polygammas(x, (-1, 0, 1, 2, 3))
    for n, value in zip((-1, 0, 1, 2, 3), together):
        assert value.shape == x.shape
        np.testing.assert_array_equal(value, sn.polygammas(x, (n,))[0])
    np.testing.assert_array_equal(together[0], sn.gammaln(x))
    np.testing.assert_array_equal(together[1], sn.digamma(x))
    np.testing.assert_array_equal(together[2], sn.polygamma(1, x))


def test_scalars():
    for v in (1e-8, 0.3, 1.0, 2.0, 7.5, 10.0, 123.4, 1e200):
        for n in (-1, 0, 1, 2, 3):
            value = sn.polygammas(v, (n,))[0]
            assert isinstance(value, np.float64)
            ref = float(_scipy(n, v))
            assert abs(value - ref) <= 4e-15 * max(abs(ref), 1.0), (v, n)
    assert sn.gammaln(1.0) == 0.0 and sn.gammaln(2.0) == 0.0


def test_edges_are_scipys():
    # 0, ∞ and NaN (a trial point's overflow) inside an array, and alone.
    x = np.array([0.0, np.inf, np.nan, 2.5, 1e-200, 1e300])
    for n in (-1, 0, 1, 2, 3):
        np.testing.assert_allclose(sn.polygammas(x, (n,))[0], _scipy(n, x), rtol=1e-14)
        for v in (0.0, np.inf, np.nan):
            np.testing.assert_equal(sn.polygammas(v, (n,))[0], _scipy(n, v))
    # Negative arguments are scipy's (reflection), and so are other orders.
    x = np.array([-2.5, -0.5, 0.5, 3.0])
    for n in (-1, 0, 1, 2):
        np.testing.assert_array_equal(sn.polygammas(x, (n,))[0], _scipy(n, x))
    np.testing.assert_array_equal(sn.polygamma(4, x[2:]), sc.polygamma(4, x[2:]))
    assert sn.polygammas(np.zeros((0, 3)), (-1, 0))[0].shape == (0, 3)


def test_no_warnings_at_extremes():
    # Underflow is numpy's silent default; the others would warn.
    with np.errstate(divide="raise", over="raise", invalid="raise"):
        for n in (-1, 0, 1, 2, 3):
            sn.polygammas(np.array([1e-300, 1e-150, 1.0, 1e150, 1e300]), (n,))
            sn.polygammas(np.array([0.0, np.inf, 1.0]), (n,))


def test_other_names_are_scipys():
    assert sn.ndtr is sc.ndtr and sn.betaln is sc.betaln
    with pytest.raises(AttributeError):
        sn.__wrapped__  # noqa: B018


def test_polygamma_table_splits_back():
    a = np.linspace(0.5, 3.0, 6).reshape(2, 3)
    b = np.float64(1.7)
    table = fm.polygamma_table(np, (a, b), (-1, 0, 2))
    for argument, row in zip((a, b), table):
        for n, value in zip((-1, 0, 2), row):
            assert np.shape(value) == np.shape(argument)
            np.testing.assert_allclose(value, _scipy(n, argument), rtol=1e-14, atol=1e-14)


def test_host_closed_forms_do_not_import_scipy_special():
    # The reason for the module: a host fit's first call pays no scipy.special import.
    code = ("import sys, numpy as np\n"
            "from glmmjax._families import math as fm, special_numpy\n"
            "x = np.linspace(0.1, 30.0, 50)\n"
            "special_numpy.polygammas(x, (-1, 0, 1, 2, 3))\n"
            "fm.polygamma_table(np, (x, 2.0), (-1, 0))\n"
            "assert 'scipy.special' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_series_lengths_reach_tolerance():
    # The first omitted term at z = 10 is below 5e-17 of the function (module docstring).
    assert {n: len(c) for n, c in sn._SERIES.items()} == {-1: 7, 0: 7, 1: 9, 2: 10, 3: 11}
    assert math.isclose(sn._SERIES[0][0], -1 / 12)


def test_remembered_terms_follow_the_data():
    # nb2_gamma_terms and data_term compare their arguments by value: an array written to
    # in place, or a new θ, is recomputed; what they return cannot be written to.
    y = np.array([0.0, 1.0, 4.0, 9.0])
    for theta in (0.7, np.array([0.5, 2.0, 3.0, 40.0])):
        for _ in range(2):
            log_gamma, gap, log_fact = fm.nb2_gamma_terms(y, theta, True, log_factorial=True)
            np.testing.assert_allclose(log_gamma, sc.gammaln(y + theta) - sc.gammaln(theta),
                                       rtol=1e-13, atol=1e-13)
            np.testing.assert_allclose(gap, sc.digamma(y + theta) - sc.digamma(theta),
                                       rtol=1e-13, atol=1e-13)
            np.testing.assert_allclose(log_fact, sc.gammaln(y + 1.0), atol=1e-13)
            y[2] += 1.0
        with pytest.raises(ValueError):
            log_gamma += 1.0
    counts = np.array([0.0, 2.0, 5.0])
    first = fm.log_factorial(np, counts)
    counts[1] = 3.0
    np.testing.assert_allclose(fm.log_factorial(np, counts), sc.gammaln(counts + 1.0),
                               atol=1e-13)
    assert first[1] == pytest.approx(math.log(2.0))
