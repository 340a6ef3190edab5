"""Checkpoints: tensors + plain JSON-able data only, loadable with `torch.load(weights_only=True)`.

Layout (a dict saved by torch.save):
    format      "sleepedge.checkpoint/1"
    family      model class name ("SynthSleepNet", "NeuroNet", "TemporalContext", baselines...)
    config      model.config.to_dict()  (rebuilt exactly with <Config>.from_dict)
    state_dict  {name: Tensor} (CPU)
    n_params    total parameter count
    metrics / provenance / extra   plain dicts (JSON-checked at save time)
Nothing is pickled except tensors and builtins, so loading never executes foreign code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from sleepedge.errors import SleepEdgeError

FORMAT = "sleepedge.checkpoint/1"


class CheckpointError(SleepEdgeError):
    """A checkpoint cannot be written or read (missing, not ours, unknown family, bad weights)."""


def _families() -> dict[str, tuple[type, type]]:
    from sleepedge.models import baselines
    from sleepedge.models.config import EncoderConfig, MambaConfig, SynthSleepNetConfig
    from sleepedge.models.mamba2 import TemporalContext
    from sleepedge.models.neuronet import NeuroNet
    from sleepedge.models.spectral import SpectralSleepNet, SpectralSleepNetConfig
    from sleepedge.models.synthsleepnet import SynthSleepNet

    fams: dict[str, tuple[type, type]] = {
        "SynthSleepNet": (SynthSleepNet, SynthSleepNetConfig),
        "NeuroNet": (NeuroNet, EncoderConfig),
        "TemporalContext": (TemporalContext, MambaConfig),
        "SpectralSleepNet": (SpectralSleepNet, SpectralSleepNetConfig),
    }
    fams.update(baselines.FAMILIES)
    return fams


def _json_check(name: str, value: Any) -> Any:
    if value is None:
        return None
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {name} is not JSON-serialisable ({exc}); pass plain dicts of str/float/int/list"
        ) from None


def save_checkpoint(path: str | Path, model: nn.Module, *, metrics: Mapping[str, Any] | None = None,
                    provenance: Mapping[str, Any] | None = None,
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Write `model` (its config + weights) and plain-data metadata to `path`. Returns the path."""
    family = type(model).__name__
    if family not in _families():
        raise CheckpointError(f"cannot checkpoint a {family}; expected one of {sorted(_families())}")
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "to_dict"):
        raise CheckpointError(f"{family} has no dataclass .config; build it from a config")
    ckpt = {
        "format": FORMAT,
        "family": family,
        "config": cfg.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "n_params": int(sum(p.numel() for p in model.parameters())),
        "metrics": _json_check("metrics", dict(metrics) if metrics is not None else {}),
        "provenance": _json_check("provenance", dict(provenance) if provenance is not None else {}),
        "extra": _json_check("extra", dict(extra) if extra is not None else {}),
        "torch_version": str(torch.__version__),
    }
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(ckpt, tmp)
        tmp.replace(path)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {path}: {exc.strerror or exc}; check the folder") from None
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model from the saved config and load its weights (weights_only=True).
    Returns (model in eval mode, the checkpoint dict)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the .pt file written by save_checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is "not a checkpoint"
        raise CheckpointError(f"{path} is not a loadable sleepedge checkpoint ({type(exc).__name__}); "
                              "re-save it with save_checkpoint") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} checkpoint (format={ckpt.get('format') if isinstance(ckpt, dict) else None!r})")
    fams = _families()
    family = ckpt.get("family")
    if family not in fams:
        raise CheckpointError(f"{path}: unknown model family {family!r}; expected one of {sorted(fams)}")
    model_cls, cfg_cls = fams[family]
    model = model_cls(cfg_cls.from_dict(ckpt["config"]))
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "mismatch"
        raise CheckpointError(f"{path}: weights do not match the saved {family} config ({first})") from None
    model.eval()
    return model, ckpt
