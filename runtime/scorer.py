"""Epoch-by-epoch scoring with the bundle's graphs (torch-free).

Glossary:
    chunk        any number of samples of one role at its native rate (µV; SpO2 in %)
    epoch        30-s window produced by the core's `CausalPreprocessor` (float32 (n_roles, 3000))
    z            the epoch graph's embedding (1, D), fed to the step graph with the Mamba state
    EpochResult  what one scored epoch gives: stage, 5 stage probabilities, apnea/hypopnea
                 probabilities (None when not reported, see below), per-role quality flags,
                 compute latency

Apnea / hypopnea (and the AHI built from them) are reported only when `respiratory_support`
says so, the ONE place that rule lives: the bundle has trained apnea AND hypopnea heads
(manifest `labels.tasks`; a manifest without `labels.tasks` means all three tasks), the model
takes RESP and SPO2 as inputs, and the recording has a RESP channel (airflow / nasal pressure /
thermistor) at >= 10 Hz and an SpO2 channel at >= 1 Hz. Otherwise the graphs' apnea/hypopnea
outputs are ignored: `p_apnea` / `p_hypopnea` are None and the reason travels with the night.

Streaming and offline scoring are ONE code path: `score_recording` reads the EDF in blocks of
epochs and pushes them through the same `StreamingScorer.push` a live source uses (the epoch
graph runs batched on all epochs a push completes, the step graph runs one epoch at a time
and carries the recurrent state), so both give the same numbers (tested to 1e-5).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from sleepedge.contract import EPOCH_S, Q_MISSING, ROLES, STAGES, quality_names
from sleepedge.errors import BundleError, ChannelError, PreprocessError

MAX_BATCH = 8    # epochs per epoch-graph call: tiny SynthSleepNet, 8-h night peak RSS 311 MB at 8 vs 466 MB at 32, same wall time;
                 # SpectralSleepNet (1 thread): 0.39 / 0.33 / 0.33 / 0.34 ms per epoch at batch 1 / 8 / 32 / 128 (compute-bound)
PIPELINE = True  # score_recording: read + preprocess the next block in a worker thread (bench.profile_score: False)
RESP_MIN_HZ = 10.0   # airflow / nasal pressure / thermistor: breaths and 10-s flow reductions need >= 10 Hz
SPO2_MIN_HZ = 1.0    # oximetry: desaturations are read at >= 1 Hz
RESPIRATORY_TASKS = ("apnea", "hypopnea")
ALL_TASKS = ("stage", "apnea", "hypopnea")   # what a manifest without labels.tasks means (bundles before tasks were checked)
SIMULATED_HEAD_LABEL = "trained on SIMULATED nights"


@dataclass
class EpochResult:
    index: int
    onset_s: float
    stage: int
    stage_name: str
    probs: tuple[float, ...]              # p(W), p(N1), p(N2), p(N3), p(REM)
    p_apnea: float | None                 # None: not reported (respiratory_support)
    p_hypopnea: float | None
    quality: dict[str, list[str]]         # role -> flag names (only roles with a flag)
    latency_ms: float

    def quality_str(self) -> str:
        """`ok` or `EMG:flat,clipped;ECG:missing` (what the TSV/CSV `quality` column holds)."""
        if not self.quality:
            return "ok"
        return ";".join(f"{r}:{','.join(f)}" for r, f in self.quality.items())


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(x) -> float:
    v = float(np.asarray(x).reshape(-1)[0])
    if v >= 0:  # the stable branch for each sign (no overflow warning for large |v|)
        return 1.0 / (1.0 + float(np.exp(-v)))
    e = float(np.exp(v))
    return e / (1.0 + e)


def bundle_roles(bundle) -> tuple[str, ...]:
    try:
        roles = tuple(bundle.manifest["signal"]["modalities"])
    except (KeyError, TypeError):
        raise BundleError(f"bundle {bundle.root}: manifest has no signal.modalities; re-export the bundle") from None
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise BundleError(f"bundle {bundle.root}: unknown modalities {unknown} (expected roles from {list(ROLES)})")
    return roles


def bundle_tasks(bundle) -> tuple[str, ...]:
    """The manifest's `labels.tasks`; missing (bundles written before tasks were checked) means
    every task: stage, apnea, hypopnea."""
    labels = bundle.manifest.get("labels") or {}
    tasks = labels.get("tasks") if isinstance(labels, dict) else None
    if tasks is None:
        return ALL_TASKS
    return tuple(str(t) for t in tasks)


def head_provenance(manifest: Mapping, task: str) -> dict:
    """What the head for `task` was trained on: {"data", "simulated", "label"}. A manifest may
    give it per head in `provenance.heads.<task>` ({"data", "simulated"}); otherwise the bundle's
    `provenance.data` / `provenance.simulated` apply to every head."""
    prov = manifest.get("provenance") or {}
    head = (prov.get("heads") or {}).get(task) if isinstance(prov.get("heads"), dict) else None
    head = head if isinstance(head, dict) else {}
    simulated = bool(head.get("simulated", prov.get("simulated", False)))
    return {"data": str(head.get("data", prov.get("data", "")) or ""), "simulated": simulated,
            "label": SIMULATED_HEAD_LABEL if simulated else "trained on recorded (real) nights"}


def respiratory_support(bundle, rates_hz: Mapping[str, float],
                        labels: Mapping[str, str] | None = None) -> tuple[bool, str]:
    """Whether apnea / hypopnea / AHI can be reported for a recording: (ok, reason).

    rates_hz: role -> native rate of the recording's channels (all roles it has, not only the
    model's); labels: role -> channel label (only for the reason's wording). The rule:
      1. the bundle has trained apnea and hypopnea heads (`labels.tasks`, see `bundle_tasks`);
      2. the model takes RESP and SPO2 as inputs (heads cannot see channels the model ignores);
      3. the recording has a RESP channel at >= RESP_MIN_HZ (10 Hz) and an SPO2 channel at
         >= SPO2_MIN_HZ (1 Hz).
    `reason` is '' when ok, else one line naming everything that is missing.
    """
    tasks = bundle_tasks(bundle)
    absent = [t for t in RESPIRATORY_TASKS if t not in tasks]
    if absent:
        if len(absent) == len(RESPIRATORY_TASKS):
            what = "no trained apnea/hypopnea heads"
        else:
            what = f"no trained {absent[0]} head (an AHI needs both)"
        return False, f"the model has {what} (tasks: {', '.join(tasks) or 'none'})"
    roles = bundle_roles(bundle)
    not_input = [r for r in ("RESP", "SPO2") if r not in roles]
    if not_input:
        return False, (f"the model does not take {'/'.join(not_input)} as input (modalities: {', '.join(roles)}), "
                       "so its apnea/hypopnea heads cannot see breathing")
    labels = labels or {}
    problems = []
    for role, min_hz, word, kinds in (("RESP", RESP_MIN_HZ, "RESP", " (airflow / nasal pressure / thermistor)"),
                                      ("SPO2", SPO2_MIN_HZ, "SpO2", "")):
        fs = rates_hz.get(role)
        if fs is None:
            problems.append(f"no {word} channel{kinds}")
        elif float(fs) < min_hz:
            name = f"{word} {labels[role]!r}" if role in labels else word
            problems.append(f"{name} sampled at {float(fs):g} Hz (needs >= {min_hz:g} Hz)")
    if problems:
        return False, "; ".join(problems)
    return True, ""


def _preprocess_config(bundle):
    from sleepedge.preprocess import PreprocessConfig

    params = (bundle.manifest.get("signal") or {}).get("preprocessing")
    if not params:
        return PreprocessConfig()
    try:
        return PreprocessConfig.from_dict(params)
    except (TypeError, ValueError, KeyError) as ex:
        raise BundleError(f"bundle {bundle.root}: signal.preprocessing is not a valid PreprocessConfig ({ex}); re-export the bundle") from None


class StreamingScorer:
    """Push chunks of any size at any rate; get an `EpochResult` for every completed epoch.

    rates_hz: role -> native rate of every role the recording has. Roles the bundle wants but
    the recording lacks go through the presence mask (`missing_roles`, flagged `missing` per
    epoch); roles the bundle does not use are ignored (`extra_roles`).
    """

    def __init__(self, bundle, rates_hz: Mapping[str, float], engine=None, *, device: str = "auto", threads: int = 1,
                 labels: Mapping[str, str] | None = None):
        from sleepedge.preprocess import CausalPreprocessor, usable_rates

        self.bundle = bundle
        self.model_roles = bundle_roles(bundle)
        # apnea/hypopnea/AHI reported or not, and why (labels: role -> channel label, wording only)
        self.respiratory_ok, self.respiratory_reason = respiratory_support(bundle, rates_hz, labels)
        self.extra_roles = sorted(r for r in rates_hz if r not in self.model_roles)
        # a role whose channel is too slow for its band (1-Hz EMG envelopes) counts as missing
        rates_hz, self.unusable_roles = usable_rates(
            {r: v for r, v in rates_hz.items() if r in self.model_roles}, _preprocess_config(bundle)
        )
        self.present_roles = [r for r in self.model_roles if r in rates_hz]
        self.missing_roles = [r for r in self.model_roles if r not in rates_hz]
        if not self.present_roles:
            raise ChannelError(
                f"the recording has roles {sorted(rates_hz)} but the model needs at least one of "
                f"{list(self.model_roles)}; map a channel with --channel ROLE=LABEL"
            )
        self.rates_hz = {r: float(rates_hz[r]) for r in self.present_roles}
        self._n_pushed = {r: 0 for r in self.present_roles}
        self.pre = CausalPreprocessor({r: float(rates_hz[r]) for r in self.present_roles}, _preprocess_config(bundle))
        if engine is None:
            from runtime.session import make_sessions

            engine = make_sessions(bundle, device=device, threads=threads)
        self.engine = engine
        self.state = engine.init_state()
        self.n_scored = 0

    @classmethod
    def for_source(cls, bundle, source, engine=None, **kw) -> "StreamingScorer":
        """A scorer for a replay / live source (`runtime.sources`): its rates and labels; the source
        then reads only the roles the model uses, and the header's EDF+D gaps are flagged."""
        scorer = cls(bundle, source.rates_hz, engine, labels=getattr(source, "labels", None), **kw)
        if hasattr(source, "select"):
            source.select(scorer.pre.roles)
        for onset, dur in getattr(getattr(source, "header", None), "gaps", []) or []:
            scorer.mark_gap(onset, onset + dur)
        return scorer

    def feed(self, chunk) -> list[EpochResult]:
        """One source `Chunk`: the dropout before it (`gap_s`, flagged `gap`), then its samples."""
        results = self.gap(chunk.gap_s) if getattr(chunk, "gap_s", 0.0) > 0 else []
        return results + self.push(chunk.data)

    def describe(self) -> str:
        parts = [f"roles used {list(self.pre.roles)}"]
        if self.missing_roles:
            parts.append(f"missing {self.missing_roles} (presence mask 0)")
        for reason in self.unusable_roles.values():
            parts.append(reason)
        if self.extra_roles:
            parts.append(f"ignored {self.extra_roles} (the model does not use them)")
        if not self.respiratory_ok:
            parts.append(f"apnea/hypopnea/AHI not reported: {self.respiratory_reason}")
        return "; ".join(parts)

    def mark_gap(self, start_s: float, stop_s: float) -> None:
        """Flag epochs overlapping [start_s, stop_s) (signal time) `gap` (EDF+D holes)."""
        self.pre.mark_gap(start_s, stop_s)

    @property
    def time_s(self) -> float:
        """Seconds of signal pushed so far (the slowest role's count decides)."""
        return min(self._n_pushed[r] / self.rates_hz[r] for r in self.pre.roles)

    def gap(self, seconds: float) -> list[EpochResult]:
        """A dropout of `seconds` (stream stall, EDF+D hole): keep the epoch grid aligned with the
        clock by pushing NaN for every role (flagged `nan`) and flag the span `gap`."""
        if seconds <= 0:
            return []
        t = self.time_s
        self.pre.mark_gap(t, t + float(seconds))
        chunks = {r: np.full(int(round(seconds * self.rates_hz[r])), np.nan) for r in self.pre.roles}
        return self.push(chunks)

    def push(self, chunks: Mapping[str, np.ndarray]) -> list[EpochResult]:
        t0 = time.perf_counter()
        return self.score_epochs(self.preprocess(chunks), t0)

    def preprocess(self, chunks: Mapping[str, np.ndarray]) -> list:
        """The first half of `push`: the causal preprocessing -> the core `Epoch`s completed."""
        feed = {r: np.asarray(chunks[r]) for r in self.pre.roles if r in chunks}
        for r, v in feed.items():
            self._n_pushed[r] += v.size
        return self.pre.push(feed)

    def score_epochs(self, epochs: Sequence, t0: float | None = None) -> list[EpochResult]:
        """Epoch graph (batched) then the recurrent step, state carried; `epochs` are core `Epoch`s.

        Several epochs at once (offline blocks) go through the bundle's `night` graph (the step
        graph in an ONNX Scan: one call for the block, gated equal to the step loop); one epoch
        (a live stream) through the step graph. Results are built for the block at once."""
        from sleepedge.preprocess import model_input

        if not epochs:
            return []
        t0 = time.perf_counter() if t0 is None else t0
        n = len(epochs)
        data = np.stack([e.data for e in epochs]).astype(np.float32, copy=False)
        qual = np.stack([e.quality for e in epochs])
        x, present = model_input(data, qual, tuple(self.pre.roles), self.model_roles)
        zs = []
        for s in range(0, n, MAX_BATCH):
            out = self.engine.run_epoch(x[s:s + MAX_BATCH], present[s:s + MAX_BATCH])
            zs.append(out["z"])
        z = np.concatenate(zs, axis=0) if len(zs) > 1 else zs[0]
        shared_ms = (time.perf_counter() - t0) * 1e3 / n
        ts = time.perf_counter()
        if n > 1 and getattr(self.engine, "has_night", False):
            heads, self.state = self.engine.run_night(z, self.state)
            step_ms = [(time.perf_counter() - ts) * 1e3 / n] * n
        else:
            parts, step_ms = [], []
            for i in range(n):
                ts = time.perf_counter()
                out, self.state = self.engine.run_step(z[i:i + 1], self.state)
                parts.append(out)
                step_ms.append((time.perf_counter() - ts) * 1e3)
            heads = {k: np.concatenate([np.asarray(p[k]).reshape(1, -1) for p in parts]) for k in parts[0]}
        probs = _softmax(np.asarray(heads["stage_logits"]).reshape(n, -1))
        stages = probs.argmax(axis=1)
        if self.respiratory_ok:
            p_ap = [_sigmoid(v) for v in np.asarray(heads["apnea_logit"]).reshape(n)]
            p_hy = [_sigmoid(v) for v in np.asarray(heads["hypopnea_logit"]).reshape(n)]
        else:
            p_ap = p_hy = [None] * n
        role_index = {r: i for i, r in enumerate(self.pre.roles)}
        cols = [(role, role_index.get(role)) for role in self.model_roles]
        missing = quality_names(Q_MISSING)
        probs_list = probs.tolist()
        results = []
        for i, ep in enumerate(epochs):
            quality: dict[str, list[str]] = {}
            for role, j in cols:
                names = quality_names(int(ep.quality[j])) if j is not None else missing
                if names:
                    quality[role] = list(names)
            st = int(stages[i])
            results.append(EpochResult(
                index=int(ep.index), onset_s=float(ep.onset_s), stage=st, stage_name=STAGES[st],
                probs=tuple(probs_list[i]), p_apnea=p_ap[i], p_hypopnea=p_hy[i],
                quality=quality, latency_ms=shared_ms + step_ms[i],
            ))
        self.n_scored += len(results)
        return results


class _background:
    """Iterate `gen` in a worker thread, at most `depth` items ahead; exceptions re-raised here;
    `close()` stops the worker (also when the consumer fails half-way)."""

    _END = object()

    def __init__(self, gen, depth: int = 2):
        import queue
        import threading

        self._q: "queue.Queue" = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._gen = gen
        self._thread = threading.Thread(target=self._run, name="sleepedge-preprocess", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._gen:
                if self._stop.is_set():
                    return
                self._put((True, item))
        except BaseException as ex:  # noqa: BLE001 - handed to the consumer thread
            self._put((False, ex))
            return
        finally:
            self._gen.close()     # in this thread: the generator's `with`/finally blocks run here
        self._put((True, self._END))

    def _put(self, item) -> None:
        import queue

        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self):
        return self

    def __next__(self):
        ok, item = self._q.get()
        if not ok:
            self.close()
            raise item
        if item is self._END:
            self.close()
            raise StopIteration
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class NightResult:
    """Everything the sinks and the summary need about one scored recording."""

    source: str
    epochs: list[EpochResult]
    start: datetime | None
    roles_used: dict[str, str]               # role -> channel label
    missing_roles: list[str]
    extra_roles: list[str]
    engine: str
    manifest_summary: dict
    notice: str = ""
    warnings: list[str] = field(default_factory=list)
    respiratory_ok: bool = True              # apnea/hypopnea/AHI reported (runtime.scorer.respiratory_support)
    respiratory_reason: str = ""             # why not, when not

    @property
    def stages(self) -> np.ndarray:
        return np.array([e.stage for e in self.epochs], dtype=np.int16)

    @property
    def probs(self) -> np.ndarray:
        return np.array([e.probs for e in self.epochs], dtype=np.float64).reshape(-1, len(STAGES))


def manifest_summary(bundle) -> dict:
    m = bundle.manifest
    model = m.get("model") or {}
    prov = m.get("provenance") or {}
    return {
        "bundle": str(getattr(bundle, "source", bundle.root)), "name": m.get("name", ""), "schema": m.get("schema", ""),
        "created": m.get("created", ""), "family": model.get("family", ""), "preset": model.get("preset", ""),
        "n_params": model.get("n_params"), "modalities": list((m.get("signal") or {}).get("modalities", [])),
        "simulated": bool(getattr(bundle, "simulated", prov.get("simulated", False))),
        "notice": getattr(bundle, "notice", prov.get("notice", "")) or "",
        "training_data": prov.get("data", ""), "metrics": prov.get("metrics", {}),
        "tasks": list(bundle_tasks(bundle)),
        "heads": {t: head_provenance(m, t) for t in RESPIRATORY_TASKS if t in bundle_tasks(bundle)},
        "opset": m.get("opset"), "versions": m.get("versions", {}),
    }


def score_recording(
    recording,
    bundle,
    overrides: Mapping[str, str] | None = None,
    engine=None,
    *,
    device: str = "auto",
    threads: int = 1,
    on_epoch: Callable[[EpochResult], None] | None = None,
    on_progress: Callable[[float, float], None] | None = None,
    on_header: Callable[[object], None] | None = None,
    on_scorer: Callable[[StreamingScorer], None] | None = None,
    block_epochs: int = 32,
    pipeline: bool | None = None,
) -> NightResult:
    """Score a whole recording offline through the streaming path.

    recording: an EDF/EDF+ path, or an in-memory reader with the same interface
    (`runtime.sources.ArrayRecording`: arrays, an MNE Raw), read block by block the same way.
    `on_header(header)` once the file is
    open, `on_scorer(scorer)` once the channels are mapped (before the first epoch), `on_epoch`
    sees each result as it is scored (the sinks append and flush there), `on_progress(done_s,
    total_s)` after each block.

    pipeline=True (default: module-level PIPELINE): a worker thread reads and preprocesses block k+1 (`scorer.pre.push`) while
    this thread runs the graphs of block k (`scorer.score_epochs`) and the callbacks: the very
    calls `StreamingScorer.push` makes, in the same order, on two cores (ONNX Runtime and
    numpy's large operations release the GIL). Results are identical to pipeline=False (tested)."""
    from sleepedge.channels import assign_roles
    from sleepedge.edf import open_edf

    if hasattr(recording, "iter_epochs") and hasattr(recording, "header"):   # in memory (ArrayRecording)
        opened, name = recording, str(getattr(recording.header, "name", "<recording>"))
        source_name = name
    else:
        path = Path(recording)
        opened, name, source_name = open_edf(path, backend="native"), path.name, str(path)  # the project's reader: pyedflib's samples (tested), 10x faster
    with opened as reader:
        header = reader.header
        if header.duration_s < EPOCH_S:
            raise PreprocessError(f"{name} lasts {header.duration_s:g} s, shorter than one {EPOCH_S:g}-s epoch; "
                                  "nothing to score (record at least 30 s)")
        if on_header is not None:
            on_header(header)
        labels = [s.label for s in header.signals]
        role_map = assign_roles(labels, overrides or {}, roles=ROLES)
        rates = {role: float(header.signal(label).fs_hz) for role, label in role_map.primary.items()}
        scorer = StreamingScorer(bundle, rates, engine, device=device, threads=threads, labels=role_map.primary)
        if on_scorer is not None:
            on_scorer(scorer)
        used = {r: role_map.primary[r] for r in scorer.pre.roles}
        label_role = {label: role for role, label in used.items()}
        results: list[EpochResult] = []
        for onset, dur in header.gaps:  # EDF+D holes: the reader gives NaN there; flag them `gap`
            scorer.mark_gap(onset, onset + dur)
        total_s = float(header.duration_s)

        def blocks():
            """(epochs completed by the block, its preprocessing seconds, signal time reached)."""
            for onset_s, block in reader.iter_epochs(list(used.values()), n_epochs_per_block=block_epochs):
                t = time.perf_counter()
                chunks = {label_role[label]: samples for label, samples in block.items() if label in label_role}
                n = max((len(v) / rates[r] for r, v in chunks.items()), default=0.0)
                epochs = scorer.preprocess(chunks)
                yield epochs, time.perf_counter() - t, onset_s + n

        source = _background(blocks()) if (PIPELINE if pipeline is None else pipeline) else blocks()
        try:
            for epochs, pre_s, reached in source:
                for res in scorer.score_epochs(epochs, time.perf_counter() - pre_s):
                    results.append(res)
                    if on_epoch is not None:
                        on_epoch(res)
                if on_progress is not None:
                    on_progress(min(reached, total_s), total_s)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
        summary = manifest_summary(bundle)
        return NightResult(
            source=source_name, epochs=results, start=header.start, roles_used=used,
            missing_roles=list(scorer.missing_roles), extra_roles=list(scorer.extra_roles),
            engine=scorer.engine.describe(), manifest_summary=summary, notice=summary["notice"] if summary["simulated"] else "",
            warnings=list(header.warnings) + [f"{role_map.primary[r]}: {why}" for r, why in scorer.unusable_roles.items()],
            respiratory_ok=scorer.respiratory_ok, respiratory_reason=scorer.respiratory_reason,
        )
