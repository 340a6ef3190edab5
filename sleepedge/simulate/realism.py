"""Measure a simulated night against the real recordings (used by tests and bench).

Features are computed the way the real Sleep-EDF-78 band-power set was (its .json): resample
to 100 Hz, band-pass (EEG 0.5-30 Hz, EOG 0.5-15 Hz; zero-phase 4th-order Butterworth here,
MNE FIR there), per-night z-score of the signal, 30-s epochs, Welch (hamming, 4-s segments,
50 % overlap, median average), band powers delta..beta -> features (n_epochs, 3, 10) =
[Fpz-Cz, Pz-Oz, EOG] x [ln power of the z-scored signal (5), relative power (5)].

Figures:
  spectral_match      |mean_sim - mean_real| / sd_real per stage x channel x relative band
  classifier_transfer LDA on the 30 real features, trained on 120 real nights (sorted names),
                      tested on the other 33 (A_real) and on simulated nights (A_sim)
  hypnogram_match     pooled stage proportions and mean bout lengths, real vs sampled
  respiration_check   realised AHI, measured flow drop/duration per event, desaturations
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy import signal as sps

from sleepedge.contract import EPOCH_S, IGNORE
from sleepedge.simulate.calibration import SHARED_DATA, crop_to_sleep, load_real_hypnograms
from sleepedge.simulate.spectra import BANDS_HZ

SLEEP_EDF_LABELS = ("EEG Fpz-Cz", "EEG Pz-Oz", "EOG horizontal")
_BANDS = ((0.5, 30.0), (0.5, 30.0), (0.5, 15.0))
N_TRAIN = 120


def night_features(signals, rates_hz, labels=SLEEP_EDF_LABELS, epoch_s: float = EPOCH_S) -> np.ndarray:
    """(n_epochs, 3, 10) features of three channels, computed like the real band-power set."""
    out = []
    for lab, band in zip(labels, _BANDS):
        x = np.asarray(signals[lab], float)
        fs = float(rates_hz[lab])
        if fs != 100.0:
            fr = Fraction(100.0 / fs).limit_denominator(1000)
            x = sps.resample_poly(x, fr.numerator, fr.denominator)
        x = sps.sosfiltfilt(sps.butter(4, band, btype="band", fs=100.0, output="sos"), x)
        x = (x - x.mean()) / max(x.std(), 1e-12)
        n = int(epoch_s * 100)
        n_ep = x.size // n
        f, p = sps.welch(x[: n_ep * n].reshape(n_ep, n), fs=100.0, window="hamming", nperseg=400,
                         noverlap=200, average="median", axis=-1)
        df = f[1] - f[0]
        bp = np.stack([p[:, (f >= lo) & (f < hi)].sum(1) * df for lo, hi in BANDS_HZ], axis=1) + 1e-10
        out.append(np.concatenate([np.log(bp), bp / bp.sum(1, keepdims=True)], axis=1))
    return np.stack(out, axis=1).astype(np.float32)


def load_real_bandpower(directory: Path | None = None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """[(name, features (n, 3, 10), labels (n,))] of every real night, sorted by file name."""
    directory = Path(directory or SHARED_DATA / "sleep-edf-bandpower-78")
    out = []
    for f in sorted(directory.glob("SC4*-PSG.npz")):
        with np.load(f) as d:
            out.append((f.name, d["features"].astype(np.float32), d["labels"].astype(int)))
    return out


def stage_stats(features: list[np.ndarray], labels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and SD of the relative band powers per stage: (5 stages, 3 channels, 5 bands) each."""
    x = np.concatenate(features)[:, :, 5:10]
    y = np.concatenate(labels)
    mean = np.stack([x[y == s].mean(0) for s in range(5)])
    sd = np.stack([x[y == s].std(0) for s in range(5)])
    return mean, sd


def spectral_match(sim_feats, sim_labels, real_feats, real_labels) -> np.ndarray:
    """(5, 3, 5) |mean_sim - mean_real| / sd_real of the relative band powers."""
    ms, _ = stage_stats(sim_feats, sim_labels)
    mr, sr = stage_stats(real_feats, real_labels)
    return np.abs(ms - mr) / sr


class LDA:
    """Linear discriminant analysis (shared covariance, empirical priors), numpy only."""

    def fit(self, x: np.ndarray, y: np.ndarray, shrink: float = 1e-3) -> "LDA":
        self.classes = np.unique(y)
        self.mu = np.stack([x[y == c].mean(0) for c in self.classes])
        xc = x - self.mu[np.searchsorted(self.classes, y)]
        cov = xc.T @ xc / max(len(x) - len(self.classes), 1)
        cov += shrink * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
        self.w = np.linalg.solve(cov, self.mu.T)                               # (d, k)
        prior = np.array([(y == c).mean() for c in self.classes])
        self.b = -0.5 * np.sum(self.mu.T * self.w, 0) + np.log(prior)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes[np.argmax(x @ self.w + self.b, axis=1)]


def _flat(feats, labels):
    x = np.concatenate([f.reshape(len(f), -1) for f in feats]).astype(np.float64)
    y = np.concatenate(labels)
    keep = (y >= 0) & (y <= 4)
    return x[keep], y[keep]


def confusion(y_true, y_pred) -> np.ndarray:
    """5x5 counts, rows = truth (W, N1, N2, N3, REM), columns = prediction."""
    return np.bincount(y_true * 5 + y_pred, minlength=25).reshape(5, 5)


def classifier_transfer(real: list[tuple[str, np.ndarray, np.ndarray]], sim_feats, sim_labels,
                        n_train: int = N_TRAIN) -> dict:
    """LDA trained on the first ``n_train`` real nights; accuracy + confusion on the held-out real
    nights and on the simulated nights (against the simulator's own stages)."""
    tr, te = real[:n_train], real[n_train:]
    clf = LDA().fit(*_flat([r[1] for r in tr], [r[2] for r in tr]))
    xr, yr = _flat([r[1] for r in te], [r[2] for r in te])
    xs, ys = _flat(sim_feats, sim_labels)
    pr, ps = clf.predict(xr), clf.predict(xs)
    cr, cs = confusion(yr, pr), confusion(ys, ps)
    norm = lambda c: c / np.maximum(c.sum(1, keepdims=True), 1)  # noqa: E731
    return {"acc_real": float((pr == yr).mean()), "acc_sim": float((ps == ys).mean()),
            "confusion_real": cr, "confusion_sim": cs,
            "recall_real": np.diag(norm(cr)), "recall_sim": np.diag(norm(cs)),
            "confusion_l1": float(np.abs(norm(cr) - norm(cs)).sum(1).mean()),
            "n_real_test_epochs": int(yr.size), "n_sim_epochs": int(ys.size)}


def real_hypnograms(directory: Path | None = None) -> list[np.ndarray]:
    """The real Sleep-EDF-20 hypnograms cropped to 30 min of wake around sleep."""
    return [crop_to_sleep(st) for _, st in load_real_hypnograms(directory or SHARED_DATA / "sleep-edf-hypnograms-sc20")]


def flow_envelope(flow: np.ndarray, fs_hz: float, win_s: float = 4.0) -> np.ndarray:
    """Breath-amplitude envelope of airflow: running peak-to-peak over ``win_s`` (centred)."""
    from scipy.ndimage import maximum_filter1d, minimum_filter1d

    w = max(3, int(win_s * fs_hz))
    return maximum_filter1d(flow, w, mode="nearest") - minimum_filter1d(flow, w, mode="nearest")


def respiration_check(night, flow_label: str | None = None, spo2_label: str | None = None) -> dict:
    """Measure every respiratory event on the generated signals.

    drop: 1 - median envelope inside the event (its first and last 2 s left out) / median
    envelope of the 60 s before it (event-free by construction: events are >= 40 s apart).
    desat: SpO2 baseline (median of the 30 s before the event) minus the minimum from the event
    onset to 60 s after its end; lag: nadir time - event end."""
    roles = night.roles
    flow_label = flow_label or next(lab for lab in night.signals if roles[lab] == "RESP")
    spo2_label = spo2_label or next(lab for lab in night.signals if roles[lab] == "SPO2")
    fs, fs2 = night.rates_hz[flow_label], night.rates_hz[spo2_label]
    env = flow_envelope(night.signals[flow_label], fs)
    sp = night.signals[spo2_label]
    rows = []
    for e in night.meta["respiratory_events"]:
        on, off = e["onset_s"], e["onset_s"] + e["duration_s"]
        base = np.median(env[max(0, int((on - 60) * fs)): int((on - 5) * fs)])
        inner = np.median(env[int((on + 2) * fs): int((off - 2) * fs)])
        low = env[int(on * fs): int(off * fs)] < (1 - (0.9 if e["kind"] != "hypopnea" else 0.3)) * base
        s_base = np.median(sp[max(0, int((on - 30) * fs2)): int(on * fs2) + 1])
        seg = sp[int(on * fs2): int((off + 60) * fs2)]
        k = int(np.argmin(seg))
        rows.append({"kind": e["kind"], "claimed_drop": e["drop"], "drop": float(1 - inner / base),
                     "claimed_duration_s": e["duration_s"], "low_s": float(low.sum() / fs),
                     "desat": float(s_base - seg[k]), "lag_s": float(on + k / fs2 - off)})
    return {"ahi_requested": night.meta["ahi_requested"], "ahi_realised": night.meta["ahi_realised"],
            "events": rows}
