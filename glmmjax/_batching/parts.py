"""``fit_many`` with ``ziformula=``/``dispformula=``: the designs are built once, each
response is fitted by the host engine (:func:`_host_loop`), and the results are
assembled into a :class:`~glmmjax.BatchResult`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._engines.compiled.optimize import Status
from .._families.distributions import norm_sf
from .._model.covariance import canonical_thetas
from .._model.design import DataError
from .._model.parts_design import build_parts, check_parts
from .fit_many import BatchResult, _check_models, _response_matrix, _sd_columns
from .lockstep import CHUNK, fit_parts_many, parts_applies

_RESPONSE = "_glmmjax_response_"
# The lockstep numpy engine where it applies; tests set False to run the host loop.
LOCKSTEP = True


def fit_many_parts(formula: str, data: pd.DataFrame, responses, family, ziformula,
                   dispformula, *, weights=None, offset=None, chunk_size=None,
                   progress=None, max_iter: int = 500) -> BatchResult:
    """:func:`glmmjax.fit_many` for models with zero-inflation or a dispersion model.

    Coefficients are named as glmmTMB's full covariance matrix names them: the
    conditional model's as they are, ``zi~name`` and ``d~name`` for the other parts.
    """
    from .._parts_fit import hurdle_zeros, parts_data

    if family is None:
        raise ValueError("fit_many with ziformula/dispformula needs a family (e.g. "
                         "family='poisson')")
    if not isinstance(formula, str):
        raise DataError(f"formula must be a string like '~ x + (1|g)', got {formula!r}")
    zi_rhs, disp_rhs = check_parts(family, ziformula, dispformula)
    rhs = formula.split("~", 1)[1] if "~" in formula else formula
    frame = data.assign(**{_RESPONSE: 0.0})
    parts = build_parts(f"{_RESPONSE} ~ {rhs}", frame, family, zi_rhs, disp_rhs,
                        weights=weights, offset=offset)
    design = parts.cond
    Y_all, names = _response_matrix(responses, data)
    Y = Y_all[data.index.get_indexer(design.rows)]
    zeros = hurdle_zeros(family, parts, Y)
    reasons = _check_models(Y if zeros is None else np.where(zeros, 1.0, Y), family,
                            design.rows, design.weights)
    if parts.zi is None:
        reasons = [r or ("all zero" if np.all(Y[:, k] == 0) else "")
                   for k, r in enumerate(reasons)]
    usable = [k for k, r in enumerate(reasons) if not r]
    weights_used = np.asarray(design.weights, np.float64)
    if LOCKSTEP and parts_applies(parts, family):
        # All models at once in numpy (glmmjax._batching.lockstep), nothing compiled.
        from .fit_many import _missing_as_weight_zero

        Y_fit, W_fit = _missing_as_weight_zero(Y, weights_used)
        if W_fit is None:
            W_fit = np.broadcast_to(weights_used[:, None], Y.shape)
        out = None
        if usable:
            with np.errstate(all="ignore"):
                out = fit_parts_many(parts, family, Y_fit[:, usable], W_fit[:, usable],
                                     progress, chunk_size)
        chunk = CHUNK if chunk_size is None else int(chunk_size)
        return _assemble_parts(parts, names, reasons, usable, out, max(1, min(chunk, len(usable))))
    template = parts_data(parts, family, np.zeros(design.nobs), weights_used)
    with jax.enable_x64(True):
        template = jax.tree_util.tree_map(jnp.asarray, template)
        out = _host_loop(Y, usable, template, max_iter, progress) if usable else None
    return _assemble_parts(parts, names, reasons, usable, out, 1)


def _host_loop(Y, usable, template, max_iter, progress) -> dict:
    """One host-engine fit per model (:mod:`glmmjax._engines.host.parts`), the kernel compiled
    once for all. A vmapped compiled BFGS (tried) runs every model of a chunk for as
    many iterations as its slowest one needs, and one hard model (a zero-inflation
    probability running off to 0) held a chunk of 16 for minutes; a loop of host fits
    has no such coupling and, on these sizes, no compile time to amortize."""
    import equinox as eqx

    from .._engines.host.parts import fit as fit_host
    from .._engines.host.parts import start_values
    from .._progress import bar

    pieces = []
    for k in bar(usable, enabled=progress, desc="fitting models", unit="model"):
        data = eqx.tree_at(lambda d: d.y, template, jnp.asarray(Y[:, k]))
        out = fit_host(start_values(data), data, max_iter=max_iter)
        hessian = out["hessian"]
        finite = bool(np.all(np.isfinite(hessian)))
        pieces.append(dict(
            params=out["params"], value=out["value"], status=out["status"],
            iterations=out["iterations"],
            params_cov=2.0 * np.linalg.pinv(hessian) if finite else np.full_like(hessian,
                                                                                 np.nan),
            hessian_pd=finite and bool(np.all(np.linalg.eigvalsh(hessian) > 0))))
    return {key: np.stack([np.asarray(p[key]) for p in pieces]) for key in pieces[0]}


def _assemble_parts(parts, names, reasons, usable, out, chunk) -> BatchResult:
    design = parts.cond
    labels = list(design.fixef_names)
    if parts.zi is not None:
        labels += [f"zi~{n}" for n in parts.zi.fixef_names]
    if parts.disp is not None:
        labels += [f"d~{n}" for n in parts.disp.fixef_names]
    cond_sizes = tuple(t.size for t in design.terms)
    zi_terms = parts.zi.terms if parts.zi is not None else ()
    n_theta_c = sum(s * (s + 1) // 2 for s in cond_sizes)
    n_theta_z = sum(t.size * (t.size + 1) // 2 for t in zi_terms)
    n_theta = n_theta_c + n_theta_z
    K, k = len(names), len(labels)
    est, se = np.full((K, k), np.nan), np.full((K, k), np.nan)
    theta = np.full((K, n_theta_c), np.nan)
    theta_zi = np.full((K, n_theta_z), np.nan)
    value = np.full(K, np.nan)
    iterations = np.zeros(K, int)
    converged = np.zeros(K, bool)
    status = np.array(reasons, dtype=object)
    if out is not None:
        idx = np.asarray(usable)
        params = out["params"]
        est[idx] = params[:, n_theta:]
        diag = np.diagonal(out["params_cov"], axis1=1, axis2=2)[:, n_theta:]
        se[idx] = np.sqrt(np.maximum(diag, 0))
        theta[idx] = canonical_thetas(params[:, :n_theta_c], cond_sizes)
        if zi_terms:
            zi_sizes = tuple(t.size for t in zi_terms)
            theta_zi[idx] = canonical_thetas(params[:, n_theta_c:n_theta], zi_sizes)
        value[idx] = out["value"]
        iterations[idx] = out["iterations"]
        ok = (out["status"] == Status.CONVERGED) & out["hessian_pd"] & np.isfinite(out["value"])
        converged[idx] = ok
        for j, m in enumerate(idx):
            if ok[j]:
                status[m] = "converged"
            elif out["status"][j] != Status.CONVERGED:
                status[m] = Status(int(out["status"][j])).describe()
            else:
                status[m] = "Hessian not positive definite"
    with np.errstate(invalid="ignore", divide="ignore"):
        stat = est / se
    coefficients = pd.DataFrame({
        "model": np.repeat(names, k), "term": np.tile(labels, K), "estimate": est.ravel(),
        "std_error": se.ravel(), "statistic": stat.ravel(),
        "p_value": (2 * norm_sf(np.abs(stat))).ravel()})
    models = pd.DataFrame({"model": names, "criterion": value, "loglik": -0.5 * value})
    for label, values in _sd_columns(theta, design.terms, np.ones(K)).items():
        models[label] = values
    if zi_terms:  # the zero-inflation part's random effects, as zi~sd_<coef>|<group>
        for label, values in _sd_columns(theta_zi, zi_terms, np.ones(K)).items():
            models[f"zi~{label}"] = values
    models["converged"] = converged
    models["iterations"] = iterations
    models["status"] = status
    return BatchResult(coefficients=coefficients, models=models,
                       fixef=pd.DataFrame(est, index=names, columns=labels),
                       fixef_se=pd.DataFrame(se, index=names, columns=labels), theta=theta,
                       method="Laplace", inference="Wald z tests", chunk_size=chunk,
                       n_devices=1)
