"""The `sleepedge` command line (Typer).

Each subsystem registers its commands from `sleepedge/commands/<name>.py`; those modules
import nothing heavy at module level (no torch, no onnxruntime): every command imports its
subsystem inside its function, so `sleepedge score` never loads torch.

Domain errors (`SleepEdgeError`) become one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import os
import sys

# numpy's OpenBLAS runs single-threaded in the CLI (set before numpy loads): preprocessing
# multiplies tall-skinny blocks (sleepedge.dsp) where OpenBLAS threads cost more than they
# bring (4x slower on a busy 2-core machine); ONNX Runtime owns the cores (--threads).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from typing import Annotated

import typer

from sleepedge import __version__
from sleepedge.errors import SleepEdgeError

app = typer.Typer(
    name="sleepedge",
    help="Self-supervised sleep staging, from training to a bedside device.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,   # click's plain help formatter: `--help` without importing rich's markdown/help renderer
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sleepedge {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[   # plain bool: typer skips its pydantic coercion for a bool flag (import ~0.1 s on --help)
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """sleepedge: score sleep epoch by epoch, offline or live, on CPU, CUDA or Jetson."""


def _register() -> None:
    from sleepedge.commands import cohort as cohort_cmd
    from sleepedge.commands import export as export_cmd
    from sleepedge.commands import info as info_cmd
    from sleepedge.commands import score as score_cmd
    from sleepedge.commands import simulate as simulate_cmd
    from sleepedge.commands import train as train_cmd

    for module in (info_cmd, simulate_cmd, score_cmd, cohort_cmd, export_cmd, train_cmd):
        module.register(app)


_register()


_TORCH_EXTRA = "install it with: pip install 'torch==2.13.0' && pip install 'sleepedge[train,export]'"
_EXTRAS = {
    "torch": _TORCH_EXTRA, "onnx": _TORCH_EXTRA, "onnxscript": _TORCH_EXTRA,
    "pylsl": "install it with: pip install 'sleepedge[lsl]'",
    **dict.fromkeys(("dask", "distributed", "pyarrow", "pandas"), "install it with: pip install 'sleepedge[cohort]'"),
}


def run() -> None:
    """Console-script entry point: domain errors -> one line + exit code, no traceback."""
    try:
        code = app(standalone_mode=False)   # click returns (not raises) a command's typer.Exit(code) here
        if isinstance(code, int) and code:
            sys.exit(code)
    except SleepEdgeError as err:
        typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
        sys.exit(err.exit_code)
    except typer.Exit as ex:
        sys.exit(ex.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except ModuleNotFoundError as ex:
        # a command whose extra is not installed (the bedside runtime has no torch, onnx, pylsl)
        extra = _EXTRAS.get((ex.name or "").split(".")[0])
        if extra is None:
            raise
        typer.secho(f"error: this command needs {ex.name}, which is not installed here; {extra}", err=True,
                    fg=typer.colors.RED)
        sys.exit(2)
    except Exception as ex:
        # usage errors of click (or of the click that Typer vendors): message + exit code, no traceback
        if callable(getattr(ex, "show", None)) and isinstance(getattr(ex, "exit_code", None), int):
            ex.show()
            sys.exit(ex.exit_code)
        raise


if __name__ == "__main__":
    run()
