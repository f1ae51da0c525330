"""glmmTMB's Conway–Maxwell–Poisson (``compois``) in its mean parameterization, for
numpy (closed-form partials for the host engines) and jax.numpy (``loglik_eta``).

CMP(λ, ν): P(y) = λʸ / (y!)^ν / Z(λ, ν), Z = Σ_j λʲ/(j!)^ν. glmmTMB (src/glmmTMB.cpp,
TMB's ``dcompois2``) parameterizes it by its mean μ and ν = 1/φ, φ = exp(δ) its
dispersion: log λ = L(μ, ν) solves E[y; L, ν] = ∂ log Z/∂L = μ (TMB's
``calc_loglambda``, Newton from L = ν log μ), and

    ℓ(y) = y·L − ν·log y! − log Z(L, ν).

log Z is summed as TMB's ``calc_logZ`` sums it: terms log T_j = jL − ν log j! around
the mode ⌊λ^(1/ν)⌋, accumulated in log space (log-sum-exp), plus the geometric bound
on the tail beyond the last term. numpy sums a window wide enough for every row (it
grows until both edges are below e⁻⁴⁰ of the largest term); the compiled evaluation
sums a static window of :data:`COMPOIS_TERMS` terms. TMB switches to a Laplace
approximation of Z when the mode exceeds 100 and μν > 200 with ν < 2μ; glmmjax always
sums the series (exact there; glmmTMB's value differs by the approximation's error).

Derivatives. In the log-mean x = log μ and ν, with the moments of j and g = log j!
under CMP(L, ν) (κ₂, κ₃, κ₄ the cumulants of j; a = j − μ, b = g − E g):

    L_x = μ/κ₂,   L_ν = E[ab]/κ₂                      (implicit function)
    ℓ_x = (y − μ)·L_x,   ℓ_ν = (y − μ)·L_ν − log y! + E g

and the higher ones below (:func:`compois_partials`), by differentiating those. The
dispersion variable is ψ = log φ = −log ν, so ∂/∂ψ = −ν ∂/∂ν.
"""

from __future__ import annotations

import math

import numpy as np

#: Terms of the compiled (static-shape) series: a window of this many j around the mode.
#: Exact (to e⁻⁴⁰ of Z) while about 12 standard deviations of y fit in half of it.
COMPOIS_TERMS = 384
_EDGE = -40.0  # numpy: log of the largest edge term over the largest term allowed
_NEWTON_STEPS = 100


def _special(xp):
    from .math import special

    return special(xp)


_LGAMMA = [np.zeros(0)]  # numpy: log j! for j = 0, 1, ..., grown as needed


def _log_factorial(xp, j):
    """log j! at the integers j (numpy: from a table)."""
    if xp is not np:
        return _special(xp).gammaln(j + 1.0)
    top = int(np.max(j)) + 1
    if top > _LGAMMA[0].size:
        # math.lgamma at the integers: within an ulp, and no scipy.special import.
        _LGAMMA[0] = np.array([math.lgamma(k + 1.0) for k in range(max(2 * top, 1024))])
    return _LGAMMA[0][j.astype(np.int64)]


def _log_terms(xp, L, nu, n_terms):
    """(j, log T_j) on the window of ``n_terms`` j around the mode, and the log of the
    geometric bound on the terms beyond it (TMB's tail)."""
    mode = xp.exp(xp.minimum(L / nu, 700.0))
    start = xp.maximum(0.0, xp.floor(mode) - n_terms // 2)
    j = start[..., None] + xp.arange(n_terms, dtype=start.dtype)
    log_t = j * L[..., None] - nu[..., None] * _log_factorial(xp, j)
    last = j[..., -1]
    d_last = L - nu * xp.log(last + 1.0)  # log T_{J+1} − log T_J, < 0 beyond the mode
    safe = xp.minimum(d_last, -1e-12)
    # Σ_{i≥1} T_J ρ^i = T_J ρ/(1 − ρ), ρ = e^d (an upper bound: the ratios decrease).
    log_tail = log_t[..., -1] + safe - xp.log(-xp.expm1(safe))
    return j, log_t, log_tail


def _numpy_window(L, nu):
    """The smallest window (doubling from 32) whose edge terms are below e⁻⁴⁰ of the
    largest, on every row."""
    n_terms = 32
    while True:
        j, log_t, log_tail = _log_terms(np, L, nu, n_terms)
        top = np.max(log_t, axis=-1)
        left_ok = (j[..., 0] == 0) | (log_t[..., 0] - top < _EDGE)
        right_ok = log_t[..., -1] - top < _EDGE
        if np.all(left_ok & right_ok) or n_terms >= 1 << 16:
            return j, log_t, log_tail
        n_terms *= 2


def _window(xp, L, nu, n_terms=None):
    if xp is np and n_terms is None:
        return _numpy_window(L, nu)
    return _log_terms(xp, L, nu, COMPOIS_TERMS if n_terms is None else n_terms)


def moments(xp, L, nu, order=2, with_g=False, n_terms=None):
    """The moments of j (and g = log j!) under CMP(L, ν): a dict with ``mean``, ``k2``
    (and ``k3``, ``k4`` for ``order`` 3, 4), ``log_z`` = log Z(L, ν); with ``with_g``
    also ``eg`` = E g, ``ab`` = E[ab], ``aab`` = E[a²b], ``aaab`` = κ(j, j, j, g)
    (a = j − μ, b = g − E g)."""
    j, log_t, log_tail = _window(xp, L, nu, n_terms)
    top = xp.max(log_t, axis=-1, keepdims=True)
    w = xp.exp(log_t - top)
    total = xp.sum(w, axis=-1, keepdims=True)
    p = w / total
    mean = xp.sum(p * j, axis=-1)
    a = j - mean[..., None]
    a2 = a * a
    k2 = xp.sum(p * a2, axis=-1)
    out = {"mean": mean, "k2": k2,
           "log_z": top[..., 0] + xp.log(total[..., 0] + xp.exp(log_tail - top[..., 0]))}
    if order >= 3:
        out["k3"] = xp.sum(p * a2 * a, axis=-1)
    if order >= 4:
        out["k4"] = xp.sum(p * a2 * a2, axis=-1) - 3.0 * k2 * k2
    if with_g:
        g = _log_factorial(xp, j)
        eg = xp.sum(p * g, axis=-1)
        b = g - eg[..., None]
        ab = xp.sum(p * a * b, axis=-1)
        out.update(eg=eg, ab=ab, aab=xp.sum(p * a2 * b, axis=-1),
                   aaab=xp.sum(p * a2 * a * b, axis=-1) - 3.0 * k2 * ab)
    return out


def log_z(xp, L, nu, n_terms=None):
    """log Z(L, ν) (module docstring)."""
    _, log_t, log_tail = _window(xp, L, nu, n_terms)
    top = xp.max(log_t, axis=-1)
    total = xp.sum(xp.exp(log_t - top[..., None]), axis=-1) + xp.exp(log_tail - top)
    return top + xp.log(total)


_LAST_SOLVE: dict = {}  # numpy: the last (x, ν, L, L_x, L_ν), a warm start for the next


def _newton_numpy(x, nu, L):
    """Newton's method for L from ``L``; (L, whether the steps converged)."""
    for _ in range(_NEWTON_STEPS):
        m = moments(np, L, nu)
        step = np.clip(-(np.log(m["mean"]) - x) * m["mean"] / m["k2"], -5.0, 5.0)
        L = L + step
        if np.all(np.abs(step) <= 1e-13 * np.maximum(1.0, np.abs(L))):
            return L, True
    return L, False


def loglambda_numpy(x, nu):
    """L = log λ with E[y; L, ν] = eˣ, by Newton's method on log E[y] − x (TMB's
    ``calc_loglambda``, from L = νx; steps capped at 5). A host fit calls it with
    nearby (x, ν) hundreds of times: it starts from the last solution's first-order
    extrapolation when the shapes match. Returns L and the moments at L (order 4, with
    g)."""
    x, nu = (np.asarray(a, np.float64) for a in np.broadcast_arrays(x, nu))
    last = _LAST_SOLVE.get("value")
    if last is not None and last[0].shape == x.shape:
        x0, nu0, L0, Lx0, Ln0 = last
        L = L0 + Lx0 * (x - x0) + Ln0 * (nu - nu0)
        L = np.where(np.isfinite(L), L, nu * x)
    else:
        L = nu * x
    L, converged = _newton_numpy(x, nu, L)
    if not converged and last is not None:  # a poor warm start: from TMB's start
        L, converged = _newton_numpy(x, nu, nu * x)
    m = moments(np, L, nu, order=4, with_g=True)
    _LAST_SOLVE["value"] = (x, nu, L, np.exp(x) / m["k2"], m["ab"] / m["k2"])
    return L, m


def _loglambda_jax_solve(x, nu):
    import jax
    import jax.numpy as jnp

    def body(state):
        i, L, _ = state
        m = moments(jnp, L, nu)
        step = -(jnp.log(m["mean"]) - x) * m["mean"] / m["k2"]
        # A Newton step on a convex increasing log-mean in L; cap it (far starts).
        step = jnp.clip(step, -5.0, 5.0)
        return i + 1, L + step, jnp.max(jnp.abs(step) / jnp.maximum(1.0, jnp.abs(L)))

    def cond(state):
        i, _, size = state
        return (i < _NEWTON_STEPS) & (size > 1e-13)

    L0 = nu * x + 0.0 * x
    return jax.lax.while_loop(cond, body, (0, L0, jnp.asarray(jnp.inf, L0.dtype)))[1]


def _make_loglambda_jax():
    import jax
    import jax.numpy as jnp

    @jax.custom_jvp
    def loglambda(x, nu):
        return _loglambda_jax_solve(x, nu)

    @loglambda.defjvp
    def _jvp(primals, tangents):
        x, nu = primals
        dx, dnu = tangents
        L = loglambda(x, nu)
        m = moments(jnp, L, nu, with_g=True)
        return L, (jnp.exp(x) * dx + m["ab"] * dnu) / m["k2"]

    return loglambda


_LOGLAMBDA_JAX = []


def loglambda(xp, x, nu):
    """L(x, ν) (numpy: Newton; jax.numpy: Newton with implicit derivatives)."""
    if xp is np:
        return loglambda_numpy(x, nu)[0]
    if not _LOGLAMBDA_JAX:
        _LOGLAMBDA_JAX.append(_make_loglambda_jax())
    import jax.numpy as jnp

    x, nu = jnp.broadcast_arrays(x, nu)
    return _LOGLAMBDA_JAX[0](x, nu)


def compois_value(xp, y, x, psi, weights):
    """log P(y) in x = log μ and ψ = log φ (ν = e^−ψ), times the weights."""
    sp = _special(xp)
    nu = xp.exp(-psi) + 0.0 * x
    L = loglambda(xp, x + 0.0 * nu, nu)
    return weights * (y * L - nu * sp.gammaln(y + 1.0) - log_z(xp, L, nu))


def compois_variance(xp, mu, phi):
    """Var y = κ₂ at the mean μ (glmmTMB's ``compois_calc_var``)."""
    x = xp.log(mu)
    nu = 1.0 / phi + 0.0 * x
    L = loglambda(xp, x + 0.0 * nu, nu)
    return moments(xp, L, nu)["k2"]


def draw_numpy(rng, mu, phi, batch: int = 4096) -> np.ndarray:
    """Draws of y ~ CMP with mean ``mu`` and glmmTMB's φ = 1/ν (numpy generator ``rng``),
    by the inverse CDF over the series window (the same distribution as the family's
    JAX ``simulate``, nothing to compile): L = log λ by Newton's method (as
    :func:`loglambda_numpy`, from TMB's start) once per distinct (μ, φ), then the window
    whose edge terms are below e⁻⁴⁰ of the largest (:func:`_numpy_window`), in batches
    of ``batch`` rows to bound memory."""
    mu, phi = np.broadcast_arrays(np.asarray(mu, np.float64), np.asarray(phi, np.float64))
    shape = mu.shape
    pairs, inverse = np.unique(np.stack([mu.reshape(-1), phi.reshape(-1)], axis=1), axis=0,
                               return_inverse=True)
    inverse = inverse.reshape(-1)
    x, nu = np.log(pairs[:, 0]), 1.0 / pairs[:, 1]
    u = rng.random(inverse.shape)
    out = np.empty(inverse.shape)
    for start in range(0, x.size, batch):
        rows = slice(start, start + batch)
        L = _newton_numpy(x[rows], nu[rows], nu[rows] * x[rows])[0]
        j, log_t, _ = _numpy_window(L, nu[rows])
        cdf = np.cumsum(np.exp(log_t - np.max(log_t, axis=-1, keepdims=True)), axis=-1)
        cdf /= cdf[:, -1:]
        # The draws of the rows whose (μ, φ) is among this batch's.
        mine = np.flatnonzero((inverse >= start) & (inverse < start + batch))
        for chunk in np.array_split(mine, max(1, -(-mine.size * j.shape[1] // 4_000_000))):
            k = inverse[chunk] - start
            below = np.sum(cdf[k] < u[chunk, None], axis=-1)
            out[chunk] = j[k, np.minimum(below, j.shape[1] - 1)]
    return out.reshape(shape)


def compois_partials(xp, y, x, psi, weights, third, need_psi=True):
    """Partials of ℓ in x = log μ and ψ = log φ (module docstring), for numpy or
    jax.numpy (the compiled engine's closed forms)."""
    from .math_tmb import Partials

    nu = xp.exp(-psi) + 0.0 * x
    if xp is np:
        L, m = loglambda_numpy(x + 0.0 * nu, nu)
    else:
        L = loglambda(xp, x + 0.0 * nu, nu)
        m = moments(xp, L, nu, order=4, with_g=True)
    mu = xp.exp(x)
    k2, k3, k4 = m["k2"], m["k3"], m["k4"]
    e = y - mu
    Lx = mu / k2
    Lxx = Lx - k3 * Lx**3 / mu
    log_y_factorial = _special(xp).gammaln(y + 1.0)
    value = y * L - nu * log_y_factorial - m["log_z"]
    f1 = e * Lx
    f2 = -mu * Lx + e * Lxx
    f3 = None
    if third:
        Lxxx = Lxx - (k4 * Lx**4 + 3.0 * k3 * Lx**2 * Lxx) / mu + k3 * Lx**3 / mu
        f3 = weights * (-mu * Lx - 2.0 * mu * Lxx + e * Lxxx)
    out = Partials(weights * value, weights * f1, weights * f2, f3)
    if not need_psi:
        return out
    Ln = m["ab"] / k2
    Lxn = -(Lx * Lx / mu) * (k3 * Ln - m["aab"])
    k3n = k4 * Ln - m["aaab"]
    Lxxn = Lxn - (k3n * Lx**3 + 3.0 * k3 * Lx**2 * Lxn) / mu
    f_n = e * Ln - log_y_factorial + m["eg"]
    f1_n = e * Lxn
    f2_n = -mu * Lxn + e * Lxxn
    c = -nu * weights  # d/dψ = −ν d/dν
    return out._replace(f_psi=c * f_n, f1_psi=c * f1_n, f2_psi=c * f2_n)
