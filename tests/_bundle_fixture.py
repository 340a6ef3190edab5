"""Small but real sleepedge bundles built WITHOUT torch (onnx.helper), for runtime tests.

Epoch graph (manifest names and shapes exactly as export writes them):
    x (batch, M, 3000), present (batch, M)
    features f = [mean(x), std(x), mean|diff(x)|] per modality, times present  -> (batch, 3M)
    z = tanh(f @ W1 + b1)                                                         (batch, D)
    stage_logits = z @ Ws, apnea_logit = z @ wa, hypopnea_logit = z @ wh
Step graph: a real causal recurrence with two states
    conv (1, D, K)   shift register of the last K embeddings
    ssm  (1, S)      ssm_out = a * ssm + (conv_out . wk) @ Wz     (|a| < 1)
    y = tanh(ssm_out) -> stage_logits (1, 5), apnea_logit (1), hypopnea_logit (1)
So a step depends on every earlier epoch: streaming only matches offline if the runtime
carries the state correctly.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

D = 16
S = 8
K = 3


def _init(name, arr):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def _i64(name, values):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def epoch_graph(m: int, rng: np.random.Generator, opset: int = 18):
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("ReduceMean", ["x", "ax2"], ["mean"], keepdims=0),
        helper.make_node("ReduceMean", ["x", "ax2"], ["mean_k"], keepdims=1),
        helper.make_node("Sub", ["x", "mean_k"], ["xc"]),
        helper.make_node("Mul", ["xc", "xc"], ["sq"]),
        helper.make_node("ReduceMean", ["sq", "ax2"], ["var"], keepdims=0),
        helper.make_node("Sqrt", ["var"], ["std"]),
        helper.make_node("Slice", ["x", "s1", "send", "ax2"], ["x1"]),
        helper.make_node("Slice", ["x", "s0", "sm1", "ax2"], ["x0"]),
        helper.make_node("Sub", ["x1", "x0"], ["dx"]),
        helper.make_node("Abs", ["dx"], ["adx"]),
        helper.make_node("ReduceMean", ["adx", "ax2"], ["rough"], keepdims=0),
        helper.make_node("Mul", ["mean", "present"], ["f0"]),
        helper.make_node("Mul", ["std", "present"], ["f1"]),
        helper.make_node("Mul", ["rough", "present"], ["f2"]),
        helper.make_node("Concat", ["f0", "f1", "f2", "present"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "W1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Tanh", ["hb"], ["z"]),
        helper.make_node("MatMul", ["z", "Ws"], ["stage_logits"]),
        helper.make_node("MatMul", ["z", "wa"], ["a2"]),
        helper.make_node("Squeeze", ["a2", "ax1"], ["apnea_logit"]),
        helper.make_node("MatMul", ["z", "wh"], ["h2"]),
        helper.make_node("Squeeze", ["h2", "ax1"], ["hypopnea_logit"]),
    ]
    inits = [
        _i64("ax2", [2]), _i64("ax1", [1]), _i64("s0", [0]), _i64("s1", [1]),
        _i64("send", [np.iinfo(np.int64).max]), _i64("sm1", [-1]),
        _init("W1", rng.normal(0, 0.6, (4 * m, D))), _init("b1", rng.normal(0, 0.3, D)),
        _init("Ws", rng.normal(0, 1.0, (D, 5))), _init("wa", rng.normal(0, 1.0, (D, 1))),
        _init("wh", rng.normal(0, 1.0, (D, 1))),
    ]
    g = helper.make_graph(
        nodes, "epoch",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", m, 3000]),
         helper.make_tensor_value_info("present", TensorProto.FLOAT, ["batch", m])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", D]),
         helper.make_tensor_value_info("stage_logits", TensorProto.FLOAT, ["batch", 5]),
         helper.make_tensor_value_info("apnea_logit", TensorProto.FLOAT, ["batch"]),
         helper.make_tensor_value_info("hypopnea_logit", TensorProto.FLOAT, ["batch"])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="sleepedge-tests", ir_version=10)


def step_graph(rng: np.random.Generator, opset: int = 18):
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Slice", ["conv", "s1", "send", "ax2"], ["conv_tail"]),   # (1, D, K-1)
        helper.make_node("Unsqueeze", ["z", "ax2"], ["z3"]),                        # (1, D, 1)
        helper.make_node("Concat", ["conv_tail", "z3"], ["conv_out"], axis=2),      # (1, D, K)
        helper.make_node("MatMul", ["conv_out", "wk"], ["ck"]),                     # (1, D, 1)
        helper.make_node("Squeeze", ["ck", "ax2"], ["c"]),                          # (1, D)
        helper.make_node("MatMul", ["c", "Wz"], ["u"]),                             # (1, S)
        helper.make_node("Mul", ["ssm", "decay"], ["sa"]),
        helper.make_node("Add", ["sa", "u"], ["ssm_out"]),
        helper.make_node("Tanh", ["ssm_out"], ["y"]),
        helper.make_node("MatMul", ["y", "Ws"], ["stage_logits"]),
        helper.make_node("MatMul", ["y", "wa"], ["a2"]),
        helper.make_node("Squeeze", ["a2", "ax1"], ["apnea_logit"]),
        helper.make_node("MatMul", ["y", "wh"], ["h2"]),
        helper.make_node("Squeeze", ["h2", "ax1"], ["hypopnea_logit"]),
    ]
    inits = [
        _i64("ax2", [2]), _i64("ax1", [1]), _i64("s1", [1]), _i64("send", [np.iinfo(np.int64).max]),
        _init("wk", rng.normal(0, 0.7, (K, 1))), _init("Wz", rng.normal(0, 0.5, (D, S))),
        _init("decay", rng.uniform(0.5, 0.95, S)),
        _init("Ws", rng.normal(0, 1.5, (S, 5))), _init("wa", rng.normal(0, 1.5, (S, 1))),
        _init("wh", rng.normal(0, 1.5, (S, 1))),
    ]
    g = helper.make_graph(
        nodes, "step",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, D]),
         helper.make_tensor_value_info("conv", TensorProto.FLOAT, [1, D, K]),
         helper.make_tensor_value_info("ssm", TensorProto.FLOAT, [1, S])],
        [helper.make_tensor_value_info("stage_logits", TensorProto.FLOAT, [1, 5]),
         helper.make_tensor_value_info("apnea_logit", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("hypopnea_logit", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("conv_out", TensorProto.FLOAT, [1, D, K]),
         helper.make_tensor_value_info("ssm_out", TensorProto.FLOAT, [1, S])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="sleepedge-tests", ir_version=10)


NOTICE = "SIMULATED: this test model was trained on simulated nights only; not for clinical use"


def manifest(modalities=("EEG", "EOG", "EMG", "ECG"), simulated: bool = True) -> dict:
    from sleepedge.preprocess import PreprocessConfig

    m = len(modalities)
    return {
        "schema": "sleepedge.bundle/1", "name": "test-fixture", "created": "2026-01-01T00:00:00Z",
        "model": {"family": "FixtureLinear", "preset": "test", "config": {"d": D, "s": S, "k": K},
                  "n_params": int(4 * m * D + D + 7 * D + K + D * S + 8 * S)},
        "signal": {"fs_hz": 100, "epoch_s": 30.0, "epoch_samples": 3000, "modalities": list(modalities),
                   "preprocessing": PreprocessConfig().to_dict()},
        "labels": {"stages": ["W", "N1", "N2", "N3", "REM"], "tasks": ["stage", "apnea", "hypopnea"]},
        "graphs": {
            "epoch": {"file": "epoch.onnx",
                      "inputs": {"x": {"shape": ["batch", m, 3000], "dtype": "float32"},
                                 "present": {"shape": ["batch", m], "dtype": "float32"}},
                      "outputs": {"z": {"shape": ["batch", D]}, "stage_logits": {"shape": ["batch", 5]},
                                  "apnea_logit": {"shape": ["batch"]}, "hypopnea_logit": {"shape": ["batch"]}}},
            "step": {"file": "step.onnx",
                     "inputs": {"z": {"shape": [1, D]}, "conv": {"shape": [1, D, K]}, "ssm": {"shape": [1, S]}},
                     "outputs": {"stage_logits": {"shape": [1, 5]}, "apnea_logit": {"shape": [1]},
                                 "hypopnea_logit": {"shape": [1]}, "conv_out": {"shape": [1, D, K]},
                                 "ssm_out": {"shape": [1, S]}}},
        },
        "state": {"conv": {"shape": [1, D, K], "dtype": "float32"}, "ssm": {"shape": [1, S], "dtype": "float32"}},
        "engines": {}, "opset": 18, "versions": {"onnx": "fixture", "sleepedge": "0.1.0"},
        "provenance": {"simulated": simulated, "data": "none (random weights, test fixture)", "metrics": {},
                       "notice": NOTICE if simulated else ""},
        "files": {},
    }


def build_bundle(out: Path, modalities=("EEG", "EOG", "EMG", "ECG"), seed: int = 0, simulated: bool = True,
                 mutate=None, extra_files=None) -> Path:
    """Write a fixture bundle at `out` (dir, or zip when it ends in .zip). `mutate(manifest)`
    may edit the manifest before writing; `extra_files` {name: bytes} adds files (e.g. engines)."""
    import onnx

    from sleepedge.bundle import write_bundle

    rng = np.random.default_rng(seed)
    man = manifest(modalities, simulated)
    with tempfile.TemporaryDirectory() as tmp:
        ep, st = Path(tmp) / "epoch.onnx", Path(tmp) / "step.onnx"
        em, sm = epoch_graph(len(modalities), rng), step_graph(rng)
        onnx.checker.check_model(em, full_check=True)
        onnx.checker.check_model(sm, full_check=True)
        onnx.save(em, ep)
        onnx.save(sm, st)
        files = {"epoch.onnx": ep, "step.onnx": st}
        for name, data in (extra_files or {}).items():
            (Path(tmp) / name).write_bytes(data)
            files[name] = Path(tmp) / name
        if mutate is not None:
            mutate(man)
        return write_bundle(Path(out), man, files)


DEFAULT_RATES = {"EEG Fpz-Cz": 100.0, "EOG horizontal": 100.0, "EMG submental": 200.0, "ECG II": 256.0}


def write_test_edf(path: Path, minutes: float = 10.0, seed: int = 0, rates=None) -> Path:
    """A small EDF whose spectra drift slowly (so the fixture model's stages change)."""
    from sleepedge.edf import SignalSpec, write_edf

    specs = [SignalSpec(label, fs, data) for label, (fs, data) in signals_for(minutes, seed, rates).items()]
    return write_edf(Path(path), specs)


def signals_for(minutes: float = 10.0, seed: int = 0, rates=None) -> dict[str, tuple[float, np.ndarray]]:
    """label -> (rate, µV samples): noise whose amplitude and dominant frequency drift over minutes."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, (label, fs) in enumerate((rates or DEFAULT_RATES).items()):
        t = np.arange(int(round(minutes * 60 * fs))) / fs
        amp = 20 + 15 * np.sin(2 * np.pi * t / (600 + 170 * k) + k)
        freq = 2 + 8 * (0.5 + 0.5 * np.sin(2 * np.pi * t / (900 + 130 * k)))
        phase = 2 * np.pi * np.cumsum(freq) / fs
        out[label] = (fs, rng.normal(0, 1, len(t)) * amp + 40 * np.sin(phase) * (amp / 20))
    return out
