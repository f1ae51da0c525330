"""Per-observation log-likelihood terms of the compiled GLMM inner problem: ℓ(η), ℓ'(η),
−ℓ''(η).

The inner Newton iteration and the Laplace objective pass over every observation
several times per evaluation, so on large data these terms dominate the fit. For every
built-in family and link they come from the closed forms of :mod:`glmmjax._families.math`
(the same text the host engine runs with numpy), and the part of ℓ that depends on
neither η nor the dispersion (log binomial coefficients, −log y!) is split off as a
constant, computed once per fit. User-defined families and links get ℓ', ℓ'' from
autodiff of ``family.loglik_eta`` (a forward and a reverse pass) with nothing split off.

Autodiff through the closed forms gives the exact higher derivatives that the Laplace
objective's gradient and Hessian need (they avoid ``abs``, whose derivative at 0 is 0).
:func:`closed_form` (binomial-logit and Poisson-log) is the narrower test of the batched
scalar path (:mod:`glmmjax._batching.scalar`), which needs a family without a dispersion.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..._families import math as fm


def closed_form(family) -> bool:
    """Binomial-logit and Poisson-log: the compiled engine's closed-form families (the
    others differentiate ``loglik_eta``; their compile time is about the same)."""
    return fm.supported(family) and (family.name, family.link.name) in (
        ("binomial", "logit"), ("poisson", "log"))


def _closed_kernel(family) -> bool:
    """Every built-in family and link: the compiled engine evaluates the same closed
    forms as the host engine (ℓ, ℓ', W directly; higher derivatives by autodiff through
    them), not autodiff of ``loglik_eta``."""
    return fm.supported(family)


def kernel_terms(family, y, eta, weights, dispersion):
    """(k, ℓ', W) per row: k = ℓ minus its η-free constant, W = −ℓ''."""
    if _closed_kernel(family):
        return tuple(fm.row_terms(family, jnp, y, eta, weights,
                                  dispersion)[:3])

    def total(e):
        return family.loglik_eta(y, e, weights, dispersion)

    def first(e):
        return jax.grad(lambda x: jnp.sum(total(x)))(e)

    grad, second = jax.jvp(first, (eta,), (jnp.ones_like(eta),))
    return total(eta), grad, -second


def kernel(family, y, eta, weights, dispersion):
    """ℓ per row without its η-free constant (see :func:`kernel_terms`)."""
    if _closed_kernel(family):
        return fm.row_terms(family, jnp, y, eta, weights,
                            dispersion).value
    return family.loglik_eta(y, eta, weights, dispersion)


def loglik_constant(family, y, weights):
    """Σ (ℓ − kernel): the log-likelihood's part that η does not change (a scalar)."""
    if _closed_kernel(family):
        return fm.loglik_constant(family, jnp, y, weights)
    return jnp.zeros((), dtype=jnp.result_type(y, float))
