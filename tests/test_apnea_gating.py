"""Apnea / hypopnea / AHI are reported only when the model has trained heads for them AND the
recording has the channels they need (runtime.scorer.respiratory_support): TSV/CSV `n/a`,
JSON `ahi_estimate.value: null` + a reason, no apnea panel, no apnea in the stream line."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests._bundle_fixture import build_bundle, write_test_edf

from sleepedge.cli import app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
ROLES6 = ("EEG", "EOG", "EMG", "ECG", "RESP", "SPO2")
RATES6 = {"EEG Fpz-Cz": 100.0, "EOG horizontal": 100.0, "EMG submental": 200.0, "ECG II": 256.0,
          "Airflow": 25.0, "SpO2": 1.0}
runner = CliRunner()


def _stage_only(m):
    m["labels"]["tasks"] = ["stage"]


def _no_tasks(m):
    del m["labels"]["tasks"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("b")
    return {
        "six": build_bundle(d / "six.sleepedge", modalities=ROLES6),
        "six_stage_only": build_bundle(d / "stage.sleepedge", modalities=ROLES6, mutate=_stage_only),
        "six_no_tasks": build_bundle(d / "old.sleepedge", modalities=ROLES6, mutate=_no_tasks),
        "four": build_bundle(d / "four.sleepedge"),
    }


@pytest.fixture(scope="module")
def loaded(bundles):
    from sleepedge.bundle import load_bundle

    return {k: load_bundle(v) for k, v in bundles.items()}


@pytest.fixture(scope="module")
def resp_edf(tmp_path_factory) -> Path:
    return write_test_edf(tmp_path_factory.mktemp("e") / "resp.edf", minutes=6, seed=7, rates=RATES6)


# ---------------------------------------------------------------------------- the rule
def test_respiratory_support_rule(loaded):
    from runtime.scorer import respiratory_support

    ok_rates = {"EEG": 100.0, "EOG": 100.0, "RESP": 10.0, "SPO2": 1.0}
    assert respiratory_support(loaded["six"], ok_rates) == (True, "")
    # a manifest without labels.tasks means all three tasks (bundles written before the check)
    assert respiratory_support(loaded["six_no_tasks"], ok_rates) == (True, "")
    ok, why = respiratory_support(loaded["six_stage_only"], ok_rates)
    assert not ok and why == "the model has no trained apnea/hypopnea heads (tasks: stage)"
    ok, why = respiratory_support(loaded["four"], ok_rates)
    assert not ok and "does not take RESP/SPO2 as input" in why
    # Sleep-EDF: 1-Hz thermistor, no oximeter
    ok, why = respiratory_support(loaded["six"], {"EEG": 100.0, "RESP": 1.0}, {"EEG": "EEG Fpz-Cz", "RESP": "Resp oro-nasal"})
    assert not ok and why == "RESP 'Resp oro-nasal' sampled at 1 Hz (needs >= 10 Hz); no SpO2 channel"
    ok, why = respiratory_support(loaded["six"], {"EEG": 100.0, "RESP": 32.0, "SPO2": 0.5})
    assert not ok and why == "SpO2 sampled at 0.5 Hz (needs >= 1 Hz)"
    ok, why = respiratory_support(loaded["six"], {"EEG": 100.0, "SPO2": 1.0})
    assert not ok and why.startswith("no RESP channel (airflow / nasal pressure / thermistor)")


def test_scorer_ignores_heads_when_not_supported(loaded):
    from runtime.scorer import StreamingScorer

    rng = np.random.default_rng(0)
    rates = {"EEG": 100.0, "EOG": 100.0, "RESP": 25.0, "SPO2": 1.0}
    data = {"EEG": rng.normal(0, 20, 6000), "EOG": rng.normal(0, 20, 6000), "RESP": rng.normal(0, 50, 1500),
            "SPO2": 95 + rng.normal(0, 1, 60)}
    sc = StreamingScorer(loaded["six"], rates, device="cpu")
    assert sc.respiratory_ok and sc.respiratory_reason == ""
    res = sc.push(data)
    assert len(res) == 2 and all(0 < e.p_apnea < 1 and 0 < e.p_hypopnea < 1 for e in res)
    sc = StreamingScorer(loaded["six_stage_only"], rates, device="cpu")
    assert not sc.respiratory_ok and "tasks: stage" in sc.respiratory_reason
    assert "apnea/hypopnea/AHI not reported" in sc.describe()
    res2 = sc.push(data)
    assert all(e.p_apnea is None and e.p_hypopnea is None for e in res2)
    assert np.allclose([e.probs for e in res2], [e.probs for e in res])  # staging is untouched (same weights)


# ---------------------------------------------------------------------------- outputs
def test_not_reported_outputs_and_resume(bundles, resp_edf, tmp_path):
    """Stage-only model: TSV/CSV n/a, JSON null + reason, PNG without the apnea panel; --resume
    reads the n/a rows back and continues them."""
    from runtime.sinks import read_rows
    from sleepedge.scoring import read_scoring

    full, part = tmp_path / "full", tmp_path / "part"
    for d in (full, part):
        r = runner.invoke(app, ["score", str(resp_edf), "--model", str(bundles["six_stage_only"]), "--out", str(d),
                                "--format", "tsv,csv,json,png"])
        assert r.exit_code == 0, r.output
    assert r.output.count("no trained apnea/hypopnea heads") == 1  # the reason, once, under the table
    rows = read_rows(full / "resp.sleepedge.tsv")
    assert len(rows) == 12 and all(x["p_apnea"] == "n/a" and x["p_hypopnea"] == "n/a" for x in rows)
    assert all(x["p_hypopnea"] == "n/a" for x in read_rows(full / "resp.sleepedge.csv"))
    assert len(read_scoring(full / "resp.sleepedge.tsv")[0].stages) == 12  # still a readable hypnogram
    rep = json.loads((full / "resp.sleepedge.json").read_text())
    ahi = rep["ahi_estimate"]
    assert ahi["value"] is None and ahi["reported"] is False
    assert ahi["reason"] == "the model has no trained apnea/hypopnea heads (tasks: stage)"
    assert "heads" not in ahi and rep["model"]["tasks"] == ["stage"]
    assert (full / "resp.sleepedge.png").read_bytes()[:4] == b"\x89PNG"
    # resume over n/a rows
    tsv = part / "resp.sleepedge.tsv"
    lines = tsv.read_text().splitlines(keepends=True)
    tsv.write_text("".join(lines[:6]) + lines[6][:20])
    r = runner.invoke(app, ["score", str(resp_edf), "--model", str(bundles["six_stage_only"]), "--out", str(part),
                            "--format", "tsv,csv,json", "--resume", "-q"])
    assert r.exit_code == 0, r.output
    assert tsv.read_text() == (full / "resp.sleepedge.tsv").read_text()


def test_reported_outputs_carry_head_provenance(bundles, loaded, resp_edf, tmp_path):
    from runtime.scorer import score_recording
    from runtime.sinks import read_rows
    from tests.test_runtime import _stream

    r = runner.invoke(app, ["score", str(resp_edf), "--model", str(bundles["six"]), "--out", str(tmp_path),
                            "--format", "tsv,json,png", "-q"])
    assert r.exit_code == 0, r.output
    rows = read_rows(tmp_path / "resp.sleepedge.tsv")
    assert all(0 < float(x["p_apnea"]) < 1 for x in rows)
    ahi = json.loads((tmp_path / "resp.sleepedge.json").read_text())["ahi_estimate"]
    assert ahi["reported"] is True and "reason" not in ahi and ahi["apnea_runs"] is not None
    assert ahi["heads"]["apnea"]["simulated"] is True and ahi["heads"]["apnea"]["label"] == "trained on SIMULATED nights"
    assert ahi["trained_on"] == "none (random weights, test fixture)"
    assert "SIMULATED" in ahi["notice"]
    # streaming == offline, apnea/hypopnea included
    night = score_recording(resp_edf, loaded["six"], device="cpu")
    assert night.respiratory_ok and night.respiratory_reason == ""
    streamed, sc = _stream(loaded["six"], resp_edf, np.random.default_rng(0))
    assert sc.respiratory_ok
    p_s = np.array([e.probs + (e.p_apnea, e.p_hypopnea) for e in streamed])
    p_o = np.array([e.probs + (e.p_apnea, e.p_hypopnea) for e in night.epochs])
    assert p_s.shape == p_o.shape and np.max(np.abs(p_s - p_o)) < 1e-5


def test_per_head_provenance_overrides_bundle_provenance(tmp_path):
    from runtime.scorer import head_provenance

    m = {"provenance": {"simulated": False, "data": "153 real Sleep-EDF nights",
                        "heads": {"apnea": {"simulated": True, "data": "20 SIMULATED nights"}}}}
    assert head_provenance(m, "apnea") == {"data": "20 SIMULATED nights", "simulated": True,
                                           "label": "trained on SIMULATED nights"}
    assert head_provenance(m, "hypopnea")["simulated"] is False
    assert head_provenance(m, "hypopnea")["data"] == "153 real Sleep-EDF nights"


def test_stream_line_omits_apnea_when_not_reported(bundles, resp_edf, tmp_path):
    r = runner.invoke(app, ["stream", "--edf", str(resp_edf), "--speed", "0", "--model", str(bundles["six_stage_only"]),
                            "--out", str(tmp_path / "s"), "--format", "tsv,json", "--epochs", "3"])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 3 and not any("apnea" in ln for ln in lines)
    assert r.output.count("apnea/hypopnea/AHI not reported: the model has no trained apnea/hypopnea heads") == 1
    r = runner.invoke(app, ["stream", "--edf", str(resp_edf), "--speed", "0", "--model", str(bundles["six"]),
                            "--out", str(tmp_path / "t"), "--format", "tsv", "--epochs", "2"])
    assert r.exit_code == 0, r.output
    assert sum("apnea " in ln and "hypopnea " in ln for ln in r.output.splitlines() if ln.startswith("epoch ")) == 2


# ---------------------------------------------------------------------------- real bundles, real night
def _sim_bundle_path() -> Path:
    from sleepedge.bundle import embedded_bundles

    p = embedded_bundles().get("synthsleepnet-tiny-sim")
    if p is None or not p.exists():
        pytest.skip("embedded bundle synthsleepnet-tiny-sim not shipped")
    return p


def test_real_sleep_edf_night_reports_no_ahi(tmp_path):
    """SC4001E0: 1-Hz thermistor `Resp oro-nasal`, no SpO2 -> no AHI, and the report says why."""
    from sleepedge.edf import SignalSpec, open_edf, write_edf

    _sim_bundle_path()
    src = DATA / "sleep-edf" / "SC4001E0-PSG.edf"
    if not src.exists():
        pytest.skip("../shared/data/sleep-edf/SC4001E0-PSG.edf not available")
    crop_s = 2 * 3600.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the file's known 1-byte tail quirk
        with open_edf(src) as r:
            specs = []
            for label in ("EEG Fpz-Cz", "EEG Pz-Oz", "EOG horizontal", "Resp oro-nasal", "EMG submental"):
                info = r.header.signal(label)
                specs.append(SignalSpec(label, info.fs_hz, r.read(label, 0.0, crop_s), unit=info.unit or "uV",
                                        physical_min=info.physical_min, physical_max=info.physical_max))
    crop = write_edf(tmp_path / "SC4001E0-2h.edf", specs)
    out = tmp_path / "out"
    r = runner.invoke(app, ["score", str(crop), "--model", "synthsleepnet-tiny-sim", "--out", str(out),
                            "--format", "tsv,json", "-q"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "SC4001E0-2h.sleepedge.json").read_text())
    assert rep["n_epochs"] == 240 and rep["roles_used"]["RESP"] == "Resp oro-nasal"
    ahi = rep["ahi_estimate"]
    assert ahi["value"] is None and ahi["reported"] is False
    assert ahi["reason"] == "RESP 'Resp oro-nasal' sampled at 1 Hz (needs >= 10 Hz); no SpO2 channel"
    assert "AHI est. '-'" in r.output and "Resp oro-nasal" in r.output
    assert (out / "SC4001E0-2h.sleepedge.tsv").read_text().splitlines()[1].split("\t")[8:10] == ["n/a", "n/a"]
    assert rep["model"]["simulated"] is True  # the six-role simulated bundle, by name


def test_simulated_night_reports_ahi_with_simulated_bundle(tmp_path):
    from sleepedge.simulate import simulate_night, write_night

    _sim_bundle_path()
    night = simulate_night(hours=1.5, seed=3, ahi=30.0)
    assert "Airflow" in night.signals and "SpO2" in night.signals
    edf, _ = write_night(night, tmp_path / "sim.edf")
    r = runner.invoke(app, ["score", str(edf), "--model", "synthsleepnet-tiny-sim", "--out", str(tmp_path / "o"),
                            "--format", "json", "-q"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "o" / "sim.sleepedge.json").read_text())
    ahi = rep["ahi_estimate"]
    assert ahi["reported"] is True and ahi["value"] is not None and ahi["value"] > 0
    assert ahi["heads"]["apnea"]["label"] == "trained on SIMULATED nights"
    assert "SIMULATED" in ahi["trained_on"] and rep["notice"]
