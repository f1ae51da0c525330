"""glmmjax: generalized linear mixed models in JAX.

Fit lme4-style models (``lmer``, ``glm``, ``glmer``) with exact gradients, on CPU or
GPU, one at a time or thousands at once. Everything public is re-exported here.
"""

from . import datasets
from ._design import DataError
from ._formula import FormulaError, parse_formula

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "FormulaError",
    "datasets",
    "parse_formula",
]
