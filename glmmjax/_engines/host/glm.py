"""The host GLM engine: R's IRLS in numpy, nothing to compile.

It runs :func:`glmmjax._engines.compiled.glm.irls`'s algorithm step for step (same starting means,
working weights formed without dividing by dμ/dη, the same halving of invalid or
rising steps, the same convergence rule |D − D_old|/(|D| + 0.1) < ε and Var(β̂) from
the last weighted least-squares solve) with the closed forms of
:mod:`glmmjax._families.math`, so the two engines agree to rounding (a parity test
checks every family and link) while a first fit here pays no XLA compilation, which
on a small CPU takes seconds: longer than the whole fit of a million rows here
(benchmarks/README.md).

Covered: the exponential families that IRLS fits with a dispersion that is 1, fixed
or Pearson's (Gaussian, binomial, Poisson, Gamma, inverse Gaussian, negative binomial
with a given θ) with every built-in link, and the negative binomial with θ estimated
(``MASS::glm.nb``) and beta regression (φ estimated, as glmmTMB's ``beta_family``), by
the compiled engine's damped Newton iterations in (β, log dispersion) with the exact
Hessian; glmmTMB's families (their dispersion and estimated shapes included) by Newton
on their closed-form row terms (:mod:`glmmjax._engines.host.glm_tmb`). User-defined
families and links use the compiled engine (:func:`applies`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.linalg
from scipy.special import xlog1py, xlogy

from ..._families import math as fm
from ..blas import single_threaded_blas
from ..seam import GLMFit

_IRLS_FAMILIES = ("Gaussian", "Binomial", "Poisson", "Gamma", "InverseGaussian",
                  "NegativeBinomial", "Beta")
_MAX_HALVINGS = 40
# From this many rows IRLS starts from a fit on every WARM_START_STRIDE-th row: the
# subsample's iterations cost 1/8 of a pass each, and from its estimate the full data
# converge in two iterations instead of four or five (benchmarks/README.md, GLM).
WARM_START_ROWS = 200_000
WARM_START_STRIDE = 8


def applies(family) -> bool:
    """Whether the host engine fits this family (see the module's docstring)."""
    from . import glm_tmb

    if glm_tmb.applies(family):
        return True
    if not (fm.supported(family) and type(family).__name__ in _IRLS_FAMILIES):
        return False
    return family.dispersion_method in ("none", "fixed", "pearson") or _ml(family)


def _ml(family) -> bool:
    """The negative binomial's θ or the beta's φ by maximum likelihood."""
    return (type(family).__name__ in ("NegativeBinomial", "Beta")
            and family.dispersion_method == "ml")


def _theta(family):
    """A negative binomial's given θ (None for other families or θ estimated)."""
    return family.theta if type(family).__name__ == "NegativeBinomial" else None


def _name(family) -> str:
    return type(family).__name__


def _binomial_logit(family) -> bool:
    """The binomial with its canonical logit link: closed forms from exp(−|η|), and
    V(μ) = dμ/dη (the working system's shortcut)."""
    return _name(family) == "Binomial" and type(family.link).__name__ == "Logit"


class _Point(NamedTuple):
    """What IRLS needs at one η: μ, dμ/dη, V(μ), the deviance and the step's validity."""

    eta: np.ndarray
    mu: np.ndarray
    mu_eta: np.ndarray
    var: np.ndarray
    deviance: float
    valid: bool


def _binomial_means(link, eta):
    """(μ, 1 − μ, log μ, log(1 − μ), dμ/dη), accurate in both tails (1 − μ is never
    formed by subtraction); the logit's from one exp and one log1p."""
    if type(link).__name__ == "Logit":
        log_mu, log_1m, mu, one_m = fm._sigmoids(np, eta)
        return mu, one_m, log_mu, log_1m, mu * one_m
    (log_mu, *_), (log_1m, *_) = fm.unit_log_derivatives(link, np, eta)
    mu_eta = fm.mean_derivatives(link, np, eta)[1]
    return np.exp(log_mu), np.exp(log_1m), log_mu, log_1m, mu_eta


def _zero_one(y) -> bool:
    """0/1 responses: the binomial's saturated model has ℓ = 0 there."""
    return bool(np.all((y == 0.0) | (y == 1.0)))


def saturated(family, y):
    """The part of the unit deviance that only y sets (computed once per fit)."""
    name = _name(family)
    with np.errstate(divide="ignore", invalid="ignore"):
        if name == "Binomial":
            if _zero_one(y):
                return 0.0  # both terms are exactly 0 (two passes saved)
            return 2.0 * (xlogy(y, y) + xlog1py(1.0 - y, -y))
        if name in ("Poisson", "NegativeBinomial"):
            return 2.0 * xlogy(y, y)
        if name == "Gamma":
            return -2.0 * np.log(y)
    return None


def evaluate(family, y, weights, eta, saturated_part=None, dispersion=None) -> _Point:
    """μ, dμ/dη, V(μ) (R's variance function), Σ w·d(y, μ) and validity at η;
    ``saturated_part``: :func:`saturated` of y, if computed already; ``dispersion``: the
    NB θ or beta φ the deviance is taken at (default: the family's fixed θ)."""
    if dispersion is None:
        dispersion = _theta(family)
    name = _name(family)
    if saturated_part is None:
        saturated_part = saturated(family, y)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if _binomial_logit(family):
            # σ(η) and 1 − σ(η) from e = exp(−|η|); y·log μ + (1 − y)·log(1 − μ) is
            # y·η − softplus(η), finite for every finite η.
            e = np.exp(-np.abs(eta))
            inv = 1.0 / (1.0 + e)
            positive = eta >= 0
            mu = np.where(positive, inv, e * inv)
            mu_eta = var = e * inv * inv
            softplus = np.maximum(eta, 0.0) + np.log1p(e)
            unit = saturated_part - 2.0 * (y * eta - softplus)
        elif name == "Beta":
            mu, one_m, _, _, mu_eta = _binomial_means(family.link, eta)
            var = mu * one_m
            unit = beta_unit_deviance(y, mu, one_m, dispersion)
        elif name == "Binomial":
            mu, one_m, log_mu, log_1m, mu_eta = _binomial_means(family.link, eta)
            var = mu * one_m
            unit = saturated_part - 2.0 * (np.where(y > 0, y * log_mu, 0.0)
                                           + np.where(y < 1, (1.0 - y) * log_1m, 0.0))
        else:
            if type(family.link).__name__ == "Log":
                mu = np.exp(eta)
                mu_eta = mu
            else:
                mu, mu_eta = fm.mean_derivatives(family.link, np, eta)[:2]
            var, unit = _variance_and_unit_deviance(family, y, mu, saturated_part, dispersion)
        d = np.sum(np.where(weights > 0, weights * unit, 0.0))
        if _binomial_logit(family):
            # μ is in [0, 1] wherever η is finite (built so above): η decides.
            valid = bool(np.all(np.isfinite(eta)))
        else:
            valid = bool(np.all(valid_eta(family, eta) & valid_mu(family, mu)))
    return _Point(eta, mu, mu_eta, var, float(d), valid)


def _beta_density(y, log_y, log_1my, mu, one_m, phi):
    from scipy.special import gammaln

    a, b = mu * phi, one_m * phi
    return gammaln(phi) - gammaln(a) - gammaln(b) + (a - 1.0) * log_y + (b - 1.0) * log_1my


def beta_unit_deviance(y, mu, one_m, phi):
    """2·[ℓ(y; μ*) − ℓ(y; μ)] for precision φ, μ* the saturated model's mean (not y: the
    root of ψ(μφ) − ψ((1 − μ)φ) = logit y, by the compiled twin's clipped Newton steps in
    logit μ, 30 of them)."""
    from scipy.special import digamma, expit, polygamma

    log_y, log_1my = np.log(y), np.log1p(-y)
    target = log_y - log_1my
    t = target.copy()
    for _ in range(30):
        m = expit(t)
        a, b = m * phi, (1.0 - m) * phi
        f = digamma(a) - digamma(b) - target
        slope = phi * m * (1.0 - m) * (polygamma(1, a) + polygamma(1, b))
        t = t - np.clip(f / slope, -2.0, 2.0)
    best = expit(t)
    gap = (_beta_density(y, log_y, log_1my, best, 1.0 - best, phi)
           - _beta_density(y, log_y, log_1my, mu, one_m, phi))
    return 2.0 * np.maximum(gap, 0.0)


def _variance_and_unit_deviance(family, y, mu, sat, theta):
    """V(μ) and d(y, μ) per unit weight (R's dev.resids / w), families but the binomial;
    ``sat`` is :func:`saturated` of y."""
    name = _name(family)
    if name == "Gaussian":
        return np.ones_like(mu), (y - mu) ** 2
    if name == "Poisson":
        return mu, sat - 2.0 * (xlogy(y, mu) + (y - mu))
    if name == "Gamma":
        return mu * mu, sat + 2.0 * (np.log(mu) + (y - mu) / mu)
    if name == "InverseGaussian":
        return mu**3, (y - mu) ** 2 / (y * mu * mu)
    # negative binomial
    return (mu + mu * mu / theta,
            sat - 2.0 * (xlogy(y, mu) + (y + theta) * np.log((y + theta) / (mu + theta))))


def unit_deviances(family, y, mu, dispersion=None):
    """Each row's d(y, μ) per unit weight in numpy (R's dev.resids / w) for R's families
    with built-in links (the negative binomial's θ and the beta's φ from ``dispersion``,
    else the family's fixed θ); None for other families (their JAX methods serve them).
    Residuals of a host fit are then computed without importing JAX."""
    name = _name(family)
    if not (fm.supported(family) and name in _IRLS_FAMILIES):
        return None
    y, mu = np.asarray(y, np.float64), np.asarray(mu, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if name == "Binomial":
            return 2.0 * (xlogy(y, y) - xlogy(y, mu) + xlog1py(1.0 - y, -y)
                          - xlog1py(1.0 - y, -mu))
        if name == "Beta":
            if dispersion is None:
                raise ValueError("the beta deviance depends on the precision phi; pass "
                                 "dispersion")
            return beta_unit_deviance(y, mu, 1.0 - mu, float(dispersion))
        theta = _theta(family) if dispersion is None else float(dispersion)
        return _variance_and_unit_deviance(family, y, mu, saturated(family, y), theta)[1]


def numpy_residuals(family, type, y, mu, eta, weights, dispersion):  # noqa: A002
    """Deviance or working residuals in numpy for R's families with built-in links (no
    JAX import after a host fit); None where only the family's JAX methods know how."""
    if not fm.link_supported(family.link):
        return None
    if type == "working":
        if not fm.supported(family):
            return None
        return (y - mu) / fm.mean_derivatives(family.link, np, np.asarray(eta, float))[1]
    unit = unit_deviances(family, y, mu, dispersion)
    if unit is None:
        return None
    deviance = np.maximum(np.asarray(weights, float) * unit, 0.0)
    return np.sign(y - mu) * np.sqrt(deviance)


def valid_mu(family, mu):
    name = _name(family)
    finite = np.isfinite(mu)
    if name == "Gaussian":
        return finite
    if name == "Binomial":
        return finite & (mu >= 0) & (mu <= 1)
    if name == "Beta":
        return finite & (mu > 0) & (mu < 1)
    return finite & (mu > 0)


def valid_eta(family, eta):
    name = type(family.link).__name__
    finite = np.isfinite(eta)
    if name == "Inverse":
        return finite & (eta != 0)
    if name in ("InverseSquared", "Sqrt"):
        return finite & (eta > 0)
    return finite


def initial_mean(family, y, weights):
    """R's ``mustart`` (each family's ``initialize`` in :mod:`glmmjax._families.base`)."""
    name = _name(family)
    if name == "Binomial":
        return (weights * y + 0.5) / (weights + 1.0)
    if name == "Poisson":
        return y + 0.1
    if name == "NegativeBinomial":
        return y + (y == 0) / 6.0
    w = np.where(weights > 0, weights, 0.0)
    mean = np.sum(w * y) / max(np.sum(w), np.finfo(np.float64).tiny)

    def usable(mu):
        with np.errstate(divide="ignore", invalid="ignore"):
            return valid_mu(family, mu) & np.isfinite(fm.link_function(family.link, np, mu))

    halfway = 0.5 * (y + mean)
    return np.where(usable(y), y, np.where(usable(halfway), halfway, mean))


def working_system(X, y, weights, offset, point: _Point, canonical: bool = False):
    """X'WX, X'Wz and W for the IRLS step (z never formed: no division by dμ/dη).
    ``canonical``: a canonical link with V(μ) = dμ/dη (the binomial's logit), where
    W = w·V(μ) and w·dμ/dη·(y − μ)/V(μ) = w·(y − μ): no squares, no divisions."""
    eta, mu, mu_eta, var = point.eta, point.mu, point.mu_eta, point.var
    if canonical:
        with np.errstate(invalid="ignore", over="ignore"):
            usable = var > 0  # 0 only where exp(−|η|) underflows
            w = np.where(usable, weights * var, 0.0)
            wz = w * (eta - offset) + np.where(usable, weights * (y - mu), 0.0)
        return weighted_gram(X, w), X.T @ wz, w
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        usable = (weights > 0) & (var > 0) & np.isfinite(var) & np.isfinite(mu_eta)
        safe_var = np.where(usable, var, 1.0)
        w = np.where(usable, weights * mu_eta**2 / safe_var, 0.0)
        wz = w * (eta - offset) + np.where(usable, weights * mu_eta * (y - mu) / safe_var,
                                           0.0)
    return weighted_gram(X, w), X.T @ wz, w


def weighted_gram(X, w, rows: int = 4096):
    """X'WX over blocks of rows: each block stays in cache and no n × p temporary is
    written (at 10⁶ × 21 that write alone, page faults included, costs more than BLAS's
    products). Non-negative weights as (√W X)'(√W X), BLAS's symmetric rank-k update;
    weights of either sign (a Newton Hessian away from the optimum) as (W X)'X."""
    gram = np.zeros((X.shape[1], X.shape[1]))
    if np.all(w >= 0):
        root_w = np.sqrt(w)
        for start in range(0, X.shape[0], rows):
            block = X[start:start + rows] * root_w[start:start + rows, None]
            gram += block.T @ block
        return gram
    for start in range(0, X.shape[0], rows):
        block = X[start:start + rows]
        gram += (block * w[start:start + rows, None]).T @ block
    return 0.5 * (gram + gram.T)


def _solve_spd(matrix, rhs):
    """Cholesky solve; NaN where ``matrix`` is not positive definite (as the JAX twin)."""
    try:
        factor = scipy.linalg.cho_factor(matrix, lower=True, check_finite=False)
    except (np.linalg.LinAlgError, ValueError):
        return np.full(np.shape(rhs), np.nan)
    if not np.all(np.isfinite(factor[0][np.tril_indices(len(matrix))])):
        return np.full(np.shape(rhs), np.nan)
    return scipy.linalg.cho_solve(factor, rhs, check_finite=False)


def irls(X, y, weights, offset, family, *, tol: float = 1e-8, max_iter: int = 25,
         dispersion=None, start=None):
    """IRLS as :func:`glmmjax._engines.compiled.glm.irls` (dispersion 1 or the family's fixed θ).

    ``start``: coefficients to start from (η = Xβ + offset) instead of R's starting means
    (used only where η is valid and the deviance finite); the first step may then also
    not raise the deviance.

    Returns (coef, the final point (η, μ, deviance, ...), cov_unscaled, working weights,
    iterations, converged).
    """
    p = X.shape[1]
    sat = saturated(family, y)
    canonical = _binomial_logit(family)
    point = None
    if start is not None:
        coef = np.asarray(start, dtype=np.float64)
        with np.errstate(all="ignore"):
            point = evaluate(family, y, weights, X @ coef + offset, sat, dispersion)
        if not (point.valid and np.isfinite(point.deviance)):
            start = point = None
    if point is None:
        with np.errstate(divide="ignore", invalid="ignore"):
            eta = fm.link_function(family.link, np, initial_mean(family, y, weights))
        coef = np.zeros(p)
        point = evaluate(family, y, weights, eta, sat, dispersion)
    xtwx, w = np.eye(p), np.zeros_like(y)
    converged = False
    it = 0
    while it < max_iter:
        first = it == 0 and start is None
        dev_old = point.deviance
        xtwx, xtwz, w = working_system(X, y, weights, offset, point, canonical)
        coef_full = _solve_spd(xtwx, xtwz)
        eta_full = X @ coef_full + offset
        # The full step, then halving towards the previous iterate while the step is
        # invalid, infinite, or (after the first) raises the deviance.
        t, k = 1.0, 0
        coef_new = coef_full
        trial = evaluate(family, y, weights, eta_full, sat, dispersion)
        while k < _MAX_HALVINGS:
            rising = (trial.deviance - dev_old) / (abs(trial.deviance) + 0.1) > 1e-10
            if trial.valid and np.isfinite(trial.deviance) and (first or not rising):
                break
            k += 1
            t *= 0.5
            coef_new = coef + t * (coef_full - coef)
            trial = evaluate(family, y, weights, point.eta + t * (eta_full - point.eta), sat,
                             dispersion)
        it += 1
        converged = abs(trial.deviance - dev_old) / (abs(trial.deviance) + 0.1) < tol
        coef, point = coef_new, trial
        if converged or not np.isfinite(trial.deviance):
            break
    cov_unscaled = _solve_spd(xtwx, np.eye(p))
    return coef, point, cov_unscaled, w, it, bool(converged)


def subsample_start(X, y, weights, offset, family, *, tol: float = 1e-8,
                    stride: int = WARM_START_STRIDE):
    """IRLS's estimate on every ``stride``-th row, as a start for the full data; None
    when that fit did not converge to finite values (:func:`irls` also falls back to
    R's start where the estimate gives an invalid η on the full data)."""
    rows = slice(None, None, stride)
    with np.errstate(all="ignore"):
        coef, _, _, _, _, converged = irls(
            np.ascontiguousarray(X[rows]), y[rows], weights[rows], offset[rows], family,
            tol=tol)
    return coef if converged and np.all(np.isfinite(coef)) else None


def _null_deviance(family, y, weights, offset, null_model, tol, max_iter, dispersion=None):
    """R's null deviance: of the weighted mean ("mean"), the intercept-only fit with the
    offset ("intercept", IRLS at the fit's dispersion), η = offset ("offset"); NaN for
    "none"."""
    if null_model == "none":
        return float("nan")
    if null_model == "mean":
        mean = np.sum(weights * y) / np.sum(weights)
        with np.errstate(divide="ignore"):
            eta_null = fm.link_function(family.link, np, np.full_like(y, mean))
    elif null_model == "offset":
        eta_null = offset
    elif null_model == "intercept":
        eta_null = irls(np.ones((len(y), 1)), y, weights, offset, family, tol=tol,
                        max_iter=max_iter, dispersion=dispersion)[1].eta
    else:
        raise ValueError("null_model must be 'none', 'mean', 'intercept' or 'offset', "
                         f"got {null_model!r}")
    return evaluate(family, y, weights, eta_null, dispersion=dispersion).deviance


def loglik(family, y, eta, weights, dispersion, deviance=None) -> float:
    """Σ ℓ at η. For a binomial with 0/1 data (the saturated model's ℓ is 0) it is
    −deviance/2 plus the constant, when the ``deviance`` at η is given: the same sum
    of the same per-row terms, without another pass over the rows."""
    if deviance is not None and _name(family) == "Binomial" and _zero_one(y):
        return float(-0.5 * deviance + fm.loglik_constant(family, np, y, weights))
    terms = fm.row_terms(family, np, y, eta, weights,
                         dispersion if _name(family) not in ("Binomial", "Poisson") else None)
    value = np.where(weights > 0, terms.value, 0.0)
    return float(np.sum(value) + fm.loglik_constant(family, np, y, weights))


def fit_glm(X, y, weights, offset, family, *, tol: float = 1e-8, max_iter: int = 25,
            null_model: str = "none"):
    """:func:`glmmjax._engines.compiled.glm.fit_glm` on the host engine (numpy in, a GLMFit of numpy out).

    BLAS is held to one thread (:mod:`glmmjax._engines.blas`): the products are over blocks of
    a few thousand rows, where threads only add contention when the cores are shared.
    """
    with single_threaded_blas():
        return _fit_glm(X, y, weights, offset, family, tol=tol, max_iter=max_iter,
                        null_model=null_model)


def _fit_glm(X, y, weights, offset, family, *, tol, max_iter, null_model):
    from . import glm_tmb

    if glm_tmb.applies(family):
        # Newton's iterations, not IRLS's: their own cap (as the compiled engine's).
        fit, shapes = glm_tmb.fit_glm(X, y, weights, offset, family)
        if shapes:  # (φ, shapes...), as the host GLMM engine's dispersion
            fit = fit._replace(dispersion=np.array([float(fit.dispersion), *shapes]))
        return fit
    if _ml(family):
        return _fit_ml(X, y, weights, offset, family, tol=tol, max_iter=max_iter,
                       null_model=null_model)

    X = np.asarray(X, dtype=np.float64)
    y, weights, offset = (np.asarray(a, dtype=np.float64) for a in (y, weights, offset))
    n_used = int(np.sum(weights > 0))
    p = X.shape[1]
    method = family.dispersion_method
    # A large fit starts from a subsample's estimate (R's iterations are counted
    # differently then: the subsample's are not reported).
    start = (subsample_start(X, y, weights, offset, family, tol=tol)
             if X.shape[0] >= WARM_START_ROWS else None)
    coef, point, cov_unscaled, w_last, iterations, converged = irls(
        X, y, weights, offset, family, tol=tol, max_iter=max_iter, start=start)
    eta, dev = point.eta, point.deviance
    mu = point.mu
    if method == "fixed":
        dispersion = float(_theta(family) or 1.0)
    else:
        dispersion = 1.0
    loglik_dispersion = dispersion
    if method == "pearson":
        # R's summary.glm: Σ W·r²/(n − p), working residuals r at the final fit and the
        # weights W of the last WLS solve (see the compiled twin).
        with np.errstate(divide="ignore", invalid="ignore"):
            working = (y - mu) / point.mu_eta
            pearson = np.sum(np.where(w_last > 0, w_last * working**2, 0.0))
        dispersion = float(pearson / (n_used - p))
        loglik_dispersion = (dev / n_used if _name(family) == "Gaussian"
                             else dev / float(np.sum(weights)))
    vcov = dispersion * cov_unscaled
    null_deviance = _null_deviance(family, y, weights, offset, null_model, tol, max_iter)
    return GLMFit(
        coef=coef, vcov=vcov, cov_unscaled=cov_unscaled, dispersion=np.asarray(dispersion),
        dispersion_se=np.asarray(np.nan), eta=eta, mu=mu, deviance=np.asarray(dev),
        loglik=np.asarray(loglik(family, y, eta, weights, loglik_dispersion, dev)),
        iterations=np.asarray(iterations), converged=np.asarray(converged),
        null_deviance=np.asarray(null_deviance),
    )


# ---- NB θ and beta φ by maximum likelihood (MASS::glm.nb, betareg / glmmTMB) -----------


def _dispersion_curvature(family, y, eta, weights, dispersion, terms=None):
    """Σ ∂²ℓ/∂ψ² at ψ = log of the dispersion (the one term :mod:`glmmjax._families.math`
    does not give): Σ value_psi + d²·Σ ∂²ℓ/∂d², with, for NB2 (d = θ),
    ∂²ℓ/∂θ² = w·[ψ₁(y + θ) − ψ₁(θ) + 1/θ − 1/(θ + μ) − (μ − y)/(θ + μ)²] and, for the
    beta (d = φ), ∂²ℓ/∂φ² = w·[ψ₁(φ) − μ²ψ₁(μφ) − (1 − μ)²ψ₁((1 − μ)φ)]. ``terms``: the
    row terms with dispersion derivatives at this point, if computed already."""
    from scipy.special import polygamma

    d = dispersion
    if terms is None:
        terms = fm.row_terms(family, np, y, eta, weights, d, dispersion_derivatives=True)
    if type(family).__name__ == "Beta":
        mu, one_m = _binomial_means(family.link, eta)[:2]
        second = weights * (polygamma(1, d) - mu * mu * polygamma(1, mu * d)
                            - one_m * one_m * polygamma(1, one_m * d))
    else:
        mu = fm.inverse_link(family.link, np, eta)
        second = weights * (polygamma(1, y + d) - polygamma(1, d) + 1.0 / d
                            - 1.0 / (d + mu) - (mu - y) / (d + mu) ** 2)
    return float(np.sum(terms.value_psi) + d * d * np.sum(second))


def _ml_derivatives(X, y, weights, offset, family, params):
    """−ℓ, its gradient and Hessian in (β, ψ), as the compiled ``_newton_ml``."""
    p = X.shape[1]
    eta = X @ params[:p] + offset
    dispersion = float(np.exp(params[p]))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        terms = fm.row_terms(family, np, y, eta, weights, dispersion,
                             dispersion_derivatives=True)
        h_pp = -_dispersion_curvature(family, y, eta, weights, dispersion, terms)
    grad = -np.concatenate([X.T @ terms.d1, [np.sum(terms.value_psi)]])
    h_bp = -(X.T @ terms.d1_psi)
    hess = np.block([[weighted_gram(X, terms.w), h_bp[:, None]], [h_bp[None, :], h_pp]])
    return -float(np.sum(terms.value)), grad, hess


def _ml_value(X, y, weights, offset, family, params) -> float:
    p = X.shape[1]
    eta = X @ params[:p] + offset
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        value = fm.row_terms(family, np, y, eta, weights, float(np.exp(params[p]))).value
    total = -float(np.sum(value))
    return total if np.isfinite(total) else np.inf


def newton(objective, params, max_iter: int = 100):
    """Damped Newton in the outer parameters (β, then dispersion or shapes), step for step
    as the compiled engine's ``_newton_ml``. ``objective`` has ``value(params)`` and
    ``derivatives(params)`` → (value, gradient, Hessian)."""
    hess = np.eye(len(params))
    converged = False
    it = 0
    while it < max_iter:
        current, grad, hess = objective.derivatives(params)
        step = _solve_spd(hess, grad)
        decrement = float(grad @ step)
        if not (np.all(np.isfinite(step)) and decrement > 0):
            step = grad / (np.abs(np.diag(hess)) + 1.0)
            decrement = np.inf
        done = decrement < 1e-18
        t = 2.0
        while True:
            t *= 0.5
            trial = params - t * step
            trial_value = objective.value(trial)
            if trial_value <= current + 1e-13 * abs(current) or t <= 1e-12:
                break
        stalled = t <= 1e-12
        # Within ~1e-4 SE of the optimum (decrement < 1e-8) a step that does not lower −ℓ
        # at all is lost in its rounding: stop there. Without this, a gradient whose
        # rounding exceeds 1e-9 (Tweedie's series at large j) kept stepping to max_iter
        # and reported non-convergence at the optimum.
        flat = decrement < 1e-8 and not trial_value < current
        it += 1
        if done or stalled or flat:
            converged = done or decrement < 1e-8
            break
        params = trial
    return params, hess, it, converged


class _MLObjective:
    """−ℓ of an NB (θ) or beta (φ) GLM in (β, ψ) for :func:`newton`."""

    def __init__(self, X, y, weights, offset, family):
        self.args = (X, y, weights, offset, family)

    def value(self, params):
        return _ml_value(*self.args, params)

    def derivatives(self, params):
        return _ml_derivatives(*self.args, params)


def _fit_ml(X, y, weights, offset, family, *, tol, max_iter, null_model):

    X = np.asarray(X, dtype=np.float64)
    y, weights, offset = (np.asarray(a, dtype=np.float64) for a in (y, weights, offset))
    p = X.shape[1]
    beta_family = type(family).__name__ == "Beta"
    # Start as the compiled engine: least squares of g(μ_start) − offset on X, then the
    # family's moment estimate (MASS::theta.ml's n / Σ w (y/μ − 1)²; for the beta,
    # Var y = μ(1 − μ)/(1 + φ)).
    with np.errstate(divide="ignore", invalid="ignore"):
        eta_start = fm.link_function(family.link, np, initial_mean(family, y, weights)) - offset
    coef0 = _solve_spd(weighted_gram(X, weights), X.T @ (weights * eta_start))
    mu0 = fm.inverse_link(family.link, np, X @ coef0 + offset)
    if beta_family:
        ratio = np.sum(weights * mu0 * (1.0 - mu0)) / np.sum(weights * (y - mu0) ** 2)
        start = max(ratio - 1.0, 0.5)
    else:
        start = np.sum(weights) / np.sum(weights * (y / mu0 - 1.0) ** 2)
    params, hess, iterations, converged = newton(
        _MLObjective(X, y, weights, offset, family), np.concatenate([coef0, [np.log(start)]]))
    coef, dispersion = params[:p], float(np.exp(params[p]))
    eta = X @ coef + offset
    point = evaluate(family, y, weights, eta, dispersion=dispersion)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        fisher = np.where(weights > 0, weights * point.mu_eta**2 / point.var, 0.0)
    cov_unscaled = _solve_spd(weighted_gram(X, fisher), np.eye(p))
    if family.joint_vcov:
        full = _solve_spd(hess, np.eye(p + 1))
        vcov, dispersion_se = full[:p, :p], dispersion * np.sqrt(full[p, p])
    else:
        vcov, dispersion_se = cov_unscaled, dispersion / np.sqrt(hess[p, p])
    null_deviance = _null_deviance(family, y, weights, offset, null_model, tol, max_iter,
                                   dispersion)
    return GLMFit(
        coef=coef, vcov=vcov, cov_unscaled=cov_unscaled,
        dispersion=np.asarray(dispersion), dispersion_se=np.asarray(dispersion_se),
        eta=eta, mu=point.mu, deviance=np.asarray(point.deviance),
        loglik=np.asarray(loglik(family, y, eta, weights, dispersion)),
        iterations=np.asarray(iterations), converged=np.asarray(converged),
        null_deviance=np.asarray(null_deviance),
    )
