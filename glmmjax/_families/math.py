"""Per-row log-likelihood terms of every built-in family and link, written once for
``numpy`` and ``jax.numpy``.

The GLMM engines need, per observation and as functions of the linear predictor η,

    ℓ,  ℓ',  W = −ℓ'',  W' = −ℓ'''      (the inner Newton and the Laplace gradient)

and, for a family with an estimated dispersion φ, the derivatives in ψ = log φ of
ℓ, ℓ' and W. They are written here in closed form against an array module ``xp``
(``numpy`` on the host engine, ``jax.numpy`` in the compiled one), so one text serves
both engines and a kernel-level test (tests/test_family_math.py) checks every family
and link against autodiff of :meth:`glmmjax.families.Family.loglik_eta`.

How. Each family's ℓ is written in the variable in which it is simplest and stays
accurate in the tails, and the link supplies that variable's derivatives in η:

- unit-interval families (binomial, beta): A = log μ and B = log(1 − μ), so that
  1 − μ is never formed by subtraction (binomial-logit at η = 40 keeps its W);
- positive families (Poisson, negative binomial, Gamma, inverse Gaussian): m = log μ
  (the log link gives m = η exactly);
- the Gaussian with a non-identity link: μ itself.

Then ℓ' = f₁x₁, ℓ'' = f₂x₁² + f₁x₂, ℓ''' = f₃x₁³ + 3f₂x₁x₂ + f₁x₃ for ℓ = f(x(η)).

``value`` leaves out :func:`loglik_constant` (free of η and φ: log binomial
coefficients, −log y!), computed once per fit. User-defined families and links are
not covered (:func:`supported` says so) and go through autodiff in the compiled engine.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

_LOG_2PI = math.log(2.0 * math.pi)
_HALF_LOG_2PI = 0.5 * _LOG_2PI

# Families and links by class name (the classes live in modules that import JAX; this
# module does not, so a host fit can use it without tracing anything).
_FAMILIES = ("Binomial", "Poisson", "NegativeBinomial", "Gamma", "InverseGaussian",
             "Gaussian", "Beta")
_LINKS = ("Identity", "Log", "Logit", "Probit", "Cloglog", "Loglog", "Cauchit", "Inverse",
          "InverseSquared", "Sqrt")
_UNIT_FAMILIES = ("Binomial", "Beta")
_POSITIVE_FAMILIES = ("Poisson", "NegativeBinomial", "Gamma", "InverseGaussian")
_POWER_OF_LOG = {"Identity": 1.0, "Sqrt": 2.0, "Inverse": -1.0, "InverseSquared": -0.5}


class RowTerms(NamedTuple):
    """Per-row terms in η; ``w1`` and the dispersion terms are None unless asked for."""

    value: object  # ℓ without loglik_constant
    d1: object  # ℓ'
    w: object  # W = −ℓ''
    w1: object = None  # W' = −ℓ'''
    value_psi: object = None  # ∂ℓ/∂ψ, ψ = log dispersion
    d1_psi: object = None  # ∂ℓ'/∂ψ
    w_psi: object = None  # ∂W/∂ψ


def _builtin(obj, names) -> bool:
    cls = type(obj)
    return cls.__name__ in names and cls.__module__.startswith("glmmjax.")


def supported(family) -> bool:
    """Whether this module has the closed forms of ``family`` with its link (built-in
    families and links only; a subclass of either is the user's and is not covered).
    glmmTMB's families are in :mod:`glmmjax._families.math_tmb`."""
    return _supported_types(type(family), type(family.link))


@functools.lru_cache(maxsize=64)
def _supported_types(family_type, link_type) -> bool:
    """:func:`supported` by the classes alone (asked at every row-terms evaluation)."""
    from .math_tmb import FAMILIES as TMB_FAMILIES

    def builtin(cls, names):
        return cls.__name__ in names and cls.__module__.startswith("glmmjax.")

    return builtin(family_type, _FAMILIES + tuple(TMB_FAMILIES)) and builtin(link_type, _LINKS)


def link_supported(link) -> bool:
    """Whether this module has the closed forms of the (built-in) ``link``."""
    return _builtin(link, _LINKS)


def variance(family, xp, mu, dispersion=None):
    """The variance function V(μ) of the built-in families of :mod:`.base` (their
    ``variance``; Var y = scale·V(μ)/w), or None for any other family."""
    if not _builtin(family, _FAMILIES):
        return None
    name = type(family).__name__
    if name == "Gaussian":
        return xp.ones_like(mu)
    if name in _UNIT_FAMILIES:
        return mu * (1.0 - mu)
    if name == "Poisson":
        return mu
    if name == "Gamma":
        return mu * mu
    if name == "InverseGaussian":
        return mu**3
    theta = family.theta if dispersion is None else dispersion  # NegativeBinomial
    if theta is None:
        raise ValueError("NegativeBinomial(theta=None) needs a dispersion value")
    return mu + mu * mu / theta


def special(xp):
    """The special functions matching the array module: for numpy
    :mod:`glmmjax._families.special_numpy` (log Γ and ψ₀…ψ₃ in numpy, the rest
    ``scipy.special``'s, imported on first use), for jax.numpy JAX's."""
    if xp is np:
        from . import special_numpy

        return special_numpy
    import jax.scipy.special

    return jax.scipy.special


def polygamma_table(xp, arguments, orders) -> list:
    """[[ψₙ(a) for n in ``orders``] for a in ``arguments``], ψ₋₁ = log Γ, ψ₀ = ψ.

    On the host one :func:`glmmjax._families.special_numpy.polygammas` call over the
    arguments flattened and concatenated: on a family's few hundred rows numpy's cost is
    per call, not per element, and the orders share one recurrence. In JAX one call per
    function and argument (XLA fuses them)."""
    sp = special(xp)
    if xp is not np:
        table = {-1: sp.gammaln, 0: sp.digamma}
        return [[table[n](a) if n in table else sp.polygamma(n, a) for n in orders]
                for a in arguments]
    arrays = [np.asarray(a, dtype=np.float64) for a in arguments]
    values = sp.polygammas(np.concatenate([a.reshape(-1) for a in arrays]), orders)
    out, start = [], 0
    for a in arrays:
        stop = start + a.size
        out.append([v[start] if a.ndim == 0 else v[start:stop].reshape(a.shape)
                    for v in values])
        start = stop
    return out


def _stop_gradient(xp, x):
    if xp is np:
        return x
    import jax

    return jax.lax.stop_gradient(x)


def count_times_log(count, log_p, xp=None):
    """``count · log_p`` with 0 · (−∞) = 0, differentiable in the count at 0.

    A mask on the product (``where(count > 0, count · log_p, 0)``) would give the
    count a zero derivative at 0 and at the binomial's upper edge, where data
    gradients (d log L / d y) need ``log_p``; masking only the non-finite factor
    keeps both the value and those gradients right."""
    if xp is None:
        import jax.numpy as xp
    safe = xp.where((count == 0) & ~xp.isfinite(log_p), 0.0, log_p)
    return count * safe


def log_binomial_coefficient(xp, trials, successes, log_gammas=None):
    """log C(trials, successes), log-gamma-extended to non-integer counts (not rounded:
    R's IRLS and statsmodels use such counts as they are). C(n, 0) = C(n, n) = 1 exactly,
    which keeps 0/1 data free of log-gamma rounding (that would swamp log-likelihoods of
    order 1e-14 deep in a tail); the exact zero there keeps its derivative in the data.
    ``log_gammas``: log Γ of (n + 1, s + 1, n − s + 1) where the caller has them."""
    if log_gammas is None:
        log_gammas = [row[0] for row in polygamma_table(
            xp, (trials + 1.0, successes + 1.0, trials - successes + 1.0), (-1,))]
    lg_n, lg_s, lg_f = log_gammas
    log_choose = lg_n - lg_s - lg_f
    edge = (successes == 0) | (successes == trials)
    return xp.where(edge, log_choose - _stop_gradient(xp, log_choose), log_choose)


def loglik_constant(family, xp, y, weights):
    """Σ (ℓ − value): the part of the log-likelihood free of η and the dispersion."""
    name = type(family).__name__
    if name == "Binomial":
        if xp is np:
            # Host engine: only rows with 0 < successes < trials add anything (none for
            # 0/1 data); log-gamma over 10⁶ rows was a tenth of a large GLM's fit.
            trials, successes = np.broadcast_arrays(weights, weights * y)
            inner = (successes != 0) & (successes != trials)
            return np.sum(log_binomial_coefficient(np, trials[inner], successes[inner]))
        return xp.sum(log_binomial_coefficient(xp, weights, weights * y))
    if name in ("Poisson", "NegativeBinomial"):
        return -xp.sum(weights * special(xp).gammaln(y + 1.0))
    return xp.zeros((), dtype=xp.result_type(y, float))


# -- links: derivatives of μ, log μ, log(1 − μ) in η -------------------------------------


def _sigmoids(xp, eta):
    """log σ(η), log σ(−η), σ(η), σ(−η) from one exp and one log1p, accurate in both
    tails. exp(−|η|) is written with ``where``, not ``abs`` (whose derivative at 0 is 0),
    so autodiff through these forms gives exact higher derivatives."""
    neg = eta < 0
    e = xp.exp(xp.where(neg, eta, -eta))
    log1pe = xp.log1p(e)
    inv = 1.0 / (1.0 + e)
    log_mu = xp.where(neg, eta - log1pe, -log1pe)
    log_1m = xp.where(neg, -log1pe, -eta - log1pe)
    mu = xp.where(neg, e * inv, inv)
    one_m = xp.where(neg, inv, e * inv)
    return log_mu, log_1m, mu, one_m


def logistic(xp, x):
    """1/(1 + e^{−x}), accurate in both tails."""
    return _sigmoids(xp, x)[2]


def mean_derivatives(link, xp, eta):
    """(μ, dμ/dη, d²μ/dη², d³μ/dη³)."""
    name = type(link).__name__
    if name == "Identity":
        one = xp.ones_like(eta)
        return eta, one, 0.0 * one, 0.0 * one
    if name == "Log":
        mu = xp.exp(eta)
        return mu, mu, mu, mu
    if name == "Inverse":
        r = 1.0 / eta
        return r, -r * r, 2.0 * r**3, -6.0 * r**4
    if name == "InverseSquared":
        r = 1.0 / xp.sqrt(eta)
        return r, -0.5 * r**3, 0.75 * r**5, -1.875 * r**7
    if name == "Sqrt":
        return eta * eta, 2.0 * eta, 2.0 * xp.ones_like(eta), 0.0 * eta
    if name == "Logit":
        _, _, mu, one_m = _sigmoids(xp, eta)
        m1 = mu * one_m
        return mu, m1, m1 * (one_m - mu), m1 * (1.0 - 6.0 * m1)
    if name == "Probit":
        sp = special(xp)
        pdf = xp.exp(-0.5 * eta * eta - _HALF_LOG_2PI)
        return sp.ndtr(eta), pdf, -eta * pdf, (eta * eta - 1.0) * pdf
    if name == "Cloglog":
        x = xp.exp(eta)
        m1 = x * xp.exp(-x)
        return -xp.expm1(-x), m1, m1 * (1.0 - x), m1 * ((1.0 - x) ** 2 - x)
    if name == "Loglog":
        x = xp.exp(-eta)
        m1 = x * xp.exp(-x)
        return xp.exp(-x), m1, m1 * (x - 1.0), m1 * ((x - 1.0) ** 2 - x)
    if name == "Cauchit":
        s = 1.0 + eta * eta
        c = 1.0 / (math.pi * s)
        return (xp.arctan2(1.0, -eta) / math.pi, c, -2.0 * eta * c / s,
                (6.0 * eta * eta - 2.0) * c / (s * s))
    raise NotImplementedError(f"no closed forms for the link {link.name!r}")


def inverse_link(link, xp, eta):
    """μ = g⁻¹(η) for the built-in links."""
    name = type(link).__name__
    if name == "Logit":
        return _sigmoids(xp, eta)[2]
    if name == "Log":
        return xp.exp(eta)
    return mean_derivatives(link, xp, eta)[0]


def _log_derivatives(h, h1, h2, h3):
    """Derivatives of log h from those of h (value not included)."""
    f1 = h1 / h
    f2 = h2 / h - f1 * f1
    return f1, f2, h3 / h - 3.0 * f1 * f2 - f1**3


def log_mean_derivatives(link, xp, eta):
    """(m, m₁, m₂, m₃) for m = log μ, for the links of positive families."""
    name = type(link).__name__
    if name == "Log":
        if xp is np:  # scalars: _chain and _chain_psi then skip the unit chain's passes
            return eta, 1.0, 0.0, 0.0
        zero = 0.0 * eta
        return eta, 1.0 + zero, zero, zero
    if name in _POWER_OF_LOG:  # μ = η^c: m = c·log η
        c = _POWER_OF_LOG[name]
        r = 1.0 / eta
        # μ = η² is a mean for either sign of η (as in loglik_eta and glmmTMB; the
        # optimum may put η of zero counts at 0): m = 2·log|η|, same derivatives.
        log_eta = xp.log(xp.abs(eta)) if name == "Sqrt" else xp.log(eta)
        return c * log_eta, c * r, -c * r * r, 2.0 * c * r**3
    mu, m1, m2, m3 = mean_derivatives(link, xp, eta)
    return (xp.log(mu),) + _log_derivatives(mu, m1, m2, m3)


def _cloglog_log_mean(xp, eta):
    """log μ and its derivatives for μ = 1 − exp(−e^η), accurate in both tails.

    With x = e^η: (log μ)' = r = x/expm1(x) and, with q = x/(1 − e^{−x}) (= r·e^x,
    written without e^x, which overflows), (log μ)'' = r(1 − q) and (log μ)''' =
    r(1 − q)² − r·q(1 − r). Below x = 1e-8 both ratios are 1 ∓ x/2 to double precision.
    """
    x = xp.exp(eta)
    small = x < 1e-8
    xs = xp.where(small, 1.0, x)
    q = xp.where(small, 1.0 + 0.5 * x, xs / -xp.expm1(-xs))
    r = xp.where(small, 1.0 - 0.5 * x, q * xp.exp(-xs))
    tail = eta < -30.0
    value = xp.where(tail, eta - 0.5 * x, xp.log(-xp.expm1(-xp.where(tail, 1.0, x))))
    a2 = r * (1.0 - q)
    return value, r, a2, a2 * (1.0 - q) - r * q * (1.0 - r)


def unit_log_derivatives(link, xp, eta):
    """((A, A₁, A₂, A₃), (B, B₁, B₂, B₃)) for A = log μ and B = log(1 − μ)."""
    name = type(link).__name__
    if name == "Logit":
        log_mu, log_1m, mu, one_m = _sigmoids(xp, eta)
        a2 = -mu * one_m
        a3 = a2 * (one_m - mu)
        return (log_mu, one_m, a2, a3), (log_1m, -mu, a2, a3)
    if name == "Probit":
        sp = special(xp)

        def log_cdf(e):
            value = sp.log_ndtr(e)
            mills = xp.exp(-0.5 * e * e - _HALF_LOG_2PI - value)
            a2 = -mills * (e + mills)
            return value, mills, a2, -a2 * (e + 2.0 * mills) - mills

        a, a1, a2, a3 = log_cdf(eta)
        b, b1, b2, b3 = log_cdf(-eta)
        return (a, a1, a2, a3), (b, -b1, b2, -b3)
    if name == "Cloglog":
        x = xp.exp(eta)
        return _cloglog_log_mean(xp, eta), (-x, -x, -x, -x)
    if name == "Loglog":
        x = xp.exp(-eta)
        b, b1, b2, b3 = _cloglog_log_mean(xp, -eta)
        return (-x, x, -x, x), (b, -b1, b2, -b3)
    mu, m1, m2, m3 = mean_derivatives(link, xp, eta)
    if name == "Cauchit":
        one_m = xp.arctan2(1.0, eta) / math.pi
    elif name == "Log":
        one_m = -xp.expm1(eta)
    else:
        one_m = 1.0 - mu
    log_a = eta if name == "Log" else xp.log(mu)
    return ((log_a,) + _log_derivatives(mu, m1, m2, m3),
            (xp.log(one_m),) + _log_derivatives(one_m, -m1, -m2, -m3))


def link_function(link, xp, mu):
    """η = g(μ) for the built-in links (start values on the host)."""
    name = type(link).__name__
    table = {
        "Identity": lambda: mu,
        "Log": lambda: xp.log(mu),
        "Logit": lambda: xp.log(mu) - xp.log1p(-mu),
        # (special functions looked up only here: scipy.special takes ~50 ms to import)
        "Probit": lambda: special(xp).ndtri(mu),
        "Cloglog": lambda: xp.log(-xp.log1p(-mu)),
        "Loglog": lambda: -xp.log(-xp.log(mu)),
        "Cauchit": lambda: -1.0 / xp.tan(math.pi * mu),
        "Inverse": lambda: 1.0 / mu,
        "InverseSquared": lambda: 1.0 / (mu * mu),
        "Sqrt": lambda: xp.sqrt(mu),
    }
    return table[name]()


#: Links of the form η = μ^λ (λ = 1, 1/2, −1, −2): a response in other units (y·c) puts
#: β and the random effects' SDs in units c^λ, unlike the log and the links of
#: probabilities.
POWER_LINKS = ("Identity", "Sqrt", "Inverse", "InverseSquared")


def link_scale_spread(link, xp, mu0, weights):
    """The SD of η₀ = g(μ₀) over the rows with weight > 0 for a built-in power link
    (:data:`POWER_LINKS`), else 1 (also where that SD is not finite or 0): the unit in
    which the GLMM fits search β and θ and start θ (an SD of 1 in it), and in which the
    boundary test sees θ, so that a response in other units is the same fit (for log
    and probability links nothing changes)."""
    if not _builtin(link, POWER_LINKS):
        return 1.0
    eta = link_function(link, xp, mu0)
    used = (weights > 0) & xp.isfinite(eta)
    count = xp.maximum(xp.sum(used), 1)
    mean = xp.sum(xp.where(used, eta, 0.0)) / count
    sd = xp.sqrt(xp.sum(xp.where(used, (eta - mean) ** 2, 0.0)) / count)
    return xp.where(xp.isfinite(sd) & (sd > 0), sd, 1.0)


# -- families ------------------------------------------------------------------------------


def _unit_chain(x1, x2) -> bool:
    """Whether x(η) = η (the log link's log μ in numpy: scalars 1 and 0)."""
    return isinstance(x1, float) and isinstance(x2, float) and x1 == 1.0 and x2 == 0.0


def _chain(f1, f2, f3, x1, x2, x3, third: bool):
    """ℓ', W = −ℓ'', W' = −ℓ''' for ℓ = f(x(η))."""
    if _unit_chain(x1, x2) and (not third or x3 == 0.0):
        return f1, -f2, (-f3 if third else None)
    x1_sq = x1 * x1
    d1 = f1 * x1
    w = -(f2 * x1_sq + f1 * x2)
    w1 = -(f3 * x1_sq * x1 + 3.0 * f2 * x1 * x2 + f1 * x3) if third else None
    return d1, w, w1


def _chain_psi(f_psi, f1_psi, f2_psi, x1, x2):
    if _unit_chain(x1, x2):
        return f_psi, f1_psi, -f2_psi
    return f_psi, f1_psi * x1, -(f2_psi * x1 * x1 + f1_psi * x2)


_DATA_TERMS: dict = {}  # data_term's last (arguments, value), by name


def _read_only(value):
    """A remembered array (or tuple of them), shared by every caller: written to, it
    would raise."""
    if isinstance(value, tuple):
        return tuple(_read_only(v) for v in value)
    if isinstance(value, np.ndarray):
        value.setflags(write=False)
    return value


def data_term(name: str, compute, *arrays):
    """``compute(*arrays)`` on the host, remembered per ``name`` for the last arrays
    (compared by value, copies kept): a term of the data alone (log y!, a log binomial
    coefficient), or of the data and a dispersion (NB2's log Γ(y + θ) − log Γ(θ)), is
    then evaluated once a fit, or once per dispersion, instead of at every evaluation."""
    arrays = tuple(np.asarray(a, dtype=np.float64) for a in arrays)
    last = _DATA_TERMS.get(name)  # one (arguments, value) tuple: safe across threads
    if last is None or not all(a.shape == b.shape and np.array_equal(a, b)
                               for a, b in zip(last[0], arrays)):
        last = (tuple(a.copy() for a in arrays), _read_only(compute(*arrays)))
        _DATA_TERMS[name] = last
    return last[1]


def log_factorial(xp, y):
    """log Γ(y + 1) (on the host by :func:`data_term`)."""
    if xp is np:
        return data_term("log_factorial", lambda a: special(np).gammaln(a + 1.0), y)
    return special(xp).gammaln(y + 1.0)


def nb2_gamma_terms(y, theta, digamma: bool, log_factorial: bool = False) -> tuple:
    """(log Γ(y + θ) − log Γ(θ), ψ(y + θ) − ψ(θ) if ``digamma``, log Γ(y + 1) if
    ``log_factorial``) on the host, from one :func:`polygamma_table` call, remembered for
    the last (y, θ) by :func:`data_term`: free of η, they would be recomputed at every
    inner Newton step at a fixed θ (most of a negative binomial fit's evaluations)."""

    def compute(y, theta):
        # ψ always: the inner Newton's steps need none, but the gradient's evaluation at
        # their mode (same θ) does, and one call with both costs less than two.
        arguments = (y + theta, theta) + ((y + 1.0,) if log_factorial else ())
        table = polygamma_table(np, arguments, (-1, 0))
        return (table[0][0] - table[1][0], table[0][1] - table[1][1],
                table[2][0] if log_factorial else None)

    name = "nb2_gamma_terms" + ("_with_log_factorial" if log_factorial else "")
    log_gamma, gap, log_fact = data_term(name, compute, y, theta)
    return log_gamma, gap if digamma else None, log_fact


def _softplus(xp, x):
    return xp.maximum(x, 0.0) + xp.log1p(xp.exp(-xp.abs(x)))


def _binomial(link, xp, y, eta, weights, dispersion, third, psi):
    (a, a1, a2, a3), (b, b1, b2, b3) = unit_log_derivatives(link, xp, eta)
    s = weights * y  # counts as given, not rounded (see Binomial._counts)
    f = weights - s
    value = count_times_log(s, a, xp) + count_times_log(f, b, xp)
    w1 = -(s * a3 + f * b3) if third else None
    return RowTerms(value, s * a1 + f * b1, -(s * a2 + f * b2), w1)


def _poisson(link, xp, y, eta, weights, dispersion, third, psi):
    m, m1, m2, m3 = log_mean_derivatives(link, xp, eta)
    mu = xp.exp(m)
    value = weights * (count_times_log(y, m, xp) - mu)
    return RowTerms(value, *_chain(weights * (y - mu), -weights * mu, -weights * mu,
                                   m1, m2, m3, third))


def _negative_binomial(link, xp, y, eta, weights, dispersion, third, psi):
    # Written as Family.loglik_eta: exact towards the Poisson limit (θ → ∞), with
    # p = μ/(θ + μ) = σ(log μ − log θ) and log(θ/(θ + μ)) = −softplus(log μ − log θ).
    sp = special(xp)
    theta = dispersion
    m, m1, m2, m3 = log_mean_derivatives(link, xp, eta)
    log_theta = xp.log(theta)
    ratio = m - log_theta
    big = theta > 1e4  # betaln is accurate only to ~1e-7 for small θ, where gammaln is exact
    yt = y + theta
    # log Γ(y + θ) − log Γ(θ): log y! is in loglik_constant (free of η and θ).
    host_terms = None
    if xp is np and not np.any(big):  # numpy evaluates both branches of a where
        host_terms = nb2_gamma_terms(y, theta, psi)
        log_coef = host_terms[0]
    else:
        small_t = xp.where(big, 1.0, theta)
        big_t = xp.where(big, theta, 1e4)
        log_coef = xp.where(big, sp.gammaln(y + 1.0) - sp.betaln(y + 1.0, big_t)
                            - xp.log(y + big_t),
                            sp.gammaln(y + small_t) - sp.gammaln(small_t))
    # log p, log(1 − p) = log(θ/(θ + μ)), p and 1 − p from one exp and one log1p.
    log_p, log_1mp, p, one_mp = _sigmoids(xp, ratio)
    value = weights * (log_coef + theta * log_1mp + count_times_log(y, log_p, xp))
    f1 = weights * (y - yt * p)
    pq = p * one_mp
    f2 = -weights * yt * pq
    f3 = f2 * (one_mp - p)
    terms = RowTerms(value, *_chain(f1, f2, f3, m1, m2, m3, third))
    if not psi:
        return terms
    digamma_gap = (host_terms[1] if host_terms is not None
                   else sp.digamma(yt) - sp.digamma(theta))
    f_psi = weights * theta * (digamma_gap + log_1mp + 1.0 - yt * one_mp / theta)
    f2_psi = -weights * pq * (theta - yt * (one_mp - p))
    return terms._replace(**dict(zip(("value_psi", "d1_psi", "w_psi"),
                                     _chain_psi(f_psi, p * f1, f2_psi, m1, m2))))


def _scaled_by_dispersion(terms: RowTerms, f_psi, f1, f2, x1, x2) -> RowTerms:
    """Dispersion terms of a family whose η-dependent part is scaled by 1/φ (Gaussian,
    Gamma, inverse Gaussian): ∂ℓ'/∂ψ = −ℓ', ∂W/∂ψ = −W."""
    return terms._replace(**dict(zip(("value_psi", "d1_psi", "w_psi"),
                                     _chain_psi(f_psi, -f1, -f2, x1, x2))))


def _gamma(link, xp, y, eta, weights, dispersion, third, psi):
    sp = special(xp)
    shape = 1.0 / dispersion
    m, m1, m2, m3 = log_mean_derivatives(link, xp, eta)
    ratio = y * xp.exp(-m)  # y/μ
    log_y = xp.log(y)
    value = weights * (-sp.gammaln(shape) + shape * xp.log(shape) - shape * m
                       + (shape - 1.0) * log_y - shape * ratio)
    f1 = weights * shape * (ratio - 1.0)
    f2 = -weights * shape * ratio
    terms = RowTerms(value, *_chain(f1, f2, -f2, m1, m2, m3, third))
    if not psi:
        return terms
    f_psi = -shape * weights * (-sp.digamma(shape) + xp.log(shape) + 1.0 - m + log_y - ratio)
    return _scaled_by_dispersion(terms, f_psi, f1, f2, m1, m2)


def _inverse_gaussian(link, xp, y, eta, weights, dispersion, third, psi):
    m, m1, m2, m3 = log_mean_derivatives(link, xp, eta)
    mu = xp.exp(m)
    r = xp.exp(-m)  # 1/μ
    misfit = (y - mu) ** 2 * r * r / y  # (y − μ)²/(μ²y)
    value = weights * (-0.5 * (_LOG_2PI + xp.log(dispersion) + 3.0 * xp.log(y))
                       - misfit / (2.0 * dispersion))
    scale = weights / dispersion
    yr2 = y * r * r
    f1 = scale * (yr2 - r)
    f2 = scale * (r - 2.0 * yr2)
    f3 = scale * (4.0 * yr2 - r)
    terms = RowTerms(value, *_chain(f1, f2, f3, m1, m2, m3, third))
    if not psi:
        return terms
    f_psi = weights * (-0.5 + misfit / (2.0 * dispersion))
    return _scaled_by_dispersion(terms, f_psi, f1, f2, m1, m2)


def _gaussian(link, xp, y, eta, weights, dispersion, third, psi):
    mu, m1, m2, m3 = mean_derivatives(link, xp, eta)
    positive = weights > 0
    w = xp.where(positive, weights, 1.0)
    residual = y - mu
    value = xp.where(positive, -0.5 * (_LOG_2PI + xp.log(dispersion) - xp.log(w)
                                       + w * residual**2 / dispersion), 0.0)
    f1 = weights * residual / dispersion
    f2 = -weights / dispersion + 0.0 * residual
    terms = RowTerms(value, *_chain(f1, f2, 0.0 * f2, m1, m2, m3, third))
    if not psi:
        return terms
    f_psi = xp.where(positive, -0.5 + w * residual**2 / (2.0 * dispersion), 0.0)
    return _scaled_by_dispersion(terms, f_psi, f1, f2, m1, m2)


def _beta(link, xp, y, eta, weights, dispersion, third, psi):
    phi = dispersion
    (a, a1, a2, a3), (b, _, _, _) = unit_log_derivatives(link, xp, eta)
    mu, one_m = xp.exp(a), xp.exp(b)
    x1 = mu * a1
    x2 = mu * (a2 + a1 * a1)
    x3 = mu * (a3 + 3.0 * a1 * a2 + a1**3)
    alpha, beta = mu * phi, one_m * phi
    log_y, log_1my = xp.log(y), xp.log1p(-y)
    # log Γ, ψ, ψ₁ (and ψ₂ for f3 and f2_psi) of α, β and φ from one table.
    orders = (-1, 0, 1, 2) if third or psi else (-1, 0, 1)
    table_a, table_b, table_phi = polygamma_table(xp, (alpha, beta, phi), orders)
    value = weights * (table_phi[0] - table_a[0] - table_b[0]
                       + (alpha - 1.0) * log_y + (beta - 1.0) * log_1my)
    dig_a, dig_b, tri_a, tri_b = table_a[1], table_b[1], table_a[2], table_b[2]
    f1 = weights * phi * (dig_b - dig_a + log_y - log_1my)
    phi_sq = phi * phi
    f2 = -weights * phi_sq * (tri_a + tri_b)
    tetra = (table_a[3], table_b[3]) if third or psi else None
    f3 = -weights * phi_sq * phi * (tetra[0] - tetra[1]) if third else None
    terms = RowTerms(value, *_chain(f1, f2, f3, x1, x2, x3, third))
    if not psi:
        return terms
    f_psi = weights * phi * (table_phi[1] - mu * dig_a - one_m * dig_b
                             + mu * log_y + one_m * log_1my)
    f1_psi = f1 + weights * phi_sq * (one_m * tri_b - mu * tri_a)
    f2_psi = 2.0 * f2 - weights * phi_sq * phi * (mu * tetra[0] + one_m * tetra[1])
    return terms._replace(**dict(zip(("value_psi", "d1_psi", "w_psi"),
                                     _chain_psi(f_psi, f1_psi, f2_psi, x1, x2))))


_ROW_TERMS = {
    "Binomial": _binomial,
    "Poisson": _poisson,
    "NegativeBinomial": _negative_binomial,
    "Gamma": _gamma,
    "InverseGaussian": _inverse_gaussian,
    "Gaussian": _gaussian,
    "Beta": _beta,
}


def row_terms(family, xp, y, eta, weights, dispersion=None, *, third: bool = False,
              dispersion_derivatives: bool = False) -> RowTerms:
    """ℓ (without :func:`loglik_constant`), ℓ', W = −ℓ'' per row; with ``third`` also
    W' = −ℓ''', with ``dispersion_derivatives`` also ∂/∂ψ of ℓ, ℓ' and W (ψ = log of
    the dispersion: Gaussian σ², Gamma and inverse Gaussian φ, negative binomial θ,
    beta φ). ``dispersion`` is on its natural scale (ignored by binomial and Poisson).

    Raises:
        NotImplementedError: a family or link this module does not cover
            (:func:`supported`).
    """
    if not supported(family):
        raise NotImplementedError(f"no closed forms for {family}")
    name = type(family).__name__
    if name not in _ROW_TERMS:
        from . import math_tmb as tmb

        if dispersion_derivatives and name in tmb.NO_DISPERSION:
            raise ValueError(f"the {family.name} family has no dispersion")
        if dispersion is None:
            dispersion = family.fixed_dispersion()
        return tmb.row_terms(family, xp, y, eta, weights, dispersion, third,
                             dispersion_derivatives)
    if dispersion is None and name == "NegativeBinomial":
        dispersion = family.theta
    if dispersion_derivatives and name in ("Binomial", "Poisson"):
        raise ValueError(f"the {family.name} family has no dispersion")
    return _ROW_TERMS[name](family.link, xp, y, eta, weights, dispersion, third,
                            dispersion_derivatives)
