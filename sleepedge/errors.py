"""The project's own error types.

Every user-facing failure is a `SleepEdgeError` whose message is ONE line that names the
input, what was expected and the fix. The CLI prints it and exits non-zero; it never shows
a traceback for these.
"""

from __future__ import annotations


class SleepEdgeError(Exception):
    """Base class: a one-line, user-facing error."""

    exit_code = 2

    def __init__(self, message: str):
        # keep the message on one line whatever the caller passed
        super().__init__(" ".join(str(message).split()))


class EDFError(SleepEdgeError):
    """An EDF/EDF+ file cannot be read (missing, not EDF, truncated, lying header...)."""


class ScoringError(SleepEdgeError):
    """A hypnogram / event file cannot be parsed or contains unknown labels."""


class ChannelError(SleepEdgeError):
    """A channel role is missing, ambiguous or an override names an absent label."""


class PreprocessError(SleepEdgeError):
    """Signals cannot be turned into model epochs (bad rate, wrong shape...)."""


class BundleError(SleepEdgeError):
    """A model bundle is unreadable, tampered with, or from an unknown schema."""


class ExportError(SleepEdgeError):
    """Export failed (including the validation gate)."""


class DeviceError(SleepEdgeError):
    """A requested execution provider / accelerator is not available."""


class StreamError(SleepEdgeError):
    """A live or replayed stream stalled or broke."""


class OutputError(SleepEdgeError):
    """An output folder is unwritable or a write failed (disk full...)."""
