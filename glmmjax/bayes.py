"""Bayesian fits of glmmjax's mixed models with NumPyro (NUTS).

The same model object that ``lmer``/``glmer`` fit by maximum likelihood becomes a NumPyro
model: weakly informative priors scaled to the data on β, the random-effect standard
deviations and (LKJ) correlations; spherical random effects u ~ N(0, I) with b = Λu (the
non-centred form, which NUTS samples well); the family's full log-likelihood as the
observation model (every family and link, binomial trials, offsets, prior weights);
optionally an AR(1) error or latent term within groups.

Needs NumPyro and, for ``to_inference_data``, ArviZ: ``pip install "glmmjax[bayes]"`` installs both.

Parameter names (``priors=`` keys, summary rows): ``b_<coef>``, ``sd_<group>__<coef>``,
``cor_<group>`` (the LKJ prior of a term) and ``cor_<group>__<c1>__<c2>``,
``r_<group>[<level>,<coef>]``, ``sigma`` / ``phi`` / ``theta``, ``ar1_rho``, ``ar1_sd``;
with ``ziformula=``/``dispformula=`` (glmmTMB's zero-inflation, hurdle and dispersion
models) also ``b_zi_<coef>``, ``sd_<group>__zi__<coef>``, ``b_disp_<coef>``;
class keys ``"b"``, ``"sd"``, ``"sd_<group>"``, ``"cor"`` set several at once. The
defaults and their scaling are documented in :func:`build`.

Example:
    >>> import glmmjax
    >>> from glmmjax import bayes
    >>> import numpyro.distributions as dist
    >>> sleep = glmmjax.datasets.load("sleepstudy")
    >>> fit = bayes.fit("Reaction ~ Days + (Days | Subject)", sleep,
    ...                 priors={"b_Days": dist.Normal(10, 5)}, seed=1)   # doctest: +SKIP
    >>> print(fit.summary())                                           # doctest: +SKIP
    >>> fit.loo(), fit.posterior_predict(sleep.head())                 # doctest: +SKIP
"""

from __future__ import annotations

try:
    import numpyro  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised with numpyro hidden
    raise ImportError(
        'glmmjax.bayes needs NumPyro; install it with: pip install "glmmjax[bayes]"'
    ) from err

import pandas as pd

from ._bayes.diagnostics import InformationCriterion, ParetoKWarning, ess_bulk, ess_tail, rhat
from ._bayes.model import BayesData, BayesModel, SamplingWarning
from ._bayes.priors import HalfStudentT
from ._bayes.priors import __doc__ as _PRIORS_DOC
from ._bayes.result import BayesResult
from ._families.base import Family
from ._model.model import MixedModel
from ._precision import with_x64

__all__ = [
    "BayesData",
    "BayesModel",
    "BayesResult",
    "HalfStudentT",
    "InformationCriterion",
    "ParetoKWarning",
    "SamplingWarning",
    "build",
    "ess_bulk",
    "ess_tail",
    "fit",
    "rhat",
]


@with_x64
def build(
    model: MixedModel | str,
    data: pd.DataFrame | None = None,
    family: str | Family | None = None,
    *,
    priors: dict | None = None,
    ar1=None,
    weights=None,
    offset=None,
    center: bool = True,
    relmat: dict | None = None,
    ziformula: str | None = None,
    dispformula: str | None = None,
) -> BayesModel:
    """Build the Bayesian model (priors included) of a mixed model.

    Args:
        model: a :class:`~glmmjax.MixedModel`, or an lme4 formula (then ``data``,
            ``family``, ``weights`` and ``offset`` build the MixedModel).
        data: the data frame (needed with a formula, and with ``ar1`` to read the time
            and group columns; for a MixedModel it must be the frame it was built from).
        family: ``None`` or ``"gaussian"`` for a linear mixed model, or any glmmjax
            family (``"binomial"``, ``"poisson"``, ``"gamma"``, ``"inverse_gaussian"``,
            ``"negative_binomial"``, ``"beta"``, or a family object with a link).
        priors: ``{name: numpyro distribution}`` overriding the defaults; for a
            ``cor_<group>`` key a ``dist.LKJCholesky(S, η)`` or just the number η.
        ar1: ``"time"`` or ``("time", "group")``: AR(1) autocorrelation over the
            integer (or daily date) time column within each group: Gaussian errors, or
            a latent AR(1) term on η for other families.
        weights, offset: prior weights (binomial: trials) and offset, with a formula.
        relmat: known relatedness ``{"animal": K}`` (as ``lmer``'s), with a formula.
            Structured terms (``diag``, ``cs``, ``ar1``, ``toep``, ``ou``, ``exp``,
            ``gau``, ``mat``) and relmat terms take the same covariance factor as in
            ``lmer``/``glmer``, with priors on their SDs and correlation parameters
            (:mod:`glmmjax._bayes.structures`).
        center: sample the intercept at the predictors' means (as brms and rstanarm
            do; faster sampling). Results always report the usual intercept.
        ziformula, dispformula: glmmTMB's zero-inflation (a hurdle for truncated
            families; logit link, fixed and random effects) and dispersion (log link,
            fixed effects) models, as ``glmer``'s, with a formula
            (:mod:`glmmjax._bayes.parts`). Parameters ``b_zi_<coef>``,
            ``sd_<group>__zi__<coef>``, ``b_disp_<coef>``; ``fit.fixef`` is then a dict
            by part (``"cond"``, ``"zi"``, ``"disp"``) as the frequentist result's.

    Default priors: PRIORS

    Raises:
        ValueError: an unknown prior name, or a prior of the wrong support or shape.
        DataError, FormulaError: as ``MixedModel.from_formula``, and bad AR(1) columns.
    """
    if ziformula is not None or dispformula is not None:
        from ._bayes.parts import build_parts_model

        if not isinstance(model, str):
            raise ValueError("ziformula/dispformula need the model as a formula (with data=, "
                             "family=, weights=, offset=), not a MixedModel")
        if data is None:
            raise ValueError("a formula needs data=")
        if relmat is not None:
            raise ValueError("relmat= with ziformula/dispformula is not supported")
        model, parts, disp_model = build_parts_model(
            model, data, family, ziformula, dispformula, weights=weights, offset=offset)
        return BayesModel(model, priors=priors, ar1=ar1, data=data, center=center, parts=parts,
                          disp_model=disp_model)
    if isinstance(model, str):
        if data is None:
            raise ValueError("a formula needs data=")
        model = MixedModel.from_formula(model, data, family, weights=weights, offset=offset,
                                        relmat=relmat)
    elif family is not None or weights is not None or offset is not None or relmat is not None:
        raise ValueError("family, weights, offset and relmat are set when building the "
                         "MixedModel")
    return BayesModel(model, priors=priors, ar1=ar1, data=data, center=center)


build.__doc__ = build.__doc__.replace(
    "PRIORS", "\n\n    " + "\n    ".join(_PRIORS_DOC.split("\n\n", 1)[1].splitlines())
)


def fit(
    model: MixedModel | str,
    data: pd.DataFrame | None = None,
    family: str | Family | None = None,
    *,
    priors: dict | None = None,
    ar1=None,
    weights=None,
    offset=None,
    center: bool = True,
    relmat: dict | None = None,
    ziformula: str | None = None,
    dispformula: str | None = None,
    **sample_options,
) -> BayesResult:
    """Build the Bayesian model and sample it with NUTS: ``build(...).sample(...)``.

    ``sample_options`` are those of :meth:`BayesModel.sample`: ``num_chains`` (4),
    ``num_warmup`` (1000), ``num_samples`` (1000), ``seed``, ``chain_method``
    (``"vectorized"``), ``progress_bar``, ``target_accept`` (0.99), ``max_tree_depth``,
    ``dense_mass``, ``precision``, ``warn``.

    Example:
        >>> import glmmjax
        >>> cbpp = glmmjax.datasets.load("cbpp")
        >>> fit = glmmjax.bayes.fit(
        ...     "cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp,
        ...     "binomial", num_warmup=500, num_samples=500)        # doctest: +SKIP
        >>> fit.posterior_summary("fixef")                          # doctest: +SKIP
    """
    bayes_model = build(
        model, data, family, priors=priors, ar1=ar1, weights=weights, offset=offset, center=center,
        relmat=relmat, ziformula=ziformula, dispformula=dispformula,
    )
    return bayes_model.sample(**sample_options)
