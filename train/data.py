"""Datasets over a prepared cache: single epochs (pretraining, probes) and night sequences
(fine-tuning with truncated BPTT). Every sampler is deterministic from a seed.

Shapes: x [B, M, 3000] float32 in the model's modality order, present [B, M] float 0/1,
stage [B] int64 (IGNORE = -100), apnea/hypopnea [B] float 0/1. Sequences add a T axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from sleepedge.contract import IGNORE, ROLES
from train.cache import Cache
from train.dist import DistInfo


def role_index(roles: Sequence[str]) -> np.ndarray:
    return np.array([ROLES.index(r) for r in roles], dtype=np.int64)


class EpochDataset(torch.utils.data.Dataset):
    """Flat list of (recording, epoch) pairs of the given recordings."""

    def __init__(self, cache: Cache, rec_ids: Sequence[str], roles: Sequence[str], *,
                 scored_only: bool = False, require_role: str | None = None):
        self.cache, self.roles = cache, tuple(roles)
        self.cols = role_index(self.roles)
        self.rec_ids = list(rec_ids)
        items = []
        for k, rid in enumerate(self.rec_ids):
            rec = cache.recording(rid)
            keep = np.ones(rec.n_epochs, dtype=bool)
            if scored_only:
                keep &= np.asarray(rec.stages) != IGNORE
            if require_role is not None:
                keep &= np.asarray(rec.present[:, ROLES.index(require_role)]) > 0
            idx = np.flatnonzero(keep)
            items.append(np.stack([np.full(idx.size, k), idx], axis=1))
        self.items = np.concatenate(items) if items else np.zeros((0, 2), np.int64)

    def __len__(self) -> int:
        return int(len(self.items))

    def subject_of(self, i: int) -> str:
        return self.cache.recording(self.rec_ids[int(self.items[i, 0])]).subject

    def stage_of(self) -> np.ndarray:
        out = np.empty(len(self.items), np.int64)
        for k, rid in enumerate(self.rec_ids):
            sel = self.items[:, 0] == k
            out[sel] = np.asarray(self.cache.recording(rid).stages)[self.items[sel, 1]]
        return out

    def subjects(self) -> np.ndarray:
        subs = np.array([self.cache.recording(r).subject for r in self.rec_ids], dtype=object)
        return subs[self.items[:, 0]] if len(self.items) else np.zeros(0, object)

    def __getitem__(self, i: int):
        k, e = self.items[i]
        rec = self.cache.recording(self.rec_ids[int(k)])
        x = np.asarray(rec.x[e][self.cols], dtype=np.float32)
        present = np.asarray(rec.present[e][self.cols], dtype=np.float32)
        return (torch.from_numpy(x), torch.from_numpy(present), int(rec.stages[e]),
                float(rec.apnea[e]), float(rec.hypopnea[e]))


def collate(batch):
    x, p, s, a, h = zip(*batch)
    return (torch.stack(x), torch.stack(p), torch.tensor(s, dtype=torch.int64),
            torch.tensor(a, dtype=torch.float32), torch.tensor(h, dtype=torch.float32))


def epoch_loader(ds: EpochDataset, batch_size: int, *, shuffle: bool, seed: int, epoch: int,
                 info: DistInfo | None = None, drop_last: bool = False):
    """A DataLoader for one pass: DistributedSampler under DDP, a seeded permutation otherwise."""
    from train.dist import make_sampler

    info = info or DistInfo()
    sampler = make_sampler(ds, info, shuffle=shuffle, seed=seed)
    if sampler is not None:
        sampler.set_epoch(epoch)
        return torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                                           drop_last=drop_last)
    if shuffle:
        g = torch.Generator().manual_seed(seed * 1000003 + epoch)
        sampler = torch.utils.data.RandomSampler(ds, generator=g)
        return torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                                           drop_last=drop_last)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate)


def label_fraction_indices(stages: np.ndarray, subjects: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a stratified `fraction` of scored epochs: within every (subject, stage) group
    keep round(fraction * count) epochs (at least 1), drawn with `seed`. fraction 1.0 keeps all
    scored epochs. Returned sorted."""
    if not 0.0 < fraction <= 1.0:
        from train.loop import TrainError
        raise TrainError(f"--label-fraction {fraction} must be in (0, 1]; e.g. 0.01, 0.05 or 1.0")
    rng = np.random.default_rng(seed)
    keep = []
    scored = np.flatnonzero(stages != IGNORE)
    if fraction >= 1.0:
        return scored
    groups: dict[tuple[str, int], list[int]] = {}
    for i in scored:
        groups.setdefault((str(subjects[i]), int(stages[i])), []).append(int(i))
    for key in sorted(groups):
        idx = np.asarray(groups[key])
        k = max(1, int(round(fraction * idx.size)))
        keep.append(rng.choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)


@dataclass
class SeqChunk:
    """One chunk of B nights: x [B, L, M, S], present [B, L, M], labels [B, L]; `first` marks the
    first chunk of these nights (state reset), `valid` [B, L] marks real (not padded) epochs."""

    x: torch.Tensor
    present: torch.Tensor
    stage: torch.Tensor
    apnea: torch.Tensor
    hypopnea: torch.Tensor
    valid: torch.Tensor
    first: bool
    last: bool
    rec_ids: tuple[str, ...] = ()


def night_groups(rec_ids: Sequence[str], batch_nights: int, *, shuffle: bool, seed: int, epoch: int,
                 info: DistInfo | None = None) -> list[list[str]]:
    """Group nights into batches of `batch_nights`; under DDP every rank gets the same number
    of groups (nights are repeated when there are too few), its own nights otherwise."""
    info = info or DistInfo()
    ids = sorted(rec_ids)
    if shuffle:
        ids = [ids[i] for i in np.random.default_rng(seed * 1000003 + epoch).permutation(len(ids))]
    if info.distributed:
        per = max(1, -(-len(ids) // info.world_size))
        ids = (ids * (per * info.world_size // max(len(ids), 1) + 1))[: per * info.world_size]
        ids = ids[info.rank::info.world_size]
    return [ids[i:i + batch_nights] for i in range(0, len(ids), batch_nights)]


def iter_chunks(cache: Cache, group: Sequence[str], roles: Sequence[str], chunk_len: int,
                n_chunks: int | None = None) -> Iterator[SeqChunk]:
    """Consecutive chunks of `chunk_len` epochs over the nights of `group`, from the start of
    the night (so carried state = what the whole-night causal pass sees). Shorter nights are
    padded (present 0, labels IGNORE, valid 0). `n_chunks` forces a count (DDP equal steps)."""
    cols = role_index(roles)
    recs = [cache.recording(r) for r in group]
    n_max = max(r.n_epochs for r in recs)
    total = n_chunks if n_chunks is not None else -(-n_max // chunk_len)
    S = recs[0].x.shape[-1]
    for c in range(total):
        a, b = c * chunk_len, (c + 1) * chunk_len
        B, L, M = len(recs), chunk_len, len(cols)
        x = np.zeros((B, L, M, S), np.float32)
        pr = np.zeros((B, L, M), np.float32)
        st = np.full((B, L), IGNORE, np.int64)
        ap = np.zeros((B, L), np.float32)
        hy = np.zeros((B, L), np.float32)
        va = np.zeros((B, L), np.float32)
        for i, r in enumerate(recs):
            lo, hi = min(a, r.n_epochs), min(b, r.n_epochs)
            k = hi - lo
            if k <= 0:
                continue
            x[i, :k] = np.asarray(r.x[lo:hi][:, cols], dtype=np.float32)
            pr[i, :k] = np.asarray(r.present[lo:hi][:, cols], dtype=np.float32)
            st[i, :k] = np.asarray(r.stages[lo:hi])
            ap[i, :k] = np.asarray(r.apnea[lo:hi])
            hy[i, :k] = np.asarray(r.hypopnea[lo:hi])
            va[i, :k] = 1.0
        yield SeqChunk(torch.from_numpy(x), torch.from_numpy(pr), torch.from_numpy(st), torch.from_numpy(ap),
                       torch.from_numpy(hy), torch.from_numpy(va), first=(c == 0), last=(c == total - 1), rec_ids=tuple(group))
