"""`sleepedge score`, `sleepedge stream`, `sleepedge demo`: run a bundle on recordings.

Nothing heavy at module level and NO torch anywhere on this path: the runtime is ONNX Runtime
(+ TensorRT when present). Outputs for a recording `NIGHT.edf` go to `OUT/NIGHT.sleepedge.<fmt>`
(the `.sleepedge` infix means an `edf` output can never overwrite the input EDF).
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

DEFAULT_FORMATS = "tsv,csv,edf,json,png"  # all of them (the issue: default all)
OUT_INFIX = ".sleepedge"

ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", metavar="BUNDLE|NAME",
    help="Bundle (dir or .zip) or the name of an embedded bundle (e.g. synthsleepnet-tiny-sim); default: the embedded default model.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder (created if needed).")]
FormatOpt = Annotated[str, typer.Option("--format", "-f", help="Comma list of tsv,csv,edf,json,png.")]
ChannelOpt = Annotated[Optional[list[str]], typer.Option("--channel", "-c", help="ROLE=LABEL override (repeatable), e.g. EEG=C4-M1; ROLE=none leaves a role out (e.g. EOG=none: EEG-only); ROLE=INDEX for an LSL stream without labels.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | tensorrt")]
ThreadsOpt = Annotated[int, typer.Option("--threads", min=1, help="ONNX Runtime intra-op threads.")]
ScoreThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", min=1, help="ONNX Runtime intra-op threads (default: every core, batch scoring).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Keep epochs already in OUT's TSV/CSV, write only the rest.")]


def _console(stderr: bool = True):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True, markup=False)  # paths/labels may hold [..]


def _load_model(model: str | Path | None):
    from sleepedge.bundle import load_bundle, resolve_model
    from sleepedge.errors import BundleError

    path = resolve_model(model)
    if model is None and not path.exists():
        raise BundleError(
            f"no default model at {path}: the embedded tiny bundle is built by the release step "
            "(`sleepedge export` writes one); pass --model BUNDLE"
        )
    return load_bundle(path)


def trained_on(bundle) -> str:
    """One line naming the data the model was trained on (every run prints it); a simulated
    model whose data text does not say so is labelled SIMULATED."""
    prov = bundle.manifest.get("provenance") or {}
    head = " ".join(str(prov.get("data") or "unknown data").split()).split(";")[0]
    if bundle.simulated and "SIMULATED" not in head.upper():
        head = f"SIMULATED data: {head}"
    return f"model {bundle.name}: trained on {head}"


def _notice(bundle) -> str:
    """The provenance notice shown with (and written into) every output: a simulated model's only."""
    return bundle.notice if bundle.simulated else ""


def _out_stem(path: Path, used: set[str]) -> str:
    stem = f"{path.stem}{OUT_INFIX}"
    k = 2
    while stem in used:
        stem = f"{path.stem}_{k}{OUT_INFIX}"
        k += 1
    used.add(stem)
    return stem


def _partial_night(source: str, start, bundle, engine_desc: str):
    from runtime.scorer import NightResult, manifest_summary

    summary = manifest_summary(bundle)

    def factory(epochs, roles_used=None, missing=(), extra=(), respiratory=(True, "")):
        return NightResult(source=source, epochs=list(epochs), start=start, roles_used=dict(roles_used or {}),
                           missing_roles=list(missing), extra_roles=list(extra), engine=engine_desc,
                           manifest_summary=summary, notice=_notice(bundle),
                           respiratory_ok=respiratory[0], respiratory_reason=respiratory[1])
    return factory


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _summary_row(name: str, night) -> list[str]:
    from runtime.sinks import night_report

    rep = night_report(night)
    st = rep["sleep_stats"]
    tst = st.get("tst_min")
    ahi = rep["ahi_estimate"]["value"]
    pct = rep["stage_percent"]
    n = rep["n_epochs"]
    flagged = rep["quality"]["epochs_with_any_flag"]
    missing = f" (missing {','.join(night.missing_roles)})" if night.missing_roles else ""
    return [
        name, str(n), f"{int(tst // 60)}h{int(tst % 60):02d}" if tst is not None else "-",
        f"{st['se_pct']:.0f}%" if st.get("se_pct") is not None else "-",
        f"{ahi:.1f}" if ahi is not None else "-",
        " ".join(f"{k}{v:.0f}" for k, v in pct.items()),
        f"{flagged}/{n} flagged{missing}",
    ]


def _print_table(rows: list[list[str]], notice: str) -> None:
    from rich.table import Table

    table = Table(title="sleepedge score", caption=notice or None)
    for col in ("file", "epochs", "TST", "SE", "AHI est.", "stage %", "quality"):
        wide = col in ("file", "stage %", "quality")
        table.add_column(col, no_wrap=not wide, overflow="fold", min_width=len(col) if not wide else None)
    for row in rows:
        table.add_row(*row)
    _console(stderr=False).print(table)


class _NoProgress:
    """The part of rich.progress.Progress that score_files uses, doing nothing (--quiet)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass

    def remove_task(self, *a, **k):
        pass


def score_night(rec: Path, bundle, engine, out: Path, stem: str, fmts, overrides, *, resume: bool = False,
                on_progress=None, state: dict | None = None):
    """Score ONE recording into `out/<stem>.<fmt>`: the per-night path of `sleepedge score` and of
    `sleepedge cohort score` (same code, same files). Returns (night, {format: path}).

    Offline: TSV/CSV lines flushed per epoch (a kill loses nothing), fsynced every 256 epochs
    (~0.3 s of scoring), EDF+/JSON rewritten every 4 h of recording. `state["writer"]` is the
    night's NightWriter once the file is open (the caller reports what it saved on an error);
    on any exception the writer is closed before it propagates."""
    from runtime.scorer import score_recording
    from runtime.sinks import NightWriter

    notice = _notice(bundle)
    state = {} if state is None else state

    def on_header(header):
        state["writer"] = NightWriter(out, stem, fmts, notice=notice, resume=resume, every=480,
                                      start=header.start, fsync_every=256)
        factory = _partial_night(str(rec), header.start, bundle, engine.describe())
        state["factory"] = lambda epochs: factory(epochs, respiratory=state.get("respiratory", (True, "")))

    def on_scorer(scorer):
        state["respiratory"] = (scorer.respiratory_ok, scorer.respiratory_reason)

    try:
        night = score_recording(rec, bundle, overrides, engine, on_header=on_header, on_scorer=on_scorer,
                                on_epoch=lambda r: state["writer"].add(r, state["factory"]), on_progress=on_progress)
        return night, state["writer"].finish(night)
    except BaseException:
        if state.get("writer") is not None:
            state["writer"].close()
        raise


def score_files(recordings, model=None, out=Path("sleepedge-out"), formats=DEFAULT_FORMATS, channel=None,
                device="auto", threads=None, resume=False, quiet=False) -> int:
    """Score every recording; returns the number that failed (each reported on one line)."""
    from runtime.session import make_sessions
    from runtime.sinks import check_writable, parse_formats
    from sleepedge.channels import parse_overrides
    from sleepedge.errors import SleepEdgeError

    fmts = parse_formats(formats)
    overrides = parse_overrides(channel or [])
    out = check_writable(Path(out))
    bundle = _load_model(model)
    engine = make_sessions(bundle, device=device, threads=threads or os.cpu_count() or 1)
    err = _console()
    err.print(f"model {bundle.name} ({bundle.source}); {engine.describe()}")
    err.print(trained_on(bundle))
    notice = _notice(bundle)
    if notice:
        err.print(f"notice: {notice}", style="yellow")
    rows, failed, used = [], 0, set()
    no_ahi: dict[str, list[str]] = {}   # reason -> files: printed once under the table
    if quiet:   # no progress bar: rich.progress is not even imported
        progress = _NoProgress()
    else:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                            TimeRemainingColumn(), console=err, transient=True)
    with progress:
        for rec in recordings:
            rec = Path(rec)
            state: dict = {}
            stem = _out_stem(rec, used)
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")  # recorded here and shown as one line each below
                    task = progress.add_task(rec.name, total=1.0)
                    try:
                        night, paths = score_night(
                            rec, bundle, engine, out, stem, fmts, overrides, resume=resume, state=state,
                            on_progress=lambda done, total, task=task: progress.update(
                                task, completed=done / total if total else 1.0))
                    finally:
                        progress.remove_task(task)
                        for w in caught:  # also when scoring failed: the quirk may explain it
                            err.print(f"warning: {w.message}", style="yellow")
                rows.append(_summary_row(rec.name, night))
                if not night.respiratory_ok:
                    no_ahi.setdefault(night.respiratory_reason, []).append(rec.name)
                if not quiet:
                    err.print(f"{rec.name}: {len(night.epochs)} epochs -> {', '.join(str(p) for p in paths.values())}")
                    if night.missing_roles:
                        err.print(f"{rec.name}: missing roles {night.missing_roles} (presence mask 0)")
            except SleepEdgeError as ex:
                failed += 1
                writer = state.get("writer")
                saved = writer.saved() if writer is not None else ""
                err.print(f"error: {rec}: {ex}" + (f" (saved: {saved})" if saved else ""), soft_wrap=True, style="red")
    if rows:
        _print_table(rows, notice)
        for reason, names in no_ahi.items():
            err.print(f"AHI est. '-' ({', '.join(names)}): apnea/hypopnea not reported: {reason}")
    return failed


def stream_source(bundle, source, out: Path, fmts, engine, resume=False, max_epochs=None, quiet=False,
                  stem="stream.sleepedge") -> int:
    """Score a live source epoch by epoch, printing and appending each epoch. Returns #epochs."""
    from runtime.scorer import StreamingScorer
    from runtime.sinks import NightWriter, reported
    from sleepedge.errors import SleepEdgeError

    scorer = StreamingScorer.for_source(bundle, source, engine)
    notice = _notice(bundle)
    writer = NightWriter(out, stem, fmts, notice=notice, resume=resume, every=20, start=source.start)
    factory = _partial_night(getattr(source, "describe", lambda: "stream")(), source.start, bundle, engine.describe())
    roles_used = {r: source.labels[r] for r in scorer.pre.roles}

    def night_of(epochs):
        return factory(epochs, roles_used, scorer.missing_roles, scorer.extra_roles,
                       (scorer.respiratory_ok, scorer.respiratory_reason))

    out_console = _console(stderr=False)
    err = _console()
    err.print(f"{source.describe()}; {scorer.describe()}; {engine.describe()}")
    err.print(trained_on(bundle))
    if notice:
        err.print(f"notice: {notice}", style="yellow")
    if resume and writer.n_existing:
        err.print(f"resume: {writer.n_existing} epochs already in {out}; re-running the model state up to there")
        if hasattr(source, "fast_until_s"):
            source.fast_until_s = writer.n_existing * 30.0
    complete = True
    try:
        for chunk in source:
            for res in scorer.feed(chunk):
                writer.add(res, night_of)
                if not quiet and res.index >= writer.n_existing:
                    p = max(res.probs)
                    resp = (f"apnea {res.p_apnea:.2f}  hypopnea {res.p_hypopnea:.2f}  "
                            if reported(res.p_apnea) and reported(res.p_hypopnea) else "")  # else: said once above
                    out_console.print(
                        f"epoch {res.index:5d}  {_hms(res.onset_s)}  {res.stage_name:<3} p={p:.2f}  "
                        f"{resp}{res.quality_str()}  {res.latency_ms:.1f} ms", soft_wrap=True)
                if max_epochs is not None and len(writer.epochs) >= max_epochs:
                    return len(writer.epochs)
        return len(writer.epochs)
    except (SleepEdgeError, KeyboardInterrupt):
        complete = False
        raise
    finally:
        try:
            paths = writer.finish(night_of(writer.epochs), complete=complete)
        finally:
            writer.close()
        err.print(f"saved {len(writer.epochs)} epochs: {', '.join(str(p) for p in paths.values() if p.exists())}")


def register(app: typer.Typer) -> None:
    """Attach `score`, `stream` and `demo`."""

    @app.command()
    def score(
        recordings: Annotated[list[Path], typer.Argument(help="EDF/EDF+ recordings (one or more).")],
        model: ModelOpt = None,
        out: OutOpt = Path("sleepedge-out"),
        format: FormatOpt = DEFAULT_FORMATS,
        channel: ChannelOpt = None,
        device: DeviceOpt = "auto",
        threads: ScoreThreadsOpt = None,
        resume: ResumeOpt = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar / per-file lines.")] = False,
    ) -> None:
        """Score whole recordings offline (epoch by epoch with the streaming model state)."""
        failed = score_files(recordings, model, out, format, channel, device, threads, resume, quiet)
        if failed:
            _console().print(f"{failed} of {len(recordings)} recording(s) failed", style="red")
            raise typer.Exit(1)

    @app.command()
    def stream(
        edf: Annotated[Optional[Path], typer.Option("--edf", help="Replay this EDF as a live stream.")] = None,
        lsl: Annotated[Optional[str], typer.Option("--lsl", help="Lab Streaming Layer stream name.")] = None,
        speed: Annotated[float, typer.Option("--speed", min=0.0, help="EDF replay speed: 1 real time, N x, 0 as fast as possible.")] = 1.0,
        model: ModelOpt = None,
        out: OutOpt = Path("sleepedge-out"),
        format: FormatOpt = "tsv,edf,json",
        channel: ChannelOpt = None,
        device: DeviceOpt = "auto",
        threads: ThreadsOpt = 1,
        timeout_s: Annotated[float, typer.Option("--timeout-s", min=0.1, help="LSL: give up after this many seconds without samples.")] = 10.0,
        chunk_s: Annotated[float, typer.Option("--chunk-s", min=0.01, help="Chunk length pushed to the scorer.")] = 1.0,
        epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Stop after this many epochs.")] = None,
        name: Annotated[Optional[str], typer.Option("--name", help="Output file stem (default: EDF stem or LSL name).")] = None,
        resume: ResumeOpt = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not print each epoch.")] = False,
    ) -> None:
        """Score a live LSL stream or a replayed EDF epoch by epoch, printing and saving each epoch.

        Each epoch is appended to the TSV/CSV (flushed + fsynced) as soon as it is scored; the
        EDF+/JSON are rewritten atomically every 20 epochs and at the end (Ctrl-C, SIGTERM,
        a stalled stream: what was scored stays on disk)."""
        from runtime.session import make_sessions
        from runtime.sinks import check_writable, parse_formats
        from sleepedge.channels import parse_overrides
        from sleepedge.errors import StreamError

        if (edf is None) == (lsl is None):
            raise StreamError("sleepedge stream: give exactly one source, --edf FILE or --lsl NAME")
        if resume and lsl is not None:
            raise StreamError("--resume needs a replayable source (--edf); a live LSL stream cannot be re-run to rebuild the model state")
        fmts = parse_formats(format)
        overrides = parse_overrides(channel or [])
        out = check_writable(out)
        bundle = _load_model(model)
        engine = make_sessions(bundle, device=device, threads=threads)
        if edf is not None:
            from runtime.sources import EDFReplaySource

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")  # shown as one line each below
                source = EDFReplaySource(edf, overrides, speed=speed, chunk_s=chunk_s)
            for w in caught:
                _console().print(f"warning: {w.message}", style="yellow")
            stem = (name or edf.stem) + OUT_INFIX
        else:
            from runtime.sources import LSLSource

            source = LSLSource(lsl, overrides, timeout_s=timeout_s, chunk_s=chunk_s)
            stem = (name or lsl) + OUT_INFIX
        import signal

        def _term(signum, frame):  # `docker stop` / systemd: finish the outputs like Ctrl-C does
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, _term)
        try:
            stream_source(bundle, source, out, fmts, engine, resume=resume, max_epochs=epochs, quiet=quiet, stem=stem)
        finally:
            signal.signal(signal.SIGTERM, previous)

    @app.command()
    def demo(
        out: OutOpt = Path("sleepedge-demo"),
        hours: Annotated[float, typer.Option("--hours", min=0.05, max=12.0, help="Length of the simulated night.")] = 1.0,
        model: ModelOpt = None,
        seed: Annotated[int, typer.Option("--seed", help="Simulator seed.")] = 0,
    ) -> None:
        """Simulate a short night and score it with the default model (no data needed)."""
        from runtime.sinks import check_writable
        from sleepedge.simulate import simulate_night, write_night

        out = check_writable(out)
        bundle = _load_model(model)  # fail before simulating when there is no model
        err = _console()
        t0 = time.perf_counter()
        night = simulate_night(hours=hours, seed=seed)
        edf_path, truth_path = write_night(night, out / "demo-night.edf")
        err.print(f"simulated {hours:g} h night -> {edf_path} (true stages: {truth_path}; "
                  f"{time.perf_counter() - t0:.1f} s)")
        failed = score_files([edf_path], model, out, DEFAULT_FORMATS, None, "auto", None, False, False)
        if failed:
            raise typer.Exit(1)
        err.print(f"outputs in {out}/ (demo-night{OUT_INFIX}.tsv/.edf/.json/.png)")
        if bundle.simulated:
            err.print(f"notice: {bundle.notice}", style="yellow")
