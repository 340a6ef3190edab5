"""`sleepedge info`: every real EDF opens; bad input ends in one line and a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sleepedge.cli import app
from sleepedge.edf import Annotation, SignalSpec, write_edf
from sleepedge.errors import ChannelError, EDFError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
REAL_EDFS = sorted(p for p in DATA.rglob("*") if p.suffix.lower() == ".edf") if DATA.is_dir() else []
runner = CliRunner()


def _json(args):
    result = runner.invoke(app, ["info", *map(str, args), "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


@pytest.mark.skipif(not REAL_EDFS, reason="../shared/data not available")
@pytest.mark.parametrize("path", REAL_EDFS, ids=lambda p: str(p.relative_to(DATA)))
def test_info_json_on_every_real_edf(path):
    info = _json([path])
    assert info["n_records"] > 0
    assert info["format"] in ("EDF", "EDF+C", "EDF+D")
    assert len(info["channels"]) == sum(1 for c in info["channels"] if c["fs_hz"] > 0)
    if info["channels"]:
        q = info["quality"]
        assert q["n_epochs"] == info["n_epochs_30s"]
        for role, flags in q["roles"].items():
            assert role in info["roles"]["primary"]
            assert all(0.0 <= v <= 1.0 for v in flags.values())
    else:
        assert info["annotations"]["count"] > 0


def test_info_rich_tables_on_nox():
    path = DATA / "nox-a1-psg-rsleep" / "subject1.edf"
    if not path.exists():
        pytest.skip("nox fixture not available")
    result = runner.invoke(app, ["info", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "89 channels" in out and "C3 Impédance" in out
    assert "C4-M1" in out and "EDF+C (native reader)" in out
    assert "non-ASCII signal labels" in out  # the tolerated quirk is shown


def test_info_sleep_edf_roles_and_quality():
    path = DATA / "sleep-edf" / "short_psg.edf"
    if not path.exists():
        pytest.skip("sleep-edf fixture not available")
    info = _json([path])
    assert info["roles"]["primary"] == {"EEG": "EEG Fpz-Cz", "EOG": "EOG horizontal", "EMG": "EMG submental",
                                        "RESP": "Resp oro-nasal"}
    assert info["roles"]["missing"] == ["ECG", "SPO2"]
    assert info["duration_s"] == 300.0 and info["n_epochs_30s"] == 10
    assert info["quality"]["n_epochs"] == 10
    assert info["quality"]["roles"]["EEG"]["nan"] == 0.0
    info2 = _json([path, "--channel", "eeg=eeg pz-oz", "--no-quality"])
    assert info2["roles"]["primary"]["EEG"] == "EEG Pz-Oz" and info2["roles"]["overridden"] == {"EEG": "EEG Pz-Oz"}
    assert "quality" not in info2


def test_info_quality_fractions_are_computed(tmp_path):
    """EEG flat in 2 of 4 epochs, EOG NaN-free and live; ECG railed in 1 epoch."""
    rng = np.random.default_rng(3)
    eeg = rng.normal(0, 30, 100 * 120)
    eeg[3000:9000] = 0.0
    eog = rng.normal(0, 30, 100 * 120)
    ecg = rng.normal(0, 100, 256 * 120)
    ecg[256 * 90:] = np.clip(ecg[256 * 90:] * 100, -1000, 1000)
    p = write_edf(tmp_path / "q.edf", [SignalSpec("C4-M1", 100, eeg), SignalSpec("E1-M2", 100, eog),
                                       SignalSpec("ECG", 256, ecg, physical_min=-1000, physical_max=1000)],
                  [Annotation(0, 30, "Sleep stage W")], start=datetime(2022, 1, 1, 23, 0))
    info = _json([p])
    q = info["quality"]["roles"]
    assert q["EEG"]["flat"] == 0.5 and q["EEG"]["disconnected"] == 0.5
    assert q["EOG"] == {"nan": 0.0, "flat": 0.0, "clipped": 0.0, "disconnected": 0.0, "gap": 0.0}
    assert q["ECG"]["clipped"] == 0.25
    assert info["annotations"]["first"] == [{"onset_s": 0.0, "duration_s": 30.0, "text": "Sleep stage W"}]


def test_info_bad_override_suggests_label():
    path = DATA / "sleep-edf" / "short_psg.edf"
    if not path.exists():
        pytest.skip("sleep-edf fixture not available")
    result = runner.invoke(app, ["info", str(path), "--channel", "EEG=EEG Fpz-Cx"])
    assert result.exit_code != 0
    assert isinstance(result.exception, ChannelError)
    assert "did you mean 'EEG Fpz-Cz'" in str(result.exception)
    result = runner.invoke(app, ["info", str(path), "--channel", "BRAIN=EEG Fpz-Cz"])
    assert isinstance(result.exception, ChannelError) and "unknown role" in str(result.exception)


@pytest.fixture
def bad_files(tmp_path):
    good = write_edf(tmp_path / "good.edf", [SignalSpec("EEG", 100, np.zeros(300))]).read_bytes()
    files = {
        "missing": tmp_path / "missing.edf",
        "text": tmp_path / "text.edf",
        "empty": tmp_path / "empty.edf",
        "truncated": tmp_path / "truncated.edf",
        "zero_records": tmp_path / "zero.edf",
    }
    files["text"].write_text("not an edf\n" * 40)
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(good[:700])
    raw = bytearray(good)
    raw[236:244] = b"0       "
    files["zero_records"].write_bytes(bytes(raw))
    return files


@pytest.mark.parametrize("name", ["missing", "text", "empty", "truncated", "zero_records"])
def test_info_bad_input_is_edf_error(bad_files, name):
    result = runner.invoke(app, ["info", str(bad_files[name])])
    assert result.exit_code != 0
    assert isinstance(result.exception, EDFError)
    assert "\n" not in str(result.exception) and str(bad_files[name]) in str(result.exception)


def test_info_bad_input_one_line_no_traceback(bad_files):
    """Through the real entry point: one line on stderr, exit code 2, no traceback."""
    for name in ("text", "truncated"):
        proc = subprocess.run([sys.executable, "-m", "sleepedge", "info", str(bad_files[name])],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr


def test_info_edf_plus_d_gaps_and_gap_quality(tmp_path):
    from tests.test_edf import _patch_onsets

    rng = np.random.default_rng(5)
    p = write_edf(tmp_path / "d.edf", [SignalSpec("C4-M1", 100, rng.normal(0, 30, 100 * 90))])
    _patch_onsets(p, list(range(30)) + list(range(60, 120)))  # 30-s hole after 30 s
    info = _json([p])
    assert info["format"] == "EDF+D" and info["reader"] == "native"
    assert info["gaps"] == [{"onset_s": 30.0, "duration_s": 30.0}]
    assert info["duration_s"] == 120.0 and info["quality"]["n_epochs"] == 4
    assert info["quality"]["roles"]["EEG"]["gap"] == 0.25
    assert info["quality"]["roles"]["EEG"]["nan"] == 0.25
    assert any("EDF+D with 1 gap(s)" in w for w in info["warnings"])
    result = runner.invoke(app, ["info", str(p)], env={"COLUMNS": "160"})
    assert result.exit_code == 0 and "EDF+D gaps: 1" in result.stdout and "30 s at 30 s" in result.stdout
