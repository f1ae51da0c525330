"""glmmjax: generalized linear mixed models in JAX.

Fit lme4-style models (``lmer``, ``glm``, ``glmer``) with exact gradients, on CPU or
GPU, one at a time or thousands at once. Everything public is re-exported here.

The names are imported on first use (PEP 562): ``import glmmjax`` loads none of JAX,
pandas, SciPy or formulaic, so it costs milliseconds; ``glmmjax.lmer`` (or ``from glmmjax
import lmer``) imports what the fitting function needs when it is first looked up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public name -> the private module that defines it. Submodules map to themselves.
_LAZY = {
    "anova": "._anova",
    "compare": "._anova",
    "BatchResult": "._batch",
    "fit_datasets": "._batch",
    "fit_many": "._batch",
    "p_adjust_bh": "._batch",
    "gather_batches": "._distributed",
    "process_share": "._distributed",
    "BootstrapResult": "._bootstrap",
    "confusion_matrix": "._classification",
    "plot_roc": "._classification",
    "roc_auc": "._classification",
    "roc_curve": "._classification",
    "DataError": "._design",
    "effect_table": "._plots",
    "ScaledResiduals": "._diagnostics",
    "FormulaError": "._formula",
    "RelmatError": "._relmat",
    "Pedigree": "._pedigree",
    "PedigreeError": "._pedigree",
    "cor_ar1": "._residual_ar1",
    "num_factor": "._cov_terms",
    "CorAR1": "._residual_ar1",
    "AR1ResidualLMMResult": "._residual_ar1",
    "parse_formula": "._formula",
    "GLMConvergenceWarning": "._glm",
    "SeparationWarning": "._glm",
    "glm": "._glm",
    "GLMResult": "._glm_result",
    "GLMMResult": "._glmer",
    "GLMMPartsResult": "._parts_result",
    "glmer": "._glmer",
    "LMMResult": "._lmer",
    "lmer": "._lmer",
    "MixedModel": "._model",
    "Params": "._params",
    "SolveInfo": "._solve",
    "solve": "._solve",
    "Convergence": "._results",
    "ConvergenceWarning": "._results",
    "MixedModelResult": "._results",
    "SingularFitWarning": "._results",
}
# Submodules reached as attributes; ``bayes`` needs the optional NumPyro and is not in
# ``__all__`` (``from glmmjax import *`` must not require it).
_SUBMODULES = ("datasets", "families", "links", "bayes")

__all__ = [
    "anova",
    "compare",
    "ScaledResiduals",
    "SingularFitWarning",
    "BatchResult",
    "BootstrapResult",
    "fit_datasets",
    "fit_many",
    "p_adjust_bh",
    "gather_batches",
    "process_share",
    "GLMConvergenceWarning",
    "GLMMResult",
    "GLMMPartsResult",
    "GLMResult",
    "glmer",
    "SeparationWarning",
    "confusion_matrix",
    "families",
    "glm",
    "links",
    "plot_roc",
    "effect_table",
    "roc_auc",
    "roc_curve",
    "Convergence",
    "DataError",
    "LMMResult",
    "MixedModel",
    "MixedModelResult",
    "Params",
    "SolveInfo",
    "solve",
    "ConvergenceWarning",
    "lmer",
    "FormulaError",
    "RelmatError",
    "Pedigree",
    "PedigreeError",
    "cor_ar1",
    "num_factor",
    "CorAR1",
    "AR1ResidualLMMResult",
    "datasets",
    "parse_formula",
]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module("." + name, __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__) | {"bayes"})


if TYPE_CHECKING:  # static analysers and IDEs see ordinary imports
    from . import datasets, families, links
    from ._anova import anova, compare
    from ._batch import BatchResult, fit_datasets, fit_many, p_adjust_bh
    from ._bootstrap import BootstrapResult
    from ._classification import confusion_matrix, plot_roc, roc_auc, roc_curve
    from ._cov_terms import num_factor
    from ._design import DataError
    from ._diagnostics import ScaledResiduals
    from ._distributed import gather_batches, process_share
    from ._formula import FormulaError, parse_formula
    from ._glm import GLMConvergenceWarning, SeparationWarning, glm
    from ._glm_result import GLMResult
    from ._glmer import GLMMResult, glmer
    from ._lmer import LMMResult, lmer
    from ._model import MixedModel
    from ._params import Params
    from ._parts_result import GLMMPartsResult
    from ._pedigree import Pedigree, PedigreeError
    from ._plots import effect_table
    from ._relmat import RelmatError
    from ._residual_ar1 import AR1ResidualLMMResult, CorAR1, cor_ar1
    from ._results import Convergence, ConvergenceWarning, MixedModelResult, SingularFitWarning
    from ._solve import SolveInfo, solve
