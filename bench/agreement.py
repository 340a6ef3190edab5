"""Epoch-by-epoch stage agreement (numpy only): accuracy, macro-F1, Cohen's kappa, confusion.

Stages 0..4 = W, N1, N2, N3, REM; anything outside 0..4 in the reference (IGNORE = -100,
unscored) is masked out. The two sequences are aligned on their common length (tools differ
by at most an epoch at the end: GSSC drops a trailing epoch, YASA keeps partial ones).

On simulated nights these figures say how well each tool recovers the SIMULATOR's hypnogram;
they are not real-sleep accuracy (see ../shared/DESIGN.md: simulated scores can move opposite
to real performance).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

N_STAGES = 5
YASA_TO_INT = {"W": 0, "N1": 1, "N2": 2, "N3": 3, "R": 4, "REM": 4}


def confusion(ref: np.ndarray, pred: np.ndarray, k: int = N_STAGES) -> np.ndarray:
    ref, pred = np.asarray(ref, np.int64), np.asarray(pred, np.int64)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (ref, pred), 1)
    return cm


def align(ref: Sequence[int], pred: Sequence[int]) -> tuple[np.ndarray, np.ndarray, dict]:
    ref, pred = np.asarray(ref).astype(np.int64), np.asarray(pred).astype(np.int64)
    n = min(ref.size, pred.size)
    info = {"n_ref": int(ref.size), "n_pred": int(pred.size)}
    ref, pred = ref[:n], pred[:n]
    keep = (ref >= 0) & (ref < N_STAGES) & (pred >= 0) & (pred < N_STAGES)
    info["n_scored"] = int(keep.sum())
    return ref[keep], pred[keep], info


def agreement(ref: Sequence[int], pred: Sequence[int]) -> dict:
    r, p, info = align(ref, pred)
    if r.size == 0:
        return {**info, "accuracy": None, "macro_f1": None, "kappa": None}
    cm = confusion(r, p)
    n = cm.sum()
    acc = float(np.trace(cm) / n)
    tp = np.diag(cm).astype(float)
    prec_den, rec_den = cm.sum(0).astype(float), cm.sum(1).astype(float)
    f1 = np.zeros(N_STAGES)
    for k in range(N_STAGES):
        d = prec_den[k] + rec_den[k]
        f1[k] = 2 * tp[k] / d if d > 0 else 0.0
    classes = rec_den > 0  # macro over stages present in the reference
    macro_f1 = float(f1[classes].mean()) if classes.any() else None
    pe = float((prec_den * rec_den).sum() / (n * n))
    kappa = float((acc - pe) / (1 - pe)) if pe < 1 else None   # undefined when one class only
    return {**info, "accuracy": acc, "macro_f1": macro_f1, "kappa": kappa,
            "f1_per_stage": [float(x) for x in f1], "confusion": cm.tolist()}


def yasa_labels_to_int(labels: Sequence[str]) -> np.ndarray:
    return np.array([YASA_TO_INT.get(str(s), -100) for s in labels], dtype=np.int64)
