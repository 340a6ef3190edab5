"""Export: tiny model -> gated bundle via the CLI, gate failure modes, precision variants,
TensorRT builder (fake module at the import boundary + a real build when TensorRT exists).

One real export of a random-weight `tiny` model (module fixture, through `export --all` with a
corrupt checkpoint beside it) feeds most tests, to stay inside the time budget.
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from sleepedge.bundle import load_bundle  # noqa: E402
from sleepedge.cli import app  # noqa: E402
from sleepedge.errors import DeviceError, ExportError  # noqa: E402

torch.set_num_threads(1)
runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Checkpoints folder (one good tiny model, one corrupt file) exported with --all."""
    from sleepedge.models.checkpoint import save_checkpoint
    from sleepedge.models.config import preset
    from sleepedge.models.synthsleepnet import SynthSleepNet

    root = tmp_path_factory.mktemp("export")
    ckdir = root / "ckpts"
    torch.manual_seed(0)
    model = SynthSleepNet(preset("tiny")).eval()
    save_checkpoint(ckdir / "tiny.pt", model, metrics={"val_kappa": 0.5},
                    provenance={"simulated": True, "data": "simulated nights (seed 0-9)"})
    (ckdir / "broken.pt").write_bytes(b"this is not a torch checkpoint")
    out = root / "bundles"
    res = runner.invoke(app, ["export", "--all", str(ckdir), "-o", str(out), "--gate-epochs", "24"])
    return {"model": model, "out": out, "result": res, "ckdir": ckdir, "root": root}


def test_all_continues_past_a_corrupt_checkpoint(exported) -> None:
    res = exported["result"]
    assert res.exit_code == 1, res.output
    assert "1 of 2 checkpoints exported" in res.stdout
    assert "broken" in res.stdout and "FAILED" in res.stdout and "tiny" in res.stdout
    err_lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 1 and "broken.pt" in err_lines[0] and "not a loadable sleepedge checkpoint" in err_lines[0]
    assert (exported["out"] / "tiny.sleepedge" / "manifest.json").is_file()
    assert not (exported["out"] / "broken.sleepedge").exists()


def test_bundle_manifest_and_gate_figures(exported) -> None:
    b = load_bundle(exported["out"] / "tiny.sleepedge")
    m = b.manifest
    gate = m["gate"]
    assert gate["passed"] and gate["tolerance"] == 1e-4
    assert 0.0 < gate["max_abs_diff"] <= 1e-4          # real figure, not a placeholder 0
    assert gate["rollout_steps"] >= 500 and "rollout_512" in gate["checks"]
    assert set(gate["checks"]) == {"epoch_b1", "epoch_b7", "step_b7", "rollout_512", "night_512"}
    assert m["graphs"]["night"]["inputs"]["z_seq"]["shape"] == ["batch", "epochs", exported["model"].config.d_embed]
    assert "simulate_night" in gate["data"]
    model = exported["model"]
    cfg = model.config
    assert m["model"]["config"] == json.loads(cfg.to_json())
    assert m["model"]["n_params"] == sum(p.numel() for p in model.parameters())
    assert b.modalities == tuple(cfg.modalities) and m["signal"]["epoch_samples"] == 3000
    assert m["signal"]["preprocessing"]["fs_hz"] == 100
    assert b.simulated and "SIMULATED" in b.notice and m["provenance"]["metrics"] == {"val_kappa": 0.5}
    assert m["provenance"]["checkpoint"]["file"] == "tiny.pt"
    ep, st = m["graphs"]["epoch"], m["graphs"]["step"]
    assert ep["inputs"]["x"]["shape"] == ["batch", 4, 3000] and ep["inputs"]["present"]["shape"] == ["batch", 4]
    assert list(ep["outputs"]) == ["z", "stage_logits", "apnea_logit", "hypopnea_logit"]
    assert ep["outputs"]["z"]["shape"] == ["batch", cfg.d_embed]
    names = model.temporal.state_names
    assert list(st["inputs"]) == ["z", *names]
    assert list(st["outputs"]) == ["stage_logits", "apnea_logit", "hypopnea_logit", *[f"{n}_out" for n in names]]
    assert {n: tuple(s.shape) for n, s in b.state_specs.items()} == {
        n: tuple(t.shape) for n, t in zip(names, model.temporal.init_state(1))}
    assert ep["exporter"] in ("dynamo", "torchscript") and m["opset"] == 18
    assert set(m["versions"]) >= {"torch", "onnx", "onnxruntime", "sleepedge"}


def test_bundle_runs_in_ort_like_torch(exported) -> None:
    """Stream 40 epochs through the bundle's two graphs (as the runtime does) vs torch."""
    import onnxruntime as ort

    from export.gate import gate_data

    model = exported["model"]
    b = load_bundle(exported["out"] / "tiny.sleepedge")
    es = ort.InferenceSession(str(b.graph_path("epoch")), providers=["CPUExecutionProvider"])
    ss = ort.InferenceSession(str(b.graph_path("step")), providers=["CPUExecutionProvider"])
    d = gate_data(model, n_epochs=40, seed=3)
    state = {n: s.zeros(1) for n, s in b.state_specs.items()}
    stages = []
    for i in range(len(d.x)):
        z = es.run(["z"], {"x": d.x[i:i + 1], "present": d.present[i:i + 1]})[0]
        out = dict(zip([o.name for o in ss.get_outputs()], ss.run(None, {"z": z, **state})))
        state = {n: out[f"{n}_out"] for n in state}
        stages.append(out["stage_logits"][0])
    with torch.no_grad():
        z = model.embed(torch.from_numpy(d.x), torch.from_numpy(d.present))
        ref = model.temporal(z[None])[0][0].numpy()
    assert np.max(np.abs(np.stack(stages) - ref)) <= 1e-4
    # the whole-night Scan graph, any length (40 here, 512 in the gate), one call
    ns = ort.InferenceSession(str(b.graph_path("night")), providers=["CPUExecutionProvider"])
    night = ns.run(["stage_logits"], {"z_seq": z[None].numpy(), **{n: s.zeros(1) for n, s in b.state_specs.items()}})[0]
    assert night.shape == (1, 40, 5) and np.max(np.abs(night[0] - ref)) <= 1e-4


def _tamper_stage_head(src: Path, dst: Path, delta: float = 0.5) -> str:
    """Add `delta` to the stage head's bias (the [5] initializer feeding stage_logits)."""
    mp = onnx.load(str(src))
    for init in mp.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.shape == (5,):
            init.CopyFrom(numpy_helper.from_array((arr + delta).astype(arr.dtype), init.name))
            onnx.save(mp, str(dst))
            return init.name
    raise AssertionError("no [5] initializer (stage head bias) found")


def test_gate_raises_listing_each_failed_output(exported, tmp_path: Path) -> None:
    from export.gate import GateError, gate_data, run_gate

    b = load_bundle(exported["out"] / "tiny.sleepedge")
    bad_step = tmp_path / "step.onnx"
    _tamper_stage_head(b.graph_path("step"), bad_step)
    data = gate_data(exported["model"], n_epochs=16)
    with pytest.raises(GateError) as info:
        run_gate(exported["model"], b.graph_path("epoch"), bad_step, data, rollout_steps=500)
    err = info.value
    assert set(err.failures) == {"step_b7/stage_logits", "rollout_500/stage_logits"}
    assert all(0.4 < v < 0.6 for v in err.failures.values())  # the +0.5 bias, measured
    assert "step_b7/stage_logits max|Δ|=0.5" in str(err) and "\n" not in str(err)
    # the untampered pair passes on the same data, with the same rollout
    rep = run_gate(exported["model"], b.graph_path("epoch"), b.graph_path("step"), data, rollout_steps=500)
    assert rep.max_abs_diff <= 1e-4 and not rep.failures


def test_gate_refuses_graph_failing_onnx_checker(exported, tmp_path: Path) -> None:
    from export.gate import GateError, gate_data, run_gate

    b = load_bundle(exported["out"] / "tiny.sleepedge")
    mp = onnx.load(str(b.graph_path("step")))
    mp.graph.node[0].input[0] = "no_such_value"
    bad = tmp_path / "step.onnx"
    onnx.save(mp, str(bad))
    with pytest.raises(GateError, match="onnx.checker full check failed"):
        run_gate(exported["model"], b.graph_path("epoch"), bad, gate_data(exported["model"], n_epochs=16))


def test_static_batch_axis_is_an_export_error() -> None:
    from export.onnx_export import check_dynamic_batch

    def model(batch):
        g = helper.make_graph(
            [helper.make_node("Identity", ["z"], ["y"])], "g",
            [helper.make_tensor_value_info("z", TensorProto.FLOAT, [batch, 8])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 8])])
        return helper.make_model(g)

    check_dynamic_batch(model("batch"), "ok.onnx")
    with pytest.raises(ExportError, match=r"static for input z \(batch axis = 1\), output y \(batch axis = 1\)"):
        check_dynamic_batch(model(1), "step.onnx")


def test_op_allow_list_rejects_control_flow_and_custom_ops() -> None:
    from export.onnx_export import STEP_OPS, check_ops

    g = helper.make_graph(
        [helper.make_node("Relu", ["a"], ["b"]), helper.make_node("FusedGemm", ["b"], ["c"], domain="com.microsoft")],
        "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["batch"])])
    with pytest.raises(ExportError, match="com.microsoft::FusedGemm"):
        check_ops(helper.make_model(g), "step", STEP_OPS)
    assert "Scan" not in STEP_OPS and "Loop" not in STEP_OPS


def test_exported_step_graph_uses_basic_ops_only(exported) -> None:
    from export.onnx_export import FORBIDDEN_OPS, STEP_OPS

    b = load_bundle(exported["out"] / "tiny.sleepedge")
    mp = onnx.load(str(b.graph_path("step")))
    ops = {n.op_type for n in mp.graph.node}
    assert ops <= STEP_OPS and not ops & FORBIDDEN_OPS
    assert all(n.domain in ("", "ai.onnx") for n in mp.graph.node) and not mp.functions


def test_int8_and_fp16_variants_measured(exported, tmp_path: Path) -> None:
    from export.gate import check_onnx, gate_data, gate_fp16, variant_cost
    from export.precision import to_fp16, to_int8

    b = load_bundle(exported["out"] / "tiny.sleepedge")
    data = gate_data(exported["model"], n_epochs=16)
    e8, info = to_int8(b.graph_path("epoch"), tmp_path / "e8.onnx")
    s8, _ = to_int8(b.graph_path("step"), tmp_path / "s8.onnx")
    assert info["quantized_linear_nodes"] > 0
    cost8 = variant_cost(exported["model"], e8, s8, data)
    assert cost8["epochs"] == 16 and 0.0 < cost8["max_stage_prob_diff"] < 0.2   # a real, non-zero cost
    e16 = to_fp16(b.graph_path("epoch"), tmp_path / "e16.onnx")
    s16 = to_fp16(b.graph_path("step"), tmp_path / "s16.onnx")
    check_onnx(e16)
    check_onnx(s16)
    assert any(t.data_type == TensorProto.FLOAT16 for t in onnx.load(str(s16)).graph.initializer)
    cost16 = variant_cost(exported["model"], e16, s16, data)
    assert 0.0 < cost16["max_stage_prob_diff"] <= 0.05
    gate_fp16(cost16)
    from export.gate import GateError

    with pytest.raises(GateError, match="stage agreement 0.9000 < 0.995"):
        gate_fp16({**cost16, "stage_agreement": 0.9})


def test_trt_without_tensorrt_is_one_line_and_nonzero(exported, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` -> ImportError
    res = runner.invoke(app, ["export", str(exported["ckdir"] / "tiny.pt"), "-o",
                              str(exported["root"] / "trt.sleepedge"), "--trt"])
    assert res.exit_code == DeviceError.exit_code
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --trt: TensorRT is not installed")
    assert not (exported["root"] / "trt.sleepedge").exists()


def test_single_export_rejects_a_folder(exported) -> None:
    res = runner.invoke(app, ["export", str(exported["ckdir"]), "-o", str(exported["root"] / "x.sleepedge")])
    assert res.exit_code == 2 and "add --all" in res.stderr


# ---- TensorRT builder against a fake `tensorrt` module (import boundary only) -------------
def _fake_trt(version: str, inputs: dict[str, tuple] | None, parse_ok: bool = True) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    calls: dict = {"profile": {}, "flags": [], "workspace": None}
    trt.calls = calls
    major = int(version.split(".")[0])

    class Logger:
        WARNING = 2

        def __init__(self, level):
            calls["logger_level"] = level

    class Inp:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        def __init__(self):
            self._inputs = []

        @property
        def num_inputs(self):
            return len(self._inputs)

        def get_input(self, i):
            return self._inputs[i]

    class Parser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            self.network = network

        def parse(self, data):
            calls["parsed_bytes"] = len(data)
            if parse_ok:
                ins = inputs
                if ins is None:  # read the real graph's inputs, as TensorRT would (-1 = dynamic)
                    g = onnx.load_from_string(bytes(data)).graph
                    ins = {i.name: tuple(d.dim_value if d.HasField("dim_value") else -1
                                         for d in i.type.tensor_type.shape.dim) for i in g.input}
                self.network._inputs = [Inp(n, s) for n, s in ins.items()]
            return parse_ok

        def get_error(self, i):
            return "In node 3 (Foo): UNSUPPORTED_NODE"

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls["profile"][name] = (list(lo), list(opt), list(hi))

    class Config:
        def set_flag(self, flag):
            calls["flags"].append(flag)

        def add_optimization_profile(self, p):
            calls["n_profiles"] = calls.get("n_profiles", 0) + 1

    if major >= 8:
        def set_memory_pool_limit(self, pool, n):
            calls["workspace"] = ("pool", pool, n)
        Config.set_memory_pool_limit = set_memory_pool_limit
        trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    else:
        def _set_ws(self, n):
            calls["workspace"] = ("attr", None, n)
        Config.max_workspace_size = property(lambda self: 0, _set_ws)

    class Engine:
        def serialize(self):
            return b"PLAN-OLD"

    class Builder:
        platform_has_fast_fp16 = True

        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            calls["network_flags"] = flags
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

    if major >= 8:
        Builder.build_serialized_network = lambda self, net, cfg: b"PLAN-" + version.encode()
    else:
        Builder.build_engine = lambda self, net, cfg: Engine()

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, Parser
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16")
    if major < 10:
        trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    return trt


STEP_INPUTS = {"z": (-1, 64), "conv_state": (-1, 160, 3), "ssm_state": (-1, 2, 64, 16)}


@pytest.mark.parametrize("version", ["10.3.0", "8.6.1", "7.2.3"])
def test_build_engine_with_fake_tensorrt(tmp_path: Path, monkeypatch, version: str) -> None:
    from export.tensorrt import build_engine

    fake = _fake_trt(version, STEP_INPUTS)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    src = tmp_path / "step.onnx"
    src.write_bytes(b"\x08\x07onnx-bytes")
    entry = build_engine(src, tmp_path / "step.plan", fp16=True, max_batch=8, workspace_bytes=1 << 20)
    calls = fake.calls
    major = int(version.split(".")[0])
    assert calls["network_flags"] == (0 if major >= 10 else 1)            # explicit batch before TRT 10
    assert calls["workspace"] == (("pool", "WORKSPACE", 1 << 20) if major >= 8 else ("attr", None, 1 << 20))
    assert calls["flags"] == ["FP16"] and calls["n_profiles"] == 1 and calls["parsed_bytes"] == src.stat().st_size
    assert calls["profile"]["ssm_state"] == ([1, 2, 64, 16], [1, 2, 64, 16], [8, 2, 64, 16])
    assert set(calls["profile"]) == set(STEP_INPUTS)
    plan = (tmp_path / "step.plan").read_bytes()
    assert plan == (b"PLAN-" + version.encode() if major >= 8 else b"PLAN-OLD")
    assert entry["tensorrt"] == version and entry["precision"] == "fp16" and entry["file"] == "step.plan"
    assert entry["profile"]["z"]["max"] == [8, 64] and "gpu" in entry


def test_build_engine_parse_error_and_bad_dims(tmp_path: Path, monkeypatch) -> None:
    from export.tensorrt import build_engine

    src = tmp_path / "g.onnx"
    src.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt("10.0.1", STEP_INPUTS, parse_ok=False))
    with pytest.raises(ExportError, match=r"TensorRT 10.0.1 cannot parse g.onnx: In node 3 \(Foo\)"):
        build_engine(src, tmp_path / "g.plan")
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt("10.0.1", {"x": (-1, -1, 3000)}))
    with pytest.raises(ExportError, match="dynamic non-batch dims"):
        build_engine(src, tmp_path / "g.plan")
    assert not (tmp_path / "g.plan").exists()


def test_export_with_trt_puts_engines_in_the_bundle(exported, tmp_path: Path, monkeypatch) -> None:
    """--trt path end to end with TensorRT faked at the import boundary (no GPU here)."""
    from export.exporter import export_model

    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt("10.3.0", None))
    res = export_model(exported["model"], {"provenance": {"simulated": True}}, tmp_path / "m.zip",
                       trt=True, gate_epochs=16, trt_max_batch=4)
    b = load_bundle(res.out)
    eng = b.engines
    assert set(eng) == {"epoch_fp32", "step_fp32"}
    assert eng["epoch_fp32"]["graph"] == "epoch.onnx" and eng["step_fp32"]["tensorrt"] == "10.3.0"
    assert eng["epoch_fp32"]["profile"]["x"] == {"min": [1, 4, 3000], "opt": [1, 4, 3000], "max": [4, 4, 3000]}
    assert b.path("step.fp32.plan").read_bytes() == b"PLAN-10.3.0"
    assert b.manifest["versions"]["tensorrt"] == "10.3.0"


@pytest.mark.trt
def test_real_tensorrt_engine(exported, tmp_path: Path) -> None:
    trt = pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU")
    from export.tensorrt import build_engine

    b = load_bundle(exported["out"] / "tiny.sleepedge")
    entry = build_engine(b.graph_path("step"), tmp_path / "step.plan", max_batch=4)
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine((tmp_path / "step.plan").read_bytes())
    assert engine is not None and entry["tensorrt"] == trt.__version__
    if hasattr(engine, "num_io_tensors"):
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        assert names == set(b.graph("step")["inputs"]) | set(b.graph("step")["outputs"])


# ---- paper preset (random weights): batch-1 parity --------------------------------------
@pytest.mark.slow
def test_paper_preset_export_batch1_parity(tmp_path: Path, request) -> None:
    if "slow" not in (request.config.getoption("-m") or "") and not os.environ.get("SLEEPEDGE_SLOW"):
        pytest.skip("paper export: ~1 min and ~3 GB RAM on CPU; run with -m slow or SLEEPEDGE_SLOW=1")
    import onnxruntime as ort

    from export.onnx_export import export_epoch_graph, export_step_graph
    from sleepedge.models.config import preset
    from sleepedge.models.synthsleepnet import SynthSleepNet

    torch.manual_seed(0)
    model = SynthSleepNet(preset("paper")).eval()
    eg = export_epoch_graph(model, tmp_path / "epoch.onnx")
    sg = export_step_graph(model, tmp_path / "step.onnx")
    g = torch.Generator().manual_seed(0)
    x, p = torch.randn(1, 4, 3000, generator=g), torch.ones(1, 4)
    with torch.no_grad():
        z = model.embed(x, p)
        ref = [z, *model.epoch_heads(z)]
        st = model.temporal.init_state(1)
        (sh, ah, hh), new = model.temporal.step(z, st)
    es = ort.InferenceSession(str(eg.path), providers=["CPUExecutionProvider"])
    got = es.run(None, {"x": x.numpy(), "present": p.numpy()})
    assert max(float(np.abs(a - r.numpy()).max()) for a, r in zip(got, ref)) <= 1e-4
    ss = ort.InferenceSession(str(sg.path), providers=["CPUExecutionProvider"])
    feeds = {"z": z.numpy(), **{n: s.numpy() for n, s in zip(model.temporal.state_names, st)}}
    got = ss.run(None, feeds)
    assert max(float(np.abs(a - r.numpy()).max()) for a, r in zip(got, (sh, ah, hh, *new))) <= 1e-4


class _DataDependent(torch.nn.Module):
    """A Python branch on tensor values: torch.export refuses it, TorchScript tracing records one branch."""

    def forward(self, z):
        if z.sum() > 0:
            return z * 2.0
        return z - 1.0


def test_torchscript_fallback_is_used_and_recorded(tmp_path: Path) -> None:
    from export.onnx_export import _export_one, check_dynamic_batch

    batch = torch.export.Dim("batch", min=1, max=64)
    z = torch.ones(2, 3)
    exporter, reason = _export_one(_DataDependent(), (z,), tmp_path / "g.onnx", ["z"], ["y"], ({0: batch},), 18, "g.onnx")
    assert exporter == "torchscript" and reason  # the dynamo failure, in one line
    mp = onnx.load(str(tmp_path / "g.onnx"))
    check_dynamic_batch(mp, "g.onnx")           # dynamic_axes kept the batch axis symbolic
    with pytest.raises(ExportError, match="the dynamo exporter failed"):
        _export_one(_DataDependent(), (z,), tmp_path / "h.onnx", ["z"], ["y"], ({0: batch},), 18, "h.onnx",
                    allow_fallback=False)


def test_silently_unconverted_opset_is_an_export_error(tmp_path: Path) -> None:
    """torch writes opset 18 when asked for 17 and the version converter fails: refuse it."""
    from export.onnx_export import STEP_OPS, _finish

    g = helper.make_graph([helper.make_node("Relu", ["z"], ["y"])], "g",
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    info = _finish(path, "g", ["z"], ["y"], "dynamo", "", 18, STEP_OPS, [])
    assert info.inputs == {"z": ["batch", 4]} and info.n_nodes == 1
    with pytest.raises(ExportError, match="opset 17 was requested but the graph was written with opset 18"):
        _finish(path, "g", ["z"], ["y"], "dynamo", "", 17, STEP_OPS, [])
