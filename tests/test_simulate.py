"""Tests of the PSG simulator (sleepedge.simulate): real numbers, small nights, real fixtures
from ../shared/data where available (skipped cleanly when absent)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from sleepedge.contract import IGNORE
from sleepedge.simulate import SimulationError, read_truth_tsv, simulate_night, write_night

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def need(sub: str) -> Path:
    p = DATA / sub
    if not p.exists():
        pytest.skip(f"real fixture {p} not available (../shared/data absent)")
    return p


@pytest.fixture(scope="module")
def night1():
    return simulate_night(hours=1.0, seed=3, ahi=20.0)


def test_round_trip_edf_and_tsv(tmp_path, night1):
    from sleepedge.edf import open_edf
    from sleepedge.scoring import read_scoring

    edf, tsv = write_night(night1, tmp_path / "night.edf")
    assert tsv == tmp_path / "night.tsv"
    with open_edf(edf) as rd:
        assert "SIMULATED" in rd.header.recording
        assert [s.label for s in rd.header.signals] == list(night1.signals)
        for info in rd.header.signals:
            x = night1.signals[info.label]
            y = rd.read(info.label)
            q = (info.physical_max - info.physical_min) / (info.digital_max - info.digital_min)
            assert y.shape == x.shape
            assert np.abs(y - x).max() <= 0.51 * q
            assert info.fs_hz == night1.rates_hz[info.label]
    hyp, events = read_scoring(edf)
    np.testing.assert_array_equal(hyp.stages, night1.hypnogram.stages)
    assert sorted((round(e.onset_s, 2), e.kind) for e in events) == \
        sorted((round(e.onset_s, 2), e.kind) for e in night1.events)
    hyp2, events2 = read_truth_tsv(tsv)
    np.testing.assert_array_equal(hyp2.stages, night1.hypnogram.stages)
    assert [(e.onset_s, e.kind) for e in events2] == [(round(e.onset_s, 2), e.kind) for e in night1.events]
    hyp3, _ = read_scoring(tsv)  # the plain reader sees the exact hypnogram too
    np.testing.assert_array_equal(hyp3.stages, night1.hypnogram.stages)


def test_deterministic_bytes(tmp_path):
    a = simulate_night(hours=0.5, seed=11, ahi=10)
    b = simulate_night(hours=0.5, seed=11, ahi=10)
    c = simulate_night(hours=0.5, seed=12, ahi=10)
    pa, _ = write_night(a, tmp_path / "a.edf")
    pb, _ = write_night(b, tmp_path / "b.edf")
    pc, _ = write_night(c, tmp_path / "c.edf")
    h = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (pa, pb, pc)]
    assert h[0] == h[1] != h[2]


def test_roles_of_every_montage():
    from sleepedge.channels import assign_roles

    for montage in ("default", "variants"):
        for seed in range(4):
            n = simulate_night(hours=0.05, seed=seed, montage=montage, ahi=0)
            rm = assign_roles(list(n.signals))
            assert not rm.missing, (montage, seed, rm.describe())
            assert not rm.unassigned
    n = simulate_night(hours=0.05, seed=0, montage="sleep-edf")
    assert list(n.signals) == ["EEG Fpz-Cz", "EEG Pz-Oz", "EOG horizontal"]
    assert set(n.rates_hz.values()) == {100.0}


def test_bad_inputs_one_line_errors():
    with pytest.raises(SimulationError, match="montage 'sleep_edf'.*did you mean 'sleep-edf'"):
        simulate_night(hours=0.1, montage="sleep_edf")
    with pytest.raises(SimulationError, match="100-512"):
        simulate_night(hours=0.1, rates_hz={"EEG": 1000})
    with pytest.raises(SimulationError, match="hours"):
        simulate_night(hours=-1)
    with pytest.raises(SimulationError, match="ahi"):
        simulate_night(hours=0.1, ahi=500)


def test_cli_simulate(tmp_path):
    from typer.testing import CliRunner

    from sleepedge.cli import app

    out = tmp_path / "n.edf"
    r = CliRunner().invoke(app, ["simulate", "--hours", "0.2", "--seed", "7", "--ahi", "15", "-o", str(out),
                                 "--montage", "sleep-edf", "--eeg-rate", "128"])
    assert r.exit_code == 0, r.output
    assert out.exists() and out.with_suffix(".tsv").exists()
    assert "SIMULATED" in r.output
    r = CliRunner().invoke(app, ["simulate", "--hours", "0.2", "-o", str(out), "--montage", "nope"])
    assert r.exit_code != 0
