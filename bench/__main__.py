"""`python -m bench`: sleepedge next to YASA and GSSC, side by side in one run.

    python -m bench                      # full run (8-h nights, 5 interleaved runs per tool)
    python -m bench --short              # CI smoke: 15-min night, 1 run, no competitors needed
    python -m bench --sections throughput,agreement --runs 7
    python -m bench --sections real      # REAL whole night (Sleep-EDF SC4001E0) vs its expert hypnogram

Sections: throughput (whole processes, interleaved A B C A B C, + a profile of sleepedge),
streaming (per-epoch latency, ORT vs torch eager), scaling (1..24-h nights, score and stream),
export (bundle manifests), training (tiny recipes on CPU), agreement (on SIMULATED nights),
real (all three tools on a REAL 22-h night against its expert hypnogram: bench/real_night.py).
Writes `<results>/<section>.json` and `<results>/RESULTS.md` (default `bench/results/`;
--short writes to `<workdir>/results-short/`, outside the repository).

YASA and GSSC run in a separate venv (`--bench-python`, default `.venv-bench/bin/python` in the
repository, or $SLEEPEDGE_BENCH_PYTHON) created with `pip install torch==2.13.0` then the `bench`
extra; when it is missing they are skipped with a "not installed" note.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import agreement as agr
from bench import real_night
from bench.common import (REPO, RESULTS, interleaved, linear_fit, machine_info, pkg_versions, rss_method,
                          run_timed, summarize, summarize_runs, utc_now, git_commit, write_json)
from bench.nights import make_night, simulator_available

SECTIONS = ("throughput", "streaming", "scaling", "export", "training", "agreement", "real")
NEEDS_NIGHT = ("throughput", "streaming")   # sections that use the simulated throughput night
MAIN_PKGS = ("sleepedge", "onnxruntime", "numpy", "scipy", "pyedflib", "torch", "onnx")
BENCH_PKGS = ("yasa", "gssc", "mne", "torch", "numpy", "scipy", "lightgbm", "scikit-learn", "numba", "antropy",
              "pandas", "psutil")
DEFAULT_BENCH_PY = str(REPO / ".venv-bench" / "bin" / "python")   # see bench/README.md


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------ setup
def find_bench_python(arg: str | None) -> str | None:
    cand = arg or os.environ.get("SLEEPEDGE_BENCH_PYTHON") or DEFAULT_BENCH_PY
    return cand if cand and Path(cand).exists() else None


def competitor_status(bench_py: str | None) -> dict:
    """tool -> None when runnable, else a reason ('not installed ...')."""
    if bench_py is None:
        why = "not installed (no bench venv; see bench/README.md)"
        return {"yasa": why, "gssc": why}
    code = ("import importlib.util,json;print(json.dumps({m: importlib.util.find_spec(m) is not None "
            "for m in ('yasa','gssc','mne','torch')}))")
    try:
        found = json.loads(subprocess.run([bench_py, "-c", code], capture_output=True, text=True, timeout=60).stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired) as ex:
        return {"yasa": f"bench python unusable ({ex})", "gssc": f"bench python unusable ({ex})"}
    out = {}
    out["yasa"] = None if found.get("yasa") and found.get("mne") else f"not installed in {bench_py}"
    out["gssc"] = None if found.get("gssc") and found.get("mne") and found.get("torch") else f"not installed in {bench_py}"
    return out


def resolve_bundle(arg: Path | None, workdir: Path) -> tuple[Path | None, str]:
    """(bundle path, kind): the given one, `random:<preset>` (exported here with random weights),
    the embedded default, or the torch-free test fixture."""
    if arg is not None and str(arg).startswith("random:"):
        name = str(arg).split(":", 1)[1]
        code = ("import sys; from pathlib import Path; from bench.streaming import export_random; "
                f"p, _ = export_random({name!r}, Path({str(workdir)!r}), log=lambda m: print(m, file=sys.stderr)); print(p)")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=1800)
        if r.returncode != 0:
            raise SystemExit(f"export of a random '{name}' bundle failed: {r.stderr[-1000:]}")
        return Path(r.stdout.strip().splitlines()[-1]), (f"{name} preset with RANDOM weights (exported by the bench; same "
                                                         "graphs and cost as a trained one, predictions meaningless)")
    if arg is not None:
        return arg, "given"
    try:
        from sleepedge.bundle import default_bundle_path

        p = default_bundle_path()
        if p.exists():
            return p, "default"
    except ImportError:
        pass
    fixture = REPO / "tests" / "_bundle_fixture.py"
    if fixture.exists() and importlib.util.find_spec("onnx") is not None:
        out = workdir / "fixture.sleepedge"
        if not out.exists():
            from tests._bundle_fixture import build_bundle  # run from the repository root

            build_bundle(out)
        return out, "FIXTURE (tests/_bundle_fixture.py: a tiny linear+recurrence graph, NOT SynthSleepNet)"
    return None, "none"


def bundle_summary(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        from sleepedge.bundle import load_bundle

        b = load_bundle(path)
    except Exception as ex:  # noqa: BLE001 - a summary must not stop the benchmark
        return {"path": str(path), "error": f"{type(ex).__name__}: {ex}"}
    m = b.manifest
    return {"path": str(path), "name": m.get("name"), "preset": (m.get("model") or {}).get("preset"),
            "family": (m.get("model") or {}).get("family"), "n_params": (m.get("model") or {}).get("n_params"),
            "simulated": b.simulated, "modalities": (m.get("signal") or {}).get("modalities"),
            "training_data": (m.get("provenance") or {}).get("data")}


def sleepedge_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "sleepedge"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "sleepedge"]


HEADLINE_FORMATS = "tsv,json"              # the headline: TSV + JSON report
ALL_FORMATS = "tsv,csv,edf,json,png"       # every output (reported beside it)
# the targets, checked by throughput/streaming/scaling (printed, saved in the JSON, never asserted in tests)
TARGETS = {"wall_vs_yasa_x": 10.0, "cpu_vs_yasa_x": 5.0, "peak_rss_mb": 150.0, "tiny_wall_vs_yasa_x": 3.0,
           "import_s": 0.35, "stream_p99_ms": 2.0}
TINY_NAME = "synthsleepnet-tiny-sim"       # the six-role simulated-trained SynthSleepNet tiny bundle (embedded)


def score_job(night, bundle: Path, out: Path, threads: int | None = None, formats: str | None = None) -> list[str]:
    path = night.path if hasattr(night, "path") else night
    cmd = [*sleepedge_cmd(), "score", str(path), "--model", str(bundle), "--out", str(out), "--quiet"]
    cmd += ["--format", formats] if formats else []
    return cmd + (["--threads", str(threads)] if threads else [])


def tiny_bundle() -> Path | None:
    try:
        from sleepedge.bundle import embedded_bundles

        return embedded_bundles().get(TINY_NAME)
    except (ImportError, AttributeError):
        return None


def precompile() -> str:
    """Byte-compile the project (what `pip install` does for a wheel): an editable checkout run with
    PYTHONDONTWRITEBYTECODE=1 would otherwise recompile ~0.1 s of sources in every process."""
    r = subprocess.run([sys.executable, "-m", "compileall", "-q", "sleepedge", "runtime"], cwd=REPO,
                       capture_output=True, text=True)
    return "byte-compiled sleepedge/ and runtime/ (as a wheel install is)" if r.returncode == 0 else \
        f"compileall failed: {r.stderr[-200:]}"


def stream_job(night, bundle: Path, out: Path) -> list[str]:
    return [*sleepedge_cmd(), "stream", "--edf", str(night.path), "--speed", "0", "--model", str(bundle),
            "--out", str(out), "--quiet"]


def yasa_job(bench_py: str, night, out_json: Path) -> list[str]:
    lab = night.labels
    cmd = [bench_py, str(REPO / "bench" / "run_yasa.py"), str(night.path), str(out_json), "--eeg", lab["EEG"]]
    if "EOG" in lab:
        cmd += ["--eog", lab["EOG"]]
    if "EMG" in lab:
        cmd += ["--emg", lab["EMG"]]
    return cmd


def gssc_job(bench_py: str, night, out_json: Path) -> list[str]:
    return [bench_py, str(REPO / "bench" / "run_gssc.py"), str(night.path), str(out_json), "--eeg", night.labels["EEG"]]


def sleepedge_stages(out_dir: Path) -> list[int] | None:
    tsvs = sorted(out_dir.glob("*.sleepedge.tsv"))
    if not tsvs:
        return None
    from sleepedge.contract import STAGES

    idx = {s: i for i, s in enumerate(STAGES)}
    rows = [ln.split("\t") for ln in tsvs[0].read_text().splitlines() if ln and not ln.startswith("#")]
    head = rows[0]
    col = head.index("stage")
    return [idx.get(r[col], -100) for r in rows[1:] if len(r) == len(head)]


def competitor_stages(path: Path) -> list[int] | None:
    try:
        return json.loads(path.read_text())["stages"]
    except (OSError, ValueError, KeyError):
        return None


def competitor_timings(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()).get("timings")
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------- sections
def _ratios(res: dict, runs: dict) -> None:
    """speed / CPU / RSS of every tool against YASA's medians of the same run (+ paired per round)."""
    ya = res["tools"].get("yasa", {})
    base, base_cpu = ya.get("wall_s", {}).get("median"), ya.get("cpu_s", {}).get("median")
    rss_base = ya.get("peak_rss_mb", {}).get("median")
    for name, t in res["tools"].items():
        med, cpu = t.get("wall_s", {}).get("median"), t.get("cpu_s", {}).get("median")
        t["speedup_vs_yasa"] = (base / med) if base and med else None
        t["cpu_vs_yasa"] = (base_cpu / cpu) if base_cpu and cpu else None    # x less CPU than YASA
        if base and name != "yasa" and runs.get("yasa"):
            paired = [y.wall_s / s.wall_s for y, s in zip(runs["yasa"], runs[name]) if y.ok and s.ok]
            t["speedup_vs_yasa_paired"] = summarize(paired)
            pc = [y.cpu_s / s.cpu_s for y, s in zip(runs["yasa"], runs[name]) if y.ok and s.ok and y.cpu_s and s.cpu_s]
            t["cpu_vs_yasa_paired"] = summarize(pc)
        rss = t.get("peak_rss_mb", {}).get("median")
        t["rss_vs_yasa"] = (rss / rss_base) if rss and rss_base else None


def _summaries(runs: dict, res: dict) -> None:
    for name, rr in runs.items():
        res["tools"][name] = {**summarize_runs(rr), "cmd": rr[0].cmd if rr else None,
                              "walls_s": [r.wall_s for r in rr], "cpus_s": [r.cpu_s for r in rr],
                              "rss_mb": [r.peak_rss_mb for r in rr]}


def _target(name: str, value, goal: float, higher_is_better: bool, what: str) -> dict:
    met = None if value is None else (value >= goal if higher_is_better else value <= goal)
    return {"target": name, "what": what, "value": value, "goal": goal,
            "goal_text": f"{'>=' if higher_is_better else '<='} {goal:g}", "met": met}


def _log_target(t: dict) -> None:
    v = t["value"]
    verdict = "not measured" if t["met"] is None else "MET" if t["met"] else "NOT MET"
    log(f"  TARGET {t['target']}: {'-' if v is None else f'{v:.3g}'} (goal {t['goal_text']}) {verdict}")


def section_throughput(ctx: dict) -> dict:
    """Whole processes, interleaved rounds: `sleepedge score` (TSV+JSON = the headline; all outputs;
    the six-role tiny bundle), `import sleepedge.cli`, `sleepedge score --help`, YASA and GSSC on the
    simulated night; then sleepedge (TSV+JSON and all outputs) and YASA on the REAL 22-h night."""
    night = ctx["night"]
    tmp = Path(tempfile.mkdtemp(prefix="throughput-", dir=ctx["workdir"]))
    status = ctx["competitors"]
    jobs: dict[str, list[str] | None] = {}
    outs: dict[str, Path] = {}
    tiny = tiny_bundle()
    if ctx["bundle"] is not None:
        outs["sleepedge"] = tmp / "sleepedge"
        jobs["sleepedge"] = score_job(night, ctx["bundle"], outs["sleepedge"], formats=HEADLINE_FORMATS)
        jobs["sleepedge all outputs"] = score_job(night, ctx["bundle"], tmp / "sleepedge_all", formats=ALL_FORMATS)
        if tiny is not None and Path(tiny).resolve() != Path(ctx["bundle"]).resolve():
            jobs[f"sleepedge {TINY_NAME}"] = score_job(night, tiny, tmp / "sleepedge_tiny", formats=HEADLINE_FORMATS)
        for th in ctx["extra_threads"]:   # optional extra rows: the same command with --threads N
            jobs[f"sleepedge --threads {th}"] = score_job(night, ctx["bundle"], tmp / f"sleepedge_t{th}", th,
                                                          formats=HEADLINE_FORMATS)
        jobs["import sleepedge.cli"] = [sys.executable, "-c", "import sleepedge.cli"]
        jobs["sleepedge score --help"] = [*sleepedge_cmd(), "score", "--help"]
    if status["yasa"] is None:
        outs["yasa"] = tmp / "yasa.json"
        jobs["yasa"] = yasa_job(ctx["bench_py"], night, outs["yasa"])
    if status["gssc"] is None:
        outs["gssc"] = tmp / "gssc.json"
        jobs["gssc"] = gssc_job(ctx["bench_py"], night, outs["gssc"])
    log(f"throughput: {night.hours:g}-h night, {ctx['runs']} interleaved rounds of {list(jobs)}")
    runs = interleaved(jobs, ctx["runs"], log=log)
    res: dict = {"night": night.to_dict(), "runs_per_tool": ctx["runs"], "order": list(jobs),
                 "formats": {"sleepedge": HEADLINE_FORMATS, "sleepedge all outputs": ALL_FORMATS},
                 "tiny_bundle": str(tiny) if tiny else None, "rss_method": rss_method(), "tools": {},
                 "skipped": {k: v for k, v in status.items() if v}, "precompile": ctx.get("precompile")}
    _summaries(runs, res)
    # predictions of the last run of each tool -> agreement on this night
    preds = {}
    if "sleepedge" in outs:
        preds["sleepedge"] = sleepedge_stages(outs["sleepedge"])
    for t in ("yasa", "gssc"):
        if t in outs:
            preds[t] = competitor_stages(outs[t])
            tm = competitor_timings(outs[t])
            if tm and t in res["tools"]:
                res["tools"][t]["in_process_timings_last_run_s"] = tm
    ctx["preds"][night.path.name] = {"night": night, "preds": preds}
    _ratios(res, runs)
    if ctx["bundle"] is not None and not ctx["short"]:
        res["real_night"] = real_night_throughput(ctx, tmp)
    res["targets"] = throughput_targets(res)
    for t in res["targets"]:
        _log_target(t)
    # where sleepedge spends its time
    if ctx["bundle"] is not None:
        res["profile"] = profile_sleepedge(ctx, night, tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    return res


def real_night_throughput(ctx: dict, tmp: Path) -> dict:
    """sleepedge (TSV+JSON, all outputs) and YASA (EEG Fpz-Cz + EOG horizontal, 100 Hz) on the REAL
    22-h Sleep-EDF night, whole processes interleaved (speed only; accuracy: --sections real)."""
    psg = real_night.PSG
    if not psg.exists():
        return {"skipped": f"{psg.name} not found (../shared/data absent)"}
    jobs = {"sleepedge": score_job(psg, ctx["bundle"], tmp / "real_se", formats=HEADLINE_FORMATS),
            "sleepedge all outputs": score_job(psg, ctx["bundle"], tmp / "real_se_all", formats=ALL_FORMATS)}
    if ctx["competitors"]["yasa"] is None:
        jobs["yasa"] = [ctx["bench_py"], str(REPO / "bench" / "run_yasa.py"), str(psg), str(tmp / "real_yasa.json"),
                        "--eeg", real_night.EEG, "--eog", real_night.EOG]
    n = max(1, min(ctx["runs"], ctx.get("real_throughput_runs", 3)))
    log(f"throughput (REAL night {psg.name}, 22 h at 100 Hz): {n} interleaved rounds of {list(jobs)}")
    runs = interleaved(jobs, n, log=log)
    res: dict = {"edf": f"../shared/data/sleep-edf/{psg.name}", "runs_per_tool": n, "tools": {}}
    _summaries(runs, res)
    _ratios(res, runs)
    return res


def throughput_targets(res: dict) -> list[dict]:
    tools = res.get("tools", {})
    se, tiny = tools.get("sleepedge", {}), tools.get(f"sleepedge {TINY_NAME}", {})
    imp, hlp = tools.get("import sleepedge.cli", {}), tools.get("sleepedge score --help", {})
    rn = (res.get("real_night") or {}).get("tools", {}).get("sleepedge", {})
    return [
        _target("8-h wall vs YASA", se.get("speedup_vs_yasa"), TARGETS["wall_vs_yasa_x"], True,
                "YASA median wall / sleepedge score (TSV+JSON) median wall"),
        _target("8-h CPU vs YASA", se.get("cpu_vs_yasa"), TARGETS["cpu_vs_yasa_x"], True,
                "YASA median CPU s / sleepedge median CPU s"),
        _target("8-h peak RSS MB", (se.get("peak_rss_mb") or {}).get("median"), TARGETS["peak_rss_mb"], False,
                "sleepedge score (TSV+JSON) median peak RSS"),
        _target("22-h real wall vs YASA", rn.get("speedup_vs_yasa"), TARGETS["wall_vs_yasa_x"], True,
                "same on SC4001E0-PSG.edf"),
        _target("22-h real CPU vs YASA", rn.get("cpu_vs_yasa"), TARGETS["cpu_vs_yasa_x"], True, "same on SC4001E0-PSG.edf"),
        _target("22-h real peak RSS MB", (rn.get("peak_rss_mb") or {}).get("median"), TARGETS["peak_rss_mb"], False,
                "same on SC4001E0-PSG.edf"),
        _target(f"{TINY_NAME} wall vs YASA", tiny.get("speedup_vs_yasa"), TARGETS["tiny_wall_vs_yasa_x"], True,
                "six-role SynthSleepNet tiny bundle, TSV+JSON"),
        _target("import sleepedge.cli s", (imp.get("wall_s") or {}).get("median"), TARGETS["import_s"], False,
                "whole process `python -c 'import sleepedge.cli'`"),
        _target("sleepedge score --help s", (hlp.get("wall_s") or {}).get("median"), TARGETS["import_s"], False,
                "whole process"),
    ]


def profile_sleepedge(ctx: dict, night, tmp: Path) -> dict:
    out: dict = {}
    pj = tmp / "profile.json"
    r = run_timed("profile", [sys.executable, "-m", "bench.profile_score", str(night.path), "--model", str(ctx["bundle"]),
                              "--out", str(tmp / "prof_out"), "--json", str(pj), "--formats", HEADLINE_FORMATS],
                  env={"PYTHONPATH": str(REPO)})
    if r.ok and pj.exists():
        out = json.loads(pj.read_text())
        out["process_wall_s"] = r.wall_s
        out["peak_rss_mb"] = r.peak_rss_mb
        # interpreter start + import of `bench` itself: what the process took beyond main()
        out["parts_s"]["interpreter_start_and_exit"] = max(0.0, r.wall_s - out["process_in_python_s"])
    else:
        out["error"] = r.stderr_tail[-800:]
    out["import_top_cumulative_s"] = import_times()
    if not ctx["short"]:
        pj2 = tmp / "cprofile.json"
        r2 = run_timed("cprofile", [sys.executable, "-m", "bench.profile_score", str(night.path), "--model",
                                    str(ctx["bundle"]), "--out", str(tmp / "prof_out2"), "--json", str(pj2), "--cprofile",
                                    "--formats", HEADLINE_FORMATS],
                       env={"PYTHONPATH": str(REPO)})
        if r2.ok and pj2.exists():
            out["cprofile_top_tottime"] = json.loads(pj2.read_text()).get("cprofile_top_tottime")
    log("  profile: " + ", ".join(f"{k} {v:.2f}s" for k, v in out.get("parts_s", {}).items()))
    return out


IMPORTS = ("sleepedge.cli", "sleepedge.commands.score", "runtime.scorer", "runtime.session", "runtime.sinks",
           "sleepedge.edf", "sleepedge.preprocess", "sleepedge.channels", "onnxruntime", "matplotlib.pyplot")


def import_times(top: int = 12) -> list[dict]:
    """`python -X importtime` of what `sleepedge score` imports (matplotlib: the PNG sink), one
    process: each module at depth 0 (what the score path imports itself) and depth 1 (what those
    pull in first), by cumulative import time."""
    code = "import " + ", ".join(IMPORTS)
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    rows = []
    for line in r.stderr.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        _self, cum, name = line[len("import time:"):].split("|")
        try:
            cum_us = int(cum.strip())
        except ValueError:
            continue
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        if depth <= 1:
            rows.append({"module": name.strip(), "depth": depth, "cumulative_s": cum_us / 1e6})
    rows.sort(key=lambda r: -r["cumulative_s"])
    return rows[:top]


def section_streaming(ctx: dict) -> dict:
    night = ctx["night"]
    pj = ctx["workdir"] / "streaming.json"
    cmd = [sys.executable, "-m", "bench.streaming", "--night", str(night.path), "--json", str(pj),
           "--workdir", str(ctx["workdir"]), "--epochs", str(12 if ctx["short"] else 200),
           "--bundle-epochs", str(12 if ctx["short"] else 0),    # 0: every epoch of the night
           "--paper-epochs", "40", "--presets", "" if ctx["short"] else ctx["presets"]]
    if ctx["bundle"] is not None:
        cmd += ["--bundle", str(ctx["bundle"]), "--bundle-label", ctx["bundle_label"]]
    log(f"streaming: per-epoch latency, 1 thread ({'bundle only' if ctx['short'] else 'bundle + ' + ctx['presets']})")
    r = run_timed("streaming", cmd, env={"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
                  timeout=1800)
    if not (r.ok and pj.exists()):
        return {"error": r.stderr_tail[-1500:]}
    out = json.loads(pj.read_text())
    out["process_wall_s"] = r.wall_s
    for k, v in out.get("scorer", {}).items():
        p = v["push_ms"]
        log(f"  scorer {k}: {p.get('n')} epochs, push p50 {p.get('median', float('nan')):.2f} ms, "
            f"p99 {p.get('p99', float('nan')):.2f} ms, max {p.get('max', float('nan')):.2f} ms")
    main = (out.get("scorer") or {}).get(ctx["bundle_label"], {}).get("push_ms", {})
    out["targets"] = [_target("stream per-epoch p99 ms (1 thread)", main.get("p99"), TARGETS["stream_p99_ms"], False,
                              "StreamingScorer.push of one 30-s chunk: preprocess + epoch graph + step, whole night")]
    for t in out["targets"]:
        _log_target(t)
    for k, v in out.get("ort_vs_torch", {}).items():
        log(f"  {k}: ORT {v['ort_ms']['median']:.2f} ms vs torch {v['torch_eager_ms']['median']:.2f} ms -> x{v['torch_over_ort_median']:.2f}")
    for k, v in out.get("errors", {}).items():
        log(f"  error {k}: {v}")
    return out


def section_scaling(ctx: dict) -> dict:
    if ctx["bundle"] is None:
        return {"error": "no bundle"}
    hours = ctx["scaling_hours"]
    nights = {h: make_night(ctx["workdir"], h, seed=7, rate_hz=ctx["rate"], log=log) for h in hours}
    tmp = Path(tempfile.mkdtemp(prefix="scaling-", dir=ctx["workdir"]))
    jobs = {}
    modes = ctx.get("scaling_modes", ("score", "stream"))
    if "score" in modes:
        for h, n in nights.items():
            jobs[f"score {h:g}h"] = score_job(n, ctx["bundle"], tmp / f"score_{h:g}", formats=HEADLINE_FORMATS)
    has_stream = "stream" in modes and "stream" in subprocess.run([*sleepedge_cmd(), "--help"], capture_output=True,
                                                                    text=True).stdout
    if has_stream:
        for h, n in nights.items():
            jobs[f"stream {h:g}h"] = stream_job(n, ctx["bundle"], tmp / f"stream_{h:g}")
    mode_list = [m for m in ("score", "stream") if m in modes and (m != "stream" or has_stream)]
    log(f"scaling: {hours} h, {ctx['scaling_runs']} interleaved rounds, modes {mode_list}")
    runs = interleaved(jobs, ctx["scaling_runs"], log=log)
    shutil.rmtree(tmp, ignore_errors=True)
    res: dict = {"hours": hours, "runs": ctx["scaling_runs"], "rate_hz": ctx["rate"], "modes": {}}
    for mode in mode_list:
        rows = []
        for h in hours:
            s = summarize_runs(runs[f"{mode} {h:g}h"])
            rows.append({"hours": h, "wall_s": s["wall_s"].get("median"), "peak_rss_mb": s["peak_rss_mb"].get("median"),
                         "ok": s["ok"], "error": s["error"]})
        good = [r for r in rows if r["wall_s"] is not None]
        fit = linear_fit([r["hours"] for r in good], [r["wall_s"] for r in good])
        rss_fit = linear_fit([r["hours"] for r in good], [r["peak_rss_mb"] for r in good if r["peak_rss_mb"] is not None])
        per_hour = [r["wall_s"] / r["hours"] for r in good]
        rss = [r["peak_rss_mb"] for r in good if r["peak_rss_mb"]]
        res["modes"][mode] = {
            "rows": rows, "wall_s_per_hour": per_hour,
            # no faster than linear: wall per hour of night never grows by > 10 % from one length to the next
            "linear": bool(per_hour) and all(b <= a * 1.1 for a, b in zip(per_hour, per_hour[1:])),
            "rss_flat": bool(rss) and max(rss) <= 1.15 * min(rss),      # peak RSS within 15 % at every length
            "wall_fit_s_per_hour": fit, "rss_fit_mb_per_hour": rss_fit,
                              "rss_min_mb": min((r["peak_rss_mb"] for r in good if r["peak_rss_mb"]), default=None),
                              "rss_max_mb": max((r["peak_rss_mb"] for r in good if r["peak_rss_mb"]), default=None)}
        if fit["slope"] is not None:
            mv = res["modes"][mode]
            log(f"  {mode}: {fit['slope']:.3f} s per hour of night (+{fit['intercept']:.2f} s), R2 {fit['r2']:.4f}; "
                f"wall per hour {', '.join(f'{v:.3f}' for v in per_hour)} s; RSS {mv['rss_min_mb']:.0f}-{mv['rss_max_mb']:.0f} MB")
            log(f"  TARGET scaling {mode}: wall {'linear (MET)' if mv['linear'] else 'NOT linear (NOT MET)'}, "
                f"RSS {'flat (MET)' if mv['rss_flat'] else 'NOT flat (NOT MET)'}")
    return res


def section_export(ctx: dict) -> dict:
    """Parity and graph sizes per bundle, straight from the manifests (default + bench exports)."""
    from sleepedge.bundle import load_bundle

    paths: dict[str, Path] = {}
    if ctx["bundle"] is not None:
        paths[ctx["bundle_label"]] = ctx["bundle"]
    stream = ctx["results"].get("streaming") or {}
    for name, info in (stream.get("exports") or {}).items():
        paths[f"{name}-random"] = Path(info["bundle"])
    assets = REPO / "sleepedge" / "assets"
    for p in sorted(assets.glob("*.sleepedge")) if assets.exists() else []:
        paths.setdefault(p.stem, p)
    rows = {}
    for label, p in paths.items():
        try:
            b = load_bundle(p)
        except Exception as ex:  # noqa: BLE001
            rows[label] = {"path": str(p), "error": f"{type(ex).__name__}: {ex}"}
            continue
        m = b.manifest
        gate = m.get("gate") or {}
        graphs = {}
        for g, entry in (m.get("graphs") or {}).items():
            f = b.root / entry.get("file", "")
            graphs[g] = {"file": entry.get("file"), "bytes": f.stat().st_size if f.exists() else entry.get("bytes"),
                         "exporter": entry.get("exporter"), "precision": entry.get("precision", "fp32")}
        rows[label] = {
            "path": str(p), "preset": (m.get("model") or {}).get("preset"), "family": (m.get("model") or {}).get("family"),
            "n_params": (m.get("model") or {}).get("n_params"), "opset": m.get("opset"), "graphs": graphs,
            "bundle_bytes": sum(f.stat().st_size for f in Path(b.root).rglob("*") if f.is_file()),
            "gate_passed": gate.get("passed"), "gate_max_abs_diff": gate.get("max_abs_diff"),
            "gate_tolerance": gate.get("tolerance"), "gate_checks": gate.get("checks"),
            "gate_rollout_steps": gate.get("rollout_steps"), "gate_data": gate.get("data"),
            "variants": gate.get("variants"), "simulated": b.simulated,
            "export_s": _export_seconds(p),
        }
    return {"bundles": rows}


def _export_seconds(bundle: Path) -> float | None:
    meta = bundle.with_suffix(".bench.json")   # written by bench.streaming.export_random
    try:
        return json.loads(meta.read_text()).get("export_s")
    except (OSError, ValueError):
        return None


def section_training(ctx: dict) -> dict:
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("train") is None:
        return {"skipped": "torch / train not importable"}
    pj = ctx["workdir"] / "training.json"
    cmd = [sys.executable, "-m", "bench.training", "--json", str(pj), "--workdir", str(ctx["workdir"]),
           "--nights", "6", "--hours", "1", "--minutes", "1.5", "--threads", str(os.cpu_count() or 1)]
    log("training: tiny finetune + pretrain-unimodal, one capped pass each on CPU (SIMULATED nights)")
    r = run_timed("training", cmd, env={"PYTHONPATH": str(REPO)}, timeout=1200)
    if not (r.ok and pj.exists()):
        return {"error": r.stderr_tail[-1500:]}
    out = json.loads(pj.read_text())
    out["process_wall_s"] = r.wall_s
    out["peak_rss_mb"] = r.peak_rss_mb
    for k, v in out.get("recipes", {}).items():
        log(f"  {k}: {v['throughput_epochs_per_s']:.1f} epochs/s ({v['wall_s']:.1f} s)")
    return out


def section_agreement(ctx: dict) -> dict:
    """Stage agreement with the simulator's hypnogram (SIMULATED nights, not real sleep)."""
    # the throughput night (when throughput did not run here) and extra nights, scored once per tool (not timed)
    for seed in ctx["agreement_seeds"]:
        n = make_night(ctx["workdir"], ctx["hours"], seed=seed, rate_hz=ctx["rate"], log=log)
        if n.path.name in ctx["preds"]:
            continue
        tmp = Path(tempfile.mkdtemp(prefix="agree-", dir=ctx["workdir"]))
        preds = {}
        if ctx["bundle"] is not None:
            run_timed("sleepedge", score_job(n, ctx["bundle"], tmp / "se"))
            preds["sleepedge"] = sleepedge_stages(tmp / "se")
        if ctx["competitors"]["yasa"] is None:
            run_timed("yasa", yasa_job(ctx["bench_py"], n, tmp / "y.json"))
            preds["yasa"] = competitor_stages(tmp / "y.json")
        if ctx["competitors"]["gssc"] is None:
            run_timed("gssc", gssc_job(ctx["bench_py"], n, tmp / "g.json"))
            preds["gssc"] = competitor_stages(tmp / "g.json")
        ctx["preds"][n.path.name] = {"night": n, "preds": preds}
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"  agreement night seed {seed}: scored by {[k for k, v in preds.items() if v]}")
    per_night, pooled_ref, pooled = {}, {}, {}
    for name, item in ctx["preds"].items():
        night = item["night"]
        if night.truth is None:
            per_night[name] = {"skipped": f"{night.source}"}
            continue
        per_night[name] = {}
        for tool, pred in item["preds"].items():
            if not pred:
                per_night[name][tool] = {"error": "no predictions"}
                continue
            a = agr.agreement(night.truth, pred)
            per_night[name][tool] = {k: a[k] for k in ("accuracy", "macro_f1", "kappa", "n_ref", "n_pred", "n_scored")}
            r, p, _ = agr.align(night.truth, pred)
            pooled_ref.setdefault(tool, []).extend(r.tolist())
            pooled.setdefault(tool, []).extend(p.tolist())
    pooled_res = {}
    for tool in pooled:
        a = agr.agreement(pooled_ref[tool], pooled[tool])
        pooled_res[tool] = {**a, "nights": sum(1 for v in per_night.values() if tool in v and "accuracy" in v[tool])}
        log(f"  {tool}: SIMULATED agreement " + ", ".join(
            f"{k} {a[k]:.3f}" if a.get(k) is not None else f"{k} undefined" for k in ("accuracy", "macro_f1", "kappa")))
    return {"label": "SIMULATED nights (sleepedge simulator ground truth) - NOT real-sleep accuracy",
            "per_night": per_night, "pooled": pooled_res,
            "bundle_note": ctx["bundle_kind"]}


def section_real(ctx: dict) -> dict:
    """All three tools on a REAL whole night vs its expert hypnogram (bench/real_night.py)."""
    return real_night.run_section(ctx, log=log)


# ------------------------------------------------------------------------------------------- main
def _provenance_line(run: dict, earlier: bool = False) -> str:
    b = run.get("bundle") or {}
    bits = [f"{'earlier run' if earlier else 'this run'} {run.get('date', '?')}", f"`{run.get('command', '?')}`",
            f"git {run.get('git', '?')}"]
    if b:
        bits.append(f"model `{b.get('name')}` ({b.get('kind')})")
    if run.get("loadavg_after"):
        bits.append(f"load avg after {run['loadavg_after'][0]}")
    return "_Measured: " + "; ".join(bits) + "._"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--short", action="store_true", help="CI smoke run: tiny night, 1 run, no speed claims")
    ap.add_argument("--runs", type=int, default=None, help="interleaved rounds per tool (default 5; --short 1)")
    ap.add_argument("--hours", type=float, default=None, help="night length for throughput (default 8; --short 0.25)")
    ap.add_argument("--rate", type=float, default=256.0, help="EEG/EOG/EMG/ECG rate of the simulated nights")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--scaling-hours", default=None, help="comma list (default 1,8,24,72; --short 0.1,0.2)")
    ap.add_argument("--scaling-modes", default="score,stream",
                    help="comma list of score,stream (stream: `sleepedge stream --edf F --speed 0`, fsync per epoch)")
    ap.add_argument("--scaling-runs", type=int, default=None, help="rounds for scaling (default 3; --short 1)")
    ap.add_argument("--extra-threads", default="", help="comma list: extra `sleepedge score --threads N` rows")
    ap.add_argument("--presets", default="tiny,paper",
                    help="random-weight exports for streaming/export (tiny, paper, default-arch = the default bundle's config)")
    ap.add_argument("--real-runs", type=int, default=1,
                    help="interleaved rounds of the real-night section (default 1: a 22-h night per tool)")
    ap.add_argument("--model", type=Path, default=None, help="bundle to benchmark (default: the embedded one)")
    ap.add_argument("--bench-python", default=None, help="python of the venv holding yasa/gssc")
    ap.add_argument("--results", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("SLEEPEDGE_BENCH_WORKDIR", "/tmp/sleepedge-bench")))
    a = ap.parse_args(argv)

    short = a.short
    sections = [s for s in a.sections.split(",") if s]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {bad}; expected a comma list of {','.join(SECTIONS)}")
    if short:   # smoke runs: nothing that needs minutes (training) or the real 22-h night
        sections = [s for s in sections if s not in ("training", "real")]
    results_dir = a.results or (a.workdir / "results-short" if short else RESULTS)   # smoke runs stay out of the repo
    a.workdir.mkdir(parents=True, exist_ok=True)
    bench_py = find_bench_python(a.bench_python)
    ctx: dict = {
        "short": short, "sections": sections, "workdir": a.workdir, "rate": a.rate,
        "runs": a.runs or (1 if short else 5), "hours": a.hours or (0.25 if short else 8.0),
        "scaling_hours": [float(x) for x in (a.scaling_hours or ("0.1,0.2" if short else "1,8,24,72")).split(",")],
        "scaling_runs": a.scaling_runs or (1 if short else 3), "presets": a.presets,
        "scaling_modes": tuple(m for m in a.scaling_modes.split(",") if m),
        "extra_threads": [int(x) for x in a.extra_threads.split(",") if x.strip()],
        "bench_py": bench_py, "preds": {}, "results": {},
        "agreement_seeds": [7] if short else [7, 8, 9],
        "real_runs": a.real_runs, "sleepedge_cmd": sleepedge_cmd(),
    }
    argv_str = " ".join(sys.argv[1:]) if argv is None else " ".join(argv)
    t_start = time.perf_counter()
    log(f"sleepedge bench ({'short' if short else 'full'}) -> {results_dir}; sections {sections}")
    if not simulator_available():
        log("WARNING: sleepedge.simulate is not importable; nights are fallback noise without ground truth")
    ctx["precompile"] = precompile()
    log(ctx["precompile"])
    ctx["competitors"] = competitor_status(bench_py)
    for tool, why in ctx["competitors"].items():
        if why:
            log(f"{tool}: {why} - skipped")
    bundle, kind = resolve_bundle(a.model, a.workdir)
    ctx["bundle"], ctx["bundle_kind"] = bundle, kind
    ctx["bundle_label"] = (f"{str(a.model).split(':', 1)[1]}-random" if a.model and str(a.model).startswith("random:")
                           else kind.split(" ")[0].lower())
    log(f"bundle: {kind}: {bundle}")
    meta = {
        "date": utc_now(), "command": f"python -m bench {argv_str}".strip(), "git": git_commit(),
        "machine": machine_info(), "rss_method": rss_method(),
        "versions_main": pkg_versions(sys.executable, MAIN_PKGS),
        "versions_bench": pkg_versions(bench_py, BENCH_PKGS) if bench_py else None,
        "bench_python": bench_py, "competitors": ctx["competitors"],
        "bundle": {**bundle_summary(bundle), "kind": kind},
        "simulator": simulator_available(), "short": short,
    }
    if any(s in sections for s in NEEDS_NIGHT):
        ctx["night"] = make_night(a.workdir, ctx["hours"], seed=7, rate_hz=a.rate, log=log)
        meta["night"] = ctx["night"].to_dict()
    else:   # no simulated night this run: keep the one the folder's earlier sections were measured on
        try:
            meta["night"] = json.loads((results_dir / "meta.json").read_text()).get("night")
        except (OSError, ValueError):
            meta["night"] = None
    results = ctx["results"]
    for sec in SECTIONS:  # fixed order: export reads streaming's exports, agreement reads throughput's
        if sec not in sections:
            continue
        t = time.perf_counter()
        try:
            results[sec] = globals()[f"section_{sec}"](ctx)
        except Exception as ex:  # noqa: BLE001 - one broken section must not lose the others
            import traceback

            results[sec] = {"error": f"{type(ex).__name__}: {ex}", "traceback": traceback.format_exc()[-2000:]}
            log(f"{sec}: FAILED {type(ex).__name__}: {ex}")
        results[sec]["section_s"] = time.perf_counter() - t
        results[sec]["_run"] = {"date": utc_now(), "command": meta["command"], "git": meta["git"],
                                "bundle": meta["bundle"], "night": None if sec == "real" else meta["night"],
                                "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
        write_json(results_dir / f"{sec}.json", results[sec])
        if sec == "real":
            (results_dir / "real.md").write_text(
                real_night.render_md(results[sec], _provenance_line(results[sec]["_run"])))
    meta["total_s"] = time.perf_counter() - t_start
    meta["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json(results_dir / "meta.json", meta)
    from bench.report import render

    # sections not run this time but measured by an earlier run into the same folder are kept
    # (each carries its own _run: date, command, bundle) so RESULTS.md shows the whole picture
    earlier = {}
    for sec in SECTIONS:
        f = results_dir / f"{sec}.json"
        if sec not in results and f.exists():
            try:
                earlier[sec] = json.loads(f.read_text())
            except ValueError:
                pass
    md = render(meta, {**results, **earlier}, earlier=set(earlier))
    if "real" in results or "real" in earlier:   # report.py knows the simulated sections; real is appended
        md += "\n" + real_night.render_md({**results, **earlier}["real"], _provenance_line(
            {**results, **earlier}["real"].get("_run") or {}, earlier="real" in earlier))
    (results_dir / "RESULTS.md").write_text(md)
    log(f"wrote {results_dir / 'RESULTS.md'} ({meta['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
