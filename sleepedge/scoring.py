"""Hypnograms and scored events: readers, writers and the event -> epoch overlap rule.

Glossary / layouts
    Hypnogram.stages  int16 (n_epochs,), one AASM code per epoch: W, N1, N2, N3, REM = 0..4,
                      IGNORE (-100) for unscored / movement / "?" epochs (never Wake).
    epoch_s           epoch length in seconds (30, unless a Profusion/NSRR <EpochLength> or a
                      sleepedge JSON says otherwise).
    Event.onset_s     seconds from the hypnogram's first epoch onset (epoch 0 starts at 0 s);
                      may be negative for an event scored before the first staged epoch.
    Event.kind        one of EVENT_KINDS; events of other kinds (limb movements, position,
                      artefacts, notes) are not returned.

Formats read by `read_scoring(path, fmt="auto")` (detected from the content, not the name):
    "edf"        Sleep-EDF style EDF+ hypnogram (`Sleep stage W/1/2/3/4/R/?`, `Movement time`;
                 annotations spanning many epochs), read through `sleepedge.edf.open_edf`.
    "profusion"  Compumedics Profusion XML (`CMPStudyConfig`, NSRR `*-profusion.xml`):
                 `SleepStages` codes 0=W 1..4=S1..S4 5=REM, 6 (movement) / 9 (unscored) -> IGNORE.
    "nsrr"       NSRR `PSGAnnotation` XML (`ScoredEvents/ScoredEvent` with `EventType`,
                 `EventConcept` such as `Stage 2 sleep|2`, `Hypopnea|Hypopnea`).
    "noxturnal"  Noxturnal event export CSV (UTF-16 or UTF-8, French or English labels,
                 `dd/mm/yyyy hh:mm:ss` times, a units row under the header). Epoch 0 starts at
                 the first stage row (`Hypnogram.start`); gaps in the staging are IGNORE;
                 rows that are neither stages nor EVENT_KINDS (position, artefact, notes) are
                 skipped, but a stage-like label we do not know (`N5`, `Stage 9`) is an error.
    "dreams"     DREAMS hypnogram text (`[HypnogramAASM]` 5=W 4=REM 3=N1 2=N2 1=N3, or
                 `[HypnogramR&K]` with 0=S4; 0/-1/-2/-3 unscored), one code per 5-s epoch. A 30-s
                 epoch takes the stage held by most of its six 5-s codes; a tie for the top or
                 an unscored majority gives IGNORE; a trailing incomplete epoch is dropped.
    "tsv"/"csv"  BIDS-style hypnogram: columns onset, duration (optional), stage (or
                 sleep_stage / stage_hum / stage_ai, first found; names or
                 YASA codes), optional p_W..p_REM columns (ignored on read) and an optional
                 `event` (or `description`) column: a row whose event cell is filled is an
                 event row (its stage cell is not used), e.g. the simulator's truth sidecar.
    "json"       the JSON written by `write_hypnogram`.
    "wfdb"       PhysioNet WFDB annotations of the MIT-BIH Polysomnographic Database (slpdb
                 `<record>.st`), read with the optional `wfdb` package (`pip install
                 'sleepedge[notebook]'`). Detected by the `.st` extension (a `<record>.hea`
                 path reads its `.st`; any binary file with a `.hea` beside it is tried as WFDB).
                 One annotation per 30-s epoch; its aux text is the R&K stage (W 1 2 3 4 R, MT
                 or M = movement time) then the epoch's events. R&K -> AASM: 3 and 4 -> N3, MT/M
                 -> IGNORE (movement is never Wake). Events (README.st of slpdb): H hypopnea,
                 HA hypopnea + arousal, OA obstructive apnea, X obstructive apnea + arousal,
                 CA central apnea, CAA central apnea + arousal, A arousal, LA arousal (the leg
                 movement itself, L/LA, is not an EVENT_KIND and is skipped). ASSUMPTION (slpdb
                 gives no event times): each event token is one event that starts at its
                 epoch's onset and lasts the epoch (30 s); a token repeated in one epoch is as
                 many events; an event running across an epoch boundary may be marked in both
                 epochs, so an AHI from these events counts marked epochs per hour of sleep.
                 Epoch k is annotation sample / (fs * 30) rounded (slpdb's first annotation is
                 at sample 1, or later: the epochs before it are IGNORE); the start time is the
                 `.hea` header's base date/time when present.

Writers: `write_hypnogram` (TSV / CSV / JSON / EDF+) and `write_profusion_xml` (Compumedics
Profusion XML, the NSRR `*-profusion.xml` layout, read back by the "profusion" reader).

Stage intervals (EDF+, NSRR, Noxturnal, TSV) are put on the epoch grid by their midpoint: epoch k
(covering [k*epoch_s, (k+1)*epoch_s)) takes the stage of the interval that contains its midpoint;
an epoch no interval covers is IGNORE; when intervals overlap the later one in the file wins.
A stage annotation without a duration (0 s, as some EDF+ exporters write per-epoch markers)
lasts one epoch.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import unicodedata
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from sleepedge.contract import EPOCH_S, IGNORE, STAGES
from sleepedge.errors import OutputError, ScoringError

__all__ = [
    "EVENT_KINDS",
    "APNEA_KINDS",
    "READ_FORMATS",
    "WRITE_FORMATS",
    "Event",
    "Hypnogram",
    "event_kind",
    "events_to_epochs",
    "read_scoring",
    "stage_code",
    "write_hypnogram",
    "write_profusion_xml",
]

EVENT_KINDS: tuple[str, ...] = (
    "obstructive_apnea",
    "central_apnea",
    "mixed_apnea",
    "hypopnea",
    "desaturation",
    "arousal",
)
APNEA_KINDS: tuple[str, ...] = ("obstructive_apnea", "central_apnea", "mixed_apnea")
READ_FORMATS: tuple[str, ...] = ("edf", "profusion", "nsrr", "noxturnal", "dreams", "tsv", "csv", "json", "wfdb")
WFDB_EXTENSIONS: tuple[str, ...] = (".st",)   # slpdb sleep stage + respiratory annotations
WRITE_FORMATS: tuple[str, ...] = ("tsv", "csv", "json", "edf")

# a scoring longer than this is a corrupt file, not a recording (guards array sizes)
MAX_SCORING_S: float = 14 * 86400.0
MAX_FILE_BYTES: int = 200 * 1024 * 1024
# overlap rule of events_to_epochs (AASM: a respiratory event lasts >= 10 s)
MIN_EVENT_OVERLAP_S: float = 10.0
# DREAMS hypnograms: one code per 5-s epoch
DREAMS_EPOCH_S: float = 5.0

_STAGE_NAMES_OUT = {0: "W", 1: "N1", 2: "N2", 3: "N3", 4: "REM", IGNORE: "n/a"}
_EDF_STAGE_TEXT = {0: "Sleep stage W", 1: "Sleep stage N1", 2: "Sleep stage N2", 3: "Sleep stage N3",
                   4: "Sleep stage R", IGNORE: "Sleep stage ?"}


# --------------------------------------------------------------------------- data types
@dataclass
class Hypnogram:
    """One stage code per epoch (0..4 = W, N1, N2, N3, REM; IGNORE = unscored/movement)."""

    stages: np.ndarray
    epoch_s: float = EPOCH_S
    start: datetime | None = None
    source: str = ""

    def __post_init__(self) -> None:
        try:
            arr = np.asarray(self.stages)
            if arr.dtype == object:
                arr = arr.astype(np.int64)
            if arr.dtype.kind not in "iuf":
                raise TypeError(arr.dtype)
        except (OverflowError, ValueError, TypeError):
            raise ScoringError(f"hypnogram {self.source or '<array>'}: stages are not integer codes 0..4 or "
                               f"{IGNORE}; map the labels first") from None
        if arr.ndim != 1:
            raise ScoringError(f"hypnogram {self.source or '<array>'}: stages must be 1-D, got shape "
                               f"{arr.shape}; pass one code per epoch")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise ScoringError(f"hypnogram {self.source or '<array>'}: stages must be integer codes "
                                   f"0..4 or {IGNORE}")
        arr = arr.astype(np.int64)
        bad = ~(((arr >= 0) & (arr <= 4)) | (arr == IGNORE))
        if bad.any():
            raise ScoringError(f"hypnogram {self.source or '<array>'}: stage code {int(arr[bad][0])} at "
                               f"epoch {int(np.flatnonzero(bad)[0])} is not 0..4 (W,N1,N2,N3,REM) or "
                               f"IGNORE ({IGNORE}); map it first")
        try:
            epoch_s = float(self.epoch_s)
        except (TypeError, ValueError):
            epoch_s = float("nan")
        if not (math.isfinite(epoch_s) and epoch_s > 0):
            raise ScoringError(f"hypnogram {self.source or '<array>'}: epoch_s={self.epoch_s!r}; "
                               f"expected a positive number of seconds")
        self.stages = arr.astype(np.int16)
        self.epoch_s = epoch_s

    @property
    def n_epochs(self) -> int:
        return int(self.stages.size)

    @property
    def duration_s(self) -> float:
        return self.n_epochs * self.epoch_s

    def names(self) -> list[str]:
        """Stage names per epoch ("W", "N1", "N2", "N3", "REM", "n/a" for IGNORE)."""
        return [_STAGE_NAMES_OUT[int(s)] for s in self.stages]


@dataclass
class Event:
    """A scored event. onset_s is relative to the hypnogram's epoch 0."""

    onset_s: float
    duration_s: float
    kind: str
    label: str = ""
    drop_pct: float | None = None   # SpO2 drop of a desaturation, when the file gives it

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ScoringError(f"event kind {self.kind!r} is not one of {', '.join(EVENT_KINDS)}")
        self.onset_s = float(self.onset_s)
        self.duration_s = float(self.duration_s)
        if not (math.isfinite(self.onset_s) and math.isfinite(self.duration_s) and self.duration_s >= 0):
            raise ScoringError(f"event {self.label or self.kind!r}: onset {self.onset_s} s / duration "
                               f"{self.duration_s} s; expected finite numbers and duration >= 0")


# --------------------------------------------------------------------------- label tables
def _norm(label: str) -> str:
    """Lower-case, accents removed, spaces collapsed: 'Éveil ' -> 'eveil'."""
    text = unicodedata.normalize("NFKD", str(label))
    text = "".join(c for c in text if not unicodedata.combining(c))
    return " ".join(text.lower().split())


# stage names accepted in EDF+, NSRR, Noxturnal, TSV/CSV and JSON files (normalised form)
_STAGE_LABELS: dict[str, int] = {}
for _code, _names in {
    0: ("w", "wake", "awake", "awa", "eveil", "veille", "stage w", "sleep stage w", "wake|0", "0"),
    1: ("n1", "s1", "1", "stage 1", "stage n1", "sleep stage 1", "sleep stage n1", "stage 1 sleep|1",
        "stade 1", "stade n1"),
    2: ("n2", "s2", "2", "stage 2", "stage n2", "sleep stage 2", "sleep stage n2", "stage 2 sleep|2",
        "stade 2", "stade n2"),
    3: ("n3", "s3", "s4", "n4", "3", "stage 3", "stage 4", "stage n3", "sleep stage 3", "sleep stage 4",
        "sleep stage n3", "sleep stage n4", "stage 3 sleep|3", "stage 4 sleep|4", "sws", "stade 3",
        "stade 4", "stade n3"),
    4: ("r", "rem", "4", "stage r", "stage rem", "sleep stage r", "sleep stage rem", "rem sleep|5",
        "rem sleep", "sp", "paradoxal", "sommeil paradoxal"),
    IGNORE: ("?", "n/a", "na", "nan", "", "-100", "-1", "-2", "unscored", "uns", "unknown", "artefact",
             "artifact", "art", "mt", "movement", "movement time", "sleep stage ?", "unscored|9",
             "movement|6", "sleep stage movement", "non score", "mouvement"),
}.items():
    for _n in _names:
        _STAGE_LABELS[_n] = _code
ACCEPTED_STAGE_LABELS: str = "W/Wake, N1/S1, N2/S2, N3/S3/S4, R/REM, 0-4, ?/n/a/unscored/movement"

# event names -> kind (normalised form); anything not here is not a respiratory/arousal event
_EVENT_LABELS: dict[str, str] = {}
for _kind, _names in {
    "obstructive_apnea": ("obstructive apnea", "a. obstructive", "apnea obstructive", "obstructive apnoea",
                          "apnee obstructive", "obstructive apnea|obstructive apnea", "oa"),
    "central_apnea": ("central apnea", "a. centrale", "a. central", "apnea central", "central apnoea",
                      "apnee centrale", "central apnea|central apnea", "ca"),
    "mixed_apnea": ("mixed apnea", "a. mixte", "a. mixed", "apnea mixed", "mixed apnoea", "apnee mixte",
                    "mixed apnea|mixed apnea", "ma"),
    "hypopnea": ("hypopnea", "hypopnee", "hypopnoea", "obstructive hypopnea", "central hypopnea",
                 "mixed hypopnea", "hypopnea|hypopnea", "h. obstructive", "h. centrale", "h. mixte",
                 "hypopnee obstructive", "hypopnee centrale"),
    "desaturation": ("spo2 desaturation", "desat", "desaturation", "oxygen desaturation",
                     "spo2 desaturation|spo2 desaturation", "sao2 desaturation"),
    "arousal": ("arousal", "micro-eveil", "microeveil", "micro eveil", "arousals", "asda arousal",
                "spontaneous arousal", "respiratory arousal", "arousal|arousal ()",
                "asda arousal|arousal (asda)"),
}.items():
    for _n in _names:
        _EVENT_LABELS[_n] = _kind


def event_kind(label: str) -> str | None:
    """EVENT_KINDS entry for an event label in any supported vocabulary, or None (not a
    respiratory/desaturation/arousal event: limb movement, position, note...)."""
    n = _norm(label)
    if n in _EVENT_LABELS:
        return _EVENT_LABELS[n]
    if n.startswith("arousal") or n.startswith("micro-eveil"):
        return "arousal"   # "Arousal (ASDA)", "Arousal ()", "Arousal resulting from ..."
    if "|" in n:           # NSRR "name|display": try each half
        for part in n.split("|"):
            if part.strip() in _EVENT_LABELS:
                return _EVENT_LABELS[part.strip()]
    return None


_event_kind = event_kind  # old private name, kept for callers that imported it


def stage_code(label: str, source: str = "<label>") -> int:
    """AASM code (0..4 or IGNORE) of a stage label; ScoringError naming it when unknown."""
    n = _norm(label)
    if n in _STAGE_LABELS:
        return _STAGE_LABELS[n]
    if "|" in n:  # NSRR "Stage 2 sleep|2": the name half decides
        head = n.split("|", 1)[0].strip()
        if head in _STAGE_LABELS:
            return _STAGE_LABELS[head]
        if head.startswith("stage ") and head.endswith(" sleep") and head[6:-6].strip() in _STAGE_LABELS:
            return _STAGE_LABELS[head[6:-6].strip()]
    raise ScoringError(f"{source}: unknown sleep stage label {str(label)[:60]!r}; accepted: "
                       f"{ACCEPTED_STAGE_LABELS}")


# --------------------------------------------------------------------------- helpers
def _num(text: object, what: str, source: str) -> float:
    """Finite float from text (decimal comma tolerated); ScoringError otherwise."""
    s = str(text).strip().replace(",", ".") if text is not None else ""
    try:
        value = float(s)
    except ValueError:
        raise ScoringError(f"{source}: {what} {s[:40]!r} is not a number; fix or remove that entry") from None
    if not math.isfinite(value) or abs(value) > MAX_SCORING_S * 10:
        raise ScoringError(f"{source}: {what} {s[:40]!r} is out of range (|x| <= {MAX_SCORING_S * 10:g} s "
                           f"expected); the file looks corrupt")
    return value


def _intervals_to_stages(intervals: Sequence[tuple[float, float, int]], epoch_s: float,
                         source: str) -> np.ndarray:
    """(onset_s, duration_s, code) intervals -> per-epoch codes by the epoch-midpoint rule."""
    if not intervals:
        raise ScoringError(f"{source}: no sleep stage found; expected stage annotations "
                           f"({ACCEPTED_STAGE_LABELS})")
    on = np.array([i[0] for i in intervals], dtype=np.float64)
    du = np.array([i[1] for i in intervals], dtype=np.float64)
    code = np.array([i[2] for i in intervals], dtype=np.int16)
    if (on < 0).any() or (du < 0).any():
        k = int(np.flatnonzero((on < 0) | (du < 0))[0])
        raise ScoringError(f"{source}: stage interval at {on[k]:g} s lasting {du[k]:g} s; expected onset >= 0 "
                           f"and duration >= 0")
    du = np.where(du == 0, epoch_s, du)   # a duration-less stage marker scores one epoch
    end = float((on + du).max())
    if end > MAX_SCORING_S:
        raise ScoringError(f"{source}: stages run to {end:g} s (> {MAX_SCORING_S / 86400:g} days); "
                           f"the file looks corrupt")
    n = int(math.floor(end / epoch_s + 0.5))  # partial last epoch kept only when >= half an epoch
    if n == 0:
        raise ScoringError(f"{source}: the sleep stages cover {end:g} s, less than half a {epoch_s:g}-s epoch; "
                           f"expected at least one scored epoch")
    stages = np.full(n, IGNORE, dtype=np.int16)
    mids = (np.arange(n) + 0.5) * epoch_s
    for o, d, c in zip(on, du, code):  # later intervals win
        lo = int(np.searchsorted(mids, o, side="left"))
        hi = int(np.searchsorted(mids, o + d, side="left"))
        stages[lo:hi] = c
    return stages


def _decode(data: bytes, source: str, errors: str = "strict") -> str:
    """Text of a scoring file: UTF-16 (BOM or NUL pattern), UTF-8 (BOM optional), else Latin-1."""
    if errors != "strict":  # detection on a prefix: a character cut at the end must not fail
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            return data.decode("utf-16", errors=errors)
        if len(data) >= 4 and data[1:4:2] == b"\x00\x00" and data[0:1] != b"\x00":
            return data.decode("utf-16-le", errors=errors)
        return data.decode("utf-8-sig", errors=errors)
    try:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            return data.decode("utf-16")
        if data.startswith(b"\xef\xbb\xbf"):
            return data.decode("utf-8-sig")
        if len(data) >= 4 and data[1:4:2] == b"\x00\x00" and data[0:1] != b"\x00":
            return data.decode("utf-16-le")     # UTF-16 without BOM ("H\0e\0")
    except UnicodeDecodeError as exc:
        raise ScoringError(f"{source}: not valid UTF-16/UTF-8 text ({exc.reason} at byte {exc.start}); "
                           f"re-export the scoring as text") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # old exports; every byte is a Latin-1 character


def _lines(text: str) -> list[str]:
    return [ln for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]


# --------------------------------------------------------------------------- detection
def _detect(data: bytes, path: Path) -> str:
    source = str(path)
    if data[:8] == b"0       ":
        return "edf"
    text = _decode(data[:65536], source, errors="replace")
    head = text.lstrip("\ufeff \t\r\n")
    if head.startswith("<"):
        if re.search(r"<\s*CMPStudyConfig\b", head[:65536]):
            return "profusion"
        if re.search(r"<\s*PSGAnnotation\b", head[:65536]):
            return "nsrr"
        raise ScoringError(f"{source}: XML without a CMPStudyConfig (Profusion) or PSGAnnotation (NSRR) root; "
                           f"pass fmt= or convert the file")
    if head.startswith("{"):
        return "json"
    lines = [ln.strip() for ln in _lines(head)[:50] if ln.strip()]
    if lines and lines[0].startswith("[Hypnogram"):
        return "dreams"   # a header-less column of codes is ambiguous (5-s? 30-s?): needs fmt="dreams"
    if lines:
        header = {_norm(c).strip('"') for c in re.split(r"[,;\t]", lines[0])}
        if header & _NOX_EVENT_COLS and header & _NOX_START_COLS:
            return "noxturnal"
        if header & set(_STAGE_COLUMNS):
            return "tsv" if "\t" in lines[0] else "csv"
    raise ScoringError(f"{source}: scoring format not recognised from its content; expected one of "
                       f"{', '.join(READ_FORMATS)} (pass fmt= to force one)")


def read_scoring(path: str | Path, fmt: str = "auto") -> tuple[Hypnogram, list[Event]]:
    """Read a hypnogram and its scored events from any supported scoring file.

    Returns (Hypnogram, events sorted by onset). Event onsets are seconds from the
    hypnogram's epoch 0. Raises ScoringError (or EDFError for a broken EDF+) with one line.
    """
    path = Path(path)
    if fmt not in ("auto",) + READ_FORMATS:
        raise ScoringError(f"fmt={fmt!r} for {path}: expected 'auto' or one of {', '.join(READ_FORMATS)}")
    if path.is_dir():
        raise ScoringError(f"{path}: is a folder; expected a scoring file inside it")
    if not path.is_file():
        raise ScoringError(f"{path}: no such scoring file; check the path")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ScoringError(f"{path}: {path.stat().st_size} bytes is too large for a scoring file "
                           f"(max {MAX_FILE_BYTES}); is it a signal file?")
    if fmt == "auto" and path.suffix.lower() == ".hea":
        for ext in WFDB_EXTENSIONS:   # a WFDB record's header: read its annotations
            if path.with_suffix(ext).is_file():
                path, fmt = path.with_suffix(ext), "wfdb"
                break
    if fmt == "auto" and path.suffix.lower() in WFDB_EXTENSIONS:
        fmt = "wfdb"
    if fmt == "edf":
        return _read_edf(path)
    if fmt == "wfdb":
        return _read_wfdb(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ScoringError(f"{path}: cannot read ({exc.strerror}); check permissions") from None
    if fmt == "auto":
        try:
            fmt = _detect(data, path)
        except ScoringError:
            if path.with_suffix(".hea").is_file() and path.suffix.lower() != ".hea":
                return _read_wfdb(path)   # a WFDB annotator with another extension
            raise
        if fmt == "edf":
            return _read_edf(path)
    source = str(path)
    text = _decode(data, source)
    reader = {"profusion": _parse_profusion, "nsrr": _parse_nsrr, "noxturnal": _parse_noxturnal,
              "dreams": _parse_dreams, "tsv": _parse_table, "csv": _parse_table, "json": _parse_json}[fmt]
    hyp, events = reader(text, source)
    events.sort(key=lambda e: (e.onset_s, e.kind))
    return hyp, events


# --------------------------------------------------------------------------- EDF+
def _read_edf(path: Path) -> tuple[Hypnogram, list[Event]]:
    from sleepedge.edf import open_edf  # lazy: keeps `import sleepedge.scoring` light

    source = str(path)
    with open_edf(path) as reader:
        header = reader.header
        annotations = list(header.annotations)
        start = header.start
    intervals: list[tuple[float, float, int]] = []
    events: list[Event] = []
    for ann in annotations:
        text = str(ann.text).strip()
        n = _norm(text)
        onset = _num(ann.onset_s, "annotation onset", source)
        duration = _num(ann.duration_s if ann.duration_s is not None else 0.0, "annotation duration", source)
        if n.startswith("sleep stage") or n in ("movement time", "sleep stage movement"):
            intervals.append((onset, duration, stage_code(text, source)))
            continue
        kind = event_kind(text)
        if kind is not None:
            events.append(Event(onset, duration, kind, text))
    stages = _intervals_to_stages(intervals, EPOCH_S, source)
    return Hypnogram(stages, EPOCH_S, start, source), events


# --------------------------------------------------------------------------- PhysioNet WFDB (slpdb)
_WFDB_STAGES = {"W": 0, "1": 1, "2": 2, "3": 3, "4": 3, "R": 4, "MT": IGNORE, "M": IGNORE}
_WFDB_EVENTS: dict[str, tuple[str, ...]] = {
    "H": ("hypopnea",), "HA": ("hypopnea", "arousal"),
    "OA": ("obstructive_apnea",), "X": ("obstructive_apnea", "arousal"),
    "CA": ("central_apnea",), "CAA": ("central_apnea", "arousal"),
    "A": ("arousal",), "LA": ("arousal",),
}


def _wfdb_header(wfdb, record: str):
    """The WFDB record header (`<record>.hea`: sampling frequency, base date/time), None when
    absent/unreadable."""
    if not Path(record + ".hea").is_file():
        return None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"wfdb(\..*)?")
            return wfdb.rdheader(record)
    except Exception:  # noqa: BLE001 - a header we cannot read only costs the start time (and fs)
        return None


def _read_wfdb(path: Path) -> tuple[Hypnogram, list[Event]]:
    source = str(path)
    try:
        import wfdb
    except ImportError:
        raise ScoringError(f"{source}: reading PhysioNet WFDB annotations needs the wfdb package; "
                           f"pip install 'sleepedge[notebook]'") from None
    record, ext = str(path.with_suffix("")), path.suffix.lstrip(".")
    if not ext:
        raise ScoringError(f"{source}: a WFDB annotation file needs an annotator extension (e.g. slp01a.st)")
    try:
        with warnings.catch_warnings():   # wfdb's own deprecation notices about pandas are not the user's concern
            warnings.filterwarnings("ignore", module=r"wfdb(\..*)?")
            ann = wfdb.rdann(record, ext)
    except Exception as exc:  # noqa: BLE001 - wfdb raises ValueError/IndexError/... on a bad file
        raise ScoringError(f"{source}: not a readable WFDB annotation file ({type(exc).__name__}: "
                           f"{str(exc)[:80]}); expected a PhysioNet annotator such as slp01a.st") from None
    head = _wfdb_header(wfdb, record)
    fs = ann.fs or (head.fs if head is not None else None)
    if not fs or not math.isfinite(float(fs)) or float(fs) <= 0:
        raise ScoringError(f"{source}: WFDB annotations without a sampling frequency and no readable "
                           f"{Path(record).name}.hea beside them; put the record header next to the file")
    fs = float(fs)
    samples = np.asarray(ann.sample, dtype=np.int64)
    notes = list(ann.aux_note or [""] * samples.size)
    entries: list[tuple[int, int, list[str]]] = []
    for sample, note in zip(samples.tolist(), notes):
        tokens = str(note or "").replace("\x00", " ").split()
        if not tokens:
            continue   # an annotation without aux text carries no stage (not a slpdb epoch)
        k = int(round(sample / (fs * EPOCH_S)))
        if k < 0 or k * EPOCH_S > MAX_SCORING_S:
            raise ScoringError(f"{source}: annotation at sample {sample} is outside 0..{MAX_SCORING_S / 86400:g} "
                               f"days; the file looks corrupt")
        first = tokens[0].upper()
        if first not in _WFDB_STAGES:
            raise ScoringError(f"{source}: epoch {k} (sample {sample}): unknown slpdb stage {tokens[0][:12]!r} in "
                               f"aux text {str(note)[:40]!r}; accepted W 1 2 3 4 R MT")
        entries.append((k, _WFDB_STAGES[first], [t.upper() for t in tokens[1:]]))
    if not entries:
        raise ScoringError(f"{source}: no stage annotations (aux text 'W', '1'..'4', 'R', 'MT'); is it a slpdb "
                           f"`.st` annotator?")
    stages = np.full(max(k for k, _, _ in entries) + 1, IGNORE, dtype=np.int16)
    events: list[Event] = []
    for k, code, toks in entries:
        stages[k] = code   # the later annotation of an epoch wins (as for intervals)
        for tok in toks:
            for kind in _WFDB_EVENTS.get(tok, ()):   # L / LL... leg movements: not an event kind
                events.append(Event(k * EPOCH_S, EPOCH_S, kind, tok))
    start = None
    if head is not None and head.base_date is not None and head.base_time is not None:
        start = datetime.combine(head.base_date, head.base_time)
    return Hypnogram(stages, EPOCH_S, start, source), events


# --------------------------------------------------------------------------- XML
def _xml_root(text: str, source: str) -> ET.Element:
    if re.search(r"<!\s*(DOCTYPE|ENTITY)", text, re.IGNORECASE):
        raise ScoringError(f"{source}: XML with a DOCTYPE/ENTITY declaration is refused (entity expansion "
                           f"attacks); remove the declaration")
    try:
        return ET.fromstring(text.lstrip("\ufeff \t\r\n"))
    except ET.ParseError as exc:
        raise ScoringError(f"{source}: malformed XML ({exc}); re-export the scoring") from None
    except ValueError as exc:  # e.g. an encoding declaration the decoded text contradicts
        raise ScoringError(f"{source}: unreadable XML ({exc}); re-export the scoring as UTF-8") from None


def _child_text(elem: ET.Element, tag: str) -> str | None:
    child = elem.find(tag)
    return None if child is None or child.text is None else child.text.strip()


def _epoch_length(root: ET.Element, source: str) -> float:
    text = _child_text(root, "EpochLength")
    if text is None:
        return EPOCH_S
    value = _num(text, "EpochLength", source)
    if not 1.0 <= value <= 600.0:
        raise ScoringError(f"{source}: EpochLength {value:g} s; expected 1..600 s (usually 30)")
    return value


def _desat_drop(elem: ET.Element, source: str) -> float | None:
    drop = _child_text(elem, "Desaturation")
    if drop:
        return _num(drop, "Desaturation", source)
    base, nadir = _child_text(elem, "SpO2Baseline"), _child_text(elem, "SpO2Nadir")
    if base and nadir:
        return _num(base, "SpO2Baseline", source) - _num(nadir, "SpO2Nadir", source)
    return None


def _xml_event(elem: ET.Element, name: str, source: str) -> Event | None:
    kind = event_kind(name)
    if kind is None:
        return None
    start = _num(_child_text(elem, "Start"), f"{name!r} Start", source)
    duration = _num(_child_text(elem, "Duration") or "0", f"{name!r} Duration", source)
    if duration < 0:
        raise ScoringError(f"{source}: event {name!r} at {start:g} s has negative duration {duration:g} s")
    drop = _desat_drop(elem, source) if kind == "desaturation" else None
    return Event(start, duration, kind, name, drop)


_PROFUSION_STAGES = {0: 0, 1: 1, 2: 2, 3: 3, 4: 3, 5: 4, 6: IGNORE, 9: IGNORE}


def _parse_profusion(text: str, source: str) -> tuple[Hypnogram, list[Event]]:
    root = _xml_root(text, source)
    if root.tag != "CMPStudyConfig":
        raise ScoringError(f"{source}: root element <{root.tag}>; expected <CMPStudyConfig> (Profusion XML)")
    epoch_s = _epoch_length(root, source)
    stages_el = root.find("SleepStages")
    if stages_el is None:
        raise ScoringError(f"{source}: no <SleepStages> element; expected Profusion stage codes 0..5")
    codes: list[int] = []
    for el in stages_el.findall("SleepStage"):
        raw = (el.text or "").strip()
        try:
            value = int(raw)
        except ValueError:
            value = -999
        if value not in _PROFUSION_STAGES:
            raise ScoringError(f"{source}: unknown Profusion sleep stage {raw[:20]!r} at epoch {len(codes)}; "
                               f"accepted: 0=W 1-4=S1-S4 5=REM 6=movement 9=unscored")
        codes.append(_PROFUSION_STAGES[value])
    if not codes:
        raise ScoringError(f"{source}: <SleepStages> is empty; expected one <SleepStage> per epoch")
    if len(codes) * epoch_s > MAX_SCORING_S:
        raise ScoringError(f"{source}: {len(codes)} epochs is longer than {MAX_SCORING_S / 86400:g} days")
    events: list[Event] = []
    scored = root.find("ScoredEvents")
    for el in scored.findall("ScoredEvent") if scored is not None else ():
        event = _xml_event(el, _child_text(el, "Name") or "", source)
        if event is not None:
            events.append(event)
    return Hypnogram(np.array(codes, dtype=np.int16), epoch_s, None, source), events


def _parse_nsrr(text: str, source: str) -> tuple[Hypnogram, list[Event]]:
    root = _xml_root(text, source)
    if root.tag != "PSGAnnotation":
        raise ScoringError(f"{source}: root element <{root.tag}>; expected <PSGAnnotation> (NSRR XML)")
    epoch_s = _epoch_length(root, source)
    scored = root.find("ScoredEvents")
    if scored is None:
        raise ScoringError(f"{source}: no <ScoredEvents> element; expected NSRR ScoredEvent entries")
    intervals: list[tuple[float, float, int]] = []
    events: list[Event] = []
    for el in scored.findall("ScoredEvent"):
        etype = _norm(_child_text(el, "EventType") or "")
        concept = _child_text(el, "EventConcept") or ""
        if etype.startswith("stages"):
            code = stage_code(concept, source)
            onset = _num(_child_text(el, "Start"), f"{concept!r} Start", source)
            duration = _num(_child_text(el, "Duration") or "0", f"{concept!r} Duration", source)
            intervals.append((onset, duration, code))
            continue
        event = _xml_event(el, concept, source)
        if event is not None:
            events.append(event)
    stages = _intervals_to_stages(intervals, epoch_s, source)
    return Hypnogram(stages, epoch_s, None, source), events


# --------------------------------------------------------------------------- Noxturnal CSV
_NOX_START_COLS = {"heure de debut", "start time", "start", "debut", "begin time"}
_NOX_END_COLS = {"heure de fin", "end time", "end", "fin"}
_NOX_EVENT_COLS = {"evenement", "event", "event type", "type d'evenement"}
_NOX_DURATION_COLS = {"duree", "duration"}
_NOX_TIME_FORMATS = ("%d/%m/%Y %H:%M:%S", "%d/%m/%Y %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S",
                     "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f",
                     "%d.%m.%Y %H:%M:%S", "%d-%m-%Y %H:%M:%S")
# stage rows of a Noxturnal export (other rows are events: position, artefact, notes...)
_NOX_STAGES = {"eveil": 0, "veille": 0, "wake": 0, "awake": 0, "w": 0, "n1": 1, "n2": 2, "n3": 3,
               "rem": 4, "r": 4, "sp": 4, "sommeil paradoxal": 4}
_STAGE_LIKE = re.compile(r"^(sleep stage\b.*|stage [a-z0-9?]{1,3}|stade [a-z0-9]{1,3}|[ns][0-9])$")


_DMY_TIME = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4}) (\d{1,2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?")


def _parse_time(s: str, source: str, row: int) -> datetime:
    s = s.strip()
    m = _DMY_TIME.fullmatch(s)
    if m:  # fast path for Noxturnal's dd/mm/yyyy hh:mm:ss (strptime is ~10x slower)
        d, mo, y, h, mi, sec, frac = m.groups()
        try:
            return datetime(int(y), int(mo), int(d), int(h), int(mi), int(sec),
                            int((frac or "0").ljust(6, "0")))
        except ValueError:
            pass  # e.g. 31/02: fall through to the formats and their one-line error
    for f in _NOX_TIME_FORMATS:
        try:
            return datetime.strptime(s, f)
        except ValueError:
            continue
    raise ScoringError(f"{source}: row {row}: time {s[:40]!r} is not dd/mm/yyyy hh:mm:ss (or ISO "
                       f"yyyy-mm-dd hh:mm:ss); re-export with full date-times")


def _parse_noxturnal(text: str, source: str) -> tuple[Hypnogram, list[Event]]:
    lines = [ln for ln in _lines(text.lstrip("\ufeff")) if ln.strip()]
    if not lines:
        raise ScoringError(f"{source}: empty Noxturnal export; expected a header row and event rows")
    delim = max((",", ";", "\t"), key=lambda d: lines[0].count(d))
    try:
        rows = list(csv.reader(lines, delimiter=delim))
    except csv.Error as exc:
        raise ScoringError(f"{source}: unreadable CSV ({exc}); re-export the events") from None
    header = [_norm(c) for c in rows[0]]

    def col(names: set[str]) -> int | None:
        return next((i for i, h in enumerate(header) if h in names), None)

    i_start, i_end, i_event, i_dur = (col(_NOX_START_COLS), col(_NOX_END_COLS), col(_NOX_EVENT_COLS),
                                      col(_NOX_DURATION_COLS))
    if i_start is None or i_event is None or (i_dur is None and i_end is None):
        raise ScoringError(f"{source}: Noxturnal header {rows[0][:5]!r}; expected start time, event and "
                           f"duration (or end time) columns ('Heure de début,Heure de fin,Événement,Durée')")
    parsed: list[tuple[datetime, float, str, int]] = []
    for r, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue  # blank line
        if max(i_start, i_event, i_dur if i_dur is not None else 0, i_end if i_end is not None else 0) >= len(row):
            raise ScoringError(f"{source}: row {r} has {len(row)} fields; expected {len(header)} like the header")
        if row[i_start].strip().startswith("["):
            continue  # the units row "[],[],[],[s],"
        t0 = _parse_time(row[i_start], source, r)
        if i_dur is not None and row[i_dur].strip():
            duration = _num(row[i_dur], f"row {r} duration", source)
        elif i_end is not None:
            duration = (_parse_time(row[i_end], source, r) - t0).total_seconds()
        else:
            duration = 0.0
        if duration < 0:
            raise ScoringError(f"{source}: row {r} lasts {duration:g} s; expected a duration >= 0")
        parsed.append((t0, duration, row[i_event].strip(), r))
    stage_rows: list[tuple[datetime, float, int]] = []
    for t, duration, label, r in parsed:
        n = _norm(label)
        if n in _NOX_STAGES:
            stage_rows.append((t, duration, _NOX_STAGES[n]))
        elif n.startswith("sleep stage") or _STAGE_LIKE.match(n):
            stage_rows.append((t, duration, stage_code(label, f"{source} row {r}")))  # raises when unknown
    if not stage_rows:
        raise ScoringError(f"{source}: no sleep stage rows (Éveil/Wake, N1, N2, N3, REM) in the Noxturnal "
                           f"export; export the hypnogram with the events")
    start = min(t for t, _, _ in stage_rows)
    intervals = [((t - start).total_seconds(), d, c) for t, d, c in stage_rows]
    stages = _intervals_to_stages(intervals, EPOCH_S, source)
    events: list[Event] = []
    for t, duration, label, _r in parsed:
        kind = event_kind(label)
        if kind is not None:
            onset = (t - start).total_seconds()
            if abs(onset) > MAX_SCORING_S:
                raise ScoringError(f"{source}: event {label!r} at {t} is days away from the hypnogram "
                                   f"start {start}; the file looks corrupt")
            events.append(Event(onset, duration, kind, label))
    return Hypnogram(stages, EPOCH_S, start, source), events


# --------------------------------------------------------------------------- DREAMS text
_DREAMS_AASM = {5: 0, 4: 4, 3: 1, 2: 2, 1: 3, 0: IGNORE, -1: IGNORE, -2: IGNORE, -3: IGNORE}
_DREAMS_RK = {5: 0, 4: 4, 3: 1, 2: 2, 1: 3, 0: 3, -1: IGNORE, -2: IGNORE, -3: IGNORE}


def _dreams_to_30s(codes5: np.ndarray, per_epoch: int) -> np.ndarray:
    """5-s codes -> 30-s epochs: the stage held by most of the six 5-s sub-epochs.

    A tie for the top count, or IGNORE (unscored/movement) being the most frequent, gives
    IGNORE. A trailing incomplete 30-s epoch (fewer than six codes) is dropped.
    """
    n = codes5.size // per_epoch
    blocks = codes5[: n * per_epoch].reshape(n, per_epoch)
    cats = np.array([0, 1, 2, 3, 4, IGNORE], dtype=np.int16)
    counts = (blocks[:, :, None] == cats[None, None, :]).sum(axis=1)   # (n, 6)
    best = counts.max(axis=1)
    winner = cats[counts.argmax(axis=1)]
    tie = (counts == best[:, None]).sum(axis=1) > 1
    return np.where(tie, IGNORE, winner).astype(np.int16)


def _parse_dreams(text: str, source: str) -> tuple[Hypnogram, list[Event]]:
    lines = [ln.strip() for ln in _lines(text.lstrip("\ufeff")) if ln.strip()]
    table = _DREAMS_AASM
    if lines and lines[0].startswith("["):
        tag = lines[0]
        if re.fullmatch(r"\[Hypnogram\s*R\s*&\s*K[^\]]*\]", tag, re.IGNORECASE):
            table = _DREAMS_RK
        elif not re.fullmatch(r"\[Hypnogram\s*(AASM)?[^\]]*\]", tag, re.IGNORECASE):
            raise ScoringError(f"{source}: header {tag[:40]!r}; expected [HypnogramAASM] or [HypnogramR&K]")
        lines = lines[1:]
    codes = np.empty(len(lines), dtype=np.int16)
    for i, ln in enumerate(lines):
        try:
            value = int(ln)
        except ValueError:
            value = 999
        if value not in table:
            raise ScoringError(f"{source}: line {i + 2}: DREAMS stage code {ln[:20]!r}; accepted "
                               f"5=W 4=REM 3=N1 2=N2 1=N3 (R&K 0=S4), 0/-1/-2/-3 = unscored")
        codes[i] = table[value]
    per_epoch = int(round(EPOCH_S / DREAMS_EPOCH_S))
    if codes.size < per_epoch:
        raise ScoringError(f"{source}: {codes.size} codes of 5 s is less than one 30-s epoch")
    if codes.size * DREAMS_EPOCH_S > MAX_SCORING_S:
        raise ScoringError(f"{source}: {codes.size} codes is longer than {MAX_SCORING_S / 86400:g} days")
    return Hypnogram(_dreams_to_30s(codes, per_epoch), EPOCH_S, None, source), []


# --------------------------------------------------------------------------- BIDS TSV/CSV, JSON
# stage column names, in preference order (the BIDS hypnogram draft has stage_hum / stage_ai)
_STAGE_COLUMNS = ("stage", "sleep_stage", "stage_hum", "stage_ai")


def _parse_table(text: str, source: str) -> tuple[Hypnogram, list[Event]]:
    lines = [ln for ln in _lines(text.lstrip("\ufeff")) if ln.strip()]
    if not lines:
        raise ScoringError(f"{source}: empty hypnogram table; expected a header 'onset, duration, stage'")
    delim = "\t" if "\t" in lines[0] else ("," if lines[0].count(",") >= lines[0].count(";") else ";")
    try:
        rows = list(csv.reader(lines, delimiter=delim))
    except csv.Error as exc:
        raise ScoringError(f"{source}: unreadable table ({exc}); expected onset, duration, stage") from None
    header = [_norm(c) for c in rows[0]]
    i_stage = next((header.index(h) for h in _STAGE_COLUMNS if h in header), None)
    i_onset = next((i for i, h in enumerate(header) if h == "onset"), None)
    i_dur = next((i for i, h in enumerate(header) if h == "duration"), None)
    i_event = next((i for i, h in enumerate(header) if h in ("event", "description")), None)
    if i_stage is None:
        raise ScoringError(f"{source}: header {rows[0][:6]!r} has no 'stage' column; expected onset, "
                           f"duration, stage")
    need = max(i for i in (i_stage, i_onset, i_dur) if i is not None)
    intervals: list[tuple[float, float, int]] = []
    events: list[Event] = []
    for r, row in enumerate(rows[1:], start=2):
        label = row[i_event].strip() if i_event is not None and i_event < len(row) else ""
        if len(row) <= need:
            raise ScoringError(f"{source}: row {r} has {len(row)} fields; expected {len(header)}")
        onset = _num(row[i_onset], f"row {r} onset", source) if i_onset is not None else (r - 2) * EPOCH_S
        duration = _num(row[i_dur], f"row {r} duration", source) if i_dur is not None else EPOCH_S
        if label and _norm(label) != "n/a":
            kind = event_kind(label)
            if kind is not None:
                if duration < 0:
                    raise ScoringError(f"{source}: row {r} event {label[:40]!r} lasts {duration:g} s; "
                                       f"expected >= 0")
                events.append(Event(onset, duration, kind, label))
            continue
        intervals.append((onset, duration, stage_code(row[i_stage], f"{source} row {r}")))
    return Hypnogram(_intervals_to_stages(intervals, EPOCH_S, source), EPOCH_S, None, source), events


def _parse_json(text: str, source: str) -> tuple[Hypnogram, list[Event]]:
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, too-long integers, deep nesting
        raise ScoringError(f"{source}: invalid JSON ({str(exc)[:80]}); expected a sleepedge hypnogram") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("stages"), list):
        raise ScoringError(f"{source}: JSON without a 'stages' list; expected the sleepedge hypnogram layout")
    epoch_s = _num(doc.get("epoch_s", EPOCH_S), "epoch_s", source)
    if not 1.0 <= epoch_s <= 600.0:
        raise ScoringError(f"{source}: epoch_s {epoch_s:g}; expected 1..600 s")
    codes = doc.get("stage_codes")
    if isinstance(codes, list) and len(codes) == len(doc["stages"]):
        stages = []
        for c in codes:
            if isinstance(c, int) and not isinstance(c, bool):
                if c not in _STAGE_NAMES_OUT:
                    raise ScoringError(f"{source}: stage code {str(c)[:20]} is not 0..4 (W..REM) or {IGNORE}")
                stages.append(c)
            else:
                stages.append(stage_code(str(c), source))
    else:
        stages = [stage_code(str(s) if s is not None else "n/a", source) for s in doc["stages"]]
    start = None
    if doc.get("start"):
        try:
            start = datetime.fromisoformat(str(doc["start"]))
        except ValueError:
            raise ScoringError(f"{source}: start {str(doc['start'])[:40]!r} is not ISO-8601") from None
    return Hypnogram(np.array(stages, dtype=np.int64), epoch_s, start, str(doc.get("source") or source)), []


# --------------------------------------------------------------------------- writers
def _check_probs(probs: object, hyp: Hypnogram, path: Path) -> np.ndarray | None:
    if probs is None:
        return None
    try:
        p = np.asarray(probs, dtype=np.float64)
    except (TypeError, ValueError):
        raise OutputError(f"{path}: probs are not numbers; expected a float array (epochs, 5)") from None
    if p.shape != (hyp.n_epochs, len(STAGES)):
        raise OutputError(f"{path}: probs shape {p.shape}; expected ({hyp.n_epochs}, {len(STAGES)}) "
                          f"= (epochs, W..REM)")
    if not np.isfinite(p).all():
        k = int(np.flatnonzero(~np.isfinite(p).all(axis=1))[0])
        raise OutputError(f"{path}: probs of epoch {k} are not finite ({p[k].tolist()}); expected "
                          f"probabilities (softmax of the stage logits)")
    return p


def write_hypnogram(path: str | Path, hyp: Hypnogram, probs: np.ndarray | None = None,
                    fmt: str | None = None) -> Path:
    """Write a hypnogram as TSV (BIDS-style), CSV, JSON or annotation-only EDF+.

    TSV/CSV: one row per epoch, columns onset, duration, stage (W/N1/N2/N3/REM, n/a for IGNORE)
    and, with `probs` (n_epochs, 5), p_W p_N1 p_N2 p_N3 p_REM. JSON: {"schema", "epoch_s",
    "start", "source", "stages", "stage_codes", "probs"?}. EDF+: runs of equal stages as
    `Sleep stage W/N1/N2/N3/R/?` annotations (as EDFbrowser shows them); EDF+ holds no
    probabilities, so `probs` is not stored there. `fmt` defaults to the file suffix.
    """
    path = Path(path)
    fmt = fmt or path.suffix.lower().lstrip(".")
    if fmt not in WRITE_FORMATS:
        raise OutputError(f"{path}: cannot tell the hypnogram format from {fmt!r}; use a .tsv, .csv, .json "
                          f"or .edf name or pass fmt=")
    if not isinstance(hyp, Hypnogram):
        raise OutputError(f"{path}: expected a Hypnogram to write, got {type(hyp).__name__}")
    p = _check_probs(probs, hyp, path)
    try:
        if fmt in ("tsv", "csv"):
            _write_table(path, hyp, p, "\t" if fmt == "tsv" else ",")
        elif fmt == "json":
            doc: dict[str, object] = {
                "schema": "sleepedge.hypnogram/1",
                "epoch_s": hyp.epoch_s,
                "start": hyp.start.isoformat() if hyp.start else None,
                "source": hyp.source,
                "stage_labels": list(STAGES),
                "stages": hyp.names(),
                "stage_codes": [int(s) for s in hyp.stages],
            }
            if p is not None:
                doc["probs"] = [[float(v) for v in row] for row in p]
            path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        else:
            _write_edf(path, hyp)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write the hypnogram ({exc.strerror}); check the folder "
                          f"exists and is writable") from None
    return path


def _write_table(path: Path, hyp: Hypnogram, p: np.ndarray | None, delim: str) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delim, lineterminator="\n")
    w.writerow(["onset", "duration", "stage"] + ([f"p_{s}" for s in STAGES] if p is not None else []))
    for k, name in enumerate(hyp.names()):
        row = [f"{k * hyp.epoch_s:.10g}", f"{hyp.epoch_s:.10g}", name]
        if p is not None:
            row += [f"{v:.6g}" for v in p[k]]
        w.writerow(row)
    path.write_text(buf.getvalue(), encoding="utf-8")


def _write_edf(path: Path, hyp: Hypnogram) -> None:
    from sleepedge.edf import Annotation, write_edf  # lazy import

    anns = []
    s = hyp.stages
    if s.size:
        cuts = np.flatnonzero(np.diff(s)) + 1
        starts = np.concatenate([[0], cuts])
        ends = np.concatenate([cuts, [s.size]])
        for a, b in zip(starts, ends):
            anns.append(Annotation(float(a * hyp.epoch_s), float((b - a) * hyp.epoch_s),
                                   _EDF_STAGE_TEXT[int(s[a])]))
    write_edf(path, [], annotations=anns, start=hyp.start)


# Profusion XML writer: stage codes and event names as Compumedics writes them (NSRR cohorts)
_PROFUSION_CODE_OUT = {0: 0, 1: 1, 2: 2, 3: 3, 4: 5, IGNORE: 9}
_PROFUSION_EVENT_OUT = {
    "obstructive_apnea": ("Obstructive Apnea", "Abdominal"),
    "central_apnea": ("Central Apnea", "Abdominal"),
    "mixed_apnea": ("Mixed Apnea", "Abdominal"),
    "hypopnea": ("Hypopnea", "Abdominal"),
    "desaturation": ("SpO2 desaturation", "SaO2"),
    "arousal": ("Arousal (ASDA)", "C3"),
}


def _xml_num(x: float) -> str:
    """Seconds as Profusion writes them (shortest repr, microsecond precision)."""
    v = round(float(x), 6)
    return repr(v)[:-2] if repr(v).endswith(".0") else repr(v)


def write_profusion_xml(path: str | Path, hyp: Hypnogram, events: Iterable[Event] = ()) -> Path:
    """Write a Compumedics Profusion XML scoring (`CMPStudyConfig`, the NSRR `*-profusion.xml`
    layout): `<EpochLength>`, `<ScoredEvents>` (Name / Start / Duration / Input, plus
    `<Desaturation>` for a desaturation with a known drop) and `<SleepStages>` with Profusion
    codes 0=W 1=S1 2=S2 3=S3 5=REM 9=unscored (N3 is written as 3; IGNORE as 9). Event times
    are seconds from epoch 0 at microsecond precision. `read_scoring` reads it back (stages
    identical, events identical to the microsecond)."""
    path = Path(path)
    if not isinstance(hyp, Hypnogram):
        raise OutputError(f"{path}: expected a Hypnogram to write, got {type(hyp).__name__}")
    root = ET.Element("CMPStudyConfig")
    ET.SubElement(root, "EpochLength").text = _xml_num(hyp.epoch_s)
    scored = ET.SubElement(root, "ScoredEvents")
    events = list(events)
    for ev in events:
        if not isinstance(ev, Event):
            raise OutputError(f"{path}: events must be sleepedge.scoring.Event, got {type(ev).__name__}")
    for ev in sorted(events, key=lambda e: (e.onset_s, e.kind)):
        name, channel = _PROFUSION_EVENT_OUT[ev.kind]
        el = ET.SubElement(scored, "ScoredEvent")
        ET.SubElement(el, "Name").text = name
        ET.SubElement(el, "Start").text = _xml_num(ev.onset_s)
        ET.SubElement(el, "Duration").text = _xml_num(ev.duration_s)
        ET.SubElement(el, "Input").text = channel
        if ev.kind == "desaturation" and ev.drop_pct is not None:
            ET.SubElement(el, "Desaturation").text = _xml_num(ev.drop_pct)
    stages_el = ET.SubElement(root, "SleepStages")
    for code in hyp.stages.tolist():
        ET.SubElement(stages_el, "SleepStage").text = str(_PROFUSION_CODE_OUT[int(code)])
    text = '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"{path}: cannot write the Profusion XML ({exc.strerror}); check the folder exists "
                          f"and is writable") from None
    return path


# --------------------------------------------------------------------------- events -> epochs
def events_to_epochs(events: Iterable[Event], n_epochs: int, epoch_s: float = EPOCH_S) -> dict[str, np.ndarray]:
    """Per-epoch respiratory labels {"apnea": uint8[n], "hypopnea": uint8[n]}.

    Overlap rule (one rule for every event): epoch k, covering [k*epoch_s, (k+1)*epoch_s),
    is positive for an event when the event covers at least MIN_EVENT_OVERLAP_S (10 s, the
    AASM minimum duration of an apnea/hypopnea) of that epoch, OR when the event's midpoint
    (onset + duration/2) falls inside the epoch. So every event inside the night marks at
    least its midpoint epoch (a 12-s event split 6 s / 6 s over a boundary is not lost), and a
    long event marks each epoch it substantially occupies, not one it grazes by a second.
    Parts of events before 0 s or after the last epoch are ignored (an event whose midpoint
    lies outside the night still marks inside epochs it covers by >= 10 s).
    "apnea" = obstructive + central + mixed apneas; other kinds are not labelled here.
    """
    try:
        n = int(n_epochs)
        epoch_s = float(epoch_s)
    except (TypeError, ValueError):
        raise ScoringError(f"events_to_epochs: n_epochs={n_epochs!r}, epoch_s={epoch_s!r}; expected an "
                           f"integer >= 0 and seconds > 0") from None
    if n < 0 or not (math.isfinite(epoch_s) and epoch_s > 0):
        raise ScoringError(f"events_to_epochs: n_epochs={n_epochs!r}, epoch_s={epoch_s!r}; expected an "
                           f"integer >= 0 and seconds > 0")
    out = {"apnea": np.zeros(n, dtype=np.uint8), "hypopnea": np.zeros(n, dtype=np.uint8)}
    edges_lo = np.arange(n) * epoch_s
    for ev in events:
        if ev.kind in APNEA_KINDS:
            target = out["apnea"]
        elif ev.kind == "hypopnea":
            target = out["hypopnea"]
        else:
            continue
        on, off = ev.onset_s, ev.onset_s + ev.duration_s
        first = max(int(math.floor(on / epoch_s)), 0)
        last = min(int(math.floor(off / epoch_s)), n - 1)
        if first <= last:
            lo = edges_lo[first:last + 1]
            overlap = np.minimum(off, lo + epoch_s) - np.maximum(on, lo)
            target[first:last + 1][overlap >= MIN_EVENT_OVERLAP_S] = 1
        mid = int(math.floor((on + off) / 2.0 / epoch_s))
        if 0 <= mid < n:
            target[mid] = 1
    return out
