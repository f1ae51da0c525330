"""Draws of a zero-inflation / dispersion-model fit's responses in numpy, for the
common built-in families (:meth:`GLMMPartsResult.simulate` and its parametric bootstrap):
a first simulation then compiles nothing (the JAX draw program,
:func:`glmmjax._results.parts._draw_program`, took ~3 s to compile and still serves every
other family and link). The draws follow each family's ``simulate`` (same
distributions, numpy's generator instead of JAX's).
"""

from __future__ import annotations

import numpy as np
import scipy.special

from .._families import math as fm
from .._families import math_compois
from .._families.response_parts import dispersion_power

_FAMILIES = ("Poisson", "NegativeBinomial", "NegativeBinomial1", "Gaussian", "Gamma",
             "Beta", "Binomial", "TruncatedPoisson", "ConwayMaxwellPoisson")


def supported(family) -> bool:
    """Built-in family and link among those drawn here."""
    return fm._builtin(family, _FAMILIES) and fm._builtin(family.link, fm._LINKS)


def draw(family, rng, eta, zeta, log_phi, trials, zero_inflated: bool) -> np.ndarray:
    """One draw per row (numpy generator ``rng``): zeros with probability σ(ζ) when
    ``zero_inflated``, else the family's draw at μ = g⁻¹(η) and the dispersion
    exp(p·log φ) (:func:`glmmjax._families.response_parts.dispersion_power`)."""
    name = type(family).__name__
    eta = np.asarray(eta, np.float64)
    mu = np.asarray(fm.inverse_link(family.link, np, eta), np.float64)
    n = mu.shape[0]
    disp = np.exp(dispersion_power(family) * np.asarray(log_phi, np.float64)) + 0.0 * mu
    if name == "Poisson":
        y = rng.poisson(mu).astype(np.float64)
    elif name == "NegativeBinomial":
        y = rng.poisson(rng.gamma(disp, mu / disp)).astype(np.float64)  # size θ
    elif name == "NegativeBinomial1":
        y = rng.poisson(rng.gamma(mu / disp, disp)).astype(np.float64)
    elif name == "Gaussian":
        y = mu + np.sqrt(disp) * rng.standard_normal(n)
    elif name == "Gamma":
        shape = 1.0 / disp
        y = rng.gamma(shape, mu / shape)
    elif name == "Beta":
        y = rng.beta(mu * disp, (1.0 - mu) * disp)
    elif name == "ConwayMaxwellPoisson":  # glmmTMB's φ = 1/ν, the exact inverse CDF
        y = math_compois.draw_numpy(rng, mu, disp)
    elif name == "Binomial":
        n_trials = np.round(trials).astype(np.int64)
        successes = rng.binomial(np.maximum(n_trials, 0), mu)
        y = np.where(n_trials > 0, successes / np.where(n_trials > 0, n_trials, 1), 0.0)
    else:  # TruncatedPoisson: the exact draw of its simulate
        u = rng.random(n)
        first = -np.log1p(u * np.expm1(-mu))
        y = 1.0 + rng.poisson(np.maximum(mu - first, 0.0)).astype(np.float64)
    if zero_inflated:
        y = np.where(rng.random(n) < scipy.special.expit(np.asarray(zeta, np.float64)), 0.0, y)
    return y
