"""Header sanity (issue 14): absurd header values are refused where the header is read, before any
allocation; a signal with an absurd rate or physical range is left out ("unusable: reason") when
the other signals are fine; the preprocessor refuses a rate it cannot resample (one line)."""

from __future__ import annotations

import json
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sleepedge.cli import app
from sleepedge.edf import Annotation, EDFQuirkWarning, SignalSpec, _parse_layout, open_edf, write_edf
from sleepedge.errors import EDFError, PreprocessError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
runner = CliRunner()


def _field(raw: bytearray, start: int, width: int, value: str) -> None:
    raw[start: start + width] = value.encode("latin-1").ljust(width)


def _sig_field(raw: bytearray, ns: int, name: str, i: int, value: str) -> None:
    widths = (("label", 16), ("transducer", 80), ("unit", 8), ("pmin", 8), ("pmax", 8), ("dmin", 8),
              ("dmax", 8), ("prefilter", 80), ("spr", 8), ("reserved", 32))
    off = 256
    for n, w in widths:
        if n == name:
            _field(raw, off + i * w, w, value)
            return
        off += ns * w
    raise KeyError(name)


def _night(path: Path, seconds: int = 90) -> Path:
    rng = np.random.default_rng(3)
    return write_edf(path, [SignalSpec("EEG Fpz-Cz", 100, rng.normal(0, 30, 100 * seconds)),
                            SignalSpec("EOG horizontal", 100, rng.normal(0, 30, 100 * seconds)),
                            SignalSpec("ECG", 200, rng.normal(0, 300, 200 * seconds))],
                     [Annotation(1.0, 0.0, "Lights off")])


def _one_line_error(path: Path, match: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EDFQuirkWarning)
        with pytest.raises(EDFError, match=match) as ei:
            open_edf(path)
    msg = str(ei.value)
    assert "\n" not in msg and str(path) in msg
    return msg


@pytest.mark.skipif(not (DATA / "mne-edf-variants" / "test_utf8_annotations.edf").exists(), reason="no shared data")
def test_issue14_mutant_info_is_one_line_not_a_traceback(tmp_path):
    """The mutant of the issue: an absurd record duration (-> sample rate) in test_utf8_annotations.edf."""
    raw = bytearray((DATA / "mne-edf-variants" / "test_utf8_annotations.edf").read_bytes())
    for value in ("1e300", "0.000001", "1e-300", "99999999"):
        _field(raw, 244, 8, value)
        p = tmp_path / f"mutant_{value}.edf"
        p.write_bytes(bytes(raw))
        r = runner.invoke(app, ["info", str(p)])
        assert isinstance(r.exception, EDFError), (value, r.exception)
        assert "record duration" in str(r.exception) and "\n" not in str(r.exception)


def test_record_duration_and_total_duration_bounds(tmp_path):
    p = _night(tmp_path / "n.edf")
    base = p.read_bytes()
    for value, match in (("3601", "record duration is 3601 s"), ("1e300", "record duration"),
                         ("-1", "expected > 0"), ("0.000001", "record duration is 1e-06 s")):
        raw = bytearray(base)
        _field(raw, 244, 8, value)
        q = tmp_path / "d.edf"
        q.write_bytes(bytes(raw))
        _one_line_error(q, match)
    # 3600-s records: 90 records x 3600 s = 3.75 days is fine (rates drop to 0.03-0.06 Hz; the 1-s TALs overlap)
    raw = bytearray(base)
    _field(raw, 244, 8, "3600")
    q = tmp_path / "long.edf"
    q.write_bytes(bytes(raw))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EDFQuirkWarning)
        with open_edf(q) as r:
            assert r.header.n_records == 90 and r.header.record_duration_s == 3600
    # a file whose records x duration pass 30 days: 1-sample records, many of them
    tiny = write_edf(tmp_path / "tiny.edf", [SignalSpec("SpO2", 1, np.full(800, 95.0), unit="%")])
    raw = bytearray(tiny.read_bytes())
    _field(raw, 244, 8, "3600")
    tiny.write_bytes(bytes(raw))
    msg = _one_line_error(tiny, "days")
    assert "number of data records" in msg and "record duration" in msg


def test_edf_plus_d_time_axis_beyond_30_days_is_refused(tmp_path):
    p = _night(tmp_path / "n.edf")
    lay = _parse_layout(p)
    raw = bytearray(p.read_bytes())
    raw[192:236] = b"EDF+D".ljust(44)
    ai = lay.annotation_indices[0]
    pos = lay.header_bytes + 2 * (5 * lay.record_samples + int(lay.offsets[ai]))
    raw[pos: pos + 2 * int(lay.spr[ai])] = b"+99999999\x14\x14\x00".ljust(2 * int(lay.spr[ai]), b"\x00")
    p.write_bytes(bytes(raw))
    t = time.perf_counter()
    msg = _one_line_error(p, "time-keeping TAL of data record 6")
    assert "days" in msg and time.perf_counter() - t < 2


def test_one_absurd_signal_is_left_out_and_the_night_is_scored_without_it(tmp_path):
    p = _night(tmp_path / "n.edf")
    raw = bytearray(p.read_bytes())
    _sig_field(raw, 4, "pmin", 1, "5")   # EOG: physical min == max: no conversion possible
    _sig_field(raw, 4, "pmax", 1, "5")
    p.write_bytes(bytes(raw))
    with pytest.warns(EDFQuirkWarning, match="unusable"):
        r = open_edf(p)
    with r:
        assert r.header.labels == ["EEG Fpz-Cz", "ECG"]
        assert "EOG horizontal" in r.header.unusable and "physical range" in r.header.unusable["EOG horizontal"]
        assert r.backend == "native"
        x = r.read("ECG")  # the file index of the signals after the left-out one is kept
        assert len(x) == 200 * 90 and np.std(x) > 100
    res = runner.invoke(app, ["info", str(p), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert list(info["unusable"]) == ["EOG horizontal"]
    res = runner.invoke(app, ["info", str(p)])
    assert res.exit_code == 0 and "unusable: EOG horizontal" in res.output


def test_every_signal_absurd_is_one_line_error(tmp_path):
    p = _night(tmp_path / "n.edf")
    raw = bytearray(p.read_bytes())
    for i in range(3):
        _sig_field(raw, 4, "pmin", i, "7")
        _sig_field(raw, 4, "pmax", i, "7")
    p.write_bytes(bytes(raw))
    msg = _one_line_error(p, "no usable signal")
    assert "EEG Fpz-Cz" in msg and "2 more" in msg


def test_sample_count_claiming_gigahertz_names_the_field_and_allocates_nothing(tmp_path):
    p = _night(tmp_path / "n.edf")
    raw = bytearray(p.read_bytes())
    _sig_field(raw, 4, "spr", 2, "99999999")
    p.write_bytes(bytes(raw))
    tracemalloc.start()
    try:
        msg = _one_line_error(p, "samples per record of signal 3")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "99999999" in msg and peak < 2_000_000


def test_preprocessor_refuses_rates_it_cannot_resample_in_one_line():
    from sleepedge.preprocess import CausalPreprocessor, _ratio, usable_rates

    for fs in (1 / 3600, 0.05, 1e-300, 5e299, float("nan"), 0.0, -100.0, 4096.0):
        t = time.perf_counter()
        with pytest.raises(PreprocessError) as ei:
            CausalPreprocessor({"EEG": fs})
        assert "\n" not in str(ei.value) and time.perf_counter() - t < 0.5
    assert _ratio(256.0, 100) == (25, 64) and _ratio(0.1, 100) == (1000, 1)
    ok, dropped = usable_rates({"EEG": 100.0, "SPO2": 1 / 3600})
    assert ok == {"EEG": 100.0} and "SPO2" in dropped and "cannot resample" in dropped["SPO2"]


def test_score_report_names_the_unusable_signal(tmp_path):
    """The night is scored without the unusable signal; the JSON report and the run say so."""
    from sleepedge.bundle import default_bundle_path

    if not default_bundle_path().exists():
        pytest.skip("no embedded default bundle")
    p = _night(tmp_path / "n.edf")
    raw = bytearray(p.read_bytes())
    _sig_field(raw, 4, "pmin", 1, "5")
    _sig_field(raw, 4, "pmax", 1, "5")
    p.write_bytes(bytes(raw))
    out = tmp_path / "out"
    r = runner.invoke(app, ["score", str(p), "-o", str(out), "-f", "json", "-q", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert "unusable" in r.output and "EOG horizontal" in r.output
    rep = json.loads((out / "n.sleepedge.json").read_text())
    assert rep["n_epochs"] == 3 and "EOG" not in rep["roles_used"]
    assert any("'EOG horizontal' unusable" in w for w in rep["warnings"])


def test_long_run_fuzz_finds_are_one_line(tmp_path):
    """SLEEPEDGE_FUZZ_CASES=10000 found: samples per record '1e308' (int64 overflow in the layout) and a
    digital minimum of -1e308 (bitvalue 0 -> ZeroDivisionError while reading)."""
    p = _night(tmp_path / "n.edf")
    raw = bytearray(p.read_bytes())
    _sig_field(raw, 4, "spr", 1, "1e308")
    q = tmp_path / "spr.edf"
    q.write_bytes(bytes(raw))
    msg = _one_line_error(q, "samples per record of signal 2")
    assert "1e+308" in msg and len(msg) < 400
    raw = bytearray(p.read_bytes())
    _sig_field(raw, 4, "pmin", 0, "-1e-300")
    _sig_field(raw, 4, "pmax", 0, "1e-300")
    _sig_field(raw, 4, "dmin", 0, "-1e308")
    q = tmp_path / "dmin.edf"
    q.write_bytes(bytes(raw))
    with pytest.warns(EDFQuirkWarning, match="unusable"):
        r = open_edf(q)
    with r:
        assert "EEG Fpz-Cz" in r.header.unusable and r.header.labels == ["EOG horizontal", "ECG"]
        for _, block in r.iter_epochs():
            assert all(np.isfinite(v).all() for v in block.values())
