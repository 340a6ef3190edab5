"""Per-epoch band-power targets and noise shaped to them.

Targets are absolute band powers in µV² per 30-s epoch, shape (n_epochs, n_bands=5) per
channel, for the bands delta 0.5-4, theta 4-8, alpha 8-12, sigma 12-16, beta 16-30 Hz.
They come either from a real night (`replay_bandpower`: Sleep-EDF-78 band-power file, the
epoch-to-epoch structure of a real night) or from the per-stage Gaussian model of all 153
real nights with an AR(1) epoch-to-epoch drift (`sample_bandpower`).

`shaped_noise` turns targets into a signal: each epoch gets a Gaussian noise segment whose
PSD is a smooth log-log interpolation through knots at the band centres (a 1/f-like shape
within and between bands), iterated so that each band integrates to its target; segments
overlap by ``crossfade_s`` with power-complementary (sin/cos) tapers, so the power changes
smoothly across epoch boundaries and never steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import signal as sps

from sleepedge.contract import EPOCH_S, IGNORE
from sleepedge.simulate.calibration import SPECTRAL_CHANNELS, feature_vector, load_params
from sleepedge.simulate.hypnogram import SimulationError

BANDS_HZ = np.array([[0.5, 4.0], [4.0, 8.0], [8.0, 12.0], [12.0, 16.0], [16.0, 30.0]])
_CENTRES = np.sqrt(BANDS_HZ[:, 0] * BANDS_HZ[:, 1])


def _model_arrays(model: dict):
    mean = np.array([s["mean"] for s in model["stages"]])
    cw = np.array([s["cov_within"] for s in model["stages"]])
    cb = np.array([s["cov_between"] for s in model["stages"]])
    ar = np.array([s["ar1"] for s in model["stages"]])
    return mean, cw, cb, ar


def _chol(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return v * np.sqrt(np.clip(w, 0, None))


def sample_features(stages: np.ndarray, rng: np.random.Generator, model: dict | None = None) -> np.ndarray:
    """(n_epochs, 18) model vectors (see calibration.feature_vector) for a stage sequence.

    Per stage: mean + a per-night offset (between-night covariance) + an AR(1) process with the
    within-night covariance and the fitted lag-1 autocorrelation; the AR state is carried across
    bouts (standardised innovations), so the drift is continuous through the night. Unscored
    epochs (IGNORE) use the wake distribution.
    """
    model = load_params("spectral") if model is None else model
    mean, cw, cb, ar = _model_arrays(model)
    st = np.where((stages >= 0) & (stages <= 4), stages, 0).astype(int)
    n, d = st.size, mean.shape[1]
    offsets = np.einsum("sij,sj->si", np.stack([_chol(c) for c in cb]), rng.standard_normal((5, d)))
    lw = np.stack([_chol(c) for c in cw])
    e = rng.standard_normal((n, d))
    z = np.empty((n, d))
    z[0] = e[0]
    rho = ar[st]
    s = np.sqrt(1 - rho**2)
    for i in range(1, n):  # 1k epochs a night: a short loop over epochs, vectorised over dims
        z[i] = rho[i] * z[i - 1] + s[i] * e[i]
    return mean[st] + offsets[st] + np.einsum("nij,nj->ni", lw[st], z)


def features_to_bandpower(vec: np.ndarray, night_sd_uv: np.ndarray) -> np.ndarray:
    """(n, 18) vectors + per-channel night SD (µV, 3) -> (n, 3, 5) absolute band powers in µV²."""
    v = vec.reshape(len(vec), len(SPECTRAL_CHANNELS), 6)
    rel = np.exp(v[:, :, :5])
    rel /= rel.sum(-1, keepdims=True)
    total = np.exp(v[:, :, 5:6]) * np.asarray(night_sd_uv, float)[None, :, None] ** 2
    return rel * total


def night_scale(rng: np.random.Generator, model: dict | None = None, gain_sd: float = 0.2) -> np.ndarray:
    """Per-channel night SD in µV: the calibrated anchor times a per-subject log-normal gain."""
    model = load_params("spectral") if model is None else model
    anchor = np.array([model["amplitude"]["night_sd_uv"][c] for c in SPECTRAL_CHANNELS])
    return anchor * np.exp(gain_sd * rng.standard_normal())  # same gain on all channels: one subject


def sample_bandpower(stages: np.ndarray, rng: np.random.Generator, model: dict | None = None) -> np.ndarray:
    """(n_epochs, 3, 5) µV² band-power targets for [Fpz-Cz, Pz-Oz, EOG] from the stage model."""
    return features_to_bandpower(sample_features(stages, rng, model), night_scale(rng, model))


def load_replay(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A real band-power night (``SC4xxxE0-PSG.npz``) -> (stages int16 with IGNORE, (n, 18) vectors)."""
    path = Path(path)
    try:
        with np.load(path) as d:
            feats = np.asarray(d["features"], dtype=np.float64)
            labels = np.asarray(d["labels"]).astype(int)
    except (OSError, ValueError, KeyError) as err:
        raise SimulationError(f"--spectra {path}: cannot read a band-power night ({err.__class__.__name__}); "
                              "expected a Sleep-EDF-78 band-power .npz with 'features' (n, 3, 10) and 'labels'") from None
    if feats.ndim != 3 or feats.shape[1:] != (3, 10) or labels.shape != (feats.shape[0],):
        raise SimulationError(f"--spectra {path}: features {feats.shape}, labels {labels.shape}; expected (n, 3, 10) and (n,)")
    labels = np.where((labels >= 0) & (labels <= 4), labels, IGNORE).astype(np.int16)
    return labels, feature_vector(feats)


def _interp_matrix(freqs: np.ndarray) -> np.ndarray:
    """(len(freqs), 5) weights: log PSD(f) = W @ log knot values; log-log linear between band
    centres, constant slope continuation outside (low edge flat, high edge power law)."""
    lf = np.log(np.clip(freqs, 1e-3, None))
    lc = np.log(_CENTRES)
    W = np.zeros((freqs.size, 5))
    idx = np.clip(np.searchsorted(lc, lf) - 1, 0, 3)
    t = (lf - lc[idx]) / (lc[idx + 1] - lc[idx])
    t = np.where(lf < lc[0], 0.0, t)            # flat below the delta centre
    W[np.arange(freqs.size), idx] = 1 - t
    W[np.arange(freqs.size), idx + 1] = t          # t > 1 above the beta centre: extrapolated slope
    return W


def _low_freq_slope() -> float:
    """1/f^a exponent of the PSD below the delta band's centre (calibrated on real EEG, not
    subject 0: `calibration.fit_low_freq_slope`); 0 = flat (models fitted before it existed)."""
    return float(load_params("spectral").get("low_freq_slope", 0.0))


def _shape_factor(freqs: np.ndarray, low_slope: float | None = None) -> np.ndarray:
    """Outside 0.5-30 Hz: roll off below 0.3 Hz (no DC drift) and steepen above 30 Hz; below the
    delta centre (1.41 Hz) the PSD keeps rising as f^-a down to 0.3 Hz (real EEG does; a flat
    delta knot left 0.5-0.8 Hz at a third to a half of the real level)."""
    f = np.asarray(freqs, float)
    a = _low_freq_slope() if low_slope is None else float(low_slope)
    lo = 1.0 / (1.0 + (0.3 / np.maximum(f, 1e-3)) ** 4)
    hi = 1.0 / (1.0 + (f / 35.0) ** 4)
    rise = np.where(f < _CENTRES[0], (np.clip(f, 0.3, None) / _CENTRES[0]) ** (-a), 1.0) if a else 1.0
    return lo * hi * rise


def measurement_fir(band_hz=(0.5, 30.0), fs_hz: float = 100.0) -> np.ndarray:
    """The band-pass the real band powers were measured after: MNE's default FIR (firwin,
    hamming, 'auto' transition bands: low min(max(0.25 l, 2), l), high min(max(0.25 h, 2),
    nyq - h); length 3.3 / narrowest transition band), applied zero-phase (one pass)."""
    lo, hi = band_hz
    l_tb = min(max(0.25 * lo, 2.0), lo)
    h_tb = min(max(0.25 * hi, 2.0), fs_hz / 2 - hi)
    n = int(np.ceil(3.3 / min(l_tb, h_tb) * fs_hz)) | 1
    return sps.firwin(n, [lo - l_tb / 2, hi + h_tb / 2], window="hamming", pass_zero=False, fs=fs_hz)


def apply_measurement_filter(x: np.ndarray, band_hz=(0.5, 30.0)) -> np.ndarray:
    """Zero-phase FIR band-pass of a 100-Hz signal (see `measurement_fir`)."""
    return sps.oaconvolve(x, measurement_fir(band_hz), mode="same")


def measurement_gain(freqs: np.ndarray, band_hz=(0.5, 30.0), floor: float = 0.1) -> np.ndarray:
    """|H(f)|² of `measurement_fir`, floored so the compensation never boosts a band more than
    1/floor (above 50 Hz: the gain at 50 Hz)."""
    _, h = sps.freqz(measurement_fir(band_hz), worN=np.clip(freqs, 0, 49.99), fs=100.0)
    return np.maximum(np.abs(h) ** 2, floor)


_WELCH_CACHE: dict = {}


def welch_band_matrix(grid: np.ndarray, fs_hz: float = 100.0, nperseg: int = 400) -> np.ndarray:
    """(5, len(grid)) weights: band power a Welch estimate (hamming ``nperseg``, bins f >= lo and
    f < hi, df = fs/nperseg) returns on average for a one-sided PSD sampled on ``grid`` (uniform
    step). The hamming window's spectral kernel spreads each frequency over neighbouring bins
    (leakage), which matters for the steep spectra of N3 and of the EOG; rows of the kernel are
    normalised so a white PSD is measured unbiased (scipy's 'density' scaling)."""
    key = (grid.size, float(grid[0]), float(grid[1] - grid[0]), fs_hz, nperseg)
    if key in _WELCH_CACHE:
        return _WELCH_CACHE[key]
    dg = float(grid[1] - grid[0])
    w = sps.get_window("hamming", nperseg)
    bins = np.arange(nperseg // 2 + 1) * fs_hz / nperseg
    n = np.arange(nperseg)

    def kernel(nu):  # |W(nu)|^2 for an array of frequency offsets (Hz)
        ph = np.exp(-2j * np.pi * np.outer(nu, n) / fs_hz)
        return np.abs(ph @ w) ** 2

    # one-sided PSD: the mirrored image too. The offsets fk -/+ grid repeat across bins (uniform
    # steps): the kernel is evaluated once per distinct offset (same values, ~50x less work;
    # this runs at the first simulated night of every process)
    nu = np.concatenate([bins[:, None] - grid[None, :], bins[:, None] + grid[None, :]], axis=1)
    uniq, inv = np.unique(nu, return_inverse=True)
    kern = np.concatenate([kernel(uniq[a:a + grid.size]) for a in range(0, uniq.size, grid.size)])
    kv = kern[inv.reshape(nu.shape)]
    K = kv[:, :grid.size] + kv[:, grid.size:]
    K /= (w**2).sum() * fs_hz                          # white one-sided PSD 1 -> expected bin value 1
    K *= dg
    df = fs_hz / nperseg
    M = np.stack([K[(bins >= lo) & (bins < hi)].sum(0) * df for lo, hi in BANDS_HZ])
    _WELCH_CACHE[key] = M
    return M


def knot_values(bandpower: np.ndarray, n_iter: int = 6, band_hz=(0.5, 30.0)) -> np.ndarray:
    """(n, 5) µV² band targets (as measured after the ``band_hz`` band-pass, Welch at 0.25-Hz
    bins) -> (n, 5) log PSD knot values (µV²/Hz) whose smooth interpolated PSD, measured the way
    the real set was (band-pass, Welch leakage: `welch_band_matrix`), gives each band's target."""
    grid = np.arange(0.0, 50.0, 0.05) + 0.025
    W = _interp_matrix(grid)
    shape = _shape_factor(grid) * measurement_gain(grid, band_hz)
    B = welch_band_matrix(grid)                                          # (5, n_grid)
    target = np.maximum(np.asarray(bandpower, float), 1e-6)
    logv = np.log(target / (BANDS_HZ[:, 1] - BANDS_HZ[:, 0]))
    for _ in range(n_iter):
        psd = np.exp(logv @ W.T) * shape
        got = psd @ B.T
        logv += np.log(target / got)
    return logv


def shaped_noise(bandpower: np.ndarray, fs_hz: float, rng: np.random.Generator,
                 epoch_s: float = EPOCH_S, crossfade_s: float = 2.0, band_hz=(0.5, 30.0)) -> np.ndarray:
    """Gaussian noise (µV) with the given per-epoch band powers: (n_epochs, 5) µV² -> (n_epochs*epoch_s*fs,)."""
    n_ep = bandpower.shape[0]
    n = int(round(epoch_s * fs_hz))
    h = int(round(crossfade_s * fs_hz / 2))
    L = n + 2 * h
    freqs = np.fft.rfftfreq(L, 1.0 / fs_hz)
    logv = knot_values(bandpower, band_hz=band_hz)
    W = _interp_matrix(freqs)
    amp = np.sqrt(np.exp(logv @ W.T) * _shape_factor(freqs)[None] * fs_hz * L / 2.0)
    amp[:, 0] = 0.0
    amp *= np.sqrt(0.5)
    spec = np.empty((n_ep, freqs.size), np.complex128)
    spec.real = rng.standard_normal((n_ep, freqs.size)) * amp
    spec.imag = rng.standard_normal((n_ep, freqs.size)) * amp
    del amp
    seg = np.fft.irfft(spec, n=L, axis=1)
    del spec
    # power-complementary tapers over the 2h overlap: sin^2 + cos^2 = 1
    ramp = np.sin(0.5 * np.pi * (np.arange(2 * h) + 0.5) / (2 * h)) if h else np.zeros(0)
    win = np.ones(L)
    win[: 2 * h] = ramp
    win[L - 2 * h:] = ramp[::-1]
    seg *= win
    if h:
        seg[0, : 2 * h] /= ramp            # recording edges: no partner segment, keep full power
        seg[-1, L - 2 * h:] /= ramp[::-1]
    # overlap-add with strided views: segment k starts at k*n in ``out`` (which is offset by h)
    out = np.zeros((n_ep + 1) * n + 2 * h)
    out[: n_ep * n].reshape(n_ep, n)[:, :] += seg[:, :n]
    out[n: n + n_ep * n].reshape(n_ep, n)[:, : 2 * h] += seg[:, n:]
    return out[h: h + n_ep * n]


def to_100hz(x: np.ndarray, fs_hz: float) -> np.ndarray:
    """``x`` (as float) at the 100 Hz the real band-power set was measured at (polyphase)."""
    x = np.asarray(x, float)
    if fs_hz == 100.0:
        return x
    from fractions import Fraction

    fr = Fraction(100.0 / fs_hz).limit_denominator(1000)
    return sps.resample_poly(x, fr.numerator, fr.denominator)


def epoch_bandpower(x: np.ndarray, fs_hz: float, epoch_s: float = EPOCH_S, band_hz=(0.5, 30.0),
                    average: str = "median") -> np.ndarray:
    """Band powers the way the real Sleep-EDF-78 set was computed: band-pass (MNE-like FIR,
    zero phase), Welch hamming 4-s, 50 % overlap, median average, at 100 Hz.
    x: (n_samples,) µV at fs_hz -> (n_epochs, 5) µV² (trapezoid-free rectangle sum, df = 0.25 Hz)."""
    x = apply_measurement_filter(to_100hz(x, fs_hz), band_hz)
    n = int(epoch_s * 100)
    n_ep = x.size // n
    f, p = sps.welch(x[: n_ep * n].reshape(n_ep, n), fs=100.0, window="hamming", nperseg=400,
                     noverlap=200, average=average, axis=-1)
    df = f[1] - f[0]
    return np.stack([p[:, (f >= lo) & (f < hi)].sum(1) * df for lo, hi in BANDS_HZ], axis=1)
