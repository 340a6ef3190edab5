"""The real-data recipe (`sleepedge train bandpower`): subject 0 never enters training,
folds are subject-wise, augmentation keeps shapes/labels aligned, and a short run writes a
checkpoint that exports to a staging-only bundle labelled REAL."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sleepedge.cli import app
from train.bandpower import (
    BandpowerDataError,
    TrainConfig,
    kfold_subjects,
    load_nights,
    make_sample,
    subject_of,
)

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sleep-edf-bandpower-78"


def _fake_night(path: Path, n: int, seed: int) -> None:
    """A night in the stored layout: log powers whose level depends on the stage, rel = softmax."""
    rng = np.random.default_rng(seed)
    labels = np.clip(np.cumsum(rng.integers(-1, 2, n)) % 6 - 1, 0, 4)
    labels[:20] = 0
    base = np.array([[0, -2, -3, -4, -5], [0, -1.5, -2.5, -4, -4.5], [-1, -3, -3.5, -4, -6]], np.float32)
    logp = base[None] + 0.6 * labels[:, None, None] * np.array([1, 0.3, -0.2, 0.1, -0.5])[None, None] \
        + rng.normal(0, 0.3, (n, 3, 5))
    rel = np.exp(logp) / np.exp(logp).sum(-1, keepdims=True)
    labels[5] = -100
    np.savez(path, features=np.concatenate([logp, rel], -1).astype(np.float32), labels=labels.astype(np.int64),
             onsets_sec=np.arange(n) * 30.0)


@pytest.fixture()
def folder(tmp_path):
    d = tmp_path / "bp"
    d.mkdir()
    for i, name in enumerate(("SC4001E0", "SC4002E0", "SC4011E0", "SC4012E0", "SC4021E0", "SC4031E0", "SC4041E0")):
        _fake_night(d / f"{name}-PSG.npz", 120 + 10 * i, i)
    return d


def test_subject_zero_is_never_loaded(folder):
    nights = load_nights(folder)
    assert {n.subject for n in nights} == {"01", "02", "03", "04"} and len(nights) == 5
    assert {n.subject for n in load_nights(folder, include_test=True)} >= {"00"}
    assert subject_of("SC4262F0-PSG") == "26"
    with pytest.raises(BandpowerDataError, match="no SC4"):
        load_nights(folder / "nothing")


def test_folds_are_subject_wise():
    subs = [f"{i:02d}" for i in range(1, 23)]
    folds = kfold_subjects(subs, 5, seed=0)
    assert sorted(s for f in folds for s in f) == subs and all(len(f) in (4, 5) for f in folds)
    assert kfold_subjects(subs, 5, seed=0) == folds != kfold_subjects(subs, 5, seed=1)


def test_augmented_sample_keeps_labels_aligned(folder):
    night = load_nights(folder)[0]
    rng = np.random.default_rng(0)
    cfg = TrainConfig(p_wake_pad=1.0, max_wake_pad=50, p_no_eog=1.0)
    lp, pr, lb = make_sample(night, cfg, rng, train=True)
    assert lp.shape[0] == pr.shape[0] == lb.shape[0] >= len(night.labels)
    assert lp.shape[1:] == (2, 5) and (pr[:, 1] == 0).all() and (pr[:, 0] == 1).all()
    k = int(np.nonzero(lb == -100)[0][0])           # the unscored epoch survives, shifted by the pad
    assert (lb[k - 5: k - 5 + len(night.labels)] == night.labels).all()
    lp0, pr0, lb0 = make_sample(night, cfg, rng, train=False)
    np.testing.assert_array_equal(lp0[:, 0], night.logp[:, 0])  # evaluation: Fpz-Cz + EOG untouched
    np.testing.assert_array_equal(lb0, night.labels)


def test_cli_short_run_exports_a_real_staging_bundle(folder, tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "bandpower", "--data", str(folder), "-o", str(out), "--folds", "0",
                              "--epochs", "2"])
    assert res.exit_code == 0, res.output
    assert "test subject 00 excluded" in res.output
    bundle = tmp_path / "m.sleepedge"
    res = runner.invoke(app, ["export", str(out / "model.pt"), "-o", str(bundle), "--gate-epochs", "16",
                              "--rollout-steps", "500"])
    assert res.exit_code == 0, res.output
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["model"]["family"] == "SpectralSleepNet" and m["labels"]["tasks"] == ["stage"]
    assert m["provenance"]["simulated"] is False and m["provenance"]["data"].startswith("REAL")
    assert m["signal"]["preprocessing"]["normalise"] is False and m["signal"]["modalities"] == ["EEG", "EOG"]
    assert m["gate"]["passed"] is True


@pytest.mark.skipif(not REAL.exists(), reason="../shared/data/sleep-edf-bandpower-78 not available")
def test_real_set_layout():
    nights = load_nights(REAL)
    assert len(nights) == 151 and "00" not in {n.subject for n in nights}
    f = np.load(REAL / "SC4011E0-PSG.npz")["features"]
    rel = np.exp(f[..., :5]) / np.exp(f[..., :5]).sum(-1, keepdims=True)
    np.testing.assert_allclose(rel, f[..., 5:], atol=1e-5)   # rel_* = softmax(log_*): log powers are the whole input
