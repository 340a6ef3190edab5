"""The SynthSleepNet recipe on the one real night: `data prepare` -> `train finetune` -> `export`
-> `score`, through the CLI, on Sleep-EDF `SC4001E0-PSG.edf` + its expert hypnogram
(`../shared/data/sleep-edf/`, skipped cleanly when absent).

What this proves is that the REAL loaders work on a real file: Sleep-EDF naming and pairing, the
file that is 1 byte longer than its header, the 1-Hz `EMG submental` RMS envelope (a missing EMG
role, never fed as EMG), the 30-min wake crop of a 22-h cassette recording, labels aligned epoch
for epoch with the hypnogram, a checkpoint that exports through the gate, and a bundle that scores
the whole real night. Expectations are computed here, independently of `sleepedge.scoring`, from
the raw EDF+ annotation bytes and the raw PSG header.

The checkpoint is a SMOKE TEST: a few optimiser steps on the real night, written to a temp dir
and thrown away; it is not a usable model and no accuracy is asserted. The subject-level split
needs more than one subject, so two tiny random-array "nights" (`simulated: true` in the cache)
are added as the validation and test subjects; the seed is chosen so that the real night is the
only training subject (asserted from `split.json` and the bundle's provenance).
"""

import csv
import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sleepedge.cli import app
from sleepedge.contract import CORE_ROLES, IGNORE, Q_MISSING, ROLES, STAGES

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SEDF = SHARED / "sleep-edf"
PSG = "SC4001E0-PSG.edf"
HYP = "SC4001EC-Hypnogram.edf"
REC_ID = "SC4001E0-PSG"
TRIM_MIN = 30.0
runner = CliRunner()

# the Sleep-EDF R&K labels -> AASM codes (S3 + S4 -> N3; `?` and movement -> IGNORE, never Wake)
RK = {"Sleep stage W": 0, "Sleep stage 1": 1, "Sleep stage 2": 2, "Sleep stage 3": 3,
      "Sleep stage 4": 3, "Sleep stage R": 4, "Sleep stage ?": IGNORE, "Movement time": IGNORE}


def _need_real():
    if not ((SEDF / PSG).is_file() and (SEDF / HYP).is_file()):
        pytest.skip(f"real night ../shared/data/sleep-edf/{PSG} + {HYP} not available (../shared/data absent)")


# ------------------------------------------------------------ independent readers (raw bytes)
def _raw_tal(path: Path) -> list[tuple[float, float, str]]:
    """(onset_s, duration_s, text) of every annotation in an annotation-only EDF+ (Sleep-EDF
    hypnogram layout), parsed from the bytes: no sleepedge, no pyedflib."""
    b = path.read_bytes()
    header_bytes = int(b[184:192])
    out = []
    for tal in b[header_bytes:].split(b"\x00"):
        parts = tal.split(b"\x14")
        if len(parts) < 2:
            continue
        onset_dur = parts[0].split(b"\x15")
        if len(onset_dur) < 2:      # the record's time-keeping TAL (no duration, empty text)
            continue
        for text in parts[1:]:
            if text:
                out.append((float(onset_dur[0]), float(onset_dur[1]), text.decode("latin-1")))
    return out


def _raw_n_epochs(psg: Path) -> int:
    """30-s epochs of signal per the PSG header: n_records * record duration / 30."""
    with open(psg, "rb") as f:
        head = f.read(256)
    return int(int(head[236:244]) * float(head[244:252]) // 30)


def _expected_stages(hyp: Path, n_epochs: int) -> np.ndarray:
    st = np.full(n_epochs, IGNORE, np.int16)
    for onset, dur, text in _raw_tal(hyp):
        a, b = int(round(onset / 30)), int(round((onset + dur) / 30))
        st[max(a, 0):min(b, n_epochs)] = RK[text]
    return st


def _expected_window(st: np.ndarray, margin_min: float) -> tuple[int, int]:
    m = int(margin_min * 2)  # 30-s epochs per minute
    sleep = np.flatnonzero((st != IGNORE) & (st != 0))
    return max(0, sleep[0] - m), min(len(st), sleep[-1] + 1 + m)


# ------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Lay the pair out as Sleep-EDF names (symlinks) and run `sleepedge data prepare`."""
    _need_real()
    from sleepedge.edf import EDFQuirkWarning

    root = tmp_path_factory.mktemp("real")
    src = root / "src"
    src.mkdir()
    for name in (PSG, HYP):
        (src / name).symlink_to((SEDF / name).resolve())
    cache = root / "cache"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = runner.invoke(app, ["data", "prepare", str(src), "-o", str(cache),
                                  "--trim-wake-min", str(TRIM_MIN)])
    assert res.exit_code == 0, res.output
    quirks = [str(w.message) for w in caught if issubclass(w.category, EDFQuirkWarning)]
    return {"root": root, "src": src, "cache": cache, "output": res.output, "quirks": quirks}


# ------------------------------------------------------------ prepare
def test_prepare_real_night_epochs_labels_roles(prepared):
    from sleepedge.scoring import read_scoring
    from train.cache import Cache

    n_sig = _raw_n_epochs(SEDF / PSG)
    assert n_sig == 2650                                    # 79,500 s of signal (22.1 h)
    expected = _expected_stages(SEDF / HYP, n_sig)
    lo, hi = _expected_window(expected, TRIM_MIN)
    assert (lo, hi) == (961, 1802)                          # README: band-power epoch 0 = epoch 961 here

    assert "1 added, 0 unchanged, 0 failed" in prepared["output"]
    # the file is 1 byte longer than its header says: read leniently, said ONCE (one open)
    assert len(prepared["quirks"]) == 1 and "1 bytes after the last data record" in prepared["quirks"][0]

    c = Cache(prepared["cache"])
    assert c.rec_ids() == [REC_ID] and c.subjects == ["00"] and not c.simulated
    rec = c.recording(REC_ID)
    meta = json.loads((prepared["cache"] / REC_ID / "meta.json").read_text())
    assert meta["layout"] == "sleep-edf" and (meta["subject"], meta["night"]) == ("00", 1)
    assert meta["sources"][HYP]                              # the hypnogram was paired by name

    # wake cropped to 30 min around the sleep period, at the epoch the hypnogram says
    assert rec.n_epochs == meta["n_epochs"] == hi - lo == 841
    assert meta["first_epoch"] == lo and meta["onset_s"] == lo * 30.0
    assert rec.x.shape == (841, len(ROLES), 3000) and rec.x.dtype == np.float16

    # labels == the hypnogram's, epoch for epoch, over the kept span
    stages = np.asarray(rec.stages)
    assert np.array_equal(stages, expected[lo:hi])
    counts = {STAGES[k]: int((stages == k).sum()) for k in range(5)}
    assert counts == {"W": 188, "N1": 58, "N2": 250, "N3": 220, "REM": 125}   # N3 = S3 101 + S4 119
    assert meta["stage_counts"] == {str(k): v for k, v in zip(range(5), counts.values())}
    bp = SHARED / "sleep-edf-bandpower-78" / "SC4001E0-PSG.npz"
    if bp.is_file():  # a third, independently made labelling of the same crop
        assert np.array_equal(stages, np.load(bp)["labels"])

    # `?`: this night's 230 unscored epochs start at 79,500 s, exactly where the signal ends,
    # so none lies in the kept span; the scoring reader codes them IGNORE, never Wake
    raw = _raw_tal(SEDF / HYP)
    q_onsets = [on for on, _, t in raw if t == "Sleep stage ?"]
    assert q_onsets == [79500.0] and not any(t == "Movement time" for _, _, t in raw)
    hyp, _ = read_scoring(SEDF / HYP)
    assert hyp.stages.shape == (2880,) and np.all(hyp.stages[n_sig:] == IGNORE)
    assert int((hyp.stages == 0).sum()) == 1997 == sum(d for _, d, t in raw if t == "Sleep stage W") / 30
    assert not np.any(stages == IGNORE) and hi <= n_sig

    # roles: EEG Fpz-Cz (preferred over Pz-Oz), EOG, the 1-Hz thermistor as RESP; the 1-Hz EMG
    # RMS envelope is a MISSING role (presence 0, zeros, Q_MISSING), with the reason recorded
    assert meta["roles_used"] == ["EEG", "EOG", "RESP"]
    assert meta["channels"] == {"EEG": "EEG Fpz-Cz", "EOG": "EOG horizontal", "RESP": "Resp oro-nasal"}
    assert "EMG submental" not in meta["channels"].values()
    assert set(meta["unusable_roles"]) == {"EMG"} and "1 Hz" in meta["unusable_roles"]["EMG"]
    assert meta["missing_roles"] == ["EMG", "ECG", "SPO2"]
    present = np.asarray(rec.present)
    for j, r in enumerate(ROLES):
        assert bool(present[:, j].all()) == (r in ("EEG", "EOG", "RESP")), r
        assert bool(present[:, j].any()) == (r in ("EEG", "EOG", "RESP")), r
    emg = ROLES.index("EMG")
    assert np.all(np.asarray(rec.quality)[:, emg] & Q_MISSING)
    assert not np.asarray(rec.x[:, emg]).any()
    x_eeg = np.asarray(rec.x[:, ROLES.index("EEG")], np.float32)
    assert np.isfinite(x_eeg).all() and x_eeg.std() > 0.1


# ------------------------------------------------------------ finetune -> export -> score
def _add_heldout_arrays(cache: Path) -> list[str]:
    """Two tiny random-array subjects (marked simulated) for val and test: every stage and some
    apnea/hypopnea epochs, so that no validation/test metric is NaN."""
    from train.cache import write_arrays

    rng = np.random.default_rng(0)
    n = 40
    present = np.array([r in ("EEG", "EOG") for r in ROLES], np.uint8)
    subs = []
    for k in range(2):
        x = (rng.standard_normal((n, len(ROLES), 3000)) * present[None, :, None]).astype(np.float32)
        stages = np.resize(np.arange(5, dtype=np.int16), n)
        apnea = (np.arange(n) % 7 == k).astype(np.uint8)
        hypop = (np.arange(n) % 5 == k + 1).astype(np.uint8)
        write_arrays(cache, f"heldout{k}", f"heldout{k}", x, present, stages, apnea, hypop)
        subs.append(f"heldout{k}")
    return subs


def test_finetune_export_score_on_real_night(prepared):
    from sleepedge.bundle import load_bundle
    from train.splits import split_subjects

    root = prepared["root"]
    cache = root / "cache-with-heldout"   # a copy: the prepared cache stays as `data prepare` wrote it
    shutil.copytree(prepared["cache"], cache)
    held = _add_heldout_arrays(cache)
    subjects = sorted(["00", *held])
    seed = next(s for s in range(100) if split_subjects(subjects, seed=s).train == ("00",))

    # ---- finetune: a few steps (time-boxed) over the real night only
    run = root / "ft"
    res = runner.invoke(app, ["train", "finetune", "--cache", str(cache), "-o", str(run), "--seed", str(seed),
                              "--epochs", "1", "--max-minutes", "0.1", "--chunk-len", "64", "--batch-nights", "1",
                              "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    split = json.loads((run / "split.json").read_text())
    assert split["train"] == ["00"] and sorted(split["val"] + split["test"]) == held
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_done"] == 1 and np.isfinite(metrics["history"][0]["train_loss"])
    prov = json.loads((run / "provenance.json").read_text())
    sha = hashlib.sha256((SEDF / PSG).read_bytes()).hexdigest()
    assert prov["sources"][REC_ID][PSG] == sha
    config = json.loads((run / "config.json").read_text())
    assert tuple(config["model"]["modalities"]) == CORE_ROLES

    # ---- export: the gate at its CLI minimums (16 gate epochs, 500-step rollout)
    bundle_dir = root / "real-smoke.sleepedge"
    res = runner.invoke(app, ["export", str(run / "model.pt"), "-o", str(bundle_dir),
                              "--gate-epochs", "16", "--rollout-steps", "500"])
    assert res.exit_code == 0, res.output
    assert "gate passed" in res.output
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    gate = manifest["gate"]
    assert gate["passed"] is True and gate["rollout_steps"] == 500 and gate["max_abs_diff"] <= gate["tolerance"]
    assert manifest["provenance"]["training"]["split"]["train"] == ["00"]   # trained on the real night only
    # labelled by what the weights were fitted on (the real night), not by the simulated val/test arrays
    assert manifest["provenance"]["simulated"] is False and manifest["provenance"]["data"].startswith("REAL")
    bundle = load_bundle(bundle_dir)
    assert bundle.manifest["files"] and bundle.graph_path("epoch").is_file()

    # ---- score the whole real night (the raw file, through the runtime's own reader)
    out = root / "scored"
    res = runner.invoke(app, ["score", str(prepared["src"] / PSG), "--model", str(bundle_dir), "-o", str(out),
                              "--format", "tsv", "--device", "cpu", "--threads", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    tsv = out / f"{REC_ID}.sleepedge.tsv"
    with open(tsv, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    n_sig = _raw_n_epochs(SEDF / PSG)
    assert len(rows) == n_sig == 2650                        # one row per 30-s epoch of signal
    assert [float(r["onset"]) for r in rows] == [30.0 * k for k in range(n_sig)]
    assert all(float(r["duration"]) == 30 for r in rows)
    assert {r["stage"] for r in rows} <= set(STAGES)
    p = np.array([[float(r[f"p_{s}"]) for s in STAGES] for r in rows])
    assert np.allclose(p.sum(1), 1.0, atol=1e-3)
    assert all("EMG:missing" in r["quality"] for r in rows)   # the 1-Hz envelope is not EMG here either


# ------------------------------------------------------------ the same loader path, with `?` / MT in the span
def test_prepare_sleep_edf_unscored_and_movement_are_ignore_not_wake(tmp_path):
    """What the real night lacks inside its kept span: `?` and `Movement time` epochs between
    sleep epochs, and a `?` before sleep onset. They are IGNORE (never Wake), they do not count
    as sleep for the wake crop, and a 1-Hz `EMG submental` is a missing role. Generated files
    with Sleep-EDF names, signals and annotation layout."""
    from sleepedge.edf import Annotation, SignalSpec, write_edf
    from train.cache import Cache

    rng = np.random.default_rng(3)
    n = 20
    src = tmp_path / "src"
    src.mkdir()
    write_edf(src / "SC4991E0-PSG.edf", [
        SignalSpec("EEG Fpz-Cz", 100.0, rng.standard_normal(n * 3000) * 20),
        SignalSpec("EOG horizontal", 100.0, rng.standard_normal(n * 3000) * 20),
        SignalSpec("EMG submental", 1.0, np.abs(rng.standard_normal(n * 30)) * 5),
    ])
    # epochs: 0-4 W, 5 ?, 6-7 W, 8-9 S2, 10 MT, 11 S3, 12 ?, 13 R, 14-19 W
    spans = [(0, 5, "Sleep stage W"), (5, 1, "Sleep stage ?"), (6, 2, "Sleep stage W"),
             (8, 2, "Sleep stage 2"), (10, 1, "Movement time"), (11, 1, "Sleep stage 3"),
             (12, 1, "Sleep stage ?"), (13, 1, "Sleep stage R"), (14, 6, "Sleep stage W")]
    write_edf(src / "SC4991EC-Hypnogram.edf", [],
              annotations=[Annotation(a * 30.0, k * 30.0, t) for a, k, t in spans])
    res = runner.invoke(app, ["data", "prepare", str(src), "-o", str(tmp_path / "c"), "--trim-wake-min", "1"])
    assert res.exit_code == 0, res.output
    rec = Cache(tmp_path / "c").recording("SC4991E0-PSG")
    # sleep = epochs 8..13; 1 min = 2 epochs of wake either side -> epochs 6..15; epoch 5's `?`
    # is not sleep, so the crop does not start there
    assert rec.n_epochs == 10
    assert np.asarray(rec.stages).tolist() == [0, 0, 2, 2, IGNORE, 3, IGNORE, 4, 0, 0]
    emg = ROLES.index("EMG")
    assert not np.asarray(rec.present)[:, emg].any()
    meta = json.loads((tmp_path / "c" / "SC4991E0-PSG" / "meta.json").read_text())
    assert meta["first_epoch"] == 6 and meta["stage_counts"] == {"-100": 2, "0": 4, "2": 2, "3": 1, "4": 1}
    assert meta["roles_used"] == ["EEG", "EOG"] and "EMG" in meta["unusable_roles"]
