"""`sleepedge simulate`: write a simulated whole-night PSG (EDF+) and its ground truth (TSV).

Imports nothing heavy at module level; the simulator is imported inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer) -> None:
    """Attach `simulate` to the main app."""

    @app.command("simulate")
    def simulate(
        output: Annotated[Path, typer.Option("-o", "--output", help="EDF+ file to write; the truth goes to <stem>.tsv beside it.")],
        hours: Annotated[float, typer.Option("--hours", help="Night length in hours (when stages are sampled).")] = 8.0,
        seed: Annotated[int, typer.Option("--seed", help="Random seed: same seed, same bytes.")] = 0,
        ahi: Annotated[float, typer.Option("--ahi", help="Apneas + hypopneas per hour of sleep.")] = 5.0,
        montage: Annotated[str, typer.Option("--montage", help="default (9 channels) | sleep-edf | variants. EEG/EOG spectra: central and occipital derivations from the real Pz-Oz, frontal from Fpz-Cz, EOG from EOG horizontal.")] = "default",
        hypnogram: Annotated[Optional[Path], typer.Option("--hypnogram", exists=True, dir_okay=False,
                                                          help="Replay the stages of a real scoring (any format read_scoring reads).")] = None,
        spectra: Annotated[Optional[Path], typer.Option("--spectra", exists=True, dir_okay=False,
                                                        help="Replay a real band-power night (Sleep-EDF-78 .npz): its spectra and stages.")] = None,
        eeg_rate: Annotated[Optional[float], typer.Option("--eeg-rate", help="Rate (Hz, 100-512) of the EEG, EOG, EMG and ECG channels.")] = None,
        no_artefacts: Annotated[bool, typer.Option("--no-artefacts", help="Leave out line noise, movement, pops, clipping, disconnection.")] = False,
    ) -> None:
        """Simulate a whole-night PSG calibrated on real recordings (marked SIMULATED)."""
        from rich.console import Console

        from sleepedge.simulate import simulate_night, write_night

        console = Console(stderr=True)
        rates = None
        if eeg_rate is not None:
            rates = {"EEG": eeg_rate, "EOG": eeg_rate, "EMG": eeg_rate, "ECG": eeg_rate}
        with console.status("simulating the night..."):
            night = simulate_night(hours=hours, seed=seed, ahi=ahi, montage=montage, rates_hz=rates,
                                   hypnogram=hypnogram, spectra=spectra, artefacts=not no_artefacts)
        with console.status(f"writing {output}..."):
            edf_path, tsv_path = write_night(night, output)
        m = night.meta
        for w in m.get("warnings", []):
            typer.secho(f"warning: {w}", err=True, fg=typer.colors.YELLOW)
        typer.echo(f"wrote {edf_path} ({len(night.signals)} channels, {m['hours']:.2f} h, stages from {m['stage_source']}, "
                   f"AHI {m['ahi_realised']:.1f}/h) and {tsv_path}  [SIMULATED]")
