"""The result of ``lmer``: a fitted linear mixed model, with lmerTest's df and tests."""

from __future__ import annotations

import dataclasses
from functools import cached_property

import pandas as pd

from .mixed import MixedModelResult, with_dropped_rows


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class LMMResult(MixedModelResult):
    """A fitted linear mixed model (see :class:`MixedModelResult` for the accessors)."""

    reml: bool = True

    def _header(self) -> str:
        return f"Linear mixed model fit by {'REML' if self.reml else 'maximum likelihood'}"

    @cached_property
    def _dense_structure(self):
        """The random-effects structure with X and y appended, as
        ``self.model.dense_structure``; built without JAX unless :attr:`model` exists."""
        if "model" in self.__dict__:
            return self.model.dense_structure
        from .._model.structure import build_structure

        return build_structure(self.design.terms, self.design.X.shape[1] + 1)

    # -- denominator degrees of freedom (see glmmjax._inference.ddf) --------------------------------
    @cached_property
    def _satterthwaite(self):
        from .._inference.ddf import satterthwaite_pieces

        return satterthwaite_pieces(self)

    @cached_property
    def _kenward_roger(self):
        from .._inference.ddf import kenward_roger_pieces

        return kenward_roger_pieces(self)

    def coef_table(self, ddf: str | None = None, names: str = "glmmjax") -> pd.DataFrame:
        """Estimates, standard errors and t values; with ``ddf="satterthwaite"`` or
        ``"kenward-roger"`` also denominator df and ``Pr(>|t|)`` (as lmerTest's
        ``summary(fit, ddf = ...)``; Kenward–Roger also adjusts the standard errors,
        as pbkrtest's ``vcovAdj``). ``names="r"`` names the rows as R does."""
        from .._display import check_names, with_r_aliases
        from .._inference.ddf import check_ddf, coef_table

        ddf = check_ddf(ddf)
        check_names(names)
        if ddf is None:
            return super().coef_table(names=names)
        return with_r_aliases(with_dropped_rows(coef_table(self, ddf), self.design), names)

    def summary(self, ddf: str | None = None, names: str = "glmmjax") -> str:
        """lme4's summary layout; ``ddf`` adds lmerTest's df and p-value columns;
        ``names="r"`` names the coefficients as R does."""
        from .._inference.ddf import check_ddf

        ddf = check_ddf(ddf)
        if ddf is None:
            return super().summary(names=names)
        method = "Satterthwaite" if ddf == "satterthwaite" else "Kenward-Roger"
        return self._summary(
            self.coef_table(ddf, names=names), f"Fixed effects (t tests use {method}'s method):"
        )

    def anova(self, ddf: str = "satterthwaite") -> pd.DataFrame:
        """Type III F tests of the fixed-effects terms (lmerTest's ``anova(fit)``).

        Columns ``Sum Sq, Mean Sq, NumDF, DenDF, F value, Pr(>F)``; ``ddf`` is
        ``"satterthwaite"`` (default) or ``"kenward-roger"`` (REML fits only). A term
        that is part of an interaction is tested, as lmerTest and SAS do, by the
        hypothesis its coefficients are zero under sum-to-zero contrasts.

        Example:
            >>> import glmmjax
            >>> fit = glmmjax.lmer("Reaction ~ Days + (Days | Subject)",
            ...                    glmmjax.datasets.load("sleepstudy"))
            >>> round(float(fit.anova()["DenDF"].iloc[0]), 2)
            17.0
        """
        from .._inference.ddf import anova_table, check_ddf

        ddf = check_ddf(ddf)
        if ddf is None:
            raise ValueError("anova needs ddf='satterthwaite' or 'kenward-roger'")
        return anova_table(self, ddf)
