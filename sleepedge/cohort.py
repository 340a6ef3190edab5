"""Cohort scoring: thousands of nights on a Dask cluster, one Parquet table per cohort (issue 15).

    from sleepedge import cohort
    table = cohort.score(["nights/"], out="cohort-out")            # a LocalCluster on this machine
    table = cohort.score(paths, out="cohort-out", client=client)  # any dask.distributed Client

The engine is Dask distributed (`pip install 'sleepedge[cohort]'`: dask, distributed, pyarrow,
pandas); nothing here imports it at module level, and the bedside runtime never needs it.
Each night is one Dask task running the SAME per-night code as `sleepedge score`
(`sleepedge.commands.score.score_night`), so the per-night files are the same.

Layout of OUT (night = `<content sha256[:16]>-<model sha256[:12]>`):

    <stem>.sleepedge.{tsv,csv,edf,json,png}        per night, what `sleepedge score` writes
    epochs.parquet/shard=<xx>/<night>.parquet       per-epoch rows of one night (xx: 2 hex of the
                                                    content hash, 256 shards), written first
    parts/<night>.json                              the night's row (ok or error), written LAST and
                                                    atomically: the night's done-marker
    cohort.parquet                                  one row per night, assembled from parts/ at the
                                                    end of every run (atomically replaced)

Resume: a night whose (path, size, mtime) and model hash match an `ok` part is skipped without
reading it; a night whose content hash and model hash match one (a moved or touched file) is
skipped after hashing; `force=True` rescores. Error rows are retried on the next run. A kill of
the client or of a worker loses at most the nights in flight: every finished night is on disk.
Failure isolation: any exception of a night becomes its `error` row (SleepEdgeError: its one-line
message; anything else: `Type: message`); a worker that dies mid-night has its night re-run on
another worker by the scheduler (the retried night rewrites its files from scratch; the night's
row and epoch part are keyed by the night, so the tables hold no duplicate).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

from sleepedge.contract import STAGES
from sleepedge.errors import SleepEdgeError

PARTS = "parts"
EPOCHS = "epochs.parquet"
TABLE = "cohort.parquet"
INSTALL = "pip install 'sleepedge[cohort]'"
TASK_PREFIX = "sleepedge-night-"
# the LocalCluster's Dask settings (a --scheduler cluster keeps its own; README: set them there too).
# Measured, 1 worker, 10 one-hour nights: worker CPU per night 0.442 s -> 0.372 s, wall 0.648 -> 0.497 s
# (in one plain process: 0.48 s): the worker's statistical profiler (a stack sample every 10 ms, only
# for the dashboard) and 20-ms event-loop ticks cost ~15 % of every night.
LOCAL_CONFIG = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,   # see _tune_malloc
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
}
WORKER_TIMEOUT_S = 60      # connecting to a --scheduler, or LocalCluster workers starting


class CohortError(SleepEdgeError):
    """Cohort inputs or cluster cannot be used (no recordings, bad scheduler address...)."""


# ------------------------------------------------------------------------------- inputs
def discover(items: Iterable[str | os.PathLike], out: Path | None = None) -> list[Path]:
    """Files, folders (searched recursively for *.edf / *.EDF) and globs -> recordings, in a
    stable order (as given; sorted within a folder or glob), each once. Our own outputs
    (`*.sleepedge.edf`) and anything under `out` are left out."""
    out_r = Path(out).resolve() if out is not None else None
    found: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        r = p.resolve()             # for "each once" and "not under OUT"; the path kept is the one given
        if r in seen or p.name.lower().endswith(".sleepedge.edf"):
            return
        if out_r is not None and (r == out_r or out_r in r.parents):
            return
        seen.add(r)
        found.append(p.absolute())

    def add_any(p: Path) -> bool:
        """A folder (its *.edf, recursively) or a file; False when `p` is neither."""
        if p.is_dir():
            for f in sorted(x for x in p.rglob("*") if x.suffix.lower() == ".edf" and x.is_file()):
                add(f)
        elif p.is_file():
            add(p)
        else:
            return False
        return True

    for item in items:
        text = str(item)
        if add_any(Path(text).expanduser()):
            continue
        if glob.has_magic(text):
            hits = sorted(glob.glob(os.path.expanduser(text), recursive=True))
            if not hits:
                raise CohortError(f"cohort: {text!r} matches no file; pass EDF files, folders or globs that exist")
            for h in hits:
                add_any(Path(h))
        else:
            raise CohortError(f"cohort: recording {text} does not exist; pass EDF files, folders (searched for "
                              "*.edf) or globs")
    if not found:
        raise CohortError(f"cohort: no EDF recording in {', '.join(map(str, items)) or 'the arguments'}; "
                          "pass EDF files, folders holding *.edf, or globs")
    return found


def model_sha256(bundle) -> str:
    """Identity of a bundle: the hash of its manifest (which holds the sha256 of every file)."""
    return hashlib.sha256(json.dumps(bundle.manifest, sort_keys=True).encode("utf-8")).hexdigest()


def night_key(content_sha: str, model_sha: str) -> str:
    return f"{content_sha[:16]}-{model_sha[:12]}"


def _path_key(path: str, model_sha: str) -> str:
    """Key of a night whose content could not be hashed (unreadable file, worker lost)."""
    return f"path{hashlib.sha256(path.encode('utf-8')).hexdigest()[:12]}-{model_sha[:12]}"


def task_stem(key: str) -> str:
    """The output stem of a night's task key (`sleepedge-night-<8 hex>-<stem>`)."""
    return str(key)[len(TASK_PREFIX) + 9:]


def _utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _atomic_bytes(path: Path, data: bytes) -> None:
    """tmp (hidden: readers of the dataset skip dot files) + fsync + rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# ------------------------------------------------------------------------------- schemas
STAGE_MIN = [f"{s}_min" for s in STAGES]
STAGE_PCT = [f"{s}_pct" for s in STAGES[1:]]      # % of TST (AASM), sleep stages only


def night_schema():
    import pyarrow as pa

    f64, i64, s = pa.float64(), pa.int64(), pa.string()
    cols = [("night", s), ("file", s), ("name", s), ("stem", s), ("content_sha256", s), ("size_bytes", i64),
            ("mtime_ns", i64), ("model_id", s), ("model_sha256", s), ("status", s), ("error", s),
            ("start", s), ("duration_s", f64), ("n_epochs", i64), ("tib_min", f64), ("tst_min", f64),
            ("se_pct", f64), ("sol_min", f64), ("waso_min", f64), ("rem_latency_min", f64),
            ("n_awakenings", i64)]
    cols += [(c, f64) for c in STAGE_MIN] + [(c, f64) for c in STAGE_PCT]
    cols += [("ahi", f64), ("ahi_reason", s), ("epochs_flagged", i64), ("quality", s), ("roles_used", s),
             ("missing_roles", s), ("warnings", s), ("outputs", s), ("wall_s", f64), ("worker", s), ("pid", i64),
             ("worker_peak_rss_mb", f64), ("finished_utc", s), ("sleepedge_version", s)]
    return pa.schema(cols)


def epoch_schema():
    import pyarrow as pa

    f32 = pa.float32()
    return pa.schema([("night", pa.string()), ("epoch", pa.int32()), ("onset_s", pa.float64()),
                      ("stage", pa.int8()), ("stage_name", pa.string())]
                     + [(f"p_{s}", f32) for s in STAGES]
                     + [("p_apnea", f32), ("p_hypopnea", f32), ("quality", pa.string())])


def epochs_path(out: Path, key: str) -> Path:
    return Path(out) / EPOCHS / f"shard={key[:2]}" / f"{key}.parquet"


def _write_parquet(path: Path, table) -> None:
    """A pyarrow Table -> zstd Parquet at `path`, atomically."""
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    _atomic_bytes(path, buf.getvalue())


def _write_epochs(out: Path, key: str, night) -> Path:
    import pyarrow as pa

    ep = night.epochs
    n = len(ep)
    cols = {"night": [key] * n, "epoch": [e.index for e in ep], "onset_s": [e.onset_s for e in ep],
            "stage": [e.stage for e in ep], "stage_name": [e.stage_name for e in ep]}
    for i, s in enumerate(STAGES):
        cols[f"p_{s}"] = [e.probs[i] for e in ep]
    cols["p_apnea"] = [e.p_apnea for e in ep]
    cols["p_hypopnea"] = [e.p_hypopnea for e in ep]
    cols["quality"] = [e.quality_str() for e in ep]
    path = epochs_path(out, key)
    _write_parquet(path, pa.Table.from_pydict(cols, schema=epoch_schema()))
    return path


def _night_columns(night) -> dict:
    """The statistics of a scored night, from the report `sleepedge score` writes (one function)."""
    from runtime.sinks import night_report

    rep = night_report(night)
    st = rep["sleep_stats"]
    ahi = rep["ahi_estimate"]
    row = {"start": rep["start"], "duration_s": len(night.epochs) * float(rep["epoch_s"]), "n_epochs": rep["n_epochs"]}
    for k in ("tib_min", "tst_min", "se_pct", "sol_min", "waso_min", "rem_latency_min", "n_awakenings", *STAGE_MIN,
              *STAGE_PCT):
        row[k] = st.get(k)
    row["ahi"] = ahi.get("value") if ahi.get("reported") else None
    row["ahi_reason"] = "" if ahi.get("reported") else str(ahi.get("reason") or "")
    row["epochs_flagged"] = rep["quality"]["epochs_with_any_flag"]
    row["quality"] = ";".join(f"{role}:" + ",".join(f"{k}={v}" for k, v in sorted(flags.items()))
                              for role, flags in sorted(rep["quality"]["per_role"].items()))
    row["roles_used"] = ";".join(f"{r}={lab}" for r, lab in night.roles_used.items())
    row["missing_roles"] = ",".join(night.missing_roles)
    return row


# ------------------------------------------------------------------------------- the task
_WORKER_MODELS: dict = {}   # per worker process: (bundle path, model hash, device) -> (bundle, engine)


def _tune_malloc() -> None:
    """Undo, in this worker process, Dask's default MALLOC_TRIM_THRESHOLD_=65536 (set by nannies on
    every cluster): it pins glibc's mmap threshold at 128 KiB, so every epoch block's numpy arrays
    are mmapped and unmapped again. Measured on 12 one-hour nights in one process: 516k minor page
    faults and 1.5 s system time with it, 49k and 0.34 s after this call (66k / 0.36 s without the
    variable); Dask workers scored a night ~2x slower. glibc only (elsewhere a no-op)."""
    if not os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)    # M_MMAP_THRESHOLD: arrays below 32 MiB from the heap (glibc's dynamic max)
        libc.mallopt(-1, 128 << 20)   # M_TRIM_THRESHOLD: give memory back above 128 MiB of free heap top
    except (OSError, AttributeError):
        pass


def _worker_model(model_path: str, model_sha: str, device: str):
    key = (model_path, model_sha, device)
    if key not in _WORKER_MODELS:
        _tune_malloc()
        from runtime.session import make_sessions
        from sleepedge.bundle import load_bundle

        bundle = load_bundle(model_path)
        got = model_sha256(bundle)
        if got != model_sha:
            raise CohortError(f"bundle {model_path} on this worker differs from the client's (model hash "
                              f"{got[:12]} != {model_sha[:12]}); give every worker the same bundle")
        _WORKER_MODELS.clear()      # one model per worker process
        _WORKER_MODELS[key] = (bundle, make_sessions(bundle, device=device, threads=1))
    return _WORKER_MODELS[key]


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return socket.gethostname()


def _peak_rss_mb() -> float | None:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # KiB on Linux
    except (ImportError, OSError):
        return None


def read_part(out: Path, key: str) -> dict | None:
    try:
        return json.loads((Path(out) / PARTS / f"{key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_part(out: Path, row: dict) -> None:
    _atomic_bytes(Path(out) / PARTS / f"{row['night']}.json", (json.dumps(row, allow_nan=False) + "\n").encode())


def _scored(out: Path, key: str, row: dict | None, formats) -> bool:
    """`row` (the part of night `key`) is an ok night whose epoch part and every per-night file
    asked for are there (a resume with more --formats, or deleted files, rescores)."""
    return (bool(row) and row.get("status") == "ok" and epochs_path(out, key).exists()
            and all((Path(out) / f"{row.get('stem')}.{f}").exists() for f in formats))


def _job_row(job: dict, **fields) -> dict:
    """A night's row as far as its job says (an error until scored), plus `fields`."""
    from sleepedge import __version__

    path = job["file"]
    return {"file": path, "name": Path(path).name, "stem": job["stem"], "size_bytes": job.get("size_bytes"),
            "mtime_ns": job.get("mtime_ns"), "model_id": job["model_id"], "model_sha256": job["model_sha256"],
            "status": "error", "sleepedge_version": __version__, **fields}


def score_night_task(job: dict) -> dict:
    """One night on a worker: hash, score (the `sleepedge score` path), write the epoch part, then
    the night's row (the done-marker). Never raises for a bad night: its error becomes the row."""
    import warnings

    t0 = time.perf_counter()
    out, path = Path(job["out"]), job["file"]
    row = _job_row(job, night=None, content_sha256=None, error="", warnings="", outputs="", worker=_worker_name(),
                   pid=os.getpid())
    try:
        from sleepedge.bundle import sha256_file

        sha = sha256_file(Path(path))
        row["content_sha256"] = sha
        row["night"] = night_key(sha, job["model_sha256"])
        if not job.get("force"):
            done = read_part(out, row["night"])
            if _scored(out, row["night"], done, job["formats"]):
                return {**done, "skipped": True}     # same content, same model: a moved or touched file
        from sleepedge.commands.score import score_night

        bundle, engine = _worker_model(job["model_path"], job["model_sha256"], job.get("device", "auto"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                night, paths = score_night(Path(path), bundle, engine, out, job["stem"], job["formats"],
                                           job.get("overrides") or {})
            finally:
                row["warnings"] = " | ".join(" ".join(str(w.message).split()) for w in caught)
        _write_epochs(out, row["night"], night)
        row.update(_night_columns(night))
        row["outputs"] = ",".join(p.name for p in paths.values())
        row["status"] = "ok"
    except SleepEdgeError as ex:
        row["error"] = str(ex)
    except Exception as ex:  # noqa: BLE001 - failure isolation: any error of one night is that night's row
        row["error"] = " ".join(f"{type(ex).__name__}: {ex}".split())
    if row["night"] is None:
        row["night"] = _path_key(path, job["model_sha256"])
    row["wall_s"] = time.perf_counter() - t0
    row["worker_peak_rss_mb"] = _peak_rss_mb()
    row["finished_utc"] = _utc()
    from runtime.sinks import _jsonable

    row = _jsonable(row)     # NaN / inf -> None (JSON and Parquet null), as in the night's JSON report
    _write_part(out, row)
    return row


# ------------------------------------------------------------------------------- the table
def load_parts(out: Path) -> dict[str, dict]:
    rows = {}
    for p in sorted((Path(out) / PARTS).glob("*.json")):
        try:
            row = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue   # cannot happen for parts written by rename; a foreign file is ignored
        if isinstance(row, dict) and row.get("night") == p.stem:
            rows[p.stem] = row
    return rows


def assemble(out: Path) -> Path:
    """parts/*.json -> OUT/cohort.parquet (one row per night, atomically replaced). Per (file,
    model) only the newest part is kept: a file that changed, or an error later scored ok,
    leaves one row; the superseded parts and their epoch parts are removed."""
    import pyarrow as pa

    out = Path(out)
    rows = load_parts(out)
    newest: dict[tuple, dict] = {}
    for row in rows.values():
        k = (row.get("file"), row.get("model_sha256"))
        if k not in newest or str(row.get("finished_utc") or "") >= str(newest[k].get("finished_utc") or ""):
            newest[k] = row
    keep = {r["night"] for r in newest.values()}
    for key in set(rows) - keep:
        for p in (out / PARTS / f"{key}.json", epochs_path(out, key)):
            p.unlink(missing_ok=True)
    schema = night_schema()
    ordered = sorted((r for r in newest.values()), key=lambda r: (str(r.get("file")), str(r.get("model_sha256"))))
    path = out / TABLE
    _write_parquet(path, pa.Table.from_pylist([{c: r.get(c) for c in schema.names} for r in ordered], schema=schema))
    return path


# ------------------------------------------------------------------------------- the cluster
def _start_cluster(workers: int | None, scheduler: str | None):
    """(client, cluster-or-None). Default: a LocalCluster on 127.0.0.1, one single-threaded worker
    process per core, dashboard on loopback only."""
    import logging

    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout=WORKER_TIMEOUT_S), None
        except (OSError, TimeoutError, ValueError) as ex:
            raise CohortError(f"--scheduler {scheduler}: cannot connect ({' '.join(str(ex).split()) or type(ex).__name__}); "
                              "start the scheduler (dask scheduler / dask-jobqueue) or check the tcp://HOST:PORT") from None
    n = int(workers or os.cpu_count() or 1)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")   # worker processes inherit: one thread each, one worker per core
    # everything on loopback: scheduler, workers, nannies, and the scheduler's HTTP server (the
    # dashboard when bokeh is installed) on a free port (None would still serve on :8787)
    with dask.config.set(LOCAL_CONFIG):
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
    client = Client(cluster)
    return client, cluster


class _Bar:
    """rich progress: nights done / failed / skipped, elapsed, ETA (quiet: nothing)."""

    def __init__(self, total: int, quiet: bool, console):
        self.progress = None
        if quiet:
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.progress = Progress(TextColumn("nights"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("ok {task.fields[ok]}  failed {task.fields[failed]}  "
                                            "skipped {task.fields[skipped]}"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=console, transient=False)
        self.progress.start()
        self.task = self.progress.add_task("nights", total=total, ok=0, failed=0, skipped=0)

    def update(self, counts: dict) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=sum(counts.values()), **counts)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def score(paths: Sequence[str | os.PathLike] | str | os.PathLike, out: str | os.PathLike = "sleepedge-cohort",
          client=None, *, model: str | os.PathLike | None = None, workers: int | None = None,
          scheduler: str | None = None, channel: Sequence[str] | None = None, formats: str | None = None,
          force: bool = False, device: str = "auto", quiet: bool = True, console=None) -> Path:
    """Score a cohort on a Dask cluster; returns the path of OUT/cohort.parquet.

    paths: EDF files, folders (searched for *.edf) or globs. client: a dask.distributed Client
    (used as is, never closed); else `scheduler` (tcp://HOST:PORT) or a LocalCluster of `workers`
    (default: one per core) started and stopped here. Per night, exactly the files `sleepedge score`
    writes, plus the cohort tables (module docstring)."""
    return run(paths, out, client, model=model, workers=workers, scheduler=scheduler, channel=channel,
               formats=formats, force=force, device=device, quiet=quiet, console=console)[0]


def run(paths, out, client=None, *, model=None, workers=None, scheduler=None, channel=None, formats=None,
        force=False, device="auto", quiet=True, console=None) -> tuple[Path, dict]:
    """`score`, returning (table path, {"ok", "failed", "skipped"} night counts of this run)."""
    from sleepedge.commands.score import DEFAULT_FORMATS, _console, _load_model, _out_stem

    try:
        import distributed  # noqa: F401
        import pyarrow  # noqa: F401
    except ModuleNotFoundError as ex:
        raise CohortError(f"cohort scoring needs {ex.name}, which is not installed here; install it with: {INSTALL}") from None
    from runtime.sinks import check_writable, parse_formats
    from sleepedge.channels import parse_overrides

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = check_writable(Path(out)).resolve()
    fmts = parse_formats(formats or DEFAULT_FORMATS)
    overrides = parse_overrides(list(channel or []))
    recordings = discover(paths, out)
    bundle = _load_model(model)                        # a bad model fails here, before any cluster
    model_path = str(bundle.source.resolve())          # the path `_load_model` resolved --model to
    msha = model_sha256(bundle)
    used: set[str] = set()
    stems = {r: _out_stem(r, used) for r in recordings}
    (out / PARTS).mkdir(exist_ok=True)

    # resume: (file, size, mtime, model) of an ok part with its epoch part and files -> skipped unread
    done = {}
    if not force:
        for key, row in load_parts(out).items():
            if row.get("model_sha256") == msha and _scored(out, key, row, fmts):
                done[(row.get("file"), row.get("size_bytes"), row.get("mtime_ns"))] = row
    jobs, counts = [], {"ok": 0, "failed": 0, "skipped": 0}
    for rec in recordings:
        try:
            st = rec.stat()
            size, mtime = int(st.st_size), int(st.st_mtime_ns)
        except OSError:
            size = mtime = None
        prev = done.get((str(rec), size, mtime))
        if prev is not None and prev.get("stem") == stems[rec]:
            counts["skipped"] += 1
            continue
        jobs.append({"file": str(rec), "stem": stems[rec],
                     "out": str(out), "size_bytes": size, "mtime_ns": mtime, "model_path": model_path,
                     "model_id": bundle.name, "model_sha256": msha, "formats": list(fmts), "overrides": overrides,
                     "force": bool(force), "device": device})

    if console is None:
        console = _console()
    owned = own_client = None        # what this call started (and stops): a LocalCluster and/or a Client
    bar = None
    try:
        if jobs:
            if client is None:
                client, owned = _start_cluster(workers, scheduler)
                own_client = client
            from distributed import as_completed

            bar = _Bar(len(recordings), quiet, console)
            bar.update(counts)
            # task key "sleepedge-night-<8 hex>-<stem>": one task group ("sleepedge-night"), so the
            # scheduler queues the nights and hands each worker one at a time (a lost worker loses one)
            futures = {client.submit(score_night_task, job, key=f"{TASK_PREFIX}{os.urandom(4).hex()}-{job['stem']}",
                                     pure=False, retries=1): job for job in jobs}
            for fut in as_completed(futures):
                job = futures[fut]
                try:
                    row = fut.result()
                except Exception as ex:  # noqa: BLE001 - e.g. KilledWorker: the night killed its workers
                    row = _lost_row(job, ex)
                    _write_part(out, row)
                if row.get("skipped"):
                    counts["skipped"] += 1
                elif row.get("status") == "ok":
                    counts["ok"] += 1
                else:
                    counts["failed"] += 1
                    err = row.get("error") or ""
                    console.print(f"error: {err}" if row["name"] in err else f"error: {row['file']}: {err}", style="red")
                bar.update(counts)
    finally:
        if bar is not None:
            bar.close()
        if own_client is not None:
            own_client.close()      # a --scheduler cluster is the user's: only our client goes
        if owned is not None:
            owned.close()
        table = assemble(out)       # also after Ctrl-C: every finished night is in the table
    # one line, also with --quiet (batch logs)
    console.print(f"{len(recordings)} recording(s): {counts['ok']} scored, {counts['skipped']} skipped "
                  f"(already scored with this model), {counts['failed']} failed -> {table}, {out / EPOCHS}")
    return table, counts


def _lost_row(job: dict, ex: BaseException) -> dict:
    msg = " ".join(f"{type(ex).__name__}: {ex}".split())
    return _job_row(job, night=_path_key(job["file"], job["model_sha256"]),
                    error=f"the night did not finish on the cluster ({msg})", finished_utc=_utc())
