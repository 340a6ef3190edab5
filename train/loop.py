"""The one training loop every recipe uses.

`fit()` runs epochs of `batches(epoch)` through `step(batch) -> (loss, n_30s_epochs)`, evaluates
on VALIDATION subjects after every pass, deep-copies the best state by `select_key`, stops on
`--epochs` or the `--max-minutes` budget, and writes `last.pt` (model + optimizer + pass + RNG
state) after every pass so `--resume` continues an interrupted run exactly where it stopped.
Works unchanged under DDP (`train.dist`): only rank 0 writes, metrics are all-reduced by the
recipe's `evaluate`.

Everything written is loadable with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from sleepedge.errors import SleepEdgeError
from train.dist import DistInfo, unwrap


class TrainError(SleepEdgeError):
    """Training cannot start or continue (bad option, nothing to train on, bad resume file)."""


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    st = {"python": list(random.getstate()[1]) + [random.getstate()[2] or 0],
          "python_version": random.getstate()[0],
          "numpy": np.random.get_state()[1].astype(np.int64).tolist(),
          "numpy_pos": int(np.random.get_state()[2]),
          "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    py = st["python"]
    random.setstate((st["python_version"], tuple(int(v) for v in py[:-1]), None))
    np.random.set_state(("MT19937", np.asarray(st["numpy"], dtype=np.uint32), int(st["numpy_pos"]), 0, 0.0))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


@dataclass
class FitResult:
    best_score: float
    best_epoch: int
    epochs_done: int
    history: list[dict]
    stopped_by: str               # "epochs" | "time"
    throughput: float             # 30-s epochs per second of training step time
    best_state: dict = field(repr=False, default_factory=dict)


class Objective(torch.nn.Module):
    """Wraps a model and a loss function so DDP sees the loss computation as `forward`."""

    def __init__(self, model: torch.nn.Module, fn: Callable[..., Any]):
        super().__init__()
        self.model = model
        self._fn = fn

    def forward(self, *args):
        return self._fn(self.model, *args)


def core(model: torch.nn.Module) -> torch.nn.Module:
    """The trained model inside DDP and/or an Objective."""
    m = unwrap(model)
    return m.model if isinstance(m, Objective) else m


def _better(a: float, b: float | None, mode: str) -> bool:
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return not math.isnan(a)
    if math.isnan(a):
        return False
    return a < b if mode == "min" else a > b


def fit(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
        batches: Callable[[int], Iterable[Any]], step: Callable[[Any], tuple[torch.Tensor, int]],
        evaluate: Callable[[], dict], *, out: Path, select_key: str, mode: str = "max",
        epochs: int = 10, max_minutes: float | None = None, info: DistInfo | None = None,
        resume: bool = False, grad_clip: float | None = 1.0, log: Callable[[str], None] | None = None,
        progress=None, trainable: Callable[[], Iterable[torch.nn.Parameter]] | None = None) -> FitResult:
    """Train `model` (possibly DDP-wrapped); returns the result with the best state (a deep copy
    of `core(model).state_dict()` at the best validation score; the last state when the
    validation set is empty and `evaluate` returns NaN)."""
    info = info or DistInfo()
    out = Path(out)
    last_path = out / "last.pt"
    start_epoch, history, best_score, best_epoch, best_state = 0, [], None, -1, None
    if resume:
        if not last_path.is_file():
            raise TrainError(f"--resume: {last_path} does not exist; run without --resume first (or point -o at the interrupted run)")
        st = torch.load(last_path, map_location="cpu", weights_only=True)
        core(model).load_state_dict(st["model"])
        optimizer.load_state_dict(st["optimizer"])
        set_rng_state(st["rng"])
        start_epoch, history = int(st["epoch"]) + 1, json.loads(st["history"])
        best_score = None if st["best_score"] is None else float(st["best_score"])
        best_epoch, best_state = int(st["best_epoch"]), st["best_state"]
        if log:
            log(f"resumed from {last_path} after pass {start_epoch}")
    t0 = time.monotonic()
    budget = None if max_minutes is None else max_minutes * 60.0
    stopped_by = "epochs"
    step_time, n_seen = 0.0, 0
    params = list(trainable()) if trainable else [p for p in model.parameters() if p.requires_grad]
    epoch = start_epoch - 1
    for epoch in range(start_epoch, epochs):
        model.train()
        losses = []
        for batch in batches(epoch):
            ts = time.monotonic()
            optimizer.zero_grad(set_to_none=True)
            loss, n = step(batch)
            if not torch.isfinite(loss):
                raise TrainError(f"loss became {loss.item()} at pass {epoch}; lower --lr or check the cache for bad epochs")
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            step_time += time.monotonic() - ts
            n_seen += int(n)
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(epoch, float(loss.detach()), n_seen / max(step_time, 1e-9))
            if budget is not None and time.monotonic() - t0 > budget:
                stopped_by = "time"
                break
        model.eval()
        with torch.no_grad():
            metrics = evaluate()
        score = float(metrics.get(select_key, float("nan")))
        rec = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"),
               "val": metrics, "elapsed_s": time.monotonic() - t0,
               "throughput_epochs_per_s": n_seen / max(step_time, 1e-9)}
        history.append(rec)
        no_val = math.isnan(score)
        if _better(score, best_score, mode) or (no_val and best_score is None):
            best_score = None if no_val else score
            best_epoch = epoch
            best_state = copy.deepcopy(core(model).state_dict())
        if log:
            log(f"pass {epoch}: train loss {rec['train_loss']:.4f}  val {select_key} {score:.4f}  "
                f"({rec['throughput_epochs_per_s']:.1f} epochs/s)")
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            tmp = last_path.with_suffix(".tmp")
            torch.save({"model": core(model).state_dict(), "optimizer": optimizer.state_dict(),
                        "epoch": epoch, "rng": get_rng_state(), "history": json.dumps(history),
                        "best_score": best_score, "best_epoch": best_epoch, "best_state": best_state}, tmp)
            tmp.replace(last_path)
        if stopped_by == "time":
            break
    if best_state is None:
        raise TrainError(f"no training pass completed (start pass {start_epoch}, --epochs {epochs}); raise --epochs or --max-minutes")
    return FitResult(best_score=float("nan") if best_score is None else best_score, best_epoch=best_epoch,
                     epochs_done=epoch + 1, history=history, stopped_by=stopped_by,
                     throughput=n_seen / max(step_time, 1e-9), best_state=best_state)
