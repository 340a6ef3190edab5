"""`sleepedge data ...` (cache preparation, dataset download) and `sleepedge train ...` (recipes).

No torch at module level: every command imports `train.*` inside its function.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, List, Optional

import typer


data_app = typer.Typer(help="Prepare training caches and download public datasets.", no_args_is_help=True)
train_app = typer.Typer(help="Self-supervised pretraining, probing, fine-tuning, experiments.", no_args_is_help=True)
experiment_app = typer.Typer(help="Reproducible experiments (tables).", no_args_is_help=True)
train_app.add_typer(experiment_app, name="experiment")

_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": False}


def register(app: typer.Typer) -> None:
    """Attach `data` and `train` to the main app."""
    app.add_typer(data_app, name="data")
    app.add_typer(train_app, name="train")


# ----------------------------------------------------------------------------- data
@data_app.command("prepare")
def prepare(
    src: Annotated[Path, typer.Argument(exists=True, help="Folder (or one EDF) with recordings + scorings.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Cache folder (created; re-runs skip done recordings).")],
    channel: Annotated[Optional[List[str]], typer.Option("--channel", help="Role override ROLE=LABEL (repeatable).")] = None,
    dtype: Annotated[str, typer.Option(help="Stored sample type: float16 (half the disk) or float32.")] = "float16",
    trim_wake_min: Annotated[Optional[float], typer.Option("--trim-wake-min", help="Keep this many minutes of wake around the sleep period (e.g. 30 for 24-h Sleep-EDF cassette files); default: keep all.")] = None,
) -> None:
    """Recordings + scorings -> a memory-mapped cache of preprocessed 30-s epochs."""
    from rich.console import Console
    from rich.table import Table

    from sleepedge.channels import parse_overrides
    from train.cache import prepare_cache

    overrides = parse_overrides(channel or [])
    console = Console()
    with console.status("preparing") as status:
        def progress(i, n, rid):
            status.update(f"[{i + 1}/{n}] {rid}")
        res = prepare_cache(src, out, overrides=overrides, dtype=dtype, progress=progress, trim_wake_min=trim_wake_min)
    table = Table(title=f"cache {out}")
    for col in ("recording", "subject", "status", "epochs", "roles / reason"):
        table.add_column(col)
    for m in res.done:
        table.add_row(m["rec_id"], m["subject"], "added" + (" (simulated)" if m["simulated"] else ""),
                      str(m["n_epochs"]), ",".join(m["roles_used"]))
    for m in res.skipped:
        table.add_row(m["rec_id"], m["subject"], "unchanged", str(m["n_epochs"]), ",".join(m["roles_used"]))
    for f in res.failed:
        table.add_row(f["rec_id"], "", "[red]failed[/red]", "", f["reason"])
    console.print(table)
    console.print(f"{len(res.done)} added, {len(res.skipped)} unchanged, {len(res.failed)} failed")
    if res.failed and not (res.done or res.skipped):
        raise typer.Exit(1)


@data_app.command("download", context_settings=_EXTRA)
def download(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Argument(help="Dataset name: sleep-edf (PhysioNet Sleep-EDF Expanded, sleep-cassette).")],
    subjects: Annotated[Optional[List[int]], typer.Option("--subjects", help="Subject numbers, e.g. --subjects 0 1 2 (default: all 78).")] = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="Download folder.")] = Path("data/sleep-edf"),
    base_url: Annotated[Optional[str], typer.Option("--base-url", help="Mirror root holding SHA256SUMS.txt.")] = None,
) -> None:
    """Download a public dataset (resumable, sha256-verified, urllib only)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from train.download import SLEEP_EDF_URL, DownloadError, download_sleep_edf

    if dataset != "sleep-edf":
        raise DownloadError(f"dataset {dataset!r} is not known; available: sleep-edf")
    subs = list(subjects or [])
    for tok in ctx.args:
        try:
            subs.append(int(tok))
        except ValueError:
            raise DownloadError(f"unexpected argument {tok!r}; --subjects takes integers, e.g. --subjects 0 1 2") from None
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn()) as prog:
        tasks: dict[str, int] = {}

        def cb(name, done, total):
            if name not in tasks:
                tasks[name] = prog.add_task(name, total=total)
            prog.update(tasks[name], completed=done, total=total)

        paths = download_sleep_edf(out, subs or None, base_url or SLEEP_EDF_URL, cb)
    typer.echo(f"{len(paths)} files verified in {out}")


# ----------------------------------------------------------------------------- train
Cache_ = Annotated[Path, typer.Option("--cache", exists=True, file_okay=False, help="Cache folder from `sleepedge data prepare`.")]
Out_ = Annotated[Path, typer.Option("-o", "--out", help="Output folder (weights, config, metrics, last.pt).")]
Preset_ = Annotated[str, typer.Option("--preset", help="Model size: tiny | paper.")]
Epochs_ = Annotated[int, typer.Option("--epochs", help="Passes over the training data.")]
Batch_ = Annotated[int, typer.Option("--batch-size", help="Batch size (30-s epochs; nights for finetune see --batch-nights).")]
Lr_ = Annotated[float, typer.Option("--lr", help="AdamW learning rate.")]
Seed_ = Annotated[int, typer.Option("--seed", help="Seed of the split, the initialisation and the sampling.")]
Device_ = Annotated[str, typer.Option("--device", help="auto | cpu | cuda.")]
Minutes_ = Annotated[Optional[float], typer.Option("--max-minutes", help="Time budget; stops after the current batch and keeps the best state.")]
Resume_ = Annotated[bool, typer.Option("--resume", help="Continue from OUT/last.pt (model, optimizer, pass, RNG state).")]
Quiet_ = Annotated[bool, typer.Option("--quiet", help="No progress display.")]


def _run(cfg, quiet: bool) -> None:
    import json

    from train.recipes import main

    metrics = main(cfg, quiet=quiet)
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 reports
        return
    summary = {"best_val": metrics["best_val"], "epochs_done": metrics["epochs_done"],
               "stopped_by": metrics["stopped_by"], "throughput_epochs_per_s": round(metrics["throughput_epochs_per_s"], 2)}
    test = metrics.get("test") or {}
    for k in ("accuracy", "macro_f1", "kappa"):
        if k in test:
            summary[f"test_{k}"] = round(test[k], 4)
    for k in ("apnea", "hypopnea"):
        if k in test:
            summary[f"test_{k}_balanced_accuracy"] = round(test[k]["balanced_accuracy"], 4)
    typer.echo(json.dumps(summary))
    typer.echo(f"wrote {cfg.out}/model.pt")


def _common(cache, out, preset, epochs, batch_size, lr, seed, device, max_minutes, resume) -> dict:
    return dict(cache=str(cache), out=str(out), preset=preset, epochs=epochs, batch_size=batch_size, lr=lr,
                seed=seed, device=device, max_minutes=max_minutes, resume=resume)


def _roles(items: list[str] | None, default) -> tuple[str, ...]:
    from sleepedge.contract import ROLES
    from train.loop import TrainError

    roles = tuple(r.upper() for r in (items or default))
    bad = [r for r in roles if r not in ROLES]
    if bad:
        raise TrainError(f"--modalities {bad} are not roles; expected some of {list(ROLES)}")
    return roles


@train_app.command("pretrain-unimodal")
def pretrain_unimodal(
    cache: Cache_, out: Out_,
    modality: Annotated[str, typer.Option("--modality", help="Role to pretrain: EEG, EOG, EMG, ECG, RESP, SPO2.")] = "EEG",
    preset: Preset_ = "tiny", epochs: Epochs_ = 10, batch_size: Batch_ = 64, lr: Lr_ = 1e-3, seed: Seed_ = 0,
    device: Device_ = "auto", max_minutes: Minutes_ = None, resume: Resume_ = False, quiet: Quiet_ = False,
) -> None:
    """NeuroNet self-supervised pretraining of one modality's encoder."""
    from train.recipes import UnimodalConfig

    _run(UnimodalConfig(modality=modality.upper(), **_common(cache, out, preset, epochs, batch_size, lr, seed, device,
                                                             max_minutes, resume)), quiet)


@train_app.command("pretrain-multimodal")
def pretrain_multimodal(
    cache: Cache_, out: Out_,
    unimodal: Annotated[Optional[List[str]], typer.Option("--unimodal", help="ROLE=CHECKPOINT of a pretrain-unimodal run (repeatable).")] = None,
    modalities: Annotated[Optional[List[str]], typer.Option("--modalities", help="Roles of the model (repeatable; default the 4 core roles).")] = None,
    encoder_mode: Annotated[str, typer.Option("--encoder-mode", help="lora | frozen | full.")] = "lora",
    modality_dropout: Annotated[float, typer.Option("--modality-dropout")] = 0.2,
    preset: Preset_ = "tiny", epochs: Epochs_ = 10, batch_size: Batch_ = 32, lr: Lr_ = 1e-3, seed: Seed_ = 0,
    device: Device_ = "auto", max_minutes: Minutes_ = None, resume: Resume_ = False, quiet: Quiet_ = False,
) -> None:
    """SynthSleepNet multimodal self-supervised pretraining on top of unimodal encoders."""
    from sleepedge.contract import CORE_ROLES
    from train.loop import TrainError
    from train.recipes import MultimodalConfig

    uni = {}
    for item in unimodal or []:
        if "=" not in item:
            raise TrainError(f"--unimodal {item!r} must be ROLE=CHECKPOINT, e.g. --unimodal EEG=runs/eeg/model.pt")
        role, path = item.split("=", 1)
        if not Path(path).is_file():
            raise TrainError(f"--unimodal {role}={path}: file not found; run `sleepedge train pretrain-unimodal --modality {role}` first")
        uni[role.strip().upper()] = path
    mods = _roles(modalities, tuple(uni) if uni and not modalities else CORE_ROLES)
    _run(MultimodalConfig(unimodal=uni, modalities=mods, encoder_mode=encoder_mode, modality_dropout=modality_dropout,
                          **_common(cache, out, preset, epochs, batch_size, lr, seed, device, max_minutes, resume)), quiet)


@train_app.command("probe")
def probe(
    cache: Cache_, out: Out_,
    checkpoint: Annotated[Path, typer.Option("--checkpoint", exists=True, dir_okay=False, help="Frozen encoder: SynthSleepNet or NeuroNet model.pt.")],
    label_fraction: Annotated[float, typer.Option("--label-fraction", help="Fraction of training epochs whose labels are used (stratified by subject/stage): 0.01 | 0.05 | 1.0.")] = 1.0,
    hidden: Annotated[int, typer.Option("--hidden", help="MLP head hidden width.")] = 128,
    preset: Preset_ = "tiny", epochs: Epochs_ = 30, batch_size: Batch_ = 128, lr: Lr_ = 1e-3, seed: Seed_ = 0,
    device: Device_ = "auto", max_minutes: Minutes_ = None, resume: Resume_ = False, quiet: Quiet_ = False,
) -> None:
    """Frozen encoder + MLP head on the embedding (linear-probe protocol)."""
    from train.recipes import ProbeConfig

    _run(ProbeConfig(checkpoint=str(checkpoint), label_fraction=label_fraction, hidden=hidden,
                     **_common(cache, out, preset, epochs, batch_size, lr, seed, device, max_minutes, resume)), quiet)


@train_app.command("finetune")
def finetune(
    cache: Cache_, out: Out_,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", exists=True, dir_okay=False, help="SynthSleepNet model.pt from pretrain-multimodal (default: from scratch).")] = None,
    modalities: Annotated[Optional[List[str]], typer.Option("--modalities", help="Roles when training from scratch (repeatable).")] = None,
    chunk_len: Annotated[int, typer.Option("--chunk-len", help="Consecutive epochs per truncated-BPTT chunk (state carried, detached between chunks); 0 = whole nights in one parallel causal scan (mamba-ssm kernels on CUDA).")] = 64,
    batch_nights: Annotated[int, typer.Option("--batch-nights", help="Nights per batch.")] = 4,
    encoder_mode: Annotated[str, typer.Option("--encoder-mode", help="lora | frozen | full.")] = "lora",
    modality_dropout: Annotated[float, typer.Option("--modality-dropout")] = 0.3,
    event_loss: Annotated[str, typer.Option("--event-loss", help="weighted (BCE pos_weight) | focal.")] = "weighted",
    label_fraction: Annotated[float, typer.Option("--label-fraction")] = 1.0,
    eeg_only_prob: Annotated[float, typer.Option("--eeg-only-prob", help="Probability that a night's chunk is shown with EEG alone.")] = 0.2,
    preset: Preset_ = "tiny", epochs: Epochs_ = 10, batch_size: Batch_ = 4, lr: Lr_ = 5e-4, seed: Seed_ = 0,
    device: Device_ = "auto", max_minutes: Minutes_ = None, resume: Resume_ = False, quiet: Quiet_ = False,
) -> None:
    """Fine-tune adapters + fusion + causal Mamba2 context + stage/apnea/hypopnea heads."""
    from sleepedge.contract import CORE_ROLES
    from train.recipes import FinetuneConfig

    _run(FinetuneConfig(checkpoint=str(checkpoint) if checkpoint else "", modalities=_roles(modalities, CORE_ROLES),
                        chunk_len=chunk_len, batch_nights=batch_nights, encoder_mode=encoder_mode,
                        modality_dropout=modality_dropout, event_loss=event_loss, label_fraction=label_fraction,
                        eeg_only_prob=eeg_only_prob,
                        **_common(cache, out, preset, epochs, batch_size, lr, seed, device, max_minutes, resume)), quiet)


@experiment_app.command("label-limited", context_settings=_EXTRA)
def label_limited(
    ctx: typer.Context, cache: Cache_, out: Out_,
    n_labelled: Annotated[Optional[List[int]], typer.Option("--n-labelled", help="Numbers of labelled subjects, e.g. --n-labelled 3 6 9 12.")] = None,
    methods: Annotated[Optional[List[str]], typer.Option("--methods", help="clip simclr tstcc synthsleepnet supervised.")] = None,
    n_val: Annotated[int, typer.Option("--n-val", help="Validation subjects (model selection).")] = 1,
    n_test: Annotated[int, typer.Option("--n-test", help="Held-out test subjects.")] = 2,
    preset: Preset_ = "tiny", batch_size: Batch_ = 64, lr: Lr_ = 1e-3, seed: Seed_ = 0, device: Device_ = "auto",
    max_minutes: Annotated[float, typer.Option("--max-minutes", help="Total time budget for the whole table.")] = 30.0,
    pretrain_epochs: Annotated[int, typer.Option("--pretrain-epochs")] = 10,
    finetune_epochs: Annotated[int, typer.Option("--finetune-epochs")] = 10,
    quiet: Quiet_ = False,
) -> None:
    """The CLIP seed's label-limited table: methods x N labelled subjects (accuracy / macro-F1)."""
    from train.experiment import METHODS, ExperimentConfig, run_label_limited
    from train.loop import TrainError

    ns, ms = list(n_labelled or []), [m.lower() for m in (methods or [])]
    for tok in ctx.args:  # `--n-labelled 3 6 9` / `--methods clip simclr`: extra values by type
        if tok.isdigit():
            ns.append(int(tok))
        elif tok.lower() in METHODS:
            ms.append(tok.lower())
        else:
            raise TrainError(f"unexpected argument {tok!r}; --n-labelled takes integers and --methods some of {list(METHODS)}")
    cfg = ExperimentConfig(cache=str(cache), out=str(out), n_labelled=tuple(ns or (3, 6, 9, 12)),
                           methods=tuple(ms or METHODS), n_val=n_val, n_test=n_test, preset=preset,
                           batch_size=batch_size, lr=lr, seed=seed, device=device, max_minutes=max_minutes,
                           pretrain_epochs=pretrain_epochs, finetune_epochs=finetune_epochs)
    table = run_label_limited(cfg, quiet=quiet)
    typer.echo(table["markdown"])


@train_app.command("bandpower")
def bandpower(
    data: Annotated[Path, typer.Option("--data", exists=True, file_okay=False,
                                       help="sleep-edf-bandpower-78/ folder (SC4ssNx0-PSG.npz + .json per night).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder: model.pt (+ cv.json).")],
    folds: Annotated[int, typer.Option(help="Subject-wise cross-validation folds before the final model (0: none).")] = 5,
    epochs: Annotated[int, typer.Option(help="Passes over the training nights (the shipped default: 40).")] = 40,
    max_minutes: Annotated[Optional[float], typer.Option("--max-minutes", help="Stop each fit after this long.")] = None,
    seed: Annotated[int, typer.Option(help="Seed (folds, augmentation, init).")] = 0,
    threads: Annotated[int, typer.Option(help="torch CPU threads.")] = 1,
) -> None:
    """SpectralSleepNet on REAL Sleep-EDF-78 band powers (the embedded default's recipe; subject 0 never used)."""
    import torch

    from train.bandpower import TrainConfig, train_default

    torch.set_num_threads(threads)
    train_default(data, out, TrainConfig(epochs=epochs, max_minutes=max_minutes, seed=seed), folds=folds,
                  log=typer.echo)
    typer.echo(f"next: sleepedge export {out / 'model.pt'} -o model.sleepedge")
