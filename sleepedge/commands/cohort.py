"""`sleepedge cohort score`: a whole cohort on a Dask cluster, one Parquet table (issue 15).

Imports nothing heavy at module level (no dask, no pyarrow): `sleepedge --help` stays fast and
the bedside runtime never needs the `[cohort]` extra. The engine is `sleepedge/cohort.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sleepedge.commands.score import DEFAULT_FORMATS, ChannelOpt, ModelOpt


def register(app: typer.Typer) -> None:
    """Attach the `cohort` group (`cohort score`)."""
    cohort_app = typer.Typer(name="cohort", no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                             help="Score whole cohorts on a Dask cluster (needs: pip install 'sleepedge[cohort]').")
    app.add_typer(cohort_app, name="cohort")

    @cohort_app.command("score")
    def score(
        recordings: Annotated[list[str], typer.Argument(
            help="EDF files, folders (searched recursively for *.edf / *.EDF) or globs ('data/**/*.edf').")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: per-night files + cohort.parquet + epochs.parquet/.")] = Path("sleepedge-cohort"),
        model: ModelOpt = None,
        workers: Annotated[Optional[int], typer.Option("--workers", "-w", min=1, help="LocalCluster worker processes (one thread each); default: one per core.")] = None,
        scheduler: Annotated[Optional[str], typer.Option("--scheduler", metavar="tcp://HOST:PORT", help="A running Dask scheduler (SLURM via dask-jobqueue, Kubernetes...) instead of a LocalCluster.")] = None,
        channel: ChannelOpt = None,
        formats: Annotated[str, typer.Option("--formats", "--format", "-f", help="Per-night outputs, comma list of tsv,csv,edf,json,png (as `sleepedge score`).")] = DEFAULT_FORMATS,
        force: Annotated[bool, typer.Option("--force", help="Rescore nights already scored with this model.")] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar (batch logs): errors and the summary only.")] = False,
    ) -> None:
        """Score every night of a cohort (resumable, failure-isolated) into OUT/cohort.parquet."""
        from sleepedge.cohort import CohortError, run

        if workers is not None and scheduler:
            raise CohortError("give --workers (a LocalCluster here) or --scheduler tcp://HOST:PORT (a running cluster), not both")
        table, counts = run(recordings, out, model=model, workers=workers, scheduler=scheduler, channel=channel,
                            formats=formats, force=force, quiet=quiet)
        typer.echo(str(table))
        if counts["failed"]:
            raise typer.Exit(1)
