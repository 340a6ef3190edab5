"""Shared helpers for the benchmark: machine facts, timed subprocesses with peak RSS, stats.

Only the standard library and numpy: this module runs in the project venv and its helpers
are the only thing the competitor runner scripts would need (they do not import it).

Peak RSS of a whole process comes from GNU `/usr/bin/time -v` ("Maximum resident set size")
when it exists, else from a tiny Python wrapper reading `getrusage(RUSAGE_CHILDREN)` after the
child exits. Wall time is measured here with `time.perf_counter()` around the process (the
same clock for every tool), so it includes interpreter start, imports and model load.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
GNU_TIME = "/usr/bin/time"


# ---------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        affinity = os.cpu_count()
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = None
    return {
        "cpu": cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": affinity,
        "mem_gb": mem_gb, "os": platform.platform(), "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in load] if load else None,
    }


def pkg_versions(python: str | os.PathLike, names: Sequence[str]) -> dict[str, str | None]:
    """Versions of `names` as installed for the interpreter `python` (None when absent)."""
    code = (
        "import json,sys\n"
        "from importlib import metadata\n"
        "out={}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n]=metadata.version(n)\n"
        "    except metadata.PackageNotFoundError: out[n]=None\n"
        "print(json.dumps(out))\n"
    )
    try:
        res = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True, timeout=60)
        return json.loads(res.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {n: None for n in names}


def git_commit() -> str:
    try:
        res = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return res.stdout.strip() + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


# ------------------------------------------------------------------------------- timed processes
@dataclass
class ProcResult:
    name: str
    cmd: list[str]
    wall_s: float
    peak_rss_mb: float | None
    returncode: int
    cpu_s: float | None = None       # user + system CPU seconds of the process tree
    stdout_tail: str = ""
    stderr_tail: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def to_dict(self) -> dict:
        return asdict(self)


_MAXRSS_RE = re.compile(r"Maximum resident set size \(kbytes\):\s*(\d+)")
_USER_RE = re.compile(r"User time \(seconds\):\s*([0-9.]+)")
_SYS_RE = re.compile(r"System time \(seconds\):\s*([0-9.]+)")

_WRAPPER = (
    "import resource,subprocess,sys\n"
    "rc=subprocess.call(sys.argv[2:])\n"
    "ru=resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "open(sys.argv[1],'w').write('Maximum resident set size (kbytes): %d\\nUser time (seconds): %.3f\\n"
    "System time (seconds): %.3f\\n'%(ru.ru_maxrss,ru.ru_utime,ru.ru_stime))\n"
    "sys.exit(rc)\n"
)


def rss_method() -> str:
    return "GNU /usr/bin/time -v" if _gnu_time_ok() else "getrusage(RUSAGE_CHILDREN) wrapper"


_GNU_OK: bool | None = None


def _gnu_time_ok() -> bool:
    global _GNU_OK
    if _GNU_OK is None:
        _GNU_OK = False
        if Path(GNU_TIME).exists():
            try:
                res = subprocess.run([GNU_TIME, "-v", "true"], capture_output=True, text=True, timeout=10)
                _GNU_OK = "Maximum resident set size" in res.stderr
            except OSError:
                pass
    return _GNU_OK


def run_timed(name: str, cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: str | os.PathLike | None = None, timeout: float = 900) -> ProcResult:
    """Run `cmd` as its own process; wall clock around it, peak RSS of the process tree's
    largest process (what `/usr/bin/time -v` reports)."""
    cmd = [str(c) for c in cmd]
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with tempfile.NamedTemporaryFile("r", suffix=".rss", delete=False) as fh:
        rss_file = fh.name
    try:
        if _gnu_time_ok():
            wrapped = [GNU_TIME, "-v", "-o", rss_file, *cmd]
        else:
            wrapped = [sys.executable, "-c", _WRAPPER, rss_file, *cmd]
        t0 = time.perf_counter()
        try:
            res = subprocess.run(wrapped, capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout)
            rc, out, err = res.returncode, res.stdout, res.stderr
        except subprocess.TimeoutExpired as ex:
            rc, out, err = -9, str(ex.stdout or ""), f"timeout after {timeout} s"
        wall = time.perf_counter() - t0
        text = Path(rss_file).read_text() if Path(rss_file).exists() else ""
        m = _MAXRSS_RE.search(text)
        rss = int(m.group(1)) / 1024 if m else None
        mu, ms = _USER_RE.search(text), _SYS_RE.search(text)
        cpu = float(mu.group(1)) + float(ms.group(1)) if mu and ms else None
        # GNU time prints "Command exited with non-zero status N" into its -o file, not stderr
        if rc != 0 and "Command exited" in text:
            err = err + "\n" + text.splitlines()[0]
    finally:
        try:
            os.unlink(rss_file)
        except OSError:
            pass
    return ProcResult(name=name, cmd=cmd, wall_s=wall, peak_rss_mb=rss, returncode=rc, cpu_s=cpu,
                      stdout_tail=out[-2000:], stderr_tail=err[-3000:])


def interleaved(jobs: Mapping[str, Sequence[str] | None], runs: int, *, env: Mapping[str, str] | None = None,
                log=print, timeout: float = 900) -> dict[str, list[ProcResult]]:
    """Run every job once per round, rounds repeated `runs` times (A B C A B C ...).
    A job whose first run fails is not retried in later rounds (its error is kept)."""
    out: dict[str, list[ProcResult]] = {k: [] for k in jobs}
    dead: set[str] = set()
    for r in range(runs):
        for name, cmd in jobs.items():
            if cmd is None or name in dead:
                continue
            res = run_timed(name, cmd, env=env, timeout=timeout)
            out[name].append(res)
            rss = f"{res.peak_rss_mb:.0f} MB" if res.peak_rss_mb is not None else "?"
            cpu = f"{res.cpu_s:6.2f} s" if res.cpu_s is not None else "?"
            log(f"  run {r + 1}/{runs} {name:<34} {res.wall_s:7.2f} s  CPU {cpu}  peak RSS {rss}"
                + ("" if res.ok else f"  FAILED rc={res.returncode}: {res.stderr_tail.strip().splitlines()[-1:] }"))
            if not res.ok:
                dead.add(name)
    return out


# ------------------------------------------------------------------------------------------ stats
def summarize(values: Sequence[float]) -> dict:
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    return {
        "n": int(a.size), "median": float(np.median(a)), "min": float(a.min()), "max": float(a.max()),
        "mean": float(a.mean()), "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)),
    }


def summarize_runs(runs: Sequence[ProcResult]) -> dict:
    ok = [r for r in runs if r.ok]
    return {
        "runs": len(runs), "ok": len(ok),
        "wall_s": summarize([r.wall_s for r in ok]),
        "cpu_s": summarize([r.cpu_s for r in ok if r.cpu_s is not None]),
        "peak_rss_mb": summarize([r.peak_rss_mb for r in ok if r.peak_rss_mb is not None]),
        "error": None if ok or not runs else (runs[-1].stderr_tail.strip().splitlines() or ["?"])[-1],
    }


def linear_fit(x: Sequence[float], y: Sequence[float]) -> dict:
    """Least-squares y = a + b x with R^2 (how linear the growth is)."""
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    if xa.size < 2:
        return {"intercept": None, "slope": None, "r2": None}
    b, a = np.polyfit(xa, ya, 1)
    pred = a + b * xa
    ss_res = float(((ya - pred) ** 2).sum())
    ss_tot = float(((ya - ya.mean()) ** 2).sum())
    return {"intercept": float(a), "slope": float(b), "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0}


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_default))
    tmp.replace(path)
    return path


def _default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def which(prog: str) -> str | None:
    return shutil.which(prog)


def utc_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
