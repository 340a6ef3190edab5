"""Streaming latency: compute per 30-s epoch, 1 thread, ONNX Runtime next to torch eager.

    python -m bench.streaming --night NIGHT.edf --json OUT.json [--bundle B] [--presets tiny,paper]
                              [--epochs 200] [--workdir DIR]

Two measurements (both 1 intra-op thread; run it with OMP_NUM_THREADS=1):

1. `scorer`: the runtime as deployed. `runtime.scorer.StreamingScorer(bundle, threads=1)` fed the
   night one 30-s chunk per call; the time of each `push` that completes an epoch (causal
   preprocessing + epoch graph at batch 1 + one step of the Mamba state + result building).
   For `--bundle` (the default embedded bundle when present) and for every exported preset.

2. `ort_vs_torch`: the SAME model twice. For each preset a SynthSleepNet with random weights
   (seed 0) is exported through `export.exporter.export_model` (gate included); then, epoch by
   epoch on the same preprocessed inputs, ORT (`run_epoch` batch 1 + `run_step`) and torch
   eager (`model.embed` + `model.temporal.step`, `torch.set_num_threads(1)`,
   `torch.inference_mode`) alternate A B / B A, each carrying its own state. Ratio = median
   torch / median ORT, computed here in the same run. The max |logit difference| over the
   rollout is kept as a sanity check.
Random weights: the timings are real, the predictions mean nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from bench.common import REPO, summarize


def _src_hash() -> str:
    h = hashlib.sha256()
    for d in (REPO / "sleepedge" / "models", REPO / "export"):
        for p in sorted(d.glob("*.py")):
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:10]


def read_epochs(night: Path, n_epochs: int) -> tuple[dict, dict]:
    """role -> native-rate µV samples of the first n_epochs, role -> rate (the runtime's roles)."""
    from sleepedge.channels import assign_roles
    from sleepedge.edf import open_edf

    with open_edf(night) as r:
        rm = assign_roles([s.label for s in r.header.signals])
        n_epochs = int(min(n_epochs, r.header.duration_s // 30))
        sig, rates = {}, {}
        for role, label in rm.primary.items():
            info = r.header.signal(label)
            sig[role] = r.read(label, 0.0, n_epochs * 30.0)
            rates[role] = float(info.fs_hz)
    return sig, rates


def time_scorer(bundle, sig: dict, rates: dict, warmup: int = 3) -> dict:
    from runtime.scorer import StreamingScorer

    scorer = StreamingScorer(bundle, rates, device="cpu", threads=1)
    n = min(len(v) / rates[r] for r, v in sig.items() if r in scorer.pre.roles) // 30
    times, reported = [], []
    for i in range(int(n)):
        chunk = {r: sig[r][int(i * 30 * rates[r]):int((i + 1) * 30 * rates[r])] for r in scorer.pre.roles}
        t = time.perf_counter()
        res = scorer.push(chunk)
        dt = (time.perf_counter() - t) * 1e3
        if res and i >= warmup:
            times.append(dt)
            reported.append(res[-1].latency_ms)
    return {"epochs": len(times), "push_ms": summarize(times), "scorer_reported_latency_ms": summarize(reported),
            "engine": scorer.engine.describe(), "roles": list(scorer.pre.roles)}


def model_inputs(bundle, sig: dict, rates: dict) -> tuple[np.ndarray, np.ndarray]:
    from runtime.scorer import _preprocess_config, bundle_roles
    from sleepedge.preprocess import model_input, preprocess_arrays

    roles = bundle_roles(bundle)
    present = {r: sig[r] for r in roles if r in sig}
    data, qual, pre_roles = preprocess_arrays(present, {r: rates[r] for r in present}, _preprocess_config(bundle))[:3]
    return model_input(data, qual, tuple(pre_roles), roles)


def model_config(preset_name: str):
    """`tiny` / `paper` presets, or `default-arch`: the exact config of the embedded default bundle."""
    from sleepedge.models.config import SynthSleepNetConfig, preset

    if preset_name == "default-arch":
        from sleepedge.bundle import default_bundle_path, load_bundle

        model = load_bundle(default_bundle_path()).manifest["model"]
        if model.get("family", "SynthSleepNet") != "SynthSleepNet":
            raise ValueError(f"the default bundle is a {model.get('family')}, not a SynthSleepNet: no default-arch preset")
        return SynthSleepNetConfig.from_dict(model["config"])
    return preset(preset_name)


def export_random(preset_name: str, workdir: Path, log=print) -> tuple[Path, dict]:
    """Random-weight SynthSleepNet of `preset_name` exported through export/ (cached by source hash)."""
    import torch

    from sleepedge.models.synthsleepnet import SynthSleepNet

    cfg = model_config(preset_name)
    key = hashlib.sha256((_src_hash() + cfg.to_json()).encode()).hexdigest()[:10]
    out = workdir / f"{preset_name}-random-{key}.sleepedge"
    meta = out.with_suffix(".bench.json")
    if out.exists() and meta.exists():
        return out, json.loads(meta.read_text())
    from export.exporter import export_model

    torch.manual_seed(0)
    model = SynthSleepNet(cfg).eval()
    ckpt = {"config": cfg.to_dict(), "provenance": {"data": "none: random weights (bench)", "simulated": False}}
    log(f"  exporting random-weight '{preset_name}' ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params) -> {out.name}")
    t = time.perf_counter()
    res = export_model(model, ckpt, out, name=f"{preset_name}-random-bench")
    info = {"export_s": time.perf_counter() - t, "n_params": int(sum(p.numel() for p in model.parameters())),
            "modalities": list(cfg.modalities),
            "size_bytes": res.size_bytes, "parity_max_abs_diff": res.parity}
    meta.write_text(json.dumps(info))
    return out, info


def ort_vs_torch(preset_name: str, bundle_path: Path, sig: dict, rates: dict, n_epochs: int, warmup: int = 3) -> dict:
    import torch

    from runtime.session import make_sessions
    from sleepedge.bundle import load_bundle
    from sleepedge.models.synthsleepnet import SynthSleepNet

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = SynthSleepNet(model_config(preset_name)).eval()   # same seed -> the weights that were exported
    bundle = load_bundle(bundle_path)
    engine = make_sessions(bundle, device="cpu", threads=1)
    x, present = model_inputs(bundle, sig, rates)
    n = min(n_epochs, x.shape[0])
    st_ort = engine.init_state()
    st_t = model.temporal.init_state(1)
    t_ort, t_torch, maxdiff = [], [], 0.0

    def ort_epoch(i):
        nonlocal st_ort
        out = engine.run_epoch(x[i:i + 1], present[i:i + 1])
        o, st_ort = engine.run_step(out["z"], st_ort)
        return np.asarray(o["stage_logits"]).reshape(-1)

    def torch_epoch(i):
        nonlocal st_t
        with torch.inference_mode():
            z = model.embed(torch.from_numpy(x[i:i + 1]), torch.from_numpy(present[i:i + 1]))
            (stage, _a, _h), st_t = model.temporal.step(z, st_t)
        return stage.numpy().reshape(-1)

    for i in range(n):
        order = (("ort", ort_epoch), ("torch", torch_epoch)) if i % 2 == 0 else (("torch", torch_epoch), ("ort", ort_epoch))
        outs = {}
        for name, fn in order:
            t = time.perf_counter()
            outs[name] = fn(i)
            dt = (time.perf_counter() - t) * 1e3
            if i >= warmup:
                (t_ort if name == "ort" else t_torch).append(dt)
        maxdiff = max(maxdiff, float(np.abs(outs["ort"] - outs["torch"]).max()))
    so, stt = summarize(t_ort), summarize(t_torch)
    return {"epochs": len(t_ort), "ort_ms": so, "torch_eager_ms": stt,
            "torch_over_ort_median": stt["median"] / so["median"] if so.get("median") else None,
            "max_abs_stage_logit_diff": maxdiff, "torch_threads": torch.get_num_threads(),
            "engine": engine.describe()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--night", type=Path, required=True)
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--bundle-label", default="default")
    ap.add_argument("--presets", default="tiny,paper")
    ap.add_argument("--epochs", type=int, default=200, help="epochs for the random-weight presets")
    ap.add_argument("--bundle-epochs", type=int, default=0, help="epochs for --bundle (0: the whole night)")
    ap.add_argument("--paper-epochs", type=int, default=60)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/sleepedge-bench"))
    a = ap.parse_args()
    from sleepedge.bundle import load_bundle

    out: dict = {"threads": 1, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "scorer": {},
                 "ort_vs_torch": {}, "exports": {}, "errors": {}}
    sig, rates = read_epochs(a.night, a.bundle_epochs if a.bundle_epochs > 0 else 10**9)
    out["night"] = str(a.night)
    out["rates_hz"] = rates
    if a.bundle is not None:
        try:
            out["scorer"][a.bundle_label] = time_scorer(load_bundle(a.bundle), sig, rates)
        except Exception as ex:  # noqa: BLE001 - report and carry on with the other measurements
            out["errors"][f"scorer:{a.bundle_label}"] = f"{type(ex).__name__}: {ex}"
    a.workdir.mkdir(parents=True, exist_ok=True)
    for name in [p for p in a.presets.split(",") if p]:
        n_ep = a.paper_epochs if name == "paper" else a.epochs
        try:
            path, info = export_random(name, a.workdir)
            out["exports"][name] = {**info, "bundle": str(path)}
            sub = {r: v[: int(n_ep * 30 * rates[r])] for r, v in sig.items()}
            out["scorer"][f"{name}-random"] = time_scorer(load_bundle(path), sub, rates)
            out["ort_vs_torch"][name] = ort_vs_torch(name, path, sub, rates, n_ep)
        except Exception as ex:  # noqa: BLE001
            out["errors"][name] = f"{type(ex).__name__}: {str(ex)[:500]}"
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
