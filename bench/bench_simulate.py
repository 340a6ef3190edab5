"""Bench of `sleepedge simulate`: time an 8-h 9-channel night and print every realism figure
measured against the real recordings in ../shared/data (see sleepedge/simulate/realism.py).

    .venv/bin/python bench/bench_simulate.py [--nights 12] [--hours 8]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from sleepedge.contract import STAGES


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nights", type=int, default=12)
    ap.add_argument("--hours", type=float, default=8.0)
    args = ap.parse_args()
    np.set_printoptions(precision=3, suppress=True, linewidth=120)

    from sleepedge.simulate import simulate_night

    t, c = time.perf_counter(), time.process_time()
    night = simulate_night(hours=8.0, seed=7, ahi=15.0)
    print(f"8-h default night ({len(night.signals)} channels, "
          f"{sum(x.size for x in night.signals.values()) / 1e6:.1f} M samples): "
          f"wall {time.perf_counter() - t:.1f} s, cpu {time.process_time() - c:.1f} s")

    from sleepedge.simulate.realism import SHARED_DATA, measure_all

    if not SHARED_DATA.exists():
        print(f"{SHARED_DATA} absent: realism figures skipped")
        return
    t = time.perf_counter()
    m = measure_all(n_nights=args.nights, hours=args.hours)
    print(f"realism measurement: {time.perf_counter() - t:.0f} s")
    z = m["spectral_z"]
    bands = ("delta", "theta", "alpha", "sigma", "beta")
    for ci, ch in enumerate(("Fpz-Cz", "Pz-Oz")):
        print(f"\n(1) spectral match {ch}: |mean_sim - mean_real| / sd_real (rows {STAGES}, cols {bands}); max {z[:, ci].max():.2f}")
        print(z[:, ci])
        print("    sim mean rel:"); print(m["sim_rel_mean"][:, ci])
        print("    real mean rel:"); print(m["real_rel_mean"][:, ci])
    zr = m["spectral_z_replayed"]
    print(f"\n(1b) spectral match of 6 replayed real test nights vs the same real nights: max {zr[:, :2].max():.2f}")
    print(zr[:, :2])
    for key in ("transfer_sampled", "transfer_replayed"):
        ct = m[key]
        print(f"\n(2) classifier transfer, {key}: A_real {ct['acc_real']:.3f} (n={ct['n_real_test_epochs']}), "
              f"A_sim {ct['acc_sim']:.3f} (n={ct['n_sim_epochs']}), diff {100 * (ct['acc_sim'] - ct['acc_real']):+.1f} pts, "
              f"mean row-L1 of normalised confusions {ct['confusion_l1']:.2f}")
        print("    recall real", ct["recall_real"], " recall sim", ct["recall_sim"])
        print("    confusion real (rows truth W..REM):"); print(ct["confusion_real"])
        print("    confusion sim:"); print(ct["confusion_sim"])
    hr, hs = m["hyp_real"], m["hyp_sim"]
    print("\n(3) hypnograms (pooled): proportion real", hr["proportion"], "sim", hs["proportion"])
    print("    rel. diff", (hs["proportion"] - hr["proportion"]) / hr["proportion"])
    print("    mean bout (epochs) real", hr["mean_bout_epochs"], "sim", hs["mean_bout_epochs"])
    print("    rel. diff", (hs["mean_bout_epochs"] - hr["mean_bout_epochs"]) / hr["mean_bout_epochs"])
    print("\n(4) respiration:")
    by_ahi: dict[float, list[float]] = {}
    ev = []
    for r in m["respiration"]:
        by_ahi.setdefault(r["ahi_requested"], []).append(r["ahi_realised"])
        ev += r["events"]
    for a, v in by_ahi.items():
        print(f"    AHI requested {a:g}: realised mean {np.mean(v):.2f} over {len(v)} nights ({np.round(v, 2)})")
    ap_ = [e for e in ev if e["kind"] != "hypopnea"]
    hy = [e for e in ev if e["kind"] == "hypopnea"]
    print(f"    {len(ap_)} apneas: measured drop min {min(e['drop'] for e in ap_):.3f}; "
          f"{len(hy)} hypopneas: drop {min(e['drop'] for e in hy):.3f}..{max(e['drop'] for e in hy):.3f}; "
          f"|claimed - measured| median {np.median([abs(e['drop'] - e['claimed_drop']) for e in ev]):.3f}")
    d = np.array([e["duration_s"] - e["claimed_duration_s"] for e in ev])
    print(f"    duration measured - claimed: median {np.median(d):.2f} s, within 4 s for {np.mean(np.abs(d) <= 4):.1%}")
    print(f"    desaturation after each event: min {min(e['desat'] for e in ev):.1f} %, median {np.median([e['desat'] for e in ev]):.1f} %, "
          f"nadir lag {min(e['lag_s'] for e in ev):.1f}..{max(e['lag_s'] for e in ev):.1f} s")


if __name__ == "__main__":
    main()
