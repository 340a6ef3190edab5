"""Subject-level splits: deterministic, order-independent, disjoint; test subjects never
reach training or model selection in a real recipe run."""

import json
import random

import numpy as np
import pytest
import torch

from train.splits import SplitError, label_limited_split, split_subjects

torch.set_num_threads(1)


def test_split_is_deterministic_and_order_independent():
    subs = [f"s{i:02d}" for i in range(20)]
    a = split_subjects(subs, seed=3)
    shuffled = subs[:]
    random.Random(1).shuffle(shuffled)
    b = split_subjects(shuffled + subs[:5], seed=3)  # listing order and duplicates do not matter
    assert a == b
    assert set(a.train) | set(a.val) | set(a.test) == set(subs)
    assert not (set(a.train) & set(a.test)) and not (set(a.val) & set(a.test)) and not (set(a.train) & set(a.val))
    assert len(a.test) == 3 and len(a.val) == 3
    assert split_subjects(subs, seed=4) != a


def test_small_and_bad_inputs():
    two = split_subjects(["b", "a"], seed=0)
    assert len(two.train) == 1 and len(two.test) == 1 and two.val == ()
    three = split_subjects(["a", "b", "c"], seed=0)
    assert len(three.train) == len(three.val) == len(three.test) == 1
    with pytest.raises(SplitError, match="at least 2 subjects"):
        split_subjects(["only"])


def test_label_limited_split_keeps_test_fixed_across_n():
    subs = [f"s{i:02d}" for i in range(16)]
    splits = [label_limited_split(subs, n, n_val=1, n_test=2, seed=0) for n in (3, 6, 9, 12)]
    assert len({s.test for s in splits}) == 1 and len({s.val for s in splits}) == 1
    for s, n in zip(splits, (3, 6, 9, 12)):
        assert len(s.train) == n
        assert set(s.train).isdisjoint(s.unlabelled) and set(s.test).isdisjoint(set(s.train) | set(s.unlabelled))
    with pytest.raises(SplitError, match="needs at least"):
        label_limited_split(subs[:3], 3, n_val=1, n_test=2)


def test_no_test_epoch_reaches_training_or_selection(tmp_path, monkeypatch):
    """Run the finetune recipe and record every recording it touches during fit()."""
    from sleepedge.contract import ROLES
    from train import recipes
    from train.cache import write_arrays

    rng = np.random.default_rng(0)
    for s in range(5):
        n = 12
        x = rng.normal(0, 1, (n, len(ROLES), 3000)).astype(np.float32)
        write_arrays(tmp_path / "cache", f"rec{s}", f"subj{s}", x, [1, 0, 0, 0, 0, 0], rng.integers(0, 5, n))
    seen_train, seen_select, in_fit = set(), set(), {"on": False}
    real_chunks, real_eval, real_fit = recipes.iter_chunks, recipes.evaluate_nights, recipes.fit

    def spy_chunks(cache, group, *a, **k):
        seen_train.update(cache.recording(r).subject for r in group)
        return real_chunks(cache, group, *a, **k)

    def spy_eval(model, cache, rec_ids, *a, **k):
        if in_fit["on"]:
            seen_select.update(cache.recording(r).subject for r in rec_ids)
        return real_eval(model, cache, rec_ids, *a, **k)

    def spy_fit(*a, **k):
        in_fit["on"] = True
        try:
            return real_fit(*a, **k)
        finally:
            in_fit["on"] = False

    monkeypatch.setattr(recipes, "iter_chunks", spy_chunks)
    monkeypatch.setattr(recipes, "evaluate_nights", spy_eval)
    monkeypatch.setattr(recipes, "fit", spy_fit)
    cfg = recipes.FinetuneConfig(cache=str(tmp_path / "cache"), out=str(tmp_path / "ft"), epochs=1, chunk_len=6,
                                 batch_nights=2, modalities=("EEG",), encoder_mode="full", device="cpu", seed=1)
    recipes.main(cfg, quiet=True)
    split = json.loads((tmp_path / "ft" / "split.json").read_text())
    assert seen_train == set(split["train"])
    assert seen_select == set(split["val"])
    assert not (seen_train | seen_select) & set(split["test"])
