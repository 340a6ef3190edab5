"""The CLIP seed's label-limited experiment: methods x N labelled subjects.

Protocol (subject-level, seeded, from the SORTED subject list):
  * test and validation subjects are fixed once (`label_limited_split`) and never depend on N;
  * every self-supervised method pretrains WITHOUT labels on all remaining subjects (the
    unlabelled pool; val/test never reach pretraining);
  * for each N, the first N subjects of a seeded permutation of the pool are labelled (nested:
    the N=3 set is inside the N=6 set); the pretrained encoder + a linear stage head are
    fine-tuned on their epochs, the best pass is chosen on the VALIDATION subjects, and the
    model is scored once on the TEST subjects;
  * `supervised` is the same U2-Net backbone trained from scratch on the same N subjects.
Methods: clip (EEG<->EOG InfoNCE), simclr, tstcc (single-channel EEG, U2-Net backbone),
synthsleepnet (NeuroNet EEG/EOG pretraining -> multimodal SSL -> fine-tuned embedding + head),
supervised. Per-epoch classification for all, so the table compares representations.
Output: OUT/label_limited.{md,json} (accuracy / macro-F1 per method x N), SIMULATED when any
cache recording is simulated.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sleepedge.contract import IGNORE
from train.cache import Cache
from train.data import EpochDataset, epoch_loader
from train.dist import DistInfo, resolve_device
from train.loop import Objective, TrainError, fit, set_seed
from train.metrics import staging_metrics
from train.splits import label_limited_split

METHODS = ("clip", "simclr", "tstcc", "synthsleepnet", "supervised")


@dataclass
class ExperimentConfig:
    cache: str
    out: str
    n_labelled: tuple[int, ...] = (3, 6, 9, 12)
    methods: tuple[str, ...] = METHODS
    n_val: int = 1
    n_test: int = 2
    preset: str = "tiny"
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    max_minutes: float = 30.0
    pretrain_epochs: int = 10
    finetune_epochs: int = 10


class EpochClassifier(nn.Module):
    """Encoder (U2-Net backbone or SynthSleepNet embedding) + linear stage head."""

    def __init__(self, backbone: nn.Module, kind: str, d: int):
        super().__init__()
        self.backbone, self.kind = backbone, kind
        self.head = nn.Linear(d, 5)

    def forward(self, x, present):
        z = self.backbone.embed(x, present) if self.kind == "synth" else self.backbone.encode(x[:, 0])
        return self.head(z)


def _roles(method: str) -> tuple[str, ...]:
    return ("EEG", "EOG") if method in ("clip", "synthsleepnet") else ("EEG",)


def _pretrain(method: str, cache: Cache, pool: list[str], cfg: ExperimentConfig, info: DistInfo,
              minutes: float, out: Path) -> nn.Module | None:
    from sleepedge.models import NeuroNet, SynthSleepNet, preset
    from sleepedge.models.baselines import CLIP, SimCLR, TSTCC
    from sleepedge.models.config import CLIPConfig, SimCLRConfig, TSTCCConfig

    roles = _roles(method)
    ds = EpochDataset(cache, cache.rec_ids(pool), roles, require_role=roles[-1])
    if len(ds) < 2:
        raise TrainError(f"{method}: fewer than 2 pretraining epochs with {roles} in the unlabelled subjects")
    dev = info.device

    def batches(e):
        return epoch_loader(ds, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=e, drop_last=len(ds) > cfg.batch_size)

    def run(model, loss_fn, sub: str, mins: float):
        obj = Objective(model.to(dev), loss_fn)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=1e-2)

        def step(b):
            x, p = b[0].to(dev), b[1].to(dev)
            if x.shape[0] < 2:
                return sum(q.sum() for q in model.parameters()) * 0.0, 0
            return obj(x, p), x.shape[0]
        # no labels, no validation subjects touched: the last state of the SSL run is kept
        res = fit(obj, opt, batches, step, lambda: {}, out=out / sub, select_key="none",
                  epochs=cfg.pretrain_epochs, max_minutes=mins, info=info)
        model.load_state_dict(res.best_state)
        return model

    if method == "supervised":
        return None
    if method == "clip":
        m = CLIP(CLIPConfig(modalities=("EEG", "EOG")))
        return run(m, lambda m, x, p: m.ssl_loss(x[:, 0], x[:, 1])[0], "pretrain", minutes)
    if method == "simclr":
        return run(SimCLR(SimCLRConfig()), lambda m, x, p: m.ssl_loss(x[:, 0])[0], "pretrain", minutes)
    if method == "tstcc":
        return run(TSTCC(TSTCCConfig()), lambda m, x, p: m.ssl_loss(x[:, 0])[0], "pretrain", minutes)
    if method == "synthsleepnet":
        model = SynthSleepNet(preset(cfg.preset, modalities=roles, encoder_mode="lora", modality_dropout=0.2))
        for r in roles:  # unimodal NeuroNet pretraining, then multimodal SSL on top
            uni = NeuroNet(model.config.encoder)
            j = roles.index(r)
            uni = run(uni, lambda m, x, p, j=j: m.ssl_loss(x[:, j])[0], f"pretrain-{r}", minutes / 4)
            model.load_encoder(r, uni.state_dict())
        return run(model, lambda m, x, p: m.ssl_loss(x, p)[0], "pretrain-multimodal", minutes / 2)
    raise TrainError(f"method {method!r} is not known; expected some of {list(METHODS)}")


def _classifier(method: str, pre: nn.Module | None, cfg: ExperimentConfig) -> EpochClassifier:
    from sleepedge.models.baselines import Supervised
    from sleepedge.models.config import SupervisedConfig

    if method == "supervised":
        sup = Supervised(SupervisedConfig())
        return EpochClassifier(sup.encoder, "u2", sup.config.backbone.d_out)
    pre = copy.deepcopy(pre)
    if method == "clip":
        return EpochClassifier(pre.encoders["EEG"], "u2", pre.config.backbone.d_out)
    if method in ("simclr", "tstcc"):
        return EpochClassifier(pre.encoder, "u2", pre.config.backbone.d_out)
    pre.set_encoder_mode("lora")
    return EpochClassifier(pre, "synth", pre.config.d_embed)


@torch.no_grad()
def _predict(clf: nn.Module, ds: EpochDataset, bs: int, dev) -> tuple[np.ndarray, np.ndarray]:
    ys, ps = [], []
    from train.data import collate

    for x, p, s, _a, _h in torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=False, collate_fn=collate):
        ps.append(clf(x.to(dev), p.to(dev)).argmax(-1).cpu().numpy())
        ys.append(s.numpy())
    return (np.concatenate(ys), np.concatenate(ps)) if ys else (np.zeros(0), np.zeros(0))


def _finetune(method: str, pre, cache: Cache, labelled: list[str], val: list[str], test: list[str],
              cfg: ExperimentConfig, info: DistInfo, minutes: float, out: Path) -> dict:
    dev = info.device
    roles = _roles(method)
    clf = _classifier(method, pre, cfg).to(dev)
    tr = EpochDataset(cache, cache.rec_ids(labelled), roles, scored_only=True)
    va = EpochDataset(cache, cache.rec_ids(val), roles, scored_only=True)
    te = EpochDataset(cache, cache.rec_ids(test), roles, scored_only=True)
    obj = Objective(clf, lambda m, x, p, y: F.cross_entropy(m(x, p), y, ignore_index=IGNORE))
    opt = torch.optim.AdamW([p for p in clf.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=1e-2)

    def step(b):
        return obj(b[0].to(dev), b[1].to(dev), b[2].to(dev)), b[0].shape[0]

    def evaluate():
        y, p = _predict(clf, va, cfg.batch_size, dev)
        return staging_metrics(y, p) if len(y) else {"macro_f1": float("nan")}

    res = fit(obj, opt, lambda e: epoch_loader(tr, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=e), step,
              evaluate, out=out, select_key="macro_f1", mode="max", epochs=cfg.finetune_epochs,
              max_minutes=minutes, info=info)
    clf.load_state_dict(res.best_state)
    clf.eval()
    y, p = _predict(clf, te, cfg.batch_size, dev)
    m = staging_metrics(y, p)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "kappa": m["kappa"], "n_test_epochs": m["n"],
            "n_train_epochs": len(tr), "best_pass": res.best_epoch, "val_macro_f1": res.best_score}


def markdown_table(result: dict) -> str:
    ns = result["n_labelled"]
    head = "SIMULATED data — " if result["simulated"] else ""
    lines = [f"### {head}label-limited sleep staging (accuracy / macro-F1 on {len(result['split']['test'])} held-out test subjects)",
             "", "| method | " + " | ".join(f"N={n}" for n in ns) + " |", "|---|" + "---|" * len(ns)]
    for meth in result["methods"]:
        cells = []
        for n in ns:
            r = result["table"].get(meth, {}).get(str(n))
            cells.append("n/a" if r is None else f"{100 * r['accuracy']:.1f} / {100 * r['macro_f1']:.1f}")
        lines.append(f"| {meth} | " + " | ".join(cells) + " |")
    if result["simulated"]:
        lines += ["", "_Trained and evaluated on SIMULATED nights: not evidence of performance on real recordings._"]
    return "\n".join(lines) + "\n"


def run_label_limited(cfg: ExperimentConfig, quiet: bool = False) -> dict:
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad:
        raise TrainError(f"--methods {bad} are not known; expected some of {list(METHODS)}")
    if not cfg.n_labelled or min(cfg.n_labelled) < 1:
        raise TrainError(f"--n-labelled {list(cfg.n_labelled)} must be positive integers, e.g. 3 6 9 12")
    set_seed(cfg.seed)
    info = DistInfo(device=resolve_device(cfg.device))
    cache = Cache(Path(cfg.cache))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ns = tuple(sorted(set(cfg.n_labelled)))
    split = label_limited_split(cache.subjects, max(ns), n_val=cfg.n_val, n_test=cfg.n_test, seed=cfg.seed)
    pool = sorted(set(split.train) | set(split.unlabelled))
    order = [pool[i] for i in np.random.default_rng(cfg.seed).permutation(len(pool))]
    n_ssl = sum(m != "supervised" for m in cfg.methods)
    n_ft = len(cfg.methods) * sum(n <= len(pool) for n in ns)
    pre_min = 0.4 * cfg.max_minutes / max(n_ssl, 1)
    ft_min = (cfg.max_minutes - 0.4 * cfg.max_minutes * (n_ssl > 0)) / max(n_ft, 1)
    table: dict[str, dict[str, dict]] = {}
    t0 = time.monotonic()
    log = (lambda s: None) if quiet else (lambda s: print(s, flush=True))
    for meth in cfg.methods:
        set_seed(cfg.seed)
        pre = _pretrain(meth, cache, pool, cfg, info, pre_min, out / meth)
        table[meth] = {}
        for n in ns:
            if n > len(pool):
                continue
            set_seed(cfg.seed)
            r = _finetune(meth, pre, cache, sorted(order[:n]), list(split.val), list(split.test), cfg, info, ft_min,
                          out / meth / f"n{n}")
            table[meth][str(n)] = r
            log(f"{meth} N={n}: test accuracy {r['accuracy']:.3f} macro-F1 {r['macro_f1']:.3f} ({time.monotonic() - t0:.0f} s)")
    result = {"experiment": "label-limited", "simulated": cache.simulated, "n_labelled": list(ns),
              "methods": list(cfg.methods), "table": table,
              "split": {"test": list(split.test), "val": list(split.val), "pool": pool, "labelled_order": order},
              "config": asdict(cfg), "elapsed_s": time.monotonic() - t0}
    result["markdown"] = markdown_table(result)
    (out / "label_limited.json").write_text(json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=2, default=str))
    (out / "label_limited.md").write_text(result["markdown"])
    return result
