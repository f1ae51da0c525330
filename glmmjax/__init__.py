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
    "anova": "._inference.anova",
    "compare": "._inference.anova",
    "BatchResult": "._batching.fit_many",
    "fit_datasets": "._batching.fit_many",
    "fit_many": "._batching.fit_many",
    "p_adjust_bh": "._batching.fit_many",
    "gather_batches": "._batching.distributed",
    "process_share": "._batching.distributed",
    "BootstrapResult": "._inference.bootstrap",
    "confusion_matrix": "._inference.classification",
    "plot_roc": "._inference.classification",
    "roc_auc": "._inference.classification",
    "roc_curve": "._inference.classification",
    "DataError": "._errors",
    "effect_table": "._results.plots",
    "ScaledResiduals": "._inference.diagnostics",
    "FormulaError": "._model.formula",
    "RelmatError": "._model.relmat",
    "Pedigree": "._model.pedigree",
    "PedigreeError": "._model.pedigree",
    "cor_ar1": "._residual_ar1",
    "num_factor": "._model.cov_terms",
    "CorAR1": "._residual_ar1",
    "AR1ResidualLMMResult": "._residual_ar1",
    "parse_formula": "._model.formula",
    "GLMConvergenceWarning": "._glm",
    "SeparationWarning": "._glm",
    "glm": "._glm",
    "GLMResult": "._results.glm",
    "GLMMResult": "._results.glmm",
    "GLMMPartsResult": "._results.parts",
    "glmer": "._glmer",
    "LMMResult": "._results.lmm",
    "lmer": "._lmer",
    "MixedModel": "._model.model",
    "Params": "._model.params",
    "SolveInfo": "._solve",
    "solve": "._solve",
    "Convergence": "._results.mixed",
    "ConvergenceWarning": "._results.mixed",
    "MixedModelResult": "._results.mixed",
    "SingularFitWarning": "._results.mixed",
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
    from ._batching.distributed import gather_batches, process_share
    from ._batching.fit_many import BatchResult, fit_datasets, fit_many, p_adjust_bh
    from ._errors import DataError
    from ._glm import GLMConvergenceWarning, SeparationWarning, glm
    from ._glmer import glmer
    from ._inference.anova import anova, compare
    from ._inference.bootstrap import BootstrapResult
    from ._inference.classification import confusion_matrix, plot_roc, roc_auc, roc_curve
    from ._inference.diagnostics import ScaledResiduals
    from ._lmer import lmer
    from ._model.cov_terms import num_factor
    from ._model.formula import FormulaError, parse_formula
    from ._model.model import MixedModel
    from ._model.params import Params
    from ._model.pedigree import Pedigree, PedigreeError
    from ._model.relmat import RelmatError
    from ._residual_ar1 import AR1ResidualLMMResult, CorAR1, cor_ar1
    from ._results.glm import GLMResult
    from ._results.glmm import GLMMResult
    from ._results.lmm import LMMResult
    from ._results.mixed import (
        Convergence,
        ConvergenceWarning,
        MixedModelResult,
        SingularFitWarning,
    )
    from ._results.parts import GLMMPartsResult
    from ._results.plots import effect_table
    from ._solve import SolveInfo, solve
