"""AASM sleep statistics from a hypnogram and scored events.

Inputs: `Hypnogram.stages` int16 (n_epochs,) with W, N1, N2, N3, REM = 0..4 and IGNORE (-100);
`Event` onsets in seconds from epoch 0. Outputs are minutes (`*_min`), percent (`*_pct`) and
events per hour of sleep (`ahi`, `odi`, `arousal_index`).

Definitions (all documented here, applied once):
    recording period  first to last *scored* epoch (non-IGNORE). Leading and trailing IGNORE
                      epochs are unscored recording before lights-off / after lights-on and
                      are left out; IGNORE epochs inside it stay in TIB but are neither
                      sleep nor wake.
    TIB               recording period length (min).
    sleep epoch       N1, N2, N3 or REM.
    TST               number of sleep epochs x epoch length (min).
    SE                TST / TIB x 100 (%).
    SOL               recording-period start -> first sleep epoch (min).
    SPT               first sleep epoch -> end of the last sleep epoch (min).
    WASO              W epochs inside SPT (min); IGNORE epochs inside SPT are not WASO.
    REM latency       sleep onset (start of the first sleep epoch) -> first REM epoch (min);
                      None when there is no REM.
    <stage>_min       minutes of each stage in the recording period; N1..REM `_pct` are % of TST.
    awakenings        runs of consecutive W epochs inside SPT (IGNORE epochs skipped) lasting
                      >= `min_awakening_s` (default 30 s = one epoch): each is one sleep -> W
                      transition that returned to sleep.
    AHI               (apneas + hypopneas during sleep) / TST in hours. An event is "during
                      sleep" when the epoch holding its onset is a sleep epoch. Events are
                      counted, not epochs. None when TST is 0, and None when breathing was not
                      scored: an event list without any apnea, hypopnea or desaturation (a
                      hypnogram-only file) gives None, not 0; pass `respiratory_scored=True`
                      when a scored night truly had no event.
    ODI               desaturations during sleep / TST in hours, only when the scoring has
                      desaturation events (None otherwise). A desaturation that carries its
                      drop (`Event.drop_pct`) counts when the drop is >= `odi_drop_pct` (3 %).
    arousal_index     arousals during sleep / TST in hours (None when TST is 0 or the scoring
                      has no arousal event at all).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from sleepedge.contract import IGNORE, STAGES
from sleepedge.errors import ScoringError
from sleepedge.scoring import APNEA_KINDS, Event, Hypnogram

__all__ = ["sleep_stats", "format_stats"]

_SLEEP_CODES = (1, 2, 3, 4)


def _during_sleep(events: list[Event], kinds: tuple[str, ...], stages: np.ndarray, epoch_s: float,
                  odi_drop_pct: float | None = None) -> int:
    count = 0
    for ev in events:
        if ev.kind not in kinds:
            continue
        if odi_drop_pct is not None and ev.drop_pct is not None and ev.drop_pct < odi_drop_pct:
            continue
        k = int(np.floor(ev.onset_s / epoch_s))
        if 0 <= k < stages.size and int(stages[k]) in _SLEEP_CODES:
            count += 1
    return count


def sleep_stats(hyp: Hypnogram, events: Iterable[Event] = (), *, min_awakening_s: float = 30.0,
                odi_drop_pct: float = 3.0, respiratory_scored: bool | None = None) -> dict:
    """AASM summary of one night (see the module docstring for every definition).

    Returns a flat dict of plain Python numbers (JSON-ready): n_epochs, epoch_s, tib_min,
    spt_min, tst_min, se_pct, sol_min, waso_min, rem_latency_min, W_min, N1_min..REM_min,
    N1_pct..REM_pct, ignore_min, n_awakenings, n_obstructive_apnea, n_central_apnea,
    n_mixed_apnea, n_apnea, n_hypopnea, n_desaturation, n_arousal (each counted during sleep),
    ahi, odi, arousal_index. Values that are undefined for the night (no sleep, no REM,
    no desaturation scoring) are None.
    """
    if not isinstance(hyp, Hypnogram):
        raise ScoringError(f"sleep_stats: expected a Hypnogram, got {type(hyp).__name__}; use "
                           f"sleepedge.scoring.read_scoring or Hypnogram(stages)")
    events = list(events)
    for ev in events:
        if not isinstance(ev, Event):
            raise ScoringError(f"sleep_stats: events must be sleepedge.scoring.Event, got {type(ev).__name__}")
    if not min_awakening_s >= 0:
        raise ScoringError(f"sleep_stats: min_awakening_s={min_awakening_s!r}; expected seconds >= 0")
    epoch_min = hyp.epoch_s / 60.0
    stages = hyp.stages.astype(np.int64)
    scored = np.flatnonzero(stages != IGNORE)
    out: dict = {"n_epochs": int(stages.size), "epoch_s": float(hyp.epoch_s)}
    if scored.size == 0:
        first, last = 0, -1
    else:
        first, last = int(scored[0]), int(scored[-1])
    period = stages[first:last + 1]
    out["tib_min"] = period.size * epoch_min
    sleep_idx = np.flatnonzero(np.isin(stages, _SLEEP_CODES))
    tst_epochs = int(sleep_idx.size)
    out["tst_min"] = tst_epochs * epoch_min
    out["se_pct"] = 100.0 * tst_epochs / period.size if period.size else None
    if tst_epochs:
        onset, final = int(sleep_idx[0]), int(sleep_idx[-1])
        spt = stages[onset:final + 1]
        out["sol_min"] = (onset - first) * epoch_min
        out["spt_min"] = spt.size * epoch_min
        out["waso_min"] = int((spt == 0).sum()) * epoch_min
        rem = np.flatnonzero(stages == 4)
        out["rem_latency_min"] = (int(rem[0]) - onset) * epoch_min if rem.size else None
        # awakenings: W runs inside SPT once IGNORE epochs are skipped
        seq = spt[spt != IGNORE]
        is_w = (seq == 0).astype(np.int8)
        starts = np.flatnonzero(np.diff(np.concatenate([[0], is_w])) == 1)
        ends = np.flatnonzero(np.diff(np.concatenate([is_w, [0]])) == -1) + 1
        lengths_s = (ends - starts) * hyp.epoch_s
        out["n_awakenings"] = int((lengths_s >= min_awakening_s).sum())
    else:
        out.update(sol_min=None, spt_min=0.0, waso_min=0.0, rem_latency_min=None, n_awakenings=0)
    for code, name in enumerate(STAGES):
        minutes = int((period == code).sum()) * epoch_min
        out[f"{name}_min"] = minutes
        if code:
            out[f"{name}_pct"] = 100.0 * minutes / out["tst_min"] if tst_epochs else None
    out["ignore_min"] = int((period == IGNORE).sum()) * epoch_min

    # events during sleep (counted, not epochs)
    for kind in APNEA_KINDS + ("hypopnea", "arousal"):
        out[f"n_{kind}"] = _during_sleep(events, (kind,), stages, hyp.epoch_s)
    out["n_apnea"] = sum(out[f"n_{k}"] for k in APNEA_KINDS)
    has_desat = any(ev.kind == "desaturation" for ev in events)
    out["n_desaturation"] = (_during_sleep(events, ("desaturation",), stages, hyp.epoch_s, odi_drop_pct)
                             if has_desat else None)
    tst_h = out["tst_min"] / 60.0
    if respiratory_scored is None:
        respiratory_scored = any(ev.kind in APNEA_KINDS + ("hypopnea", "desaturation") for ev in events)
    has_arousal = any(ev.kind == "arousal" for ev in events)
    out["ahi"] = (out["n_apnea"] + out["n_hypopnea"]) / tst_h if respiratory_scored and tst_h > 0 else None
    out["odi"] = out["n_desaturation"] / tst_h if has_desat and tst_h > 0 else None
    out["arousal_index"] = out["n_arousal"] / tst_h if has_arousal and tst_h > 0 else None
    return out


# ---- agreement between two scorings (sleepedge.compare, train.metrics)


def stage_confusion(ref, pred, k: int = len(STAGES)) -> np.ndarray:
    """Counts C[i, j] = epochs of class i in `ref` given class j in `pred` (codes 0..k-1 only;
    drop unscored epochs first). The one confusion matrix of the project (`train.metrics`,
    `sleepedge.compare` (so `bench.agreement`) and the simulator's realism check use it)."""
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (np.asarray(ref, np.int64), np.asarray(pred, np.int64)), 1)
    return cm


def stage_f1(cm: np.ndarray) -> np.ndarray:
    """F1 of each class from a confusion matrix (0 where the class is absent and never predicted)."""
    tp = np.diag(cm).astype(np.float64)
    denom = (cm.sum(0) + cm.sum(1)).astype(np.float64)   # = 2tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def stage_kappa(cm: np.ndarray) -> float | None:
    """Cohen's kappa from a confusion matrix; None when undefined (nothing counted, or one class
    only in both: chance agreement 1)."""
    n = int(cm.sum())
    if n == 0:
        return None
    po = float(np.trace(cm) / n)
    pe = float((cm.sum(0).astype(float) * cm.sum(1).astype(float)).sum() / (n * n))
    return float((po - pe) / (1 - pe)) if pe < 1 else None


def format_stats(stats: dict) -> str:
    """Human-readable multi-line summary (for the CLI / reports)."""

    def f(key: str, unit: str = "", digits: int = 1) -> str:
        v = stats.get(key)
        return "n/a" if v is None else f"{v:.{digits}f}{unit}"

    lines = [
        f"TIB {f('tib_min', ' min')}  TST {f('tst_min', ' min')}  SE {f('se_pct', ' %')}  "
        f"SOL {f('sol_min', ' min')}  WASO {f('waso_min', ' min')}  REM latency {f('rem_latency_min', ' min')}",
        "  ".join(f"{s} {f(f'{s}_min', ' min')}" for s in STAGES) + f"  unscored {f('ignore_min', ' min')}",
        f"awakenings {stats.get('n_awakenings')}  AHI {f('ahi', '/h')}  ODI {f('odi', '/h')}  "
        f"arousal index {f('arousal_index', '/h')}",
    ]
    return "\n".join(lines)
