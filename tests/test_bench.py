"""The benchmark harness (`python -m bench --short`) runs end to end on a tiny simulated night.

Asserts that it works and what it writes, never anything about speed. YASA/GSSC are not needed
(they live in a separate venv and are reported "not installed" when absent). Skips when the
simulator is not importable, or when there is neither the default bundle nor onnx to build the
test-fixture bundle.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _have_bundle() -> bool:
    try:
        from sleepedge.bundle import default_bundle_path

        if default_bundle_path().exists():
            return True
    except ImportError:
        pass
    return importlib.util.find_spec("onnx") is not None and (REPO / "tests" / "_bundle_fixture.py").exists()


def test_agreement_metrics_on_hand_worked_example():
    from bench.agreement import agreement

    ref = [0, 0, 1, 2, 2, 2, 3, 4, -100]
    pred = [0, 1, 1, 2, 2, 3, 3, 4, 0]      # last epoch unscored in the reference: masked
    a = agreement(ref, pred)
    assert a["n_scored"] == 8
    assert a["accuracy"] == pytest.approx(6 / 8)
    # per-stage F1: W 2/3, N1 2/3, N2 4/5, N3 2/3, REM 1
    assert a["macro_f1"] == pytest.approx(np.mean([2 / 3, 2 / 3, 0.8, 2 / 3, 1.0]))
    cm = np.array(a["confusion"])
    po, pe = np.trace(cm) / cm.sum(), (cm.sum(0) * cm.sum(1)).sum() / cm.sum() ** 2
    assert a["kappa"] == pytest.approx((po - pe) / (1 - pe))
    assert agreement([0, 0], [0, 0])["kappa"] is None      # one class only: kappa undefined


@pytest.mark.timeout(240)
def test_bench_short_runs_without_competitors(tmp_path):
    if importlib.util.find_spec("sleepedge.simulate") is None:
        pytest.skip("simulator not importable")
    try:
        from sleepedge.simulate import simulate_night, write_night  # noqa: F401
    except ImportError:
        pytest.skip("simulator not importable")
    if not _have_bundle():
        pytest.skip("no default bundle and no onnx to build the fixture bundle")
    res_dir = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--short", "--bench-python", str(tmp_path / "no-such-python"),
         "--results", str(res_dir), "--workdir", str(tmp_path / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=230,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    md = (res_dir / "RESULTS.md").read_text()
    assert "yasa: not installed" in md and "gssc: not installed" in md, md
    assert "SIMULATED" in md, md
    assert "Sections with errors" not in md, md
    thr = json.loads((res_dir / "throughput.json").read_text())
    se = thr["tools"]["sleepedge"]
    assert se["ok"] == 1 and se["wall_s"]["median"] > 0, se
    assert se["peak_rss_mb"]["median"] > 0
    assert se["cpu_s"]["median"] > 0, se                                 # CPU (user+sys) of the process tree
    assert "--format" in se["cmd"] and "tsv,json" in se["cmd"], se["cmd"]  # the headline outputs
    for row in ("sleepedge all outputs", "import sleepedge.cli", "sleepedge score --help"):
        assert thr["tools"][row]["ok"] == 1, (row, thr["tools"].get(row))
    names = {t["target"] for t in thr["targets"]}
    assert {"8-h wall vs YASA", "8-h CPU vs YASA", "8-h peak RSS MB", "import sleepedge.cli s"} <= names, names
    by = {t["target"]: t for t in thr["targets"]}
    assert by["8-h wall vs YASA"]["met"] is None                          # no YASA here: not measured, never faked
    assert by["import sleepedge.cli s"]["value"] > 0
    assert "Targets (issue 13)" in md and "CPU vs YASA" in md
    assert thr["profile"]["parts_s"]["epoch_graph"] > 0
    st = json.loads((res_dir / "streaming.json").read_text())
    assert not st.get("errors"), st.get("errors")
    assert next(iter(st["scorer"].values()))["push_ms"]["n"] > 0
    assert st["targets"][0]["value"] is not None and st["targets"][0]["goal"] == 2.0
    sc = json.loads((res_dir / "scaling.json").read_text())
    assert all(r["ok"] for m in sc["modes"].values() for r in m["rows"]), sc
    assert all("linear" in m and "rss_flat" in m for m in sc["modes"].values()), sc
    ag = json.loads((res_dir / "agreement.json").read_text())
    assert "NOT real-sleep" in ag["label"]
    assert ag["pooled"]["sleepedge"]["n_scored"] == 30, ag   # 15-min night = 30 epochs
    meta = json.loads((res_dir / "meta.json").read_text())
    assert meta["machine"]["cpu"] and meta["command"].startswith("python -m bench --short")


# ------------------------------------------------------------------ real-night section (bench/real_night.py)
def test_real_night_spans_and_metrics_on_a_toy_hypnogram():
    from bench.real_night import on_grid, sleep_period, span_metrics, stage_string

    ref = np.array([0] * 5 + [1, 2, 2, 3, -100, 4, 2] + [0] * 5)      # sleep = epochs 5..11
    assert sleep_period(ref, pad=2) == (3, 14)
    assert sleep_period(ref, pad=100) == (0, ref.size)                # clipped to the recording
    pred = on_grid([0] * 5 + [1, 2, 2, 3, 0, 4, 2] + [0] * 9, ref.size)  # longer than the night: cropped
    m = span_metrics(ref, pred, 3, 14)
    assert m["n_epochs"] == 11 and m["n_scored"] == 10 and m["n_missing_pred"] == 0   # the IGNORE epoch left out
    assert m["accuracy"] == 1.0 and m["kappa"] == pytest.approx(1.0) and m["macro_f1"] == pytest.approx(1.0)
    short = on_grid([0] * 5 + [1, 2, 2, 3], ref.size)                 # stops early: missing epochs count as errors
    m2 = span_metrics(ref, short, 0, ref.size)
    assert m2["n_missing_pred"] == 7 and m2["accuracy"] == pytest.approx(9 / 16)
    assert stage_string([0, 1, 2, 3, 4, -100]) == "WN23R."


def test_real_night_reference_is_841_epochs_when_the_data_is_here():
    from bench.real_night import HYPNOGRAM, PSG, recording_epochs, reference_stages, sleep_period

    if not (PSG.exists() and HYPNOGRAM.exists()):
        pytest.skip("real Sleep-EDF SC4001 files not in ../shared/data/sleep-edf")
    n, start = recording_epochs(PSG)
    ref, info = reference_stages(HYPNOGRAM, n, start)
    assert n == 2650 and ref.size == n and info["offset_epochs"] == 0
    lo, hi = sleep_period(ref)
    assert hi - lo == 841
    assert set(np.unique(ref)) <= {-100, 0, 1, 2, 3, 4}
