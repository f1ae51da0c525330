"""``glmer``: generalized linear mixed models by Laplace or adaptive quadrature.

The fit runs in two stages, as lme4 does: first the fast nAGQ=0 criterion (β found with
the random effects in the inner problem) over θ and the dispersion, then the Laplace or
AGQ criterion over (θ, β, log dispersion) from there, by BFGS with exact gradients
(implicit differentiation through the inner mode, :mod:`glmmjax._pirls`). Standard
errors come from the exact autodiff Hessian of −2 log L in all parameters.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ._cholesky import inverse_diagonal_blocks
from ._covariance import canonical_theta, diagonal_mask, initial_theta, theta_to_factors
from ._design import build_design
from ._families import Family, Gaussian, get_family
from ._laplace import (
    agq_at_mode,
    agq_objective,
    gauss_hermite_grid,
    laplace_at_mode,
    laplace_objective,
    mode_and_factor,
)
from ._lmm import SINGULAR_TOL
from ._optimize import Status, minimize
from ._pirls import GLMMData, inner_size, linear_predictor, split
from ._precision import with_x64
from ._results import Convergence, MixedModelResult
from ._structure import build_structure

_BOUNDARY_TRY = 1e-3
MAX_AGQ_DIM = 3


@dataclasses.dataclass(frozen=True, eq=False)
class GLMMResult(MixedModelResult):
    """A fitted GLMM (see :class:`MixedModelResult` for the shared accessors).

    Extra attributes: ``family`` (the family object), ``dispersion`` (the family's
    extra parameter: Gamma/inverse Gaussian φ, negative binomial θ, beta precision φ;
    None for binomial and Poisson), ``success_level`` (for a categorical binomial
    response, the level counted as success), ``n_agq``.
    """

    family: Family | None = None
    dispersion: float | None = None
    success_level: str | None = None
    n_agq: int = 1
    y: np.ndarray | None = None
    prior_weights: np.ndarray | None = None
    params_cov: np.ndarray | None = None

    def _header(self) -> str:
        how = {
            "Laplace": "maximum likelihood (Laplace Approximation)",
            "nAGQ=0": "maximum likelihood (nAGQ = 0: β in the inner problem)",
        }.get(self.method, f"maximum likelihood (Adaptive Gauss-Hermite Quadrature, nAGQ = {self.n_agq})")
        lines = [
            f"Generalized linear mixed model fit by {how}",
            f" Family: {self.family_name} ( {self.link_name} )",
        ]
        if self.dispersion is not None:
            lines.append(f" Dispersion ({self.family.dispersion_name}): {self.dispersion:.6g}")
        if self.success_level is not None:
            lines.append(f" Success: {self.success_level!r}")
        return "\n".join(lines)

    def observed_response(self) -> np.ndarray:
        return self.y

    def _pearson_sd(self):
        mu = self.fitted().to_numpy()
        with jax.enable_x64(True):
            var = np.asarray(self.family.variance(jnp.asarray(mu), self._disp_arg()))
        scale = self.dispersion if self.family.dispersion_method == "pearson" else 1.0
        return np.sqrt(scale * var / self.prior_weights)

    def _disp_arg(self):
        return None if self.dispersion is None else jnp.asarray(self.dispersion)


def _start_beta(family: Family, X, y, w, offset) -> np.ndarray:
    """Least squares of the linked, initialized response on X (R's mustart idea)."""
    with jax.enable_x64(True):
        mu = np.asarray(family.initialize(jnp.asarray(y), jnp.asarray(w)))
        eta = np.asarray(family.link.link(jnp.asarray(mu)))
    eta = np.where(np.isfinite(eta), eta, 0.0) - offset
    beta, *_ = np.linalg.lstsq(X, eta, rcond=None)
    return beta


def _minimize_with_boundary(objective, params0, n_theta, sizes, inverse_hessian=None):
    solution = minimize(objective, params0, inverse_hessian=inverse_hessian)
    params = solution.x
    mask = jnp.zeros(params.shape[0], bool).at[:n_theta].set(jnp.asarray(diagonal_mask(sizes)))
    trial = jnp.where(mask & (jnp.abs(params) < _BOUNDARY_TRY), 0.0, params)
    f_trial = objective(trial)
    keep = jnp.isfinite(f_trial) & (f_trial <= solution.value + 1e-10 * (1 + jnp.abs(solution.value)))
    return solution, jnp.where(keep, trial, params)


@eqx.filter_jit
def _stage_nagq0(params0, data: GLMMData, v0, n_theta):
    objective = lambda p: laplace_objective(p, data, v0, n_theta, 0)  # noqa: E731
    solution, params = _minimize_with_boundary(objective, params0, n_theta, data.structure.sizes)
    *_, v, factor = mode_and_factor(params, data, v0, n_theta, 0)
    # (L_X L_X')⁻¹, the inner problem's covariance for β: with the stage's inverse
    # Hessian in (θ, dispersion) it preconditions the full Laplace optimization.
    p = data.structure.n_dense
    L_x = factor.rest[-p:, -p:]
    L_x_inv = jax.scipy.linalg.solve_triangular(L_x, jnp.eye(p, dtype=L_x.dtype), lower=True)
    return solution, params, v, L_x_inv.T @ L_x_inv


def _objective_for(data, v0, n_theta, n_beta, grid, log_w, use_agq):
    if use_agq:
        return lambda p: agq_objective(p, data, v0, n_theta, n_beta, grid, log_w)  # noqa: E731
    return lambda p: laplace_objective(p, data, v0, n_theta, n_beta)  # noqa: E731


@eqx.filter_jit
def _stage_full(params0, data: GLMMData, v0, n_theta, n_beta, grid, log_w, use_agq, hinv0):
    objective = _objective_for(data, v0, n_theta, n_beta, grid, log_w, use_agq)
    return _minimize_with_boundary(objective, params0, n_theta, data.structure.sizes, hinv0)


@eqx.filter_jit
def _finalize(params, data: GLMMData, v0, n_theta, n_beta, grid, log_w, use_agq):
    objective = _objective_for(data, v0, n_theta, n_beta, grid, log_w, use_agq)
    hessian = jax.hessian(objective)(params)
    theta, beta, dispersion, v, factor = mode_and_factor(params, data, v0, n_theta, n_beta)
    if use_agq:
        value = agq_at_mode(theta, beta, dispersion, v, factor, data, grid, log_w)
    else:
        value = laplace_at_mode(theta, beta, dispersion, v, factor, data)
    eta = linear_predictor(v, theta, beta, data)
    blocks = inverse_diagonal_blocks(data.structure, factor)
    factors = theta_to_factors(theta, data.structure.sizes)
    cond_cov = [jnp.einsum("ab,lbc,dc->lad", lam, blk, lam) for lam, blk in zip(factors, blocks)]
    return value, hessian, eta, v, cond_cov


def _validate_agq(n_agq, design) -> int:
    if not isinstance(n_agq, (int, np.integer)) or isinstance(n_agq, bool) or n_agq < 0:
        raise ValueError(f"n_agq must be a non-negative integer (0, 1 = Laplace, or > 1), got {n_agq!r}")
    if n_agq > 1:
        if len(design.terms) != 1:
            raise ValueError(
                f"n_agq > 1 (adaptive quadrature) needs the random effects of a single "
                f"term of one grouping factor, so that the integral factorizes over its "
                f"levels; this model has {len(design.terms)} terms "
                f"({', '.join(str(t.spec) for t in design.terms)}). Use n_agq=1 (Laplace)."
            )
        size = design.terms[0].size
        if size > MAX_AGQ_DIM:
            raise ValueError(
                f"n_agq > 1 supports at most {MAX_AGQ_DIM} random effects per level (the "
                f"grid has n_agq^S nodes); term {design.terms[0].spec} has {size}. "
                "Use n_agq=1 (Laplace)."
            )
    return int(n_agq)


@with_x64
def glmer(
    formula: str,
    data: pd.DataFrame,
    family: str | Family = "binomial",
    n_agq: int = 1,
    *,
    weights=None,
    offset=None,
) -> GLMMResult:
    """Fit a generalized linear mixed model by maximum likelihood.

    Args:
        formula: lme4 syntax, e.g. ``"cbind(incidence, size - incidence) ~ period +
            (1 | herd)"``; ``offset(...)`` terms are allowed.
        data: a DataFrame (rows with missing values in used columns are dropped).
        family: a name (``"binomial"``, ``"poisson"``, ``"gamma"``,
            ``"inverse_gaussian"``, ``"negative_binomial"``, ``"beta"``) or a family
            object such as ``glmmjax.families.Binomial(link="probit")``.
        n_agq: 1 for the Laplace approximation (default); > 1 for adaptive
            Gauss–Hermite quadrature with that many nodes per dimension (one grouping
            factor, up to 3 random effects per level); 0 for lme4's fast nAGQ=0.
        weights: prior weights (binomial: number of trials for proportions).
        offset: a known term added to the linear predictor.

    Returns:
        A :class:`GLMMResult`; ``.converged`` and ``.convergence`` report the final
        gradient and whether the Hessian is positive definite.

    Example:
        >>> import glmmjax
        >>> fit = glmmjax.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)",
        ...                     glmmjax.datasets.load("cbpp"), family="binomial")
        >>> round(fit.fixef.iloc[0], 3)
        -1.398
    """
    family = get_family(family)
    if isinstance(family, Gaussian) and family.link.name == "identity":
        from ._lmer import lmer

        return lmer(formula, data, reml=False, weights=weights, offset=offset)
    design = build_design(
        formula, data, weights=weights, offset=offset, require_random=True, numeric_response=False
    )
    return fit_glmm_design(design, family, n_agq)


@with_x64
def fit_glmm_design(design, family: Family, n_agq: int = 1) -> GLMMResult:
    """Fit a GLMM to an already built design (used by ``glmer`` and ``MixedModel``)."""
    n_agq = _validate_agq(n_agq, design)
    y, w, success_level = family.prepare_response(
        design.response, design.weights, design.response_levels, design.rows
    )
    X = design.X
    n, p = X.shape
    offset_arr = design.offset
    s_inner = build_structure(design.terms, p)
    s_outer = build_structure(design.terms, 0)
    n_theta = s_outer.n_theta
    has_disp = family.has_dispersion and family.dispersion_method != "fixed"
    beta0 = _start_beta(family, X, y, w, offset_arr)
    theta0 = initial_theta(s_outer.sizes)
    log_disp0 = np.zeros(1 if has_disp else 0)
    empty = np.zeros((n, 0))

    def as_data(structure, X_outer, dense):
        return GLMMData(
            structure=structure,
            X=jnp.asarray(X_outer),
            dense=jnp.asarray(dense),
            y=jnp.asarray(y),
            weights=jnp.asarray(w),
            offset=jnp.asarray(offset_arr),
            family=family,
        )

    # Stage 1: nAGQ=0 (β inner) gives θ, the dispersion and the modes to start from.
    data0 = as_data(s_inner, empty, X)
    v0 = np.zeros(inner_size(s_inner))
    v0[inner_size(s_inner) - p :] = beta0
    params1 = jnp.asarray(np.concatenate([theta0, log_disp0]))
    sol1, params1, v1, beta_cov1 = _stage_nagq0(params1, data0, jnp.asarray(v0), n_theta)
    theta1 = np.asarray(params1[:n_theta])
    log_disp1 = np.asarray(params1[n_theta:])
    v1 = np.asarray(v1)
    beta1 = v1[inner_size(s_inner) - p :]
    u1 = v1[: inner_size(s_inner) - p]

    grid, log_w = gauss_hermite_grid(max(n_agq, 1), design.terms[0].size)
    use_agq = n_agq > 1
    if n_agq == 0:
        solution, data_f, v_start, params = sol1, data0, jnp.asarray(v0), params1
        n_beta = 0
    else:
        data_f = as_data(s_outer, X, empty)
        v_start = jnp.asarray(u1)
        params2 = jnp.asarray(np.concatenate([theta1, beta1, log_disp1]))
        n_beta = p
        hinv1 = np.asarray(sol1.inverse_hessian)
        n_disp = len(log_disp1)
        hinv0 = np.zeros((len(params2), len(params2)))
        hinv0[:n_theta, :n_theta] = hinv1[:n_theta, :n_theta]
        hinv0[n_theta : n_theta + p, n_theta : n_theta + p] = 0.5 * np.asarray(beta_cov1)
        if n_disp:
            hinv0[-n_disp:, -n_disp:] = hinv1[n_theta:, n_theta:]
            hinv0[:n_theta, -n_disp:] = hinv1[:n_theta, n_theta:]
            hinv0[-n_disp:, :n_theta] = hinv1[n_theta:, :n_theta]
        solution, params = _stage_full(
            params2, data_f, v_start, n_theta, n_beta, grid, log_w, use_agq, jnp.asarray(hinv0)
        )
    value, hessian, eta, v, cond_cov = _finalize(
        params, data_f, v_start, n_theta, n_beta, grid, log_w, use_agq
    )
    params = np.asarray(params)
    hessian = np.asarray(hessian)
    v = np.asarray(v)
    theta_raw = params[:n_theta]
    if n_agq == 0:
        beta = v[inner_size(s_inner) - p :]
        # Var(β̂) at fixed θ: the inner Hessian's X block, as lme4 reports for nAGQ=0.
        beta_cov = np.asarray(beta_cov1)
        params_cov = None
        pd_hess = bool(np.all(np.linalg.eigvalsh(0.5 * (hessian + hessian.T)) > 0)) if hessian.size else True
    else:
        beta = params[n_theta : n_theta + p]
        sym = 0.5 * (hessian + hessian.T)
        eig = np.linalg.eigvalsh(sym)
        pd_hess = bool(np.all(eig > 0))
        # −2 log L has Hessian 2·(observed information).
        params_cov = 2.0 * np.linalg.pinv(sym)
        beta_cov = params_cov[n_theta : n_theta + p, n_theta : n_theta + p]
    log_disp = params[n_theta + n_beta :]
    dispersion = None
    if has_disp:
        dispersion = float(np.exp(log_disp[0]))
    elif family.dispersion_method == "fixed":
        dispersion = float(family.theta)

    status = Status(int(solution.status))
    grad_max = float(np.max(np.abs(np.asarray(solution.grad))))
    converged = status == Status.CONVERGED and pd_hess
    message = status.describe()
    if status == Status.CONVERGED and not pd_hess:
        message = "stationary point reached but the Hessian is not positive definite"
    convergence = Convergence(
        converged=converged,
        message=message,
        grad_max=grad_max,
        iterations=int(solution.iterations),
        n_evaluations=int(solution.n_evaluations),
        hessian_positive_definite=pd_hess,
    )
    theta = canonical_theta(theta_raw, s_outer.sizes)
    u_first, u_rest, _ = split(jnp.asarray(v), s_inner if n_agq == 0 else s_outer)
    from ._lmm import random_effects

    with jax.enable_x64(True):
        effects = [
            np.asarray(b)
            for b in random_effects(jnp.asarray(theta_raw), s_outer, u_first, u_rest)
        ]
    cond_cov = [np.asarray(c) for c in cond_cov]
    if n_agq == 0:
        # The inner factor includes the β block; the u blocks of its inverse are not
        # the conditional variances of u at fixed β. Report Laplace-style ones instead.
        cond_cov = [np.full_like(c, np.nan) for c in cond_cov]
    singular = bool(np.any(np.abs(theta[diagonal_mask(s_outer.sizes)]) < SINGULAR_TOL))
    method = {0: "nAGQ=0", 1: "Laplace"}.get(n_agq, f"AGQ({n_agq})")

    def inverse_link(eta_values):
        with jax.enable_x64(True):
            return np.asarray(family.link.inverse(jnp.asarray(eta_values)))

    return GLMMResult(
        design=design,
        method=method,
        family_name=family.name,
        link_name=family.link.name,
        theta_values=theta,
        beta=np.asarray(beta),
        beta_cov=np.asarray(beta_cov),
        scale=None,
        effects=tuple(effects),
        effect_cov=lambda: cond_cov,
        criterion=float(value),
        n_params=n_theta + p + int(has_disp),
        convergence=convergence,
        singular=singular,
        linear_predictor_fn=inverse_link,
        family=family,
        dispersion=dispersion,
        success_level=success_level,
        n_agq=n_agq,
        y=np.asarray(y),
        prior_weights=np.asarray(w),
        params_cov=params_cov,
    )
