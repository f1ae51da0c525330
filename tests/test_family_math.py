"""The closed-form row terms of every built-in family and link (:mod:`glmmjax._families.math`)
against autodiff of the family's own log-likelihood (``Family.loglik_eta``): the value
(plus the η- and dispersion-free constant), ℓ', W = −ℓ'', W' = −ℓ''' and the derivatives
of ℓ, ℓ' and W in the log of the dispersion, on seeded random inputs, with numpy (the
host engine) and with jax.numpy (the compiled one). A failure names the family and link.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glmmjax._families import math as fm
from glmmjax._families.base import FAMILIES

# (family, link, dispersion, η range) for every family and each of its allowed links.
_ETA = {
    "positive": (0.3, 3.0),  # links whose inverse needs η > 0 (and a positive mean)
    "log": (-2.0, 2.5),
    "unit": (-4.0, 4.0),
    "identity_unit": (0.05, 0.95),
    "log_unit": (-3.0, -0.05),
}


def _cases():
    cases = []
    for key, cls in FAMILIES.items():
        for link in cls.allowed_links or ("identity", "log", "inverse", "logit", "probit"):
            unit = key in ("binomial", "beta", "betabinomial", "ordbeta")
            if unit:
                rng = {"identity": "identity_unit", "log": "log_unit"}.get(link, "unit")
            elif link == "log" or (key in ("gaussian", "t_family")
                                   and link in ("identity", "logit", "probit")):
                rng = "log" if link == "log" else "unit"
            else:
                rng = "positive"
            dispersion = {"gaussian": 0.7, "gamma": 0.4, "inverse_gaussian": 0.3,
                          "negative_binomial": 2.5, "beta": 6.0, "nbinom1": 1.7,
                          "truncated_nbinom2": 1.3, "truncated_nbinom1": 0.8,
                          "genpois": 1.6, "betabinomial": 4.0, "lognormal": 0.9,
                          "t_family": 0.8, "tweedie": 1.3, "compois": 0.7,
                          "ordbeta": 5.0}.get(key)
            # compois traces Newton and its series through three nested jvps (7-17 s):
            # slow; its numpy partials are checked fast by central differences
            # (tests/test_glmm_tmb20.py).
            marks = pytest.mark.slow if key == "compois" else ()
            cases.append(pytest.param(key, link, dispersion, _ETA[rng], id=f"{key}-{link}",
                                      marks=marks))
    return cases


def _data(key, n, rng):
    if key.startswith("truncated"):
        return rng.poisson(2.0, n).astype(float) + 1.0, rng.uniform(0.5, 2.0, n)
    if key in ("binomial", "betabinomial"):
        trials = rng.integers(1, 6, n).astype(float)
        successes = np.minimum(rng.integers(0, 6, n), trials)
        successes[:2], successes[2:4] = 0, trials[2:4]
        return successes / trials, trials
    if key == "ordbeta":
        y = rng.uniform(0.05, 0.95, n)
        y[:2], y[2:4] = 0.0, 1.0
        return y, rng.uniform(0.5, 2.0, n)
    if key in ("poisson", "negative_binomial", "nbinom1", "genpois", "compois"):
        y = rng.poisson(2.0, n).astype(float)
        y[:2] = 0.0
        return y, rng.uniform(0.5, 2.0, n)
    if key == "beta":
        return rng.uniform(0.05, 0.95, n), rng.uniform(0.5, 2.0, n)
    if key == "tweedie":
        y = rng.gamma(2.0, 1.5, n) * (rng.uniform(size=n) > 0.3)
        y[:2] = 0.0
        return y, rng.uniform(0.5, 2.0, n)
    if key in ("gaussian", "t_family"):
        return rng.normal(1.0, 1.0, n), rng.uniform(0.5, 2.0, n)
    return rng.gamma(2.0, 1.0, n), rng.uniform(0.5, 2.0, n)


@pytest.mark.parametrize("key, link, dispersion, eta_range", _cases())
def test_row_terms_equal_autodiff(key, link, dispersion, eta_range):
    # fixed df / power / cutpoints
    shape = {"t_family": 4.0, "tweedie": 1.4, "ordbeta": (-1.0, 1.2)}.get(key)
    family = FAMILIES[key](link=link) if shape is None else FAMILIES[key](shape, link=link)
    rng = np.random.default_rng(sum(map(ord, key + link)))
    n = 12
    y, weights = _data(key, n, rng)
    eta = rng.uniform(*eta_range, n)
    estimated = dispersion is not None
    with jax.enable_x64(True):
        yj, wj = jnp.asarray(y), jnp.asarray(weights)

        def ll(e, log_disp):
            disp = None if dispersion is None else jnp.exp(log_disp)
            return family.loglik_eta(yj, e, wj, disp)

        e0, psi0 = jnp.asarray(eta), jnp.log(dispersion if estimated else 1.0)
        ones = jnp.ones_like(e0)
        d1 = lambda e, p: jax.jvp(lambda x: ll(x, p), (e,), (ones,))[1]  # noqa: E731
        d2 = lambda e, p: jax.jvp(lambda x: d1(x, p), (e,), (ones,))[1]  # noqa: E731
        d3 = lambda e, p: jax.jvp(lambda x: d2(x, p), (e,), (ones,))[1]  # noqa: E731
        expected = dict(value=ll(e0, psi0), d1=d1(e0, psi0), w=-d2(e0, psi0), w1=-d3(e0, psi0))
        if estimated:
            one = jnp.ones(())
            for name, f in (("value_psi", ll), ("d1_psi", d1), ("w_psi", lambda e, p: -d2(e, p))):
                expected[name] = jax.jvp(lambda p, f=f: f(e0, p), (psi0,), (one,))[1]
        expected = {k: np.asarray(v, dtype=np.float64) for k, v in expected.items()}
        total = float(np.sum(expected.pop("value")))
        # The same text with numpy (host engine) and jax.numpy (compiled engine).
        for xp in (np, jnp):
            terms = fm.row_terms(family, xp, xp.asarray(y), xp.asarray(eta), xp.asarray(weights),
                                 dispersion, third=True, dispersion_derivatives=estimated)
            constant = float(fm.loglik_constant(family, xp, xp.asarray(y), xp.asarray(weights)))
            got = {k: None if v is None else np.asarray(v, dtype=np.float64)
                   for k, v in terms._asdict().items()}
            where = f"{key}-{link} ({xp.__name__})"
            np.testing.assert_allclose(np.sum(got["value"]) + constant, total, rtol=1e-12,
                                       err_msg=f"{where}: value")
            for name, want in expected.items():
                np.testing.assert_allclose(got[name], want, rtol=1e-8,
                                           atol=1e-10 * (1 + np.max(np.abs(want))),
                                           err_msg=f"{where}: {name}")


def test_tails_stay_finite():
    """Binomial with each unit link far into both tails: finite terms, and W ≥ 0 for
    the log-concave links (the cauchit likelihood is not concave in its tails)."""
    eta = np.r_[-40.0, -30.0, -8.0, 8.0, 30.0, 40.0]
    y, weights = np.r_[0.0, 1.0, 0.0, 1.0, 0.0, 1.0], np.ones(6)
    for link in ("logit", "probit", "cloglog", "loglog", "cauchit"):
        family = FAMILIES["binomial"](link=link)
        terms = fm.row_terms(family, np, y, eta, weights, third=True)
        for name in ("value", "d1", "w", "w1"):
            assert np.all(np.isfinite(getattr(terms, name))), (link, name)
        assert link == "cauchit" or np.all(terms.w >= 0), link


def test_user_defined_family_is_not_covered():
    from glmmjax.families import Poisson

    class MyPoisson(Poisson):
        pass

    assert fm.supported(Poisson()) and not fm.supported(MyPoisson())


@pytest.mark.parametrize("key", ["t_family", "tweedie"])
def test_estimated_shape_terms_equal_autodiff(key):
    """Student-t with ν and Tweedie with p estimated: the derivatives in log φ (σ) and
    in the shape's outer parameter (log ν; logit(p − 1)), stacked rows."""
    from glmmjax._families import math_tmb as tmb
    from glmmjax.families import StudentT, Tweedie

    rng = np.random.default_rng(5)
    n = 12
    weights = rng.uniform(0.5, 2, n)
    if key == "t_family":
        family, disp, shape = StudentT(), 1.3, 3.5
        y, eta = rng.standard_t(3, n) * 2 + 1, rng.normal(1, 1, n)
        to_shape, from_shape = jnp.exp, np.log

        def value(y, e, log_disp, s, w):
            return tmb.student_t_value(jnp, y, e, log_disp, w, s)
    else:
        family, disp, shape = Tweedie(), 1.3, 1.45
        y = rng.gamma(2.0, 1.5, n) * (rng.uniform(size=n) > 0.3)
        eta = rng.normal(0.5, 0.5, n)

        def to_shape(xi):
            return 1.0 + jax.nn.sigmoid(xi)

        def from_shape(p):
            return np.log((p - 1.0) / (2.0 - p))

        def value(y, e, log_disp, s, w):
            return tmb.tweedie_value(jnp, y, e, log_disp, s, w, n_terms=tmb.TWEEDIE_TERMS)

    with jax.enable_x64(True):
        yj, wj = jnp.asarray(y), jnp.asarray(weights)

        def ll(e, log_disp, kappa):
            return value(yj, e, log_disp, to_shape(kappa), wj)

        e0, ls, ln = jnp.asarray(eta), jnp.log(disp), jnp.asarray(from_shape(shape))
        ones = jnp.ones_like(e0)
        d1 = lambda e, a, b: jax.jvp(lambda x: ll(x, a, b), (e,), (ones,))[1]  # noqa: E731
        d2 = lambda e, a, b: jax.jvp(lambda x: d1(x, a, b), (e,), (ones,))[1]  # noqa: E731
        one = jnp.ones(())
        expected = {}
        for name, f in (("value_psi", ll), ("d1_psi", d1), ("w_psi", lambda *a: -d2(*a))):
            expected[name] = np.stack([
                np.asarray(jax.jvp(lambda a, f=f: f(e0, a, ln), (ls,), (one,))[1]),
                np.asarray(jax.jvp(lambda b, f=f: f(e0, ls, b), (ln,), (one,))[1])])
        for xp in (np, jnp):
            terms = fm.row_terms(family, xp, xp.asarray(y), xp.asarray(eta),
                                 xp.asarray(weights), xp.asarray([disp, shape]), third=True,
                                 dispersion_derivatives=True)
            for name, want in expected.items():
                np.testing.assert_allclose(np.asarray(getattr(terms, name)), want, rtol=1e-8,
                                           atol=1e-10, err_msg=f"{key} {name} ({xp.__name__})")


def test_student_t_scalar_special_functions_match_scipy():
    # One host ν: log Γ ratio by math.lgamma and ψ by recurrence and series
    # (glmmjax._families.special_numpy: no scipy.special import on a Student-t fit); both
    # as scipy's to rounding, across ν's range.
    import scipy.special as sp

    from glmmjax._families import math_tmb as mt
    from glmmjax._families import special_numpy as sn

    for x in np.concatenate([np.geomspace(1e-3, 1e7, 400), [0.5, 1.0, 2.5, 9.99, 10.0]]):
        want = sp.digamma(x)
        assert abs(sn.digamma(float(x)) - want) <= 4e-15 * max(1.0, abs(want)), x
    for df in (0.3, 2.0, 5.0, 37.5, 300.0):  # (larger ν: both lose digits to cancellation)
        for fn, reference in ((mt._t_log_gamma_ratio,
                               lambda v: sp.gammaln((v + 1) / 2) - sp.gammaln(v / 2)),
                              (mt._t_digamma_difference,
                               lambda v: sp.digamma((v + 1) / 2) - sp.digamma(v / 2))):
            scalar, array = fn(np, np.float64(df)), fn(np, np.array([df]))[0]
            np.testing.assert_allclose(scalar, reference(df), rtol=1e-13, atol=1e-14)
            np.testing.assert_allclose(array, reference(df), rtol=1e-13, atol=1e-14)
