"""The result of ``glmer``: a fitted generalized linear mixed model."""

from __future__ import annotations

import dataclasses

import numpy as np

from .._families import math as fm
from .._families.base import Family
from .._lazyjax import jnp, run_x64
from .mixed import MixedModelResult


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class GLMMResult(MixedModelResult):
    """A fitted GLMM (see :class:`MixedModelResult` for the shared accessors).

    Extra attributes: ``family`` (the family object), ``dispersion`` (the family's
    extra parameter: Gamma/inverse Gaussian φ, negative binomial θ, beta precision φ;
    None for binomial and Poisson), ``success_level`` (for a categorical binomial
    response, the level counted as success), ``n_agq``, ``separated`` (fixed effects
    whose estimates are infinite because of separation; such a fit reports
    ``converged=False``).
    """

    family: Family | None = None
    dispersion: float | None = None
    success_level: str | None = None
    n_agq: int = 1
    y: np.ndarray | None = None
    prior_weights: np.ndarray | None = None
    params_cov: np.ndarray | None = None
    separated: tuple = ()
    theta_unit: float = 1.0  # the unit of SDs in the boundary test (host.glmm.eta_unit)

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
        for name, value in self.extra_params.items():
            lines.append(f" Estimated {name}: {value:.6g}")
        if self.success_level is not None:
            lines.append(f" Success: {self.success_level!r}")
        return "\n".join(lines)

    def _family_text(self) -> str:
        text = f"{self.family_name} ({self.link_name})"
        if self.dispersion is not None:
            text += f", {self.family.dispersion_name} {self.dispersion:.6g}"
        return text

    def observed_response(self) -> np.ndarray:
        return self.y

    def _pearson_sd(self):
        # The family's mean parameter g⁻¹(η) (for zero-truncated families not the
        # fitted E[y]); its variance function gives Var y.
        eta = self.fitted(type="link").to_numpy()
        var = None
        if fm.link_supported(self.family.link):  # numpy: nothing to import or trace
            mu = fm.inverse_link(self.family.link, np, np.asarray(eta, dtype=np.float64))
            var = fm.variance(self.family, np, mu, self.dispersion)
        if var is None:
            with run_x64():
                mu = self.family.link.inverse(jnp.asarray(eta))
                var = np.asarray(self.family.variance(mu, self._disp_arg()))
        scale = self.dispersion if self.family.dispersion_method == "pearson" else 1.0
        return np.sqrt(scale * var / self.prior_weights)

    def _disp_arg(self):
        return None if self.dispersion is None else jnp.asarray(self.dispersion)
