"""Live signal sources for `sleepedge stream` (torch-free).

Every source exposes
    rates_hz   role -> native sample rate of the roles it delivers
    labels     role -> channel label (or "#<index>" for an LSL stream without labels)
    start      datetime of the first sample (None when unknown)
    __iter__   yields `Chunk`s: {role: samples (µV; % for SpO2)} plus `gap_s`, the seconds of
               signal missing BEFORE this chunk (LSL timestamp jump, EDF+D hole); the scorer
               fills a gap with NaN and flags the epochs `gap`, it is never fatal.

EDFReplaySource   replays a file in `chunk_s` pieces, in real time (`speed=1`), N x faster
                  (`speed=N`) or as fast as possible (`speed=0`).
LSLSource         a Lab Streaming Layer inlet resolved by stream name. Channel labels come
                  from the stream's `desc/channels/channel/label` when present, else
                  `--channel ROLE=INDEX` maps channel indices (0-based) to roles. A stream that
                  sends nothing for `timeout_s` raises `StreamError` (what was scored is on disk);
                  a stream whose sender closed ends the iteration normally (liblsl then
                  discards samples not yet pulled: at most the last pull interval, < 0.5 s).
                  pylsl reads its config from $LSLAPICFG (tests point it at
                  sleepedge/lsl/lsl_api.cfg: 127.0.0.1 only).
"""

from __future__ import annotations

import bisect
import itertools
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from sleepedge.contract import ROLES
from sleepedge.errors import ChannelError, StreamError


@dataclass
class Chunk:
    data: dict[str, np.ndarray]
    gap_s: float = 0.0
    t_s: float = 0.0                 # signal time of the chunk's first sample (s from start)


def _gap_index(gaps) -> tuple[list[float], list[float]]:
    """(onset_s, duration_s) gaps -> (sorted starts, running max of their ends) for `_chunk_spans`."""
    spans = sorted((a, a + d) for a, d in gaps)
    return [a for a, _ in spans], list(itertools.accumulate((b for _, b in spans), max))


def _chunk_spans(onset_s: float, block_s: float, chunk_s: float, gaps) -> list[tuple[float, float]]:
    """Chunk [a, b) offsets of a block starting at `onset_s`: `chunk_s` each, except that chunks
    lying wholly inside an EDF+D gap (NaN samples, no data arrives live either) are merged into one:
    a header declaring a day of gaps costs a few pushes, not 86,400 one-second ones."""
    n = int(np.ceil(block_s / chunk_s - 1e-9))
    starts, ends = gaps
    spans: list[tuple[float, float]] = []
    merged = False
    for k in range(n):
        a, b = k * chunk_s, min((k + 1) * chunk_s, block_s)
        g = bisect.bisect_right(starts, onset_s + a) - 1
        inside = g >= 0 and onset_s + b <= ends[g]
        if inside and merged and spans:
            spans[-1] = (spans[-1][0], b)
        else:
            spans.append((a, b))
        merged = inside
    return spans


class EDFReplaySource:
    def __init__(self, path, overrides: Mapping[str, str] | None = None, speed: float = 0.0,
                 chunk_s: float = 1.0, roles=ROLES, block_epochs: int = 4):
        from sleepedge.channels import assign_roles
        from sleepedge.edf import open_edf

        if speed < 0:
            raise StreamError(f"--speed {speed}: expected 0 (as fast as possible) or a positive factor (1 = real time)")
        if chunk_s <= 0:
            raise StreamError(f"chunk of {chunk_s} s: expected a positive duration")
        self.path = Path(path)
        self.speed = float(speed)
        self.chunk_s = float(chunk_s)
        self.block_epochs = block_epochs
        self.fast_until_s = 0.0          # no pacing before this signal time (--resume fast-forward)
        self.reader = open_edf(self.path, backend="native")   # same samples as pyedflib (tested), no pyedflib import
        header = self.reader.header
        self.header = header
        self.role_map = assign_roles([s.label for s in header.signals], overrides or {}, roles=roles)
        self.labels = dict(self.role_map.primary)
        self.rates_hz = {r: float(header.signal(lab).fs_hz) for r, lab in self.labels.items()}
        self.start: datetime | None = header.start
        self.duration_s = float(header.duration_s)

    def describe(self) -> str:
        pace = "as fast as possible" if self.speed == 0 else f"{self.speed:g}x real time"
        return f"EDF replay {self.path.name} ({pace}, {self.chunk_s:g}-s chunks)"

    def select(self, roles) -> None:
        """Read only these roles (the ones the model uses)."""
        self.labels = {r: self.labels[r] for r in roles if r in self.labels}
        self.rates_hz = {r: self.rates_hz[r] for r in self.labels}

    def __iter__(self) -> Iterator[Chunk]:
        label_role = {lab: r for r, lab in self.labels.items()}
        gaps = _gap_index(getattr(self.header, "gaps", None) or [])
        t_wall0 = time.monotonic()
        expected = 0.0
        try:
            for onset_s, block in self.reader.iter_epochs(list(self.labels.values()), n_epochs_per_block=self.block_epochs):
                gap = max(0.0, onset_s - expected) if onset_s > expected + 1e-6 else 0.0
                block_s = max(len(v) / self.rates_hz[label_role[lab]] for lab, v in block.items())
                for k, (a_s, b_s) in enumerate(_chunk_spans(onset_s, block_s, self.chunk_s, gaps)):
                    data = {}
                    for lab, v in block.items():
                        fs = self.rates_hz[label_role[lab]]
                        data[label_role[lab]] = v[int(round(a_s * fs)):int(round(b_s * fs))]
                    t = onset_s + a_s
                    if t + (b_s - a_s) <= self.fast_until_s:
                        t_wall0 = time.monotonic() - (t + (b_s - a_s)) / self.speed if self.speed > 0 else t_wall0
                    elif self.speed > 0:
                        delay = t_wall0 + (t + (b_s - a_s)) / self.speed - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                    yield Chunk(data, gap_s=gap if k == 0 else 0.0, t_s=t)
                expected = onset_s + block_s
        finally:
            self.close()

    def close(self) -> None:
        close = getattr(self.reader, "close", None)
        if close is not None:
            close()


def _lsl_labels(info) -> list[str]:
    labels = []
    ch = info.desc().child("channels").child("channel")
    while not ch.empty():
        labels.append(ch.child_value("label"))
        ch = ch.next_sibling("channel")
    return labels if len(labels) == info.channel_count() and all(labels) else []


def _lsl_unit_scale(info, index: int) -> float:
    """µV per stream unit from desc/channels/channel/unit (V, mV, µV/uV; default µV)."""
    ch = info.desc().child("channels").child("channel")
    for _ in range(index):
        ch = ch.next_sibling("channel")
    unit = (ch.child_value("unit") if not ch.empty() else "").strip().lower()
    return {"v": 1e6, "volts": 1e6, "mv": 1e3, "millivolts": 1e3}.get(unit, 1.0)


class LSLSource:
    def __init__(self, name: str, overrides: Mapping[str, str] | None = None, timeout_s: float = 10.0,
                 chunk_s: float = 1.0, resolve_timeout_s: float | None = None, roles=ROLES):
        import pylsl
        from pylsl.util import LostError, TimeoutError as LSLTimeout

        from sleepedge.channels import assign_roles

        self.pylsl = pylsl
        self._lost = (LostError, LSLTimeout)
        self.name = name
        self.timeout_s = float(timeout_s)
        self.chunk_s = float(chunk_s)
        found = pylsl.resolve_byprop("name", name, 1, resolve_timeout_s or self.timeout_s)
        if not found:
            raise StreamError(f"no LSL stream named {name!r} found within {resolve_timeout_s or self.timeout_s:g} s; "
                              "check the sender is running on this network (LSLAPICFG) or raise --timeout-s")
        info = found[0]
        fs = float(info.nominal_srate())
        if fs <= 0:
            raise StreamError(f"LSL stream {name!r} has an irregular rate (nominal_srate 0); a regularly sampled stream is needed")
        self.fs = fs
        self.inlet = pylsl.StreamInlet(info, max_buflen=360, recover=False,
                                       processing_flags=pylsl.proc_clocksync)  # no dejitter: it would smear gaps
        try:
            full = self.inlet.info(timeout=self.timeout_s)
            self.inlet.open_stream(timeout=self.timeout_s)  # subscribe now: samples from here on are kept
        except self._lost:
            raise StreamError(f"LSL stream {name!r} did not accept a connection within {self.timeout_s:g} s; "
                              "check the sender or raise --timeout-s") from None
        labels = _lsl_labels(full)
        overrides = dict(overrides or {})
        if labels:
            rm = assign_roles(labels, overrides, roles=roles)
            self.index = {r: labels.index(lab) for r, lab in rm.primary.items()}
            self.labels = dict(rm.primary)
        else:
            if not overrides:
                raise ChannelError(
                    f"LSL stream {name!r} carries no channel labels; map channels by index, "
                    "e.g. --channel EEG=0 --channel EOG=1"
                )
            self.index = {}
            for role, idx in overrides.items():
                try:
                    i = int(idx)
                except ValueError:
                    raise ChannelError(f"--channel {role}={idx}: stream {name!r} has no labels, so the value must be a "
                                       f"0-based channel index below {info.channel_count()}") from None
                if not 0 <= i < info.channel_count():
                    raise ChannelError(f"--channel {role}={idx}: stream {name!r} has {info.channel_count()} channels (0..{info.channel_count() - 1})")
                self.index[role] = i
            self.labels = {r: f"#{i}" for r, i in self.index.items()}
        self.scale = {r: _lsl_unit_scale(full, i) for r, i in self.index.items()}
        self.rates_hz = {r: fs for r in self.index}
        self.start = datetime.now()

    def describe(self) -> str:
        return f"LSL stream {self.name!r} ({self.fs:g} Hz, channels {self.labels})"

    def select(self, roles) -> None:
        self.index = {r: self.index[r] for r in roles if r in self.index}
        self.labels = {r: self.labels[r] for r in self.index}
        self.rates_hz = {r: self.fs for r in self.index}

    def __iter__(self) -> Iterator[Chunk]:
        last_ts = None
        last_data = time.monotonic()
        t_signal = 0.0
        step = 1.0 / self.fs
        max_samples = max(1, int(round(self.chunk_s * self.fs)))
        try:
            while True:
                try:
                    samples, stamps = self.inlet.pull_chunk(timeout=min(0.5, self.timeout_s), max_samples=max_samples)
                except self._lost[0]:
                    return  # the sender closed the stream: a normal end
                if not stamps:
                    if time.monotonic() - last_data > self.timeout_s:
                        raise StreamError(
                            f"LSL stream {self.name!r} sent no samples for {self.timeout_s:g} s (stalled); "
                            "the epochs scored so far are saved; restart the sender or raise --timeout-s"
                        )
                    continue
                last_data = time.monotonic()
                arr = np.asarray(samples, dtype=np.float64)
                gap = 0.0
                if last_ts is not None:
                    jump = stamps[0] - last_ts - step
                    if jump > max(0.25, 5 * step):
                        gap = jump
                last_ts = stamps[-1]
                data = {r: arr[:, i] * self.scale[r] for r, i in self.index.items()}
                yield Chunk(data, gap_s=gap, t_s=t_signal)
                t_signal += gap + len(stamps) * step
        finally:
            self.close()

    def close(self) -> None:
        try:
            self.inlet.close_stream()
        except RuntimeError:  # pylsl's LostError/InternalError: closing an already lost inlet
            pass


# --------------------------------------------------------------------------- in-memory recordings
@dataclass
class ArraySignal:
    """One in-memory channel: what `score_recording` reads of an EDF `SignalInfo`."""

    index: int
    label: str
    fs_hz: float
    n_samples: int
    unit: str = "uV"


class RecordingHeader:
    """The part of `sleepedge.edf.EDFHeader` that `score_recording` and the sinks use, for a
    recording held in memory (gaps: an MNE Raw's BAD_* spans; no annotations, no header quirks, so
    no EDF-only fields: path, annotations, edf_plus, discontinuous, unusable)."""

    def __init__(self, name: str, signals: list[ArraySignal], start: datetime | None = None,
                 warnings: list[str] | None = None):
        self.name = name
        self.signals = signals
        self.start = start
        self.warnings: list[str] = list(warnings or [])
        self.gaps: list[tuple[float, float]] = []

    @property
    def duration_s(self) -> float:
        """The longest channel's length in seconds."""
        return max((s.n_samples / s.fs_hz for s in self.signals), default=0.0)

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.signals]

    def signal(self, label_or_index) -> ArraySignal:
        if isinstance(label_or_index, ArraySignal):
            return label_or_index
        if isinstance(label_or_index, int) and not isinstance(label_or_index, bool):
            if 0 <= label_or_index < len(self.signals):
                return self.signals[label_or_index]
        else:
            for s in self.signals:
                if s.label == label_or_index:
                    return s
        raise ChannelError(f"{self.name}: no channel {label_or_index!r}; channels: {self.labels}")


def _mne_bad_spans(raw, duration_s: float) -> list[tuple[float, float]]:
    """(onset_s, duration_s) of the Raw's `BAD*` annotations (MNE's convention, any case), in
    seconds from the Raw's first sample, clipped to the recording, overlaps merged."""
    ann = getattr(raw, "annotations", None)
    if ann is None or not len(ann):
        return []
    # onsets are relative to orig_time (= meas_date) when it is set, else to the data's start
    t0 = float(raw.first_time) if ann.orig_time is not None else 0.0
    spans = sorted((max(0.0, float(o) - t0), min(duration_s, float(o) - t0 + float(d)))
                   for o, d, desc in zip(ann.onset, ann.duration, ann.description)
                   if str(desc).upper().startswith("BAD"))
    merged: list[list[float]] = []
    for a, b in spans:
        if b <= a:
            continue
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b - a) for a, b in merged]


class ArrayRecording:
    """A recording held in memory with the reader interface `runtime.scorer.score_recording`
    uses for an EDF (`header`, `iter_epochs`, `read`), so arrays, an MNE Raw and an EDF path go
    through the same preprocessing and scoring code, block by block exactly as the EDF reader
    cuts them (sample boundaries round(t * fs)).

    signals: label -> (samples, fs_hz); samples 1-D, µV for voltage channels (SpO2 in %, other
    non-voltage channels in their own unit, as `sleepedge.edf` reads them); NaN marks missing
    samples (the scorer flags those epochs `nan`). Channels may have different rates and lengths.
    """

    MAX_SAMPLES = 400_000_000        # per channel: ~46 days at 100 Hz; more is a wrong array, not a night

    def __init__(self, signals: Mapping[str, tuple[np.ndarray, float]], *, start: datetime | None = None,
                 name: str = "<arrays>"):
        if not isinstance(signals, Mapping) or not signals:
            raise ChannelError(f"{name}: expected a non-empty mapping {{label: (samples, fs_hz)}}, got "
                               f"{type(signals).__name__}; e.g. {{'EEG Fpz-Cz': (x, 100.0)}}")
        self.name = name
        self._data: dict[str, np.ndarray] = {}
        infos = []
        for k, (label, value) in enumerate(signals.items()):
            label = str(label)
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise ChannelError(f"{name}: channel {label!r} is {type(value).__name__}; expected a pair "
                                   f"(samples, fs_hz), e.g. {{{label!r}: (x, 100.0)}}")
            x, fs = value
            try:
                fs = float(fs)
            except (TypeError, ValueError):
                fs = float("nan")
            if not (np.isfinite(fs) and 0 < fs <= 100_000):
                raise ChannelError(f"{name}: channel {label!r} has sample rate {value[1]!r}; expected a number "
                                   f"of Hz in (0, 100000]")
            try:
                arr = np.asarray(x, dtype=np.float64)
            except (TypeError, ValueError):
                raise ChannelError(f"{name}: channel {label!r} samples are not numbers; pass a 1-D float "
                                   f"array (µV)") from None
            if arr.ndim != 1:
                raise ChannelError(f"{name}: channel {label!r} samples have shape {arr.shape}; pass one 1-D "
                                   f"array per channel")
            if arr.size > self.MAX_SAMPLES:
                raise ChannelError(f"{name}: channel {label!r} holds {arr.size} samples (> {self.MAX_SAMPLES}); "
                                   f"score it in parts")
            if label in self._data:
                raise ChannelError(f"{name}: channel label {label!r} appears twice; labels must be unique")
            self._data[label] = arr
            infos.append(ArraySignal(k, label, fs, int(arr.size)))
        self.header = RecordingHeader(name, infos, start)
        self.types: dict[str, str] = {}   # label -> MNE channel type (from_mne), used when a label has no role

    @classmethod
    def from_mne(cls, raw, name: str | None = None) -> "ArrayRecording":
        """The channels of an `mne.io.BaseRaw` (MNE imported by the caller, not here).

        Voltage channels (file unit V/mV/µV/nV, or MNE unit V when the file unit is unknown) are
        `raw.get_data(units="uV")`; other channels (SpO2 %, a thermistor in 'n/a') keep their
        physical values as `sleepedge.edf` reads them. Start: `raw.info["meas_date"]` (naive,
        as an EDF header gives it). Channels in `raw.info["bads"]` are left out; spans annotated
        `BAD*` are NaN and scored as gaps (`header.gaps`), as EDF+D holes are."""
        try:
            ch_names = list(raw.ch_names)
            sfreq = float(raw.info["sfreq"])
            chs = raw.info["chs"]
        except (AttributeError, KeyError, TypeError):
            raise ChannelError(f"{type(raw).__name__}: not an mne.io.BaseRaw (no ch_names / info['sfreq']); "
                               "pass an MNE Raw, a path or {label: (samples, fs_hz)}") from None
        orig = getattr(raw, "_orig_units", None) or {}
        scale = np.ones(len(ch_names))
        for i, (ch, info) in enumerate(zip(ch_names, chs)):
            unit = str(orig.get(ch, "")).strip().replace("µ", "u").replace("μ", "u")
            if unit:
                volt = unit.lower() in ("v", "mv", "uv", "nv")
            else:
                volt = int(info.get("unit", 0)) == 107   # FIFF_UNIT_V
            scale[i] = 1e6 if volt else 1.0
        start = raw.info.get("meas_date")
        if start is not None and getattr(start, "tzinfo", None) is not None:
            start = start.replace(tzinfo=None)
        fnames = getattr(raw, "filenames", None) or ()
        label = name or (f"<mne Raw {Path(str(fnames[0])).name}>" if fnames and fnames[0] else "<mne Raw>")
        rec = cls.__new__(cls)
        rec.name = label
        rec._data = {}
        rec._raw = raw                   # read block by block (get_data(picks, start, stop)): no whole-night copy
        rec._index = {ch: i for i, ch in enumerate(ch_names)}
        rec._scale = {ch: float(scale[i]) for i, ch in enumerate(ch_names)}
        n = int(raw.n_times)
        bads = set(raw.info.get("bads") or ())   # channels marked bad in MNE are not used (named in the warnings)
        rec.header = RecordingHeader(label, [ArraySignal(i, ch, sfreq, n) for i, ch in enumerate(ch_names) if ch not in bads],
                                     start, [f"{ch}: marked bad in raw.info['bads'], not used" for ch in ch_names if ch in bads])
        rec.header.gaps = _mne_bad_spans(raw, n / sfreq)
        if rec.header.gaps:
            total = sum(d for _, d in rec.header.gaps)
            rec.header.warnings.append(f"{len(rec.header.gaps)} BAD_* annotation span(s), {total:g} s: "
                                       "read as NaN and scored as gaps (as MNE's reject_by_annotation)")
        rec.types = dict(zip(ch_names, raw.get_channel_types()))
        return rec

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self) -> None:
        pass

    def read(self, signal, start_s: float = 0.0, stop_s: float | None = None) -> np.ndarray:
        """Samples of one channel on [start_s, stop_s) (as `EDFReader.read`: sample k at
        (round(start_s*fs) + k) / fs, cut at the end of the recording)."""
        info = self.header.signal(signal)
        end_s = self.header.duration_s if stop_s is None else min(float(stop_s), self.header.duration_s)
        s0, s1 = int(round(start_s * info.fs_hz)), min(int(round(end_s * info.fs_hz)), info.n_samples)
        if s1 <= s0:
            return np.zeros(0, dtype=np.float64)
        if info.label not in self._data:   # an MNE Raw: this block of this channel only
            x = self._raw.get_data(picks=[self._index[info.label]], start=s0, stop=s1)[0]
            x = np.asarray(x, dtype=np.float64) * self._scale[info.label]
            for g0, dur in self.header.gaps:   # BAD_* spans: NaN (the scorer flags those epochs `gap`)
                a, b = max(int(round(g0 * info.fs_hz)), s0), min(int(round((g0 + dur) * info.fs_hz)), s1)
                if b > a:
                    x[a - s0:b - s0] = np.nan
            return x
        return self._data[info.label][s0:s1].copy()

    def iter_epochs(self, signals=None, n_epochs_per_block: int = 20, epoch_s: float = 30.0):
        """(onset_s, {label: samples}) blocks of `n_epochs_per_block` epochs, cut as
        `EDFReader.iter_epochs` cuts them (its per-block sample bound included)."""
        from sleepedge.edf import _MAX_BLOCK_SAMPLES

        infos = [self.header.signal(s) for s in (self.header.signals if signals is None else signals)]
        fs_max = max((i.fs_hz for i in infos), default=1.0)
        n = max(1, min(int(n_epochs_per_block), int(_MAX_BLOCK_SAMPLES // (float(epoch_s) * fs_max))))
        block_s = n * float(epoch_s)
        total = self.header.duration_s
        k = 0
        while k * block_s < total:
            t0 = k * block_s
            yield t0, {i.label: self.read(i, t0, t0 + block_s) for i in infos}
            k += 1
