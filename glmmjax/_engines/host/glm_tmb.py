"""glmmTMB's families as GLMs on the host engine: Newton in (β, log φ, shapes), no compile.

The families of :mod:`glmmjax._families.math_tmb` (NB1, the zero-truncated counts,
generalized Poisson, Conway–Maxwell–Poisson, beta-binomial, lognormal, Student-t,
Tweedie) and the ordered beta (:mod:`glmmjax._families.ordbeta`) are not exponential
families: IRLS does not maximize their likelihood. The compiled engine
(:func:`glmmjax._engines.compiled.glm._newton_ml`) fits them by damped Newton steps in
(β, ψ = log φ) with a Hessian from autodiff of ``loglik_eta``; here the same iterations
run on the families' closed-form row terms in numpy, so a first ``glm()`` pays no XLA
compilation (7–20 s on a small CPU; compois ~10 s).

The outer parameters are β, then ψ where the family has a dispersion, then the
unconstrained parameters of shapes estimated with it (``family.n_shape``: Student-t's
κ = log ν, Tweedie's ξ = logit(p − 1), ordered beta's cutpoints c₀, c₁), the layout of
the host GLMM engine (:mod:`glmmjax._engines.host.glmm`). With d = (ψ, shapes) and the
row terms ℓ, ℓ' = ∂ℓ/∂η, W = −∂²ℓ/∂η², ∂ℓ/∂d, ∂ℓ'/∂d (:func:`glmmjax._families.math.row_terms`):

    ∇_β(−ℓ) = −X'ℓ',   ∇_d(−ℓ) = −Σ ∂ℓ/∂d,
    H_ββ = X'WX,        H_βd = −X'(∂ℓ'/∂d),

both exact; the d×d block (one to three parameters) is the forward difference of the
exact ∇_d in d (the row terms give no second derivatives in d), which costs dim(d)
evaluations of the row terms per step and is accurate to ~1e-6 relative. Steps are
halved until −ℓ does not rise; where the Hessian is not positive definite (Student-t,
NB1 and generalized Poisson are not concave in η) the step falls back to a diagonally
scaled gradient step, as the compiled engine's. Var(β̂) is the β block of the inverse
Hessian in all outer parameters (glmmTMB's ``sdreport``); the zero-truncated Poisson,
with no dispersion, has Newton in β alone.
"""

from __future__ import annotations

import numpy as np

from ..._families import math as fm
from ..._families.math_tmb import FAMILIES as TMB_FAMILIES
from ..._families.math_tmb import NO_DISPERSION
from ..._families.shapes import shape_parameters, shape_starts, shape_values
from ..seam import GLMFit
from .glm import _solve_spd, newton, weighted_gram

_COUNTS = ("NegativeBinomial1", "TruncatedPoisson", "TruncatedNegativeBinomial2",
           "TruncatedNegativeBinomial1", "GeneralizedPoisson", "ConwayMaxwellPoisson")

#: Step of the forward differences of the exact gradient in (ψ, shapes): their error,
#: ~1e-6 relative, is far below what standard errors need, and rounding stays ~1e-10.
_DIFF_STEP = 1e-6


def applies(family) -> bool:
    """glmmTMB's families with closed-form row terms (every built-in link)."""
    return fm.supported(family) and type(family).__name__ in TMB_FAMILIES


def n_outer(family) -> int:
    """Outer parameters after β: ψ where the family has a dispersion, and its shapes."""
    has_dispersion = type(family).__name__ not in NO_DISPERSION
    return int(has_dispersion) + getattr(family, "n_shape", 0)


def dispersion_value(family, d):
    """The ``dispersion`` argument of the row terms at outer parameters d: None (no
    dispersion), φ = e^ψ, or the array (φ, shapes...) where shapes are estimated."""

    if len(d) == 0:
        return None
    if getattr(family, "n_shape", 0):
        return np.array([np.exp(d[0]), *shape_values(family, d[1:])])
    return float(np.exp(d[0]))


def start_mean(family, y, weights):
    """Starting means as the families' ``initialize`` (numpy)."""
    name = type(family).__name__
    if name == "BetaBinomial":
        return (weights * y + 0.5) / (weights + 1.0)
    if name == "Tweedie":
        return y + 0.1 * (y == 0)
    if name == "OrderedBeta":
        return 0.02 + 0.96 * y
    if name in _COUNTS:
        return y + (y == 0) / 6.0
    # Family.initialize: y where the link maps it inside the mean space, else halfway
    # to the weighted mean, else the mean.
    w = np.where(weights > 0, weights, 0.0)
    mean = np.sum(w * y) / max(np.sum(w), np.finfo(np.float64).tiny)

    def usable(mu):
        with np.errstate(divide="ignore", invalid="ignore"):
            ok = np.isfinite(mu) & np.isfinite(fm.link_function(family.link, np, mu))
            return ok & (mu > 0) if name == "LogNormal" else ok

    halfway = 0.5 * (y + mean)
    return np.where(usable(y), y, np.where(usable(halfway), halfway, mean))


def _rows(a, k):
    """(k, n) rows of the dispersion terms (the families return one row flat)."""
    return np.asarray(a).reshape(k, -1)


class _Objective:
    """−ℓ and its derivatives at outer parameters (β, d), on one model's data. The row
    terms of the last point are kept: a step's accepted trial point is the next
    step's point, and the terms with their d-derivatives cost the slow families
    (Conway–Maxwell–Poisson's Newton solves for log λ, Tweedie's series) little more
    than the value alone."""

    def __init__(self, X, y, weights, offset, family):
        self.X, self.y, self.weights, self.offset, self.family = X, y, weights, offset, family
        self.used = weights > 0
        self.p = X.shape[1]
        self._last = (None, None)

    def terms(self, params):
        key = params.tobytes()
        if self._last[0] != key:
            eta = self.X @ params[:self.p] + self.offset
            dispersion = dispersion_value(self.family, params[self.p:])
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                terms = fm.row_terms(self.family, np, self.y, eta, self.weights, dispersion,
                                     dispersion_derivatives=len(params) > self.p)
            self._last = (key, terms)
        return self._last[1]

    def value(self, params) -> float:
        """−ℓ (inf where not finite)."""
        total = -float(np.sum(np.where(self.used, self.terms(params).value, 0.0)))
        return total if np.isfinite(total) else np.inf

    def gradient_d(self, params):
        """∇_d(−ℓ), d = the outer parameters after β."""
        k = len(params) - self.p
        return -np.sum(np.where(self.used, _rows(self.terms(params).value_psi, k), 0.0),
                       axis=1)

    def derivatives(self, params):
        """(−ℓ, its gradient, its Hessian) in (β, d) (module docstring)."""
        X, p = self.X, self.p
        k = len(params) - p
        terms = self.terms(params)
        value = self.value(params)
        d1 = np.where(self.used, terms.d1, 0.0)
        h_bb = weighted_gram(X, np.where(self.used, terms.w, 0.0))
        if k == 0:
            return value, -(X.T @ d1), h_bb
        grad_d = self.gradient_d(params)
        d1_psi = np.where(self.used, _rows(terms.d1_psi, k), 0.0)
        grad = np.concatenate([-(X.T @ d1), grad_d])
        h_bd = -(X.T @ d1_psi.T)
        h_dd = np.empty((k, k))
        here = self._last
        for j in range(k):
            shifted = params.copy()
            shifted[p + j] += _DIFF_STEP
            h_dd[:, j] = (self.gradient_d(shifted) - grad_d) / _DIFF_STEP
        h_dd = 0.5 * (h_dd + h_dd.T)
        self._last = here  # this point's terms, for the line search's comparisons
        return value, grad, np.block([[h_bb, h_bd], [h_bd.T, h_dd]])


def start(X, y, weights, offset, family):
    """As the compiled engine: least squares of g(μ_start) − offset on X, the family's
    moment estimate of the dispersion there, the shapes' starting values."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        eta_start = fm.link_function(family.link, np, start_mean(family, y, weights)) - offset
        coef0 = _solve_spd(weighted_gram(X, weights), X.T @ (weights * eta_start))
        if n_outer(family) == 0:
            return coef0
        mu0 = fm.inverse_link(family.link, np, X @ coef0 + offset)
        phi0 = float(family.moment_dispersion(np, y, mu0, weights))

    shapes = shape_parameters(family, shape_starts(family)) if getattr(family, "n_shape", 0) \
        else []
    return np.concatenate([coef0, [np.log(phi0)], shapes])


def fit_glm(X, y, weights, offset, family, *, max_iter: int = 100) -> tuple[GLMFit, list]:
    """Fit a GLM of glmmTMB's family (numpy in): the :class:`GLMFit` (``dispersion`` φ,
    NaN-free only where the family has one) and the estimated shapes' values (empty
    unless ``family.n_shape``)."""

    X = np.asarray(X, dtype=np.float64)
    y, weights, offset = (np.asarray(a, dtype=np.float64) for a in (y, weights, offset))
    p = X.shape[1]
    objective = _Objective(X, y, weights, offset, family)
    params, hess, iterations, converged = newton(
        objective, start(X, y, weights, offset, family), max_iter)
    k = len(params) - p
    coef = params[:p]
    full = _solve_spd(hess, np.eye(p + k))
    vcov = full[:p, :p]
    cov_unscaled = _solve_spd(hess[:p, :p], np.eye(p))  # (X'WX)⁻¹, W = −ℓ'' at the fit
    if k:
        dispersion = float(np.exp(params[p]))
        dispersion_se = dispersion * float(np.sqrt(full[p, p]))
    else:
        dispersion, dispersion_se = 1.0, float("nan")
    shapes = shape_values(family, params[p + 1:]) if getattr(family, "n_shape", 0) else []
    eta = X @ coef + offset
    loglik = -objective.value(params)
    fit = GLMFit(
        coef=coef, vcov=vcov, cov_unscaled=cov_unscaled,
        dispersion=np.asarray(dispersion), dispersion_se=np.asarray(dispersion_se),
        eta=eta, mu=fm.inverse_link(family.link, np, eta),
        deviance=np.asarray(-2.0 * loglik), loglik=np.asarray(loglik),
        iterations=np.asarray(iterations), converged=np.asarray(converged),
        null_deviance=np.asarray(np.nan),
    )
    return fit, [float(v) for v in shapes]
