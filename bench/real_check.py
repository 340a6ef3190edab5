"""Score the only REAL expert-scored signals available here with a bundle, per role subset.

    python -m bench.real_check [BUNDLE]

- Sleep-EDF SC4001E0, first 300 s (`../shared/data/sleep-edf/short_psg.edf`): the expert scored
  all 10 epochs W. Scored with EEG, EEG+EOG and EEG+EOG+RESP (its EMG is a 1-Hz envelope).
- YASA's 30-s N3 EEG snippet (100 Hz), repeated three times (EEG only).
Tiny, but real: per DESIGN.md, real-recording checks decide, not simulated validation.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from runtime.scorer import StreamingScorer
from sleepedge.bundle import default_bundle_path, load_bundle
from sleepedge.edf import open_edf

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main(argv: list[str]) -> int:
    bundle = load_bundle(argv[0] if argv else default_bundle_path())
    psg = DATA / "sleep-edf" / "short_psg.edf"
    if not psg.exists():
        print(f"skipped: {psg} not found (the real fixtures live in ../shared/data)")
        return 0
    with open_edf(psg) as r:
        sig = {"EEG": r.read("EEG Fpz-Cz"), "EOG": r.read("EOG horizontal"), "RESP": r.read("Resp oro-nasal")}
        rate = {"EEG": r.header.signal("EEG Fpz-Cz").fs_hz, "EOG": r.header.signal("EOG horizontal").fs_hz,
                "RESP": r.header.signal("Resp oro-nasal").fs_hz}
    print(f"bundle {bundle.name}: {bundle.notice if bundle.simulated else 'trained on real data'}")
    for roles in (["EEG"], ["EEG", "EOG"], ["EEG", "EOG", "RESP"]):
        res = StreamingScorer(bundle, {k: rate[k] for k in roles}).push({k: sig[k] for k in roles})
        n_w = sum(x.stage == 0 for x in res)
        print(f"REAL Sleep-EDF SC4001 300 s (expert: {len(res)} x W), roles {'+'.join(roles)}: "
              f"{n_w}/{len(res)} scored W; predicted {[x.stage_name for x in res]}")
    n3 = np.loadtxt(DATA / "yasa-snippets" / "data_N3_no-spindles_30sec_100Hz.txt")
    res = StreamingScorer(bundle, {"EEG": 100.0}).push({"EEG": np.concatenate([n3, n3, n3])})
    print("REAL YASA N3 snippet x3 (EEG only): "
          + ", ".join(f"{x.stage_name} p(N3)={x.probs[3]:.2f}" for x in res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
