"""Simulated nights against real ones, measured independently of the simulator's own code.

`python -m bench.sim_vs_real` writes `bench/results/sim_vs_real.json`:

1. ``smd``: the issue-17 check on every EEG/EOG derivation of every montage, several seeds and
   AHI values. Signals are read back from the written EDF with pyedflib; features with scipy only
   (resample to 100 Hz, FIR band-pass EEG 0.5-30 Hz / EOG 0.5-15 Hz as the real set, per-night
   z-score, 30-s epochs, Welch hamming 4 s 50 % overlap median, relative band powers delta
   0.5-4, theta 4-8, alpha 8-12, sigma 12-16, beta 16-30 Hz). Each derivation is compared with
   the real channel its spectra are calibrated on (`sleepedge.simulate.night.REAL_REFERENCE`:
   central / occipital -> Pz-Oz, frontal -> Fpz-Cz, EOG -> EOG horizontal) over the 151 real
   band-power nights that are NOT subject 0. SMD per stage x band = (mean_sim - mean_real) /
   sd_real, sd_real = SD over all real epochs of that stage (`sleepedge.simulate.realism.smd`,
   the one definition).
   ``pooled``: the same measure pooled over 24 short nights per montage (`pooled_smd`, what
   tests/test_realism.py holds to <= 0.5), and how far single REAL nights are from the pooled
   real distribution (``real_single_night_worst_abs_smd``).
2. ``raw``: the real whole night SC4001E0 (subject 0, measurement only) against a simulated night
   replaying its own band powers (``--spectra SC4001E0-PSG.npz``, sleep-edf montage) epoch by
   epoch: per-stage mean spectra at 0.25 Hz to 45 Hz (log10 ratio), amplitude distributions
   (kurtosis and peak-to-peak per epoch), EOG movement rate per stage, stage-transition
   structure (sampled hypnograms vs the real hypnogram of the same night), epoch-by-epoch band
   power correlation. The largest differences are listed under ``largest``.

Independence: the feature path here (`_fir`, `welch_epochs`, `rel_bandpower`, `to_100hz`)
deliberately re-states `sleepedge.simulate.spectra` (`measurement_fir`, `epoch_bandpower`) with
scipy only, so that a bug in the simulator's own measurement cannot hide itself. Shared on
purpose: the SMD (`realism.smd`), the loading of the real band-power nights
(`realism.load_real_bandpower`) and the test subject (`calibration.TEST_SUBJECT_PREFIXES`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import signal as sps
from scipy import stats as sst

from sleepedge.simulate.calibration import TEST_SUBJECT_PREFIXES
from sleepedge.simulate.realism import smd

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
BP_DIR = DATA / "sleep-edf-bandpower-78"
PSG = DATA / "sleep-edf" / "SC4001E0-PSG.edf"
HYP = DATA / "sleep-edf" / "SC4001EC-Hypnogram.edf"
REAL_CHANNELS = ("Fpz-Cz", "Pz-Oz", "EOG horizontal")
BANDS = ((0.5, 4.0), (4.0, 8.0), (8.0, 12.0), (12.0, 16.0), (16.0, 30.0))
BAND_NAMES = ("delta", "theta", "alpha", "sigma", "beta")
STAGES = ("W", "N1", "N2", "N3", "REM")
TEST_SUBJECT = TEST_SUBJECT_PREFIXES    # subject 0: measured against, never in the real reference


# ------------------------------------------------------------------ independent features
def _fir(lo: float, hi: float, fs: float = 100.0) -> np.ndarray:
    l_tb = min(max(0.25 * lo, 2.0), lo)
    h_tb = min(max(0.25 * hi, 2.0), fs / 2 - hi)
    n = int(np.ceil(3.3 / min(l_tb, h_tb) * fs)) | 1
    return sps.firwin(n, [lo - l_tb / 2, hi + h_tb / 2], window="hamming", pass_zero=False, fs=fs)


def to_100hz(x: np.ndarray, fs: float) -> np.ndarray:
    from fractions import Fraction

    if fs == 100.0:
        return np.asarray(x, float)
    fr = Fraction(100.0 / fs).limit_denominator(1000)
    return sps.resample_poly(np.asarray(x, float), fr.numerator, fr.denominator)


def _bandpass_z(x100: np.ndarray, band=(0.5, 30.0)) -> np.ndarray:
    """The real set's zero-phase FIR band-pass (`_fir`), then the per-night z-score."""
    y = sps.oaconvolve(x100, _fir(*band), mode="same")
    return (y - y.mean()) / max(y.std(), 1e-12)


def welch_epochs(x100: np.ndarray, band=(0.5, 30.0), epoch_s: float = 30.0):
    """Band-pass, per-night z-score, 30-s epochs, Welch (hamming 4 s, 50 %, median) -> (f, P)."""
    y = _bandpass_z(x100, band)
    n = int(epoch_s * 100)
    k = y.size // n
    f, p = sps.welch(y[: k * n].reshape(k, n), fs=100.0, window="hamming", nperseg=400, noverlap=200,
                     average="median", axis=-1)
    return f, p


def rel_bandpower(f: np.ndarray, p: np.ndarray) -> np.ndarray:
    bp = np.stack([p[:, (f >= lo) & (f < hi)].sum(1) for lo, hi in BANDS], axis=1)
    return bp / np.maximum(bp.sum(1, keepdims=True), 1e-30)


def measure_rel(x: np.ndarray, fs: float, ref_ch: str) -> np.ndarray:
    """(n_epochs, 5) relative band powers of one derivation, measured like its real reference
    channel ``ref_ch`` (EOG 0.5-15 Hz, EEG 0.5-30 Hz)."""
    band = (0.5, 15.0) if ref_ch == "EOG horizontal" else (0.5, 30.0)
    return rel_bandpower(*welch_epochs(to_100hz(x, fs), band))


def stage_means(rel: np.ndarray, st: np.ndarray) -> np.ndarray:
    """(5 stages, 5 bands) mean relative band powers; NaN for a stage without epochs."""
    return np.stack([rel[st == s].mean(0) if (st == s).any() else np.full(rel.shape[-1], np.nan) for s in range(5)])


def read_edf(path) -> dict[str, tuple[np.ndarray, float]]:
    import pyedflib

    out = {}
    with pyedflib.EdfReader(str(path)) as r:
        for i, lab in enumerate(r.getSignalLabels()):
            out[lab] = (r.readSignal(i), float(r.getSampleFrequency(i)))
    return out


# ------------------------------------------------------------------ real reference
_REAL_CACHE: dict = {}


def real_nights(exclude=TEST_SUBJECT) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(relative band powers (n, 3, 5) float64, renormalised to sum 1; stages (n,))] of the real
    band-power nights not in ``exclude`` (the 151 that are not subject 0), sorted by name.
    Read once per process."""
    key = ("nights", tuple(exclude))
    if key not in _REAL_CACHE:
        from sleepedge.simulate.realism import load_real_bandpower

        nights = []
        for name, feats, labels in load_real_bandpower(BP_DIR):
            if name.startswith(tuple(exclude)):
                continue
            x = feats[:, :, 5:10].astype(np.float64)
            nights.append((x / x.sum(-1, keepdims=True), labels))
        _REAL_CACHE[key] = nights
    return _REAL_CACHE[key]


def real_reference(exclude=TEST_SUBJECT) -> dict:
    """Per real channel: (5 stages, 5 bands) mean and SD of the relative band powers over every
    epoch of the 151 non-test real nights."""
    key = ("ref", tuple(exclude))
    if key in _REAL_CACHE:
        return _REAL_CACHE[key]
    nights = real_nights(exclude)
    x, y = np.concatenate([n[0] for n in nights]), np.concatenate([n[1] for n in nights])
    ref = {}
    for ci, ch in enumerate(REAL_CHANNELS):
        ref[ch] = {"mean": stage_means(x[:, ci], y),
                   "sd": np.stack([x[y == s, ci].std(0) for s in range(5)]),
                   "n": [int((y == s).sum()) for s in range(5)], "n_nights": len(nights)}
    _REAL_CACHE[key] = ref
    return ref


def _against_real(sim_mean: np.ndarray, ch: str) -> dict:
    """SMD (`realism.smd`) of (5, 5) simulated stage means against real channel ``ch``, and its worst cell."""
    ref = real_reference()[ch]
    z = smd(sim_mean, ref["mean"], ref["sd"])
    i, j = np.unravel_index(np.nanargmax(np.abs(z)), z.shape)
    return {"ref": ch, "smd": z, "sim_mean": sim_mean, "real_mean": ref["mean"],
            "worst": (STAGES[i], BAND_NAMES[j], float(z[i, j]), float(sim_mean[i, j]), float(ref["mean"][i, j]))}


def smd_of(signals: dict[str, tuple[np.ndarray, float]], stages: np.ndarray, table, drop=None) -> dict:
    """{label: {"kind", "ref", "smd" (5, 5), "sim_mean" (5, 5), "real_mean", "worst": (stage, band,
    value, sim, real)}}. table: label -> (kind, real reference channel) (the night's
    ``meta['derivations']``); drop: label -> boolean epoch mask of epochs to leave out (device faults)."""
    out = {}
    for lab, (kind, ch) in table.items():
        rel = measure_rel(*signals[lab], ch)
        st = np.asarray(stages)[: rel.shape[0]]
        if drop and lab in drop:
            st = np.where(drop[lab][: st.size], -1, st)
        out[lab] = {"kind": kind, **_against_real(stage_means(rel, st), ch)}
    return out


def measure_night(night, via_edf: bool = True, qc: bool = False) -> dict:
    """Every EEG/EOG derivation of a simulated night (written + read back with pyedflib when
    ``via_edf``); ``qc``: leave out the epochs of simulated device faults (`device_fault_epochs`)."""
    from sleepedge.simulate import write_night

    exg = [lab for lab in night.signals if night.roles[lab] in ("EEG", "EOG")]
    if via_edf:
        with tempfile.TemporaryDirectory() as td:
            edf, _ = write_night(night, Path(td) / "night.edf")
            sig = read_edf(edf)
    else:
        sig = {lab: (night.signals[lab], night.rates_hz[lab]) for lab in night.signals}
    sig = {lab: sig[lab] for lab in exg}
    table = {lab: (night.meta["derivations"][lab]["kind"], night.meta["derivations"][lab]["real_reference"])
             for lab in exg}
    st = night.hypnogram.stages
    drop = {lab: device_fault_epochs(night, lab, st.size) for lab in exg} if qc else None
    return smd_of(sig, st, table, drop)


def smd_night(hours: float, seed: int, ahi: float, montage: str, via_edf: bool = True, qc: bool = False, **kw) -> dict:
    """Simulate and `measure_night`."""
    from sleepedge.simulate import simulate_night

    return measure_night(simulate_night(hours=hours, seed=seed, ahi=ahi, montage=montage, **kw), via_edf, qc)


#: a short balanced "night" for pooled measures: 30 min, every stage in one bout (W N1 N2 N3 REM)
BALANCED_30MIN = np.array([0] * 8 + [1] * 8 + [2] * 16 + [3] * 14 + [4] * 14)


def real_single_night_worst(exclude=TEST_SUBJECT) -> dict[str, np.ndarray]:
    """Per real channel: worst |SMD| of each real night (151, not subject 0) against the pooled
    real reference -- how far single real nights are from the pooled distribution."""
    ref = real_reference(exclude)
    out = {ch: [] for ch in REAL_CHANNELS}
    for x, y in real_nights(exclude):
        for ci, ch in enumerate(REAL_CHANNELS):
            out[ch].append(np.nanmax(np.abs(smd(stage_means(x[:, ci], y), ref[ch]["mean"], ref[ch]["sd"]))))
    return {ch: np.asarray(v) for ch, v in out.items()}


def device_fault_epochs(night, label: str, n_ep: int) -> np.ndarray:
    """Epochs of ``label`` touched by a simulated device fault (disconnected or clipped channel,
    `meta['artefacts']`): what a recording's quality control drops before staging."""
    bad = np.zeros(n_ep, bool)
    for a in night.meta.get("artefacts", []):
        if a["kind"] in ("disconnected", "clipped") and a.get("channel") == label:
            e0, e1 = int(a["onset_s"] // 30), int((a["onset_s"] + a["duration_s"]) // 30)
            bad[e0: e1 + 1] = True
    return bad


def pooled_smd(montage: str, seeds, ahis=(5.0, 20.0, 40.0), hypnogram=BALANCED_30MIN) -> dict:
    """Simulate one short night per seed (AHI cycling through ``ahis``), in process; pool every
    derivation's epochs over the nights (leaving out epochs of simulated device faults:
    disconnected / clipped channel); SMD per stage x band against its real reference.
    -> {label_of_first_night: {"kind", "ref", "smd" (5, 5), "worst"}} (labels vary in 'variants':
    keyed by kind)."""
    from sleepedge.simulate import simulate_night

    acc: dict = {}
    for i, seed in enumerate(seeds):
        night = simulate_night(hypnogram=hypnogram, seed=int(seed), ahi=float(ahis[i % len(ahis)]), montage=montage)
        st = night.hypnogram.stages
        for lab, d in night.meta["derivations"].items():
            rel = measure_rel(night.signals[lab], night.rates_hz[lab], d["real_reference"])
            a = acc.setdefault(d["kind"], {"ref": d["real_reference"], "labels": set(), "rel": [], "st": []})
            a["labels"].add(lab)
            a["rel"].append(rel)
            a["st"].append(np.where(device_fault_epochs(night, lab, rel.shape[0]), -1, st[: rel.shape[0]]))
    return {kind: {"labels": sorted(a["labels"]), **_against_real(stage_means(np.concatenate(a["rel"]), np.concatenate(a["st"])), a["ref"])}
            for kind, a in acc.items()}


def smd_section(hours=8.0, seeds=(11, 12), ahis=(5.0, 20.0), montages=("default", "sleep-edf", "variants")) -> dict:
    rows = []
    for montage in montages:
        for seed in seeds:
            for ahi in ahis:
                t0 = time.perf_counter()
                from sleepedge.simulate import simulate_night

                night = simulate_night(hours=hours, seed=seed, ahi=ahi, montage=montage)
                res, res_qc = measure_night(night), measure_night(night, qc=True)
                faults = [a for a in night.meta["artefacts"] if a["kind"] in ("disconnected", "clipped")]
                for lab, r in res.items():
                    rows.append({"montage": montage, "seed": seed, "ahi": ahi, "label": lab, "kind": r["kind"],
                                 "ref": r["ref"], "worst_abs_smd": round(abs(r["worst"][2]), 3),
                                 "worst_abs_smd_qc": round(abs(res_qc[lab]["worst"][2]), 3),
                                 "worst": f"{r['worst'][0]} {r['worst'][1]} {r['worst'][3]:.2f} vs {r['worst'][4]:.2f} real",
                                 "worst_qc": "{} {} {:.3f} vs {:.3f} real".format(*res_qc[lab]["worst"][:2], *res_qc[lab]["worst"][3:]),
                                 "device_faults": [f"{a['kind']} {a['channel']}" for a in faults if a["channel"] == lab],
                                 "smd": np.round(r["smd"], 3).tolist(),
                                 "sim_mean": np.round(r["sim_mean"], 3).tolist()})
                print(f"  {montage:9s} seed {seed} ahi {ahi:g}: " + ", ".join(
                    f"{lab} {abs(r['worst'][2]):.2f} ({r['worst'][0]} {r['worst'][1]})" for lab, r in res.items())
                    + f"  [{time.perf_counter() - t0:.0f} s]", flush=True)
    # worst per montage x kind
    summary = {}
    for r in rows:
        key = f"{r['montage']}/{r['kind']}"
        if key not in summary or r["worst_abs_smd"] > summary[key]["worst_abs_smd"]:
            summary[key] = {k: r[k] for k in ("montage", "kind", "label", "ref", "seed", "ahi", "worst_abs_smd", "worst",
                                              "worst_abs_smd_qc", "worst_qc", "device_faults")}
    return {"hours": hours, "seeds": list(seeds), "ahis": list(ahis), "rows": rows, "worst_by_derivation": summary}


# ------------------------------------------------------------------ raw whole night
def real_night_epochs():
    """Real SC4001E0 signals (100 Hz) and its 30-s stages (0..4, -100), aligned from t = 0."""
    from sleepedge.scoring import read_scoring

    # the file is 1 byte longer than its header says: pyedflib refuses it; read with sleepedge's reader
    try:
        sig = read_edf(PSG)
    except OSError:
        from sleepedge.edf import open_edf

        sig = {}
        with open_edf(PSG) as rd:
            for lab in ("EEG Fpz-Cz", "EEG Pz-Oz", "EOG horizontal"):
                sig[lab] = (rd.read(lab), rd.header.signal(lab).fs_hz)
    hyp, _ = read_scoring(HYP)
    return sig, np.asarray(hyp.stages, int)


def _epochs(x100: np.ndarray, n_ep: int, band=(0.5, 30.0)) -> np.ndarray:
    return _bandpass_z(x100, band)[: n_ep * 3000].reshape(n_ep, 3000)


def _spectra_45(x100: np.ndarray, n_ep: int):
    """Per-epoch Welch PSD 0.25-Hz resolution to 45 Hz after 0.3-45 Hz band-pass and z-score."""
    f, p = welch_epochs(x100, (0.3, 45.0))
    keep = (f >= 0.25) & (f <= 45.0)
    return f[keep], p[:n_ep, keep]


def eye_movement_rate(eog100: np.ndarray, n_ep: int, thr_sd: float = 3.0) -> np.ndarray:
    """Eye movements per minute in each epoch: 0.3-5 Hz EOG, slope (µV/s over 0.1 s) peaks above
    ``thr_sd`` x the night's robust SD of the slope, at least 0.3 s apart."""
    sos = sps.butter(2, [0.3, 5.0], btype="band", fs=100.0, output="sos")
    y = sps.sosfiltfilt(sos, eog100)
    slope = np.abs(y[10:] - y[:-10])
    mad = np.median(np.abs(slope - np.median(slope))) * 1.4826
    pk, _ = sps.find_peaks(slope, height=np.median(slope) + thr_sd * mad, distance=30)
    counts = np.bincount(pk // 3000, minlength=n_ep)[:n_ep]
    return counts * 2.0


def transition_stats(stages_list) -> dict:
    """Pooled stage transition probabilities (bout changes, unscored epochs joined) and mean bout
    length per stage (`hypnogram_stats`)."""
    from sleepedge.simulate.calibration import bouts
    from sleepedge.simulate.hypnogram import hypnogram_stats

    stages_list = [np.asarray(st) for st in stages_list]
    trans = np.zeros((5, 5))
    for st in stages_list:
        s, _, _ = bouts(st[(st >= 0) & (st <= 4)])
        for a, b in zip(s[:-1], s[1:]):
            trans[a, b] += 1
    p = trans / np.maximum(trans.sum(1, keepdims=True), 1)
    return {"p": p, "mean_bout_epochs": hypnogram_stats(stages_list)["mean_bout_epochs"]}


def raw_section(seed: int = 7) -> dict:
    from sleepedge.simulate import simulate_night
    from sleepedge.simulate.calibration import crop_to_sleep
    from sleepedge.simulate.hypnogram import sample_hypnogram

    real, stages_full = real_night_epochs()
    bp = BP_DIR / "SC4001E0-PSG.npz"
    with np.load(bp) as d:
        lab_bp = d["labels"].astype(int)
    first = 961  # epoch 0 of the band-power night is epoch 961 of the PSG (shared/data/README.md)
    n_ep = lab_bp.size
    sim = simulate_night(seed=seed, montage="sleep-edf", spectra=bp)
    out: dict = {"real": "SC4001E0 epochs 961..961+%d (the band-power night's span)" % n_ep,
                 "sim": f"simulate_night(montage='sleep-edf', spectra=SC4001E0-PSG.npz, seed={seed})",
                 "channels": {}}
    st_real = stages_full[first:first + n_ep]
    agree = float(np.mean(st_real == np.where(lab_bp < 0, -100, lab_bp)))
    out["stage_alignment_agreement"] = agree
    st = lab_bp
    largest = []
    for lab in ("EEG Fpz-Cz", "EEG Pz-Oz", "EOG horizontal"):
        xr, fr = real[lab]
        xr = to_100hz(xr, fr)[first * 3000:(first + n_ep) * 3000]
        xs = to_100hz(sim.signals[lab], sim.rates_hz[lab])
        band = (0.5, 15.0) if lab.startswith("EOG") else (0.5, 30.0)
        ch: dict = {}
        # spectra 0.25 Hz to 45 Hz, per stage: log10(sim / real) of the mean PSD
        f, pr = _spectra_45(xr, n_ep)
        _, ps = _spectra_45(xs, n_ep)
        spec = {}
        for s in range(5):
            m = st == s
            if m.sum() < 5:
                continue
            ratio = np.log10(ps[m].mean(0) / pr[m].mean(0))
            worst = int(np.argmax(np.abs(ratio)))
            spec[STAGES[s]] = {"log10_ratio_0.25hz": np.round(ratio, 3).tolist(),
                               "worst_hz": float(f[worst]), "worst_log10_ratio": round(float(ratio[worst]), 3),
                               "mean_abs_log10_ratio_0.5_30": round(float(np.abs(ratio[(f >= 0.5) & (f <= 30)]).mean()), 3),
                               "mean_abs_log10_ratio_30_45": round(float(np.abs(ratio[f > 30]).mean()), 3)}
            largest.append((abs(ratio[(f >= 0.5) & (f <= 30)]).max(), f"{lab} {STAGES[s]} spectrum 0.5-30 Hz: worst "
                            f"{f[(f >= 0.5) & (f <= 30)][np.argmax(abs(ratio[(f >= 0.5) & (f <= 30)]))]:.2f} Hz, sim/real x"
                            f"{10 ** ratio[(f >= 0.5) & (f <= 30)][np.argmax(abs(ratio[(f >= 0.5) & (f <= 30)]))]:.2f}"))
        ch["freqs_hz"] = [float(f[0]), float(f[-1]), float(f[1] - f[0])]
        ch["spectra"] = spec
        # amplitude distributions per epoch (after the real set's band-pass, z-scored per night)
        er, es = _epochs(xr, n_ep, band), _epochs(xs, n_ep, band)
        kr, ks = sst.kurtosis(er, axis=1, fisher=False), sst.kurtosis(es, axis=1, fisher=False)
        ppr, pps = np.ptp(er, axis=1), np.ptp(es, axis=1)
        amp = {}
        for s in range(5):
            m = st == s
            if m.sum() < 5:
                continue
            amp[STAGES[s]] = {"kurtosis_median": [round(float(np.median(ks[m])), 2), round(float(np.median(kr[m])), 2)],
                              "kurtosis_p90": [round(float(np.percentile(ks[m], 90)), 2), round(float(np.percentile(kr[m], 90)), 2)],
                              "ptp_median_z": [round(float(np.median(pps[m])), 2), round(float(np.median(ppr[m])), 2)],
                              "ptp_p90_z": [round(float(np.percentile(pps[m], 90)), 2), round(float(np.percentile(ppr[m], 90)), 2)]}
            largest.append((abs(np.log(np.median(ks[m]) / np.median(kr[m]))) * 3,
                            f"{lab} {STAGES[s]} kurtosis median sim {np.median(ks[m]):.2f} vs real {np.median(kr[m]):.2f}"))
            pr90 = np.percentile(pps[m], 90) / np.percentile(ppr[m], 90)
            largest.append((abs(np.log10(pr90)), f"{lab} {STAGES[s]} peak-to-peak p90 sim/real x{pr90:.2f}"))
        ch["amplitude [sim, real]"] = amp
        # epoch-by-epoch: relative band powers of the same epoch, sim vs real
        fr_, pr_ = welch_epochs(xr, band)
        fs_, ps_ = welch_epochs(xs, band)
        rr, rs = rel_bandpower(fr_, pr_)[:n_ep], rel_bandpower(fs_, ps_)[:n_ep]
        ok = (st >= 0) & (st <= 4)
        ch["epoch_by_epoch"] = {b: {"r": round(float(np.corrcoef(rr[ok, j], rs[ok, j])[0, 1]), 3),
                                    "mean_abs_diff": round(float(np.abs(rr[ok, j] - rs[ok, j]).mean()), 4)}
                                for j, b in enumerate(BAND_NAMES)}
        out["channels"][lab] = ch
    # EOG movement rate per stage (per minute)
    xr = to_100hz(*real["EOG horizontal"])[first * 3000:(first + n_ep) * 3000]
    xs = to_100hz(sim.signals["EOG horizontal"], sim.rates_hz["EOG horizontal"])
    mr, ms = eye_movement_rate(xr, n_ep), eye_movement_rate(xs, n_ep)
    out["eog_movements_per_min [sim, real]"] = {STAGES[s]: [round(float(ms[st == s].mean()), 2), round(float(mr[st == s].mean()), 2)]
                                                for s in range(5) if (st == s).any()}
    for s in range(5):
        if (st == s).any():
            a, b = ms[st == s].mean(), mr[st == s].mean()
            largest.append((abs(np.log10((a + 0.5) / (b + 0.5))), f"EOG movements/min {STAGES[s]} sim {a:.1f} vs real {b:.1f}"))
    # stage-transition structure: sampled hypnograms vs the real night's hypnogram
    real_st = crop_to_sleep(stages_full)
    sims = [sample_hypnogram(real_st.size, np.random.default_rng(9000 + i)) for i in range(40)]
    tr, ts = transition_stats([real_st]), transition_stats(sims)
    out["transitions"] = {"real_p": np.round(tr["p"], 3).tolist(), "sim_p": np.round(ts["p"], 3).tolist(),
                          "real_mean_bout_epochs": np.round(tr["mean_bout_epochs"], 2).tolist(),
                          "sim_mean_bout_epochs": np.round(ts["mean_bout_epochs"], 2).tolist(),
                          "note": "one real night against 40 sampled nights of the same length; one night is a small sample"}
    for a in range(5):
        for b in range(5):
            if a != b:
                largest.append((abs(tr["p"][a, b] - ts["p"][a, b]),
                                f"transition {STAGES[a]}->{STAGES[b]} sim {ts['p'][a, b]:.2f} vs real {tr['p'][a, b]:.2f}"))
    largest.sort(key=lambda t: -t[0])
    out["largest"] = [t[1] for t in largest[:15]]
    return out


def _jsonable(o):
    if isinstance(o, dict):
        return {k: _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return o


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=8.0)
    ap.add_argument("--seeds", default="11,12")
    ap.add_argument("--ahis", default="5,20")
    ap.add_argument("--montages", default="default,sleep-edf,variants")
    ap.add_argument("--sections", default="smd,pooled,raw")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "sim_vs_real.json"))
    a = ap.parse_args(argv)
    res: dict = {"_run": {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": " ".join(sys.argv)}}
    out = Path(a.out)
    if out.exists():
        try:
            res.update({k: v for k, v in json.loads(out.read_text()).items() if k != "_run"})
        except ValueError:
            pass
    secs = a.sections.split(",")
    if "smd" in secs:
        res["smd"] = smd_section(a.hours, tuple(int(s) for s in a.seeds.split(",")),
                                 tuple(float(s) for s in a.ahis.split(",")), tuple(a.montages.split(",")))
        for k, v in res["smd"]["worst_by_derivation"].items():
            print(f"{k:28s} {v['label']:16s} vs {v['ref']:15s} {v.get('worst_abs_smd', 0):.2f}  {v['worst']} (seed {v['seed']}, "
                  f"ahi {v['ahi']:g}) faults {v.get('device_faults')}")
    if "pooled" in secs:
        real = real_single_night_worst()
        res["real_single_night_worst_abs_smd"] = {
            ch: {"n_nights": int(v.size), "p5_p25_p50_p75_p95": np.round(np.percentile(v, [5, 25, 50, 75, 95]), 3).tolist(),
                 "fraction_le_0.5": round(float((v <= 0.5).mean()), 3)} for ch, v in real.items()}
        pooled = {"nights": "24 x 30 min (BALANCED_30MIN: W 8, N1 8, N2 16, N3 14, REM 14 epochs), seeds 1-24, "
                            "AHI 5/20/40 in turn, artefacts on, device-fault epochs left out", "montages": {}}
        for montage in a.montages.split(","):
            r = pooled_smd(montage, range(1, 25))
            pooled["montages"][montage] = {k: {"labels": v["labels"], "ref": v["ref"],
                                               "worst_abs_smd": round(abs(v["worst"][2]), 3),
                                               "worst": "{} {} {:.3f} vs {:.3f} real".format(*v["worst"][:2], *v["worst"][3:]),
                                               "smd": np.round(v["smd"], 3).tolist()} for k, v in r.items()}
            for k, v in pooled["montages"][montage].items():
                print(f"pooled {montage:9s} {k:9s} {v['labels']} vs {v['ref']}: {v['worst_abs_smd']:.2f} ({v['worst']})", flush=True)
        res["pooled"] = pooled
    if "raw" in secs:
        res["raw"] = raw_section()
        print("\n".join(res["raw"]["largest"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_jsonable(res), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
