"""Training throughput on CPU: a short timed run of the real recipes (train/), `tiny` preset.

    python -m bench.training --json OUT.json [--nights 6] [--hours 0.5] [--minutes 1.0]
                             [--recipes finetune,pretrain-unimodal] [--workdir DIR]

Simulates `--nights` short nights (SIMULATED, the simulator's default 100-Hz-ish montage),
prepares a cache with `train.cache.prepare_cache`, then runs each recipe through
`train.recipes.main` for one pass capped by `--max-minutes`, device cpu. Reported:
`throughput_epochs_per_s` as the loop measures it (30-s epochs per second of training-step
time) and the wall time of the whole recipe call (incl. validation and checkpoint writes).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def make_cache(workdir: Path, nights: int, hours: float, log=print) -> Path:
    from sleepedge.simulate import simulate_night, write_night
    from train.cache import prepare_cache

    src = workdir / f"train_src_{nights}x{hours:g}h"
    cache = workdir / f"train_cache_{nights}x{hours:g}h"
    src.mkdir(parents=True, exist_ok=True)
    for k in range(nights):
        edf = src / f"sim{k:02d}.edf"
        if not edf.exists():
            log(f"  simulating training night {k + 1}/{nights} ({hours:g} h)")
            write_night(simulate_night(hours=hours, seed=100 + k, ahi=15.0), edf)
    t = time.perf_counter()
    res = prepare_cache(src, cache)
    if res.failed:
        raise RuntimeError(f"prepare_cache failed for {res.failed}")
    log(f"  cache {cache.name}: {len(res.done)} added, {len(res.skipped)} unchanged ({time.perf_counter() - t:.1f} s)")
    return cache


def run_recipe(recipe: str, cache: Path, out: Path, minutes: float, threads: int) -> dict:
    import torch

    from train.recipes import CONFIGS, main

    torch.set_num_threads(threads)
    cfg_cls = CONFIGS[recipe]
    kwargs = dict(cache=str(cache), out=str(out), preset="tiny", epochs=1, device="cpu", max_minutes=minutes, seed=0)
    cfg = cfg_cls(**kwargs)
    t = time.perf_counter()
    metrics = main(cfg, quiet=True)
    wall = time.perf_counter() - t
    keep = {k: metrics.get(k) for k in ("throughput_epochs_per_s", "epochs_done", "stopped_by", "best_val")}
    return {**keep, "wall_s": wall, "torch_threads": torch.get_num_threads(), "max_minutes": minutes,
            "batch_size": cfg.batch_size}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--nights", type=int, default=6)
    ap.add_argument("--hours", type=float, default=0.5)
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--recipes", default="finetune,pretrain-unimodal")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/sleepedge-bench"))
    a = ap.parse_args()
    out: dict = {"preset": "tiny", "device": "cpu", "data": f"SIMULATED: {a.nights} nights x {a.hours:g} h",
                 "recipes": {}, "errors": {}}
    try:
        cache = make_cache(a.workdir, a.nights, a.hours)
    except Exception as ex:  # noqa: BLE001
        out["errors"]["cache"] = f"{type(ex).__name__}: {str(ex)[:500]}"
        cache = None
    if cache is not None:
        for recipe in [r for r in a.recipes.split(",") if r]:
            try:
                out["recipes"][recipe] = run_recipe(recipe, cache, a.workdir / f"train_out_{recipe}", a.minutes, a.threads)
            except Exception as ex:  # noqa: BLE001
                out["errors"][recipe] = f"{type(ex).__name__}: {str(ex)[:500]}"
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
