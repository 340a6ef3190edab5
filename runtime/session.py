"""Inference sessions for a bundle's two graphs (torch-free).

    epoch graph   x (batch, M, 3000) float32, present (batch, M) float32
                  -> z (batch, D), stage_logits (batch, 5), apnea_logit (batch), hypopnea_logit (batch)
    step graph    z (1, D), <state_name> (1, ...) for each state
                  -> stage_logits (1, 5), apnea_logit (1), hypopnea_logit (1), <state_name>_out

Execution back-ends, in `device="auto"` preference order:
    tensorrt-engine  a serialized TensorRT engine shipped in the bundle ("engines" in the
                     manifest), run with the `tensorrt` Python API and cuda-python (or pycuda)
    ort-tensorrt     ONNX Runtime's TensorrtExecutionProvider (falls back to CUDA, CPU per node)
    ort-cuda         ONNX Runtime's CUDAExecutionProvider
    cpu              ONNX Runtime's CPUExecutionProvider
`device="cpu"|"cuda"|"tensorrt"` asks for one; if it cannot be had that is a one-line
`DeviceError`, never a silent fallback. Graph inputs/outputs are checked against the manifest
on load (`BundleError` on any mismatch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from sleepedge.errors import BundleError, DeviceError

DEVICES = ("auto", "cpu", "cuda", "tensorrt")


def _ort():
    import onnxruntime as ort

    return ort


def _check_io(graph: str, kind: str, actual: Mapping[str, list], expected: Mapping[str, Any], bundle_root) -> None:
    """Names must match exactly; integer dims must match (symbolic dims match anything)."""
    exp_names = set(expected)
    act_names = set(actual)
    if exp_names != act_names:
        raise BundleError(
            f"bundle {bundle_root}: {graph} graph {kind} are {sorted(act_names)} but the manifest "
            f"declares {sorted(exp_names)}; re-export the bundle so graph and manifest agree"
        )
    for name, spec in expected.items():
        exp_shape = list((spec or {}).get("shape", []) or [])
        act_shape = list(actual[name] or [])
        if not exp_shape or not act_shape:
            continue
        if len(exp_shape) != len(act_shape):
            raise BundleError(
                f"bundle {bundle_root}: {graph} graph {kind[:-1]} '{name}' has rank {len(act_shape)} "
                f"{act_shape} but the manifest declares {exp_shape}; re-export the bundle"
            )
        for a, e in zip(act_shape, exp_shape):
            if isinstance(a, int) and isinstance(e, int) and a != e:
                raise BundleError(
                    f"bundle {bundle_root}: {graph} graph {kind[:-1]} '{name}' has shape {act_shape} "
                    f"but the manifest declares {exp_shape}; re-export the bundle"
                )


def _graph_spec(bundle, graph: str) -> dict:
    try:
        spec = bundle.manifest["graphs"][graph]
        spec["file"], spec["inputs"], spec["outputs"]
    except (KeyError, TypeError):
        raise BundleError(
            f"bundle {bundle.root}: manifest has no complete graphs.{graph} entry (file, inputs, outputs); "
            "re-export the bundle with `sleepedge export`"
        ) from None
    return spec


class _OrtGraph:
    """One ONNX Runtime session, inputs/outputs checked against the manifest."""

    def __init__(self, bundle, graph: str, providers: list, threads: int):
        ort = _ort()
        spec = _graph_spec(bundle, graph)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if os.environ.get("SLEEPEDGE_ORT_SPIN", "0") != "1":
            # idle intra-op threads sleep instead of spinning: spinning burns a core per extra
            # thread between the many small calls of a night (2x the wall on a busy 2-core box)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = bundle.path(spec["file"])
        try:
            self.sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as ex:  # onnxruntime raises its own (non-exported) exception types
            msg = str(ex).splitlines()[0] if str(ex) else type(ex).__name__
            raise BundleError(
                f"bundle {bundle.root}: ONNX Runtime cannot load {spec['file']} ({msg}); "
                "re-export the bundle or check the onnxruntime version"
            ) from None
        _check_io(graph, "inputs", {i.name: i.shape for i in self.sess.get_inputs()}, spec["inputs"], bundle.root)
        _check_io(graph, "outputs", {o.name: o.shape for o in self.sess.get_outputs()}, spec["outputs"], bundle.root)
        self.output_names = [o.name for o in self.sess.get_outputs()]
        self.providers = self.sess.get_providers()
        self._where = (str(bundle.source), spec["file"])

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outs = self.sess.run(self.output_names, dict(feeds))
        except Exception as ex:  # a graph that loads but cannot run (corrupt weights/indices): one line, no traceback
            msg = str(ex).splitlines()[0] if str(ex) else type(ex).__name__
            raise BundleError(f"bundle {self._where[0]}: ONNX Runtime cannot run {self._where[1]} ({msg[:300]}); "
                              "re-export the bundle") from None
        return dict(zip(self.output_names, outs))


class _TrtGraph:
    """A serialized TensorRT engine (TensorRT >= 10 tensor API), host<->device copies per call.

    Only used when the bundle ships an engine built for this GPU/TensorRT version; the engine's
    tensor names are checked against the manifest like an ONNX graph's.
    """

    def __init__(self, bundle, graph: str, engine_file: str):
        import tensorrt as trt  # noqa: F401  (optional, Jetson / GPU only)

        self._cuda = _cuda_api()
        spec = _graph_spec(bundle, graph)
        logger = trt.Logger(trt.Logger.ERROR)
        runtime = trt.Runtime(logger)
        data = bundle.path(engine_file).read_bytes()
        self.engine = runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise DeviceError(
                f"bundle {bundle.root}: TensorRT cannot deserialize {engine_file} (built for another "
                "GPU or TensorRT version); rebuild it with `sleepedge export --tensorrt` or use --device cuda"
            )
        self.ctx = self.engine.create_execution_context()
        self.trt = trt
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = {n: list(self.engine.get_tensor_shape(n)) for n in names
               if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
        outs = {n: list(self.engine.get_tensor_shape(n)) for n in names
                if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT}
        # TensorRT marks dynamic dims -1: treat them as symbolic
        ins = {k: [d if d >= 0 else "dyn" for d in v] for k, v in ins.items()}
        outs = {k: [d if d >= 0 else "dyn" for d in v] for k, v in outs.items()}
        _check_io(graph, "inputs", ins, spec["inputs"], bundle.root)
        _check_io(graph, "outputs", outs, spec["outputs"], bundle.root)
        self.input_names = list(ins)
        self.output_names = list(outs)
        self.providers = ["TensorRT-engine"]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda, trt = self._cuda, self.trt
        buffers = []
        try:
            for name in self.input_names:
                arr = np.ascontiguousarray(feeds[name], dtype=np.float32)
                self.ctx.set_input_shape(name, arr.shape)
                ptr = cuda.alloc(arr.nbytes)
                buffers.append(ptr)
                cuda.h2d(ptr, arr)
                self.ctx.set_tensor_address(name, ptr)
            host_out = {}
            for name in self.output_names:
                shape = tuple(self.ctx.get_tensor_shape(name))
                dtype = trt.nptype(self.engine.get_tensor_dtype(name))
                out = np.empty(shape, dtype=dtype)
                ptr = cuda.alloc(max(out.nbytes, 1))
                buffers.append(ptr)
                self.ctx.set_tensor_address(name, ptr)
                host_out[name] = (out, ptr)
            if not self.ctx.execute_async_v3(0):
                raise DeviceError("TensorRT execution failed; rerun with --device cuda or --device cpu")
            cuda.sync()
            result = {}
            for name, (out, ptr) in host_out.items():
                cuda.d2h(out, ptr)
                result[name] = out.astype(np.float32, copy=False)
            return result
        finally:
            for ptr in buffers:
                cuda.free(ptr)


class _CudaPython:
    """cuda-python runtime API; every call returns (cudaError_t, ...) which is checked."""

    def __init__(self):
        from cuda import cudart  # cuda-python

        self.rt = cudart

    def _ok(self, ret, what: str):
        err = ret[0] if isinstance(ret, tuple) else ret
        if int(err) != 0:
            raise DeviceError(f"CUDA {what} failed ({err}); check the GPU (tegrastats / nvidia-smi) or use --device cpu")
        return ret[1] if isinstance(ret, tuple) and len(ret) > 1 else None

    def alloc(self, n):
        return int(self._ok(self.rt.cudaMalloc(n), "cudaMalloc"))

    def h2d(self, ptr, arr):
        self._ok(self.rt.cudaMemcpy(ptr, arr.ctypes.data, arr.nbytes,
                                    self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice), "cudaMemcpy host->device")

    def d2h(self, arr, ptr):
        self._ok(self.rt.cudaMemcpy(arr.ctypes.data, ptr, arr.nbytes,
                                    self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost), "cudaMemcpy device->host")

    def sync(self):
        self._ok(self.rt.cudaDeviceSynchronize(), "cudaDeviceSynchronize")

    def free(self, ptr):
        self.rt.cudaFree(ptr)


class _PyCuda:
    def __init__(self):
        import pycuda.autoinit  # noqa: F401
        import pycuda.driver as drv

        self.drv = drv
        self._allocs = {}

    def alloc(self, n):
        a = self.drv.mem_alloc(n)
        self._allocs[int(a)] = a
        return int(a)

    def h2d(self, ptr, arr):
        self.drv.memcpy_htod(ptr, arr)

    def d2h(self, arr, ptr):
        self.drv.memcpy_dtoh(arr, ptr)

    def sync(self):
        self.drv.Context.synchronize()

    def free(self, ptr):
        self._allocs.pop(ptr).free()


def _cuda_api():
    try:
        return _CudaPython()
    except ImportError:
        return _PyCuda()


def _trt_ep_options() -> dict:
    """ORT TensorRT EP: cache the engines it builds (minutes on a Jetson) across runs, in
    $SLEEPEDGE_TRT_CACHE or ~/.cache/sleepedge/ort-trt; fp32 (fp16 changes the numbers: export
    validates fp16 separately)."""
    import os
    from pathlib import Path

    cache = Path(os.environ.get("SLEEPEDGE_TRT_CACHE") or Path.home() / ".cache" / "sleepedge" / "ort-trt")
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as ex:
        raise DeviceError(f"TensorRT engine cache {cache} cannot be created ({ex.strerror}); "
                          "set SLEEPEDGE_TRT_CACHE to a writable folder") from None
    return {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache), "trt_fp16_enable": False}


def _pick_engines(bundle) -> dict[str, str]:
    """{"epoch": file, "step": file} from the manifest's engines (keys like `epoch_fp16`, entries
    {"file", "graph": "epoch.onnx", "precision", "tensorrt", "gpu"}); fp16 preferred over fp32."""
    engines = bundle.manifest.get("engines") or {}
    picked: dict[str, tuple[int, str, dict]] = {}
    for key, entry in engines.items():
        if not isinstance(entry, dict) or "file" not in entry:
            continue
        for g in ("epoch", "step"):
            graph_file = bundle.manifest["graphs"][g]["file"]
            if entry.get("graph") == graph_file or str(key).split("_")[0] == g:
                rank = 1 if entry.get("precision") == "fp16" else 0
                if g not in picked or rank > picked[g][0]:
                    picked[g] = (rank, entry["file"], entry)
    return {g: v[1] for g, v in picked.items()} if set(picked) == {"epoch", "step"} else {}


def _trt_engine_available(bundle) -> tuple[bool, str]:
    chosen = _pick_engines(bundle)
    if not chosen:
        return False, "the bundle ships no TensorRT engines"
    try:
        import tensorrt
    except ImportError:
        return False, "the `tensorrt` Python package is not installed"
    built = {str(e.get("tensorrt")) for e in (bundle.manifest.get("engines") or {}).values()
             if isinstance(e, dict) and e.get("file") in chosen.values()}
    if built and built != {str(tensorrt.__version__)}:
        return False, f"the engines were built with TensorRT {', '.join(sorted(built))}, this is {tensorrt.__version__}"
    try:
        import cuda.cudart  # noqa: F401
    except ImportError:
        try:
            import pycuda.driver  # noqa: F401
        except ImportError:
            return False, "neither cuda-python nor pycuda is installed"
    return True, ""


@dataclass
class Engine:
    """The bundle's epoch and step graphs on one back-end, plus the recurrent state layout."""

    device: str                     # tensorrt-engine | ort-tensorrt | ort-cuda | cpu
    providers: list[str]
    epoch: Any
    step: Any
    state_spec: dict[str, dict]     # state name -> {"shape": [1, ...], "dtype": "float32"}
    threads: int = 1
    notes: list[str] = field(default_factory=list)
    night_loader: Any = None        # () -> graph of the bundle's `night` graph (ONNX Scan over the step), opened on first use
    _night: Any = None

    def describe(self) -> str:
        text = f"device {self.device} (providers: {', '.join(self.providers)}; intra-op threads {self.threads})"
        return text + "".join(f"; {n}" for n in self.notes)

    def init_state(self) -> dict[str, np.ndarray]:
        return {name: np.zeros([int(d) for d in spec["shape"]], dtype=np.float32)
                for name, spec in self.state_spec.items()}

    def run_epoch(self, x: np.ndarray, present: np.ndarray) -> dict[str, np.ndarray]:
        return self.epoch.run({"x": np.ascontiguousarray(x, dtype=np.float32),
                               "present": np.ascontiguousarray(present, dtype=np.float32)})

    def run_step(self, z: np.ndarray, state: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        feeds = {"z": np.ascontiguousarray(z, dtype=np.float32)}
        feeds.update(state)
        out = self.step.run(feeds)
        new_state = {name: out.pop(f"{name}_out") for name in self.state_spec}
        return out, new_state

    @property
    def has_night(self) -> bool:
        return self.night_loader is not None

    def run_night(self, z_seq: np.ndarray, state: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """T steps in one call: z_seq (T, D) -> heads (T, ...) and the state after the last step
        (the bundle's `night` graph, an ONNX Scan over the step graph, gated == T run_step calls).
        Only when `has_night` (the scorer runs the step loop otherwise)."""
        if self._night is None:
            self._night = self.night_loader()
        feeds = {"z_seq": np.ascontiguousarray(z_seq[None], dtype=np.float32)}
        feeds.update(state)
        out = self._night.run(feeds)
        new_state = {name: out.pop(f"{name}_out") for name in self.state_spec}
        return {k: v[0] for k, v in out.items()}, new_state


def make_sessions(bundle, device: str = "auto", threads: int = 1) -> Engine:
    """Open both graphs of `bundle` on the requested back-end (see module docstring)."""
    if device not in DEVICES:
        raise DeviceError(f"--device {device!r} is unknown; expected one of {', '.join(DEVICES)}")
    state_spec = bundle.manifest.get("state")
    if not isinstance(state_spec, dict):
        raise BundleError(f"bundle {bundle.root}: manifest has no 'state' table; re-export the bundle")
    available = _ort().get_available_providers()
    has_ort_trt = "TensorrtExecutionProvider" in available
    has_ort_cuda = "CUDAExecutionProvider" in available
    trt_ok, trt_why = _trt_engine_available(bundle)

    def ort_engine(name: str, providers: list) -> Engine:
        providers = [(p, _trt_ep_options()) if p == "TensorrtExecutionProvider" else p for p in providers]
        epoch = _OrtGraph(bundle, "epoch", providers, threads)
        step = _OrtGraph(bundle, "step", providers, threads)
        night = ((lambda: _OrtGraph(bundle, "night", providers, threads))
                 if "night" in (bundle.manifest.get("graphs") or {}) else None)   # loaded on first use
        return Engine(name, epoch.providers, epoch, step, state_spec, threads, night_loader=night)

    def trt_engine() -> Engine:
        chosen = _pick_engines(bundle)
        epoch = _TrtGraph(bundle, "epoch", chosen["epoch"])
        step = _TrtGraph(bundle, "step", chosen["step"])
        return Engine("tensorrt-engine", epoch.providers, epoch, step, state_spec, threads)

    if device == "cpu":
        return ort_engine("cpu", ["CPUExecutionProvider"])
    if device == "cuda":
        if not has_ort_cuda:
            raise DeviceError(
                f"--device cuda: ONNX Runtime here offers only {', '.join(available)}; install "
                "onnxruntime-gpu (Jetson: the jetson-ai-lab wheel) or use --device cpu"
            )
        return ort_engine("ort-cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    if device == "tensorrt":
        if trt_ok:
            return trt_engine()
        if has_ort_trt:
            return ort_engine("ort-tensorrt", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
        raise DeviceError(
            f"--device tensorrt: no TensorRT engine path ({trt_why}) and ONNX Runtime offers no "
            f"TensorrtExecutionProvider (only {', '.join(available)}); use --device auto or cpu"
        )
    # auto: a bundle engine that will not load here (other GPU / TensorRT build) falls back, noted
    notes = []
    if trt_ok:
        try:
            return trt_engine()
        except DeviceError as ex:
            notes.append(f"TensorRT engine skipped: {ex}")
    if has_ort_trt:
        eng = ort_engine("ort-tensorrt", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    elif has_ort_cuda:
        eng = ort_engine("ort-cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    else:
        eng = ort_engine("cpu", ["CPUExecutionProvider"])
    eng.notes = notes
    return eng
