"""A whole simulated PSG night: stages, signals, events, and its EDF+ / TSV files.

``simulate_night`` assembles the generators:
    stages   hypnogram.py (semi-Markov model fitted on real scorings) | a replayed scoring |
             the labels of a replayed band-power night
    EEG/EOG  spectra.py + eeg.py (real per-epoch band powers replayed or sampled, real transients)
    EMG/ECG  physio.py;  airflow, effort belts, SpO2, respiratory events: respiration.py
    device   artefacts: line noise, movement, electrode pops, clipping, a disconnected channel

Signals are float64 arrays in µV (SpO2 in %), one per channel label, at ``rates_hz[label]``;
every channel lasts exactly n_epochs x 30 s. Deterministic for a given seed: each component
draws from its own generator seeded by (seed, component name).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
from scipy import signal as sps

from sleepedge.contract import EPOCH_S, IGNORE, STAGES
from sleepedge.simulate import eeg as eeg_mod
from sleepedge.simulate import physio, respiration
from sleepedge.simulate.calibration import SPECTRAL_CHANNELS, load_params
from sleepedge.simulate.hypnogram import SimulationError, epochs_for_hours, sample_hypnogram
from sleepedge.simulate.spectra import features_to_bandpower, load_replay, night_scale, sample_features, shaped_noise

NOTICE = "SIMULATED by sleepedge simulate: not a real recording"

# montage entries: label, role, kind (site / physiology), spectral source channel index, gain
# (the spectral model's channels: 0 Fpz-Cz, 1 Pz-Oz, 2 EOG horizontal)
_DEFAULT = (
    ("C4-M1", "EEG", "central", 1, None),       # shape of the real Pz-Oz spectra, level of Fpz-Cz
    ("Fpz-Cz", "EEG", "frontal", 0, 1.0),
    ("E1-M2", "EOG", "eog", 2, 1.0),
    ("Chin EMG", "EMG", "emg", None, None),
    ("ECG II", "ECG", "ecg", None, None),
    ("Airflow", "RESP", "flow", None, None),
    ("Thorax", "RESP", "thorax", None, None),
    ("Abdomen", "RESP", "abdomen", None, None),
    ("SpO2", "SPO2", "spo2", None, None),
)
_SLEEP_EDF = (
    ("EEG Fpz-Cz", "EEG", "frontal", 0, 1.0),
    ("EEG Pz-Oz", "EEG", "posterior", 1, 1.0),
    ("EOG horizontal", "EOG", "eog", 2, 1.0),
)
# label variants seen in real systems (Sleep-EDF, NSRR/SHHS, Nox, Compumedics, Embla); the
# "variants" montage draws one per channel from the seed
LABEL_VARIANTS: dict[str, tuple[str, ...]] = {
    "central": ("C4-M1", "EEG C4-M1", "C4-A1", "EEG C4-A1", "EEG"),
    "frontal": ("Fpz-Cz", "EEG Fpz-Cz", "EEG(sec)", "F4-M1", "EEG F4-A1"),
    "eog": ("E1-M2", "EOG E1-M2", "LOC-A2", "EOG(L)", "EOG horizontal"),
    "emg": ("Chin EMG", "EMG chin", "Chin1-Chin2", "EMG submental", "EMG"),
    "ecg": ("ECG II", "ECG", "EKG", "ECG2", "ECG L"),
    "flow": ("Airflow", "Flow", "Resp oro-nasal", "AIRFLOW", "Thermistor"),
    "thorax": ("Thorax", "THOR RES", "Chest", "RIP Thorax", "Thor"),
    "abdomen": ("Abdomen", "ABDO RES", "Abdo", "RIP Abdom", "Abdominal"),
    "spo2": ("SpO2", "SaO2", "SAT", "SpO2 %", "Osat"),
}
MONTAGES = ("default", "sleep-edf", "variants")
#: the real channel each EEG/EOG site's spectra are calibrated on (and measured against): the
#: Sleep-EDF-78 band powers hold Fpz-Cz, Pz-Oz and EOG horizontal only, so central (C3/C4-M1)
#: and occipital/posterior (O1/O2-M1, Pz-Oz) derivations map to the nearest one, Pz-Oz
REAL_REFERENCE = {"frontal": "Fpz-Cz", "central": "Pz-Oz", "posterior": "Pz-Oz", "occipital": "Pz-Oz",
                  "eog": "EOG horizontal"}
RATE_LIMITS_HZ = {"EEG": (100.0, 512.0), "EOG": (100.0, 512.0), "EMG": (100.0, 512.0), "ECG": (100.0, 512.0),
                  "RESP": (10.0, 100.0), "SPO2": (1.0, 25.0)}
DEFAULT_RATES_HZ = {"EEG": 256.0, "EOG": 256.0, "EMG": 256.0, "ECG": 256.0, "RESP": 32.0, "SPO2": 4.0}
UNITS = {"EEG": "uV", "EOG": "uV", "EMG": "uV", "ECG": "uV", "RESP": "uV", "SPO2": "%"}
EVENT_TEXT = {"obstructive_apnea": "Obstructive apnea", "central_apnea": "Central apnea",
              "mixed_apnea": "Mixed apnea", "hypopnea": "Hypopnea", "desaturation": "SpO2 desaturation",
              "arousal": "Arousal"}
STAGE_TEXT = {0: "Sleep stage W", 1: "Sleep stage N1", 2: "Sleep stage N2", 3: "Sleep stage N3",
              4: "Sleep stage R", IGNORE: "Sleep stage ?"}


@dataclass
class SimulatedNight:
    """One simulated night. ``signals[label]`` (n,) float64 in ``units[label]`` at ``rates_hz[label]``."""

    signals: dict[str, np.ndarray]
    rates_hz: dict[str, float]
    units: dict[str, str]
    roles: dict[str, str]
    hypnogram: object                 # sleepedge.scoring.Hypnogram (30-s stages 0..4 / IGNORE)
    events: list                      # sleepedge.scoring.Event (respiratory, desaturation, arousal)
    meta: dict = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return float(self.hypnogram.n_epochs * self.hypnogram.epoch_s)

    @property
    def labels(self) -> list[str]:
        return list(self.signals)


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode())])


def montage_channels(montage: str, seed: int = 0) -> list[tuple[str, str, str, int | None, float | None]]:
    """(label, role, kind, spectral source, gain) for a montage name."""
    if montage == "default":
        return list(_DEFAULT)
    if montage == "sleep-edf":
        return list(_SLEEP_EDF)
    if montage == "variants":
        rng = _rng(seed, "labels")
        return [(LABEL_VARIANTS[k][int(rng.integers(len(LABEL_VARIANTS[k])))], r, k, s, g) for _, r, k, s, g in _DEFAULT]
    import difflib

    close = difflib.get_close_matches(str(montage), MONTAGES, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise SimulationError(f"--montage {montage!r}: unknown montage; {hint}expected one of {', '.join(MONTAGES)}")


def resolve_rates(channels, rates_hz: Mapping[str, float] | None, montage: str) -> dict[str, float]:
    """Per-label rate: defaults by role (sleep-edf: 100 Hz like the real files), overridden by
    ``rates_hz`` keyed by role (EEG, EOG, EMG, ECG, RESP, SPO2) or by exact label."""
    base = dict(DEFAULT_RATES_HZ)
    if montage == "sleep-edf":
        base.update(EEG=100.0, EOG=100.0)
    rates_hz = dict(rates_hz or {})
    labels = {c[0] for c in channels}
    for key in rates_hz:
        if key not in RATE_LIMITS_HZ and key not in labels:
            raise SimulationError(f"rate for {key!r}: not a role ({', '.join(RATE_LIMITS_HZ)}) or a channel of this "
                                  f"montage ({', '.join(sorted(labels))})")
    out = {}
    for label, role, *_ in channels:
        fs = rates_hz.get(label, rates_hz.get(role, base[role]))
        try:
            fs = float(fs)
        except (TypeError, ValueError):
            raise SimulationError(f"rate for {label}: {fs!r} is not a number of Hz") from None
        lo, hi = RATE_LIMITS_HZ[role]
        if not (lo <= fs <= hi) or fs != round(fs):
            raise SimulationError(f"rate for {label} ({role}): {fs:g} Hz; expected a whole number of Hz in {lo:g}-{hi:g}")
        out[label] = fs
    return out


def _stages_from(hypnogram, spectra, hours) -> tuple[np.ndarray, np.ndarray | None, str]:
    from sleepedge.scoring import Hypnogram, read_scoring

    if hypnogram is not None and spectra is not None:
        raise SimulationError("--hypnogram and --spectra both give the stage sequence; pass only one "
                              "(--spectra replays that night's own labels)")
    if spectra is not None:
        stages, vec = load_replay(spectra)
        return stages, vec, f"spectra:{Path(spectra).name}"
    if hypnogram is not None:
        if isinstance(hypnogram, Hypnogram):
            hyp = hypnogram
        elif isinstance(hypnogram, (str, Path)):
            hyp, _ = read_scoring(hypnogram)
        else:
            hyp = Hypnogram(np.asarray(hypnogram))
        if float(hyp.epoch_s) != EPOCH_S:
            raise SimulationError(f"hypnogram {hyp.source or '<array>'}: epochs of {hyp.epoch_s:g} s; "
                                  f"expected {EPOCH_S:g}-s epochs")
        if hyp.n_epochs == 0:
            raise SimulationError(f"hypnogram {hyp.source or '<array>'}: no epochs; give a scored night")
        return np.asarray(hyp.stages, np.int16), None, f"hypnogram:{hyp.source or '<array>'}"
    return None, None, "model"


def _arousal_list(stages, resp_events, rng, epoch_s=EPOCH_S):
    """Respiratory arousals (at event termination) + spontaneous ones (~8/h of sleep), in sleep only."""
    out = []
    for e in resp_events:
        if e.arousal:
            out.append((e.onset_s + e.duration_s - rng.uniform(0, 2.0), float(rng.uniform(3.0, 12.0))))
    sleep = (stages >= 1) & (stages <= 4)
    k = rng.poisson(8.0 / 120.0 * sleep)
    ep = np.repeat(np.arange(stages.size), k)
    for t in (ep + rng.random(ep.size)) * epoch_s:
        out.append((float(t), float(rng.uniform(3.0, 15.0))))
    out.sort()
    merged = []
    for on, dur in out:
        if merged and on < merged[-1][0] + merged[-1][1] + 10.0:
            continue
        merged.append((round(on, 2), round(dur, 2)))
    return merged


def _artefacts(signals, rates, roles, stages, rng, log, burst_ref=None):
    """Device and subject artefacts (modest, seed-controlled), in place; appended to ``log``.
    burst_ref: EEG/EOG label -> (spectral channel index, per-epoch target total power µV²)."""
    burst_ref = burst_ref or {}
    n_s = len(stages) * EPOCH_S
    exg = [lab for lab in signals if roles[lab] in ("EEG", "EOG", "EMG", "ECG")]
    line_hz = 50.0 if rng.random() < 0.6 else 60.0
    base: dict[float, tuple[np.ndarray, np.ndarray]] = {}
    for lab in exg:
        fs = rates[lab]
        n = signals[lab].size
        if roles[lab] in ("EEG", "EOG"):  # electrode noise (EMG and ECG carry their own)
            signals[lab] += rng.uniform(0.1, 0.5) * rng.standard_normal(n)
        if fs > 2.2 * line_hz:
            if fs not in base:
                w = 2 * np.pi * line_hz * np.arange(n) / fs
                base[fs] = (np.sin(w), np.cos(w))
            a, ph = rng.uniform(0.5, 3.0), rng.uniform(0, 2 * np.pi)
            signals[lab] += (a * np.cos(ph)) * base[fs][0] + (a * np.sin(ph)) * base[fs][1]
    log.append({"kind": "line_noise", "hz": line_hz})
    # movement / muscle bursts, all electrophysiology channels at once. Rate per stage, size and
    # spectrum are the real ones (spectral model "bursts", fitted on the 151 non-test nights):
    # an epoch jumps by F = exp(excess) in total power, F drawn from the real jumps of that stage.
    # The real set measured them with a median Welch average, so a burst that moved an epoch's
    # power covers more than half of it: 15-30 s. EEG/EOG get noise with the real burst
    # spectrum of their reference channel; EMG/ECG a broadband/slow sway of F x their own power.
    bm = load_params("spectral")["bursts"]
    st = np.where((stages >= 0) & (stages <= 4), stages, 0).astype(int)
    k = rng.poisson(np.asarray(bm["rate_per_epoch"])[st])
    for ep in np.flatnonzero(k):
        q = float(np.interp(rng.random(), bm["quantile_levels"], bm["excess_ln_quantiles"][st[ep]]))
        f_pow = float(np.exp(q))
        dur = float(rng.uniform(15.0, EPOCH_S))
        t0 = float(ep * EPOCH_S + rng.uniform(0.0, EPOCH_S - dur))
        for lab in exg:
            fs = rates[lab]
            a, b = int(t0 * fs), min(int((t0 + dur) * fs), signals[lab].size)
            if b - a < 8:
                continue
            e0, e1 = int(ep * EPOCH_S * fs), int((ep + 1) * EPOCH_S * fs)
            if lab in burst_ref:
                src, level = burst_ref[lab]
                rel = np.asarray(bm["rel_bandpower"][src], float)
                bp = rel[None] * float(level[ep])  # noise with the burst spectrum, the epoch's power
                band = (0.5, 15.0) if roles[lab] == "EOG" else (0.5, 30.0)
                w = shaped_noise(bp, fs, rng, epoch_s=(b - a) / fs + 2.0, band_hz=band)[: b - a]
                w *= np.sqrt(max(f_pow - 1.0, 0.0))
            else:
                x0 = signals[lab][e0:e1]
                tt = np.arange(b - a) / fs
                if roles[lab] == "EMG":
                    w = rng.standard_normal(b - a)
                else:
                    w = np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * tt + rng.uniform(0, 6.3)) * np.sqrt(2.0)
                w *= float(np.std(x0)) * np.sqrt(max(f_pow - 1.0, 0.0)) * (0.3 if roles[lab] == "ECG" else 1.0)
            signals[lab][a:b] += w * sps.windows.tukey(b - a, 0.3)
        log.append({"kind": "movement", "onset_s": round(t0, 2), "duration_s": round(dur, 2),
                    "power_factor": round(f_pow, 2)})
    # electrode pops: ~0.5 per hour per EEG/EOG channel
    for lab in exg:
        if roles[lab] not in ("EEG", "EOG"):
            continue
        fs = rates[lab]
        for t0 in rng.uniform(0, n_s, rng.poisson(0.5 * n_s / 3600.0)):
            a = int(t0 * fs)
            n = min(int(2.0 * fs), signals[lab].size - a)
            step = rng.choice([-1, 1]) * rng.uniform(100.0, 300.0)
            signals[lab][a:a + n] += step * np.exp(-np.arange(n) / (rng.uniform(0.1, 0.4) * fs))
            log.append({"kind": "electrode_pop", "channel": lab, "onset_s": round(float(t0), 2)})
    # device faults are rates per hour of recording (an 8-h night: clipping with probability
    # ~0.3, a disconnection ~0.1), so a short night carries the same fault load per hour
    hours = n_s / 3600.0
    # clipping: one EEG/EOG channel saturates at +-rail for a few segments
    cands = [lab for lab in exg if roles[lab] in ("EEG", "EOG")]
    if cands and rng.random() < 1.0 - np.exp(-0.045 * hours):
        lab = cands[int(rng.integers(len(cands)))]
        fs = rates[lab]
        rail = float(rng.uniform(150.0, 300.0))
        for _ in range(int(rng.integers(1, 4))):
            t0, dur = rng.uniform(0, max(n_s - 30, 1)), rng.uniform(5.0, 30.0)
            a, b = int(t0 * fs), min(int((t0 + dur) * fs), signals[lab].size)
            signals[lab][a:b] = np.clip(signals[lab][a:b] * 4.0, -rail, rail)
            log.append({"kind": "clipped", "channel": lab, "onset_s": round(float(t0), 2),
                        "duration_s": round(float(dur), 2), "rail_uv": round(rail, 1)})
    # an occasional disconnected channel, 5-40 min flat + hum
    if exg and rng.random() < 1.0 - np.exp(-0.013 * hours):
        lab = exg[int(rng.integers(len(exg)))]
        fs = rates[lab]
        dur = rng.uniform(300.0, 2400.0)
        t0 = rng.uniform(0, max(n_s - dur, 1))
        a, b = int(t0 * fs), min(int((t0 + dur) * fs), signals[lab].size)
        tt = np.arange(b - a) / fs
        hum = 20.0 * np.sin(2 * np.pi * line_hz * tt) if fs > 2.2 * line_hz else 0.0
        signals[lab][a:b] = hum + 0.2 * rng.standard_normal(b - a)
        log.append({"kind": "disconnected", "channel": lab, "onset_s": round(float(t0), 2),
                    "duration_s": round(float(dur), 2)})


def simulate_night(hours: float = 8.0, seed: int = 0, ahi: float = 5.0, montage: str = "default",
                   rates_hz: Mapping[str, float] | None = None, hypnogram=None, spectra=None,
                   artefacts: bool = True) -> SimulatedNight:
    """Simulate one PSG night.

    hours: night length when the stages are sampled (ignored when ``hypnogram``/``spectra`` give them).
    seed: everything is a deterministic function of it.
    ahi: apneas + hypopneas per hour of sleep (realised count = round(ahi x TST h)).
    montage: "default" (9 channels), "sleep-edf" (EEG Fpz-Cz, EEG Pz-Oz, EOG horizontal at 100 Hz)
        or "variants" (default montage, labels drawn from real systems by the seed).
    rates_hz: per role (EEG, EOG, EMG, ECG: 100-512; RESP: 10-100; SPO2: 1-25) or per label.
    hypnogram: a Hypnogram, an array of stage codes, or a scoring file any `read_scoring` reads:
        its stages are replayed exactly.
    spectra: a real band-power night (.npz, Sleep-EDF-78 layout): its per-epoch band powers and
        its labels are replayed (the stages are that night's labels, -100 -> unscored).
    artefacts: add device/subject artefacts (line noise, movement, pops, clipping, disconnection).
    """
    from sleepedge.scoring import Event, Hypnogram

    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise SimulationError(f"--seed {seed!r}: expected an integer") from None
    try:
        ahi = float(ahi)
    except (TypeError, ValueError):
        raise SimulationError(f"--ahi {ahi!r}: expected events per hour such as 15") from None
    if not (0.0 <= ahi <= 120.0):
        raise SimulationError(f"--ahi {ahi:g}: expected 0-120 events per hour of sleep")
    channels = montage_channels(montage, seed)
    rates = resolve_rates(channels, rates_hz, montage)
    stages, replay_vec, stage_source = _stages_from(hypnogram, spectra, hours)
    if stages is None:
        stages = sample_hypnogram(epochs_for_hours(hours), _rng(seed, "hypnogram"))
    stages = np.asarray(stages, np.int16)
    n_ep = stages.size
    n_s = n_ep * EPOCH_S

    # per-epoch band-power targets for the three real spectral channels
    scale = night_scale(_rng(seed, "gain"))
    vec = replay_vec if replay_vec is not None else sample_features(stages, _rng(seed, "spectra"))
    targets = features_to_bandpower(vec, scale)                     # (n_ep, 3, 5) µV²

    # respiration first: events drive arousals, heart rate, SpO2
    resp_events = respiration.place_events(stages, ahi, _rng(seed, "events"))
    arousals = _arousal_list(stages, resp_events, _rng(seed, "arousals"))
    onsets = eeg_mod.place_transients(stages, _rng(seed, "transients"))
    fs_resp = {kind: rates[lab] for lab, role, kind, *_ in channels if kind in ("flow", "thorax", "abdomen")}
    breath = respiration.breathing(n_s, stages, resp_events, {**{"flow": 32.0, "thorax": 32.0, "abdomen": 32.0},
                                                             **fs_resp}, _rng(seed, "breathing"))

    signals: dict[str, np.ndarray] = {}
    roles: dict[str, str] = {}
    units: dict[str, str] = {}
    burst_ref: dict[str, tuple[int, np.ndarray]] = {}
    derivations: dict[str, dict] = {}
    for label, role, kind, src, gain in channels:
        fs = rates[label]
        rng = _rng(seed, f"channel:{kind}")
        n = int(round(n_s * fs))
        if role in ("EEG", "EOG"):
            band = (0.5, 15.0) if role == "EOG" else (0.5, 30.0)
            g = gain if gain is not None else scale[0] / scale[src]  # central: level of Fpz-Cz
            extras = eeg_mod.transient_signal(onsets, kind, n, fs, rng, eog_epoch_rms=np.sqrt(targets[:, 2].sum(1)))
            if role == "EEG":  # arousal: a burst of the channel's own wake-like fast activity
                wake = targets[stages == 0, src] if (stages == 0).any() else targets[:, src]
                fast_rms = float(np.sqrt(np.median(wake[:, 2:].sum(1)))) * g
                extras += eeg_mod.arousal_signal(arousals, n, fs, rng, rms_uv=fast_rms)
            x = eeg_mod.channel(targets[:, src] * g**2, extras, fs, rng, band_hz=band)
            burst_ref[label] = (src, targets[:, src].sum(1) * g**2)
            derivations[label] = {"kind": kind, "real_reference": REAL_REFERENCE[kind],
                                  "spectra_from": SPECTRAL_CHANNELS[src]}
        elif role == "EMG":
            x = physio.emg(stages, fs, rng, arousals)
        elif role == "ECG":
            hr = physio.heart_rate(n_s, stages, breath["phase_10hz"], resp_events, arousals, rng)
            x, _ = physio.ecg(n_s, fs, hr, rng)
        elif kind in ("flow", "thorax", "abdomen"):
            x = breath[kind]
        elif role == "SPO2":
            x, _ = respiration.spo2(n_s, fs, resp_events, rng)
        else:  # pragma: no cover - montage tables only hold the kinds above
            raise SimulationError(f"channel {label}: no generator for {role}/{kind}")
        signals[label] = np.asarray(x[:n], np.float64)
        roles[label] = role
        units[label] = UNITS[role]
    art_log: list[dict] = []
    if artefacts:
        _artefacts(signals, rates, roles, stages, _rng(seed, "artefacts"), art_log, burst_ref)

    events = []
    for e in resp_events:
        events.append(Event(float(e.onset_s), float(e.duration_s), e.kind, EVENT_TEXT[e.kind]))
        on = e.onset_s + e.lag_s
        events.append(Event(round(float(on), 2), round(float(e.duration_s), 2), "desaturation",
                            EVENT_TEXT["desaturation"]))  # depth in meta["respiratory_events"]
    for on, dur in arousals:
        events.append(Event(float(on), float(dur), "arousal", EVENT_TEXT["arousal"]))
    events.sort(key=lambda ev: (ev.onset_s, ev.kind))
    tst_h = float(((stages >= 1) & (stages <= 4)).sum() * EPOCH_S / 3600.0)
    warnings = []
    if len(resp_events) < int(round(ahi * tst_h)):
        warnings.append(f"placed {len(resp_events)} of {int(round(ahi * tst_h))} requested respiratory events: "
                        f"the sleep periods leave no room for more (AHI {len(resp_events) / max(tst_h, 1e-9):.1f})")
    meta = {
        "warnings": warnings,
        "notice": NOTICE, "simulated": True, "seed": seed, "montage": montage,
        "stage_source": stage_source, "hours": n_s / 3600.0, "tst_h": tst_h,
        "ahi_requested": ahi, "ahi_realised": (len(resp_events) / tst_h) if tst_h > 0 else 0.0,
        "respiratory_events": [dict(onset_s=e.onset_s, duration_s=e.duration_s, kind=e.kind, drop=round(e.drop, 4),
                                    desat_pct=round(e.desat_pct, 2), lag_s=round(e.lag_s, 2), arousal=e.arousal)
                               for e in resp_events],
        "transients": {k: int(len(v)) for k, v in onsets.items()},
        "derivations": derivations,
        "artefacts": art_log,
        "night_sd_uv": {c: round(float(s), 3) for c, s in zip(("Fpz-Cz", "Pz-Oz", "EOG"), scale)},
        "params": {k: load_params(k)["provenance"] if k != "transients" else str(load_params(k)["provenance"])
                   for k in ("hypnogram", "spectral", "transients")},
    }
    hyp = Hypnogram(stages.astype(np.int64), EPOCH_S, None, f"sleepedge simulate seed={seed}")
    return SimulatedNight(signals, rates, units, roles, hyp, events, meta)


def stage_annotations(stages: np.ndarray, epoch_s: float = EPOCH_S):
    """Sleep-EDF style stage annotations, one per bout: [(onset_s, duration_s, text)]."""
    from sleepedge.simulate.calibration import bouts

    s, start, length = bouts(np.asarray(stages))
    return [(float(a * epoch_s), float(n * epoch_s), STAGE_TEXT[int(k)]) for k, a, n in zip(s, start, length)]


def write_night(night: SimulatedNight, path) -> tuple[Path, Path]:
    """Write the night as EDF+ (signals + stage and event annotations; the recording field says
    SIMULATED) and a TSV sidecar of the ground truth beside it (``<stem>.tsv``).

    TSV columns: onset, duration, stage, event. Event rows come first (stage ``n/a``), then one
    row per stage bout, so `read_scoring(tsv)` reproduces the hypnogram exactly (later stage rows
    win) and `read_truth_tsv` returns both."""
    from sleepedge.edf import Annotation, SignalSpec, write_edf
    from sleepedge.errors import OutputError

    path = Path(path)
    if path.suffix.lower() != ".edf":
        raise SimulationError(f"-o {path}: expected an output path ending in .edf")
    if not path.parent.exists():
        raise OutputError(f"-o {path}: folder {path.parent} does not exist; create it first")
    specs = []
    for lab, x in night.signals.items():
        if night.roles[lab] == "SPO2":
            specs.append(SignalSpec(lab, night.rates_hz[lab], x, night.units[lab], 0.0, 100.0,
                                    transducer="simulated pulse oximeter"))
        else:
            specs.append(SignalSpec(lab, night.rates_hz[lab], x, night.units[lab],
                                    transducer="simulated", prefilter=""))
    ann = [Annotation(o, d, t) for o, d, t in stage_annotations(night.hypnogram.stages)]
    ann += [Annotation(e.onset_s, e.duration_s, e.label or EVENT_TEXT[e.kind]) for e in night.events]
    ann.sort(key=lambda a: a.onset_s)
    seed = night.meta.get("seed", "?")
    edf_path = write_edf(path, specs, ann, recording=f"SIMULATED sleepedge seed={seed}")
    tsv = path.with_suffix(".tsv")
    rows = ["onset\tduration\tstage\tevent"]
    for e in night.events:
        rows.append(f"{e.onset_s:.2f}\t{e.duration_s:.2f}\tn/a\t{e.label or EVENT_TEXT[e.kind]}")
    for o, d, t in stage_annotations(night.hypnogram.stages):
        code = STAGE_TEXT_TO_CODE[t]
        rows.append(f"{o:.2f}\t{d:.2f}\t{'n/a' if code == IGNORE else STAGES[code]}\t")
    try:
        tsv.write_text("\n".join(rows) + "\n")
    except OSError as err:
        raise OutputError(f"{tsv}: cannot write the ground-truth sidecar ({err.strerror}); check the folder") from None
    return Path(edf_path), tsv


STAGE_TEXT_TO_CODE = {v: k for k, v in STAGE_TEXT.items()}


def read_truth_tsv(path) -> tuple[object, list]:
    """Read a sidecar written by `write_night` -> (Hypnogram, events)."""
    from sleepedge.scoring import Event, _event_kind, read_scoring

    hyp, _ = read_scoring(path, fmt="tsv")
    events = []
    for line in Path(path).read_text().splitlines()[1:]:
        f = line.split("\t")
        if len(f) >= 4 and f[3].strip():
            kind = _event_kind(f[3].strip())
            if kind is None:
                raise SimulationError(f"{path}: event {f[3]!r} is not a known event kind")
            events.append(Event(float(f[0]), float(f[1]), kind, f[3].strip()))
    return hyp, events
