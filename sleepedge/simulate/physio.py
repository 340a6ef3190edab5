"""Chin EMG and ECG.

EMG: band-limited noise (10 Hz to 0.45 fs), tone W > N1 > N2 > N3 > REM (atonia) with an
AR(1) epoch-to-epoch drift, smooth envelope, phasic twitches (mostly REM), bursts at arousals
and movements. µV.

ECG (lead II): PQRST beats from a sum of Gaussians (McSharry et al. 2003 ECGSYN morphology),
beat times from an instantaneous heart rate: stage baseline (W > REM > N1 > N2 > N3), per-night
offset, respiratory sinus arrhythmia (locked to the breathing phase), bradycardia during
apneas and a tachycardic surge at their termination/arousals. µV.
"""

from __future__ import annotations

import numpy as np
from scipy import signal as sps
from scipy.ndimage import uniform_filter1d

from sleepedge.contract import EPOCH_S

EMG_RMS_UV = np.array([12.0, 7.0, 5.0, 4.5, 1.8])       # W N1 N2 N3 REM
HR_OFFSET_BPM = np.array([6.0, 2.0, -1.0, -4.0, 3.0])  # relative to the night's base rate


def _stage_at(stages: np.ndarray, t: np.ndarray, epoch_s: float) -> np.ndarray:
    st = np.asarray(stages)[np.minimum((t // epoch_s).astype(int), len(stages) - 1)]
    return np.where((st >= 0) & (st <= 4), st, 0).astype(int)


def _envelope(per_epoch: np.ndarray, n: int, fs: float, epoch_s: float) -> np.ndarray:
    centres = (np.arange(per_epoch.size) + 0.5) * epoch_s
    return np.interp(np.arange(n) / fs, centres, per_epoch)


def emg(stages: np.ndarray, fs_hz: float, rng: np.random.Generator, bursts: list[tuple[float, float]],
        epoch_s: float = EPOCH_S) -> np.ndarray:
    """Chin EMG (µV) for the night; ``bursts`` (onset_s, duration_s): arousals and movements."""
    n_ep = len(stages)
    n = int(round(n_ep * epoch_s * fs_hz))
    st = np.where((np.asarray(stages) >= 0) & (np.asarray(stages) <= 4), stages, 0).astype(int)
    drift = np.zeros(n_ep)
    e = rng.standard_normal(n_ep)
    for i in range(1, n_ep):
        drift[i] = 0.8 * drift[i - 1] + 0.6 * e[i]
    level = EMG_RMS_UV[st] * np.exp(0.25 * drift) * np.exp(0.3 * rng.standard_normal())
    env = _envelope(level, n, fs_hz, epoch_s)
    # phasic twitches: 50-250 ms bursts, mostly in REM
    tw_rate = np.array([0.5, 1.0, 0.5, 0.2, 8.0])[st] * epoch_s / 60.0
    k = rng.poisson(tw_rate)
    tw = (np.repeat(np.arange(n_ep), k) + rng.random(k.sum())) * epoch_s
    gain = np.ones(n)
    for t0 in tw:
        d = rng.uniform(0.05, 0.25)
        a, b = int(t0 * fs_hz), int((t0 + d) * fs_hz)
        gain[a:b] += rng.uniform(2.0, 6.0) * np.hanning(max(b - a, 1))[: max(0, min(b, n) - a)]
    for on, dur in bursts:
        a, b = int(on * fs_hz), int((on + dur) * fs_hz)
        if b > a:
            gain[a:min(b, n)] += rng.uniform(1.5, 4.0) * sps.windows.tukey(b - a, 0.4)[: max(0, min(b, n) - a)]
    hi = min(0.45 * fs_hz, 100.0)
    sos = sps.butter(4, [10.0, hi], btype="band", fs=fs_hz, output="sos")
    noise = sps.sosfilt(sos, rng.standard_normal(n))
    noise /= max(noise.std(), 1e-9)
    return noise * env * gain + 0.5 * rng.standard_normal(n)


# ECGSYN-like PQRST: (angle in units of the RR interval, amplitude µV, width)
_PQRST = ((-0.20, 120.0, 0.025), (-0.035, -120.0, 0.010), (0.0, 1100.0, 0.011),
          (0.035, -250.0, 0.012), (0.27, 300.0, 0.045))


def heart_rate(n_s: float, stages: np.ndarray, resp_phase_10hz: np.ndarray, events, arousals,
               rng: np.random.Generator, epoch_s: float = EPOCH_S) -> np.ndarray:
    """Instantaneous heart rate (bpm) on a 10-Hz grid."""
    fs = 10.0
    t = np.arange(int(round(n_s * fs))) / fs
    st = _stage_at(stages, t, epoch_s)
    base = rng.uniform(55.0, 72.0)
    per_epoch = HR_OFFSET_BPM[np.where((np.asarray(stages) >= 0) & (np.asarray(stages) <= 4), stages, 0)]
    hr = base + _envelope(per_epoch.astype(float), t.size, fs, epoch_s)
    hr += 1.5 * uniform_filter1d(rng.standard_normal(t.size), 300, mode="nearest") * np.sqrt(300) / 3
    rsa = np.array([2.5, 3.0, 3.5, 4.0, 2.0])[st]                 # bpm, stronger in deep NREM
    hr += rsa * np.sin(2 * np.pi * resp_phase_10hz[: t.size])
    for e in events:
        on, off = e.onset_s, e.onset_s + e.duration_s
        hr -= 5.0 * np.clip((t - on) / max(off - on, 1), 0, 1) * (t <= off)   # progressive bradycardia
    for on, dur in arousals:
        hr += 12.0 * np.exp(-np.clip(t - on, 0, None) / 6.0) * (t >= on) * np.clip((t - on) / 2.0, 0, 1)
    return np.clip(hr, 35.0, 150.0)


def ecg(n_s: float, fs_hz: float, hr_bpm_10hz: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """ECG lead II (µV) and the R-peak times (s) from a 10-Hz heart-rate trace."""
    n = int(round(n_s * fs_hz))
    beats_phase = np.cumsum(hr_bpm_10hz / 60.0) / 10.0
    k = np.arange(1, int(beats_phase[-1]) + 1)
    r_times = np.interp(k, beats_phase, np.arange(beats_phase.size) / 10.0)
    rr = np.diff(np.concatenate([[r_times[0] - 60.0 / hr_bpm_10hz[0]], r_times]))
    half = int(0.45 * fs_hz)
    tt = np.arange(-half, half + 1) / fs_hz
    out = np.zeros(n + 2 * half + 1)
    gain = np.exp(0.1 * rng.standard_normal()) * 1.0
    # beats grouped by rounded RR (QT scales ~sqrt(RR)), vectorised per group
    rr_q = np.round(np.clip(rr, 0.4, 1.8), 2)
    for q in np.unique(rr_q):
        sel = np.flatnonzero(rr_q == q)
        s = np.sqrt(q)
        beat = np.zeros(tt.size)
        for ang, a, w in _PQRST:
            mu = ang * (s if ang > 0.1 else 1.0)
            beat += a * np.exp(-0.5 * ((tt - mu) / (w * (s if ang > 0.1 else 1.0))) ** 2)
        beat *= gain
        idx = (np.round(r_times[sel] * fs_hz).astype(int) + half)[:, None] + np.arange(-half, half + 1)[None]
        idx = np.clip(idx, 0, out.size - 1)
        np.add.at(out, idx.ravel(), np.broadcast_to(beat, idx.shape).ravel())
    x = out[half: half + n]
    t = np.arange(n) / fs_hz
    x += 40.0 * np.sin(2 * np.pi * 0.25 * t + rng.uniform(0, 2 * np.pi))     # baseline wander
    x += 5.0 * rng.standard_normal(n)
    return x, r_times
