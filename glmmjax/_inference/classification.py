"""Classification summaries for binary outcomes: confusion matrix, ROC curve, AUC, plot.

Plain numpy (no JAX): these run on fitted probabilities after a fit. Inputs may be
arrays, lists or pandas Series; ``y_true`` holds 0/1 (or booleans).

Example:
    >>> from glmmjax import roc_auc
    >>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["confusion_matrix", "roc_curve", "roc_auc", "plot_roc"]


def _binary_inputs(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    if y.dtype == bool:
        y = y.astype(np.float64)
    y = y.astype(np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true and scores must have the same length, got {y.size} and {s.size}")
    if y.size == 0:
        raise ValueError("y_true is empty")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("y_true must contain only 0 and 1 (or booleans)")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    return y, s


def confusion_matrix(y_true, probabilities, threshold: float = 0.5) -> pd.DataFrame:
    """Counts of observed (rows) against predicted (columns) classes at ``threshold``.

    An observation is predicted positive when its probability is ≥ ``threshold``.

    Returns:
        A 2×2 DataFrame with index ``observed 0/1`` and columns ``predicted 0/1``; its
        ``attrs`` hold accuracy, sensitivity (recall), specificity and precision.

    Example:
        >>> confusion_matrix([0, 1, 1], [0.2, 0.7, 0.4]).to_numpy().tolist()
        [[1, 0], [1, 1]]
    """
    y, p = _binary_inputs(y_true, probabilities)
    predicted = p >= threshold
    tp = int(np.sum(predicted & (y == 1)))
    fp = int(np.sum(predicted & (y == 0)))
    fn = int(np.sum(~predicted & (y == 1)))
    tn = int(np.sum(~predicted & (y == 0)))
    table = pd.DataFrame(
        [[tn, fp], [fn, tp]],
        index=pd.Index(["observed 0", "observed 1"]),
        columns=pd.Index(["predicted 0", "predicted 1"]),
    )
    ratio = lambda a, b: a / b if b else float("nan")  # noqa: E731
    table.attrs.update(
        threshold=threshold,
        accuracy=ratio(tp + tn, y.size),
        sensitivity=ratio(tp, tp + fn),
        specificity=ratio(tn, tn + fp),
        precision=ratio(tp, tp + fp),
    )
    return table


def roc_curve(y_true, scores) -> pd.DataFrame:
    """The ROC curve: false and true positive rates as the threshold decreases.

    Tied scores form a single step. The first row is (0, 0) at threshold +inf, the
    last (1, 1).

    Returns:
        DataFrame with columns ``threshold``, ``fpr``, ``tpr``.

    Raises:
        ValueError: when y_true has only one class (the curve is undefined).
    """
    y, s = _binary_inputs(y_true, scores)
    n_pos, n_neg = y.sum(), y.size - y.sum()
    if n_pos == 0 or n_neg == 0:
        raise ValueError("the ROC curve needs both classes in y_true")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # Keep the last index of each run of tied scores: ties move together.
    last_of_run = np.r_[np.flatnonzero(np.diff(s_sorted) != 0), y.size - 1]
    tp = np.cumsum(y_sorted)[last_of_run]
    fp = (last_of_run + 1) - tp
    return pd.DataFrame({
        "threshold": np.r_[np.inf, s_sorted[last_of_run]],
        "fpr": np.r_[0.0, fp / n_neg],
        "tpr": np.r_[0.0, tp / n_pos],
    })


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve (trapezoids; ties count one half).

    Equals the probability that a random positive scores above a random negative
    (the Mann–Whitney statistic divided by n₊n₋).
    """
    curve = roc_curve(y_true, scores)
    return float(np.trapezoid(curve["tpr"], curve["fpr"]))


def plot_roc(y_true, scores, ax=None, label: str | None = None, path=None):
    """Plot the ROC curve with its AUC; optionally save the figure to ``path``.

    Returns:
        The matplotlib Axes.

    Raises:
        ImportError: when matplotlib is not installed (install ``glmmjax[plot]``).
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "plot_roc needs matplotlib; install it with `pip install glmmjax[plot]`"
        ) from err
    curve = roc_curve(y_true, scores)
    auc = roc_auc(y_true, scores)
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5))
    text = f"AUC = {auc:.3f}" if label is None else f"{label} (AUC = {auc:.3f})"
    ax.plot(curve["fpr"], curve["tpr"], label=text)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right")
    if path is not None:
        ax.figure.savefig(path, dpi=100, bbox_inches="tight")
    return ax
