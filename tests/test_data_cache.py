"""`sleepedge data prepare`: layouts, arrays, identity with the runtime preprocessing,
incremental re-runs, corrupt files reported and skipped."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sleepedge.cli import app
from sleepedge.contract import IGNORE, ROLES
from train.cache import Cache, discover

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
runner = CliRunner()
STAGES_A = np.array([0, 0, 1, 2, 2, 2, 3, 3, 2, 4, 4, 2, 1, 0], dtype=np.int16)


@pytest.fixture(scope="module")
def sim_src(tmp_path_factory):
    from sleepedge.simulate import simulate_night, write_night

    src = tmp_path_factory.mktemp("src")
    nights = {}
    for i in range(2):
        night = simulate_night(seed=i, ahi=40.0, hypnogram=np.roll(STAGES_A, i), artefacts=False)
        write_night(night, src / f"subj{i}_night1.edf")
        nights[i] = night
    (src / "broken.edf").write_bytes(b"0       this is not an EDF header" + b"\0" * 100)
    (src / "broken.tsv").write_text("onset\tduration\tstage\tevent\n0\t30\tW\t\n")
    return src, nights


def test_prepare_simulated_nights(sim_src, tmp_path):
    from sleepedge.preprocess import PreprocessConfig, model_input, preprocess_arrays
    from sleepedge.scoring import events_to_epochs

    src, nights = sim_src
    cache = tmp_path / "cache"
    res = runner.invoke(app, ["data", "prepare", str(src), "-o", str(cache)])
    assert res.exit_code == 0, res.output
    assert "2 added, 0 unchanged, 1 failed" in res.output
    assert "broken" in res.output and "failed" in res.output

    idx = json.loads((cache / "index.json").read_text())
    assert [e["rec_id"] for e in idx["recordings"]] == ["subj0_night1", "subj1_night1"]
    assert idx["roles"] == list(ROLES)
    c = Cache(cache)
    assert c.subjects == ["subj0", "subj1"] and c.simulated
    rec = c.recording("subj0_night1")
    n = len(STAGES_A)
    assert rec.x.shape == (n, len(ROLES), 3000) and rec.x.dtype == np.float16
    assert isinstance(rec.x, np.memmap)
    assert rec.present.dtype == np.uint8 and rec.present.shape == (n, len(ROLES))
    assert rec.stages.dtype == np.int16 and np.array_equal(rec.stages, STAGES_A)
    ev = events_to_epochs(nights[0].events, n)
    assert rec.apnea.dtype == np.uint8 and np.array_equal(rec.apnea, ev["apnea"])
    assert np.array_equal(rec.hypopnea, ev["hypopnea"]) and (rec.apnea.sum() + rec.hypopnea.sum()) > 0
    meta = json.loads((cache / "subj0_night1" / "meta.json").read_text())
    assert meta["subject"] == "subj0" and meta["night"] == 1 and meta["simulated"] is True
    assert set(meta["sources"]) == {"subj0_night1.edf", "subj0_night1.tsv"} and len(meta["sources"]["subj0_night1.edf"]) == 64

    # the cache holds exactly what the runtime's preprocessing produces (float16 rounding aside)
    from sleepedge.edf import open_edf
    with open_edf(src / "subj0_night1.edf") as r:
        arrays = {role: r.read(lab) for role, lab in meta["channels"].items()}
        rates = {role: r.header.signal(lab).fs_hz for role, lab in meta["channels"].items()}
    data, q, roles = preprocess_arrays(arrays, rates, PreprocessConfig())
    x, present = model_input(data, q, roles, ROLES)
    np.testing.assert_allclose(np.asarray(rec.x, np.float32), x, atol=2e-2, rtol=2e-3)
    assert np.array_equal(rec.present, (present > 0.5).astype(np.uint8))

    # incremental: nothing redone; a changed scoring redoes only its recording
    mtime = (cache / "subj1_night1" / "x.npy").stat().st_mtime_ns
    res2 = runner.invoke(app, ["data", "prepare", str(src), "-o", str(cache)])
    assert "0 added, 2 unchanged, 1 failed" in res2.output
    assert (cache / "subj1_night1" / "x.npy").stat().st_mtime_ns == mtime
    tsv = src / "subj0_night1.tsv"
    backup = tsv.read_text()
    try:
        tsv.write_text(backup.replace("\tN3\t", "\tN2\t"))
        res3 = runner.invoke(app, ["data", "prepare", str(src), "-o", str(cache)])
        assert "1 added, 1 unchanged, 1 failed" in res3.output
        assert (cache / "subj1_night1" / "x.npy").stat().st_mtime_ns == mtime
        assert 3 not in set(np.load(cache / "subj0_night1" / "stages.npy").tolist())
    finally:
        tsv.write_text(backup)


def test_discover_known_layouts(tmp_path):
    for name in ("SC4011E0-PSG.edf", "SC4011EH-Hypnogram.edf", "SC4012E0-PSG.edf", "SC4012EC-Hypnogram.edf",
                 "ST7022J0-PSG.edf", "ST7022JM-Hypnogram.edf",
                 "edfs/shhs1-200001.edf", "annotations/shhs1-200001-nsrr.xml", "annotations/shhs1-200001-profusion.xml",
                 "generic/patient7.edf", "generic/patient7.xml", "generic/unscored.edf"):
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"0" * 256)
    recs, _ = discover(tmp_path)
    by = {r.rec_id: r for r in recs}
    assert sorted(by) == ["SC4011E0-PSG", "SC4012E0-PSG", "ST7022J0-PSG", "patient7", "shhs1-200001", "unscored"]
    assert (by["SC4011E0-PSG"].subject, by["SC4011E0-PSG"].night) == ("01", 1)
    assert by["SC4011E0-PSG"].scoring.name == "SC4011EH-Hypnogram.edf"
    assert (by["SC4012E0-PSG"].subject, by["SC4012E0-PSG"].night) == ("01", 2)
    assert by["ST7022J0-PSG"].subject == "ST02" and by["ST7022J0-PSG"].scoring.name == "ST7022JM-Hypnogram.edf"
    assert by["shhs1-200001"].subject == "200001" and by["shhs1-200001"].scoring.name == "shhs1-200001-nsrr.xml"
    assert by["patient7"].scoring.name == "patient7.xml" and by["patient7"].layout == "generic"
    assert by["unscored"].scoring is None


def test_prepare_real_sleep_edf_pair(tmp_path):
    d = SHARED / "sleep-edf"
    if not (d / "short_psg.edf").is_file():
        pytest.skip("../shared/data/sleep-edf not available")
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(d / "short_psg.edf", src / "SC4001E0-PSG.edf")
    shutil.copy(d / "SC4001EC-Hypnogram.edf", src / "SC4001EC-Hypnogram.edf")
    res = runner.invoke(app, ["data", "prepare", str(src), "-o", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    rec = Cache(tmp_path / "c").recording("SC4001E0-PSG")
    assert rec.subject == "00" and rec.n_epochs == 10          # 300 s of signal
    assert np.all(rec.stages == 0)                              # all wake, per the fixture's README
    assert rec.present[:, ROLES.index("EEG")].all() and not rec.present[:, ROLES.index("ECG")].any()
    assert np.isfinite(np.asarray(rec.x, np.float32)).all()


def test_prepare_errors(tmp_path):
    res = runner.invoke(app, ["data", "prepare", str(tmp_path), "-o", str(tmp_path / "c")])
    assert res.exit_code != 0
    assert "no EDF recordings found" in str(res.exception) or "no EDF recordings found" in res.output


def test_trim_wake_keeps_margin_around_sleep(sim_src, tmp_path):
    from train.cache import sleep_window

    st = np.array([IGNORE, 0, 0, 0, 0, 2, 3, 0, 4, 0, 0, 0, 0, IGNORE], dtype=np.int16)
    assert sleep_window(st, 2) == (3, 11)
    assert sleep_window(np.zeros(5, np.int16), 2) == (0, 5)
    src, _ = sim_src
    res = runner.invoke(app, ["data", "prepare", str(src), "-o", str(tmp_path / "c"), "--trim-wake-min", "0.5"])
    assert res.exit_code == 0, res.output
    rec = Cache(tmp_path / "c").recording("subj0_night1")
    a, b = sleep_window(STAGES_A, 1)
    assert np.array_equal(rec.stages, STAGES_A[a:b]) and rec.x.shape[0] == b - a
    meta = json.loads((tmp_path / "c" / "subj0_night1" / "meta.json").read_text())
    assert meta["first_epoch"] == a and meta["trim_wake_min"] == 0.5
