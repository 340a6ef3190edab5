"""EEG and EOG: spectral-replay background plus real transient shapes.

Every channel = noise shaped to the per-epoch band-power targets (`spectra.shaped_noise`)
+ transients placed by stage-dependent Poisson rates that OVERLAP across stages (measured
lesson: stage-locked hand-made transients make models worse on real EEG). Shapes come from
the real library (`params/transients.npz`, cut from YASA's BSD-3 tutorial data): spindles,
slow waves / K-complexes (also used time-compressed as vertex waves), REM eye movements (also
stretched into slow rolling movements). The expected band power of the transients is
subtracted from each epoch's background target, so the channel's band powers still match the
real distributions.

Units: µV; onsets in s; rates in events per minute of that stage; fs_hz per channel.
"""

from __future__ import annotations

import numpy as np
from scipy import signal as sps

from sleepedge.contract import EPOCH_S
from sleepedge.simulate.calibration import load_params
from sleepedge.simulate.spectra import epoch_bandpower, shaped_noise

# events per minute in W, N1, N2, N3, REM. Overlapping on purpose (real sleep: spindles also in
# N3 and light N1, slow waves also in N2, eye movements also in wake).
RATES_PER_MIN: dict[str, tuple[float, float, float, float, float]] = {
    "spindle": (0.1, 0.8, 4.0, 2.0, 0.3),
    "slow_wave": (0.1, 0.8, 2.5, 9.0, 0.3),
    "k_complex": (0.05, 0.4, 1.5, 0.8, 0.1),
    "vertex": (0.2, 2.0, 0.8, 0.2, 0.3),
    "sawtooth": (0.1, 0.4, 0.1, 0.05, 1.5),
    "rapid_eye": (5.0, 1.0, 0.2, 0.1, 10.0),
    "slow_eye": (0.5, 2.5, 0.5, 0.1, 0.5),
    "blink": (10.0, 1.0, 0.05, 0.0, 0.1),
}


def poisson_onsets(stages: np.ndarray, rates_per_min, rng: np.random.Generator,
                   epoch_s: float = EPOCH_S) -> np.ndarray:
    """Sorted onsets (s) of a Poisson process whose rate follows the epoch's stage."""
    st = np.where((stages >= 0) & (stages <= 4), stages, 0).astype(int)
    lam = np.asarray(rates_per_min, float)[st] * epoch_s / 60.0
    k = rng.poisson(lam)
    ep = np.repeat(np.arange(st.size), k)
    return np.sort((ep + rng.random(ep.size)) * epoch_s)


def _resample(w: np.ndarray, fs_from: float, fs_to: float, stretch: float = 1.0) -> np.ndarray:
    n = max(4, int(round(w.size * stretch * fs_to / fs_from)))
    return np.interp(np.linspace(0, w.size - 1, n), np.arange(w.size), w)


def _add(out: np.ndarray, start: int, w: np.ndarray) -> None:
    a, b = max(0, start), min(out.size, start + w.size)
    if b > a:
        out[a:b] += w[a - start: b - start]


class TransientFactory:
    """Draws randomised waveforms from the real library at a given sample rate."""

    def __init__(self, fs_hz: float, rng: np.random.Generator):
        lib = load_params("transients")
        self.fs = float(fs_hz)
        self.rng = rng
        self.lib = lib

    def spindle(self) -> np.ndarray:
        """11-16 Hz, 0.5-2 s, unit peak amplitude."""
        w = self.lib["spindles"][self.rng.integers(len(self.lib["spindles"]))].astype(float)
        fs0 = float(self.lib["spindles_fs_hz"])
        f_lib = 13.5
        f_new = self.rng.uniform(11.0, 16.0)
        x = _resample(w, fs0, self.fs, stretch=f_lib / f_new)
        dur = self.rng.uniform(0.5, 2.0)
        n = min(x.size, int(dur * self.fs))
        c = x.size // 2  # the library spindles are centred on their envelope peak
        a = int(np.clip(c - n // 2, 0, x.size - n))
        seg = x[a:a + n] * sps.windows.tukey(n, 0.6)
        if self.rng.random() < 0.5:
            seg = -seg
        return seg / max(np.abs(seg).max(), 1e-9)

    def _slow(self, key: str, stretch: float) -> np.ndarray:
        w = self.lib[key][self.rng.integers(len(self.lib[key]))].astype(float)
        x = _resample(w, float(self.lib["slow_waves_fs_hz"]), self.fs, stretch)
        return x / max(np.ptp(x), 1e-9)  # unit peak-to-peak

    def slow_wave(self) -> np.ndarray:
        return self._slow("slow_waves", self.rng.uniform(0.7, 1.4))

    def k_complex(self) -> np.ndarray:
        return self._slow("k_complexes", self.rng.uniform(0.8, 1.2))

    def vertex(self) -> np.ndarray:
        """A sharp negative wave: a real slow wave compressed to ~0.25-0.4 of its length."""
        return self._slow("slow_waves", self.rng.uniform(0.25, 0.4))

    def eye_movement(self, stretch: float = 1.0) -> np.ndarray:
        w = self.lib["eye_movements"][self.rng.integers(len(self.lib["eye_movements"]))].astype(float)
        x = _resample(w, float(self.lib["eye_movements_fs_hz"]), self.fs, stretch)
        x = x - np.linspace(x[0], x[-1], x.size)
        x *= sps.windows.tukey(x.size, 0.3)
        return (x if self.rng.random() < 0.5 else -x) / max(np.ptp(x), 1e-9)

    def blink(self) -> np.ndarray:
        """Blink (no real blink material available): asymmetric raised cosine, 0.2-0.4 s, unit peak."""
        d = self.rng.uniform(0.2, 0.4)
        n_up, n_dn = max(2, int(0.4 * d * self.fs)), max(2, int(0.6 * d * self.fs))
        up = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, n_up))
        dn = 0.5 + 0.5 * np.cos(np.linspace(0, np.pi, n_dn))
        return np.concatenate([up, dn])

    def sawtooth(self) -> np.ndarray:
        """A REM sawtooth train: 3-8 triangular waves at 2-5 Hz (slow rise, sharp fall), unit peak."""
        f = self.rng.uniform(2.0, 5.0)
        k = int(self.rng.integers(3, 9))
        t = np.arange(int(k * self.fs / f)) * f / self.fs
        ph = t % 1.0
        x = np.where(ph < 0.75, ph / 0.75, (1.0 - ph) / 0.25) - 0.5
        return x * sps.windows.tukey(x.size, 0.3) * 2.0


def render(kind: str, onsets_s: np.ndarray, n_samples: int, fs_hz: float, fac: TransientFactory,
           amp_median: float, amp_sd_ln: float = 0.35) -> np.ndarray:
    """Sum of ``kind`` transients at ``onsets_s`` with log-normal amplitudes (µV)."""
    out = np.zeros(n_samples)
    make = getattr(fac, kind)
    amps = amp_median * np.exp(amp_sd_ln * fac.rng.standard_normal(len(onsets_s)))
    for t, a in zip(onsets_s, amps):
        _add(out, int(t * fs_hz), a * make())
    return out


def rates_per_min() -> dict[str, tuple[float, ...]]:
    """RATES_PER_MIN with the REM rate of rapid eye movements measured on real REM EOG
    (`params/transients.npz`, YASA data: |LOC-ROC| peaks > 100 µV per minute)."""
    rates = dict(RATES_PER_MIN)
    lib = load_params("transients")
    if "rem_eye_movements_per_min" in lib:
        r = list(rates["rapid_eye"])
        r[4] = float(lib["rem_eye_movements_per_min"])
        rates["rapid_eye"] = tuple(r)
    return rates


def place_transients(stages: np.ndarray, rng: np.random.Generator, kinds=RATES_PER_MIN) -> dict[str, np.ndarray]:
    """Onsets (s) of every transient kind for a night; same for all channels (one brain)."""
    rates = rates_per_min()
    return {k: poisson_onsets(stages, rates[k], rng) for k in kinds}


# per-channel amplitude (µV; peak for spindles/blinks/sawtooth, peak-to-peak for slow waves,
# K-complexes, vertex and eye movements) by channel site
SITE_AMPLITUDES: dict[str, dict[str, float]] = {
    "frontal": {"spindle": 12.0, "slow_wave": 100.0, "k_complex": 110.0, "vertex": 40.0, "sawtooth": 10.0,
                "rapid_eye": 20.0, "slow_eye": 12.0, "blink": 60.0},
    "central": {"spindle": 15.0, "slow_wave": 90.0, "k_complex": 120.0, "vertex": 50.0, "sawtooth": 15.0,
                "rapid_eye": 6.0, "slow_eye": 4.0, "blink": 10.0},
    "posterior": {"spindle": 6.0, "slow_wave": 35.0, "k_complex": 40.0, "vertex": 20.0, "sawtooth": 8.0,
                  "rapid_eye": 2.0, "slow_eye": 1.0, "blink": 3.0},
    "eog": {"spindle": 3.0, "slow_wave": 40.0, "k_complex": 45.0, "vertex": 10.0, "sawtooth": 0.0,
            "rapid_eye": 150.0, "slow_eye": 100.0, "blink": 120.0},
}
_EYE_KIND = {"rapid_eye": ("eye_movement", 1.0), "slow_eye": ("eye_movement", 4.0)}


def transient_signal(onsets: dict[str, np.ndarray], site: str, n_samples: int, fs_hz: float,
                     rng: np.random.Generator, eog_epoch_rms: np.ndarray | None = None,
                     epoch_s: float = EPOCH_S) -> np.ndarray:
    """All transients of one channel (µV), amplitudes by recording site.

    eog_epoch_rms: (n_epochs,) µV, the EOG's per-epoch level (sqrt of its band-power target).
    With it, rapid eye movements get the real size relative to the EOG's own level in their
    epoch (peak-to-peak / level drawn from the real REM EOG, `params/transients.npz`, times the
    one factor that gives synthetic REM EOG that recording's kurtosis), scaled to other sites by
    the site ratio; without it, the fixed site amplitudes."""
    fac = TransientFactory(fs_hz, rng)
    out = np.zeros(n_samples)
    amps = SITE_AMPLITUDES[site]
    ratio_q = fac.lib.get("eye_movement_ptp_per_rms")
    for kind, t in onsets.items():
        a = amps.get(kind, 0.0)
        if a <= 0 or len(t) == 0:
            continue
        if kind in _EYE_KIND:
            _, stretch = _EYE_KIND[kind]
            if kind == "rapid_eye" and eog_epoch_rms is not None and ratio_q is not None:
                ep = np.minimum((np.asarray(t) // epoch_s).astype(int), len(eog_epoch_rms) - 1)
                ratio = np.interp(rng.random(len(t)), np.linspace(0.05, 0.95, len(ratio_q)), ratio_q)
                ratio = ratio * float(fac.lib.get("eye_movement_scale", 1.0))
                w_amp = ratio * np.asarray(eog_epoch_rms)[ep] * (a / SITE_AMPLITUDES["eog"]["rapid_eye"])
            else:
                w_amp = a * np.exp(0.35 * rng.standard_normal(len(t)))
            for ti, ai in zip(t, w_amp):
                _add(out, int(ti * fs_hz), ai * fac.eye_movement(stretch * rng.uniform(0.8, 1.25)))
        else:
            out += render(kind, t, n_samples, fs_hz, fac, a)
    return out


def arousal_signal(arousals: list[tuple[float, float]], n_samples: int, fs_hz: float,
                   rng: np.random.Generator, rms_uv: float = 8.0) -> np.ndarray:
    """Alpha/beta (8-30 Hz) bursts for each (onset_s, duration_s) arousal, µV."""
    out = np.zeros(n_samples)
    hi = min(30.0, 0.45 * fs_hz)
    sos = sps.butter(4, [8.0, hi], btype="band", fs=fs_hz, output="sos")
    for on, dur in arousals:
        n = int(dur * fs_hz)
        if n < 8:
            continue
        x = sps.sosfilt(sos, rng.standard_normal(n + int(fs_hz)))[int(fs_hz):]
        x *= rms_uv * np.exp(0.3 * rng.standard_normal()) / max(x.std(), 1e-9)
        _add(out, int(on * fs_hz), x * sps.windows.tukey(n, 0.3))
    return out


def channel(target_bp: np.ndarray, extras: np.ndarray, fs_hz: float, rng: np.random.Generator,
            band_hz=(0.5, 30.0), floor: float = 0.25) -> np.ndarray:
    """Background shaped to ``target_bp - band power of extras`` (per epoch, floored at
    ``floor`` x target) plus the extras: the sum keeps the target band powers."""
    extra_bp = epoch_bandpower(extras, fs_hz, band_hz=band_hz) if np.any(extras) else 0.0
    bg = np.maximum(target_bp - extra_bp, floor * target_bp)
    return shaped_noise(bg, fs_hz, rng, band_hz=band_hz) + extras
