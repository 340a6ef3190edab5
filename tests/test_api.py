"""The Python API (issue 16): sleepedge.score on a path, an MNE Raw and arrays gives the CLI's
numbers; Night's converters against the real pandas / YASA / MNE; stream; compare; one-line
errors for bad input and missing optional libraries; a light `import sleepedge`."""

from __future__ import annotations

import os
import pydoc
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

import sleepedge
from sleepedge.errors import SleepEdgeError

from tests._bundle_fixture import signals_for, write_test_edf

ROOT = Path(__file__).resolve().parents[1]
# one rate for every channel: MNE resamples mixed-rate EDFs to the highest rate on read
RATES = {"EEG Fpz-Cz": 100.0, "EOG horizontal": 100.0, "EMG submental": 100.0}
MINUTES = 14


@pytest.fixture(scope="module")
def edf(tmp_path_factory) -> Path:
    return write_test_edf(tmp_path_factory.mktemp("api") / "night.edf", minutes=MINUTES, seed=5, rates=RATES)


@pytest.fixture(scope="module")
def by_path(edf):
    return sleepedge.score(edf)


def _mapping_from_reader(path: Path) -> dict:
    from sleepedge.edf import open_edf

    with open_edf(path) as r:
        return {s.label: (r.read(s.label), s.fs_hz) for s in r.header.signals}


def _one_line(ex: BaseException) -> str:
    text = str(ex)
    assert "\n" not in text and text
    return text


# ----------------------------------------------------------------------------- the package surface
def test_import_is_light_and_public_names_resolve():
    code = ("import sys, sleepedge; heavy = {'sleepedge.api', 'pandas', 'mne', 'yasa', 'wfdb', 'torch', "
            "'onnxruntime', 'matplotlib', 'runtime.scorer'}; print(sorted(heavy & set(sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
    assert all(not n.startswith("_") for n in sleepedge.__all__)
    for name in sleepedge.__all__:
        obj = getattr(sleepedge, name)
        assert obj.__doc__ and obj.__doc__.strip(), name
    doc = pydoc.render_doc(sleepedge, renderer=pydoc.plaintext)
    for name in ("score", "stream", "compare", "Night", "Agreement", "read_scoring", "write_profusion_xml"):
        assert name in doc
    with pytest.raises(AttributeError):
        sleepedge.not_a_name  # noqa: B018
    for name in [n for n in dir(sleepedge.Night) if not n.startswith("_")]:
        assert getattr(sleepedge.Night, name).__doc__, name


# ----------------------------------------------------------------------------- parity
def test_path_raw_mapping_and_cli_give_the_same_night(edf, by_path, tmp_path):
    mne = pytest.importorskip("mne")
    from typer.testing import CliRunner

    from runtime.sinks import read_rows
    from sleepedge.cli import app

    n = MINUTES * 2
    assert len(by_path) == n and by_path.roles_used == {"EEG": "EEG Fpz-Cz", "EOG": "EOG horizontal"}
    raw = mne.io.read_raw_edf(edf, verbose="error")
    by_raw = sleepedge.score(raw)
    by_map = sleepedge.score(_mapping_from_reader(edf))
    for other in (by_raw, by_map):
        assert list(other.stages) == list(by_path.stages)
        assert np.abs(other.proba - by_path.proba).max() < 1e-6
        np.testing.assert_array_equal(other.onsets, by_path.onsets)
    assert by_raw.start == by_path.start                     # meas_date, naive like the EDF header
    # the CLI on the same file
    out = tmp_path / "cli"
    r = CliRunner().invoke(app, ["score", str(edf), "--out", str(out), "--format", "tsv", "--quiet"])
    assert r.exit_code == 0, r.output
    rows = read_rows(out / "night.sleepedge.tsv")
    assert [row["stage"] for row in rows] == list(by_path.stages)
    cli_p = np.array([[float(row[f"p_{s}"]) for s in ("W", "N1", "N2", "N3", "REM")] for row in rows])
    assert np.abs(cli_p - by_raw.proba).max() <= 5e-7 + 1e-12
    # Night.save uses the CLI's writers: the same TSV bytes
    paths = by_raw.save(tmp_path / "api", formats="tsv,json")
    assert paths["tsv"].name == "night.sleepedge.tsv"
    assert paths["tsv"].read_bytes() == (out / "night.sleepedge.tsv").read_bytes()


def test_mapping_with_mixed_rates_equals_the_edf(tmp_path):
    rates = {"EEG Fpz-Cz": 100.0, "EOG horizontal": 128.0, "ECG II": 256.0}
    path = write_test_edf(tmp_path / "mixed.edf", minutes=6, seed=2, rates=rates)
    a, b = sleepedge.score(path), sleepedge.score(_mapping_from_reader(path))
    assert list(a.stages) == list(b.stages) and np.array_equal(a.proba, b.proba)


REAL = ROOT.parent / "shared" / "data" / "sleep-edf" / "SC4001E0-PSG.edf"


@pytest.mark.skipif(not REAL.is_file(), reason=f"{REAL} not available (the real Sleep-EDF night)")
@pytest.mark.filterwarnings("ignore:.*read leniently")   # the known 1-byte quirk of this file
def test_real_night_first_hours_raw_equals_arrays():
    """MNE's reading of the real (1-byte-too-long) file == sleepedge's reader, through score()."""
    mne = pytest.importorskip("mne")
    from sleepedge.edf import open_edf

    raw = mne.io.read_raw_edf(REAL, verbose="error").crop(0, 3 * 3600, include_tmax=False)
    with open_edf(REAL) as r:
        arrays = {s.label: (r.read(s.label, 0, 3 * 3600), s.fs_hz) for s in r.header.signals}
    a, b = sleepedge.score(raw), sleepedge.score(arrays)
    assert len(a) == 360 and list(a.stages) == list(b.stages) and np.abs(a.proba - b.proba).max() < 1e-6


def test_mne_raw_array_uses_channel_types_and_volts():
    mne = pytest.importorskip("mne")
    sig = signals_for(8, seed=4, rates={"EEG Fpz-Cz": 100.0, "EOG horizontal": 100.0})
    data = np.stack([x for _, x in sig.values()])
    info = mne.create_info(["ch1", "ch2"], 100.0, ["eeg", "eog"])   # labels no table knows: types decide
    night = sleepedge.score(mne.io.RawArray(data * 1e-6, info, verbose="error"))
    assert night.roles_used == {"EEG": "ch1", "EOG": "ch2"}
    ref = sleepedge.score({"EEG Fpz-Cz": (data[0], 100.0), "EOG horizontal": (data[1], 100.0)})
    assert list(night.stages) == list(ref.stages) and np.abs(night.proba - ref.proba).max() < 1e-5
    raw = mne.io.RawArray(data * 1e-6, info, verbose="error")
    raw.info["bads"] = ["ch2"]                                       # MNE's bad channels are not used
    eeg_only = sleepedge.score(raw)
    assert eeg_only.roles_used == {"EEG": "ch1"} and any("ch2" in w for w in eeg_only.warnings)


def test_mne_bad_annotations_are_scored_as_gaps():
    """`BAD_*` spans of a Raw (MNE's way to mark artefacts) are NaN and flagged `gap`, as EDF+D holes
    are; epochs before the first span are unchanged (causal), other annotations are ignored."""
    mne = pytest.importorskip("mne")
    sig = signals_for(10, seed=5, rates={"EEG Fpz-Cz": 100.0, "EOG horizontal": 100.0})
    data = np.stack([x for _, x in sig.values()]) * 1e-6
    info = mne.create_info(list(sig), 100.0, ["eeg", "eog"])
    clean = sleepedge.score(mne.io.RawArray(data, info, verbose="error"))
    raw = mne.io.RawArray(data, info, verbose="error")
    raw.set_meas_date(datetime(2020, 1, 1, 22, 0, tzinfo=timezone.utc))
    raw.set_annotations(mne.Annotations([95.0, 100.0, 200.0, 300.0], [40.0, 10.0, 5.0, 30.0],
                                        ["BAD_movement", "bad_electrode", "Sleep stage W", "EDGE"],
                                        orig_time=raw.info["meas_date"]))
    night = sleepedge.score(raw)
    gap = [i for i, q in enumerate(night.quality) if "gap" in q]
    assert gap == [3, 4]                                   # [95, 135) s overlaps epochs 3 and 4
    assert any("BAD_* annotation span" in w and "40 s" in w for w in night.warnings)
    assert list(night.stages[:3]) == list(clean.stages[:3])
    assert np.array_equal(night.proba[:3], clean.proba[:3])
    assert "gap" not in "".join(clean.quality)
    cropped = sleepedge.score(raw.copy().crop(60.0, None))  # onsets count from the cropped Raw's first sample
    assert [i for i, q in enumerate(cropped.quality) if "gap" in q] == [1, 2]   # [35, 75) s


def test_channels_override_as_the_cli(edf, by_path):
    eeg_only = sleepedge.score(edf, channels={"EOG": "none"})
    assert eeg_only.roles_used == {"EEG": "EEG Fpz-Cz"} and eeg_only.missing_roles == ["EOG"]
    same = sleepedge.score(edf, channels=["EOG=none"])
    assert np.array_equal(same.proba, eeg_only.proba)
    assert not np.array_equal(eeg_only.proba, by_path.proba)
    with pytest.raises(SleepEdgeError) as ex:
        sleepedge.score(edf, channels={"EEG": "C4-M1"})
    assert "C4-M1" in _one_line(ex.value)


# ----------------------------------------------------------------------------- the Night
def test_night_fields_and_converters(edf, by_path):
    pd = pytest.importorskip("pandas")
    yasa = pytest.importorskip("yasa")
    mne = pytest.importorskip("mne")
    from matplotlib.figure import Figure

    night, n = by_path, MINUTES * 2
    assert night.proba.shape == (n, 5) and np.allclose(night.proba.sum(1), 1)
    assert set(night.stages) <= {"W", "N1", "N2", "N3", "REM"}
    assert list(night.stage_codes) == [("W", "N1", "N2", "N3", "REM").index(s) for s in night.stages]
    np.testing.assert_array_equal(night.onsets, np.arange(n) * 30.0)
    assert night.p_apnea is None and night.p_hypopnea is None and night.ahi is None
    assert "no trained apnea/hypopnea heads" in night.respiratory_reason
    assert night.quality.shape == (n,) and night.quality[0] == "ok"
    assert night.stats["tst_min"] == sum(night.stage_codes > 0) * 0.5
    assert night.model["name"] == "spectral-real-sedf78" and "Sleep-EDF" in night.model["training_data"]
    assert night.hypnogram.n_epochs == n and f"{n} epochs" in repr(night)
    df = night.to_dataframe()
    assert isinstance(df, pd.DataFrame) and len(df) == n and df.index.name == "epoch"
    assert list(df.columns[:8]) == ["onset", "duration", "stage", "p_W", "p_N1", "p_N2", "p_N3", "p_REM"]
    assert df["p_apnea"].isna().all() and (df["stage"].values == night.stages).all()
    y = night.to_yasa()
    assert isinstance(y, yasa.Hypnogram) and y.n_epochs == n
    assert list(y.hypno.values) == [{"W": "WAKE"}.get(s, s) for s in night.stages]
    np.testing.assert_allclose(y.proba.to_numpy(), night.proba)
    raw = mne.io.read_raw_edf(edf, verbose="error")
    raw.set_annotations(night.to_mne_annotations())
    events, ids = mne.events_from_annotations(raw, chunk_duration=30.0, verbose="error")
    assert len(events) == n
    back = {v: k for k, v in ids.items()}
    assert [back[e].replace("Sleep stage ", "").replace("R", "REM") for e in events[:, 2]] == list(night.stages)
    fig = night.plot()
    assert isinstance(fig, Figure) and len(fig.axes) == 2


def test_respiratory_heads_reported_with_the_sim_bundle():
    """The six-role simulated bundle on a recording with airflow >= 10 Hz + SpO2 >= 1 Hz:
    p_apnea/p_hypopnea are arrays, the AHI estimate is reported, the figure has the apnea panel."""
    rates = {"C4-M1": 100.0, "E1-M2": 100.0, "Chin EMG": 100.0, "ECG II": 100.0, "Airflow": 25.0}
    sig = {lab: (x, fs) for lab, (fs, x) in signals_for(10, seed=6, rates=rates).items()}
    sig["SpO2"] = (95 + np.random.default_rng(0).normal(0, 0.5, 600), 1.0)
    night = sleepedge.score(sig, model="synthsleepnet-tiny-sim", threads=1)
    assert night.p_apnea is not None and night.p_apnea.shape == (len(night),)
    assert np.all((night.p_hypopnea >= 0) & (night.p_hypopnea <= 1))
    assert night.report()["ahi_estimate"]["reported"] is True and night.respiratory_reason == ""
    assert night.model["simulated"] is True and "SIMULATED" in night.notice
    assert len(night.plot().axes) == 3


# ----------------------------------------------------------------------------- stream
def test_stream_matches_score(edf, by_path):
    results = list(sleepedge.stream(edf))
    assert [r.stage_name for r in results] == list(by_path.stages)
    assert np.abs(np.array([r.probs for r in results]) - by_path.proba).max() < 1e-5
    # any iterable of {role: samples} blocks (7-s chunks), rates given separately or in the blocks
    sig = _mapping_from_reader(edf)
    eeg, eog = sig["EEG Fpz-Cz"][0], sig["EOG horizontal"][0]
    blocks = ({"EEG": eeg[i:i + 700], "EOG": eog[i:i + 700]} for i in range(0, eeg.size, 700))
    by_blocks = list(sleepedge.stream(blocks, rates={"EEG": 100.0, "EOG": 100.0}))
    assert [r.stage_name for r in by_blocks] == list(by_path.stages)
    labelled = ({"EEG Fpz-Cz": (eeg[i:i + 550], 100.0)} for i in range(0, eeg.size, 550))
    assert len(list(sleepedge.stream(labelled))) == MINUTES * 2
    with pytest.raises(SleepEdgeError) as ex:
        list(sleepedge.stream([{"EEG": eeg[:100]}]))
    assert "rates=" in _one_line(ex.value)


@pytest.mark.lsl
def test_stream_from_an_lsl_inlet(tmp_path):
    """`stream("lsl:NAME")` against a real LSL outlet on 127.0.0.1 (tests.test_lsl's sender)."""
    pytest.importorskip("pylsl")
    from tests.test_lsl import LSLCFG, OUTLET

    env = dict(os.environ, LSLAPICFG=LSLCFG, OUTLET_LINGER_S="1")
    os.environ["LSLAPICFG"] = LSLCFG
    name = f"sleepedge-api-{os.getpid()}"
    outlet = subprocess.Popen([sys.executable, "-c", OUTLET, name, "3", "1000", "0"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        results = list(sleepedge.stream(f"lsl:{name}", timeout_s=10))
    finally:
        outlet.kill()
        outlet.wait(timeout=10)
    assert [r.index for r in results] == [0, 1, 2]
    assert all(abs(sum(r.probs) - 1) < 1e-6 and r.quality_str() == "ok" for r in results)


# ----------------------------------------------------------------------------- compare
def test_compare_hand_worked_and_equals_the_bench():
    from bench.agreement import agreement

    ref = [0, 0, 1, 2, 2, 3, 4, 4, -100, 2]
    pred = [0, 1, 1, 2, 3, 3, 4, 0, 2, 2]
    a = sleepedge.compare(ref, pred)
    assert a.n_epochs == 9 and a.accuracy == pytest.approx(6 / 9)
    assert a.confusion.sum() == 9 and a.confusion[0, 1] == 1 and a.confusion[4, 0] == 1
    assert a.f1["W"] == pytest.approx(0.5) and a.f1["N3"] == pytest.approx(2 / 3)
    b = agreement(ref, pred)
    assert (b["accuracy"], b["kappa"], b["macro_f1"]) == (a.accuracy, a.kappa, a.macro_f1)
    assert b["confusion"] == a.confusion.tolist()
    # labels, yasa-style names, and the table
    c = sleepedge.compare(["W", "N1", "REM", "?"], ["WAKE", "N1", "R", "N2"])
    assert c.n_epochs == 3 and c.accuracy == 1.0 and c.kappa == 1.0
    text = str(a)
    assert "kappa" in text and "confusion" in text and len(text.splitlines()) == 10
    assert sleepedge.compare([0, 0], [0, 0]).kappa is None
    assert sleepedge.compare([-100], [0]).accuracy is None


def test_compare_aligns_by_start_and_refuses_other_epoch_lengths(by_path):
    from datetime import timedelta

    from sleepedge.scoring import Hypnogram

    night_h = by_path.hypnogram
    later = Hypnogram(night_h.stages[3:], 30.0, night_h.start + timedelta(seconds=90), "later")
    a = sleepedge.compare(by_path, later)
    assert a.offset_epochs == 3 and a.accuracy == 1.0 and a.n_epochs == len(by_path) - 3
    with pytest.raises(SleepEdgeError) as ex:
        sleepedge.compare(night_h, Hypnogram(night_h.stages, 20.0, None, "x"))
    assert "epoch lengths differ" in _one_line(ex.value)
    with pytest.raises(SleepEdgeError) as ex:
        sleepedge.compare(night_h, Hypnogram(night_h.stages, 30.0, night_h.start + timedelta(seconds=45)))
    assert "whole number" in _one_line(ex.value)
    yasa = pytest.importorskip("yasa")
    assert isinstance(by_path.to_yasa(), yasa.Hypnogram)
    assert sleepedge.compare(by_path.to_yasa(), by_path).accuracy == 1.0


# ----------------------------------------------------------------------------- errors
def test_bad_input_is_one_line(tmp_path, edf):
    cases = [
        (lambda: sleepedge.score(tmp_path / "missing.edf"), "missing.edf"),
        (lambda: sleepedge.score(42), "int"),
        (lambda: sleepedge.score({"EEG": (np.zeros(6000), -1)}), "sample rate"),
        (lambda: sleepedge.score({"EEG": np.zeros(6000)}), "(samples, fs_hz)"),
        (lambda: sleepedge.score({"EEG": (np.zeros((2, 6000)), 100.0)}), "1-D"),
        (lambda: sleepedge.score({"Temp": (np.zeros(6000), 100.0)}), "--channel"),
        (lambda: sleepedge.score(edf, channels={"BRAIN": "x"}), "BRAIN"),
        (lambda: sleepedge.score(edf, model="no-such-model"), "no-such-model"),
        (lambda: sleepedge.compare(np.zeros((2, 2)), [0]), "1-D"),
        (lambda: sleepedge.compare(["W", "deep"], ["W", "W"]), "deep"),
    ]
    for call, word in cases:
        with pytest.raises(SleepEdgeError) as ex:
            call()
        assert word in _one_line(ex.value), (word, str(ex.value))


@pytest.mark.parametrize("module, call", [
    ("pandas", lambda n: n.to_dataframe()),
    ("yasa", lambda n: n.to_yasa()),
    ("mne", lambda n: n.to_mne_annotations()),
    ("pandas", lambda n: sleepedge.compare([0], [0]).to_dataframe()),
])
def test_missing_optional_library_is_one_line(monkeypatch, by_path, module, call):
    monkeypatch.setitem(sys.modules, module, None)   # as if not installed
    with pytest.raises(SleepEdgeError) as ex:
        call(by_path)
    text = _one_line(ex.value)
    assert module in text and "pip install 'sleepedge[notebook]'" in text


def test_missing_pylsl_names_the_lsl_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pylsl", None)
    with pytest.raises(SleepEdgeError) as ex:
        sleepedge.stream("lsl:nobody")
    assert "pip install 'sleepedge[lsl]'" in _one_line(ex.value)


def test_notebook_extra_lists_the_converters_libraries():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {d.split(">")[0].split("=")[0].split("[")[0] for d in extras["notebook"]}
    assert {"pandas", "mne", "yasa", "wfdb"} <= names
    dev = {d.split(">")[0].split("=")[0].split("[")[0] for d in extras["dev"]}
    assert {"pandas", "mne", "yasa", "wfdb"} <= dev
    base = " ".join(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    assert not any(lib in base for lib in ("pandas", "mne", "yasa", "wfdb", "torch"))
