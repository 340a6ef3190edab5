"""`write_profusion_xml` (Compumedics Profusion XML, the NSRR layout) read back by the project's
own Profusion reader: a synthetic scoring with every stage and event kind, and the real
`20017.edf.XML`."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from sleepedge.contract import IGNORE
from sleepedge.errors import OutputError
from sleepedge.scoring import EVENT_KINDS, Event, Hypnogram, read_scoring, write_profusion_xml

NSRR_XML = Path(__file__).resolve().parents[2] / "shared" / "data" / "compumedics-xml-nsrr" / "20017.edf.XML"


def _key(e: Event):
    return (e.kind, e.onset_s, e.duration_s, e.drop_pct)


def test_round_trip_every_stage_and_event_kind(tmp_path):
    rng = np.random.default_rng(0)
    stages = rng.choice([0, 1, 2, 3, 4, IGNORE], size=500)
    hyp = Hypnogram(stages, 30.0, datetime(2020, 1, 1, 22, 0), "synthetic")
    events = [Event(float(rng.uniform(-20, 15000)), float(rng.uniform(3, 90)), kind, "x",
                    float(round(rng.uniform(2, 12), 1)) if kind == "desaturation" else None)
              for kind in EVENT_KINDS for _ in range(7)]
    events.append(Event(1234.5678901, 10.25, "hypopnea"))   # rounded to the microsecond
    events.append(Event(60.0, 12.0, "desaturation"))        # drop unknown
    path = write_profusion_xml(tmp_path / "s-profusion.xml", hyp, events)
    text = path.read_text(encoding="utf-8")
    assert text.startswith('<?xml version="1.0" encoding="utf-8"?>\n<CMPStudyConfig><EpochLength>30</EpochLength>')
    back, back_events = read_scoring(path)            # detected as "profusion"
    assert np.array_equal(back.stages, hyp.stages) and back.epoch_s == 30.0
    want = sorted(_key(Event(round(e.onset_s, 6), round(e.duration_s, 6), e.kind, "", e.drop_pct)) for e in events)
    assert sorted(_key(e) for e in back_events) == want
    # the stage codes Profusion uses: REM 5, unscored 9
    assert "<SleepStage>5</SleepStage>" in text and "<SleepStage>9</SleepStage>" in text


def test_real_nsrr_file_round_trips(tmp_path):
    if not NSRR_XML.is_file():
        pytest.skip(f"{NSRR_XML} not available (real Profusion XML)")
    hyp, events = read_scoring(NSRR_XML)
    assert hyp.n_epochs == 1194 and sum(e.kind == "hypopnea" for e in events) == 103
    out = write_profusion_xml(tmp_path / "20017-profusion.xml", hyp, events)
    hyp2, events2 = read_scoring(out)
    assert np.array_equal(hyp2.stages, hyp.stages) and hyp2.epoch_s == hyp.epoch_s
    assert [_key(e) for e in events2] == [_key(e) for e in events]
    # stage codes written as the original wrote them (S3 and S4 both become 3: N3 in AASM)
    orig = [int(x) for x in NSRR_XML.read_text().split("<SleepStages>")[1].split("</SleepStages>")[0]
            .replace("<SleepStage>", " ").replace("</SleepStage>", " ").split()]
    mine = [int(x) for x in out.read_text().split("<SleepStages>")[1].split("</SleepStages>")[0]
            .replace("<SleepStage>", " ").replace("</SleepStage>", " ").split()]
    assert [min(c, 3) if c in (3, 4) else c for c in orig] == mine


def test_writer_errors_are_one_line(tmp_path):
    hyp = Hypnogram(np.zeros(3, dtype=int))
    with pytest.raises(OutputError) as ex:
        write_profusion_xml(tmp_path / "no" / "such" / "dir.xml", hyp)
    assert "\n" not in str(ex.value) and "dir.xml" in str(ex.value)
    with pytest.raises(OutputError):
        write_profusion_xml(tmp_path / "x.xml", np.zeros(3))
    with pytest.raises(OutputError):
        write_profusion_xml(tmp_path / "x.xml", hyp, ["not an event"])
