"""torchrun / DDP plumbing: the same code path for one process and for many.

`torchrun --nproc_per_node N -m sleepedge.cli train ...` sets WORLD_SIZE/RANK/LOCAL_RANK/
MASTER_ADDR/MASTER_PORT; `init_distributed` then joins the process group (nccl on CUDA,
gloo on CPU). With WORLD_SIZE unset or 1 nothing is initialised and every helper is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from sleepedge.errors import DeviceError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    if device not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"--device {device!r} is not known; use auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked but torch sees no CUDA GPU; use --device cpu or auto")
    if device in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(device: str = "auto", backend: str | None = None) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1; otherwise a single-process DistInfo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if world > 1 and not tdist.is_initialized():
        be = backend or ("nccl" if dev.type == "cuda" else "gloo")
        tdist.init_process_group(backend=be, init_method="env://", world_size=world, rank=rank)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def wrap_model(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """DistributedDataParallel when distributed; the model itself otherwise."""
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(model, device_ids=ids, find_unused_parameters=True)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") and isinstance(getattr(model, "module"), torch.nn.Module) else model


def make_sampler(dataset, info: DistInfo, shuffle: bool, seed: int):
    """DistributedSampler when distributed (drop_last keeps per-rank batches equal)."""
    if not info.distributed:
        return None
    from torch.utils.data.distributed import DistributedSampler

    return DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle,
                              seed=seed, drop_last=True)


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    if not info.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        tdist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.distributed and tdist.is_initialized():
        tdist.destroy_process_group()
