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
        t_wall0 = time.monotonic()
        expected = 0.0
        try:
            for onset_s, block in self.reader.iter_epochs(list(self.labels.values()), n_epochs_per_block=self.block_epochs):
                gap = max(0.0, onset_s - expected) if onset_s > expected + 1e-6 else 0.0
                block_s = max(len(v) / self.rates_hz[label_role[lab]] for lab, v in block.items())
                n_chunks = int(np.ceil(block_s / self.chunk_s - 1e-9))
                for k in range(n_chunks):
                    a_s, b_s = k * self.chunk_s, min((k + 1) * self.chunk_s, block_s)
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
