"""Simulating responses from a fitted mixed model, refitting, and the simple parametric
bootstrap.

``simulate`` draws y from the fitted model: η = Xβ̂ + offset + Zb, μ = g⁻¹(η), then y from
the family (Gaussian with σ̂ for LMMs). With ``include_re=True`` b is the conditional
modes (lme4's ``simulate(use.u = TRUE)`` / ``re.form = NULL``); with ``include_re=False``
new random effects are drawn for every simulation from their estimated distribution
N(0, σ²ΛΛ') (lme4's default, ``use.u = FALSE`` / ``re.form = NA``: nothing is conditioned
on). The responses are on the fitted model's y scale (binomial: proportions of the trials,
which are the prior weights).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pandas as pd

from .._lazyjax import jax, jnp
from .._model.design import new_data_design
from .._model.sparse_relmat import SparseRelatedness


def _family_of(result):
    from .._families.base import Gaussian

    return Gaussian() if result.family_name == "gaussian" and result.scale is not None else result.family


def _dispersion_of(result):
    if result.family_name == "gaussian" and result.scale is not None:
        return result.sigma**2
    return result.dispersion


def re_covariance_factors(result) -> list[np.ndarray]:
    """Per term, L_t with L_t L_t' = Var(b) (σΛ_t for LMMs, Λ_t for GLMMs)."""
    from .._model.cov_structures import term_structures
    from .._model.covariance import numpy_factors

    scale = result.sigma if result.family_name == "gaussian" else 1.0
    return [scale * lam for lam in
            numpy_factors(result.theta_values, term_structures(result.design.terms))]


def _numpy_compois(family) -> bool:
    """glmmjax's compois with a built-in link: drawn in numpy (its JAX draw compiles for
    seconds)."""
    from . import parts_draws

    return type(family).__name__ == "ConwayMaxwellPoisson" and parts_draws.supported(family)


def _draw(family, key, mu, weights, dispersion):
    return _draw_jit()(family, key, mu, weights, dispersion)


@functools.cache
def _draw_jit():
    """The draw program, jitted on first use (a refit needs no JAX)."""
    import equinox as eqx

    @eqx.filter_jit
    def draw(family, key, mu, weights, dispersion):
        keys = jax.random.split(key, mu.shape[0])
        return jax.vmap(lambda k, m: family.simulate(k, m, weights, dispersion))(keys, mu)

    return draw


def simulate(
    result,
    n: int = 1,
    newdata: pd.DataFrame | None = None,
    *,
    include_re: bool = True,
    seed: int | None = None,
    weights=None,
    allow_new_levels: bool = False,
    as_array: bool = False,
):
    """Simulated responses, one column per simulation (see the module docstring).

    Args:
        n: number of simulations.
        newdata: simulate at these rows instead of the fitting data.
        include_re: condition on the conditional modes (True) or draw new random
            effects from N(0, σ²ΛΛ') for every simulation (False, lme4's default).
        seed: integer seed (None: a random one).
        weights: prior weights for ``newdata`` (binomial: number of trials; default 1).
        allow_new_levels: with ``include_re=True``, levels of ``newdata`` not seen in
            fitting get random effects drawn from their distribution (else an error).
        as_array: return an (n_obs, n) numpy array instead of a DataFrame.

    Returns:
        A DataFrame with columns ``sim_1 ... sim_n`` indexed like the data.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        from .._display import show
        raise ValueError(f"n must be a positive integer, got {show(n)}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ValueError(f"seed must be an integer or None, got {seed!r}")
    rng = np.random.default_rng(seed)
    design = result.design
    if newdata is None:
        X, offset = design.X, design.offset
        parts = [(t.refs.astype(np.int64), t.z) for t in design.terms]
        index = design.rows
        prior = np.asarray(
            design.weights if result.family_name == "gaussian" else result.prior_weights,
            dtype=float,
        )
        if weights is not None:
            prior = np.asarray(weights, dtype=float)
            if prior.shape != (len(index),):
                raise ValueError(f"weights must have one value per row used in fitting "
                                 f"({len(index)}), got shape {prior.shape}")
    else:
        X, offset, parts = new_data_design(
            design, newdata, allow_new_levels=allow_new_levels or not include_re
        )
        index = newdata.index
        prior = np.ones(len(newdata)) if weights is None else np.asarray(weights, dtype=float)
        if prior.shape != (len(newdata),):
            raise ValueError(f"weights must have one value per row of newdata ({len(newdata)}), "
                             f"got shape {prior.shape}")
    eta = np.tile(X @ result.beta + offset, (n, 1))
    factors = re_covariance_factors(result)
    for (refs, z), b_hat, L, term in zip(parts, result.effects, factors, design.terms):
        m, S = term.n_levels, term.size
        if include_re:
            known = refs >= 0
            eta[:, known] += np.sum(z[known] * np.asarray(b_hat)[refs[known]], axis=1)
            unknown = ~known
            if unknown.any():
                # One fresh draw per new level (rows sharing a new level share it).
                labels, inverse = np.unique(
                    _new_level_keys(newdata, term, unknown), return_inverse=True
                )
                b_new = rng.standard_normal((n, len(labels), S)) @ L.T
                eta[:, unknown] += np.einsum("ks,iks->ik", z[unknown], b_new[:, inverse])
        else:
            keys = refs if newdata is None else _level_codes(newdata, term)
            n_codes = m if newdata is None else int(keys.max()) + 1
            if isinstance(term.covariance, SparseRelatedness):
                # A pedigree or sparse K fitted sparsely: the animals are related,
                # b ~ N(0, L²·K) (L = σ|θ| here), drawn through K's sparse factors.
                from .sparse_bootstrap import relatedness_draws

                draws = relatedness_draws(term.covariance, m, rng.standard_normal((m, n)))
                b_new = (float(L[0, 0]) * draws.T)[:, :, None]
            else:
                b_new = rng.standard_normal((n, n_codes, S)) @ L.T
            eta += np.einsum("ks,iks->ik", z, b_new[:, keys])
    family = _family_of(result)
    if _numpy_compois(family):  # the exact numpy draw: nothing to compile
        from .._families import math as fm
        from .._families.math_compois import draw_numpy

        mu = np.asarray(fm.inverse_link(family.link, np, eta), np.float64)
        y = draw_numpy(rng, mu, float(_dispersion_of(result))).T
        if as_array:
            return y
        return pd.DataFrame(y, index=index, columns=[f"sim_{i + 1}" for i in range(n)])
    with jax.enable_x64(True):
        mu = family.link.inverse(jnp.asarray(eta))
        disp = _dispersion_of(result)
        disp = jnp.asarray(1.0 if disp is None else disp)
        key = jax.random.key(int(rng.integers(0, 2**31 - 1)))
        y = np.asarray(_draw(family, key, mu, jnp.asarray(prior), disp)).T
    if as_array:
        return y
    return pd.DataFrame(y, index=index, columns=[f"sim_{i + 1}" for i in range(n)])


def _level_labels(newdata: pd.DataFrame, term) -> pd.Series:
    return newdata[list(term.spec.group_columns)].astype(str).agg(":".join, axis=1)


def _new_level_keys(newdata, term, mask) -> np.ndarray:
    return _level_labels(newdata, term).to_numpy()[mask]


def _level_codes(newdata, term) -> np.ndarray:
    _, codes = np.unique(_level_labels(newdata, term).to_numpy(), return_inverse=True)
    return codes.astype(np.int64)


# -- refitting -------------------------------------------------------------------------
def refit(result, response=None, *, reml: bool | None = None):
    """Fit the same model again, optionally to a new response or by ML/REML.

    ``response`` is on the fitted model's y scale (what :func:`simulate` returns;
    binomial: proportions of the prior weights). ``reml`` applies to LMMs only.
    """
    from .._lmer import fit_lmm_design
    from .._results.lmm import LMMResult

    design = result.design
    if isinstance(result, LMMResult):
        if response is not None:
            response = np.asarray(response, dtype=float)
            if response.shape != (design.nobs,):
                raise ValueError(f"response must have {design.nobs} values, got {response.shape}")
            design = dataclasses.replace(design, response=response)
        return fit_lmm_design(design, result.reml if reml is None else reml)
    if reml is not None:
        raise ValueError("reml applies to linear mixed models only")
    from .._glmer import fit_glmm_design

    if response is not None:
        response = np.asarray(response, dtype=float)
        if response.shape != (design.nobs,):
            raise ValueError(f"response must have {design.nobs} values, got {response.shape}")
        design = dataclasses.replace(
            design, response=response, weights=np.asarray(result.prior_weights),
            response_levels=None,
        )
    return fit_glmm_design(design, result.family, result.n_agq)


# -- parametric bootstrap (simple loop) --------------------------------------------------
def natural_parameters(result) -> np.ndarray:
    """The parameters of ``confint``: sd's and correlations, sigma (LMM), β."""
    from .._model.cov_structures import term_structures
    from .profile import natural_from_theta

    sizes = term_structures(result.design.terms)
    lmm = result.family_name == "gaussian" and result.scale is not None
    _, values, _ = natural_from_theta(result.theta_values, sizes, result.sigma if lmm else 1.0)
    parts = [values]
    if lmm:
        parts.append([result.sigma])
    parts.append(result.beta)
    return np.concatenate(parts)


def bootstrap_confint(result, level: float = 0.95, n_boot: int = 500, seed=None, parm=None,
                      batched: bool | None = None):
    """Percentile intervals from a parametric bootstrap (new random effects each time,
    as lme4's ``bootMer(use.u = FALSE)``).

    ``batched`` (default: when the result keeps its data) refits all replicates at once
    with ``result.bootstrap`` (:func:`glmmjax.fit_many`); otherwise the model is
    refitted ``n_boot`` times in a loop.
    """
    from .profile import _interval_frame, _select, parameter_names

    names = parameter_names(result)
    wanted = _select(names, parm, result)
    if batched is None:
        batched = getattr(result.design, "source_data", None) is not None
    if batched:
        boot = result.bootstrap(n_boot, seed=int(np.random.default_rng(seed).integers(2**31 - 1)))
        ok = boot.replicates[np.asarray(boot.batch.converged)]
        # fit_many names a term by its grouping factor (no ".1" for repeated factors).
        groups = dict(zip(result._group_labels(), (t.group for t in result.design.terms)))
        columns = [_batch_name(n, groups) for n in names]
        estimates = ok.reindex(columns=columns).to_numpy(dtype=float)
        failed = len(boot.replicates) - len(ok)
    else:
        estimates, failed = _refit_loop(result, n_boot, seed)
    a = 0.5 * (1.0 - level)
    lower = np.nanquantile(estimates, a, axis=0)
    upper = np.nanquantile(estimates, 1.0 - a, axis=0)
    table = _interval_frame(names, lower, upper, level).iloc[sorted(wanted)]
    table.attrs["note"] = (
        f"parametric bootstrap percentile intervals from {len(estimates)} replicates"
        + (f" ({failed} failed or did not converge)" if failed else "")
    )
    table.attrs["replicates"] = pd.DataFrame(estimates, columns=names)
    return table


def _batch_name(name: str, groups: dict) -> str:
    if "|" not in name:
        return name
    head, label = name.rsplit("|", 1)
    return f"{head}|{groups.get(label, label)}"


def _refit_loop(result, n_boot: int, seed):
    import warnings

    from .._progress import bar

    sims = simulate(result, n_boot, include_re=False, seed=seed, as_array=True)
    estimates, failed = [], 0
    # A Python loop of refits: Ctrl-C stops it between refits; a bar in sessions.
    for i in bar(range(n_boot), enabled=None, desc="bootstrap refits", unit="refit"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                refitted = refit(result, sims[:, i])
        except Exception:  # noqa: BLE001 - a replicate that cannot be fitted is counted
            failed += 1
            continue
        if refitted.converged:
            estimates.append(natural_parameters(refitted))
        else:
            failed += 1
    if not estimates:
        raise RuntimeError("no bootstrap replicate could be fitted")
    return np.array(estimates), failed
