"""Fit the simulator's parameters on real recordings and ship them as small files.

Run once (``python -c "from sleepedge.simulate.calibration import calibrate; calibrate()"``); the package then works
without ``../shared``. Outputs in ``sleepedge/simulate/params/``:

- ``hypnogram_model.json``  semi-Markov stage model fitted on the 18 Sleep-EDF-20 hypnograms that
  are not subject 0:
  stage-to-stage transition counts per hour of the night, bout lengths (epochs of 30 s) per
  stage and third of the night, the initial wake bout lengths. Raw integer counts, so a re-fit
  compares exactly.
- ``spectral_model.json``   per-stage distributions of the per-epoch band powers of the 151
  Sleep-EDF-78 nights that are not subject 0 (the test subject, see TEST_SUBJECT_PREFIXES): for each channel (Fpz-Cz, Pz-Oz, EOG horizontal) the log relative powers
  of delta..beta and the per-night z-scored log delta power; mean, within-night covariance,
  between-night covariance and the lag-1 epoch-to-epoch autocorrelation (AR(1) drift); and the
  ``bursts`` (movement / muscle) model: per stage, the fraction of epochs whose total power in
  BOTH EEG channels jumps > BURST_Z robust SD above that night's stage median, the quantiles of
  that jump, and the mean relative band powers of those epochs per channel (their spectrum);
  ``low_freq_slope``: the PSD's 1/f^a rise below the delta centre, fitted on the YASA N2/N3 EEG.
- ``transients.npz``        real waveforms cut out of the YASA tutorial snippets (BSD-3):
  spindles (N2 EEG, 200 Hz), slow waves (N3 EEG, 100 Hz), REM eye movements (LOC EOG, 256 Hz).

Shapes/units: stage codes 0..4 (W, N1, N2, N3, REM), IGNORE = -100; epochs of 30 s; waveforms
in µV at their stored rate (``*_fs_hz``).
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
from pathlib import Path

import numpy as np
from scipy import signal as sps

from sleepedge.contract import EPOCH_S
from sleepedge.errors import SleepEdgeError

PARAMS_DIR = Path(__file__).resolve().parent / "params"
HYPNOGRAM_JSON = "hypnogram_model.json"
SPECTRAL_JSON = "spectral_model.json"
TRANSIENTS_NPZ = "transients.npz"

#: default location of the real fixtures, relative to the repository root
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

N_HOUR_BINS = 10          # transition matrices per hour since lights-off (last bin: >= 9 h)
N_THIRDS = 3              # bout-length distributions per third of an 8-h night (0-3, 3-6, >=6 h)
WAKE_BUFFER_S = 1800.0    # wake kept before sleep onset / after final awakening (as the band-power set)
BAND_NAMES = ("delta", "theta", "alpha", "sigma", "beta")
#: Sleep-EDF subject 0 (SC4001*, SC4002*) is the project's real TEST subject: measured against,
#: never fitted on (its band-power nights and hypnograms are left out of every fit here)
TEST_SUBJECT_PREFIXES = ("SC4001", "SC4002")
BURST_Z = 3.0             # burst epoch: ln total power > BURST_Z robust SD above the night's stage median
SPECTRAL_CHANNELS = ("Fpz-Cz", "Pz-Oz", "EOG horizontal")


class CalibrationError(SleepEdgeError):
    """Real calibration data missing or unreadable."""


def is_test_subject(name: str | Path) -> bool:
    """A file of Sleep-EDF subject 0 (`TEST_SUBJECT_PREFIXES`): every fit here leaves it out."""
    return Path(name).name.startswith(TEST_SUBJECT_PREFIXES)


def hour_bin(epoch_index: np.ndarray | int, epoch_s: float = EPOCH_S) -> np.ndarray:
    """Hour-of-night bin (0..N_HOUR_BINS-1) of an epoch index counted from lights-off."""
    return np.minimum(np.asarray(epoch_index) * epoch_s // 3600, N_HOUR_BINS - 1).astype(int)


def third_bin(epoch_index: np.ndarray | int, epoch_s: float = EPOCH_S) -> np.ndarray:
    """Bout-length bin: 0 for hours 0-3, 1 for 3-6, 2 after 6 h."""
    return np.minimum(np.asarray(epoch_index) * epoch_s // (3 * 3600), N_THIRDS - 1).astype(int)


def crop_to_sleep(stages: np.ndarray, buffer_s: float = WAKE_BUFFER_S, epoch_s: float = EPOCH_S) -> np.ndarray:
    """Keep ``buffer_s`` of record around the sleep period (first to last non-wake scored epoch)."""
    stages = np.asarray(stages)
    sleep = np.flatnonzero((stages >= 1) & (stages <= 4))
    if sleep.size == 0:
        return stages[:0]
    buf = int(round(buffer_s / epoch_s))
    return stages[max(0, sleep[0] - buf): sleep[-1] + 1 + buf]


def bouts(stages: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run-length encoding -> (stage, start_epoch, length_epochs), IGNORE runs included."""
    stages = np.asarray(stages)
    if stages.size == 0:
        return (np.zeros(0, int),) * 3
    change = np.flatnonzero(np.diff(stages)) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [stages.size]]))
    return stages[starts].astype(int), starts, lengths


def _scored(stages: np.ndarray) -> np.ndarray:
    """Drop unscored/movement epochs (IGNORE), joining the scored neighbours."""
    stages = np.asarray(stages)
    return stages[(stages >= 0) & (stages <= 4)]


def load_real_hypnograms(directory: Path) -> list[tuple[str, np.ndarray]]:
    """Read every ``*Hypnogram.edf`` in ``directory`` with the core reader (sorted names)."""
    from sleepedge.scoring import read_scoring

    files = sorted(Path(directory).glob("*Hypnogram.edf"))
    if not files:
        raise CalibrationError(f"{directory}: no *Hypnogram.edf files; point to ../shared/data/sleep-edf-hypnograms-sc20")
    out = []
    for f in files:
        hyp, _ = read_scoring(f)
        if float(hyp.epoch_s) != EPOCH_S:
            raise CalibrationError(f"{f}: epochs of {hyp.epoch_s} s; expected {EPOCH_S} s")
        out.append((f.name, np.asarray(hyp.stages, dtype=int)))
    return out


def fit_hypnogram_model(nights: list[tuple[str, np.ndarray]]) -> dict:
    """Semi-Markov stage model from (name, stages) pairs. Counts only: deterministic, exact.
    Subject 0's nights (`is_test_subject`) are left out, whoever passes them."""
    nights = [(name, st) for name, st in nights if not is_test_subject(name)]
    trans = np.zeros((N_HOUR_BINS, 5, 5), dtype=int)
    bout_lengths: list[list[list[int]]] = [[[] for _ in range(5)] for _ in range(N_THIRDS)]
    initial_wake: list[int] = []
    n_epochs = []
    for _, stages in nights:
        st = _scored(crop_to_sleep(stages))
        if st.size == 0:
            continue
        n_epochs.append(int(st.size))
        s, start, length = bouts(st)
        if s[0] == 0:
            initial_wake.append(int(length[0]))
        for i in range(len(s)):
            if i > 0 or s[0] != 0:
                bout_lengths[int(third_bin(start[i]))][s[i]].append(int(length[i]))
            if i + 1 < len(s):
                trans[int(hour_bin(start[i + 1])), s[i], s[i + 1]] += 1
    return {
        "model": "semi-markov/1",
        "epoch_s": EPOCH_S,
        "stages": ["W", "N1", "N2", "N3", "REM"],
        "hour_bins": N_HOUR_BINS,
        "transition_counts": trans.tolist(),        # [hour][from][to], bout changes only
        "bout_lengths": bout_lengths,               # [third][stage] -> list of epochs
        "initial_wake_bouts": initial_wake,         # epochs of wake before the first sleep epoch
        "night_epochs": n_epochs,
        "provenance": {
            "files": [name for name, _ in nights],
            "source": "PhysioNet Sleep-EDF Expanded SC-20 hypnograms (ODC-By 1.0); subject 0 (the test subject) left out",
            "crop": f"{WAKE_BUFFER_S:.0f} s of wake around the sleep period; unscored/movement epochs joined",
        },
    }


def fit_spectral_model(directory: Path, files: list[Path] | None = None) -> dict:
    """Per-stage band-power distributions of the real Sleep-EDF-78 band-power nights (subject 0's
    left out, `is_test_subject`, also from an explicit ``files``)."""
    files = sorted(Path(directory).glob("SC4*-PSG.npz")) if files is None else files
    files = [f for f in files if not is_test_subject(f)]
    if not files:
        raise CalibrationError(f"{directory}: no SC4*-PSG.npz; point to ../shared/data/sleep-edf-bandpower-78")
    n_dim = 6 * len(SPECTRAL_CHANNELS)
    per_stage_x: list[list[np.ndarray]] = [[] for _ in range(5)]
    per_stage_rel: list[list[np.ndarray]] = [[] for _ in range(5)]
    night_totals = []
    night_means: list[list[np.ndarray]] = [[] for _ in range(5)]
    lag_pairs: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(5)]
    burst_res: list[list[np.ndarray]] = [[] for _ in range(5)]      # (n, 2) ln total - night-stage median, EEG
    burst_rel: list[np.ndarray] = []                                # rel band powers of burst epochs (n, 3, 5)
    burst_flags: list[list[np.ndarray]] = [[] for _ in range(5)]
    for f in files:
        with np.load(f) as d:
            feats = d["features"].astype(np.float64)
            labels = d["labels"].astype(int)
        x = feature_vector(feats)
        night_totals.append(np.exp(feats[:, :, 0:5]).sum(-1).mean(0))
        for st in range(5):
            m = labels == st
            if m.sum() < 2:
                continue
            xs = x[m]
            per_stage_x[st].append(xs - xs.mean(0))
            per_stage_rel[st].append(feats[m][:, :, 5:10])
            night_means[st].append(xs.mean(0))
            idx = np.flatnonzero(m)
            consec = idx[:-1][np.diff(idx) == 1]
            r = x - xs.mean(0)
            lag_pairs[st].append((r[consec], r[consec + 1]))
            lt = xs[:, [5, 11]]
            burst_res[st].append(lt - np.median(lt, 0))
            burst_flags[st].append(feats[m][:, :, 5:10])
    stages_out = []
    bursts = {"z": BURST_Z, "rate_per_epoch": [], "excess_ln_quantiles": [], "quantile_levels": [0.1, 0.25, 0.5, 0.75, 0.9]}
    for st in range(5):
        res = np.concatenate(burst_res[st])
        rsd = 1.4826 * np.median(np.abs(res - np.median(res, 0)), 0)
        hit = np.all(res > BURST_Z * rsd, axis=1)
        bursts["rate_per_epoch"].append(round(float(hit.mean()), 6))
        ex = res[hit].mean(1) if hit.any() else np.zeros(1)
        bursts["excess_ln_quantiles"].append(np.round(np.quantile(ex, bursts["quantile_levels"]), 4).tolist())
        rel = np.concatenate(burst_flags[st])[hit]
        burst_rel.append(rel)
    rel = np.concatenate(burst_rel).astype(np.float64)
    bursts["rel_bandpower"] = np.round((rel / rel.sum(-1, keepdims=True)).mean(0), 5).tolist()   # (3 channels, 5 bands)
    bursts["n_epochs"] = int(rel.shape[0])
    bursts["note"] = ("movement/muscle bursts: an epoch whose ln total 0.5-30 Hz power is > z robust SD above the night's "
                      "median for that stage in both EEG channels (Fpz-Cz, Pz-Oz); rate = fraction of such epochs per stage, "
                      "excess = their ln power jump (mean of the two channels), rel_bandpower = their mean relative spectrum")
    for st in range(5):
        within = np.concatenate(per_stage_x[st])
        means = np.stack(night_means[st])
        a = np.concatenate([p[0] for p in lag_pairs[st]])
        b = np.concatenate([p[1] for p in lag_pairs[st]])
        rho = float(np.median(np.sum(a * b, 0) / np.sqrt(np.sum(a * a, 0) * np.sum(b * b, 0))))
        cw, cb = np.cov(within.T, bias=False), np.cov(means.T)
        rel = np.concatenate(per_stage_rel[st]).astype(np.float64)
        rel_mean = (rel / rel.sum(-1, keepdims=True)).mean(0)
        mu_rel = _match_rel_mean(means.mean(0), cw + cb, rel_mean)
        stages_out.append({
            "n_epochs": int(within.shape[0]), "n_nights": int(means.shape[0]),
            "mean": np.round(_match_measured_rel_mean(mu_rel, cw + cb, rel_mean, seed=st), 6).tolist(),
            "mean_unmeasured": np.round(mu_rel, 6).tolist(),
            "mean_log": np.round(means.mean(0), 6).tolist(),
            "rel_mean": np.round(rel_mean, 6).tolist(),
            "cov_within": np.round(cw, 6).tolist(),
            "cov_between": np.round(cb, 6).tolist(),
            "ar1": round(rho, 6),
        })
    return {
        "model": "stage-gaussian-ar1/1",
        "channels": list(SPECTRAL_CHANNELS),
        "bands": list(BAND_NAMES),
        "bands_hz": [[0.5, 4.0], [4.0, 8.0], [8.0, 12.0], [12.0, 16.0], [16.0, 30.0]],
        "mean_note": ("'mean_unmeasured' is 'mean_log' shifted (Monte Carlo, seed 0) so that sampled relative powers (the targets) "
                      "average to the real 'rel_mean'; 'mean' (used) is shifted further so that signals synthesised from "
                      "the targets and measured like the real set average to 'rel_mean' (a Welch estimate of an already "
                      "measured spectrum lowers a dominant band's share)"),
        "vector": "per channel: ln rel_delta..ln rel_beta, ln total 0.5-30 Hz power in units of the night's signal variance (log_* are ln powers of the per-night z-scored signal); channels concatenated",
        "n_dim": n_dim,
        "stages": stages_out,
        "bursts": bursts,
        # median over nights of the mean epoch power (0.5-30 Hz) in night-reference units, per channel
        "night_mean_total": np.round(np.median(np.stack(night_totals), 0), 6).tolist(),
        "provenance": {
            "files": [Path(f).name for f in files],
            "source": "Sleep-EDF-78 cassette band powers (PhysioNet ODC-By 1.0, via a public MIT repository); "
                      "subject 0 (SC4001/SC4002, the test subject) left out",
        },
    }


def fit_amplitude_anchor(short_psg: Path, spectral: dict) -> dict:
    """µV scale of each channel's night: the z-scored band powers only give levels relative to
    the night's signal SD, so anchor it on the real Sleep-EDF wake EEG in ``short_psg.edf``:
    SD_night = rms(wake, band-passed like the band-power set) / sqrt(mean wake total power)."""
    from sleepedge.edf import open_edf
    from sleepedge.simulate.spectra import apply_measurement_filter

    labels = ("EEG Fpz-Cz", "EEG Pz-Oz", "EOG horizontal")
    bands = ((0.5, 30.0), (0.5, 30.0), (0.5, 15.0))
    out = {}
    with open_edf(short_psg) as rd:
        for ci, (lab, band) in enumerate(zip(labels, bands)):
            fs = rd.header.signal(lab).fs_hz
            if fs != 100.0:
                raise CalibrationError(f"{short_psg}: {lab} at {fs:g} Hz; expected the 100-Hz Sleep-EDF signal")
            rms = float(np.std(apply_measurement_filter(rd.read(lab), band)))
            wake_total = float(np.exp(spectral["stages"][0]["mean"][ci * 6 + 5]))
            out[SPECTRAL_CHANNELS[ci]] = round(rms / np.sqrt(wake_total), 4)
    return {"night_sd_uv": out, "source": f"{Path(short_psg).name} (300 s of real Sleep-EDF wake)"}


def _shift_rel_mean(mu: np.ndarray, cov: np.ndarray, rel_mean: np.ndarray, rng: np.random.Generator, n: int,
                    n_iter: int, measure) -> np.ndarray:
    """Shift the log-relative means ``mu`` until ``measure`` of the relative powers of Gaussian
    draws (fixed: ``n`` from ``rng``, reused across iterations) averages to ``rel_mean``.
    measure: (n, n_ch, 5) relative powers -> (n_ch, 5) their measured mean."""
    w, v = np.linalg.eigh(cov)
    z = rng.standard_normal((n, mu.size)) @ (v * np.sqrt(np.clip(w, 0, None))).T
    mu = mu.copy()
    n_ch = mu.size // 6
    for _ in range(n_iter):
        lr = (mu + z).reshape(n, n_ch, 6)[:, :, :5]
        r = np.exp(lr - lr.max(-1, keepdims=True))
        mu.reshape(n_ch, 6)[:, :5] += np.log(rel_mean / measure(r / r.sum(-1, keepdims=True)))
    return mu


def _match_rel_mean(mu: np.ndarray, cov: np.ndarray, rel_mean: np.ndarray, n: int = 20000,
                    n_iter: int = 8) -> np.ndarray:
    """Shift the log-relative means so that exp + renormalise of Gaussian draws averages to the
    real arithmetic mean relative powers (a log-normal mean is not exp of the log mean).
    Deterministic: fixed draws (seed 0) reused across iterations."""
    return _shift_rel_mean(mu, cov, rel_mean, np.random.default_rng(0), n, n_iter, lambda r: r.mean(0))


def _match_measured_rel_mean(mu: np.ndarray, cov: np.ndarray, rel_mean: np.ndarray, seed: int = 0,
                             n: int = 600, n_iter: int = 3) -> np.ndarray:
    """Shift the log-relative means once more so that signals SYNTHESISED from the model and
    MEASURED the way the real set was (band-pass, Welch median per 30-s epoch, relative powers)
    average to the real ``rel_mean``. The real values are already measurements; a synthesised
    epoch is measured a second time, and the estimation noise of a 4-s-segment Welch median
    lowers the mean of a dominant band's share (a ratio is concave in its numerator: N3 delta,
    EOG delta). Monte Carlo with fixed draws (``seed``), 100-Hz synthesis."""
    from sleepedge.simulate.spectra import epoch_bandpower, shaped_noise

    def measure(r):
        got = []
        for c in range(r.shape[1]):
            band = (0.5, 15.0) if c == 2 else (0.5, 30.0)
            x = shaped_noise(r[:, c] * 100.0, 100.0, np.random.default_rng([11, seed, c]), band_hz=band)
            bp = epoch_bandpower(x, 100.0, band_hz=band)
            got.append((bp / bp.sum(-1, keepdims=True)).mean(0))
        return np.stack(got)

    return _shift_rel_mean(mu, cov, rel_mean, np.random.default_rng([7, seed]), n, n_iter, measure)


def feature_vector(features: np.ndarray) -> np.ndarray:
    """(n, 3, 10) real band-power features -> (n, 18) model vector (see ``fit_spectral_model``)."""
    rel = np.clip(features[:, :, 5:10], 1e-6, None)
    rel = rel / rel.sum(-1, keepdims=True)
    # log_* are ln band powers of the per-night z-scored signal: ln total power in night-variance units
    log_total = np.log(np.exp(features[:, :, 0:5].astype(np.float64)).sum(-1, keepdims=True))
    v = np.concatenate([np.log(rel), log_total], axis=-1)
    return v.reshape(len(features), -1)


def _segments_above(env: np.ndarray, thr: float, min_n: int, max_n: int) -> list[tuple[int, int]]:
    m = np.concatenate([[False], env > thr, [False]])
    d = np.diff(m.astype(int))
    on, off = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    return [(a, b) for a, b in zip(on, off) if min_n <= b - a <= max_n]


def build_transient_library(snippets: Path) -> dict[str, np.ndarray]:
    """Cut real transients out of the YASA snippets (BSD-3). Returns arrays for ``transients.npz``."""
    snippets = Path(snippets)
    try:
        sp = np.loadtxt(snippets / "data_N2_spindles_15sec_200Hz.txt")
        sw = np.loadtxt(snippets / "data_N3_no-spindles_30sec_100Hz.txt")
        with np.load(snippets / "data_EOGs_REM_256Hz.npz") as d:
            eog = d["data"].astype(np.float64)
            eog_fs = float(d["sf"])
    except OSError as err:
        raise CalibrationError(f"{snippets}: cannot read the YASA snippets ({err}); point to ../shared/data/yasa-snippets") from None
    # spindles: 11-16 Hz band, envelope above 3x its median for 0.4-2.5 s
    fs = 200.0
    sos = sps.butter(4, [11, 16], btype="band", fs=fs, output="sos")
    bp = sps.sosfiltfilt(sos, sp)
    env = np.abs(sps.hilbert(bp))
    env_s = np.convolve(env, np.ones(20) / 20, mode="same")
    segs = _segments_above(env_s, 3.0 * np.median(env_s), int(0.4 * fs), int(2.5 * fs))
    L = int(3.0 * fs)
    spindles = []
    for a, b in segs:
        c = (a + b) // 2
        seg = bp[max(0, c - L // 2): c - L // 2 + L]
        if seg.size == L:
            w = np.zeros(L)
            half = (b - a) // 2 + int(0.15 * fs)
            lo, hi = max(0, L // 2 - half), min(L, L // 2 + half)
            w[lo:hi] = sps.windows.tukey(hi - lo, 0.5)
            spindles.append(seg * w)
    # slow waves: 0.3-2 Hz band, negative peaks below -20 uV in the N3 snippet (the snippet is a
    # low-amplitude N3; amplitudes are re-drawn at use) and below -30 uV in the N2 snippet
    # (K-complexes, resampled 200 -> 100 Hz); waveforms normalised to unit peak-to-peak
    fs_sw = 100.0
    sos = sps.butter(2, [0.3, 2.0], btype="band", fs=fs_sw, output="sos")
    Lsw = int(3.0 * fs_sw)
    slow, kcs = [], []
    for x, height, out in ((sw, 20.0, slow), (sps.resample_poly(sp, 1, 2), 30.0, kcs)):
        lf = sps.sosfiltfilt(sos, x)
        neg, _ = sps.find_peaks(-lf, height=height, distance=int(0.8 * fs_sw))
        for p in neg:
            a = p - Lsw // 2
            if a < 0 or a + Lsw > lf.size:
                continue
            seg = lf[a:a + Lsw] * sps.windows.tukey(Lsw, 0.6)
            out.append(seg / np.ptp(seg))
    # eye movements: LOC 0.3-10 Hz, peaks of |LOC - ROC| > 100 uV (opposite-phase deflections)
    sos = sps.butter(2, [0.3, 10.0], btype="band", fs=eog_fs, output="sos")
    loc = sps.sosfiltfilt(sos, eog[0])
    roc = sps.sosfiltfilt(sos, eog[1])
    diff = np.abs(loc - roc)
    peaks, _ = sps.find_peaks(diff, height=100, distance=int(0.5 * eog_fs))
    Lem = int(1.5 * eog_fs)
    ems = []
    for p in peaks:
        a = p - Lem // 2
        if a < 0 or a + Lem > loc.size:
            continue
        ems.append((loc[a:a + Lem] - loc[a:a + Lem].mean()) * sps.windows.tukey(Lem, 0.5))
    # eye-movement size relative to the EOG's own level (the units the band-power targets are
    # in): LOC peak-to-peak over 1.5 s / sqrt(median-Welch 0.5-15 Hz power of its 30-s epoch);
    # and how many such movements REM carries per minute
    from sleepedge.simulate.spectra import epoch_bandpower

    ep_rms = np.sqrt(epoch_bandpower(eog[0], eog_fs, band_hz=(0.5, 15.0)).sum(1))
    ratio = [np.ptp(loc[p - Lem // 2: p - Lem // 2 + Lem]) / ep_rms[int(p / eog_fs // EPOCH_S)]
             for p in peaks if p - Lem // 2 >= 0 and p - Lem // 2 + Lem <= loc.size and int(p / eog_fs // EPOCH_S) < ep_rms.size]
    em_rate = peaks.size / (eog.shape[1] / eog_fs / 60.0)
    ems = ems[:: max(1, len(ems) // 60)][:60]
    if not spindles or not slow or not kcs or not ems:
        raise CalibrationError(f"{snippets}: transient extraction found spindles={len(spindles)} slow waves={len(slow)} "
                               f"K-complexes={len(kcs)} eye movements={len(ems)}; expected some of each")
    return {
        "spindles": np.asarray(spindles, np.float32), "spindles_fs_hz": np.float32(fs),
        "slow_waves": np.asarray(slow, np.float32), "slow_waves_fs_hz": np.float32(fs_sw),
        "k_complexes": np.asarray(kcs, np.float32),
        "eye_movements": np.asarray(ems, np.float32), "eye_movements_fs_hz": np.float32(eog_fs),
        "eye_movement_ptp_per_rms": np.quantile(ratio, np.linspace(0.05, 0.95, 19)).astype(np.float32),
        "rem_eye_movements_per_min": np.float32(em_rate),
        "provenance": np.array(
            "Cut from YASA tutorial data (github.com/raphaelvallat/yasa, BSD-3-Clause): "
            "data_N2_spindles_15sec_200Hz.txt, data_N3_no-spindles_30sec_100Hz.txt, data_EOGs_REM_256Hz.npz; "
            "spindles: 11-16 Hz envelope > 3x median for 0.4-2.5 s; slow waves (N3) / K-complexes (N2): 0.3-2 Hz, "
            "neg. peak < -20 / -30 uV, unit peak-to-peak; "
            "eye movements: LOC 0.3-10 Hz around |LOC-ROC| peaks > 100 uV; their LOC peak-to-peak / sqrt(median-Welch "
            "0.5-15 Hz power of the 30-s epoch) (quantiles 5..95 %) and their rate per minute of that REM recording"),
    }


def _kurtosis_30s(x: np.ndarray, fs: float, band=(0.5, 15.0)) -> float:
    """Median kurtosis of the 30-s windows of ``x`` after the real set's band-pass at 100 Hz."""
    from scipy import stats as sst

    from sleepedge.simulate.spectra import apply_measurement_filter, to_100hz

    y = apply_measurement_filter(to_100hz(x, fs), band)
    n = y.size // 3000
    return float(np.median(sst.kurtosis(y[: n * 3000].reshape(n, 3000), axis=1, fisher=False)))


def fit_eye_movement_scale(lib: dict, spectral: dict, snippets: Path, n_epochs: int = 60) -> float:
    """One factor on the real eye-movement size ratios so that SYNTHESISED REM EOG (the REM
    EOG spectrum of the model + eye movements at the measured rate and size) has the median
    30-s kurtosis of the real REM LOC the ratios were measured on (YASA data, not subject 0).
    Bisection on a fixed draw (seed 0)."""
    from sleepedge.simulate.spectra import shaped_noise

    with np.load(Path(snippets) / "data_EOGs_REM_256Hz.npz") as d:
        target = _kurtosis_30s(d["data"][0].astype(np.float64), float(d["sf"]))
    fs = 100.0
    st = spectral["stages"][4]
    lr = np.asarray(st["mean"][12:17])
    rel = np.exp(lr) / np.exp(lr).sum()
    rng = np.random.default_rng(0)
    bg = shaped_noise(np.tile(rel * 100.0, (n_epochs, 1)), fs, rng, band_hz=(0.5, 15.0))
    rate = float(lib["rem_eye_movements_per_min"])
    on = np.sort(rng.uniform(0, n_epochs * EPOCH_S, rng.poisson(rate * n_epochs * EPOCH_S / 60.0)))
    q = np.asarray(lib["eye_movement_ptp_per_rms"], float)
    ratio = np.interp(rng.random(on.size), np.linspace(0.05, 0.95, q.size), q)
    ems = lib["eye_movements"]
    fs0 = float(lib["eye_movements_fs_hz"])
    shapes = []
    for _ in on:
        w = ems[rng.integers(len(ems))].astype(float)
        n = max(4, int(round(w.size * rng.uniform(0.8, 1.25) * fs / fs0)))
        x = np.interp(np.linspace(0, w.size - 1, n), np.arange(w.size), w)
        x = x - np.linspace(x[0], x[-1], x.size)
        x *= sps.windows.tukey(x.size, 0.3)
        shapes.append(x / max(np.ptp(x), 1e-9) * (1 if rng.random() < 0.5 else -1))

    def kurt(scale):
        x = bg.copy()
        for t, r, w in zip(on, ratio, shapes):
            a = int(t * fs)
            b = min(x.size, a + w.size)
            x[a:b] += scale * r * 10.0 * w[: b - a]          # level sqrt(100) = 10
        return _kurtosis_30s(x, fs)

    lo, hi = 0.05, 3.0
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if kurt(mid) < target else (lo, mid)
    return round(0.5 * (lo + hi), 4)


def fit_low_freq_slope(snippets: Path) -> float:
    """Exponent a of the PSD's rise below the delta centre (f^-a, 0.3-1.41 Hz), so that the
    measured ratio of mean PSD at 0.5-0.8 Hz to 1.25-1.6 Hz equals the median of the real
    sleep EEG snippets (YASA N2 and N3, not subject 0), both measured like the real set
    (100 Hz, band-pass 0.5-30 Hz, Welch hamming 4 s, 50 %, median)."""
    from sleepedge.simulate.spectra import _shape_factor, apply_measurement_filter, measurement_gain

    snippets = Path(snippets)
    xs = [sps.resample_poly(np.loadtxt(snippets / "data_N2_spindles_15sec_200Hz.txt"), 1, 2),
          np.loadtxt(snippets / "data_N3_no-spindles_30sec_100Hz.txt")]
    ratios = []
    for x in xs:
        y = apply_measurement_filter(x)
        f, p = sps.welch(y, fs=100.0, window="hamming", nperseg=400, noverlap=200, average="median")
        ratios.append(p[(f >= 0.5) & (f < 0.8)].mean() / p[(f >= 1.25) & (f < 1.6)].mean())
    target = float(np.median(ratios))
    grid = np.arange(0.3, 2.0, 0.01)
    g = measurement_gain(grid)

    def ratio(a):
        psd = _shape_factor(grid, a) * g
        return psd[(grid >= 0.5) & (grid < 0.8)].mean() / psd[(grid >= 1.25) & (grid < 1.6)].mean()

    lo, hi = 0.0, 4.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ratio(mid) < target else (lo, mid)
    return round(0.5 * (lo + hi), 4)


def calibrate(data_dir: Path = SHARED_DATA, out_dir: Path = PARAMS_DIR) -> dict[str, Path]:
    """Fit everything from ``data_dir`` (the ``shared/data`` folder) and write ``out_dir``."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CalibrationError(f"{data_dir}: not a folder; pass the shared/data folder with the real fixtures")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    today = _dt.date.today().isoformat()
    hyp = fit_hypnogram_model(load_real_hypnograms(data_dir / "sleep-edf-hypnograms-sc20"))
    hyp["provenance"]["fitted"] = today
    _CACHE.pop("spectral", None)
    slope = fit_low_freq_slope(data_dir / "yasa-snippets")
    _CACHE["spectral"] = {"low_freq_slope": slope}     # the synthesis inside the fit uses it
    try:
        spec = fit_spectral_model(data_dir / "sleep-edf-bandpower-78")
    finally:
        _CACHE.pop("spectral", None)
    spec["low_freq_slope"] = slope
    spec["amplitude"] = fit_amplitude_anchor(data_dir / "sleep-edf" / "short_psg.edf", spec)
    spec["provenance"]["fitted"] = today
    lib = build_transient_library(data_dir / "yasa-snippets")
    _CACHE["spectral"] = spec                          # synthesis with the new model
    try:
        lib["eye_movement_scale"] = np.float32(fit_eye_movement_scale(lib, spec, data_dir / "yasa-snippets"))
    finally:
        _CACHE.pop("spectral", None)
    paths = {
        "hypnogram": out_dir / HYPNOGRAM_JSON,
        "spectral": out_dir / SPECTRAL_JSON,
        "transients": out_dir / TRANSIENTS_NPZ,
    }
    paths["hypnogram"].write_text(json.dumps(hyp, separators=(",", ":")) + "\n")
    paths["spectral"].write_text(json.dumps(spec, separators=(",", ":")) + "\n")
    np.savez_compressed(paths["transients"], **lib)
    return paths


_CACHE: dict[str, object] = {}


def load_params(name: str):
    """Shipped parameters: ``hypnogram``/``spectral`` (dict) or ``transients`` (dict of arrays)."""
    if name in _CACHE:
        return _CACHE[name]
    fname = {"hypnogram": HYPNOGRAM_JSON, "spectral": SPECTRAL_JSON, "transients": TRANSIENTS_NPZ}[name]
    path = PARAMS_DIR / fname
    if not path.is_file():
        raise CalibrationError(f"{path}: simulator parameters missing; run `python -m sleepedge.simulate.calibration`")
    if name == "transients":
        with np.load(path) as d:
            value = {k: d[k] for k in d.files}
    else:
        value = json.loads(path.read_text())
    _CACHE[name] = value
    return value


if __name__ == "__main__":
    print(calibrate(Path(sys.argv[1]) if len(sys.argv) > 1 else SHARED_DATA))
