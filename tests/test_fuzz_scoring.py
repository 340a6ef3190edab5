"""Fuzzing every scoring reader: each case ends in data or a SleepEdgeError, nothing else.

Two layers, both repeatable:
  * mutation fuzzing seeded from the real files (byte flips, truncation, garbage lines, huge
    numbers, non-ASCII, NULs, DOCTYPE bombs, encoding changes), `random.Random(fixed seed)`;
    SLEEPEDGE_FUZZ_CASES cases per reader (default 1000; raise it for a long run);
  * hypothesis (`derandomize=True`): arbitrary bytes and grammar-built rows per format.
A case that returns data must return a valid Hypnogram/events that sleep_stats and
events_to_epochs accept. Every case is bounded in time (PER_CASE_S).
"""

from __future__ import annotations

import codecs
import os
import random
import re
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sleepedge.contract import IGNORE
from sleepedge.errors import SleepEdgeError
from sleepedge.scoring import EVENT_KINDS, Hypnogram, events_to_epochs, read_scoring, write_hypnogram
from sleepedge.stats import sleep_stats

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CASES = int(os.environ.get("SLEEPEDGE_FUZZ_CASES", "1000"))
PER_CASE_S = 2.0
HYPOTHESIS_EXAMPLES = max(50, CASES // 20)

NSRR_SEED = """<?xml version="1.0" encoding="UTF-8"?>
<PSGAnnotation><EpochLength>30</EpochLength><ScoredEvents>
<ScoredEvent><EventType>Stages|Stages</EventType><EventConcept>Wake|0</EventConcept><Start>0</Start><Duration>90</Duration></ScoredEvent>
<ScoredEvent><EventType>Stages|Stages</EventType><EventConcept>Stage 2 sleep|2</EventConcept><Start>90</Start><Duration>60</Duration></ScoredEvent>
<ScoredEvent><EventType>Stages|Stages</EventType><EventConcept>REM sleep|5</EventConcept><Start>150</Start><Duration>30</Duration></ScoredEvent>
<ScoredEvent><EventType>Respiratory|Respiratory</EventType><EventConcept>Obstructive apnea|Obstructive Apnea</EventConcept><Start>95.5</Start><Duration>14.2</Duration></ScoredEvent>
<ScoredEvent><EventType>Respiratory|Respiratory</EventType><EventConcept>SpO2 desaturation|SpO2 desaturation</EventConcept><Start>110</Start><Duration>20</Duration><SpO2Nadir>89</SpO2Nadir><SpO2Baseline>94</SpO2Baseline></ScoredEvent>
<ScoredEvent><EventType>Arousals|Arousals</EventType><EventConcept>Arousal|Arousal ()</EventConcept><Start>150</Start><Duration>6</Duration></ScoredEvent>
</ScoredEvents></PSGAnnotation>
"""


def _head_lines(text: str, n_head: int, n_tail: int = 0) -> str:
    lines = text.splitlines()
    return "\n".join(lines[:n_head] + (lines[-n_tail:] if n_tail else [])) + "\n"


def _seeds() -> dict[str, tuple[str, bytes]]:
    """reader -> (fmt, seed bytes). Real files where present, trimmed so a case parses in ms."""
    seeds: dict[str, tuple[str, bytes]] = {"nsrr": ("nsrr", NSRR_SEED.encode())}
    prof = DATA / "compumedics-xml-nsrr" / "20017.edf.XML"
    if prof.exists():
        text = prof.read_text(encoding="utf-8")
        # same structure, smaller: every 3rd ScoredEvent (all kinds stay), the first 400 stages,
        # no montage section
        head = text[:text.find("<ScoredEvents>")]
        events = re.findall(r"<ScoredEvent>.*?</ScoredEvent>", text[text.find("<ScoredEvents>"):])
        stages = re.findall(r"<SleepStage>\d+</SleepStage>", text)
        seeds["profusion"] = ("profusion", (head + "<ScoredEvents>" + "".join(events[::3]) + "</ScoredEvents>"
                                            "<SleepStages>" + "".join(stages[:400]) + "</SleepStages>"
                                            "</CMPStudyConfig>").encode())
    nox = DATA / "nox-a1-psg-rsleep" / "noxturnal_events_example_unicode_2.csv"
    if nox.exists():
        text = codecs.decode(nox.read_bytes(), "utf-16")
        seeds["noxturnal"] = ("noxturnal", _head_lines(text, 200, 10).encode("utf-16"))
    dreams = DATA / "dreams-subjects" / "HypnogramAASM_subject1.txt"
    if dreams.exists():
        seeds["dreams"] = ("dreams", _head_lines(dreams.read_text(), 1200).encode())
    return seeds


def _table_seeds(tmp: Path) -> dict[str, tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    stages = rng.choice([0, 1, 2, 3, 4, IGNORE], size=120).astype(np.int16)
    hyp = Hypnogram(stages, 30.0)
    probs = rng.dirichlet(np.ones(5), size=stages.size)
    out = {}
    for fmt in ("tsv", "csv", "json"):
        out[fmt] = (fmt, write_hypnogram(tmp / f"seed.{fmt}", hyp, probs).read_bytes())
    # a BIDS table with an event column (the simulator's truth sidecar layout)
    rows = ["onset\tduration\tstage\tevent"]
    rows += [f"{30 * k + 3.5:.2f}\t{12 + k % 20:.2f}\tn/a\t{name}" for k, name in
             enumerate(["Obstructive Apnea", "Hypopnea", "Central Apnea", "SpO2 desaturation", "Arousal"] * 8)]
    rows += [f"{30 * k:.2f}\t30.00\t{['W', 'N1', 'N2', 'N3', 'REM', 'n/a'][int(c) % 6]}\t"
             for k, c in enumerate(rng.integers(0, 6, size=60))]
    out["tsv_events"] = ("tsv", ("\n".join(rows) + "\n").encode())
    return out


# --------------------------------------------------------------------------- mutations
HUGE = [b"1e308", b"-1e308", b"1e999", b"nan", b"inf", b"-inf", b"9" * 400, b"-99999999999999999",
        b"4294967296", b"0.0000000000001", b"-0", b"1" * 5000]
GARBAGE = ["\x00\x00\x00", "\u202e\u0000\ufeff", "Éveil,,,,", "<a><b>", "]]>", "&amp;&lt;", "\t\t\t",
           "[HypnogramAASM]", "onset\tduration\tstage", "ÿþ", "日本語,睡眠,段階", "\r\r\n\n", "<!DOCTYPE x>",
           "<!ENTITY e SYSTEM 'file:///etc/passwd'>", '"unterminated, quote', "{\"stages\": [[[[",
           "01/01/1900 00:00:00,31/12/9999 23:59:59,N2,30,", "Sleep stage 9", "N7", "stage,stage,stage"]


def _mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    ops = []
    for _ in range(rng.randint(1, 3)):
        op = rng.choice(("flip", "truncate", "garbage", "huge", "delete_line", "dup_line", "swap_bytes",
                         "reencode", "insert_bytes", "nonascii"))
        ops.append(op)
        if not data:
            data = b"\x00"
        if op == "flip":
            b = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
            data = bytes(b)
        elif op == "truncate":
            data = data[: rng.randrange(len(data) + 1)]
        elif op in ("garbage", "nonascii"):
            text = data.decode("utf-8", errors="surrogateescape") if not data.startswith(b"\xff\xfe") \
                else data.decode("utf-16", errors="replace")
            lines = text.split("\n")
            g = rng.choice(GARBAGE) if op == "garbage" else "".join(
                chr(rng.choice([rng.randrange(0x80, 0x800), rng.randrange(0x800, 0xD7FF), rng.randrange(0xE000, 0x10FFFF)]))
                for _ in range(rng.randint(1, 12)))
            i = rng.randrange(len(lines) + 1)
            if rng.random() < 0.5 and lines:
                j = min(i, len(lines) - 1)
                cut = rng.randrange(len(lines[j]) + 1)
                lines[j] = lines[j][:cut] + g + lines[j][cut:]
            else:
                lines.insert(i, g)
            text = "\n".join(lines)
            enc = "utf-16" if data.startswith(b"\xff\xfe") else "utf-8"
            data = text.encode(enc, errors="surrogateescape" if enc == "utf-8" else "surrogatepass")
        elif op == "huge":
            # replace one number-looking run of digits (in any encoding the seed uses) by a huge value
            utf16 = data.startswith(b"\xff\xfe")
            text = data.decode("utf-16", errors="replace") if utf16 else data.decode("latin-1")
            digits = [i for i, c in enumerate(text) if c.isdigit()]
            if digits:
                i = rng.choice(digits)
                j = i
                while j < len(text) and (text[j].isdigit() or text[j] == "."):
                    j += 1
                text = text[:i] + rng.choice(HUGE).decode() + text[j:]
            data = text.encode("utf-16") if utf16 else text.encode("latin-1", errors="replace")
        elif op == "delete_line" or op == "dup_line":
            lines = data.split(b"\n")
            i = rng.randrange(len(lines))
            if op == "delete_line":
                del lines[i]
            else:
                lines.insert(i, lines[i])
            data = b"\n".join(lines)
        elif op == "swap_bytes":
            b = bytearray(data)
            i, j = rng.randrange(len(b)), rng.randrange(len(b))
            b[i], b[j] = b[j], b[i]
            data = bytes(b)
        elif op == "reencode":
            try:
                text = data.decode("utf-16") if data.startswith(b"\xff\xfe") else data.decode("utf-8")
            except UnicodeDecodeError:
                continue
            data = text.encode(rng.choice(("utf-16", "utf-16-le", "utf-8-sig", "latin-1", "utf-8")),
                               errors="replace")
        elif op == "insert_bytes":
            i = rng.randrange(len(data) + 1)
            data = data[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16))) + data[i:]
    return data, "+".join(ops)


# --------------------------------------------------------------------------- the oracle
def _check_case(path: Path, fmt: str, what: str) -> str:
    """Run one case: 'data' or 'error'. Any non-SleepEdgeError exception fails the test."""
    t0 = time.perf_counter()
    try:
        hyp, events = read_scoring(path, fmt=fmt)
    except SleepEdgeError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg, f"{what}: error message not one line: {msg!r}"
        outcome = "error"
    except Exception as exc:  # the property under test: nothing but SleepEdgeError escapes
        pytest.fail(f"{what}: {type(exc).__name__}: {exc}")
    else:
        assert isinstance(hyp, Hypnogram) and hyp.stages.dtype == np.int16
        assert np.isin(hyp.stages, [0, 1, 2, 3, 4, IGNORE]).all()
        assert all(e.kind in EVENT_KINDS and np.isfinite(e.onset_s) and e.duration_s >= 0 for e in events)
        stats = sleep_stats(hyp, events)
        assert stats["tst_min"] <= stats["tib_min"] + 1e-9
        labels = events_to_epochs(events, hyp.n_epochs, hyp.epoch_s)
        assert labels["apnea"].shape == (hyp.n_epochs,)
        outcome = "data"
    elapsed = time.perf_counter() - t0
    assert elapsed < PER_CASE_S, f"{what}: took {elapsed:.2f} s (> {PER_CASE_S} s)"
    return outcome


READERS = ("profusion", "nsrr", "noxturnal", "dreams", "tsv", "tsv_events", "csv", "json")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("reader", READERS)
def test_mutation_fuzz(reader, tmp_path):
    seeds = {**_seeds(), **_table_seeds(tmp_path)}
    if reader not in seeds:
        pytest.skip(f"seed file for {reader} not available (../shared/data absent)")
    fmt, seed = seeds[reader]
    # the unmutated seed must parse: the fuzz starts from valid data
    seed_path = tmp_path / f"seed_ok.{reader}"
    seed_path.write_bytes(seed)
    assert _check_case(seed_path, fmt, f"{reader} seed") == "data"
    rng = random.Random(f"sleepedge-fuzz-{reader}")
    path = tmp_path / f"case.{reader}"
    outcomes = {"data": 0, "error": 0}
    for case in range(CASES):
        data, ops = _mutate(seed, rng)
        path.write_bytes(data)
        # alternate forced format and content detection
        outcomes[_check_case(path, fmt if case % 2 == 0 else "auto", f"{reader} case {case} ({ops})")] += 1
    assert sum(outcomes.values()) == CASES
    # the mutations must not all be rejected outright: both outcomes occur
    assert outcomes["data"] > 0 and outcomes["error"] > 0, outcomes
    print(f"\n{reader}: {CASES} mutation cases -> {outcomes}")


# --------------------------------------------------------------------------- hypothesis
FUZZ_SETTINGS = settings(max_examples=HYPOTHESIS_EXAMPLES, derandomize=True, deadline=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                         database=None)


@FUZZ_SETTINGS
@given(data=st.binary(max_size=2000), fmt=st.sampled_from(("auto", "profusion", "nsrr", "noxturnal", "dreams",
                                                          "tsv", "csv", "json")))
def test_hypothesis_arbitrary_bytes(tmp_path, data, fmt):
    path = tmp_path / "bytes.bin"
    path.write_bytes(data)
    _check_case(path, fmt, f"bytes fmt={fmt} {data[:40]!r}")


_stage = st.sampled_from(["W", "N1", "N2", "N3", "REM", "R", "S4", "?", "n/a", "Wake", "0", "4", "-1", "X",
                          "Éveil", "", "Sleep stage 2", "N9"])
_number = st.one_of(st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.sampled_from(["", "1e999", "3,5", "abc", "9" * 50]))


@FUZZ_SETTINGS
@given(rows=st.lists(st.tuples(_number, _number, _stage), max_size=40), delim=st.sampled_from(["\t", ",", ";"]))
def test_hypothesis_bids_rows(tmp_path, rows, delim):
    path = tmp_path / "h.tsv"
    path.write_text("onset" + delim + "duration" + delim + "stage\n"
                    + "".join(delim.join(r) + "\n" for r in rows), encoding="utf-8")
    _check_case(path, "tsv", f"bids rows {rows[:3]}")


_nox_label = st.sampled_from(["Éveil", "N1", "N2", "N3", "REM", "A. Obstructive", "A. Centrale", "A. Mixte",
                              "Hypopnée", "Désat", "Micro-éveil", "MJ", "Dos", "N5", "Stage 9", "Notification"])
_clock = st.builds(lambda d, h, m, s: f"{d:02d}/07/2018 {h:02d}:{m:02d}:{s:02d}", st.integers(0, 40),
                   st.integers(0, 25), st.integers(0, 61), st.integers(0, 61))


@FUZZ_SETTINGS
@given(rows=st.lists(st.tuples(_clock, _clock, _nox_label, _number), max_size=40),
       enc=st.sampled_from(["utf-16", "utf-8", "utf-8-sig"]))
def test_hypothesis_noxturnal_rows(tmp_path, rows, enc):
    path = tmp_path / "nox.csv"
    body = "Heure de début,Heure de fin,Événement,Durée,\n[],[],[],[s],\n" + "".join(
        ",".join(r) + ",\n" for r in rows)
    path.write_bytes(body.encode(enc))
    _check_case(path, "auto", f"noxturnal rows {rows[:3]}")


@FUZZ_SETTINGS
@given(codes=st.lists(st.one_of(st.integers(-5, 9).map(str), st.sampled_from(["", "x", "5.0", "٣", "1e3"])),
                      max_size=200), header=st.sampled_from(["[HypnogramAASM]", "[HypnogramR&K]", "[Other]", ""]))
def test_hypothesis_dreams_codes(tmp_path, codes, header):
    path = tmp_path / "dreams.txt"
    path.write_text(header + "\n" + "\n".join(codes) + "\n", encoding="utf-8")
    _check_case(path, "dreams", f"dreams {header} {codes[:12]}")


_xml_text = st.one_of(_number, st.text(max_size=8))


@FUZZ_SETTINGS
@given(stages=st.lists(st.one_of(st.integers(-2, 10).map(str), _xml_text), max_size=60),
       events=st.lists(st.tuples(st.sampled_from(["Hypopnea", "Obstructive Apnea", "SpO2 desaturation",
                                                  "Arousal (ASDA)", "PLM (Left)", "Central Apnea"]),
                                 _number, _number), max_size=20),
       epoch=st.sampled_from(["30", "20", "0", "-30", "1e9", "abc", ""]))
def test_hypothesis_profusion_documents(tmp_path, stages, events, epoch):
    from xml.sax.saxutils import escape

    ev = "".join(f"<ScoredEvent><Name>{n}</Name><Start>{escape(s)}</Start><Duration>{escape(d)}</Duration>"
                 f"</ScoredEvent>" for n, s, d in events)
    st_xml = "".join(f"<SleepStage>{escape(s)}</SleepStage>" for s in stages)
    doc = (f'<?xml version="1.0" encoding="utf-8"?><CMPStudyConfig><EpochLength>{escape(epoch)}</EpochLength>'
           f"<ScoredEvents>{ev}</ScoredEvents><SleepStages>{st_xml}</SleepStages></CMPStudyConfig>")
    path = tmp_path / "p.xml"
    path.write_text(doc, encoding="utf-8")
    _check_case(path, "auto", f"profusion {stages[:5]} {events[:2]} epoch={epoch!r}")
