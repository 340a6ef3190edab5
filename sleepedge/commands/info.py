"""`sleepedge info FILE.edf`: what is in a recording, and is it usable for scoring.

Shows duration, start, record layout, every channel with its role / rate / unit, the
annotations found, EDF+D gaps, the reader's warnings, and a per-role quality summary: the
fraction of 30-s epochs the shared causal preprocessing (`sleepedge.preprocess`) flags as
NaN / flat / clipped / disconnected / gap. Imports nothing heavy (no torch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from sleepedge.contract import EPOCH_S


def _fmt_duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _quality(reader, roles_map) -> dict[str, Any]:
    """Per-role fraction of complete 30-s epochs carrying each quality flag."""
    from sleepedge.contract import QUALITY_FLAGS
    import numpy as np

    from sleepedge.preprocess import CausalPreprocessor, quality_summary, usable_rates

    header = reader.header
    primary = dict(roles_map.primary)
    rates, unusable = usable_rates({role: header.signal(label).fs_hz for role, label in primary.items()})
    primary = {role: label for role, label in primary.items() if role in rates}
    if not primary:
        return {"n_epochs": 0, "roles": {}, "unusable_roles": unusable}
    pre = CausalPreprocessor(rates)
    for onset, dur in header.gaps:
        pre.mark_gap(onset, onset + dur)
    qualities = []   # only the flags: a long night's epoch data is never held (EDF+D: up to 30 days)
    label_role = {label: role for role, label in primary.items()}
    for _, block in reader.iter_epochs(list(primary.values()), n_epochs_per_block=20):
        qualities.extend(e.quality for e in pre.push({label_role[label]: x for label, x in block.items()}))
    quality = np.stack(qualities) if qualities else np.zeros((0, len(pre.roles)), np.uint8)
    counts = quality_summary(quality, pre.roles)
    n = len(qualities)
    out: dict[str, Any] = {"n_epochs": n, "roles": {}, "unusable_roles": unusable}
    for role in pre.roles:
        out["roles"][role] = {
            name: (counts[role][name] / n if n else 0.0)
            for name in QUALITY_FLAGS if name != "missing"
        }
    return out


def describe_file(path: Path, overrides: list[str] | None = None, quality: bool = True,
                  max_annotations: int = 5) -> dict[str, Any]:
    """Everything `info` prints, as a JSON-able dict (also used by --json)."""
    import warnings as _warnings

    from sleepedge.channels import assign_roles, parse_overrides
    from sleepedge.edf import EDFQuirkWarning, open_edf

    with _warnings.catch_warnings():
        # the quirks are reported in the output's "warnings" list instead
        _warnings.simplefilter("ignore", EDFQuirkWarning)
        reader = open_edf(path)
    with reader:
        h = reader.header
        roles = assign_roles(h.labels, parse_overrides(overrides or []))
        role_of_label = {label: role for role, label in roles.primary.items()}
        candidate_role = {lab: role for role, labs in roles.candidates.items() for lab in labs}
        fmt = "EDF+D" if h.discontinuous and h.edf_plus else ("EDF+C" if h.edf_plus else "EDF")
        info: dict[str, Any] = {
            "file": str(path),
            "format": fmt,
            "reader": reader.backend,
            "start": h.start.isoformat(),
            "duration_s": h.duration_s,
            "n_records": h.n_records,
            "record_duration_s": h.record_duration_s,
            "recording": h.recording,
            "n_epochs_30s": int(h.duration_s // EPOCH_S),
            "channels": [
                {
                    "index": s.index, "label": s.label,
                    "role": role_of_label.get(s.label) or candidate_role.get(s.label),
                    "primary": s.label in role_of_label,
                    "fs_hz": s.fs_hz, "unit": s.unit, "to_uv": s.to_uv, "n_samples": s.n_samples,
                    "physical_min": s.physical_min, "physical_max": s.physical_max,
                }
                for s in h.signals
            ],
            "roles": {"primary": roles.primary, "candidates": roles.candidates,
                      "missing": roles.missing, "overridden": roles.overridden},
            "annotations": {
                "count": len(h.annotations),
                "span_s": max((a.onset_s + a.duration_s for a in h.annotations), default=0.0),
                "first": [{"onset_s": a.onset_s, "duration_s": a.duration_s, "text": a.text}
                          for a in h.annotations[:max_annotations]],
            },
            "gaps": [{"onset_s": o, "duration_s": d} for o, d in h.gaps],
            "unusable": dict(h.unusable),  # label -> why the header makes the signal unusable (left out)
            "warnings": list(h.warnings),
        }
        if quality and h.signals:
            info["quality"] = _quality(reader, roles)
    return info


def _print_rich(info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape  # labels, paths, annotations may hold "[/x]": text, never markup
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    console.print(f"[bold]{escape(info['file'])}[/bold]")
    console.print(
        f"{info['format']} ({info['reader']} reader) | start {info['start']} | duration "
        f"{_fmt_duration(info['duration_s'])} ({info['duration_s']:g} s, {info['n_epochs_30s']} epochs of 30 s) | "
        f"{info['n_records']} records x {info['record_duration_s']:g} s"
    )
    if info["recording"]:
        console.print(f"recording: {escape(info['recording'])}")

    if info["channels"]:
        t = Table(title=f"{len(info['channels'])} channels", title_justify="left")
        for col in ("#", "label", "role", "fs (Hz)", "unit", "samples", "physical range"):
            t.add_column(col, justify="right" if col in ("#", "fs (Hz)", "samples") else "left")
        for c in info["channels"]:
            role = c["role"] or ""
            if role and c["primary"]:
                role = f"[bold green]{role}[/bold green] (primary)"
            t.add_row(str(c["index"]), escape(c["label"]), role, f"{c['fs_hz']:g}", escape(c["unit"]),
                      str(c["n_samples"]), f"{c['physical_min']:g} .. {c['physical_max']:g}")
        console.print(t)

    ann = info["annotations"]
    if not info["channels"]:
        console.print(f"no signals: annotation-only EDF+ (a scoring / hypnogram file); annotations span "
                      f"{_fmt_duration(ann['span_s'])} ({ann['span_s']:g} s)")
    else:
        _print_roles(console, info)
    console.print(f"annotations: {ann['count']}")
    _print_tail(console, info)


def _print_roles(console, info: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    q = info.get("quality", {})
    t = Table(title="roles" + (f" (quality over {q.get('n_epochs', 0)} epochs of 30 s)" if q else ""),
              title_justify="left")
    t.add_column("role")
    t.add_column("channel")
    t.add_column("alternatives")
    flags = ("nan", "flat", "clipped", "disconnected", "gap")
    if q:
        for f in flags:
            t.add_column(f, justify="right")
    roles = info["roles"]
    for role, cands in roles["candidates"].items():
        label = roles["primary"].get(role)
        if label is None:
            row = [role, "[red]MISSING[/red]", ""] + ([""] * len(flags) if q else [])
        else:
            alt = ", ".join(c for c in cands if c != label)
            how = " (override)" if role in roles["overridden"] else ""
            row = [role, escape(label + how), escape(alt[:60] + ("..." if len(alt) > 60 else ""))]
            if q:
                fr = q["roles"].get(role, {})
                row += [f"{100 * fr.get(f, 0.0):.0f}%" for f in flags]
        t.add_row(*row)
    console.print(t)


def _print_tail(console, info: dict[str, Any]) -> None:
    from rich.markup import escape

    ann = info["annotations"]
    for a in ann["first"]:
        dur = f" ({a['duration_s']:g} s)" if a["duration_s"] else ""
        console.print(f"  {a['onset_s']:>10.3f} s{dur}  {escape(a['text'])}")
    if ann["count"] > len(ann["first"]):
        console.print(f"  ... {ann['count'] - len(ann['first'])} more")
    if info["gaps"]:
        console.print(f"[yellow]EDF+D gaps: {len(info['gaps'])}[/yellow]")
        for g in info["gaps"][:10]:
            console.print(f"  {g['duration_s']:g} s at {g['onset_s']:g} s (read as NaN)")
    for label, why in info.get("unusable", {}).items():
        console.print(f"[red]unusable:[/red] {escape(label)}: {escape(why)} (left out)")
    for role, why in info.get("quality", {}).get("unusable_roles", {}).items():
        console.print(f"[yellow]role {role}:[/yellow] {escape(why)}")
    for w in info["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {escape(w)}")


def register(app: typer.Typer) -> None:
    """Attach `sleepedge info` to the main app."""

    @app.command("info")
    def info(
        path: Annotated[Path, typer.Argument(help="EDF/EDF+ recording (or EDF+ hypnogram) to describe.",
                                             dir_okay=True, metavar="FILE.edf")],
        channel: Annotated[Optional[list[str]], typer.Option(
            "--channel", "-c", help="Override a role: ROLE=LABEL (repeatable), e.g. --channel EEG=C3-M2.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
        quality: Annotated[bool, typer.Option(
            "--quality/--no-quality", help="Compute the per-role epoch quality summary (reads the signals).")] = True,
        max_annotations: Annotated[int, typer.Option(
            "--annotations", min=0, help="How many annotations to list.")] = 5,
    ) -> None:
        """Describe a recording: layout, channels and roles, annotations, gaps, quality."""
        result = describe_file(path, channel, quality=quality, max_annotations=max_annotations)
        if as_json:
            typer.echo(json.dumps(result, indent=2, ensure_ascii=False))
        else:
            _print_rich(result)
