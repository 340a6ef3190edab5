"""Fuzzing the COMMANDS (`info`, `score`, `stream --edf --speed 0`), not only the readers (issue 14).

Every mutant of every real EDF in ../shared/data must end, through the whole command path (reader,
role mapping, preprocessing, graphs, every sink), in data or in ONE line of error: never a
traceback, never a hang (10-s cap per case), never a memory blow-up.

Mutation bases: small crops of each real EDF (the first ~35 s: the header's record count cut,
the file cut after those records; the header bytes stay the recorder's own). Mutations (1-3 per
mutant, `random.Random(fixed seed)`): header fields (record duration, samples per record, one
sample per record, record count, signal count / zero signals, labels in odd encodings or renamed
to a role alias so odd channels become model inputs, units, physical/digital min/max, EDF+C/D,
start date, version), absurd numbers in any numeric field, truncation, appended garbage, bit
flips in data records, TAL corruption (time-keeping onsets included).

In-process (Typer's CliRunner on `sleepedge.cli.app`, the click command built once; `score` and
`stream` get the default bundle loaded once) for the counts; a small sample through the real CLI
in a subprocess (tracebacks, hangs and peak RSS of the real process); then the default bundle
mutated (manifest fields, graph bytes, checksums) and `score` run with it.

Counts: SLEEPEDGE_FUZZ_CASES mutants per command (default 1000; e.g. 10000 for a long run),
SLEEPEDGE_FUZZ_BUNDLES bundle mutants (default 300), SLEEPEDGE_FUZZ_CLI_CASES subprocess cases per
command (default 2). Counts are printed (`pytest -s`): mutants, exits with data, exits with a
one-line error, tracebacks (must be 0), hangs (must be 0), slowest case, worst peak RSS.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ROOT = Path(__file__).resolve().parents[1]
N_CASES = int(os.environ.get("SLEEPEDGE_FUZZ_CASES", "1000"))
N_BUNDLES = int(os.environ.get("SLEEPEDGE_FUZZ_BUNDLES", "300"))
N_CLI = int(os.environ.get("SLEEPEDGE_FUZZ_CLI_CASES", "2"))
CASE_CAP_S = 10.0
RSS_CAP_MB = 300.0
CROP_S = 35.0              # crops: the first records up to ~35 s (one scored epoch and a bit)
CROP_MAX_BYTES = 300_000
SIG_WIDTHS = (("label", 16), ("transducer", 80), ("unit", 8), ("pmin", 8), ("pmax", 8), ("dmin", 8),
              ("dmax", 8), ("prefilter", 80), ("spr", 8), ("reserved", 32))


# ---------------------------------------------------------------------------------------------
# bases: small crops of every real EDF


def _edfs() -> list[Path]:
    if not DATA.is_dir():
        return []
    return sorted(p for p in DATA.rglob("*") if p.suffix.lower() == ".edf" and p.is_file())


def _int(raw: bytes, default: int = 0) -> int:
    try:
        return int(raw.decode("latin-1").strip())
    except ValueError:
        return default


def _crop(src: Path) -> bytes:
    """The first records of `src` (~CROP_S seconds, <= CROP_MAX_BYTES) with the record count patched."""
    with open(src, "rb") as fh:
        main = fh.read(256)
        ns = _int(main[252:256])
        sig = fh.read(256 * ns)
    hb = 256 * (ns + 1)
    off = ns * sum(w for _, w in SIG_WIDTHS[:8])
    spr = [_int(sig[off + 8 * i: off + 8 * i + 8], 1) for i in range(ns)]
    rec_bytes = 2 * sum(spr)
    n = _int(main[236:244], 1)
    try:
        dur = float(main[244:252].decode("latin-1").strip())
    except ValueError:
        dur = 1.0
    keep = n if dur <= 0 else max(1, min(n, int(-(-CROP_S // dur))))
    keep = max(1, min(keep, CROP_MAX_BYTES // max(rec_bytes, 1)))
    with open(src, "rb") as fh:
        raw = bytearray(fh.read(hb + keep * rec_bytes))
    raw[236:244] = str(keep).encode().ljust(8)
    return bytes(raw)


def _scoreable(src: Path, dst: Path) -> bytes | None:
    """A second base from a real EDF that `score` can get through: its first (up to 8) signals, real
    samples tiled to CROP_S, written with write_edf; when no label maps to the model's EEG/EOG the
    first two are relabelled so (their odd rates and contents then reach the preprocessing and graphs)."""
    import warnings

    import numpy as np

    from sleepedge.channels import assign_roles
    from sleepedge.edf import SignalSpec, open_edf, write_edf
    from sleepedge.errors import SleepEdgeError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open_edf(src, backend="native") as r:
                infos = r.header.signals[:8]
                if not infos:
                    return None
                specs = []
                for info in infos:
                    x = r.read(info, 0.0, min(r.header.duration_s, CROP_S))
                    x = np.nan_to_num(x) if len(x) else np.zeros(1)
                    n = max(1, int(round(CROP_S * info.fs_hz)))
                    specs.append(SignalSpec(info.label, info.fs_hz, np.resize(x, n), unit=info.unit or "uV"))
            roles = assign_roles([s.label for s in specs]).primary
            if "EEG" not in roles and "EOG" not in roles:
                for spec, label in zip(specs, ("EEG Fpz-Cz", "EOG horizontal")):
                    spec.label = label
            labels = [s.label for s in specs]
            specs = [s for k, s in enumerate(specs) if s.label not in labels[:k]]  # distinct labels
            return write_edf(dst, specs).read_bytes()
    except (SleepEdgeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# mutations


def _layout(raw: bytes) -> tuple[int, int, list[int]]:
    ns = max(0, min(_int(raw[252:256]), 9999))
    hb = 256 * (ns + 1)
    off = 256 + ns * sum(w for _, w in SIG_WIDTHS[:8])
    spr = [_int(raw[off + 8 * i: off + 8 * i + 8], 1) for i in range(ns)] if len(raw) >= hb else []
    return ns, hb, spr


def _set(raw: bytearray, off: int, width: int, value) -> None:
    v = value if isinstance(value, bytes) else str(value).encode("latin-1", "replace")
    if off + width <= len(raw):
        raw[off: off + width] = v[:width].ljust(width, b" ")


def _sig_off(ns: int, field: str, i: int) -> tuple[int, int]:
    off = 256
    for name, width in SIG_WIDTHS:
        if name == field:
            return off + i * width, width
        off += ns * width
    raise KeyError(field)


ABSURD = ["1e308", "-1e308", "99999999", "-99999999", "0.0000001", "inf", "nan", "-0", "1e-300", "", "abc",
          "2147483648", "3,5", "\xe9\xff"]
DURATIONS = ["0", "-1", "0.000001", "0.001", "1e300", "3600", "3601", "100000", "7", "0.5", "2", "30", "86400",
             "nan", "inf", "1,5", "", "abc", "0.1", "1000"]
LABELS = [b"EEG Fpz-Cz", b"EEG C4-A1", b"EOG horizontal", b"E1-M2", b"Chin EMG", b"ECG II", b"Airflow",
          b"SpO2", b"Thorax", "EEG C3-A2 \xe9".encode("latin-1"), "EEG Fpz\u2013Cz \u00b5".encode("utf-8"),
          b"\xff\xfe\x00E\x00E", b"[/x] EEG", b"[bold]EOG", b"", b"EDF Annotations", b"\x00\x00\x00",
          b"EEG \x14\x15 C4", "脑电 EEG".encode("utf-8")]
UNITS = [b"V", b"mV", b"nV", b"uV", b"%", b"", b"\xb5V", "µV".encode("utf-8"), b"bpm", b"[/u]"]
TAL_PIECES = [b"+", b"-", b"0", b"1.5", b"\x14", b"\x15", b"\x00", b"9" * 12, b"text", b"\xff", b"e5", b".",
              b"+2592001\x14\x14\x00", b"+99999\x14\x14\x00", b"-5\x14\x14\x00", b"+1e5\x14\x14\x00",
              b"+nan\x14", b"+0.5\x15", b"\x14\x14", b"+100000000000\x14\x14\x00", b"+86400\x14\x14\x00"]

KINDS = ("record_duration", "samples_per_record", "one_sample_per_record", "record_count", "n_signals",
         "zero_signals", "label", "role_label", "unit", "physical", "digital", "edf_plus", "start",
         "version", "absurd", "truncate", "append", "bitflip_data", "tal")


def mutate(base: bytes, rng: random.Random) -> tuple[bytes, list[str]]:
    raw = bytearray(base)
    kinds = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        kind = rng.choice(KINDS)
        kinds.append(kind)
        ns, hb, spr = _layout(bytes(raw))
        if kind == "record_duration":
            _set(raw, 244, 8, rng.choice(DURATIONS))
        elif kind == "samples_per_record" and ns:
            i = rng.randrange(ns)
            s = spr[i] if i < len(spr) else 1
            _set(raw, *_sig_off(ns, "spr", i), rng.choice([0, -1, 1, 2, 3, s * 2, max(1, s // 2), s + 1, 99999999,
                                                           100001, "1e9", "x", s * 1000]))
        elif kind == "one_sample_per_record" and ns:
            for i in range(ns):
                _set(raw, *_sig_off(ns, "spr", i), 1)
            if rng.random() < 0.5:
                _set(raw, 244, 8, rng.choice(["1", "0.01", "30", "3600"]))
        elif kind == "record_count":
            n = _int(bytes(raw[236:244]), 1)
            _set(raw, 236, 8, rng.choice([0, -1, -5, 1, n - 1, n + 1, 99999999, 2147483648, "abc", n * 1000]))
        elif kind == "n_signals":
            _set(raw, 252, 4, rng.choice([0, ns - 1, ns + 1, 9999, -1, "x", ns * 2]))
        elif kind == "zero_signals":
            _set(raw, 252, 4, 0)
            if rng.random() < 0.5:
                del raw[256:]
        elif kind in ("label", "role_label") and ns:
            i = rng.randrange(ns)
            lab = rng.choice(LABELS[:9] if kind == "role_label" else LABELS)
            _set(raw, *_sig_off(ns, "label", i), lab)
        elif kind == "unit" and ns:
            _set(raw, *_sig_off(ns, "unit", rng.randrange(ns)), rng.choice(UNITS))
        elif kind == "physical" and ns:
            i = rng.randrange(ns)
            a, b = rng.choice([("5", "5"), ("100", "-100"), ("-1e308", "1e308"), ("0", "0"), ("nan", "1"),
                               ("-1e-300", "1e-300"), ("-99999999", "99999999"), ("-1", "1e300")])
            _set(raw, *_sig_off(ns, "pmin", i), a)
            _set(raw, *_sig_off(ns, "pmax", i), b)
        elif kind == "digital" and ns:
            i = rng.randrange(ns)
            a, b = rng.choice([("0", "0"), ("32767", "-32768"), ("-99999999", "99999999"), ("x", "1"),
                               ("-1", "1"), ("-32768", "-32768"), ("1e9", "2e9")])
            _set(raw, *_sig_off(ns, "dmin", i), a)
            _set(raw, *_sig_off(ns, "dmax", i), b)
        elif kind == "edf_plus":
            _set(raw, 192, 44, rng.choice([b"EDF+D", b"EDF+C", b"", b"EDF+X", b"\xff" * 44]))
        elif kind == "start":
            _set(raw, 168, 8, rng.choice([b"99.99.99", b"01.01.85", b"31.02.20", b"xx.yy.zz", b"", b"01.13.99"]))
            _set(raw, 176, 8, rng.choice([b"25.61.61", b"00.00.00", b"23.59.59", b"ab.cd.ef", b""]))
        elif kind == "version":
            _set(raw, 0, 8, rng.choice([b"1", b"\xffBIOSEMI", b"", b"00"]))
        elif kind == "absurd":
            fields = [(236, 8), (244, 8), (252, 4), (184, 8)]
            if ns:
                name = rng.choice(["pmin", "pmax", "dmin", "dmax", "spr"])
                fields.append(_sig_off(ns, name, rng.randrange(ns)))
            off, width = rng.choice(fields)
            _set(raw, off, width, rng.choice(ABSURD))
        elif kind == "truncate" and raw:
            cut = rng.choice([rng.randrange(len(raw) + 1), min(len(raw), hb + rng.randrange(64)),
                              len(raw) - rng.randrange(1, 64)])
            del raw[max(0, cut):]
        elif kind == "append":
            raw += bytes(rng.randrange(256) for _ in range(rng.choice([1, 7, 100, 2048])))
        elif kind == "bitflip_data" and len(raw) > hb:
            for _ in range(rng.choice([1, 8, 64])):
                k = rng.randrange(hb, len(raw))
                raw[k] ^= 1 << rng.randrange(8)
        elif kind == "tal" and len(raw) > hb and ns:
            # the annotation signal's bytes in a random record (or anywhere in the data)
            labels = [bytes(raw[256 + 16 * i: 256 + 16 * i + 16]).strip() for i in range(ns)]
            rec = 2 * sum(spr)
            n_rec = (len(raw) - hb) // rec if rec else 0
            if b"EDF Annotations" in labels and n_rec:
                a = labels.index(b"EDF Annotations")
                pos = hb + rng.randrange(n_rec) * rec + 2 * sum(spr[:a])
                width = 2 * spr[a]
            else:
                pos, width = rng.randrange(hb, len(raw)), 64
            blob = b"".join(rng.choice(TAL_PIECES) for _ in range(rng.randint(1, 6)))[:width]
            raw[pos: pos + len(blob)] = blob
    return bytes(raw), kinds


# ---------------------------------------------------------------------------------------------
# running one case in-process


class _Hang(BaseException):
    """Raised by SIGALRM in the case that passed the cap (BaseException: no `except Exception` eats it)."""


def _alarm(signum, frame):
    raise _Hang()


def _reset_peak() -> int:
    """Reset the process's peak RSS (VmHWM) and return the current RSS in kB (0 where unsupported)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _status_kb("VmRSS")
    except OSError:
        return 0


def _status_kb(key: str) -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Stats:
    def __init__(self, name: str):
        self.name = name
        self.n = 0
        self.outcome: Counter = Counter()
        self.by_kind: dict[str, Counter] = {}
        self.slowest = (0.0, "")
        self.worst_peak_kb = 0
        self.worst_growth_kb = 0
        self.worst_growth_case = ""
        self.total_s = 0.0
        self.failures: list[str] = []
        self.signatures: set[str] = set()

    def add(self, outcome: str, kinds, dt: float, label: str, peak_kb: int = 0, growth_kb: int = 0) -> None:
        self.n += 1
        self.outcome[outcome] += 1
        for k in set(kinds):
            self.by_kind.setdefault(k, Counter())[outcome] += 1
        if dt > self.slowest[0]:
            self.slowest = (dt, label)
        self.worst_peak_kb = max(self.worst_peak_kb, peak_kb)
        if growth_kb > self.worst_growth_kb:
            self.worst_growth_kb, self.worst_growth_case = growth_kb, f"{label} {list(kinds)}"
        self.total_s += dt

    def report(self) -> str:
        o = self.outcome
        lines = [f"fuzz {self.name}: {self.n} mutants | data {o['data']} | one-line error {o['error']} | "
                 f"tracebacks {o['traceback']} | multi-line errors {o['multiline']} | hangs {o['hang']} | "
                 f"{self.total_s:.1f} s, slowest {self.slowest[0]:.2f} s ({self.slowest[1]}) | worst peak RSS "
                 f"{self.worst_peak_kb / 1024:.0f} MB (process), +{self.worst_growth_kb / 1024:.0f} MB over the "
                 f"case's start ({self.worst_growth_case})"]
        for k in sorted(self.by_kind):
            c = self.by_kind[k]
            lines.append(f"    {k:<22} {sum(c.values()):>5}: data {c['data']}, error {c['error']}, "
                         f"traceback {c['traceback']}, hang {c['hang']}")
        return "\n".join(lines)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Bases, the click command built once, the default bundle and engine loaded once."""
    edfs = _edfs()
    if not edfs:
        pytest.skip(f"no EDF files under {DATA}")
    import typer.main
    import typer.testing

    import runtime.session
    import sleepedge.commands.score as score_mod
    from sleepedge.bundle import default_bundle_path, load_bundle
    from sleepedge.cli import app

    # outputs are fsynced per epoch (crash safety): on tmpfs when there is one, so 3,000 cases time the
    # code and not the disk of a busy machine
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        tmp = Path(tempfile.mkdtemp(prefix="sleepedge-fuzzcmd-", dir=shm))
    else:
        tmp = tmp_path_factory.mktemp("fuzzcmd")
    bases, pool = [], []  # bases: visited once each first; pool: drawn from afterwards
    seen_dirs: Counter = Counter()
    for p in edfs:
        name = p.relative_to(DATA).as_posix()
        bases.append((name, _crop(p)))
        seen_dirs[p.parent.name] += 1
        if seen_dirs[p.parent.name] <= 2:  # 17 Sleep-EDF hypnograms: two of them in the pool
            pool.append(bases[-1])
        scoreable = _scoreable(p, tmp / "scoreable.edf")
        if scoreable is not None:
            bases.append((name + "[scoreable]", scoreable))
            pool += [bases[-1]] * 2
    bundle = load_bundle(default_bundle_path())
    engine = runtime.session.make_sessions(bundle, device="cpu", threads=1)
    command = typer.main.get_command(app)
    mp = pytest.MonkeyPatch()
    mp.setattr(typer.testing, "_get_command", lambda a: command if a is app else typer.main.get_command(a))
    try:
        yield {"bases": bases, "pool": pool, "tmp": tmp, "bundle": bundle, "engine": engine, "app": app, "mp": mp,
               "score_mod": score_mod}
    finally:
        mp.undo()
        if tmp.parent == shm:
            shutil.rmtree(tmp, ignore_errors=True)


def _cached_model(env):
    """`_load_model` / `make_sessions` of the commands return the ones loaded once (the graphs are the
    same for every mutant EDF; loading them 3,000 times would be the whole test)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(env["score_mod"], "_load_model", lambda model: env["bundle"])
    import runtime.session

    mp.setattr(runtime.session, "make_sessions", lambda *a, **k: env["engine"])
    return mp


def _run(env, args: list[str], stats: Stats, kinds, label: str, errors: list[str]) -> str:
    """Invoke the command in-process; classify the ending. `errors`: SleepEdgeError lines the command
    printed (score catches them per recording) - collected by the caller's hook."""
    from typer.testing import CliRunner

    from sleepedge.errors import SleepEdgeError

    runner = CliRunner()
    base_kb = _reset_peak()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_CAP_S)
    t = time.perf_counter()
    exc: BaseException | None = None
    try:
        res = runner.invoke(env["app"], args)
        exc = res.exception
        code = res.exit_code
        output = res.output
    except _Hang as ex:
        exc, code, output = ex, -1, ""
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    dt = time.perf_counter() - t
    peak_kb = _status_kb("VmHWM")
    if isinstance(exc, _Hang):
        outcome = "hang"
    elif exc is not None and not isinstance(exc, SystemExit):
        if isinstance(exc, SleepEdgeError):
            outcome = "error" if str(exc) and "\n" not in str(exc) else "multiline"
        else:
            outcome = "traceback"
    elif code == 0:
        outcome = "data"
    else:
        lines = [ln for ln in output.splitlines() if ln.startswith("error:")]
        outcome = "error" if lines and all("\n" not in e and e for e in errors) else "multiline"
    if outcome in ("traceback", "hang", "multiline"):
        import traceback as tb

        sig = outcome
        if exc is not None and exc.__traceback__ is not None:
            last = tb.extract_tb(exc.__traceback__)[-1]
            sig = f"{type(exc).__name__} at {Path(last.filename).name}:{last.lineno}"
        if sig not in stats.signatures and len(stats.failures) < 20:  # one full report per distinct failure
            stats.signatures.add(sig)
            detail = "".join(tb.format_exception(exc)) if exc is not None and not isinstance(exc, _Hang) else output
            stats.failures.append(f"{label} {kinds} {outcome} [{sig}]: {detail[-1500:]}")
    stats.add(outcome, kinds, dt, label, peak_kb, max(0, peak_kb - base_kb) if base_kb else 0)
    return outcome


def _mutants(env, seed: int, n: int):
    rng = random.Random(seed)
    bases, pool = env["bases"], env["pool"]
    for k in range(n):
        name, base = bases[k] if k < len(bases) else rng.choice(pool)  # every base at least once
        raw, kinds = mutate(base, rng)
        yield k, name, raw, kinds


def _assert_clean(stats: Stats, n: int) -> None:
    print("\n" + stats.report())
    assert stats.n == n
    assert stats.outcome["traceback"] == 0 and stats.outcome["multiline"] == 0, "\n".join(stats.failures)
    assert stats.outcome["hang"] == 0, "\n".join(stats.failures)
    assert stats.outcome["data"] > 0 and stats.outcome["error"] > 0   # both endings exercised
    assert stats.worst_growth_kb / 1024 <= RSS_CAP_MB


def _error_hook(mp: pytest.MonkeyPatch) -> list[str]:
    """Collect the SleepEdgeError messages `score_recording` raises (score prints them as one line)."""
    import runtime.scorer

    from sleepedge.errors import SleepEdgeError

    seen: list[str] = []
    real = runtime.scorer.score_recording

    def wrapped(*a, **k):
        try:
            return real(*a, **k)
        except SleepEdgeError as ex:
            seen.append(str(ex))
            raise

    mp.setattr(runtime.scorer, "score_recording", wrapped)
    return seen


# ---------------------------------------------------------------------------------------------
# the three commands


def test_fuzz_info(env):
    stats = Stats("info")
    case = env["tmp"] / "info.edf"
    for k, name, raw, kinds in _mutants(env, 14_001, N_CASES):
        case.write_bytes(raw)
        args = ["info", str(case)] + (["--json"] if k % 2 else [])
        _run(env, args, stats, kinds, f"#{k} {name}", [])
    _assert_clean(stats, N_CASES)


SCORE_FORMATS = ["tsv,csv,edf,json", "tsv", "csv", "edf", "json", "tsv,json"]


def test_fuzz_score(env):
    stats = Stats("score")
    mp = _cached_model(env)
    try:
        errors = _error_hook(mp)
        case = env["tmp"] / "score.edf"
        for k, name, raw, kinds in _mutants(env, 14_002, N_CASES):
            case.write_bytes(raw)
            out = env["tmp"] / "score-out"
            shutil.rmtree(out, ignore_errors=True)
            fmt = "tsv,csv,edf,json,png" if k % 50 == 7 else SCORE_FORMATS[k % len(SCORE_FORMATS)]
            args = ["score", str(case), "-o", str(out), "-f", fmt] + (["-q"] if k % 3 else [])
            errors.clear()
            outcome = _run(env, args, stats, kinds, f"#{k} {name} -f {fmt}", errors)
            if outcome == "data":  # every asked format was written
                for f in fmt.split(","):
                    assert (out / f"score.sleepedge.{f}").exists(), (k, name, kinds, f)
    finally:
        mp.undo()
    _assert_clean(stats, N_CASES)


def test_fuzz_stream(env):
    stats = Stats("stream --speed 0")
    mp = _cached_model(env)
    try:
        case = env["tmp"] / "stream.edf"
        for k, name, raw, kinds in _mutants(env, 14_003, N_CASES):
            case.write_bytes(raw)
            out = env["tmp"] / "stream-out"
            shutil.rmtree(out, ignore_errors=True)
            args = ["stream", "--edf", str(case), "--speed", "0", "-o", str(out),
                    "-f", "tsv,csv,edf,json"] + (["-q"] if k % 2 else [])
            _run(env, args, stats, kinds, f"#{k} {name}", [])
    finally:
        mp.undo()
    _assert_clean(stats, N_CASES)


def test_stream_of_a_day_of_declared_gaps_is_fast(env):
    """Long-run finds (10,000 mutants, seed 14_003): a corrupted time-keeping TAL declares ~28 h of
    EDF+D gap after 35 s of data; `stream --speed 0` pushed it as 100,000 one-second NaN chunks
    (15-22 s, over the 10-s cap). Chunks wholly inside a gap are now merged (same rows: test_stream)."""
    wanted = {6316, 9618}
    found = [(k, name, raw, kinds) for k, name, raw, kinds in _mutants(env, 14_003, max(wanted) + 1) if k in wanted]
    assert [k for k, *_ in found] == sorted(wanted)
    mp = _cached_model(env)
    try:
        for k, name, raw, kinds in found:
            case = env["tmp"] / "gaps.edf"
            case.write_bytes(raw)
            out = env["tmp"] / "gaps-out"
            shutil.rmtree(out, ignore_errors=True)
            stats = Stats("stream (declared gaps)")
            outcome = _run(env, ["stream", "--edf", str(case), "--speed", "0", "-o", str(out), "-f",
                                 "tsv,csv,edf,json", "-q"], stats, kinds, f"#{k} {name}", [])
            print(f"\n#{k} {name} {kinds}: {stats.slowest[0]:.2f} s")
            assert outcome == "data" and stats.slowest[0] < CASE_CAP_S, stats.report()
            assert len((out / "gaps.sleepedge.tsv").read_text().splitlines()) > 3000   # ~28 h of epochs
    finally:
        mp.undo()


def test_replay_chunks_inside_gaps_are_merged():
    from runtime.sources import _chunk_spans, _gap_index

    assert _chunk_spans(0.0, 5.0, 1.0, _gap_index([])) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    gaps = _gap_index([(1.5, 2.5)])   # gap [1.5, 4.0): only chunks [2, 3) and [3, 4) lie wholly inside
    assert _chunk_spans(0.0, 5.0, 1.0, gaps) == [(0, 1), (1, 2), (2, 4), (4, 5)]
    assert _chunk_spans(100.0, 120.0, 1.0, _gap_index([(50.0, 1e9)])) == [(0, 120.0)]   # inside one long gap
    # unsorted, nested gaps: [0, 3) holds [0.5, 1): chunks [0, 1), [1, 2), [2, 3) merge
    assert _chunk_spans(0.0, 4.0, 1.0, _gap_index([(0.5, 0.5), (0.0, 3.0)])) == [(0, 3), (3, 4)]


# ---------------------------------------------------------------------------------------------
# bundles


def _bundle_mutant(src: Path, dst: Path, rng: random.Random) -> list[str]:
    shutil.copytree(src, dst)
    mpath = dst / "manifest.json"
    m = json.loads(mpath.read_text())
    kinds = []
    for _ in range(rng.choice((1, 1, 2))):
        graphs = sorted(p.name for p in dst.glob("*.onnx"))
        kind = rng.choice(["manifest_field", "manifest_delete", "signal", "preprocessing", "state", "graph_io",
                           "graph_bytes", "graph_bytes_rehashed", "checksum", "graph_file", "manifest_bytes"])
        kinds.append(kind)
        absurd = rng.choice([None, 0, -1, 1e308, "x", [], {}, [1, 2], True, "../../etc/passwd", 10 ** 30])
        if kind == "manifest_field":
            key = rng.choice(sorted(m))
            m[key] = absurd
        elif kind == "manifest_delete":
            m.pop(rng.choice(sorted(m)), None)
        elif kind == "signal" and isinstance(m.get("signal"), dict):
            key = rng.choice(["fs_hz", "epoch_s", "epoch_samples", "modalities"])
            m["signal"][key] = rng.choice([absurd, ["EEG", "EEG"], ["XYZ"], [], 0, 1e9, 99.9])
        elif kind == "preprocessing" and isinstance(m.get("signal"), dict):
            pre = m["signal"].get("preprocessing")
            if isinstance(pre, dict) and pre:
                key = rng.choice(sorted(pre) + ["unknown_key"])
                pre[key] = rng.choice([absurd, 0, -1, 1e9, 99.9, {"EEG": [100, 0.1]}, "nan"])
        elif kind == "state" and isinstance(m.get("state"), dict) and m["state"]:
            name = rng.choice(sorted(m["state"]))
            m["state"][name] = rng.choice([absurd, {"shape": [1, -1], "dtype": "float32"},
                                           {"shape": [1, 10 ** 9, 10 ** 9], "dtype": "float32"},
                                           {"shape": [1, 3], "dtype": "complex128"}])
        elif kind == "graph_io" and isinstance(m.get("graphs"), dict) and m["graphs"]:
            g = m["graphs"][rng.choice(sorted(m["graphs"]))]
            if isinstance(g, dict):
                side = rng.choice(["inputs", "outputs"])
                if isinstance(g.get(side), dict) and g[side]:
                    name = rng.choice(sorted(g[side]))
                    g[side][rng.choice([name, name + "_renamed"])] = rng.choice(
                        [absurd, {"shape": ["batch", 7, 3000]}, {"shape": [1, 2, 3, 4, 5]}])
        elif kind in ("graph_bytes", "graph_bytes_rehashed") and graphs:
            gp = dst / rng.choice(graphs)
            b = bytearray(gp.read_bytes())
            op = rng.choice(["flip", "truncate", "append", "zero"])
            if op == "flip":
                for _ in range(rng.choice([1, 16, 256])):
                    b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            elif op == "truncate":
                del b[rng.randrange(len(b)):]
            elif op == "append":
                b += bytes(rng.randrange(256) for _ in range(100))
            else:
                b = bytearray(len(b) // 10)
            gp.write_bytes(bytes(b))
            if kind == "graph_bytes_rehashed" and isinstance(m.get("files"), dict):
                m["files"][gp.name] = hashlib.sha256(bytes(b)).hexdigest()
        elif kind == "checksum" and isinstance(m.get("files"), dict) and m["files"]:
            name = rng.choice(sorted(m["files"]))
            m["files"][name] = rng.choice(["0" * 64, "x", None, 5])
        elif kind == "graph_file" and graphs:
            (dst / rng.choice(graphs)).unlink()
    if "manifest_bytes" in kinds:
        text = json.dumps(m).encode()
        mpath.write_bytes(rng.choice([text[: rng.randrange(len(text))], b"\xff\xfe" + text, b"", b"[]", b"null"]))
    else:
        mpath.write_text(json.dumps(m))
    return kinds


def test_fuzz_score_with_mutated_bundles(env):
    from sleepedge.bundle import default_bundle_path

    src = default_bundle_path()
    assert src.is_dir()
    stats = Stats("score --model <mutated default bundle>")
    edf = env["tmp"] / "bundle-night.edf"
    sc = next((raw for name, raw in env["bases"] if name.endswith("SC4001E0-PSG.edf")), None)
    if sc is None:  # any base that scores
        sc = env["bases"][0][1]
    edf.write_bytes(sc)
    rng = random.Random(14_004)
    mp = pytest.MonkeyPatch()
    try:
        errors = _error_hook(mp)
        for k in range(N_BUNDLES):
            dst = env["tmp"] / "bundle-mutant"
            shutil.rmtree(dst, ignore_errors=True)
            kinds = _bundle_mutant(src, dst, rng)
            out = env["tmp"] / "bundle-out"
            shutil.rmtree(out, ignore_errors=True)
            errors.clear()
            _run(env, ["score", str(edf), "--model", str(dst), "-o", str(out), "-f", "tsv,json", "-q",
                       "--device", "cpu", "--threads", "1"], stats, kinds, f"bundle #{k}", errors)
    finally:
        mp.undo()
    # the shipped asset is untouched
    assert json.loads((src / "manifest.json").read_text())["schema"] == "sleepedge.bundle/1"
    print("\n" + stats.report())
    assert stats.n == N_BUNDLES
    assert stats.outcome["traceback"] == 0 and stats.outcome["multiline"] == 0, "\n".join(stats.failures)
    assert stats.outcome["hang"] == 0, "\n".join(stats.failures)
    assert stats.outcome["error"] > 0


# ---------------------------------------------------------------------------------------------
# a sample through the real CLI (a subprocess: the real entry point, its peak RSS)

_RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "try:\n"
    "    r = subprocess.run(sys.argv[1:], timeout=%r)\n"
    "    rc = r.returncode\n"
    "except subprocess.TimeoutExpired:\n"
    "    rc = 124\n"
    "print('MAXRSS_KB=%%d' %% resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(rc)\n"
) % CASE_CAP_S


def test_fuzz_commands_through_the_cli(env):
    """N_CLI mutants per command through `python -m sleepedge.cli` (the console entry point's run()):
    the issue-14 regression mutant first for info. One-line error or data, no traceback, no hang,
    peak RSS of the process <= 300 MB."""
    rng = random.Random(14_005)
    work = env["tmp"] / "cli"
    work.mkdir(exist_ok=True)
    cases: list[tuple[str, list[str], Path]] = []
    utf8 = DATA / "mne-edf-variants" / "test_utf8_annotations.edf"
    if utf8.exists():
        raw = bytearray(utf8.read_bytes())
        raw[244:252] = b"1e300   "  # the absurd sample rate
        p = work / "issue14.edf"
        p.write_bytes(bytes(raw))
        cases.append(("info", ["info", str(p)], p))
    bases = env["bases"]
    for cmd in ("info", "score", "stream"):
        for j in range(N_CLI):
            name, base = rng.choice(bases)
            raw, _ = mutate(base, rng)
            p = work / f"{cmd}{j}.edf"
            p.write_bytes(raw)
            out = work / f"{cmd}{j}-out"
            args = {"info": ["info", str(p)],
                    "score": ["score", str(p), "-o", str(out), "-f", "tsv,csv,edf,json", "-q", "--threads", "1"],
                    "stream": ["stream", "--edf", str(p), "--speed", "0", "-o", str(out), "-q"]}[cmd]
            cases.append((cmd, args, p))
    envvars = dict(os.environ, OMP_NUM_THREADS="1")
    worst_kb, outcomes = 0, Counter()
    for cmd, args, p in cases:
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", _RSS_WRAPPER, sys.executable, "-m", "sleepedge.cli", *args],
                           capture_output=True, text=True, cwd=ROOT, env=envvars, timeout=CASE_CAP_S + 30)
        dt = time.perf_counter() - t
        err_lines = r.stderr.splitlines()
        kb = int(err_lines[-1].split("=")[1]) if err_lines and err_lines[-1].startswith("MAXRSS_KB=") else 0
        worst_kb = max(worst_kb, kb)
        assert "Traceback" not in r.stderr + r.stdout, (cmd, p.name, r.stderr[-2000:])
        assert r.returncode != 124, f"{cmd} {p.name}: hang (> {CASE_CAP_S} s)"
        if r.returncode == 0:
            outcomes[f"{cmd}: data"] += 1
        else:
            errs = [ln for ln in err_lines if ln.startswith("error:")]
            assert errs, (cmd, p.name, r.returncode, r.stderr[-2000:])
            outcomes[f"{cmd}: one-line error"] += 1
        print(f"cli {cmd} {p.name}: rc {r.returncode}, {dt:.1f} s, peak RSS {kb / 1024:.0f} MB")
    print(f"cli sample: {len(cases)} cases {dict(outcomes)}; tracebacks 0, hangs 0; worst peak RSS {worst_kb / 1024:.0f} MB")
    if cases[0][2].name == "issue14.edf":
        assert outcomes["info: one-line error"] >= 1
    assert worst_kb / 1024 <= RSS_CAP_MB
