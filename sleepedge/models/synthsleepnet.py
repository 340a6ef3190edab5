"""SynthSleepNet: multimodal fusion of per-modality NeuroNet encoders + causal temporal context.

Glossary:
    B   batch          M   modalities (config.modalities, in that order)   S   3000 samples
    N   frames per epoch / tokens per modality (27)    K   kept tokens per modality when masked
    d   encoder width  D   fused embedding width (fusion.d_model)          T   epochs
    present  float 0/1 [B, M]: 1 = the role was recorded and is usable for this epoch

Epoch embedding (`embed`, export-friendly: static shapes, masks instead of gathers):
    x[:, m] --encoder_m--> tokens [B, N, d] --proj_m--> + modality_embed[m] + pos_embed -> [B, N, D]
    concat over modalities -> [B, M*N, D] --fusion transformer (absent roles masked as keys)-->
    z = mean of the fused tokens of present roles [B, D]  (a row with no role present -> zeros)
Self-supervision (`ssl_loss`): each modality masked independently (ratio 0.4: 11 of 27 tokens);
the kept tokens of all modalities ([B, M*K, D]) go through the fusion transformer; decoder m
reads ITS OWN slice [m*K:(m+1)*K] of the fused tokens and reconstructs encoder m's tokens at
its masked positions (stop-gradient, layer-normalised targets); NT-Xent (tau 0.1) between the
projected fused embedding and each present modality's projected CLS.
Encoders: "lora" (frozen + rank-4 adapters on attention q/v), "frozen", or "full".
Heads: `epoch_heads(z)` (no context) and `temporal` (causal Mamba2 + heads over a sequence).
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sleepedge.models.config import ModelInputError, SynthSleepNetConfig, preset
from sleepedge.models.layers import TaskHeads, Transformer, gather_tokens, nt_xent, random_masking
from sleepedge.models.mamba2 import TemporalContext
from sleepedge.models.neuronet import MaskedDecoder, NeuroNetEncoder


def modality_dropout(present: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Training augmentation: drop each present modality with probability p, keeping at least
    one present modality in every row that had one. present [B, M] 0/1 -> new mask [B, M]."""
    if p <= 0.0:
        return present
    u = torch.rand(present.shape, device=present.device, generator=generator)
    kept = present * (u >= p).to(present.dtype)
    need = (kept.sum(dim=1) == 0) & (present.sum(dim=1) > 0)
    # restore one originally-present modality, chosen uniformly, where everything was dropped
    score = torch.rand(present.shape, device=present.device, generator=generator) + 2.0 * present
    one = F.one_hot(score.argmax(dim=1), present.shape[1]).to(present.dtype)
    return torch.where(need[:, None], one, kept)


def masked_mean(h: Tensor, keep: Tensor) -> Tensor:
    """h [B, L, D], keep [B, L] 0/1 -> mean over kept tokens [B, D] (zeros when none kept)."""
    w = keep.to(h.dtype)[..., None]
    return (h * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


class SynthSleepNet(nn.Module):
    """embed(x [B,M,S], present [B,M]) -> z [B,D]; epoch_heads(z); temporal(z_seq); ssl_loss(x, present)."""

    def __init__(self, config: SynthSleepNetConfig | None = None):
        super().__init__()
        self.config = cfg = config or preset("tiny")
        enc, fus = cfg.encoder, cfg.fusion
        d, D, N = enc.d_model, fus.d_model, enc.n_frames
        rank = fus.lora_rank if fus.encoder_mode == "lora" else 0
        self.encoders = nn.ModuleDict({r: NeuroNetEncoder(enc, rank, fus.lora_alpha) for r in cfg.modalities})
        self.proj = nn.ModuleDict({r: nn.Linear(d, D) for r in cfg.modalities})
        self.modality_embed = nn.Parameter(torch.randn(len(cfg.modalities), D) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(N, D) * 0.02)
        self.fusion = Transformer(D, fus.n_layers, fus.n_heads, fus.mlp_ratio, fus.dropout)
        self.decoders = nn.ModuleDict({
            r: MaskedDecoder(D, d, N, fus.decoder_d_model, fus.decoder_layers, fus.decoder_heads, fus.mlp_ratio)
            for r in cfg.modalities
        })
        self.fused_proj = nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.Linear(D, fus.proj_dim))
        self.modality_proj = nn.ModuleDict({
            r: nn.Sequential(nn.Linear(d, D), nn.GELU(), nn.Linear(D, fus.proj_dim)) for r in cfg.modalities
        })
        self.heads = TaskHeads(D, cfg.mamba.n_stages)
        self.temporal = TemporalContext(cfg.mamba)
        self.set_encoder_mode(fus.encoder_mode)

    # ---- encoders --------------------------------------------------------------------------
    def set_encoder_mode(self, mode: str) -> None:
        """Which encoder parameters train: "lora" (adapters only), "frozen" (none), "full" (all).
        Switching to "lora" needs encoders built with adapters (config encoder_mode="lora")."""
        has_lora = any("lora_" in n for n, _ in self.encoders.named_parameters())
        if mode == "lora" and not has_lora:
            raise ModelInputError("encoder_mode='lora' needs a model built with fusion.encoder_mode='lora'")
        for name, prm in self.encoders.named_parameters():
            is_lora = "lora_" in name
            prm.requires_grad_(mode == "full" or (mode == "lora" and is_lora))
        self._encoder_mode = mode

    def load_encoder(self, role: str, state_dict: Mapping[str, Tensor]) -> None:
        """Load pretrained NeuroNet weights (a `NeuroNet` or `NeuroNetEncoder` state dict) into the
        encoder of `role`; LoRA adapters (absent from NeuroNet) keep their identity init."""
        if role not in self.encoders:
            raise ModelInputError(f"role {role!r} is not in this model; expected one of {list(self.encoders)}")
        sd = {k[len("encoder."):] if k.startswith("encoder.") else k: v for k, v in state_dict.items()
              if k.startswith("encoder.") or not k.split(".")[0] in ("decoder", "projector")}
        missing, unexpected = self.encoders[role].load_state_dict(sd, strict=False)
        bad_missing = [k for k in missing if "lora_" not in k]
        if bad_missing or unexpected:
            raise ModelInputError(
                f"NeuroNet weights for {role} do not match the encoder config: missing {bad_missing[:5]}, "
                f"unexpected {list(unexpected)[:5]}; build both from the same EncoderConfig"
            )

    def _check(self, x: Tensor, present: Tensor) -> None:
        cfg = self.config
        M, S = len(cfg.modalities), cfg.encoder.epoch_samples
        if x.dim() != 3 or x.shape[1] != M or x.shape[2] != S:
            raise ModelInputError(
                f"SynthSleepNet input x has shape {tuple(x.shape)}; expected [batch, {M}, {S}] "
                f"(roles {list(cfg.modalities)}, {cfg.encoder.epoch_s:g} s at {cfg.encoder.fs_hz} Hz)"
            )
        if present.dim() != 2 or present.shape[1] != M:
            raise ModelInputError(
                f"SynthSleepNet present has shape {tuple(present.shape)}; expected [batch, {M}] float 0/1"
            )

    def encode_modalities(self, x: Tensor, present: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per role (config order): (cls [B, d], tokens [B, N, d]). Absent roles see zeros (NaN-safe)."""
        self._check(x, present)
        x = torch.where(present[:, :, None] > 0, x, torch.zeros_like(x))
        return [enc.encode(x[:, m]) for m, enc in enumerate(self.encoders.values())]

    def _project(self, m: int, role: str, tokens: Tensor) -> Tensor:
        return self.proj[role](tokens) + self.modality_embed[m] + self.pos_embed

    # ---- inference -------------------------------------------------------------------------
    def embed(self, x: Tensor, present: Tensor) -> Tensor:
        """x [B, M, S] float, present [B, M] float 0/1 -> fused epoch embedding z [B, D]."""
        present = present.to(x.dtype)
        outs = self.encode_modalities(x, present)
        N = self.config.encoder.n_frames
        h = torch.cat([self._project(m, r, t) for m, (r, (_c, t)) in enumerate(zip(self.encoders, outs))], dim=1)
        b, M = present.shape
        keep = present[:, :, None].expand(b, M, N).reshape(b, M * N)
        return masked_mean(self.fusion(h, keep), keep)

    def epoch_heads(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z [B, D] -> (stage_logits [B, 5], apnea_logit [B], hypopnea_logit [B]) without context."""
        return self.heads(z)

    def forward(self, x: Tensor, present: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Epoch-wise heads: epoch_heads(embed(x, present))."""
        return self.epoch_heads(self.embed(x, present))

    def sequence_forward(self, x: Tensor, present: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, T, M, S], present [B, T, M] -> temporal heads (stage [B,T,5], apnea [B,T], hypopnea [B,T])."""
        b, t = x.shape[0], x.shape[1]
        z = self.embed(x.reshape(b * t, *x.shape[2:]), present.reshape(b * t, -1))
        return self.temporal(z.reshape(b, t, -1))

    # ---- self-supervision ------------------------------------------------------------------
    def ssl_loss(self, x: Tensor, present: Tensor | None = None,
                 generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Masked multimodal reconstruction + fusion<->modality NT-Xent.

        x [B, M, S], present [B, M] (default all ones). In training mode with
        fusion.modality_dropout > 0 the presence mask is first thinned by `modality_dropout`.
        Returns (loss, {"recon", "contrastive", "mask_ratio"}) with detached 0-d tensors as parts.
        """
        cfg, fus = self.config, self.config.fusion
        b, M, N = x.shape[0], len(cfg.modalities), cfg.encoder.n_frames
        if present is None:
            present = torch.ones(b, M, dtype=x.dtype, device=x.device)
        present = present.to(x.dtype)
        if self.training and fus.modality_dropout > 0:
            present = modality_dropout(present, fus.modality_dropout, generator)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self._encoder_mode != "frozen"):
            outs = self.encode_modalities(x, present)
        roles = list(self.encoders)
        kept, masks, keep_idxs = [], [], []
        for m, (r, (_c, t)) in enumerate(zip(roles, outs)):
            keep_idx, _mask_idx, mask = random_masking(b, N, fus.mask_ratio, x.device, generator)
            kept.append(gather_tokens(self._project(m, r, t), keep_idx))
            masks.append(mask)
            keep_idxs.append(keep_idx)
        K = kept[0].shape[1]
        keep = present[:, :, None].expand(b, M, K).reshape(b, M * K)
        h = self.fusion(torch.cat(kept, dim=1), keep)                      # [B, M*K, D]
        z = masked_mean(h, keep)                                            # [B, D]
        zf = self.fused_proj(z)
        rec_num = x.new_zeros(())
        rec_den = x.new_zeros(())
        con_terms = []
        for m, (r, (c, t)) in enumerate(zip(roles, outs)):
            target = F.layer_norm(t.detach(), (t.shape[-1],))
            pred = self.decoders[r](h[:, m * K:(m + 1) * K], keep_idxs[m])  # this modality's slice only
            w = masks[m] * present[:, m:m + 1]                              # masked positions of present rows
            rec_num = rec_num + ((pred - target).pow(2).mean(-1) * w).sum()
            rec_den = rec_den + w.sum()
            rows = present[:, m] > 0
            if int(rows.sum()) >= 2:
                zm = self.modality_proj[r](c)
                con_terms.append(nt_xent(zf[rows], zm[rows], fus.temperature))
        rec = rec_num / rec_den.clamp_min(1.0)
        con = torch.stack(con_terms).mean() if con_terms else x.new_zeros(())
        loss = fus.recon_weight * rec + fus.contrastive_weight * con
        ratio = torch.stack(masks).mean()
        return loss, {"recon": rec.detach(), "contrastive": con.detach(), "mask_ratio": ratio.detach()}
