"""Confusion matrix, ROC curve and AUC against direct computations; the ROC plot."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
from scipy import stats

import glmmjax

RNG = np.random.default_rng(11)


def _sample(n=200):
    y = RNG.integers(0, 2, n)
    scores = np.round(RNG.normal(y * 0.8, 1.0), 1)  # rounding makes ties
    return y, scores


def test_confusion_matrix_counts_and_rates():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.1, 0.6, 0.7, 0.5, 0.2, 0.4])
    table = glmmjax.confusion_matrix(y, p, threshold=0.5)
    assert table.to_numpy().tolist() == [[2, 1], [1, 2]]
    assert table.attrs["accuracy"] == pytest.approx(4 / 6)
    assert table.attrs["sensitivity"] == pytest.approx(2 / 3)
    assert table.attrs["specificity"] == pytest.approx(2 / 3)
    assert glmmjax.confusion_matrix(y.astype(bool), p, 0.65).to_numpy().tolist() == [[3, 0], [2, 1]]


def test_auc_equals_the_mann_whitney_probability_with_ties():
    y, s = _sample()
    u = stats.mannwhitneyu(s[y == 1], s[y == 0]).statistic
    expected = u / (np.sum(y == 1) * np.sum(y == 0))
    assert glmmjax.roc_auc(y, s) == pytest.approx(expected, rel=1e-12)


def test_roc_curve_shape_and_monotonicity():
    y, s = _sample()
    curve = glmmjax.roc_curve(y, s)
    assert list(curve.columns) == ["threshold", "fpr", "tpr"]
    assert curve.iloc[0].tolist()[1:] == [0.0, 0.0] and curve.iloc[-1].tolist()[1:] == [1.0, 1.0]
    assert np.all(np.diff(curve["fpr"]) >= 0) and np.all(np.diff(curve["tpr"]) >= 0)
    assert len(curve) == len(np.unique(s)) + 1
    assert glmmjax.roc_auc([0, 1], [0.2, 0.9]) == 1.0
    assert glmmjax.roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_bad_inputs():
    with pytest.raises(ValueError, match="both classes"):
        glmmjax.roc_curve([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="0 and 1"):
        glmmjax.roc_auc([0, 2], [0.2, 0.3])
    with pytest.raises(ValueError, match="same length"):
        glmmjax.confusion_matrix([0, 1], [0.2])


def test_plot_roc_saves_a_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, s = _sample()
    path = tmp_path / "roc.png"
    ax = glmmjax.plot_roc(y, s, label="model", path=path)
    assert path.stat().st_size > 1000
    assert "AUC" in ax.get_legend().get_texts()[0].get_text()
    plt.close(ax.figure)


def test_plot_roc_without_matplotlib_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"glmmjax\[plot\]"):
        glmmjax.plot_roc([0, 1], [0.1, 0.9])
