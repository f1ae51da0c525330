"""Response distributions for GLMs and GLMMs (see :class:`Family`).

Example:
    >>> from glmmjax import families
    >>> families.get_family("binomial", link="probit")
    Binomial(link=Probit())
"""

from ._families import (
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

__all__ = [
    "FAMILIES",
    "Beta",
    "Binomial",
    "Family",
    "Gamma",
    "Gaussian",
    "InverseGaussian",
    "NegativeBinomial",
    "Poisson",
    "get_family",
]
