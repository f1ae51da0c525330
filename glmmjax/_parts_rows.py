"""The per-row log-likelihood of a zero-inflation / hurdle / dispersion model and its
derivatives in (η, ζ, δ), in numpy and in closed form: the host parts engine's kernel
(:mod:`glmmjax._parts_host`) for every built-in family, with nothing compiled.

What it returns is what the JAX kernel of :func:`glmmjax._parts_host._build_kernel`
returns (nested ``jacfwd`` of :func:`glmmjax._response_parts.row_loglik`), per row i:
ℓ, G = ∇ℓ in e = (η, ζ, δ) (3), the (η, ζ) rows of ∇²ℓ (2 × 3), and ∂/∂e of the (η, ζ)
block of ∇²ℓ (2 × 2 × 3). Only third derivatives with η or ζ at least twice are needed.

Design: closed forms composed with the mixture (design (a)), not a generic numpy
truncated-Taylor ("jet") arithmetic (design (b)). Every built-in family's closed forms
already exist in :mod:`glmmjax._family_math` / :mod:`glmmjax._family_math_tmb` (the host
GLMM engines' kernels, checked against autodiff in tests/test_family_math.py): ℓ = log f
and ℓ_η, ℓ_ηη, ℓ_ηηη, ℓ_ψ, ℓ_ηψ, ℓ_ηηψ in ψ = log of the family's dispersion. These
are exactly the derivatives of log f that the kernel needs, since every output has at
most one δ. The zero-inflation and hurdle mixtures are then a few lines of exact
algebra on top (below), and log f(0) is the family's own terms at y = 0 — no second
evaluation, because a zero-inflated model's zero rows already are rows with y = 0. A
jet arithmetic would have re-derived the same numbers through ~20 overloaded operations
per family at several times the cost per evaluation (3-variable third-order jets carry
20 coefficients per row per intermediate), and would need its own tests of every
primitive; the closed forms cost one family evaluation plus O(1) arithmetic per row.
User-defined families (and links) are not covered (:func:`supported`) and keep the
compiled JAX kernel.

The mixture. With π = σ(ζ) and a(η, δ) = log f(0; η, δ):

* zero-inflation, y = 0: ℓ = log(π + (1 − π)eᵃ) = L(ζ, a) − softplus(ζ) with
  L = logaddexp(ζ, a); with r = σ(ζ − a), c = r(1 − r), k = c(1 − 2r):
  L_ζ = r, L_a = 1 − r, L_ζζ = L_aa = −L_ζa = c, L_ζζζ = −L_ζζa = L_ζaa = −L_aaa = k;
* zero-inflation or hurdle, y > 0: ℓ = log σ(−ζ) + log f(y) (f₊ for a hurdle);
* hurdle, y = 0: ℓ = log σ(ζ);

all times the row's prior weight (as :func:`glmmjax._response_parts.row_loglik`). The
dispersion enters the family as exp(p·δ) (:func:`glmmjax._response_parts.dispersion_power`),
so ∂/∂δ = p·∂/∂ψ.
"""

from __future__ import annotations

import numpy as np
import scipy.special

from . import _family_math as fm
from ._response_parts import dispersion_power, is_truncated


def supported(family) -> bool:
    """Whether the closed forms cover ``family`` with its link in a parts model (built-in
    families and links; a shape estimated in the fit is refused earlier, by
    :func:`glmmjax._parts_design.check_parts`)."""
    return fm.supported(family) and not getattr(family, "n_shape", 0)


def _row_constant(family, y):
    """The part of log f(y) that :func:`glmmjax._family_math.row_terms` leaves out (its
    ``loglik_constant`` per row, unit weights)."""
    name = type(family).__name__
    if name == "Poisson":
        return -scipy.special.gammaln(y + 1.0)
    if name == "Binomial":
        return fm.log_binomial_coefficient(np, np.ones_like(y), y)
    return 0.0


def _sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _log_sigmoid(x):
    return np.minimum(x, 0.0) - np.log1p(np.exp(-np.abs(x)))


class RowKernel:
    """The numpy kernel of one (family, zero_inflated) pair: call it as the JAX kernel,
    ``kernel(y, w, eta, zeta, delta)``; ``third=False`` leaves out the third
    derivatives (returned as None), which the inner Newton steps do not use."""

    def __init__(self, family, zero_inflated: bool):
        if not supported(family):
            raise NotImplementedError(f"no closed forms for {family}")
        self.family = family
        self.zero_inflated = zero_inflated
        self.truncated = is_truncated(family)
        self.power = dispersion_power(family)
        self.has_dispersion = bool(family.has_dispersion)

    def _log_density(self, y, eta, delta, third: bool):
        """(f, f_η, f_ηη, f_ηηη, f_δ, f_ηδ, f_ηηδ) of log f(y; η, δ) per row, the δ
        ones zero for a family without a dispersion."""
        family = self.family
        ones = np.ones_like(y)
        zero = np.zeros_like(eta)
        if self.has_dispersion:
            dispersion = np.exp(self.power * delta)
            t = fm.row_terms(family, np, y, eta, ones, dispersion, third=third,
                             dispersion_derivatives=True)
            p = self.power
            d_delta = (p * t.value_psi, p * t.d1_psi, -p * t.w_psi)
        else:
            t = fm.row_terms(family, np, y, eta, ones, None, third=third)
            d_delta = (zero, zero, zero)
        value = t.value + _row_constant(family, y)
        f3 = -t.w1 if third else None
        return (value + zero, t.d1 + zero, -t.w + zero, f3, *(d + zero for d in d_delta))

    def __call__(self, y, w, eta, zeta, delta, third: bool = True):
        y, w = np.asarray(y, np.float64), np.asarray(w, np.float64)
        eta = np.asarray(eta, np.float64)
        zeta = np.broadcast_to(np.asarray(zeta, np.float64), eta.shape)
        delta = np.broadcast_to(np.asarray(delta, np.float64), eta.shape)
        n = eta.shape[0]
        with np.errstate(all="ignore"):
            y_used = np.where(y > 0, y, 1.0) if self.truncated else y
            f, f1, f2, f3, fd, f1d, f2d = self._log_density(y_used, eta, delta, third)
            ll = np.zeros(n)
            g = np.zeros((n, 3))
            h = np.zeros((n, 2, 3))
            t = np.zeros((n, 2, 2, 3)) if third else None
            if not self.zero_inflated:
                ll[:] = f
                g[:, 0], g[:, 2] = f1, fd
                h[:, 0, 0], h[:, 0, 2] = f2, f1d
                if third:
                    t[:, 0, 0, 0], t[:, 0, 0, 2] = f3, f2d
            else:
                self._mixture(y, zeta, (f, f1, f2, f3, fd, f1d, f2d), ll, g, h, t)
            ll *= w
            g *= w[:, None]
            h *= w[:, None, None]
            if third:
                t *= w[:, None, None, None]
        return ll, g, h, t

    def _mixture(self, y, zeta, parts, ll, g, h, t):
        """Fill the outputs of a zero-inflated or hurdle model (module docstring)."""
        f, f1, f2, f3, fd, f1d, f2d = parts
        third = t is not None
        s = _sigmoid(zeta)  # π
        s1 = s * _sigmoid(-zeta)  # π(1 − π)
        s2 = s1 * (1.0 - 2.0 * s)
        zero = y == 0
        # Rows with y > 0 (and a hurdle's zeros in ζ): log σ(∓ζ) + [log f].
        positive = ~zero
        ll[positive] = (_log_sigmoid(-zeta) + f)[positive]
        g[positive, 0], g[positive, 1], g[positive, 2] = f1[positive], -s[positive], fd[positive]
        h[positive, 0, 0], h[positive, 0, 2] = f2[positive], f1d[positive]
        h[:, 1, 1] = -s1  # every row: ∂²/∂ζ² of log σ(±ζ) is −π(1 − π) ...
        if third:
            t[positive, 0, 0, 0], t[positive, 0, 0, 2] = f3[positive], f2d[positive]
            t[:, 1, 1, 1] = -s2  # ... and its ∂/∂ζ
        if self.truncated:  # hurdle zeros: log σ(ζ)
            ll[zero] = _log_sigmoid(zeta)[zero]
            g[zero, 1] = 1.0 - s[zero]
            return
        # Zero-inflated zeros: L(ζ, a) − softplus(ζ), a = log f(0) = f on these rows.
        a, a1, a2, a3 = f[zero], f1[zero], f2[zero], None if f3 is None else f3[zero]
        ad, a1d, a2d = fd[zero], f1d[zero], f2d[zero]
        z = zeta[zero]
        r, one_r = _sigmoid(z - a), _sigmoid(a - z)
        c = r * one_r
        k = c * (one_r - r)
        ll[zero] = np.logaddexp(z, a) - np.logaddexp(0.0, z)
        g[zero, 0], g[zero, 1], g[zero, 2] = one_r * a1, r - s[zero], one_r * ad
        h[zero, 0, 0] = c * a1 * a1 + one_r * a2
        h[zero, 0, 1] = h[zero, 1, 0] = -c * a1
        h[zero, 0, 2] = c * a1 * ad + one_r * a1d
        h[zero, 1, 1] = c - s1[zero]
        h[zero, 1, 2] = -c * ad
        if not third:
            return
        ee = -k * a1**3 + 3.0 * c * a1 * a2 + one_r * a3  # ∂³/∂η³
        eez = k * a1 * a1 - c * a2  # ∂³/∂η²∂ζ
        eed = -k * a1 * a1 * ad + c * (2.0 * a1 * a1d + a2 * ad) + one_r * a2d
        ezz = -k * a1  # ∂³/∂η∂ζ²
        ezd = k * a1 * ad - c * a1d
        zzd = -k * ad
        t[zero, 0, 0, 0], t[zero, 0, 0, 1], t[zero, 0, 0, 2] = ee, eez, eed
        t[zero, 0, 1, 0], t[zero, 0, 1, 1], t[zero, 0, 1, 2] = eez, ezz, ezd
        t[zero, 1, 0] = t[zero, 0, 1]
        t[zero, 1, 1, 0], t[zero, 1, 1, 1], t[zero, 1, 1, 2] = ezz, k - s2[zero], zzd
