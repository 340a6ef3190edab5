"""The training cache: recordings + scorings -> preprocessed 30-s epochs on disk.

Layout (one folder per recording, every array memory-mappable with `np.load(mmap_mode="r")`):

    CACHE/index.json                  {"schema", "roles", "dtype", "preprocess", "recordings": [...]}
    CACHE/<rec_id>/x.npy              float16|float32 (n_epochs, M, 3000), M = len(ROLES) in ROLES order
    CACHE/<rec_id>/present.npy        uint8 (n_epochs, M)  1 where the role is recorded and usable
    CACHE/<rec_id>/quality.npy        uint8 (n_epochs, M)  contract.Q_* bit mask
    CACHE/<rec_id>/stages.npy         int16 (n_epochs,)    0..4 or IGNORE
    CACHE/<rec_id>/apnea.npy          uint8 (n_epochs,)    from scoring.events_to_epochs
    CACHE/<rec_id>/hypopnea.npy       uint8 (n_epochs,)
    CACHE/<rec_id>/meta.json          subject, night, source files + sha256, roles used, n_epochs, simulated

Signals go through `sleepedge.preprocess.preprocess_arrays` — the function the runtime uses — so
training and deployment see identical epochs. Preparation is incremental: a recording whose
source checksums match the index is skipped; a corrupt file is reported with its reason and
skipped while the rest continues.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from sleepedge.contract import EPOCH_S, EPOCH_SAMPLES, IGNORE, Q_MISSING, ROLES
from sleepedge.errors import SleepEdgeError

SCHEMA = "sleepedge.cache/1"
SCORING_SUFFIXES = (".xml", ".tsv", ".csv", ".txt", ".json")


class CacheError(SleepEdgeError):
    """A training cache is missing, unreadable or inconsistent."""


# ---------------------------------------------------------------- discovery
@dataclass
class Recording:
    """One PSG file and (optionally) its scoring, as found in a source folder."""

    rec_id: str
    subject: str
    night: int
    psg: Path
    scoring: Path | None
    layout: str                       # sleep-edf | shhs | simulated | generic
    simulated: bool = False
    extra: list[Path] = field(default_factory=list)   # other files hashed with it (sidecars)

    @property
    def sources(self) -> list[Path]:
        return [p for p in (self.psg, self.scoring, *self.extra) if p is not None]


_SLEEPEDF_PSG = re.compile(r"^(S[CT])(\d)(\d\d)(\d)[A-Z]\d-PSG$", re.I)
_SLEEPEDF_HYP = re.compile(r"^(S[CT])(\d)(\d\d)(\d)[A-Z]{2}-Hypnogram$", re.I)
_SHHS = re.compile(r"^(shhs(\d))-(\d+)$", re.I)
_SHHS_SCORING = re.compile(r"^(shhs\d-\d+)-(nsrr|profusion)$", re.I)


def _is_edf(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in (".edf", ".rec", ".bdf")


def _looks_simulated(edf: Path) -> bool:
    """A night written by `sleepedge simulate` says SIMULATED in the EDF recording field
    (header bytes 88-168)."""
    try:
        with open(edf, "rb") as f:
            head = f.read(168)
    except OSError:
        return False
    return b"SIMULATED" in head[88:168].upper()


def discover(src: Path) -> tuple[list[Recording], list[tuple[Path, str]]]:
    """Find recordings under `src` (recursively, sorted paths). Returns (recordings, skipped)
    where skipped lists (path, reason) for files that could not be paired or understood."""
    src = Path(src)
    if not src.exists():
        raise CacheError(f"source {src} does not exist; pass the folder holding the EDF recordings")
    files = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else [src]
    edfs = [p for p in files if _is_edf(p)]
    by_stem: dict[str, list[Path]] = {}
    for p in files:
        by_stem.setdefault(p.stem.lower(), []).append(p)

    recs: list[Recording] = []
    skipped: list[tuple[Path, str]] = []
    # Sleep-EDF hypnograms: key = study + subject + night (e.g. SC4 00 1)
    sedf_hyp: dict[str, Path] = {}
    for p in edfs:
        m = _SLEEPEDF_HYP.match(p.stem)
        if m:
            sedf_hyp[(m.group(1) + m.group(2) + m.group(3) + m.group(4)).upper()] = p
    shhs_scoring: dict[str, Path] = {}
    for p in files:
        m = _SHHS_SCORING.match(p.stem)
        if m and p.suffix.lower() == ".xml":
            key = m.group(1).lower()
            # prefer the NSRR XML over the Profusion one (same events, NSRR naming)
            if key not in shhs_scoring or m.group(2).lower() == "nsrr":
                shhs_scoring[key] = p

    for p in edfs:
        stem = p.stem
        if _SLEEPEDF_HYP.match(stem) or stem.lower().endswith("-hypnogram"):
            continue  # a scoring file, paired below
        m = _SLEEPEDF_PSG.match(stem)
        if m:
            study = (m.group(1) + m.group(2)).upper()  # SC4 / ST7
            key = study + m.group(3) + m.group(4)
            # subject = the two digits `ss` for the cassette study (SC4ssN); the telemetry study
            # (ST7ssN) numbers other people with the same digits, so its ids keep the "ST" prefix
            subject = m.group(3) if study == "SC4" else f"ST{m.group(3)}"
            recs.append(Recording(rec_id=stem, subject=subject, night=int(m.group(4)),
                                  psg=p, scoring=sedf_hyp.get(key), layout="sleep-edf"))
            continue
        m = _SHHS.match(stem)
        if m:
            recs.append(Recording(rec_id=stem.lower(), subject=m.group(3), night=int(m.group(2)), psg=p,
                                  scoring=shhs_scoring.get(stem.lower()), layout="shhs"))
            continue
        # generic / simulated: a scoring file with the same stem
        scoring = None
        for cand in by_stem.get(stem.lower(), []):
            if cand != p and cand.suffix.lower() in SCORING_SUFFIXES:
                scoring = cand
                break
        if scoring is None:
            for suffix in ("-hypnogram.edf", "-scoring.edf", "_hypnogram.edf"):
                for cand in by_stem.get((stem + suffix[:-4]).lower(), []):
                    scoring = cand
        sim = _looks_simulated(p)
        subject, night = stem, 1
        mn = re.match(r"^(.+?)[-_](?:night|n)(\d+)$", stem, re.I)
        if mn and mn.group(1):
            subject, night = mn.group(1), int(mn.group(2))
        recs.append(Recording(rec_id=stem, subject=subject, night=night, psg=p, scoring=scoring,
                              layout="simulated" if sim else "generic", simulated=sim))
    ids = [r.rec_id for r in recs]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise CacheError(f"recordings {dup} appear more than once under {src}; keep one copy of each file")
    return recs, skipped


# ---------------------------------------------------------------- preparation
def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _fit_length(a: np.ndarray, n: int, fill) -> np.ndarray:
    if len(a) >= n:
        return a[:n]
    out = np.full((n,) + a.shape[1:], fill, dtype=a.dtype)
    out[: len(a)] = a
    return out


def sleep_window(stages: np.ndarray, wake_margin_epochs: int) -> tuple[int, int]:
    """[first, last) epochs to keep: from `wake_margin_epochs` before the first scored sleep
    epoch to as many after the last one (the whole recording when no sleep is scored)."""
    sleep = np.flatnonzero((stages != IGNORE) & (stages != 0))
    if sleep.size == 0:
        return 0, len(stages)
    return max(0, int(sleep[0]) - wake_margin_epochs), min(len(stages), int(sleep[-1]) + 1 + wake_margin_epochs)


def prepare_recording(rec: Recording, out_dir: Path, overrides: Mapping[str, str] | None = None,
                      dtype: str = "float16", preprocess_config=None, trim_wake_min: float | None = None) -> dict:
    """Read, preprocess and write one recording; returns its metadata dict.

    `trim_wake_min`: keep only this much wake before the first and after the last sleep epoch
    (Sleep-EDF cassette files hold ~24 h). Trimming happens AFTER the causal preprocessing of
    the whole recording, so filter and normaliser states are those the runtime would have."""
    from sleepedge.channels import assign_roles
    from sleepedge.edf import open_edf
    from sleepedge.preprocess import PreprocessConfig, model_input, preprocess_arrays, usable_rates
    from sleepedge.scoring import events_to_epochs, read_scoring

    cfg = preprocess_config or PreprocessConfig()
    with open_edf(rec.psg) as reader:  # opened once: a tolerated quirk is warned about once
        psg_start = reader.header.start
        labels = [s.label for s in reader.header.signals]
        rmap = assign_roles(labels, overrides=overrides or None)
        signals, rates = {}, {}
        for role, label in rmap.primary.items():
            info = reader.header.signal(label)
            signals[role] = np.asarray(reader.read(label), dtype=np.float64)
            rates[role] = float(info.fs_hz)
    rates, unusable = usable_rates(rates, cfg)  # 1-Hz EMG envelopes etc. count as missing
    if not rates:
        raise CacheError(f"{rec.psg.name}: no usable channel maps to any role {list(ROLES)} (labels {labels}"
                         f"{'; ' + '; '.join(unusable.values()) if unusable else ''}); pass --channel ROLE=LABEL")
    roles_used = [r for r in ROLES if r in rates]
    data, quality, pre_roles = preprocess_arrays({r: signals[r] for r in roles_used}, {r: rates[r] for r in roles_used}, cfg)
    x, present = model_input(data, quality, tuple(pre_roles), ROLES)
    n = int(x.shape[0])
    if n == 0:
        raise CacheError(f"{rec.psg.name}: shorter than one {EPOCH_S:.0f}-s epoch; nothing to cache")
    full_q = np.full((n, len(ROLES)), Q_MISSING, dtype=np.uint8)
    for j, r in enumerate(pre_roles):
        full_q[:, ROLES.index(r)] = quality[:, j]

    stages = np.full(n, IGNORE, dtype=np.int16)
    apnea = np.zeros(n, dtype=np.uint8)
    hypop = np.zeros(n, dtype=np.uint8)
    scored = rec.scoring is not None
    n_events = 0
    if scored:
        if rec.simulated and rec.scoring.suffix.lower() == ".tsv":
            from sleepedge.simulate.night import read_truth_tsv  # the sidecar also lists the events

            hyp, events = read_truth_tsv(rec.scoring)
        else:
            hyp, events = read_scoring(rec.scoring)
        st = np.asarray(hyp.stages, dtype=np.int16)
        if hyp.epoch_s != EPOCH_S:
            raise CacheError(f"{rec.scoring.name}: scored in {hyp.epoch_s}-s epochs, the cache needs {EPOCH_S:.0f}-s epochs; rescore or convert it")
        offset = 0
        if hyp.start is not None:
            try:
                delta = (hyp.start - psg_start).total_seconds()
            except TypeError:  # naive vs aware datetimes
                delta = (hyp.start.replace(tzinfo=None) - psg_start.replace(tzinfo=None)).total_seconds()
            offset = int(round(delta / EPOCH_S))
        if offset > 0:  # scoring starts later than the signals
            st = np.concatenate([np.full(offset, IGNORE, np.int16), st])
        elif offset < 0:
            st = st[-offset:]
        stages = _fit_length(st, n, IGNORE).astype(np.int16)
        lab = events_to_epochs(events, n, epoch_s=EPOCH_S)
        apnea = _fit_length(np.asarray(lab["apnea"], np.uint8), n, 0)
        hypop = _fit_length(np.asarray(lab["hypopnea"], np.uint8), n, 0)
        n_events = len(events)

    first, last = 0, n
    if trim_wake_min is not None and scored:
        first, last = sleep_window(stages, int(round(trim_wake_min * 60.0 / EPOCH_S)))
        x, present, full_q = x[first:last], present[first:last], full_q[first:last]
        stages, apnea, hypop = stages[first:last], apnea[first:last], hypop[first:last]
        n = last - first

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    np.save(tmp / "x.npy", x.astype(dtype))
    np.save(tmp / "present.npy", (present > 0.5).astype(np.uint8))
    np.save(tmp / "quality.npy", full_q)
    np.save(tmp / "stages.npy", stages)
    np.save(tmp / "apnea.npy", apnea)
    np.save(tmp / "hypopnea.npy", hypop)
    counts = {int(k): int(v) for k, v in zip(*np.unique(stages, return_counts=True))}
    meta = {
        "rec_id": rec.rec_id, "subject": rec.subject, "night": rec.night, "layout": rec.layout,
        "simulated": bool(rec.simulated), "scored": scored,
        "sources": {p.name: sha256_file(p) for p in rec.sources},
        "source_paths": [str(p) for p in rec.sources],
        "roles_used": roles_used, "channels": {r: rmap.primary[r] for r in roles_used},
        "missing_roles": [r for r in ROLES if r not in roles_used], "unusable_roles": unusable,
        "n_epochs": n, "first_epoch": first, "onset_s": first * EPOCH_S, "trim_wake_min": trim_wake_min,
        "stage_counts": counts, "n_events": n_events,
        "n_apnea_epochs": int(apnea.sum()), "n_hypopnea_epochs": int(hypop.sum()),
        "dtype": dtype,
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return meta


@dataclass
class PrepareResult:
    done: list[dict]
    skipped: list[dict]     # already in the cache with the same checksums
    failed: list[dict]      # {"rec_id", "path", "reason"}


def prepare_cache(src: Path, cache: Path, overrides: Mapping[str, str] | None = None,
                  dtype: str = "float16", progress=None, trim_wake_min: float | None = None) -> PrepareResult:
    """Discover recordings under `src` and add the new/changed ones to `cache`."""
    from sleepedge.preprocess import PreprocessConfig

    if dtype not in ("float16", "float32"):
        raise CacheError(f"dtype={dtype!r} is not supported; use float16 or float32")
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    recs, _ = discover(src)
    if not recs:
        raise CacheError(f"no EDF recordings found under {src}; expected *.edf files (Sleep-EDF, SHHS, simulated or EDF + scoring with the same stem)")
    cfg = PreprocessConfig()
    index = load_index(cache, must_exist=False)
    entries = {e["rec_id"]: e for e in index.get("recordings", [])}
    res = PrepareResult([], [], [])
    for i, rec in enumerate(recs):
        if progress is not None:
            progress(i, len(recs), rec.rec_id)
        try:
            sums = {p.name: sha256_file(p) for p in rec.sources}
        except OSError as err:
            res.failed.append({"rec_id": rec.rec_id, "path": str(rec.psg), "reason": f"unreadable: {err}"})
            continue
        old = entries.get(rec.rec_id)
        if (old is not None and old.get("sources") == sums and old.get("trim_wake_min") == trim_wake_min
                and old.get("overrides", {}) == dict(overrides or {})
                and (cache / rec.rec_id / "meta.json").is_file()):
            res.skipped.append(old)
            continue
        try:
            meta = prepare_recording(rec, cache / rec.rec_id, overrides=overrides, dtype=dtype, preprocess_config=cfg,
                                     trim_wake_min=trim_wake_min)
        except (SleepEdgeError, OSError, ValueError) as err:  # a corrupt file: report it, go on
            res.failed.append({"rec_id": rec.rec_id, "path": str(rec.psg), "reason": f"{type(err).__name__}: {err}"})
            continue
        entries[rec.rec_id] = {k: meta[k] for k in ("rec_id", "subject", "night", "layout", "simulated", "scored",
                                                    "sources", "roles_used", "n_epochs", "stage_counts", "trim_wake_min")}
        entries[rec.rec_id]["overrides"] = dict(overrides or {})  # other --channel choices re-prepare
        res.done.append(meta)
        _write_index(cache, entries, dtype, cfg.to_dict())  # after each recording: interruptions lose nothing
    _write_index(cache, entries, dtype, cfg.to_dict())
    return res


def _write_index(cache: Path, entries: Mapping[str, dict], dtype: str, preprocess: dict) -> None:
    idx = {"schema": SCHEMA, "roles": list(ROLES), "epoch_samples": EPOCH_SAMPLES, "dtype": dtype,
           "preprocess": preprocess,
           "recordings": [entries[k] for k in sorted(entries)]}
    tmp = cache / "index.json.tmp"
    tmp.write_text(json.dumps(idx, indent=2))
    tmp.replace(cache / "index.json")


def load_index(cache: Path, must_exist: bool = True) -> dict:
    p = Path(cache) / "index.json"
    if not p.is_file():
        if must_exist:
            raise CacheError(f"{cache} is not a sleepedge cache (no index.json); build one with `sleepedge data prepare SRC -o {cache}`")
        return {}
    try:
        idx = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise CacheError(f"{p} is not valid JSON ({err}); delete it and re-run `sleepedge data prepare`") from None
    if idx.get("schema") != SCHEMA:
        raise CacheError(f"{p} has schema {idx.get('schema')!r}, expected {SCHEMA!r}; rebuild the cache with `sleepedge data prepare`")
    return idx


def write_arrays(cache: Path, rec_id: str, subject: str, x: np.ndarray, present: np.ndarray,
                 stages: np.ndarray, apnea: np.ndarray | None = None, hypopnea: np.ndarray | None = None,
                 night: int = 1, simulated: bool = True, dtype: str = "float16") -> dict:
    """Add already-preprocessed arrays as one recording (tests, synthetic benchmarks).
    `x` (n, len(ROLES), 3000), `present` (n, len(ROLES)) or (len(ROLES),)."""
    cache = Path(cache)
    n = len(x)
    if x.shape[1:] != (len(ROLES), EPOCH_SAMPLES):
        raise CacheError(f"x has shape {x.shape}; expected (n_epochs, {len(ROLES)}, {EPOCH_SAMPLES}) in ROLES order")
    present = np.broadcast_to(np.asarray(present, np.uint8), (n, len(ROLES)))
    d = cache / rec_id
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / "x.npy", x.astype(dtype))
    np.save(d / "present.npy", present.astype(np.uint8))
    np.save(d / "quality.npy", np.where(present > 0, 0, 32).astype(np.uint8))
    np.save(d / "stages.npy", np.asarray(stages, np.int16))
    np.save(d / "apnea.npy", np.zeros(n, np.uint8) if apnea is None else np.asarray(apnea, np.uint8))
    np.save(d / "hypopnea.npy", np.zeros(n, np.uint8) if hypopnea is None else np.asarray(hypopnea, np.uint8))
    meta = {"rec_id": rec_id, "subject": subject, "night": night, "layout": "arrays", "simulated": simulated,
            "scored": True, "sources": {}, "roles_used": [r for j, r in enumerate(ROLES) if present[:, j].any()],
            "n_epochs": n, "stage_counts": {int(k): int(v) for k, v in zip(*np.unique(stages, return_counts=True))}}
    (d / "meta.json").write_text(json.dumps(meta, indent=2))
    idx = load_index(cache, must_exist=False)
    entries = {e["rec_id"]: e for e in idx.get("recordings", [])}
    entries[rec_id] = meta
    _write_index(cache, entries, dtype, idx.get("preprocess", {}))
    return meta


# ---------------------------------------------------------------- reading
@dataclass
class CachedRecording:
    rec_id: str
    subject: str
    night: int
    simulated: bool
    x: np.ndarray          # memmap (n, len(ROLES), 3000)
    present: np.ndarray    # (n, len(ROLES)) uint8
    quality: np.ndarray
    stages: np.ndarray     # int16
    apnea: np.ndarray
    hypopnea: np.ndarray

    @property
    def n_epochs(self) -> int:
        return int(self.stages.shape[0])


class Cache:
    """Read-only view of a prepared cache; arrays are memory-mapped."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.index = load_index(self.root)
        self.roles: tuple[str, ...] = tuple(self.index["roles"])
        self._recs: dict[str, CachedRecording] = {}
        if not self.index["recordings"]:
            raise CacheError(f"cache {self.root} holds no recordings; run `sleepedge data prepare SRC -o {self.root}`")

    @property
    def entries(self) -> list[dict]:
        return list(self.index["recordings"])

    @property
    def subjects(self) -> list[str]:
        return sorted({e["subject"] for e in self.entries})

    @property
    def simulated(self) -> bool:
        return any(e.get("simulated", False) for e in self.entries)

    def rec_ids(self, subjects: Iterable[str] | None = None) -> list[str]:
        subs = None if subjects is None else set(subjects)
        return sorted(e["rec_id"] for e in self.entries if subs is None or e["subject"] in subs)

    def recording(self, rec_id: str) -> CachedRecording:
        if rec_id not in self._recs:
            d = self.root / rec_id
            e = next((e for e in self.entries if e["rec_id"] == rec_id), None)
            if e is None:
                raise CacheError(f"recording {rec_id!r} is not in {self.root}/index.json")
            try:
                arr = {k: np.load(d / f"{k}.npy", mmap_mode="r") for k in
                       ("x", "present", "quality", "stages", "apnea", "hypopnea")}
            except (OSError, ValueError) as err:
                raise CacheError(f"{d}: cannot read cached arrays ({err}); delete the folder and re-run `sleepedge data prepare`") from None
            self._recs[rec_id] = CachedRecording(rec_id, e["subject"], int(e.get("night", 1)), bool(e.get("simulated", False)),
                                                 **arr)
        return self._recs[rec_id]

    def provenance(self, subjects: Iterable[str] | None = None) -> dict:
        ids = self.rec_ids(subjects)
        ents = [e for e in self.entries if e["rec_id"] in set(ids)]
        return {"cache": str(self.root), "simulated": any(e.get("simulated", False) for e in ents),
                "recordings": ids, "subjects": sorted({e["subject"] for e in ents}),
                "n_epochs": int(sum(e["n_epochs"] for e in ents)),
                "sources": {e["rec_id"]: e.get("sources", {}) for e in ents},
                "preprocess": self.index.get("preprocess", {})}
