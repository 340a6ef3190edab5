"""Model hyper-parameters: one dataclass per model, saved as JSON beside the weights.

Glossary:
    B   batch                       M   modalities (roles present in the config)
    T   epochs in a sequence        N   frames per epoch (27 for 30 s, 4-s window, 1-s step)
    d   encoder width (per modality) D   fused embedding width (= fusion.d_model = mamba.d_model)
    Times are in seconds (`*_s`), rates in Hz (`*_hz`).

Presets (`preset(name, modalities=...)`):
    tiny   the edge default: 4 core roles <= 3 M parameters in total (all 6 roles ~<= 4 M)
    paper  as the seed: 768-d / 4 layers / 8 heads per modality encoder, 512-d 4-layer
           fusion, Mamba2 512-d

A config is rebuilt exactly from its JSON: `SynthSleepNetConfig.from_json(cfg.to_json()) == cfg`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

from sleepedge.contract import CORE_ROLES, EPOCH_S, FS_HZ, ROLES, STAGES
from sleepedge.errors import SleepEdgeError

ENCODER_MODES = ("lora", "frozen", "full")


class ConfigError(SleepEdgeError):
    """A model configuration is invalid (unknown key, preset, role, inconsistent widths)."""


class ModelInputError(SleepEdgeError):
    """A tensor given to a model has the wrong shape (names the argument and the expected shape)."""


def _check_option(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not valid; expected one of {list(allowed)}")


class _Config:
    """Mixin: to_dict / from_dict / to_json / from_json for (nested) config dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, _Config):
                v = v.to_dict()
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        if not isinstance(d, Mapping):
            raise ConfigError(f"{cls.__name__}.from_dict expects a mapping, got {type(d).__name__}")
        names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown key(s) {unknown}; expected a subset of {sorted(names)}"
            )
        kwargs: dict[str, Any] = {}
        for k, v in d.items():
            sub = _NESTED.get((cls.__name__, k))
            if sub is not None and isinstance(v, Mapping):
                v = sub.from_dict(v)
            elif isinstance(v, list):
                v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
            kwargs[k] = v
        return cls(**kwargs)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, s: str):
        return cls.from_dict(json.loads(s))

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


class _SignalContract:
    """fs_hz / epoch_s / epoch_samples of an exportable model config (what the bundle manifest's
    `signal` records), read from the sub-config named by `_signal_field`."""

    _signal_field = "encoder"

    @property
    def fs_hz(self) -> int:
        return getattr(self, self._signal_field).fs_hz

    @property
    def epoch_s(self) -> float:
        return getattr(self, self._signal_field).epoch_s

    @property
    def epoch_samples(self) -> int:
        return getattr(self, self._signal_field).epoch_samples


def check_modalities(modalities) -> tuple[str, ...]:
    """A model's role list: non-empty, known roles, no duplicates (ConfigError otherwise)."""
    mods = tuple(modalities)
    if not mods:
        raise ConfigError("modalities is empty; expected at least one of " + ", ".join(ROLES))
    for m in mods:
        _check_option("modality", m, ROLES)
    if len(set(mods)) != len(mods):
        raise ConfigError(f"modalities {list(mods)} contain duplicates")
    return mods


def _check_transformer_fields(cfg, name: str) -> None:
    """Head divisibility and mask ratio, shared by the encoder and fusion configs."""
    if cfg.d_model % cfg.n_heads:
        raise ConfigError(f"{name} d_model={cfg.d_model} must be divisible by n_heads={cfg.n_heads}")
    if cfg.decoder_d_model % cfg.decoder_heads:
        raise ConfigError(
            f"{name} decoder_d_model={cfg.decoder_d_model} must be divisible by decoder_heads={cfg.decoder_heads}"
        )
    if not 0.0 < cfg.mask_ratio < 1.0:
        raise ConfigError(f"{name} mask_ratio={cfg.mask_ratio} must be in (0, 1)")


@dataclass(frozen=True)
class EncoderConfig(_Config):
    """NeuroNet per-modality epoch encoder (+ its self-supervised decoder/projector)."""

    fs_hz: int = FS_HZ
    epoch_s: float = EPOCH_S
    frame_s: float = 4.0             # frame window
    frame_step_s: float = 1.0        # frame hop -> 27 frames per 30-s epoch
    cnn_channels: tuple[int, ...] = (16, 32, 64)   # frame CNN widths (one conv stage each)
    # "per_frame": the seed's layout, the CNN runs on each 4-s frame separately (27 x 400
    # samples, 3.6x the epoch). "shared": the same CNN runs once over the whole epoch and each
    # frame token pools the feature map under its 4-s window (identical receptive field up to
    # the frame edges, 3.6x fewer MACs): the edge default.
    frame_cnn: str = "per_frame"
    d_model: int = 64                # d
    n_layers: int = 2
    n_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    # self-supervised objective (NeuroNet)
    mask_ratio: float = 0.8          # fraction of frame tokens masked in each of the two views
    decoder_d_model: int = 32
    decoder_layers: int = 1
    decoder_heads: int = 2
    proj_dim: int = 64               # projector output for NT-Xent
    temperature: float = 0.05
    recon_weight: float = 1.0
    contrastive_weight: float = 1.0

    def __post_init__(self):
        _check_transformer_fields(self, "encoder")
        if self.frame_cnn not in ("per_frame", "shared"):
            raise ConfigError(f"encoder frame_cnn={self.frame_cnn!r}; expected 'per_frame' or 'shared'")
        if self.frame_cnn == "shared":
            stride = self.shared_cnn_stride
            if self.frame_step_samples % stride or self.frame_samples % stride:
                raise ConfigError(
                    f"frame_cnn='shared' needs the CNN's total stride ({stride}) to divide the frame "
                    f"step ({self.frame_step_samples}) and window ({self.frame_samples}) in samples"
                )
        if self.n_frames < 2:
            raise ConfigError(f"frame_s={self.frame_s}/frame_step_s={self.frame_step_s} give fewer than 2 frames")

    @property
    def epoch_samples(self) -> int:
        return int(round(self.epoch_s * self.fs_hz))

    @property
    def frame_samples(self) -> int:
        return int(round(self.frame_s * self.fs_hz))

    @property
    def frame_step_samples(self) -> int:
        return int(round(self.frame_step_s * self.fs_hz))

    @property
    def shared_cnn_stride(self) -> int:
        """Total stride of the shared CNN: 5 for the first stage, 2 for each later one."""
        return 5 * 2 ** (len(self.cnn_channels) - 1)

    @property
    def n_frames(self) -> int:
        return (self.epoch_samples - self.frame_samples) // self.frame_step_samples + 1


@dataclass(frozen=True)
class FusionConfig(_Config):
    """SynthSleepNet multimodal fusion transformer (+ decoders, contrastive heads, adapters)."""

    d_model: int = 64                # D, the fused embedding width
    n_layers: int = 2
    n_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    mask_ratio: float = 0.4          # per modality, independently
    decoder_d_model: int = 32
    decoder_layers: int = 1
    decoder_heads: int = 2
    proj_dim: int = 64
    temperature: float = 0.1
    recon_weight: float = 1.0
    contrastive_weight: float = 1.0
    encoder_mode: str = "lora"       # "lora" | "frozen" | "full"
    lora_rank: int = 4
    lora_alpha: float = 8.0
    modality_dropout: float = 0.0    # training option: P(drop a present modality), >=1 kept per row

    def __post_init__(self):
        _check_option("fusion.encoder_mode", self.encoder_mode, ENCODER_MODES)
        _check_transformer_fields(self, "fusion")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ConfigError(f"fusion modality_dropout={self.modality_dropout} must be in [0, 1)")
        if self.encoder_mode == "lora" and self.lora_rank < 1:
            raise ConfigError("fusion encoder_mode='lora' needs lora_rank >= 1")


@dataclass(frozen=True)
class MambaConfig(_Config):
    """Causal Mamba2 temporal context (mamba_ssm Mamba2 naming) + task heads."""

    d_model: int = 64                # must equal fusion.d_model (D)
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    n_layers: int = 1
    chunk_size: int = 64             # SSD chunk length of the reference scan / the kernel
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    norm_eps: float = 1e-5
    n_stages: int = len(STAGES)

    def __post_init__(self):
        if (self.expand * self.d_model) % self.headdim:
            raise ConfigError(
                f"mamba expand*d_model={self.expand * self.d_model} must be divisible by headdim={self.headdim}"
            )
        if self.d_conv < 2:
            raise ConfigError(f"mamba d_conv={self.d_conv} must be >= 2")
        if self.n_layers < 1:
            raise ConfigError(f"mamba n_layers={self.n_layers} must be >= 1")
        if (self.expand * self.d_model // self.headdim) % self.ngroups:
            raise ConfigError(f"mamba nheads must be divisible by ngroups={self.ngroups}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.ngroups * self.d_state


@dataclass(frozen=True)
class SynthSleepNetConfig(_SignalContract, _Config):
    """The whole multimodal stager: encoders (one config, one instance per role) + fusion + Mamba."""

    modalities: tuple[str, ...] = ROLES
    preset: str = "tiny"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    mamba: MambaConfig = field(default_factory=MambaConfig)

    def __post_init__(self):
        object.__setattr__(self, "modalities", check_modalities(self.modalities))
        if self.mamba.d_model != self.fusion.d_model:
            raise ConfigError(
                f"mamba.d_model={self.mamba.d_model} must equal fusion.d_model={self.fusion.d_model} (D)"
            )

    @property
    def d_embed(self) -> int:
        return self.fusion.d_model

    def preprocess_config(self):
        """The runtime preprocessing this model expects (today's defaults)."""
        from sleepedge.preprocess import PreprocessConfig

        return PreprocessConfig(fs_hz=self.fs_hz, epoch_s=self.epoch_s)


# ---- baselines (second seed) -------------------------------------------------------------
@dataclass(frozen=True)
class U2NetConfig(_Config):
    """U2-Net-style 1-D encoder: RSU blocks, parallel dilated convs (rates 1..4), attention."""

    fs_hz: int = FS_HZ
    epoch_s: float = EPOCH_S
    in_channels: int = 1
    stem_channels: int = 16
    stage_channels: tuple[int, ...] = (16, 32, 64)   # one RSU stage each, downsample x4 between
    rsu_mid_channels: int = 8
    rsu_depth: int = 3            # levels inside each nested U block
    dilations: tuple[int, ...] = (1, 2, 3, 4)
    d_out: int = 64               # embedding width returned by encode()
    n_heads: int = 4              # attention block over the final feature sequence
    dropout: float = 0.0

    def __post_init__(self):
        if self.d_out % self.n_heads:
            raise ConfigError(f"u2net d_out={self.d_out} must be divisible by n_heads={self.n_heads}")

    @property
    def epoch_samples(self) -> int:
        return int(round(self.epoch_s * self.fs_hz))


@dataclass(frozen=True)
class CLIPConfig(_Config):
    backbone: U2NetConfig = field(default_factory=U2NetConfig)
    proj_dim: int = 64
    temperature: float = 0.06
    modalities: tuple[str, str] = ("EEG", "EOG")


@dataclass(frozen=True)
class SimCLRConfig(_Config):
    backbone: U2NetConfig = field(default_factory=U2NetConfig)
    proj_dim: int = 64
    temperature: float = 0.1
    n_segments: int = 5            # segment permutation: max number of segments
    crop_min: float = 0.5          # random crop keeps [crop_min, 1] of the epoch, resized to 3000


@dataclass(frozen=True)
class TSTCCConfig(_Config):
    backbone: U2NetConfig = field(default_factory=U2NetConfig)
    timesteps: int = 10            # future steps predicted by the temporal contrasting module
    context_d_model: int = 64
    context_layers: int = 1
    context_heads: int = 4
    proj_dim: int = 64
    temperature: float = 0.2
    weak_scale_sigma: float = 0.1      # weak view: x * s, s ~ N(1, sigma)
    weak_jitter_sigma: float = 0.05    # ... + N(0, sigma * std(x))
    strong_jitter_sigma: float = 0.2   # strong view: permute segments, + N(0, sigma * std(x))
    max_segments: int = 8
    lambda_tc: float = 1.0
    lambda_cc: float = 0.7


@dataclass(frozen=True)
class SupervisedConfig(_Config):
    backbone: U2NetConfig = field(default_factory=U2NetConfig)
    n_classes: int = len(STAGES)
    dropout: float = 0.1


_NESTED: dict[tuple[str, str], type] = {
    ("SynthSleepNetConfig", "encoder"): EncoderConfig,
    ("SynthSleepNetConfig", "fusion"): FusionConfig,
    ("SynthSleepNetConfig", "mamba"): MambaConfig,
    ("CLIPConfig", "backbone"): U2NetConfig,
    ("SimCLRConfig", "backbone"): U2NetConfig,
    ("TSTCCConfig", "backbone"): U2NetConfig,
    ("SupervisedConfig", "backbone"): U2NetConfig,
}

PRESETS = ("tiny", "paper")


def preset(
    name: Literal["tiny", "paper"] = "tiny",
    modalities: Sequence[str] = CORE_ROLES,
    **fusion_overrides: Any,
) -> SynthSleepNetConfig:
    """The named size preset for the given roles (default: the 4 core roles).

    `fusion_overrides` replace FusionConfig fields (e.g. encoder_mode="full", modality_dropout=0.3).
    """
    _check_option("preset", name, PRESETS)
    if name == "tiny":
        enc = EncoderConfig(
            cnn_channels=(8, 16, 32), frame_cnn="shared", d_model=64, n_layers=2, n_heads=4,
            mlp_ratio=2.0, decoder_d_model=48, decoder_layers=1, decoder_heads=4, proj_dim=64,
        )
        fus = FusionConfig(
            d_model=64, n_layers=2, n_heads=4, mlp_ratio=2.0,
            decoder_d_model=32, decoder_layers=1, decoder_heads=2, proj_dim=64,
        )
        mam = MambaConfig(d_model=64, headdim=64)
    else:
        enc = EncoderConfig(
            cnn_channels=(64, 128, 256), d_model=768, n_layers=4, n_heads=8,
            decoder_d_model=256, decoder_layers=2, decoder_heads=8, proj_dim=256,
        )
        fus = FusionConfig(
            d_model=512, n_layers=4, n_heads=8,
            decoder_d_model=256, decoder_layers=2, decoder_heads=8, proj_dim=256,
        )
        mam = MambaConfig(d_model=512, headdim=64)
    if fusion_overrides:
        fus = fus.replace(**fusion_overrides)
    return SynthSleepNetConfig(modalities=tuple(modalities), preset=name, encoder=enc, fusion=fus, mamba=mam)
