"""PhysioNet WFDB annotations (slpdb `.st`) through `read_scoring`, with the real `wfdb` package:
all 18 real records, the R&K -> AASM and event-token rules on a file written by `wfdb.wrann`,
detection, and one-line errors."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from sleepedge.contract import IGNORE
from sleepedge.errors import ScoringError, SleepEdgeError
from sleepedge.scoring import read_scoring
from sleepedge.stats import sleep_stats

wfdb = pytest.importorskip("wfdb")
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword")   # wfdb's own pandas deprecation, direct calls here

SLPDB = Path(__file__).resolve().parents[2] / "shared" / "data" / "slpdb-annotations"
needs_slpdb = pytest.mark.skipif(not SLPDB.is_dir(), reason=f"{SLPDB} not available (real slpdb annotations)")
RECORDS = ["slp01a", "slp01b", "slp02a", "slp02b", "slp03", "slp04", "slp14", "slp16", "slp32", "slp37",
           "slp41", "slp45", "slp48", "slp59", "slp60", "slp61", "slp66", "slp67x"]


@needs_slpdb
def test_all_18_real_records():
    assert sorted(p.stem for p in SLPDB.glob("slp*.st")) == RECORDS
    for rec in RECORDS:
        hyp, events = read_scoring(SLPDB / f"{rec}.st")
        ann = wfdb.rdann(str(SLPDB / rec), "st")
        first = int(round(ann.sample[0] / (ann.fs * 30)))
        # one epoch per annotation, after the epochs before the first annotation (IGNORE)
        assert hyp.n_epochs == first + len(ann.sample), rec
        assert (hyp.stages[:first] == IGNORE).all()
        tokens = [str(a).replace("\x00", " ").split() for a in ann.aux_note]
        rk = {"W": 0, "1": 1, "2": 2, "3": 3, "4": 3, "R": 4, "MT": IGNORE, "M": IGNORE}
        assert hyp.stages[first:].tolist() == [rk[t[0]] for t in tokens], rec
        n_hyp = sum(t.count("H") + t.count("HA") for t in tokens)
        assert sum(e.kind == "hypopnea" for e in events) == n_hyp, rec
        assert all(e.duration_s == 30.0 and e.onset_s % 30.0 == 0 for e in events)
        if rec != "slp67x":   # its header has a time but no date
            assert hyp.start is not None and hyp.start.year in (1989, 1990)
    hyp, events = read_scoring(SLPDB / "slp37.st")
    oa_epochs = {e.onset_s for e in events if e.label == "OA"}
    # the data README's figures: 698 epochs, 429 `OA` tokens (in 413 epochs: 16 epochs hold two)
    assert hyp.n_epochs - 2 == 698 and sum(e.label == "OA" for e in events) == 429 and len(oa_epochs) == 413
    st = sleep_stats(hyp, events)
    assert st["ahi"] > 80   # a severe apnea record


@needs_slpdb
def test_records_without_respiratory_annotations_have_no_ahi():
    for rec in ("slp41", "slp45"):
        hyp, events = read_scoring(SLPDB / f"{rec}.st")
        assert events == [] and sleep_stats(hyp, events)["ahi"] is None


@needs_slpdb
def test_detection_by_header_and_other_extension(tmp_path):
    hyp, _ = read_scoring(SLPDB / "slp37.hea")   # a record header reads its .st
    assert hyp.n_epochs == 700
    shutil.copy(SLPDB / "slp37.st", tmp_path / "slp37.ann")
    shutil.copy(SLPDB / "slp37.hea", tmp_path / "slp37.hea")
    hyp2, ev2 = read_scoring(tmp_path / "slp37.ann")   # binary with a .hea beside it: WFDB
    assert np.array_equal(hyp.stages, hyp2.stages) and len(ev2) > 400
    assert read_scoring(tmp_path / "slp37.ann", fmt="wfdb")[0].n_epochs == 700


def _write(tmp_path, notes, first_sample=1, name="rec"):
    samples = np.array([first_sample + 7500 * i for i in range(len(notes))])
    wfdb.wrann(name, "st", samples, symbol=['"'] * len(notes), aux_note=list(notes), fs=250,
               write_dir=str(tmp_path))
    return tmp_path / f"{name}.st"


def test_rk_to_aasm_and_event_tokens(tmp_path):
    path = _write(tmp_path, ["W", "1 H", "2 OA OA", "3 X", "4 CAA", "R HA", "MT", "M", "2 L LA LLL", "1 CA A"],
                  first_sample=15000)
    hyp, events = read_scoring(path)
    assert hyp.stages.tolist() == [IGNORE, IGNORE, 0, 1, 2, 3, 3, 4, IGNORE, IGNORE, 2, 1]
    got = sorted((int(e.onset_s // 30), e.kind) for e in events)
    assert got == sorted([(3, "hypopnea"), (4, "obstructive_apnea"), (4, "obstructive_apnea"),
                          (5, "obstructive_apnea"), (5, "arousal"), (6, "central_apnea"), (6, "arousal"),
                          (7, "hypopnea"), (7, "arousal"), (10, "arousal"), (11, "central_apnea"),
                          (11, "arousal")])
    st = sleep_stats(hyp, events)
    assert st["n_apnea"] == 5 and st["n_hypopnea"] == 2          # events in sleep epochs
    assert st["ahi"] == pytest.approx(7 / (st["tst_min"] / 60))


def test_bad_wfdb_input_is_one_line(tmp_path, monkeypatch):
    bad = _write(tmp_path, ["W", "5 H"], name="bad")
    with pytest.raises(ScoringError) as ex:
        read_scoring(bad)
    assert "'5'" in str(ex.value) and "\n" not in str(ex.value)
    junk = tmp_path / "junk.st"
    junk.write_bytes(b"\x01\x02\x03")
    with pytest.raises(ScoringError) as ex:
        read_scoring(junk)
    assert "junk.st" in str(ex.value) and "\n" not in str(ex.value)
    good = _write(tmp_path, ["W", "1"], name="good")
    monkeypatch.setitem(sys.modules, "wfdb", None)   # as if the extra were not installed
    with pytest.raises(SleepEdgeError) as ex:
        read_scoring(good)
    assert "wfdb" in str(ex.value) and "pip install 'sleepedge[notebook]'" in str(ex.value)
    assert "\n" not in str(ex.value)
