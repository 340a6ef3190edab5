"""sleepedge: self-supervised sleep staging from GPU training to a bedside device.

This package is the torch-free core (EDF I/O, channel roles, causal preprocessing,
scorings, sleep statistics, the bundle format, the PSG simulator and the CLI).
`sleepedge.models` is the one place that imports torch; nothing here imports it.
"""

__version__ = "0.1.0"
