"""Score one EDF with YASA's SleepStaging, as a user would (run in the bench venv, not sleepedge's).

    python bench/run_yasa.py NIGHT.edf OUT.json --eeg LABEL [--eog LABEL] [--emg LABEL]

Reads with MNE (only the channels it needs), resamples to 100 Hz first (../shared/PEERS.md:
YASA refuses <= 80 Hz and resamples internally anyway; the bench nights are 256 Hz), then
`SleepStaging(...).predict()`. Writes the predicted stages (0..4, W N1 N2 N3 REM) and an
in-process timing breakdown. Standalone: imports nothing from sleepedge or bench.
"""

from __future__ import annotations

import argparse
import json
import time

T0 = time.perf_counter()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("edf")
    ap.add_argument("out")
    ap.add_argument("--eeg", required=True)
    ap.add_argument("--eog")
    ap.add_argument("--emg")
    ap.add_argument("--fs", type=float, default=100.0)
    a = ap.parse_args()
    t = {}
    s = time.perf_counter()
    import mne
    import yasa

    mne.set_log_level("ERROR")
    t["import_s"] = time.perf_counter() - s
    chans = [c for c in (a.eeg, a.eog, a.emg) if c]
    s = time.perf_counter()
    raw = mne.io.read_raw_edf(a.edf, include=chans, preload=True, verbose=False)
    t["read_s"] = time.perf_counter() - s
    native = float(raw.info["sfreq"])
    s = time.perf_counter()
    if abs(native - a.fs) > 1e-6:
        raw.resample(a.fs, verbose=False)
    t["resample_s"] = time.perf_counter() - s
    s = time.perf_counter()
    sls = yasa.SleepStaging(raw, eeg_name=a.eeg, eog_name=a.eog, emg_name=a.emg)
    pred = sls.predict()
    t["stage_s"] = time.perf_counter() - s
    t["total_in_process_s"] = time.perf_counter() - T0
    # yasa >= 0.7 returns a yasa.Hypnogram (WAKE/N1/N2/N3/REM -> 0..4 via as_int()); older: strings
    if hasattr(pred, "as_int"):
        stages = [int(x) if 0 <= int(x) <= 4 else -100 for x in pred.as_int().to_numpy()]
    else:
        mapping = {"W": 0, "WAKE": 0, "N1": 1, "N2": 2, "N3": 3, "R": 4, "REM": 4}
        stages = [mapping.get(str(x), -100) for x in pred]
    with open(a.out, "w") as fh:
        json.dump({"tool": "yasa", "version": yasa.__version__, "native_fs_hz": native,
                   "channels": chans, "stages": stages, "timings": t}, fh)


if __name__ == "__main__":
    main()
