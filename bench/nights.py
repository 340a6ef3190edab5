"""Simulated nights for the benchmark, written once and cached outside the repository.

A night is an EDF written by sleepedge's simulator (`sleepedge.simulate.simulate_night` +
`write_night`, EEG/EOG/EMG/ECG at `--eeg-rate`, 256 Hz by default so every tool must
resample) plus `<stem>.truth.json`: the simulator's hypnogram (0..4, IGNORE=-100), which the
agreement section compares against. Files are keyed by (hours, seed, ahi, rate) and by a
hash of the simulator's source, so a changed simulator writes fresh nights.

When the simulator is not importable (early in development) `fallback_night` writes a noise
night with the test fixture's drifting signals and NO ground truth; every table that uses it
says so, and the agreement section is skipped.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import REPO

ROLE_KEYWORDS = {"EEG": ("EEG", "C4", "C3", "FPZ", "F4", "O2"), "EOG": ("EOG", "E1", "E2", "LOC", "ROC"),
                 "EMG": ("EMG", "CHIN"), "ECG": ("ECG", "EKG")}


@dataclass
class Night:
    path: Path
    hours: float
    seed: int
    rate_hz: float
    labels: dict            # role -> channel label in the EDF
    truth: list | None      # simulator hypnogram (0..4 / -100) or None for a fallback night
    source: str             # "simulator" | "fallback-noise (no ground truth)"
    write_s: float | None = None

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["path"] = str(self.path)
        d.pop("truth")
        d["n_truth_epochs"] = None if self.truth is None else len(self.truth)
        return d


def simulator_available() -> bool:
    try:
        from sleepedge.simulate import simulate_night, write_night  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not there yet"
        return False
    return True


def _simulator_hash() -> str:
    h = hashlib.sha256()
    d = REPO / "sleepedge" / "simulate"
    for p in sorted(d.rglob("*")):
        if p.is_file() and p.suffix in (".py", ".json", ".npz"):
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:10]


def edf_roles(path: Path) -> dict:
    """role -> label of the EDF's channels (sleepedge's alias table when importable)."""
    from sleepedge.edf import open_edf

    with open_edf(path) as r:
        labels = [s.label for s in r.header.signals]
    try:
        from sleepedge.channels import assign_roles

        return dict(assign_roles(labels).primary)
    except ImportError:
        out = {}
        for role, keys in ROLE_KEYWORDS.items():
            for lab in labels:
                if any(k in lab.upper() for k in keys) and role not in out:
                    out[role] = lab
        return out


def _call_simulate(hours: float, seed: int, ahi: float, rate_hz: float):
    from sleepedge.simulate import simulate_night

    params = inspect.signature(simulate_night).parameters
    if "rates_hz" not in params:
        raise RuntimeError(f"simulate_night{inspect.signature(simulate_night)} has no rates_hz argument; "
                           "the bench needs nights at 256 Hz")
    rates = {role: rate_hz for role in ("EEG", "EOG", "EMG", "ECG")}
    return simulate_night(hours=hours, seed=seed, ahi=ahi, rates_hz=rates)


def _truth_of(night) -> list:
    for name in ("hypnogram", "stages", "truth"):
        v = getattr(night, name, None)
        if v is None and isinstance(night, dict):
            v = night.get(name)
        if v is None:
            continue
        v = getattr(v, "stages", v)  # a scoring.Hypnogram
        return [int(x) for x in np.asarray(v).reshape(-1)]
    raise RuntimeError(f"cannot find the hypnogram in the simulator's night ({type(night).__name__})")


def make_night(workdir: Path, hours: float, seed: int = 7, ahi: float = 15.0, rate_hz: float = 256.0,
               log=print) -> Night:
    import time

    workdir.mkdir(parents=True, exist_ok=True)
    if not simulator_available():
        return fallback_night(workdir, hours, seed, rate_hz, log)
    if hours > MAX_SIM_HOURS:
        return multiday_night(workdir, hours, seed, ahi, rate_hz, log)
    stem = f"night_{hours:g}h_s{seed}_ahi{ahi:g}_{rate_hz:g}hz_{_simulator_hash()}"
    path, truth_path = workdir / f"{stem}.edf", workdir / f"{stem}.truth.json"
    write_s = None
    if not (path.exists() and truth_path.exists()):
        from sleepedge.simulate import write_night

        log(f"  simulating {hours:g} h night (seed {seed}, AHI {ahi:g}, {rate_hz:g} Hz) -> {path.name}")
        t = time.perf_counter()
        night = _call_simulate(hours, seed, ahi, rate_hz)
        write_night(night, path)          # also writes <stem>.tsv (the simulator's truth sidecar)
        write_s = time.perf_counter() - t
        truth_path.write_text(json.dumps({"stages": _truth_of(night), "hours": hours, "seed": seed, "ahi": ahi,
                                          "rate_hz": rate_hz, "simulate_plus_write_s": write_s}))
    truth = json.loads(truth_path.read_text())
    return Night(path, hours, seed, rate_hz, edf_roles(path), truth["stages"], "simulator",
                 truth.get("simulate_plus_write_s"))


MAX_SIM_HOURS = 24.0   # the simulator's longest night


def multiday_night(workdir: Path, hours: float, seed: int, ahi: float, rate_hz: float, log=print) -> Night:
    """A recording longer than the simulator's 24 h (scaling to 72 h): the 24-h simulated night's
    data records repeated back to back, byte for byte, with each copy's time-keeping TALs moved
    on by 24 h (and its event annotations left out), streamed to disk a block at a time. The
    truth is the 24-h hypnogram repeated. Same channels and rates as the shorter nights."""
    from sleepedge.edf import _parse_layout

    base = make_night(workdir, MAX_SIM_HOURS, seed, ahi, rate_hz, log)
    path = workdir / f"{base.path.stem.replace(f'{MAX_SIM_HOURS:g}h', f'{hours:g}h')}_multiday.edf"
    truth_path = path.with_suffix(".truth.json")
    if not (path.exists() and truth_path.exists()):
        log(f"  building a {hours:g}-h night from the 24-h one -> {path.name}")
        lay = _parse_layout(base.path)
        rec_s, n24 = lay.record_duration_s, lay.n_records
        n_total = int(round(hours * 3600 / rec_s))
        rb = 2 * lay.record_samples
        head = bytearray(base.path.read_bytes()[: lay.header_bytes])
        head[236:244] = f"{n_total:<8d}".encode("ascii")
        tmp = path.with_name(path.stem + ".tmp.edf")
        with open(base.path, "rb") as src, open(tmp, "wb") as dst:
            dst.write(bytes(head))
            block = 2048
            for k in range(int(-(-n_total // n24))):          # copy k: records k*n24 ... of the output
                n_k = min(n24, n_total - k * n24)
                for s0 in range(0, n_k, block):
                    s1 = min(n_k, s0 + block)
                    src.seek(lay.header_bytes + s0 * rb)
                    recs = np.frombuffer(src.read((s1 - s0) * rb), dtype=np.uint8).reshape(s1 - s0, rb).copy()
                    if k:
                        for i in lay.annotation_indices:
                            a, b = 2 * int(lay.offsets[i]), 2 * int(lay.offsets[i] + lay.spr[i])
                            recs[:, a:b] = 0
                            for j in range(s1 - s0):
                                tal = f"+{(k * n24 + s0 + j) * rec_s:g}\x14\x14".encode("ascii")
                                recs[j, a:a + len(tal)] = np.frombuffer(tal, dtype=np.uint8)
                    dst.write(recs.tobytes())
        tmp.replace(path)
        reps = int(-(-hours // MAX_SIM_HOURS))
        stages = (base.truth * reps)[: int(round(hours * 120))]
        truth_path.write_text(json.dumps({"stages": stages, "hours": hours, "seed": seed, "ahi": ahi,
                                          "rate_hz": rate_hz, "built_from": base.path.name}))
    truth = json.loads(truth_path.read_text())
    return Night(path, hours, seed, rate_hz, edf_roles(path), truth["stages"], "simulator (24-h night repeated)")


def fallback_night(workdir: Path, hours: float, seed: int, rate_hz: float, log=print) -> Night:
    """Noise night (drifting amplitude/frequency) at `rate_hz`, no ground truth."""
    from sleepedge.edf import SignalSpec, write_edf

    path = workdir / f"fallback_{hours:g}h_s{seed}_{rate_hz:g}hz.edf"
    if not path.exists():
        log(f"  simulator not importable: writing a fallback noise night {path.name} (no ground truth)")
        rng = np.random.default_rng(seed)
        labels = {"EEG": "EEG C4-M1", "EOG": "EOG E1-M2", "EMG": "EMG Chin", "ECG": "ECG II"}
        specs = []
        n = int(round(hours * 3600 * rate_hz))
        t = np.arange(n) / rate_hz
        for k, (role, label) in enumerate(labels.items()):
            amp = 20 + 15 * np.sin(2 * np.pi * t / (600 + 170 * k) + k)
            freq = 2 + 8 * (0.5 + 0.5 * np.sin(2 * np.pi * t / (900 + 130 * k)))
            phase = 2 * np.pi * np.cumsum(freq) / rate_hz
            data = rng.normal(0, 1, n) * amp + 40 * np.sin(phase) * (amp / 20)
            specs.append(SignalSpec(label, rate_hz, data.astype(np.float64)))
            del amp, freq, phase
        tmp = path.with_name(path.stem + ".tmp.edf")
        write_edf(tmp, specs)
        tmp.replace(path)
    return Night(path, hours, seed, rate_hz, edf_roles(path), None, "fallback-noise (no ground truth)")
