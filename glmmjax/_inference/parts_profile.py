"""Profile-likelihood intervals for zero-inflation / dispersion-model fits
(:meth:`GLMMPartsResult.confint` with ``method="profile"``), as glmmTMB's
``confint(method = "profile")``.

For parameter j of the fit's vector (θ_cond, θ_zi, β, β_zi, β_disp) the profile is
D(t) = min over the others of the Laplace criterion F (−2 log L) with ψⱼ = t, and the
interval's ends are where D(t) − F̂ = χ²₁(level). Each end is bracketed by steps of
z·SE away from the estimate and found by Brent's method; every D(t) is a BFGS
minimization over the other parameters with the host engine's exact gradient
(:meth:`glmmjax._engines.host.parts.HostParts.value_grad`), started from the previous
point's minimizer and random-effects mode.

Random-effect SDs: a scalar term's θ is its SD (u ~ N(0, I), b = θu), profiled over
θ ≥ 0; where D(0) − F̂ stays below the cutoff the lower end is 0 (one-sided, noted).
glmmTMB profiles log SD: the same interval where it reaches the cutoff. Terms with
correlations (vector terms) are not profiled (NaN, noted).

REML fits (Gaussian, ``lmer(..., dispformula=..., reml=True)``; glmmTMB 1.1.5 refuses to
profile them): the random-effect SDs and the dispersion model's coefficients γ are
profiled on the REML criterion −2 log L_R(θ, γ)
(:class:`glmmjax._engines.host.parts_reml.GaussianREML`), as lme4 profiles the variance
parameters of its REML fits. The fixed effects β are integrated out of that criterion
(it does not depend on them), so they have no REML profile: their rows are NaN with a
note (Wald intervals, or the profile of an ML refit, ``reml=False``, instead).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import brentq, minimize

_MAX_STEPS = 12


class _Profiler:
    def __init__(self, result):
        from .._engines.host.parts import HostParts

        self.model = HostParts(result.parts_data)
        self.params = np.asarray(result.params, np.float64)
        self.v = np.zeros(self.model.q)
        self.value = float(result.criterion)

    def _f(self, x):
        value, grad, v = self.model.value_grad(x, self.v)
        return value, grad, v

    def profile(self, j, t, start):
        """(D(t), the minimizer) with ψⱼ = t, from the other parameters ``start``."""
        free = np.arange(self.params.size) != j

        def fun(z):
            x = self.params.copy()
            x[free], x[j] = z, t
            value, grad, v = self._f(x)
            if np.isfinite(value):
                self.v = v
            return value, grad[free]

        res = minimize(fun, start[free], jac=True, method="BFGS",
                       options={"gtol": 1e-7, "maxiter": 500})
        x = self.params.copy()
        x[free], x[j] = res.x, t
        return float(res.fun), x


class _REMLProfiler:
    """The profiler of a REML fit: over x = (θ, γ) of the REML criterion, each profile
    point a BFGS over the others with its central-difference gradient."""

    def __init__(self, result):
        from .._engines.host.parts_reml import GaussianREML

        self.model = GaussianREML(result.parts_data, result.design.terms)
        n_theta_c, _, p, _, _ = result.layout
        full = np.asarray(result.params, np.float64)
        self.params = np.concatenate([full[:n_theta_c], full[n_theta_c + p:]])
        self.value = float(self.model.value(self.params))
        self.v = None

    def profile(self, j, t, start):
        free = np.arange(self.params.size) != j

        def full(z):
            x = self.params.copy()
            x[free], x[j] = z, t
            return x

        def fun(z):
            return self.model.value(full(z))

        def jac(z):
            return self.model.gradient(full(z))[free]

        if not free.any():
            return float(self.model.value(full(np.zeros(0)))), full(np.zeros(0))
        res = minimize(fun, start[free], jac=jac, method="BFGS",
                       options={"gtol": 1e-7, "maxiter": 500})
        return float(res.fun), full(res.x)


def _end(profiler, j, direction, se, cutoff, lower_limit):
    """One end of parameter j's interval (None where it could not be bracketed), and
    whether it is the limit ``lower_limit`` (an SD at 0)."""
    base = profiler.params[j]
    step = max(se, 1e-3 * max(1.0, abs(base))) if np.isfinite(se) else 0.1
    step *= 1.96
    prev_t = base
    start = profiler.params.copy()
    if profiler.v is not None:
        profiler.v = np.zeros(profiler.model.q)
    cache = {}

    def g(t, from_x):
        value, x = profiler.profile(j, t, from_x)
        cache[t] = x
        return value - profiler.value - cutoff

    for k in range(1, _MAX_STEPS + 1):
        t = base + direction * k * step
        if lower_limit is not None and direction < 0 and t <= lower_limit:
            t = lower_limit
        gt = g(t, start)
        if gt > 0:
            x_prev = cache.get(prev_t, profiler.params)
            root = brentq(g, prev_t, t, args=(x_prev,), xtol=1e-8 * max(1.0, abs(t)),
                          rtol=1e-10)
            return root, False
        if t == lower_limit:
            return lower_limit, True
        prev_t, start = t, cache[t]
    return None, False


def profile_confint(result, level: float = 0.95, parm=None):
    """Profile intervals, rows as :func:`glmmjax._inference.parts.wald_confint`'s."""
    from .._families.distributions import norm_ppf
    from .parts import _interval_frame, _sd_names, _select, fixef_labels

    reml = result.method == "REML"
    if result.parts_data is None:
        raise ValueError("this result carries no model data to profile")
    n_theta_c, n_theta_z, p, p_zi, p_disp = result.layout
    sd_names, labels = _sd_names(result), fixef_labels(result)
    names = sd_names + labels
    wanted = _select(names, parm, len(labels))
    sizes = list(result.parts_data.cond.sizes) + list(result.parts_data.zi.sizes)
    # Parameter index per row name: scalar terms' θ, then the fixed effects in order.
    index: list = []
    position = 0
    for size in sizes:
        n = size * (size + 1) // 2
        if size == 1:
            index.append(position)
        else:  # SDs and correlations of a vector term: not profiled
            index.extend([None] * n)
        position += n
    start = n_theta_c + n_theta_z
    se = np.sqrt(np.maximum(np.diag(result.params_cov), 0.0))
    if reml:  # (θ, γ) of the REML criterion; β integrated out (module docstring)
        index.extend([None] * p)
        index.extend(range(start, start + p_disp))
        se = np.concatenate([se[:start], se[start + p :]])
        profiler = _REMLProfiler(result)
    else:
        index.extend(range(start, start + p + p_zi + p_disp))
        profiler = _Profiler(result)
    cutoff = float(norm_ppf(0.5 * (1.0 + level))) ** 2  # χ²₁(level)
    n_beta_rows = set(range(len(sd_names), len(sd_names) + p)) if reml else set()
    lower = np.full(len(names), np.nan)
    upper = np.full(len(names), np.nan)
    notes = []
    for row in wanted:
        j = index[row]
        if j is None and row in n_beta_rows:
            notes.append(f"{names[row]}: a fixed effect of a REML fit, integrated out of the "
                         "REML criterion, has no profile (method='wald', or refit with "
                         "reml=False)")
            continue
        if j is None:
            notes.append(f"{names[row]}: a vector term's parameter, not profiled")
            continue
        is_sd = j < n_theta_c + n_theta_z
        if is_sd and profiler.params[j] < 0:  # θ's sign is free: profile |θ|
            profiler.params[j] = -profiler.params[j]
        lo, at_zero = _end(profiler, j, -1, se[j], cutoff, 0.0 if is_sd else None)
        hi, _ = _end(profiler, j, +1, se[j], cutoff, None)
        if at_zero:
            notes.append(f"{names[row]}: lower bound 0 (the profile stays below the cutoff)")
        if lo is None or hi is None:
            notes.append(f"{names[row]}: the profile did not reach the cutoff on one side")
        lower[row] = np.nan if lo is None else lo
        upper[row] = np.nan if hi is None else hi
    frame = _interval_frame(names, lower, upper, level).iloc[wanted]
    frame.attrs["note"] = "; ".join(notes)
    return frame
