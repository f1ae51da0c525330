"""glmmjax: generalized linear mixed models in JAX.

Fit lme4-style models (``lmer``, ``glm``, ``glmer``) with exact gradients, on CPU or
GPU, one at a time or thousands at once. Everything public is re-exported here.
"""

from . import datasets, families, links
from ._anova import anova, compare
from ._batch import BatchResult, fit_datasets, fit_many, p_adjust_bh
from ._bootstrap import BootstrapResult
from ._classification import confusion_matrix, plot_roc, roc_auc, roc_curve
from ._design import DataError
from ._diagnostics import ScaledResiduals
from ._formula import FormulaError, parse_formula
from ._glm import GLMConvergenceWarning, SeparationWarning, glm
from ._glm_result import GLMResult
from ._glmer import GLMMResult, glmer
from ._lmer import LMMResult, lmer
from ._model import MixedModel
from ._params import Params
from ._results import Convergence, MixedModelResult, SingularFitWarning
from ._solve import SolveInfo, solve

__version__ = "0.1.0"

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
    "GLMConvergenceWarning",
    "GLMMResult",
    "GLMResult",
    "glmer",
    "SeparationWarning",
    "confusion_matrix",
    "families",
    "glm",
    "links",
    "plot_roc",
    "roc_auc",
    "roc_curve",
    "Convergence",
    "DataError",
    "LMMResult",
    "MixedModel",
    "Params",
    "SolveInfo",
    "solve",
    "MixedModelResult",
    "lmer",
    "FormulaError",
    "datasets",
    "parse_formula",
]


def __getattr__(name):
    # glmmjax.bayes needs the optional NumPyro: import it on first use only.
    if name == "bayes":
        import importlib

        return importlib.import_module(".bayes", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
