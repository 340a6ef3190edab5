"""torch -> ONNX for the two deployable graphs (imports torch).

Glossary:
    B   batch (the one dynamic axis, named "batch" in every graph)
    M   modalities (config.modalities order)      S   3000 samples per 30-s epoch
    D   fused embedding width                     states: `TemporalContext.state_names`

    epoch.onnx  x [B, M, S] float32, present [B, M] float32
                -> z [B, D], stage_logits [B, 5], apnea_logit [B], hypopnea_logit [B]
    step.onnx   z [B, D], <state> [B, ...] for each state
                -> stage_logits [B, 5], apnea_logit [B], hypopnea_logit [B], <state>_out [B, ...]

The wrappers below CALL the model's own `embed` / `epoch_heads` / `temporal.step`: there is
no second copy of the model "for ONNX". Export uses the dynamo exporter with explicit
`dynamic_shapes` and `external_data=False`; if it fails for a graph, the TorchScript exporter
(`dynamo=False`, `dynamic_axes`) is tried and the exporter used is recorded.
"""

from __future__ import annotations

import io
import contextlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import onnx
import torch
from torch import Tensor, nn

from sleepedge.errors import ExportError

BATCH = "batch"
EPOCH_INPUTS = ("x", "present")
EPOCH_OUTPUTS = ("z", "stage_logits", "apnea_logit", "hypopnea_logit")
HEAD_OUTPUTS = ("stage_logits", "apnea_logit", "hypopnea_logit")
EXAMPLE_BATCH = 2          # not 1: torch.export specialises size-1 dims
MAX_BATCH = 4096

# step graph: basic operators only (what every runtime, TensorRT and ORT-mobile execute)
STEP_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Pow",
    "Sigmoid", "Tanh", "Relu", "Softplus", "Erf", "Min", "Max", "Clip",
    "MatMul", "Gemm", "ReduceSum", "ReduceMean", "ReduceMax", "Softmax", "LayerNormalization",
    "Concat", "Split", "Slice", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Expand", "Tile",
    "Gather", "Shape", "Size", "Constant", "ConstantOfShape", "Cast", "CastLike", "Identity",
    "Where", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Not", "And", "Range",
})
# epoch graph: the same plus convolution / normalisation; never control flow or custom ops
EPOCH_OPS = STEP_OPS | {"TopK", "Conv", "InstanceNormalization", "GroupNormalization", "BatchNormalization", "Gelu", "Pad",
                          "ReduceL2", "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMin"}
FORBIDDEN_OPS = frozenset({"Loop", "Scan", "If"})


@dataclass
class GraphInfo:
    """What was exported: written into the manifest's `graphs` entry."""

    name: str
    path: Path
    inputs: dict[str, list]          # name -> shape with "batch" for the dynamic axis
    outputs: dict[str, list]
    exporter: str                    # "dynamo" | "torchscript"
    opset: int
    n_nodes: int
    op_types: list[str] = field(default_factory=list)
    fallback_reason: str = ""
    warnings: list[str] = field(default_factory=list)   # exporter warnings (recorded, not shown)

    def manifest_entry(self) -> dict:
        entry = {
            "file": self.path.name,
            "inputs": {n: {"shape": s, "dtype": "float32"} for n, s in self.inputs.items()},
            "outputs": {n: {"shape": s, "dtype": "float32"} for n, s in self.outputs.items()},
            "exporter": self.exporter,
            "opset": self.opset,
            "n_nodes": self.n_nodes,
            "bytes": self.path.stat().st_size,
        }
        if self.fallback_reason:
            entry["fallback_reason"] = self.fallback_reason
        return entry


class EpochGraph(nn.Module):
    """x [B,M,S], present [B,M] -> z, stage_logits, apnea_logit, hypopnea_logit (calls model.embed)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, present: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        z = self.model.embed(x, present)
        stage, apnea, hypopnea = self.model.epoch_heads(z)
        return z, stage, apnea, hypopnea


class StepGraph(nn.Module):
    """z [B,D], *state -> heads + new state (calls model.temporal.step)."""

    def __init__(self, temporal: nn.Module):
        super().__init__()
        self.temporal = temporal

    def forward(self, z: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        (stage, apnea, hypopnea), new_state = self.temporal.step(z, tuple(state))
        return (stage, apnea, hypopnea, *new_state)


def step_io_names(temporal: nn.Module) -> tuple[list[str], list[str]]:
    names = list(temporal.state_names)
    return ["z", *names], [*HEAD_OUTPUTS, *[f"{n}_out" for n in names]]


def example_epoch_inputs(model: nn.Module, batch: int = EXAMPLE_BATCH) -> tuple[Tensor, Tensor]:
    cfg = model.config
    m, s = len(cfg.modalities), cfg.epoch_samples
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, m, s, generator=g), torch.ones(batch, m)


def example_step_inputs(model: nn.Module, batch: int = EXAMPLE_BATCH) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(batch, model.config.d_embed, generator=g)
    state = tuple(torch.randn(s.shape, generator=g) * 0.1 for s in model.temporal.init_state(batch))
    return (z, *state)


def _shapes(model_proto: onnx.ModelProto, names: Sequence[str], which: str) -> dict[str, list]:
    vis = {v.name: v for v in (model_proto.graph.input if which == "in" else model_proto.graph.output)}
    out: dict[str, list] = {}
    for n in names:
        dims = vis[n].type.tensor_type.shape.dim
        out[n] = [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None)
                  for d in dims]
        if out[n] and isinstance(out[n][0], str):
            out[n][0] = BATCH      # manifest convention: the dynamic axis is "batch"
    return out


def check_dynamic_batch(model_proto: onnx.ModelProto, graph: str) -> None:
    """Every graph input/output must have a symbolic first (batch) axis; else ExportError."""
    inits = {i.name for i in model_proto.graph.initializer}
    static = []
    for kind, vis in (("input", model_proto.graph.input), ("output", model_proto.graph.output)):
        for v in vis:
            if v.name in inits:
                continue
            dims = v.type.tensor_type.shape.dim
            if not dims:
                static.append(f"{kind} {v.name} (no shape)")
            elif not dims[0].HasField("dim_param") or not dims[0].dim_param:
                val = dims[0].dim_value if dims[0].HasField("dim_value") else "?"
                static.append(f"{kind} {v.name} (batch axis = {val})")
    if static:
        raise ExportError(
            f"{graph}: batch axis exported as static for {', '.join(static)}; expected a symbolic 'batch' "
            "dimension (a dynamic_shapes / dynamic_axes entry is missing or torch specialised it)"
        )


def check_ops(model_proto: onnx.ModelProto, graph: str, allowed: frozenset[str]) -> list[str]:
    """Refuse custom-domain ops, control flow and anything outside `allowed`; return the op types."""
    ops = sorted({n.op_type for n in model_proto.graph.node})
    custom = sorted({f"{n.domain}::{n.op_type}" for n in model_proto.graph.node if n.domain not in ("", "ai.onnx")})
    bad = sorted((set(ops) - allowed) | (set(ops) & FORBIDDEN_OPS))
    if custom or bad:
        raise ExportError(
            f"{graph}: operators outside the basic-ONNX allow-list: {', '.join(custom + bad)}; "
            "rewrite that part of the model with basic tensor ops (no custom ops, no Loop/Scan/If)"
        )
    return ops


def _inline(model_proto: onnx.ModelProto) -> onnx.ModelProto:
    if model_proto.functions:
        from onnx import inliner

        model_proto = inliner.inline_local_functions(model_proto)
    return model_proto


@contextlib.contextmanager
def _quiet_exporter(caught: list[str] | None = None):
    """The exporters print progress to stdout and emit known-benign warnings (deprecations,
    axis renames); keep the CLI's output clean. Warnings are recorded, not dropped: their
    unique messages go to `caught` (and into GraphInfo.warnings)."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    rec: list = []
    try:
        with contextlib.redirect_stdout(buf), warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            yield buf
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)
        if caught is not None:
            for w in rec:
                msg = f"{w.category.__name__}: {' '.join(str(w.message).split())[:200]}"
                if msg not in caught:
                    caught.append(msg)


def _export_one(module: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
                dyn_shapes: tuple, opset: int, graph: str, allow_fallback: bool = True,
                caught: list[str] | None = None) -> tuple[str, str]:
    """Export with dynamo; on failure with TorchScript. Returns (exporter, fallback_reason)."""
    module.eval()
    reason = ""
    try:
        with _quiet_exporter(caught), torch.no_grad():
            torch.onnx.export(
                module, args, str(path), dynamo=True, external_data=False, opset_version=opset,
                dynamic_shapes=dyn_shapes, input_names=input_names, output_names=output_names,
                optimize=True, verify=False, report=False,
            )
        return "dynamo", ""
    except Exception as err:  # noqa: BLE001 - any exporter failure -> try the other exporter
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        if not allow_fallback:
            raise ExportError(f"{graph}: the dynamo exporter failed ({reason}); see the model code") from err
    axes = {n: {0: BATCH} for n in [*input_names, *output_names]}
    try:
        with _quiet_exporter(caught), torch.no_grad():
            torch.onnx.export(
                module, args, str(path), dynamo=False, opset_version=opset, input_names=input_names,
                output_names=output_names, dynamic_axes=axes, do_constant_folding=True,
            )
    except Exception as err:  # noqa: BLE001
        msg = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        raise ExportError(
            f"{graph}: both exporters failed (dynamo: {reason}; torchscript: {msg}); the model uses an "
            "operation ONNX cannot express"
        ) from err
    return "torchscript", reason


def _finish(path: Path, name: str, input_names, output_names, exporter: str, reason: str, opset: int,
            allowed: frozenset[str], caught: list[str]) -> GraphInfo:
    mp = onnx.load(str(path))
    mp = _inline(mp)
    got_in = [i.name for i in mp.graph.input if i.name not in {t.name for t in mp.graph.initializer}]
    got_out = [o.name for o in mp.graph.output]
    if got_in != list(input_names) or got_out != list(output_names):
        raise ExportError(
            f"{name}: exported I/O names are {got_in} -> {got_out}; expected {list(input_names)} -> "
            f"{list(output_names)} (an output was folded away or renamed by the exporter)"
        )
    got_opset = next((o.version for o in mp.opset_import if o.domain in ("", "ai.onnx")), None)
    if got_opset != opset:
        raise ExportError(
            f"{name}: opset {opset} was requested but the graph was written with opset {got_opset} "
            "(the ONNX version converter could not convert it); use --opset 18 or higher"
        )
    check_dynamic_batch(mp, name)
    ops = check_ops(mp, name, allowed)
    onnx.save(mp, str(path))  # inlined, self-contained (no external data)
    return GraphInfo(
        name=name, path=path, inputs=_shapes(mp, input_names, "in"), outputs=_shapes(mp, output_names, "out"),
        exporter=exporter, opset=opset, n_nodes=len(mp.graph.node), op_types=ops, fallback_reason=reason,
        warnings=caught,
    )


def export_epoch_graph(model: nn.Module, path: Path, opset: int = 18, allow_fallback: bool = True) -> GraphInfo:
    """Export `epoch.onnx` (dynamic batch) and check names, batch axis and operators."""
    path = Path(path)
    batch = torch.export.Dim(BATCH, min=1, max=MAX_BATCH)
    args = example_epoch_inputs(model)
    caught: list[str] = []
    exporter, reason = _export_one(
        EpochGraph(model), args, path, list(EPOCH_INPUTS), list(EPOCH_OUTPUTS),
        ({0: batch}, {0: batch}), opset, path.name, allow_fallback, caught,
    )
    return _finish(path, "epoch", EPOCH_INPUTS, EPOCH_OUTPUTS, exporter, reason, opset, EPOCH_OPS, caught)


def export_step_graph(model: nn.Module, path: Path, opset: int = 18, allow_fallback: bool = True) -> GraphInfo:
    """Export `step.onnx` (one epoch of the causal Mamba2 + heads, state in -> state out)."""
    path = Path(path)
    batch = torch.export.Dim(BATCH, min=1, max=MAX_BATCH)
    args = example_step_inputs(model)
    ins, outs = step_io_names(model.temporal)
    caught: list[str] = []
    exporter, reason = _export_one(
        StepGraph(model.temporal), args, path, ins, outs,
        ({0: batch}, tuple({0: batch} for _ in args[1:])), opset, path.name, allow_fallback, caught,
    )
    return _finish(path, "step", ins, outs, exporter, reason, opset, STEP_OPS, caught)
