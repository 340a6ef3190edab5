"""Checkpoint -> gated bundle, one or many (imports torch).

    export_checkpoint(ckpt, out, ...)   load_checkpoint -> export_model
    export_model(model, ckpt, out, ...) graphs -> gate -> (fp16 / int8 / TensorRT) -> manifest -> bundle
    export_all(ckpt_dir, out_dir, ...)  every *.pt in a folder; one failure does not stop the rest

Everything is built in a private temporary folder; `write_bundle` (which re-verifies the
checksums and graph I/O) is the last step, so a failing gate never leaves a bundle behind.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

import sleepedge
from sleepedge.bundle import SCHEMA, load_bundle, write_bundle
from sleepedge.contract import STAGES, TASKS
from sleepedge.errors import ExportError, SleepEdgeError

from export import gate as gate_mod
from export.night import build_night_graph
from export.onnx_export import export_epoch_graph, export_step_graph

SIMULATED_NOTICE = ("trained on SIMULATED nights only; not validated on real sleep recordings, "
                    "do not use for clinical decisions")

Progress = Callable[[str], None]
# model families with the bundle interface: embed / epoch_heads / temporal (step, init_state, state_names)
EXPORTABLE = ("SynthSleepNet", "SpectralSleepNet")


@dataclass
class ExportResult:
    name: str
    out: Path
    manifest: dict
    seconds: float

    @property
    def size_bytes(self) -> int:
        if self.out.is_file():
            return self.out.stat().st_size
        return sum(p.stat().st_size for p in self.out.rglob("*") if p.is_file())

    @property
    def parity(self) -> float:
        return float(self.manifest["gate"]["max_abs_diff"])


@dataclass
class BatchItem:
    checkpoint: Path
    result: ExportResult | None
    error: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.result is not None


def _versions(extra: Mapping[str, str] | None = None) -> dict:
    import numpy
    import onnx
    import onnxruntime

    v = {"sleepedge": sleepedge.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
         "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__, "python": platform.python_version()}
    try:
        import onnxscript

        v["onnxscript"] = onnxscript.__version__
    except ImportError:
        pass
    v.update(extra or {})
    return v


def _preprocessing(ckpt: Mapping, model: nn.Module | None = None) -> tuple[dict, str]:
    """The checkpoint's saved PreprocessConfig dict, else the model config's own
    (`config.preprocess_config()`), else today's defaults (and say which)."""
    from sleepedge.preprocess import PreprocessConfig

    for holder in (ckpt, ckpt.get("extra") or {}, ckpt.get("provenance") or {}):
        for key in ("preprocess", "preprocessing"):
            d = holder.get(key) if isinstance(holder, Mapping) else None
            if isinstance(d, Mapping) and d:
                return PreprocessConfig.from_dict(d).to_dict(), "checkpoint"
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "preprocess_config"):
        return cfg.preprocess_config().to_dict(), f"model config ({type(cfg).__name__}.preprocess_config)"
    return PreprocessConfig().to_dict(), "default (the checkpoint saved none)"


def _tasks(ckpt: Mapping) -> list[str]:
    """Tasks whose heads were trained (provenance `tasks`; default all three, as before)."""
    tasks = (ckpt.get("provenance") or {}).get("tasks")
    if tasks is None:
        return list(TASKS)
    bad = [t for t in tasks if t not in TASKS]
    if bad or "stage" not in tasks:
        raise ExportError(f"checkpoint provenance tasks {list(tasks)}: expected a subset of {list(TASKS)} with 'stage'")
    return [t for t in TASKS if t in tasks]


def _provenance(ckpt: Mapping, ckpt_path: Path | None) -> dict:
    prov = dict(ckpt.get("provenance") or {})
    data = prov.get("data", prov.get("dataset", "unknown"))
    simulated = bool(prov.get("simulated", False))
    if not simulated and isinstance(data, str) and "simulat" in data.lower():
        simulated = True
    out = {
        "simulated": simulated,
        "data": data if isinstance(data, (str, list, dict)) else str(data),
        "metrics": _plain(dict(ckpt.get("metrics") or {})),
        "notice": SIMULATED_NOTICE if simulated else str(prov.get("notice", "")),
        "training": _plain({k: v for k, v in prov.items() if k not in ("simulated", "data", "notice")}),
    }
    if ckpt_path is not None:
        h = hashlib.sha256(Path(ckpt_path).read_bytes()).hexdigest()
        out["checkpoint"] = {"file": Path(ckpt_path).name, "sha256": h}
    if "torch_version" in ckpt:
        out["training"]["torch_version"] = ckpt["torch_version"]
    return out


def _plain(obj):
    """Metrics as plain JSON: NaN/inf (undefined metrics, e.g. apnea AUROC on a set without
    events) become null instead of making the manifest invalid JSON."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    return obj


def _state_manifest(model: nn.Module) -> dict:
    return {n: {"shape": list(s.shape), "dtype": "float32"}
            for n, s in zip(model.temporal.state_names, model.temporal.init_state(1))}


def export_model(model: nn.Module, ckpt: Mapping, out: Path, *, name: str | None = None,
                 ckpt_path: Path | None = None, opset: int = 18, fp16: bool = False, int8: bool = False,
                 trt: bool = False, tol: float = gate_mod.FP32_TOL, rollout_steps: int = 512,
                 gate_epochs: int = 240, trt_max_batch: int = 64, progress: Progress | None = None) -> ExportResult:
    """Export a SynthSleepNet / SpectralSleepNet to a gated bundle at `out` (dir, or zip when `out` ends in .zip)."""
    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    out = Path(out)
    if rollout_steps < 500:
        raise ExportError(f"rollout_steps={rollout_steps}; the gate needs a >= 500-step state rollout")
    if type(model).__name__ not in EXPORTABLE or not hasattr(model, "temporal"):
        raise ExportError(
            f"{ckpt_path or name}: a {type(model).__name__} checkpoint cannot be exported as a bundle; "
            f"export one of {', '.join(EXPORTABLE)} (with its temporal head)"
        )
    trt_mod = None
    if trt:  # fail in one line before the slow part
        from export.tensorrt import import_tensorrt

        trt_mod = import_tensorrt()
    grad = torch.is_grad_enabled()
    torch.set_grad_enabled(False)
    try:
        model = model.eval().float()
        cfg = model.config
        with tempfile.TemporaryDirectory(prefix="sleepedge-export-") as tmpd:
            tmp = Path(tmpd)
            say("export epoch graph")
            eg = export_epoch_graph(model, tmp / "epoch.onnx", opset=opset)
            say("export step graph")
            sg = export_step_graph(model, tmp / "step.onnx", opset=opset)
            say("build night graph")
            night_entry = build_night_graph(sg.path, tmp / "night.onnx")
            prep, prep_source = _preprocessing(ckpt, model)
            data = gate_mod.gate_data(model, n_epochs=gate_epochs, preprocess=prep)
            report = gate_mod.run_gate(model, eg.path, sg.path, data, tol=tol, rollout_steps=rollout_steps,
                                       night_path=tmp / "night.onnx", progress=lambda m: say(f"gate: {m}"))
            files = {"epoch.onnx": eg.path, "step.onnx": sg.path, "night.onnx": tmp / "night.onnx"}
            graphs = {"epoch": eg.manifest_entry(), "step": sg.manifest_entry(), "night": night_entry}
            engines: dict = {}
            extra_versions: dict = {}

            if int8:
                from export.precision import to_int8

                say("int8 quantisation")
                info = {}
                for g in ("epoch", "step"):
                    dst = tmp / f"{g}.int8.onnx"
                    _, info[g] = to_int8(files[f"{g}.onnx"], dst)
                    files[dst.name] = dst
                    graphs[f"{g}_int8"] = {**graphs[g], "file": dst.name, "precision": "int8", **_size(dst)}
                cost = gate_mod.variant_cost(model, tmp / "epoch.int8.onnx", tmp / "step.int8.onnx", data)
                report.variants["int8"] = {**cost, "quantization": info}
            if fp16 and not trt:
                from export.precision import to_fp16

                say("fp16 conversion")
                for g in ("epoch", "step"):
                    dst = tmp / f"{g}.fp16.onnx"
                    to_fp16(files[f"{g}.onnx"], dst)
                    gate_mod.check_onnx(dst)
                    files[dst.name] = dst
                    graphs[f"{g}_fp16"] = {**graphs[g], "file": dst.name, "precision": "fp16", **_size(dst)}
                cost = gate_mod.variant_cost(model, tmp / "epoch.fp16.onnx", tmp / "step.fp16.onnx", data)
                gate_mod.gate_fp16(cost)
                report.variants["fp16"] = {**cost, "min_agreement": gate_mod.FP16_MIN_AGREEMENT,
                                           "max_prob_diff_tol": gate_mod.FP16_MAX_PROB_DIFF}
            if trt:
                from export.tensorrt import build_engine

                for g in ("epoch", "step"):
                    say(f"TensorRT {g} engine")
                    prec = "fp16" if fp16 else "fp32"
                    dst = tmp / f"{g}.{prec}.plan"
                    entry = build_engine(files[f"{g}.onnx"], dst, fp16=fp16, max_batch=trt_max_batch, trt=trt_mod)
                    files[dst.name] = dst
                    engines[f"{g}_{prec}"] = entry
                extra_versions["tensorrt"] = str(trt_mod.__version__)

            manifest = {
                "schema": SCHEMA,
                "name": name or (Path(ckpt_path).stem if ckpt_path else "model"),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "model": {"family": type(model).__name__, "preset": cfg.preset, "config": cfg.to_dict(),
                          "n_params": int(sum(p.numel() for p in model.parameters()))},
                "signal": {"fs_hz": cfg.fs_hz, "epoch_s": cfg.epoch_s,
                           "epoch_samples": cfg.epoch_samples, "modalities": list(cfg.modalities),
                           "preprocessing": prep},
                "labels": {"stages": list(STAGES), "tasks": _tasks(ckpt)},
                "graphs": graphs,
                "state": _state_manifest(model),
                "engines": engines,
                "opset": opset,
                "versions": _versions(extra_versions),
                "provenance": {**_provenance(ckpt, ckpt_path), "preprocessing_source": prep_source},
                "gate": report.to_dict(),
            }
            say("write bundle")
            write_bundle(out, manifest, files)
    finally:
        torch.set_grad_enabled(grad)
    load_bundle(out)  # what we hand over loads exactly as the runtime will load it
    return ExportResult(manifest["name"], out, manifest, time.perf_counter() - t0)


def _size(path: Path) -> dict:
    return {"bytes": path.stat().st_size}


def export_checkpoint(ckpt_path: Path, out: Path, **kw) -> ExportResult:
    """`load_checkpoint(ckpt_path)` (weights_only) then `export_model`."""
    from sleepedge.models.checkpoint import load_checkpoint

    ckpt_path = Path(ckpt_path)
    model, ckpt = load_checkpoint(ckpt_path)
    kw.setdefault("name", ckpt_path.stem)
    return export_model(model, ckpt, out, ckpt_path=ckpt_path, **kw)


def find_checkpoints(ckpt_dir: Path) -> list[Path]:
    ckpt_dir = Path(ckpt_dir)
    found = sorted(p for p in ckpt_dir.iterdir() if p.is_file() and p.suffix in (".pt", ".pth", ".ckpt"))
    if not found:
        raise ExportError(f"--all {ckpt_dir}: no checkpoints (*.pt, *.pth, *.ckpt) in the folder; point it at a training output folder")
    return found


def export_all(ckpt_dir: Path, out_dir: Path, *, suffix: str = ".sleepedge",
               on_start: Callable[[Path], None] | None = None,
               on_done: Callable[[BatchItem], None] | None = None, **kw) -> list[BatchItem]:
    """Export every checkpoint of a folder to `out_dir/<stem><suffix>`; a failure is recorded
    with its one-line reason and the loop goes on."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items: list[BatchItem] = []
    for ck in find_checkpoints(ckpt_dir):
        if on_start:
            on_start(ck)
        t0 = time.perf_counter()
        try:
            res = export_checkpoint(ck, out_dir / f"{ck.stem}{suffix}", **kw)
            item = BatchItem(ck, res, seconds=time.perf_counter() - t0)
        except SleepEdgeError as err:
            item = BatchItem(ck, None, str(err), time.perf_counter() - t0)
        except (RuntimeError, ValueError, TypeError, KeyError, OSError) as err:
            # torch/onnx internals: keep the batch going, report the cause in one line
            item = BatchItem(ck, None, " ".join(f"{type(err).__name__}: {err}".split())[:300], time.perf_counter() - t0)
        items.append(item)
        if on_done:
            on_done(item)
    return items
