"""CLI commands of this subsystem (owner fills in). Imports nothing heavy at module level."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the main app."""
