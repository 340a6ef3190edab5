"""torchrun-style DDP (gloo, 2 CPU processes) equals one process with the same global batch.

Both runs go through the real code path: train.dist.init_distributed (env://), wrap_model
(DistributedDataParallel), epoch_loader (DistributedSampler), train.loop.fit, the recipe's
gradient clipping (SGD with momentum: see _train). Weights after N steps are compared to float tolerance.
"""

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

torch.set_num_threads(1)

N_EPOCHS_DATA = 24     # 30-s epochs in the cache -> 3 steps of global batch 8
GLOBAL_BATCH = 8


def _make_cache(root):
    from sleepedge.contract import ROLES
    from train.cache import write_arrays

    rng = np.random.default_rng(0)
    for s in range(2):
        x = rng.normal(0, 1, (N_EPOCHS_DATA // 2, len(ROLES), 3000)).astype(np.float32)
        write_arrays(root, f"rec{s}", f"subj{s}", x, [1, 1, 0, 0, 0, 0], rng.integers(0, 5, N_EPOCHS_DATA // 2))


def _train(cache_root, out, world_size):
    """The training run (one rank of it under DDP). Returns the final state dict on rank 0."""
    import torch.nn.functional as F

    from sleepedge.contract import IGNORE
    from sleepedge.models import SynthSleepNet, preset
    from train import dist
    from train.cache import Cache
    from train.data import EpochDataset, epoch_loader
    from train.loop import Objective, fit, set_seed

    info = dist.init_distributed("cpu")
    assert info.world_size == world_size
    set_seed(0)  # every rank builds the same initial model (DDP also broadcasts rank 0's)
    model = SynthSleepNet(preset("tiny", modalities=("EEG", "EOG"), encoder_mode="full"))
    cache = Cache(cache_root)
    ds = EpochDataset(cache, cache.rec_ids(), ("EEG", "EOG"))
    obj = dist.wrap_model(Objective(model, lambda m, x, p, y: F.cross_entropy(m(x, p)[0], y, ignore_index=IGNORE)), info)
    # SGD + momentum: linear in the gradient, so a wrong reduction (sum instead of mean, a rank
    # training on its half batch only) shows up; Adam would hide a gradient scale error.
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    per_rank = GLOBAL_BATCH // world_size

    def batches(epoch):  # unshuffled: rank r takes r, r+W, ... so each global batch holds the same epochs
        return epoch_loader(ds, per_rank, shuffle=False, seed=0, epoch=epoch, info=info)

    def step(b):
        return obj(b[0], b[1], b[2]), b[0].shape[0]

    res = fit(obj, opt, batches, step, lambda: {}, out=out, select_key="none", epochs=1, info=info)
    dist.cleanup(info)
    return res


def _worker(rank, world_size, port, cache_root, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    res = _train(cache_root, out, world_size)
    if rank == 0:
        torch.save(res.best_state, os.path.join(out, "ddp_final.pt"))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    _make_cache(cache)
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    single = _train(cache, tmp_path / "one", 1).best_state

    out = tmp_path / "ddp"
    out.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(cache), str(out)), nprocs=2, join=True)
    ddp = torch.load(out / "ddp_final.pt", weights_only=True)

    init_model_changed = False
    max_diff = 0.0
    for k, v in single.items():
        max_diff = max(max_diff, float((v.float() - ddp[k].float()).abs().max()))
    # the run really trained (weights moved from the seed-0 initialisation)
    from sleepedge.models import SynthSleepNet, preset
    from train.loop import set_seed
    set_seed(0)
    init = SynthSleepNet(preset("tiny", modalities=("EEG", "EOG"), encoder_mode="full")).state_dict()
    init_model_changed = max(float((init[k].float() - single[k].float()).abs().max()) for k in init) > 1e-4
    print(f"DDP(2 x batch {GLOBAL_BATCH // 2}) vs 1 x batch {GLOBAL_BATCH}: max |dW| = {max_diff:.3e}")
    assert init_model_changed
    assert max_diff < 1e-5
