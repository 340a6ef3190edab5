"""runtime/: sessions, the streaming scorer, offline == streaming, sinks, torch-freeness."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sleepedge.errors import BundleError, ChannelError, DeviceError, OutputError

from tests._bundle_fixture import NOTICE, build_bundle, signals_for, write_test_edf

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("b") / "fixture.sleepedge")


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    from sleepedge.bundle import load_bundle

    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def night_edf(tmp_path_factory) -> Path:
    return write_test_edf(tmp_path_factory.mktemp("edf") / "night.edf", minutes=24, seed=3)


# ------------------------------------------------------------------------------- sessions
def test_cpu_session_runs_both_graphs(bundle):
    from runtime.session import make_sessions

    eng = make_sessions(bundle, device="cpu", threads=1)
    assert eng.device == "cpu" and eng.providers == ["CPUExecutionProvider"]
    assert "intra-op threads 1" in eng.describe()
    x = np.random.default_rng(0).normal(size=(3, 4, 3000)).astype(np.float32)
    out = eng.run_epoch(x, np.ones((3, 4), np.float32))
    assert out["z"].shape == (3, 16) and out["stage_logits"].shape == (3, 5) and out["apnea_logit"].shape == (3,)
    state = eng.init_state()
    assert {k: v.shape for k, v in state.items()} == {"conv": (1, 16, 3), "ssm": (1, 8)}
    heads, new = eng.run_step(out["z"][:1], state)
    assert heads["stage_logits"].shape == (1, 5)
    assert not np.allclose(new["ssm"], 0) and set(new) == {"conv", "ssm"}


def test_auto_picks_cpu_here_and_unavailable_devices_are_one_line_errors(bundle):
    import onnxruntime as ort

    from runtime.session import make_sessions

    avail = ort.get_available_providers()
    if "CUDAExecutionProvider" not in avail and "TensorrtExecutionProvider" not in avail:
        assert make_sessions(bundle, "auto").device == "cpu"
        with pytest.raises(DeviceError, match="--device cuda") as ei:
            make_sessions(bundle, "cuda")
        assert "\n" not in str(ei.value)
        with pytest.raises(DeviceError, match="--device tensorrt.*ships no TensorRT engines"):
            make_sessions(bundle, "tensorrt")
    with pytest.raises(DeviceError, match="'gpu' is unknown"):
        make_sessions(bundle, "gpu")


def test_tensorrt_engines_are_picked_and_need_tensorrt(tmp_path):
    import importlib.util

    from runtime.session import _pick_engines, make_sessions
    from sleepedge.bundle import load_bundle

    def add_engines(m):
        m["engines"] = {
            f"{g}_{p}": {"file": f"{g}.{p}.plan", "graph": f"{g}.onnx", "precision": p, "tensorrt": "10.3.0", "gpu": "Orin"}
            for g in ("epoch", "step") for p in ("fp32", "fp16")}

    plans = {f"{g}.{p}.plan": b"not a real plan" for g in ("epoch", "step") for p in ("fp32", "fp16")}
    b = load_bundle(build_bundle(tmp_path / "trt.sleepedge", mutate=add_engines, extra_files=plans))
    assert _pick_engines(b) == {"epoch": "epoch.fp16.plan", "step": "step.fp16.plan"}
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(DeviceError, match="`tensorrt` Python package is not installed"):
            make_sessions(b, "tensorrt")
        assert make_sessions(b, "auto").device in ("cpu", "ort-cuda", "ort-tensorrt")


@pytest.mark.parametrize("edit, match", [
    (lambda m: m["graphs"]["epoch"]["inputs"]["x"].__setitem__("shape", ["batch", 4, 2500]), "shape"),
    (lambda m: m["graphs"]["step"]["outputs"].pop("ssm_out"), "outputs"),
    (lambda m: m["graphs"]["epoch"]["inputs"].__setitem__("mask", {"shape": ["batch", 4]}), "inputs"),
])
def test_graph_io_must_match_manifest(bundle_dir, edit, match):
    import copy

    from runtime.session import make_sessions
    from sleepedge.bundle import load_bundle

    b = load_bundle(bundle_dir)
    b.manifest = copy.deepcopy(b.manifest)
    edit(b.manifest)
    with pytest.raises(BundleError, match=match):
        make_sessions(b, "cpu")


# ------------------------------------------------------------------------------- scorer
def _stream(bundle, edf: Path, rng: np.random.Generator, max_chunk_s: float = 47.0):
    """Push the EDF through a StreamingScorer in random chunk sizes (per role independently)."""
    from runtime.scorer import StreamingScorer
    from sleepedge.channels import assign_roles
    from sleepedge.edf import open_edf

    with open_edf(edf) as r:
        rm = assign_roles(r.header.labels)
        rates = {role: r.header.signal(lab).fs_hz for role, lab in rm.primary.items()}
        sig = {role: r.read(lab) for role, lab in rm.primary.items()}
    sc = StreamingScorer(bundle, rates, device="cpu")
    pos = {role: 0 for role in sig}
    out = []
    while any(pos[r] < len(sig[r]) for r in sig):
        chunk = {}
        for role in sig:
            n = int(rng.uniform(0.01, max_chunk_s) * rates[role])
            chunk[role] = sig[role][pos[role]:pos[role] + n]
            pos[role] += n
        out += sc.push(chunk)
    return out, sc


def test_offline_equals_streaming_random_chunks(bundle, night_edf):
    from runtime.scorer import score_recording

    night = score_recording(night_edf, bundle, device="cpu")
    assert len(night.epochs) == 48 and [e.index for e in night.epochs] == list(range(48))
    assert len(set(night.stages.tolist())) >= 2, "the fixture model should not be constant"
    for seed in (0, 1):
        streamed, _ = _stream(bundle, night_edf, np.random.default_rng(seed))
        assert [e.stage for e in streamed] == night.stages.tolist()
        p_s = np.array([e.probs for e in streamed])
        p_o = np.array([e.probs for e in night.epochs])
        assert np.max(np.abs(p_s - p_o)) < 1e-5
        # no RESP/SpO2 channel (and a model without those inputs): apnea/hypopnea not reported
        # (streaming == offline with them: tests/test_apnea_gating.py)
        assert all(e.p_apnea is None and e.p_hypopnea is None for e in streamed + night.epochs)
        assert [e.onset_s for e in streamed] == [e.onset_s for e in night.epochs]


def test_state_is_carried_between_epochs(bundle, night_edf):
    """Scoring the second half with a fresh state differs from the continuous run: the step
    graph's recurrence is real and the scorer carries it."""
    from runtime.scorer import StreamingScorer

    sig = signals_for(10, seed=5)
    rates = {"EEG": 100.0, "EOG": 100.0, "EMG": 200.0, "ECG": 256.0}
    data = {role: sig[lab][1] for role, lab in zip(rates, sig)}
    sc = StreamingScorer(bundle, rates, device="cpu")
    full = sc.push(data)
    sc2 = StreamingScorer(bundle, rates, device="cpu")
    sc2.push({r: v[: int(300 * rates[r])] for r, v in data.items()})  # 10 epochs
    tail_cont = sc2.push({r: v[int(300 * rates[r]):] for r, v in data.items()})
    assert np.allclose([e.probs for e in tail_cont], [e.probs for e in full[10:]], atol=1e-6)
    sc3 = StreamingScorer(bundle, rates, device="cpu")
    sc3.push({r: v[: int(300 * rates[r])] for r, v in data.items()})
    sc3.state = sc3.engine.init_state()  # reset after 10 epochs: the next epochs must change
    tail_reset = sc3.push({r: v[int(300 * rates[r]):] for r, v in data.items()})
    assert np.max(np.abs(np.array([e.probs for e in tail_reset]) - np.array([e.probs for e in full[10:]]))) > 1e-3


def test_missing_and_extra_roles_are_reported(bundle):
    from runtime.scorer import StreamingScorer

    rng = np.random.default_rng(0)
    sc = StreamingScorer(bundle, {"EEG": 100.0, "EOG": 128.0, "RESP": 25.0, "SPO2": 1.0}, device="cpu")
    assert sc.missing_roles == ["EMG", "ECG"] and sc.extra_roles == ["RESP", "SPO2"]
    assert "missing ['EMG', 'ECG']" in sc.describe() and "ignored ['RESP', 'SPO2']" in sc.describe()
    res = sc.push({"EEG": rng.normal(0, 20, 6000), "EOG": rng.normal(0, 20, 128 * 60), "RESP": np.zeros(10)})
    assert len(res) == 2
    assert res[0].quality == {"EMG": ["missing"], "ECG": ["missing"]}
    assert res[0].quality_str() == "EMG:missing;ECG:missing"
    assert abs(sum(res[0].probs) - 1) < 1e-9 and res[0].latency_ms > 0
    # RESP/SpO2 in the recording but not model inputs: the heads cannot see them -> not reported
    assert res[0].p_apnea is None and not sc.respiratory_ok and "does not take RESP/SPO2" in sc.respiratory_reason
    with pytest.raises(ChannelError, match="at least one of"):
        StreamingScorer(bundle, {"RESP": 25.0}, device="cpu")


def test_nan_and_gap_flags(bundle):
    from runtime.scorer import StreamingScorer

    rng = np.random.default_rng(1)
    rates = {"EEG": 100.0, "EOG": 100.0, "EMG": 100.0, "ECG": 100.0}
    sc = StreamingScorer(bundle, rates, device="cpu")
    eeg = rng.normal(0, 20, 3000)
    eeg[100:400] = np.nan
    res = sc.push({"EEG": eeg, **{r: rng.normal(0, 20, 3000) for r in ("EOG", "EMG", "ECG")}})
    assert "nan" in res[0].quality["EEG"]
    res = sc.gap(12.0)  # 12 s dropout, then 18 s of data completes epoch 1
    res += sc.push({r: rng.normal(0, 20, 1800) for r in rates})
    assert [e.index for e in res] == [1] and "gap" in res[0].quality["EEG"]
    assert np.isfinite(res[0].probs).all()


# ------------------------------------------------------------------------------- sinks
def _result(i, stage, pa=0.1, ph=0.1, quality=None):
    from runtime.scorer import EpochResult
    from sleepedge.contract import STAGES

    probs = [0.01] * 5
    probs[stage] = 0.96
    return EpochResult(i, 30.0 * i, stage, STAGES[stage], tuple(probs), pa, ph, quality or {}, 1.0)


def _night(epochs, notice=NOTICE):
    from runtime.scorer import NightResult

    return NightResult("x.edf", epochs, None, {"EEG": "Fpz"}, ["ECG"], [], "cpu",
                       {"simulated": bool(notice), "notice": notice}, notice=notice)


def test_ahi_estimate_counts_runs_over_sleep_hours():
    from runtime.sinks import night_report

    # 240 epochs = 2 h: 40 W then 200 sleep (100 min); apnea runs: epochs 50-52, 60, 70-71;
    # an apnea-probable epoch during W (index 5) is not counted; hypopnea run 100-104
    stages = [0] * 40 + [2] * 200
    eps = []
    for i, s in enumerate(stages):
        pa = 0.9 if i in (5, 50, 51, 52, 60, 70, 71) else 0.2
        ph = 0.8 if 100 <= i <= 104 else 0.1
        eps.append(_result(i, s, pa, ph, {"EMG": ["flat"]} if i < 3 else None))
    rep = night_report(_night(eps))
    ahi = rep["ahi_estimate"]
    assert ahi["apnea_runs"] == 3 and ahi["hypopnea_runs"] == 1
    assert ahi["value"] == pytest.approx(4 / (200 * 30 / 3600))
    assert rep["sleep_stats"]["tst_min"] == pytest.approx(100.0)
    assert rep["quality"]["per_role"] == {"EMG": {"flat": 3}} and rep["quality"]["epochs_with_any_flag"] == 3
    assert rep["notice"] == NOTICE and "ahi" not in rep["sleep_stats"]
    json.dumps(rep, allow_nan=False)


def test_writer_outputs_parse_and_carry_notice(tmp_path):
    from runtime.sinks import NightWriter, read_rows
    from sleepedge.edf import open_edf
    from sleepedge.scoring import read_scoring

    eps = [_result(i, s) for i, s in enumerate([0, 0, 1, 2, 2, 2, 3, 3, 4, 4, 2, 0])]
    w = NightWriter(tmp_path, "n.sleepedge", ["tsv", "csv", "edf", "png"], notice=NOTICE)
    for e in eps:
        w.add(e)
    paths = w.finish(_night(eps))
    hyp, _ = read_scoring(paths["tsv"])
    assert hyp.stages.tolist() == [0, 0, 1, 2, 2, 2, 3, 3, 4, 4, 2, 0]
    assert read_scoring(paths["csv"])[0].stages.tolist() == hyp.stages.tolist()
    assert read_rows(paths["csv"])[3]["p_N2"] == "0.960000"
    edf_hyp, _ = read_scoring(paths["edf"])
    assert edf_hyp.stages.tolist()[:12] == hyp.stages.tolist()
    with open_edf(paths["edf"]) as r:
        texts = [a.text for a in r.header.annotations]
    assert texts[0] == NOTICE[:120] and "Sleep stage N3" in texts and "Sleep stage R" in texts
    # the json sidecar is added because the model is simulated
    side = json.loads((tmp_path / "n.sleepedge.json").read_text())
    assert side["notice"] == NOTICE and set(side["columns"]) >= {"onset", "p_REM", "quality"}
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_line_sink_resume_drops_partial_tail(tmp_path):
    from runtime.sinks import LineSink, read_rows

    p = tmp_path / "a.tsv"
    s = LineSink(p, "\t")
    for i in range(5):
        s.write(_result(i, 2))
    s.close()
    with open(p, "a") as fh:
        fh.write("150.000\t30\tN2\t0.01")  # a row cut by a kill
    s2 = LineSink(p, "\t", resume=True)
    assert s2.n_existing == 5
    for i in range(8):
        s2.write(_result(i, 2))
    s2.close()
    rows = read_rows(p)
    assert [float(r["onset"]) for r in rows] == [30.0 * i for i in range(8)]
    assert p.read_text().endswith("ok\n")
    # a file from another model/recording is refused, not continued
    s3 = LineSink(p, "\t", resume=True)
    s3.write(_result(0, 2))
    with pytest.raises(OutputError, match="epoch 1 holds N2 but re-scoring gives REM"):
        s3.write(_result(1, 4))
    s3.close()


def test_unwritable_output_is_output_error(tmp_path):
    from runtime.sinks import check_writable, parse_formats

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="not writable"):
        check_writable(blocker / "sub")
    with pytest.raises(OutputError, match="unknown"):
        parse_formats("tsv,xlsx")


# ------------------------------------------------------------------------------- no torch
def test_runtime_imports_no_torch():
    code = "import runtime, runtime.scorer, runtime.session, runtime.sinks, runtime.sources, sleepedge.cli, sys; assert 'torch' not in sys.modules, 'torch imported'"
    r = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None
sys.meta_path.insert(0, _NoTorch())
from sleepedge.cli import run
sys.argv = ["sleepedge"] + sys.argv[1:]
run()
"""


def test_score_cli_runs_with_torch_unimportable(bundle_dir, night_edf, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([PY, "-c", BLOCK_TORCH, "score", str(night_edf), "--model", str(bundle_dir),
                        "--out", str(out), "--format", "tsv,json", "-q"],
                       cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "night.sleepedge.json").read_text())
    assert rep["n_epochs"] == 48 and rep["notice"] == NOTICE
    # and the blocker really blocks
    r = subprocess.run([PY, "-c", BLOCK_TORCH.replace("from sleepedge.cli import run", "import torch")],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "torch is blocked" in r.stderr


def test_disk_full_mid_way_names_what_was_saved(tmp_path):
    import errno

    from runtime.sinks import LineSink, read_rows

    p = tmp_path / "a.tsv"
    s = LineSink(p, "\t")
    for i in range(3):
        s.write(_result(i, 1))
    real = s.fh

    class Full:
        def write(self, _):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(real, name)

    s.fh = Full()
    with pytest.raises(OutputError, match=r"a\.tsv failed at epoch 3 \(No space left on device\); epochs 0\.\.2 are saved"):
        s.write(_result(3, 1))
    s.fh = real
    s.close()
    assert len(read_rows(p)) == 3


def test_pipelined_offline_scoring_equals_sequential(bundle, night_edf):
    """score_recording's worker thread (read + preprocess of the next block while the graphs run)
    gives exactly the results of the sequential loop; an error in the worker reaches the caller."""
    from runtime.scorer import score_recording
    from sleepedge.errors import PreprocessError

    edf = night_edf
    a = score_recording(edf, bundle, device="cpu", pipeline=True, block_epochs=3)
    b = score_recording(edf, bundle, device="cpu", pipeline=False, block_epochs=3)
    assert [e.stage for e in a.epochs] == [e.stage for e in b.epochs] and len(a.epochs) > 3
    assert [e.probs for e in a.epochs] == [e.probs for e in b.epochs]
    assert [e.quality for e in a.epochs] == [e.quality for e in b.epochs]

    import runtime.scorer as scorer_mod

    orig = scorer_mod.StreamingScorer.preprocess
    calls = []

    def failing(self, chunks):
        calls.append(1)
        if len(calls) == 2:
            raise PreprocessError("boom in the worker")
        return orig(self, chunks)

    scorer_mod.StreamingScorer.preprocess = failing
    try:
        with pytest.raises(PreprocessError, match="boom in the worker"):
            score_recording(edf, bundle, device="cpu", pipeline=True, block_epochs=3)
    finally:
        scorer_mod.StreamingScorer.preprocess = orig


def test_periodic_rewrites_keep_a_long_stream_linear(tmp_path, monkeypatch):
    """EDF+/JSON rewrites come every `every` epochs, and every 1 % of the epochs so far once that
    is more: a 72-h stream (8,640 epochs) does ~250 rewrites instead of 432 (each costs O(epochs)),
    and beyond 2,000 epochs their number grows with log(epochs): total cost linear."""
    import runtime.sinks
    from runtime.sinks import NightWriter

    monkeypatch.setattr(runtime.sinks, "REWRITE_MIN_S", 0.0)   # the epoch rule alone (wall-time rule: below)
    w = NightWriter(tmp_path, "s", ["tsv"], every=20)
    at = []
    w._rewrite = lambda night, final, png=False: at.append(len(w.epochs))
    for i in range(8640):
        w.add(_result(i, 2), lambda eps: None)
    w.close()
    assert at[:3] == [20, 40, 60] and all(b - a == 20 for a, b in zip(at, at[1:]) if b <= 2000)
    assert all(b - a >= a // 100 for a, b in zip(at, at[1:]))
    assert len(at) < 260 and 8640 - at[-1] < 8640 // 100 + 1


def test_periodic_rewrites_are_at_least_min_seconds_apart(tmp_path, monkeypatch):
    """A fast replay (`--speed 0`) scores thousands of epochs a second: its EDF+/JSON snapshots are
    also REWRITE_MIN_S of wall time apart (the TSV/CSV, fsynced per epoch, are what a crash keeps)."""
    import runtime.sinks
    from runtime.sinks import NightWriter

    clock = [0.0]
    monkeypatch.setattr(runtime.sinks.time, "monotonic", lambda: clock[0])
    w = NightWriter(tmp_path, "s", ["tsv"], every=20)
    at = []
    w._rewrite = lambda night, final, png=False: at.append((len(w.epochs), clock[0]))
    for i in range(2000):
        clock[0] = i * 0.05                 # 20 epochs a second
        w.add(_result(i, 2), lambda eps: None)
    w.close()
    assert at[0][0] == 20                   # the first snapshot at once
    assert all(b[1] - a[1] >= runtime.sinks.REWRITE_MIN_S for a, b in zip(at, at[1:]))
    assert all(b[0] - a[0] >= 20 for a, b in zip(at, at[1:]))
    assert 40 <= len(at) <= 51              # 100 s of wall time / 2 s
