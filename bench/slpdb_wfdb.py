"""The 18 real slpdb records (MIT-BIH Polysomnographic Database) read by `sleepedge.read_scoring`
(PhysioNet WFDB `.st` annotations, through the `wfdb` package): per record the epochs, stage
minutes and the AHI computed from them, plus what reading costs.

    python -m bench.slpdb_wfdb [--data ../shared/data/slpdb-annotations] [-o bench/results/slpdb_wfdb.json]

AHI = (apneas + hypopneas whose epoch is sleep) / TST hours (`sleepedge.stats.sleep_stats`).
slpdb gives no event times: each event token of an epoch's aux text is one event lasting that
epoch (see `sleepedge.scoring`, format "wfdb"), so this AHI counts marked epochs per hour of
sleep (an event across an epoch boundary may count twice, two events in one epoch written once
count once). Records whose file holds no respiratory annotation at all (slp41, slp45) get AHI
None, not 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "slpdb-annotations"


def run(data: Path) -> dict:
    t0 = time.perf_counter()
    import wfdb  # noqa: F401 - timed separately from parsing

    import_s = time.perf_counter() - t0
    from sleepedge.scoring import APNEA_KINDS, read_scoring
    from sleepedge.stats import sleep_stats

    records, parse_s = [], 0.0
    for path in sorted(data.glob("slp*.st")):
        t = time.perf_counter()
        hyp, events = read_scoring(path)
        parse_s += time.perf_counter() - t
        resp = [e for e in events if e.kind in APNEA_KINDS + ("hypopnea",)]
        st = sleep_stats(hyp, events, respiratory_scored=bool(resp) or None)
        lead = int(np.argmax(hyp.stages != -100))
        records.append({
            "record": path.stem,
            "epochs": hyp.n_epochs - lead,                # annotated 30-s epochs (one .st annotation each)
            "hypnogram_epochs": hyp.n_epochs,             # from the record start
            "leading_unannotated_epochs": lead,             # before the first annotation (slpdb starts some records later)
            "start": hyp.start.isoformat() if hyp.start else None,
            "stage_min": {s: st[f"{s}_min"] for s in ("W", "N1", "N2", "N3", "REM")},
            "unscored_min": st["ignore_min"],
            "tst_min": st["tst_min"],
            "events": {k: sum(e.kind == k for e in events) for k in ("obstructive_apnea", "central_apnea",
                                                                     "hypopnea", "arousal")},
            "events_in_sleep": {"apnea": st["n_apnea"], "hypopnea": st["n_hypopnea"]},
            "ahi": None if st["ahi"] is None else round(st["ahi"], 1),
        })
    return {"data": str(data), "n_records": len(records), "wfdb_import_s": round(import_s, 3),
            "parse_s_all_records": round(parse_s, 3), "records": records,
            "ahi_method": "apnea+hypopnea event tokens (one per epoch token, lasting the epoch) in sleep epochs / TST h"}


def table(res: dict) -> str:
    lines = ["| record | epochs | W | N1 | N2 | N3 | REM | unscored | TST min | AHI /h |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["records"]:
        m = r["stage_min"]
        lines.append(f"| {r['record']} | {r['epochs']} | {m['W']:g} | {m['N1']:g} | {m['N2']:g} | {m['N3']:g} | "
                     f"{m['REM']:g} | {r['unscored_min']:g} | {r['tst_min']:g} | "
                     f"{'n/a' if r['ahi'] is None else r['ahi']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("-o", "--out", type=Path, default=ROOT / "bench" / "results" / "slpdb_wfdb.json")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"error: {args.data}: no slpdb annotation folder", file=sys.stderr)
        return 2
    res = run(args.data)
    args.out.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    print(table(res))
    print(f"wfdb import {res['wfdb_import_s']} s; {res['n_records']} records parsed in {res['parse_s_all_records']} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
