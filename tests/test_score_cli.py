"""`sleepedge score` / `demo` through Typer's CliRunner (and the console entry point)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests._bundle_fixture import NOTICE, build_bundle, write_test_edf

from sleepedge.cli import app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("b") / "fixture.sleepedge.zip")


@pytest.fixture(scope="module")
def edfs(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("edf")
    a = write_test_edf(d / "a.edf", minutes=6, seed=1)
    b = write_test_edf(d / "b.edf", minutes=4, seed=2,
                       rates={"C4-M1": 128.0, "E1-M2": 128.0, "Chin EMG": 128.0})
    bad = d / "bad.edf"
    bad.write_bytes(b"0       this is not really an EDF header")
    return [a, b, bad]


def test_score_many_nights_one_bad(bundle_dir, edfs, tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(app, ["score", *map(str, edfs), "--model", str(bundle_dir), "--out", str(out),
                            "--format", "tsv,csv,json"])
    assert r.exit_code == 1, r.output
    assert "bad.edf" in r.output and "1 of 3 recording(s) failed" in r.output
    assert NOTICE.split(":")[0] in r.output  # the simulated notice is printed
    for stem, n in (("a", 12), ("b", 8)):
        rep = json.loads((out / f"{stem}.sleepedge.json").read_text())
        assert rep["n_epochs"] == n and rep["notice"] == NOTICE and rep["complete"] is True
        assert len((out / f"{stem}.sleepedge.tsv").read_text().splitlines()) == n + 1
    rep_b = json.loads((out / "b.sleepedge.json").read_text())
    assert rep_b["missing_roles"] == ["ECG"] and rep_b["roles_used"]["EEG"] == "C4-M1"
    assert not (out / "bad.sleepedge.tsv").exists()
    # the summary table lists the good files
    assert "a.edf" in r.output and "b.edf" in r.output and "AHI est." in r.output


def test_channel_override_and_bad_override(bundle_dir, edfs, tmp_path):
    r = runner.invoke(app, ["score", str(edfs[0]), "--model", str(bundle_dir), "--out", str(tmp_path),
                            "--channel", "EOG=EEG Fpz-Cz", "--format", "json", "-q"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "a.sleepedge.json").read_text())["roles_used"]["EOG"] == "EEG Fpz-Cz"
    r = runner.invoke(app, ["score", str(edfs[0]), "--model", str(bundle_dir), "--out", str(tmp_path),
                            "--channel", "EEG=C9-M7", "-q"])
    assert r.exit_code == 1 and "C9-M7" in r.output


def test_errors_before_scoring_are_one_line(bundle_dir, edfs, tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    cases = [
        (["--out", str(blocker / "o")], "not writable"),
        (["--format", "tsv,docx"], "docx"),
        (["--device", "tensorrt"], "--device tensorrt"),
        (["--model", str(tmp_path / "nope.zip")], "does not exist"),
    ]
    for extra, msg in cases:
        cmd = [sys.executable, "-m", "sleepedge", "score", str(edfs[0]), "--out", str(tmp_path / "o2")]
        if "--model" not in extra:
            cmd += ["--model", str(bundle_dir)]
        r = subprocess.run(cmd + extra, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (extra, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and msg in lines[0], (extra, r.stderr)
    assert not (tmp_path / "o2" / "a.sleepedge.tsv").exists()


def test_model_by_embedded_name_and_unknown_name(edfs, tmp_path):
    from sleepedge.bundle import embedded_bundles

    sim = embedded_bundles().get("synthsleepnet-tiny-sim")
    if sim is None or not sim.exists():
        pytest.skip("embedded bundle synthsleepnet-tiny-sim not shipped")
    r = runner.invoke(app, ["score", str(edfs[0]), "--model", "synthsleepnet-tiny-sim", "--out", str(tmp_path),
                            "--format", "json", "-q"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "a.sleepedge.json").read_text())
    assert rep["model"]["bundle"] == str(sim) and rep["model"]["simulated"] is True
    # no RESP/SpO2 in this EDF: no AHI, and why
    assert rep["ahi_estimate"]["value"] is None and "no RESP channel" in rep["ahi_estimate"]["reason"]
    r = subprocess.run([sys.executable, "-m", "sleepedge", "score", str(edfs[0]), "--model", "no-such-model",
                        "--out", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --model no-such-model")
    assert "synthsleepnet-tiny-sim" in lines[0]


def test_missing_default_model_says_how_to_get_one(edfs, tmp_path, monkeypatch):
    import sleepedge.bundle as sb

    monkeypatch.setattr(sb, "default_bundle_path", lambda: tmp_path / "none.sleepedge")
    r = runner.invoke(app, ["score", str(edfs[0]), "--out", str(tmp_path)])
    assert r.exit_code != 0
    assert "no default model" in str(r.exception) and "--model" in str(r.exception)


def test_score_resume_equals_uninterrupted(bundle_dir, edfs, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    for d in (full, part):
        r = runner.invoke(app, ["score", str(edfs[0]), "--model", str(bundle_dir), "--out", str(d),
                                "--format", "tsv,csv,json", "-q"])
        assert r.exit_code == 0
    tsv = part / "a.sleepedge.tsv"
    lines = tsv.read_text().splitlines(keepends=True)
    tsv.write_text("".join(lines[:5]) + lines[5][:17])  # 4 epochs + a partial row
    r = runner.invoke(app, ["score", str(edfs[0]), "--model", str(bundle_dir), "--out", str(part),
                            "--format", "tsv,csv,json", "--resume", "-q"])
    assert r.exit_code == 0, r.output
    assert tsv.read_text() == (full / "a.sleepedge.tsv").read_text()
    assert (part / "a.sleepedge.csv").read_text() == (full / "a.sleepedge.csv").read_text()


def test_demo_simulates_and_scores(bundle_dir, tmp_path):
    sim = pytest.importorskip("sleepedge.simulate")
    if not hasattr(sim, "simulate_night"):
        pytest.skip("sleepedge.simulate.simulate_night not available yet")
    r = runner.invoke(app, ["demo", "--out", str(tmp_path), "--hours", "0.25", "--model", str(bundle_dir)])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "demo-night.sleepedge.json").read_text())
    assert rep["n_epochs"] == 30 and rep["notice"] == NOTICE
    assert (tmp_path / "demo-night.sleepedge.png").exists() and "outputs in" in r.output


DATA = ROOT.parent / "shared" / "data"


def test_real_recordings(bundle_dir, tmp_path):
    files = [DATA / "sleep-edf" / "short_psg.edf", DATA / "nox-a1-psg-rsleep" / "subject1.edf",
             DATA / "mne-edf-variants" / "MB0400FU.EDF"]
    if not all(f.exists() for f in files):
        pytest.skip("../shared/data real EDF fixtures not present")
    r = runner.invoke(app, ["score", *map(str, files), "--model", str(bundle_dir), "--out", str(tmp_path),
                            "--format", "tsv,json"])
    assert r.exit_code == 1, r.output  # the 29-s EDF+D file cannot hold an epoch
    assert "MB0400FU.EDF lasts 29 s, shorter than one 30-s epoch" in r.output
    assert "warning: subject1.edf: read leniently" in r.output  # the reader's quirk, one line
    sleep_edf = json.loads((tmp_path / "short_psg.sleepedge.json").read_text())
    # the 1-Hz `EMG submental` is an RMS envelope: too slow for the 10-45 Hz EMG band -> missing, said why
    assert sleep_edf["n_epochs"] == 10 and sleep_edf["missing_roles"] == ["EMG", "ECG"]
    assert any("EMG submental" in w and "1 Hz" in w for w in sleep_edf["warnings"])
    assert sleep_edf["roles_used"] == {"EEG": "EEG Fpz-Cz", "EOG": "EOG horizontal"}
    assert sleep_edf["quality"]["per_role"]["ECG"] == {"missing": 10}
    nox = json.loads((tmp_path / "subject1.sleepedge.json").read_text())
    assert nox["n_epochs"] == 4 and nox["missing_roles"] == [] and nox["roles_used"]["EEG"] == "C4-M1"


def test_default_bundle_scores_when_shipped(edfs, tmp_path):
    from sleepedge.bundle import default_bundle_path

    if not default_bundle_path().exists():
        pytest.skip("the embedded default bundle (sleepedge/assets/default.sleepedge) is not built yet")
    r = runner.invoke(app, ["score", str(edfs[0]), "--out", str(tmp_path), "--format", "tsv,json", "-q"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "a.sleepedge.json").read_text())
    assert rep["n_epochs"] == 12 and rep["model"]["bundle"] == str(default_bundle_path())
    if rep["model"]["simulated"]:
        assert rep["notice"] and rep["notice"] in r.output
