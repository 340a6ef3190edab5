"""Score one EDF with GSSC, EEG only, as a user would (run in the bench venv).

    python bench/run_gssc.py NIGHT.edf OUT.json --eeg LABEL [--threads N]

Workarounds from ../shared/PEERS.md (GSSC 0.0.9):
- its own loader fails under torch >= 2.6 (`weights_only=True`): load the shipped `.pt`
  files with `weights_only=False` and pass them to `EEGInfer(net=..., con_net=...)`;
- a recording that is an exact multiple of 30 s loses its last epoch: append one sample;
- EEG only needs `eog=[]` with `eog_drop=True`;
- its 0.3-30 Hz filter skips channels not typed `eeg`: type the channel `eeg`.
GSSC resamples to 85.33 Hz itself (inside `prepare_inst`). Standalone: imports nothing from
sleepedge or bench.
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
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args()
    t = {}
    s = time.perf_counter()
    import contextlib
    import io
    from importlib.resources import files

    import mne
    import numpy as np
    import torch
    from gssc.infer import EEGInfer

    mne.set_log_level("ERROR")
    if a.threads:
        torch.set_num_threads(a.threads)
    t["import_s"] = time.perf_counter() - s
    s = time.perf_counter()
    nets = files("gssc.nets")
    net = torch.load(nets.joinpath("sig_net_v1.pt"), weights_only=False, map_location="cpu")
    con_net = torch.load(nets.joinpath("gru_net_v1.pt"), weights_only=False, map_location="cpu")
    with contextlib.redirect_stdout(io.StringIO()):
        infer = EEGInfer(net=net, con_net=con_net, use_cuda=False)
    t["load_s"] = time.perf_counter() - s
    s = time.perf_counter()
    raw = mne.io.read_raw_edf(a.edf, include=[a.eeg], preload=True, verbose=False)
    raw.set_channel_types({a.eeg: "eeg"})
    data = raw.get_data()
    n_epochs_full = data.shape[1] / raw.info["sfreq"] / 30.0
    if abs(n_epochs_full - round(n_epochs_full)) < 1e-9:   # exact multiple of 30 s: append one sample
        raw = mne.io.RawArray(np.concatenate([data, data[:, -1:]], axis=1), raw.info, verbose=False)
    t["read_s"] = time.perf_counter() - s
    s = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        stages, _times = infer.mne_infer(raw, eeg=[a.eeg], eog=[], eeg_drop=False, eog_drop=True)
    t["stage_s"] = time.perf_counter() - s
    t["total_in_process_s"] = time.perf_counter() - T0
    import gssc

    with open(a.out, "w") as fh:
        json.dump({"tool": "gssc", "version": getattr(gssc, "__version__", "0.0.9"),
                   "native_fs_hz": float(raw.info["sfreq"]), "channels": [a.eeg],
                   "torch_threads": torch.get_num_threads(),
                   "stages": [int(x) for x in np.asarray(stages).reshape(-1)], "timings": t}, fh)


if __name__ == "__main__":
    main()
