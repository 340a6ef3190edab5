"""Fuzzing the EDF reader and the TAL parser (hypothesis, derandomized: repeatable).

Every case must end in data or in a `SleepEdgeError` (never another exception), within a
per-case time bound. Seeds: real files from ../shared/data (when present) and a small file
written by `write_edf`. Mutations: random byte flips (header-biased), truncations, header
fields set out of range (negative/huge record counts, sample counts claiming gigabytes, zero
or NaN record duration, non-ASCII labels, mismatched signal counts), TAL corruption.

Case count: SLEEPEDGE_FUZZ_CASES (default 2000, split 60 % files / 40 % TAL records: 1,200 + 800);
e.g. `SLEEPEDGE_FUZZ_CASES=20000 .venv/bin/pytest tests/test_fuzz_edf.py` for a long run.
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import tempfile
import time
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sleepedge.edf import Annotation, EDFQuirkWarning, SignalSpec, open_edf, parse_tal_record, write_edf
from sleepedge.errors import SleepEdgeError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TOTAL = int(os.environ.get("SLEEPEDGE_FUZZ_CASES", "2000"))
N_FILE = max(1, int(TOTAL * 0.6))
N_TAL = max(1, TOTAL - N_FILE)
CASE_TIME_S = 2.0  # per-case bound
SEED_MAX_BYTES = 2_000_000

_tmp = Path(tempfile.mkdtemp(prefix="sleepedge-fuzz-"))
atexit.register(shutil.rmtree, _tmp, ignore_errors=True)


def _written_seed() -> bytes:
    rng = np.random.default_rng(7)
    p = write_edf(
        _tmp / "seed.edf",
        [SignalSpec("C4-M1", 100, rng.normal(0, 30, 500)), SignalSpec("SpO2", 2, rng.uniform(90, 99, 10), unit="%"),
         SignalSpec("ECG", 50, rng.normal(0, 1e-3, 250), unit="mV")],
        [Annotation(0.5, 1.0, "Sleep stage W"), Annotation(2.0, 0.0, "Apnea é")],
        start=datetime(2020, 2, 3, 4, 5, 6, 250000), recording="SIMULATED",
    )
    return p.read_bytes()


def _seeds() -> list[tuple[str, bytes]]:
    seeds = [("written", _written_seed())]
    if DATA.is_dir():
        for p in sorted(DATA.rglob("*")):
            if p.suffix.lower() == ".edf" and p.stat().st_size <= SEED_MAX_BYTES and "sc20" not in str(p):
                seeds.append((p.name, p.read_bytes()))
    return seeds


SEEDS = _seeds()
STATS = {"file_cases": 0, "opened": 0, "opened_pyedflib": 0, "edf_error": 0, "tal_cases": 0, "max_case_s": 0.0}

INTERESTING = [b"-1", b"-5", b"0", b"1", b"99999999", b"1e9", b"nan", b"inf", b"-inf", b"", b"abc", b"-0",
               b"0.0000001", b"1.5", b"3,5", b"\xe9\xff\xfe", b"99999", b"2147483648", b"-99999999", b"+1",
               b"1e-300", b"EDF+D", b"EDF+C", b"  12  ", b"\x00\x00"]

# (offset, width) of main-header fields
MAIN_FIELDS = [(0, 8), (8, 80), (88, 80), (168, 8), (176, 8), (184, 8), (192, 44), (236, 8), (244, 8), (252, 4)]
SIGNAL_WIDTHS = [16, 80, 8, 8, 8, 8, 8, 80, 8, 32]


def _ns(raw: bytes) -> int:
    try:
        return max(0, min(int(raw[252:256]), 9999))
    except ValueError:
        return 0


def _set(raw: bytearray, off: int, width: int, value: bytes) -> None:
    if off + width <= len(raw):
        raw[off: off + width] = value[:width].ljust(width, b" ")


@st.composite
def mutated_file(draw):
    name, seed = draw(st.sampled_from(SEEDS))
    raw = bytearray(seed)
    ns = _ns(seed)
    header_len = 256 * (ns + 1)
    n_mut = draw(st.integers(1, 4))
    for _ in range(n_mut):
        kind = draw(st.sampled_from(["flip", "flip_header", "truncate", "main_field", "signal_field",
                                     "ns_mismatch", "label_non_ascii", "tal_corrupt", "append"]))
        if kind == "flip" and raw:
            for _ in range(draw(st.integers(1, 16))):
                i = draw(st.integers(0, len(raw) - 1))
                raw[i] = draw(st.integers(0, 255))
        elif kind == "flip_header" and raw:
            for _ in range(draw(st.integers(1, 8))):
                i = draw(st.integers(0, min(len(raw), header_len) - 1))
                raw[i] = draw(st.integers(0, 255))
        elif kind == "truncate":
            raw = raw[: draw(st.integers(0, len(raw)))]
        elif kind == "main_field":
            off, width = draw(st.sampled_from(MAIN_FIELDS))
            _set(raw, off, width, draw(st.sampled_from(INTERESTING)))
        elif kind == "signal_field" and ns:
            k = draw(st.integers(0, len(SIGNAL_WIDTHS) - 1))
            i = draw(st.integers(0, ns - 1))
            off = 256 + ns * sum(SIGNAL_WIDTHS[:k]) + i * SIGNAL_WIDTHS[k]
            _set(raw, off, SIGNAL_WIDTHS[k], draw(st.sampled_from(INTERESTING)))
        elif kind == "ns_mismatch":
            _set(raw, 252, 4, str(max(0, ns + draw(st.sampled_from([-3, -1, 1, 2, 50, 9000])))).encode())
        elif kind == "label_non_ascii" and ns:
            i = draw(st.integers(0, ns - 1))
            _set(raw, 256 + 16 * i, 16, draw(st.binary(min_size=1, max_size=16)))
        elif kind == "tal_corrupt" and len(raw) > header_len:
            # overwrite a random stretch of the data area with TAL-like bytes
            piece = draw(st.lists(st.sampled_from([b"+", b"-", b"0", b"1.5", b"\x14", b"\x15", b"\x00", b"9" * 12,
                                                   b"text", b"\xff", b"e5", b"."]), min_size=1, max_size=12))
            blob = b"".join(piece)
            i = draw(st.integers(header_len, len(raw) - 1))
            raw[i: i + len(blob)] = blob
        elif kind == "append":
            raw += bytes(draw(st.binary(min_size=1, max_size=600)))
    return name, bytes(raw)


def _exercise(path: Path) -> str:
    """Open and read a little of everything; raise only SleepEdgeError. Returns the backend."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy RuntimeWarning is a bug to find, not noise
        warnings.simplefilter("ignore", EDFQuirkWarning)
        with open_edf(path) as r:
            h = r.header
            assert h.n_records >= 1 and len(h.record_onsets_s) == h.n_records
            assert all(math.isfinite(a.onset_s) and math.isfinite(a.duration_s) for a in h.annotations)
            assert math.isfinite(h.duration_s)
            for s in h.signals[:3]:
                assert math.isfinite(s.fs_hz) and s.fs_hz > 0
                x = r.read(s, 0.0, min(h.duration_s, 5.0))
                assert x.dtype == np.float64 and len(x) <= int(round(5.0 * s.fs_hz)) + 1
            if h.signals:
                for _, block in r.iter_epochs(h.signals[:2], n_epochs_per_block=1):
                    assert all(v.dtype == np.float64 for v in block.values())
                    break
            return r.backend


@pytest.mark.skipif(not SEEDS, reason="no seeds")
@settings(max_examples=N_FILE, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(case=mutated_file())
def test_fuzz_edf_reader(case):
    name, raw = case
    path = _tmp / "case.edf"
    path.write_bytes(raw)
    t = time.perf_counter()
    try:
        backend = _exercise(path)
        STATS["opened"] += 1
        STATS["opened_pyedflib"] += backend == "pyedflib"
    except SleepEdgeError as err:
        msg = str(err)
        assert msg and "\n" not in msg, f"{name}: multi-line error {msg!r}"
        STATS["edf_error"] += 1
    dt = time.perf_counter() - t
    STATS["file_cases"] += 1
    STATS["max_case_s"] = max(STATS["max_case_s"], dt)
    assert dt < CASE_TIME_S, f"{name}: case took {dt:.2f} s"


tal_piece = st.one_of(
    st.sampled_from([b"+0", b"+1.5", b"-0.25", b"+", b"-", b"12", b"+1e5", b"+.5", b"+99999999999999999999",
                     b"\x14", b"\x15", b"\x00", b"\x14\x14", b"\x14\x00", b"Sleep stage W", b"\xc3\xa9", b"\xff\xfe",
                     b"+nan", b"+inf", b"30", b"0.5"]),
    st.binary(max_size=12),
)


@settings(max_examples=N_TAL, derandomize=True, deadline=None, database=None)
@given(parts=st.lists(tal_piece, max_size=24))
def test_fuzz_tal_parser(parts):
    raw = b"".join(parts)
    t = time.perf_counter()
    onset, anns, quirks = parse_tal_record(raw)
    assert onset is None or math.isfinite(onset)
    for a in anns:
        assert math.isfinite(a.onset_s) and math.isfinite(a.duration_s) and a.duration_s >= 0
        assert isinstance(a.text, str) and a.text
    assert all(isinstance(q, str) for q in quirks)
    STATS["tal_cases"] += 1
    assert time.perf_counter() - t < CASE_TIME_S


def test_fuzz_case_count_reached():
    """Runs after the two fuzz tests (file order): the configured number of cases ran."""
    if not SEEDS:
        pytest.skip("no seeds")
    if STATS["file_cases"] == 0 and STATS["tal_cases"] == 0:
        pytest.skip("run together with the two fuzz tests above (it checks their case counts)")
    total = STATS["file_cases"] + STATS["tal_cases"]
    print(f"\nfuzz: {STATS}")
    assert STATS["file_cases"] == N_FILE and STATS["tal_cases"] == N_TAL
    assert total >= min(TOTAL, 1000)
    assert STATS["opened"] > 0 and STATS["edf_error"] > 0  # both outcomes were exercised
