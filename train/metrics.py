"""Evaluation metrics (numpy only).

Staging: accuracy, macro-F1, Cohen's kappa, per-class F1, confusion matrix over the five AASM
stages (0..4). Epochs labelled `IGNORE` are dropped before any metric is computed.
Binary events (apnea, hypopnea): balanced accuracy, F1 and rank-based AUROC
(Mann-Whitney U with average ranks for ties).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from sleepedge.stats import stage_confusion, stage_f1, stage_kappa
from sleepedge.contract import IGNORE, STAGES


def _valid(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_pred).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}; pass one prediction per epoch")
    keep = y_true != IGNORE
    return y_true[keep].astype(np.int64), y_pred[keep].astype(np.int64)


def confusion_matrix(y_true, y_pred, n_classes: int = len(STAGES)) -> np.ndarray:
    """Counts C[i, j] = epochs of true class i predicted as j (IGNORE dropped)."""
    return stage_confusion(*_valid(y_true, y_pred), n_classes)


def per_class_f1(cm: np.ndarray) -> np.ndarray:
    """F1 of each class from a confusion matrix (0 where the class is absent and never predicted)."""
    return stage_f1(cm)


def cohen_kappa(cm: np.ndarray) -> float:
    """`sleepedge.stats.stage_kappa`, with training's conventions where it is undefined: NaN when
    nothing is counted, 1.0 for one class only in both (perfect agreement)."""
    kappa = stage_kappa(cm)
    if kappa is not None:
        return kappa
    return float("nan") if cm.sum() == 0 else 1.0


def staging_metrics(y_true, y_pred) -> dict:
    """accuracy, macro_f1 (over classes present in y_true or y_pred), kappa, per-class F1, confusion."""
    cm = confusion_matrix(y_true, y_pred)
    n = int(cm.sum())
    f1 = per_class_f1(cm)
    seen = (cm.sum(0) + cm.sum(1)) > 0
    return {
        "n": n,
        "accuracy": float(np.trace(cm) / n) if n else float("nan"),
        "macro_f1": float(f1[seen].mean()) if seen.any() else float("nan"),
        "kappa": cohen_kappa(cm),
        "per_class_f1": {s: float(v) for s, v in zip(STAGES, f1)},
        "confusion": cm.tolist(),
    }


def auroc(y_true, score) -> float:
    """Rank-based AUROC (ties get average ranks); NaN when only one class is present."""
    y = np.asarray(y_true).reshape(-1).astype(bool)
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def binary_metrics(y_true, score, threshold: float = 0.0, mask=None) -> dict:
    """Balanced accuracy, F1, AUROC for one binary event label.

    `score` is a logit (threshold 0) or a probability (threshold 0.5); `mask` (bool) selects
    the epochs that count (e.g. scored epochs only).
    """
    y = np.asarray(y_true).reshape(-1)
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    if mask is not None:
        m = np.asarray(mask, dtype=bool).reshape(-1)
        y, s = y[m], s[m]
    y = y.astype(bool)
    pred = s > threshold
    tp = int((pred & y).sum()); fn = int((~pred & y).sum())
    tn = int((~pred & ~y).sum()); fp = int((pred & ~y).sum())
    tpr = tp / (tp + fn) if tp + fn else float("nan")
    tnr = tn / (tn + fp) if tn + fp else float("nan")
    rates = [r for r in (tpr, tnr) if r == r]
    f1_den = 2 * tp + fp + fn
    return {
        "n": int(y.size), "n_pos": int(y.sum()),
        "balanced_accuracy": float(np.mean(rates)) if rates else float("nan"),
        "sensitivity": float(tpr), "specificity": float(tnr),
        "f1": float(2 * tp / f1_den) if f1_den else 0.0,
        "auroc": auroc(y, s),
    }
