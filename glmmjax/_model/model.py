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

from .._families.base import Family, Gaussian, get_family
from .checks import check_lmm_design, validate_agq
from .design import Design, build_design
from .params import Params
from .structure import ReStructure, build_structure


class MixedModel(eqx.Module):
    """A (generalized) linear mixed model specification bound to data.

    Attributes:
        X: (n, p) fixed-effects matrix.  y: (n,) response (binomial: proportions).
        weights: (n,) prior weights (binomial: trials); a row of weight 0 is left out
            exactly (use it to pad minibatches to a fixed shape).  offset: (n,).
        structure: the random-effects terms (level indices and model matrices).
        dense_structure: the same terms with the dense columns appended (X and y for
            an LMM, X for a GLMM's inner problem), for the fitting programs.
        family: the response family; ``None`` means a Gaussian LMM fitted by
            (RE)ML with σ profiled out.
        reml: for LMMs, REML (True) or ML.
        n_agq: for GLMMs, 1 for the Laplace approximation, > 1 for adaptive
            Gauss-Hermite quadrature with that many nodes (one grouping factor).
        design: static metadata (formula, names, levels) for results and prediction;
            ``None`` for a model built by :meth:`from_arrays`.

    The arrays are pytree leaves: ``log_likelihood`` and ``glmmjax.solve`` can be
    differentiated in them (``eqx.tree_at(lambda m: m.offset, model, new_offset)``).

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
    dense_structure: ReStructure
    family: Family | None
    reml: bool = eqx.field(static=True)
    design: Design | None = eqx.field(static=True)
    success_level: str | None = eqx.field(static=True, default=None)
    n_agq: int = eqx.field(static=True, default=1)
    structure_order: tuple = eqx.field(static=True, default=())

    @classmethod
    def from_formula(
        cls,
        formula: str,
        data: pd.DataFrame,
        family: str | Family | None = None,
        *,
        reml: bool = True,
        n_agq: int = 1,
        weights=None,
        offset=None,
        relmat: dict | None = None,
    ) -> MixedModel:
        """Parse ``formula`` against ``data`` and check everything (no JAX tracing).

        ``family=None`` (or Gaussian with identity link) gives a linear mixed model;
        ``n_agq`` chooses the GLMM likelihood (1 Laplace, > 1 adaptive quadrature);
        ``relmat``: known relatedness, as ``lmer``'s.
        """
        if family is not None:
            family = get_family(family)
            if isinstance(family, Gaussian) and family.link.name == "identity":
                family = None
        design = build_design(
            formula, data, weights=weights, offset=offset, require_random=True,
            numeric_response=family is None, drop_aliased=True, relmat=relmat,
        )
        return cls.from_design(design, family, reml=reml, n_agq=n_agq)

    @classmethod
    def from_design(cls, design: Design, family: Family | None, *, reml: bool = True,
                    n_agq: int = 1):
        success = None
        if family is None:
            check_lmm_design(design)
            y = np.asarray(design.response, dtype=float)
            w = design.weights
        else:
            y, w, success = family.prepare_response(
                design.response, design.weights, design.response_levels, design.rows
            )
        if family is not None:
            n_agq = validate_agq(n_agq, design)
        p = design.X.shape[1]
        return cls(
            X=np.asarray(design.X),
            y=np.asarray(y, dtype=float),
            weights=np.asarray(w, dtype=float),
            offset=np.asarray(design.offset),
            structure=build_structure(design.terms, 0),
            dense_structure=build_structure(design.terms, p + 1 if family is None else p),
            family=family,
            reml=reml,
            design=design,
            success_level=success,
            n_agq=int(n_agq),
        )

    @classmethod
    def from_arrays(
        cls,
        X,
        y,
        terms,
        *,
        family: str | Family | None = None,
        weights=None,
        offset=None,
        reml: bool = True,
        n_agq: int = 1,
    ) -> MixedModel:
        """A model from arrays alone: no formula, no pandas; traceable.

        Cheap enough to build inside a jitted training step from the minibatch's arrays
        (numpy or JAX, concrete or traced). Nothing is copied to the host when the
        arrays are traced; shapes and dtypes are checked always, values (ranges,
        support) only when the arrays are concrete.

        Args:
            X: (n, p) fixed-effects matrix (include a column of ones for an intercept).
            y: (n,) response; for the binomial family the proportion of successes, with
                the trials as ``weights``.
            terms: one entry per random-effects term, ``(refs, z)`` or
                ``(refs, z, n_levels)``: ``refs`` an (n,) integer array of level
                indices in ``[0, n_levels)``, ``z`` the term's (n, S) model matrix
                (``None`` for a random intercept; an (n,) vector is one column).
                ``n_levels`` is required when ``refs`` is traced (it fixes shapes);
                otherwise it defaults to ``refs.max() + 1``. Terms are reordered by
                decreasing ``n_levels`` (stable), lme4's order, which is the order of
                θ; ``model.term_order`` gives it.
            family: ``None`` or ``"gaussian"`` for an LMM; else a family name or
                :class:`~glmmjax.families.Family`.
            weights: (n,) prior weights (trials for the binomial), default ones. Rows of
                weight 0 contribute nothing (padding; give them any valid response).
            offset: (n,) known part of the linear predictor, default zeros.
            reml: REML (default) or ML, for LMMs.
            n_agq: GLMMs: 1 Laplace, > 1 adaptive Gauss-Hermite quadrature (a single
                grouping factor).

        Padding to fixed shapes: pad rows with weight 0; pad levels by passing a larger
        ``n_levels`` (a level without observations has conditional mode 0 and adds
        nothing to the likelihood), so minibatches with different users compile once.

        Raises:
            DataError: mismatched lengths, a non-integer or out-of-range level index,
                weights that are negative, a response outside the family's support.

        Example:
            >>> import numpy as np, glmmjax
            >>> g = np.repeat(np.arange(10), 5)
            >>> x = np.linspace(-1, 1, 50)
            >>> X = np.column_stack([np.ones(50), x])
            >>> y = (np.sin(7 * g) + x > 0).astype(float)
            >>> model = glmmjax.MixedModel.from_arrays(X, y, [(g, None)], family="binomial")
            >>> model.n_theta
            1
        """
        from .arrays import model_arrays

        return model_arrays(cls, X, y, terms, family, weights, offset, reml, n_agq)

    @property
    def term_order(self) -> tuple[int, ...]:
        """For a model built by :meth:`from_arrays`: the given terms' positions in
        θ's order (terms sorted by decreasing number of levels)."""
        return self.structure_order or tuple(range(self.structure.n_terms))

    def init_params(self) -> Params:
        """Start values: β by least squares of the linked response (minus the offset)
        on X, θ at lme4's start (identity factors), the dispersion at the residual
        variance (LMM, Gaussian) or 1. Traceable."""
        from .arrays import initial_params

        return initial_params(self)

    def log_likelihood(self, params: Params):
        """The marginal log-likelihood at ``params``, a pure JAX function.

        Exact for LMMs (ML, or the REML log-likelihood of (θ, σ²) when ``reml``, which
        does not depend on β); Laplace or adaptive Gauss-Hermite quadrature (per
        ``n_agq``) for GLMMs, every family and link, with the family's full
        log-density (normalizing constants included: AIC compares with R).
        ``jax.jit``, ``jax.vmap`` and ``jax.grad`` work on it in ``params`` *and* in
        the model's arrays (y, X, weights, offset): the conditional mode's derivative
        is the total one, by the implicit function theorem, never an unrolled loop.

        Runs in the dtype of the arrays: for float64 use ``jax.enable_x64(True)``
        (glmmjax never changes JAX's global setting).

        Example:
            >>> import jax, glmmjax
            >>> with jax.enable_x64(True):
            ...     model = glmmjax.MixedModel.from_formula(
            ...         "Reaction ~ Days + (Days | Subject)",
            ...         glmmjax.datasets.load("sleepstudy"))
            ...     fitted = glmmjax.solve(model)
            ...     print(round(float(model.log_likelihood(fitted)), 4))
            -871.8141
        """
        from .._engines.compiled.marginal import log_likelihood_compiled
        from .arrays import as_params

        return log_likelihood_compiled(self, as_params(self, params))

    def conditional_modes(self, params: Params) -> tuple:
        """The random effects at ``params``: one ``(levels, coefficients)`` array per
        term, in the model's term order (θ's order; see :attr:`term_order`), so that
        ``model.linear_predictor(params.beta, model.conditional_modes(params))`` is the
        conditional linear predictor.

        For a GLMM these are the conditional modes of the Laplace approximation (lme4's
        ``ranef``); for an LMM the conditional means E[b | y] at (β, θ) (σ² does not
        enter). A pure JAX function like :meth:`log_likelihood`: its derivatives in
        the parameters and the data include the mode's own (implicit) change.

        Example:
            >>> import jax, glmmjax
            >>> with jax.enable_x64(True):
            ...     model = glmmjax.MixedModel.from_formula(
            ...         "Reaction ~ Days + (Days | Subject)",
            ...         glmmjax.datasets.load("sleepstudy"))
            ...     (b,) = model.conditional_modes(glmmjax.solve(model))
            ...     print(b.shape)
            (18, 2)
        """
        from .._engines.compiled.marginal import conditional_modes_compiled
        from .arrays import as_params

        return conditional_modes_compiled(self, as_params(self, params))

    @property
    def n_theta(self) -> int:
        return self.structure.n_theta

    @property
    def n_fixef(self) -> int:
        return self.X.shape[1]

    @property
    def is_lmm(self) -> bool:
        return self.family is None

    def fit(self, n_agq: int | None = None):
        """Maximum-likelihood fit: ``lmer`` for LMMs, ``glmer`` (Laplace or AGQ) else.

        Warns with :class:`~glmmjax.SingularFitWarning` on a boundary fit, as lme4.
        Needs a model built from a formula; for one built by :meth:`from_arrays` use
        :func:`glmmjax.solve`.
        """
        from .._results.mixed import warn_if_singular

        if self.design is None:
            raise TypeError(
                "MixedModel.fit() needs a model built by MixedModel.from_formula; for a "
                "model from arrays use glmmjax.solve(model), which returns its Params")
        n_agq = self.n_agq if n_agq is None else n_agq

        if self.is_lmm:
            from .._lmer import fit_lmm_design

            result = fit_lmm_design(self.design, self.reml)
        else:
            from .._glmer import fit_glmm_design

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
        from .._display import plural, short_repr

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
            ("fixed", plural(shape[1], "coefficient") if shape and len(shape) > 1 else None),
            ("groups", groups),
        ])
