"""Shared building blocks: LoRA linear, pre-norm transformer, masking, NT-Xent.

Glossary:
    B   batch            L   tokens in a sequence       d   token width
    H   attention heads  r   LoRA rank                   N   tokens before masking
    keep   float 0/1 mask [B, L]: 1 = the token may be attended to (a key), 0 = padding

The transformer is our own pre-norm block on `F.scaled_dot_product_attention` with an
ADDITIVE key mask (no nested tensors, no fast path), so it traces with torch.export / ONNX
dynamo with a dynamic batch axis, and LoRA hooks on the q / v projections are plain modules.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# additive bias for masked keys: large enough to zero a softmax term, small enough for fp16
MASK_BIAS = -30000.0


class LoRALinear(nn.Linear):
    """nn.Linear with an optional low-rank adapter: y = W x + b + (alpha/r) B A x.

    `weight`/`bias` keep nn.Linear's names (pretrained weights load unchanged); the adapter
    adds `lora_a` [r, in] (Kaiming init) and `lora_b` [out, r] (zeros: starts as identity).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 rank: int = 0, alpha: float = 8.0):
        super().__init__(in_features, out_features, bias=bias)
        self.rank = int(rank)
        if self.rank > 0:
            self.lora_a = nn.Parameter(torch.empty(self.rank, in_features))
            self.lora_b = nn.Parameter(torch.zeros(out_features, self.rank))
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
            self.lora_scale = float(alpha) / self.rank
        else:
            self.register_parameter("lora_a", None)
            self.register_parameter("lora_b", None)
            self.lora_scale = 0.0

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.lora_a is not None:
            y = y + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.lora_scale
        return y


def key_bias(keep: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """keep [B, L] float 0/1 -> additive attention bias [B, 1, 1, L] (0 or MASK_BIAS)."""
    if keep is None:
        return None
    return ((1.0 - keep.to(dtype)) * MASK_BIAS)[:, None, None, :]


class Attention(nn.Module):
    """Multi-head self-attention; q and v are LoRALinear (rank 0 = plain linear)."""

    def __init__(self, d: int, n_heads: int, dropout: float = 0.0,
                 lora_rank: int = 0, lora_alpha: float = 8.0):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.q = LoRALinear(d, d, rank=lora_rank, alpha=lora_alpha)
        self.k = nn.Linear(d, d)
        self.v = LoRALinear(d, d, rank=lora_rank, alpha=lora_alpha)
        self.o = nn.Linear(d, d)

    def forward(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        b, L, d = x.shape
        h = self.n_heads

        def heads(t: Tensor) -> Tensor:  # [B, L, d] -> [B, H, L, d/H]
            return t.reshape(b, L, h, d // h).transpose(1, 2)

        q = heads(self.q(x))
        if bias is not None and bias.dtype != q.dtype:   # autocast: q may be bf16/fp16
            bias = bias.to(q.dtype)
        y = F.scaled_dot_product_attention(
            q, heads(self.k(x)), heads(self.v(x)), attn_mask=bias,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.o(y.transpose(1, 2).reshape(b, L, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)); x + mlp(ln(x))."""

    def __init__(self, d: int, n_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 lora_rank: int = 0, lora_alpha: float = 8.0):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = Attention(d, n_heads, dropout, lora_rank, lora_alpha)
        self.ln2 = nn.LayerNorm(d)
        hidden = int(round(d * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x), bias))
        return x + self.drop(self.mlp(self.ln2(x)))


class Transformer(nn.Module):
    """Stack of pre-norm blocks + final LayerNorm. forward(x [B,L,d], keep [B,L] | None)."""

    def __init__(self, d: int, n_layers: int, n_heads: int, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, lora_rank: int = 0, lora_alpha: float = 8.0):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(d, n_heads, mlp_ratio, dropout, lora_rank, lora_alpha) for _ in range(n_layers)
        )
        self.ln = nn.LayerNorm(d)

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        bias = key_bias(keep, x.dtype)
        for blk in self.blocks:
            x = blk(x, bias)
        return self.ln(x)


def n_masked(n_tokens: int, ratio: float) -> int:
    """How many of `n_tokens` a masking `ratio` hides: round(ratio * n), at least 1, at most n-1."""
    return int(min(max(round(ratio * n_tokens), 1), n_tokens - 1))


def random_masking(batch: int, n_tokens: int, ratio: float, device=None,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Independent random masking per row (MAE).

    Returns keep_idx [B, N-k] and mask_idx [B, k] (int64, each sorted ascending) and
    mask [B, N] float (1 = masked), with k = n_masked(N, ratio) for every row (static shapes).
    """
    k = n_masked(n_tokens, ratio)
    noise = torch.rand(batch, n_tokens, device=device, generator=generator)
    order = torch.argsort(noise, dim=1)
    keep_idx = torch.sort(order[:, : n_tokens - k], dim=1).values
    mask_idx = torch.sort(order[:, n_tokens - k:], dim=1).values
    mask = torch.zeros(batch, n_tokens, device=device)
    mask.scatter_(1, mask_idx, 1.0)
    return keep_idx, mask_idx, mask


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """x [B, N, d], idx [B, K] int64 -> x[b, idx[b]] [B, K, d]."""
    return torch.gather(x, 1, idx[:, :, None].expand(-1, -1, x.shape[-1]))


def unshuffle_with_mask_token(kept: Tensor, keep_idx: Tensor, n_tokens: int, mask_token: Tensor) -> Tensor:
    """Place kept tokens [B, K, d] back at keep_idx in a [B, N, d] grid filled with mask_token [d]."""
    b, _, d = kept.shape
    grid = mask_token.to(kept.dtype).expand(b, n_tokens, d)
    return grid.scatter(1, keep_idx[:, :, None].expand(-1, -1, d), kept)


def nt_xent(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """Symmetric NT-Xent (SimCLR) between two views a, b [B, p]: positives are (a_i, b_i),
    negatives every other embedding of both views. Returns the mean over the 2B anchors."""
    n = a.shape[0]
    z = F.normalize(torch.cat([a, b], dim=0), dim=-1)
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def info_nce(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """Symmetric CLIP InfoNCE between a, b [B, p]: cross-entropy over a@b.T both ways."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t() / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


class TaskHeads(nn.Module):
    """LayerNorm + three linear heads over [..., D]: stage [..., n_stages], apnea [...], hypopnea [...]."""

    def __init__(self, d: int, n_stages: int = 5):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.stage = nn.Linear(d, n_stages)
        self.apnea = nn.Linear(d, 1)
        self.hypopnea = nn.Linear(d, 1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = self.norm(z)
        # [..., 0] rather than .squeeze(): batch 1 keeps its batch axis
        return self.stage(h), self.apnea(h)[..., 0], self.hypopnea(h)[..., 0]
