"""Closed-form per-row terms of glmmTMB's families (NB1, the zero-truncated counts,
generalized Poisson, beta-binomial, lognormal, Student-t, Tweedie), for numpy or
jax.numpy.

The companion of :mod:`glmmjax._families.math` (whose ``row_terms`` dispatches here):
each family's log-density ℓ is written as f(x, ψ) in one variable x of the mean (log μ
for the count families and the lognormal, μ for the beta-binomial and Student-t) and
ψ = log of its dispersion, and supplies the partial derivatives

    f_x, f_xx, f_xxx, f_ψ, f_xψ, f_xxψ

from which ``math``'s chain rule forms ℓ', W = −ℓ'', W' = −ℓ''' and the
dispersion terms. The same ``*_value`` functions give each family's
``loglik_eta`` (:mod:`glmmjax._families.tmb`), so the compiled engine's autodiff and the
host engine's closed forms differentiate one text; tests/test_family_math.py checks
every partial against that autodiff. ``value`` carries the whole log-density here
(normalizing constants included): :func:`glmmjax._families.math.loglik_constant` is 0 for these.

The densities are glmmTMB's (src/glmmTMB.cpp, distrib.h at 1.1.5):

- nbinom1: NB with size μ/φ, Var = μ(1 + φ);
- truncated_*: the untruncated density over 1 − P(0), log P(0) = a(x, ψ), with
  −log(1 − eᵃ) differentiated through r = 1/expm1(−a);
- genpois: θ = μ/√φ, λ = 1 − 1/√φ, log θ + (y − 1)·log(θ + λy) − θ − λy − log y!;
- betabinomial: α = μφ, β = (1 − μ)φ, log C(n, s) + log B(s + α, n − s + β) − log B(α, β);
- lognormal: mean μ and SD σ on the data scale, log-scale variance V = log(1 + σ²/μ²);
- t_family: location μ, scale σ, df ν: dt((y − μ)/σ, ν)/σ;
- tweedie: W(y, φ, p)/y · exp((yμ^(1−p)/(1 − p) − μ^(2−p)/(2 − p))/φ), W by Dunn &
  Smyth's series as TMB's ``tweedie_logW``.

With ν or p estimated (``family.n_shape``) the dispersion argument is the pair (φ, shape)
and the dispersion terms have two rows: ψ, then the shape's outer parameter (log ν,
logit(p − 1)).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

_LOG_PI = math.log(math.pi)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class Partials(NamedTuple):
    """ℓ and its partial derivatives in (x, ψ); the ψ ones None without a dispersion."""

    value: object
    f1: object
    f2: object
    f3: object
    f_psi: object = None
    f1_psi: object = None
    f2_psi: object = None


def _special(xp):
    from .math import special

    return special(xp)


def softplus(xp, x):
    return xp.maximum(x, 0.0) + xp.log1p(xp.exp(-xp.abs(x)))


def sigmoid(xp, x):
    # σ(x) without overflow for either sign.
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def log1mexp(xp, a):
    """log(1 − eᵃ) for a ≤ 0, accurate on both sides of a = −log 2."""
    near = a > -math.log(2.0)
    return xp.where(near, xp.log(-xp.expm1(xp.where(near, a, -1.0))),
                    xp.log1p(-xp.exp(xp.where(near, -1.0, a))))


def _log_gammas(xp, pairs, orders, extra=()) -> list:
    """For each pair (y, s): [log Γ(y + s), log Γ(s)] if −1 is among ``orders``, then the
    gaps ψₖ(y + s) − ψₖ(s) for the orders k ≥ 0 (exactly 0 at y = 0); then log Γ of each
    argument in ``extra``. On the host all from one numpy call
    (:func:`glmmjax._families.math.polygamma_table`)."""
    from .math import polygamma_table

    orders = tuple(orders)
    arguments = [a for y, s in pairs for a in (y + s, s)]
    if xp is np:
        all_orders = orders if -1 in orders or not extra else (-1,) + orders
        table = polygamma_table(xp, arguments + list(extra), all_orders)
        extras = [row[all_orders.index(-1)] for row in table[len(arguments):]]
        table = [row[len(all_orders) - len(orders):] for row in table]
    else:
        table = polygamma_table(xp, arguments, orders)
        extras = [row[0] for row in polygamma_table(xp, list(extra), (-1,))]
    out = []
    for i, (y, _) in enumerate(pairs):
        row = []
        for n, a, b in zip(orders, table[2 * i], table[2 * i + 1]):
            row.extend([a, b] if n == -1 else [(a - b) * (y != 0)])
        out.append(row)
    return out + extras


# -- values (also each family's loglik_eta) -----------------------------------------------


def nb1_value(xp, y, x, psi, weights, log_gammas=None):
    """``log_gammas``: log Γ of (y + s, s) where the caller has them."""
    s = xp.exp(x - psi)  # size μ/φ
    c = softplus(xp, psi)  # log(1 + φ)
    from .math import log_factorial, polygamma_table

    if log_gammas is None:
        log_gammas = [row[0] for row in polygamma_table(xp, (y + s, s), (-1,))]
    lg_ys, lg_s = log_gammas
    return weights * (lg_ys - lg_s - log_factorial(xp, y) - s * c + y * (psi - c))


def nb2_value(xp, y, x, psi, weights):
    """NB2 with size θ = e^ψ, as ``NegativeBinomial.loglik_eta`` for moderate θ."""
    theta = xp.exp(psi)
    t = x - psi
    (lg_yt, lg_theta), lg_y1 = _log_gammas(xp, [(y, theta)], (-1,), [y + 1.0])
    return weights * (lg_yt - lg_theta - lg_y1
                      - theta * softplus(xp, t) - y * softplus(xp, -t))


def poisson_value(xp, y, x, weights):
    from .math import log_factorial

    return weights * (y * x - xp.exp(x) - log_factorial(xp, y))


def log_zero_probability(xp, name, x, psi):
    """log P(y = 0) of the untruncated count distribution."""
    if name == "poisson":
        return -xp.exp(x)
    if name == "nbinom2":
        return -xp.exp(psi) * softplus(xp, x - psi)
    return -xp.exp(x - psi) * softplus(xp, psi)  # nbinom1


def truncated_value(xp, name, y, x, psi, weights):
    base = {"poisson": lambda: poisson_value(xp, y, x, weights),
            "nbinom2": lambda: nb2_value(xp, y, x, psi, weights),
            "nbinom1": lambda: nb1_value(xp, y, x, psi, weights)}[name]()
    return base - weights * log1mexp(xp, log_zero_probability(xp, name, x, psi))


def genpois_value(xp, y, x, psi, weights):
    from .math import log_factorial

    k = xp.exp(-0.5 * psi)  # 1/√φ
    mu = xp.exp(x)
    spread = y + k * (mu - y)  # θ + λy
    return weights * (x - 0.5 * psi + (y - 1.0) * xp.log(spread) - k * mu - (1.0 - k) * y
                      - log_factorial(xp, y))


def betabinomial_value(xp, y, log_mu, log_1m, psi, trials, log_gammas=None):
    """``log_gammas``: log Γ of (s + α, α, f + β, β, n + φ, φ) where the caller has them
    (s successes, f failures of n trials)."""
    from .math import log_binomial_coefficient

    phi = xp.exp(psi)
    alpha, beta = xp.exp(log_mu + psi), xp.exp(log_1m + psi)
    s = trials * y
    f = trials - s
    if log_gammas is None:
        (lg_sa, lg_a), (lg_fb, lg_b), (lg_np, lg_phi) = _log_gammas(
            xp, [(s, alpha), (f, beta), (trials, phi)], (-1,))
    else:
        lg_sa, lg_a, lg_fb, lg_b, lg_np, lg_phi = log_gammas
    if xp is np:  # free of μ and φ: once a fit
        from .math import data_term

        log_choose = data_term("log_binomial_coefficient",
                               lambda n, k: log_binomial_coefficient(np, n, k), trials, s)
    else:
        log_choose = log_binomial_coefficient(xp, trials, s)
    return log_choose + lg_sa + lg_fb - lg_np - lg_a - lg_b + lg_phi


def lognormal_value(xp, y, x, psi, weights):
    log_y = xp.log(y)
    variance = softplus(xp, 2.0 * (psi - x))  # log-scale variance
    z = log_y - x
    return weights * (-_HALF_LOG_2PI - 0.5 * xp.log(variance) - z * z / (2.0 * variance)
                      - 0.5 * z - 0.125 * variance - log_y)


def _t_log_gamma_ratio(xp, df):
    """log Γ((ν + 1)/2) − log Γ(ν/2) (on the host without scipy.special: a first
    Student-t fit would pay its import, twice the whole fit of sleepstudy)."""
    sp = _special(xp)
    return sp.gammaln(0.5 * (df + 1.0)) - sp.gammaln(0.5 * df)


def _t_digamma_difference(xp, df):
    """ψ((ν + 1)/2) − ψ(ν/2)."""
    sp = _special(xp)
    return sp.digamma(0.5 * (df + 1.0)) - sp.digamma(0.5 * df)


def student_t_value(xp, y, mu, psi, weights, df):
    z = (y - mu) * xp.exp(-psi)
    return weights * (_t_log_gamma_ratio(xp, df)
                      - 0.5 * (xp.log(df) + _LOG_PI)
                      - 0.5 * (df + 1.0) * xp.log1p(z * z / df) - psi)


# -- partials -------------------------------------------------------------------------------


def nb1_partials(xp, y, x, psi, weights, third, need_psi=True):
    s = xp.exp(x - psi)
    c, q = softplus(xp, psi), sigmoid(xp, psi)
    # log Γ(y + s), log Γ(s) and the ψ, ψ₁ (and ψ₂) gaps from one table.
    orders = (-1, 0, 1, 2) if third or need_psi else (-1, 0, 1)
    ((lg_ys, lg_s, gap0, gap1, *gap2),) = _log_gammas(xp, [(y, s)], orders)
    d0 = gap0 - c
    s2d1 = s * s * gap1
    s3d2 = s**3 * gap2[0] if gap2 else 0.0
    sd0 = s * d0
    out = Partials(nb1_value(xp, y, x, psi, weights, (lg_ys, lg_s)), weights * sd0,
                   weights * (sd0 + s2d1),
                   weights * (sd0 + 3.0 * s2d1 + s3d2) if third else None)
    if not need_psi:
        return out
    return out._replace(f_psi=weights * (-sd0 - s * q + y * (1.0 - q)),
                        f1_psi=weights * (-sd0 - s2d1 - s * q),
                        f2_psi=weights * (-sd0 - 3.0 * s2d1 - s3d2 - s * q))


def _nb2_pieces(xp, x, psi):
    """θ, t = x − ψ, p = σ(t) = μ/(θ + μ), 1 − p, softplus(t), softplus(−t): from one
    exp and one log1p (:func:`glmmjax._families.math._sigmoids`), shared by the NB2's
    value, its partials and its zero probability's."""
    from .math import _sigmoids

    t = x - psi
    log_p, log_1mp, p, one_mp = _sigmoids(xp, t)
    return xp.exp(psi), t, p, one_mp, -log_1mp, -log_p


def nb2_partials(xp, y, x, psi, weights, third, need_psi=True, pieces=None):
    theta, t, p, one_mp, sp_t, sp_neg_t = _nb2_pieces(xp, x, psi) if pieces is None else pieces
    yt = y + theta
    f1 = weights * (y - yt * p)
    f2 = -weights * yt * p * one_mp
    # nb2_value's terms, with its softplus passes shared, and the ψ gap; on the host
    # remembered while θ is unchanged (glmmjax._families.math.nb2_gamma_terms).
    if xp is np:
        from .math import nb2_gamma_terms

        log_gamma, gap0, lg_y1 = nb2_gamma_terms(y, theta, need_psi, log_factorial=True)
    else:
        (lg_yt, lg_theta, *gap), lg_y1 = _log_gammas(
            xp, [(y, theta)], (-1, 0) if need_psi else (-1,), [y + 1.0])
        log_gamma, gap0 = lg_yt - lg_theta, gap[0] if gap else None
    value = weights * (log_gamma - lg_y1 - theta * sp_t - y * sp_neg_t)
    out = Partials(value, f1, f2, f2 * (one_mp - p) if third else None)
    if not need_psi:
        return out
    f_psi = weights * theta * (gap0 - sp_t + 1.0 - yt * one_mp / theta)
    f2_psi = -weights * p * one_mp * (theta - yt * (one_mp - p))
    return out._replace(f_psi=f_psi, f1_psi=p * f1, f2_psi=f2_psi)


def poisson_partials(xp, y, x, weights, third):
    mu = xp.exp(x)
    return Partials(poisson_value(xp, y, x, weights), weights * (y - mu), -weights * mu,
                    -weights * mu if third else None)


def _zero_probability_partials(xp, name, x, psi, pieces=None):
    """(a, a_x, a_xx, a_xxx, a_ψ, a_xψ, a_xxψ) for a = log P(y = 0)."""
    if name == "poisson":
        a = -xp.exp(x)
        return a, a, a, a, None, None, None
    if name == "nbinom1":
        s = xp.exp(x - psi)
        c = softplus(xp, psi)
        a = -s * c
        a_psi = s * (c - sigmoid(xp, psi))
        return a, a, a, a, a_psi, a_psi, a_psi
    theta, t, p, one_mp, sp_t, _ = _nb2_pieces(xp, x, psi) if pieces is None else pieces
    a1 = -theta * p
    a2 = a1 * one_mp
    return (-theta * sp_t, a1, a2, a2 * (one_mp - p), theta * (p - sp_t), a1 * p,
            2.0 * a2 * p)


def truncated_partials(xp, name, y, x, psi, weights, third, need_psi=True):
    """The untruncated partials plus those of −log(1 − eᵃ), a = log P(0)."""
    pieces = None
    if name == "poisson":
        base = poisson_partials(xp, y, x, weights, third)
    elif name == "nbinom2":
        pieces = _nb2_pieces(xp, x, psi)
        base = nb2_partials(xp, y, x, psi, weights, third, need_psi, pieces)
    else:
        base = nb1_partials(xp, y, x, psi, weights, third, need_psi)
    a, a1, a2, a3, a_psi, a1_psi, a2_psi = _zero_probability_partials(xp, name, x, psi,
                                                                      pieces)
    r = 1.0 / xp.expm1(-a)  # d/da of −log(1 − eᵃ)
    r2 = r * (1.0 + r)
    r3 = r2 * (1.0 + 2.0 * r)
    w = weights
    out = Partials(
        base.value - w * log1mexp(xp, a),
        base.f1 + w * r * a1,
        base.f2 + w * (r * a2 + r2 * a1 * a1),
        base.f3 + w * (r * a3 + 3.0 * r2 * a1 * a2 + r3 * a1 * a1 * a1) if third else None,
    )
    if a_psi is None or not need_psi:
        return out
    return out._replace(
        f_psi=base.f_psi + w * r * a_psi,
        f1_psi=base.f1_psi + w * (r * a1_psi + r2 * a1 * a_psi),
        f2_psi=base.f2_psi + w * (r * a2_psi + r2 * (a2 * a_psi + 2.0 * a1 * a1_psi)
                                  + r3 * a1 * a1 * a_psi))


def genpois_partials(xp, y, x, psi, weights, third, need_psi=True):
    k = xp.exp(-0.5 * psi)
    mu = xp.exp(x)
    km = k * mu
    spread = y + k * (mu - y)
    g = km / spread
    ym1 = y - 1.0
    gg = g * (1.0 - g)
    g_psi = -0.5 * g * y / spread  # ∂g/∂ψ
    w = weights
    out = Partials(genpois_value(xp, y, x, psi, weights),
                   w * (1.0 + ym1 * g - km), w * (ym1 * gg - km),
                   w * (ym1 * gg * (1.0 - 2.0 * g) - km) if third else None)
    if not need_psi:
        return out
    return out._replace(
        f_psi=w * (-0.5 - 0.5 * ym1 * k * (mu - y) / spread + 0.5 * k * (mu - y)),
        f1_psi=w * (ym1 * g_psi + 0.5 * km),
        f2_psi=w * (ym1 * (1.0 - 2.0 * g) * g_psi + 0.5 * km))


def betabinomial_partials(xp, y, log_mu, log_1m, psi, trials, third, need_psi=True):
    """Partials in x = μ."""
    phi = xp.exp(psi)
    alpha, beta = xp.exp(log_mu + psi), xp.exp(log_1m + psi)
    s = trials * y
    f = trials - s
    # The value's log Γ terms and the ψ, ψ₁ (ψ₂) gaps from one table.
    orders = (-1, 0, 1, 2) if third or need_psi else (-1, 0, 1)
    (lg_sa, lg_a, g0a, g1a, *g2a), (lg_fb, lg_b, g0b, g1b, *g2b), \
        (lg_np, lg_phi, g0phi, *_) = _log_gammas(
            xp, [(s, alpha), (f, beta), (trials, phi)], orders)
    f1 = phi * (g0a - g0b)
    f2 = phi * phi * (g1a + g1b)
    if third or need_psi:
        g2a, g2b = g2a[0], g2b[0]
    value = betabinomial_value(xp, y, log_mu, log_1m, psi, trials,
                               (lg_sa, lg_a, lg_fb, lg_b, lg_np, lg_phi))
    out = Partials(value, f1, f2, phi**3 * (g2a - g2b) if third else None)
    if not need_psi:
        return out
    return out._replace(
        f_psi=alpha * g0a + beta * g0b - phi * g0phi,
        f1_psi=f1 + phi * (alpha * g1a - beta * g1b),
        f2_psi=2.0 * f2 + phi * phi * (alpha * g2a + beta * g2b))


def lognormal_partials(xp, y, x, psi, weights, third, need_psi=True):
    """ℓ = F(x, V(x, ψ)) with V the log-scale variance (see the module docstring)."""
    u = 2.0 * (psi - x)
    v = softplus(xp, u)
    q = sigmoid(xp, u)
    qq = q * (1.0 - q)
    v_x, v_xx, v_xxx = -2.0 * q, 4.0 * qq, -8.0 * qq * (1.0 - 2.0 * q)
    v_p, v_xp, v_xxp = 2.0 * q, -4.0 * qq, 8.0 * qq * (1.0 - 2.0 * q)
    z = xp.log(y) - x
    iv = 1.0 / v
    F_x, F_xx = z * iv + 0.5, -iv
    F_v = -0.5 * iv + 0.5 * z * z * iv * iv - 0.125
    F_vv = 0.5 * iv * iv - z * z * iv**3
    F_vvv = -(iv**3) + 3.0 * z * z * iv**4
    F_xv, F_xxv, F_xvv = -z * iv * iv, iv * iv, 2.0 * z * iv**3
    w = weights
    f1 = F_x + F_v * v_x
    f2 = F_xx + 2.0 * F_xv * v_x + F_vv * v_x * v_x + F_v * v_xx
    f3 = (3.0 * F_xxv * v_x + 3.0 * F_xvv * v_x**2 + F_vvv * v_x**3 + 3.0 * F_xv * v_xx
          + 3.0 * F_vv * v_x * v_xx + F_v * v_xxx) if third else None
    f1_p = (F_xv + F_vv * v_x) * v_p + F_v * v_xp
    f2_p = (F_xxv * v_p + 2.0 * F_xvv * v_x * v_p + 2.0 * F_xv * v_xp
            + F_vvv * v_x * v_x * v_p + 2.0 * F_vv * v_x * v_xp + F_vv * v_xx * v_p
            + F_v * v_xxp)
    return Partials(lognormal_value(xp, y, x, psi, weights), w * f1, w * f2,
                    w * f3 if third else None, w * F_v * v_p, w * f1_p, w * f2_p)


def student_t_partials(xp, y, mu, psi, weights, df, third, need_psi=True):
    """Partials in x = μ."""
    e = y - mu
    scale2 = df * xp.exp(2.0 * psi)  # νσ²
    big_s = scale2 + e * e
    inv = 1.0 / big_s
    c = (df + 1.0) * weights
    return Partials(
        student_t_value(xp, y, mu, psi, weights, df), c * e * inv,
        c * (e * e - scale2) * inv * inv,
        c * (-6.0 * e * inv * inv + 8.0 * e**3 * inv**3) if third else None,
        c * e * e * inv - weights, -2.0 * c * scale2 * e * inv * inv,
        -2.0 * c * scale2 * (3.0 * e * e - scale2) * inv**3)


def student_t_df_partials(xp, y, mu, psi, weights, df):
    """(f_κ, f_xκ, f_xxκ) for κ = log ν, the Student-t's estimated degrees of freedom."""
    e = y - mu
    scale2 = df * xp.exp(2.0 * psi)  # νσ²
    sigma2 = scale2 / df
    big_s = scale2 + e * e
    inv = 1.0 / big_s
    e2 = e * e
    d_nu = (0.5 * (_t_digamma_difference(xp, df) - 1.0 / df
                   - xp.log1p(e2 / scale2)) + (df + 1.0) * e2 * inv / (2.0 * df))
    d1_nu = e * (e2 - sigma2) * inv * inv
    d2_nu = ((e2 - scale2) * big_s - (df + 1.0) * sigma2 * big_s
             - 2.0 * (df + 1.0) * (e2 - scale2) * sigma2) * inv**3
    c = df * weights
    return c * d_nu, c * d1_nu, c * d2_nu


# -- Tweedie ---------------------------------------------------------------------------------

#: Terms of the Tweedie series in the compiled (static-shape) evaluation: a window of
#: this many j around the largest term. The terms fall below e^-37 of the largest within
#: ±9·√j_max, so it is exact while j_max = y^(2−p)/(φ(2−p)) < ~750.
TWEEDIE_TERMS = 512


# numpy: the last series evaluated, as one (key, y, value) tuple, read once and replaced
# whole (the lockstep batch path evaluates chunks in threads: a dict updated key by key
# could pair one thread's key with another's value).
_LAST_SERIES: list = [None]


def _tweedie_series(xp, y, psi, p, n_terms=None):
    """:func:`_tweedie_series_terms` (compiled) or :func:`_tweedie_series_host` (numpy),
    the latter remembered for the last (y, φ, p): the series does not depend on μ, and
    the inner Newton evaluates it at every step."""
    if xp is not np or n_terms is not None:
        return _tweedie_series_terms(xp, y, psi, p, n_terms)
    psi_value = np.broadcast_to(psi, np.shape(y))
    key = (id(y), np.shape(y), psi_value.tobytes(), float(p))
    last = _LAST_SERIES[0]
    if last is not None and last[0] == key and last[1] is y:
        return last[2]
    value = _tweedie_series_host(y, psi_value, p)
    _LAST_SERIES[0] = (key, y, value)
    return value


def _tweedie_series_terms(xp, y, psi, p, n_terms=None):
    """(log W, E_w[j], E_w[j·ψ₀(−a j)]) of Dunn & Smyth's series W = Σ_j W_j for y > 0
    (rows with y = 0 get 0): log W_j = j·log z − log j! − log Γ(−a j), a = −(2−p)/(p−1),
    log z = −a log y − log φ/(p−1) + a log(p−1) − log(2−p); the window of j is centred
    on the largest term (j_max, as TMB's tweedie_logW) and spans ``n_terms`` values
    (default :data:`TWEEDIE_TERMS`: the compiled programs' static shape; the host
    engine's numpy uses :func:`_tweedie_series_host`)."""
    sp = _special(xp)
    positive = y > 0
    y_safe = xp.where(positive, y, 1.0)
    p1, p2 = p - 1.0, 2.0 - p
    a = -p2 / p1
    log_z = -a * xp.log(y_safe) - psi / p1 + a * xp.log(p1) - xp.log(p2)
    j_max = xp.maximum(1.0, xp.exp(p2 * xp.log(y_safe) - psi) / p2)
    if n_terms is None:
        n_terms = TWEEDIE_TERMS
    start = xp.maximum(1.0, xp.floor(j_max) - n_terms // 2)
    j = start[..., None] + xp.arange(n_terms, dtype=start.dtype)
    if xp is np:
        # log j! from a table (j are integers), log Γ and ψ of −aj from one pass.
        from .math_compois import _log_factorial

        log_j_factorial = _log_factorial(np, j)
        lg_aj, dig_aj = sp.polygammas(-a * j, (-1, 0))
    else:
        log_j_factorial, lg_aj, dig_aj = sp.gammaln(j + 1.0), sp.gammaln(-a * j), None
    log_w = j * log_z[..., None] - log_j_factorial - lg_aj
    top = xp.max(log_w, axis=-1, keepdims=True)
    weights = xp.exp(log_w - top)
    total = xp.sum(weights, axis=-1)
    log_series = top[..., 0] + xp.log(total)
    mean_j = xp.sum(weights * j, axis=-1) / total
    dig_aj = sp.digamma(-a * j) if dig_aj is None else dig_aj
    mean_jdig = xp.sum(weights * j * dig_aj, axis=-1) / total
    zero = 0.0 * log_series
    return (xp.where(positive, log_series, zero), xp.where(positive, mean_j, zero),
            xp.where(positive, mean_jdig, zero))


#: The host series works on this many rows at a time (its n × terms arrays stay small).
_SERIES_BLOCK = 4096
#: Half-width of the host series' window in standard deviations of j (plus 10 terms):
#: the terms' weights are log-concave in j with variance ≈ j_max·(p − 1), and beyond
#: 10 of them they are below e^-50 of the largest.
_SERIES_SIGMAS = 10.0
#: Grid step of the host series in standard deviations where it exceeds 1.
_SERIES_STEP_SIGMAS = 0.5


def _tweedie_series_host(y, psi, p):
    """:func:`_tweedie_series_terms` on the host, its cost bounded whatever y, φ and p.

    The window is centred on j_max with a half-width of 10 standard deviations of j
    (σ² ≈ j_max(p − 1): far fewer terms than ±9√j_max as p → 1). Where σ ≥ 4 and the
    window stays above j = 1, it is a grid of step h = ⌊σ/2⌋ whose terms count h times
    each: for a smooth unimodal summand of width σ, the sum over a grid of step h
    differs from the sum over all integers by about exp(−2π²σ²/h²) < e^-78 relative
    (Poisson summation). A row takes at most ~100 terms, ~250 where the window
    reaches j = 1 (j_max < ~130), however large j_max is. Without that, a Newton trial at a small φ or p near 1 (j_max ~ 10⁶ or more)
    made windows of tens of thousands of terms per row: minutes, or an array too large
    to allocate. Only rows with y > 0 are evaluated (the others get 0), in blocks of
    rows with similar windows."""
    out = [np.zeros(np.shape(y)) for _ in range(3)]
    positive = np.flatnonzero(y > 0)
    p1, p2 = p - 1.0, 2.0 - p
    a = -p2 / p1
    log_y = np.log(y[positive])
    log_z = -a * log_y - psi[positive] / p1 + a * np.log(p1) - np.log(p2)
    with np.errstate(over="ignore"):
        j_max = np.minimum(np.maximum(1.0, np.exp(p2 * log_y - psi[positive]) / p2), 1e300)
    centre = np.floor(j_max)
    sigma = np.sqrt(j_max * p1)
    half = np.ceil(_SERIES_SIGMAS * sigma) + 10.0
    step = np.maximum(1.0, np.floor(_SERIES_STEP_SIGMAS * sigma))
    step = np.where(centre - half >= 1.0, step, 1.0)  # a grid only clear of j = 1
    side = np.ceil(half / step)
    start = np.maximum(1.0, centre - side * step)
    order = np.argsort(side, kind="stable")  # blocks of rows with similar windows
    for first in range(0, len(order), _SERIES_BLOCK):
        block = order[first:first + _SERIES_BLOCK]
        values = _tweedie_series_rows(log_z[block], start[block], step[block],
                                      int(np.max(side[block])), a)
        for target, value in zip(out, values):
            target[positive[block]] = value
    return tuple(out)


def _tweedie_series_rows(log_z, start, step, side, a):
    """(log W, E_w[j], E_w[j·ψ₀(−a j)]) of rows whose windows are j = start + step·k,
    k = 0, ..., 2·side (see :func:`_tweedie_series_host`)."""
    from scipy.special import digamma, gammaln

    j = start[:, None] + step[:, None] * np.arange(2 * side + 1)
    log_w = j * log_z[:, None] - gammaln(j + 1.0) - gammaln(-a * j)
    top = np.max(log_w, axis=1, keepdims=True)
    weights = np.exp(log_w - top)
    total = np.sum(weights, axis=1)
    mean_j = np.sum(weights * j, axis=1) / total
    mean_jdig = np.sum(weights * j * digamma(-a * j), axis=1) / total
    return top[:, 0] + np.log(step * total), mean_j, mean_jdig


def _tweedie_mean_part(xp, y, x, p):
    """A = y μ^(1−p)/(1 − p) − μ^(2−p)/(2 − p) and its derivatives in x = log μ and p."""
    u1, u2 = xp.exp((1.0 - p) * x), xp.exp((2.0 - p) * x)
    yu1 = y * u1
    q1, q2 = 1.0 - p, 2.0 - p
    a0 = yu1 / q1 - u2 / q2
    a_x = yu1 - u2
    a_xx = q1 * yu1 - q2 * u2
    a_xxx = q1 * q1 * yu1 - q2 * q2 * u2
    a_p = yu1 * (1.0 / (q1 * q1) - x / q1) + u2 * (x / q2 - 1.0 / (q2 * q2))
    a_xp = x * (u2 - yu1)
    a_xxp = u2 * (1.0 + q2 * x) - yu1 * (1.0 + q1 * x)
    return a0, a_x, a_xx, a_xxx, a_p, a_xp, a_xxp


def tweedie_value(xp, y, x, psi, p, weights, n_terms=None):
    log_series = _tweedie_series(xp, y, psi, p, n_terms)[0]
    a0 = _tweedie_mean_part(xp, y, x, p)[0]
    log_y = xp.log(xp.where(y > 0, y, 1.0))
    return weights * (log_series - log_y + a0 * xp.exp(-psi))


def tweedie_partials(xp, y, x, psi, p, weights, third, need_psi=True):
    """Partials in x = log μ; ``need_psi`` also those in ψ = log φ."""
    a0, a_x, a_xx, a_xxx, *_ = _tweedie_mean_part(xp, y, x, p)
    inv_phi = xp.exp(-psi)
    w = weights * inv_phi
    out = Partials(tweedie_value(xp, y, x, psi, p, weights), w * a_x, w * a_xx,
                   w * a_xxx if third else None)
    if not need_psi:
        return out
    _, mean_j, _ = _tweedie_series(xp, y, psi, p)
    return out._replace(f_psi=weights * (-mean_j / (p - 1.0) - a0 * inv_phi),
                        f1_psi=-w * a_x, f2_psi=-w * a_xx)


def tweedie_power_partials(xp, y, x, psi, p, weights):
    """(f_ξ, f_xξ, f_xxξ) for ξ = logit(p − 1), the estimated power."""
    _, mean_j, mean_jdig = _tweedie_series(xp, y, psi, p)
    p1, p2 = p - 1.0, 2.0 - p
    a = -p2 / p1
    a_p = 1.0 / (p1 * p1)
    positive = y > 0
    log_y = xp.log(xp.where(positive, y, 1.0))
    log_z_p = -a_p * log_y + a_p * psi + a_p * xp.log(p1) + a / p1 + 1.0 / p2
    series_p = xp.where(positive, mean_j * log_z_p + a_p * mean_jdig, 0.0)
    _, _, _, _, m_p, m_xp, m_xxp = _tweedie_mean_part(xp, y, x, p)
    inv_phi = xp.exp(-psi)
    dp = p1 * p2  # dp/dξ = σ(ξ)(1 − σ(ξ)), σ(ξ) = p − 1
    c = weights * dp
    return c * (series_p + m_p * inv_phi), c * m_xp * inv_phi, c * m_xxp * inv_phi


# -- row terms ------------------------------------------------------------------------------

#: The families of this module by class name, and the mean variable x each works in.
FAMILIES = {
    "NegativeBinomial1": "log_mu", "TruncatedPoisson": "log_mu",
    "TruncatedNegativeBinomial2": "log_mu", "TruncatedNegativeBinomial1": "log_mu",
    "GeneralizedPoisson": "log_mu", "LogNormal": "log_mu", "BetaBinomial": "unit",
    "StudentT": "mu", "Tweedie": "log_mu", "ConwayMaxwellPoisson": "log_mu",
    "OrderedBeta": "eta",  # its own row terms: glmmjax._families.ordbeta
}
#: Those without a dispersion parameter.
NO_DISPERSION = ("TruncatedPoisson",)
_TRUNCATED = {"TruncatedPoisson": "poisson", "TruncatedNegativeBinomial2": "nbinom2",
              "TruncatedNegativeBinomial1": "nbinom1"}


def truncated_supported(family) -> bool:
    """Whether ``family`` is one of glmmjax's zero-truncated families (a subclass is
    the user's), whose :func:`truncated_mean` this module has."""
    from . import math as fm

    return fm._builtin(family, tuple(_TRUNCATED))


def truncated_mean(family, xp, mu, dispersion):
    """E[y | y ≥ 1] = μ/P(y > 0) of a :func:`truncated_supported` family (its
    ``response_mean``)."""
    name = _TRUNCATED[type(family).__name__]
    psi = 0.0 if name == "poisson" else xp.log(dispersion)
    return mu / -xp.expm1(log_zero_probability(xp, name, xp.log(mu), psi))


def row_terms(family, xp, y, eta, weights, dispersion, third: bool, need_psi: bool):
    """:class:`glmmjax._families.math.RowTerms` of a family of this module."""
    from . import math as fm

    name = type(family).__name__
    if name == "OrderedBeta":
        from .ordbeta import row_terms as ordbeta_row_terms

        return ordbeta_row_terms(family, xp, y, eta, weights, dispersion, third, need_psi)
    link = family.link
    shape_estimated = getattr(family, "n_shape", 0) > 0
    if shape_estimated:  # dispersion = (σ, ν) or (φ, p)
        dispersion, shape = dispersion[0], dispersion[1]
    else:
        shape = family.df if name == "StudentT" else getattr(family, "power", None)
    psi = 0.0 * eta if dispersion is None else xp.log(dispersion) + 0.0 * eta
    kind = FAMILIES[name]
    if kind == "log_mu":
        x, x1, x2, x3 = fm.log_mean_derivatives(link, xp, eta)
    elif kind == "mu":
        x, x1, x2, x3 = fm.mean_derivatives(link, xp, eta)
    else:
        (a, a1, a2, a3), (b, _, _, _) = fm.unit_log_derivatives(link, xp, eta)
        mu = xp.exp(a)
        x1, x2, x3 = mu * a1, mu * (a2 + a1 * a1), mu * (a3 + 3.0 * a1 * a2 + a1**3)
    if name in _TRUNCATED:
        parts = truncated_partials(xp, _TRUNCATED[name], y, x, psi, weights, third, need_psi)
    elif name == "NegativeBinomial1":
        parts = nb1_partials(xp, y, x, psi, weights, third, need_psi)
    elif name == "GeneralizedPoisson":
        parts = genpois_partials(xp, y, x, psi, weights, third, need_psi)
    elif name == "ConwayMaxwellPoisson":
        from .math_compois import compois_partials

        parts = compois_partials(xp, y, x, psi, weights, third, need_psi)
    elif name == "LogNormal":
        parts = lognormal_partials(xp, y, x, psi, weights, third, need_psi)
    elif name == "BetaBinomial":
        parts = betabinomial_partials(xp, y, a, b, psi, weights, third, need_psi)
    elif name == "Tweedie":
        parts = tweedie_partials(xp, y, x, psi, shape, weights, third, need_psi)
    else:
        parts = student_t_partials(xp, y, x, psi, weights, shape, third, need_psi)
    terms = fm.RowTerms(parts.value, *fm._chain(parts.f1, parts.f2, parts.f3, x1, x2, x3,
                                                third))
    if not need_psi:
        return terms
    psi_terms = fm._chain_psi(parts.f_psi, parts.f1_psi, parts.f2_psi, x1, x2)
    if shape_estimated:  # one row per outer parameter: log φ, then the shape's
        shape_partials = (student_t_df_partials(xp, y, x, psi, weights, shape)
                          if name == "StudentT"
                          else tweedie_power_partials(xp, y, x, psi, shape, weights))
        shape_terms = fm._chain_psi(*shape_partials, x1, x2)
        psi_terms = [xp.stack([a, b]) for a, b in zip(psi_terms, shape_terms)]
    return terms._replace(**dict(zip(("value_psi", "d1_psi", "w_psi"), psi_terms)))
