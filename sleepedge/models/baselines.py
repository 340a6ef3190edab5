"""Baselines from the CLIP seed: U2-Net-style 1-D encoder + CLIP, SimCLR, TS-TCC, supervised.

Glossary:
    B   batch         S   samples per epoch (3000 = 30 s x 100 Hz)
    C   channels      Lf  feature time steps after the encoder (94 for 3000 samples)
    d   embedding width (U2NetConfig.d_out)       p   projection width
    k   future time steps predicted by TS-TCC's temporal contrasting

U2-Net-style encoder (`U2NetEncoder`):
    x [B, S] -> stem conv (stride 2) -> RSU stage -> maxpool 4 -> RSU stage -> maxpool 4 -> RSU stage
    RSU = residual nested U block: input conv, `rsu_depth` encoder levels (maxpool 2 between),
          a parallel dilated convolution (PDC: branches with dilation 1..4, concatenated, 1x1 fuse)
          at the bottom, decoder levels with skip connections, + residual.
    -> 1x1 conv to d -> features [B, Lf, d] -> attention block (pre-norm transformer block)
    -> mean over time -> encode(x) [B, d]
Every baseline exposes encode(x [B, S]) -> [B, d]; self-supervised ones ssl_loss(...) ->
(loss, parts dict of detached 0-d tensors); the supervised one forward(x) -> logits [B, 5].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sleepedge.contract import IGNORE
from sleepedge.models.config import (
    CLIPConfig,
    ModelInputError,
    SimCLRConfig,
    SupervisedConfig,
    TSTCCConfig,
    U2NetConfig,
)
from sleepedge.models.layers import Block, info_nce, nt_xent


class ConvNormAct(nn.Sequential):
    """Conv1d (same length) -> BatchNorm1d -> ReLU."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, dilation: int = 1, stride: int = 1):
        super().__init__(
            nn.Conv1d(c_in, c_out, k, stride=stride, padding=dilation * (k - 1) // 2, dilation=dilation, bias=False),
            nn.BatchNorm1d(c_out),
            nn.ReLU(inplace=False),
        )


class ParallelDilatedConv(nn.Module):
    """Parallel 3-tap convolutions with dilation rates (1, 2, 3, 4), concatenated, fused by 1x1."""

    def __init__(self, c_in: int, c_out: int, dilations: tuple[int, ...] = (1, 2, 3, 4)):
        super().__init__()
        self.branches = nn.ModuleList(ConvNormAct(c_in, c_out, 3, dilation=r) for r in dilations)
        self.fuse = ConvNormAct(c_out * len(dilations), c_out, k=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fuse(torch.cat([b(x) for b in self.branches], dim=1))


class RSU(nn.Module):
    """Residual U-block (U2-Net): [B, c_in, L] -> [B, c_out, L]."""

    def __init__(self, c_in: int, mid: int, c_out: int, depth: int, dilations: tuple[int, ...]):
        super().__init__()
        self.inp = ConvNormAct(c_in, c_out)
        self.enc = nn.ModuleList([ConvNormAct(c_out, mid)] + [ConvNormAct(mid, mid) for _ in range(depth - 1)])
        self.bottom = ParallelDilatedConv(mid, mid, dilations)
        self.dec = nn.ModuleList([ConvNormAct(2 * mid, mid) for _ in range(depth - 1)] + [ConvNormAct(2 * mid, c_out)])

    def forward(self, x: Tensor) -> Tensor:
        hin = self.inp(x)
        h, skips = hin, []
        for i, enc in enumerate(self.enc):
            h = enc(h)
            skips.append(h)
            if i < len(self.enc) - 1:
                h = F.max_pool1d(h, 2, ceil_mode=True)
        h = self.bottom(h)
        for dec, skip in zip(self.dec, reversed(skips)):
            if h.shape[-1] != skip.shape[-1]:
                h = F.interpolate(h, size=skip.shape[-1], mode="linear", align_corners=False)
            h = dec(torch.cat([h, skip], dim=1))
        return h + hin


class U2NetEncoder(nn.Module):
    """features(x [B, S]) -> [B, Lf, d]; encode(x [B, S]) -> [B, d]."""

    def __init__(self, config: U2NetConfig | None = None):
        super().__init__()
        self.config = cfg = config or U2NetConfig()
        self.stem = ConvNormAct(cfg.in_channels, cfg.stem_channels, k=7, stride=2)
        stages, c = [], cfg.stem_channels
        for c_out in cfg.stage_channels:
            stages.append(RSU(c, cfg.rsu_mid_channels, c_out, cfg.rsu_depth, tuple(cfg.dilations)))
            c = c_out
        self.stages = nn.ModuleList(stages)
        self.to_d = nn.Conv1d(c, cfg.d_out, 1)
        self.attn = Block(cfg.d_out, cfg.n_heads, 2.0, cfg.dropout)
        self.norm = nn.LayerNorm(cfg.d_out)

    def features(self, x: Tensor) -> Tensor:
        cfg = self.config
        if x.dim() != 2 or x.shape[-1] != cfg.epoch_samples:
            raise ModelInputError(
                f"baseline input x has shape {tuple(x.shape)}; expected [batch, {cfg.epoch_samples}] "
                f"({cfg.epoch_s:g} s at {cfg.fs_hz} Hz)"
            )
        h = self.stem(x[:, None])
        for i, stage in enumerate(self.stages):
            if i > 0:
                h = F.max_pool1d(h, 4, ceil_mode=True)
            h = stage(h)
        h = self.to_d(h).transpose(1, 2)              # [B, Lf, d]
        return self.norm(self.attn(h))

    def encode(self, x: Tensor) -> Tensor:
        return self.features(x).mean(dim=1)

    forward = encode


def _projector(d: int, p: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, p))


# ---- augmentations (training only; per-sample randomness, batch loops are fine here) -----
def _gdev(generator: torch.Generator | None) -> torch.device:
    """Draw random numbers where the generator lives (a CUDA generator cannot fill CPU tensors)."""
    return generator.device if generator is not None else torch.device("cpu")


def segment_permutation(x: Tensor, max_segments: int, generator: torch.Generator | None = None) -> Tensor:
    """Split each row of x [B, S] into 2..max_segments contiguous pieces at random cut points and
    shuffle them (a permutation of samples, so the values are kept, only their order changes)."""
    b, s = x.shape
    out = []
    for i in range(b):
        n = int(torch.randint(2, max(2, max_segments) + 1, (1,), generator=generator, device=_gdev(generator)))
        cuts = torch.sort(torch.randperm(s - 1, generator=generator, device=_gdev(generator))[: n - 1] + 1).values.tolist()
        pieces = torch.tensor_split(torch.arange(s), cuts)
        order = torch.randperm(len(pieces), generator=generator, device=_gdev(generator)).tolist()
        out.append(x[i, torch.cat([pieces[j] for j in order]).to(x.device)])
    return torch.stack(out)


def random_crop_resize(x: Tensor, crop_min: float, generator: torch.Generator | None = None) -> Tensor:
    """Crop a random window of [crop_min, 1] x S samples from each row of x [B, S] and linearly
    resample it back to S samples (vectorised: per-row positions + gather)."""
    b, s = x.shape
    frac = crop_min + (1.0 - crop_min) * torch.rand(b, 1, generator=generator, device=_gdev(generator)).cpu()
    length = frac * (s - 1)
    start = torch.rand(b, 1, generator=generator, device=_gdev(generator)).cpu() * (s - 1 - length)
    # positions in float64: float32 cannot resolve fractions of a sample near index 3000
    pos = start.double() + length.double() * torch.linspace(0.0, 1.0, s, dtype=torch.float64)[None]
    lo = pos.floor().long().clamp(0, s - 1)
    hi = (lo + 1).clamp(max=s - 1)
    w = (pos - lo.double()).to(x.device, x.dtype)
    lo, hi = lo.to(x.device), hi.to(x.device)
    return torch.gather(x, 1, lo) * (1 - w) + torch.gather(x, 1, hi) * w


def jitter(x: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """x + Gaussian noise with std sigma * (per-row std of x)."""
    noise = torch.randn(x.shape, generator=generator, device=_gdev(generator)).to(x.device, x.dtype)
    return x + noise * sigma * x.std(dim=-1, keepdim=True)


def scale(x: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """x * s with one s ~ N(1, sigma) per row."""
    s = 1.0 + sigma * torch.randn(x.shape[0], 1, generator=generator, device=_gdev(generator))
    return x * s.to(x.device, x.dtype)


# ---- models ------------------------------------------------------------------------------
class CLIP(nn.Module):
    """CLIP between two modalities (EEG <-> EOG): two encoders, symmetric InfoNCE (tau 0.06)."""

    def __init__(self, config: CLIPConfig | None = None):
        super().__init__()
        self.config = cfg = config or CLIPConfig()
        self.encoders = nn.ModuleDict({m: U2NetEncoder(cfg.backbone) for m in cfg.modalities})
        self.projectors = nn.ModuleDict({m: _projector(cfg.backbone.d_out, cfg.proj_dim) for m in cfg.modalities})

    def encode(self, x: Tensor, modality: str | None = None) -> Tensor:
        """x [B, S] -> [B, d] with the encoder of `modality` (default: the first, EEG)."""
        m = modality or self.config.modalities[0]
        if m not in self.encoders:
            raise ModelInputError(f"CLIP modality {m!r} unknown; expected one of {list(self.encoders)}")
        return self.encoders[m].encode(x)

    def ssl_loss(self, x_a: Tensor, x_b: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """x_a [B, S] (first modality), x_b [B, S] (second, same epochs) -> symmetric InfoNCE."""
        ma, mb = self.config.modalities
        pa = self.projectors[ma](self.encoders[ma].encode(x_a))
        pb = self.projectors[mb](self.encoders[mb].encode(x_b))
        loss = info_nce(pa, pb, self.config.temperature)
        with torch.no_grad():
            sim = F.normalize(pa, dim=-1) @ F.normalize(pb, dim=-1).t()
            acc = (sim.argmax(1) == torch.arange(len(sim), device=sim.device)).float().mean()
        return loss, {"infonce": loss.detach(), "top1": acc}


class SimCLR(nn.Module):
    """SimCLR: two views by random crop+resize then segment permutation; NT-Xent."""

    def __init__(self, config: SimCLRConfig | None = None):
        super().__init__()
        self.config = cfg = config or SimCLRConfig()
        self.encoder = U2NetEncoder(cfg.backbone)
        self.projector = _projector(cfg.backbone.d_out, cfg.proj_dim)

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder.encode(x)

    def augment(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        cfg = self.config
        return segment_permutation(random_crop_resize(x, cfg.crop_min, generator), cfg.n_segments, generator)

    def ssl_loss(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        v1, v2 = self.augment(x, generator), self.augment(x, generator)
        loss = nt_xent(self.projector(self.encode(v1)), self.projector(self.encode(v2)), self.config.temperature)
        return loss, {"ntxent": loss.detach()}


class TSTCC(nn.Module):
    """TS-TCC: weak (jitter + scale) and strong (permutation + jitter) views; temporal contrasting
    (a small transformer summarises the past of one view and predicts the other view's next k
    feature steps, InfoNCE over the batch) + contextual contrasting (NT-Xent on the contexts)."""

    def __init__(self, config: TSTCCConfig | None = None):
        super().__init__()
        self.config = cfg = config or TSTCCConfig()
        d = cfg.backbone.d_out
        self.encoder = U2NetEncoder(cfg.backbone)
        self.ctx_in = nn.Linear(d, cfg.context_d_model)
        self.ctx_token = nn.Parameter(torch.randn(cfg.context_d_model) * 0.02)
        self.ctx = nn.ModuleList(Block(cfg.context_d_model, cfg.context_heads) for _ in range(cfg.context_layers))
        self.ctx_norm = nn.LayerNorm(cfg.context_d_model)
        self.predictors = nn.ModuleList(nn.Linear(cfg.context_d_model, d) for _ in range(cfg.timesteps))
        self.projector = _projector(cfg.context_d_model, cfg.proj_dim)

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder.encode(x)

    def views(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        cfg = self.config
        weak = scale(jitter(x, cfg.weak_jitter_sigma, generator), cfg.weak_scale_sigma, generator)
        strong = jitter(segment_permutation(x, cfg.max_segments, generator), cfg.strong_jitter_sigma, generator)
        return weak, strong

    def context(self, h: Tensor) -> Tensor:
        """h [B, t, d] (the past) -> context vector [B, d_ctx] (output at a summary token)."""
        c = self.ctx_in(h)
        c = torch.cat([self.ctx_token.expand(c.shape[0], 1, -1), c], dim=1)
        for blk in self.ctx:
            c = blk(c)
        return self.ctx_norm(c[:, 0])

    def _temporal_contrast(self, c: Tensor, future: Tensor) -> Tensor:
        """c [B, d_ctx], future [B, k, d] -> mean over k of InfoNCE(pred_k(c), future_k) over the batch."""
        target = torch.arange(c.shape[0], device=c.device)
        losses = [F.cross_entropy(pred(c) @ future[:, j].t(), target) for j, pred in enumerate(self.predictors)]
        return torch.stack(losses).mean()

    def ssl_loss(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.config
        weak, strong = self.views(x, generator)
        hw, hs = self.encoder.features(weak), self.encoder.features(strong)   # [B, Lf, d]
        L, k = hw.shape[1], cfg.timesteps
        if L <= k:
            raise ModelInputError(f"TS-TCC needs more than timesteps={k} feature steps; the encoder gives {L}")
        t0 = int(torch.randint(1, L - k + 1, (1,), generator=generator, device=_gdev(generator)))   # past = [0, t0)
        cw, cs = self.context(hw[:, :t0]), self.context(hs[:, :t0])
        # cross-view: the strong context predicts the weak future and vice versa
        tc = self._temporal_contrast(cs, hw[:, t0:t0 + k]) + self._temporal_contrast(cw, hs[:, t0:t0 + k])
        cc = nt_xent(self.projector(cw), self.projector(cs), cfg.temperature)
        loss = cfg.lambda_tc * tc + cfg.lambda_cc * cc
        return loss, {"temporal": tc.detach(), "contextual": cc.detach()}


class Supervised(nn.Module):
    """The same U2-Net backbone + a linear stage classifier: forward(x [B, S]) -> logits [B, 5]."""

    def __init__(self, config: SupervisedConfig | None = None):
        super().__init__()
        self.config = cfg = config or SupervisedConfig()
        self.encoder = U2NetEncoder(cfg.backbone)
        self.drop = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.backbone.d_out, cfg.n_classes)

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder.encode(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.drop(self.encode(x)))

    def loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Cross-entropy over labelled epochs; y == IGNORE (-100) is masked out."""
        logits = self.forward(x)
        loss = F.cross_entropy(logits, y, ignore_index=IGNORE)
        with torch.no_grad():
            ok = y != IGNORE
            acc = (logits.argmax(1)[ok] == y[ok]).float().mean() if bool(ok.any()) else logits.new_zeros(())
        return loss, {"ce": loss.detach(), "acc": acc}


FAMILIES: dict[str, tuple[type, type]] = {
    "U2NetEncoder": (U2NetEncoder, U2NetConfig),
    "CLIP": (CLIP, CLIPConfig),
    "SimCLR": (SimCLR, SimCLRConfig),
    "TSTCC": (TSTCC, TSTCCConfig),
    "Supervised": (Supervised, SupervisedConfig),
}
