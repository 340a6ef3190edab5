"""Measure a simulated night against the real recordings (used by tests and bench).

Features are computed the way the real Sleep-EDF-78 band-power set was (its .json): resample
to 100 Hz, band-pass (EEG 0.5-30 Hz, EOG 0.5-15 Hz; MNE's default zero-phase FIR), per-night
normalisation, 30-s epochs, Welch (hamming, 4-s segments, 50 % overlap, median average), band
powers delta..beta -> features (n_epochs, 3, 10) = [Fpz-Cz, Pz-Oz, EOG] x [ln power in units
of the night's reference variance (5), relative power (5)].
The real `log_*` are ln powers of a per-night z-scored signal whose reference variance is not
recoverable (the real nights' mean 0.5-30 Hz epoch power is ~0.6, not 1, of it); the night
reference here is chosen so that the night's mean epoch power equals the real nights' median
(``night_mean_total`` in the spectral model), which puts simulated and real log_* on one scale.

Figures:
  spectral_match      |mean_sim - mean_real| / sd_real per stage x channel x relative band
  classifier_transfer LDA on the 30 real features, trained on 120 real nights (sorted names),
                      tested on the other 33 (A_real) and on simulated nights (A_sim)
  hypnogram_match     pooled stage proportions and mean bout lengths, real vs sampled
  respiration_check   realised AHI, measured flow drop/duration per event, desaturations
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import signal as sps

from sleepedge.contract import EPOCH_S
from sleepedge.simulate.calibration import (SHARED_DATA, crop_to_sleep, is_test_subject, load_params,
                                            load_real_hypnograms)
from sleepedge.simulate.spectra import epoch_bandpower
from sleepedge.stats import stage_confusion

SLEEP_EDF_LABELS = ("EEG Fpz-Cz", "EEG Pz-Oz", "EOG horizontal")
_BANDS = ((0.5, 30.0), (0.5, 30.0), (0.5, 15.0))
N_TRAIN = 120


def night_features(signals, rates_hz, labels=SLEEP_EDF_LABELS, epoch_s: float = EPOCH_S) -> np.ndarray:
    """(n_epochs, 3, 10) features of three channels, computed like the real band-power set."""
    ref = load_params("spectral")["night_mean_total"]
    out = []
    for ci, (lab, band) in enumerate(zip(labels, _BANDS)):
        bp = epoch_bandpower(signals[lab], float(rates_hz[lab]), epoch_s, band_hz=band)
        bp = bp / (bp.sum(1).mean() / ref[ci]) + 1e-10
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


def smd(sim_mean, real_mean, real_sd) -> np.ndarray:
    """The one standardized mean difference used everywhere (tests, bench, README):
    (mean_sim - mean_real) / sd_real per stage x band, sd_real = SD of the real relative band
    power over all real epochs of that stage (pooled across nights). Signed."""
    return (np.asarray(sim_mean, float) - np.asarray(real_mean, float)) / np.asarray(real_sd, float)


def spectral_match(sim_feats, sim_labels, real_feats, real_labels) -> np.ndarray:
    """(5, 3, 5) |SMD| (see `smd`) of the relative band powers."""
    ms, _ = stage_stats(sim_feats, sim_labels)
    mr, sr = stage_stats(real_feats, real_labels)
    return np.abs(smd(ms, mr, sr))


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


def classifier_transfer(real: list[tuple[str, np.ndarray, np.ndarray]], sim_feats, sim_labels,
                        n_train: int = N_TRAIN) -> dict:
    """LDA trained on the first ``n_train`` real nights that are not the test subject's (subject 0
    is never trained on: its nights stay in the held-out set); accuracy + confusion on the held-out
    real nights and on the simulated nights (against the simulator's own stages)."""
    tr = [r for r in real if not is_test_subject(r[0])][:n_train]
    chosen = {r[0] for r in tr}
    te = [r for r in real if r[0] not in chosen]
    clf = LDA().fit(*_flat([r[1] for r in tr], [r[2] for r in tr]))
    xr, yr = _flat([r[1] for r in te], [r[2] for r in te])
    xs, ys = _flat(sim_feats, sim_labels)
    pr, ps = clf.predict(xr), clf.predict(xs)
    cr, cs = stage_confusion(yr, pr), stage_confusion(ys, ps)
    norm = lambda c: c / np.maximum(c.sum(1, keepdims=True), 1)  # noqa: E731
    return {"acc_real": float((pr == yr).mean()), "acc_sim": float((ps == ys).mean()),
            "confusion_real": cr, "confusion_sim": cs,
            "recall_real": np.diag(norm(cr)), "recall_sim": np.diag(norm(cs)),
            "confusion_l1": float(np.abs(norm(cr) - norm(cs)).sum(1).mean()),
            "n_real_test_epochs": int(yr.size), "n_sim_epochs": int(ys.size)}


def real_hypnograms(directory: Path | None = None) -> list[np.ndarray]:
    """The real Sleep-EDF-20 hypnograms cropped to 30 min of wake around sleep."""
    return [crop_to_sleep(st) for _, st in load_real_hypnograms(directory or SHARED_DATA / "sleep-edf-hypnograms-sc20")]


def flow_envelope(flow: np.ndarray, fs_hz: float, smooth_s: float = 2.0) -> np.ndarray:
    """Breath-amplitude envelope of airflow: Hilbert amplitude, smoothed over ``smooth_s``."""
    from scipy.ndimage import uniform_filter1d

    env = np.abs(sps.hilbert(flow - np.median(flow)))
    return uniform_filter1d(env, max(1, int(smooth_s * fs_hz)), mode="nearest")


def respiration_check(night, flow_label: str | None = None, spo2_label: str | None = None) -> dict:
    """Measure every respiratory event on the generated signals.

    drop: 1 - RMS of the flow inside the event (1.5 s trimmed at each end) / RMS of the 13 s
    before it (kept free of other events and their recovery breaths by construction).
    duration: length of the run around the event's middle where the envelope stays below
    (1 - drop/2) x its median over those 13 s (the half-drop crossings).
    desat: highest SpO2 from the event onset to the nadir (the minimum from the onset to 60 s
    after the event's end) minus that nadir; lag: nadir time - event end."""
    roles = night.roles
    flow_label = flow_label or next(lab for lab in night.signals if roles[lab] == "RESP")
    spo2_label = spo2_label or next(lab for lab in night.signals if roles[lab] == "SPO2")
    fs, fs2 = night.rates_hz[flow_label], night.rates_hz[spo2_label]
    flow = night.signals[flow_label]
    env = flow_envelope(flow, fs)
    sp = night.signals[spo2_label]
    rows = []
    rms = np.std
    for e in night.meta["respiratory_events"]:
        on, off = e["onset_s"], e["onset_s"] + e["duration_s"]
        base_sl = slice(max(0, int((on - 14) * fs)), int((on - 1) * fs))
        drop = 1 - rms(flow[int((on + 1.5) * fs): int((off - 1.5) * fs)]) / rms(flow[base_sl])
        thr = (1 - drop / 2) * np.median(env[base_sl])
        mid = int((on + off) / 2 * fs)
        below = env < thr
        lo = mid
        while lo > 0 and below[lo - 1]:
            lo -= 1
        hi = mid
        while hi < below.size and below[hi]:
            hi += 1
        seg = sp[int(on * fs2): int((off + 60) * fs2)]
        k = int(np.argmin(seg))
        rows.append({"kind": e["kind"], "claimed_drop": e["drop"], "drop": float(drop),
                     "claimed_duration_s": e["duration_s"], "duration_s": float((hi - lo) / fs) if below[mid] else 0.0,
                     "desat": float(seg[: k + 1].max() - seg[k]), "lag_s": float(on + k / fs2 - off)})
    return {"ahi_requested": night.meta["ahi_requested"], "ahi_realised": night.meta["ahi_realised"],
            "events": rows}


def simulate_feature_nights(n_nights: int, hours: float, seed0: int = 1000, artefacts: bool = True,
                            spectra: list[Path] | None = None):
    """Features + stages of simulated Sleep-EDF-montage nights (sampled, or replaying ``spectra``)."""
    from sleepedge.simulate.night import simulate_night

    feats, labels = [], []
    runs = spectra if spectra is not None else [None] * n_nights
    for i, sp in enumerate(runs):
        n = simulate_night(hours=hours, seed=seed0 + i, ahi=5.0, montage="sleep-edf", spectra=sp,
                           artefacts=artefacts)
        feats.append(night_features(n.signals, n.rates_hz))
        labels.append(n.hypnogram.stages.astype(int))
    return feats, labels


def measure_all(n_nights: int = 12, hours: float = 8.0, n_hyp_nights: int = 60, resp_seeds=(1, 2, 3),
                data_dir: Path | None = None) -> dict:
    """Every realism figure (the bench prints them; tests use smaller versions)."""
    from sleepedge.simulate.hypnogram import hypnogram_stats, sample_hypnogram
    from sleepedge.simulate.night import simulate_night

    data_dir = Path(data_dir or SHARED_DATA)
    real = load_real_bandpower(data_dir / "sleep-edf-bandpower-78")
    out: dict = {}
    feats, labels = simulate_feature_nights(n_nights, hours)
    out["spectral_z"] = spectral_match(feats, labels, [r[1] for r in real], [r[2] for r in real])
    out["sim_rel_mean"], _ = stage_stats(feats, labels)
    out["real_rel_mean"], out["real_rel_sd"] = stage_stats([r[1] for r in real], [r[2] for r in real])
    out["transfer_sampled"] = classifier_transfer(real, feats, labels)
    test_files = sorted((data_dir / "sleep-edf-bandpower-78").glob("SC4*-PSG.npz"))[N_TRAIN:N_TRAIN + 6]
    rf, rl = simulate_feature_nights(0, hours, spectra=test_files)
    out["transfer_replayed"] = classifier_transfer(real, rf, rl)
    byname = {r[0]: r for r in real}
    out["spectral_z_replayed"] = spectral_match(rf, rl, [byname[f.name][1] for f in test_files],
                                                [byname[f.name][2] for f in test_files])
    real_h = real_hypnograms(data_dir / "sleep-edf-hypnograms-sc20")
    n_ep = int(round(np.mean([len(h) for h in real_h])))
    sim_h = [sample_hypnogram(n_ep, np.random.default_rng(5000 + i)) for i in range(n_hyp_nights)]
    out["hyp_real"], out["hyp_sim"] = hypnogram_stats(real_h), hypnogram_stats(sim_h)
    resp = []
    for s in resp_seeds:
        for ahi in (5.0, 15.0, 30.0):
            n = simulate_night(hours=hours, seed=s, ahi=ahi, rates_hz={"EEG": 100, "EOG": 100, "EMG": 100, "ECG": 100})
            resp.append(respiration_check(n))
    out["respiration"] = resp
    return out
