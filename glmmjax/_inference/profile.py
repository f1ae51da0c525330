"""Profile-likelihood and Wald confidence intervals (lme4's ``confint``).

Parameters are those of lme4's ``confint(method = "profile", oldNames = FALSE)``: for
each random-effects term the standard deviations ``sd_x|g`` and correlations
``cor_x.y|g`` (in θ's order), the residual ``sigma`` (LMMs), then the fixed effects.

The profile of a parameter φ_j is ζ(x) = sign(x − φ̂_j)·√(d_j(x) − d̂) where d_j(x) is
the deviance minimized over all other parameters with φ_j = x; the interval is where
|ζ| ≤ z_{(1+level)/2}. As lme4 does:

* LMMs, REML fits included, are profiled on the ML deviance as a function of
  (standard deviations, correlations, σ, β). For fixed θ the penalized residual sum of
  squares is r²(θ) + |L_X'(β − β̂(θ))|², so β enters in closed form;
* GLMMs are profiled on the Laplace (or AGQ) deviance in (standard deviations,
  correlations, β), with the family's dispersion free (not profiled itself).

Each point of a profile is one BFGS run with exact gradients over the free parameters,
the fixed one held by a mask, so a single compiled function serves every parameter of a
model. The crossing ζ = ±z is bracketed from a Wald step and extrapolation (ζ is close
to linear), then found by Brent's method. A standard deviation whose profile stays below
the cut-off down to zero (in particular one estimated at zero) gets the one-sided lower
bound 0; a correlation whose profile stays below it up to ±1 gets ±1.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd

from .._display import resolve_alias as r_alias
from .._display import show
from .._engines.compiled.jit import program
from .._engines.compiled.optimize import minimize
from .._families.distributions import norm_ppf
from .._lazyjax import jax, jnp
from .._model.cov_structures import Unstructured, as_structures, term_structures
from .._model.covariance import diagonal_mask, split_theta
from .._progress import bar, noted

# Inner optimizations stop at max|∇| below this (deviance units).
_GTOL = 1e-7
# Correlations are profiled on the atanh scale up to this magnitude (|cor| ≤ 0.99999).
_MAX_ATANH = 6.1


def _tril(size: int):
    cols, rows = np.triu_indices(size)
    return rows, cols


# -- natural parameterization ------------------------------------------------------------
def omega_to_theta(omega, covariances, scale):
    """θ from ω = per term (SDs, atanh of correlations), θ's order.

    Unstructured terms: Λ_t = diag(sd)·chol(R)/scale, so σ²Λ_tΛ_t' = diag(sd)·R·diag(sd)
    for scale σ; structured terms map their SDs and correlation the same way
    (:meth:`glmmjax._model.cov_structures.CovarianceStructure.from_natural`).
    """
    parts, start = [], 0
    for cov in as_structures(covariances):
        parts.append(cov.from_natural(omega[start : start + cov.n_params], scale))
        start += cov.n_params
    return jnp.concatenate(parts)


def natural_from_theta(theta: np.ndarray, covariances, scale: float):
    """(ω, sd/cor values, kinds) from θ: sd's and correlations on the response scale."""
    omega, values, kinds = [], [], []
    for cov, part in zip(as_structures(covariances), split_theta(theta, covariances)):
        w, v, k = cov.natural(part, scale)
        omega.extend(w)
        values.extend(v)
        kinds.extend(k)
    return np.array(omega, dtype=float), np.array(values, dtype=float), kinds


def canonical_omega(omega: np.ndarray, covariances) -> np.ndarray:
    """Make every sd in ω non-negative (in an unstructured term, flipping a sd's sign
    flips its correlations; a structured term's covariance depends on |sd| only)."""
    omega = np.array(omega, dtype=float)
    start = 0
    for cov in as_structures(covariances):
        count = cov.n_params
        block = omega[start : start + count]
        if not isinstance(cov, Unstructured):
            mask = cov.scale_mask()
            block[mask] = np.abs(block[mask])
            start += count
            continue
        S = cov.size
        rows, cols = _tril(S)
        for a in range(S):
            diag = np.flatnonzero((rows == a) & (cols == a))[0]
            if block[diag] < 0:
                block[diag] = -block[diag]
                touched = (rows != cols) & ((rows == a) | (cols == a))
                block[touched] = -block[touched]
        omega[start : start + count] = block
        start += count
    return omega


def parameter_names(result) -> list[str]:
    """lme4's oldNames=FALSE names, with glmmjax's coefficient names."""
    names = []
    for label, term in zip(result._group_labels(), result.design.terms):
        names.extend(term_structures([term])[0].profile_names(label, term.coef_names))
    if result.scale is not None and result.family_name == "gaussian":
        names.append("sigma")
    names.extend(result.design.fixef_names)
    return names


# -- objectives (module level, so one compiled minimizer serves each kind) ---------------
def _lmm_objective(omega, model):
    """ML deviance at ω = (sd's and atanh(cor)'s, log σ, β).

    For fixed θ the penalized residual sum of squares is r²(θ) + |L_X'(β − β̂(θ))|²
    (the PLS decomposition), so β enters in closed form and nothing is re-solved.
    """
    from .._engines.compiled.lmm import solve_pls

    n_theta = model.structure.n_theta
    sigma = jnp.exp(omega[n_theta])
    theta = omega_to_theta(omega[:n_theta], model.structure.structures, sigma)
    beta = omega[n_theta + 1 :]
    pls = solve_pls(theta, model)
    L_x = pls.fixef_factor
    penalty = jnp.sum((L_x.T @ (beta - pls.beta)) ** 2)
    s2 = sigma**2
    value = pls.logdet_z + (pls.r2 + penalty) / s2 + model.nobs * jnp.log(2.0 * jnp.pi * s2)
    return value - model.sum_log_weights


def _glmm_objective(omega, data, v0, n_theta, n_beta, grid, log_w, use_agq):
    from .._engines.compiled.laplace import agq_objective, laplace_objective

    theta = omega_to_theta(omega[:n_theta], data.structure.structures, 1.0)
    params = jnp.concatenate([theta, omega[n_theta:]])
    if use_agq:
        return agq_objective(params, data, v0, n_theta, n_beta, grid, log_w)
    return laplace_objective(params, data, v0, n_theta, n_beta)


@program
@functools.partial(noted, what="the profile's constrained fits")
def _constrained_minimum(fun, free0, mask, fixed, hinv, args):
    def objective(free):
        return fun(jnp.where(mask, fixed, free), *args)

    solution = minimize(objective, free0, inverse_hessian=hinv, gtol=_GTOL)
    return solution.value, jnp.where(mask, fixed, solution.x), solution.inverse_hessian


@functools.cache
def _hessian_program(fun):
    """The exact Hessian of the objective ``fun``, jitted once per objective: a fresh
    ``jax.jit(jax.hessian(fun))`` at every profile would compile again at every
    ``confint``/``profile`` call (seconds each), even for the same model structure."""
    return jax.jit(jax.hessian(fun))


# -- the profiling engine ----------------------------------------------------------------
class _Problem:
    """One deviance function of a parameter vector, its optimum and a preconditioner."""

    def __init__(self, fun, args, omega_hat, base=None, hessian=None, sizes=()):
        self.fun = fun
        self.args = args
        omega_hat = np.asarray(omega_hat, dtype=float)
        k = omega_hat.size
        if base is None:
            # Start from a nearby point (the REML estimate): find the optimum itself,
            # twice, so that BFGS's inverse Hessian is a fair preconditioner.
            hinv = np.eye(k)
            for _ in range(2):
                with jax.enable_x64(True):
                    value, omega, hinv = _constrained_minimum(
                        fun, jnp.asarray(omega_hat), jnp.zeros(k, dtype=bool),
                        jnp.asarray(omega_hat), jnp.asarray(hinv), args,
                    )
                omega_hat, hinv = np.asarray(omega), np.asarray(hinv)
            base = float(value)
            omega_hat = canonical_omega(omega_hat, sizes)
            # The exact Hessian, not BFGS's approximation (which from a start this
            # close to the optimum can be far off): it sets the first steps of each
            # bound's search and the preconditioner of every constrained fit.
            with jax.enable_x64(True):
                hessian = np.asarray(_hessian_program(fun)(jnp.asarray(omega_hat), *args))
        self.omega_hat = omega_hat
        self.base = float(base)
        h = 0.5 * (hessian + hessian.T) if hessian is not None else np.eye(k)
        eig, vec = np.linalg.eigh(h)
        floor = max(1e-8 * max(eig.max(), 1e-12), 1e-12)
        self.hessian = (vec * np.maximum(eig, floor)) @ vec.T
        self.solutions: dict[int, list[tuple[float, np.ndarray]]] = {}

    def wald_step(self, j: int) -> float:
        """SD of ω_j from the Hessian of the deviance (2·H⁻¹)."""
        cov = 2.0 * np.linalg.inv(self.hessian)
        return float(np.sqrt(max(cov[j, j], 1e-12)))

    def _preconditioner(self, j: int) -> np.ndarray:
        k = self.omega_hat.size
        free = np.arange(k) != j
        hinv = np.eye(k)
        hinv[np.ix_(free, free)] = np.linalg.inv(self.hessian[np.ix_(free, free)])
        return hinv

    def deviance_at(self, j: int, x: float) -> float:
        """min over the others of the deviance with ω_j = x."""
        known = self.solutions.setdefault(j, [])
        if known:
            start = min(known, key=lambda item: abs(item[0] - x))[1]
        else:
            start = self.omega_hat
        start = np.array(start)
        start[j] = x
        mask = np.zeros(start.size, dtype=bool)
        mask[j] = True
        with jax.enable_x64(True):
            value, omega, _ = _constrained_minimum(
                self.fun,
                jnp.asarray(start),
                jnp.asarray(mask),
                jnp.asarray(start),
                jnp.asarray(self._preconditioner(j)),
                self.args,
            )
            value, omega = float(value), np.asarray(omega)
        if np.isfinite(value):
            known.append((x, omega))
        return value

    def zeta(self, j: int, x: float) -> float:
        change = self.deviance_at(j, x) - self.base
        return math.copysign(math.sqrt(max(change, 0.0)), x - self.omega_hat[j])


def _find_bound(problem: _Problem, j: int, side: int, z: float, lower_limit, upper_limit):
    """ω_j where ζ = side·z, or the limit on that side when ζ never gets there."""
    x0 = problem.omega_hat[j]
    limit = lower_limit if side < 0 else upper_limit
    step = problem.wald_step(j) * z
    target = side * z
    inner, z_inner = x0, 0.0
    x = x0 + side * step
    for _ in range(40):
        if limit is not None and (x - limit) * side >= 0:
            x = limit
        zx = problem.zeta(j, x)
        if not np.isfinite(zx):
            # Beyond where the deviance is defined: pull back towards the estimate.
            x = 0.5 * (inner + x)
            continue
        if side * zx >= z:
            break
        if limit is not None and x == limit:
            return limit
        # ζ is close to linear: extrapolate the crossing, with a margin.
        slope = (zx - z_inner) / (x - inner) if x != inner else 0.0
        inner, z_inner = x, zx
        if slope * side > 0:
            x = x + 1.3 * (target - zx) / slope
        else:
            x = x + 2.0 * side * step
    else:
        return math.nan
    a, b = sorted((inner, x))
    from scipy import optimize

    return optimize.brentq(
        lambda t: problem.zeta(j, t) - target, a, b, xtol=1e-10 * (1.0 + abs(x0)), rtol=1e-12
    )


def _problem(result):
    """(problem, kinds, values) of a fitted LMM or GLMM; a sparse-path LMM (a large
    pedigree or sparse K) profiles its sparse deviance
    (:mod:`glmmjax._inference.sparse_profile`)."""
    if getattr(result, "engine", None) == "sparse":
        from .sparse_profile import SparseProblem

        problem = SparseProblem(result)
        return problem, problem.kinds, problem.values
    if getattr(result, "family", None) is None:
        return _lmm_problem(result)
    return _glmm_problem(result)


def _lmm_problem(result):
    """The ML profile problem of an LMM in (sd's, correlations, σ, β)."""
    from .ddf import lmm_model_for

    sizes = term_structures(result.design.terms)
    sigma = result.sigma
    omega_var, values, kinds = natural_from_theta(result.theta_values, sizes, sigma)
    omega = np.concatenate([omega_var, [math.log(sigma)], result.beta])
    with jax.enable_x64(True):
        model_ml = lmm_model_for(result, reml=False)
    problem = _Problem(_lmm_objective, (model_ml,), omega, sizes=sizes)
    p = len(result.beta)
    kinds = kinds + ["sigma"] + ["beta"] * p
    values = np.concatenate([values, [sigma], result.beta])
    return problem, kinds, values


def _glmm_problem(result):
    from .._engines.compiled.laplace import gauss_hermite_grid
    from .._engines.compiled.pirls import GLMMData

    if result.n_agq == 0:
        raise ValueError(
            "profile intervals need a Laplace or AGQ fit (n_agq >= 1); this fit used "
            "n_agq=0. Refit with n_agq=1 or use method='wald'."
        )
    design = result.design
    sizes = term_structures(design.terms)
    n_theta = int(sum(c.n_params for c in sizes))
    p = design.X.shape[1]
    omega_var, values, kinds = natural_from_theta(result.theta_values, sizes, 1.0)
    family = result.family
    has_disp = family.has_dispersion and family.dispersion_method != "fixed"
    log_disp = [math.log(result.dispersion)] if has_disp else []
    omega = np.concatenate([omega_var, result.beta, log_disp])
    grid, log_w = gauss_hermite_grid(max(result.n_agq, 1), sizes[0].size)
    with jax.enable_x64(True):
        structure = result.model.structure  # the fitted model's, built once
        data = GLMMData(
            structure=structure,
            X=jnp.asarray(design.X),
            dense=jnp.zeros((design.nobs, 0)),
            y=jnp.asarray(result.y),
            weights=jnp.asarray(result.prior_weights),
            offset=jnp.asarray(design.offset),
            family=family,
        )
        v0 = jnp.zeros(structure.n_levels[0] * sizes[0].size + structure.n_re_rest)
        jac = np.asarray(
            jax.jacfwd(lambda w: omega_to_theta(w, sizes, 1.0))(jnp.asarray(omega_var))
        )
    hessian = None
    if result.params_cov is not None:
        h_params = 2.0 * np.linalg.pinv(result.params_cov)
        J = np.eye(omega.size)
        J[:n_theta, :n_theta] = jac
        hessian = J.T @ h_params @ J
    args = (data, v0, n_theta, p, jnp.asarray(grid), jnp.asarray(log_w), result.n_agq > 1)
    problem = _Problem(_glmm_objective, args, omega, result.criterion, hessian)
    return problem, kinds + ["beta"] * p, np.concatenate([values, result.beta])


def _omega_to_value(kind: str, w: float) -> float:
    if kind == "cor":
        return float(np.tanh(w))
    if kind == "sigma":
        return float(np.exp(w))
    return float(w)


def profile_confint(result, level: float = 0.95, parm=None,
                    progress: bool | None = None) -> pd.DataFrame:
    """Profile-likelihood intervals (see the module docstring); ``progress`` shows a bar
    over the parameters (None: in interactive sessions)."""
    names = parameter_names(result)
    wanted = _select(names, parm, result)
    z = norm_ppf(0.5 * (1.0 + level))
    lower = np.full(len(names), np.nan)
    upper = np.full(len(names), np.nan)
    notes = []
    sizes = term_structures(result.design.terms)
    on_boundary = np.abs(result.theta_values[diagonal_mask(sizes)]) < 1e-4
    problem, kinds, values = _problem(result)
    todo = [i for i in range(len(names)) if i in wanted]
    for i in bar(todo, enabled=progress, desc="profiling", unit="parameter"):
        lower[i], upper[i] = _variance_bounds(problem, i, kinds[i], values[i], z, notes, names[i])
    if np.any(on_boundary):
        notes.append("standard deviations estimated at zero have the one-sided lower bound 0")
    table = _interval_frame(names, lower, upper, level).iloc[sorted(wanted)]
    table.attrs["note"] = "; ".join(dict.fromkeys(notes))
    return table


def _variance_bounds(problem, i, kind, value, z, notes, name):
    if kind == "cor" and not np.isfinite(value):
        notes.append(f"{name} is undefined (a standard deviation is zero): not profiled")
        return math.nan, math.nan
    estimate = _omega_to_value(kind, problem.omega_hat[i])
    if kind == "cor" and abs(estimate) > 1 - 1e-6:
        notes.append(f"{name} is estimated at {estimate:+.0f}: not profiled")
        return math.nan, math.nan
    if kind == "sd":
        lo_limit, hi_limit = 0.0, None
    elif kind == "cor":
        lo_limit, hi_limit = -_MAX_ATANH, _MAX_ATANH
    else:
        lo_limit = hi_limit = None
    if kind == "sd" and (value <= 0 or estimate <= 1e-8 * max(1.0, abs(problem.omega_hat).max())):
        lo = 0.0
    else:
        lo = _find_bound(problem, i, -1, z, lo_limit, hi_limit)
    hi = _find_bound(problem, i, 1, z, lo_limit, hi_limit)
    lo, hi = _omega_to_value(kind, lo), _omega_to_value(kind, hi)
    if kind == "cor":
        lo = -1.0 if lo <= -np.tanh(_MAX_ATANH) else lo
        hi = 1.0 if hi >= np.tanh(_MAX_ATANH) else hi
    return lo, hi


def _select(names: list[str], parm, result) -> set[int]:
    if parm is None:
        return set(range(len(names)))
    if isinstance(parm, str):
        if parm == "beta_":
            start = len(names) - len(result.design.fixef_names)
            return set(range(start, len(names)))
        if parm == "theta_":
            return set(range(len(names) - len(result.design.fixef_names)))
        parm = [parm]
    index = []
    for p in parm:
        p = r_alias(p, names)  # R's names too: "(Intercept)", "sd_(Intercept)|Subject"
        if p not in names:
            raise ValueError(f"unknown parameter {p!r}; parameters are {names}")
        index.append(names.index(p))
    return set(index)


def _interval_frame(names, lower, upper, level) -> pd.DataFrame:
    a = 0.5 * (1.0 - level)
    cols = [f"{100 * a:.3g} %", f"{100 * (1 - a):.3g} %"]
    from .anova import NotedTable

    return NotedTable({cols[0]: lower, cols[1]: upper}, index=names)


def wald_confint(result, level: float = 0.95, parm=None) -> pd.DataFrame:
    """β̂ ± z·SE for the fixed effects; NaN for variance parameters (as lme4)."""
    names = parameter_names(result)
    wanted = _select(names, parm, result)
    z = norm_ppf(0.5 * (1.0 + level))
    p = len(result.beta)
    lower = np.full(len(names), np.nan)
    upper = np.full(len(names), np.nan)
    se = np.sqrt(np.diag(result.beta_cov))
    lower[-p:] = result.beta - z * se
    upper[-p:] = result.beta + z * se
    return _interval_frame(names, lower, upper, level).iloc[sorted(wanted)]


def profile_frame(result, parm=None, level: float = 0.99, n_points: int = 6,
                  progress: bool | None = None) -> pd.DataFrame:
    """The profiles themselves (lme4's ``as.data.frame(profile(fit))``): ζ at points
    between the ``level`` profile bounds of each parameter, the estimate (ζ = 0)
    included.

    Returns:
        A tidy DataFrame with columns ``parameter``, ``value`` (on the reported scale:
        SD, correlation, σ, β) and ``zeta``. Parameters that cannot be profiled (a
        correlation of ±1 or of a zero SD) are left out.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {show(level)}")
    if int(n_points) < 2:
        raise ValueError(f"n_points must be an integer >= 2, got {n_points!r}")
    names = parameter_names(result)
    wanted = _select(names, parm, result)
    z = norm_ppf(0.5 * (1.0 + level))
    problem, kinds, values = _problem(result)
    rows = []
    for i in bar(sorted(wanted), enabled=progress, desc="profiling", unit="parameter"):
        kind, estimate = kinds[i], problem.omega_hat[i]
        if kind == "cor" and (not np.isfinite(values[i]) or abs(np.tanh(estimate)) > 1 - 1e-6):
            continue
        limits = {"sd": (0.0, None), "cor": (-_MAX_ATANH, _MAX_ATANH)}.get(kind, (None, None))
        points = [estimate]
        for side in (-1, 1):
            if kind == "sd" and side < 0 and estimate <= 1e-8:
                continue
            end = _find_bound(problem, i, side, z, *limits)
            if np.isfinite(end) and end != estimate:
                points += list(np.linspace(estimate, end, int(n_points) + 1)[1:])
        for x in sorted(points):
            zeta = 0.0 if x == estimate else problem.zeta(i, x)
            rows.append((names[i], _omega_to_value(kind, x), zeta))
    return pd.DataFrame(rows, columns=["parameter", "value", "zeta"])
