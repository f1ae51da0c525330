"""``fit_many`` for families whose shape parameter is estimated (Tweedie's power,
Student-t's df, ordered beta's cutpoints): the design is built once and each response is
fitted by ``glmer``'s own path on the host engine (its fit of the shape with the
dispersion), so every model equals its single fit. One model after another: neither the
lockstep engine nor the compiled batch programs estimate shapes, and a host fit of these
families compiles nothing."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd

from .._glmer import fit_glmm_design
from .._progress import bar
from .fit_many import (
    BatchResult,
    _check_models,
    _design_for,
    _missing_as_weight_zero,
    _response_matrix,
    _sd_columns,
)
from .inference import between_within_df, describe, p_values


def fit_many_shapes(formula: str, data: pd.DataFrame, responses, family, *, weights=None,
                    offset=None, n_agq: int = 1, progress=None, ddf: str | None,
                    max_iter: int = 500) -> BatchResult:
    """:func:`glmmjax.fit_many` for a family with an estimated shape (see the module);
    ``ddf``: ``"between-within"`` or None, resolved by the caller."""
    design = _design_for(formula, data, weights, offset)
    Y_all, names = _response_matrix(responses, data)
    Y = Y_all[data.index.get_indexer(design.rows)]
    base_weights = np.asarray(design.weights, np.float64)
    reasons = _check_models(Y, family, design.rows, base_weights)
    usable = [k for k, reason in enumerate(reasons) if not reason]
    Y_fit, W_fit = _missing_as_weight_zero(Y, base_weights)

    K, labels = len(names), list(design.fixef_names)
    n_theta = None
    est, se = np.full((K, len(labels)), np.nan), np.full((K, len(labels)), np.nan)
    value, dispersion = np.full(K, np.nan), np.full(K, np.nan)
    shapes: dict[str, np.ndarray] = {}
    iterations, converged = np.zeros(K, int), np.zeros(K, bool)
    status = np.array(reasons, dtype=object)
    thetas = {}
    for k in bar(usable, enabled=progress, desc="fitting models", unit="model"):
        model_design = dataclasses.replace(
            design, response=Y_fit[:, k],
            weights=base_weights if W_fit is None else W_fit[:, k])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # recorded per model in `status`
            fit = fit_glmm_design(model_design, family, n_agq, engine="host",
                                  max_iter=max_iter)
        est[k] = fit.beta
        se[k] = np.sqrt(np.maximum(np.diagonal(fit.beta_cov), 0.0))
        thetas[k] = fit.theta_values
        n_theta = len(fit.theta_values)
        value[k] = fit.criterion
        dispersion[k] = np.nan if fit.dispersion is None else fit.dispersion
        for name, shape in fit.extra_params.items():
            shapes.setdefault(name, np.full(K, np.nan))[k] = shape
        iterations[k] = fit.convergence.iterations
        converged[k] = fit.convergence.converged
        status[k] = "converged" if converged[k] else fit.convergence.message
    theta = np.full((K, n_theta or 0), np.nan)
    for k, values in thetas.items():
        theta[k] = values
    with np.errstate(invalid="ignore", divide="ignore"):
        stat = est / se
    df = np.full(est.shape, np.inf)
    if ddf == "between-within":
        df[:] = between_within_df(design)
    coefficients = pd.DataFrame({
        "model": np.repeat(names, len(labels)), "term": np.tile(labels, K),
        "estimate": est.ravel(), "std_error": se.ravel(), "statistic": stat.ravel(),
        "df": df.ravel(), "p_value": p_values(stat, None if ddf is None else df).ravel()})
    models = pd.DataFrame({"model": names, "criterion": value, "loglik": -0.5 * value,
                           "dispersion": dispersion, **shapes})
    for label, values in _sd_columns(theta, design.terms, np.ones(K)).items():
        models[label] = values
    models["converged"] = converged
    models["iterations"] = iterations
    models["status"] = status
    method = {1: "Laplace"}.get(n_agq, f"AGQ({n_agq})")
    return BatchResult(coefficients=coefficients, models=models,
                       fixef=pd.DataFrame(est, index=names, columns=labels),
                       fixef_se=pd.DataFrame(se, index=names, columns=labels), theta=theta,
                       method=method, inference=describe(ddf), chunk_size=1, n_devices=1)
