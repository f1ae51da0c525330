"""``fit_many`` for families whose shape parameter is estimated (Tweedie's power,
Student-t's df, ordbeta's cutpoints): the design is built once and each response is
fitted by ``glmer``'s own path on the host engine (its fit of the shape with the
dispersion; :mod:`glmmjax._batching.host_loop`), so every model equals its single fit.
One model after another: neither the lockstep engine nor the compiled batch programs
estimate shapes, and a host fit of these families compiles nothing. ``batch.models`` has
a column per shape."""

from __future__ import annotations

import pandas as pd

from .fit_many import BatchResult, _check_models, _design_for, _response_matrix
from .host_loop import fit_host_loop


def fit_many_shapes(formula: str, data: pd.DataFrame, responses, family, *, weights=None,
                    offset=None, n_agq: int = 1, progress=None, ddf: str | None,
                    max_iter: int = 500) -> BatchResult:
    """:func:`glmmjax.fit_many` for a family with an estimated shape (see the module);
    ``ddf``: ``"between-within"`` or None, resolved by the caller."""
    design = _design_for(formula, data, weights, offset)
    Y_all, names = _response_matrix(responses, data)
    Y = Y_all[data.index.get_indexer(design.rows)]
    reasons = _check_models(Y, family, design.rows, design.weights)
    return fit_host_loop(design, family, Y, names, reasons, n_agq=n_agq, ddf=ddf,
                         progress=progress, max_iter=max_iter)
