"""Breathing, respiratory events and oxygen saturation.

Breathing: a phase integrated from a slowly varying rate (12-20 breaths/min per night,
more regular in N3, more irregular in W/REM). Airflow (nasal/oro-nasal), thoracic and
abdominal effort are amplitude envelopes times phase waveforms.

Events (AASM 2012 definitions, placed only in sleep, twice as likely per minute in REM):
- obstructive apnea: flow drop >= 90 % for >= 10 s with continuing (paradoxical) effort
- central apnea: flow and effort absent (>= 90 % drop on all three)
- mixed apnea: central first part, obstructive rest
- hypopnea: flow drop 40-70 % (>= 30 %) for >= 10 s
Each apnea/hypopnea is followed by a desaturation of >= 3 % whose nadir lags the event's
end by 20-30 s (circulation delay) and, for about 60 % of them, an arousal at termination.
``--ahi`` sets the count: round(ahi x total sleep time in hours) events.

Units: flow and belts in µV-like arbitrary units (a.u. written as "uV"), SpO2 in %, time in s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter1d

from sleepedge.contract import EPOCH_S

EVENT_MIX = (("obstructive_apnea", 0.45), ("central_apnea", 0.10), ("mixed_apnea", 0.05), ("hypopnea", 0.40))
REM_WEIGHT = 2.0
LAG_S = (20.0, 30.0)


@dataclass
class RespEvent:
    onset_s: float
    duration_s: float
    kind: str
    drop: float            # fractional flow-amplitude drop (0.93..0.99 apnea, 0.4..0.7 hypopnea)
    desat_pct: float       # SpO2 fall that follows
    lag_s: float           # event end -> SpO2 nadir
    arousal: bool


def place_events(stages: np.ndarray, ahi: float, rng: np.random.Generator,
                 epoch_s: float = EPOCH_S) -> list[RespEvent]:
    """Non-overlapping events inside sleep, count = round(ahi x TST h), REM weighted x2."""
    st = np.asarray(stages)
    sleep = (st >= 1) & (st <= 4)
    tst_h = sleep.sum() * epoch_s / 3600.0
    n_target = int(round(max(ahi, 0.0) * tst_h))
    if n_target == 0:
        return []
    kinds = [k for k, _ in EVENT_MIX]
    probs = np.array([p for _, p in EVENT_MIX])
    weight = np.where(st == 4, REM_WEIGHT, 1.0) * sleep
    wsum = weight.sum()
    if wsum == 0:
        return []
    p_ep = weight / wsum
    busy = np.zeros(st.size * int(epoch_s), bool)  # 1-s grid of occupied time (event + recovery)
    # time kept free after an event for the delayed desaturation to resolve: up to 60 s, less
    # when the requested AHI leaves no room (severe apnea: cyclic, overlapping desaturations)
    # (severe apnea: cyclic, overlapping desaturations, shorter events and breathing gaps)
    cycle_s = 3600.0 / max(ahi, 1e-9)
    post_s = float(np.clip(0.6 * cycle_s - 25.0, 5.0, 60.0))
    pre_s = float(np.clip(0.25 * cycle_s - 5.0, 4.0, 15.0))
    dur_scale = float(np.clip(cycle_s / 120.0, 0.3, 1.0))
    events: list[RespEvent] = []
    tries = 0
    while len(events) < n_target and tries < 60 * n_target:
        tries += 1
        kind = kinds[int(rng.choice(len(kinds), p=probs))]
        dur = float(np.clip(10.5 + rng.gamma(2.0, (6.0 if kind != "hypopnea" else 8.0) * dur_scale), 10.5, 90.0))
        ep = int(rng.choice(st.size, p=p_ep))
        on = (ep + rng.random()) * epoch_s
        a, b = int(on - pre_s), int(np.ceil(on + dur + post_s))   # spacing: breaths before, recovery + resaturation after
        if a < 0 or b > busy.size:
            continue
        e0, e1 = int(on // epoch_s), int((on + dur) // epoch_s)
        if not np.all(sleep[e0:e1 + 1]) or busy[a:b].any():
            continue
        busy[a:b] = True
        apnea = kind != "hypopnea"
        drop = rng.uniform(0.93, 0.99) if apnea else rng.uniform(0.4, 0.7)
        desat = rng.uniform(4.0, 10.0) if apnea else rng.uniform(3.5, 6.0)
        desat *= 1.0 + 0.02 * max(dur - 10.0, 0.0)
        events.append(RespEvent(round(on, 2), round(dur, 2), kind, drop, float(desat),
                                float(rng.uniform(*LAG_S)), bool(rng.random() < 0.6)))
    events.sort(key=lambda e: e.onset_s)
    return events


def _ramp_mask(t: np.ndarray, on: float, off: float, edge_s: float = 1.0) -> np.ndarray:
    """0 outside [on, off], 1 inside, cosine edges of ``edge_s`` entirely inside the interval."""
    up = np.clip((t - on) / edge_s, 0, 1)
    dn = np.clip((off - t) / edge_s, 0, 1)
    m = np.minimum(up, dn)
    return 0.5 - 0.5 * np.cos(np.pi * m)


def breathing(n_s: float, stages: np.ndarray, events: list[RespEvent], fs: dict[str, float],
              rng: np.random.Generator, epoch_s: float = EPOCH_S) -> dict[str, np.ndarray]:
    """Airflow, thoracic and abdominal effort at their rates, plus the breathing rate (Hz) on a
    10-Hz grid (``phase_10hz`` for ECG's sinus arrhythmia)."""
    fs_grid = 10.0
    n = int(round(n_s * fs_grid))
    t = np.arange(n) / fs_grid
    st_t = np.asarray(stages)[np.minimum((t // epoch_s).astype(int), len(stages) - 1)]
    base = rng.uniform(12.0, 20.0) / 60.0
    irregular = np.array([0.08, 0.06, 0.04, 0.02, 0.09])[np.clip(st_t, 0, 4)]
    drift = np.cumsum(rng.standard_normal(n)) / np.sqrt(fs_grid * 60.0)
    drift -= uniform_filter1d(drift, int(600 * fs_grid), mode="nearest")
    rate = base * np.exp(irregular * rng.standard_normal(n) * 0.5 + 0.05 * drift)
    rate = uniform_filter1d(rate, 20, mode="nearest")
    amp_flow = np.exp(0.06 * uniform_filter1d(rng.standard_normal(n), 100, mode="nearest") * 10.0)
    amp_thor = amp_flow.copy()
    amp_abd = amp_flow.copy()
    paradox = np.zeros(n)
    def reduce(a: np.ndarray, m: np.ndarray, factor: float, base_sl: slice) -> None:
        # inside the event the amplitude is ``factor`` x the pre-event baseline (AASM: the drop is
        # measured against the breaths before the event), cosine-blended at the edges
        base = float(np.mean(a[base_sl]))
        a *= 1 - m
        a += m * factor * base

    for e in events:  # in time order: a baseline already carries earlier events' effects
        on, off = e.onset_s, e.onset_s + e.duration_s
        m = _ramp_mask(t, on, off)
        sel = m > 0
        base_sl = slice(max(0, int((on - 14) * fs_grid)), max(1, int((on - 1) * fs_grid)))
        keep = 1.0 - e.drop
        if e.kind == "central_apnea":
            for a in (amp_flow, amp_thor, amp_abd):
                reduce(a, m, keep, base_sl)
        elif e.kind == "hypopnea":
            reduce(amp_flow, m, keep, base_sl)
            reduce(amp_thor, m, 1 - 0.3 * e.drop, base_sl)
            reduce(amp_abd, m, 1 - 0.3 * e.drop, base_sl)
        else:  # obstructive / mixed: flow absent, effort continues and rises, thorax-abdomen paradox
            reduce(amp_flow, m, keep, base_sl)
            split = on + (0.4 * e.duration_s if e.kind == "mixed_apnea" else 0.0)
            mo = _ramp_mask(t, split, off)
            crescendo = 1 + 0.6 * np.clip((t - split) / max(off - split, 1.0), 0, 1) * mo
            for a in (amp_thor, amp_abd):
                if e.kind == "mixed_apnea":
                    reduce(a, _ramp_mask(t, on, split), keep, base_sl)
                a[sel] *= crescendo[sel]
            paradox = np.maximum(paradox, mo)
        # recovery breaths: larger and faster for ~10 s after the event (not inside it)
        rec = _ramp_mask(t, off, off + 10.0, 2.0)
        for a in (amp_flow, amp_thor, amp_abd):
            a *= 1 + 0.8 * rec
        rate *= 1 + 0.25 * rec
    phase = np.cumsum(rate) / fs_grid
    out = {"rate_hz_10hz": rate, "phase_10hz": phase, "paradox_10hz": paradox, "flow_amp_10hz": amp_flow}

    def wave(ph):  # inspiration ~40 % of the cycle, expiration slower
        x = ph % 1.0
        return np.where(x < 0.4, np.sin(np.pi * x / 0.4), -0.7 * np.sin(np.pi * (x - 0.4) / 0.6))

    for key, amp, scale, extra in (("flow", amp_flow, 100.0, 0.0), ("thorax", amp_thor, 200.0, 0.0),
                                   ("abdomen", amp_abd, 250.0, 0.08)):
        f = fs[key]
        ts = np.arange(int(round(n_s * f))) / f
        ph = np.interp(ts, t, phase)
        a = np.interp(ts, t, amp)
        if key == "abdomen":
            ph = ph + extra + 0.5 * np.interp(ts, t, paradox)  # out of phase during obstruction
        x = scale * a * wave(ph)
        x += 0.005 * scale * rng.standard_normal(ts.size)
        out[key] = x
    return out


def spo2(n_s: float, fs_hz: float, events: list[RespEvent], rng: np.random.Generator,
         resolution: float = 1.0) -> tuple[np.ndarray, float]:
    """SpO2 (%) with a desaturation per event: falls from onset+lag to a nadir at end+lag, then
    recovers (time constant ~8 s). Quantised to ``resolution`` % like oximeters. -> (signal, baseline)."""
    ts = np.arange(int(round(n_s * fs_hz))) / fs_hz
    baseline = float(rng.uniform(95.0, 98.0))
    w = max(1, int(fs_hz * 20))
    x = baseline + 0.3 * uniform_filter1d(rng.standard_normal(ts.size), w, mode="nearest") * np.sqrt(w)
    for e in events:
        t0, t1 = e.onset_s + e.lag_s, e.onset_s + e.duration_s + e.lag_s
        fall = np.clip((ts - t0) / max(t1 - t0, 1.0), 0, 1)
        rec = np.exp(-np.clip(ts - t1, 0.0, None) / 8.0)
        x -= e.desat_pct * fall * rec
    x = np.clip(x, 50.0, 100.0)
    return np.round(x / resolution) * resolution, baseline
