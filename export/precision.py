"""Reduced-precision variants of exported graphs (fp16, int8), ONNX in -> ONNX out.

fp16  onnxruntime's own float16 converter (`onnxruntime.transformers.float16`, shipped in the
      onnxruntime wheel, so no extra dependency), graph inputs/outputs kept float32 so the
      runtime feeds the same arrays. Ops kept in fp32 (`FP16_KEEP_FP32`): the reductions of the
      RMS/Layer norms and exponentials, whose fp16 range overflows. On CPU, ONNX Runtime runs
      fp16 nodes it has no kernel for through inserted casts: the CPU figures measure accuracy,
      not speed (fp16 speed is a TensorRT/CUDA matter).
int8  `onnxruntime.quantization.quantize_dynamic` of the linear layers (MatMul with a constant
      weight; per-channel int8 weights, activations quantised at run time) for CPU. The
      exporters emit 2-D linears as `Gemm`, which dynamic quantisation skips, so those are first
      rewritten to the equivalent `MatMul` + `Add` (exact in fp32).
The accuracy cost of each is measured by `export.gate.variant_cost` and stored in the manifest.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from sleepedge.errors import ExportError

FP16_KEEP_FP32 = ["ReduceMean", "Pow", "Exp", "Softplus", "LayerNormalization", "InstanceNormalization", "Softmax"]


def to_fp16(src: Path, dst: Path) -> Path:
    """Convert an fp32 graph to fp16 weights/compute with float32 I/O."""
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as err:
        raise ExportError(
            "--fp16: onnxruntime's float16 converter (onnxruntime.transformers.float16) is not importable; "
            "install a full onnxruntime wheel or use --trt for TensorRT fp16 engines"
        ) from err
    model = onnx.load(str(src))
    try:
        out = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP16_KEEP_FP32)
    except Exception as err:  # noqa: BLE001 - the converter raises plain exceptions
        raise ExportError(f"--fp16: converting {Path(src).name} failed ({' '.join(str(err).split())[:200]})") from err
    # the converter leaves some value_info entries with their old fp32 type; they are optional
    # annotations, so drop them all and let the checker re-infer every type from scratch
    del out.graph.value_info[:]
    onnx.save(toposort(dedupe_nodes(out)), str(dst))
    return Path(dst)


def dedupe_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop exact duplicate nodes (same op, inputs, outputs, attributes): the fp16 converter
    emits the same `*_cast_to_fp32` Cast once per consumer, which breaks SSA form."""
    seen: dict[str, bytes] = {}
    keep = []
    for node in model.graph.node:
        sig = onnx.NodeProto(op_type=node.op_type, domain=node.domain, input=node.input,
                             output=node.output, attribute=node.attribute).SerializeToString()
        clash = [o for o in node.output if o in seen]
        if clash:
            if all(seen[o] == sig for o in clash) and len(clash) == len(node.output):
                continue
            raise ExportError(f"graph {model.graph.name!r}: value {clash[0]!r} is produced by two different nodes after conversion")
        for o in node.output:
            seen[o] = sig
        keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def toposort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Order the main graph's nodes topologically (the fp16 converter appends its input casts
    at the end, which the ONNX checker rightly refuses)."""
    g = model.graph
    ready = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending = list(g.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            # inputs of subgraphs are not used here (the exported graphs have no control flow)
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            missing = sorted({i for n in rest for i in n.input if i not in ready})[:5]
            raise ExportError(f"graph {g.name!r} has nodes whose inputs are never produced ({missing}); the conversion broke it")
        pending = rest
    del g.node[:]
    g.node.extend(ordered)
    return model


def gemm_to_matmul(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Rewrite Gemm(A, W, b) with constant W (alpha=beta=1, transA=0) as MatMul(A, W') + b."""
    inits = {t.name: t for t in model.graph.initializer}
    new_nodes, n_rewritten = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        ok = (node.op_type == "Gemm" and node.input[1] in inits and attrs.get("transA", 0) == 0
              and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0)
        if not ok:
            new_nodes.append(node)
            continue
        w_name = node.input[1]
        if attrs.get("transB", 0):
            w = numpy_helper.to_array(inits[w_name]).T.copy()
            w_name = f"{w_name}__T"
            if w_name not in inits:
                t = numpy_helper.from_array(w, w_name)
                model.graph.initializer.append(t)
                inits[w_name] = t
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = f"{node.output[0]}__mm" if has_bias else node.output[0]
        new_nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=f"{node.name}__matmul"))
        if has_bias:
            new_nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=f"{node.name}__bias"))
        n_rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    # drop initialisers no longer used (the un-transposed weights)
    used = {i for n in model.graph.node for i in n.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return model, n_rewritten


def to_int8(src: Path, dst: Path) -> tuple[Path, dict]:
    """Dynamic int8 quantisation of the linear layers. Returns (dst, info)."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as err:
        raise ExportError("--int8: onnxruntime.quantization is not importable; install onnxruntime>=1.17") from err
    model, n_gemm = gemm_to_matmul(onnx.load(str(src)))
    staged = Path(dst).with_suffix(".prequant.onnx")
    onnx.save(model, str(staged))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic advises pre-processing via root-logger WARNINGs
    try:
        quantize_dynamic(
            staged, dst, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"], per_channel=True,
            extra_options={"MatMulConstBOnly": True},
        )
    except Exception as err:  # noqa: BLE001
        raise ExportError(f"--int8: quantising {Path(src).name} failed ({' '.join(str(err).split())[:200]})") from err
    finally:
        root.setLevel(level)
        staged.unlink(missing_ok=True)
    q = onnx.load(str(dst))
    n_int = sum(1 for n in q.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeLinear"))
    if n_int == 0:
        raise ExportError(f"--int8: no linear layer of {Path(src).name} was quantised; nothing to gain from int8")
    return Path(dst), {"quantized_linear_nodes": int(sum(1 for n in q.graph.node if n.op_type == "MatMulInteger")),
                       "gemm_rewritten": n_gemm, "weight_type": "int8 per-channel", "activations": "dynamic uint8"}


def describe(path: Path) -> dict:
    """Node count, op histogram and size of a graph file (for reports)."""
    m = onnx.load(str(path))
    ops: dict[str, int] = {}
    for n in m.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    n_weights = int(sum(int(np.prod(t.dims)) for t in m.graph.initializer))
    return {"bytes": Path(path).stat().st_size, "n_nodes": len(m.graph.node), "ops": ops, "n_weights": n_weights}
