"""RESULTS.md from the section JSONs (every number here was measured in the run that wrote it)."""

from __future__ import annotations


def _f(v, fmt="{:.2f}", none="-"):
    if v is None:
        return none
    try:
        return fmt.format(v)
    except (TypeError, ValueError):
        return str(v)


def _mb(b):
    return None if b is None else b / 1e6


def _provenance(sec: dict, earlier: bool) -> str:
    r = sec.get("_run") or {}
    b = r.get("bundle") or {}
    tag = "earlier run" if earlier else "this run"
    bits = [f"{tag} {r.get('date', '?')}", f"`{r.get('command', '?')}`", f"git {r.get('git', '?')}"]
    if b:
        bits.append(f"model `{b.get('name')}` ({b.get('preset')}, {b.get('training_data') or b.get('kind')})")
    la = r.get("loadavg_after")
    if la:
        bits.append(f"load avg after {la[0]}")
    return "_Measured: " + "; ".join(bits) + "._"


def _tool_table(w, tools: dict, what: dict, skipped: dict) -> None:
    w("| tool | what runs | median wall s (min-max) | speed vs YASA | median CPU s | CPU vs YASA | "
      "peak RSS MB (median) | RSS vs YASA | runs ok |")
    w("|---|---|---|---|---|---|---|---|---|")
    for name, t in tools.items():
        if name.startswith("sleepedge --threads"):
            what = {**what, name: f"same as sleepedge with `{name[len('sleepedge '):]}` (ORT intra-op threads)"}
        if name.startswith("sleepedge synthsleepnet"):
            what = {**what, name: f"`sleepedge score --model {name[len('sleepedge '):]}` (six-role SynthSleepNet tiny), TSV+JSON"}
        ws, rs, cs = t.get("wall_s", {}), t.get("peak_rss_mb", {}), t.get("cpu_s", {})
        w(f"| {name} | {what.get(name, name)} | {_f(ws.get('median'))} ({_f(ws.get('min'))}-{_f(ws.get('max'))}) | "
          f"{_f(t.get('speedup_vs_yasa'), '{:.2f}x')} | {_f(cs.get('median'))} | {_f(t.get('cpu_vs_yasa'), '{:.2f}x')} | "
          f"{_f(rs.get('median'), '{:.0f}')} | {_f(t.get('rss_vs_yasa'), '{:.2f}')} | "
          f"{t.get('ok')}/{t.get('runs')}" + (f" ({t['error']})" if t.get("error") else "") + " |")
    for tool, why in skipped.items():
        w(f"| {tool} | not run: {why} | - | - | - | - | - | - | 0 |")
    w("")


def render(meta: dict, results: dict, earlier: set | frozenset = frozenset()) -> str:
    m = meta["machine"]
    L: list[str] = []
    w = L.append
    w("# sleepedge benchmark" + (" (SHORT smoke run: no speed claims)" if meta.get("short") else ""))
    w("")
    w(f"- date: {meta['date']}; git {meta['git']}; total {meta.get('total_s', 0):.0f} s")
    w(f"- machine: {m['cpu']}, {m['logical_cores']} logical cores ({m['usable_cores']} usable), {m['mem_gb']} GB RAM; "
      f"load average at start {m.get('loadavg_at_start')}, at end {m.get('loadavg_at_end')} (shared machine)")
    w(f"- reproduce: `cd /work/main && {meta['command']}` (competitors from `{meta.get('bench_python') or 'no bench venv'}`)")
    vm = meta.get("versions_main") or {}
    w("- sleepedge venv: " + ", ".join(f"{k} {v}" for k, v in vm.items() if v))
    vb = meta.get("versions_bench")
    w("- bench venv: " + (", ".join(f"{k} {v}" for k, v in vb.items() if v) if vb else "not installed"))
    b = meta.get("bundle") or {}
    w(f"- model: {b.get('kind')}: `{b.get('name')}` preset {b.get('preset')}, {_f(b.get('n_params'), '{:,}')} params, "
      f"simulated-trained: {b.get('simulated')}")
    n = meta.get("night") or {}
    w(f"- night: {n.get('hours')} h, {n.get('source')}, seed {n.get('seed')}, {n.get('rate_hz')} Hz "
      f"({', '.join(f'{k}={v}' for k, v in (n.get('labels') or {}).items())})")
    w(f"- peak RSS: {meta.get('rss_method')}; wall: perf_counter around the whole process (start, imports, model load, "
      "read, score, write)")
    for tool, why in (meta.get("competitors") or {}).items():
        if why:
            w(f"- **{tool}: {why}; skipped**")
    w("")

    thr = results.get("throughput")
    if thr:
        tn = thr.get("night") or n
        w(f"## Whole-night throughput ({tn.get('hours')} h {tn.get('source')} night at {tn.get('rate_hz')} Hz, "
          f"{thr.get('runs_per_tool')} interleaved rounds "
          f"{' '.join(thr.get('order', []))} ...)")
        w("")
        if "error" in thr and "tools" not in thr:
            w(f"FAILED: {thr['error']}")
        else:
            fm = thr.get("formats") or {}
            what = {"sleepedge": f"`sleepedge score` default bundle, outputs {fm.get('sleepedge', 'all default')}",
                    "sleepedge all outputs": f"same, every output ({fm.get('sleepedge all outputs', '')})",
                    "yasa": "YASA SleepStaging EEG+EOG+EMG (MNE read, resample 100 Hz)",
                    "gssc": "GSSC EEG only (PEERS loader workaround, torch default threads)",
                    "import sleepedge.cli": "`python -c 'import sleepedge.cli'`",
                    "sleepedge score --help": "`sleepedge score --help`"}
            _tool_table(w, thr["tools"], what, thr.get("skipped") or {})
            w("Speed vs YASA = YASA median wall / tool median wall; CPU vs YASA = YASA median CPU (user+sys) / tool "
              "median CPU (same run); RSS vs YASA = tool / YASA.")
            pairs = {k: v.get("speedup_vs_yasa_paired") for k, v in thr["tools"].items() if v.get("speedup_vs_yasa_paired")}
            for k, v in pairs.items():
                if v.get("n"):
                    w(f"Paired per-round YASA/{k} wall ratios: median {v['median']:.2f}x (min {v['min']:.2f}x, max {v['max']:.2f}x, n={v['n']}).")
            for k in ("yasa", "gssc"):
                tm = thr["tools"].get(k, {}).get("in_process_timings_last_run_s")
                if tm:
                    w(f"{k} in-process (last run): " + ", ".join(f"{a} {v:.2f}s" for a, v in tm.items()))
            w("")
            rn = thr.get("real_night") or {}
            if rn.get("tools"):
                w(f"### REAL 22-h night `{rn.get('edf')}` (100 Hz, {rn.get('runs_per_tool')} interleaved rounds)")
                w("")
                _tool_table(w, rn["tools"], {"sleepedge": "`sleepedge score` default bundle, TSV+JSON",
                                             "sleepedge all outputs": "same, every output",
                                             "yasa": "YASA EEG Fpz-Cz + EOG horizontal"}, {})
            elif rn.get("skipped"):
                w(f"REAL 22-h night: skipped ({rn['skipped']})")
                w("")
            if thr.get("targets"):
                w("### Targets (issue 13)")
                w("")
                w("| target | measured | goal | met |")
                w("|---|---|---|---|")
                for t in thr["targets"]:
                    v = t.get("value")
                    w(f"| {t['target']} ({t.get('what', '')}) | {_f(v, '{:.3g}')} | {t['goal_text']} | "
                      f"{'-' if t.get('met') is None else 'yes' if t['met'] else '**no**'} |")
                w("")
        prof = thr.get("profile") or {}
        if prof.get("parts_s"):
            total = prof.get("process_wall_s") or sum(prof["parts_s"].values())
            w(f"### Where `sleepedge score` spends its time (one profiled run, {_f(total)} s process wall, "
              f"peak RSS {_f(prof.get('peak_rss_mb'), '{:.0f}')} MB)")
            w("")
            w("| part | s | % of process |")
            w("|---|---|---|")
            for k, v in sorted(prof["parts_s"].items(), key=lambda kv: -kv[1]):
                w(f"| {k} | {v:.3f} | {100 * v / total:.1f} |")
            ow = prof.get("of_which_s") or {}
            if ow:
                w("")
                w("Inside the sinks (not exclusive): " + ", ".join(f"{k} {v:.3f} s ({prof['calls'].get(k, '?')} calls)"
                                                                   for k, v in ow.items()))
            it = prof.get("import_top_cumulative_s")
            if it:
                w("")
                w("Import cost (`python -X importtime`, top-level modules the score path loads, cumulative): "
                  + ", ".join(f"`{r['module']}`{' (pulled in)' if r.get('depth') else ''} {r['cumulative_s']:.2f} s"
                           for r in it[:10]))
            cp = prof.get("cprofile_top_tottime")
            if cp:
                w("")
                w("cProfile, top functions by own time (separate run, profiler overhead included):")
                w("")
                w("| function | calls | own s | cumulative s |")
                w("|---|---|---|---|")
                for r in cp[:12]:
                    w(f"| `{r['function']}` | {r['calls']} | {r['tottime_s']:.3f} | {r['cumtime_s']:.3f} |")
            w("")
        elif prof.get("error"):
            w(f"Profile FAILED: {prof['error'][-300:]}")
            w("")

    st = results.get("streaming")
    if st:
        w("## Streaming latency (per 30-s epoch, 1 thread, OMP_NUM_THREADS=1)")
        w("")
        if st.get("error"):
            w(f"FAILED: {st['error'][-500:]}")
        else:
            w("| model | measured | median ms | p99 ms | max ms | epochs |")
            w("|---|---|---|---|---|---|")
            for k, v in (st.get("scorer") or {}).items():
                p = v["push_ms"]
                w(f"| {k} | `StreamingScorer.push` of one 30-s chunk (preprocess + epoch graph + step) | "
                  f"{_f(p.get('median'))} | {_f(p.get('p99'))} | {_f(p.get('max'))} | {p.get('n')} |")
            for k, v in (st.get("ort_vs_torch") or {}).items():
                o, t = v["ort_ms"], v["torch_eager_ms"]
                w(f"| {k} (random weights) | ORT `run_epoch`(batch 1) + `run_step` | {_f(o.get('median'))} | {_f(o.get('p99'))} | "
                  f"{_f(o.get('max'))} | {o.get('n')} |")
                w(f"| {k} (random weights) | torch eager `embed` + `temporal.step` | {_f(t.get('median'))} | {_f(t.get('p99'))} | "
                  f"{_f(t.get('max'))} | {t.get('n')} |")
            if st.get("ort_vs_torch"):
                w("")
                for k, v in st["ort_vs_torch"].items():
                    w(f"- {k}: torch eager / ORT (medians, same model, same inputs, alternating A B / B A) = "
                      f"**{_f(v.get('torch_over_ort_median'), '{:.2f}x')}**; max |stage-logit diff| over the rollout "
                      f"{_f(v.get('max_abs_stage_logit_diff'), '{:.1e}')}")
            for t in st.get("targets") or []:
                w(f"- **Target {t['target']}: {_f(t.get('value'))} (goal {t['goal_text']}): "
                  f"{'not measured' if t.get('met') is None else 'MET' if t['met'] else 'NOT MET'}**")
            for k, v in (st.get("errors") or {}).items():
                w(f"- {k}: FAILED {v[:300]}")
        w("")

    sc = results.get("scaling")
    if sc:
        w(f"## Scaling with night length ({sc.get('rate_hz')} Hz nights, median of {sc.get('runs')} interleaved rounds)")
        w("")
        if sc.get("error"):
            w(f"FAILED: {sc['error']}")
        else:
            modes = list(sc["modes"])
            w("| hours | " + " | ".join(f"`{m}` wall s | `{m}` peak RSS MB" for m in modes) + " |")
            w("|---|" + "---|---|" * len(modes))
            for i, h in enumerate(sc["hours"]):
                cells = []
                for mname in modes:
                    r = sc["modes"][mname]["rows"][i]
                    cells += [_f(r["wall_s"]), _f(r["peak_rss_mb"], "{:.0f}")]
                w(f"| {h:g} | " + " | ".join(cells) + " |")
            w("")
            for mname, mv in sc["modes"].items():
                f, rf = mv["wall_fit_s_per_hour"], mv["rss_fit_mb_per_hour"]
                cmd = "sleepedge score" if mname == "score" else "sleepedge stream --edf F --speed 0"
                if "linear" in mv:
                    w(f"- `{cmd}`: wall per hour of night {', '.join(f'{v:.3f}' for v in mv.get('wall_s_per_hour') or [])} s "
                      f"-> {'no faster than linear' if mv['linear'] else '**faster than linear**'}; peak RSS "
                      f"{'flat (within 15 %)' if mv.get('rss_flat') else '**not flat**'}")
                w(f"- `{cmd}`: wall = {_f(f.get('intercept'))} s + {_f(f.get('slope'), '{:.3f}')} s per hour of night "
                  f"(R^2 {_f(f.get('r2'), '{:.4f}')}); peak RSS {_f(mv.get('rss_min_mb'), '{:.0f}')}-{_f(mv.get('rss_max_mb'), '{:.0f}')} MB "
                  f"(slope {_f(rf.get('slope'), '{:.1f}')} MB per hour)")
        w("")

    ex = results.get("export")
    if ex and ex.get("bundles"):
        w("## Export (from the bundles' manifests)")
        w("")
        w("| bundle | preset | params | graphs (MB) | bundle MB | gate max abs diff | tolerance | passed | opset | export s |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        for k, v in ex["bundles"].items():
            if v.get("error"):
                w(f"| {k} | error: {v['error'][:120]} | | | | | | | | |")
                continue
            g = v.get("graphs") or {}
            gtxt = ", ".join(f"{gn} {_f(_mb(gv.get('bytes')))}" for gn, gv in g.items())
            w(f"| {k} | {v.get('preset')} | {_f(v.get('n_params'), '{:,}')} | {gtxt} | {_f(_mb(v.get('bundle_bytes')))} | "
              f"{_f(v.get('gate_max_abs_diff'), '{:.1e}')} | {_f(v.get('gate_tolerance'), '{:.0e}')} | {v.get('gate_passed')} | "
              f"{v.get('opset')} | {_f(v.get('export_s'), '{:.0f}')} |")
        w("")
        w("`*-random` bundles: random weights exported by this run through `export/` (gate included) for the latency "
          "table; `gate max abs diff` is the exporter's own ORT-vs-torch check (forward + long step rollout).")
        w("")

    tr = results.get("training")
    if tr:
        w("## Training throughput on CPU (`tiny`, SIMULATED nights)")
        w("")
        if tr.get("error") or tr.get("skipped"):
            w(f"not measured: {tr.get('error') or tr.get('skipped')}")
        else:
            w(f"Data: {tr.get('data')}; torch threads {next(iter(tr['recipes'].values()), {}).get('torch_threads')}.")
            w("")
            w("| recipe | 30-s epochs / s (train step time) | passes | wall s (incl. validation, checkpoints) |")
            w("|---|---|---|---|")
            for k, v in tr.get("recipes", {}).items():
                w(f"| {k} | {_f(v.get('throughput_epochs_per_s'), '{:.1f}')} | {v.get('epochs_done')} ({v.get('stopped_by')}) | "
                  f"{_f(v.get('wall_s'), '{:.1f}')} |")
            for k, v in (tr.get("errors") or {}).items():
                w(f"| {k} | FAILED: {v[:200]} | | |")
        w("")

    ag = results.get("agreement")
    if ag and ag.get("pooled") is not None:
        w("## Stage agreement on SIMULATED nights (NOT real-sleep accuracy)")
        w("")
        w("Reference = the simulator's own hypnogram. These numbers say how well each tool recovers the "
          "simulator's stages; they are not evidence of accuracy on real recordings (see DESIGN.md: "
          "simulated scores can move opposite to real performance).")
        w("")
        w("| tool | nights | epochs | accuracy | macro-F1 | Cohen's kappa |")
        w("|---|---|---|---|---|---|")
        for k, v in ag["pooled"].items():
            w(f"| {k} | {v.get('nights')} | {v.get('n_scored')} | {_f(v.get('accuracy'), '{:.3f}')} | "
              f"{_f(v.get('macro_f1'), '{:.3f}')} | {_f(v.get('kappa'), '{:.3f}')} |")
        if not ag["pooled"]:
            w("| - | no night with ground truth | | | | |")
        w("")
        w(f"sleepedge model: {ag.get('bundle_note')}.")
        bn = ((ag.get("_run") or {}).get("bundle") or {})
        if bn.get("simulated"):
            w("")
            w("**Caveat:** this sleepedge model was trained on nights from this same simulator, so these nights are "
              "in-distribution for it, while YASA and GSSC were trained on real PSG; the comparison favours sleepedge "
              "and says nothing about real recordings.")
        w("")
    elif ag and ag.get("error"):
        w(f"## Agreement FAILED: {ag['error']}")
        w("")

    # provenance of each section under its heading
    heads = {"throughput": "## Whole-night throughput", "streaming": "## Streaming latency", "scaling": "## Scaling",
             "export": "## Export", "training": "## Training", "agreement": "## Stage agreement"}
    for sec, head in heads.items():
        if sec in results and isinstance(results[sec], dict):
            for i, line in enumerate(L):
                if line.startswith(head):
                    L.insert(i + 1, "")
                    L.insert(i + 2, _provenance(results[sec], sec in earlier))
                    break
    failed = [k for k, v in results.items() if isinstance(v, dict) and v.get("error")]
    if failed:
        w("## Sections with errors")
        w("")
        for k in failed:
            w(f"- {k}: {str(results[k]['error']).splitlines()[-1][:300]}")
        w("")
    return "\n".join(L) + "\n"
