"""Reliability measurements: SIGKILL survival + resume, concurrent load, memory vs night length.

    python -m bench.reliability [--kills 50] [--hours 2] [--concurrent 16] [--lengths 1,8,24,72]
                                [--model BUNDLE] [-o bench/results/reliability.json]

1. Kill-safety: `sleepedge stream --edf NIGHT --speed 0` is SIGKILLed `--kills` times, each after a
   random number of scored epochs (1 .. n-1) plus a random sub-epoch delay.
   After each kill the TSV/CSV must parse (every line complete, epochs 0..k-1 in order) and the
   EDF+ annotation file must open; every epoch the process had printed as scored must be on disk
   except at most the one in flight. Then `--resume` finishes the night and its TSV/CSV must
   equal an uninterrupted run's byte for byte.
2. Load: `--concurrent` processes of `sleepedge score` on different nights at once; outputs must
   equal one-at-a-time scoring; peak RSS per process (os.wait4's ru_maxrss).
3. Memory vs length: peak RSS and wall time of `sleepedge stream --speed 0` and `sleepedge score`
   for nights of each length in `--lengths` hours (default montage minus nothing: 9 channels).
Everything runs on SIMULATED nights; nothing here is an accuracy figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXE = [sys.executable, "-m", "sleepedge"]


def _run(cmd: list[str], **kw) -> tuple[int, float, float, str]:
    """Run to completion -> (returncode, wall_s, peak_rss_mb, stderr tail)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, time.perf_counter() - t0, ru.ru_maxrss / 1024.0, err[-400:]


def simulate(path: Path, hours: float, seed: int) -> Path:
    """A simulated recording; beyond 24 h (the simulator's longest night) consecutive 24-h
    nights of the 3-channel Sleep-EDF montage are joined into one multi-day EDF."""
    if hours > 24 and not path.exists():
        # built in a child process: Linux keeps a process's peak-RSS mark across exec, so a big
        # parent would inflate every measured child's ru_maxrss
        subprocess.run([sys.executable, "-c", "import sys; from bench.reliability import _multiday; "
                        "_multiday(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))", str(path), str(hours), str(seed)],
                       check=True)
        return path
    if not path.exists():
        subprocess.run(EXE + ["simulate", "--hours", str(hours), "--seed", str(seed), "--ahi", "15",
                              "-o", str(path)], check=True, stdout=subprocess.DEVNULL)
    return path


def _multiday(path: str, hours: float, seed: int) -> None:
    """Consecutive simulated 24-h recordings (3-channel Sleep-EDF montage) joined into one EDF."""
    import numpy as np

    from sleepedge.edf import SignalSpec, write_edf
    from sleepedge.simulate import simulate_night

    parts = [simulate_night(hours=24.0, seed=seed + k, montage="sleep-edf") for k in range(int(-(-hours // 24)))]
    n = {lab: int(hours * 3600 * fs) for lab, fs in parts[0].rates_hz.items()}
    specs = [SignalSpec(lab, fs, np.concatenate([p.signals[lab] for p in parts])[: n[lab]], unit=parts[0].units[lab])
             for lab, fs in parts[0].rates_hz.items()]
    del parts
    write_edf(Path(path), specs, recording="SIMULATED sleepedge multi-day reliability test")


def _model_args(model: str | None) -> list[str]:
    return ["--model", model] if model else []


def _tsv_rows(path: Path) -> list[list[str]]:
    """Rows of a TSV/CSV written by the runtime; raises if a line is incomplete or out of order."""
    sep = "\t" if path.suffix == ".tsv" else ","
    text = path.read_text()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    elif lines:
        raise ValueError(f"{path.name}: last line has no newline (partial write)")
    header, rows = lines[0].split(sep), [ln.split(sep) for ln in lines[1:]]
    for i, r in enumerate(rows):
        if len(r) != len(header):
            raise ValueError(f"{path.name}: row {i} has {len(r)} fields, header {len(header)}")
        if abs(float(r[0]) - 30.0 * i) > 1e-6:
            raise ValueError(f"{path.name}: row {i} onset {r[0]} is not {30 * i}")
    return rows


def kill_test(night: Path, n_kills: int, model: str | None, work: Path, seed: int = 0) -> dict:
    from sleepedge.edf import open_edf

    fmt = ["--format", "tsv,csv,edf,json"]
    ref = work / "ref"
    t0 = time.perf_counter()
    subprocess.run(EXE + ["stream", "--edf", str(night), "--speed", "0", "--out", str(ref), "-q"]
                   + fmt + _model_args(model), check=True, stdout=subprocess.DEVNULL)
    full_s = time.perf_counter() - t0
    stem = night.stem + ".sleepedge"
    ref_tsv, ref_csv = (ref / f"{stem}.tsv").read_bytes(), (ref / f"{stem}.csv").read_bytes()
    n_total = len(_tsv_rows(ref / f"{stem}.tsv"))
    rng = random.Random(seed)
    results = []
    for k in range(n_kills):
        out = work / f"kill{k:02d}"
        log = work / f"kill{k:02d}.log"
        # kill after a random number of scored epochs (1 .. n-1) plus a random sub-epoch delay,
        # so that every kill lands while the night is being scored, not during start-up
        target = rng.randint(1, n_total - 1)
        jitter = rng.uniform(0.0, 0.05)
        t0 = time.perf_counter()
        with open(log, "wb") as fh:
            p = subprocess.Popen(EXE + ["stream", "--edf", str(night), "--speed", "0", "--out", str(out)]
                                 + fmt + _model_args(model), stdout=fh, stderr=subprocess.STDOUT)
            while p.poll() is None and log.read_text(errors="replace").count("\nepoch ") < target:
                time.sleep(0.01)
            time.sleep(jitter)
            p.send_signal(signal.SIGKILL)
            p.wait()
        delay = time.perf_counter() - t0
        printed = sum(1 for ln in log.read_text(errors="replace").splitlines() if ln.startswith("epoch "))
        rec = {"kill_at_s": round(delay, 3), "target_epochs": target, "printed": printed}
        try:
            tsv = out / f"{stem}.tsv"
            rows = _tsv_rows(tsv) if tsv.exists() else []
            csv_rows = _tsv_rows(out / f"{stem}.csv") if (out / f"{stem}.csv").exists() else []
            rec["on_disk"] = len(rows)
            rec["lost"] = max(0, printed - len(rows))
            rec["csv_ok"] = len(csv_rows) == len(rows) or abs(len(csv_rows) - len(rows)) <= 1
            edf = out / f"{stem}.edf"
            if edf.exists():
                with open_edf(edf) as r:
                    rec["edf_annotations"] = len(r.header.annotations)
            rec["parse_ok"] = True
        except Exception as ex:  # the measurement records any parse failure as a failed kill
            rec["parse_ok"] = False
            rec["error"] = f"{type(ex).__name__}: {ex}"
        code, _, _, err = _run(EXE + ["stream", "--edf", str(night), "--speed", "0", "--out", str(out),
                                      "--resume", "-q"] + fmt + _model_args(model))
        rec["resume_rc"] = code
        rec["resume_equal"] = (code == 0 and (out / f"{stem}.tsv").read_bytes() == ref_tsv
                               and (out / f"{stem}.csv").read_bytes() == ref_csv)
        if code:
            rec["resume_err"] = err.strip().splitlines()[-1:] if err else []
        results.append(rec)
        print(f"kill {k:2d} at {delay:5.2f}s: printed {printed:4d} on disk {rec.get('on_disk', '?'):>4} "
              f"lost {rec.get('lost', '?')} parse {rec['parse_ok']} resume== {rec['resume_equal']}", flush=True)
    return {
        "night_epochs": n_total, "uninterrupted_s": round(full_s, 2), "kills": len(results),
        "survived": sum(r["parse_ok"] for r in results),
        "max_epochs_lost": max((r.get("lost", 10**9) for r in results), default=0),
        "resume_equal": sum(r["resume_equal"] for r in results),
        "runs": results,
    }


def load_test(nights: list[Path], model: str | None, work: Path) -> dict:
    seq = work / "seq"
    for n in nights:
        code, *_ = _run(EXE + ["score", str(n), "--out", str(seq), "--format", "tsv", "-q"] + _model_args(model))
        if code:
            raise SystemExit(f"sequential scoring of {n} failed")
    par = work / "par"
    t0 = time.perf_counter()
    procs = []
    for n in nights:
        procs.append(subprocess.Popen(EXE + ["score", str(n), "--out", str(par), "--format", "tsv", "-q"]
                                      + _model_args(model), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    rss, codes = [], []
    for p in procs:
        _, status, ru = os.wait4(p.pid, 0)
        codes.append(os.waitstatus_to_exitcode(status))
        rss.append(ru.ru_maxrss / 1024.0)
    wall = time.perf_counter() - t0
    same = all((seq / f"{n.stem}.sleepedge.tsv").read_bytes() == (par / f"{n.stem}.sleepedge.tsv").read_bytes()
               for n in nights)
    return {"processes": len(nights), "all_exit_0": all(c == 0 for c in codes), "identical_to_sequential": same,
            "wall_s": round(wall, 1), "peak_rss_mb_max": round(max(rss), 1),
            "peak_rss_mb_median": round(sorted(rss)[len(rss) // 2], 1)}


def length_test(lengths: list[float], model: str | None, work: Path) -> list[dict]:
    rows = []
    for h in lengths:
        night = simulate(work / f"len{h:g}h.edf", h, seed=100 + int(h))
        size_mb = night.stat().st_size / 1e6
        for mode in ("stream", "score"):
            out = work / f"len{h:g}h-{mode}"
            if mode == "stream":
                cmd = EXE + ["stream", "--edf", str(night), "--speed", "0", "--out", str(out), "-q",
                             "--format", "tsv,edf,json"]
            else:
                cmd = EXE + ["score", str(night), "--out", str(out), "-q", "--format", "tsv,edf,json"]
            code, wall, rss, err = _run(cmd + _model_args(model))
            rows.append({"hours": h, "mode": mode, "edf_mb": round(size_mb, 1), "rc": code,
                         "wall_s": round(wall, 2), "peak_rss_mb": round(rss, 1)})
            print(f"{h:5g} h {mode:6s}: {wall:7.2f} s, peak RSS {rss:6.1f} MB (EDF {size_mb:.0f} MB) rc={code}",
                  flush=True)
            if code:
                print(err, file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--hours", type=float, default=2.0, help="night length for the kill test")
    ap.add_argument("--edf", type=Path, default=None,
                    help="kill test on this recording instead of a simulated night (e.g. the real SC4001E0-PSG.edf)")
    ap.add_argument("--concurrent", type=int, default=16)
    ap.add_argument("--lengths", default="1,8,24,72")
    ap.add_argument("--model", default=None, help="bundle (default: the embedded model)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--skip", default="", help="comma list of kill,load,length to skip")
    ap.add_argument("-o", "--out", type=Path, default=Path(__file__).parent / "results" / "reliability.json")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="sleepedge-rel-"))
    work.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))

    def save() -> None:  # after every section: a failure later never loses what was measured
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))

    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
                    "note": ("kill test on the given recording, load/length tests on SIMULATED nights" if args.edf else
                             "SIMULATED nights") + "; reliability figures, not accuracy"}
    if "kill" not in skip:
        night = args.edf if args.edf is not None else simulate(work / "kill-night.edf", args.hours, seed=11)
        report["kill_recording"] = str(args.edf) if args.edf is not None else f"SIMULATED {args.hours:g} h night"
        report["kill"] = kill_test(night, args.kills, args.model, work)
        save()
    if "load" not in skip:
        nights = [simulate(work / f"load{i:02d}.edf", 1.0, seed=200 + i) for i in range(args.concurrent)]
        report["load"] = load_test(nights, args.model, work)
        print("load:", {k: v for k, v in report["load"].items()}, flush=True)
        save()
    if "length" not in skip:
        report["length"] = length_test([float(x) for x in args.lengths.split(",")], args.model, work)
    save()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
