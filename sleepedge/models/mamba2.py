"""Causal Mamba2 (SSD) block and the temporal context module over a night of epochs.

Glossary:
    B   batch                      T   epochs in the sequence (30 s each)
    D   d_model (fused embedding)  E   d_inner = expand * D
    H   nheads = E / headdim       P   headdim
    G   ngroups (B/C groups)       Nn  d_state
    W   d_conv (causal conv width) C   conv_dim = E + 2 G Nn
    Q   chunk length of the SSD scan

Mamba2 (state-spaces/mamba `Mamba2`, same parameter names and shapes so weights move between
the kernel path and the reference path unchanged):
    in_proj  [B,T,D] -> z [B,T,E], xBC [B,T,C], dt [B,T,H]
    conv1d   causal depthwise over xBC (width W), SiLU -> x [B,T,H,P], B/C [B,T,G,Nn]
    SSD      h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t ;  y_t = C_t h_t + D x_t   (A scalar per head)
    norm     gated RMSNorm: rmsnorm(y * silu(z)) * weight
    out_proj [B,T,E] -> [B,T,D]
TemporalContext: h = z; h = h + Mamba2(RMSNorm(h)) per layer; heads(h) -> stage/apnea/hypopnea.

Three paths, one set of weights:
    forward (reference)  chunked SSD scan in pure PyTorch (exact; O(T Q) memory);
                         forward_chunk continues from a carried state (truncated BPTT)
    forward (kernels)    mamba_ssm's `mamba_chunk_scan_combined` (+ causal_conv1d) when
                         importable and the input is on CUDA (training only)
    step                 one epoch, functional (no in-place writes, basic ops: exports to ONNX)
State per layer: conv_state [B, C, W-1] (last W-1 conv inputs), ssm_state [B, H, P, Nn].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sleepedge.models.config import MambaConfig, ModelInputError
from sleepedge.models.layers import TaskHeads

try:  # optional CUDA kernels (training on GPU only)
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined  # type: ignore
except Exception:  # noqa: BLE001 - any import failure means "no kernels"
    mamba_chunk_scan_combined = None
try:
    from causal_conv1d import causal_conv1d_fn  # type: ignore
except Exception:  # noqa: BLE001
    causal_conv1d_fn = None

HAS_MAMBA_KERNELS = mamba_chunk_scan_combined is not None


class RMSNorm(nn.Module):
    """RMSNorm over the last axis (weight only)."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class RMSNormGated(RMSNorm):
    """mamba_ssm RMSNormGated with norm_before_gate=False, group_size = d: rmsnorm(x * silu(z))."""

    def forward(self, x: Tensor, z: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(x * F.silu(z))


def segsum(x: Tensor) -> Tensor:
    """Stable segment sum. x [..., Q] -> [..., Q, Q] with out[i, j] = sum_{j<k<=i} x_k (i >= j),
    -inf above the diagonal (so exp() gives the causal decay matrix)."""
    q = x.shape[-1]
    xx = x[..., None].expand(*x.shape, q)                  # [..., Q(k), Q(j)]
    strict = torch.tril(torch.ones(q, q, dtype=torch.bool, device=x.device), diagonal=-1)
    xx = xx.masked_fill(~strict, 0.0)
    out = torch.cumsum(xx, dim=-2)
    lower = torch.tril(torch.ones(q, q, dtype=torch.bool, device=x.device), diagonal=0)
    return out.masked_fill(~lower, float("-inf"))


def ssd_scan(x: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor, chunk: int,
             initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Exact chunked SSD scan (Mamba2 paper, "ssd_minimal"), pure PyTorch.

    x [B,T,H,P], dt [B,T,H] (after softplus), A [H] (negative), Bm/Cm [B,T,G,Nn].
    Returns y [B,T,H,P] (without the D skip) and the final state [B,H,P,Nn].
    Zero padding to a multiple of `chunk` is exact: padded steps have dt = 0 (decay 1, no input).
    """
    b, t, h, p = x.shape
    g, n = Bm.shape[2], Bm.shape[3]
    pad = (-t) % chunk
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        Bm = F.pad(Bm, (0, 0, 0, 0, 0, pad))
        Cm = F.pad(Cm, (0, 0, 0, 0, 0, pad))
    L = t + pad
    c = L // chunk
    rep = h // g
    Bh = Bm.repeat_interleave(rep, dim=2)                   # [B, L, H, Nn]
    Ch = Cm.repeat_interleave(rep, dim=2)
    X = (x * dt[..., None]).reshape(b, c, chunk, h, p)      # discretised input dt * x
    Bh = Bh.reshape(b, c, chunk, h, n)
    Ch = Ch.reshape(b, c, chunk, h, n)
    Ad = (dt * A).reshape(b, c, chunk, h).permute(0, 3, 1, 2)   # [B, H, c, Q]
    A_cum = torch.cumsum(Ad, dim=-1)
    # 1. within-chunk outputs (quadratic, attention-like)
    Lmat = torch.exp(segsum(Ad))                             # [B, H, c, Q, Q]
    Y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Ch, Bh, Lmat, X)
    # 2. state at the end of each chunk from its own inputs
    decay_states = torch.exp(A_cum[..., -1:] - A_cum)        # [B, H, c, Q]
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bh, decay_states, X)
    # 3. carry states across chunks
    if initial_state is None:
        initial_state = torch.zeros(b, h, p, n, dtype=x.dtype, device=x.device)
    states = torch.cat([initial_state.to(states.dtype)[:, None], states], dim=1)   # [B, c+1, H, P, Nn]
    decay_chunk = torch.exp(segsum(F.pad(A_cum[..., -1], (1, 0))))    # [B, H, c+1, c+1]
    new_states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states, final = new_states[:, :-1], new_states[:, -1]
    # 4. contribution of the carried-in state to each position
    Y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", Ch, states, torch.exp(A_cum))
    y = (Y_diag + Y_off).reshape(b, L, h, p)[:, :t]
    return y, final


class Mamba2(nn.Module):
    """One Mamba2 mixer. forward(u [B,T,D]) -> [B,T,D]; step(u_t [B,D], conv, ssm) -> (y_t, conv', ssm')."""

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.config = cfg
        e, h, n, g = cfg.d_inner, cfg.nheads, cfg.d_state, cfg.ngroups
        self.in_proj = nn.Linear(cfg.d_model, 2 * e + 2 * g * n + h, bias=False)
        self.conv1d = nn.Conv1d(cfg.conv_dim, cfg.conv_dim, cfg.d_conv, groups=cfg.conv_dim,
                                padding=cfg.d_conv - 1, bias=True)
        # dt bias: inverse softplus of dt ~ logUniform[dt_min, dt_max] (mamba_ssm init)
        dt = torch.exp(torch.rand(h) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
        dt = dt.clamp(min=cfg.dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(h).uniform_(1.0, 16.0)))
        self.D = nn.Parameter(torch.ones(h))
        self.norm = RMSNormGated(e, eps=cfg.norm_eps)
        self.out_proj = nn.Linear(e, cfg.d_model, bias=False)
        self.use_kernels = True   # set False to force the reference scan on CUDA (parity tests)

    def _split(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cfg = self.config
        return torch.split(zxbcdt, [cfg.d_inner, cfg.conv_dim, cfg.nheads], dim=-1)

    def forward(self, u: Tensor) -> Tensor:
        """u [B,T,D] -> [B,T,D], from a zero state."""
        return self.forward_with_state(u)[0]

    def forward_with_state(self, u: Tensor, conv_state: Tensor | None = None,
                           ssm_state: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """u [B,T,D] from (conv_state [B,C,W-1], ssm_state [B,H,P,Nn]) (None: zeros) ->
        (y [B,T,D], conv_state', ssm_state'): a chunk of a longer sequence, exactly as T steps."""
        cfg = self.config
        b, t, _ = u.shape
        e, h, p, n, g, w = cfg.d_inner, cfg.nheads, cfg.headdim, cfg.d_state, cfg.ngroups, cfg.d_conv
        z, xBC, dt = self._split(self.in_proj(u))
        kernels = self.use_kernels and HAS_MAMBA_KERNELS and u.is_cuda
        # conv inputs with the carried-in history in front: [B, C, W-1+T]
        if conv_state is None:
            hist = F.pad(xBC.transpose(1, 2), (w - 1, 0))
        else:
            hist = torch.cat([conv_state.to(xBC.dtype), xBC.transpose(1, 2)], dim=-1)
        new_conv = hist[:, :, hist.shape[-1] - (w - 1):]
        if kernels and causal_conv1d_fn is not None and conv_state is None:
            xBC = causal_conv1d_fn(xBC.transpose(1, 2), self.conv1d.weight[:, 0], self.conv1d.bias,
                                   activation="silu").transpose(1, 2)
        else:
            xBC = F.silu(F.conv1d(hist, self.conv1d.weight, self.conv1d.bias, groups=cfg.conv_dim).transpose(1, 2))
        x, Bm, Cm = torch.split(xBC, [e, g * n, g * n], dim=-1)
        x = x.reshape(b, t, h, p)
        Bm = Bm.reshape(b, t, g, n)
        Cm = Cm.reshape(b, t, g, n)
        if kernels:
            A = -torch.exp(self.A_log.float())
            y, new_ssm = mamba_chunk_scan_combined(
                x, dt, A, Bm, Cm, chunk_size=cfg.chunk_size, D=self.D, z=None, dt_bias=self.dt_bias,
                initial_states=ssm_state, dt_softplus=True, return_final_states=True)
        else:
            dts = F.softplus(dt + self.dt_bias)
            y, new_ssm = ssd_scan(x, dts, -torch.exp(self.A_log), Bm, Cm, cfg.chunk_size, ssm_state)
            y = y + x * self.D[:, None]
        y = self.norm(y.reshape(b, t, e), z)
        return self.out_proj(y), new_conv, new_ssm

    def step(self, u: Tensor, conv_state: Tensor, ssm_state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """u [B,D], conv_state [B,C,W-1], ssm_state [B,H,P,Nn] -> (y [B,D], conv', ssm').
        Functional: the inputs are never written to."""
        cfg = self.config
        b = u.shape[0]
        e, h, p, n, g = cfg.d_inner, cfg.nheads, cfg.headdim, cfg.d_state, cfg.ngroups
        z, xBC, dt = self._split(self.in_proj(u))
        window = torch.cat([conv_state, xBC[:, :, None]], dim=-1)              # [B, C, W]
        xBC = F.silu((window * self.conv1d.weight[:, 0, :]).sum(-1) + self.conv1d.bias)
        new_conv = window[:, :, 1:]
        x, Bm, Cm = torch.split(xBC, [e, g * n, g * n], dim=-1)
        x = x.reshape(b, h, p)
        rep = h // g
        Bh = Bm.reshape(b, g, n).repeat_interleave(rep, dim=1)                # [B, H, Nn]
        Ch = Cm.reshape(b, g, n).repeat_interleave(rep, dim=1)
        dts = F.softplus(dt + self.dt_bias)                                    # [B, H]
        dA = torch.exp(dts * -torch.exp(self.A_log))                          # [B, H]
        new_ssm = ssm_state * dA[:, :, None, None] + (dts[:, :, None] * x)[..., None] * Bh[:, :, None, :]
        y = (new_ssm * Ch[:, :, None, :]).sum(-1) + x * self.D[:, None]        # [B, H, P]
        y = self.norm(y.reshape(b, e), z)
        return self.out_proj(y), new_conv, new_ssm


class TemporalContext(nn.Module):
    """Causal temporal context over fused epoch embeddings + per-task heads.

    forward(z [B,T,D]) -> (stage [B,T,5], apnea [B,T], hypopnea [B,T])
    init_state(batch) -> tuple of zeros named by `state_names`
    step(z_t [B,D], state) -> ((stage [B,5], apnea [B], hypopnea [B]), new_state)
    Streaming with step() from init_state() equals forward() over the whole sequence.
    """

    def __init__(self, cfg: MambaConfig | None = None):
        super().__init__()
        self.config = cfg = cfg or MambaConfig()
        self.norms = nn.ModuleList(RMSNorm(cfg.d_model, cfg.norm_eps) for _ in range(cfg.n_layers))
        self.layers = nn.ModuleList(Mamba2(cfg) for _ in range(cfg.n_layers))
        self.heads = TaskHeads(cfg.d_model, cfg.n_stages)
        if cfg.n_layers == 1:
            self.state_names: tuple[str, ...] = ("conv_state", "ssm_state")
        else:
            self.state_names = tuple(
                name for i in range(cfg.n_layers) for name in (f"conv_state_{i}", f"ssm_state_{i}")
            )

    def state_shapes(self, batch: int = 1) -> dict[str, tuple[int, ...]]:
        cfg = self.config
        shapes = ((batch, cfg.conv_dim, cfg.d_conv - 1), (batch, cfg.nheads, cfg.headdim, cfg.d_state))
        return {name: shapes[i % 2] for i, name in enumerate(self.state_names)}

    def init_state(self, batch: int, dtype: torch.dtype | None = None,
                   device: torch.device | str | None = None) -> tuple[Tensor, ...]:
        ref = self.heads.stage.weight
        dtype = dtype or ref.dtype
        device = device or ref.device
        return tuple(torch.zeros(s, dtype=dtype, device=device) for s in self.state_shapes(batch).values())

    def features(self, z: Tensor) -> Tensor:
        """z [B,T,D] -> contextual features [B,T,D] (before the heads)."""
        if z.dim() != 3 or z.shape[-1] != self.config.d_model:
            raise ModelInputError(
                f"TemporalContext input z has shape {tuple(z.shape)}; expected [batch, epochs, {self.config.d_model}]"
            )
        h = z
        for norm, layer in zip(self.norms, self.layers):
            h = h + layer(norm(h))
        return h

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.heads(self.features(z))

    def _check_state(self, state: tuple[Tensor, ...], who: str) -> None:
        if len(state) != len(self.state_names):
            raise ModelInputError(
                f"TemporalContext.{who} got {len(state)} state tensors; expected {len(self.state_names)} "
                f"({', '.join(self.state_names)}); start from init_state(batch)"
            )

    def forward_chunk(self, z: Tensor, state: tuple[Tensor, ...] | None = None
                      ) -> tuple[tuple[Tensor, Tensor, Tensor], tuple[Tensor, ...]]:
        """A chunk of a longer sequence: z [B,L,D] from `state` (None: init_state) ->
        ((stage [B,L,5], apnea [B,L], hypopnea [B,L]), new_state). Equals L calls of `step`
        (and `forward` over the concatenated chunks) but runs the chunked scan: use it for
        truncated BPTT in training (detach the returned state between chunks)."""
        if z.dim() != 3 or z.shape[-1] != self.config.d_model:
            raise ModelInputError(
                f"TemporalContext input z has shape {tuple(z.shape)}; expected [batch, epochs, {self.config.d_model}]"
            )
        if state is not None:
            self._check_state(state, "forward_chunk")
        h = z
        new_state: list[Tensor] = []
        for i, (norm, layer) in enumerate(zip(self.norms, self.layers)):
            conv, ssm = (None, None) if state is None else (state[2 * i], state[2 * i + 1])
            y, conv, ssm = layer.forward_with_state(norm(h), conv, ssm)
            h = h + y
            new_state += [conv, ssm]
        return self.heads(h), tuple(new_state)

    def step(self, z_t: Tensor, state: tuple[Tensor, ...]) -> tuple[tuple[Tensor, Tensor, Tensor], tuple[Tensor, ...]]:
        self._check_state(state, "step")
        h = z_t
        new_state: list[Tensor] = []
        for i, (norm, layer) in enumerate(zip(self.norms, self.layers)):
            y, conv, ssm = layer.step(norm(h), state[2 * i], state[2 * i + 1])
            h = h + y
            new_state += [conv, ssm]
        return self.heads(h), tuple(new_state)
