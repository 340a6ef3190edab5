"""Where scored epochs go: TSV, CSV, EDF+ annotations, JSON report, PNG.

Crash safety (a bedside box loses power, a user presses Ctrl-C, the OOM killer fires):
    TSV / CSV   one line per epoch, appended and flushed per epoch (so a killed process loses
                nothing already scored: the data is in the kernel), and `os.fsync`ed per epoch
                when streaming (`fsync_every=1`, survives power loss too) or every 256 epochs in
                offline `score` (an fsync costs ~5 ms per file on an SD card/SSD; per epoch it was
                half the wall time of an 8-h night; 256 epochs are ~0.3 s of scoring, re-run after a
                power cut). After a SIGKILL at any moment the file holds
                every epoch written before the kill; at most one trailing partial line exists,
                which readers/`--resume` drop.
    EDF+ / JSON rewritten whole into a temporary file in the same folder, fsynced, then
                `os.replace`d over the target every `every` epochs (every 1 % of the epochs so far
                once that is more: a rewrite costs O(epochs), so a fixed cadence made a 72-h
                stream quadratic; the lag stays <= 1 % of the night) and at the end. The file on
                disk is therefore always a complete, valid file (from the last rewrite), never a
                half-written one. EDF+ is annotation-only (`sleepedge.edf.write_edf`): consecutive
                epochs of one stage become one `Sleep stage X` annotation; estimated apnea /
                hypopnea runs are annotations too; EDFbrowser opens it (File > Open, annotations).
    PNG         written once at the end (atomic replace as well).

TSV columns (BIDS-style `_events.tsv` of a hypnogram), one row per 30-s epoch:
    onset duration stage p_W p_N1 p_N2 p_N3 p_REM p_apnea p_hypopnea quality
p_apnea / p_hypopnea hold `n/a` (BIDS) when they are not reported (runtime.scorer.respiratory_support:
no trained heads, or no RESP >= 10 Hz / SpO2 >= 1 Hz channel); the reason is in the JSON report.
CSV has the same columns. TSV/CSV stay plain tables (sleepedge.scoring.read_scoring, pandas and
BIDS tools read them as they are); the simulated-data notice travels in the JSON report
`<stem>.json`, which is also the BIDS sidecar of `<stem>.tsv` (it holds the column
descriptions). It is written whenever TSV/CSV are, if the model is simulated, even without
`json` in the formats, so no output goes without the notice.

AHI estimate (JSON report): a respiratory "event" is a run of consecutive epochs whose
p_apnea > 0.5 (apnea) or p_hypopnea > 0.5 (hypopnea), counted only over sleep epochs (predicted
stage != W); AHI = (apnea runs + hypopnea runs) / TST hours. A 30-s epoch can hold more than one
real event, so this is a coarse lower-bound style estimate, labelled as such. When apnea/hypopnea
are not reported, `ahi_estimate.value` is null and `ahi_estimate.reason` says what is missing;
when they are, `ahi_estimate.heads` says what each head was trained on (and labels heads trained
on simulated nights as such).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from sleepedge.contract import EPOCH_S, QUALITY_FLAGS, STAGES
from sleepedge.errors import OutputError

FORMATS = ("tsv", "csv", "edf", "json", "png")
COLUMNS = ("onset", "duration", "stage", *(f"p_{s}" for s in STAGES), "p_apnea", "p_hypopnea", "quality")
EDF_STAGE_TEXT = {"W": "Sleep stage W", "N1": "Sleep stage N1", "N2": "Sleep stage N2",
                  "N3": "Sleep stage N3", "REM": "Sleep stage R"}
EVENT_P = 0.5
REWRITE_FRACTION = 100   # periodic EDF+/JSON rewrites at least len(epochs) // 100 epochs apart (linear total cost)
REWRITE_MIN_S = 2.0       # ... and at least 2 s of wall time apart (a fast replay: a few snapshots, not hundreds;
                          # the TSV/CSV rows, fsynced per epoch, are what a crash keeps and --resume reads)
NA = "n/a"   # BIDS: a value that is not available
COLUMN_DOC = {  # BIDS sidecar style descriptions of the TSV/CSV columns
    "onset": "epoch start, seconds from the recording start",
    "duration": "epoch length in seconds",
    "stage": "predicted AASM stage (argmax of p_*): W, N1, N2, N3, REM",
    **{f"p_{s}": f"model probability of stage {s}" for s in STAGES},
    "p_apnea": "probability that the epoch holds an apnea; n/a when not reported (see ahi_estimate.reason)",
    "p_hypopnea": "probability that the epoch holds a hypopnea; n/a when not reported (see ahi_estimate.reason)",
    "quality": "ok, or ROLE:flag[,flag];... with flags " + ", ".join(QUALITY_FLAGS),
}


def parse_formats(text: str) -> list[str]:
    items = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    bad = [t for t in items if t not in FORMATS]
    if bad or not items:
        raise OutputError(f"--format {text!r}: unknown {bad or 'empty list'}; expected a comma list of {','.join(FORMATS)}")
    return list(dict.fromkeys(items))


def check_writable(out_dir: Path) -> Path:
    """Create `out_dir` if needed and prove a file can be written there, before any scoring."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".sleepedge-write-test-{os.getpid()}"
        with open(probe, "wb") as fh:
            fh.write(b"ok")
            fh.flush()
            os.fsync(fh.fileno())
        probe.unlink()
    except OSError as ex:
        raise OutputError(f"output folder {out_dir} is not writable ({ex.strerror or ex}); choose another with --out") from None
    return out_dir


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    write(tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _p_text(p) -> str:
    return NA if p is None or not np.isfinite(p) else f"{p:.6f}"


def reported(p) -> bool:
    """An apnea/hypopnea probability that was reported (not None / NaN)."""
    return p is not None and bool(np.isfinite(p))


def epoch_row(res) -> list[str]:
    return [f"{res.onset_s:.3f}", f"{EPOCH_S:g}", res.stage_name, *(f"{p:.6f}" for p in res.probs),
            _p_text(res.p_apnea), _p_text(res.p_hypopnea), res.quality_str()]


def _same_value(a: str, b: str, tol: float) -> bool:
    if a == NA or b == NA:
        return a == b
    return abs(float(a) - float(b)) <= tol


class LineSink:
    """TSV or CSV: append + flush per epoch (+ fsync every `fsync_every`).

    `resume=True` keeps the complete rows already in the file (a trailing partial row is cut) and
    does not rewrite them; as the scorer re-runs from the start, each re-scored epoch is checked
    against the kept row (same stage, probabilities within 1e-4), so a file from another model,
    recording or setting is refused instead of being silently continued.
    """

    RESUME_TOL = 1e-4

    def __init__(self, path: Path, sep: str, resume: bool = False, fsync_every: int = 1):
        self.path = Path(path)
        self.fsync_every = max(1, int(fsync_every))
        self._unsynced = 0
        self.sep = sep
        self.header = sep.join(COLUMNS)
        self.existing: list[list[str]] = []
        self.conflict = False            # set when --resume finds rows from another run
        try:
            if resume and self.path.exists():
                self.existing = self._keep_complete()
                self.fh = open(self.path, "a", encoding="utf-8", newline="")
            else:
                self.fh = open(self.path, "w", encoding="utf-8", newline="")
                self.fh.write(self.header + "\n")
                self._sync()
        except OSError as ex:
            raise OutputError(f"cannot write {self.path} ({ex.strerror or ex}); check the output folder") from None

    @property
    def n_existing(self) -> int:
        return len(self.existing)

    def _keep_complete(self) -> list[list[str]]:
        raw = self.path.read_bytes().decode("utf-8", errors="replace")
        lines = raw.split("\n")
        tail = lines.pop()  # text after the last newline: a partial row (or "")
        if not lines or lines[0] != self.header:
            raise OutputError(f"--resume: {self.path} does not start with the expected header; delete it or drop --resume")
        rows = []
        for ln in lines[1:]:
            fields = ln.split(self.sep)
            if len(fields) != len(COLUMNS):
                break
            rows.append(fields)
        if tail or len(rows) != len(lines) - 1:
            with open(self.path, "w", encoding="utf-8", newline="") as fh:
                fh.write("".join(ln + "\n" for ln in lines[: len(rows) + 1]))
                fh.flush()
                os.fsync(fh.fileno())
        return rows

    def _check_same(self, res) -> None:
        old = self.existing[res.index]
        new = epoch_row(res)
        try:
            same = old[:3] == new[:3] and all(_same_value(a, b, self.RESUME_TOL) for a, b in zip(old[3:10], new[3:10]))
        except ValueError:
            same = False
        if not same:
            self.conflict = True
            raise OutputError(
                f"--resume: {self.path} epoch {res.index} holds {old[2]} but re-scoring gives {new[2]} "
                f"(or different probabilities): it was written by another model, recording or setting; "
                "delete it or drop --resume"
            )

    def _sync(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def write(self, res) -> None:
        if res.index < self.n_existing:
            self._check_same(res)
            return  # already on disk from the interrupted run
        try:
            self.fh.write(self.sep.join(epoch_row(res)) + "\n")
            self.fh.flush()
            self._unsynced += 1
            if self._unsynced >= self.fsync_every:
                os.fsync(self.fh.fileno())
                self._unsynced = 0
        except OSError as ex:
            raise OutputError(f"writing {self.path} failed at epoch {res.index} ({ex.strerror or ex}); "
                              f"epochs 0..{res.index - 1} are saved there") from None

    def close(self) -> None:
        if not self.fh.closed:
            self._sync()
            self.fh.close()


def read_rows(path: Path) -> list[dict]:
    """Rows of a TSV/CSV written here (comment lines and a trailing partial row dropped), values
    as text: p_apnea / p_hypopnea may be `n/a` (not reported)."""
    path = Path(path)
    sep = "\t" if path.suffix == ".tsv" else ","
    raw = path.read_text(encoding="utf-8")
    lines = raw.split("\n")
    lines.pop()  # partial tail (or empty)
    lines = [ln for ln in lines if not ln.startswith("#")]
    if not lines:
        return []
    cols = lines[0].split(sep)
    return [dict(zip(cols, ln.split(sep))) for ln in lines[1:] if len(ln.split(sep)) == len(cols)]


def event_runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each run of True in `flags`."""
    runs, start = [], None
    for i, f in enumerate(list(flags) + [False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def _stage_spans(epochs) -> list[tuple[float, float, str]]:
    spans = []
    for e in epochs:
        if spans and spans[-1][2] == e.stage_name and abs(spans[-1][0] + spans[-1][1] - e.onset_s) < 1e-6:
            spans[-1] = (spans[-1][0], spans[-1][1] + EPOCH_S, e.stage_name)
        else:
            spans.append((e.onset_s, EPOCH_S, e.stage_name))
    return spans


def estimated_events(epochs) -> list[tuple[float, float, str]]:
    """(onset_s, duration_s, kind) for runs of sleep epochs with p > 0.5 (see module doc)."""
    if not epochs:
        return []
    stages = np.array([e.stage for e in epochs])
    sleep = stages != 0
    out = []
    for kind, attr in (("apnea", "p_apnea"), ("hypopnea", "p_hypopnea")):
        p = np.array([getattr(e, attr) if reported(getattr(e, attr)) else 0.0 for e in epochs], dtype=np.float64)
        for start, n in event_runs((p > EVENT_P) & sleep):
            out.append((epochs[start].onset_s, n * EPOCH_S, kind))
    return sorted(out)


def write_edf_annotations(path: Path, epochs, start=None, notice: str = "") -> Path:
    from sleepedge.edf import Annotation, write_edf

    anns = []
    if notice:
        anns.append(Annotation(0.0, 0.0, notice[:120]))
    anns += [Annotation(o, d, EDF_STAGE_TEXT[s]) for o, d, s in _stage_spans(epochs)]
    anns += [Annotation(o, d, f"{k} (estimated)") for o, d, k in estimated_events(epochs)]
    path = Path(path)

    def _write(tmp):
        write_edf(tmp, [], annotations=anns, start=start, recording="sleepedge scoring")

    try:
        _atomic_write(path, _write)
    except OSError as ex:
        raise OutputError(f"writing {path} failed ({ex.strerror or ex}); the TSV/CSV beside it hold every scored epoch") from None
    return path


def night_report(night) -> dict:
    """JSON-able report: statistics, AHI estimate, quality summary, model summary, notice."""
    from sleepedge.scoring import Hypnogram
    from sleepedge.stats import sleep_stats

    epochs = night.epochs
    hyp = Hypnogram(stages=np.array([e.stage for e in epochs], dtype=np.int16), epoch_s=EPOCH_S,
                    start=night.start, source=night.source)
    stats = _jsonable(sleep_stats(hyp)) if epochs else {}
    for key in [k for k in stats if k in ("ahi", "odi", "arousal_index") or (k.startswith("n_") and k != "n_epochs"
                                                                                and k != "n_awakenings")]:
        stats.pop(key, None)  # event counts need scored events: the estimate is in ahi_estimate
    counts = np.bincount(hyp.stages, minlength=len(STAGES))
    events = estimated_events(epochs)
    n_sleep = int(len(epochs) - counts[0])
    tst_h = n_sleep * EPOCH_S / 3600.0
    n_apnea = sum(1 for *_, k in events if k == "apnea")
    n_hypop = sum(1 for *_, k in events if k == "hypopnea")
    ahi = _ahi_estimate(night, n_apnea, n_hypop, tst_h)
    quality: dict[str, dict[str, int]] = {}
    for e in epochs:
        for role, names in e.quality.items():
            for name in names:
                quality.setdefault(role, {}).setdefault(name, 0)
                quality[role][name] += 1
    lat = np.array([e.latency_ms for e in epochs]) if epochs else np.zeros(1)
    stage_pct = {s: (100.0 * float(counts[i] / len(epochs)) if epochs else 0.0) for i, s in enumerate(STAGES)}
    return {
        "notice": night.notice,
        "source": night.source,
        "start": night.start.isoformat() if night.start else None,
        "n_epochs": len(epochs),
        "epoch_s": EPOCH_S,
        "roles_used": night.roles_used,
        "missing_roles": night.missing_roles,
        "ignored_roles": night.extra_roles,
        "engine": night.engine,
        "sleep_stats": stats,
        "stage_percent": stage_pct,
        "ahi_estimate": ahi,
        "quality": {"epochs_with_any_flag": int(sum(bool(e.quality) for e in epochs)), "per_role": quality,
                    "flags": dict(QUALITY_FLAGS)},
        "latency_ms": {"median": float(np.median(lat)), "p99": float(np.percentile(lat, 99))},
        "model": night.manifest_summary,
        "columns": COLUMN_DOC,
        "warnings": night.warnings,
    }


def respiratory_status(night) -> tuple[bool, str]:
    """(reported, reason) of a night's apnea/hypopnea/AHI: the scorer's verdict
    (`NightResult.respiratory_ok/_reason`), and not reported when any epoch lacks the values."""
    ok = bool(getattr(night, "respiratory_ok", True))
    reason = str(getattr(night, "respiratory_reason", "") or "")
    if ok and any(not (reported(e.p_apnea) and reported(e.p_hypopnea)) for e in night.epochs):
        ok, reason = False, reason or "the model gave no apnea/hypopnea probabilities"
    if not ok and not reason:
        reason = "apnea/hypopnea not reported"
    return ok, reason


def _ahi_estimate(night, n_apnea: int, n_hypop: int, tst_h: float) -> dict:
    method = ("runs of consecutive sleep epochs with p_apnea>0.5 (apnea) or p_hypopnea>0.5 "
              "(hypopnea) each count as one event; AHI = events / TST hours (coarse estimate)")
    ok, reason = respiratory_status(night)
    if not ok:
        return {"value": None, "reported": False, "reason": reason, "apnea_runs": None, "hypopnea_runs": None,
                "tst_h": tst_h, "method": method}
    heads = dict((night.manifest_summary or {}).get("heads") or {})
    out = {"value": (n_apnea + n_hypop) / tst_h if tst_h > 0 else None, "reported": True,
           "apnea_runs": n_apnea, "hypopnea_runs": n_hypop, "tst_h": tst_h, "method": method}
    if heads:
        out["heads"] = heads   # {"apnea": {"data", "simulated", "label"}, "hypopnea": {...}}
        out["trained_on"] = (heads.get("apnea") or next(iter(heads.values())))["data"]
        sim = sorted(t for t, h in heads.items() if h.get("simulated"))
        if sim:
            out["notice"] = f"{'/'.join(sim)} head{'s' if len(sim) > 1 else ''} trained on SIMULATED nights"
    return out


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    return obj


def write_json(path: Path, report: dict) -> Path:
    path = Path(path)
    text = json.dumps(_jsonable(report), indent=2, allow_nan=False)

    def _write(tmp):
        tmp.write_text(text + "\n", encoding="utf-8")

    try:
        _atomic_write(path, _write)
    except OSError as ex:
        raise OutputError(f"writing {path} failed ({ex.strerror or ex}); the TSV/CSV beside it hold every scored epoch") from None
    return path


def night_figure(night):
    """The PNG's figure as a `matplotlib.figure.Figure`: hypnogram, hypnodensity (stacked
    probabilities) and apnea/hypopnea probability lines. Built without pyplot, so no backend
    is selected or changed (a notebook shows it as it is; `write_png` saves it)."""
    from matplotlib.figure import Figure

    epochs = night.epochs
    t_h = np.array([e.onset_s for e in epochs]) / 3600.0
    resp_ok, resp_reason = respiratory_status(night)
    if resp_ok:
        fig = Figure(figsize=(11, 6.5))
        axes = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [1.2, 1.2, 0.8]})
    else:  # no apnea panel: the values are not reported (the title says why)
        fig = Figure(figsize=(11, 5.2))
        axes = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1.2, 1.2]})
    ax = axes[0]
    depth = {0: 0, 4: 1, 1: 2, 2: 3, 3: 4}  # W top, REM, N1, N2, N3 bottom
    y = np.array([depth[e.stage] for e in epochs])
    ax.step(t_h, y, where="post", color="k", lw=1)
    ax.set_yticks(range(5), ["W", "REM", "N1", "N2", "N3"])
    ax.set_ylim(4.4, -0.4)  # W on top, with a margin so a flat line is visible
    title = f"{Path(night.source).name}: sleepedge hypnogram"
    if night.notice:
        title += f"\n{night.notice}"
    if not resp_ok:
        title += f"\napnea/hypopnea/AHI not reported: {resp_reason}"
    ax.set_title(title, fontsize=9)
    probs = night.probs.T if epochs else np.zeros((5, 0))
    axes[1].stackplot(t_h, probs, labels=list(STAGES), step="post")
    axes[1].set_ylim(0, 1)
    axes[1].set_ylabel("p(stage)")
    axes[1].legend(loc="upper right", fontsize=7, ncol=5)
    if resp_ok:
        axes[2].plot(t_h, [e.p_apnea for e in epochs], label="p_apnea", lw=0.8)
        axes[2].plot(t_h, [e.p_hypopnea for e in epochs], label="p_hypopnea", lw=0.8)
        axes[2].axhline(EVENT_P, color="grey", ls=":", lw=0.6)
        axes[2].set_ylim(0, 1)
        heads = (night.manifest_summary or {}).get("heads") or {}
        if any(h.get("simulated") for h in heads.values()):
            axes[2].set_title("apnea/hypopnea heads trained on SIMULATED nights", fontsize=8)
        axes[2].legend(loc="upper right", fontsize=7)
    axes[-1].set_xlabel("time since start (h)")
    fig.tight_layout()
    return fig


def write_png(path: Path, night) -> Path:
    """`night_figure` saved as PNG (atomic replace)."""
    fig = night_figure(night)
    path = Path(path)
    try:
        _atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    except OSError as ex:
        raise OutputError(f"writing {path} failed ({ex.strerror or ex}); the TSV/CSV beside it hold every scored epoch") from None
    return path


class NightWriter:
    """All requested outputs of one recording under `out_dir/<stem>.*`.

    `add(result)` appends to TSV/CSV at once and rewrites EDF+/JSON every `every` epochs;
    `finish(night)` writes the final EDF+/JSON/PNG. `resume=True` keeps TSV/CSV rows already
    on disk (the scorer re-runs from the start so the state is exact, rows are not rewritten).
    """

    def __init__(self, out_dir: Path, stem: str, formats: Sequence[str], notice: str = "",
                 resume: bool = False, every: int = 20, start=None, fsync_every: int = 1):
        self.out_dir = Path(out_dir)
        self.formats = list(formats)
        self.notice = notice
        self.every = max(1, int(every))
        self.start = start
        self.paths = {f: self.out_dir / f"{stem}.{f}" for f in self.formats}
        self.lines: list[LineSink] = []
        if "tsv" in self.formats:
            self.lines.append(LineSink(self.paths["tsv"], "\t", resume, fsync_every))
        if "csv" in self.formats:
            self.lines.append(LineSink(self.paths["csv"], ",", resume, fsync_every))
        if notice and self.lines and "json" not in self.formats:
            self.formats.append("json")  # the sidecar carries the notice (see module doc)
            self.paths["json"] = self.out_dir / f"{stem}.json"
        self.epochs: list = []
        self.night = None
        self._since_rewrite = 0
        self._last_rewrite = -float("inf")

    @property
    def n_existing(self) -> int:
        return min((s.n_existing for s in self.lines), default=0)

    def add(self, res, night_factory=None) -> None:
        self.epochs.append(res)
        for sink in self.lines:
            sink.write(res)
        self._since_rewrite += 1
        if (night_factory is not None and self._since_rewrite >= max(self.every, len(self.epochs) // REWRITE_FRACTION)
                and time.monotonic() - self._last_rewrite >= REWRITE_MIN_S):
            self._since_rewrite = 0
            self._rewrite(night_factory(self.epochs), final=False)
            self._last_rewrite = time.monotonic()

    def _rewrite(self, night, final: bool, png: bool = False) -> None:
        if "edf" in self.formats:
            write_edf_annotations(self.paths["edf"], night.epochs, start=night.start or self.start, notice=self.notice)
        if "json" in self.formats:
            rep = night_report(night)
            rep["complete"] = final
            write_json(self.paths["json"], rep)
        if png and "png" in self.formats and night.epochs:
            write_png(self.paths["png"], night)

    def finish(self, night, complete: bool = True) -> dict[str, Path]:
        self.close()
        if any(s.conflict for s in self.lines):
            return {}  # --resume met another run's files: leave every output as it was
        self._rewrite(night, final=complete, png=True)
        return dict(self.paths)

    def close(self) -> None:
        for sink in self.lines:
            sink.close()

    def saved(self) -> str:
        return ", ".join(str(p) for f, p in self.paths.items() if p.exists())
