"""The per-row log-likelihood of a zero-inflation / hurdle / dispersion model and its
derivatives in (η, ζ, δ), in numpy and in closed form: the host parts engine's kernel
(:mod:`glmmjax._engines.host.parts`) for every built-in family, with nothing compiled.

What it returns is what the JAX kernel of :func:`glmmjax._engines.host.parts._build_kernel`
returns (nested ``jacfwd`` of :func:`glmmjax._families.response_parts.row_loglik`), per row i:
ℓ, G = ∇ℓ in e = (η, ζ, δ) (3), the (η, ζ) rows of ∇²ℓ (2 × 3), and ∂/∂e of the (η, ζ)
block of ∇²ℓ (2 × 2 × 3). Only third derivatives with η or ζ at least twice are needed.

Design: closed forms composed with the mixture (design (a)), not a generic numpy
truncated-Taylor ("jet") arithmetic (design (b)). Every built-in family's closed forms
already exist in :mod:`glmmjax._families.math` / :mod:`glmmjax._families.math_tmb` (the host
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

all times the row's prior weight (as :func:`glmmjax._families.response_parts.row_loglik`). The
dispersion enters the family as exp(p·δ) (:func:`glmmjax._families.response_parts.dispersion_power`),
so ∂/∂δ = p·∂/∂ψ.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..._families import math as fm
from ..._families.response_parts import dispersion_power, is_truncated, weights_are_trials
from ..._families.special_numpy import gammaln


def supported(family) -> bool:
    """Whether the closed forms cover ``family`` with its link in a parts model (built-in
    families and links; a shape estimated in the fit is refused earlier, by
    :func:`glmmjax._model.parts_design.check_parts`)."""
    return fm.supported(family) and not getattr(family, "n_shape", 0)


def _row_constant(family, y, inner):
    """The part of log f(y) that :func:`glmmjax._families.math.row_terms` leaves out (its
    ``loglik_constant`` per row, with the weights ``inner`` the density takes)."""
    name = type(family).__name__
    if name in ("Poisson", "NegativeBinomial"):
        return -gammaln(y + 1.0)
    if name == "Binomial":
        return fm.log_binomial_coefficient(np, inner, inner * y)
    return 0.0


def _sigmoid(x):
    """σ(x) = 1/(1 + e^−x), accurate in both tails (e^−x overflows only where σ(x) <
    1e-308, to 0); the kernel runs under ``np.errstate(all="ignore")``. Four numpy
    operations: a ``where`` on the sign would double them, on arrays where numpy's cost
    is per call."""
    return 1.0 / (1.0 + np.exp(-x))


def _log_sigmoid(x):
    """log σ(x) = −log(1 + e^−x), accurate in both tails."""
    return -np.logaddexp(0.0, -x)


class KernelRows(NamedTuple):
    """One kernel evaluation per row, in e = (η, ζ, δ): ℓ; G = ∇ℓ; W = −∇²ℓ on (η, ζ)
    and ∂²ℓ/∂(η, ζ)∂δ (h_ed, h_zd); ∂W/∂eₘ = −∂³ℓ (t_ee_e = ∂W_ηη/∂η, ...)."""

    ll: np.ndarray
    g_e: np.ndarray
    g_z: np.ndarray
    g_d: np.ndarray
    w_ee: np.ndarray
    w_ez: np.ndarray
    w_zz: np.ndarray
    h_ed: np.ndarray
    h_zd: np.ndarray
    t_ee_e: np.ndarray
    t_ee_z: np.ndarray
    t_ee_d: np.ndarray
    t_ez_e: np.ndarray
    t_ez_z: np.ndarray
    t_ez_d: np.ndarray
    t_zz_e: np.ndarray
    t_zz_z: np.ndarray
    t_zz_d: np.ndarray


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
        self.trials = weights_are_trials(family)

    def _log_density(self, y, inner, eta, delta, third: bool):
        """(f, f_η, f_ηη, f_ηηη, f_δ, f_ηδ, f_ηηδ) of log f(y; η, δ) per row (f without
        :func:`_row_constant`), the δ ones zero for a family without a dispersion."""
        family = self.family
        zero = np.zeros_like(eta)
        if self.has_dispersion:
            dispersion = np.exp(self.power * delta)
            t = fm.row_terms(family, np, y, eta, inner, dispersion, third=third,
                             dispersion_derivatives=True)
            p = self.power
            d_delta = (p * t.value_psi, p * t.d1_psi, -p * t.w_psi)
        else:
            t = fm.row_terms(family, np, y, eta, inner, None, third=third)
            d_delta = (zero, zero, zero)
        f3 = -t.w1 if third else None
        return (t.value + zero, t.d1 + zero, -t.w + zero, f3, *(d + zero for d in d_delta))

    def _density(self, y, inner, eta, delta):
        """(f, f_η, f_ηη) of log f(y; η, δ) per row (f without :func:`_row_constant`):
        :meth:`_log_density`'s first three, without the δ derivatives."""
        dispersion = np.exp(self.power * delta) if self.has_dispersion else None
        t = fm.row_terms(self.family, np, y, eta, inner, dispersion)
        zero = np.zeros_like(eta)
        return t.value + zero, t.d1 + zero, -t.w + zero

    def _rows(self, y, w):
        """What depends on the data alone, kept for the last (y, w) seen (a fit calls
        the kernel with them hundreds of times): y == 0, the y at which f is evaluated
        (a truncated density at a harmless 1 where y = 0, as row_loglik), the weights
        the density takes and those that multiply ℓ (trials go into the density, other
        weights multiply: :func:`glmmjax._families.response_parts.weights_are_trials`), and the
        constant."""
        if getattr(self, "_y", None) is not y or self._w is not w:
            y_used = np.where(y > 0, y, 1.0) if self.truncated else y
            ones = np.ones_like(y)
            inner, outer = (w, ones) if self.trials else (ones, w)
            self._y, self._w, self._zero, self._y_used = y, w, y == 0, y_used
            self._inner, self._outer = inner, outer
            self.all_unit_weights = bool(np.all(outer == 1.0))
            self._constant = _row_constant(self.family, y_used, inner)
        return self._zero, self._y_used, self._inner, self._outer, self._constant

    def newton(self, y, w, eta, zeta, delta):
        """What the inner Newton steps use, per row: ℓ, G_η, G_ζ, W_ηη, W_ηζ, W_ζζ (the
        kernel's outputs without the δ ones and the third derivatives, in as few array
        operations as the mixture allows: each is called a few times an evaluation)."""
        y, w = np.asarray(y, np.float64), np.asarray(w, np.float64)
        eta = np.asarray(eta, np.float64)
        zeta, delta = (np.asarray(a, np.float64) for a in (zeta, delta))
        if zeta.shape != eta.shape or delta.shape != eta.shape:
            zeta, delta = (np.broadcast_to(a, eta.shape) for a in (zeta, delta))
        zero, y_used, inner, w, constant = self._rows(y, w)
        with np.errstate(all="ignore"):
            f, f1, f2 = self._density(y_used, inner, eta, delta)
            f = f + constant
            if not self.zero_inflated:
                zeros = np.zeros_like(eta)
                return w * f, w * f1, zeros, -w * f2, zeros, zeros
            s, s_neg = _sigmoid(zeta), _sigmoid(-zeta)
            w_zz = s * s_neg
            if self.truncated:
                positive = ~zero
                ll = np.where(zero, _log_sigmoid(zeta), _log_sigmoid(-zeta) + f)
                g_e = np.where(zero, 0.0, f1)
                g_z = np.where(zero, s_neg, -s)
                w_ee = np.where(positive, -f2, 0.0)
                w_ez = np.zeros_like(eta)
            else:
                r, one_r = _sigmoid(zeta - f), _sigmoid(f - zeta)
                c = np.where(zero, r * one_r, 0.0)
                weight = np.where(zero, one_r, 1.0)
                g_e = weight * f1
                g_z = np.where(zero, r, 0.0) - s
                c_f1 = c * f1
                w_ee = -(c_f1 * f1 + weight * f2)
                w_ez = c_f1
                w_zz = w_zz - c
                ll = np.where(zero, np.logaddexp(zeta, f) - np.logaddexp(0.0, zeta),
                              _log_sigmoid(-zeta) + f)
            if self.all_unit_weights:
                return ll, g_e, g_z, w_ee, w_ez, w_zz
            return w * ll, w * g_e, w * g_z, w * w_ee, w * w_ez, w * w_zz

    def __call__(self, y, w, eta, zeta, delta, third: bool = True):
        """The JAX kernel's outputs (ℓ, G (n, 3), the (η, ζ) rows of ∇²ℓ (n, 2, 3), ∂/∂e
        of its (η, ζ) block (n, 2, 2, 3); None without ``third``), assembled from
        :meth:`terms`."""
        rows = self.terms(y, w, eta, zeta, delta)
        n = rows.ll.shape[0]
        g = np.stack([rows.g_e, rows.g_z, rows.g_d], axis=1)
        h = np.empty((n, 2, 3))
        h[:, 0, 0], h[:, 1, 1] = -rows.w_ee, -rows.w_zz
        h[:, 0, 1] = h[:, 1, 0] = -rows.w_ez
        h[:, 0, 2], h[:, 1, 2] = rows.h_ed, rows.h_zd
        if not third:
            return rows.ll, g, h, None
        t = np.empty((n, 2, 2, 3))
        for m, (ee, ez, zz) in enumerate(((rows.t_ee_e, rows.t_ez_e, rows.t_zz_e),
                                          (rows.t_ee_z, rows.t_ez_z, rows.t_zz_z),
                                          (rows.t_ee_d, rows.t_ez_d, rows.t_zz_d))):
            t[:, 0, 0, m], t[:, 1, 1, m] = -ee, -zz
            t[:, 0, 1, m] = t[:, 1, 0, m] = -ez
        return rows.ll, g, h, t

    def terms(self, y, w, eta, zeta, delta) -> KernelRows:
        """Each row's ℓ and derivatives as separate 1-D arrays (:class:`KernelRows`:
        what the host parts engine's gradient uses, with no (n, 2, 2, 3) array to fill
        and take apart), the prior weights applied."""
        y, w = np.asarray(y, np.float64), np.asarray(w, np.float64)
        eta = np.asarray(eta, np.float64)
        zeta, delta = (np.asarray(a, np.float64) for a in (zeta, delta))
        if zeta.shape != eta.shape or delta.shape != eta.shape:
            zeta, delta = (np.broadcast_to(a, eta.shape) for a in (zeta, delta))
        zero, y_used, inner, w, constant = self._rows(y, w)
        with np.errstate(all="ignore"):
            f, f1, f2, f3, fd, f1d, f2d = self._log_density(y_used, inner, eta, delta, True)
            f = f + constant
            if not self.zero_inflated:
                z = np.zeros_like(eta)  # one array for every term that is identically 0
                rows = KernelRows(f, f1, z, fd, -f2, z, z, f1d, z, -f3, z, -f2d,
                                  z, z, z, z, z, z)
            else:
                rows = self._mixture(zero, zeta, (f, f1, f2, f3, fd, f1d, f2d))
        if self.all_unit_weights:
            return rows
        return KernelRows(*(w * r for r in rows))

    def _mixture(self, zero, zeta, parts) -> KernelRows:
        """ℓ of a zero-inflated or hurdle model and its derivatives (module docstring),
        as :class:`KernelRows` (W = −∇², its derivatives −∇³). Each case is formed on
        every row and the rows' own case chosen by ``where``: cheaper than indexing on
        these sizes."""
        f, f1, f2, f3, fd, f1d, f2d = parts
        s, s_neg = _sigmoid(zeta), _sigmoid(-zeta)  # π, 1 − π
        s1 = s * s_neg
        # Every row: ∂²/∂ζ² of log σ(±ζ) is −π(1 − π), its ∂/∂ζ −π(1 − π)(1 − 2π).
        s2 = s1 * (s_neg - s)
        if self.truncated:
            # y > 0: log σ(−ζ) + log f₊(y); y = 0: log σ(ζ).
            z = np.zeros_like(zeta)
            return KernelRows(
                ll=np.where(zero, _log_sigmoid(zeta), _log_sigmoid(-zeta) + f),
                g_e=np.where(zero, 0.0, f1), g_z=np.where(zero, s_neg, -s),
                g_d=np.where(zero, 0.0, fd), w_ee=np.where(zero, 0.0, -f2), w_ez=z, w_zz=s1,
                h_ed=np.where(zero, 0.0, f1d), h_zd=z,
                t_ee_e=np.where(zero, 0.0, -f3), t_ee_z=z, t_ee_d=np.where(zero, 0.0, -f2d),
                t_ez_e=z, t_ez_z=z, t_ez_d=z, t_zz_e=z, t_zz_z=s2, t_zz_d=z)
        # y = 0: L(ζ, a) − softplus(ζ) with a = log f(0) = f on these rows; y > 0 as a
        # hurdle's positive rows.
        a, a1, a2, a3, ad, a1d, a2d = f, f1, f2, f3, fd, f1d, f2d
        r, one_r = _sigmoid(zeta - a), _sigmoid(a - zeta)
        c = np.where(zero, r * one_r, 0.0)  # 0 on y > 0 rows: their mixture terms vanish
        k = c * (one_r - r)
        weight = np.where(zero, one_r, 1.0)  # ∂L/∂a on zeros, 1 on y > 0
        c_a1, k_a1 = c * a1, k * a1
        k_a1_a1 = k_a1 * a1
        eez = k_a1_a1 - c * a2  # ∂³ℓ/∂η²∂ζ
        ezd = k_a1 * ad - c * a1d  # ∂³ℓ/∂η∂ζ∂δ
        zero_value = np.logaddexp(zeta, a) - np.logaddexp(0.0, zeta)
        return KernelRows(
            ll=np.where(zero, zero_value, _log_sigmoid(-zeta) + f),
            g_e=weight * a1, g_z=np.where(zero, r, 0.0) - s, g_d=weight * ad,
            w_ee=-(c_a1 * a1 + weight * a2), w_ez=c_a1, w_zz=s1 - c,
            h_ed=c_a1 * ad + weight * a1d, h_zd=-c * ad,
            t_ee_e=k_a1_a1 * a1 - 3.0 * c_a1 * a2 - weight * a3, t_ee_z=-eez,
            t_ee_d=k_a1_a1 * ad - c * (2.0 * a1 * a1d + a2 * ad) - weight * a2d,
            t_ez_e=-eez, t_ez_z=k_a1, t_ez_d=-ezd,
            t_zz_e=k_a1, t_zz_z=s2 - k, t_zz_d=k * ad)


# -- start values -------------------------------------------------------------------------

_UNIT_OPEN = ("Beta", "BetaBinomial")  # 0 < μ < 1
_REAL_MEAN = ("Gaussian", "StudentT")  # any finite μ
_PEARSON_VARIANCE = {"Gaussian": lambda mu: np.ones_like(mu), "Gamma": lambda mu: mu * mu,
                     "InverseGaussian": lambda mu: mu**3}


def _valid_mu(family, mu):
    """``family.valid_mu`` in numpy (the built-in families')."""
    name = type(family).__name__
    finite = np.isfinite(mu)
    if name in _REAL_MEAN:
        return finite
    if name == "Binomial":
        return finite & (mu >= 0) & (mu <= 1)
    if name in _UNIT_OPEN:
        return finite & (mu > 0) & (mu < 1)
    return finite & (mu > 0)


def _initial_mean(family, y, weights):
    """``family.initialize`` in numpy: the families' own formulas are arithmetic (they
    take numpy arrays as they are); the base class's is written out here."""
    from ..._families.base import Family

    if type(family).initialize is not Family.initialize:
        return np.asarray(family.initialize(y, weights), np.float64)
    w = np.where(weights > 0, weights, 0.0)
    mean = np.sum(w * y) / max(np.sum(w), np.finfo(np.float64).tiny)

    def usable(mu):
        return _valid_mu(family, mu) & np.isfinite(fm.link_function(family.link, np, mu))

    halfway = 0.5 * (y + mean)
    return np.where(usable(y), y, np.where(usable(halfway), halfway, mean))


def _dispersion_start(family, y, mu, w):
    """``family.dispersion_start`` in numpy (ML-dispersion families)."""
    name = type(family).__name__
    if hasattr(family, "moment_dispersion"):  # glmmTMB's families
        return family.moment_dispersion(np, y, mu, w)
    if name == "NegativeBinomial":
        return np.sum(w) / np.sum(w * (y / mu - 1.0) ** 2)
    if name == "Beta":
        return max(np.sum(w * mu * (1.0 - mu)) / np.sum(w * (y - mu) ** 2) - 1.0, 0.5)
    return 1.0


def start_params(data) -> np.ndarray:
    """:func:`glmmjax._engines.compiled.parts.start_params` in numpy for the families this module
    covers (:func:`supported`), so that a first fit compiles nothing."""
    from ..._model.covariance import initial_theta

    family = data.family
    y, w, offset = (np.asarray(a, np.float64) for a in (data.y, data.weights, data.offset))
    X = np.asarray(data.X, np.float64)
    with np.errstate(all="ignore"):
        mu0 = _initial_mean(family, y, w)
        eta0 = fm.link_function(family.link, np, mu0)
        eta0 = np.where(np.isfinite(eta0), eta0, 0.0) - offset
        beta = np.linalg.pinv(X) @ eta0 if X.shape[1] else np.zeros(0)
        mu = fm.inverse_link(family.link, np, X @ beta + offset)
        mu = np.where(_valid_mu(family, mu), mu, mu0)
        scale, log_phi = 1.0, 0.0
        if family.has_dispersion:
            if family.dispersion_method == "pearson":
                variance = _PEARSON_VARIANCE[type(family).__name__](mu)
                d0 = np.sum(w * (y - mu) ** 2 / variance) / max(np.sum(w > 0), 1)
            else:
                d0 = _dispersion_start(family, y, mu, w)
            d0 = float(np.clip(d0 if np.isfinite(d0) else 1.0, 1e-4, 1e4))
            log_phi = np.log(d0) / dispersion_power(family)
            if family.name == "gaussian":
                scale = np.sqrt(d0)
        if family.name != "gaussian":
            # SDs on a power link's scale are in the response's units.
            scale = float(fm.link_scale_spread(family.link, np, mu0, w))
        X_disp = np.asarray(data.X_disp, np.float64)
        beta_disp = (np.linalg.pinv(X_disp) @ (log_phi - np.asarray(data.offset_disp))
                     if X_disp.shape[1] else np.zeros(0))

    def theta0(sizes):
        return initial_theta(sizes) if sizes else np.zeros(0)

    return np.concatenate([theta0(data.cond.sizes) * scale, theta0(data.zi.sizes), beta,
                           np.zeros(np.shape(data.X_zi)[1]), beta_disp])
