"""``glmer``: generalized linear mixed models by Laplace or adaptive quadrature.

The fit runs in two stages, as lme4 does: first the fast nAGQ=0 criterion (β found with
the random effects in the inner problem) over θ and the dispersion, then the Laplace or
AGQ criterion over (θ, β, log dispersion) from there, by BFGS with exact gradients
(implicit differentiation through the inner mode, :mod:`glmmjax._engines.compiled.pirls`). Standard
errors come from the exact autodiff Hessian of −2 log L in all parameters.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd

from ._engines.compiled.optimize import Status
from ._engines.lmm_shared import SINGULAR_TOL
from ._engines.seam import choose_glmm, fit_glmm
from ._families import math as fm
from ._families import math_tmb as tmb_math
from ._families.base import (
    Beta,
    Binomial,
    Family,
    Gamma,
    Gaussian,
    InverseGaussian,
    NegativeBinomial,
    Poisson,
    get_family,
)
from ._lazyjax import jnp, run_x64
from ._model.checks import validate_agq as _validate_agq
from ._model.cov_structures import term_structures
from ._model.covariance import canonical_theta, diagonal_mask
from ._model.design import DataError, build_design
from ._precision import with_x64
from ._results.glmm import GLMMResult
from ._results.mixed import (
    Convergence,
    warn_if_not_converged,
    warn_if_singular,
)
from ._stacklevel import external_stacklevel


@with_x64
def glmer(
    formula: str,
    data: pd.DataFrame,
    family: str | Family = "binomial",
    n_agq: int = 1,
    *,
    weights=None,
    offset=None,
    engine: str | None = None,
    max_iter: int = 500,
    ziformula: str | None = None,
    dispformula: str | None = None,
    relmat: dict | None = None,
) -> GLMMResult:
    """Fit a generalized linear mixed model by maximum likelihood.

    Args:
        formula: lme4 syntax, e.g. ``"cbind(incidence, size - incidence) ~ period +
            (1 | herd)"``; ``offset(...)`` terms are allowed.
        data: a DataFrame (rows with missing values in used columns are dropped).
        family: a name (``"binomial"``, ``"poisson"``, ``"gamma"``,
            ``"inverse_gaussian"``, ``"negative_binomial"``, ``"beta"``; glmmTMB's
            ``"nbinom1"``, ``"truncated_poisson"``, ``"truncated_nbinom1"``,
            ``"truncated_nbinom2"``, ``"genpois"``, ``"betabinomial"``,
            ``"lognormal"``, ``"t_family"``, ``"tweedie"``, ``"compois"``, ``"ordbeta"``) or a family
            object such as
            ``glmmjax.families.Binomial(link="probit")``.
        n_agq: 1 for the Laplace approximation (default); > 1 for adaptive
            Gauss–Hermite quadrature with that many nodes per dimension (one grouping
            factor, up to 3 random effects per level); 0 for lme4's fast nAGQ=0.
        weights: prior weights (binomial: number of trials for proportions).
        offset: a known term added to the linear predictor.
        engine: ``"host"`` or ``"jax"`` to choose how a fit runs (see the note);
            None (default) picks the host engine where it applies.
        max_iter: the cap on BFGS iterations in each of the two stages.
        ziformula: glmmTMB's zero-inflation model, a one-sided formula (``"~ 1"``,
            ``"~ mined + (1 | site)"``; logit link) for count families; with a
            truncated family (``truncated_poisson``, ...) it is the hurdle model of
            P(y = 0). None or ``"~0"``: none.
        dispformula: glmmTMB's dispersion model, a one-sided formula of fixed effects
            for log φ (φ as glmmTMB 1.1.5: σ² for Gaussian, shape for Gamma, θ for the
            negative binomial, precision for beta); ``"~0"`` fixes a Gaussian
            model's residual variance at about 1.5e-8 (glmmTMB's). None: ``"~1"``.
        relmat: known relatedness ``{"animal": K}`` for a term ``(1 | animal)``, as
            :func:`glmmjax.lmer`.

    Returns:
        A :class:`GLMMResult`; with ``ziformula`` or ``dispformula`` a
        :class:`~glmmjax._results.parts.GLMMPartsResult` (coefficients by part, as
        glmmTMB's, fitted by the Laplace approximation: on the CPU by default by the
        host engine of :mod:`glmmjax._engines.host.parts`, with ``engine="jax"`` or on
        accelerators by the compiled :mod:`glmmjax._engines.compiled.parts`); ``.converged`` and ``.convergence`` report the final
        gradient and whether the Hessian is positive definite.

    Raises:
        DataError: a response with no information (binomial: only successes or only
            failures; counts: all zero; Gamma, inverse Gaussian, beta: constant), all
            weights zero, or a response outside the family's support.

    Warns:
        SeparationWarning: (quasi-)complete separation; names the fixed effects whose
            estimates are infinite (``result.separated``; ``converged`` is False).
        ConvergenceWarning: the optimizer stopped short; the message says why, with
            the final gradient.
        SingularFitWarning: a variance component is estimated on the boundary (see
            ``result.singular_message()``).

    Note:
        On the CPU, Laplace fits of every built-in family and link (dispersion
        parameters included) with up to 200,000 rows run by default on the host engine
        (:mod:`glmmjax._engines.host.glmm`): numpy and LAPACK evaluations of the same objective
        with its exact gradient, nothing to compile, standard errors from central
        differences of that gradient (they agree with the autodiff Hessian's to about
        1e-6). User-defined families and links, quadrature (``n_agq > 1``), nAGQ=0,
        larger data, accelerators and ``engine="jax"`` use the compiled pipeline: the
        first fit of a model structure (its shapes, family, n_agq) traces and compiles
        the whole fit as one XLA program, with the Hessian by automatic
        differentiation, which takes longer than the fit itself on small data (figures
        in benchmarks/README.md); later fits of the same structure reuse it. To keep
        compiled programs across processes, turn on JAX's persistent cache before
        fitting: ``jax.config.update("jax_compilation_cache_dir", "/some/dir")``.
        ``result.engine`` and ``result.opt_summary`` say which engine fitted the model
        and how its optimizer ran.

    Example:
        >>> import glmmjax
        >>> fit = glmmjax.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)",
        ...                     glmmjax.datasets.load("cbpp"), family="binomial")
        >>> round(fit.fixef.iloc[0], 3)
        -1.398
    """
    family = get_family(family)
    if ziformula is not None or dispformula is not None:
        if relmat is not None:
            raise ValueError("relmat= cannot be combined with ziformula= or dispformula= "
                             "yet; fit the known-relatedness model without them")
        from ._parts_fit import fit_parts

        if n_agq != 1:
            raise ValueError(f"n_agq={n_agq!r}: models with ziformula/dispformula are fitted "
                             "by the Laplace approximation only (n_agq=1), as glmmTMB")
        return fit_parts(formula, data, family, ziformula, dispformula, weights=weights,
                         offset=offset, engine=engine, max_iter=max_iter)
    if isinstance(family, Gaussian) and family.link.name == "identity":
        from ._lmer import lmer

        return lmer(formula, data, reml=False, weights=weights, offset=offset, engine=engine,
                    max_iter=max_iter, relmat=relmat)
    design = build_design(
        formula, data, weights=weights, offset=offset, require_random=True, numeric_response=False,
        drop_aliased=True, relmat=relmat,
    )
    result = fit_glmm_design(design, family, n_agq, engine=engine, max_iter=max_iter)
    warn_if_singular(result)
    return result


def check_glmm_response(family: Family, y: np.ndarray, weights: np.ndarray, design) -> None:
    """Refuse responses that carry no information about the model (before any fit): the
    optimizer would stop anywhere and report numbers that look like estimates."""
    name = design.formula.response.strip()
    used = weights > 0
    if not np.any(used):
        raise DataError(
            "all weights are zero (weights=, or cbind() rows with no trials): nothing to "
            "fit; weights must be finite, non-negative and positive on some rows")
    y = y[used]
    if isinstance(family, Binomial) and (np.all(y <= 0) or np.all(y >= 1)):
        which = "failures (0)" if np.all(y <= 0) else "successes (1)"
        raise DataError(
            f"binomial response {name!r} has only {which} on every row used: the "
            "intercept's maximum likelihood estimate is infinite and nothing can be "
            "estimated")
    if isinstance(family, (Poisson, NegativeBinomial)) and np.all(y == 0):
        raise DataError(
            f"count response {name!r} is zero on every row used: the intercept's "
            "maximum likelihood estimate is -inf and nothing can be estimated")
    if isinstance(family, (Gamma, InverseGaussian, Beta)) and np.ptp(y) == 0:
        raise DataError(
            f"response {name!r} is constant ({y[0]:g} on every row used): its "
            "dispersion estimate would be 0 (beta: infinite precision) and the "
            "likelihood unbounded")


def separated_coefficients(result: GLMMResult, y, weights) -> tuple:
    """Fixed effects whose estimates are infinite because of (quasi-)complete separation
    (:func:`glmmjax._glm.detect_separation` on X; binomial models, and counts with a
    log link). The linear program runs only where the fit looks separated: some fitted
    mean at 0 or 1 (counts: 0 where y = 0), or no convergence. ``_glm`` is imported
    only then (with scipy.special: ~0.1 s of a first Student-t fit of 0.05 s)."""
    family = result.family
    counts = isinstance(family, (Poisson, NegativeBinomial)) and family.link.name == "log"
    if not (isinstance(family, Binomial) or counts):
        return ()
    used = weights > 0
    mu = result.fitted().to_numpy()[used]
    if counts:
        extreme = (mu < 1e-8) & (y[used] == 0)
    else:
        extreme = (mu < 1e-8) | (mu > 1.0 - 1e-8)
    if result.converged and not np.any(extreme):
        return ()
    from ._glm import detect_separation

    mask = detect_separation(np.asarray(result.design.X), np.asarray(y), np.asarray(weights),
                             counts=counts)
    return tuple(n for n, m in zip(result.design.fixef_names, mask) if m)


def report_convergence(result: GLMMResult, y, weights) -> GLMMResult:
    """Mark a separated fit as not converged and warn; warn on any other
    non-convergence."""
    separated = separated_coefficients(result, y, weights)
    if not separated:
        warn_if_not_converged(result, "glmer")
        return result
    from ._glm import SeparationWarning

    message = (f"(quasi-)complete separation: the maximum likelihood estimates of "
               f"{list(separated)} are infinite")
    warnings.warn(
        f"{message}; some fitted means are 0 or 1 (counts: 0) and the reported estimates "
        "and standard errors of those coefficients are meaningless (consider removing "
        "those terms, or a Bayesian fit with priors: glmmjax.bayes)",
        SeparationWarning,
        stacklevel=external_stacklevel(),
    )
    convergence = dataclasses.replace(result.convergence, converged=False, message=message)
    return dataclasses.replace(result, convergence=convergence, separated=separated)


def _fix_estimated_shape(family, out):
    """A family whose shape parameter was estimated with the dispersion (Student-t's
    ν, Tweedie's p; ``out.dispersion`` is then (φ, shape)): the result's family carries
    the estimate fixed, so simulation, residuals and predictions use it (a parametric
    bootstrap refits with it held fixed), and ``extra_params`` reports it."""
    if not getattr(family, "n_shape", 0):
        return family, out, {}
    values = [float(v) for v in np.asarray(out.dispersion)]
    if hasattr(family, "with_estimates"):  # several shapes (ordered beta's cutpoints)
        fitted = family.with_estimates(values[1:])
        return (fitted, dataclasses.replace(out, dispersion=values[0]),
                dict(zip(family.shape_names, values[1:])))
    dispersion, shape = values
    fitted = type(family)(shape, link=family.link)
    name = "df" if family.name == "t_family" else "power"
    return fitted, dataclasses.replace(out, dispersion=dispersion), {name: shape}


@with_x64
def fit_glmm_design(design, family: Family, n_agq: int = 1,
                    engine: str | None = None, max_iter: int = 500) -> GLMMResult:
    """Fit a GLMM to an already built design (used by ``glmer`` and ``MixedModel``).

    Warns with :class:`~glmmjax.SeparationWarning` or
    :class:`~glmmjax.ConvergenceWarning` when the estimates are not a finite minimum."""
    from ._model.checks import check_max_iter

    max_iter = check_max_iter(max_iter)
    n_agq = _validate_agq(n_agq, design)
    engine = choose_glmm(design, family, n_agq, engine)
    y, w, success_level = family.prepare_response(
        design.response, design.weights, design.response_levels, design.rows
    )
    check_glmm_response(family, y, w, design)
    out = fit_glmm(design, family, n_agq, y, w, engine, max_iter)
    family, out, extra_params = _fix_estimated_shape(family, out)
    structures = term_structures(design.terms)
    sym = 0.5 * (out.hessian + out.hessian.T)
    # (A non-finite Hessian is not positive definite: no standard errors.)
    pd_hess = (bool(np.all(np.isfinite(sym)) and np.all(np.linalg.eigvalsh(sym) > 0))
               if sym.size else True)
    status = Status(out.opt.status)
    converged = status == Status.CONVERGED and pd_hess
    message = status.describe()
    if status == Status.CONVERGED and not pd_hess:
        message = "stationary point reached but the Hessian is not positive definite"
    convergence = Convergence(
        converged=converged,
        message=message,
        grad_max=out.opt.grad_max,
        iterations=out.opt.iterations,
        n_evaluations=out.opt.n_evaluations,
        hessian_positive_definite=pd_hess,
    )
    theta = canonical_theta(out.params[: out.n_theta], structures)
    # SDs on a power link's scale are in the response's units (host.glmm.eta_unit): the
    # boundary test is on them in that unit, so that rescaling y does not make a fit
    # singular.
    from ._engines.host.glmm import eta_unit, theta_unit

    unit = eta_unit(family, np.asarray(y, dtype=np.float64), np.asarray(w, dtype=np.float64))
    relative = theta / theta_unit(structures, unit)
    singular = bool(np.any(np.abs(relative[diagonal_mask(structures)]) < SINGULAR_TOL))
    method = {0: "nAGQ=0", 1: "Laplace"}.get(n_agq, f"AGQ({n_agq})")

    def mean_parameter(eta_values):
        if fm.supported(family):  # numpy closed form: no JAX operation to compile
            return fm.inverse_link(family.link, np, np.asarray(eta_values, dtype=np.float64))
        with run_x64():
            return np.asarray(family.link.inverse(jnp.asarray(eta_values)))

    def inverse_link(eta_values):
        # E[y]: for zero-truncated families μ/P(y > 0), as glmmTMB 1.1.5's response scale.
        mu = mean_parameter(eta_values)
        if not getattr(family, "truncated", False):
            return mu
        if tmb_math.truncated_supported(family):  # numpy: nothing to import or trace
            return tmb_math.truncated_mean(family, np, np.asarray(mu), out.dispersion)
        with run_x64():
            disp = None if out.dispersion is None else jnp.asarray(out.dispersion)
            return np.asarray(family.response_mean(jnp.asarray(mu), disp))

    result = GLMMResult(
        design=design,
        method=method,
        family_name=family.name,
        link_name=family.link.name,
        theta_values=theta,
        beta=np.asarray(out.beta),
        beta_cov=np.asarray(out.beta_cov),
        scale=None,
        effects=out.effects,
        effect_cov=out.conditional_covariances,
        criterion=out.value,
        n_params=out.n_theta + design.X.shape[1] + int(out.estimated_dispersion)
        + len(extra_params),
        extra_params=extra_params,
        convergence=convergence,
        singular=singular,
        theta_unit=unit,
        linear_predictor_fn=inverse_link,
        family=family,
        dispersion=None if out.dispersion is None else float(out.dispersion),
        success_level=success_level,
        n_agq=n_agq,
        y=np.asarray(y),
        prior_weights=np.asarray(w),
        params_cov=out.params_cov,
        engine=out.engine,
        opt_summary=out.opt,
    )
    return report_convergence(result, np.asarray(y), np.asarray(w))
