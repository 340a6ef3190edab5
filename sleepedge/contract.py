"""The signal contract: the one place its constants live.

Glossary (used in every module):
    epoch       30-s scoring unit (AASM)
    fs_hz       model input sample rate, 100 Hz
    role        a modality: EEG, EOG, EMG, ECG, RESP, SPO2 (not a channel label)
    stage code  AASM W, N1, N2, N3, REM = 0..4 (YASA's integer convention);
                IGNORE (-100) marks unscored / movement / artefact epochs, which are
                masked out of losses and metrics, never turned into Wake.
"""

from __future__ import annotations

import math

EPOCH_S: float = 30.0
FS_HZ: int = 100
EPOCH_SAMPLES: int = int(EPOCH_S * FS_HZ)  # 3000

STAGES: tuple[str, ...] = ("W", "N1", "N2", "N3", "REM")
STAGE_CODE: dict[str, int] = {s: i for i, s in enumerate(STAGES)}
IGNORE: int = -100  # same value as torch.nn.CrossEntropyLoss's default ignore_index

ROLES: tuple[str, ...] = ("EEG", "EOG", "EMG", "ECG", "RESP", "SPO2")
# the mission's four modalities; RESP and SPO2 are used for apnea/hypopnea when present
CORE_ROLES: tuple[str, ...] = ("EEG", "EOG", "EMG", "ECG")

TASKS: tuple[str, ...] = ("stage", "apnea", "hypopnea")

# per-epoch quality flags (bit mask, one byte per epoch and role)
Q_OK = 0
Q_NAN = 1            # NaN/Inf samples (replaced by 0 before filtering)
Q_FLAT = 2           # flat line (std below the role's floor)
Q_CLIPPED = 4        # samples stuck at the rails / saturation
Q_DISCONNECTED = 8   # electrode off: flat or implausible amplitude for the whole epoch
Q_GAP = 16           # data missing in the epoch (EDF+D gap, stream dropout)
Q_MISSING = 32       # role not recorded at all (presence mask 0)
QUALITY_FLAGS: dict[str, int] = {
    "nan": Q_NAN, "flat": Q_FLAT, "clipped": Q_CLIPPED,
    "disconnected": Q_DISCONNECTED, "gap": Q_GAP, "missing": Q_MISSING,
}


def quality_names(mask: int) -> list[str]:
    """Names of the flags set in a quality bit mask."""
    return [name for name, bit in QUALITY_FLAGS.items() if int(mask) & bit]


def is_finite_number(v) -> bool:
    """A real int/float (not bool) with a finite float value: what config and manifest values
    read from files must be (a JSON integer beyond float range is not)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False
