"""Cohort scoring on a Dask LocalCluster against plain `sleepedge score`, side by side (issue 15).

    python -m bench.cohort                     # 40 simulated 1-h nights + the REAL SC4001E0 + 3 corrupted EDFs
    python -m bench.cohort --nights 6 --rounds 1 --hours 0.25     # a quick look

Per round, interleaved (whole processes, all output formats, the same 44 files):
  score-1t   `sleepedge score ALL --threads 1 -q`         (one process, one ORT thread: what a worker is)
  score      `sleepedge score ALL -q`                      (one process, every core)
  cohort-1   `sleepedge cohort score ALL --workers 1 -q`   (LocalCluster of 1 worker, cluster start included)
  cohort-2   `sleepedge cohort score ALL --workers 2 -q`
Then: every night's TSV/CSV/EDF+/PNG compared byte for byte with `score-1t`'s, epochs.parquet's stages with
the TSV; a run on 2 workers with one worker SIGKILLed mid-night (counts completed / retried / duplicated /
lost); a paper estimate for 10,000 8-h nights from the measured per-night cost.
Writes bench/results/cohort.json (--results to change).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from bench.common import REPO, RESULTS, git_commit, linear_fit, machine_info, run_timed, summarize, utc_now, write_json

REAL = REPO.parent / "shared" / "data" / "sleep-edf" / "SC4001E0-PSG.edf"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())}] {msg}", flush=True)


def make_inputs(d: Path, n: int, hours: float) -> list[Path]:
    from sleepedge.simulate import simulate_night, write_night

    d.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(n):
        p = d / f"sim{k:03d}.edf"
        if not p.exists():
            write_night(simulate_night(hours=hours, seed=1000 + k), p)
        files.append(p)
    if REAL.exists():
        link = d / REAL.name
        if not link.exists():
            link.symlink_to(REAL)
        files.append(link)
    # three corrupted nights: a truncated header, a text file, an empty file
    src = files[0].read_bytes()
    (d / "bad-truncated.edf").write_bytes(src[:4000])
    (d / "bad-text.edf").write_text("subject,stage\n1,W\n" * 50)
    (d / "bad-empty.edf").write_bytes(b"")
    files += [d / "bad-truncated.edf", d / "bad-text.edf", d / "bad-empty.edf"]
    for p in d.glob("*.tsv"):   # the simulator's truth sidecars are not inputs
        p.unlink()
    return files


def compare(a: Path, b: Path, names: list[str], fmts=("tsv", "csv", "edf", "png")) -> dict:
    same, differ = 0, []
    for stem in names:
        for f in fmts:
            pa_, pb = a / f"{stem}.sleepedge.{f}", b / f"{stem}.sleepedge.{f}"
            if pa_.exists() and pb.exists() and pa_.read_bytes() == pb.read_bytes():
                same += 1
            else:
                differ.append(f"{stem}.{f}")
    return {"files_identical": same, "files_differing": differ}


def stages_vs_tsv(out: Path) -> dict:
    import pandas as pd

    rows = pd.read_parquet(out / "cohort.parquet")
    ep = pd.read_parquet(out / "epochs.parquet")
    bad = 0
    for _, r in rows[rows.status == "ok"].iterrows():
        tsv = pd.read_csv(out / f"{r['stem']}.tsv", sep="\t")
        got = ep[ep.night == r["night"]].sort_values("epoch").stage_name.tolist()
        bad += got != tsv.stage.tolist()
    return {"nights_checked": int((rows.status == "ok").sum()), "nights_with_stage_mismatch": int(bad),
            "epoch_rows": int(len(ep)), "duplicate_epoch_rows": int(ep.duplicated(["night", "epoch"]).sum())}


def table_summary(out: Path) -> dict:
    import pandas as pd

    rows = pd.read_parquet(out / "cohort.parquet")
    ok = rows[rows.status == "ok"]
    per_worker = ok.groupby("pid").worker_peak_rss_mb.max()
    return {"rows": int(len(rows)), "ok": int(len(ok)), "error": int((rows.status == "error").sum()),
            "duplicate_nights": int(rows.night.duplicated().sum()),
            "errors": rows[rows.status == "error"][["name", "error"]].to_dict("records"),
            "sum_task_wall_s": float(ok.wall_s.sum()),
            "peak_rss_mb_per_worker": {str(k): round(float(v), 1) for k, v in per_worker.items()},
            "per_night": ok[["name", "duration_s", "n_epochs", "wall_s"]].to_dict("records")}


def kill_run(files: list[Path], out: Path, fmts: str, kill_after: int) -> dict:
    """2 workers; SIGKILL the worker of an in-flight night once `kill_after` nights are done."""
    import pandas as pd

    from sleepedge import cohort

    client, cluster = cohort._start_cluster(2, None)   # what `sleepedge cohort score --workers 2` starts
    try:
        pids = client.run(os.getpid)
        res: dict = {}
        th = threading.Thread(target=lambda: res.setdefault("run", cohort.run(files, out, client, formats=fmts)),
                              daemon=True)
        t0 = time.perf_counter()
        th.start()
        killed = None
        while th.is_alive() and killed is None:
            n_done = len(list((out / cohort.PARTS).glob("*.json"))) if (out / cohort.PARTS).exists() else 0
            busy = {a: ks for a, ks in client.processing().items() if ks and a in pids}
            if n_done >= kill_after and busy:
                addr, keys = next(iter(busy.items()))
                os.kill(pids[addr], signal.SIGKILL)
                killed = {"pid": pids[addr], "worker": addr, "nights_done_before": n_done,
                          "in_flight_keys": sorted(map(str, keys)), "at_s": round(time.perf_counter() - t0, 2),
                          "at_utc": cohort._utc()}
            time.sleep(0.02)
        th.join()
        wall = time.perf_counter() - t0
        _, counts = res["run"]
        rows = pd.read_parquet(out / cohort.TABLE)
        ep = pd.read_parquet(out / cohort.EPOCHS)
        names = {f.name for f in files}
        ok_names = set(rows[rows.status == "ok"].name)
        bad = {n for n in names if n.startswith("bad-")}
        return {"wall_s": wall, "killed": killed, "counts": counts, "rows": int(len(rows)),
                "nights_completed_ok": len(ok_names), "error_rows": int((rows.status == "error").sum()),
                "retried": len(killed["in_flight_keys"]) if killed else 0,
                "in_flight_finished_by_another_worker": int((rows[rows.stem.isin(
                    {cohort.task_stem(k) for k in killed["in_flight_keys"]})].pid != killed["pid"]).sum()) if killed else 0,
                "rows_by_killed_worker": int((rows.pid == killed["pid"]).sum()) if killed else 0,
                "rows_by_killed_worker_after_kill": int(((rows.pid == killed["pid"])
                                                         & (rows.finished_utc >= killed["at_utc"])).sum()) if killed else 0,
                "duplicates": int(rows.night.duplicated().sum() + rows.name.duplicated().sum()),
                "duplicate_epoch_rows": int(ep.duplicated(["night", "epoch"]).sum()),
                "lost": len(names - bad - ok_names),
                "workers_after": len(client.scheduler_info()["workers"])}
    finally:
        client.close()
        cluster.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nights", type=int, default=40)
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/sleepedge-bench-cohort"))
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--only", default="", help="comma list of runs (e.g. cohort-1,cohort-2): only those, "
                                               "timed and written to cohort_only.json (no equality / kill / estimate)")
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    log(f"inputs: {a.nights} x {a.hours:g}-h simulated nights + {REAL.name if REAL.exists() else 'no real night'} + 3 corrupted")
    files = make_inputs(a.workdir / "in", a.nights, a.hours)
    n_good = len(files) - 3
    exe = [sys.executable, "-m", "sleepedge"]
    args = [str(f) for f in files]
    jobs = {
        "score-1t": lambda o: exe + ["score", *args, "--out", str(o), "--threads", "1", "-q"],
        "score": lambda o: exe + ["score", *args, "--out", str(o), "-q"],
        "cohort-1": lambda o: exe + ["cohort", "score", *args, "--out", str(o), "--workers", "1", "-q"],
        "cohort-2": lambda o: exe + ["cohort", "score", *args, "--out", str(o), "--workers", "2", "-q"],
        # one night only: the fixed cost of each (process start, imports; + cluster start for cohort)
        "score-1t-one": lambda o: exe + ["score", args[0], "--out", str(o), "--threads", "1", "-q"],
        "cohort-1-one": lambda o: exe + ["cohort", "score", args[0], "--out", str(o), "--workers", "1", "-q"],
    }
    if a.only:
        jobs = {k: v for k, v in jobs.items() if k in a.only.split(",")}
    runs: dict[str, list] = {k: [] for k in jobs}
    tables: dict[str, list] = {k: [] for k in jobs if k.startswith("cohort")}
    outs = {}
    for r in range(a.rounds):
        for name, cmd in jobs.items():
            o = a.workdir / f"out-{name}-{r}"
            shutil.rmtree(o, ignore_errors=True)
            load = os.getloadavg()[0]
            res = run_timed(name, cmd(o), cwd=REPO, timeout=1800)
            res.load1 = load
            runs[name].append(res)
            outs[name] = o
            log(f"round {r}: {name}: {res.wall_s:.1f} s wall, CPU {res.cpu_s} s, peak RSS {res.peak_rss_mb} MB, rc {res.returncode}")
            if name.startswith("cohort"):
                tables[name].append(table_summary(o))
    med = {k: summarize([x.wall_s for x in v])["median"] for k, v in runs.items()}

    def run_rows(tail: bool = False) -> dict:
        """Every timed run as JSON (tail: with the end of its stderr)."""
        return {k: [{"wall_s": x.wall_s, "cpu_s": x.cpu_s, "peak_rss_mb": x.peak_rss_mb, "rc": x.returncode,
                     "loadavg_1min_before": getattr(x, "load1", None),
                     **({"stderr_tail": x.stderr_tail[-600:]} if tail else {})} for x in v] for k, v in runs.items()}

    if a.only:
        out = {"when": utc_now(), "commit": git_commit(), "machine": machine_info(), "only": a.only,
               "runs": run_rows(), "median_wall_s": med}
        if "cohort-1" in med and "cohort-2" in med:
            out["speedup cohort-2 vs cohort-1"] = med["cohort-1"] / med["cohort-2"]
            out["paired speed-ups"] = [x.wall_s / y.wall_s for x, y in zip(runs["cohort-1"], runs["cohort-2"])]
        path = write_json(a.results / "cohort_only.json", out)
        log(f"{out.get('median_wall_s')} speed-up {out.get('speedup cohort-2 vs cohort-1')} -> {path}")
        return 0
    stems = [f.stem for f in files if not f.name.startswith("bad-")]
    eq = {k: compare(outs["score-1t"], outs[k], stems) for k in ("score", "cohort-1", "cohort-2")}
    st = {k: stages_vs_tsv(outs[k]) for k in ("cohort-1", "cohort-2")}
    med_cpu = {k: summarize([x.cpu_s for x in v if x.cpu_s is not None]).get("median") for k, v in runs.items()}
    # per round, cohort-1 / score-1t (paired: the two ran back to back under the same load)
    paired = [c.wall_s / s_.wall_s for c, s_ in zip(runs["cohort-1"], runs["score-1t"])]
    # marginal cost of a night = (all files - one file) / (files - 1): the fixed costs (process, imports,
    # cluster start) cancel; per round, then the median
    n1 = len(files) - 1
    marg = {k: [(x.wall_s - y.wall_s) / n1 for x, y in zip(runs[k], runs[f"{k}-one"])] for k in ("score-1t", "cohort-1")}
    marg_cpu = {k: [(x.cpu_s - y.cpu_s) / n1 for x, y in zip(runs[k], runs[f"{k}-one"])] for k in ("score-1t", "cohort-1")}
    marg_ratio = [c / s_ for c, s_ in zip(marg["cohort-1"], marg["score-1t"])]
    marg_cpu_ratio = [c / s_ for c, s_ in zip(marg_cpu["cohort-1"], marg_cpu["score-1t"])]
    # cluster start + stop alone (no nights): the fixed cost of the engine
    start_cost = []
    from sleepedge.cohort import _start_cluster

    for _ in range(a.rounds):
        t0 = time.perf_counter()
        cl, c = _start_cluster(1, None)
        cl.close()
        c.close()
        start_cost.append(time.perf_counter() - t0)
    start_s = summarize(start_cost)["median"]
    base = med["score-1t"]
    overhead = {
        "cohort-1 vs score-1t, whole run (%)": 100.0 * (med["cohort-1"] - base) / base,
        "cohort-1 vs score-1t, per night (s)": (med["cohort-1"] - base) / len(files),
        "cluster start+stop alone (s)": start_s,
        "cohort-1 vs score-1t, excluding cluster start (%)": 100.0 * (med["cohort-1"] - start_s - base) / base,
        "cohort-1 / score-1t per round (paired)": paired,
        "cohort-1 vs score-1t, median of paired rounds (%)": 100.0 * (summarize(paired)["median"] - 1.0),
        "cohort-1 vs score-1t, CPU seconds (%)": 100.0 * (med_cpu["cohort-1"] - med_cpu["score-1t"]) / med_cpu["score-1t"],
        "fixed cost, one-night run (s): score-1t / cohort-1": [med["score-1t-one"], med["cohort-1-one"]],
        "marginal wall per night (s) per round": marg,
        "marginal CPU per night (s) per round": marg_cpu,
        "per-night overhead, marginal wall (%), median of rounds": 100.0 * (summarize(marg_ratio)["median"] - 1.0),
        "per-night overhead, marginal CPU (%), median of rounds": 100.0 * (summarize(marg_cpu_ratio)["median"] - 1.0),
        "marginal wall ratios per round": marg_ratio, "marginal CPU ratios per round": marg_cpu_ratio,
    }
    speedup = {"cohort-2 vs cohort-1": med["cohort-1"] / med["cohort-2"],
               "cohort-2 vs score-1t": base / med["cohort-2"], "cohort-2 vs score (all cores)": med["score"] / med["cohort-2"]}
    # per-night cost model from the 1-worker tables: task wall = a + b * hours (sim 1-h + real 22-h nights)
    per = [p for t in tables["cohort-1"] for p in t["per_night"]]
    fit = linear_fit([p["duration_s"] / 3600 for p in per], [p["wall_s"] for p in per])
    c8 = fit["intercept"] + 8 * fit["slope"]
    eff2 = speedup["cohort-2 vs cohort-1"] / 2
    paper = {"assumptions": "one single-threaded worker per core, 32 cores per node, each core as fast as one of "
                            "this machine's with the node to itself (no other load), I/O not the limit, +60 s of "
                            "cluster start; per 8-h night: the 1-worker fit's a + 8 b"}
    for nodes in (10, 100):
        cores = 32
        wall_h = 10_000 * c8 / (nodes * cores) / 3600 + 60 / 3600
        paper[f"{nodes} nodes x {cores} cores"] = {"wall_h": wall_h, "node_hours": wall_h * nodes,
                                                   "core_hours": 10_000 * c8 / 3600}
    log("kill run: 2 workers, one SIGKILLed mid-night")
    kout = a.workdir / "out-kill"
    shutil.rmtree(kout, ignore_errors=True)
    kill = kill_run(files, kout, "tsv,csv,edf,json,png", kill_after=max(2, n_good // 3))
    kill["equal_to_score_1t"] = compare(outs["score-1t"], kout, stems)
    result = {
        "when": utc_now(), "commit": git_commit(), "machine": machine_info(),
        "inputs": {"simulated_nights": a.nights, "hours": a.hours, "real": REAL.name if REAL.exists() else None,
                   "corrupted": 3, "files": len(files)},
        "runs": run_rows(tail=True),
        "median_wall_s": med, "median_cpu_s": med_cpu, "overhead": overhead, "speedup": speedup,
        "tables": {k: [{kk: vv for kk, vv in t.items() if kk != "per_night"} for t in v] for k, v in tables.items()},
        "equal_to_score_1t": eq, "epochs_parquet_vs_tsv": st,
        "per_night_cost_fit_1_worker": {**fit, "cost_8h_night_s": c8, "two_worker_efficiency": eff2},
        "paper_estimate_10000_8h_nights": paper, "kill": kill,
    }
    path = write_json(a.results / "cohort.json", result)
    log(f"medians {med}; overhead {overhead}; speed-up {speedup}; kill {kill}; -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
