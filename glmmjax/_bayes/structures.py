"""Structured random-effects terms (diag, cs, ar1, toep, ou, exp, gau, mat, relmat) in
Bayesian fits: their sampled parameters, default priors, and the map to the frequentist θ_t.

A structured term's covariance factor is its structure's map θ_t ↦ Λ_t
(:mod:`glmmjax._model.cov_structures`). That map is linear in θ_t's scale entries (the
relative SDs), so with the *absolute* SDs in their place it gives the factor of the
absolute covariance: b = u·Λ_t' with u ~ N(0, I), the same non-centred form as an
unstructured term's u·(diag(sd)·L)'. The remaining entries of θ_t (unconstrained
transforms of correlations, log scales) are sampled on their natural scale with a prior
there and mapped to θ_t here:

=================  ==============================  ===========================================
structure          sampled parameters              default prior
=================  ==============================  ===========================================
diag               ``sd_<g>__<coef>``              (the SDs' default)
cs                 ``sd_<g>__<coef>``, ``rho_<g>``  Uniform(−1/(S−1), 1) (positive definite)
homcs              ``sd_<g>``, ``rho_<g>``          Uniform(−1/(S−1), 1)
ar1                ``sd_<g>``, ``rho_<g>``          Uniform(−1, 1)
toep               ``sd_<g>__<coef>``,              Uniform(−1, 1) each (partial
                   ``pacf<k>_<g>``                  autocorrelations, lags k = 1..S−1)
ou                 ``sd_<g>``, ``rho_<g>``          Uniform(0, 1) (the correlation at distance 1)
exp, gau           ``sd_<g>``, ``scale_<g>``        LogNormal(log d̃, 1), d̃ the median distance
mat                ``sd_<g>``, ``range_<g>``,       LogNormal(log d̃, 1); LogNormal(0, 1)
                   ``nu_<g>``
relmat             ``sd_<g>``                       (the SDs' default)
=================  ==============================  ===========================================
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import numpyro.distributions as dist

# Structures whose θ_t has one SD for all effects (the others: one SD per effect).
ONE_SD = ("homcs", "ar1", "ou", "exp", "gau", "mat", "relmat")


@dataclasses.dataclass(frozen=True)
class StructureParam:
    """One sampled correlation-type parameter of a structured term."""

    name: str
    lower: float
    upper: float
    kind: str  # how it maps to θ_t: "cs", "atanh", "ou", "log"
    a: float = 0.0  # cs: 1/(S − 1)

    def to_theta(self, value, xp):
        if self.kind == "cs":  # ρ = (1 + a)·logistic(η) − a
            return xp.log((value + self.a) / (1.0 - value))
        if self.kind == "atanh":
            return xp.arctanh(value)
        if self.kind == "ou":  # the correlation at distance 1 is exp(−κ), θ = log κ
            return xp.log(-xp.log(value))
        return xp.log(value)


def is_structured(cov) -> bool:
    return cov is not None and getattr(cov, "name", "us") != "us"


def sd_count(cov, size: int) -> int:
    return 1 if cov.name in ONE_SD else size


def structure_params(cov, label: str) -> list[StructureParam]:
    name, size = cov.name, cov.size
    if name in ("cs", "homcs"):
        a = 1.0 / (size - 1)
        return [StructureParam(f"rho_{label}", -a, 1.0, "cs", a)]
    if name == "ar1":
        return [StructureParam(f"rho_{label}", -1.0, 1.0, "atanh")]
    if name == "toep":
        return [StructureParam(f"pacf{k}_{label}", -1.0, 1.0, "atanh") for k in range(1, size)]
    if name == "ou":
        return [StructureParam(f"rho_{label}", 0.0, 1.0, "ou")]
    if name in ("exp", "gau"):
        return [StructureParam(f"scale_{label}", 0.0, math.inf, "log")]
    if name == "mat":
        return [StructureParam(f"range_{label}", 0.0, math.inf, "log"),
                StructureParam(f"nu_{label}", 0.0, math.inf, "log")]
    return []  # diag, relmat


def _median_distance(cov) -> float:
    d = cov.distances()
    return float(np.median(d[d > 0]))


def default_prior(cov, param: StructureParam):
    if param.kind in ("cs", "atanh", "ou"):
        return dist.Uniform(param.lower, param.upper)
    if param.name.startswith("nu_"):
        return dist.LogNormal(0.0, 1.0)
    return dist.LogNormal(math.log(_median_distance(cov)), 1.0)


def centre(cov, param: StructureParam) -> float:
    """The constrained value chains start around (before jitter)."""
    if param.kind == "ou":
        return 0.5
    if param.kind in ("cs", "atanh"):
        return 0.0
    if param.name.startswith("nu_"):
        return 0.5
    return _median_distance(cov)


def theta_of(cov, sds, values, xp):
    """θ_t with the absolute SDs ``sds`` in its scale entries: Λ(θ_t)Λ(θ_t)' is then the
    term's covariance itself."""
    params = [xp.reshape(xp.asarray(s), (1,)) for s in sds]
    params += [xp.reshape(p.to_theta(v, xp), (1,))
               for p, v in zip(structure_params(cov, ""), values)]
    return xp.concatenate(params)
