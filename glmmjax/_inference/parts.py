"""Inference on a zero-inflation / dispersion-model fit (:class:`GLMMPartsResult`): Wald
intervals for the fixed effects of every part, and the parametric bootstrap.

Parameters are named as :func:`glmmjax.fit_many` names them for these models (glmmTMB's
full covariance matrix's order): the conditional model's random-effect SDs
(``sd_<coef>|<group>``, ``cor_...``), the zero-inflation part's (``zi~sd_...``), then
the fixed effects: the conditional model's as they are, ``zi~<name>`` and ``d~<name>``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .bootstrap import BootstrapResult, design_frame, refit_weights


def _interval_frame(names, lower, upper, level) -> pd.DataFrame:
    """As :func:`glmmjax._inference.profile._interval_frame` (whose module imports scipy.stats)."""
    from .anova import NotedTable

    a = 0.5 * (1.0 - level)
    return NotedTable({f"{100 * a:.3g} %": lower, f"{100 * (1 - a):.3g} %": upper},
                      index=names)


def _sd_names(result) -> list[str]:
    """Names of the random-effect SDs and correlations, both parts."""
    from .._batching.fit_many import _sd_columns

    names = list(_sd_columns(result.theta_values[None, :], result.design.terms,
                             np.ones(1)))
    zi_terms = result._zi_terms()
    if zi_terms:
        names += [f"zi~{n}" for n in _sd_columns(result.theta_zi_values[None, :], zi_terms,
                                                 np.ones(1))]
    return names


def _sd_values(result) -> dict[str, float]:
    from .._batching.fit_many import _sd_columns

    values = {k: float(v[0]) for k, v in _sd_columns(result.theta_values[None, :],
                                                      result.design.terms, np.ones(1)).items()}
    zi_terms = result._zi_terms()
    if zi_terms:
        values.update({f"zi~{k}": float(v[0]) for k, v in _sd_columns(
            result.theta_zi_values[None, :], zi_terms, np.ones(1)).items()})
    return values


def fixef_labels(result) -> list[str]:
    """The fixed effects of all parts, named as :func:`glmmjax.fit_many` names them."""
    return (list(result._part_names("cond")) + [f"zi~{n}" for n in result._part_names("zi")]
            + [f"d~{n}" for n in result._part_names("disp")])


def _fixef_values(result) -> np.ndarray:
    return np.concatenate([result.fixef[part].to_numpy() for part in ("cond", "zi", "disp")])


def _fixef_se(result) -> np.ndarray:
    return np.concatenate([result.fixef_se[part].to_numpy()
                           for part in ("cond", "zi", "disp")])


def _select(names: list[str], parm, n_fixef: int) -> list[int]:
    if parm is None:
        return list(range(len(names)))
    if isinstance(parm, str):
        if parm == "beta_":
            return list(range(len(names) - n_fixef, len(names)))
        if parm == "theta_":
            return list(range(len(names) - n_fixef))
        parm = [parm]
    from .._display import resolve_alias as r_alias

    index = []
    for p in parm:
        p = r_alias(p, names)
        if p not in names:
            raise ValueError(f"unknown parameter {p!r}; parameters are {names}")
        index.append(names.index(p))
    return index


def wald_confint(result, level: float = 0.95, parm=None) -> pd.DataFrame:
    """β̂ ± z·SE for the fixed effects of every part (SEs from the joint covariance of
    all parameters, as glmmTMB's ``confint(method = "Wald")`` for them); NaN for the
    random-effect SDs and correlations (as lme4's Wald intervals)."""
    from .._families.distributions import norm_ppf

    sd_names, labels = _sd_names(result), fixef_labels(result)
    names = sd_names + labels
    wanted = _select(names, parm, len(labels))
    z = norm_ppf(0.5 * (1.0 + level))
    estimate, se = _fixef_values(result), _fixef_se(result)
    lower = np.concatenate([np.full(len(sd_names), np.nan), estimate - z * se])
    upper = np.concatenate([np.full(len(sd_names), np.nan), estimate + z * se])
    return _interval_frame(names, lower, upper, level).iloc[wanted]


def bootstrap(result, n: int = 1000, seed: int = 0, *, progress=None) -> BootstrapResult:
    """Parametric bootstrap: ``n`` responses simulated from the fit with new random
    effects in both parts (zeros with probability π, as :meth:`GLMMPartsResult.simulate`
    with ``include_re=False``), each refitted by the host engine through
    :func:`glmmjax.fit_many`."""
    from .._batching.parts import fit_many_parts

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    Y = result._simulate_array(int(n), include_re=False, seed=seed)
    design = result.design
    data = design_frame(result)
    formula = "~" + design.formula.text.split("~", 1)[1]
    parts = result.parts
    ziformula = parts.zi.formula if parts.zi is not None else None
    dispformula = parts.disp.formula if parts.disp is not None else None
    if dispformula == "~ 0" and result.family.name != "gaussian":
        dispformula = None  # a fixed negative binomial θ: the family carries it
    batch = fit_many_parts(formula, data, Y, result.family, ziformula, dispformula,
                           weights=refit_weights(result), offset=design.offset_argument,
                           progress=progress)
    replicates = batch.fixef.reset_index(drop=True).copy()
    sd_names = _sd_names(result)
    for name in sd_names:
        replicates[name] = (batch.models[name].to_numpy() if name in batch.models
                            else np.full(len(replicates), np.nan))
    original = dict(zip(fixef_labels(result), _fixef_values(result)))
    original.update(_sd_values(result))
    return BootstrapResult(replicates=replicates,
                           original=pd.Series({c: original.get(c, np.nan)
                                               for c in replicates.columns}),
                           batch=batch)


def bootstrap_confint(result, level: float, parm, n_boot: int, seed, progress
                      ) -> pd.DataFrame:
    """Percentile intervals from :func:`bootstrap`, rows as :func:`wald_confint`'s."""
    labels = fixef_labels(result)
    names = _sd_names(result) + labels
    wanted = _select(names, parm, len(labels))
    boot = bootstrap(result, n_boot, 0 if seed is None else seed, progress=progress)
    return boot.confint(level).loc[names].iloc[wanted]
