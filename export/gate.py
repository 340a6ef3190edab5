"""The export validation gate: a bundle is written only when its graphs pass (imports torch).

Checks, in order (each failure raises; nothing is written by the caller):
1. `onnx.checker.check_model(full_check=True)` on each graph;
2. the graphs load in ONNX Runtime (CPU, one thread);
3. parity with torch (fp32, max |Δ| <= `tol`, default 1e-4):
   - epoch graph vs `model.embed` + `model.epoch_heads` at batch 1 and batch 7 (batch 7 mixes
     presence masks: every modality absent in turn, so the masking path is exercised);
   - step graph, one step at batch 7 from a random (non-zero) state, every output incl. states;
   - a `rollout_steps`-long state rollout of the step graph (batch 2: the sequence and its
     reverse) vs torch `temporal.forward` (the whole-night causal pass) over the same z;
   - the optional whole-night Scan graph over that same sequence in one call.
   The data are a night of preprocessed epochs: `sleepedge.simulate.simulate_night` when it
   exists, else synthetic raw signals (coloured noise with role-typical amplitudes, slow
   modulation) run through `sleepedge.preprocess.preprocess_arrays`; the source is recorded.
4. optional reduced-precision variants (fp16, int8) are measured against fp32 torch on the
   same night: stage agreement (argmax of the temporal stage logits) and max probability
   difference; fp16 must reach `FP16_MIN_AGREEMENT` and `FP16_MAX_PROB_DIFF`.

A failure raises `GateError(ExportError)` naming each output that failed with its max |Δ|.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import onnx
import torch
from torch import nn

from sleepedge.contract import FS_HZ
from sleepedge.errors import ExportError, SleepEdgeError

FP32_TOL = 1e-4
FP16_MIN_AGREEMENT = 0.995
FP16_MAX_PROB_DIFF = 0.05      # stated tolerance for fp16 graphs (probabilities, not logits)


class GateError(ExportError):
    """The exported graphs disagree with torch (or fail the ONNX checker / ORT load)."""

    def __init__(self, message: str, failures: Mapping[str, float] | None = None):
        super().__init__(message)
        self.failures = dict(failures or {})


@dataclass
class GateData:
    """Preprocessed epochs in the model's modality order."""

    x: np.ndarray            # [N, M, 3000] float32
    present: np.ndarray      # [N, M] float32
    source: str              # where the data came from, in words


@dataclass
class GateReport:
    tolerance: float
    checks: dict[str, dict[str, float]] = field(default_factory=dict)   # check -> output -> max |Δ|
    data: str = ""
    rollout_steps: int = 0
    variants: dict[str, dict] = field(default_factory=dict)             # fp16 / int8 accuracy cost

    @property
    def max_abs_diff(self) -> float:
        return max((v for c in self.checks.values() for v in c.values()), default=0.0)

    @property
    def failures(self) -> dict[str, float]:
        return {f"{c}/{o}": v for c, outs in self.checks.items() for o, v in outs.items()
                if not np.isfinite(v) or v > self.tolerance}

    def to_dict(self) -> dict:
        return {
            "passed": not self.failures,
            "tolerance": self.tolerance,
            "max_abs_diff": float(self.max_abs_diff),
            "checks": {c: {o: float(v) for o, v in outs.items()} for c, outs in self.checks.items()},
            "onnx_checker": "full_check passed",
            "runtime": f"onnxruntime {_ort().__version__} CPUExecutionProvider",
            "data": self.data,
            "rollout_steps": self.rollout_steps,
            "variants": self.variants,
        }


def _ort():
    import onnxruntime

    return onnxruntime


def ort_session(path: Path, threads: int = 1):
    """A CPU ONNX Runtime session (GateError if the graph does not load)."""
    ort = _ort()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
        raise GateError(f"{Path(path).name}: ONNX Runtime cannot load it ({' '.join(str(err).split())[:240]}); re-export") from err


def check_onnx(path: Path) -> None:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as err:  # noqa: BLE001 - onnx raises ValidationError / InferenceError
        raise GateError(f"{Path(path).name}: onnx.checker full check failed ({' '.join(str(err).split())[:240]})") from err


# ----------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------
_ROLE_UV = {"EEG": 30.0, "EOG": 60.0, "EMG": 8.0, "ECG": 400.0, "RESP": 300.0}


def _synthetic_raw(roles, n_epochs: int, rng: np.random.Generator, fs: int = FS_HZ) -> dict[str, np.ndarray]:
    """Raw µV-scale signals with role-typical spectra and slow (minutes) amplitude modulation."""
    n = n_epochs * 30 * fs
    t = np.arange(n) / fs
    slow = 1.0 + 0.5 * np.sin(2 * np.pi * t / rng.uniform(600, 1800) + rng.uniform(0, 6.3))
    out: dict[str, np.ndarray] = {}
    for role in roles:
        if role == "SPO2":
            out[role] = 95.0 + 2.0 * np.sin(2 * np.pi * t / 90.0) + 0.3 * rng.standard_normal(n)
            continue
        white = rng.standard_normal(n)
        spec = np.fft.rfft(white)
        f = np.fft.rfftfreq(n, 1 / fs)
        f[0] = f[1]
        if role in ("EEG", "EOG"):
            spec /= np.sqrt(f)                   # 1/f (pink) background
        elif role == "RESP":
            spec *= np.exp(-0.5 * ((f - 0.25) / 0.05) ** 2)
        elif role == "ECG":
            spec *= (f > 1.0) * np.exp(-f / 20.0)
        x = np.fft.irfft(spec, n)
        x = x / (x.std() + 1e-12) * _ROLE_UV.get(role, 20.0) * slow
        if role == "ECG":                        # a crude 1.1 Hz QRS train on top
            x += 800.0 * (np.sin(2 * np.pi * 1.1 * t) > 0.995)
        out[role] = x
    return out


def gate_data(model: nn.Module, n_epochs: int = 120, seed: int = 0, preprocess: dict | None = None) -> GateData:
    """A night of preprocessed epochs in the model's modality order (see the module doc),
    preprocessed as the bundle will preprocess (`preprocess`: a PreprocessConfig dict)."""
    from sleepedge.preprocess import PreprocessConfig, model_input, preprocess_arrays

    roles = tuple(model.config.modalities)
    rng = np.random.default_rng(seed)
    raw = rates = None
    source = ""
    try:
        from sleepedge.simulate import simulate_night  # type: ignore[attr-defined]
    except ImportError:
        simulate_night = None
    sim_problem = "sleepedge.simulate.simulate_night was not available"
    if simulate_night is not None:
        try:
            raw, rates = _simulated(simulate_night, roles, n_epochs, seed)
            source = (f"simulated night (sleepedge.simulate.simulate_night, {n_epochs} epochs, seed {seed}, "
                      "resampled and preprocessed by preprocess_arrays)")
        except SleepEdgeError as err:  # e.g. calibration parameters missing: say so, use the fallback
            raw, sim_problem = None, f"simulate_night failed ({err})"
    if raw is None:
        raw = _synthetic_raw(roles, n_epochs, rng)
        rates = {r: float(FS_HZ) for r in roles}
        source = (f"synthetic raw signals (coloured noise, role-typical µV, {n_epochs} epochs, seed {seed}) "
                  f"through preprocess_arrays; {sim_problem}")
    pcfg = PreprocessConfig.from_dict(preprocess) if preprocess else PreprocessConfig()
    data, quality, got_roles = preprocess_arrays(raw, rates, pcfg)
    x, present = model_input(data, quality, got_roles, roles)
    if len(x) < 8:
        raise GateError(f"gate data: only {len(x)} epochs after preprocessing; expected >= 8")
    return GateData(x.astype(np.float32), present.astype(np.float32), source)


_TO_UV = {"uv": 1.0, "µv": 1.0, "mv": 1e3, "v": 1e6}


def _simulated(simulate_night, roles, n_epochs: int, seed: int) -> tuple[dict, dict]:
    """Role-keyed µV signals of a simulated night (the primary label of each role)."""
    from sleepedge.channels import assign_roles

    night = simulate_night(hours=n_epochs * 30.0 / 3600.0, seed=seed)
    rmap = assign_roles(list(night.signals), roles=roles)
    raw, rates = {}, {}
    for role, label in rmap.primary.items():
        unit = str(night.units.get(label, "uV")).lower()
        raw[role] = np.asarray(night.signals[label], np.float64) * _TO_UV.get(unit, 1.0)
        rates[role] = float(night.rates_hz[label])
    return raw, rates


def _presence_patterns(present: np.ndarray) -> np.ndarray:
    """Batch-7 presence masks: the recorded mask, then each modality dropped in turn."""
    out = np.ones_like(present)
    m = present.shape[1]
    for i in range(1, len(out)):
        if m > 1:
            out[i, (i - 1) % m] = 0.0
    return out * (present > 0)


def _maxdiff(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


# ----------------------------------------------------------------------------------------
# the gate
# ----------------------------------------------------------------------------------------
@torch.no_grad()
def torch_embed(model: nn.Module, x: np.ndarray, present: np.ndarray, batch: int = 32) -> np.ndarray:
    zs = [model.embed(torch.from_numpy(x[i:i + batch]), torch.from_numpy(present[i:i + batch])).numpy()
          for i in range(0, len(x), batch)]
    return np.concatenate(zs).astype(np.float32)


def ort_embed(sess, x: np.ndarray, present: np.ndarray, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Epoch graph over many epochs -> (z [N,D], stage_logits [N,5])."""
    zs, ss = [], []
    for i in range(0, len(x), batch):
        z, s, _a, _h = sess.run(None, {"x": x[i:i + batch], "present": present[i:i + batch]})
        zs.append(z)
        ss.append(s)
    return np.concatenate(zs), np.concatenate(ss)


def ort_rollout(sess, z_seq: np.ndarray, state_names, state_shapes) -> dict[str, np.ndarray]:
    """Step graph over z_seq [B,T,D] from zero state -> {output: [B,T,...]} (+ final states)."""
    b, t, _ = z_seq.shape
    state = {n: np.zeros((b, *s[1:]), np.float32) for n, s in zip(state_names, state_shapes)}
    outs = {"stage_logits": [], "apnea_logit": [], "hypopnea_logit": []}
    names = [o.name for o in sess.get_outputs()]
    for k in range(t):
        res = dict(zip(names, sess.run(None, {"z": np.ascontiguousarray(z_seq[:, k]), **state})))
        for o in outs:
            outs[o].append(res[o])
        state = {n: res[f"{n}_out"] for n in state_names}
    result = {o: np.stack(v, axis=1) for o, v in outs.items()}
    result.update({f"final_{n}": v for n, v in state.items()})
    return result


def run_gate(model: nn.Module, epoch_path: Path, step_path: Path, data: GateData, *,
             tol: float = FP32_TOL, rollout_steps: int = 512, night_path: Path | None = None,
             progress: Callable[[str], None] | None = None) -> GateReport:
    """Run checks 1-3 of the module doc; raises GateError, returns the report when all pass."""
    say = progress or (lambda _msg: None)
    model.eval()
    report = GateReport(tolerance=tol, data=data.source, rollout_steps=rollout_steps)
    say("onnx.checker")
    for p in (epoch_path, step_path, night_path):
        if p is not None:
            check_onnx(p)
    say("onnxruntime load")
    es, ss = ort_session(epoch_path), ort_session(step_path)

    # -- epoch graph: batch 1 and batch 7
    say("epoch parity")
    x7 = np.ascontiguousarray(data.x[:7])
    p7 = _presence_patterns(data.present[:7]).astype(np.float32)
    for label, x, p in (("epoch_b1", data.x[:1], data.present[:1]), ("epoch_b7", x7, p7)):
        with torch.no_grad():
            tx, tp = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(p))
            z = model.embed(tx, tp)
            ref = [z, *model.epoch_heads(z)]
        got = es.run(None, {"x": np.ascontiguousarray(x), "present": np.ascontiguousarray(p)})
        names = [o.name for o in es.get_outputs()]
        report.checks[label] = {n: _maxdiff(g, r.numpy()) for n, g, r in zip(names, got, ref)}

    # -- step graph: one step from a random state, batch 7
    say("step parity")
    temporal = model.temporal
    g = torch.Generator().manual_seed(7)
    z0 = torch.randn(7, model.config.d_embed, generator=g)
    st0 = tuple(torch.randn(s.shape, generator=g) * 0.5 for s in temporal.init_state(7))
    with torch.no_grad():
        heads, new_state = temporal.step(z0, st0)
    ref = dict(zip([o.name for o in ss.get_outputs()], [t.numpy() for t in (*heads, *new_state)]))
    feeds = {"z": z0.numpy(), **{n: s.numpy() for n, s in zip(temporal.state_names, st0)}}
    got = dict(zip([o.name for o in ss.get_outputs()], ss.run(None, feeds)))
    report.checks["step_b7"] = {n: _maxdiff(got[n], ref[n]) for n in ref}

    # -- rollout vs the whole-night causal forward
    say(f"{rollout_steps}-step rollout")
    z_night = torch_embed(model, data.x, data.present)
    idx = np.arange(rollout_steps) % len(z_night)
    z_seq = np.stack([z_night[idx], z_night[idx[::-1]]]).astype(np.float32)     # [2, T, D]
    with torch.no_grad():
        ref_seq = temporal(torch.from_numpy(z_seq))
        ref_state = _torch_final_state(temporal, z_seq)
    shapes = [tuple(s.shape) for s in temporal.init_state(1)]
    got_seq = ort_rollout(ss, z_seq, temporal.state_names, shapes)
    check = {n: _maxdiff(got_seq[n], r.numpy()) for n, r in zip(("stage_logits", "apnea_logit", "hypopnea_logit"), ref_seq)}
    check.update({f"final_{n}": _maxdiff(got_seq[f"final_{n}"], s) for n, s in ref_state.items()})
    report.checks[f"rollout_{rollout_steps}"] = check

    if night_path is not None:  # the Scan graph over the same sequence, in one call
        say("night graph")
        ns = ort_session(night_path)
        feeds = {"z_seq": z_seq, **{n: np.zeros((2, *s[1:]), np.float32) for n, s in zip(temporal.state_names, shapes)}}
        got = dict(zip([o.name for o in ns.get_outputs()], ns.run(None, feeds)))
        check = {n: _maxdiff(got[n], r.numpy()) for n, r in zip(("stage_logits", "apnea_logit", "hypopnea_logit"), ref_seq)}
        check.update({f"final_{n}": _maxdiff(got[f"{n}_out"], s) for n, s in ref_state.items()})
        report.checks[f"night_{rollout_steps}"] = check

    failures = report.failures
    if failures:
        listed = ", ".join(f"{k} max|Δ|={v:.3g}" for k, v in sorted(failures.items(), key=lambda kv: -kv[1]))
        raise GateError(
            f"ONNX/torch parity failed (tolerance {tol:g}): {listed}; the exported graph does not "
            "compute what the model does, so no bundle was written", failures,
        )
    return report


@torch.no_grad()
def _torch_final_state(temporal: nn.Module, z_seq: np.ndarray) -> dict[str, np.ndarray]:
    """The state after the whole sequence via torch `step` (reference for the state outputs)."""
    state = temporal.init_state(z_seq.shape[0])
    z = torch.from_numpy(z_seq)
    for k in range(z.shape[1]):
        _, state = temporal.step(z[:, k], state)
    return {n: s.numpy() for n, s in zip(temporal.state_names, state)}


# ----------------------------------------------------------------------------------------
# reduced precision: accuracy cost on the gate night
# ----------------------------------------------------------------------------------------
def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@torch.no_grad()
def variant_cost(model: nn.Module, epoch_path: Path, step_path: Path, data: GateData) -> dict:
    """Run a (fp16 / int8) graph pair over the night end to end (epoch graph -> step rollout)
    and compare with fp32 torch: stage agreement and max probability differences."""
    es, ss = ort_session(epoch_path), ort_session(step_path)
    z_ref = torch_embed(model, data.x, data.present)
    st_ref, ap_ref, hy_ref = (t[0].numpy() for t in model.temporal(torch.from_numpy(z_ref[None])))
    z, _ = ort_embed(es, data.x, data.present)
    shapes = [tuple(s.shape) for s in model.temporal.init_state(1)]
    got = ort_rollout(ss, z[None].astype(np.float32), model.temporal.state_names, shapes)
    st, ap, hy = got["stage_logits"][0], got["apnea_logit"][0], got["hypopnea_logit"][0]
    agree = float(np.mean(st.argmax(-1) == st_ref.argmax(-1)))
    return {
        "epochs": int(len(z)),
        "stage_agreement": agree,
        "max_stage_prob_diff": _maxdiff(_softmax(st.astype(np.float64)), _softmax(st_ref.astype(np.float64))),
        "max_apnea_prob_diff": _maxdiff(_sigmoid(ap), _sigmoid(ap_ref)),
        "max_hypopnea_prob_diff": _maxdiff(_sigmoid(hy), _sigmoid(hy_ref)),
        "max_z_diff": _maxdiff(z, z_ref),
        "data": data.source,
    }


def gate_fp16(cost: dict) -> None:
    """Stated fp16 tolerance: agreement >= 99.5 %, max probability difference <= 0.05."""
    bad = []
    if cost["stage_agreement"] < FP16_MIN_AGREEMENT:
        bad.append(f"stage agreement {cost['stage_agreement']:.4f} < {FP16_MIN_AGREEMENT}")
    worst = max(cost["max_stage_prob_diff"], cost["max_apnea_prob_diff"], cost["max_hypopnea_prob_diff"])
    if not worst <= FP16_MAX_PROB_DIFF:
        bad.append(f"max probability difference {worst:.3g} > {FP16_MAX_PROB_DIFF}")
    if bad:
        raise GateError(
            f"fp16 graphs fail the gate on {cost['epochs']} epochs: {'; '.join(bad)}; export without --fp16 "
            "(or use TensorRT fp16 engines, built and checked on the device)",
            {"stage_agreement": cost["stage_agreement"], "max_prob_diff": worst},
        )
