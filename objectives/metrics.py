"""Metrics computed with numpy (``evaluate.load`` would fetch scripts from the hub)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["classification_metrics", "macro_f1"]


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Macro-averaged F1 over ``n_classes`` (classes absent from both count as 0)."""
    f1s = []
    for c in range(n_classes):
        tp = float(np.sum((y_pred == c) & (y_true == c)))
        fp = float(np.sum((y_pred == c) & (y_true != c)))
        fn = float(np.sum((y_pred != c) & (y_true == c)))
        denom = 2 * tp + fp + fn
        f1s.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(f1s)) if f1s else 0.0


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, label_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    The confusion matrix has one row per true class and one column per predicted class, in the
    order of ``label_names``. A class never predicted has precision 0 (likewise recall, F1).

    Example:
        >>> m = classification_metrics(np.array([0, 1, 1]), np.array([0, 1, 0]), ["neg", "pos"])
        >>> m["confusion_matrix"], m["per_class"]["pos"]["recall"]
        ([[1, 0], [1, 1]], 0.5)
    """
    k = len(label_names)
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    per_class = {}
    for i, name in enumerate(label_names):
        tp = int(matrix[i, i])
        predicted, actual = int(matrix[:, i].sum()), int(matrix[i, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[str(name)] = {
            "precision": precision, "recall": recall, "f1": f1, "support": actual,
        }
    return {
        "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else 0.0,
        "macro_f1": macro_f1(y_true, y_pred, k),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }
