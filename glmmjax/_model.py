"""The model object: a formula bound to data, as an equinox Module (a pytree).

``MixedModel`` is what every fitting path starts from: maximum likelihood (``fit``),
batches of responses (``glmmjax.fit_many``) and Bayesian sampling
(``glmmjax.bayes``). Its arrays are pytree leaves, so it passes through ``jax.jit`` and
``jax.vmap``; the design (names, levels, formulaic specs) is static metadata.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ._design import Design, build_design
from ._families import Family, Gaussian, get_family
from ._structure import ReStructure, build_structure


class MixedModel(eqx.Module):
    """A (generalized) linear mixed model specification bound to data.

    Attributes:
        X: (n, p) fixed-effects matrix.  y: (n,) response (binomial: proportions).
        weights: (n,) prior weights (binomial: trials).  offset: (n,).
        structure: the random-effects terms (level indices and model matrices).
        family: the response family; ``None`` means a Gaussian LMM fitted by
            (RE)ML with σ profiled out.
        reml: for LMMs, REML (True) or ML.
        design: static metadata (formula, names, levels) for results and prediction.

    Example:
        >>> import glmmjax
        >>> model = glmmjax.MixedModel.from_formula(
        ...     "Reaction ~ Days + (Days | Subject)", glmmjax.datasets.load("sleepstudy"))
        >>> round(model.fit().sigma, 2)
        25.59
    """

    X: jnp.ndarray
    y: jnp.ndarray
    weights: jnp.ndarray
    offset: jnp.ndarray
    structure: ReStructure
    family: Family | None
    reml: bool = eqx.field(static=True)
    design: Design = eqx.field(static=True)
    success_level: str | None = eqx.field(static=True, default=None)

    @classmethod
    def from_formula(
        cls,
        formula: str,
        data: pd.DataFrame,
        family: str | Family | None = None,
        *,
        reml: bool = True,
        weights=None,
        offset=None,
    ) -> MixedModel:
        """Parse ``formula`` against ``data`` and check everything (no JAX tracing).

        ``family=None`` (or Gaussian with identity link) gives a linear mixed model.
        """
        if family is not None:
            family = get_family(family)
            if isinstance(family, Gaussian) and family.link.name == "identity":
                family = None
        design = build_design(
            formula, data, weights=weights, offset=offset, require_random=True,
            numeric_response=family is None,
        )
        return cls.from_design(design, family, reml=reml)

    @classmethod
    def from_design(cls, design: Design, family: Family | None, *, reml: bool = True):
        success = None
        if family is None:
            from ._lmm import check_lmm_design

            check_lmm_design(design)
            y = np.asarray(design.response, dtype=float)
            w = design.weights
        else:
            y, w, success = family.prepare_response(
                design.response, design.weights, design.response_levels, design.rows
            )
        return cls(
            X=np.asarray(design.X),
            y=np.asarray(y, dtype=float),
            weights=np.asarray(w, dtype=float),
            offset=np.asarray(design.offset),
            structure=build_structure(design.terms, 0),
            family=family,
            reml=reml,
            design=design,
            success_level=success,
        )

    @property
    def n_theta(self) -> int:
        return self.structure.n_theta

    @property
    def n_fixef(self) -> int:
        return self.X.shape[1]

    @property
    def is_lmm(self) -> bool:
        return self.family is None

    def fit(self, n_agq: int = 1):
        """Maximum-likelihood fit: ``lmer`` for LMMs, ``glmer`` (Laplace or AGQ) else.

        Warns with :class:`~glmmjax.SingularFitWarning` on a boundary fit, as lme4.
        """
        from ._results import warn_if_singular

        if self.is_lmm:
            from ._lmer import fit_lmm_design

            result = fit_lmm_design(self.design, self.reml)
        else:
            from ._glmer import fit_glmm_design

            result = fit_glmm_design(self.design, self.family, n_agq)
        warn_if_singular(result)
        return result

    def linear_predictor(self, beta, effects):
        """η = Xβ + offset + Σ_t Z_t b_t for per-term effects b_t of shape (m_t, S_t)."""
        s = self.structure
        eta = jnp.asarray(self.X) @ beta + jnp.asarray(self.offset)
        for t in range(s.n_terms):
            eta = eta + jnp.sum(jnp.asarray(s.z[t]) * effects[t][jnp.asarray(s.refs[t])], axis=1)
        return eta

    def loglik_given_effects(self, beta, effects, dispersion=None):
        """log p(y | β, b) summed over observations (the family's full log-likelihood;
        for an LMM ``dispersion`` is σ²)."""
        eta = self.linear_predictor(beta, effects)
        family = Gaussian() if self.family is None else self.family
        y, w = jnp.asarray(self.y), jnp.asarray(self.weights)
        return jnp.sum(family.loglik_eta(y, eta, w, dispersion))


    def __repr__(self) -> str:
        # Short on purpose (equinox would print every array leaf): formula, family, sizes.
        from ._display import short_repr

        design = getattr(self, "design", None)
        family = self.family
        kind = "LMM, " + ("REML" if self.reml else "ML") if family is None else "GLMM"
        formula = getattr(getattr(design, "formula", None), "text", None)
        terms = getattr(design, "terms", None) or ()
        groups = ", ".join(f"{t.group} ({t.n_levels})" for t in terms) or None
        shape = getattr(self.X, "shape", None)
        return short_repr(f"MixedModel: {kind}", [
            ("formula", formula),
            ("family", "gaussian (identity)" if family is None
             else f"{family.name} ({family.link.name})"),
            ("nobs", shape[0] if shape else None),
            ("fixed", f"{shape[1]} coefficients" if shape and len(shape) > 1 else None),
            ("groups", groups),
        ])
