"""Subject-level splits: deterministic from a seed and the SORTED subject list.

Never relies on filesystem order. A subject (all its nights) lands in exactly one of
train / val / test, so no epoch of a test subject can reach training or model selection.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from sleepedge.errors import SleepEdgeError


class SplitError(SleepEdgeError):
    """Subjects cannot be split as asked (too few subjects, overlapping lists...)."""


@dataclass(frozen=True)
class Split:
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    seed: int = 0
    unlabelled: tuple[str, ...] = field(default=())  # label-limited protocol: pretraining-only subjects

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def check_disjoint(self) -> None:
        groups = {"train": set(self.train), "val": set(self.val), "test": set(self.test),
                  "unlabelled": set(self.unlabelled)}
        names = list(groups)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                both = groups[a] & groups[b]
                if both:
                    raise SplitError(f"subjects {sorted(both)} are in both {a} and {b}; a subject must be in one split only")


def _counts(n: int, val_frac: float, test_frac: float, min_train: int = 1) -> tuple[int, int]:
    n_test = max(1, int(round(n * test_frac))) if test_frac > 0 else 0
    n_val = max(1, int(round(n * val_frac))) if val_frac > 0 else 0
    while n - n_test - n_val < min_train and (n_val > 0 or n_test > 0):
        if n_val >= n_test and n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def split_subjects(subjects: Sequence[str], val_frac: float = 0.15, test_frac: float = 0.15,
                   seed: int = 0) -> Split:
    """Shuffle the sorted unique subjects with `seed` and cut them into train/val/test.

    With 3+ subjects each split gets at least one subject; with 2, train + test (val empty:
    model selection then falls back to the last epoch, never to test).
    """
    subs = sorted(set(str(s) for s in subjects))
    if len(subs) < 2:
        raise SplitError(f"need at least 2 subjects for a subject-level split, got {len(subs)} ({subs}); add recordings of more subjects to the cache")
    order = np.random.default_rng(seed).permutation(len(subs))
    shuffled = [subs[i] for i in order]
    if len(subs) == 2:
        return Split(train=(shuffled[0],), val=(), test=(shuffled[1],), seed=seed)
    n_val, n_test = _counts(len(subs), val_frac, test_frac)
    n_val, n_test = max(n_val, 1), max(n_test, 1)
    test = tuple(sorted(shuffled[:n_test]))
    val = tuple(sorted(shuffled[n_test:n_test + n_val]))
    train = tuple(sorted(shuffled[n_test + n_val:]))
    split = Split(train=train, val=val, test=test, seed=seed)
    split.check_disjoint()
    return split


def label_limited_split(subjects: Sequence[str], n_labelled: int, n_val: int = 1, n_test: int = 2,
                        seed: int = 0) -> Split:
    """The label-limited protocol: fixed test + val subjects, `n_labelled` labelled training
    subjects, the rest unlabelled (pretraining only). Test and val do not depend on n_labelled,
    so rows of the table are comparable."""
    subs = sorted(set(str(s) for s in subjects))
    need = n_test + n_val + 1
    if len(subs) < need:
        raise SplitError(f"label-limited protocol needs at least {need} subjects (test {n_test} + val {n_val} + 1 labelled), the cache has {len(subs)}; prepare more recordings")
    order = np.random.default_rng(seed).permutation(len(subs))
    shuffled = [subs[i] for i in order]
    test = tuple(sorted(shuffled[:n_test]))
    val = tuple(sorted(shuffled[n_test:n_test + n_val]))
    pool = shuffled[n_test + n_val:]
    n_lab = min(n_labelled, len(pool))
    split = Split(train=tuple(sorted(pool[:n_lab])), val=val, test=test, seed=seed,
                  unlabelled=tuple(sorted(pool[n_lab:])))
    split.check_disjoint()
    return split
