"""`sleepedge stream --lsl` against a real LSL outlet on 127.0.0.1 (LSLAPICFG pins liblsl to
loopback, set before pylsl is imported, here and in every subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LSLCFG = str(ROOT / "sleepedge" / "lsl" / "lsl_api.cfg")
os.environ["LSLAPICFG"] = LSLCFG  # before any pylsl import in this process

import pytest  # noqa: E402

from tests._bundle_fixture import build_bundle  # noqa: E402

pytestmark = pytest.mark.lsl
pylsl = pytest.importorskip("pylsl")

OUTLET = r"""
import os, sys, time
import numpy as np
import pylsl
name, n_epochs, gap_at_s, gap_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
fs = 100.0
labels = ["EEG Fpz-Cz", "EOG horizontal", "EMG submental", "ECG"]
info = pylsl.StreamInfo(name, "EEG", len(labels), fs, "float32", name + "-src")
chans = info.desc().append_child("channels")
for lab in labels:
    ch = chans.append_child("channel")
    ch.append_child_value("label", lab)
    ch.append_child_value("unit", "microvolts")
outlet = pylsl.StreamOutlet(info, chunk_size=100, max_buffered=600)
if not outlet.wait_for_consumers(60):
    sys.exit("no consumer")
time.sleep(0.3)
rng = np.random.default_rng(0)
total = int(n_epochs * 30 * fs)
t0 = pylsl.local_clock()
for start in range(0, total, 100):
    idx = np.arange(start, start + 100)
    keep = ~((idx >= gap_at_s * fs) & (idx < (gap_at_s + gap_s) * fs))  # a dropout: no samples
    if not keep.any():
        continue
    t = idx[keep] / fs
    x = np.stack([rng.normal(0, 20 + 10 * k, keep.sum()) + 30 * np.sin(2 * np.pi * (2 + k) * t)
                  for k in range(len(labels))], axis=1).astype(np.float32)
    outlet.push_chunk(x.tolist(), (t0 + t).tolist())
    time.sleep(0.002)
print("sent", flush=True)
time.sleep(float(os.environ.get("OUTLET_LINGER_S", "20")))
"""


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("b") / "fixture.sleepedge")


def test_lsl_stream_every_epoch_arrives_and_gap_is_flagged(bundle_dir, tmp_path):
    from runtime.sinks import read_rows

    env = dict(os.environ, LSLAPICFG=LSLCFG)
    name = f"sleepedge-test-{os.getpid()}"
    n_epochs = 4
    outlet = subprocess.Popen([sys.executable, "-c", OUTLET, name, str(n_epochs), "40", "6"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        r = subprocess.run(
            [sys.executable, "-m", "sleepedge", "stream", "--lsl", name, "--model", str(bundle_dir),
             "--out", str(tmp_path), "--format", "tsv,json", "--timeout-s", "3"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    finally:
        outlet.kill()
        outlet.wait(timeout=10)
    # the sender goes quiet after its 4 epochs (still connected): a stall, one line, non-zero exit,
    # and everything scored before it is on disk
    assert r.returncode == 2, r.stderr + r.stdout
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: LSL stream '{name}' sent no samples for 3 s")
    rows = read_rows(tmp_path / f"{name}.sleepedge.tsv")
    assert [float(x["onset"]) for x in rows] == [0.0, 30.0, 60.0, 90.0]
    # the 6-s dropout at 40 s is filled and flagged in epoch 1 only
    assert "gap" in rows[1]["quality"] and all("gap" not in rows[i]["quality"] for i in (0, 2, 3))
    assert r.stdout.count("epoch ") == n_epochs  # each epoch printed as it was scored
    assert "LSL stream" in r.stderr and "EEG Fpz-Cz" in r.stderr


def test_lsl_unlabelled_stream_by_index_and_stall_is_stream_error():
    from runtime.sources import LSLSource
    from sleepedge.errors import ChannelError, StreamError

    name = f"sleepedge-nolabel-{os.getpid()}"
    info = pylsl.StreamInfo(name, "EEG", 2, 100.0, "float32", name)
    outlet = pylsl.StreamOutlet(info)
    try:
        with pytest.raises(ChannelError, match="no channel labels"):
            LSLSource(name, {}, timeout_s=5)
        src = LSLSource(name, {"EEG": "1"}, timeout_s=1.0)
        assert src.labels == {"EEG": "#1"} and src.rates_hz == {"EEG": 100.0}
        outlet.push_chunk([[1.0, 2.0]] * 50)
        t0 = time.monotonic()
        got = []
        with pytest.raises(StreamError, match="sent no samples for 1 s"):
            for chunk in src:
                got.append(chunk.data["EEG"])
        assert time.monotonic() - t0 < 10
        assert sum(len(g) for g in got) == 50 and all((g == 2.0).all() for g in got)
        with pytest.raises(StreamError, match="no LSL stream named"):
            LSLSource("sleepedge-does-not-exist", {}, timeout_s=0.5)
        # a sender that goes away ends the stream normally (no error, no hang)
        src = LSLSource(name, {"EEG": "0"}, timeout_s=8.0)
        outlet.push_chunk([[3.0, 4.0]] * 20)
        it = iter(src)
        first = next(it).data["EEG"]
        del outlet
        t0 = time.monotonic()
        rest = [c.data["EEG"] for c in it]
        assert time.monotonic() - t0 < 8
        assert len(first) + sum(len(g) for g in rest) == 20 and (first == 3.0).all()
    finally:
        if "outlet" in locals():  # an assertion failed before the sender was closed
            del outlet
