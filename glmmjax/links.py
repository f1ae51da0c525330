"""Link functions: η = g(μ) as pure JAX functions (see :class:`Link`).

Example:
    >>> from glmmjax import links
    >>> links.get_link("logit")
    Logit()
"""

from ._families.links import (
    LINKS,
    Cauchit,
    Cloglog,
    Identity,
    Inverse,
    InverseSquared,
    Link,
    Log,
    Logit,
    Loglog,
    Probit,
    Sqrt,
    get_link,
)

__all__ = [
    "LINKS",
    "Cauchit",
    "Cloglog",
    "Identity",
    "Inverse",
    "InverseSquared",
    "Link",
    "Log",
    "Logit",
    "Loglog",
    "Probit",
    "Sqrt",
    "get_link",
]
