"""glmmTMB's ordered beta family (``ordbeta``, Kubinec 2022), as glmmTMB 1.1.5 writes it
(src/glmmTMB.cpp, ``ordbeta_family``): a response in [0, 1] with exact zeros and ones.

With the logit-scale cutpoints c₀ < c₁ (glmmTMB's ``psi``, estimated jointly; its
``family_params`` reports plogis(psi) as "lower cutoff", "upper cutoff"), μ = σ(η) and
the beta precision φ = exp(δ):

* y = 0:      ℓ = log(1 − σ(η − c₀))
* y = 1:      ℓ = log σ(η − c₁)
* 0 < y < 1:  ℓ = log(σ(η − c₀) − σ(η − c₁)) + log Beta(y; μφ, (1 − μ)φ)

Why ordered beta rather than a cumulative-logit ordinal model (issue 20 lets us choose
one): glmmTMB 1.1.5 has ``ordbeta`` and no ordinal family, so ordered beta can be
checked against glmmTMB (the issue's standard of correctness) while an ordinal model
could not; it also answers the bad-input case the issue raises, proportions with exact
0 and 1, which the beta family refuses.

The family is :class:`glmmjax._families.tmb.OrderedBeta`. The host engine's closed
forms are below (:func:`row_terms`): the beta part is
:func:`glmmjax._families.math._beta`'s, the cutpoint part is written out with
D = σ(a) − σ(b), a = η − c₀, b = η − c₁, and the derivatives of log D.
"""

from __future__ import annotations

from .math_tmb import log1mexp


def _sig(xp, z):
    """σ(z), σ', σ'', σ''' at z."""
    s = 1.0 / (1.0 + xp.exp(-z))
    s1 = s * (1.0 - s)
    return s, s1, s1 * (1.0 - 2.0 * s), s1 * (1.0 - 6.0 * s + 6.0 * s * s)


def _log_sigmoid(xp, z):
    return -(xp.maximum(-z, 0.0) + xp.log1p(xp.exp(-xp.abs(z))))


def _log_beta_density(xp, y, mu_logit, phi):
    from .math import special

    sp = special(xp)
    mu = 1.0 / (1.0 + xp.exp(-mu_logit))
    alpha, beta = mu * phi, (1.0 - mu) * phi
    return (sp.gammaln(phi) - sp.gammaln(alpha) - sp.gammaln(beta)
            + (alpha - 1.0) * xp.log(y) + (beta - 1.0) * xp.log1p(-y))


def ordbeta_value(xp, y, eta, phi, c0, c1, weights):
    """ℓ per row (module docstring), times the weights."""
    a, b = eta - c0, eta - c1
    zero, one = y <= 0.0, y >= 1.0
    mid = ~(zero | one)
    y_mid = xp.where(mid, y, 0.5)
    log_d = _log_sigmoid(xp, a) + _log_sigmoid(xp, -b) + log1mexp(xp, b - a)
    middle = log_d + _log_beta_density(xp, y_mid, eta, phi)
    value = xp.where(zero, _log_sigmoid(xp, -a), xp.where(one, _log_sigmoid(xp, b), middle))
    return weights * value


def row_terms(family, xp, y, eta, weights, dispersion, third: bool, need_psi: bool):
    """:class:`glmmjax._families.math.RowTerms` of the ordered beta: in η, and with
    ``need_psi`` one row per outer parameter after β: log φ, then c₀ and c₁ when the
    cutpoints are estimated (``dispersion`` is then (φ, c₀, c₁))."""
    from . import math as fm

    if family.cutpoints is None:
        phi, c0, c1 = dispersion[0], dispersion[1], dispersion[2]
    else:
        phi, (c0, c1) = dispersion, family.cutpoints
    zero, one = y <= 0.0, y >= 1.0
    mid = ~(zero | one)
    y_mid = xp.where(mid, y, 0.5)
    ones = 1.0 + 0.0 * eta
    beta = fm._beta(family.link, xp, y_mid, eta, ones, phi, third, need_psi)
    a, b = eta - c0, eta - c1
    sa, sa1, sa2, sa3 = _sig(xp, a)
    sb, sb1, sb2, sb3 = _sig(xp, b)
    log_d = _log_sigmoid(xp, a) + _log_sigmoid(xp, -b) + log1mexp(xp, b - a)
    d = xp.exp(log_d)
    g1, g2, g3 = (sa1 - sb1) / d, (sa2 - sb2) / d, (sa3 - sb3) / d
    # ℓ and its η-derivatives on each kind of row.
    value = xp.where(zero, _log_sigmoid(xp, -a),
                     xp.where(one, _log_sigmoid(xp, b), log_d + beta.value))
    d1 = xp.where(zero, -sa, xp.where(one, 1.0 - sb, g1 + beta.d1))
    w = xp.where(zero, sa1, xp.where(one, sb1, -(g2 - g1 * g1) + beta.w))
    w1 = None
    if third:
        w1 = xp.where(zero, sa2, xp.where(one, sb2,
                                          -(g3 - 3.0 * g1 * g2 + 2.0 * g1**3) + beta.w1))
    out = fm.RowTerms(weights * value, weights * d1, weights * w,
                      weights * w1 if third else None)
    if not need_psi:
        return out
    zero_row = 0.0 * eta
    rows = [(xp.where(mid, beta.value_psi, zero_row), xp.where(mid, beta.d1_psi, zero_row),
             xp.where(mid, beta.w_psi, zero_row))]
    if family.cutpoints is None:
        def cut_terms(d_t, d1_t, d2_t):
            l_t = d_t / d
            l1_t = d1_t / d - g1 * l_t
            l2_t = d2_t / d - g2 * l_t - 2.0 * g1 * l1_t
            return l_t, l1_t, -l2_t

        m0 = cut_terms(-sa1, -sa2, -sa3)
        m1 = cut_terms(sb1, sb2, sb3)
        rows.append((xp.where(zero, sa, xp.where(one, 0.0, m0[0])),
                     xp.where(zero, sa1, xp.where(one, 0.0, m0[1])),
                     xp.where(zero, -sa2, xp.where(one, 0.0, m0[2]))))
        rows.append((xp.where(zero, 0.0, xp.where(one, sb - 1.0, m1[0])),
                     xp.where(zero, 0.0, xp.where(one, sb1, m1[1])),
                     xp.where(zero, 0.0, xp.where(one, -sb2, m1[2]))))
    stacked = [weights * xp.stack(parts) if len(rows) > 1 else weights * parts[0]
               for parts in zip(*rows)]
    return out._replace(value_psi=stacked[0], d1_psi=stacked[1], w_psi=stacked[2])
