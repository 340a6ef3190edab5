"""`sleepedge export`: checkpoint(s) -> gated model bundle(s).

    sleepedge export CKPT -o model.sleepedge [--trt] [--fp16] [--int8] [--opset 18]
    sleepedge export --all CKPT_DIR -o OUT_DIR            (one bundle per checkpoint)

Imports nothing heavy at module level: torch, onnx and the exporter load inside the command.
A bundle is written only when the validation gate passes; `--all` goes on past a failing
checkpoint, reports its one-line reason and exits non-zero at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sleepedge.errors import ExportError, SleepEdgeError


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _fail(err: SleepEdgeError) -> None:
    typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
    raise typer.Exit(err.exit_code)


def register(app: typer.Typer) -> None:
    """Attach `export` to the main app."""

    @app.command("export")
    def export_cmd(
        src: Annotated[Path, typer.Argument(exists=True, help="Checkpoint (.pt) written by training, or a folder of them with --all.")],
        out: Annotated[Path, typer.Option("-o", "--out", help="Bundle to write (a directory; a .zip file when it ends in .zip), or the output folder with --all.")],
        all_: Annotated[bool, typer.Option("--all", help="Export every *.pt/*.pth/*.ckpt in SRC into OUT (one bundle each).")] = False,
        trt: Annotated[bool, typer.Option("--trt", help="Also build TensorRT engines (needs TensorRT and the target GPU).")] = False,
        fp16: Annotated[bool, typer.Option("--fp16", help="fp16 graphs (ONNX), or fp16 TensorRT engines with --trt; gated on stage agreement.")] = False,
        int8: Annotated[bool, typer.Option("--int8", help="Add dynamically quantised int8 graphs for CPU; their accuracy cost goes in the manifest.")] = False,
        opset: Annotated[int, typer.Option("--opset", min=18, max=21, help="ONNX opset (18-21; the dynamo exporter starts at 18).")] = 18,
        rollout_steps: Annotated[int, typer.Option("--rollout-steps", min=500, help="Length of the step-graph state rollout checked against torch.")] = 512,
        gate_epochs: Annotated[int, typer.Option("--gate-epochs", min=16, help="Epochs of the simulated night the gate scores.")] = 240,
    ) -> None:
        """Export a trained model to a bundle (ONNX graphs + manifest), gated on parity with torch."""
        try:
            if trt:  # one line, before loading torch or anything slow
                from export.tensorrt import import_tensorrt

                import_tensorrt()
            kw = dict(opset=opset, fp16=fp16, int8=int8, trt=trt, rollout_steps=rollout_steps, gate_epochs=gate_epochs)
            if all_:
                if not src.is_dir():
                    raise ExportError(f"--all {src}: expected a folder of checkpoints; drop --all to export one file")
                _export_many(src, out, kw)
            else:
                if src.is_dir():
                    raise ExportError(f"{src} is a folder; pass one checkpoint file, or add --all to export every checkpoint in it")
                _export_one(src, out, kw)
        except SleepEdgeError as err:
            _fail(err)


def _export_one(src: Path, out: Path, kw: dict) -> None:
    from rich.console import Console

    from export.exporter import export_checkpoint

    console = Console(stderr=True)
    with console.status(f"exporting {src.name}") as status:
        res = export_checkpoint(src, out, progress=lambda msg: status.update(f"{src.name}: {msg}"), **kw)
    gate = res.manifest["gate"]
    typer.echo(
        f"wrote {res.out} ({_human(res.size_bytes)}): gate passed, max |Δ| {gate['max_abs_diff']:.2e} "
        f"(tolerance {gate['tolerance']:g}, {gate['rollout_steps']}-step rollout), {res.seconds:.0f} s"
    )
    for name, v in gate.get("variants", {}).items():
        typer.echo(f"  {name}: stage agreement {v['stage_agreement']:.2%}, max stage prob diff {v['max_stage_prob_diff']:.3g}")
    for key, eng in res.manifest.get("engines", {}).items():
        typer.echo(f"  TensorRT {key}: {eng['file']} (TensorRT {eng['tensorrt']}, {eng['gpu']})")
    notice = res.manifest["provenance"].get("notice")
    if notice:
        typer.secho(f"note: {notice}", fg=typer.colors.YELLOW)


def _export_many(src: Path, out: Path, kw: dict) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from export.exporter import export_all, find_checkpoints

    ckpts = find_checkpoints(src)
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("export", total=len(ckpts))
        items = export_all(
            src, out, on_start=lambda ck: bar.update(task, description=f"exporting {ck.name}"),
            on_done=lambda _item: bar.advance(task), **kw,
        )
    table = Table(title=f"sleepedge export --all {src}")
    for col in ("name", "size", "parity max|Δ|", "time", "status"):
        table.add_column(col)
    for it in items:
        if it.ok:
            table.add_row(it.checkpoint.stem, _human(it.result.size_bytes), f"{it.result.parity:.2e}",
                          f"{it.seconds:.0f} s", "ok")
        else:
            table.add_row(it.checkpoint.stem, "-", "-", f"{it.seconds:.0f} s", f"FAILED: {it.error}")
    Console(width=max(120, Console().width), soft_wrap=True).print(table)
    failed = [it for it in items if not it.ok]
    typer.echo(f"{len(items) - len(failed)} of {len(items)} checkpoints exported to {out}")
    if failed:
        for it in failed:
            typer.secho(f"error: {it.checkpoint.name}: {it.error}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)
