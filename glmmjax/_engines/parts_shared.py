"""The containers of a model with zero-inflation and/or a dispersion model (``glmer``/
``lmer`` with ``ziformula=`` or ``dispformula=``), shared by both engines
(:mod:`glmmjax._engines.host.parts`, :mod:`glmmjax._engines.compiled.parts`) and free of
JAX: a host fit imports none. They are :class:`~glmmjax._lazyjax.PytreeClass` instances,
pytrees once JAX is imported."""

from __future__ import annotations

import numpy as np

from .._lazyjax import PytreeClass, static_field


class DenseTerms(PytreeClass):
    """The random-effects terms of one part: level indicators (n, m_t) and model
    matrices (n, S_t) per term."""

    indicators: tuple
    z: tuple
    sizes: tuple = static_field()
    n_levels: tuple = static_field()

    @property
    def q(self) -> int:
        return int(sum(m * s for m, s in zip(self.n_levels, self.sizes)))

    @property
    def n_theta(self) -> int:
        return int(sum(s * (s + 1) // 2 for s in self.sizes))


def dense_terms(terms, n: int, dtype=np.float64) -> DenseTerms:
    """:class:`DenseTerms` from a design's :class:`~glmmjax._model.design.TermDesign` list."""
    indicators = tuple(
        (t.refs[:, None] == np.arange(t.n_levels)[None, :]).astype(dtype) for t in terms)
    z = tuple(np.asarray(t.z, dtype=dtype) for t in terms)
    return DenseTerms(indicators, z, tuple(t.size for t in terms),
                      tuple(t.n_levels for t in terms))


class PartsData(PytreeClass):
    """The arrays of one model with zero-inflation and/or a dispersion model."""

    y: object
    weights: object
    X: object
    offset: object
    X_zi: object
    offset_zi: object
    X_disp: object
    offset_disp: object
    cond: DenseTerms
    zi: DenseTerms
    family: object
    zero_inflated: bool = static_field()

    @property
    def layout(self) -> tuple[int, ...]:
        """Lengths of (θ_c, θ_z, β, β_zi, β_d) in the parameter vector."""
        return (self.cond.n_theta, self.zi.n_theta, self.X.shape[1], self.X_zi.shape[1],
                self.X_disp.shape[1])

    @property
    def q(self) -> int:
        return self.cond.q + self.zi.q
