"""``fit_many`` one model after another on the host engine: each response is fitted by
``lmer``'s or ``glmer``'s own host path (numpy and LAPACK, nothing compiled) on the
shared design, so every model equals its single fit.

Used where no batch-specialized solver covers the structure and compiling the general
vmapped pipeline costs more than the whole loop: on the CPU in float64, models with a
structured covariance term (``cs``, ``ar1``, ``toep``, ``ou``, ``diag``, ``exp``/``gau``/
``mat``, ...) and GLMMs the lockstep engine and the compiled Newton paths do not take
(50 LMMs ``~ x + ar1(timef + 0 | subj)``, 240 rows: 34.5 s compiled, 6.6 s here; 50
Poisson GLMMs with a ``cs`` term: 151 s and 29 s; ``benchmarks/README.md``). Families
with an estimated shape parameter (:mod:`glmmjax._batching.shapes`) use it too.

Missing responses (NaN) are rows of prior weight 0 in their model, as on the batched
paths; a model the single fit refuses (an exact fit, a response outside the family's
support on its rows) is flagged with the reason in ``models['status']``, and a fit that
stops short is flagged as not converged, never dropped."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd

from .._model.design import DataError
from .._progress import bar
from .fit_many import BatchResult, _missing_as_weight_zero, _sd_columns
from .inference import between_within_df, describe, kenward_roger, p_values


def _fit_one(design, family, reml: bool, n_agq: int, max_iter: int):
    if family is None:
        from .._lmer import fit_lmm_design

        return fit_lmm_design(design, reml, engine="host", max_iter=max_iter)
    from .._glmer import fit_glmm_design

    return fit_glmm_design(design, family, n_agq, engine="host", max_iter=max_iter)


def _satterthwaite_df(fit) -> np.ndarray:
    """Satterthwaite's df of each coefficient, as the single fit's
    ``coef_table(ddf="satterthwaite")`` (lmerTest)."""
    from .._inference.ddf import satterthwaite_t_df

    pieces = fit._satterthwaite
    eye = np.eye(len(fit.beta))
    return np.array([satterthwaite_t_df(pieces, eye[j]) for j in range(len(fit.beta))])


def fit_host_loop(design, family, Y: np.ndarray, names: list, reasons: list, *,
                  reml: bool = True, n_agq: int = 1, ddf: str | None,
                  progress: bool | None = None, max_iter: int = 500) -> BatchResult:
    """Fit every usable response (column of ``Y``, rows of ``design``; ``reasons[k]``
    non-empty: flagged, not fitted) by the single fit's host engine.

    ``family``: None for Gaussian LMMs (REML unless ``reml`` is False), else a GLMM
    family (Laplace, ``n_agq`` = 1). ``ddf``: as resolved by
    :func:`glmmjax._batching.inference.check_batch_ddf` ("satterthwaite",
    "kenward-roger", "between-within" or None)."""
    K, labels = len(names), list(design.fixef_names)
    p = len(labels)
    usable = [k for k, reason in enumerate(reasons) if not reason]
    if family is not None and n_agq != 1:
        raise ValueError(f"fit_many fits these models one by one by glmer's host engine, "
                         f"which fits the Laplace approximation (n_agq=1), got n_agq={n_agq}")
    base_weights = np.asarray(design.weights, np.float64)
    # (The design's offset is subtracted by the single fit, as lmer/glmer do.)
    Y_fit, W_fit = _missing_as_weight_zero(Y, base_weights)

    est, se = np.full((K, p), np.nan), np.full((K, p), np.nan)
    df = np.full((K, p), np.inf if ddf is None else np.nan)
    value, scale = np.full(K, np.nan), np.full(K, np.nan)
    extra: dict[str, np.ndarray] = {}
    iterations, converged = np.zeros(K, int), np.zeros(K, bool)
    status = np.array(reasons, dtype=object)
    thetas: dict[int, np.ndarray] = {}
    for k in bar(usable, enabled=progress, desc="fitting models", unit="model"):
        model_design = dataclasses.replace(
            design, response=Y_fit[:, k],
            weights=base_weights if W_fit is None else W_fit[:, k])
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")  # recorded per model in `status`
                fit = _fit_one(model_design, family, reml, n_agq, max_iter)
        except (DataError, ArithmeticError, np.linalg.LinAlgError) as err:
            # The single fit's refusal of this response, or a numerical failure of this
            # model alone: flagged, the batch goes on.
            status[k] = (str(err) if isinstance(err, DataError)
                         else f"{type(err).__name__}: {err}")
            continue
        if ddf == "satterthwaite":
            try:
                with warnings.catch_warnings(), np.errstate(all="ignore"):
                    warnings.simplefilter("ignore")
                    df[k] = _satterthwaite_df(fit)
            except (ArithmeticError, np.linalg.LinAlgError):
                pass  # NaN df: the model's estimates stand, its t tests are undefined
        est[k] = fit.beta
        se[k] = np.sqrt(np.maximum(np.diagonal(fit.beta_cov), 0.0))
        thetas[k] = np.asarray(fit.theta_values, float)
        value[k] = fit.criterion
        if family is None:
            scale[k] = fit.sigma
        elif fit.dispersion is not None:
            scale[k] = fit.dispersion
        for name, shape in getattr(fit, "extra_params", {}).items():
            extra.setdefault(name, np.full(K, np.nan))[k] = shape
        iterations[k] = fit.convergence.iterations
        converged[k] = bool(fit.convergence.converged) and np.isfinite(value[k])
        status[k] = "converged" if converged[k] else fit.convergence.message
    n_theta = next((len(t) for t in thetas.values()), None)
    if n_theta is None:
        from .._model.cov_structures import term_structures

        n_theta = sum(s.n_params for s in term_structures(design.terms))
    theta = np.full((K, n_theta), np.nan)
    for k, values in thetas.items():
        theta[k] = values

    if ddf == "kenward-roger" and thetas:
        # pbkrtest's df and adjusted SEs per model on its observed rows, as the
        # compiled LMM path (numpy, model by model).
        fitted = sorted(thetas)
        df_kr, se_kr = kenward_roger(design, Y[:, fitted], theta[fitted], scale[fitted],
                                     est[fitted])
        df[fitted], se[fitted] = df_kr, se_kr
    elif ddf == "between-within":
        df[:] = between_within_df(design)
    if design.dropped_fixef:
        # Aliased columns were not fitted: NaN in every model (as _assemble).
        from .._model.rank import all_fixef_names

        labels = list(all_fixef_names(design))
        kept = list(design.x_columns)
        blocks = []
        for block in (est, se, df):
            full = np.full((K, len(labels)), np.nan)
            full[:, kept] = block
            blocks.append(full)
        est, se, df = blocks
    with np.errstate(invalid="ignore", divide="ignore"):
        stat = est / se
    coefficients = pd.DataFrame({
        "model": np.repeat(names, len(labels)), "term": np.tile(labels, K),
        "estimate": est.ravel(), "std_error": se.ravel(), "statistic": stat.ravel(),
        "df": df.ravel(), "p_value": p_values(stat, df).ravel()})
    models = pd.DataFrame({"model": names, "criterion": value, "loglik": -0.5 * value})
    if family is None:
        models["sigma"] = scale
    elif family.has_dispersion and family.dispersion_method != "fixed":
        models["dispersion"] = scale
    for name, values in extra.items():
        models[name] = values
    sigma_for_sd = scale if family is None else np.ones(K)
    for label, values in _sd_columns(theta, design.terms, sigma_for_sd).items():
        models[label] = values
    models["converged"] = converged
    models["iterations"] = iterations
    models["status"] = status
    if family is None:
        method = "REML" if reml else "ML"
    else:
        method = {1: "Laplace"}.get(n_agq, f"AGQ({n_agq})")
    return BatchResult(coefficients=coefficients, models=models,
                       fixef=pd.DataFrame(est, index=names, columns=labels),
                       fixef_se=pd.DataFrame(se, index=names, columns=labels), theta=theta,
                       method=method, inference=describe(ddf), chunk_size=1, n_devices=1)
