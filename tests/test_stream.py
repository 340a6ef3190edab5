"""`sleepedge stream --edf`: replay equals offline scoring, pacing, resume, kill-safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests._bundle_fixture import build_bundle, write_test_edf

from sleepedge.cli import app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
COLS = 11


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("b") / "fixture.sleepedge")


@pytest.fixture(scope="module")
def short_edf(tmp_path_factory) -> Path:
    return write_test_edf(tmp_path_factory.mktemp("e") / "short.edf", minutes=8, seed=4)


def _rows(path: Path) -> list[list[str]]:
    from runtime.sinks import read_rows

    return [list(r.values()) for r in read_rows(path)]


def test_replay_equals_offline(bundle_dir, short_edf, tmp_path):
    r1 = runner.invoke(app, ["stream", "--edf", str(short_edf), "--speed", "0", "--model", str(bundle_dir),
                             "--out", str(tmp_path / "s"), "--format", "tsv,json", "--chunk-s", "0.7"])
    assert r1.exit_code == 0, r1.output
    assert "epoch    15" in r1.output  # each epoch printed as it is scored
    r2 = runner.invoke(app, ["score", str(short_edf), "--model", str(bundle_dir), "--out", str(tmp_path / "o"),
                             "--format", "tsv", "-q"])
    assert r2.exit_code == 0, r2.output
    s, o = _rows(tmp_path / "s" / "short.sleepedge.tsv"), _rows(tmp_path / "o" / "short.sleepedge.tsv")
    assert len(s) == len(o) == 16
    assert [r[2] for r in s] == [r[2] for r in o]
    diff = np.abs(np.array([r[3:8] for r in s], float) - np.array([r[3:8] for r in o], float))
    assert all(r[8:10] == ["n/a", "n/a"] for r in s + o)   # no RESP/SpO2 input: apnea not reported
    assert diff.max() <= 1.5e-6  # 6-decimal text of values equal to 1e-5
    rep = json.loads((tmp_path / "s" / "short.sleepedge.json").read_text())
    assert rep["complete"] is True and rep["n_epochs"] == 16


def test_replay_speed_paces_real_time(bundle_dir, tmp_path):
    edf = write_test_edf(tmp_path / "m.edf", minutes=1.5, seed=1)
    t0 = time.monotonic()
    r = runner.invoke(app, ["stream", "--edf", str(edf), "--speed", "45", "--model", str(bundle_dir),
                            "--out", str(tmp_path), "--format", "tsv", "-q", "--epochs", "2"])
    wall = time.monotonic() - t0
    assert r.exit_code == 0, r.output
    assert wall >= 60 / 45 - 0.1, wall  # 60 s of signal at 45x takes at least 1.3 s
    assert len(_rows(tmp_path / "m.sleepedge.tsv")) == 2  # --epochs 2 stops after the 2nd


def test_stream_rejects_bad_source_choice(bundle_dir, short_edf, tmp_path):
    r = runner.invoke(app, ["stream", "--model", str(bundle_dir), "--out", str(tmp_path)])
    assert r.exit_code != 0 and "exactly one source" in str(r.exception)
    r = runner.invoke(app, ["stream", "--lsl", "x", "--resume", "--model", str(bundle_dir), "--out", str(tmp_path)])
    assert r.exit_code != 0 and "--resume needs a replayable source" in str(r.exception)


def test_replay_merges_chunks_inside_edf_plus_d_gaps_rows_unchanged(bundle_dir, tmp_path, monkeypatch):
    """An EDF+D with a 1-h hole: chunks wholly inside the gap are pushed merged (a day of declared gap
    is a few pushes, not 86,400); the rows are exactly those of one-second chunks everywhere."""
    import runtime.sources as sources
    from tests.test_edf import _patch_onsets

    edf = write_test_edf(tmp_path / "d.edf", minutes=4, seed=3)     # 240 records of 1 s
    _patch_onsets(edf, [float(r) if r < 120 else 3600.0 + r for r in range(240)])
    calls = []
    orig = sources._chunk_spans

    def spy(*a):
        calls.append(len(orig(*a)))
        return orig(*a)

    rows = {}
    for merged in (True, False):
        with monkeypatch.context() as m:
            m.setattr(sources, "_chunk_spans", spy if merged else (lambda o, b, c, g: orig(o, b, c, ([], []))))
            r = runner.invoke(app, ["stream", "--edf", str(edf), "--speed", "0", "--model", str(bundle_dir),
                                    "--out", str(tmp_path / f"o{merged}"), "--format", "tsv", "-q"])
        assert r.exit_code == 0, r.output
        rows[merged] = (tmp_path / f"o{merged}" / "d.sleepedge.tsv").read_text()
    assert rows[True] == rows[False]
    table = [ln.split("\t") for ln in rows[True].splitlines()[1:]]
    assert len(table) == (3600 + 240) // 30
    gap_epochs = [i for i, row in enumerate(table) if "gap" in row[-1]]
    assert gap_epochs == list(range(4, 124))     # [120 s, 3720 s)
    assert sum(calls) < 400          # 3,840 s of signal: ~240 data chunks + a few merged gap chunks


def _stream_cmd(edf, bundle_dir, out, *extra):
    return [sys.executable, "-m", "sleepedge", "stream", "--edf", str(edf), "--model", str(bundle_dir),
            "--out", str(out), "--format", "tsv,csv,edf,json", "-q", *extra]


def test_kill_safety_and_resume(bundle_dir, tmp_path):
    """SIGKILL a replay mid-run a few times: TSV/CSV hold only complete, consecutive epochs, the
    EDF+/JSON on disk are whole files; `--resume` then completes to the uninterrupted result."""
    from sleepedge.scoring import read_scoring

    edf = write_test_edf(tmp_path / "long.edf", minutes=60, seed=7)  # 120 epochs
    total = 120
    rng = np.random.default_rng(0)
    killed_rows = []
    # kill 0: `--speed 0` (as fast as possible) right after the first row; kill 1: 600x, later
    for k, (speed, delay_s) in enumerate((("0", 0.1), ("600", 1.5))):
        out = tmp_path / f"k{k}"
        tsv = out / "long.sleepedge.tsv"
        proc = subprocess.Popen(_stream_cmd(edf, bundle_dir, out, "--speed", speed), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (tsv.exists() and tsv.read_text().count("\n") >= 2):
                time.sleep(0.02)
            time.sleep(float(rng.uniform(0.0, delay_s)))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        # at full speed a fast disk may let the run finish before the kill lands
        assert proc.returncode == -signal.SIGKILL or (speed == "0" and proc.returncode == 0)
        text = tsv.read_text()
        lines = text.split("\n")
        assert lines[0].split("\t")[0] == "onset"
        complete = [ln for ln in lines[1:-1]]
        assert all(len(ln.split("\t")) == COLS for ln in complete)
        onsets = [float(ln.split("\t")[0]) for ln in complete]
        assert onsets == [30.0 * i for i in range(len(onsets))]
        assert 1 <= len(onsets) <= total and (len(onsets) < total or proc.returncode == 0)
        csv_rows = _rows(out / "long.sleepedge.csv")
        assert abs(len(csv_rows) - len(onsets)) <= 1
        if (out / "long.sleepedge.json").exists():
            rep = json.loads((out / "long.sleepedge.json").read_text())
            assert rep["complete"] is (proc.returncode == 0) and rep["n_epochs"] <= len(onsets)
        if (out / "long.sleepedge.edf").exists():
            hyp, _ = read_scoring(out / "long.sleepedge.edf")
            assert 0 < hyp.n_epochs <= len(onsets) + 1
        killed_rows.append(len(onsets))
    # resume the last killed run and compare with an uninterrupted one
    out = tmp_path / "k1"
    r = runner.invoke(app, _stream_cmd(edf, bundle_dir, out, "--speed", "0", "--resume")[3:])
    assert r.exit_code == 0, r.output
    import re

    m = re.search(r"resume: (\d+) epochs already", r.output)
    assert m and killed_rows[-1] - 1 <= int(m.group(1)) <= killed_rows[-1], r.output  # min over TSV/CSV
    ref = tmp_path / "ref"
    r = runner.invoke(app, _stream_cmd(edf, bundle_dir, ref, "--speed", "0")[3:])
    assert r.exit_code == 0, r.output
    for ext in ("tsv", "csv"):
        assert (out / f"long.sleepedge.{ext}").read_text() == (ref / f"long.sleepedge.{ext}").read_text()
    a = json.loads((out / "long.sleepedge.json").read_text())
    b = json.loads((ref / "long.sleepedge.json").read_text())
    for rep in (a, b):
        rep.pop("latency_ms")
    assert a == b and a["complete"] is True and a["n_epochs"] == total
    assert (out / "long.sleepedge.edf").read_bytes() == (ref / "long.sleepedge.edf").read_bytes()
    assert not [p for p in os.listdir(out) if ".tmp" in p]
