"""The Python API: score a recording (a path, an MNE Raw, arrays) in a notebook, hand the
result to pandas / YASA / MNE, compare scorings.

    import mne, sleepedge
    raw = mne.io.read_raw_edf("SC4001E0-PSG.edf")
    night = sleepedge.score(raw)                       # or a path, or {label: (samples, fs_hz)}
    night.stages[:5], night.proba.shape, night.stats["tst_min"]
    expert, _ = sleepedge.read_scoring("SC4001EC-Hypnogram.edf")
    print(sleepedge.compare(expert, night))            # accuracy, kappa, macro-F1, per-stage F1
    raw.set_annotations(night.to_mne_annotations()); night.plot()

Everything goes through the code the CLI runs: `score` feeds the same reader-shaped blocks to
`runtime.scorer.score_recording` (an EDF path is read by the same reader; an MNE Raw or arrays
by `runtime.sources.ArrayRecording`, cut into the same blocks), `Night.save` uses the CLI's
writers, `Night.plot` its figure, `stream` its `StreamingScorer`. Same numbers as
`sleepedge score` on the same data (tested).

Optional libraries are imported only by the converter that needs them: pandas
(`to_dataframe`), yasa (`to_yasa`), mne (`to_mne_annotations`, and only when a Raw is passed to
`score`), wfdb (`read_scoring` of PhysioNet annotations). Missing -> one-line `SleepEdgeError`
naming `pip install 'sleepedge[notebook]'`. This module imports numpy and the torch-free core
only.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from sleepedge.contract import EPOCH_S, IGNORE, ROLES, STAGES
from sleepedge.errors import ChannelError, ScoringError, SleepEdgeError
from sleepedge.scoring import Hypnogram, stage_code
from sleepedge.stats import stage_confusion, stage_f1, stage_kappa

__all__ = ["Agreement", "Night", "compare", "score", "stream"]

NOTEBOOK_EXTRA = "pip install 'sleepedge[notebook]'"
# MNE channel type -> role, used for a role whose channel the label table did not recognise
_MNE_TYPE_ROLE = {"eeg": "EEG", "eog": "EOG", "emg": "EMG", "ecg": "ECG", "resp": "RESP"}


def _need(module: str, what: str, extra: str = "notebook"):
    """Import an optional library or raise ONE line naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SleepEdgeError(f"{what} needs {module}, which is not installed; pip install 'sleepedge[{extra}]'") from None


# --------------------------------------------------------------------------- models
_ENGINES: dict[tuple, tuple[Any, Any]] = {}   # (bundle path, device, threads) -> (bundle, engine): a notebook scores many nights


def _model(model, device: str, threads: int | None):
    """(bundle, engine) for `model` (None = the embedded default, a bundle path, an embedded
    name such as 'synthsleepnet-tiny-sim', or a loaded `sleepedge.bundle.Bundle`)."""
    from runtime.session import make_sessions
    from sleepedge.bundle import Bundle, load_bundle, resolve_model
    from sleepedge.errors import BundleError

    threads = int(threads or os.cpu_count() or 1)   # as `sleepedge score`: every core
    if isinstance(model, Bundle):
        return model, make_sessions(model, device=device, threads=threads)
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise BundleError(f"model={type(model).__name__}: expected None (the embedded default), a bundle path, "
                          "an embedded name such as 'synthsleepnet-tiny-sim', or a loaded Bundle")
    path = resolve_model(model)
    if model is None and not path.exists():
        raise BundleError(f"no default model at {path}; pass model=BUNDLE")
    stamp = Path(path) / "manifest.json" if Path(path).is_dir() else Path(path)
    try:
        mtime = stamp.stat().st_mtime_ns      # a bundle re-exported to the same path is loaded again
    except OSError:
        mtime = None
    key = (str(Path(path).resolve()), mtime, device, threads)
    if key not in _ENGINES:
        bundle = load_bundle(path)
        if len(_ENGINES) >= 4:
            _ENGINES.pop(next(iter(_ENGINES)))
        _ENGINES[key] = (bundle, make_sessions(bundle, device=device, threads=threads))
    return _ENGINES[key]


def _overrides(channels) -> dict[str, str]:
    """`channels=`: {role: label} (label 'none' leaves the role out) or the CLI's
    ['EEG=C4-M1', ...]; validated by the CLI's own parser."""
    from sleepedge.channels import parse_overrides

    if channels is None:
        return {}
    if isinstance(channels, Mapping):
        items = [f"{role}={label}" for role, label in channels.items()]
    elif isinstance(channels, str):
        items = [channels]
    elif isinstance(channels, Iterable):
        items = [str(c) for c in channels]
    else:
        raise ChannelError(f"channels={channels!r}: expected {{role: label}} (e.g. {{'EEG': 'C4-M1', 'EOG': 'none'}}) "
                           "or a list like ['EEG=C4-M1']")
    return parse_overrides(items)


def _is_mne_raw(obj) -> bool:
    return any(c.__module__.startswith("mne.") and c.__name__ == "BaseRaw" for c in type(obj).__mro__)


def _recording(recording):
    """A path (Path), or an in-memory `ArrayRecording` for a Raw / mapping."""
    from runtime.sources import ArrayRecording

    if isinstance(recording, ArrayRecording):
        return recording
    if isinstance(recording, (str, os.PathLike)):
        path = Path(recording)
        if not path.is_file():
            from sleepedge.errors import EDFError

            raise EDFError(f"{path}: no such recording file; pass an EDF/EDF+ path, an mne.io.Raw or "
                           "{label: (samples, fs_hz)}")
        return path
    if _is_mne_raw(recording):
        return ArrayRecording.from_mne(recording)
    if isinstance(recording, Mapping):
        return ArrayRecording(recording, name="<arrays>")
    raise ChannelError(f"recording={type(recording).__name__}: expected an EDF/EDF+ path, an mne.io.Raw, or a "
                       "mapping {label: (samples, fs_hz)} (µV)")


def _type_overrides(rec, overrides: dict[str, str]) -> dict[str, str]:
    """Roles the label table leaves empty, filled from MNE channel types (eeg/eog/emg/ecg/resp):
    the first channel of that type no role took. Explicit overrides always win."""
    from sleepedge.channels import assign_roles

    types = getattr(rec, "types", None) or {}
    if not types:
        return overrides
    rm = assign_roles(rec.header.labels, overrides)
    out = dict(overrides)
    taken = set(rm.primary.values())
    for role in rm.missing:
        if role in overrides:
            continue       # ROLE=none
        for label in rm.unassigned:
            if label not in taken and _MNE_TYPE_ROLE.get(types.get(label, "")) == role:
                out[role] = label
                taken.add(label)
                break
    return out


def score(recording, *, model=None, channels=None, device: str = "auto", threads: int | None = None) -> Night:
    """Score a whole recording; returns a `Night`.

    recording: an EDF/EDF+ path; an `mne.io.BaseRaw` (its channel names, MNE channel types,
        sampling rate and measurement date are used; voltage channels via
        `raw.get_data(units="uV")`); or a mapping `{label: (samples, fs_hz)}` (µV, SpO2 in %;
        rates may differ per channel). A BDF: `mne.io.read_raw_bdf(path)` and pass the Raw
        (the core reads EDF/EDF+ only). Labels are mapped to roles (EEG, EOG, EMG, ECG, RESP,
        SPO2) by the same alias table as the CLI.
    model: None (the embedded default, trained on real Sleep-EDF-78 nights), an embedded name
        ('synthsleepnet-tiny-sim'), a bundle path or a loaded Bundle.
    channels: the CLI's `--channel ROLE=LABEL`: {'EEG': 'EEG Pz-Oz', 'EOG': 'none'} ('none'
        leaves a role out) or ['EEG=EEG Pz-Oz'].
    device: auto | cpu | cuda | tensorrt. threads: ONNX Runtime threads (default every core,
        as `sleepedge score`).

    Same code as `sleepedge score` (runtime.scorer.score_recording): the same stages and
    probabilities on the same samples.
    """
    from runtime.scorer import score_recording

    overrides = _overrides(channels)
    rec = _recording(recording)
    if not isinstance(rec, Path):
        overrides = _type_overrides(rec, overrides)
    bundle, engine = _model(model, device, threads)
    result = score_recording(rec, bundle, overrides, engine)
    return Night(result)


# --------------------------------------------------------------------------- the result
def _display_stem(source: str) -> str:
    s = source.strip("<>")
    if s.startswith("mne Raw "):
        s = s[len("mne Raw "):]
    if s in ("arrays", "mne Raw", ""):
        return "night"
    return Path(s).stem


class Night:
    """A scored night (what `score` returns).

    Attributes (one entry per 30-s epoch unless said otherwise):
        stages       str array: 'W', 'N1', 'N2', 'N3', 'REM'
        stage_codes  int16 array 0..4 (W, N1, N2, N3, REM; YASA's integer convention)
        proba        float (n, 5): p(W), p(N1), p(N2), p(N3), p(REM)
        onsets       float seconds from the recording start
        p_apnea, p_hypopnea   float arrays, or None when the model/recording cannot report them
                     (`respiratory_reason` says why; the default model stages only)
        quality      str array: 'ok' or 'EOG:flat;EMG:missing' (the TSV's quality column)
        stats        the AASM summary (TST, SE, WASO, stage minutes, ...: `sleepedge.stats.sleep_stats`,
                     as in the CLI's JSON report)
        ahi          the CLI's coarse AHI estimate (None when not reported)
        model        the bundle's manifest summary (name, family, training data, simulated, heads)
        hypnogram    a `sleepedge.scoring.Hypnogram` (for `compare` and the scoring writers)
        start, source, roles_used, missing_roles, notice, warnings, epochs (the runtime's EpochResults)
    """

    def __init__(self, result):
        self.result = result          # runtime.scorer.NightResult
        self._report: dict | None = None

    # ---- per-epoch arrays
    @property
    def epochs(self) -> list:
        """The runtime's `EpochResult`s (index, onset_s, stage, probs, p_apnea, p_hypopnea, quality, latency_ms)."""
        return self.result.epochs

    def __len__(self) -> int:
        return len(self.result.epochs)

    @property
    def stage_codes(self) -> np.ndarray:
        """int16 per epoch: 0..4 = W, N1, N2, N3, REM."""
        return self.result.stages

    @property
    def stages(self) -> np.ndarray:
        """Stage label per epoch: 'W', 'N1', 'N2', 'N3', 'REM'."""
        return np.array([STAGES[int(s)] for s in self.result.stages], dtype="<U3")

    @property
    def proba(self) -> np.ndarray:
        """Stage probabilities (n_epochs, 5): p(W), p(N1), p(N2), p(N3), p(REM)."""
        return self.result.probs

    @property
    def onsets(self) -> np.ndarray:
        """Epoch onsets, seconds from the recording start."""
        return np.array([e.onset_s for e in self.result.epochs], dtype=np.float64)

    def _resp(self, attr: str) -> np.ndarray | None:
        from runtime.sinks import respiratory_status

        if not respiratory_status(self.result)[0]:
            return None
        return np.array([getattr(e, attr) for e in self.result.epochs], dtype=np.float64)

    @property
    def p_apnea(self) -> np.ndarray | None:
        """Per-epoch apnea probability, or None when not reported (see `respiratory_reason`)."""
        return self._resp("p_apnea")

    @property
    def p_hypopnea(self) -> np.ndarray | None:
        """Per-epoch hypopnea probability, or None when not reported (see `respiratory_reason`)."""
        return self._resp("p_hypopnea")

    @property
    def respiratory_reason(self) -> str:
        """Why apnea/hypopnea/AHI are not reported ('' when they are)."""
        from runtime.sinks import respiratory_status

        ok, reason = respiratory_status(self.result)
        return "" if ok else reason

    @property
    def quality(self) -> np.ndarray:
        """Per-epoch quality: 'ok' or 'ROLE:flag,...;...' (the TSV's quality column)."""
        return np.array([e.quality_str() for e in self.result.epochs], dtype=object)

    # ---- night-level
    def report(self) -> dict:
        """The CLI's JSON report (`runtime.sinks.night_report`): statistics, AHI estimate,
        quality summary, model summary, notice, warnings."""
        if self._report is None:
            from runtime.sinks import night_report

            self._report = night_report(self.result)
        return self._report

    @property
    def stats(self) -> dict:
        """The AASM summary of the predicted hypnogram (`sleepedge.stats.sleep_stats`, as in the CLI's JSON)."""
        return dict(self.report()["sleep_stats"])

    @property
    def ahi(self) -> float | None:
        """The CLI's coarse AHI estimate (events per hour of predicted sleep), None when not reported."""
        return self.report()["ahi_estimate"]["value"]

    @property
    def model(self) -> dict:
        """The bundle's manifest summary: name, family, modalities, training data, simulated, tasks, heads."""
        return dict(self.result.manifest_summary)

    @property
    def hypnogram(self) -> Hypnogram:
        """The predicted stages as a `sleepedge.scoring.Hypnogram` (30-s epochs, start, source)."""
        return Hypnogram(self.result.stages, EPOCH_S, self.result.start, self.result.source)

    @property
    def start(self) -> datetime | None:
        """Recording start (EDF header / MNE meas_date), None when unknown."""
        return self.result.start

    @property
    def source(self) -> str:
        """The recording: its path, '<mne Raw NAME>' or '<arrays>'."""
        return self.result.source

    @property
    def roles_used(self) -> dict[str, str]:
        """Role -> channel label the model read."""
        return dict(self.result.roles_used)

    @property
    def missing_roles(self) -> list[str]:
        """Roles the model takes that the recording lacks (presence mask 0)."""
        return list(self.result.missing_roles)

    @property
    def notice(self) -> str:
        """The simulated-model notice ('' for a model trained on real nights)."""
        return self.result.notice

    @property
    def warnings(self) -> list[str]:
        """Quirks tolerated while reading, unusable channels."""
        return list(self.result.warnings)

    def __repr__(self) -> str:
        st = self.stats if len(self) else {}
        tst = st.get("tst_min")
        return (f"<sleepedge.Night {Path(self.source).name if not self.source.startswith('<') else self.source}: "
                f"{len(self)} epochs, TST {'-' if tst is None else f'{tst:.0f} min'}, "
                f"model {self.result.manifest_summary.get('name', '?')}, roles {self.roles_used}>")

    # ---- converters
    def to_dataframe(self):
        """pandas DataFrame, one row per epoch (index `epoch`), the TSV's columns: onset,
        duration, stage, p_W..p_REM, p_apnea, p_hypopnea (NaN when not reported), quality;
        plus `time` (datetime) when the recording start is known."""
        pd = _need("pandas", "Night.to_dataframe()")
        n, onsets = len(self), self.onsets
        df = pd.DataFrame({"onset": onsets, "duration": np.full(n, EPOCH_S), "stage": self.stages})
        for i, s in enumerate(STAGES):
            df[f"p_{s}"] = self.proba[:, i] if n else np.zeros(0)
        nan = np.full(n, np.nan)
        p_apnea, p_hypopnea = self.p_apnea, self.p_hypopnea   # each built from the epochs on access
        df["p_apnea"] = p_apnea if p_apnea is not None else nan
        df["p_hypopnea"] = p_hypopnea if p_hypopnea is not None else nan
        df["quality"] = self.quality
        if self.start is not None:
            df["time"] = pd.Timestamp(self.start) + pd.to_timedelta(onsets, unit="s")
        df.index.name = "epoch"
        return df

    def to_yasa(self):
        """A `yasa.Hypnogram` (5 stages, 30 s, start when known, scorer 'sleepedge') carrying the
        stage probabilities as its `proba`."""
        yasa = _need("yasa", "Night.to_yasa()")
        pd = _need("pandas", "Night.to_yasa()")
        proba = pd.DataFrame(self.proba, columns=list(STAGES))
        start = pd.Timestamp(self.start) if self.start is not None else None
        return yasa.Hypnogram(list(self.stages), n_stages=5, freq=f"{int(EPOCH_S)}s", start=start,
                              scorer="sleepedge", proba=proba)

    def to_mne_annotations(self, orig_time=None):
        """`mne.Annotations` of the hypnogram: one `Sleep stage W/N1/N2/N3/R` annotation per run
        of equal epochs (as the CLI's EDF+ output), plus `apnea (estimated)` / `hypopnea
        (estimated)` runs when reported. Onsets are seconds from the scored data's first
        sample, so `raw.set_annotations(night.to_mne_annotations())` lines them up with the Raw
        that was scored (orig_time None); `mne.events_from_annotations(raw, chunk_duration=30)`
        gives one event per epoch back."""
        mne = _need("mne", "Night.to_mne_annotations()")
        from runtime.sinks import EDF_STAGE_TEXT, _stage_spans, estimated_events, respiratory_status

        spans = [(o, d, EDF_STAGE_TEXT[s]) for o, d, s in _stage_spans(self.result.epochs)]   # the EDF+ writer's runs
        if respiratory_status(self.result)[0]:
            spans += [(o, d, f"{k} (estimated)") for o, d, k in estimated_events(self.result.epochs)]
        return mne.Annotations(onset=[o for o, _, _ in spans], duration=[d for _, d, _ in spans],
                               description=[t for _, _, t in spans], orig_time=orig_time)

    def save(self, out_dir, formats: str | Sequence[str] = "tsv,csv,edf,json,png", stem: str | None = None) -> dict[str, Path]:
        """Write the CLI's outputs (`OUT/<stem>.sleepedge.{tsv,csv,edf,json,png}`) with the CLI's
        writers (`runtime.sinks.NightWriter`); returns {format: path}. stem defaults to the
        recording's file stem ('night' for arrays)."""
        from runtime.sinks import NightWriter, check_writable, parse_formats

        fmts = parse_formats(formats if isinstance(formats, str) else ",".join(formats))
        out = check_writable(Path(out_dir))
        stem = (stem or _display_stem(self.source)) + ".sleepedge"
        writer = NightWriter(out, stem, fmts, notice=self.result.notice, start=self.start, every=1 << 30,
                             fsync_every=256)
        try:
            for e in self.result.epochs:
                writer.add(e)
            return writer.finish(self.result)
        finally:
            writer.close()

    def plot(self):
        """The CLI's PNG figure (hypnogram, hypnodensity, apnea/hypopnea when reported) as a
        `matplotlib.figure.Figure` (no pyplot backend is selected; a notebook displays it)."""
        from runtime.sinks import night_figure

        return night_figure(self.result)


# --------------------------------------------------------------------------- streaming
def _chunk_source(blocks, rates: Mapping[str, float] | None, overrides: Mapping[str, str]):
    """(rates, labels, iterator of Chunk) for an iterable of {role or label: samples | (samples, fs)}."""
    from runtime.sources import Chunk
    from sleepedge.channels import assign_roles

    it = iter(blocks)
    try:
        first = next(it)
    except StopIteration:
        return {}, {}, iter(())
    if not isinstance(first, Mapping):
        raise ChannelError(f"stream(): blocks must be mappings {{role: samples}}, got {type(first).__name__}")
    fs_of: dict[str, float] = {}
    for key, v in first.items():
        if isinstance(v, (tuple, list)) and len(v) == 2 and np.ndim(v[1]) == 0:
            fs_of[str(key)] = float(v[1])
        elif rates is not None and key in rates:
            fs_of[str(key)] = float(rates[key])
        else:
            raise ChannelError(f"stream(): no sample rate for {key!r}; pass rates={{{key!r}: fs_hz}} or blocks of "
                               f"{{{key!r}: (samples, fs_hz)}}")
    keys = list(fs_of)
    if all(k in ROLES for k in keys) and not overrides:
        role_of = {k: k for k in keys}
    else:
        rm = assign_roles(keys, overrides)
        role_of = {label: role for role, label in rm.primary.items()}
    out_rates = {role_of[k]: fs_of[k] for k in keys if k in role_of}
    labels = {role_of[k]: k for k in keys if k in role_of}

    def gen():
        import itertools

        for block in itertools.chain([first], it):
            data = {}
            for k, v in block.items():
                if str(k) in role_of:
                    data[role_of[str(k)]] = np.asarray(v[0] if isinstance(v, (tuple, list)) else v, dtype=np.float64)
            yield Chunk(data)

    return out_rates, labels, gen()


def stream(source, model=None, *, channels=None, device: str = "auto", threads: int = 1, speed: float = 0.0,
           chunk_s: float = 1.0, rates: Mapping[str, float] | None = None, timeout_s: float = 10.0) -> Iterator:
    """Score a stream epoch by epoch: an iterator of `runtime.scorer.EpochResult` (index, onset_s,
    stage, stage_name, probs, p_apnea, p_hypopnea, quality, latency_ms), one per 30-s epoch as
    soon as it is complete. The scorer `sleepedge stream` runs (`StreamingScorer`: causal
    preprocessing, the step graph with its recurrent state; gaps flagged, never fatal).

    source: an EDF path (replayed in `chunk_s` pieces at `speed` x real time, 0 = as fast as
        possible); 'lsl:NAME' (a Lab Streaming Layer inlet, needs pylsl); a
        `runtime.sources.EDFReplaySource` / `LSLSource`; or any iterable of blocks
        {role or label: samples} (µV) with `rates={key: fs_hz}`, or {key: (samples, fs_hz)}.
    model, channels, device: as `score`.
    """
    from runtime.scorer import StreamingScorer
    from runtime.sources import EDFReplaySource, LSLSource

    overrides = _overrides(channels)
    bundle, engine = _model(model, device, threads)
    if isinstance(source, str) and source.startswith("lsl:"):
        _need("pylsl", "stream('lsl:NAME')", extra="lsl")
        src = LSLSource(source[4:], overrides, timeout_s=timeout_s, chunk_s=chunk_s)
    elif isinstance(source, (str, os.PathLike)):
        src = EDFReplaySource(Path(source), overrides, speed=speed, chunk_s=chunk_s)
    elif hasattr(source, "rates_hz") and hasattr(source, "__iter__"):
        src = source
    else:
        src = None
    if src is not None:
        try:
            scorer = StreamingScorer.for_source(bundle, src, engine)
        except SleepEdgeError:
            close = getattr(src, "close", None)
            if close is not None and src is not source:
                close()
            raise
        chunks = iter(src)
    else:
        if not isinstance(source, Iterable):
            raise ChannelError(f"stream(source={type(source).__name__}): expected an EDF path, 'lsl:NAME', a source "
                               "object, or an iterable of {role: samples} blocks")
        rates_hz, labels, chunks = _chunk_source(source, rates, overrides)
        if not rates_hz:
            return iter(())
        scorer = StreamingScorer(bundle, rates_hz, engine, labels=labels)
    return _stream_results(scorer, chunks)


def _stream_results(scorer, chunks):
    try:
        for chunk in chunks:
            yield from scorer.feed(chunk)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


# --------------------------------------------------------------------------- agreement
@dataclass
class Agreement:
    """Epoch-by-epoch agreement of a scoring `b` with a reference `a` (what `compare` returns).

    n_epochs: epochs compared (both scored, W..REM); n_a, n_b: epochs in each scoring;
    offset_epochs: epochs `b` was shifted by to line up with `a` (from their start times);
    accuracy, kappa (Cohen's), macro_f1 (over the stages present in `a`), f1 {stage: F1},
    confusion (5 x 5 counts, rows = a, columns = b, order W N1 N2 N3 REM). Undefined values
    (nothing compared, one class only for kappa) are None."""

    n_epochs: int
    n_a: int
    n_b: int
    accuracy: float | None
    kappa: float | None
    macro_f1: float | None
    f1: dict[str, float]
    confusion: np.ndarray
    offset_epochs: int = 0
    labels: tuple[str, ...] = field(default=STAGES)

    def to_dict(self) -> dict:
        """JSON-ready dict (confusion as nested lists)."""
        return {"n_epochs": self.n_epochs, "n_a": self.n_a, "n_b": self.n_b, "offset_epochs": self.offset_epochs,
                "accuracy": self.accuracy, "kappa": self.kappa, "macro_f1": self.macro_f1, "f1": dict(self.f1),
                "confusion": self.confusion.tolist(), "labels": list(self.labels)}

    def to_dataframe(self):
        """The confusion matrix as a pandas DataFrame (index a's stage, columns b's stage)."""
        pd = _need("pandas", "Agreement.to_dataframe()")
        return pd.DataFrame(self.confusion, index=pd.Index(self.labels, name="a"),
                            columns=pd.Index(self.labels, name="b"))

    def __str__(self) -> str:
        def f(v, d=3):
            return "n/a" if v is None else f"{v:.{d}f}"

        lines = [f"{self.n_epochs} epochs compared (a {self.n_a}, b {self.n_b}"
                 + (f", b shifted {self.offset_epochs} epochs" if self.offset_epochs else "") + ")",
                 f"accuracy {f(self.accuracy)}  kappa {f(self.kappa)}  macro-F1 {f(self.macro_f1)}",
                 "F1 " + "  ".join(f"{s} {f(self.f1.get(s), 2)}" for s in self.labels),
                 "confusion (rows a, columns b):",
                 "       " + "".join(f"{s:>7}" for s in self.labels)]
        for s, row in zip(self.labels, self.confusion):
            lines.append(f"{s:>7}" + "".join(f"{int(v):>7}" for v in row))
        return "\n".join(lines)


def _as_hypnogram(x, name: str) -> Hypnogram:
    """Hypnogram | Night | path (read_scoring) | (Hypnogram, events) | yasa.Hypnogram | codes or labels."""
    from sleepedge.scoring import read_scoring

    if isinstance(x, Hypnogram):
        return x
    if isinstance(x, Night):
        return x.hypnogram
    if isinstance(x, (str, os.PathLike)):
        return read_scoring(x)[0]
    if isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], Hypnogram):
        return x[0]
    if type(x).__name__ == "Hypnogram" and type(x).__module__.startswith("yasa"):
        epoch_s = 1.0 / float(x.sampling_frequency)
        codes = [IGNORE if v < 0 else v for v in (int(c) for c in x.as_int())]
        start = x.start
        start = None if start is None else start.to_pydatetime().replace(tzinfo=None)
        return Hypnogram(np.array(codes, dtype=np.int64), epoch_s, start, f"yasa {x.scorer or ''}".strip())
    try:
        arr = np.asarray(getattr(x, "values", x))
    except (TypeError, ValueError):
        arr = np.asarray([], dtype=object)
    if arr.ndim != 1:
        raise ScoringError(f"compare: {name} is {type(x).__name__}; expected a Hypnogram, a Night, a scoring path, "
                           "or a 1-D array of stage codes (0..4, -100) or labels")
    if arr.dtype.kind in "iu":   # YASA's integers: -1 artefact, -2 unscored -> IGNORE
        return Hypnogram(np.where(np.isin(arr, (-1, -2)), IGNORE, arr), EPOCH_S, None, name)
    if arr.dtype.kind == "f":
        return Hypnogram(np.where(np.isnan(arr), IGNORE, arr), EPOCH_S, None, name)
    codes = [stage_code(str(v), f"compare {name}") for v in arr.tolist()]   # YASA's WAKE/UNS/ART included
    return Hypnogram(np.array(codes, dtype=np.int64), EPOCH_S, None, name)


def _naive(t):
    if t is None:
        return None
    return t.replace(tzinfo=None) if getattr(t, "tzinfo", None) is not None else t


def compare(a, b) -> Agreement:
    """Agreement of scoring `b` with reference `a`: accuracy, Cohen's kappa, macro-F1, per-stage
    F1, confusion matrix (rows a, columns b).

    a, b: `Hypnogram`s, `Night`s, scoring file paths (read with `read_scoring`), the
    `(Hypnogram, events)` pair it returns, `yasa.Hypnogram`s, or 1-D arrays of stage codes
    (0..4 = W..REM; -100, or YASA's -1/-2, unscored) or labels ('W', 'N1', 'REM', 'R', 'WAKE', ...).
    Aligned by epoch: both must have the same epoch length (else a one-line ScoringError);
    when both know their start time, `b` is shifted by the whole number of epochs between the
    starts; then the common epochs are compared. Epochs unscored in either (IGNORE: '?',
    movement, artefact) are left out.
    """
    ha, hb = _as_hypnogram(a, "a"), _as_hypnogram(b, "b")
    if abs(ha.epoch_s - hb.epoch_s) > 1e-6:
        raise ScoringError(f"compare: epoch lengths differ (a {ha.epoch_s:g} s, b {hb.epoch_s:g} s); resample one "
                           "scoring to the other's epochs first")
    offset = 0
    sa, sb = _naive(ha.start), _naive(hb.start)
    if sa is not None and sb is not None and sa != sb:
        delta = (sb - sa).total_seconds()
        offset = int(round(delta / ha.epoch_s))
        if abs(delta - offset * ha.epoch_s) > 1.0:
            raise ScoringError(f"compare: b starts {delta:g} s after a, not a whole number of {ha.epoch_s:g}-s epochs; "
                               "the epochs do not line up (pass arrays to compare position by position)")
    ra, rb = ha.stages.astype(np.int64), hb.stages.astype(np.int64)
    # epoch i of a is epoch i - offset of b
    lo, hi = max(0, offset), min(ra.size, rb.size + offset)
    xa = ra[lo:hi] if hi > lo else ra[:0]
    xb = rb[lo - offset:hi - offset] if hi > lo else rb[:0]
    keep = (xa >= 0) & (xa < 5) & (xb >= 0) & (xb < 5)
    return _agreement(xa[keep], xb[keep], int(ra.size), int(rb.size), offset)


def _agreement(ref: np.ndarray, pred: np.ndarray, n_a: int, n_b: int, offset: int = 0) -> Agreement:
    cm = stage_confusion(ref, pred)
    n = int(cm.sum())
    if n == 0:
        return Agreement(0, n_a, n_b, None, None, None, {}, cm, offset)
    f1 = stage_f1(cm)
    present = cm.sum(1) > 0   # macro over the stages present in the reference
    macro = float(f1[present].mean()) if present.any() else None
    return Agreement(n, n_a, n_b, float(np.trace(cm) / n), stage_kappa(cm), macro,
                     {s: float(v) for s, v in zip(STAGES, f1)}, cm, offset)
