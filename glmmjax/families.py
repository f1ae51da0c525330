"""Response distributions for GLMs and GLMMs (see :class:`Family`).

Example:
    >>> from glmmjax import families
    >>> families.get_family("binomial", link="probit")
    Binomial(link=Probit())
"""

from ._families.base import (
    FAMILIES,
    Beta,
    Binomial,
    Family,
    Gamma,
    Gaussian,
    InverseGaussian,
    NegativeBinomial,
    Poisson,
    get_family,
)
from ._families.tmb import (
    BetaBinomial,
    ConwayMaxwellPoisson,
    GeneralizedPoisson,
    LogNormal,
    NegativeBinomial1,
    OrderedBeta,
    StudentT,
    TruncatedNegativeBinomial1,
    TruncatedNegativeBinomial2,
    TruncatedPoisson,
    Tweedie,
)

__all__ = [
    "FAMILIES",
    "Beta",
    "BetaBinomial",
    "Binomial",
    "ConwayMaxwellPoisson",
    "Family",
    "Gamma",
    "Gaussian",
    "GeneralizedPoisson",
    "InverseGaussian",
    "LogNormal",
    "NegativeBinomial",
    "NegativeBinomial1",
    "OrderedBeta",
    "Poisson",
    "StudentT",
    "TruncatedNegativeBinomial1",
    "TruncatedNegativeBinomial2",
    "TruncatedPoisson",
    "Tweedie",
    "get_family",
]
