"""The TensorRT-engine back-end's plumbing, without a GPU.

No TensorRT or CUDA can be installed here, so this test puts a stand-in `tensorrt` (the
TensorRT 10 tensor API subset runtime/session.py uses) and `cuda.cudart` (host memory behind
device pointers) into sys.modules, for this test only. The stand-in "engine" is the ONNX graph
itself run by ONNX Runtime, so what it checks is runtime's side: engine selection from the
manifest, tensor-name checks against it, shape setting, buffer copies in both directions,
state threading through the step engine, and that scores equal the CPU back-end's.
It does NOT prove the real TensorRT API behaves like the stand-in (that needs a Jetson/GPU run,
marked `trt`)."""

from __future__ import annotations

import ctypes
import sys
import types

import numpy as np
import pytest

from tests._bundle_fixture import build_bundle, signals_for


def _fake_modules():
    import onnxruntime as ort

    mem: dict[int, np.ndarray] = {}
    cudart = types.ModuleType("cuda.cudart")

    def cudaMalloc(n):
        buf = np.zeros(max(int(n), 1), np.uint8)
        mem[buf.ctypes.data] = buf
        return (0, buf.ctypes.data)

    cudart.cudaMalloc = cudaMalloc
    cudart.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    cudart.cudaMemcpy = lambda dst, src, n, kind: (ctypes.memmove(dst, src, n) and 0,)
    cudart.cudaDeviceSynchronize = lambda: (0,)
    cudart.cudaFree = lambda ptr: (mem.pop(ptr) is not None and 0,)
    cuda = types.ModuleType("cuda")
    cuda.cudart = cudart

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.nptype = lambda dtype: np.float32

    class Logger:
        ERROR = 1

        def __init__(self, level):
            pass

    class Context:
        def __init__(self, eng):
            self.eng, self.shapes, self.addr = eng, {}, {}

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr

        def get_tensor_shape(self, name):
            batch = next(iter(self.shapes.values()))[0]
            return tuple(batch if d == -1 else d for d in self.eng.get_tensor_shape(name))

        def execute_async_v3(self, stream):
            feeds = {}
            for name, shape in self.shapes.items():
                n = int(np.prod(shape)) * 4
                feeds[name] = np.frombuffer(ctypes.string_at(self.addr[name], n), np.float32).reshape(shape)
            outs = self.eng.sess.run(self.eng.outputs, feeds)
            for name, arr in zip(self.eng.outputs, outs):
                arr = np.ascontiguousarray(arr, np.float32)
                ctypes.memmove(self.addr[name], arr.ctypes.data, arr.nbytes)
            return True

    class Engine:
        def __init__(self, data):
            self.sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
            self.io = [(i.name, "in", i.shape) for i in self.sess.get_inputs()] + \
                      [(o.name, "out", o.shape) for o in self.sess.get_outputs()]
            self.outputs = [o.name for o in self.sess.get_outputs()]
            self.num_io_tensors = len(self.io)

        def get_tensor_name(self, i):
            return self.io[i][0]

        def _get(self, name):
            return next(t for t in self.io if t[0] == name)

        def get_tensor_mode(self, name):
            return self._get(name)[1]

        def get_tensor_shape(self, name):
            return [d if isinstance(d, int) else -1 for d in self._get(name)[2]]

        def get_tensor_dtype(self, name):
            return "float32"

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine(data) if data[:4] != b"junk" else None

    trt.Logger, trt.Runtime = Logger, Runtime
    return {"tensorrt": trt, "cuda": cuda, "cuda.cudart": cudart}, mem


def _with_engines(tmp_path, plan_bytes=None):
    """A fixture bundle whose 'engines' are (for the stand-in) the ONNX graphs themselves."""
    src = build_bundle(tmp_path / "plain.sleepedge")
    plans = {"epoch.fp32.plan": plan_bytes or (src / "epoch.onnx").read_bytes(),
             "step.fp32.plan": plan_bytes or (src / "step.onnx").read_bytes()}

    def add(m):
        m["engines"] = {f"{g}_fp32": {"file": f"{g}.fp32.plan", "graph": f"{g}.onnx", "precision": "fp32",
                                      "tensorrt": "10.3.0", "gpu": "stand-in"} for g in ("epoch", "step")}

    return build_bundle(tmp_path / "trt.sleepedge", mutate=add, extra_files=plans)


def test_tensorrt_engine_path_matches_cpu(tmp_path, monkeypatch):
    from runtime.scorer import StreamingScorer
    from runtime.session import make_sessions
    from sleepedge.bundle import load_bundle

    mods, mem = _fake_modules()
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    b = load_bundle(_with_engines(tmp_path))
    eng = make_sessions(b, "auto")
    assert eng.device == "tensorrt-engine" and eng.providers == ["TensorRT-engine"]
    assert make_sessions(b, "tensorrt").device == "tensorrt-engine"
    sig = signals_for(6, seed=2)
    rates = {"EEG": 100.0, "EOG": 100.0, "EMG": 200.0, "ECG": 256.0}
    data = {role: sig[lab][1] for role, lab in zip(rates, sig)}
    trt_res = StreamingScorer(b, rates, eng).push(data)
    cpu_res = StreamingScorer(b, rates, make_sessions(b, "cpu")).push(data)
    assert len(trt_res) == 12 and [r.stage for r in trt_res] == [r.stage for r in cpu_res]
    assert np.max(np.abs(np.array([r.probs for r in trt_res]) - np.array([r.probs for r in cpu_res]))) < 1e-6
    assert not mem  # every device buffer was freed


def test_tensorrt_engine_that_does_not_deserialize_is_device_error(tmp_path, monkeypatch):
    from runtime.session import make_sessions
    from sleepedge.bundle import load_bundle
    from sleepedge.errors import DeviceError

    mods, _ = _fake_modules()
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    b = load_bundle(_with_engines(tmp_path, plan_bytes=b"junk plan"))
    with pytest.raises(DeviceError, match="cannot deserialize epoch.fp32.plan"):
        make_sessions(b, "tensorrt")
    eng = make_sessions(b, "auto")  # auto falls back and says why
    assert eng.device == "cpu" and "TensorRT engine skipped: " in eng.describe()
    mods["tensorrt"].__version__ = "10.7.0"  # engines built with another TensorRT: not used
    assert make_sessions(b, "auto").device == "cpu"
    with pytest.raises(DeviceError, match="built with TensorRT 10.3.0, this is 10.7.0"):
        make_sessions(b, "tensorrt")
