"""Epoch-by-epoch stage agreement: accuracy, macro-F1, Cohen's kappa, confusion, computed by
`sleepedge.compare` (the public API's one implementation); this module keeps the bench's dict
layout and its tolerance of out-of-range codes.

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


def align(ref: Sequence[int], pred: Sequence[int]) -> tuple[np.ndarray, np.ndarray, dict]:
    ref, pred = np.asarray(ref).astype(np.int64), np.asarray(pred).astype(np.int64)
    n = min(ref.size, pred.size)
    info = {"n_ref": int(ref.size), "n_pred": int(pred.size)}
    ref, pred = ref[:n], pred[:n]
    keep = (ref >= 0) & (ref < N_STAGES) & (pred >= 0) & (pred < N_STAGES)
    info["n_scored"] = int(keep.sum())
    return ref[keep], pred[keep], info


def agreement(ref: Sequence[int], pred: Sequence[int]) -> dict:
    """`sleepedge.compare` (the ONE implementation of these metrics) in this bench's dict layout."""
    from sleepedge.api import compare

    def codes(x):
        x = np.asarray(x).astype(np.int64)
        return np.where((x >= 0) & (x < N_STAGES), x, -100)   # anything else: not scored

    r, p = codes(ref), codes(pred)
    a = compare(r, p)
    info = {"n_ref": int(r.size), "n_pred": int(p.size), "n_scored": a.n_epochs}
    if a.n_epochs == 0:
        return {**info, "accuracy": None, "macro_f1": None, "kappa": None}
    return {**info, "accuracy": a.accuracy, "macro_f1": a.macro_f1, "kappa": a.kappa,
            "f1_per_stage": [a.f1[s] for s in ("W", "N1", "N2", "N3", "REM")], "confusion": a.confusion.tolist()}


def yasa_labels_to_int(labels: Sequence[str]) -> np.ndarray:
    return np.array([YASA_TO_INT.get(str(s), -100) for s in labels], dtype=np.int64)
