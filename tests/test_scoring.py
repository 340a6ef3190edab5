"""Scoring readers/writers and the event -> epoch overlap rule, checked on real scorings.

Expected numbers are derived here from the raw files by small independent parses (regex,
pyedflib, plain string splitting), not by calling the reader under test.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sleepedge.contract import IGNORE
from sleepedge.errors import ScoringError, SleepEdgeError
from sleepedge.scoring import (EVENT_KINDS, Event, Hypnogram, events_to_epochs, read_scoring, stage_code,
                               write_hypnogram)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SC4001 = DATA / "sleep-edf" / "SC4001EC-Hypnogram.edf"
ST7132 = DATA / "sleep-edf" / "ST7132JR-Hypnogram.edf"
PROFUSION = DATA / "compumedics-xml-nsrr" / "20017.edf.XML"
DREAMS = DATA / "dreams-subjects" / "HypnogramAASM_subject1.txt"
NOX = DATA / "nox-a1-psg-rsleep"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real fixture {path} not available (../shared/data absent)")
    return path


# --------------------------------------------------------------------------- sleepedge.edf
@pytest.fixture
def edf_module():
    import sleepedge.edf

    return sleepedge.edf


def _pyedflib_stage_epochs(path: Path) -> Counter:
    import pyedflib

    r = pyedflib.EdfReader(str(path))
    on, du, tx = r.readAnnotations()
    r.close()
    c: Counter = Counter()
    for d, t in zip(du, tx):
        c[str(t)] += int(round(d / 30.0))
    return c


# --------------------------------------------------------------------------- Sleep-EDF EDF+
def test_sleep_edf_hypnogram_counts_match_raw_annotations(edf_module):
    need(SC4001)
    hyp, events = read_scoring(SC4001)
    raw = _pyedflib_stage_epochs(SC4001)
    assert hyp.n_epochs == sum(raw.values()) == 2880
    counts = Counter(hyp.stages.tolist())
    assert counts[0] == raw["Sleep stage W"] == 1997
    assert counts[1] == raw["Sleep stage 1"] == 58
    assert counts[2] == raw["Sleep stage 2"] == 250
    assert counts[3] == raw["Sleep stage 3"] + raw["Sleep stage 4"] == 220   # R&K S3+S4 -> N3
    assert counts[4] == raw["Sleep stage R"] == 125
    assert counts[IGNORE] == raw["Sleep stage ?"] + raw.get("Movement time", 0) == 230  # never Wake
    assert hyp.start == datetime(1989, 4, 24, 16, 13)
    assert hyp.epoch_s == 30.0 and events == []
    # the first annotation is W for 30630 s = 1021 epochs, then S1 for 120 s
    assert (hyp.stages[:1021] == 0).all() and (hyp.stages[1021:1025] == 1).all()


def test_all_twenty_sleep_edf_hypnograms(edf_module):
    folder = need(DATA / "sleep-edf-hypnograms-sc20")
    total = 0
    for path in sorted(folder.glob("SC4*-Hypnogram.edf")):
        hyp, _ = read_scoring(path)
        raw = _pyedflib_stage_epochs(path)
        assert hyp.n_epochs == sum(raw.values()), path.name
        ignore = raw.get("Sleep stage ?", 0) + raw.get("Movement time", 0)
        assert int((hyp.stages == IGNORE).sum()) == ignore, path.name
        total += hyp.n_epochs
    assert total == 57600


def test_sleep_edf_telemetry_quirk_file(edf_module):
    need(ST7132)   # strict pyedflib refuses this file; sleepedge.edf reads it leniently
    with pytest.warns(Warning, match="disagrees"):  # the reader reports the quirk it tolerated
        with edf_module.open_edf(ST7132) as reader:
            anns = reader.header.annotations
        hyp, _ = read_scoring(ST7132)
    # its first annotation starts 30 s into the recording: epoch 0 is unscored, not Wake
    assert anns[0].onset_s == 30.0
    scored = int(round(sum(a.duration_s for a in anns) / 30))
    assert int((hyp.stages != IGNORE).sum()) == scored == 852
    assert hyp.n_epochs == 853 and hyp.stages[0] == IGNORE and hyp.stages[1] == 0


# --------------------------------------------------------------------------- Profusion XML
def test_profusion_xml_stages_and_events_match_raw_text():
    text = need(PROFUSION).read_text(encoding="utf-8")
    raw_codes = [int(x) for x in re.findall(r"<SleepStage>(\d+)</SleepStage>", text)]
    raw_events = re.findall(r"<ScoredEvent><Name>([^<]*)</Name><Start>([^<]*)</Start>"
                            r"<Duration>([^<]*)</Duration>", text)
    hyp, events = read_scoring(PROFUSION)
    assert hyp.n_epochs == len(raw_codes) == 1194
    mapped = [{0: 0, 1: 1, 2: 2, 3: 3, 4: 3, 5: 4}[c] for c in raw_codes]
    assert hyp.stages.tolist() == mapped
    hypop = [e for e in events if e.kind == "hypopnea"]
    raw_hypop = [(float(s), float(d)) for n, s, d in raw_events if n == "Hypopnea"]
    assert len(hypop) == len(raw_hypop) == 103
    assert [(e.onset_s, e.duration_s) for e in hypop] == sorted(raw_hypop)
    n_arousal = sum(1 for n, _, _ in raw_events if n.startswith("Arousal"))
    assert sum(e.kind == "arousal" for e in events) == n_arousal == 76
    # limb movements and SpO2 artefacts are not respiratory events
    assert {e.kind for e in events} == {"hypopnea", "arousal"}


NSRR_FIXTURE = """<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<PSGAnnotation><SoftwareVersion>Compumedics</SoftwareVersion><EpochLength>30</EpochLength>
<ScoredEvents>
<ScoredEvent><EventType/><EventConcept>Recording Start Time</EventConcept><Start>0</Start>
 <Duration>300.0</Duration><ClockTime>00.00.00 22.10.05</ClockTime></ScoredEvent>
<ScoredEvent><EventType>Stages|Stages</EventType><EventConcept>Wake|0</EventConcept><Start>0.0</Start>
 <Duration>60.0</Duration></ScoredEvent>
<ScoredEvent><EventType>Stages|Stages</EventType><EventConcept>Stage 1 sleep|1</EventConcept><Start>60.0</Start>
 <Duration>30.0</Duration></ScoredEvent>
<ScoredEvent><EventType>Stages|Stages</EventType><EventConcept>Stage 2 sleep|2</EventConcept><Start>90.0</Start>
 <Duration>90.0</Duration></ScoredEvent>
<ScoredEvent><EventType>Stages|Stages</EventType><EventConcept>Stage 4 sleep|4</EventConcept><Start>180.0</Start>
 <Duration>30.0</Duration></ScoredEvent>
<ScoredEvent><EventType>Stages|Stages</EventType><EventConcept>Unscored|9</EventConcept><Start>210.0</Start>
 <Duration>30.0</Duration></ScoredEvent>
<ScoredEvent><EventType>Stages|Stages</EventType><EventConcept>REM sleep|5</EventConcept><Start>240.0</Start>
 <Duration>60.0</Duration></ScoredEvent>
<ScoredEvent><EventType>Respiratory|Respiratory</EventType><EventConcept>Obstructive apnea|Obstructive Apnea</EventConcept>
 <Start>100.5</Start><Duration>14.2</Duration><SignalLocation>Airflow</SignalLocation></ScoredEvent>
<ScoredEvent><EventType>Respiratory|Respiratory</EventType><EventConcept>Hypopnea|Hypopnea</EventConcept>
 <Start>125</Start><Duration>21</Duration><SignalLocation>ABDO RES</SignalLocation></ScoredEvent>
<ScoredEvent><EventType>Respiratory|Respiratory</EventType><EventConcept>SpO2 desaturation|SpO2 desaturation</EventConcept>
 <Start>130.0</Start><Duration>20.0</Duration><SignalLocation>SaO2</SignalLocation>
 <SpO2Nadir>89</SpO2Nadir><SpO2Baseline>94</SpO2Baseline></ScoredEvent>
<ScoredEvent><EventType>Arousals|Arousals</EventType><EventConcept>Arousal|Arousal ()</EventConcept>
 <Start>150.0</Start><Duration>6.0</Duration><SignalLocation>EEG</SignalLocation></ScoredEvent>
<ScoredEvent><EventType>Respiratory|Respiratory</EventType><EventConcept>Unsure|Unsure</EventConcept>
 <Start>260.0</Start><Duration>12.0</Duration></ScoredEvent>
<ScoredEvent><EventType>Limb Movement|Limb Movement</EventType><EventConcept>Limb movement - left|Limb Movement (Left)</EventConcept>
 <Start>270.0</Start><Duration>2.0</Duration></ScoredEvent>
</ScoredEvents></PSGAnnotation>
"""


def test_nsrr_psgannotation_xml(tmp_path):
    path = tmp_path / "shhs1-200001-nsrr.xml"
    path.write_text(NSRR_FIXTURE, encoding="utf-8")
    hyp, events = read_scoring(path)
    assert hyp.stages.tolist() == [0, 0, 1, 2, 2, 2, 3, IGNORE, 4, 4]
    assert [(e.kind, e.onset_s, e.duration_s) for e in events] == [
        ("obstructive_apnea", 100.5, 14.2), ("hypopnea", 125.0, 21.0), ("desaturation", 130.0, 20.0),
        ("arousal", 150.0, 6.0)]
    assert events[2].drop_pct == pytest.approx(5.0)
    assert events[0].label == "Obstructive apnea|Obstructive Apnea"


def test_nsrr_unknown_stage_names_label_file_and_accepted(tmp_path):
    path = tmp_path / "bad.xml"
    path.write_text(NSRR_FIXTURE.replace("Stage 1 sleep|1", "Stage 7 sleep|7"), encoding="utf-8")
    with pytest.raises(ScoringError) as err:
        read_scoring(path)
    msg = str(err.value)
    assert "Stage 7 sleep|7" in msg and str(path) in msg and "N1" in msg and "\n" not in msg


def test_xml_with_doctype_is_refused_before_parsing(tmp_path):
    bomb = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
            '<CMPStudyConfig><SleepStages><SleepStage>&lol2;</SleepStage></SleepStages></CMPStudyConfig>')
    path = tmp_path / "bomb.xml"
    path.write_text(bomb)
    with pytest.raises(ScoringError, match="DOCTYPE"):
        read_scoring(path)


# --------------------------------------------------------------------------- Noxturnal CSV
def _nox_rows(path: Path) -> list[list[str]]:
    text = codecs.decode(path.read_bytes(), "utf-16")
    return [ln.split(",") for ln in text.splitlines()[2:] if ln.strip()]


def test_noxturnal_export_2_matches_raw_rows():
    path = need(NOX / "noxturnal_events_example_unicode_2.csv")
    rows = _nox_rows(path)
    labels = Counter(r[2] for r in rows)
    hyp, events = read_scoring(path)
    counts = Counter(hyp.stages.tolist())
    assert counts[0] == labels["Éveil"] == 169
    assert (counts[1], counts[2], counts[3], counts[4]) == (labels["N1"], labels["N2"], labels["N3"], labels["REM"])
    assert counts[IGNORE] == 0 and hyp.n_epochs == 848
    kinds = Counter(e.kind for e in events)
    assert kinds["obstructive_apnea"] == labels["A. Obstructive"] == 114
    assert kinds["mixed_apnea"] == labels["A. Mixte"] == 1
    assert kinds["hypopnea"] == labels["Hypopnée"] == 89
    assert kinds["desaturation"] == labels["Désat"] == 191
    assert kinds["arousal"] == labels["Micro-éveil"] == 76
    first_stage = next(r for r in rows if r[2] in ("Éveil", "N1", "N2", "N3", "REM"))
    assert hyp.start == datetime.strptime(first_stage[0], "%d/%m/%Y %H:%M:%S") == datetime(2018, 7, 25, 23, 46)
    first_desat = next(r for r in rows if r[2] == "Désat")   # 23:47:11, 9.333 s
    desat = next(e for e in events if e.kind == "desaturation")
    assert desat.onset_s == (datetime.strptime(first_desat[0], "%d/%m/%Y %H:%M:%S") - hyp.start).total_seconds() == 71
    assert desat.duration_s == float(first_desat[3]) == 9.333


def test_noxturnal_gaps_in_staging_are_ignore_not_wake():
    path = need(NOX / "noxturnal_events_example_unicode.csv")
    rows = _nox_rows(path)
    stage_rows = [r for r in rows if r[2] in ("Éveil", "N1", "N2", "N3", "REM")]
    t = [datetime.strptime(r[0], "%d/%m/%Y %H:%M:%S") for r in stage_rows]
    span_epochs = int(((t[-1] - t[0]).total_seconds() + 30) // 30)
    hyp, _ = read_scoring(path)
    assert hyp.n_epochs == span_epochs == 1497
    assert int((hyp.stages == IGNORE).sum()) == span_epochs - len(stage_rows) == 139
    assert int((hyp.stages == 0).sum()) == sum(r[2] == "Éveil" for r in stage_rows)


def test_noxturnal_english_utf8_semicolon_variant(tmp_path):
    path = need(NOX / "noxturnal_events_example_unicode_3.csv")
    text = codecs.decode(path.read_bytes(), "utf-16")
    english = {"Éveil": "Wake", "A. Obstructive": "Obstructive Apnea", "A. Centrale": "Central Apnea",
               "A. Mixte": "Mixed Apnea", "Hypopnée": "Hypopnea", "Désat": "Desaturation",
               "Micro-éveil": "Arousal"}
    lines = text.splitlines()
    out = ["Start Time;End Time;Event;Duration;", lines[1].replace(",", ";")]
    for ln in lines[2:]:
        f = ln.split(",")
        f[2] = english.get(f[2], f[2])
        f[3] = f[3].replace(".", ",")  # decimal comma, as a French-locale ';' export writes it
        out.append(";".join(f))
    en = tmp_path / "events_en.txt"
    en.write_text("\n".join(out), encoding="utf-8")
    h_fr, e_fr = read_scoring(path)
    h_en, e_en = read_scoring(en)
    assert np.array_equal(h_fr.stages, h_en.stages) and h_fr.start == h_en.start
    assert [(e.kind, e.onset_s, e.duration_s) for e in e_fr] == [(e.kind, e.onset_s, e.duration_s) for e in e_en]
    assert Counter(e.kind for e in e_en)["central_apnea"] == 24


def test_noxturnal_unknown_stage_label(tmp_path):
    path = tmp_path / "nox.csv"
    path.write_text("Start Time,End Time,Event,Duration,\n[],[],[],[s],\n"
                    "01/02/2020 23:00:00,01/02/2020 23:00:30,Wake,30,\n"
                    "01/02/2020 23:00:30,01/02/2020 23:01:00,N5,30,\n", encoding="utf-16")
    with pytest.raises(ScoringError, match=r"'N5'.*accepted"):
        read_scoring(path)


# --------------------------------------------------------------------------- DREAMS
def test_dreams_majority_of_six_5s_epochs_matches_independent_count():
    lines = [ln.strip() for ln in need(DREAMS).read_text().splitlines()[1:] if ln.strip()]
    aasm = {"5": 0, "4": 4, "3": 1, "2": 2, "1": 3}
    expected = []
    for k in range(len(lines) // 6):
        top = Counter(aasm.get(x, IGNORE) for x in lines[6 * k: 6 * k + 6]).most_common()
        expected.append(IGNORE if len(top) > 1 and top[0][1] == top[1][1] else top[0][0])
    hyp, events = read_scoring(DREAMS)
    assert hyp.n_epochs == len(lines) // 6 == 961       # 5768 codes; the 2 trailing ones dropped
    assert hyp.stages.tolist() == expected and events == []


def test_dreams_rule_ties_unscored_and_rk(tmp_path):
    p = tmp_path / "HypnogramAASM_subjectX.txt"
    codes = list("555222") + list("555522") + ["0", "0", "0", "0", "5", "5"]
    p.write_text("[HypnogramAASM]\n" + "\n".join(codes) + "\n")
    hyp, _ = read_scoring(p)
    assert hyp.stages.tolist() == [IGNORE, 0, IGNORE]   # tie -> IGNORE, 4 of 6 W -> W, unscored majority
    rk = tmp_path / "HypnogramR&K_subjectX.txt"
    rk.write_text("[HypnogramR&K]\n" + "\n".join(["0"] * 6 + ["4"] * 6) + "\n")
    assert read_scoring(rk)[0].stages.tolist() == [3, 4]  # R&K 0 = S4 -> N3
    bad = tmp_path / "HypnogramAASM_bad.txt"
    bad.write_text("[HypnogramAASM]\n5\n5\n7\n5\n5\n5\n")
    with pytest.raises(ScoringError, match="line 4"):
        read_scoring(bad)
    bare = tmp_path / "codes.txt"   # no [Hypnogram...] header: 5-s or 30-s? not guessed
    bare.write_text("\n".join(["5"] * 6 + ["2"] * 6) + "\n")
    with pytest.raises(ScoringError, match="not recognised"):
        read_scoring(bare)
    assert read_scoring(bare, fmt="dreams")[0].stages.tolist() == [0, 2]


# --------------------------------------------------------------------------- BIDS TSV / CSV
def test_bids_tsv_with_names_codes_and_merged_rows(tmp_path):
    p = tmp_path / "sub-01_hypnogram.tsv"
    p.write_text("onset\tduration\tstage\n0\t60\tWake\n60\t30\tN1\n90\t90\t2\n180\t30\tS4\n210\t30\t?\n"
                 "240\t30\tmovement\n270\t30\tR\n")
    hyp, _ = read_scoring(p)
    assert hyp.stages.tolist() == [0, 0, 1, 2, 2, 2, 3, IGNORE, IGNORE, 4]
    bids = tmp_path / "sub-01_task-sleep_hypnogram.tsv"   # BIDS draft: human and AI stage columns
    bids.write_text("onset\tduration\tstage_ai\tstage_hum\n0\t30\tN2\tW\n30\t30\tN2\tN1\n")
    assert read_scoring(bids)[0].stages.tolist() == [0, 1]
    c = tmp_path / "hyp.csv"
    c.write_text("onset,duration,stage\n0,30,W\n30,30,N3\n")
    assert read_scoring(c)[0].stages.tolist() == [0, 3]


def test_tsv_with_event_column_like_the_simulator_sidecar(tmp_path):
    p = tmp_path / "night.tsv"   # event rows first (stage n/a), then one row per stage bout
    p.write_text("onset\tduration\tstage\tevent\n"
                 "65.00\t14.50\tn/a\tObstructive Apnea\n"
                 "100.00\t22.00\tn/a\tHypopnea\n"
                 "112.00\t18.00\tn/a\tSpO2 desaturation\n"
                 "170.00\t40.00\tn/a\tLights on\n"
                 "0.00\t60.00\tW\t\n"
                 "60.00\t90.00\tN2\t\n"
                 "150.00\t30.00\tn/a\t\n")
    hyp, events = read_scoring(p)
    assert hyp.stages.tolist() == [0, 0, 2, 2, 2, IGNORE]   # event rows do not extend or mask stages
    assert [(e.kind, e.onset_s, e.duration_s) for e in events] == [
        ("obstructive_apnea", 65.0, 14.5), ("hypopnea", 100.0, 22.0), ("desaturation", 112.0, 18.0)]


def test_duration_less_stage_markers_last_one_epoch(tmp_path, edf_module):
    p = tmp_path / "markers.edf"
    anns = [edf_module.Annotation(30.0 * k, 0.0, t) for k, t in
            enumerate(["Sleep stage W", "Sleep stage N1", "Sleep stage N2", "Lights on", "Sleep stage R"])]
    anns[3] = edf_module.Annotation(95.0, 0.0, "Lights on")
    anns.append(edf_module.Annotation(100.0, 12.0, "Obstructive Apnea"))
    edf_module.write_edf(p, [], annotations=anns)
    hyp, events = read_scoring(p)
    assert hyp.stages.tolist() == [0, 1, 2, IGNORE, 4]   # gap epoch (no marker) stays unscored
    assert [(e.kind, e.onset_s) for e in events] == [("obstructive_apnea", 100.0)]


def test_unknown_stage_label_error_is_one_line(tmp_path):
    p = tmp_path / "h.tsv"
    p.write_text("onset\tduration\tstage\n0\t30\tW\n30\t30\tDeep\n")
    with pytest.raises(ScoringError) as err:
        read_scoring(p)
    msg = str(err.value)
    assert "'Deep'" in msg and "h.tsv" in msg and "REM" in msg and "\n" not in msg


def test_stage_mapping_table():
    assert [stage_code(x) for x in ("W", "Sleep stage 1", "N2", "Sleep stage 3", "Sleep stage 4", "R",
                                    "Sleep stage ?", "Movement time", "Stage 2 sleep|2", "Éveil")] == \
        [0, 1, 2, 3, 3, 4, IGNORE, IGNORE, 2, 0]
    with pytest.raises(ScoringError):
        stage_code("Stage X")


def test_format_detected_from_content_not_extension(tmp_path):
    xml = tmp_path / "scoring.txt"
    xml.write_bytes(need(PROFUSION).read_bytes())
    assert read_scoring(xml)[0].n_epochs == 1194
    nox = tmp_path / "events.xml"
    nox.write_bytes(need(NOX / "noxturnal_events_example_unicode_2.csv").read_bytes())
    assert read_scoring(nox)[0].n_epochs == 848
    junk = tmp_path / "junk.csv"
    junk.write_text("hello,world\n1,2\n")
    with pytest.raises(ScoringError, match="not recognised"):
        read_scoring(junk)
    with pytest.raises(ScoringError, match="no such"):
        read_scoring(tmp_path / "missing.tsv")
    with pytest.raises(ScoringError, match="is a folder"):
        read_scoring(tmp_path)
    with pytest.raises(ScoringError, match="fmt="):
        read_scoring(xml, fmt="xlsx")


# --------------------------------------------------------------------------- writers
def _night() -> tuple[Hypnogram, np.ndarray]:
    rng = np.random.default_rng(7)
    stages = np.array([0, 0, 1, 2, 2, 3, 3, IGNORE, 2, 4, 4, 0, 2, 2], dtype=np.int16)
    probs = rng.dirichlet(np.ones(5), size=stages.size)
    return Hypnogram(stages, 30.0, datetime(2024, 3, 1, 22, 15, 0), "test"), probs


@pytest.mark.parametrize("fmt", ["tsv", "csv", "json"])
def test_text_writers_round_trip(tmp_path, fmt):
    hyp, probs = _night()
    path = write_hypnogram(tmp_path / f"night.{fmt}", hyp, probs)
    back, events = read_scoring(path)
    assert np.array_equal(back.stages, hyp.stages) and back.epoch_s == 30.0 and events == []
    text = path.read_text(encoding="utf-8")
    if fmt == "json":
        doc = json.loads(text)
        assert np.allclose(doc["probs"], probs) and back.start == hyp.start
        assert doc["stages"][7] == "n/a"
    else:
        sep = "\t" if fmt == "tsv" else ","
        lines = text.splitlines()
        assert lines[0].split(sep) == ["onset", "duration", "stage", "p_W", "p_N1", "p_N2", "p_N3", "p_REM"]
        row = lines[10].split(sep)
        assert row[:3] == ["270", "30", "REM"]
        assert np.allclose([float(x) for x in row[3:]], probs[9], atol=1e-6)


def test_edf_writer_round_trip(tmp_path, edf_module):
    hyp, probs = _night()
    path = write_hypnogram(tmp_path / "night.edf", hyp, probs)
    with edf_module.open_edf(path) as reader:
        texts = [a.text for a in reader.header.annotations]
    assert texts[:4] == ["Sleep stage W", "Sleep stage N1", "Sleep stage N2", "Sleep stage N3"]
    assert "Sleep stage R" in texts and "Sleep stage ?" in texts
    back, _ = read_scoring(path)
    assert np.array_equal(back.stages, hyp.stages) and back.start == hyp.start


def test_writer_errors(tmp_path):
    hyp, probs = _night()
    with pytest.raises(SleepEdgeError, match="format"):
        write_hypnogram(tmp_path / "night.xlsx", hyp)
    with pytest.raises(SleepEdgeError, match="probs shape"):
        write_hypnogram(tmp_path / "night.tsv", hyp, probs[:3])
    bad = probs.copy()
    bad[3, 1] = np.nan
    with pytest.raises(SleepEdgeError, match="epoch 3"):
        write_hypnogram(tmp_path / "night.csv", hyp, bad)
    with pytest.raises(SleepEdgeError, match="writable"):
        write_hypnogram(tmp_path / "no" / "such" / "dir.tsv", hyp)


def test_hypnogram_validation():
    with pytest.raises(ScoringError, match="stage code 7"):
        Hypnogram(np.array([0, 7]))
    with pytest.raises(ScoringError):
        Hypnogram(np.array([0, 1]), epoch_s=0)
    with pytest.raises(ScoringError, match="kind"):
        Event(0, 10, "snore")
    assert Hypnogram(np.array([0, IGNORE, 4])).stages.dtype == np.int16
    for bad in ([10**30, 1], ["W"], [[1], [2, 3]], [1.5]):   # found by fuzzing: must not leak numpy errors
        with pytest.raises(ScoringError):
            Hypnogram(bad)


def test_json_with_huge_stage_code(tmp_path):
    p = tmp_path / "h.json"
    p.write_text('{"epoch_s": 30, "stages": ["W", "N1"], "stage_codes": [0, 100000000000000000000000]}')
    with pytest.raises(ScoringError, match="stage code 1000"):
        read_scoring(p)


# --------------------------------------------------------------------------- overlap rule
def _ev(on, dur, kind="obstructive_apnea"):
    return Event(on, dur, kind)


def test_overlap_rule_straddling_boundaries():
    cases = [
        (_ev(25, 12), [0, 1, 0, 0]),     # 5 s / 7 s over the 30-s boundary: midpoint 31 s -> epoch 1 only
        (_ev(20, 55), [1, 1, 1, 0]),     # 10 s of epoch 0 (>= 10 s), all of 1, 15 s of 2
        (_ev(50, 12), [0, 1, 0, 0]),     # 10 s in epoch 1, 2 s in epoch 2
        (_ev(24, 12), [0, 1, 0, 0]),     # midpoint exactly 30.0 s belongs to epoch 1 ([a, b) epochs)
        (_ev(61, 0), [0, 0, 1, 0]),      # zero-length marker -> its epoch
        (_ev(5, 90), [1, 1, 1, 0]),      # 25 / 30 / 30 / 5 s: the 5-s tail does not mark epoch 3
    ]
    for ev, expected in cases:
        assert events_to_epochs([ev], 4)["apnea"].tolist() == expected, ev


def test_overlap_rule_at_night_start_and_end():
    n = 3   # 0..90 s
    assert events_to_epochs([_ev(-8, 13)], n)["apnea"].tolist() == [0, 0, 0]    # 5 s inside, midpoint < 0
    assert events_to_epochs([_ev(-5, 20)], n)["apnea"].tolist() == [1, 0, 0]    # 15 s of epoch 0
    assert events_to_epochs([_ev(85, 15)], n)["apnea"].tolist() == [0, 0, 0]    # 5 s inside, midpoint 92.5 s
    assert events_to_epochs([_ev(75, 20)], n)["apnea"].tolist() == [0, 0, 1]    # 15 s of the last epoch
    assert events_to_epochs([_ev(500, 20)], n)["apnea"].tolist() == [0, 0, 0]
    assert events_to_epochs([_ev(0, 10)], 0)["apnea"].shape == (0,)


def test_overlap_rule_kinds():
    evs = [_ev(0, 15, "central_apnea"), _ev(30, 15, "mixed_apnea"), _ev(60, 20, "hypopnea"),
           _ev(90, 20, "desaturation"), _ev(90, 20, "arousal")]
    out = events_to_epochs(evs, 4)
    assert out["apnea"].tolist() == [1, 1, 0, 0] and out["hypopnea"].tolist() == [0, 0, 1, 0]
    assert out["apnea"].dtype == np.uint8 and set(EVENT_KINDS) >= {e.kind for e in evs}
    with pytest.raises(ScoringError):
        events_to_epochs(evs, -1)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(on=st.floats(-100, 1000, allow_nan=False), dur=st.floats(0, 400, allow_nan=False),
       n=st.integers(0, 40))
def test_overlap_rule_properties(on, dur, n):
    lab = events_to_epochs([Event(on, dur, "hypopnea")], n)["hypopnea"]
    pos = np.flatnonzero(lab)
    mid = math.floor((on + dur / 2) / 30.0)
    if 0 <= mid < n:
        assert lab[mid] == 1                          # the midpoint epoch is always marked
    if pos.size:
        assert (np.diff(pos) == 1).all()              # one contiguous run
        assert pos[0] >= math.floor(on / 30.0) and pos[-1] <= math.floor((on + dur) / 30.0)
        for k in pos:                                 # every marked epoch: >= 10 s or the midpoint
            overlap = min(on + dur, 30.0 * (k + 1)) - max(on, 30.0 * k)
            assert overlap >= 10.0 or k == mid
    assert lab.sum() <= math.ceil(dur / 30.0) + 1
