"""Where `sleepedge score` spends its time: the real `score_files` with timers around its parts.

    python -m bench.profile_score NIGHT.edf --model BUNDLE --out DIR --json OUT.json [--cprofile]

Runs the same function the CLI runs (`sleepedge.commands.score.score_files`, default formats
unless --formats, the CLI's default threads) in this process, read + preprocess NOT overlapped
with the graphs (runtime.scorer.PIPELINE = False, so the parts are exclusive), with wall-clock accumulators wrapped around (exclusive parts):
    import          importing the CLI + runtime modules
    bundle_load     load_bundle (checksums, manifest)
    session_load    make_sessions (ONNX Runtime session creation)
    edf_read        EDFReader.iter_epochs (blocks of samples out of the file)
    preprocess      CausalPreprocessor.push (resample, filters, normalisation, quality flags)
    epoch_graph     Engine.run_epoch (batched epoch encoder, ORT)
    step_loop       Engine.run_step (Mamba step per epoch, ORT)
    sinks_per_epoch NightWriter.add (TSV/CSV lines + periodic EDF+/JSON rewrite)
    sinks_final     NightWriter.finish (final EDF+/JSON/PNG)
    of which        png / edf_annotations / json_report: time inside those writers wherever
                    they are called from (periodic rewrites and the final one), not exclusive
    other           the rest (model_input, softmax, results, progress bar, summary table)
`--cprofile` instead runs it under cProfile and keeps the top functions by own time (slower;
use the plain run for the breakdown).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # as the CLI does (sleepedge/cli.py), before numpy loads

T_START = time.perf_counter()

ACC: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)
INNER: dict[str, float] = defaultdict(float)
_DEPTH = [0]


def _wrap(owner, attr: str, key: str) -> bool:
    orig = getattr(owner, attr, None)
    if orig is None:
        return False

    def wrapper(*args, **kwargs):
        outer = _DEPTH[0] == 0
        _DEPTH[0] += 1
        t = time.perf_counter()
        try:
            return orig(*args, **kwargs)
        finally:
            _DEPTH[0] -= 1
            if outer:  # count only the outermost wrapped call (keeps the parts exclusive)
                ACC[key] += time.perf_counter() - t
                CALLS[key] += 1

    setattr(owner, attr, wrapper)
    return True


def _wrap_inner(owner, attr: str, key: str) -> bool:
    """Non-exclusive timer for a part nested inside another (reported as 'of which')."""
    orig = getattr(owner, attr, None)
    if orig is None:
        return False

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return orig(*args, **kwargs)
        finally:
            INNER[key] += time.perf_counter() - t
            CALLS[key] += 1

    setattr(owner, attr, wrapper)
    return True


def _wrap_gen(owner, attr: str, key: str) -> bool:
    orig = getattr(owner, attr, None)
    if orig is None:
        return False

    def wrapper(*args, **kwargs):
        gen = orig(*args, **kwargs)
        while True:
            t = time.perf_counter()
            try:
                item = next(gen)
            except StopIteration:
                ACC[key] += time.perf_counter() - t
                return
            ACC[key] += time.perf_counter() - t
            CALLS[key] += 1
            yield item

    setattr(owner, attr, wrapper)
    return True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("edf", type=Path)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--formats", default=None)
    ap.add_argument("--threads", type=int, default=None, help="default: the CLI's default")
    ap.add_argument("--cprofile", action="store_true")
    a = ap.parse_args()

    t = time.perf_counter()
    import sleepedge.bundle as bundle_mod
    import runtime.scorer  # noqa: F401
    import runtime.session as session_mod
    import runtime.sinks as sinks_mod
    import sleepedge.edf as edf_mod
    import sleepedge.preprocess as pre_mod
    from sleepedge.commands import score as score_cmd

    ACC["import"] += time.perf_counter() - t
    # exclusive parts need one thread: the CLI overlaps read + preprocess of block k+1 with the graphs
    # of block k (runtime.scorer.PIPELINE); here they run one after the other
    runtime.scorer.PIPELINE = False
    wrapped = {
        "bundle_load": _wrap(bundle_mod, "load_bundle", "bundle_load"),
        "session_load": _wrap(session_mod, "make_sessions", "session_load"),
        "edf_read": _wrap_gen(edf_mod.EDFReader, "iter_epochs", "edf_read"),
        "preprocess": _wrap(pre_mod.CausalPreprocessor, "push", "preprocess"),
        "epoch_graph": _wrap(session_mod.Engine, "run_epoch", "epoch_graph"),
        "step_loop": _wrap(session_mod.Engine, "run_step", "step_loop"),
        "sinks_per_epoch": _wrap(sinks_mod.NightWriter, "add", "sinks_per_epoch"),
        "sinks_final": _wrap(sinks_mod.NightWriter, "finish", "sinks_final"),
        "of_which_png": _wrap_inner(sinks_mod, "write_png", "png"),
        "of_which_edf_annotations": _wrap_inner(sinks_mod, "write_edf_annotations", "edf_annotations"),
        "of_which_json_report": _wrap_inner(sinks_mod, "write_json", "json_report"),
    }
    for attr in dir(session_mod.Engine):   # any other graph entry point (e.g. a whole-night graph)
        if attr.startswith("run_") and attr not in ("run_epoch", "run_step"):
            wrapped[f"graph_{attr[4:]}"] = _wrap(session_mod.Engine, attr, f"graph_{attr[4:]}")
    formats = a.formats or score_cmd.DEFAULT_FORMATS
    result: dict = {"edf": str(a.edf), "model": str(a.model) if a.model else "default", "formats": formats,
                    "threads": a.threads, "wrapped": wrapped}
    t0 = time.perf_counter()
    if a.cprofile:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        failed = prof.runcall(score_cmd.score_files, [a.edf], a.model, a.out, formats, None, "auto", a.threads,
                              False, True)
        s = io.StringIO()
        stats = pstats.Stats(prof, stream=s)
        stats.sort_stats("tottime")
        rows = []
        for (fname, line, func), (cc, nc, tt, ct, _callers) in sorted(
                stats.stats.items(), key=lambda kv: -kv[1][2])[:25]:
            rows.append({"function": f"{Path(fname).name}:{line}({func})", "calls": nc,
                         "tottime_s": round(tt, 4), "cumtime_s": round(ct, 4)})
        result["cprofile_top_tottime"] = rows
    else:
        failed = score_cmd.score_files([a.edf], a.model, a.out, formats, None, "auto", a.threads, False, True)
    score_s = time.perf_counter() - t0
    parts = {k: ACC.get(k, 0.0) for k in ("import", "bundle_load", "session_load", "edf_read", "preprocess",
                                           "epoch_graph", "step_loop", "sinks_per_epoch", "sinks_final")}
    parts.update({k: v for k, v in ACC.items() if k.startswith("graph_")})
    parts["other"] = max(0.0, score_s - sum(v for k, v in parts.items() if k != "import"))
    result.update({
        "failed": failed, "score_files_s": score_s,
        "process_in_python_s": time.perf_counter() - T_START,
        "parts_s": parts, "of_which_s": dict(INNER), "calls": dict(CALLS),
    })
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
