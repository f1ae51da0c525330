"""``MixedModel.from_arrays`` and ``MixedModel.init_params``: a model from arrays alone,
checked before any tracing where the values are known, traceable where they are not."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .._families.base import Gaussian, get_family
from .covariance import initial_theta
from .design import DataError
from .params import Params
from .structure import ArrayTerm, is_traced, structure_for_arrays


def _shape_error(name: str, array, expected: str):
    return DataError(f"{name} must have shape {expected}, got shape {tuple(np.shape(array))}")


def _as_float(name: str, value, shape_check, expected: str):
    if not hasattr(value, "shape"):
        value = np.asarray(value, dtype=float)
    if not shape_check(value.shape):
        raise _shape_error(name, value, expected)
    if not jnp.issubdtype(value.dtype, jnp.inexact):
        if is_traced(value):
            value = value.astype(jnp.result_type(float))
        else:
            value = np.asarray(value, dtype=float)
    if not is_traced(value) and not np.all(np.isfinite(np.asarray(value))):
        bad = np.flatnonzero(~np.isfinite(np.asarray(value).reshape(len(value), -1)).all(1))
        raise DataError(f"{name} has non-finite values in rows {bad[:5].tolist()}")
    return value


def _term(k: int, entry, n: int) -> ArrayTerm:
    if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 3):
        raise DataError(
            f"terms[{k}] must be (refs, z) or (refs, z, n_levels), got {type(entry).__name__}")
    refs, z = entry[0], entry[1]
    n_levels = entry[2] if len(entry) == 3 else None
    if not hasattr(refs, "shape"):
        refs = np.asarray(refs)
    if refs.shape != (n,):
        raise _shape_error(f"terms[{k}] refs", refs, f"({n},) (one level index per row)")
    if not jnp.issubdtype(refs.dtype, jnp.integer):
        raise DataError(
            f"terms[{k}] refs must be an integer array of level indices, got dtype "
            f"{refs.dtype}")
    if z is None:
        z = np.ones((n, 1))
    z = _as_float(f"terms[{k}] z", z, lambda s: s in ((n,), ) or (len(s) == 2 and s[0] == n),
                  f"({n}, S) or ({n},)")
    if z.ndim == 1:
        z = z[:, None]
    if is_traced(refs):
        if n_levels is None:
            raise DataError(
                f"terms[{k}] needs n_levels when its refs are traced (inside jit): pass "
                f"(refs, z, n_levels)")
    else:
        refs = np.asarray(refs)
        top = int(refs.max()) + 1 if n else 0
        n_levels = top if n_levels is None else n_levels
        if n and (refs.min() < 0 or refs.max() >= n_levels):
            bad = np.flatnonzero((refs < 0) | (refs >= n_levels))
            raise DataError(
                f"terms[{k}] refs must lie in [0, {n_levels}) (n_levels = {n_levels}); rows "
                f"{bad[:5].tolist()} hold {refs[bad[:5]].tolist()}")
        refs = refs.astype(np.int32)
    if not isinstance(n_levels, (int, np.integer)) or n_levels < 1:
        from .._display import show
        raise DataError(f"terms[{k}] n_levels must be a positive integer, got {show(n_levels)}")
    return ArrayTerm(refs, z, int(n_levels))


def model_arrays(cls, X, y, terms, family, weights, offset, reml: bool, n_agq: int):
    if family is not None:
        family = get_family(family)
        if isinstance(family, Gaussian) and family.link.name == "identity":
            family = None
    X = _as_float("X", X, lambda s: len(s) == 2, "(n, p)")
    n = X.shape[0]
    y = _as_float("y", y, lambda s: s == (n,), f"({n},) (one response per row of X)")
    weights = (np.ones(n) if weights is None
               else _as_float("weights", weights, lambda s: s == (n,), f"({n},)"))
    offset = (np.zeros(n) if offset is None
              else _as_float("offset", offset, lambda s: s == (n,), f"({n},)"))
    if isinstance(terms, tuple) and len(terms) in (2, 3) and hasattr(terms[0], "shape"):
        terms = [terms]
    if not terms:
        raise DataError("terms must list at least one random-effects term (refs, z)")
    array_terms = [_term(k, entry, n) for k, entry in enumerate(terms)]
    if not is_traced(weights) and np.any(np.asarray(weights) < 0):
        bad = np.flatnonzero(np.asarray(weights) < 0)
        raise DataError(f"weights must be non-negative; rows {bad[:5].tolist()} are negative")
    if family is not None and not is_traced(y) and not is_traced(weights):
        y_np, w_np = np.asarray(y, dtype=float), np.asarray(weights, dtype=float)
        family.prepare_response(y_np, w_np)
    if not isinstance(n_agq, (int, np.integer)) or isinstance(n_agq, bool) or n_agq < 1:
        from .._display import show
        raise ValueError(
            f"n_agq must be a positive integer (1 = Laplace, > 1 = adaptive quadrature), "
            f"got {show(n_agq)}")
    if family is not None and n_agq > 1 and len(array_terms) > 1:
        raise ValueError(
            "n_agq > 1 (adaptive quadrature) needs a single random-effects term; use "
            "n_agq=1 (Laplace)")
    order = tuple(sorted(range(len(array_terms)), key=lambda k: -array_terms[k].n_levels))
    ordered = [array_terms[k] for k in order]
    p = X.shape[1]
    return cls(
        X=X,
        y=y,
        weights=weights,
        offset=offset,
        structure=structure_for_arrays(ordered, 0),
        dense_structure=structure_for_arrays(ordered, p + 1 if family is None else p),
        family=family,
        reml=bool(reml),
        design=None,
        success_level=None,
        n_agq=int(n_agq),
        structure_order=order,
    )


def initial_params(model) -> Params:
    X = jnp.asarray(model.X)
    y = jnp.asarray(model.y)
    w = jnp.asarray(model.weights)
    offset = jnp.asarray(model.offset)
    dtype = X.dtype
    if model.is_lmm:
        target = y
    else:
        mu = model.family.initialize(y, w)
        target = model.family.link.link(mu)
        target = jnp.where(jnp.isfinite(target), target, 0.0)
    root_w = jnp.sqrt(w)
    beta = jnp.linalg.lstsq(X * root_w[:, None], (target - offset) * root_w)[0]
    theta = jnp.asarray(initial_theta(model.structure.structures), dtype)
    if model.is_lmm:
        resid = (target - offset - X @ beta) * root_w
        dof = jnp.maximum(jnp.sum(w > 0) - X.shape[1], 1)
        log_disp = jnp.log(jnp.maximum(jnp.sum(resid**2) / dof, jnp.finfo(dtype).tiny))[None]
    elif model.family.has_dispersion and model.family.dispersion_method != "fixed":
        log_disp = jnp.zeros(1, dtype)
    else:
        log_disp = jnp.zeros(0, dtype)
    return Params(beta=beta.astype(dtype), theta=theta, log_dispersion=log_disp)


def as_params(model, params) -> Params:
    """Check a :class:`Params` against the model's sizes (static shapes, no tracing)."""
    if not isinstance(params, Params):
        raise TypeError(f"params must be a glmmjax.Params, got {type(params).__name__}")
    p, n_theta = model.X.shape[1], model.structure.n_theta
    expected = initial_params_shapes(model)
    for name, size in (("beta", p), ("theta", n_theta),
                       ("log_dispersion", expected)):
        shape = jnp.shape(getattr(params, name))
        if shape != (size,):
            raise ValueError(f"params.{name} must have shape ({size},) for this model, got {shape}")
    return params


def initial_params_shapes(model) -> int:
    if model.is_lmm:
        return 1
    f = model.family
    return int(f.has_dispersion and f.dispersion_method != "fixed")

