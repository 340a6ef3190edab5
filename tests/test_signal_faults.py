"""Signal faults inside VALID files: scored with per-epoch quality flags, never a crash, and
the JSON report counts them (flat lines, clipped rails, a channel that disconnects mid-night,
swapped units)."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from sleepedge.cli import app
from sleepedge.edf import SignalSpec, write_edf
from sleepedge.simulate import simulate_night
from tests._bundle_fixture import build_bundle


def test_faulty_night_is_scored_with_flags_counted(tmp_path):
    night = simulate_night(hours=1.0, seed=5, artefacts=False)
    sig = {k: v.copy() for k, v in night.signals.items()}
    role_label = {}
    for label, role in night.roles.items():
        role_label.setdefault(role, label)
    eeg, emg, ecg, eog = (role_label[r] for r in ("EEG", "EMG", "ECG", "EOG"))
    fs = night.rates_hz

    def span(label, m0, m1):
        return slice(int(m0 * 60 * fs[label]), int(m1 * 60 * fs[label]))

    sig[emg][span(emg, 10, 20)] = 0.0                           # flat line, 10 min
    rail = 0.5 * np.abs(sig[eeg]).max()
    seg = sig[eeg][span(eeg, 20, 25)]
    sig[eeg][span(eeg, 20, 25)] = np.clip(seg * 4, -rail, rail)  # clipped at the rails, 5 min
    sig[ecg][span(ecg, 40, 60)] = 0.0                           # disconnected from minute 40
    units = {label: night.units[label] for label in sig}
    units[eog] = "mV"                                           # swapped units: µV values labelled mV
    specs = [SignalSpec(label, fs[label], sig[label], unit=units[label]) for label in sig]
    edf = write_edf(tmp_path / "faulty.edf", specs)

    bundle = build_bundle(tmp_path / "fixture.sleepedge")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["score", str(edf), "--model", str(bundle), "--out", str(out),
                                 "--format", "tsv,json", "-q"])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "faulty.sleepedge.json").read_text())
    assert report["n_epochs"] == 120 and report["complete"] is True
    per_role = report["quality"]["per_role"]
    assert per_role["EMG"]["flat"] >= 19                      # 20 epochs flat (boundary epochs may differ)
    assert per_role["EEG"]["clipped"] >= 9                    # 10 epochs at the rails
    assert per_role["ECG"]["disconnected"] >= 39              # 40 epochs disconnected
    assert report["quality"]["epochs_with_any_flag"] >= 60
    rows = (out / "faulty.sleepedge.tsv").read_text().splitlines()[1:]
    assert len(rows) == 120
    assert all(np.isfinite(float(x)) for row in rows for x in row.split("\t")[3:8])
