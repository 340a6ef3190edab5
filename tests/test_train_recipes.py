"""CI smoke: each recipe for a few seconds on a tiny cache of 3 short simulated nights,
through the CLI (CliRunner): files written, metrics present and finite, resume works."""

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sleepedge.cli import app

torch.set_num_threads(1)
runner = CliRunner()
HYP = np.array([0, 0, 1, 2, 2, 2, 3, 3, 3, 2, 2, 4, 4, 4, 2, 2, 3, 2, 1, 0], dtype=np.int16)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from sleepedge.simulate import simulate_night, write_night

    root = tmp_path_factory.mktemp("smoke")
    src = root / "src"
    src.mkdir()
    for i in range(3):
        write_night(simulate_night(seed=10 + i, ahi=30.0, hypnogram=np.roll(HYP, 3 * i), artefacts=False),
                    src / f"sim{i}.edf")
    res = runner.invoke(app, ["data", "prepare", str(src), "-o", str(root / "cache")])
    assert res.exit_code == 0, res.output
    return root / "cache"


def _run(args):
    res = runner.invoke(app, ["train", *args, "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, (res.output, res.exception)
    return res


def _finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


def _check_outputs(out, family):
    from sleepedge.models import load_checkpoint

    for name in ("model.pt", "config.json", "metrics.json", "split.json", "last.pt", "provenance.json"):
        assert (out / name).is_file(), name
    model, ck = load_checkpoint(out / "model.pt")          # torch.load(weights_only=True) inside
    assert type(model).__name__ == family
    assert ck["provenance"]["simulated"] is True
    torch.load(out / "last.pt", weights_only=True)
    metrics = json.loads((out / "metrics.json").read_text())
    assert _finite(metrics["throughput_epochs_per_s"]) and metrics["throughput_epochs_per_s"] > 0
    assert all(_finite(h["train_loss"]) for h in metrics["history"])
    cfg = json.loads((out / "config.json").read_text())
    assert "recipe" in cfg and "model" in cfg
    return metrics


def test_recipes_end_to_end(cache, tmp_path):
    uni = tmp_path / "uni"
    _run(["pretrain-unimodal", "--cache", str(cache), "-o", str(uni), "--modality", "EEG", "--epochs", "1",
          "--batch-size", "8"])
    m = _check_outputs(uni, "NeuroNet")
    assert _finite(m["best_val"])                                   # SSL loss on the validation subject

    mm = tmp_path / "mm"
    _run(["pretrain-multimodal", "--cache", str(cache), "-o", str(mm), "--unimodal", f"EEG={uni / 'model.pt'}",
          "--modalities", "EEG", "--modalities", "EOG", "--epochs", "1", "--batch-size", "8"])
    m = _check_outputs(mm, "SynthSleepNet")
    assert _finite(m["best_val"])

    pr = tmp_path / "probe"
    _run(["probe", "--cache", str(cache), "-o", str(pr), "--checkpoint", str(mm / "model.pt"),
          "--label-fraction", "0.05", "--epochs", "2", "--batch-size", "16"])
    m = _check_outputs(pr, "SynthSleepNet")
    assert _finite(m["test"]["accuracy"]) and _finite(m["test"]["kappa"]) and _finite(m["test"]["macro_f1"])
    # the label fraction is applied: one epoch per (subject, stage) group at 5 % of these tiny nights
    split = json.loads((pr / "split.json").read_text())
    from train.cache import Cache
    c = Cache(cache)
    groups = {(c.recording(r).subject, int(s)) for r in c.rec_ids(split["train"]) for s in c.recording(r).stages if s >= 0}
    assert m["test"]["n_train_epochs"] == len(groups) < sum(c.recording(r).n_epochs for r in c.rec_ids(split["train"]))

    ft = tmp_path / "ft"
    args = ["finetune", "--cache", str(cache), "-o", str(ft), "--checkpoint", str(mm / "model.pt"),
            "--chunk-len", "8", "--batch-nights", "1", "--batch-size", "1", "--event-loss", "focal"]
    _run([*args, "--epochs", "1"])
    m1 = _check_outputs(ft, "SynthSleepNet")
    for k in ("accuracy", "macro_f1", "kappa"):
        assert _finite(m1["test"][k])
    for task in ("apnea", "hypopnea"):
        assert _finite(m1["test"][task]["balanced_accuracy"])
    assert "eeg_only" in m1["test"]
    # resume: continues after pass 0 with the saved optimizer/RNG state
    res = _run([*args, "--epochs", "2", "--resume"])
    m2 = json.loads((ft / "metrics.json").read_text())
    assert [h["epoch"] for h in m2["history"]] == [0, 1]
    assert m2["history"][0] == m1["history"][0]


def test_resume_without_run_and_bad_options(cache, tmp_path):
    res = runner.invoke(app, ["train", "finetune", "--cache", str(cache), "-o", str(tmp_path / "none"), "--resume",
                              "--device", "cpu", "--quiet", "--epochs", "1"])
    assert res.exit_code != 0 and "does not exist" in str(res.exception)
    res = runner.invoke(app, ["train", "pretrain-unimodal", "--cache", str(cache), "-o", str(tmp_path / "x"),
                              "--modality", "EEGG", "--quiet"])
    assert res.exit_code != 0 and "not a role" in str(res.exception)
    res = runner.invoke(app, ["train", "probe", "--cache", str(cache), "-o", str(tmp_path / "p"), "--quiet",
                              "--checkpoint", str(tmp_path / "missing.pt")])
    assert res.exit_code != 0


def test_label_limited_experiment_cli(tmp_path):
    """`train experiment label-limited`: the methods x N table (markdown + JSON), SIMULATED label,
    test subjects outside pretraining and fine-tuning."""
    from sleepedge.contract import ROLES
    from train.cache import write_arrays

    rng = np.random.default_rng(0)
    t = np.arange(3000) / 100.0
    for s in range(6):
        st = rng.integers(0, 5, 16)
        x = rng.normal(0, 0.3, (16, len(ROLES), 3000)).astype(np.float32)
        x[:, 0] += np.sin(2 * np.pi * (1 + 3 * st[:, None]) * t)
        write_arrays(tmp_path / "cache", f"r{s}", f"s{s}", x, [1, 1, 0, 0, 0, 0], st, simulated=True)
    out = tmp_path / "exp"
    res = runner.invoke(app, ["train", "experiment", "label-limited", "--cache", str(tmp_path / "cache"), "-o", str(out),
                              "--n-labelled", "1", "2", "--methods", "clip", "supervised", "--max-minutes", "0.5",
                              "--pretrain-epochs", "1", "--finetune-epochs", "1", "--batch-size", "16",
                              "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, (res.output, res.exception)
    md = (out / "label_limited.md").read_text()
    assert "SIMULATED" in md and "| clip |" in md and "| supervised |" in md and "N=2" in md
    r = json.loads((out / "label_limited.json").read_text())
    assert set(r["table"]) == {"clip", "supervised"} and set(r["table"]["clip"]) == {"1", "2"}
    for meth in r["table"].values():
        for cell in meth.values():
            assert 0.0 <= cell["accuracy"] <= 1.0 and _finite(cell["macro_f1"])
    test = set(r["split"]["test"])
    assert test and not test & set(r["split"]["pool"]) and not test & set(r["split"]["val"])
    assert sorted(r["split"]["labelled_order"]) == r["split"]["pool"]


def test_truncated_bptt_chunks_equal_whole_night_pass():
    """Chunks with the state carried (detached) reproduce the whole-night causal pass exactly,
    and no gradient crosses a chunk boundary."""
    from sleepedge.models import TemporalContext
    from sleepedge.models.config import MambaConfig

    torch.manual_seed(0)
    tc = TemporalContext(MambaConfig(d_model=64, headdim=32, chunk_size=16)).eval()
    z = torch.randn(2, 50, 64, requires_grad=True)
    with torch.no_grad():
        full = tc(z)
    state = tc.init_state(2)
    outs = []
    for a in range(0, 50, 16):
        o, state = tc.forward_chunk(z[:, a:a + 16], state)  # what finetune runs per chunk
        state = tuple(s.detach() for s in state)
        outs.append(o)
    for k in range(3):
        got = torch.cat([o[k] for o in outs], dim=1)
        assert float((got.detach() - full[k]).abs().max()) < 1e-4
    outs[1][0].sum().backward()                 # loss on chunk 2 only
    assert float(z.grad[:, :16].abs().max()) == 0.0 and float(z.grad[:, 16:32].abs().max()) > 0.0


def test_finetune_whole_nights_with_label_fraction(cache, tmp_path):
    out = tmp_path / "ftw"
    _run(["finetune", "--cache", str(cache), "-o", str(out), "--modalities", "EEG", "--encoder-mode", "full",
          "--chunk-len", "0", "--batch-nights", "2", "--epochs", "1", "--label-fraction", "0.5"])
    m = _check_outputs(out, "SynthSleepNet")
    assert _finite(m["test"]["accuracy"]) and m["history"][0]["throughput_epochs_per_s"] > 0
