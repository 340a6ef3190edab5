"""Training recipes — the one entry point (`main`) behind `sleepedge train <recipe>`.

    pretrain-unimodal    NeuroNet SSL for one modality (masked frame reconstruction + NT-Xent)
    pretrain-multimodal  SynthSleepNet SSL on top of unimodal checkpoints
    probe                frozen encoder + MLP head on the fused embedding; --label-fraction applied
    finetune             adapters + fusion + causal Mamba2 temporal context + stage/apnea/hypopnea
                         heads on consecutive-epoch chunks with the state carried (truncated BPTT)

Every recipe: a dataclass config saved as JSON beside the weights; subject-level split from the
seed (train for fitting, val for model selection, test only for the final report); best state
deep-copied by the validation metric; `last.pt` for `--resume`; the final `model.pt` written with
`sleepedge.models.checkpoint.save_checkpoint` (loadable with weights_only=True), plus
`metrics.json`, `config.json`, `split.json`. Provenance records `simulated: true` when any cache
recording is simulated. torchrun/DDP via `train.dist`; one process is the same code path.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sleepedge.contract import CORE_ROLES, IGNORE, ROLES
from train import dist
from train.cache import Cache
from train.data import EpochDataset, epoch_loader, iter_chunks, label_fraction_indices, night_groups
from train.loop import FitResult, Objective, TrainError, fit, set_seed
from train.metrics import binary_metrics, staging_metrics
from train.splits import Split, split_subjects

RECIPES = ("pretrain-unimodal", "pretrain-multimodal", "probe", "finetune")


# ----------------------------------------------------------------------------- configs
@dataclass
class CommonConfig:
    cache: str = ""
    out: str = ""
    preset: str = "tiny"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    seed: int = 0
    device: str = "auto"
    max_minutes: float | None = None
    resume: bool = False
    val_frac: float = 0.15
    test_frac: float = 0.15
    max_eval_epochs: int = 2048     # cap on validation epochs per pass (SSL); metrics use all

    def to_dict(self) -> dict:
        d = asdict(self)
        d["recipe"] = self.recipe  # type: ignore[attr-defined]
        return d


@dataclass
class UnimodalConfig(CommonConfig):
    recipe: str = field(default="pretrain-unimodal", init=False)
    modality: str = "EEG"


@dataclass
class MultimodalConfig(CommonConfig):
    recipe: str = field(default="pretrain-multimodal", init=False)
    modalities: tuple[str, ...] = CORE_ROLES
    unimodal: dict = field(default_factory=dict)     # role -> NeuroNet checkpoint path
    encoder_mode: str = "lora"
    modality_dropout: float = 0.2


@dataclass
class ProbeConfig(CommonConfig):
    recipe: str = field(default="probe", init=False)
    checkpoint: str = ""            # SynthSleepNet or NeuroNet checkpoint (frozen)
    label_fraction: float = 1.0
    hidden: int = 128


@dataclass
class FinetuneConfig(CommonConfig):
    recipe: str = field(default="finetune", init=False)
    checkpoint: str = ""            # SynthSleepNet checkpoint (pretrain-multimodal); empty = from scratch
    modalities: tuple[str, ...] = CORE_ROLES
    chunk_len: int = 64             # epochs per truncated-BPTT chunk; 0 = whole nights (parallel scan)
    batch_nights: int = 4           # nights per batch (B)
    encoder_mode: str = "lora"
    modality_dropout: float = 0.3
    event_loss: str = "weighted"    # weighted BCE (pos_weight from train labels) | focal
    focal_gamma: float = 2.0
    epoch_head_weight: float = 0.5  # auxiliary loss on the context-free epoch heads
    label_fraction: float = 1.0
    eeg_only_prob: float = 0.2      # P(a night's chunk is shown with EEG alone): single-channel devices


CONFIGS = {"pretrain-unimodal": UnimodalConfig, "pretrain-multimodal": MultimodalConfig,
           "probe": ProbeConfig, "finetune": FinetuneConfig}


# ----------------------------------------------------------------------------- helpers
def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_split(cache: Cache, cfg: CommonConfig) -> Split:
    return split_subjects(cache.subjects, cfg.val_frac, cfg.test_frac, seed=cfg.seed)


def _optimizer(params, cfg: CommonConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise TrainError("the model has no trainable parameters in this configuration; check --encoder-mode")
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class Progress:
    """rich progress line on rank 0: pass, loss, throughput (30-s epochs per second)."""

    def __init__(self, info: dist.DistInfo, title: str, quiet: bool = False):
        self.enabled = info.is_main and not quiet
        self._p = None
        self.title = title

    def __enter__(self):
        if self.enabled:
            from rich.progress import Progress as RP, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._p = RP(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=False)
            self._p.__enter__()
            self._task = self._p.add_task(self.title, total=None)
        return self

    def __call__(self, epoch: int, loss: float, throughput: float) -> None:
        if self._p is not None:
            self._p.update(self._task, description=f"{self.title} pass {epoch}  loss {loss:.4f}  {throughput:.1f} epochs/s")

    def log(self, msg: str) -> None:
        if self._p is not None:
            self._p.console.print(msg)

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _finish(out: Path, model: nn.Module, cfg: CommonConfig, result: FitResult, split: Split, cache: Cache,
            info: dist.DistInfo, test_metrics: dict | None, extra: dict | None = None) -> dict:
    from sleepedge.models.checkpoint import save_checkpoint

    metrics = {"recipe": cfg.recipe, "best_epoch": result.best_epoch, "best_val": result.best_score,
               "epochs_done": result.epochs_done, "stopped_by": result.stopped_by,
               "throughput_epochs_per_s": result.throughput, "val": result.history[result.best_epoch - result.history[0]["epoch"]]["val"]
               if result.history else {}, "test": test_metrics or {}, "history": result.history}
    prov = cache.provenance()
    # what the weights were fitted on decides the label: the training (and unlabelled pretraining)
    # subjects, not validation/test recordings that happen to share the cache
    fitted = cache.provenance([*split.train, *split.unlabelled])
    simulated = bool(fitted["simulated"])
    prov.update({"split": split.to_dict(), "simulated": simulated,
                 "data": (f"{'SIMULATED' if simulated else 'REAL'} recordings {fitted['recordings']} "
                          f"(subjects {fitted['subjects']}, {fitted['n_epochs']} epochs) from cache {cache.root.name}"),
                 "notice": "trained on SIMULATED nights: not validated on real recordings" if simulated else ""})
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_checkpoint(out / "model.pt", model, metrics={k: v for k, v in metrics.items() if k != "history"},
                        provenance={k: v for k, v in prov.items() if k != "sources"},
                        extra={"recipe": cfg.recipe, "recipe_config": json.loads(json.dumps(cfg.to_dict(), default=str)),
                               **(extra or {})})
        _write_json(out / "config.json", {"recipe": cfg.to_dict(), "model": model.config.to_dict()})
        _write_json(out / "metrics.json", metrics)
        _write_json(out / "split.json", split.to_dict())
        _write_json(out / "provenance.json", prov)
    return metrics


def _ssl_eval(model: nn.Module, ds: EpochDataset, loss_of: Callable, cfg: CommonConfig, device) -> dict:
    """Mean SSL loss over (at most max_eval_epochs) validation epochs with a fixed mask seed."""
    if len(ds) == 0:
        return {"ssl_loss": float("nan")}
    g = torch.Generator(device=device).manual_seed(12345)
    n_take = min(len(ds), cfg.max_eval_epochs)
    idx = np.linspace(0, len(ds) - 1, n_take).astype(int)
    tot, n = 0.0, 0
    for a in range(0, n_take, cfg.batch_size):
        batch = [ds[int(i)] for i in idx[a:a + cfg.batch_size]]
        if len(batch) < 2:
            continue
        from train.data import collate

        x, p, *_ = collate(batch)
        with autocast(device):
            loss = loss_of(model, x.to(device), p.to(device), g)
        tot += float(loss) * len(batch)
        n += len(batch)
    return {"ssl_loss": tot / n if n else float("nan")}


def _loader_batches(ds, cfg, info):
    def batches(epoch):
        return epoch_loader(ds, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch, info=info, drop_last=len(ds) > cfg.batch_size)
    return batches


# ----------------------------------------------------------------------------- pretraining
def pretrain_unimodal(cfg: UnimodalConfig, info: dist.DistInfo, quiet: bool = False) -> dict:
    from sleepedge.models import NeuroNet, preset

    if cfg.modality not in ROLES:
        raise TrainError(f"--modality {cfg.modality!r} is not a role; expected one of {list(ROLES)}")
    cache = Cache(Path(cfg.cache))
    split = make_split(cache, cfg)
    model = NeuroNet(preset(cfg.preset, modalities=(cfg.modality,)).encoder).to(info.device)
    train_ds = EpochDataset(cache, cache.rec_ids(split.train), (cfg.modality,), require_role=cfg.modality)
    val_ds = EpochDataset(cache, cache.rec_ids(split.val), (cfg.modality,), require_role=cfg.modality)
    if len(train_ds) < 2:
        raise TrainError(f"cache {cfg.cache} has {len(train_ds)} training epochs with {cfg.modality}; need at least 2")

    def loss_of(m, x, p, gen=None):
        return m.ssl_loss(x[:, 0], generator=gen)[0]

    obj = dist.wrap_model(Objective(model, lambda m, x, p: loss_of(m, x, p)), info)
    opt = _optimizer(model.parameters(), cfg)

    def step(batch):
        x, p = batch[0].to(info.device), batch[1].to(info.device)
        if x.shape[0] < 2:  # NT-Xent needs 2 views of 2+ epochs
            return (sum(q.sum() for q in model.parameters()) * 0.0), 0
        with autocast(info.device):
            return obj(x, p), x.shape[0]

    out = Path(cfg.out)
    with Progress(info, f"pretrain {cfg.modality}", quiet) as prog:
        res = fit(obj, opt, _loader_batches(train_ds, cfg, info), step,
                  lambda: _ssl_eval(model, val_ds, loss_of, cfg, info.device), out=out,
                  select_key="ssl_loss", mode="min", epochs=cfg.epochs, max_minutes=cfg.max_minutes,
                  info=info, resume=cfg.resume, log=prog.log, progress=prog)
    model.load_state_dict(res.best_state)
    return _finish(out, model, cfg, res, split, cache, info, None, {"modality": cfg.modality})


def pretrain_multimodal(cfg: MultimodalConfig, info: dist.DistInfo, quiet: bool = False) -> dict:
    from sleepedge.models import SynthSleepNet, load_checkpoint, preset

    cache = Cache(Path(cfg.cache))
    split = make_split(cache, cfg)
    mods = tuple(cfg.modalities)
    model = SynthSleepNet(preset(cfg.preset, modalities=mods, encoder_mode=cfg.encoder_mode,
                                 modality_dropout=cfg.modality_dropout))
    for role, path in sorted(cfg.unimodal.items()):
        uni, ck = load_checkpoint(path)
        if type(uni).__name__ != "NeuroNet":
            raise TrainError(f"--unimodal {role}={path} is a {type(uni).__name__} checkpoint; expected a NeuroNet from `sleepedge train pretrain-unimodal`")
        model.load_encoder(role, uni.state_dict())
    if cfg.encoder_mode != "full" and not cfg.unimodal:
        raise TrainError("pretrain-multimodal with frozen/LoRA encoders needs --unimodal ROLE=CHECKPOINT for each modality (or --encoder-mode full)")
    model.to(info.device)
    train_ds = EpochDataset(cache, cache.rec_ids(split.train), mods)
    val_ds = EpochDataset(cache, cache.rec_ids(split.val), mods)

    def loss_of(m, x, p, gen=None):
        return m.ssl_loss(x, p, generator=gen)[0]

    obj = dist.wrap_model(Objective(model, lambda m, x, p: loss_of(m, x, p)), info)
    opt = _optimizer(model.parameters(), cfg)

    def step(batch):
        x, p = batch[0].to(info.device), batch[1].to(info.device)
        with autocast(info.device):
            return obj(x, p), x.shape[0]

    out = Path(cfg.out)
    with Progress(info, "pretrain multimodal", quiet) as prog:
        res = fit(obj, opt, _loader_batches(train_ds, cfg, info), step,
                  lambda: _ssl_eval(model, val_ds, loss_of, cfg, info.device), out=out,
                  select_key="ssl_loss", mode="min", epochs=cfg.epochs, max_minutes=cfg.max_minutes,
                  info=info, resume=cfg.resume, log=prog.log, progress=prog)
    model.load_state_dict(res.best_state)
    return _finish(out, model, cfg, res, split, cache, info, None, {"unimodal": dict(cfg.unimodal)})


# ----------------------------------------------------------------------------- probe
def load_embedder(path: str, device) -> tuple[nn.Module, tuple[str, ...], Callable]:
    """A frozen embedding function from a SynthSleepNet or NeuroNet checkpoint:
    returns (model, roles it reads, embed(x [B,M,S], present [B,M]) -> [B,D])."""
    from sleepedge.models import load_checkpoint

    model, ck = load_checkpoint(path)
    model.to(device).eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    fam = type(model).__name__
    if fam == "SynthSleepNet":
        return model, tuple(model.config.modalities), lambda x, p: model.embed(x, p)
    if fam == "NeuroNet":
        role = ck.get("extra", {}).get("modality", "EEG")
        return model, (role,), lambda x, p: model.encode(x[:, 0])[0]
    if hasattr(model, "encode"):  # baselines: single-channel EEG encoders
        return model, ("EEG",), lambda x, p: model.encode(x[:, 0])
    raise TrainError(f"{path}: a {fam} checkpoint has no embedding; pass a SynthSleepNet or NeuroNet checkpoint")


@torch.no_grad()
def embed_dataset(embed: Callable, ds: EpochDataset, batch_size: int, device) -> tuple[torch.Tensor, ...]:
    zs, ss, aa, hh = [], [], [], []
    for x, p, s, a, h in torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False,
                                                     collate_fn=__import__("train.data", fromlist=["collate"]).collate):
        with autocast(device):
            zs.append(embed(x.to(device), p.to(device)).float().cpu())
        ss.append(s); aa.append(a); hh.append(h)
    if not zs:
        return torch.zeros(0, 1), torch.zeros(0, dtype=torch.int64), torch.zeros(0), torch.zeros(0)
    return torch.cat(zs), torch.cat(ss), torch.cat(aa), torch.cat(hh)


class ProbeHead(nn.Module):
    def __init__(self, d: int, hidden: int, n_classes: int = 5):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, n_classes))

    def forward(self, z):
        return self.net(z)


def probe(cfg: ProbeConfig, info: dist.DistInfo, quiet: bool = False) -> dict:
    if not cfg.checkpoint:
        raise TrainError("probe needs --checkpoint PATH (a SynthSleepNet or NeuroNet checkpoint to freeze)")
    cache = Cache(Path(cfg.cache))
    split = make_split(cache, cfg)
    enc, roles, embed = load_embedder(cfg.checkpoint, info.device)
    train_ds = EpochDataset(cache, cache.rec_ids(split.train), roles, scored_only=True)
    keep = label_fraction_indices(train_ds.stage_of(), train_ds.subjects(), cfg.label_fraction, cfg.seed)
    train_ds.items = train_ds.items[keep]
    val_ds = EpochDataset(cache, cache.rec_ids(split.val), roles, scored_only=True)
    test_ds = EpochDataset(cache, cache.rec_ids(split.test), roles, scored_only=True)
    if len(train_ds) == 0:
        raise TrainError(f"no scored training epochs in {cfg.cache} (split {split.train}); the probe needs hypnograms")
    ztr, ytr, _, _ = embed_dataset(embed, train_ds, cfg.batch_size, info.device)
    zva, yva, _, _ = embed_dataset(embed, val_ds, cfg.batch_size, info.device)
    zte, yte, _, _ = embed_dataset(embed, test_ds, cfg.batch_size, info.device)
    head = ProbeHead(ztr.shape[1], cfg.hidden).to(info.device)
    obj = dist.wrap_model(Objective(head, lambda m, z, y: F.cross_entropy(m(z), y, ignore_index=IGNORE)), info)
    opt = _optimizer(head.parameters(), cfg)
    tds = torch.utils.data.TensorDataset(ztr, ytr)

    def batches(epoch):
        sampler = dist.make_sampler(tds, info, shuffle=True, seed=cfg.seed)
        if sampler is not None:
            sampler.set_epoch(epoch)
            return torch.utils.data.DataLoader(tds, batch_size=cfg.batch_size, sampler=sampler)
        g = torch.Generator().manual_seed(cfg.seed * 1000003 + epoch)
        return torch.utils.data.DataLoader(tds, batch_size=cfg.batch_size, shuffle=True, generator=g)

    def step(batch):
        z, y = batch[0].to(info.device), batch[1].to(info.device)
        return obj(z, y), z.shape[0]

    def evaluate_on(z, y):
        if len(y) == 0:
            return {"macro_f1": float("nan")}
        pred = head(z.to(info.device)).argmax(-1).cpu().numpy()
        return staging_metrics(y.numpy(), pred)

    out = Path(cfg.out)
    with Progress(info, "probe", quiet) as prog:
        res = fit(obj, opt, batches, step, lambda: evaluate_on(zva, yva), out=out, select_key="macro_f1", mode="max",
                  epochs=cfg.epochs, max_minutes=cfg.max_minutes, info=info, resume=cfg.resume,
                  log=prog.log, progress=prog)
    head.load_state_dict(res.best_state)
    head.eval()
    with torch.no_grad():
        test = evaluate_on(zte, yte)
    test["n_train_epochs"] = int(len(ytr))
    test["label_fraction"] = cfg.label_fraction
    metrics = _finish(out, enc, cfg, res, split, cache, info, test,
                      {"probe_head": {"d": int(ztr.shape[1]), "hidden": cfg.hidden}})
    if info.is_main:  # the head itself (plain tensors)
        torch.save({k: v.cpu() for k, v in head.state_dict().items()}, out / "probe_head.pt")
    return metrics


# ----------------------------------------------------------------------------- fine-tuning
def focal_bce(logit: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    p = torch.sigmoid(logit)
    ce = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
    pt = p * target + (1 - p) * (1 - target)
    return ce * (1 - pt).pow(gamma)


def event_pos_weight(cache: Cache, rec_ids: Sequence[str], key: str) -> float:
    pos = neg = 0
    for r in rec_ids:
        rec = cache.recording(r)
        scored = np.asarray(rec.stages) != IGNORE
        y = np.asarray(getattr(rec, key))[scored]
        pos += int(y.sum())
        neg += int(y.size - y.sum())
    return float(np.clip(neg / max(pos, 1), 1.0, 100.0))


@torch.no_grad()
def predict_night(model: nn.Module, rec, roles: Sequence[str], device, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Whole-night causal pass (what inference does): embed every epoch, then the temporal module."""
    from train.data import role_index

    cols = role_index(roles)
    zs = []
    for a in range(0, rec.n_epochs, batch_size):
        x = torch.from_numpy(np.asarray(rec.x[a:a + batch_size][:, cols], dtype=np.float32)).to(device)
        p = torch.from_numpy(np.asarray(rec.present[a:a + batch_size][:, cols], dtype=np.float32)).to(device)
        with autocast(device):
            zs.append(model.embed(x, p).float())
    z = torch.cat(zs)[None]
    with autocast(device):
        st, ap, hy = model.temporal(z)
    st0, _, _ = model.epoch_heads(z[0])
    return {"stage_logits": st[0].float().cpu().numpy(), "apnea": ap[0].float().cpu().numpy(),
            "hypopnea": hy[0].float().cpu().numpy(), "epoch_stage_logits": st0.float().cpu().numpy()}


def evaluate_nights(model: nn.Module, cache: Cache, rec_ids: Sequence[str], roles: Sequence[str], device) -> dict:
    if not rec_ids:
        return {"macro_f1": float("nan")}
    ys, ps, pe, ya, sa, yh, sh = [], [], [], [], [], [], []
    for r in rec_ids:
        rec = cache.recording(r)
        pred = predict_night(model, rec, roles, device)
        st = np.asarray(rec.stages)
        ys.append(st); ps.append(pred["stage_logits"].argmax(-1)); pe.append(pred["epoch_stage_logits"].argmax(-1))
        scored = st != IGNORE
        ya.append(np.asarray(rec.apnea)[scored]); sa.append(pred["apnea"][scored])
        yh.append(np.asarray(rec.hypopnea)[scored]); sh.append(pred["hypopnea"][scored])
    m = staging_metrics(np.concatenate(ys), np.concatenate(ps))
    m["epoch_heads"] = {k: v for k, v in staging_metrics(np.concatenate(ys), np.concatenate(pe)).items()
                        if k in ("accuracy", "macro_f1", "kappa")}
    m["apnea"] = binary_metrics(np.concatenate(ya), np.concatenate(sa))
    m["hypopnea"] = binary_metrics(np.concatenate(yh), np.concatenate(sh))
    return m


def build_finetune_model(cfg: FinetuneConfig):
    from sleepedge.models import SynthSleepNet, load_checkpoint, preset

    if cfg.checkpoint:
        base, _ = load_checkpoint(cfg.checkpoint)
        if type(base).__name__ != "SynthSleepNet":
            raise TrainError(f"--checkpoint {cfg.checkpoint} is a {type(base).__name__}; finetune needs a SynthSleepNet (from pretrain-multimodal)")
        want_lora = cfg.encoder_mode == "lora"
        has_lora = base.config.fusion.encoder_mode == "lora"
        if want_lora != has_lora:
            raise TrainError(f"--encoder-mode {cfg.encoder_mode} but the checkpoint was built with {base.config.fusion.encoder_mode}; use the same mode")
        conf = base.config.replace(fusion=base.config.fusion.replace(encoder_mode=cfg.encoder_mode,
                                                                      modality_dropout=cfg.modality_dropout))
        model = SynthSleepNet(conf)
        model.load_state_dict(base.state_dict())
    else:
        model = SynthSleepNet(preset(cfg.preset, modalities=tuple(cfg.modalities), encoder_mode=cfg.encoder_mode,
                                     modality_dropout=cfg.modality_dropout))
    model.set_encoder_mode(cfg.encoder_mode)
    return model


def finetune(cfg: FinetuneConfig, info: dist.DistInfo, quiet: bool = False) -> dict:
    from sleepedge.models import modality_dropout

    if cfg.event_loss not in ("weighted", "focal"):
        raise TrainError(f"--event-loss {cfg.event_loss!r} is not known; use weighted or focal")
    if cfg.chunk_len < 0 or cfg.batch_nights < 1:
        raise TrainError("--chunk-len must be >= 0 (0 = whole nights) and --batch-nights >= 1")
    whole = cfg.chunk_len == 0
    cache = Cache(Path(cfg.cache))
    split = make_split(cache, cfg)
    model = build_finetune_model(cfg).to(info.device)
    roles = tuple(model.config.modalities)
    train_ids = [r for r in cache.rec_ids(split.train)]
    if not train_ids:
        raise TrainError(f"no training recordings in {cfg.cache}")
    # label fraction: keep a stratified fraction of the training labels (the others -> IGNORE)
    label_keep: dict[str, np.ndarray] = {}
    if cfg.label_fraction < 1.0:
        stages = np.concatenate([np.asarray(cache.recording(r).stages) for r in train_ids])
        subs = np.concatenate([np.full(cache.recording(r).n_epochs, cache.recording(r).subject, object) for r in train_ids])
        keep = np.zeros(stages.size, bool)
        keep[label_fraction_indices(stages, subs, cfg.label_fraction, cfg.seed)] = True
        off = 0
        for r in train_ids:
            n = cache.recording(r).n_epochs
            label_keep[r] = keep[off:off + n]
            off += n
    pw_a = event_pos_weight(cache, train_ids, "apnea")
    pw_h = event_pos_weight(cache, train_ids, "hypopnea")
    gen = torch.Generator(device=info.device).manual_seed(cfg.seed + 17 * info.rank)
    eeg_col = roles.index("EEG") if "EEG" in roles and len(roles) > 1 else None
    if not 0.0 <= cfg.eeg_only_prob <= 1.0:
        raise TrainError(f"--eeg-only-prob {cfg.eeg_only_prob} must be in [0, 1]")

    def loss_fn(m, x, present, stage, apnea, hypop, valid, state):
        B, L = x.shape[:2]
        if m.training and eeg_col is not None and cfg.eeg_only_prob > 0:
            # whole chunks of a night seen through EEG alone (what a headband records)
            solo = (torch.rand(B, device=present.device, generator=gen) < cfg.eeg_only_prob)
            solo = solo & (present[:, :, eeg_col].sum(1) > 0)
            keep = torch.zeros_like(present[:1, :1])
            keep[..., eeg_col] = 1.0
            present = torch.where(solo[:, None, None], present * keep, present)
        p = present.reshape(B * L, -1)
        if m.training and cfg.modality_dropout > 0:
            p = modality_dropout(p, cfg.modality_dropout, gen)
        z = m.embed(x.reshape(B * L, *x.shape[2:]), p)
        if state is None:  # whole nights: the parallel causal scan (mamba-ssm kernels on CUDA)
            (st, ap, hy), new_state = m.temporal(z.reshape(B, L, -1)), ()
        else:
            # the chunked scan from the carried state: equals L `step` calls (tested), 8x faster
            (st, ap, hy), new_state = m.temporal.forward_chunk(z.reshape(B, L, -1), state)
        st0, _, _ = m.epoch_heads(z)
        loss_stage = F.cross_entropy(st.reshape(B * L, -1).float(), stage.reshape(-1), ignore_index=IGNORE)
        loss_epoch = F.cross_entropy(st0.float(), stage.reshape(-1), ignore_index=IGNORE)
        mask = (stage != IGNORE).float() * valid
        if cfg.event_loss == "focal":
            la = focal_bce(ap.float(), apnea, cfg.focal_gamma)
            lh = focal_bce(hy.float(), hypop, cfg.focal_gamma)
        else:
            la = F.binary_cross_entropy_with_logits(ap.float(), apnea, reduction="none",
                                                    pos_weight=torch.tensor(pw_a, device=ap.device))
            lh = F.binary_cross_entropy_with_logits(hy.float(), hypop, reduction="none",
                                                    pos_weight=torch.tensor(pw_h, device=hy.device))
        den = mask.sum().clamp_min(1.0)
        if bool((stage != IGNORE).any()):
            loss = loss_stage + cfg.epoch_head_weight * loss_epoch
        else:  # fully unscored / padded chunk: keep the graph, contribute nothing
            loss = st.sum() * 0.0 + st0.sum() * 0.0
        loss = loss + ((la + lh) * mask).sum() / den
        return loss, tuple(s.detach() for s in new_state)   # truncated BPTT: detached between chunks

    obj = dist.wrap_model(Objective(model, loss_fn), info)
    opt = _optimizer(model.parameters(), cfg)
    carry: dict[str, Any] = {"state": None}

    def batches(epoch):
        # under DDP every rank gets the same number of groups, and each group the same number
        # of chunks (the max over ranks; shorter nights are padded), so all ranks step together
        groups = night_groups(train_ids, cfg.batch_nights, shuffle=True, seed=cfg.seed, epoch=epoch, info=info)
        for group in groups:
            n_max = max(cache.recording(r).n_epochs for r in group)
            length = n_max if whole else cfg.chunk_len
            n_chunks = -(-n_max // length)
            if info.distributed:
                t = torch.tensor([n_max if whole else n_chunks], dtype=torch.int64)
                torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
                length, n_chunks = (int(t), 1) if whole else (length, int(t))
            yield from iter_chunks(cache, group, roles, length, n_chunks)

    chunk_index = {"i": 0}

    def step(ch):
        B = ch.x.shape[0]
        if ch.first or whole or carry["state"] is None or carry["state"][0].shape[0] != B:
            carry["state"] = None if whole else model.temporal.init_state(B, device=info.device)
            chunk_index["i"] = 0
        stage = ch.stage.clone()
        if label_keep:
            L = stage.shape[1]
            a = chunk_index["i"] * L
            for i, r in enumerate(ch.rec_ids):
                if r in label_keep:
                    k = label_keep[r][a:a + L]
                    drop = np.ones(stage.shape[1], bool)
                    drop[: k.size] = ~k
                    stage[i, torch.from_numpy(drop)] = IGNORE
        chunk_index["i"] += 1
        with autocast(info.device):
            loss, carry["state"] = obj(ch.x.to(info.device), ch.present.to(info.device), stage.to(info.device),
                                       ch.apnea.to(info.device), ch.hypopnea.to(info.device),
                                       ch.valid.to(info.device), carry["state"])
        return loss, int(ch.valid.sum())

    val_ids = cache.rec_ids(split.val)
    out = Path(cfg.out)
    with Progress(info, "finetune", quiet) as prog:
        res = fit(obj, opt, batches, step, lambda: evaluate_nights(model, cache, val_ids, roles, info.device),
                  out=out, select_key="macro_f1", mode="max", epochs=cfg.epochs, max_minutes=cfg.max_minutes,
                  info=info, resume=cfg.resume, log=prog.log, progress=prog)
    model.load_state_dict(res.best_state)
    model.eval()
    test = evaluate_nights(model, cache, cache.rec_ids(split.test), roles, info.device)
    # EEG-only check on the test nights: what a single-channel headband would score
    if "EEG" in roles and len(roles) > 1 and split.test:
        eeg_only = _eeg_only_eval(model, cache, cache.rec_ids(split.test), roles, info.device)
        test["eeg_only"] = {k: eeg_only[k] for k in ("accuracy", "macro_f1", "kappa")}
    return _finish(out, model, cfg, res, split, cache, info, test,
                   {"event_pos_weight": {"apnea": pw_a, "hypopnea": pw_h}})


def _eeg_only_eval(model, cache, rec_ids, roles, device) -> dict:
    class _EEGOnly:
        def __init__(self, rec):
            self._r = rec
            pres = np.array(rec.present, dtype=np.uint8)
            keep = np.zeros(pres.shape[1], np.uint8)
            keep[ROLES.index("EEG")] = 1
            self.present = pres * keep
        def __getattr__(self, k):
            return getattr(self._r, k)
    ys, ps = [], []
    for r in rec_ids:
        rec = _EEGOnly(cache.recording(r))
        ys.append(np.asarray(rec.stages)); ps.append(predict_night(model, rec, roles, device)["stage_logits"].argmax(-1))
    return staging_metrics(np.concatenate(ys), np.concatenate(ps))


# ----------------------------------------------------------------------------- entry point
RUNNERS = {"pretrain-unimodal": pretrain_unimodal, "pretrain-multimodal": pretrain_multimodal,
           "probe": probe, "finetune": finetune}


def main(cfg: CommonConfig, quiet: bool = False) -> dict:
    """Run one recipe: seeds, device / process group, the recipe, cleanup. Returns its metrics."""
    if cfg.recipe not in RUNNERS:
        raise TrainError(f"recipe {cfg.recipe!r} is not known; expected one of {list(RECIPES)}")
    if cfg.epochs < 1 or cfg.batch_size < 1 or not cfg.lr > 0:
        raise TrainError(f"--epochs {cfg.epochs}, --batch-size {cfg.batch_size}, --lr {cfg.lr}: all must be positive")
    if cfg.preset not in ("tiny", "paper"):
        raise TrainError(f"--preset {cfg.preset!r} is not known; use tiny or paper")
    info = dist.init_distributed(cfg.device)
    set_seed(cfg.seed + info.rank)
    try:
        return RUNNERS[cfg.recipe](cfg, info, quiet)
    finally:
        dist.cleanup(info)
