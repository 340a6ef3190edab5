"""Whole-night graph: ONNX `Scan` over the exported step graph, for batch scoring.

    night.onnx  z_seq [batch, epochs, D], <state> [batch, ...] (initial state, zeros for a new night)
                -> stage_logits [batch, epochs, 5], apnea_logit [batch, epochs],
                   hypopnea_logit [batch, epochs], <state>_out [batch, ...] (state after the last epoch)

The Scan body IS the step graph (same nodes, same weights): nothing is re-derived from
torch, so the night graph equals streaming the step graph epoch by epoch, for any number of
epochs (the epochs axis is symbolic). Use it offline, after the epoch graph has embedded a
whole recording; the bedside stream keeps using step.onnx (no control flow there).
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper

from sleepedge.errors import ExportError

HEADS = ("stage_logits", "apnea_logit", "hypopnea_logit")


def build_night_graph(step_path: Path, out_path: Path) -> dict:
    """Wrap `step_path` in a Scan over the epochs axis; return the manifest entry."""
    step = onnx.load(str(step_path))
    g = step.graph
    inits = {t.name for t in g.initializer}
    ins = [i for i in g.input if i.name not in inits]
    if not ins or ins[0].name != "z":
        raise ExportError(f"{Path(step_path).name}: first input must be 'z' to build the night graph")
    states = ins[1:]
    outs = {o.name: o for o in g.output}
    missing = [h for h in HEADS if h not in outs] + [f"{s.name}_out" for s in states if f"{s.name}_out" not in outs]
    if missing:
        raise ExportError(f"{Path(step_path).name}: step outputs lack {missing}; cannot build the night graph")

    # body: (states..., z) -> (states_out..., heads...)  [Scan's required order]
    body = helper.make_graph(
        list(g.node), "night_step_body",
        [*states, ins[0]],
        [*(outs[f"{s.name}_out"] for s in states), *(outs[h] for h in HEADS)],
        initializer=list(g.initializer),
    )
    state_out_names = [f"{s.name}_out" for s in states]
    scan = helper.make_node(
        "Scan", [*(s.name for s in states), "z_seq"], [*state_out_names, *HEADS], name="night_scan",
        body=body, num_scan_inputs=1, scan_input_axes=[1], scan_output_axes=[1, 1, 1],
    )

    def vi(name: str, src: onnx.ValueInfoProto, insert_epochs: bool) -> onnx.ValueInfoProto:
        dims = []
        for k, d in enumerate(src.type.tensor_type.shape.dim):
            dims.append(d.dim_param if d.HasField("dim_param") else d.dim_value)
            if insert_epochs and k == 0:
                dims.append("epochs")
        if insert_epochs and not src.type.tensor_type.shape.dim:
            dims = ["batch", "epochs"]
        return helper.make_tensor_value_info(name, src.type.tensor_type.elem_type, dims)

    graph = helper.make_graph(
        [scan], "sleepedge_night",
        [vi("z_seq", ins[0], True), *(vi(s.name, s, False) for s in states)],
        [*(vi(h, outs[h], True) for h in HEADS), *(vi(n, outs[n], False) for n in state_out_names)],
    )
    model = helper.make_model(graph, opset_imports=list(step.opset_import), producer_name="sleepedge.export.night")
    model.ir_version = step.ir_version
    onnx.save(model, str(out_path))
    shape = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    return {
        "file": Path(out_path).name,
        "inputs": {v.name: {"shape": ["batch" if isinstance(x, str) and k == 0 else x for k, x in enumerate(shape(v))],
                            "dtype": "float32"} for v in graph.input},
        "outputs": {v.name: {"shape": ["batch" if isinstance(x, str) and k == 0 else x for k, x in enumerate(shape(v))],
                             "dtype": "float32"} for v in graph.output},
        "kind": "scan over step.onnx (offline whole-night scoring)",
        "n_nodes": 1 + len(g.node),
        "bytes": Path(out_path).stat().st_size,
    }
