"""Export figures for a size preset: parity, graph sizes, node counts, ORT CPU latency.

    python -m export.measure --preset tiny [--int8] [--fp16] [--json out.json]

Builds a random-weight model (seed 0; weights do not change sizes, node counts or latency),
exports both graphs, runs the full gate (simulated night) and times ONNX Runtime on the CPU
at batch 1 with one thread (median of `--repeats` runs after warm-up). Imports torch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _latency_ms(sess, feeds: dict, repeats: int, warmup: int = 3) -> dict:
    for _ in range(warmup):
        sess.run(None, feeds)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        ts.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(ts), "p90_ms": float(np.percentile(ts, 90)), "runs": repeats}


def measure(preset_name: str, *, int8: bool = False, fp16: bool = False, repeats: int = 50,
            gate_epochs: int = 64, rollout_steps: int = 512) -> dict:
    import torch

    from export import gate as g
    from export.onnx_export import export_epoch_graph, export_step_graph
    from export.precision import describe, to_fp16, to_int8
    from sleepedge.models.config import preset
    from sleepedge.models.synthsleepnet import SynthSleepNet

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = SynthSleepNet(preset(preset_name)).eval()
    out: dict = {"preset": preset_name, "n_params": int(sum(p.numel() for p in model.parameters())),
                 "modalities": list(model.config.modalities), "graphs": {}}
    with tempfile.TemporaryDirectory() as tmpd, torch.no_grad():
        tmp = Path(tmpd)
        t0 = time.perf_counter()
        eg = export_epoch_graph(model, tmp / "epoch.onnx")
        sg = export_step_graph(model, tmp / "step.onnx")
        out["export_s"] = time.perf_counter() - t0
        out["exporters"] = {"epoch": eg.exporter, "step": sg.exporter}
        data = g.gate_data(model, n_epochs=gate_epochs)
        t0 = time.perf_counter()
        rep = g.run_gate(model, eg.path, sg.path, data, rollout_steps=rollout_steps)
        out["gate_s"] = time.perf_counter() - t0
        out["gate"] = rep.to_dict()
        paths = {"epoch": eg.path, "step": sg.path}
        if int8:
            paths["epoch_int8"] = to_int8(eg.path, tmp / "epoch.int8.onnx")[0]
            paths["step_int8"] = to_int8(sg.path, tmp / "step.int8.onnx")[0]
            out["int8"] = g.variant_cost(model, paths["epoch_int8"], paths["step_int8"], data)
        if fp16:
            paths["epoch_fp16"] = to_fp16(eg.path, tmp / "epoch.fp16.onnx")
            paths["step_fp16"] = to_fp16(sg.path, tmp / "step.fp16.onnx")
            out["fp16"] = g.variant_cost(model, paths["epoch_fp16"], paths["step_fp16"], data)
        x1, p1 = data.x[:1], data.present[:1]
        state = {n: np.zeros((1, *s.shape[1:]), np.float32)
                 for n, s in zip(model.temporal.state_names, model.temporal.init_state(1))}
        z1 = g.torch_embed(model, x1, p1)
        for name, path in paths.items():
            info = describe(path)
            sess = g.ort_session(path, threads=1)
            feeds = {"x": x1, "present": p1} if name.startswith("epoch") else {"z": z1, **state}
            info["ort_cpu_1thread_batch1"] = _latency_ms(sess, feeds, repeats if name.startswith("step") else max(5, repeats // 5))
            info.pop("ops")
            out["graphs"][name] = info
        t0 = time.perf_counter()
        for _ in range(5):
            model.embed(torch.from_numpy(x1), torch.from_numpy(p1))
        out["torch_embed_1thread_batch1_ms"] = (time.perf_counter() - t0) / 5 * 1e3
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", choices=["tiny", "paper"])
    ap.add_argument("--int8", action="store_true")
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--gate-epochs", type=int, default=64)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    res = measure(a.preset, int8=a.int8, fp16=a.fp16, repeats=a.repeats, gate_epochs=a.gate_epochs)
    text = json.dumps(res, indent=1)
    if a.json:
        a.json.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
