"""Train SpectralSleepNet on the REAL Sleep-EDF-78 band powers (the one real training set here).

Data: `sleep-edf-bandpower-78/SC4ssNx0-PSG.npz` (features (n, 3, 10): [Fpz-Cz, Pz-Oz, EOG
horizontal] x [log_delta..log_beta, rel_delta..rel_beta]; labels 0..4 / -100; the `.json` beside
each file holds the pipeline). The stored `rel_*` are softmax(log_*), so a night is fully given by
its log band powers (n, 3, 5); the model's own front end computes the same quantities from raw µV
(parity tested on the real night), up to a per-night constant that its causal centring removes.

Subjects: the file name's digits 3-4 (`SC4001` -> subject 00). Subject 0 (SC4001*, SC4002*) is
the real TEST subject: `load_nights` refuses to return it unless asked by name, so it can never
enter a training, validation or model-selection set.

Training sample = one whole night (causal context over the night), with augmentation drawn
from the data itself, never from a label-specific rule:
  * EEG derivation: Fpz-Cz or Pz-Oz at random per night (the model must not depend on one
    montage; central derivations lie between the two);
  * per-night gain per role and band, log-normal (sigma `gain_sd`): electrode/amplifier/montage
    differences; changes the relative powers, leaves the centred log powers unchanged;
  * EOG absent for the whole night with probability `p_no_eog` (EEG-only recordings), and
    single epochs absent per role with probability `p_epoch_drop` (bad epochs);
  * a long-recording prefix/suffix with probability `p_wake_pad`: up to `max_wake_pad` epochs of
    the night's OWN scored wake epochs (contiguous runs, resampled) before sleep and after it, as
    in 20-h ambulatory recordings whose afternoon and morning wake the stored set cropped away.
Selection: the epoch with the best validation kappa (validation = held-out SUBJECTS).
"""

from __future__ import annotations

import copy
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sleepedge.contract import IGNORE
from sleepedge.errors import SleepEdgeError
from sleepedge.models.spectral import SpectralSleepNet, SpectralSleepNetConfig, stored_to_logp

from train.metrics import staging_metrics

TEST_SUBJECTS = ("00",)                       # SC4001 / SC4002: the real test subject
CHANNELS = ("Fpz-Cz", "Pz-Oz", "horizontal")  # stored channel order
_NAME = re.compile(r"^SC4(\d\d)(\d)[A-Z]\d-PSG$")


class BandpowerDataError(SleepEdgeError):
    """The band-power folder is missing, empty or not in the expected layout."""


@dataclass
class Night:
    name: str                 # SC4011E0-PSG
    subject: str              # "01"
    logp: np.ndarray          # float32 (n, 3, 5): Fpz-Cz, Pz-Oz, EOG
    labels: np.ndarray        # int64 (n,)


def subject_of(stem: str) -> str:
    m = _NAME.match(stem)
    if not m:
        raise BandpowerDataError(f"{stem}: not a Sleep-EDF cassette name (SC4ssNx0-PSG); cannot tell its subject")
    return m.group(1)


def load_nights(folder: Path, include_test: bool = False, only: Sequence[str] | None = None) -> list[Night]:
    """Every night of the folder except the test subject's (unless `include_test`)."""
    folder = Path(folder)
    files = sorted(folder.glob("SC4*-PSG.npz")) if folder.is_dir() else []
    if not files:
        raise BandpowerDataError(f"{folder}: no SC4*-PSG.npz band-power files; point --data at sleep-edf-bandpower-78/")
    out = []
    for f in files:
        subj = subject_of(f.stem)
        if only is not None and f.stem not in only and subj not in only:
            continue
        if subj in TEST_SUBJECTS and not include_test:
            continue
        with np.load(f) as d:
            feats, labels = d["features"], d["labels"].astype(np.int64)
        if feats.ndim != 3 or feats.shape[1:] != (3, 10):
            raise BandpowerDataError(f"{f.name}: features shape {feats.shape}; expected (n, 3, 10)")
        out.append(Night(f.stem, subj, stored_to_logp(feats), labels))
    return out


def kfold_subjects(subjects: Sequence[str], k: int, seed: int = 0) -> list[list[str]]:
    """Subjects shuffled once with `seed` and dealt into k folds (subject-wise: a subject's two
    nights always fall in the same fold)."""
    subs = sorted(set(subjects))
    rng = np.random.default_rng(seed)
    rng.shuffle(subs)
    return [sorted(subs[i::k]) for i in range(k)]


@dataclass
class TrainConfig:
    epochs: int = 40
    batch_nights: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-2
    label_smoothing: float = 0.05
    aux_weight: float = 0.3               # context-free epoch head
    gain_sd: float = 0.25
    p_no_eog: float = 0.3
    p_epoch_drop: float = 0.02
    p_wake_pad: float = 0.5
    max_wake_pad: int = 600
    crop_epochs: int = 1024               # training window (the running level is computed over the whole night first)
    max_minutes: float | None = None
    seed: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _wake_pad(logp: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n epochs made of contiguous runs of this night's own wake epochs."""
    wake = np.nonzero(labels == 0)[0]
    if n <= 0 or len(wake) < 10:
        return np.zeros((0, *logp.shape[1:]), logp.dtype)
    runs = np.split(wake, np.nonzero(np.diff(wake) > 1)[0] + 1)
    parts, total = [], 0
    while total < n:
        r = runs[rng.integers(len(runs))]
        a = rng.integers(len(r))
        seg = r[a: a + rng.integers(5, 60)]
        parts.append(logp[seg])
        total += len(seg)
    return np.concatenate(parts)[:n]


def make_sample(night: Night, cfg: TrainConfig, rng: np.random.Generator, train: bool,
                roles: Sequence[str] = ("EEG", "EOG"), eeg_channel: int | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One night -> (logp (T, M, 5), present (T, M), labels (T,)) in the model's role order."""
    T = len(night.labels)
    ch = {"EEG": (eeg_channel if eeg_channel is not None else (int(rng.integers(2)) if train else 0)), "EOG": 2}
    logp = np.stack([night.logp[:, ch[r]] for r in roles], axis=1).astype(np.float32)     # (T, M, 5)
    labels = night.labels.copy()
    present = np.ones((T, len(roles)), np.float32)
    if train:
        logp = logp + rng.normal(0.0, cfg.gain_sd, size=(1, len(roles), logp.shape[-1])).astype(np.float32)
        logp = logp + rng.normal(0.0, 1.0, size=(1, len(roles), 1)).astype(np.float32)   # overall level
        if rng.random() < cfg.p_wake_pad:
            pre = _wake_pad(logp, labels, int(rng.integers(0, cfg.max_wake_pad)), rng)
            post = _wake_pad(logp, labels, int(rng.integers(0, cfg.max_wake_pad // 2)), rng)
            logp = np.concatenate([pre, logp, post])
            labels = np.concatenate([np.zeros(len(pre), np.int64), labels, np.zeros(len(post), np.int64)])
            present = np.ones((len(labels), len(roles)), np.float32)
        if "EOG" in roles and rng.random() < cfg.p_no_eog:
            present[:, roles.index("EOG")] = 0.0
        present *= (rng.random(present.shape) >= cfg.p_epoch_drop)
        present[present.sum(1) == 0, 0] = 1.0          # keep EEG where everything was dropped
    return logp, present, labels


def _batch(samples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    T = max(len(s[2]) for s in samples)
    b = len(samples)
    M, K = samples[0][0].shape[1:]
    lp = np.zeros((b, T, M, K), np.float32)
    pr = np.zeros((b, T, M), np.float32)
    lb = np.full((b, T), IGNORE, np.int64)
    for i, (l, p, y) in enumerate(samples):
        lp[i, :len(y)], pr[i, :len(y)], lb[i, :len(y)] = l, p, y
    return torch.from_numpy(lp), torch.from_numpy(pr), torch.from_numpy(lb)


def _loss(model: SpectralSleepNet, lp, pr, lb, cfg: TrainConfig, rng: np.random.Generator) -> torch.Tensor:
    """Centring over each whole (padded) night, then a random window of `crop_epochs` per night
    through the Mamba context (cost is linear in the window; the level needs the whole past)."""
    ctx = model.temporal
    with torch.no_grad():
        centred, _m, _c = ctx.centring(lp, pr)
    b, T = lb.shape
    L = min(T, cfg.crop_epochs)
    lengths = (lb != IGNORE).cumsum(1).argmax(1) + 1          # last labelled epoch + 1
    starts = [int(rng.integers(0, max(1, int(n) - L + 1))) for n in lengths]
    idx = torch.stack([torch.arange(s0, s0 + L) for s0 in starts]).clamp(max=T - 1)
    take = lambda t: torch.stack([t[i, idx[i]] for i in range(b)])    # noqa: E731
    lp, pr, lb, centred = take(lp), take(pr), take(lb), take(centred)
    valid = torch.stack([(idx[i] < lengths[i]) & (idx[i] == torch.arange(starts[i], starts[i] + L)) for i in range(b)])
    lb = torch.where(valid, lb, torch.full_like(lb, IGNORE))
    stage, _a, _h = ctx.core(ctx.context_input(lp, pr, centred))
    loss = F.cross_entropy(stage.reshape(-1, stage.shape[-1]), lb.reshape(-1), ignore_index=IGNORE,
                           label_smoothing=cfg.label_smoothing)
    if cfg.aux_weight > 0:
        es, _a, _h = model.epoch_heads(model.pack(lp, pr))
        loss = loss + cfg.aux_weight * F.cross_entropy(es.reshape(-1, es.shape[-1]), lb.reshape(-1),
                                                       ignore_index=IGNORE, label_smoothing=cfg.label_smoothing)
    return loss


@torch.no_grad()
def predict(model: SpectralSleepNet, logp: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Whole-night causal pass: logp (T, M, 5), present (T, M) -> stage probabilities (T, 5)."""
    model.eval()
    z = model.pack(torch.from_numpy(logp)[None], torch.from_numpy(present)[None])
    stage = model.temporal(z)[0][0]
    return torch.softmax(stage, -1).numpy()


def stages_of(model: SpectralSleepNet, nights: Sequence[Night], eeg_channel: int = 0, drop_eog: bool = False
              ) -> tuple[np.ndarray, np.ndarray]:
    """Expert and predicted stages over `nights`, concatenated: (y, pred). EEG from stored channel
    `eeg_channel` (0 Fpz-Cz, 1 Pz-Oz); `drop_eog`: scored as an EEG-only recording."""
    roles = tuple(model.config.modalities)
    ys, ps = [], []
    for n in nights:
        lp, pr, lb = make_sample(n, TrainConfig(), np.random.default_rng(0), train=False, roles=roles,
                                 eeg_channel=eeg_channel)
        if drop_eog and "EOG" in roles:
            pr[:, roles.index("EOG")] = 0.0
        ps.append(predict(model, lp, pr).argmax(-1))
        ys.append(lb)
    return np.concatenate(ys), np.concatenate(ps)


def evaluate(model: SpectralSleepNet, nights: Sequence[Night], eeg_channel: int = 0, drop_eog: bool = False) -> dict:
    return staging_metrics(*stages_of(model, nights, eeg_channel, drop_eog))


def fit(train_nights: Sequence[Night], val_nights: Sequence[Night], cfg: TrainConfig,
        model_cfg: SpectralSleepNetConfig | None = None, log: Callable[[str], None] | None = None
        ) -> tuple[SpectralSleepNet, dict]:
    """Train on whole nights; keep the state with the best validation kappa (EEG Fpz-Cz + EOG)."""
    say = log or (lambda _m: None)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = SpectralSleepNet(model_cfg or SpectralSleepNetConfig())
    roles = tuple(model.config.modalities)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, int(np.ceil(len(train_nights) / cfg.batch_nights)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch,
                                                pct_start=0.15)
    best, best_state, history = -1.0, None, []
    t0 = time.perf_counter()
    for ep in range(cfg.epochs):
        model.train()
        order = rng.permutation(len(train_nights))
        losses = []
        for s in range(steps_per_epoch):
            idx = order[s * cfg.batch_nights:(s + 1) * cfg.batch_nights]
            lp, pr, lb = _batch([make_sample(train_nights[i], cfg, rng, train=True, roles=roles) for i in idx])
            loss = _loss(model, lp, pr, lb, cfg, rng)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        val = evaluate(model, val_nights) if val_nights else {"kappa": float("nan")}
        history.append({"epoch": ep, "loss": float(np.mean(losses)), "val_kappa": val["kappa"],
                        "seconds": time.perf_counter() - t0})
        say(f"epoch {ep:3d} loss {np.mean(losses):.4f} val kappa {val['kappa']:.4f} ({time.perf_counter() - t0:.0f} s)")
        if not val_nights or val["kappa"] > best:
            best, best_state = val["kappa"], copy.deepcopy(model.state_dict())
        if cfg.max_minutes is not None and time.perf_counter() - t0 > 60 * cfg.max_minutes:
            say(f"stopping: --max-minutes {cfg.max_minutes} reached after epoch {ep}")
            break
    model.load_state_dict(best_state)
    model.eval()
    return model, {"best_val_kappa": best, "history": history, "seconds": time.perf_counter() - t0}


def cross_validate(nights: Sequence[Night], cfg: TrainConfig, k: int = 5, n_val_subjects: int = 6,
                   model_cfg: SpectralSleepNetConfig | None = None, log: Callable[[str], None] | None = None) -> dict:
    """k-fold subject-wise CV. Per fold: validation subjects taken from the training subjects
    (model selection), test fold never seen. Pooled and per-fold metrics; EEG-only and Pz-Oz too."""
    say = log or (lambda _m: None)
    subjects = sorted({n.subject for n in nights})
    if any(s in TEST_SUBJECTS for s in subjects):
        raise BandpowerDataError("cross_validate got test-subject nights; load_nights(include_test=False)")
    folds = kfold_subjects(subjects, k, cfg.seed)
    pooled: dict[str, list] = {"both": [], "eeg_only": [], "pz_oz": []}
    per_fold = []
    for f, test_subj in enumerate(folds):
        rest = [s for s in subjects if s not in test_subj]
        rng = np.random.default_rng(cfg.seed + 100 + f)
        val_subj = sorted(rng.choice(rest, size=min(n_val_subjects, len(rest) - 1), replace=False).tolist())
        tr = [n for n in nights if n.subject in rest and n.subject not in val_subj]
        va = [n for n in nights if n.subject in val_subj]
        te = [n for n in nights if n.subject in test_subj]
        say(f"fold {f}: train {len(tr)} nights, val {len(va)} ({val_subj}), test {len(te)} ({test_subj})")
        model, info = fit(tr, va, cfg, model_cfg, log=lambda m: say(f"  fold {f} {m}"))
        res = {}
        for key, kw in (("both", {}), ("eeg_only", {"drop_eog": True}), ("pz_oz", {"eeg_channel": 1})):
            y, p = stages_of(model, te, **kw)
            pooled[key].append((y, p))
            res[key] = _short(staging_metrics(y, p))
        per_fold.append({"fold": f, "test_subjects": test_subj, "val_subjects": val_subj, "n_train_nights": len(tr),
                         "best_val_kappa": info["best_val_kappa"], "seconds": info["seconds"], **res})
        say(f"fold {f}: test kappa {res['both']['kappa']:.4f} (EEG only {res['eeg_only']['kappa']:.4f}, "
            f"Pz-Oz {res['pz_oz']['kappa']:.4f})")
    out = {"k": k, "folds": per_fold, "train": cfg.to_dict(), "n_nights": len(nights), "n_subjects": len(subjects)}
    for key, pairs in pooled.items():
        y = np.concatenate([a for a, _ in pairs])
        p = np.concatenate([b for _, b in pairs])
        out[f"pooled_{key}"] = _short(staging_metrics(y, p), full=True)
        out[f"mean_fold_kappa_{key}"] = float(np.mean([fo[key]["kappa"] for fo in per_fold]))
    return out


def _short(m: dict, full: bool = False) -> dict:
    keep = {"n": m["n"], "kappa": m["kappa"], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
    if "per_class_f1" in m:
        keep["per_stage_f1"] = dict(m["per_class_f1"])
    if full and "confusion" in m:
        keep["confusion"] = np.asarray(m["confusion"]).tolist()
    return keep


def save_json(path: Path, obj: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=float))
    return path


def train_default(data: Path, out: Path, cfg: TrainConfig, folds: int = 5, n_val_subjects: int = 6,
                  model_cfg: SpectralSleepNetConfig | None = None, log: Callable[[str], None] | None = None) -> dict:
    """The recipe of the embedded default: k-fold subject-wise CV (reported), then the final
    model on every subject but the test subject, selected on `n_val_subjects` held-out subjects.
    Writes OUT/cv.json (when folds > 1) and OUT/model.pt (ready for `sleepedge export`)."""
    from sleepedge.models.checkpoint import save_checkpoint

    say = log or print
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    nights = load_nights(data)
    subjects = sorted({n.subject for n in nights})
    say(f"{len(nights)} real nights, {len(subjects)} subjects, {sum(len(n.labels) for n in nights)} epochs "
        f"(test subject {', '.join(TEST_SUBJECTS)} excluded)")
    cv = None
    if folds > 1:
        cv = cross_validate(nights, cfg, folds, n_val_subjects, model_cfg, log=say)
        save_json(out / "cv.json", cv)
        say(f"CV pooled kappa {cv['pooled_both']['kappa']:.4f} (EEG only {cv['pooled_eeg_only']['kappa']:.4f})")
    if len(subjects) < 2:
        raise BandpowerDataError(f"{data}: {len(subjects)} subject(s) besides the test subject; need >= 2 "
                                 "(training + validation subjects)")
    rng = np.random.default_rng(cfg.seed + 999)
    n_val = min(n_val_subjects, max(1, len(subjects) // 5))
    val_subj = sorted(rng.choice(subjects, size=n_val, replace=False).tolist())
    tr = [n for n in nights if n.subject not in val_subj]
    va = [n for n in nights if n.subject in val_subj]
    model, info = fit(tr, va, cfg, model_cfg, log=say)
    data_desc = (f"REAL: Sleep-EDF-78 cassette band powers (sleep-edf-bandpower-78), {len(nights)} nights of "
                 f"{len(subjects)} subjects, {sum(len(n.labels) for n in nights)} epochs; subject 0 (SC4001/SC4002) "
                 f"excluded; selection on {len(va)} nights of validation subjects {val_subj}")
    metrics = {"val_kappa": info["best_val_kappa"]}
    if cv is not None:
        metrics.update({f"cv{folds}_{k}": v for k, v in cv.items() if k.startswith(("pooled_", "mean_fold_"))})
    save_checkpoint(out / "model.pt", model, metrics=metrics, provenance={
        "simulated": False, "data": data_desc, "tasks": ["stage"],
        "notice": "staging trained on REAL Sleep-EDF-78 band powers (Fpz-Cz / Pz-Oz EEG + EOG); "
                  "apnea/hypopnea are not part of this model",
        "train_config": cfg.to_dict(), "history": info["history"], "val_subjects": val_subj,
    }, extra={"preprocess": model.config.preprocess_config().to_dict()})
    say(f"wrote {out / 'model.pt'} (val kappa {info['best_val_kappa']:.4f})")
    return {"cv": cv, "final": info}


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m train.bandpower", description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/sleep-edf-bandpower-78"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--folds", type=int, default=5, help="subject-wise CV folds (0/1: no CV)")
    ap.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = TrainConfig(epochs=a.epochs, max_minutes=a.max_minutes, seed=a.seed)
    train_default(a.data, a.out, cfg, folds=a.folds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
