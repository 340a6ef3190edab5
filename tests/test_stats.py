"""AASM sleep statistics: a hand-worked night, edge cases, and the real scorings.

For the real files the expected TST and event counts are re-derived here from the raw text
(plain splitting / regex), independently of sleepedge.scoring, then the derived indices are pinned.
"""

from __future__ import annotations

import codecs
import math
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from sleepedge.contract import IGNORE
from sleepedge.errors import ScoringError
from sleepedge.scoring import Event, Hypnogram, read_scoring
from sleepedge.stats import format_stats, sleep_stats

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
I = IGNORE


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real fixture {path} not available (../shared/data absent)")
    return path


# epoch:   0  1  2  3  4  5  6  7  8  9 10 11 12 13 14
NIGHT = [I, 0, 0, 1, 2, 0, I, 0, 2, 3, 4, 0, 2, 0, I]


def test_hand_worked_night():
    hyp = Hypnogram(np.array(NIGHT), 30.0)
    events = [
        Event(125.0, 15, "obstructive_apnea"),   # epoch 4 (N2): counted
        Event(150.0, 12, "hypopnea"),            # epoch 5 (W): not during sleep
        Event(245.0, 20, "hypopnea"),            # epoch 8 (N2): counted
        Event(299.9, 11, "central_apnea"),       # epoch 9 (N3): counted
        Event(280.0, 20, "desaturation", drop_pct=2.0),  # below 3 %: not an ODI event
        Event(310.0, 20, "desaturation"),        # epoch 10 (REM), drop not given: counted
        Event(40.0, 20, "desaturation", drop_pct=4.0),   # epoch 1 (W): not during sleep
        Event(365.0, 5, "arousal"),              # epoch 12 (N2)
    ]
    s = sleep_stats(hyp, events)
    # recording period = epochs 1..13 (leading/trailing IGNORE left out): 13 epochs
    assert s["tib_min"] == 6.5
    assert s["tst_min"] == 3.0                                   # epochs 3,4,8,9,10,12
    assert s["se_pct"] == pytest.approx(100 * 6 / 13)
    assert s["sol_min"] == 1.0                                   # epochs 1,2 before onset
    assert s["spt_min"] == 5.0                                   # epochs 3..12
    assert s["waso_min"] == 1.5                                  # W at 5, 7, 11 (IGNORE at 6 is not WASO)
    assert s["rem_latency_min"] == 3.5                           # epoch 10 - epoch 3
    assert s["n_awakenings"] == 2                                # W,(?),W merged; W at 11
    assert (s["W_min"], s["N1_min"], s["N2_min"], s["N3_min"], s["REM_min"]) == (3.0, 0.5, 1.5, 0.5, 0.5)
    assert s["N2_pct"] == pytest.approx(50.0) and s["REM_pct"] == pytest.approx(100 / 6)
    assert s["ignore_min"] == 0.5
    assert (s["n_apnea"], s["n_obstructive_apnea"], s["n_central_apnea"], s["n_hypopnea"]) == (2, 1, 1, 1)
    assert s["ahi"] == pytest.approx(3 / 0.05)                   # 3 events / (3 min = 0.05 h)
    assert s["n_desaturation"] == 1 and s["odi"] == pytest.approx(20.0)
    assert s["arousal_index"] == pytest.approx(20.0)
    assert sleep_stats(hyp, events, min_awakening_s=60)["n_awakenings"] == 1
    assert sleep_stats(hyp, events, odi_drop_pct=1.0)["n_desaturation"] == 2
    assert "TST 3.0 min" in format_stats(s)


def test_no_sleep_no_rem_and_unscored_breathing():
    wake = sleep_stats(Hypnogram(np.zeros(10, dtype=int)))
    assert wake["tst_min"] == 0 and wake["se_pct"] == 0 and wake["sol_min"] is None
    assert wake["ahi"] is None and wake["rem_latency_min"] is None
    empty = sleep_stats(Hypnogram(np.full(4, IGNORE)))
    assert empty["tib_min"] == 0 and empty["se_pct"] is None
    no_rem = sleep_stats(Hypnogram(np.array([0, 2, 2, 3])))
    assert no_rem["rem_latency_min"] is None and no_rem["REM_pct"] == 0.0
    # a hypnogram-only scoring: breathing not scored -> AHI unknown, not 0
    assert no_rem["ahi"] is None and no_rem["odi"] is None and no_rem["arousal_index"] is None
    assert sleep_stats(Hypnogram(np.array([0, 2, 2, 3])), respiratory_scored=True)["ahi"] == 0.0
    with pytest.raises(ScoringError):
        sleep_stats(np.array([0, 1]))


def test_epoch_length_is_respected():
    s = sleep_stats(Hypnogram(np.array([0, 2, 2, 0]), epoch_s=20.0))
    assert s["tst_min"] == pytest.approx(40 / 60) and s["tib_min"] == pytest.approx(80 / 60)


# --------------------------------------------------------------------------- real scorings
NOX_SLEEP = {"N1", "N2", "N3", "REM"}
NOX_STAGES = NOX_SLEEP | {"Éveil"}
NOX_RESP = {"A. Obstructive", "A. Centrale", "A. Mixte", "Hypopnée"}


def _nox_independent(path: Path) -> tuple[float, int, int]:
    """(TST min, apnea+hypopnea rows whose start lies in a sleep row, all such rows) from raw text."""
    rows = [ln.split(",") for ln in codecs.decode(path.read_bytes(), "utf-16").splitlines()[2:] if ln.strip()]
    fmt = "%d/%m/%Y %H:%M:%S"
    sleep_starts = [datetime.strptime(r[0], fmt) for r in rows if r[2] in NOX_SLEEP]
    resp = [datetime.strptime(r[0], fmt) for r in rows if r[2] in NOX_RESP]
    sleep_set = {t.timestamp() for t in sleep_starts}
    t0 = min(datetime.strptime(r[0], fmt) for r in rows if r[2] in NOX_STAGES).timestamp()
    during = sum(1 for t in resp if t0 + 30 * math.floor((t.timestamp() - t0) / 30) in sleep_set)
    return len(sleep_starts) * 0.5, during, len(resp)


@pytest.mark.parametrize("suffix, ahi, readme_ahi", [("_2", 36.05, 36), ("_3", 16.60, 17)])
def test_noxturnal_ahi(suffix, ahi, readme_ahi):
    path = need(DATA / "nox-a1-psg-rsleep" / f"noxturnal_events_example_unicode{suffix}.csv")
    tst_min, during, total = _nox_independent(path)
    s = sleep_stats(*read_scoring(path))
    assert s["tst_min"] == tst_min
    assert s["n_apnea"] + s["n_hypopnea"] == during
    assert s["ahi"] == pytest.approx(during / (tst_min / 60))
    assert s["ahi"] == pytest.approx(ahi, abs=0.01)
    assert abs(s["ahi"] - readme_ahi) < 1.0      # "about 36" / "about 17" per hour of sleep
    assert during <= total


def test_noxturnal_2_all_statistics_pinned():
    path = need(DATA / "nox-a1-psg-rsleep" / "noxturnal_events_example_unicode_2.csv")
    s = sleep_stats(*read_scoring(path))
    got = {k: s[k] for k in ("tib_min", "tst_min", "sol_min", "waso_min", "rem_latency_min", "n_awakenings",
                             "n_apnea", "n_hypopnea", "n_desaturation")}
    assert got == {"tib_min": 424.0, "tst_min": 339.5, "sol_min": 35.0, "waso_min": 32.0,
                   "rem_latency_min": 61.0, "n_awakenings": 18, "n_apnea": 115, "n_hypopnea": 89,
                   "n_desaturation": 161}
    assert s["se_pct"] == pytest.approx(80.07, abs=0.01) and s["odi"] == pytest.approx(28.45, abs=0.01)


def test_profusion_ahi_from_raw_xml():
    path = need(DATA / "compumedics-xml-nsrr" / "20017.edf.XML")
    text = path.read_text(encoding="utf-8")
    codes = [int(x) for x in re.findall(r"<SleepStage>(\d+)</SleepStage>", text)]
    starts = [float(x) for x in re.findall(r"<ScoredEvent><Name>Hypopnea</Name><Start>([^<]*)</Start>", text)]
    in_sleep = sum(1 for t in starts if 1 <= codes[int(t // 30)] <= 5)
    tst_min = sum(1 <= c <= 5 for c in codes) * 0.5
    s = sleep_stats(*read_scoring(path))
    assert len(starts) == 103 and s["n_hypopnea"] == in_sleep == 98
    assert s["tst_min"] == tst_min == 400.5
    assert s["ahi"] == pytest.approx(98 / (400.5 / 60))          # 14.68 /h
    assert s["odi"] is None                                    # no desaturation scored in this file
    first_sleep = next(i for i, c in enumerate(codes) if c)
    assert s["sol_min"] == first_sleep * 0.5 == 124.5
    assert (s["se_pct"], s["waso_min"], s["rem_latency_min"]) == (pytest.approx(67.09, abs=0.01), 72.0, 126.5)


def test_dreams_and_sleep_edf_statistics_pinned():
    dreams = sleep_stats(*read_scoring(need(DATA / "dreams-subjects" / "HypnogramAASM_subject1.txt")))
    assert (dreams["tst_min"], dreams["sol_min"], dreams["waso_min"], dreams["rem_latency_min"]) == \
        (365.0, 71.0, 27.0, 130.0)
    assert dreams["tst_min"] == sum(dreams[f"{s}_min"] for s in ("N1", "N2", "N3", "REM"))
    assert dreams["ahi"] is None
    sc = sleep_stats(*read_scoring(need(DATA / "sleep-edf" / "SC4001EC-Hypnogram.edf")))
    # first sleep annotation ('Sleep stage 1') starts at 30630 s; REM at 35970 s (from the raw file)
    assert sc["sol_min"] == 30630 / 60 == 510.5
    assert sc["rem_latency_min"] == (35970 - 30630) / 60 == 89.0
    assert (sc["tst_min"], sc["waso_min"]) == (326.5, 34.0)
    assert sc["tib_min"] == 2650 * 0.5         # 2880 epochs minus the 230 trailing '?' epochs


def test_profusion_desaturation_drop_filters_odi(tmp_path):
    def desat(start, nadir, drop):
        return (f"<ScoredEvent><Name>SpO2 desaturation</Name><Start>{start}</Start><Duration>15</Duration>"
                f"<Input>SaO2</Input><LowestSpO2>{nadir}</LowestSpO2><Desaturation>{drop}</Desaturation></ScoredEvent>")
    doc = ('<?xml version="1.0" encoding="utf-8"?><CMPStudyConfig><EpochLength>30</EpochLength><ScoredEvents>'
           + desat(35, 90, 4) + desat(70, 93, 2) + desat(95, 88, 6.5) + desat(5, 91, 5)
           + "<ScoredEvent><Name>Obstructive Apnea</Name><Start>40</Start><Duration>12</Duration></ScoredEvent>"
           + "</ScoredEvents><SleepStages>" + "".join(f"<SleepStage>{c}</SleepStage>" for c in (0, 2, 2, 5))
           + "</SleepStages></CMPStudyConfig>")
    path = tmp_path / "x-profusion.xml"
    path.write_text(doc)
    hyp, events = read_scoring(path)
    assert [e.drop_pct for e in events if e.kind == "desaturation"] == [5.0, 4.0, 2.0, 6.5]
    s = sleep_stats(hyp, events)
    # sleep = epochs 1..3 (1.5 min = 0.025 h); the desat at 5 s is in wake, the 2 % one is below 3 %
    assert s["n_desaturation"] == 2 and s["odi"] == pytest.approx(2 / 0.025)
    assert s["ahi"] == pytest.approx(1 / 0.025)
    assert sleep_stats(hyp, events, odi_drop_pct=4.5)["n_desaturation"] == 1


def test_simulated_night_scoring_round_trip(tmp_path):
    """The simulator's EDF+ annotations and TSV sidecar read back to its truth; AHI from counts."""
    sim = pytest.importorskip("sleepedge.simulate")
    night = sim.simulate_night(hours=1.0, seed=3, ahi=30, montage="sleep-edf")
    edf, tsv = sim.write_night(night, tmp_path / "night.edf")
    truth = sorted((e.kind, round(e.onset_s, 2), round(e.duration_s, 2)) for e in night.events)
    for path in (edf, tsv):
        hyp, events = read_scoring(path)
        assert np.array_equal(hyp.stages, night.hypnogram.stages), path.name
        assert sorted((e.kind, round(e.onset_s, 2), round(e.duration_s, 2)) for e in events) == truth
    s = sleep_stats(*read_scoring(edf))
    tst_h = int(np.isin(night.hypnogram.stages, [1, 2, 3, 4]).sum()) * 30 / 3600
    resp = [e for e in night.events if e.kind in ("obstructive_apnea", "central_apnea", "mixed_apnea", "hypopnea")]
    in_sleep = sum(1 <= night.hypnogram.stages[int(e.onset_s // 30)] <= 4 for e in resp)
    assert s["ahi"] == pytest.approx(in_sleep / tst_h)
    assert abs(s["ahi"] - 30) < 3      # the simulator realises round(ahi x TST h) events
