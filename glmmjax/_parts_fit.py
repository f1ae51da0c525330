"""``glmer``/``lmer`` with ``ziformula=`` or ``dispformula=``: from the designs to a
:class:`~glmmjax._results.parts.GLMMPartsResult` (the fit itself is
:mod:`glmmjax._engines.compiled.parts`)."""

from __future__ import annotations

import numpy as np

from ._engines.compiled.optimize import Solution, Status
from ._engines.host.parts import start_values
from ._engines.lmm_shared import SINGULAR_TOL
from ._engines.parts_shared import PartsData, dense_terms
from ._engines.seam import check_engine, choose_lmm, opt_summary
from ._families.response_parts import is_truncated
from ._lazyjax import run_x64
from ._model.covariance import canonical_theta, diagonal_mask, numpy_factors
from ._model.design import DataError
from ._model.parts_design import PartsDesign, build_parts, check_parts
from ._precision import with_x64
from ._results.mixed import Convergence, warn_if_not_converged, warn_if_singular

# Entries of the dense n × q random-effects matrix (8 bytes each) above which a fit is
# refused rather than left to run out of memory.
DENSE_LIMIT = 50_000_000


def _part_arrays(part, n: int):
    if part is None:
        return np.zeros((n, 0)), np.zeros(n)
    return np.asarray(part.X, np.float64), np.asarray(part.offset, np.float64)


def parts_data(parts: PartsDesign, family, y, weights) -> PartsData:
    """The engine's arrays from the designs and the prepared response."""
    n = len(y)
    X_zi, offset_zi = _part_arrays(parts.zi, n)
    X_disp, offset_disp = _part_arrays(parts.disp, n)
    return PartsData(
        y=np.asarray(y, np.float64), weights=np.asarray(weights, np.float64),
        X=np.asarray(parts.cond.X, np.float64), offset=np.asarray(parts.cond.offset, np.float64),
        X_zi=X_zi, offset_zi=offset_zi, X_disp=X_disp, offset_disp=offset_disp,
        cond=dense_terms(parts.cond.terms, n),
        zi=dense_terms(parts.zi.terms if parts.zi is not None else (), n),
        family=family, zero_inflated=parts.zi is not None,
    )


def _factors(theta, terms) -> list[np.ndarray]:
    """Λ_t per term, in numpy (eager JAX operations would each compile on a first fit)."""
    return numpy_factors(theta, tuple(t.size for t in terms))


def _effects(theta, terms, u):
    """Conditional modes b = Λu per term, (m_t, S_t) each, and the slices of u."""
    out, start = [], 0
    factors = _factors(theta, terms)
    for term, lam in zip(terms, factors):
        size = term.n_levels * term.size
        block = np.asarray(u[start : start + size]).reshape(term.n_levels, term.size)
        out.append(block @ np.asarray(lam).T)
        start += size
    return tuple(out)


def _effect_covariances(theta, terms, re_cov, offset: int):
    """Conditional covariances of b per term, (m_t, S_t, S_t): Λ·H⁻¹_block·Λ'."""
    out, start = [], offset
    factors = _factors(theta, terms)
    for term, lam in zip(terms, factors):
        lam = np.asarray(lam)
        blocks = np.empty((term.n_levels, term.size, term.size))
        for level in range(term.n_levels):
            idx = slice(start + level * term.size, start + (level + 1) * term.size)
            blocks[level] = lam @ re_cov[idx, idx] @ lam.T
        out.append(blocks)
        start += term.n_levels * term.size
    return out


def hurdle_zeros(family, parts, response) -> np.ndarray | None:
    """Where a hurdle model's response is 0 (None for other models): a truncated
    family's own support check refuses zeros, which the hurdle part models."""
    if parts.zi is None or not is_truncated(family):
        return None
    return np.asarray(response, dtype=np.float64) == 0


def checked_parts_response(family, parts):
    """The response, prior weights and success level of a zero-inflation/dispersion
    model (:func:`prepare_hurdle_response`), after the checks that every path of such a
    model makes (glmer, bayes): its support, zeros a zero-truncated family cannot make,
    and an all-zero response.

    Raises:
        DataError: naming the response and what would be valid."""
    from ._glmer import check_glmm_response

    design = parts.cond
    y, w, success_level = prepare_hurdle_response(family, parts, design)
    if parts.zi is None:
        check_glmm_response(family, y, w, design)
        if is_truncated(family) and np.any((y == 0) & (w > 0)):
            raise DataError(
                f"response {design.formula.response!r} has zeros, which the zero-truncated "
                f"{family.name} family cannot produce; add ziformula= (e.g. '~1') for a "
                "hurdle model of the zeros")
    elif np.all(y[w > 0] == 0):
        raise DataError(
            f"response {design.formula.response!r} is zero on every row used: the "
            "zero-inflation and count models cannot be told apart and nothing can be "
            "estimated")
    return y, w, success_level


def prepare_hurdle_response(family, parts, design):
    """``family.prepare_response``, with a hurdle model's zeros let through."""
    zeros = hurdle_zeros(family, parts, design.response)
    response = design.response if zeros is None else np.where(zeros, 1.0, design.response)
    y, w, level = family.prepare_response(response, design.weights, design.response_levels,
                                          design.rows)
    return (y if zeros is None else np.where(zeros, 0.0, y)), w, level


def _gaussian_closed_form(family, parts, weights) -> bool:
    """Whether the host engine fits this model by the exact Gaussian marginal likelihood
    (:mod:`glmmjax._engines.host.parts_gaussian`: a Gaussian identity-link model, its
    observation-level random effects folded into the residual variance) rather than the
    Laplace route (the same criterion, exact there, over q effects)."""
    if family.name != "gaussian":  # (the module is not imported for other families)
        return False
    from ._engines.host.parts_gaussian import applies

    return applies(family, parts, weights, reml=False)


@with_x64
def fit_parts(formula: str, data, family, ziformula, dispformula, *, weights=None,
              offset=None, engine=None, max_iter: int = 500, method_name: str = "Laplace",
              reml: bool = False):
    """Fit a GLMM with zero-inflation and/or a dispersion model (``glmer``'s and
    ``lmer``'s route when ``ziformula=`` or ``dispformula=`` is given); ``reml`` (a
    Gaussian model without ziformula: ``lmer(..., reml=True)``) integrates β out as
    glmmTMB's ``REML = TRUE`` (:mod:`glmmjax._engines.host.parts_reml`, numpy on either engine)."""
    from ._model.checks import check_max_iter
    from ._results.parts import GLMMPartsResult

    max_iter = check_max_iter(max_iter)
    check_engine(engine)
    if engine is None:
        engine = choose_lmm(None)  # the host engine on the CPU, the compiled one elsewhere
    zi_rhs, disp_rhs = check_parts(family, ziformula, dispformula)
    parts = build_parts(formula, data, family, zi_rhs, disp_rhs, weights=weights,
                        offset=offset)
    design = parts.cond
    y, w, success_level = checked_parts_response(family, parts)
    data_ = parts_data(parts, family, y, w)
    cells = design.nobs * data_.q
    if cells > DENSE_LIMIT:
        raise ValueError(
            f"models with ziformula/dispformula hold the random-effects matrix densely: "
            f"{design.nobs} rows x {data_.q} random effects = {cells:,} entries exceeds "
            f"{DENSE_LIMIT:,}; fewer levels (or a sparse engine, not written yet) needed")
    params0 = start_values(data_)
    if reml:  # (before the closed form, which is maximum likelihood only)
        from ._engines.host.parts_reml import fit_reml

        out = fit_reml(params0, data_, design.terms, max_iter=max_iter)
        criterion_fn = out.pop("criterion")
    elif engine == "host" and _gaussian_closed_form(family, parts, w):
        from ._engines.host import parts_gaussian

        obs = parts_gaussian.observation_level(design.terms, len(y))
        out = parts_gaussian.fit(params0, data_, obs, max_iter=max_iter)
        criterion_fn = out.pop("criterion")
    elif engine == "host":
        from ._engines.host.parts import fit as fit_host

        out = fit_host(params0, data_, max_iter=max_iter)
        host_criterion = out.pop("criterion")

        def criterion_fn(x):
            with run_x64():  # the kernel must see float64 arrays as such
                return host_criterion(x)
    else:
        from ._engines.compiled.parts import criterion_at, fit

        out = fit(params0, data_, max_iter=max_iter)
        v_fit = out["v"]
        criterion_fn = lambda x: criterion_at(x, data_, v_fit)  # noqa: E731
    params, v = out["params"], out["v"]
    n_theta_c, n_theta_z, p, p_zi, p_disp = data_.layout
    hessian = 0.5 * (out["hessian"] + out["hessian"].T)
    finite = bool(np.all(np.isfinite(hessian)))
    pd_hess = finite and (bool(np.all(np.linalg.eigvalsh(hessian) > 0)) if hessian.size
                          else True)
    params_cov = 2.0 * np.linalg.pinv(hessian) if finite else np.full_like(hessian, np.nan)
    status = Status(int(out["status"]))
    message = status.describe()
    if status == Status.CONVERGED and not pd_hess:
        message = "stationary point reached but the Hessian is not positive definite"
    convergence = Convergence(
        converged=status == Status.CONVERGED and pd_hess, message=message,
        grad_max=float(np.max(np.abs(out["grad"]))) if out["grad"].size else 0.0,
        iterations=int(out["iterations"]), n_evaluations=int(out["n_evaluations"]),
        hessian_positive_definite=pd_hess)
    cond_sizes = tuple(t.size for t in design.terms)
    zi_terms = parts.zi.terms if parts.zi is not None else ()
    zi_sizes = tuple(t.size for t in zi_terms)
    theta_c = canonical_theta(params[:n_theta_c], cond_sizes)
    theta_z = canonical_theta(params[n_theta_c : n_theta_c + n_theta_z], zi_sizes) \
        if zi_sizes else np.zeros(0)
    # The conditional SDs in the unit of the link scale's spread (glmer: host.glmm.eta_unit)
    # for the boundary test, so that rescaling y does not make a fit singular.
    from ._engines.host.glmm import eta_unit

    unit = eta_unit(family, np.asarray(y, np.float64), np.asarray(w, np.float64))
    singular = bool(
        np.any(np.abs(theta_c[diagonal_mask(cond_sizes)]) < SINGULAR_TOL * unit)
        or (zi_sizes and np.any(np.abs(theta_z[diagonal_mask(zi_sizes)]) < SINGULAR_TOL)))
    n_theta = n_theta_c + n_theta_z
    b0 = n_theta
    q_c = data_.cond.q
    re_cov = out["re_cov"]
    raw_c = params[:n_theta_c]
    raw_z = params[n_theta_c:n_theta]
    solution = Solution(params, out["value"], out["grad"], out["iterations"], out["status"],
                        out["n_evaluations"], None)

    def effect_cov():
        return _effect_covariances(raw_c, design.terms, re_cov, 0)

    result = GLMMPartsResult(
        design=design, method=method_name, family_name=family.name,
        link_name=family.link.name, theta_values=theta_c,
        beta=params[b0 : b0 + p], beta_cov=params_cov[b0 : b0 + p, b0 : b0 + p],
        scale=None, effects=_effects(raw_c, design.terms, v[:q_c]), effect_cov=effect_cov,
        criterion=float(out["value"]), n_params=int(params.size), convergence=convergence,
        singular=singular, theta_unit=unit, family=family, dispersion=None,
        success_level=success_level,
        n_agq=1, y=np.asarray(y), prior_weights=np.asarray(w), params_cov=params_cov,
        engine=engine, opt_summary=opt_summary(engine, solution, out["initial"]),
        parts=parts, layout=data_.layout, params=params, theta_zi_values=theta_z,
        effects_zi=_effects(raw_z, zi_terms, v[q_c:]),
        criterion_fn=criterion_fn, parts_data=data_,
    )
    warn_if_not_converged(result, "glmer")
    warn_if_singular(result)
    return result
