"""sleepedge: self-supervised sleep staging from GPU training to a bedside device.

Python API (imported on first use, so `import sleepedge` stays light)::

    import mne, sleepedge
    raw = mne.io.read_raw_edf("SC4001E0-PSG.edf")
    night = sleepedge.score(raw)             # a path, an mne.io.Raw or {label: (samples, fs_hz)}
    expert, events = sleepedge.read_scoring("SC4001EC-Hypnogram.edf")
    print(sleepedge.compare(expert, night))  # accuracy, kappa, macro-F1, per-stage F1, confusion
    night.plot(); night.to_dataframe(); night.to_yasa(); raw.set_annotations(night.to_mne_annotations())

Public names (`sleepedge.__all__`):
    score(recording, *, model=None, channels=None, device="auto") -> Night
                         score a whole recording (same code and numbers as `sleepedge score`)
    Night                the result: stages, proba, onsets, p_apnea/p_hypopnea, quality, stats,
                         model; to_dataframe(), to_yasa(), to_mne_annotations(), save(), plot()
    stream(source, model=None, ...) -> iterator of per-epoch results (EDF replay, 'lsl:NAME',
                         or any iterable of {role: samples} blocks; the `sleepedge stream` scorer)
    compare(a, b) -> Agreement   accuracy, Cohen's kappa, macro-F1, per-stage F1, confusion
    Agreement            what compare returns (str() prints the table; to_dataframe())
    read_scoring(path, fmt="auto") -> (Hypnogram, [Event])   Sleep-EDF EDF+, Compumedics
                         Profusion XML, NSRR XML, Noxturnal CSV, DREAMS text, BIDS TSV/CSV, JSON,
                         PhysioNet WFDB annotations (slpdb `.st`; needs the `wfdb` package)
    write_hypnogram(path, hypnogram, probs=None)   TSV / CSV / JSON / EDF+
    write_profusion_xml(path, hypnogram, events=())  Compumedics Profusion XML (NSRR cohorts)
    Hypnogram, Event     scorings and scored events
    sleep_stats(hypnogram, events=())   the AASM summary (TST, SE, WASO, stage minutes, AHI, ...)
    SleepEdgeError       every user-facing error (one line naming the input and the fix)

The optional converters need `pip install 'sleepedge[notebook]'` (pandas, MNE, YASA, wfdb);
the bedside runtime (`pip install .`) has none of them, nor torch.

This package is the torch-free core (EDF I/O, channel roles, causal preprocessing,
scorings, sleep statistics, the bundle format, the PSG simulator and the CLI).
`sleepedge.models` is the one place that imports torch; nothing here imports it.
"""

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access: PEP 562)
_LAZY = {
    "score": "sleepedge.api",
    "stream": "sleepedge.api",
    "compare": "sleepedge.api",
    "Night": "sleepedge.api",
    "Agreement": "sleepedge.api",
    "read_scoring": "sleepedge.scoring",
    "write_hypnogram": "sleepedge.scoring",
    "write_profusion_xml": "sleepedge.scoring",
    "Hypnogram": "sleepedge.scoring",
    "Event": "sleepedge.scoring",
    "sleep_stats": "sleepedge.stats",
    "SleepEdgeError": "sleepedge.errors",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sleepedge' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
