"""SpectralSleepNet: a spectral front end + causal normaliser + the causal Mamba2 context.

The stager that CAN be trained on real sleep here: its epoch features are exactly the ones
stored for the 153 real Sleep-EDF-78 nights (`sleep-edf-bandpower-78/*.npz`, settings in the
`.json` beside each file), so it trains on those and scores raw recordings through the same
bundle graphs as SynthSleepNet (epoch graph -> z, step graph: state in, state out).

Glossary:
    B   batch        M   roles (config.modalities)      S   3000 samples (30 s at 100 Hz)
    T   epochs       K   bands (delta 0.5-4, theta 4-8, alpha 8-12, sigma 12-16, beta 16-30 Hz)
    logP  natural log band power, µV^2 (the stored `log_*` features up to one per-night constant)
    rel   P_k / sum_k P_k (the stored `rel_*` features, scale-free)

Epoch graph (`embed`, stateless, batched over a night):
    x [B,M,S] (preprocessed: causal high-pass only, no amplitude normalisation)
      -> Welch (hamming 4 s, 50 % overlap, constant detrend, median of the 14 segments with
         scipy's median bias) as a windowed-DFT matmul (no FFT op needed in ONNX)
      -> per-bin weight |H_ref(f)|^2 / |H_hp(f)|^2: emulates the reference pipeline's zero-phase
         FIR band-pass (MNE defaults: EEG 0.5-30 Hz, EOG 0.5-15 Hz) and undoes the runtime's
         causal high-pass, in the frequency domain
      -> band sums -> logP [B,M,K]
    z = [logP * present (M*K), present (M)]   [B, M*K + M]
Step graph (`temporal.step`, causal, one epoch):
    CausalCentring: running mean of logP per role and band (cumulative mean for the first
    `norm_horizon_epochs` usable epochs, then an exponential average with that time constant;
    absent epochs do not update it; updates clipped to +-`norm_clip`); centred = logP - mean.
    This removes any per-night constant (electrode gain, amplifier, the reference pipeline's
    whole-night z-score) exactly, so the stored features and raw µV give the same input.
    h = MLP([centred, rel, present]) -> Mamba2 TemporalContext -> stage / apnea / hypopnea heads.
The apnea / hypopnea heads exist for interface compatibility; a spectral bundle trained on
the band-power set declares `labels.tasks == ["stage"]` and the runtime ignores them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from sleepedge.contract import EPOCH_S, FS_HZ, STAGES
from sleepedge.models.config import (
    _NESTED,
    ConfigError,
    MambaConfig,
    ModelInputError,
    _check_option,
    _Config,
    _SignalContract,
    check_modalities,
)
from sleepedge.models.layers import TaskHeads
from sleepedge.models.mamba2 import TemporalContext

BAND_NAMES: tuple[str, ...] = ("delta", "theta", "alpha", "sigma", "beta")


@dataclass(frozen=True)
class SpectralConfig(_Config):
    """The feature pipeline, in the reference `.json`'s terms (welch / bandpower_settings)."""

    fs_hz: int = FS_HZ
    epoch_s: float = EPOCH_S
    segment_s: float = 4.0                     # nperseg 400
    overlap: float = 0.5                       # noverlap 200
    bands_hz: tuple[tuple[float, float], ...] = ((0.5, 4.0), (4.0, 8.0), (8.0, 12.0), (12.0, 16.0), (16.0, 30.0))
    # the reference band-pass per role (zero-phase FIR, MNE's default transition bands), emulated on the PSD
    role_band_hz: tuple[tuple[str, float, float], ...] = (("EEG", 0.5, 30.0), ("EOG", 0.5, 15.0))
    highpass_hz: float = 0.4                   # the runtime's causal Butterworth high-pass (compensated)
    highpass_order: int = 2
    eps: float = 1e-10

    def __post_init__(self):
        if self.segment_s * self.fs_hz > self.epoch_s * self.fs_hz:
            raise ConfigError(f"spectral segment_s={self.segment_s} is longer than the epoch ({self.epoch_s} s)")
        if self.overlap != 0.5 or self.epoch_samples % (self.nperseg // 2):
            raise ConfigError(f"spectral overlap={self.overlap}, segment_s={self.segment_s}: the front end computes "
                              "50 %-overlap segments that tile the epoch (the reference's 4 s / 2 s); use overlap 0.5 "
                              "and a segment whose half divides the epoch")
        for lo, hi in self.bands_hz:
            if not 0.0 <= lo < hi <= self.fs_hz / 2:
                raise ConfigError(f"spectral band ({lo}, {hi}) Hz must satisfy 0 <= lo < hi <= {self.fs_hz / 2}")

    @property
    def nperseg(self) -> int:
        return int(round(self.segment_s * self.fs_hz))

    @property
    def noverlap(self) -> int:
        return int(round(self.overlap * self.nperseg))

    @property
    def epoch_samples(self) -> int:
        return int(round(self.epoch_s * self.fs_hz))

    @property
    def n_segments(self) -> int:
        step = self.nperseg - self.noverlap
        return (self.epoch_samples - self.nperseg) // step + 1

    def role_band(self, role: str) -> tuple[float, float]:
        for r, lo, hi in self.role_band_hz:
            if r == role:
                return lo, hi
        return self.bands_hz[0][0], self.bands_hz[-1][1]


@dataclass(frozen=True)
class SpectralSleepNetConfig(_SignalContract, _Config):
    """Spectral front end + causal centring + MLP + Mamba2 context (the real-data default)."""

    _signal_field = "spectral"

    modalities: tuple[str, ...] = ("EEG", "EOG")
    preset: str = "spectral"
    spectral: SpectralConfig = field(default_factory=SpectralConfig)
    d_hidden: int = 64
    norm_horizon_epochs: float = 240.0         # 2 h: cumulative mean first, then an EMA of this time constant
    norm_clip: float = 3.0                     # a single epoch moves the running mean by at most this (log units)
    # "band": one running level per role AND band; "role": one per role (the mean over bands of logP), which
    # removes exactly what the reference's per-night z-score removes (a gain common to all bands)
    norm_mode: str = "band"
    dropout: float = 0.1
    mamba: MambaConfig = field(default_factory=lambda: MambaConfig(d_model=64, headdim=32, n_layers=2, chunk_size=32))

    def __post_init__(self):
        object.__setattr__(self, "modalities", check_modalities(self.modalities))
        _check_option("norm_mode", self.norm_mode, ("band", "role"))
        if self.norm_horizon_epochs < 1:
            raise ConfigError(f"norm_horizon_epochs={self.norm_horizon_epochs} must be >= 1")

    @property
    def n_bands(self) -> int:
        return len(self.spectral.bands_hz)

    @property
    def d_embed(self) -> int:
        """Width of z (the epoch graph's output, the step graph's input): M*K log powers + M presence."""
        return len(self.modalities) * (self.n_bands + 1)

    def preprocess_config(self):
        """The runtime preprocessing this model expects: resample to fs_hz, a causal high-pass
        (compensated inside the front end), no amplitude normalisation (the step graph centres
        the log powers causally)."""
        from sleepedge.preprocess import PreprocessConfig

        bands = tuple((r, self.spectral.highpass_hz, None) for r in self.modalities)
        return PreprocessConfig(fs_hz=self.fs_hz, epoch_s=self.epoch_s, filter_order=self.spectral.highpass_order,
                                bands=bands, normalise=False)


_NESTED[("SpectralSleepNetConfig", "spectral")] = SpectralConfig
_NESTED[("SpectralSleepNetConfig", "mamba")] = MambaConfig


def _median_bias(n: int) -> float:
    """scipy.signal's bias of the median of n chi^2(2) periodogram values (Welch average='median')."""
    ii = 2 * np.arange(1, (n - 1) // 2 + 1)
    return float(1 + np.sum(1.0 / (ii + 1) - 1.0 / ii))


def _ref_fir_response(lo: float, hi: float, fs: float, freqs: np.ndarray) -> np.ndarray:
    """|H(f)| of MNE's default zero-phase FIR band-pass (firwin, hamming, 'auto' transitions)."""
    from scipy import signal as sps

    l_tr = min(max(lo * 0.25, 2.0), lo)
    h_tr = min(max(hi * 0.25, 2.0), fs / 2.0 - hi)
    n = int(round(3.3 / min(l_tr, h_tr) * fs))
    n += n % 2 == 0
    h = sps.firwin(n, [lo - l_tr / 2.0, hi + h_tr / 2.0], window="hamming", pass_zero=False, fs=fs)
    _, resp = sps.freqz(h, worN=freqs, fs=fs)
    return np.abs(resp)


def _highpass_response(fc: float, order: int, fs: float, freqs: np.ndarray) -> np.ndarray:
    from scipy import signal as sps

    sos = sps.butter(order, fc / (fs / 2.0), btype="highpass", output="sos")
    _, resp = sps.sosfreqz(sos, worN=freqs, fs=fs)
    return np.abs(resp)


class SpectralFrontEnd(nn.Module):
    """x [B, M, S] (µV, preprocessed) -> natural-log band powers [B, M, K] (µV^2).

    Welch's estimate written with basic tensor ops (slices, matmuls, comparisons) so it exports to
    ONNX and runs in any runtime; equal to scipy.signal.welch(..., average="median") up to the
    per-bin weights (tested against scipy and against the real night's stored features)."""

    def __init__(self, cfg: SpectralConfig, roles: tuple[str, ...]):
        super().__init__()
        self.cfg = cfg
        L, step, n_seg, fs = cfg.nperseg, cfg.nperseg - cfg.noverlap, cfg.n_segments, cfg.fs_hz
        freqs = np.fft.rfftfreq(L, 1.0 / fs)
        lo_all, hi_all = cfg.bands_hz[0][0], cfg.bands_hz[-1][1]
        bins = np.nonzero((freqs >= lo_all) & (freqs < hi_all))[0]
        f = freqs[bins]
        from scipy import signal as sps

        win = sps.get_window("hamming", L)          # periodic, as scipy.signal.welch uses
        n = np.arange(L)[:, None]
        ang = 2.0 * np.pi * n * bins[None, :] / L
        # density scaling, one-sided (every kept bin is neither DC nor Nyquist -> x2)
        scale = 2.0 / (fs * np.sum(win ** 2))
        weights = []
        for role in roles:
            r_lo, r_hi = cfg.role_band(role)
            w = _ref_fir_response(r_lo, r_hi, fs, f) ** 2
            if cfg.highpass_hz:
                w = w / np.maximum(_highpass_response(cfg.highpass_hz, cfg.highpass_order, fs, f) ** 2, 1e-3)
            weights.append(w)
        band = np.stack([((f >= lo) & (f < hi)).astype(np.float64) for lo, hi in cfg.bands_hz], axis=1)   # [F, K]
        # 50 % overlap tiling the epoch (the reference's 4 s / 2 s, checked by the config): segment k =
        # blocks k and k+1, so each block's DFT halves are computed once and the segments are sums of
        # views (no Gather); the constant detrend is applied after the DFT as mean * (column sums of
        # the windowed basis)
        self.hop = step
        basis = np.concatenate([win[:, None] * np.cos(ang), win[:, None] * np.sin(ang)], axis=1)     # [L, 2F]
        self.register_buffer("basis_a", torch.from_numpy(basis[:step]).float(), persistent=False)
        self.register_buffer("basis_b", torch.from_numpy(basis[step:]).float(), persistent=False)
        self.register_buffer("basis_sum", torch.from_numpy(basis.sum(0)).float(), persistent=False)
        self.register_buffer("before", torch.from_numpy(np.tril(np.ones((n_seg, n_seg)), -1)).float(),
                             persistent=False)                                                           # [i, j]: j < i
        self.register_buffer("bin_weight", torch.from_numpy(np.stack(weights) * scale / _median_bias(n_seg)).float(),
                             persistent=False)                                                             # [M, F]
        self.register_buffer("band_matrix", torch.from_numpy(band).float(), persistent=False)
        self.n_seg, self.L = n_seg, L
        self.freqs = f

    def periodograms(self, x: Tensor) -> Tensor:
        """x [B, M, S] -> |DFT|^2 of every detrended, windowed segment [B, M, n_seg, F]."""
        b, m, _s = x.shape
        blocks = x[:, :, : (self.n_seg + 1) * self.hop].reshape(b, m, self.n_seg + 1, self.hop)
        spec = (blocks @ self.basis_a)[:, :, :-1] + (blocks @ self.basis_b)[:, :, 1:]               # [B, M, n_seg, 2F]
        tot = blocks.sum(dim=-1)
        mean = (tot[:, :, :-1] + tot[:, :, 1:]) / self.L                                              # detrend="constant"
        spec = spec - mean[..., None] * self.basis_sum
        F_ = spec.shape[-1] // 2
        re, im = spec[..., :F_], spec[..., F_:]
        return re * re + im * im

    def median(self, p: Tensor) -> Tensor:
        """np.median over the segment axis [B, M, n, F] -> [B, M, F], by ranks (ties broken by
        position) instead of a sort: a few element-wise ops, no TopK in the graph."""
        n = self.n_seg
        pi, pj = p[:, :, :, None, :], p[:, :, None, :, :]
        rank = ((pj < pi).to(p.dtype) + (pj == pi).to(p.dtype) * self.before[:, :, None]).sum(dim=3)   # [B, M, n, F]
        h = n // 2
        pick = (rank == h).to(p.dtype) if n % 2 else 0.5 * ((rank == h - 1).to(p.dtype) + (rank == h).to(p.dtype))
        return (p * pick).sum(dim=2)

    def forward(self, x: Tensor) -> Tensor:
        psd = self.median(self.periodograms(x)) * self.bin_weight        # [B, M, F]
        return torch.log((psd @ self.band_matrix).clamp_min(self.cfg.eps))   # (+eps gets fused away by ORT)


class CausalCentring(nn.Module):
    """Running per-night level of the log powers, strictly causal (no parameters).

    state: mean [B, M, K] (per band) or [B, M, 1] (per role), count [B, M] (usable epochs seen,
    capped at the horizon).
    step(logp [B,M,K], present [B,M]) -> centred [B,M,K] (0 where absent), new state."""

    def __init__(self, horizon: float, clip: float, per_band: bool = True):
        super().__init__()
        self.horizon = float(horizon)
        self.clip = float(clip)
        self.per_band = per_band

    def step(self, logp: Tensor, present: Tensor, mean: Tensor, count: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        p = present
        level = logp if self.per_band else logp.mean(dim=-1, keepdim=True)   # [B,M,K] or [B,M,1]
        count = count.clamp(min=0.0, max=self.horizon)        # robust to any state fed in (the gate feeds random ones)
        new_count = (count + p).clamp(max=self.horizon)
        a = p / new_count.clamp(min=1.0)                      # 1/n while n < horizon, then 1/horizon
        first = (count < 0.5).to(logp.dtype)[..., None]       # first usable epoch: take it as the level
        d = level - mean
        d = first * d + (1.0 - first) * d.clamp(-self.clip, self.clip)
        new_mean = mean + a[..., None] * d
        centred = (logp - new_mean) * p[..., None]
        return centred, new_mean, new_count

    def forward(self, logp: Tensor, present: Tensor, mean: Tensor | None = None, count: Tensor | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """logp [B,T,M,K], present [B,T,M] -> (centred [B,T,M,K], mean', count'): T steps."""
        b, t, m, k = logp.shape
        mean = logp.new_zeros(b, m, k if self.per_band else 1) if mean is None else mean
        count = logp.new_zeros(b, m) if count is None else count
        out = []
        for i in range(t):
            c, mean, count = self.step(logp[:, i], present[:, i], mean, count)
            out.append(c)
        return torch.stack(out, dim=1), mean, count


class SpectralContext(nn.Module):
    """The step side: z -> centring -> MLP -> TemporalContext (Mamba2 + heads).

    Same interface as `TemporalContext` (forward / forward_chunk / step / init_state /
    state_names / state_shapes), so export, the gate and the runtime treat both alike."""

    def __init__(self, cfg: SpectralSleepNetConfig):
        super().__init__()
        self.cfg = cfg
        M, K = len(cfg.modalities), cfg.n_bands
        self.M, self.K = M, K
        self.centring = CausalCentring(cfg.norm_horizon_epochs, cfg.norm_clip, per_band=cfg.norm_mode == "band")
        self.K_level = K if cfg.norm_mode == "band" else 1
        self.inp = nn.Sequential(
            nn.Linear(2 * M * K + M, cfg.d_hidden), nn.GELU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.d_hidden, cfg.mamba.d_model),
        )
        self.core = TemporalContext(cfg.mamba)
        self.config = cfg.mamba
        self.state_names: tuple[str, ...] = ("norm_mean", "norm_count", *self.core.state_names)

    def state_shapes(self, batch: int = 1) -> dict[str, tuple[int, ...]]:
        return {"norm_mean": (batch, self.M, self.K_level), "norm_count": (batch, self.M), **self.core.state_shapes(batch)}

    def init_state(self, batch: int, dtype: torch.dtype | None = None,
                   device: torch.device | str | None = None) -> tuple[Tensor, ...]:
        ref = self.core.heads.stage.weight
        dtype = dtype or ref.dtype
        device = device or ref.device
        return tuple(torch.zeros(s, dtype=dtype, device=device) for s in self.state_shapes(batch).values())

    def split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z [..., M*K + M] -> logp [..., M, K], present [..., M]."""
        M, K = self.M, self.K
        if z.shape[-1] != M * K + M:
            raise ModelInputError(f"SpectralContext input has width {z.shape[-1]}; expected {M * K + M} "
                                  f"({M} roles x {K} log band powers + {M} presence flags)")
        logp = z[..., : M * K].reshape(*z.shape[:-1], M, K)
        return logp, z[..., M * K:]

    def context_input(self, logp: Tensor, present: Tensor, centred: Tensor) -> Tensor:
        """[centred logP, relative powers, presence] -> the Mamba input [..., d_model]."""
        rel = torch.softmax(logp, dim=-1) * present[..., None]
        return self.inp(torch.cat([centred.flatten(-2), rel.flatten(-2), present], dim=-1))

    def _check_state(self, state, who: str) -> None:
        if len(state) != len(self.state_names):
            raise ModelInputError(f"SpectralContext.{who} got {len(state)} state tensors; expected "
                                  f"{len(self.state_names)} ({', '.join(self.state_names)}); start from init_state(batch)")

    def forward_chunk(self, z: Tensor, state: tuple[Tensor, ...] | None = None
                      ) -> tuple[tuple[Tensor, Tensor, Tensor], tuple[Tensor, ...]]:
        """z [B,L,D] from `state` (None: init_state) -> (heads [B,L,...], new_state) == L steps."""
        if z.dim() != 3:
            raise ModelInputError(f"SpectralContext input z has shape {tuple(z.shape)}; expected [batch, epochs, width]")
        logp, present = self.split(z)
        if state is None:
            state = self.init_state(z.shape[0], z.dtype, z.device)
        self._check_state(state, "forward_chunk")
        with torch.no_grad():   # parameter-free: no gradient needed through the running level
            centred, mean, count = self.centring(logp, present, state[0], state[1])
        heads, core_state = self.core.forward_chunk(self.context_input(logp, present, centred), tuple(state[2:]))
        return heads, (mean, count, *core_state)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z [B,T,D] -> (stage [B,T,5], apnea [B,T], hypopnea [B,T]), from a fresh state."""
        return self.forward_chunk(z)[0]

    def step(self, z_t: Tensor, state: tuple[Tensor, ...]) -> tuple[tuple[Tensor, Tensor, Tensor], tuple[Tensor, ...]]:
        self._check_state(state, "step")
        logp, present = self.split(z_t)
        centred, mean, count = self.centring.step(logp, present, state[0], state[1])
        heads, core_state = self.core.step(self.context_input(logp, present, centred), tuple(state[2:]))
        return heads, (mean, count, *core_state)


class SpectralSleepNet(nn.Module):
    """embed(x [B,M,S], present [B,M]) -> z [B, M*K+M]; epoch_heads(z); temporal (SpectralContext)."""

    def __init__(self, config: SpectralSleepNetConfig | None = None):
        super().__init__()
        self.config = cfg = config or SpectralSleepNetConfig()
        M, K = len(cfg.modalities), cfg.n_bands
        self.frontend = SpectralFrontEnd(cfg.spectral, cfg.modalities)
        # context-free epoch head: scale-free inputs only (log relative powers), no running state
        self.epoch_mlp = nn.Sequential(nn.Linear(M * K + M, cfg.d_hidden), nn.GELU(), nn.Dropout(cfg.dropout))
        self.heads = TaskHeads(cfg.d_hidden, len(STAGES))
        self.temporal = SpectralContext(cfg)

    def _check(self, x: Tensor, present: Tensor) -> None:
        M, S = len(self.config.modalities), self.config.epoch_samples
        if x.dim() != 3 or x.shape[1] != M or x.shape[2] != S:
            raise ModelInputError(f"SpectralSleepNet input x has shape {tuple(x.shape)}; expected [batch, {M}, {S}] "
                                  f"(roles {list(self.config.modalities)}, {self.config.epoch_s:g} s at {self.config.fs_hz} Hz)")
        if present.dim() != 2 or present.shape[1] != M:
            raise ModelInputError(f"SpectralSleepNet present has shape {tuple(present.shape)}; expected [batch, {M}] float 0/1")

    def features(self, x: Tensor, present: Tensor) -> Tensor:
        """x [B,M,S], present [B,M] -> logP [B,M,K] (zeros where absent; NaN-safe)."""
        self._check(x, present)
        present = present.to(x.dtype)
        keep = present[:, :, None] > 0
        x = torch.where(keep, x, torch.zeros_like(x))
        logp = self.frontend(x)
        return torch.where(keep, logp, torch.zeros_like(logp))

    def pack(self, logp: Tensor, present: Tensor) -> Tensor:
        """logP [..., M, K], present [..., M] -> z [..., M*K + M] (what the step graph reads)."""
        present = present.to(logp.dtype)
        return torch.cat([(logp * present[..., None]).flatten(-2), present], dim=-1)

    def embed(self, x: Tensor, present: Tensor) -> Tensor:
        return self.pack(self.features(x, present), present)

    def epoch_heads(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logp, present = self.temporal.split(z)
        lrel = torch.log(torch.softmax(logp, dim=-1).clamp_min(self.config.spectral.eps)) * present[..., None]   # log rel powers
        return self.heads(self.epoch_mlp(torch.cat([lrel.flatten(-2), present], dim=-1)))

    def forward(self, x: Tensor, present: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.epoch_heads(self.embed(x, present))

    def sequence_forward(self, x: Tensor, present: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B,T,M,S], present [B,T,M] -> temporal heads [B,T,...]."""
        b, t = x.shape[:2]
        z = self.embed(x.reshape(b * t, *x.shape[2:]), present.reshape(b * t, -1))
        return self.temporal(z.reshape(b, t, -1))


def stored_to_logp(features: np.ndarray) -> np.ndarray:
    """A `sleep-edf-bandpower-78` features array (n, C, 10) -> its log band powers (n, C, 5).
    The stored `rel_*` are exactly softmax(log_*) (checked in tests), so nothing is lost."""
    return np.asarray(features[..., : len(BAND_NAMES)], dtype=np.float32)
