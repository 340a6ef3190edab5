"""`python -m bench --sections real`: sleepedge, YASA and GSSC on a REAL whole night.

The recording is Sleep-EDF SC4001E0 (22.1 h, 2,650 epochs; EEG Fpz-Cz, EEG Pz-Oz and EOG
horizontal at 100 Hz, respiration / EMG / temperature at 1 Hz) in `../shared/data/sleep-edf/`,
scored against its expert hypnogram SC4001EC, read with sleepedge's own
`sleepedge.scoring.read_scoring` (R&K S3+S4 -> N3; '?' and movement -> IGNORE, left out of
every metric). SC4001/SC4002 is the project's real TEST subject: this is a measurement only;
nothing is trained or tuned on it.

Each tool runs once per round as a whole process, as a user would run it:
- sleepedge: `sleepedge score PSG --out DIR --quiet` of the project venv with every output format
  (the CLI default tsv,csv,edf,json,png) and the chosen bundle (`--model`, default: the embedded
  one); stages are read back from the TSV by onset and checked against the JSON report;
- YASA 0.8.1: `run_yasa.py` with EEG Fpz-Cz + EOG horizontal (100 Hz: nothing is resampled);
- GSSC 0.0.9: `run_gssc.py` with EEG Fpz-Cz (PEERS.md workarounds; it resamples internally).

Scored spans: (a) the sleep period +-30 min: first to last non-wake scored epoch, extended by 60
epochs on each side and clipped to the recording (841 epochs on SC4001E0); (b) the whole
recording (every scored epoch). Metrics: Cohen's kappa, accuracy, macro-F1, per-stage F1 and the
confusion matrix (`bench.agreement`). Timing: wall = perf_counter around the whole process and
peak RSS exactly as the throughput section (`bench.common.run_timed`), plus user+system CPU
time of the process tree (an inner GNU `time`, or a getrusage wrapper without it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from bench import agreement as agr
from bench.common import GNU_TIME, REPO, _gnu_time_ok, run_timed, summarize

DATA_DIR = REPO.parent / "shared" / "data" / "sleep-edf"
PSG = DATA_DIR / "SC4001E0-PSG.edf"
HYPNOGRAM = DATA_DIR / "SC4001EC-Hypnogram.edf"
EEG, EOG = "EEG Fpz-Cz", "EOG horizontal"
EPOCH_S = 30.0
PAD_EPOCHS = 60                     # +-30 min around the sleep period
EXPECTED_SLEEP_PERIOD_EPOCHS = 841  # SC4001E0 (the figure; checked at run time)
# kappa on the 841-epoch sleep period measured by someone else on this machine (for comparison only)
REFERENCE_KAPPA = {"yasa": 0.716, "gssc": 0.859, "sleepedge (default bundle before this section)": 0.434}
STAGE_CHARS = "WN23R"               # per-epoch strings in the JSON: W N1(=N) N2 N3 REM, '.' = none
STAGES = ("W", "N1", "N2", "N3", "REM")

_CPU_WRAPPER = (
    "import resource,subprocess,sys\n"
    "rc=subprocess.call(sys.argv[2:])\n"
    "r=resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "open(sys.argv[1],'w').write('%f %f\\n'%(r.ru_utime,r.ru_stime))\n"
    "sys.exit(rc)\n"
)


# ----------------------------------------------------------------------------- reference & spans
def recording_epochs(psg: Path) -> tuple[int, object]:
    """(number of whole 30-s epochs, start datetime) of the recording, from sleepedge's reader."""
    from sleepedge.edf import open_edf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # SC4001E0 has one stray byte after the last record
        with open_edf(psg) as r:
            return int(r.header.duration_s // EPOCH_S), r.header.start


def reference_stages(hyp_path: Path, n_epochs: int, rec_start=None) -> tuple[np.ndarray, dict]:
    """Expert stages (0..4, IGNORE=-100) on the recording's epoch grid: the hypnogram read with
    `sleepedge.scoring.read_scoring`, shifted by its start offset and clipped / padded (IGNORE)
    to the recording's `n_epochs`."""
    from sleepedge.contract import IGNORE
    from sleepedge.scoring import read_scoring

    hyp, _events = read_scoring(hyp_path)
    stages = np.asarray(hyp.stages, dtype=np.int64)
    offset = 0
    if rec_start is not None and hyp.start is not None:
        off_s = (hyp.start - rec_start).total_seconds()
        if abs(off_s / EPOCH_S - round(off_s / EPOCH_S)) > 1e-6:
            raise ValueError(f"{hyp_path}: hypnogram starts {off_s} s after the recording, not on the 30-s grid")
        offset = int(round(off_s / EPOCH_S))
    ref = np.full(n_epochs, IGNORE, dtype=np.int64)
    src = stages[max(0, -offset):]
    dst0 = max(0, offset)
    n = max(0, min(n_epochs - dst0, src.size))
    ref[dst0:dst0 + n] = src[:n]
    beyond = stages[max(0, -offset) + n:]
    info = {"hypnogram_epochs": int(stages.size), "recording_epochs": int(n_epochs), "offset_epochs": offset,
            "hypnogram_epochs_beyond_recording": int(beyond.size),
            "scored_epochs_beyond_recording": int(((beyond >= 0) & (beyond < 5)).sum()),
            "ignored_epochs_in_recording": int(((ref < 0) | (ref > 4)).sum()),
            "stage_counts": {s: int((ref == i).sum()) for i, s in enumerate(STAGES)}}
    return ref, info


def sleep_period(ref: Sequence[int], pad: int = PAD_EPOCHS) -> tuple[int, int]:
    """[lo, hi) = first to last non-wake scored epoch (N1..REM), extended by `pad` epochs on each
    side and clipped to the recording."""
    ref = np.asarray(ref)
    sleep = np.flatnonzero((ref >= 1) & (ref <= 4))
    if sleep.size == 0:
        raise ValueError("no sleep epoch in the reference hypnogram")
    return max(0, int(sleep[0]) - pad), min(ref.size, int(sleep[-1]) + pad + 1)


def on_grid(pred: Sequence[int] | None, n_epochs: int) -> np.ndarray:
    """Predictions on the recording's epoch grid: cropped, or padded with -100 (no prediction)."""
    out = np.full(n_epochs, -100, dtype=np.int64)
    if pred is not None:
        p = np.asarray(pred, dtype=np.int64)[:n_epochs]
        out[:p.size] = p
    return out


def span_metrics(ref: Sequence[int], pred: Sequence[int], lo: int, hi: int) -> dict:
    """Agreement on epochs [lo, hi) that the expert scored (IGNORE left out). An epoch a tool left
    without a prediction is counted as WRONG (not dropped), so no tool gains by abstaining."""
    r = np.asarray(ref, dtype=np.int64)[lo:hi]
    p = np.asarray(pred, dtype=np.int64)[lo:hi]
    scored = (r >= 0) & (r < agr.N_STAGES)
    missing = scored & ((p < 0) | (p >= agr.N_STAGES))
    a = agr.agreement(r[scored & ~missing], p[scored & ~missing])
    n_scored = int(scored.sum())
    n_missing = int(missing.sum())
    if n_missing and a.get("accuracy") is not None:   # re-weight: missing predictions are errors
        cm = np.asarray(a["confusion"])
        po = np.trace(cm) / n_scored
        pe_rows = np.bincount(r[scored], minlength=agr.N_STAGES).astype(float)
        pe = float((cm.sum(0) * pe_rows).sum() / n_scored ** 2)
        a["accuracy"] = float(po)
        a["kappa"] = float((po - pe) / (1 - pe)) if pe < 1 else None
        a["note"] = "epochs without a prediction counted as errors (accuracy/kappa); F1 from predicted epochs"
    a.update({"span": [int(lo), int(hi)], "n_epochs": int(hi - lo), "n_scored": n_scored, "n_missing_pred": n_missing,
              "f1": {s: a["f1_per_stage"][i] for i, s in enumerate(STAGES)} if a.get("f1_per_stage") else None})
    return a


def stage_string(stages: Sequence[int]) -> str:
    """One character per epoch (W N 2 3 R; '.' for IGNORE / no prediction): compact, diffable."""
    return "".join(STAGE_CHARS[s] if 0 <= s < 5 else "." for s in (int(x) for x in stages))


# ------------------------------------------------------------------------------- tool outputs
def read_sleepedge_tsv(path: Path, n_epochs: int) -> np.ndarray:
    """Stages from `sleepedge score`'s TSV, placed by the onset column (seconds from recording start)."""
    idx = {s: i for i, s in enumerate(STAGES)}
    out = np.full(n_epochs, -100, dtype=np.int64)
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    head = lines[0].split("\t")
    c_on, c_st = head.index("onset"), head.index("stage")
    for ln in lines[1:]:
        row = ln.split("\t")
        if len(row) != len(head):
            continue
        k = int(round(float(row[c_on]) / EPOCH_S))
        if 0 <= k < n_epochs:
            out[k] = idx.get(row[c_st], -100)
    return out


def _cpu_seconds(path: Path) -> dict | None:
    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if re.match(r"^[\d.]+ [\d.]+$", ln.strip())]
        u, s = (float(x) for x in lines[-1].split())
        return {"user_s": u, "sys_s": s, "cpu_s": u + s}
    except (OSError, IndexError, ValueError):
        return None


def timed_with_cpu(name: str, cmd: Sequence[str], timeout: float = 1800) -> dict:
    """`bench.common.run_timed` (wall around the process, peak RSS of the largest process) around an
    inner GNU `time -f '%U %S'` (or a getrusage wrapper) that gives the tool tree's CPU seconds."""
    with tempfile.NamedTemporaryFile("r", suffix=".cpu", delete=False) as fh:
        cpu_file = fh.name
    inner = ([GNU_TIME, "-f", "%U %S", "-o", cpu_file] if _gnu_time_ok()
             else [sys.executable, "-c", _CPU_WRAPPER, cpu_file])
    load = [round(x, 2) for x in os.getloadavg()]
    try:
        r = run_timed(name, [*inner, *[str(c) for c in cmd]], timeout=timeout)
        cpu = _cpu_seconds(Path(cpu_file))
    finally:
        Path(cpu_file).unlink(missing_ok=True)
    return {"ok": r.ok, "returncode": r.returncode, "wall_s": r.wall_s, "peak_rss_mb": r.peak_rss_mb,
            **(cpu or {"user_s": None, "sys_s": None, "cpu_s": None}),
            "cpu_util": (cpu["cpu_s"] / r.wall_s) if cpu and r.wall_s else None, "loadavg_before": load,
            "cmd": [str(c) for c in cmd], "stderr_tail": "" if r.ok else r.stderr_tail[-1500:]}


# ------------------------------------------------------------------------------------ section
def tool_jobs(ctx: dict, tmp: Path) -> dict[str, dict]:
    """name -> {cmd, out} for every runnable tool."""
    jobs: dict[str, dict] = {}
    if ctx.get("bundle") is not None:
        se = ctx.get("sleepedge_cmd") or [sys.executable, "-m", "sleepedge"]   # __main__ passes its sleepedge_cmd()
        cmd = [*se, "score", str(PSG), "--out", str(tmp / "sleepedge"), "--quiet"]
        if ctx.get("bundle_kind") != "default":   # the embedded default: exactly what a user types
            cmd += ["--model", str(ctx["bundle"])]
        jobs["sleepedge"] = {"cmd": cmd, "out": tmp / "sleepedge"}
        # the same bundle without EOG (`--channel EOG=none`): the EEG-only figure users of 1-channel devices get
        eeg_only = [*se, "score", str(PSG), "--out", str(tmp / "sleepedge-eeg"), "--quiet", "--channel", "EOG=none",
                    "--format", "tsv,json", *cmd[len(se) + 5:]]
        jobs["sleepedge (EEG only)"] = {"cmd": eeg_only, "out": tmp / "sleepedge-eeg"}
    comp = ctx.get("competitors") or {}
    if comp.get("yasa") is None and ctx.get("bench_py"):
        out = tmp / "yasa.json"
        jobs["yasa"] = {"cmd": [ctx["bench_py"], str(REPO / "bench" / "run_yasa.py"), str(PSG), str(out),
                                "--eeg", EEG, "--eog", EOG], "out": out}
    if comp.get("gssc") is None and ctx.get("bench_py"):
        out = tmp / "gssc.json"
        jobs["gssc"] = {"cmd": [ctx["bench_py"], str(REPO / "bench" / "run_gssc.py"), str(PSG), str(out),
                                "--eeg", EEG], "out": out}
    return jobs


def collect(name: str, job: dict, n_epochs: int) -> tuple[np.ndarray | None, dict]:
    """Per-epoch predictions (recording grid) and what the tool says about its own run."""
    info: dict = {}
    if name.startswith("sleepedge"):
        tsvs = sorted(Path(job["out"]).glob("*.sleepedge.tsv"))
        if not tsvs:
            return None, {"error": "no TSV written"}
        pred = read_sleepedge_tsv(tsvs[0], n_epochs)
        info["outputs"] = sorted(p.name for p in Path(job["out"]).iterdir())
        js = tsvs[0].with_suffix(".json")
        if js.exists():
            rep = json.loads(js.read_text())
            info.update({k: rep.get(k) for k in ("roles_used", "missing_roles", "ignored_roles", "engine", "n_epochs")})
            info["model"] = {k: (rep.get("model") or {}).get(k) for k in ("name", "preset", "simulated")}
            pct = rep.get("stage_percent") or {}
            mine = {s: 100.0 * float(np.mean(pred[pred >= 0] == i)) for i, s in enumerate(STAGES)} if (pred >= 0).any() else {}
            info["tsv_matches_json"] = bool(pct) and all(abs(pct.get(s, -1) - mine.get(s, -2)) < 1e-6 for s in STAGES)
        return pred, info
    try:
        d = json.loads(Path(job["out"]).read_text())
    except (OSError, ValueError) as ex:
        return None, {"error": f"no output ({ex})"}
    info = {k: d.get(k) for k in ("version", "channels", "native_fs_hz", "torch_threads") if k in d}
    info["in_process_timings_s"] = d.get("timings")
    info["n_pred"] = len(d.get("stages") or [])
    return on_grid(d.get("stages"), n_epochs), info


def run_section(ctx: dict, log: Callable[[str], None] = print) -> dict:
    if not (PSG.exists() and HYPNOGRAM.exists()):
        return {"skipped": f"real data not found ({PSG.name} / {HYPNOGRAM.name} in ../shared/data/sleep-edf)"}
    n_epochs, rec_start = recording_epochs(PSG)
    ref, ref_info = reference_stages(HYPNOGRAM, n_epochs, rec_start)
    lo, hi = sleep_period(ref)
    log(f"real: SC4001E0 {n_epochs} epochs ({n_epochs * EPOCH_S / 3600:.2f} h); sleep period +-30 min = "
        f"epochs [{lo}, {hi}) = {hi - lo} epochs (expected {EXPECTED_SLEEP_PERIOD_EPOCHS})")
    tmp = Path(tempfile.mkdtemp(prefix="real-", dir=ctx["workdir"]))
    jobs = tool_jobs(ctx, tmp)
    rounds = max(1, int(ctx.get("real_runs", 1)))
    runs: dict[str, list[dict]] = {k: [] for k in jobs}
    for r in range(rounds):              # interleaved A B C A B C; predictions from the last round
        for name, job in jobs.items():
            if runs[name] and not runs[name][-1]["ok"]:
                continue
            if name.startswith("sleepedge"):
                shutil.rmtree(job["out"], ignore_errors=True)
            res = timed_with_cpu(name, job["cmd"])
            runs[name].append(res)
            log(f"  run {r + 1}/{rounds} {name:<10} wall {res['wall_s']:7.2f} s  CPU {res['cpu_s'] or float('nan'):7.2f} s  "
                f"peak RSS {res['peak_rss_mb'] or float('nan'):.0f} MB" + ("" if res["ok"] else f"  FAILED rc={res['returncode']}"))
    spans = {"sleep_period": (lo, hi), "whole_recording": (0, n_epochs)}
    out: dict = {
        "label": "REAL recording, expert hypnogram (Sleep-EDF SC4001E0 / SC4001EC; subject 0 = TEST subject, "
                 "measurement only)",
        "data": {"psg": f"../shared/data/sleep-edf/{PSG.name}", "hypnogram": f"../shared/data/sleep-edf/{HYPNOGRAM.name}",
                 **ref_info, "hours": n_epochs * EPOCH_S / 3600},
        "spans": {"sleep_period": {"epochs": [lo, hi], "n_epochs": hi - lo, "pad_epochs": PAD_EPOCHS,
                                   "expected_n_epochs": EXPECTED_SLEEP_PERIOD_EPOCHS,
                                   "matches_expected": hi - lo == EXPECTED_SLEEP_PERIOD_EPOCHS},
                  "whole_recording": {"epochs": [0, n_epochs], "n_epochs": n_epochs}},
        "channels": {"sleepedge": "auto (its own channel map; see tools.sleepedge.roles_used)",
                     "sleepedge (EEG only)": "auto EEG, --channel EOG=none",
                     "yasa": [EEG, EOG], "gssc": [EEG]},
        "rounds": rounds, "rss_method": "GNU /usr/bin/time -v" if _gnu_time_ok() else "getrusage wrapper",
        "reference_kappa_sleep_period": REFERENCE_KAPPA, "tools": {},
        "hypnograms": {"legend": "one char per 30-s epoch from recording start: W N(1) 2 3 R, '.' = IGNORE/none",
                       "expert": stage_string(ref)},
        "bundle_note": ctx.get("bundle_kind"),
    }
    for name, job in jobs.items():
        rr = runs[name]
        ok = [x for x in rr if x["ok"]]
        t: dict = {"runs": rr, "wall_s": summarize([x["wall_s"] for x in ok]),
                   "cpu_s": summarize([x["cpu_s"] for x in ok if x["cpu_s"] is not None]),
                   "peak_rss_mb": summarize([x["peak_rss_mb"] for x in ok if x["peak_rss_mb"] is not None])}
        if not ok:
            t["error"] = (rr[-1]["stderr_tail"].strip().splitlines() or ["?"])[-1] if rr else "not run"
            out["tools"][name] = t
            log(f"  {name}: FAILED {t['error']}")
            continue
        pred, info = collect(name, job, n_epochs)
        t.update(info)
        if pred is None:
            t["error"] = info.get("error", "no predictions")
        else:
            out["hypnograms"][name] = stage_string(pred)
            t["metrics"] = {k: span_metrics(ref, pred, a, b) for k, (a, b) in spans.items()}
            sp, wh = t["metrics"]["sleep_period"], t["metrics"]["whole_recording"]
            log(f"  {name}: sleep period kappa {_fmt(sp['kappa'])} acc {_fmt(sp['accuracy'])} MF1 {_fmt(sp['macro_f1'])}"
                f" | whole recording kappa {_fmt(wh['kappa'])} acc {_fmt(wh['accuracy'])} MF1 {_fmt(wh['macro_f1'])}")
        out["tools"][name] = t
    out["skipped"] = {k: v for k, v in (ctx.get("competitors") or {}).items() if v}
    if ctx.get("bundle") is None:
        out["skipped"]["sleepedge"] = "no bundle"
    shutil.rmtree(tmp, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------------- markdown
def _fmt(v, f="{:.3f}") -> str:
    return "-" if v is None else f.format(v)


def render_md(res: dict, provenance: str = "") -> str:
    """The section as markdown (written to results/real.md and appended to RESULTS.md)."""
    L: list[str] = ["## REAL whole night: Sleep-EDF SC4001E0 vs its expert hypnogram", ""]
    if provenance:
        L += [provenance, ""]
    if res.get("skipped") and isinstance(res["skipped"], str):
        return "\n".join(L + [f"Skipped: {res['skipped']}", ""]) + "\n"
    if res.get("error"):
        return "\n".join(L + [f"FAILED: {res['error']}", ""]) + "\n"
    d, sp = res["data"], res["spans"]
    L.append(f"{d['hours']:.2f} h, {d['recording_epochs']} epochs; expert stages read with `sleepedge.scoring.read_scoring` "
             f"(S3+S4 -> N3; {d['ignored_epochs_in_recording']} '?'/movement epochs = IGNORE, excluded). "
             f"Sleep period +-30 min: epochs {sp['sleep_period']['epochs'][0]}-{sp['sleep_period']['epochs'][1] - 1} = "
             f"{sp['sleep_period']['n_epochs']} epochs (expected {sp['sleep_period']['expected_n_epochs']}: "
             f"{'yes' if sp['sleep_period']['matches_expected'] else 'NO'}). SC4001 is the TEST subject: measured, never tuned on.")
    L.append("")
    L.append("| tool | channels | sleep period: kappa | acc | macro-F1 | whole 22 h: kappa | acc | macro-F1 | "
             "wall s | CPU s | peak RSS MB |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, t in res["tools"].items():
        ch = res["channels"].get(name)
        if name.startswith("sleepedge") and t.get("roles_used"):
            ch = ", ".join(f"{k}={v}" for k, v in t["roles_used"].items())
        ch = ", ".join(ch) if isinstance(ch, list) else ch
        if "metrics" not in t:
            L.append(f"| {name} | {ch} | FAILED: {str(t.get('error'))[:120]} | | | | | | | | |")
            continue
        a, b = t["metrics"]["sleep_period"], t["metrics"]["whole_recording"]
        L.append(f"| {name} | {ch} | {_fmt(a['kappa'])} | {_fmt(a['accuracy'])} | {_fmt(a['macro_f1'])} | "
                 f"{_fmt(b['kappa'])} | {_fmt(b['accuracy'])} | {_fmt(b['macro_f1'])} | "
                 f"{_fmt(t['wall_s'].get('median'), '{:.1f}')} | {_fmt(t['cpu_s'].get('median'), '{:.1f}')} | "
                 f"{_fmt(t['peak_rss_mb'].get('median'), '{:.0f}')} |")
    for name, why in (res.get("skipped") or {}).items():
        L.append(f"| {name} | | skipped: {why} | | | | | | | | |")
    L.append("")
    L.append("Per-stage F1 on the sleep period (W / N1 / N2 / N3 / REM):")
    L.append("")
    for name, t in res["tools"].items():
        f = ((t.get("metrics") or {}).get("sleep_period") or {}).get("f1")
        if f:
            L.append(f"- {name}: " + " / ".join(f"{f[s]:.2f}" for s in STAGES))
    L.append("")
    L.append("Reference kappas on the 841 epochs measured earlier by someone else on this machine: "
             + ", ".join(f"{k} {v}" for k, v in res.get("reference_kappa_sleep_period", {}).items()) + ".")
    L.append(f"Timing: {res['rounds']} round(s), whole processes (interpreter start, imports, model load, read, score, "
             f"write); wall = perf_counter around the process, CPU = user+system of the process tree, peak RSS from "
             f"{res['rss_method']}. sleepedge writes every output format (tsv,csv,edf,json,png). sleepedge model: "
             f"{res.get('bundle_note')}.")
    L.append("Per-epoch hypnograms of every tool and the confusion matrices are in `real.json`.")
    L.append("")
    return "\n".join(L) + "\n"
