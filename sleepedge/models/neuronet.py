"""NeuroNet: the per-modality epoch encoder and its self-supervised objective.

Glossary:
    B   batch                S   samples per epoch (3000 = 30 s x 100 Hz)
    N   frames per epoch (27: 4-s window, 1-s step)      F   samples per frame (400)
    K   kept (unmasked) frames in a masked view           d   encoder width
    p   projector width (NT-Xent)                         dd  decoder width

Data flow (one class for every role EEG/EOG/EMG/ECG/RESP/SPO2; the role is configuration):
    x [B, S] --unfold--> frames [B, N, F] --frame CNN (shared over frames)--> f [B, N, d]
    [CLS; f] + positional embedding --transformer--> cls [B, d], tokens [B, N, d]
Self-supervision (`NeuroNet.ssl_loss`): two independent random maskings (ratio 0.8: 22 of 27
frames hidden) of f; the encoder sees only the K kept frames; an MAE decoder reconstructs the
frame-CNN tokens at the masked positions (targets: f, stop-gradient, layer-normalised); NT-Xent
(tau 0.05) pulls the two views' projected CLS together. loss = w_r * recon + w_c * contrastive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sleepedge.models.config import EncoderConfig, ModelInputError
from sleepedge.models.layers import (
    Transformer,
    gather_tokens,
    nt_xent,
    random_masking,
    unshuffle_with_mask_token,
)


class FrameCNN(nn.Module):
    """Frame CNN shared over frames: [B*N, 1, F] -> [B*N, d].

    One conv stage per entry of `cnn_channels` (wide first kernel, then stride-2 k7), each
    Conv1d -> GroupNorm(1) -> GELU (GroupNorm: no batch statistics, identical in train/eval),
    global average over time, linear to d.
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        # first kernel spans 0.25 s at fs_hz, stride 3
        k0 = max(3, int(round(0.25 * cfg.fs_hz)) | 1)
        first_stride = 5 if cfg.frame_cnn == "shared" else 3
        for i, c in enumerate(cfg.cnn_channels):
            k, s = (k0, first_stride) if i == 0 else (7, 2)
            layers += [nn.Conv1d(c_in, c, k, stride=s, padding=k // 2), nn.GroupNorm(1, c), nn.GELU()]
            c_in = c
        self.convs = nn.Sequential(*layers)
        self.out = nn.Linear(c_in, cfg.d_model)

    def forward(self, frames: Tensor) -> Tensor:
        return self.out(self.convs(frames).mean(dim=-1))

    def forward_shared(self, x: Tensor, window: int, step: int) -> Tensor:
        """Whole epochs x [B, 1, S] -> frame tokens [B, N, d]: one CNN pass, then the mean of the
        feature map under each frame's window (`window`/`step` in feature positions)."""
        feats = self.convs(x)                                     # [B, C, S / stride]
        pooled = feats.unfold(-1, window, step).mean(dim=-1)      # [B, C, N]
        return self.out(pooled.transpose(1, 2))


class NeuroNetEncoder(nn.Module):
    """Epoch encoder: encode(x [B, S]) -> (cls [B, d], tokens [B, N, d]).

    `lora_rank > 0` adds low-rank adapters on the attention q/v projections (SynthSleepNet's
    "lora" encoder mode); the base weights keep their names, so NeuroNet weights load unchanged.
    """

    def __init__(self, cfg: EncoderConfig, lora_rank: int = 0, lora_alpha: float = 8.0):
        super().__init__()
        self.config = cfg
        self.cnn = FrameCNN(cfg)
        self.cls_token = nn.Parameter(torch.zeros(cfg.d_model))
        self.pos_embed = nn.Parameter(torch.randn(cfg.n_frames + 1, cfg.d_model) * 0.02)
        self.transformer = Transformer(cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.mlp_ratio,
                                       cfg.dropout, lora_rank, lora_alpha)

    def frames(self, x: Tensor) -> Tensor:
        """x [B, S] -> [B, N, F] (a strided view: Tensor.unfold, no loop over frames)."""
        cfg = self.config
        if x.dim() != 2 or x.shape[-1] != cfg.epoch_samples:
            raise ModelInputError(
                f"NeuroNet input x has shape {tuple(x.shape)}; expected [batch, {cfg.epoch_samples}] "
                f"({cfg.epoch_s:g} s at {cfg.fs_hz} Hz); resample/epoch the signal first"
            )
        return x.unfold(-1, cfg.frame_samples, cfg.frame_step_samples)

    def frame_tokens(self, x: Tensor) -> Tensor:
        """x [B, S] -> frame-CNN tokens f [B, N, d]."""
        cfg = self.config
        if cfg.frame_cnn == "shared":
            self.frames(x)  # shape check
            r = cfg.shared_cnn_stride
            return self.cnn.forward_shared(x.unsqueeze(1), cfg.frame_samples // r, cfg.frame_step_samples // r)
        fr = self.frames(x)
        b, n, f = fr.shape
        return self.cnn(fr.reshape(b * n, 1, f)).reshape(b, n, -1)

    def transform(self, tokens: Tensor, pos_idx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Transformer over [CLS; tokens]. tokens [B, K, d] sit at frame positions pos_idx [B, K]
        (None: all N frames in order). Returns (cls [B, d], tokens [B, K, d])."""
        pos = self.pos_embed[1:]
        if pos_idx is None:
            tok = tokens + pos
        else:
            tok = tokens + pos[pos_idx]
        cls = (self.cls_token + self.pos_embed[0]).expand(tokens.shape[0], 1, -1)
        h = self.transformer(torch.cat([cls, tok], dim=1))
        return h[:, 0], h[:, 1:]

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, S] -> (cls [B, d], tokens [B, N, d])."""
        return self.transform(self.frame_tokens(x))

    forward = encode


class MaskedDecoder(nn.Module):
    """MAE decoder: kept tokens [B, K, d_in] at keep_idx -> predictions [B, N, d_out] for all N."""

    def __init__(self, d_in: int, d_out: int, n_tokens: int, d: int, n_layers: int, n_heads: int,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.n_tokens = n_tokens
        self.embed = nn.Linear(d_in, d)
        self.mask_token = nn.Parameter(torch.randn(d) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(n_tokens, d) * 0.02)
        self.transformer = Transformer(d, n_layers, n_heads, mlp_ratio)
        self.pred = nn.Linear(d, d_out)

    def forward(self, kept: Tensor, keep_idx: Tensor) -> Tensor:
        grid = unshuffle_with_mask_token(self.embed(kept), keep_idx, self.n_tokens, self.mask_token)
        return self.pred(self.transformer(grid + self.pos_embed))


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the masked positions only. pred/target [B, N, d], mask [B, N] 0/1."""
    per_token = (pred - target).pow(2).mean(dim=-1)
    return (per_token * mask).sum() / mask.sum().clamp_min(1.0)


class NeuroNet(nn.Module):
    """NeuroNet for one modality: encoder + MAE decoder + projector (self-supervised pretraining).

    encode(x [B, S]) -> (cls [B, d], tokens [B, N, d])
    ssl_loss(x [B, S]) -> (loss, {"recon", "contrastive", "mask_ratio"}) (parts: detached 0-d tensors)
    """

    def __init__(self, config: EncoderConfig | None = None):
        super().__init__()
        self.config = cfg = config or EncoderConfig()
        self.encoder = NeuroNetEncoder(cfg)
        self.decoder = MaskedDecoder(cfg.d_model, cfg.d_model, cfg.n_frames, cfg.decoder_d_model,
                                     cfg.decoder_layers, cfg.decoder_heads, cfg.mlp_ratio)
        self.projector = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_model), nn.GELU(), nn.Linear(cfg.d_model, cfg.proj_dim)
        )

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.encoder.encode(x)

    forward = encode

    def ssl_loss(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.config
        f = self.encoder.frame_tokens(x)                          # [B, N, d]
        target = F.layer_norm(f.detach(), (f.shape[-1],))         # stop-gradient target
        b, n, _ = f.shape
        recon, proj, ratios = [], [], []
        for _view in range(2):
            keep_idx, _mask_idx, mask = random_masking(b, n, cfg.mask_ratio, x.device, generator)
            cls, h = self.encoder.transform(gather_tokens(f, keep_idx), keep_idx)
            pred = self.decoder(h, keep_idx)
            recon.append(masked_mse(pred, target, mask))
            proj.append(self.projector(cls))
            ratios.append(mask.mean())
        rec = 0.5 * (recon[0] + recon[1])
        con = nt_xent(proj[0], proj[1], cfg.temperature)
        loss = cfg.recon_weight * rec + cfg.contrastive_weight * con
        parts = {"recon": rec.detach(), "contrastive": con.detach(),
                 "mask_ratio": (0.5 * (ratios[0] + ratios[1])).detach()}
        return loss, parts
