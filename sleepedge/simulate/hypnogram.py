"""Stage sequences for simulated nights.

A semi-Markov model fitted on the 20 Sleep-EDF-20 hypnograms (`calibration.py`): the night
starts with a wake bout drawn from the real sleep-onset wake bouts; each following bout picks
its stage from the real stage-to-stage transition counts of that hour of the night (so N3
comes early and REM late, ~90-min cycles emerge) and its length from the real bout lengths
of that stage in that third of the night (brief awakenings included).

Units: stage codes 0..4 = W, N1, N2, N3, REM (contract.STAGES), IGNORE = -100; epochs of 30 s.
"""

from __future__ import annotations

import numpy as np

from sleepedge.contract import EPOCH_S
from sleepedge.errors import SleepEdgeError
from sleepedge.simulate.calibration import bouts, hour_bin, load_params, third_bin

#: transition counts of each hour are shrunk towards the whole-night counts with this weight
#: (pseudo-transitions), so sparse late hours stay well defined
SHRINK = 5.0


class SimulationError(SleepEdgeError):
    """A simulator input (hours, rates, montage, hypnogram, spectra file) is invalid."""


def transition_probabilities(model: dict) -> np.ndarray:
    """(hour_bins, 5, 5) row-stochastic stage-change probabilities (diagonal 0)."""
    counts = np.asarray(model["transition_counts"], dtype=float)
    pooled = counts.sum(0)
    pooled_p = pooled / np.maximum(pooled.sum(1, keepdims=True), 1.0)
    p = counts + SHRINK * pooled_p[None]
    return p / np.maximum(p.sum(2, keepdims=True), 1e-12)


def sample_hypnogram(n_epochs: int, rng: np.random.Generator, model: dict | None = None) -> np.ndarray:
    """Draw one night of ``n_epochs`` 30-s stages (int16, 0..4) from the semi-Markov model."""
    if n_epochs < 1:
        raise SimulationError(f"night length {n_epochs} epochs: expected at least one 30-s epoch; raise --hours")
    model = load_params("hypnogram") if model is None else model
    probs = transition_probabilities(model)
    lengths = [[np.asarray(model["bout_lengths"][t][s], dtype=int) for s in range(5)] for t in range(3)]
    out = np.empty(n_epochs, dtype=np.int16)
    first = np.asarray(model["initial_wake_bouts"], dtype=int)
    pos = int(rng.choice(first)) if first.size else 0
    pos = min(pos, n_epochs)
    out[:pos] = 0
    stage = 0
    while pos < n_epochs:
        p = probs[int(hour_bin(pos))][stage]
        stage = int(rng.choice(5, p=p))
        pool = lengths[int(third_bin(pos))][stage]
        if pool.size == 0:
            pool = np.concatenate([lengths[t][stage] for t in range(3)])
        n = int(rng.choice(pool))
        out[pos:pos + n] = stage
        pos += n
    return out


def hypnogram_stats(nights: list[np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
    """Pooled over nights (unscored epochs joined): stage proportions and mean bout length in
    epochs (total epochs of the stage / number of its bouts), 5 entries each."""
    if isinstance(nights, np.ndarray) and nights.ndim == 1:
        nights = [nights]
    epochs = np.zeros(5)
    n_bouts = np.zeros(5)
    for stages in nights:
        stages = np.asarray(stages)
        scored = stages[(stages >= 0) & (stages <= 4)].astype(int)
        epochs += np.bincount(scored, minlength=5)[:5]
        s, _, _ = bouts(scored)
        n_bouts += np.bincount(s, minlength=5)[:5]
    return {"proportion": epochs / max(epochs.sum(), 1.0),
            "mean_bout_epochs": np.where(n_bouts > 0, epochs / np.maximum(n_bouts, 1), np.nan)}


def epochs_for_hours(hours: float) -> int:
    """Number of 30-s epochs in ``hours``; SimulationError outside (0, 24]."""
    try:
        hours = float(hours)
    except (TypeError, ValueError):
        raise SimulationError(f"--hours {hours!r}: expected a number of hours such as 8") from None
    if not (0 < hours <= 24) or not np.isfinite(hours):
        raise SimulationError(f"--hours {hours}: expected a night length in (0, 24] hours")
    return max(1, int(round(hours * 3600 / EPOCH_S)))


__all__ = ["SimulationError", "sample_hypnogram", "hypnogram_stats", "transition_probabilities",
           "epochs_for_hours"]
