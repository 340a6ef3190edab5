"""EDF / EDF+ reading and writing (torch-free, memory-bounded).

Layout of an EDF file (all header fields are fixed-width ASCII)::

    256-byte main header | 256 bytes per signal | n_records data records
    data record = for each signal, samples_per_record int16 little-endian samples

Units and shapes used here:
    fs_hz            samples per second of one signal = samples_per_record / record_duration_s
    read(...)        float64 (n_samples,) physical values; voltage signals in µV
                     (multiplied by `SignalInfo.to_uv`), other units (%, bpm, degC...) as written
    iter_epochs(...) yields (onset_s, {label: float64 (n,) at the signal's native rate})
    time axis        t = 0 s is the first sample of the first data record; `EDFHeader.start`
                     is the wall-clock time of t = 0 (sub-second EDF+ starts included)

Reading. `open_edf` always parses the header with the small lenient parser below first
(cheap: 256 bytes per signal) and checks every size claim against the real file size before
anything is allocated. pyedflib (strict) is then the primary sample reader; when it refuses a
file (EDF+D, non-ASCII labels, inconsistent EDF+ date fields, a header that lies about its
record count...) the file is read with our own numpy `memmap` record reader instead, the
quirk is named in `header.warnings` and one `EDFQuirkWarning` is emitted. Annotations (TALs)
and record onsets are always parsed by our own TAL parser, so both paths agree.

Decisions (documented, tested):
    * A header claiming more data records than the file holds is truncated to the complete
      records present (a recorder crash leaves exactly this; the data present is kept), with a
      warning. A file with no complete data record, a header cut short, or a zero-record header
      is an `EDFError`.
    * EDF+D: records are placed on the time axis at their time-keeping TAL onsets. Reading by
      time never glues gaps together: samples inside a gap are NaN, `header.gaps` lists them and
      a warning names them. Overlapping records: the later record wins (warned).
    * n_records = -1 (recording still in progress) is inferred from the file size (warned).
    * A zero record duration is only valid for annotation-only files (Sleep-EDF hypnograms).
    * Header sanity (checked once per file, before any allocation): record duration 0 < d <=
      3600 s, samples per record >= 1, records x duration (and the EDF+D time axis) <= 30 days,
      each signal's samples <= what the file holds -> else a one-line `EDFError` naming the
      field, its value and the file. Per signal: rate 0 < fs <= 100 kHz and a physical range
      that converts (pmin != pmax, finite gain) -> else the signal is *unusable*: left out of
      `header.signals` (never role-mapped, read or scored), named with its reason in
      `header.unusable` and `header.warnings`. When every ordinary signal is unusable the
      file is refused (EDFError) instead.

Writing. `write_edf` writes EDF+C with our own byte-exact header writer, streaming record
blocks (a 24-h night never needs a second copy of itself in memory), annotations as TALs in an
"EDF Annotations" signal (time-keeping TAL first in every record).
"""

from __future__ import annotations

import difflib
import math
import os
import re
import unicodedata
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from sleepedge.contract import EPOCH_S
from sleepedge.errors import ChannelError, EDFError, OutputError

__all__ = [
    "ANNOTATION_LABEL",
    "Annotation",
    "EDFHeader",
    "EDFClipWarning",
    "EDFQuirkWarning",
    "EDFReader",
    "SignalInfo",
    "SignalSpec",
    "open_edf",
    "parse_tal_record",
    "unit_to_uv",
    "write_edf",
]

ANNOTATION_LABEL = "EDF Annotations"
_MAIN_HEADER_BYTES = 256
_SIGNAL_HEADER_BYTES = 256
_MAX_SIGNALS = 9999  # 4-character field
# header sanity bounds (issue 14): checked once per file, before anything is allocated
_MAX_FS_HZ = 100_000.0  # no sleep signal is sampled faster; a higher rate means a corrupt header
_MAX_RECORD_S = 3600.0  # record duration; 0 only for annotation-only files
_MAX_TOTAL_S = 30 * 86400.0  # time axis (records x duration, EDF+D gaps included): 30 days
_MAX_BLOCK_SAMPLES = 4_000_000  # iter_epochs: samples per signal per block (32 MB of float64)
_MAX_READ_SAMPLES = 50_000_000  # 400 MB of float64: beyond this a read of EDF+D gaps is refused
# field widths of the per-signal header, in file order
_SIGNAL_FIELDS = (
    ("label", 16), ("transducer", 80), ("unit", 8), ("physical_min", 8), ("physical_max", 8),
    ("digital_min", 8), ("digital_max", 8), ("prefilter", 80), ("samples_per_record", 8),
    ("reserved", 32),
)
_DEFAULT_START = datetime(1985, 1, 1)  # EDF+ convention for an unknown / anonymised start
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


class EDFQuirkWarning(UserWarning):
    """A non-conformant EDF was read leniently; the quirk is named in the message."""


class EDFClipWarning(UserWarning):
    """write_edf clipped samples outside a given physical range (as an amplifier saturates)."""


# ----------------------------------------------------------------------------------------------
# data classes (the interface of docs/ARCHITECTURE.md)


@dataclass
class SignalInfo:
    index: int  # position among the ordinary signals (annotation signals excluded)
    label: str
    fs_hz: float
    unit: str  # unit as written in the file
    n_samples: int  # total samples stored in the file
    physical_min: float
    physical_max: float
    digital_min: int
    digital_max: int
    transducer: str = ""
    prefilter: str = ""
    to_uv: float = 1.0  # multiply physical values by this -> µV (V:1e6, mV:1e3, µV/uV:1)
    samples_per_record: int = 0


@dataclass
class Annotation:
    onset_s: float  # seconds from t = 0 (the first sample)
    duration_s: float  # 0.0 when the file gives none
    text: str


@dataclass
class EDFHeader:
    path: Path
    start: datetime
    n_records: int
    record_duration_s: float
    signals: list[SignalInfo]  # ordinary signals only (no "EDF Annotations")
    annotations: list[Annotation]
    edf_plus: bool
    discontinuous: bool
    record_onsets_s: np.ndarray  # onset of each data record (EDF+D gaps visible here)
    warnings: list[str]  # quirks tolerated, in words
    patient: str = ""
    recording: str = ""
    unusable: dict[str, str] = field(default_factory=dict)  # label -> why the signal was left out

    @property
    def duration_s(self) -> float:
        """Length of the time axis: end of the last data record (gaps included for EDF+D)."""
        if self.n_records == 0:
            return 0.0
        return float(np.max(self.record_onsets_s) + self.record_duration_s)

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.signals]

    @property
    def gaps(self) -> list[tuple[float, float]]:
        """(onset_s, duration_s) of every EDF+D gap between consecutive data records."""
        return _find_gaps(self.record_onsets_s, self.record_duration_s)[0]

    def signal(self, label_or_index: str | int | SignalInfo) -> SignalInfo:
        """A signal by label (exact, then case/space-insensitive) or by index."""
        if isinstance(label_or_index, SignalInfo):
            return self.signals[label_or_index.index]
        if isinstance(label_or_index, (int, np.integer)):
            i = int(label_or_index)
            if not 0 <= i < len(self.signals):
                raise ChannelError(
                    f"{self.path.name}: signal index {i} out of range; the file has "
                    f"{len(self.signals)} ordinary signals (0..{len(self.signals) - 1})"
                )
            return self.signals[i]
        wanted = str(label_or_index)
        for s in self.signals:
            if s.label == wanted:
                return s
        key = _label_key(wanted)
        for s in self.signals:
            if _label_key(s.label) == key:
                return s
        close = difflib.get_close_matches(wanted, self.labels, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ChannelError(
            f"{self.path.name}: no signal labelled {wanted!r}; labels present: "
            f"{', '.join(self.labels) or '(none)'}{hint}"
        )


@dataclass
class SignalSpec:
    label: str
    fs_hz: float
    data: np.ndarray  # (n_samples,) physical values in `unit`
    unit: str = "uV"
    physical_min: float | None = None  # default from data range
    physical_max: float | None = None
    transducer: str = ""
    prefilter: str = ""


# ----------------------------------------------------------------------------------------------
# small helpers


def _label_key(label: str) -> str:
    return "".join(label.split()).casefold()


def _decode(raw: bytes) -> tuple[str, bool]:
    """Decode a header field: ASCII, else UTF-8, else Latin-1. Returns (text, was_non_ascii)."""
    try:
        return raw.decode("ascii").strip(), False
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("utf-8").strip(), True
    except UnicodeDecodeError:
        return raw.decode("latin-1").strip(), True


_VOLT_UNITS = {"v": 1e6, "mv": 1e3, "uv": 1.0, "µv": 1.0, "μv": 1.0, "microv": 1.0, "nv": 1e-3}


def unit_to_uv(unit: str) -> float:
    """Factor that turns physical values in `unit` into µV; 1.0 for non-voltage units."""
    u = "".join(unit.split()).replace("Âµ", "µ").casefold()
    if u in ("v", "volt", "volts"):
        return 1e6
    return _VOLT_UNITS.get(u, 1.0)


def _is_voltage(unit: str) -> bool:
    u = "".join(unit.split()).replace("Âµ", "µ").casefold()
    return u in _VOLT_UNITS or u in ("volt", "volts")


def _parse_number(text: str, what: str, path: Path, quirks: list[str]) -> float:
    t = text.strip()
    try:
        value = float(t)
    except ValueError:
        t2 = t.replace(",", ".")
        try:
            value = float(t2)
        except ValueError:
            raise EDFError(
                f"{path}: header field {what} is {text.strip()!r}, expected a number; "
                "the header is corrupt, re-export the recording"
            ) from None
        quirks.append(f"decimal comma in header field {what} ({t!r})")
    if not math.isfinite(value):
        raise EDFError(
            f"{path}: header field {what} is {text.strip()!r}, expected a finite number; "
            "the header is corrupt, re-export the recording"
        )
    return value


def _parse_int(text: str, what: str, path: Path, quirks: list[str]) -> int:
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        pass
    value = _parse_number(t, what, path, quirks)
    if value != int(value):
        raise EDFError(
            f"{path}: header field {what} is {t!r}, expected an integer; "
            "the header is corrupt, re-export the recording"
        )
    quirks.append(f"non-integer notation in header field {what} ({t!r})")
    return int(value)


def _parse_start(date_s: str, time_s: str, recording: str, path: Path, quirks: list[str]) -> datetime:
    """Header start date/time; the EDF+ 'Startdate dd-MMM-yyyy' gives the century."""
    m_rec = re.match(r"Startdate\s+(\d{1,2})-([A-Za-z]{3})-(\d{4})", recording)
    rec_date = None
    if m_rec and m_rec.group(2).upper() in _MONTHS:
        try:
            rec_date = datetime(int(m_rec.group(3)), _MONTHS.index(m_rec.group(2).upper()) + 1,
                                int(m_rec.group(1)))
        except ValueError:
            rec_date = None
    parts_d = re.split(r"[.:/\-]", date_s.strip())
    parts_t = re.split(r"[.:]", time_s.strip())
    try:
        if len(parts_t) != 3:
            raise ValueError(time_s)
        hh, mi, ss = (int(p) for p in parts_t)
        if len(parts_d) == 3 and parts_d[2].lower() == "yy" and rec_date is not None:
            day, month, year = rec_date.day, rec_date.month, rec_date.year
        else:
            if len(parts_d) != 3:
                raise ValueError(date_s)
            day, month, yy = (int(p) for p in parts_d)
            year = 1900 + yy if yy >= 85 else 2000 + yy
            if rec_date is not None and rec_date.year % 100 == yy:
                year = rec_date.year  # EDF+: four-digit year beyond 2084
        start = datetime(year, month, day, hh, mi, ss)
    except ValueError:
        quirks.append(
            f"unreadable start date/time {date_s.strip()!r} {time_s.strip()!r} (1985-01-01 used)"
        )
        return _DEFAULT_START
    if rec_date is not None and rec_date.date() != start.date():
        quirks.append(
            f"EDF+ recording field '{m_rec.group(0)}' disagrees with the header start date "
            f"{date_s.strip()} (header date used)"
        )
    return start


def _find_gaps(onsets: np.ndarray, duration: float) -> tuple[list[tuple[float, float]], int]:
    """Gaps (onset, length) between consecutive records, and the number of overlaps."""
    if len(onsets) < 2 or duration <= 0:
        return [], 0
    ends = onsets[:-1] + duration
    delta = onsets[1:] - ends
    tol = max(1e-6, 1e-6 * duration)
    gaps = [(float(ends[i]), float(delta[i])) for i in np.nonzero(delta > tol)[0]]
    return gaps, int(np.count_nonzero(delta < -tol))


# ----------------------------------------------------------------------------------------------
# TAL parser

_TAL_ONSET = re.compile(rb"^[+-]\d+(\.\d*)?$")
_TAL_ONSET_LENIENT = re.compile(rb"^[+-]?\d*\.?\d*$")
_TAL_DURATION = re.compile(rb"^\d*\.?\d*$")
_NK_MISSING_NUL = re.compile(rb"\x14\x14(?=[+-]\d)")
def _timekeeping_only(col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Records (rows of an "EDF Annotations" block, int16) that hold nothing but their time-keeping
    TAL, exactly `+\d+(\.\d+)?\x14\x14\x00+` (NUL padding to the end): (mask, onsets (NaN
    elsewhere)) - what parse_tal_record returns for them is (onset, [], []). Checked with array
    operations for the whole block, without the general parser."""
    A = np.ascontiguousarray(col).view(np.uint8)
    n, nb = A.shape
    vals = np.full(n, np.nan)
    if n == 0 or nb < 5:
        return np.zeros(n, dtype=bool), vals
    rows = np.arange(n)
    is14 = A == 0x14
    k = is14.argmax(axis=1)                          # first \x14
    ok = is14[rows, k] & (k >= 2) & (k + 2 < nb) & (A[:, 0] == 0x2B)     # "+", body, \x14\x14, >= 1 NUL
    ok &= is14[rows, np.minimum(k + 1, nb - 1)]
    last_nonzero = nb - 1 - (A[:, ::-1] != 0).argmax(axis=1)
    ok &= last_nonzero == k + 1                      # only NULs after "\x14\x14"
    inside = (np.arange(nb)[None, :] >= 1) & (np.arange(nb)[None, :] < k[:, None])
    digit = (A >= 0x30) & (A <= 0x39)
    dot = A == 0x2E
    ok &= ~(inside & ~(digit | dot)).any(axis=1)     # body: digits and dots only
    ok &= (inside & dot).sum(axis=1) <= 1            # at most one dot,
    ok &= digit[rows, 1] & digit[rows, np.maximum(k - 1, 0)]   # first and last a digit: \d+(\.\d+)?
    # whole-number onsets (what writers put in time-keeping TALs) as exact int64 digit sums;
    # fractional ones through float() of their text (the parser's own conversion)
    whole = ok & ~(inside & dot).any(axis=1) & (k <= 16)
    if whole.any():
        power = np.where(inside, k[:, None] - 1 - np.arange(nb)[None, :], 0)
        digits = np.where(inside & digit, A.astype(np.int64) - 0x30, 0)
        vals[whole] = (digits[whole] * 10 ** power[whole]).sum(axis=1).astype(np.float64)
    for r in np.nonzero(ok & ~whole)[0]:
        vals[r] = float(A[r, 1: k[r]].tobytes())
    return ok, vals


def _tal_float(raw: bytes, lenient: re.Pattern[bytes]) -> float | None:
    if not raw or not lenient.match(raw) or raw in (b"+", b"-", b".", b"+.", b"-."):
        return None
    try:
        value = float(raw.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None
    return value if math.isfinite(value) else None


def parse_tal_record(raw: bytes) -> tuple[float | None, list[Annotation], list[str]]:
    """Parse the bytes of one data record of an "EDF Annotations" signal.

    Returns (record onset from the time-keeping TAL or None, annotations, quirks). A TAL is
    ``+onset[\\x15duration]\\x14text\\x14[text\\x14...]\\x00``; the first TAL of a record
    is the time-keeping TAL (empty first text). Malformed TALs are skipped and named in the
    quirks list; this function never raises on any input bytes.
    """
    quirks: list[str] = []
    data = bytes(raw).rstrip(b"\x00")
    if not data:
        return None, [], quirks
    if _NK_MISSING_NUL.search(data):
        data = _NK_MISSING_NUL.sub(b"\x14\x14\x00", data)
        quirks.append("time-keeping TAL without its NUL terminator")
    record_onset: float | None = None
    annotations: list[Annotation] = []
    bad = 0
    for k, tal in enumerate(data.split(b"\x00")):
        if not tal:
            continue
        parts = tal.split(b"\x14")
        if len(parts) < 2:  # no \x14 at all: not a TAL
            bad += 1
            continue
        if parts[-1] == b"":
            parts = parts[:-1]
        head, texts = parts[0], parts[1:]
        onset_raw, _, dur_raw = head.partition(b"\x15")
        onset = _tal_float(onset_raw, _TAL_ONSET_LENIENT)
        if onset is None:
            bad += 1
            continue
        if not _TAL_ONSET.match(onset_raw):
            quirks.append(f"TAL onset without sign or malformed ({onset_raw[:16]!r})")
        duration = 0.0
        if dur_raw:
            d = _tal_float(dur_raw, _TAL_DURATION)
            if d is None:
                bad += 1
                continue
            duration = d
        if record_onset is None and k == 0 and texts and texts[0] == b"":
            record_onset = onset
            texts = texts[1:]
        for t in texts:
            if not t:
                continue
            try:
                text = t.decode("utf-8")
            except UnicodeDecodeError:
                text = t.decode("latin-1")
                quirks.append("annotation text not UTF-8 (decoded as Latin-1)")
            annotations.append(Annotation(onset, duration, text.strip()))
    if bad:
        quirks.append(f"{bad} malformed TAL(s) skipped")
    return record_onset, annotations, quirks


# ----------------------------------------------------------------------------------------------
# header parser


@dataclass
class _Layout:
    """Everything the header says, checked against the file size."""

    path: Path
    file_size: int
    header_bytes: int
    n_records: int
    record_duration_s: float
    labels: list[str]
    fields: list[dict]  # per file signal: parsed numeric/text fields
    spr: np.ndarray  # samples per record per file signal (int64)
    offsets: np.ndarray  # sample offset of each file signal inside a record
    record_samples: int
    annotation_indices: list[int]
    ordinary_indices: list[int]
    edf_plus: bool
    discontinuous: bool
    start: datetime
    patient: str
    recording: str
    quirks: list[str]
    size_mismatch: bool = False  # the record count was corrected from the file size
    signal_indices: list[int] = field(default_factory=list)  # file index of each usable ordinary signal
    unusable: dict[str, str] = field(default_factory=dict)  # label -> reason (left out of header.signals)


def _parse_layout(path: Path) -> _Layout:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise EDFError(f"{path}: file not found; check the path") from None
    except OSError as err:
        raise EDFError(f"{path}: cannot read the file ({err.strerror}); check permissions") from None
    if path.is_dir():
        raise EDFError(f"{path}: is a directory, expected an EDF file; give the .edf file itself")
    quirks: list[str] = []
    try:
        with open(path, "rb") as fh:
            main = fh.read(_MAIN_HEADER_BYTES)
            if len(main) < _MAIN_HEADER_BYTES:
                raise EDFError(
                    f"{path}: {size} bytes, shorter than the 256-byte EDF header; the file is "
                    "empty or truncated, copy it again"
                )
            version = main[0:8]
            if version[:1] == b"\xff" and version[1:8] == b"BIOSEMI":
                raise EDFError(
                    f"{path}: is a BDF (24-bit BioSemi) file, expected EDF/EDF+ (16-bit); "
                    "convert it to EDF+ (e.g. with EDFbrowser)"
                )
            if version.strip() != b"0":
                raise EDFError(
                    f"{path}: not an EDF file (version field {version!r}, expected '0'); "
                    "give an EDF/EDF+ recording"
                )
            patient, na1 = _decode(main[8:88])
            recording, na2 = _decode(main[88:168])
            if na1 or na2:
                quirks.append("non-ASCII characters in the patient/recording fields")
            date_s = main[168:176].decode("latin-1")
            time_s = main[176:184].decode("latin-1")
            reserved = main[192:236].decode("latin-1").strip()
            ns = _parse_int(main[252:256].decode("latin-1"), "number of signals", path, quirks)
            if ns < 0 or ns > _MAX_SIGNALS:
                raise EDFError(
                    f"{path}: header claims {ns} signals, expected 0..{_MAX_SIGNALS}; "
                    "the header is corrupt, re-export the recording"
                )
            header_bytes = _MAIN_HEADER_BYTES + ns * _SIGNAL_HEADER_BYTES
            if size < header_bytes:
                raise EDFError(
                    f"{path}: header claims {ns} signals ({header_bytes} header bytes) but the "
                    f"file has only {size} bytes; the file is truncated or the signal count is "
                    "wrong, copy or re-export it"
                )
            hb_field = main[184:192].decode("latin-1").strip()
            try:
                hb_claim = int(hb_field)
            except ValueError:
                hb_claim = -1
            if hb_claim != header_bytes:
                quirks.append(
                    f"header-size field says {hb_field!r} bytes but {ns} signals need "
                    f"{header_bytes} (signal count used)"
                )
            sig_raw = fh.read(ns * _SIGNAL_HEADER_BYTES)
    except OSError as err:
        raise EDFError(f"{path}: cannot read the file ({err.strerror}); check permissions") from None

    n_records_claim = _parse_int(main[236:244].decode("latin-1"), "number of data records", path, quirks)
    duration = _parse_number(main[244:252].decode("latin-1"), "record duration", path, quirks)

    # per-signal header: field k of signal i lives at ns*offset_k + i*width_k
    raw_fields: dict[str, list[bytes]] = {}
    pos = 0
    for name, width in _SIGNAL_FIELDS:
        raw_fields[name] = [sig_raw[pos + i * width: pos + (i + 1) * width] for i in range(ns)]
        pos += ns * width
    labels: list[str] = []
    non_ascii_labels: list[str] = []
    fields: list[dict] = []
    spr = np.zeros(ns, dtype=np.int64)
    for i in range(ns):
        label, na = _decode(raw_fields["label"][i])
        if na:
            non_ascii_labels.append(label)
        labels.append(label)
        unit, na_u = _decode(raw_fields["unit"][i])
        transducer, _ = _decode(raw_fields["transducer"][i])
        prefilter, _ = _decode(raw_fields["prefilter"][i])
        what = f"of signal {i + 1} ({label!r})"
        n = _parse_int(raw_fields["samples_per_record"][i].decode("latin-1"),
                       f"samples per record {what}", path, quirks)
        if n < 1:
            raise EDFError(
                f"{path}: signal {i + 1} ({label!r}) claims {n} samples per record, expected "
                "at least 1; the header is corrupt, re-export the recording"
            )
        if n > _MAX_FS_HZ * _MAX_RECORD_S:
            raise EDFError(
                f"{path}: header field samples per record of signal {i + 1} ({label!r}) is {float(n):g}, expected at "
                f"most {_MAX_FS_HZ * _MAX_RECORD_S:.0f}; the header is corrupt, re-export the recording"
            )
        spr[i] = n
        fields.append({
            "label": label, "unit": unit, "transducer": transducer, "prefilter": prefilter,
            "pmin_raw": raw_fields["physical_min"][i].decode("latin-1"),
            "pmax_raw": raw_fields["physical_max"][i].decode("latin-1"),
            "dmin_raw": raw_fields["digital_min"][i].decode("latin-1"),
            "dmax_raw": raw_fields["digital_max"][i].decode("latin-1"),
            "what": what,
        })
    if non_ascii_labels:
        quirks.append(
            f"non-ASCII signal labels ({', '.join(repr(x) for x in non_ascii_labels[:3])}"
            f"{'...' if len(non_ascii_labels) > 3 else ''})"
        )

    annotation_indices = [i for i, lab in enumerate(labels) if lab == ANNOTATION_LABEL]
    ordinary_indices = [i for i in range(ns) if i not in annotation_indices]
    edf_plus = reserved.startswith("EDF+C") or reserved.startswith("EDF+D")
    discontinuous = reserved.startswith("EDF+D")
    if edf_plus and not annotation_indices:
        quirks.append(f"{reserved[:5]} file without an 'EDF Annotations' signal")
    if annotation_indices and not edf_plus:
        quirks.append("'EDF Annotations' signal in a file not marked EDF+")

    if duration < 0:
        raise EDFError(
            f"{path}: record duration is {duration} s, expected > 0; the header is corrupt, "
            "re-export the recording"
        )
    if duration > _MAX_RECORD_S:
        raise EDFError(
            f"{path}: header field record duration is {duration:g} s, expected 0 < d <= "
            f"{_MAX_RECORD_S:g} s; the header is corrupt, re-export the recording"
        )
    if duration == 0 and ordinary_indices:
        raise EDFError(
            f"{path}: record duration is 0 s with {len(ordinary_indices)} ordinary signals; "
            "only annotation-only files may have a zero duration; the header is corrupt, "
            "re-export the recording"
        )

    record_samples = int(spr.sum())
    record_bytes = 2 * record_samples
    data_bytes = size - header_bytes
    present = data_bytes // record_bytes if record_bytes else 0
    if n_records_claim == -1:
        n_records = present
        quirks.append(f"record count -1 (recording not closed): {present} records inferred from the file size")
    elif n_records_claim < 0:
        raise EDFError(
            f"{path}: header claims {n_records_claim} data records, expected >= 0 (or -1); "
            "the header is corrupt, re-export the recording"
        )
    elif n_records_claim > present:
        n_records = present
        if present > 0:
            quirks.append(
                f"header claims {n_records_claim} data records but the file holds only {present} "
                f"complete records ({data_bytes} data bytes, {record_bytes} per record): "
                "truncated to the records present"
            )
    else:
        n_records = n_records_claim
        extra = data_bytes - n_records * record_bytes
        if extra > 0:
            quirks.append(f"{extra} bytes after the last data record ignored")
    if n_records == 0:
        if n_records_claim > 0:
            i = int(spr.argmax()) if ns else 0
            if ns and duration > 0 and spr[i] / duration > _MAX_FS_HZ:  # the absurd field, not a truncation
                raise EDFError(
                    f"{path}: header field samples per record of signal {i + 1} ({labels[i]!r}) is "
                    f"{int(spr[i])} ({int(spr[i]) / duration:g} Hz): records of {record_bytes} bytes, the file "
                    f"holds {max(data_bytes, 0)} data bytes (no complete record); the header is corrupt, "
                    "re-export the recording"
                )
            raise EDFError(
                f"{path}: header claims {n_records_claim} data records of {record_bytes} bytes "
                f"but the file holds {max(data_bytes, 0)} data bytes (no complete record); "
                "the file is truncated, copy it again"
            )
        raise EDFError(
            f"{path}: zero-length recording (no data records); nothing to read, "
            "check the export settings of the recorder"
        )
    if n_records * duration > _MAX_TOTAL_S:
        raise EDFError(
            f"{path}: header fields number of data records ({n_records}) x record duration "
            f"({duration:g} s) = {n_records * duration / 86400:.1f} days, expected at most "
            f"{_MAX_TOTAL_S / 86400:g} days; the header is corrupt, re-export the recording"
        )
    offsets = np.concatenate([[0], np.cumsum(spr)[:-1]]).astype(np.int64) if ns else np.zeros(0, np.int64)
    start = _parse_start(date_s, time_s, recording, path, quirks)
    return _Layout(
        path=path, file_size=size, header_bytes=header_bytes, n_records=n_records,
        record_duration_s=duration, labels=labels, fields=fields, spr=spr, offsets=offsets,
        record_samples=record_samples, annotation_indices=annotation_indices,
        ordinary_indices=ordinary_indices, edf_plus=edf_plus, discontinuous=discontinuous,
        start=start, patient=patient, recording=recording, quirks=quirks,
        size_mismatch=n_records != n_records_claim or data_bytes != n_records * record_bytes,
    )


def _convertible(pmin: float, pmax: float, dmin: int, dmax: int) -> bool:
    """_digital_to_physical's arithmetic stays finite: bitvalue = (pmax - pmin) / (dmax - dmin) finite and
    non-zero, physical_max / bitvalue finite."""
    try:
        bitvalue = (pmax - pmin) / (dmax - dmin)
        return math.isfinite(bitvalue) and bitvalue != 0 and math.isfinite(pmax / bitvalue - dmax)
    except (ZeroDivisionError, OverflowError):
        return False


def _signal_infos(layout: _Layout) -> list[SignalInfo]:
    path, quirks = layout.path, layout.quirks
    infos: list[SignalInfo] = []
    layout.signal_indices, layout.unusable = [], {}
    rate_fields: list[str] = []  # of the unusable signals: which header field is absurd
    for i in layout.ordinary_indices:
        f = layout.fields[i]
        pmin = _parse_number(f["pmin_raw"], f"physical minimum {f['what']}", path, quirks)
        pmax = _parse_number(f["pmax_raw"], f"physical maximum {f['what']}", path, quirks)
        dmin = _parse_int(f["dmin_raw"], f"digital minimum {f['what']}", path, quirks)
        dmax = _parse_int(f["dmax_raw"], f"digital maximum {f['what']}", path, quirks)
        if dmax == dmin:
            quirks.append(f"digital minimum equals maximum {f['what']} (unit gain used)")
        elif dmax < dmin:
            quirks.append(f"digital minimum above maximum {f['what']}")
        if pmax == pmin:
            quirks.append(f"physical minimum equals maximum {f['what']}")
        spr = int(layout.spr[i])
        fs = spr / layout.record_duration_s
        reason = ""
        if not (math.isfinite(fs) and 0 < fs <= _MAX_FS_HZ):
            reason = (f"samples per record {spr} / record duration {layout.record_duration_s:g} s = "
                      f"{fs:g} Hz, expected 0 < fs <= {_MAX_FS_HZ:g} Hz")
            rate_fields.append(f"samples per record {f['what']} is {spr}")
        elif spr * layout.n_records * 2 > layout.file_size - layout.header_bytes:
            reason = f"{spr * layout.n_records} samples claimed, more than the file holds"  # never: the layout checks it
        elif dmax != dmin and not _convertible(pmin, pmax, dmin, dmax):
            reason = (f"physical range {f['pmin_raw'].strip()!r}..{f['pmax_raw'].strip()!r} cannot convert "
                      f"digital values {dmin}..{dmax}")
        if reason:
            layout.unusable.setdefault(f["label"] or f"signal {i + 1}", reason)
            continue
        layout.signal_indices.append(i)
        infos.append(SignalInfo(
            index=len(infos), label=f["label"], fs_hz=fs, unit=f["unit"],
            n_samples=spr * layout.n_records, physical_min=pmin, physical_max=pmax,
            digital_min=dmin, digital_max=dmax, transducer=f["transducer"],
            prefilter=f["prefilter"], to_uv=unit_to_uv(f["unit"]), samples_per_record=spr,
        ))
    if layout.unusable and not infos:
        label, reason = next(iter(layout.unusable.items()))
        if rate_fields and len(rate_fields) == len(layout.unusable):  # every rate absurd: the duration is
            raise EDFError(
                f"{path}: header field record duration is {layout.record_duration_s:g} s: no signal has a "
                f"sensible rate ({rate_fields[0]} -> {reason}); the header is corrupt, re-export the recording"
            )
        raise EDFError(f"{path}: no usable signal: {label!r}: {reason}"
                       f"{f' (and {len(layout.unusable) - 1} more)' if len(layout.unusable) > 1 else ''}; "
                       "the header is corrupt, re-export the recording")
    for label, reason in layout.unusable.items():
        quirks.append(f"signal {label!r} unusable: {reason}; left out (scored without it)")
    seen: dict[str, int] = {}
    for s in infos:
        seen[s.label] = seen.get(s.label, 0) + 1
    dup = [lab for lab, n in seen.items() if n > 1]
    if dup:
        quirks.append(f"duplicate signal labels {dup[:3]} (the first of each is used by label)")
    return infos


# ----------------------------------------------------------------------------------------------
# reader


def _gain(info: SignalInfo) -> tuple[float, float]:
    """(scale, offset): physical = digital * scale + offset."""
    dd = info.digital_max - info.digital_min
    if dd == 0:
        return 1.0, 0.0
    scale = (info.physical_max - info.physical_min) / dd
    return scale, info.physical_min - info.digital_min * scale


class _RecordFile:
    """Data records read on demand with positioned reads (`records[r0:r1, c0:c1]`, `records[r, c0:c1]`).

    Deliberately not a memory map: mapped pages of a file count in the process's resident set,
    so walking a whole night through a map makes RSS grow to the file size. Positioned reads
    keep memory at the block asked for (the OS page cache still serves repeated reads).
    """

    def __init__(self, path: Path, header_bytes: int, n_records: int, record_samples: int):
        self._fh = open(path, "rb")
        self._base = int(header_bytes)
        self.n_records = int(n_records)
        self.record_samples = int(record_samples)

    def _rows(self, r0: int, r1: int) -> np.ndarray:
        r0, r1 = max(0, r0), min(self.n_records, r1)
        n = max(0, r1 - r0) * self.record_samples
        self._fh.seek(self._base + 2 * r0 * self.record_samples)
        buf = np.fromfile(self._fh, dtype="<i2", count=n)
        return buf[: (len(buf) // self.record_samples) * self.record_samples].reshape(-1, self.record_samples)

    def __getitem__(self, key) -> np.ndarray:
        rows, cols = key
        if isinstance(rows, slice):
            return self._rows(rows.start or 0, self.n_records if rows.stop is None else rows.stop)[:, cols]
        return self._rows(int(rows), int(rows) + 1)[0, cols]

    def close(self) -> None:
        self._fh.close()


class EDFReader:
    """An open EDF/EDF+ file. Context manager; reads only what is asked, a block at a time."""

    def __init__(self, path: str | os.PathLike, backend: str = "auto"):
        if backend not in ("auto", "pyedflib", "native"):
            raise EDFError(f"backend {backend!r} unknown; expected 'auto', 'pyedflib' or 'native'")
        self.path = Path(path)
        layout = _parse_layout(self.path)
        self._layout = layout
        signals = _signal_infos(layout)
        self._mm: _RecordFile | None = None
        self._pyedf = None
        self._open_memmap()
        onsets, annotations = self._read_annotations()
        # time axis: t = 0 is the first sample of the first record
        t0 = float(onsets[0]) if len(onsets) else 0.0
        start = layout.start
        if t0 != 0.0:
            try:
                start = start + timedelta(seconds=t0)
            except OverflowError:
                layout.quirks.append(f"first record onset {t0:g} s is out of calendar range (start time kept)")
            onsets = onsets - t0
            for a in annotations:
                a.onset_s -= t0
            if not 0.0 < t0 < 1.0:
                layout.quirks.append(f"first data record starts {t0:g} s after the header start time")
        span = float(np.max(onsets)) + layout.record_duration_s if len(onsets) else 0.0
        if not span <= _MAX_TOTAL_S:
            self.close()
            r = int(np.argmax(onsets))
            raise EDFError(
                f"{self.path}: time-keeping TAL of data record {r + 1} puts it at {float(onsets[r]):g} s: "
                f"a time axis of {span / 86400:.1f} days, expected at most {_MAX_TOTAL_S / 86400:g} days; "
                "the annotation signal is corrupt, re-export the recording"
            )
        gaps, overlaps = _find_gaps(onsets, layout.record_duration_s)
        if layout.discontinuous and gaps:
            shown = ", ".join(f"{g[1]:g} s at {g[0]:g} s" for g in gaps[:3])
            layout.quirks.append(
                f"EDF+D with {len(gaps)} gap(s) ({shown}{'...' if len(gaps) > 3 else ''}); "
                "samples in gaps read as NaN"
            )
        elif not layout.discontinuous and (gaps or overlaps) and layout.edf_plus:
            layout.quirks.append(
                f"EDF+C file whose record onsets are not contiguous ({len(gaps)} gaps): "
                "treated as discontinuous, gaps read as NaN"
            )
        if overlaps:
            layout.quirks.append(f"{overlaps} overlapping data record(s): the later record wins")
        self._contiguous = not gaps and not overlaps and bool(
            np.allclose(onsets, np.arange(len(onsets)) * layout.record_duration_s, atol=1e-6)
        ) if len(onsets) else True

        self._pyedf = None
        refusal = None
        if backend in ("auto", "pyedflib") and signals and self._contiguous:
            if layout.size_mismatch:  # pyedflib would refuse (and print to stdout from C)
                refusal = "file size does not match the header"
            elif layout.unusable:  # pyedflib's signal indices would count the left-out signals
                refusal = f"{len(layout.unusable)} unusable signal(s)"
            else:
                refusal = self._try_pyedflib(len(signals))
        if backend == "pyedflib" and self._pyedf is None:
            self.close()
            raise EDFError(f"{self.path}: pyedflib cannot read this file ({refusal or 'discontinuous'}); "
                           "use backend='auto'")
        if refusal is not None and backend == "auto":
            layout.quirks.insert(0, f"strict reader pyedflib refused the file ({refusal}); read with the lenient parser")
        self.backend = "pyedflib" if self._pyedf is not None else "native"
        self.header = EDFHeader(
            path=self.path, start=start, n_records=layout.n_records,
            record_duration_s=layout.record_duration_s, signals=signals,
            annotations=sorted(annotations, key=lambda a: a.onset_s),
            edf_plus=layout.edf_plus, discontinuous=layout.discontinuous or not self._contiguous,
            record_onsets_s=onsets, warnings=list(dict.fromkeys(layout.quirks)),
            patient=layout.patient, recording=layout.recording, unusable=dict(layout.unusable),
        )
        if self.header.warnings:
            warnings.warn(
                f"{self.path.name}: read leniently: " + "; ".join(self.header.warnings),
                EDFQuirkWarning, stacklevel=3,
            )

    # -- opening -------------------------------------------------------------------------------
    def _open_memmap(self) -> None:
        lay = self._layout
        if lay.record_samples == 0:
            return
        try:
            self._mm = _RecordFile(lay.path, lay.header_bytes, lay.n_records, lay.record_samples)
        except (OSError, ValueError) as err:
            raise EDFError(f"{lay.path}: cannot map the data records ({err}); copy the file again") from None

    def _try_pyedflib(self, n_signals: int) -> str | None:
        try:
            import pyedflib
        except ImportError:
            return "pyedflib not installed"
        try:
            reader = pyedflib.EdfReader(str(self.path), annotations_mode=0)
        except OSError as err:
            return str(err).replace(str(self.path) + ": ", "").strip() or type(err).__name__
        if reader.signals_in_file != n_signals or reader.datarecords_in_file != self._layout.n_records:
            reader.close()
            return "its layout disagrees with the header"
        self._pyedf = reader
        return None

    def _read_annotations(self) -> tuple[np.ndarray, list[Annotation]]:
        lay = self._layout
        default = np.arange(lay.n_records, dtype=np.float64) * lay.record_duration_s
        if not lay.annotation_indices or self._mm is None:
            return default, []
        onsets = default.copy()
        annotations: list[Annotation] = []
        quirk_counts: dict[str, int] = {}
        missing_tk = 0
        block = max(1, 2_000_000 // max(lay.record_samples, 1))
        for r0 in range(0, lay.n_records, block):
            r1 = min(lay.n_records, r0 + block)
            cols = [np.asarray(self._mm[r0:r1, lay.offsets[i]: lay.offsets[i] + lay.spr[i]])
                    for i in lay.annotation_indices]
            # the common record holds only its time-keeping TAL: recognised for the whole block at once
            fast = [_timekeeping_only(c) for c in cols]
            if fast[0][0].any():
                idx = np.nonzero(fast[0][0])[0]
                onsets[r0 + idx] = fast[0][1][idx]
            rest = np.nonzero(~np.logical_and.reduce([f[0] for f in fast]))[0]
            for r in rest:
                for j, c in enumerate(cols):
                    if fast[j][0][r]:
                        continue
                    raw = c[r].tobytes()
                    onset, anns, quirks = parse_tal_record(raw)
                    annotations.extend(anns)
                    for q in quirks:
                        quirk_counts[q] = quirk_counts.get(q, 0) + 1
                    if j == 0:
                        if onset is None:
                            missing_tk += 1
                        else:
                            onsets[r0 + r] = onset
        for q, n in quirk_counts.items():
            lay.quirks.append(q if n == 1 else f"{q} (in {n} records)")
        if missing_tk and lay.edf_plus:
            lay.quirks.append(
                f"{missing_tk} data record(s) without a time-keeping TAL "
                "(onset = record index x record duration used)"
            )
        return onsets, annotations

    # -- context manager -----------------------------------------------------------------------
    def close(self) -> None:
        if self._pyedf is not None:
            self._pyedf.close()
            self._pyedf = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def __enter__(self) -> "EDFReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except (AttributeError, ValueError, BufferError):
            pass

    # -- reading -------------------------------------------------------------------------------
    def read(self, signal: str | int | SignalInfo, start_s: float = 0.0,
             stop_s: float | None = None) -> np.ndarray:
        """Samples of one signal on [start_s, stop_s) of the time axis.

        Returns float64 (n,) at the signal's native rate, in µV for voltage signals (other
        units as written). Sample k of the result is at time (round(start_s*fs) + k) / fs.
        The result stops at the end of the recording (it can be shorter than asked; empty when
        start_s is past the end). EDF+D gaps are NaN, never glued together.
        """
        info = self.header.signal(signal)
        if not (math.isfinite(start_s) and start_s >= 0):
            raise EDFError(f"{self.path.name}: start_s={start_s!r}, expected a finite time >= 0 s")
        end_s = self.header.duration_s if stop_s is None else min(float(stop_s), self.header.duration_s)
        if stop_s is not None and not math.isfinite(float(stop_s)) and float(stop_s) != math.inf:
            raise EDFError(f"{self.path.name}: stop_s={stop_s!r}, expected a time in seconds")
        fs = info.fs_hz
        s0 = int(round(start_s * fs))
        s1 = int(round(end_s * fs))
        if s1 <= s0:
            return np.zeros(0, dtype=np.float64)
        if self._mm is None:
            raise EDFError(f"{self.path.name}: the file holds no signal samples")
        if self._contiguous:
            s1 = min(s1, info.n_samples)
            if self._pyedf is not None:
                out = self._pyedf.readSignal(info.index, start=s0, n=s1 - s0, digital=False)
                out = np.asarray(out, dtype=np.float64)
            else:
                out = self._digital_to_physical(info, self._read_contiguous(info, s0, s1))
        else:
            if s1 - s0 > _MAX_READ_SAMPLES and s1 - s0 > 2 * info.n_samples:
                raise EDFError(
                    f"{self.path.name}: reading {info.label!r} from {start_s:g} to {end_s:g} s would "
                    f"return {s1 - s0} samples, mostly EDF+D gap ({info.n_samples} stored); read a "
                    "shorter span (start_s/stop_s) or use iter_epochs"
                )
            out = self._read_discontinuous(info, s0, s1)
        if info.to_uv != 1.0:
            out *= info.to_uv
        return out

    def _file_index(self, info: SignalInfo) -> int:
        return self._layout.signal_indices[info.index]

    def _read_contiguous(self, info: SignalInfo, s0: int, s1: int) -> np.ndarray:
        spr = info.samples_per_record
        fi = self._file_index(info)
        off = int(self._layout.offsets[fi])
        r0, r1 = s0 // spr, -(-s1 // spr)
        block = np.asarray(self._mm[r0:r1, off: off + spr]).reshape(-1)
        return block[s0 - r0 * spr: s1 - r0 * spr]

    def _digital_to_physical(self, info: SignalInfo, digital: np.ndarray) -> np.ndarray:
        # EDFlib's (pyedflib's) arithmetic, so both readers give the same float64 samples:
        # bitvalue * (offset + digital), offset = physical_max / bitvalue - digital_max
        dd = info.digital_max - info.digital_min
        out = digital.astype(np.float64)
        if dd == 0:
            return out
        bitvalue = (info.physical_max - info.physical_min) / dd
        out += info.physical_max / bitvalue - info.digital_max
        out *= bitvalue
        return out

    def _read_discontinuous(self, info: SignalInfo, s0: int, s1: int) -> np.ndarray:
        fs, spr = info.fs_hz, info.samples_per_record
        fi = self._file_index(info)
        off = int(self._layout.offsets[fi])
        onsets = self.header.record_onsets_s
        rec_start = np.rint(onsets * fs).astype(np.int64)
        hit = np.nonzero((rec_start < s1) & (rec_start + spr > s0))[0]
        out = np.full(s1 - s0, np.nan)
        for r in hit:  # in file order: a later overlapping record overwrites an earlier one
            a = max(s0, rec_start[r])
            b = min(s1, rec_start[r] + spr)
            seg = np.asarray(self._mm[r, off + (a - rec_start[r]): off + (b - rec_start[r])])
            out[a - s0: b - s0] = self._digital_to_physical(info, seg)
        # the time axis ends at the last record's end
        return out

    def iter_epochs(self, signals: Sequence[str | int | SignalInfo] | None = None,
                    n_epochs_per_block: int = 20, epoch_s: float = EPOCH_S,
                    ) -> Iterator[tuple[float, dict[str, np.ndarray]]]:
        """Yield (onset_s, {label: samples}) blocks of `n_epochs_per_block` epochs.

        Reads only the requested signals (all ordinary signals when None), one block at a
        time, so memory stays at one block whatever the recording length. Samples are as in
        `read` (µV for voltage, native rate, NaN in EDF+D gaps). Blocks tile the time axis
        exactly (sample boundaries round(t*fs)); the last block can hold a partial epoch. Above
        ~4 kHz a block holds fewer epochs (at most 4 M samples per signal; at least one epoch).
        """
        if n_epochs_per_block < 1 or not (epoch_s > 0):
            raise EDFError(
                f"{self.path.name}: n_epochs_per_block={n_epochs_per_block}, epoch_s={epoch_s}: "
                "expected at least 1 epoch of positive length per block"
            )
        infos = [self.header.signal(s) for s in (self.header.signals if signals is None else signals)]
        # memory bound whatever the header's rates: fewer epochs per block above ~4 kHz (at least one)
        fs_max = max((i.fs_hz for i in infos), default=1.0)
        n_epochs_per_block = max(1, min(n_epochs_per_block, int(_MAX_BLOCK_SAMPLES // (epoch_s * fs_max))))
        block_s = n_epochs_per_block * epoch_s
        total = self.header.duration_s
        k = 0
        while k * block_s < total:
            t0 = k * block_s
            if self._pyedf is None and self._contiguous and self._mm is not None and len(infos) > 1:
                yield t0, self._read_block(infos, t0, t0 + block_s)
            else:
                yield t0, {i.label: self.read(i, t0, t0 + block_s) for i in infos}
            k += 1

    def _read_block(self, infos: Sequence[SignalInfo], start_s: float, stop_s: float) -> dict[str, np.ndarray]:
        """`read` of several signals of a contiguous file from ONE positioned read of the data
        records they share (the samples `read` gives, signal by signal; tested)."""
        end_s = min(float(stop_s), self.header.duration_s)
        spans = []
        for info in infos:
            fs = info.fs_hz
            s0, s1 = int(round(start_s * fs)), min(int(round(end_s * fs)), info.n_samples)
            spans.append((info, s0, s1))
        live = [(i, a, b) for i, a, b in spans if b > a]
        out = {i.label: np.zeros(0, dtype=np.float64) for i, a, b in spans if b <= a}
        if not live:
            return out
        r0 = min(a // i.samples_per_record for i, a, b in live)
        r1 = max(-(-b // i.samples_per_record) for i, a, b in live)
        rows = self._mm[r0:r1, :]
        for info, s0, s1 in live:
            spr = info.samples_per_record
            off = int(self._layout.offsets[self._file_index(info)])
            digital = rows[:, off: off + spr].reshape(-1)[s0 - r0 * spr: s1 - r0 * spr]
            x = self._digital_to_physical(info, digital)
            if info.to_uv != 1.0:
                x *= info.to_uv
            out[info.label] = x
        return out


def open_edf(path: str | os.PathLike, backend: str = "auto") -> EDFReader:
    """Open an EDF/EDF+ file. EDFError (one line) for missing / not-EDF / truncated / lying files.

    backend: "auto" (pyedflib, lenient parser when pyedflib refuses), "pyedflib" (strict
    only) or "native" (always our own reader; used to cross-check the two).
    """
    return EDFReader(path, backend=backend)


# ----------------------------------------------------------------------------------------------
# writer


def _ascii(text: str) -> str:
    """ASCII transliteration (µ -> u, é -> e); other characters dropped."""
    text = text.replace("µ", "u").replace("μ", "u").replace("°", "deg")
    norm = unicodedata.normalize("NFKD", text)
    return norm.encode("ascii", "ignore").decode("ascii")


def _field(text: str, width: int, what: str) -> bytes:
    raw = _ascii(text).encode("ascii")
    if len(raw) > width:
        raise EDFError(
            f"{what} {text!r} is {len(raw)} characters, the EDF field holds {width}; shorten it"
        )
    return raw.ljust(width, b" ")


def _fmt_num(x: float, width: int = 8, direction: int = 0) -> str:
    """Shortest fixed-point text of at most `width` chars; direction -1/+1 rounds down/up."""
    if float(x) == int(x) and len(str(int(x))) <= width:
        return str(int(x))
    for p in range(width, -1, -1):
        q = 10.0 ** p
        if direction < 0:
            v = math.floor(x * q) / q
        elif direction > 0:
            v = math.ceil(x * q) / q
        else:
            v = round(x, p)
        s = f"{v:.{p}f}"
        if "." in s:
            s = s.rstrip("0").rstrip(".")
        if s in ("-0", ""):
            s = "0"
        if len(s) <= width:
            return s
    raise EDFError(f"value {x!r} does not fit an {width}-character EDF header field; rescale the signal")


def _record_duration(specs: Sequence[SignalSpec]) -> float:
    """Smallest duration (s) giving every signal an integer number of samples per record."""
    den = 1
    for s in specs:
        frac = Fraction(float(s.fs_hz)).limit_denominator(1000)
        if abs(float(frac) - float(s.fs_hz)) > 1e-9 * max(1.0, float(s.fs_hz)):
            raise EDFError(
                f"signal {s.label!r}: fs_hz={s.fs_hz} is not a ratio of small integers; "
                "resample it to a rational rate (e.g. 100, 128, 256 Hz) before writing EDF"
            )
        den = den * frac.denominator // math.gcd(den, frac.denominator)
    return float(den)


def _tal(onset: float, text: str = "", duration: float = 0.0, keeping: bool = False) -> bytes:
    on = f"{onset:+.6f}".rstrip("0").rstrip(".")
    if keeping:
        return on.encode("ascii") + b"\x14\x14\x00"
    head = on
    if duration > 0:
        head += "\x15" + f"{duration:.6f}".rstrip("0").rstrip(".")
    return head.encode("ascii") + b"\x14" + text.encode("utf-8") + b"\x14\x00"


def write_edf(path: str | os.PathLike, signals: Sequence[SignalSpec],
              annotations: Sequence[Annotation] = (), start: datetime | None = None,
              patient: str = "X X X X", recording: str = "",
              record_duration_s: float | None = None) -> Path:
    """Write an EDF+C file; returns its path.

    signals: ordinary signals (may be empty: an annotation-only EDF+, e.g. a hypnogram).
    annotations: onsets in seconds from the first sample (`start`); written as TALs.
    start: wall-clock time of the first sample (sub-second part kept via the TAL onsets);
        default 1985-01-01 00:00:00 (the EDF+ convention for an unknown start).
    patient / recording: EDF+ subfields; `recording` is written after 'Startdate dd-MMM-yyyy
        X X X' (a note such as 'SIMULATED' is kept) unless it already starts with 'Startdate'.
    record_duration_s: None picks the smallest whole number of seconds giving every signal an
        integer number of samples per record (1 s for 100/256/3 Hz); annotation-only files
        get one record of duration 0 (the Sleep-EDF hypnogram layout).
    Digital range -32768..32767; physical range from the data (rounded outward to fit 8
    characters) unless given; samples outside a given range are clipped to it (as an amplifier
    saturates) with one `EDFClipWarning` naming the count. The last record is padded with the
    signal's last value. Streams record blocks; written to a temporary file and renamed.
    Labels/units/patient fields are transliterated to ASCII (µV -> uV, é -> e).
    """
    path = Path(path)
    specs = list(signals)
    start = _DEFAULT_START if start is None else start
    if not 1985 <= start.year <= 2084:
        raise EDFError(f"{path}: start year {start.year} outside 1985..2084, which EDF can store; "
                       "give a start in that range")
    frac = start.microsecond / 1e6
    start_whole = start.replace(microsecond=0)
    labels = [s.label for s in specs]
    if ANNOTATION_LABEL in labels:
        raise EDFError(f"{path}: signal label {ANNOTATION_LABEL!r} is reserved; pass annotations instead")
    dup = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dup:
        raise EDFError(f"{path}: duplicate signal labels {dup}; give every signal a distinct label")

    arrays: list[np.ndarray] = []
    for s in specs:
        if not (isinstance(s.fs_hz, (int, float, np.floating, np.integer)) and math.isfinite(s.fs_hz)
                and s.fs_hz > 0):
            raise EDFError(f"{path}: signal {s.label!r} has fs_hz={s.fs_hz!r}, expected a positive rate")
        a = np.asarray(s.data)
        if a.ndim != 1 or a.size == 0:
            raise EDFError(f"{path}: signal {s.label!r} data has shape {a.shape}, expected (n_samples,) with n > 0")
        if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
            raise EDFError(f"{path}: signal {s.label!r} data has dtype {a.dtype}, expected real numbers")
        arrays.append(a)

    # record layout
    if record_duration_s is None:
        duration = _record_duration(specs) if specs else 0.0
    else:
        duration = float(record_duration_s)
        if not (math.isfinite(duration) and duration >= 0) or (specs and duration == 0):
            raise EDFError(f"{path}: record_duration_s={record_duration_s!r}, expected a positive number of seconds")
    spr: list[int] = []
    for s in specs:
        n = s.fs_hz * duration
        if abs(n - round(n)) > 1e-6 or round(n) < 1:
            raise EDFError(
                f"{path}: signal {s.label!r} at {s.fs_hz} Hz has {n:g} samples per "
                f"{duration:g}-s record, expected a whole number; use record_duration_s=None"
            )
        spr.append(int(round(n)))
    if specs:
        n_records = max(-(-len(a) // k) for a, k in zip(arrays, spr))
        for s, a, k in zip(specs, arrays, spr):
            if len(a) <= (n_records - 1) * k:
                raise EDFError(
                    f"{path}: signal {s.label!r} lasts {len(a) / s.fs_hz:g} s but the longest "
                    f"signal lasts {n_records * duration:g} s; give signals of equal duration"
                )
    else:
        ends = [a.onset_s + max(a.duration_s, 0.0) for a in annotations] or [0.0]
        n_records = 1 if duration == 0 else max(1, int(math.ceil(max(ends) / duration)))

    # physical ranges: one bounded pass per signal (finite check + min/max)
    phys: list[tuple[str, str]] = []
    for s, a in zip(specs, arrays):
        lo = hi = None
        for c0 in range(0, len(a), 1 << 20):
            chunk = a[c0: c0 + (1 << 20)]
            if not np.isfinite(chunk).all():
                bad = c0 + int(np.nonzero(~np.isfinite(chunk))[0][0])
                raise EDFError(
                    f"{path}: signal {s.label!r} has a NaN/Inf sample at index {bad}; EDF cannot "
                    "store them, fill or interpolate the gap first"
                )
            cmin, cmax = float(chunk.min()), float(chunk.max())
            lo = cmin if lo is None else min(lo, cmin)
            hi = cmax if hi is None else max(hi, cmax)
        pmin = lo if s.physical_min is None else float(s.physical_min)
        pmax = hi if s.physical_max is None else float(s.physical_max)
        if pmin < pmax and (lo < pmin or hi > pmax):
            n_out = sum(int(np.count_nonzero((a[c0: c0 + (1 << 20)] < pmin) | (a[c0: c0 + (1 << 20)] > pmax)))
                        for c0 in range(0, len(a), 1 << 20))
            warnings.warn(
                f"{path.name}: {n_out} samples of {s.label!r} outside the given physical range "
                f"[{pmin:g}, {pmax:g}] {s.unit} (data {lo:g}..{hi:g}) are clipped to it",
                EDFClipWarning, stacklevel=2,
            )
        if pmin == pmax:
            pmin, pmax = pmin - 1.0, pmax + 1.0
        if not pmin < pmax:
            raise EDFError(f"{path}: signal {s.label!r} physical range [{pmin}, {pmax}] is empty; "
                           "give physical_min < physical_max")
        phys.append((_fmt_num(pmin, 8, -1), _fmt_num(pmax, 8, +1)))

    # annotations -> TAL bytes per record (time-keeping TAL first)
    per_record: dict[int, list[bytes]] = {}
    for a in annotations:
        if not (math.isfinite(a.onset_s) and math.isfinite(a.duration_s)):
            raise EDFError(f"{path}: annotation {a.text!r} has onset/duration {a.onset_s}/{a.duration_s}; expected finite seconds")
        if any(c in a.text for c in "\x00\x14\x15"):
            raise EDFError(f"{path}: annotation text {a.text!r} contains EDF+ control bytes (0x00/0x14/0x15); remove them")
        r = 0 if duration == 0 else int(min(max(a.onset_s // duration, 0), n_records - 1))
        per_record.setdefault(r, []).append(_tal(a.onset_s + frac, a.text, max(a.duration_s, 0.0)))
    ann_bytes = max(
        [len(_tal(frac + (n_records - 1) * duration, keeping=True))]
        + [len(_tal(frac + r * duration, keeping=True)) + sum(len(t) for t in tals) for r, tals in per_record.items()]
    )
    ann_spr = -(-ann_bytes // 2)

    ns = len(specs) + 1
    if ns > _MAX_SIGNALS:
        raise EDFError(f"{path}: {len(specs)} signals, EDF holds at most {_MAX_SIGNALS - 1} plus annotations")
    # header
    if recording.startswith("Startdate"):
        rec_field = recording
    else:
        rec_field = f"Startdate {start_whole.day:02d}-{_MONTHS[start_whole.month - 1]}-{start_whole.year} X X X"
        if recording:
            rec_field += " " + recording
    hdr = bytearray()
    hdr += _field("0", 8, "version")
    hdr += _field(patient, 80, "patient field")
    hdr += _field(rec_field, 80, "recording field")
    hdr += _field(start_whole.strftime("%d.%m.%y"), 8, "start date")
    hdr += _field(start_whole.strftime("%H.%M.%S"), 8, "start time")
    hdr += _field(str(256 * (ns + 1)), 8, "header bytes")
    hdr += _field("EDF+C", 44, "reserved")
    hdr += _field(str(n_records), 8, "number of records")
    hdr += _field(_fmt_num(duration), 8, "record duration")
    hdr += _field(str(ns), 4, "number of signals")
    cols: dict[str, list[bytes]] = {name: [] for name, _ in _SIGNAL_FIELDS}
    for s, (pmin_s, pmax_s), k in zip(specs, phys, spr):
        cols["label"].append(_field(s.label, 16, "signal label"))
        cols["transducer"].append(_field(s.transducer, 80, f"transducer of {s.label!r}"))
        cols["unit"].append(_field(s.unit, 8, f"unit of {s.label!r}"))
        cols["physical_min"].append(_field(pmin_s, 8, "physical minimum"))
        cols["physical_max"].append(_field(pmax_s, 8, "physical maximum"))
        cols["digital_min"].append(_field("-32768", 8, "digital minimum"))
        cols["digital_max"].append(_field("32767", 8, "digital maximum"))
        cols["prefilter"].append(_field(s.prefilter, 80, f"prefilter of {s.label!r}"))
        cols["samples_per_record"].append(_field(str(k), 8, f"samples per record of {s.label!r}"))
        cols["reserved"].append(b" " * 32)
    for name, value in (("label", ANNOTATION_LABEL), ("transducer", ""), ("unit", ""),
                        ("physical_min", "-1"), ("physical_max", "1"), ("digital_min", "-32768"),
                        ("digital_max", "32767"), ("prefilter", ""), ("samples_per_record", str(ann_spr)),
                        ("reserved", "")):
        cols[name].append(_field(value, dict(_SIGNAL_FIELDS)[name], f"annotation {name}"))
    for name, _ in _SIGNAL_FIELDS:
        hdr += b"".join(cols[name])
    if len(hdr) != 256 * (ns + 1):  # internal invariant of this writer, not user input
        raise EDFError(f"{path}: internal error: header is {len(hdr)} bytes, expected {256 * (ns + 1)}")

    # data records, streamed in blocks
    record_samples = sum(spr) + ann_spr
    offsets = np.concatenate([[0], np.cumsum(spr + [ann_spr])[:-1]]).astype(int)
    gains = []
    for (pmin_s, pmax_s) in phys:
        pmin, pmax = float(pmin_s), float(pmax_s)
        gains.append((pmin, 65535.0 / (pmax - pmin)))
    block = max(1, 500_000 // record_samples)  # ~1 MB of int16 per block
    tmp = path.with_name(path.name + ".part")
    try:
        with open(tmp, "wb") as fh:
            fh.write(bytes(hdr))
            for r0 in range(0, n_records, block):
                r1 = min(n_records, r0 + block)
                buf = np.zeros((r1 - r0, record_samples), dtype="<i2")
                for a, k, off, (pmin, g) in zip(arrays, spr, offsets, gains):
                    seg = np.asarray(a[r0 * k: r1 * k], dtype=np.float64)
                    dig = np.empty((r1 - r0) * k, dtype=np.float64)
                    dig[: len(seg)] = seg
                    if len(seg) < len(dig):  # pad the last record with the last value
                        dig[len(seg):] = seg[-1] if len(seg) else 0.0
                    dig -= pmin
                    dig *= g
                    dig -= 32768.0
                    np.rint(dig, out=dig)
                    np.clip(dig, -32768, 32767, out=dig)
                    buf[:, off: off + k] = dig.reshape(r1 - r0, k)
                a_off = offsets[-1]
                for r in range(r0, r1):
                    raw = _tal(frac + r * duration, keeping=True) + b"".join(per_record.get(r, ()))
                    raw = raw.ljust(2 * ann_spr, b"\x00")
                    buf[r - r0, a_off: a_off + ann_spr] = np.frombuffer(raw, dtype="<i2")
                fh.write(memoryview(buf).cast("B"))
        os.replace(tmp, path)
    except OSError as err:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise OutputError(f"{path}: cannot write the EDF file ({err.strerror}); check the folder exists and is writable") from None
    return path
