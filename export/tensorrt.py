"""ONNX -> TensorRT engine, with the TensorRT Python API (optional dependency).

Handles the API differences between TensorRT 8.x and 10.x:
- network creation: TRT < 10 needs the EXPLICIT_BATCH flag; TRT 10 networks are always
  explicit-batch (the flag is deprecated, passing 0 is correct);
- workspace: `config.set_memory_pool_limit(MemoryPoolType.WORKSPACE, n)` (TRT >= 8.4) or the
  older `config.max_workspace_size = n`;
- building: `builder.build_serialized_network` (TRT >= 8, the only one in 10) or, for very old
  versions, `builder.build_engine(...).serialize()`.
An optimisation profile covers the dynamic batch axis (min / opt / max) of every input.
Engines are specific to a GPU model and TensorRT version: both are recorded with the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sleepedge.errors import DeviceError, ExportError


def import_tensorrt() -> Any:
    """The `tensorrt` module, or a one-line DeviceError saying it is not installed."""
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError:
        raise DeviceError(
            "--trt: TensorRT is not installed on this machine (import tensorrt failed); run the export "
            "on the target GPU/Jetson with `pip install tensorrt` (or JetPack), or drop --trt"
        ) from None
    return trt


def trt_major(trt: Any) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except (AttributeError, ValueError):
        return 0


def gpu_name() -> str:
    """Name of the CUDA device the engine is built on ('unknown' when it cannot be asked)."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - any CUDA init problem -> unknown, never fatal here
        pass
    return "unknown"


def build_engine(onnx_path: Path, out_path: Path, fp16: bool = False, *, min_batch: int = 1,
                 opt_batch: int = 1, max_batch: int = 64, workspace_bytes: int = 1 << 30,
                 trt: Any | None = None) -> dict:
    """Parse `onnx_path`, build a serialised engine into `out_path`; return its manifest entry.

    Raises DeviceError when TensorRT is missing (or the GPU lacks fast fp16 for `fp16=True`),
    ExportError when the ONNX graph cannot be parsed or the build fails.
    """
    trt = trt or import_tensorrt()
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ExportError(f"TensorRT profile batch sizes must satisfy 1 <= min {min_batch} <= opt {opt_batch} <= max {max_batch}")
    major = trt_major(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if major < 10 and hasattr(trt, "NetworkDefinitionCreationFlag"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no details"
        raise ExportError(f"TensorRT {trt.__version__} cannot parse {onnx_path.name}: {' '.join(errors.split())[:300]}")

    config = builder.create_builder_config()
    if hasattr(config, "set_memory_pool_limit") and hasattr(trt, "MemoryPoolType"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    else:
        config.max_workspace_size = int(workspace_bytes)
    if fp16:
        if not getattr(builder, "platform_has_fast_fp16", True):
            raise DeviceError(f"--fp16: this GPU ({gpu_name()}) has no fast fp16 in TensorRT; build fp32 engines (drop --fp16)")
        config.set_flag(trt.BuilderFlag.FP16)

    profile = builder.create_optimization_profile()
    shapes: dict[str, dict[str, list[int]]] = {}
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        dims = [int(d) for d in inp.shape]
        if any(d < 0 for d in dims[1:]):
            raise ExportError(f"{onnx_path.name}: input {inp.name} has dynamic non-batch dims {dims}; only the batch axis may be dynamic")
        lo, mid, hi = ([b, *dims[1:]] for b in (min_batch, opt_batch, max_batch))
        profile.set_shape(inp.name, lo, mid, hi)
        shapes[inp.name] = {"min": lo, "opt": mid, "max": hi}
    config.add_optimization_profile(profile)

    if hasattr(builder, "build_serialized_network"):
        plan = builder.build_serialized_network(network, config)
    else:  # TensorRT 7
        engine = builder.build_engine(network, config)
        plan = engine.serialize() if engine is not None else None
    if plan is None:
        raise ExportError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path.name} (see the TensorRT log above)")
    out_path.write_bytes(bytes(plan))
    return {
        "file": out_path.name,
        "graph": onnx_path.name,
        "precision": "fp16" if fp16 else "fp32",
        "tensorrt": str(trt.__version__),
        "gpu": gpu_name(),
        "profile": shapes,
        "bytes": out_path.stat().st_size,
    }
