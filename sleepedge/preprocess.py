"""Causal preprocessing: the ONE function that feeds both the training cache and the runtime.

Signals in -> model epochs out, strictly causally, so that what a bedside device computes
epoch by epoch is bit-for-bit (to float rounding) what training saw.

Glossary
    role        modality (contract.ROLES): EEG, EOG, EMG, ECG, RESP, SPO2
    fs_in_hz    native rate of a role's channel (any rate; non-integer allowed)
    fs_hz       model rate, 100 Hz (contract.FS_HZ)
    epoch       30 s = 3000 samples at fs_hz
    data        float32 (n_roles, 3000) per epoch, roles in `CausalPreprocessor.roles` order
    quality     uint8 (n_roles,) bit mask per epoch (contract.Q_*)

Pipeline per role, every stage carries its state from one push() to the next:
    1. quality flags on the raw input (µV, native rate), per 30-s epoch: NaN/Inf, flat line,
       clipped rails, disconnected electrode. Non-finite samples are replaced by 0 before
       filtering so they cannot poison the filter state.
    2. polyphase resampling fs_in -> 100 Hz (the FIR that `scipy.signal.resample_poly` uses,
       applied causally like `upfirdn` over a carried input history: adds a group delay of
       `half_len / down` output samples, 0.1 s for 256 -> 100 Hz).
    3. band-pass per role (Butterworth, second-order sections, `sosfilt` with carried zi).
    Filters and resampler are numpy-only (`sleepedge.dsp`, equal to scipy's to float rounding,
    tested): scoring never imports scipy.
    4. causal normalisation (unless `normalise=False`, for models that normalise inside their
       own causal state, e.g. SpectralSleepNet): divide by a running robust scale (exponential moving average
       of log(1.4826 * MAD) over past and current epochs, half-life `norm_halflife_epochs`;
       epochs flagged flat/disconnected do not update it), then clip to +/- `clip`.
       SPO2 is an absolute quantity: (x - spo2_center) / spo2_scale instead.
No whole-night statistic is ever used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Mapping, Sequence

import numpy as np

from sleepedge import contract, dsp
from sleepedge.errors import PreprocessError

_DEFAULT_BANDS: tuple[tuple[str, float | None, float | None], ...] = (
    ("EEG", 0.3, 35.0),
    ("EOG", 0.3, 35.0),
    ("EMG", 10.0, 45.0),
    ("ECG", 0.5, 40.0),
    ("RESP", 0.05, 5.0),
    ("SPO2", None, None),
)
# below this robust std (in the role's unit) a 1-s window counts as flat
_DEFAULT_FLAT_FLOOR: tuple[tuple[str, float], ...] = (
    ("EEG", 0.5), ("EOG", 0.5), ("EMG", 0.1), ("ECG", 1.0), ("RESP", 1e-6), ("SPO2", 1e-6),
)


@dataclass(frozen=True)
class PreprocessConfig:
    """All preprocessing parameters; saved in checkpoints and bundle manifests."""

    fs_hz: int = contract.FS_HZ
    epoch_s: float = contract.EPOCH_S
    filter_order: int = 2                  # per band edge: band-pass order is 2 * filter_order
    bands: tuple[tuple[str, float | None, float | None], ...] = _DEFAULT_BANDS
    resample_half_len: int = 10            # FIR half length in units of max(up, down) (resample_poly's 10)
    normalise: bool = True                 # False: no amplitude scaling and no clip (values stay in µV)
    norm_halflife_epochs: float = 20.0
    clip: float = 20.0
    spo2_center: float = 95.0
    spo2_scale: float = 5.0
    flat_floor: tuple[tuple[str, float], ...] = _DEFAULT_FLAT_FLOOR
    flat_window_s: float = 1.0
    flat_fraction: float = 0.5             # >= this fraction of flat windows -> Q_FLAT
    disconnected_fraction: float = 0.9     # >= this fraction flat/NaN/railed -> Q_DISCONNECTED
    clip_fraction: float = 0.02            # >= this fraction of samples at the extreme -> Q_CLIPPED

    @property
    def epoch_samples(self) -> int:
        return int(round(self.epoch_s * self.fs_hz))

    def band(self, role: str) -> tuple[float | None, float | None]:
        for r, lo, hi in self.bands:
            if r == role:
                return lo, hi
        return None, None

    def floor(self, role: str) -> float:
        return dict(self.flat_floor).get(role, 1e-6)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["bands"] = {r: [lo, hi] for r, lo, hi in self.bands}
        d["flat_floor"] = {r: v for r, v in self.flat_floor}
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "PreprocessConfig":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(map(str, d)) - known)
        if unknown:
            raise PreprocessError(
                f"preprocessing config has unknown keys {unknown}; expected a subset of {sorted(known)} "
                "(was it written by a newer sleepedge?)"
            )
        try:
            if "bands" in d and isinstance(d["bands"], Mapping):
                d["bands"] = tuple((r, v[0], v[1]) for r, v in d["bands"].items())
            if "flat_floor" in d and isinstance(d["flat_floor"], Mapping):
                d["flat_floor"] = tuple((r, float(v)) for r, v in d["flat_floor"].items())
        except (TypeError, ValueError, IndexError, KeyError) as ex:
            raise PreprocessError(f"preprocessing config bands/flat_floor malformed ({ex}); expected "
                                  "{role: [lo_hz|null, hi_hz|null]} and {role: floor}") from None
        cfg = cls(**d)
        cfg.check()
        return cfg

    def check(self) -> None:
        """PreprocessError (one line) for a config no recording can be preprocessed with (a config
        read from a file: checkpoint, bundle manifest)."""
        num = contract.is_finite_number

        def integer(v, lo, hi) -> bool:
            return num(v) and float(v) == int(v) and lo <= v <= hi

        problems = []
        if not integer(self.fs_hz, 1, 10_000):
            problems.append(f"fs_hz={self.fs_hz!r} (expected a whole rate 1..10000 Hz)")
        if not (num(self.epoch_s) and 1 <= self.epoch_s <= 600):
            problems.append(f"epoch_s={self.epoch_s!r} (expected 1..600 s)")
        if not integer(self.filter_order, 1, 10):
            problems.append(f"filter_order={self.filter_order!r} (expected 1..10)")
        if not integer(self.resample_half_len, 1, 64):
            problems.append(f"resample_half_len={self.resample_half_len!r} (expected 1..64)")
        if not isinstance(self.normalise, bool):
            problems.append(f"normalise={self.normalise!r} (expected true/false)")
        for name in ("norm_halflife_epochs", "clip", "spo2_scale", "flat_window_s"):
            v = getattr(self, name)
            if not (num(v) and v > 0):
                problems.append(f"{name}={v!r} (expected a positive number)")
        if not num(self.spo2_center):
            problems.append(f"spo2_center={self.spo2_center!r} (expected a number)")
        for name in ("flat_fraction", "disconnected_fraction", "clip_fraction"):
            v = getattr(self, name)
            if not (num(v) and 0 <= v <= 1):
                problems.append(f"{name}={v!r} (expected 0..1)")
        nyq = self.fs_hz / 2 if num(self.fs_hz) and self.fs_hz > 0 else 0
        try:
            for r, lo, hi in self.bands:
                edges = [e for e in (lo, hi) if e is not None]
                if (not isinstance(r, str) or not all(num(e) and 0 < e < nyq for e in edges)
                        or (lo is not None and hi is not None and not lo < hi)):
                    problems.append(f"band {r!r}: {lo!r}..{hi!r} Hz (expected 0 < lo < hi < {nyq:g} Hz)")
            for r, v in self.flat_floor:
                if not (isinstance(r, str) and num(v) and v >= 0):
                    problems.append(f"flat_floor {r!r}: {v!r}")
        except (TypeError, ValueError):
            problems.append("bands/flat_floor malformed (expected (role, lo, hi) and (role, floor) items)")
        if problems:
            raise PreprocessError(f"preprocessing config invalid: {'; '.join(problems[:3])}"
                                  f"{'...' if len(problems) > 3 else ''}")


@dataclass
class Epoch:
    index: int
    onset_s: float
    data: np.ndarray      # float32 (n_roles, epoch_samples)
    quality: np.ndarray   # uint8 (n_roles,)


MAX_RESAMPLE_TERM = 1000  # up/down factors above this: a filter of 20*term taps, refused (1/3600 Hz: 7.2 M taps)


def _ratio(fs_in_hz: float, fs_out_hz: int) -> tuple[int, int]:
    """(up, down) with fs_in * up / down == fs_out, both <= MAX_RESAMPLE_TERM; else PreprocessError
    (one line) - a rate from a corrupt header never reaches the filter design."""
    try:
        fs_in_hz = float(fs_in_hz)
        ok = np.isfinite(fs_in_hz) and fs_in_hz > 0 and np.isfinite(fs_out_hz / fs_in_hz)
    except (TypeError, ValueError, OverflowError, ZeroDivisionError):
        ok = False
    if not ok:
        raise PreprocessError(f"sample rate {fs_in_hz!r} Hz is not a positive finite number; fix the channel header")
    frac = Fraction(fs_out_hz / fs_in_hz).limit_denominator(MAX_RESAMPLE_TERM)
    up, down = frac.numerator, frac.denominator
    if up < 1 or up > MAX_RESAMPLE_TERM or abs(fs_in_hz * up / down - fs_out_hz) > 1e-9 * fs_out_hz:
        raise PreprocessError(
            f"cannot resample {fs_in_hz} Hz to {fs_out_hz} Hz with a rational factor of small terms; "
            "resample the recording to a common rate (e.g. 100, 128, 200, 250, 256, 500 Hz) first"
        )
    return up, down


class _Resampler:
    """Causal streaming polyphase resampler (resample_poly's filter, upfirdn's sums, block-wise)."""

    def __init__(self, fs_in_hz: float, fs_out_hz: int, half_len_factor: int):
        self.up, self.down = _ratio(fs_in_hz, fs_out_hz)
        self.identity = self.up == 1 and self.down == 1
        if not self.identity:
            max_rate = max(self.up, self.down)
            half_len = half_len_factor * max_rate
            self.h = dsp.firwin_kaiser(2 * half_len + 1, 1.0 / max_rate, 5.0) * self.up
            self._poly = dsp.PolyphaseResampler(self.h, self.up, self.down)
        self.n_in = 0
        self.n_out = 0

    def process(self, x: np.ndarray) -> np.ndarray:
        self.n_in += len(x)
        if self.identity:
            self.n_out += len(x)
            return x
        y = self._poly.process(x)
        self.n_out += len(y)
        return y


class _RoleState:
    def __init__(self, role: str, fs_in_hz: float, cfg: PreprocessConfig):
        if not np.isfinite(fs_in_hz) or fs_in_hz <= 0:
            raise PreprocessError(f"{role}: sample rate {fs_in_hz!r} Hz is not a positive number; fix the channel header")
        self.role = role
        self.fs_in_hz = float(fs_in_hz)
        self.epoch_s = cfg.epoch_s
        self.resampler = _Resampler(fs_in_hz, cfg.fs_hz, cfg.resample_half_len)
        lo, hi = cfg.band(role)
        nyq = cfg.fs_hz / 2.0
        if lo is not None and hi is not None:
            self.sos = dsp.butter_sos(cfg.filter_order, [lo / nyq, hi / nyq], "bandpass")
        elif lo is not None:
            self.sos = dsp.butter_sos(cfg.filter_order, lo / nyq, "highpass")
        elif hi is not None:
            self.sos = dsp.butter_sos(cfg.filter_order, hi / nyq, "lowpass")
        else:
            self.sos = None
        self.iir = dsp.SOSFilter(self.sos) if self.sos is not None else None
        self.zi = np.zeros((self.sos.shape[0], 2)) if self.sos is not None else None
        self.out = np.zeros(0)         # filtered 100-Hz samples not yet emitted
        self.raw = []                  # raw chunks of the input epoch being accumulated
        self.raw_n = 0
        self.raw_epoch = 0             # index of the input epoch being accumulated
        self.n_raw_total = 0
        self.flags: dict[int, int] = {}
        self.log_scale: float | None = None

    def epoch_bounds(self, e: int) -> int:
        """Absolute input sample index where epoch e starts."""
        return int(round(e * self.epoch_s * self.fs_in_hz))


class CausalPreprocessor:
    """Stateful, causal preprocessing of a multi-role recording, epoch by epoch.

    `push()` accepts chunks of any size for any subset of roles (each at its native rate,
    in µV, or % for SPO2) and returns every epoch completed by that push.
    """

    def __init__(self, rates_hz: Mapping[str, float], config: PreprocessConfig | None = None):
        self.config = config or PreprocessConfig()
        unknown = [r for r in rates_hz if r not in contract.ROLES]
        if unknown:
            raise PreprocessError(f"unknown role(s) {unknown}; expected some of {list(contract.ROLES)}")
        if not rates_hz:
            raise PreprocessError("no channels to preprocess: map at least one channel to a role (e.g. --channel EEG=C4-M1)")
        self.roles: tuple[str, ...] = tuple(r for r in contract.ROLES if r in rates_hz)
        self._states = {r: _RoleState(r, float(rates_hz[r]), self.config) for r in self.roles}
        self._decay = 0.5 ** (1.0 / self.config.norm_halflife_epochs)
        self._next_epoch = 0
        self._gaps: list[tuple[float, float]] = []

    @property
    def epochs_emitted(self) -> int:
        return self._next_epoch

    def mark_gap(self, start_s: float, stop_s: float) -> None:
        """Flag every epoch overlapping [start_s, stop_s) with Q_GAP (stream dropout, EDF+D gap)."""
        if stop_s > start_s:
            self._gaps.append((float(start_s), float(stop_s)))

    def push(self, chunks: Mapping[str, np.ndarray]) -> list[Epoch]:
        for role, x in chunks.items():
            st = self._states.get(role)
            if st is None:
                raise PreprocessError(
                    f"role {role!r} was not declared when the preprocessor was built (declared: {list(self.roles)})"
                )
            x = np.asarray(x, dtype=np.float64).ravel()
            if x.size:
                self._ingest(st, x)
        return self._emit()

    # -- per role -----------------------------------------------------------------------
    def _ingest(self, st: _RoleState, x: np.ndarray) -> None:
        finite = np.isfinite(x)
        # raw quality per input epoch
        pos = 0
        done: list[tuple[int, np.ndarray]] = []
        while pos < len(x):
            end_abs = st.epoch_bounds(st.raw_epoch + 1)
            take = min(len(x) - pos, end_abs - st.n_raw_total)
            if take > 0:
                st.raw.append(x[pos : pos + take])
                st.raw_n += take
                st.n_raw_total += take
                pos += take
            if st.n_raw_total >= end_abs:
                raw = (st.raw[0] if len(st.raw) == 1 else np.concatenate(st.raw)) if st.raw else np.zeros(0)
                done.append((st.raw_epoch, raw))
                st.raw, st.raw_n = [], 0
                st.raw_epoch += 1
        self._flag_epochs(st, done)
        clean = np.where(finite, x, 0.0) if not finite.all() else x
        y = st.resampler.process(clean)
        if st.sos is not None and len(y):
            y, st.zi = st.iir.filter(y, st.zi)
        st.out = np.concatenate([st.out, y]) if len(st.out) else y

    def _flag_epochs(self, st: _RoleState, done: list[tuple[int, np.ndarray]]) -> None:
        """Quality flags of the input epochs a push completed: the same numbers as `_raw_flags`
        epoch by epoch, computed for equal-length all-finite epochs as one (k, n) array."""
        if len(done) < 2:
            for e, raw in done:
                st.flags[e] = self._raw_flags(st.role, raw, st.fs_in_hz)
            return
        n = len(done[0][1])
        if n == 0 or any(len(raw) != n for _, raw in done):
            for e, raw in done:
                st.flags[e] = self._raw_flags(st.role, raw, st.fs_in_hz)
            return
        R = np.stack([raw for _, raw in done])
        ok = np.isfinite(R).all(axis=1)
        for k in np.nonzero(~ok)[0]:   # epochs with NaN/Inf: the general path
            e, raw = done[k]
            st.flags[e] = self._raw_flags(st.role, raw, st.fs_in_hz)
        if not ok.any():
            return
        idx = np.nonzero(ok)[0]
        R = R[idx] if len(idx) < len(R) else R
        for k, f in zip(idx, self._raw_flags_finite(st.role, R, st.fs_in_hz)):
            st.flags[done[k][0]] = int(f)

    def _raw_flags_finite(self, role: str, R: np.ndarray, fs_in_hz: float) -> np.ndarray:
        """`_raw_flags` for k all-finite epochs of n samples each (rows of R) -> (k,) flags."""
        cfg = self.config
        k, n = R.shape
        flags = np.zeros(k, dtype=np.int64)
        if role == "SPO2":
            bad = (R < 50.0) | (R > 100.0)
            flags[bad.mean(axis=1) >= cfg.disconnected_fraction] |= contract.Q_DISCONNECTED
            return flags
        win = max(8, int(round(cfg.flat_window_s * fs_in_hz)))
        n_win = n // win
        flat_frac = np.zeros(k)
        if n_win:
            sd = R[:, : n_win * win].reshape(k, n_win, win).std(axis=2)
            flat_frac = (sd < cfg.floor(role)).mean(axis=1)
            flags[flat_frac >= cfg.flat_fraction] |= contract.Q_FLAT
        hi = R.max(axis=1)
        lo = R.min(axis=1)
        n_rail = np.maximum(np.count_nonzero(R == hi[:, None], axis=1), np.count_nonzero(R == lo[:, None], axis=1))
        rail_frac = np.where(hi > lo, n_rail / n, 0.0)
        flags[(hi > lo) & (n_rail >= 3) & (rail_frac >= cfg.clip_fraction)] |= contract.Q_CLIPPED
        flags[(flat_frac >= cfg.disconnected_fraction) | (rail_frac >= 0.5)] |= contract.Q_DISCONNECTED
        return flags

    def _raw_flags(self, role: str, raw: np.ndarray, fs_in_hz: float) -> int:
        cfg = self.config
        flags = 0
        if raw.size == 0:
            return contract.Q_GAP
        finite = np.isfinite(raw)
        nan_frac = 1.0 - finite.mean()
        if nan_frac > 0:
            flags |= contract.Q_NAN
        if role == "SPO2":
            # a constant saturation is normal; only values outside 50-100 % mean a dead probe
            with np.errstate(invalid="ignore"):
                bad = ~finite | (raw < 50.0) | (raw > 100.0)
            if bad.mean() >= cfg.disconnected_fraction:
                flags |= contract.Q_DISCONNECTED
            return flags
        # flatness in windows of flat_window_s, but never fewer than 8 samples (1-Hz channels)
        win = max(8, int(round(cfg.flat_window_s * fs_in_hz)))
        n_win = len(raw) // win
        flat_frac = 0.0
        if n_win:
            w = raw[: n_win * win].reshape(n_win, win)
            fin = np.isfinite(w)
            all_nan = ~fin.any(axis=1)
            if nan_frac:
                cnt = np.maximum(fin.sum(axis=1), 1)
                w0 = np.where(fin, w, 0.0)
                mean = w0.sum(axis=1) / cnt
                sd = np.sqrt(np.maximum((np.where(fin, w - mean[:, None], 0.0) ** 2).sum(axis=1) / cnt, 0.0))
            else:
                sd = w.std(axis=1)
            flat = (sd < cfg.floor(role)) & ~all_nan
            flat_frac = float(flat.mean())
            if flat_frac >= cfg.flat_fraction:
                flags |= contract.Q_FLAT
        rail_frac = 0.0
        if finite.any():
            v = raw[finite]
            hi, lo = v.max(), v.min()
            if hi > lo:
                n_rail = max(np.count_nonzero(v == hi), np.count_nonzero(v == lo))
                rail_frac = n_rail / len(raw)
                if n_rail >= 3 and rail_frac >= cfg.clip_fraction:
                    flags |= contract.Q_CLIPPED
        if flat_frac + nan_frac >= cfg.disconnected_fraction or rail_frac >= 0.5:
            flags |= contract.Q_DISCONNECTED
        return flags

    # -- epochs ---------------------------------------------------------------------------
    def _emit(self) -> list[Epoch]:
        cfg = self.config
        n = cfg.epoch_samples
        out: list[Epoch] = []
        while True:
            e = self._next_epoch
            ready = all(len(st.out) >= n and e in st.flags for st in self._states.values())
            if not ready:
                return out
            data = np.empty((len(self.roles), n), dtype=np.float32)
            quality = np.zeros(len(self.roles), dtype=np.uint8)
            onset = e * cfg.epoch_s
            gap = any(a < onset + cfg.epoch_s and b > onset for a, b in self._gaps)
            if self._gaps:  # gaps wholly before the next epoch can never match again
                self._gaps = [(a, b) for a, b in self._gaps if b > onset + cfg.epoch_s]
            for i, role in enumerate(self.roles):
                st = self._states[role]
                seg, st.out = st.out[:n], st.out[n:]
                q = st.flags.pop(e) | (contract.Q_GAP if gap else 0)
                data[i] = self._normalise(st, seg, q)
                quality[i] = q
            out.append(Epoch(index=e, onset_s=onset, data=data, quality=quality))
            self._next_epoch += 1

    def _normalise(self, st: _RoleState, seg: np.ndarray, q: int) -> np.ndarray:
        cfg = self.config
        if not cfg.normalise:
            return seg
        if st.role == "SPO2":
            y = (seg - cfg.spo2_center) / cfg.spo2_scale
        else:
            usable = not (q & (contract.Q_FLAT | contract.Q_DISCONNECTED))
            if usable:
                sub = seg[::4]  # 25-Hz subsample: the same robust scale at a quarter of the cost
                mad = np.median(np.abs(sub - np.median(sub))) * 1.4826
                if mad > 0:
                    ls = float(np.log(mad))
                    st.log_scale = ls if st.log_scale is None else self._decay * st.log_scale + (1 - self._decay) * ls
            scale = np.exp(st.log_scale) if st.log_scale is not None else 1.0
            y = seg / scale
        return np.clip(y, -cfg.clip, cfg.clip)


def usable_rates(
    rates_hz: Mapping[str, float], config: PreprocessConfig | None = None
) -> tuple[dict[str, float], dict[str, str]]:
    """Split role rates into those the model can use and those it cannot (with the reason).

    A channel sampled below twice the lower edge of its role's band carries none of the band
    the model reads (Sleep-EDF's 1-Hz `EMG submental` is an RMS envelope, not EMG): it is
    treated as a missing role and reported, never silently fed as zeros or noise. So is a
    channel whose rate cannot be resampled to the model rate (`_ratio` refuses it: a rate from a
    corrupt header, or not a ratio of small integers of fs_hz).
    """
    cfg = config or PreprocessConfig()
    usable: dict[str, float] = {}
    dropped: dict[str, str] = {}
    for role, fs in rates_hz.items():
        lo, _ = cfg.band(role)
        if lo is not None and fs <= 2 * lo:
            dropped[role] = (
                f"{role} sampled at {fs:g} Hz cannot carry its {lo:g} Hz+ band "
                f"(needs > {2 * lo:g} Hz); treated as missing"
            )
        else:
            try:
                _ratio(fs, cfg.fs_hz)
            except PreprocessError as ex:
                dropped[role] = f"{role} sampled at {fs:g} Hz: {ex}; treated as missing"
                continue
            usable[role] = float(fs)
    return usable, dropped


def preprocess_arrays(
    signals: Mapping[str, np.ndarray],
    rates_hz: Mapping[str, float],
    config: PreprocessConfig | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Whole recording in one call -> (data (n, R, 3000) float32, quality (n, R) uint8, roles).

    Identical (to float rounding) to pushing the same samples epoch by epoch: tested.
    A trailing partial epoch is dropped.
    """
    pre = CausalPreprocessor(rates_hz, config)
    epochs = pre.push(signals)
    return stack_epochs(epochs, len(pre.roles), pre.config.epoch_samples) + (pre.roles,)


def stack_epochs(epochs: Sequence[Epoch], n_roles: int, epoch_samples: int) -> tuple[np.ndarray, np.ndarray]:
    if not epochs:
        return np.zeros((0, n_roles, epoch_samples), np.float32), np.zeros((0, n_roles), np.uint8)
    return np.stack([e.data for e in epochs]), np.stack([e.quality for e in epochs])


def model_input(
    data: np.ndarray,
    quality: np.ndarray,
    roles: Sequence[str],
    model_roles: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """Arrange preprocessed epochs in the model's modality order with a presence mask.

    data (n, R, S) in `roles` order -> x (n, M, S) float32 in `model_roles` order, present
    (n, M) float32. A role the recording lacks gets zeros and present 0; an epoch whose
    channel is disconnected, or that falls in a recording gap, is also presented as absent for that epoch (the model was trained
    with modality dropout, so it degrades gracefully instead of reading garbage).
    """
    n, _, s = data.shape
    x = np.zeros((n, len(model_roles), s), dtype=np.float32)
    present = np.zeros((n, len(model_roles)), dtype=np.float32)
    index = {r: i for i, r in enumerate(roles)}
    for j, role in enumerate(model_roles):
        i = index.get(role)
        if i is None:
            continue
        ok = (quality[:, i] & (contract.Q_DISCONNECTED | contract.Q_GAP)) == 0
        x[:, j] = np.where(ok[:, None], data[:, i], 0.0)
        present[:, j] = ok
    return x, present


def quality_summary(quality: np.ndarray, roles: Iterable[str]) -> dict[str, dict[str, int]]:
    """Count epochs per role and flag: {role: {"nan": k, "flat": k, ...}}."""
    out: dict[str, dict[str, int]] = {}
    for i, role in enumerate(roles):
        col = quality[:, i] if quality.size else np.zeros(0, np.uint8)
        out[role] = {name: int(np.count_nonzero(col & bit)) for name, bit in contract.QUALITY_FLAGS.items()}
    return out
