"""Whole-night PSG simulator calibrated on real recordings (torch-free).

    simulate_night(hours=8.0, seed=0, ahi=5.0, montage="default", rates_hz=None,
                   hypnogram=None, spectra=None, artefacts=True) -> SimulatedNight
    write_night(night, path) -> (edf_path, tsv_path)

See night.py for the assembly and DESIGN.md's last section for why the EEG is built from
real spectra and real transient shapes.
"""

from sleepedge.simulate.hypnogram import SimulationError
from sleepedge.simulate.night import MONTAGES, SimulatedNight, read_truth_tsv, simulate_night, write_night

__all__ = ["simulate_night", "write_night", "read_truth_tsv", "SimulatedNight", "SimulationError", "MONTAGES"]
