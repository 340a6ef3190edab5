"""sleepedge.models: configs, NeuroNet, SynthSleepNet (every core-role subset), checkpoint, ONNX.

Small and CPU-only: `tiny` preset, batches of 1-3, one thread.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from sleepedge.contract import CORE_ROLES, EPOCH_SAMPLES, ROLES
from sleepedge.models import (
    CheckpointError,
    ConfigError,
    EncoderConfig,
    ModelInputError,
    NeuroNet,
    SynthSleepNet,
    SynthSleepNetConfig,
    load_checkpoint,
    modality_dropout,
    preset,
    save_checkpoint,
)
from sleepedge.models.layers import n_masked, random_masking

torch.set_num_threads(1)

SUBSETS = [s for k in range(1, 5) for s in itertools.combinations(CORE_ROLES, k)]
assert len(SUBSETS) == 15


def _x(b: int, m: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, m, EPOCH_SAMPLES, generator=g)


def _perturb_lora(model: torch.nn.Module) -> None:
    """LoRA's B starts at zero, so A's gradient is exactly zero at init; give B a small value."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("lora_b"):
                p.normal_(0, 0.01)


def _assert_all_grads(model: torch.nn.Module) -> None:
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, f"no gradient reached {missing[:10]}"
    zero = [n for n, p in trainable if float(p.grad.abs().sum()) == 0.0]
    assert not zero, f"zero gradient for {zero[:10]}"
    bad = [n for n, p in trainable if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad[:10]}"


# ---- configs -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny", "paper"])
@pytest.mark.parametrize("mods", [CORE_ROLES, ROLES, ("EEG",)])
def test_config_json_roundtrip_exact(name, mods):
    cfg = preset(name, modalities=mods, encoder_mode="full", modality_dropout=0.25)
    again = SynthSleepNetConfig.from_json(cfg.to_json())
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()
    assert again.modalities == tuple(mods)
    assert again.fusion.encoder_mode == "full" and again.fusion.modality_dropout == 0.25


def test_config_geometry_and_paper_sizes():
    enc = EncoderConfig()
    assert (enc.epoch_samples, enc.frame_samples, enc.frame_step_samples, enc.n_frames) == (3000, 400, 100, 27)
    p = preset("paper")
    assert (p.encoder.d_model, p.encoder.n_layers, p.encoder.n_heads) == (768, 4, 8)
    assert (p.fusion.d_model, p.fusion.n_layers) == (512, 4)
    m = p.mamba
    assert (m.d_model, m.d_state, m.d_conv, m.expand, m.headdim) == (512, 16, 4, 2, 64)
    assert (m.d_inner, m.nheads, m.conv_dim) == (1024, 16, 1024 + 32)


def test_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="preset='huge'"):
        preset("huge")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="modality='EKG'"):
        preset("tiny", modalities=("EEG", "EKG"))
    with pytest.raises(ConfigError, match="unknown key"):
        SynthSleepNetConfig.from_dict({**preset("tiny").to_dict(), "colour": "red"})
    with pytest.raises(ConfigError, match="encoder_mode"):
        preset("tiny", encoder_mode="half")
    with pytest.raises(ConfigError, match="must equal fusion.d_model"):
        cfg = preset("tiny")
        SynthSleepNetConfig(modalities=cfg.modalities, encoder=cfg.encoder, fusion=cfg.fusion,
                            mamba=cfg.mamba.replace(d_model=128))


def _n_params(cfg) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in SynthSleepNet(cfg).parameters())


def test_parameter_budgets():
    counts = {(n, k): _n_params(preset(n, modalities=mods))
              for n in ("tiny", "paper") for k, mods in ((4, CORE_ROLES), (6, ROLES))}
    print("parameter counts:", counts)
    assert counts[("tiny", 4)] <= 3_000_000
    assert counts[("tiny", 6)] <= 4_000_000
    # paper: one 768-d 4-layer encoder alone is > 28 M (12 d^2 per layer)
    assert counts[("paper", 4)] > 4 * 12 * 768 ** 2 * 4
    # modalities are configuration: each extra role adds exactly one encoder, projection,
    # decoder, contrastive head and modality-embedding row
    with torch.device("meta"):
        m = SynthSleepNet(preset("tiny"))
    one = sum(sum(p.numel() for p in getattr(m, part)["EEG"].parameters())
              for part in ("encoders", "proj", "decoders", "modality_proj")) + m.config.d_embed
    assert counts[("tiny", 6)] - counts[("tiny", 4)] == 2 * one


# ---- NeuroNet ----------------------------------------------------------------------------
def test_neuronet_encode_shapes_batch1_and_frames_are_unfold():
    cfg = preset("tiny").encoder
    net = NeuroNet(cfg).eval()
    x = _x(1, 1)[:, 0]
    fr = net.encoder.frames(x)
    assert fr.shape == (1, 27, 400)
    # frame k is samples [100 k, 100 k + 400)
    for k in (0, 13, 26):
        assert torch.equal(fr[0, k], x[0, 100 * k: 100 * k + 400])
    cls, tok = net.encode(x)
    assert cls.shape == (1, cfg.d_model) and tok.shape == (1, 27, cfg.d_model)
    assert torch.isfinite(cls).all() and torch.isfinite(tok).all()
    with pytest.raises(ModelInputError, match=r"expected \[batch, 3000\]"):
        net.encode(torch.zeros(1, 2999))


def test_masking_uses_the_ratio_it_claims():
    for n, ratio in ((27, 0.8), (27, 0.4), (10, 0.5)):
        keep_idx, mask_idx, mask = random_masking(5, n, ratio, generator=torch.Generator().manual_seed(1))
        k = round(ratio * n)
        assert n_masked(n, ratio) == k
        assert keep_idx.shape == (5, n - k) and mask_idx.shape == (5, k)
        assert torch.equal(mask.sum(1), torch.full((5,), float(k)))
        # keep and mask partition the positions
        both = torch.sort(torch.cat([keep_idx, mask_idx], 1), 1).values
        assert torch.equal(both, torch.arange(n).expand(5, n))
        assert torch.equal(mask.gather(1, mask_idx), torch.ones(5, k))
    net = NeuroNet(preset("tiny").encoder)
    _, parts = net.ssl_loss(_x(3, 1)[:, 0])
    assert math.isclose(float(parts["mask_ratio"]), 22 / 27, rel_tol=1e-6)


def _overfit(loss_fn, params, steps=30, lr=2e-3):
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss, _ = loss_fn(torch.Generator().manual_seed(7))   # same masks every step: a fixed objective
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_neuronet_ssl_gradients_and_overfit():
    torch.manual_seed(0)
    net = NeuroNet(preset("tiny").encoder)
    x = _x(4, 1, seed=3)[:, 0]
    loss, parts = net.ssl_loss(x)
    assert set(parts) == {"recon", "contrastive", "mask_ratio"}
    loss.backward()
    _assert_all_grads(net)
    net.zero_grad()
    losses = _overfit(lambda g: net.ssl_loss(x, generator=g), net.parameters())
    print(f"NeuroNet ssl loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    assert losses[-1] < 0.7 * losses[0]


# ---- SynthSleepNet -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_core():
    torch.manual_seed(0)
    return SynthSleepNet(preset("tiny")).eval()


@pytest.mark.parametrize("subset", SUBSETS, ids=["+".join(s) for s in SUBSETS])
def test_synthsleepnet_every_subset_as_config(subset):
    """A model built for exactly these roles: shapes at batch 1 and 2, finite, and every
    trainable parameter gets a gradient from SSL + epoch heads + temporal heads."""
    torch.manual_seed(len(subset))
    model = SynthSleepNet(preset("tiny", modalities=subset))
    M, D = len(subset), model.config.d_embed
    for b in (1, 2):
        x, pr = _x(b, M), torch.ones(b, M)
        z = model.eval().embed(x, pr)
        st, ap, hy = model.epoch_heads(z)
        assert z.shape == (b, D) and st.shape == (b, 5) and ap.shape == (b,) and hy.shape == (b,)
        assert all(torch.isfinite(t).all() for t in (z, st, ap, hy))
    model.train()
    _perturb_lora(model)
    x, pr = _x(2, M, seed=1), torch.ones(2, M)
    loss, parts = model.ssl_loss(x, pr)
    z = model.embed(x, pr)
    st, ap, hy = model.epoch_heads(z)
    sst, sap, shy = model.temporal(z[None])
    y = torch.tensor([1, 3])
    sup = (F.cross_entropy(st, y) + F.binary_cross_entropy_with_logits(ap, torch.ones(2))
           + F.binary_cross_entropy_with_logits(hy, torch.zeros(2)) + F.cross_entropy(sst[0], y)
           + F.binary_cross_entropy_with_logits(sap[0], torch.ones(2))
           + F.binary_cross_entropy_with_logits(shy[0], torch.zeros(2)))
    (loss + sup).backward()
    _assert_all_grads(model)
    assert math.isclose(float(parts["mask_ratio"]), 11 / 27, rel_tol=1e-6)
    # lora mode: only adapters train in the encoders
    enc_trainable = {n.rsplit(".", 1)[-1] for n, p in model.encoders.named_parameters() if p.requires_grad}
    assert enc_trainable == {"lora_a", "lora_b"}


@pytest.mark.parametrize("subset", SUBSETS, ids=["+".join(s) for s in SUBSETS])
def test_synthsleepnet_every_subset_as_presence_mask(tiny_core, subset):
    """The 4-role model with roles switched off by `present`: absent inputs cannot leak (even NaN),
    the result equals the same row alone (batch independence), outputs are finite."""
    idx = [CORE_ROLES.index(r) for r in subset]
    pr = torch.zeros(3, 4)
    pr[:, idx] = 1.0
    pr[2] = 0.0                                   # row 2: nothing present
    x = _x(3, 4, seed=len(subset))
    x2 = x.clone()
    absent = [i for i in range(4) if i not in idx]
    x2[:, absent] = float("nan")
    x2[2] = float("nan")
    with torch.no_grad():
        z = tiny_core.embed(x, pr)
        z2 = tiny_core.embed(x2, pr)
        z1 = tiny_core.embed(x[:1], pr[:1])
        heads = tiny_core.epoch_heads(z2)
    assert z.shape == (3, 64)
    assert torch.isfinite(z2).all() and all(torch.isfinite(h).all() for h in heads)
    assert torch.allclose(z, z2, atol=1e-6, rtol=0)
    assert torch.allclose(z[:1], z1, atol=1e-5, rtol=0)
    assert torch.equal(z[2], torch.zeros(64))


def test_presence_changes_embedding(tiny_core):
    x = _x(1, 4)
    with torch.no_grad():
        a = tiny_core.embed(x, torch.ones(1, 4))
        b = tiny_core.embed(x, torch.tensor([[1.0, 1.0, 0.0, 1.0]]))
    assert float((a - b).abs().max()) > 1e-4


def test_synthsleepnet_masking_and_per_modality_slices():
    torch.manual_seed(0)
    model = SynthSleepNet(preset("tiny"))
    seen = {}
    model.fusion.register_forward_hook(lambda mod, inp, out: seen.__setitem__("fusion", inp[0].shape))
    calls = []
    for r, dec in model.decoders.items():
        dec.register_forward_hook(lambda mod, inp, out, r=r: calls.append((r, inp[0].shape, inp[1].shape)))
    loss, parts = model.ssl_loss(_x(2, 4), torch.ones(2, 4))
    K = 27 - 11
    assert seen["fusion"] == (2, 4 * K, 64)           # kept tokens of all 4 roles, static shape
    assert calls == [(r, (2, K, 64), (2, K)) for r in CORE_ROLES]
    assert math.isclose(float(parts["mask_ratio"]), 11 / 27, rel_tol=1e-6)


def test_decoder_reads_its_own_modality_slice():
    """The seed sliced decoder inputs across modalities wrongly: decoder m must receive exactly
    fused tokens [m*K, (m+1)*K) (its own modality's kept tokens). Checked on the tensors passed."""
    torch.manual_seed(0)
    model = SynthSleepNet(preset("tiny"))
    got = {}
    for r, dec in model.decoders.items():
        dec.register_forward_hook(lambda mod, inp, out, r=r: got.__setitem__(r, inp[0].detach()))
    fused = {}
    model.fusion.register_forward_hook(lambda mod, inp, out: fused.__setitem__("h", out.detach()))
    model.ssl_loss(_x(2, 4), torch.ones(2, 4), generator=torch.Generator().manual_seed(0))
    K = 16
    for m, r in enumerate(CORE_ROLES):
        assert torch.equal(got[r], fused["h"][:, m * K:(m + 1) * K])


def test_synthsleepnet_ssl_overfit_and_encoder_modes():
    torch.manual_seed(0)
    model = SynthSleepNet(preset("tiny", modalities=("EEG", "EOG")))
    x, pr = _x(4, 2, seed=5), torch.ones(4, 2)
    trainable = [p for p in model.parameters() if p.requires_grad]
    losses = _overfit(lambda g: model.ssl_loss(x, pr, generator=g), trainable, steps=30)
    print(f"SynthSleepNet ssl loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    assert losses[-1] < 0.7 * losses[0]
    frozen = SynthSleepNet(preset("tiny", modalities=("EEG",), encoder_mode="frozen"))
    assert not any(p.requires_grad for p in frozen.encoders.parameters())
    assert not any("lora_" in n for n, _ in frozen.named_parameters())
    full = SynthSleepNet(preset("tiny", modalities=("EEG",), encoder_mode="full"))
    assert all(p.requires_grad for p in full.encoders.parameters())


def test_modality_dropout_keeps_one_and_only_drops_present():
    g = torch.Generator().manual_seed(0)
    present = (torch.rand(2000, 4, generator=g) > 0.3).float()
    present[:5] = 0.0
    out = modality_dropout(present, 0.5, generator=g)
    assert torch.all(out <= present)                              # never adds a role
    had = present.sum(1) > 0
    assert torch.all(out.sum(1)[had] >= 1)                        # at least one kept
    assert torch.all(out.sum(1)[~had] == 0)
    dropped = float((present - out).sum() / present.sum())
    assert 0.35 < dropped < 0.5                                   # ~p, minus the forced keeps
    assert torch.equal(modality_dropout(present, 0.0), present)


def test_load_pretrained_neuronet_into_encoder():
    torch.manual_seed(0)
    cfg = preset("tiny", modalities=("EEG", "EOG"))
    net = NeuroNet(cfg.encoder).eval()
    model = SynthSleepNet(cfg).eval()
    model.load_encoder("EOG", net.state_dict())
    x = _x(2, 1)[:, 0]
    with torch.no_grad():   # LoRA B is zero: the adapted encoder equals the pretrained one
        a, b = net.encode(x), model.encoders["EOG"].encode(x)
    assert torch.allclose(a[0], b[0], atol=1e-6) and torch.allclose(a[1], b[1], atol=1e-6)
    with pytest.raises(ModelInputError, match="RESP"):
        model.load_encoder("RESP", net.state_dict())


def test_input_shape_errors(tiny_core):
    with pytest.raises(ModelInputError, match=r"expected \[batch, 4, 3000\]"):
        tiny_core.embed(torch.zeros(1, 3, 3000), torch.ones(1, 3))
    with pytest.raises(ModelInputError, match=r"present has shape"):
        tiny_core.embed(torch.zeros(1, 4, 3000), torch.ones(1, 3))


def test_sequence_forward_matches_embed_then_temporal(tiny_core):
    x = _x(2 * 3, 4).reshape(2, 3, 4, EPOCH_SAMPLES)
    pr = torch.ones(2, 3, 4)
    with torch.no_grad():
        st, ap, hy = tiny_core.sequence_forward(x, pr)
        z = tiny_core.embed(x.reshape(6, 4, -1), pr.reshape(6, 4)).reshape(2, 3, -1)
        ref = tiny_core.temporal(z)
    assert st.shape == (2, 3, 5) and ap.shape == (2, 3) and hy.shape == (2, 3)
    assert torch.allclose(st, ref[0], atol=1e-6)


@pytest.mark.slow
def test_paper_preset_shapes_batch1():
    torch.manual_seed(0)
    model = SynthSleepNet(preset("paper")).eval()
    with torch.no_grad():
        z = model.embed(_x(1, 4), torch.ones(1, 4))
        st, ap, hy = model.epoch_heads(z)
        seq = model.temporal(z[None].expand(1, 3, -1))
    assert z.shape == (1, 512) and st.shape == (1, 5) and ap.shape == (1,) and hy.shape == (1,)
    assert seq[0].shape == (1, 3, 5)
    assert torch.isfinite(z).all()


# ---- checkpoint --------------------------------------------------------------------------
def test_checkpoint_roundtrip_weights_only(tmp_path, tiny_core):
    path = save_checkpoint(tmp_path / "m.pt", tiny_core, metrics={"kappa": 0.5},
                           provenance={"data": "simulated", "simulated": True}, extra={"epoch": 3})
    raw = torch.load(path, weights_only=True)
    assert raw["family"] == "SynthSleepNet" and raw["metrics"] == {"kappa": 0.5}
    assert raw["n_params"] == sum(p.numel() for p in tiny_core.parameters())
    model, ckpt = load_checkpoint(path)
    assert model.config == tiny_core.config and not model.training
    assert ckpt["provenance"]["simulated"] is True and ckpt["extra"] == {"epoch": 3}
    x, pr = _x(2, 4), torch.tensor([[1.0, 0, 1, 1], [1, 1, 1, 1]])
    with torch.no_grad():
        assert torch.equal(model.embed(x, pr), tiny_core.embed(x, pr))
    net = NeuroNet(preset("tiny").encoder)
    net2, _ = load_checkpoint(save_checkpoint(tmp_path / "n.pt", net))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))


def test_checkpoint_errors(tmp_path, tiny_core):
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path / "a.pt", tiny_core, metrics={"x": object()})
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"format": "other"}, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="not a sleepedge.checkpoint/1"):
        load_checkpoint(tmp_path / "b.pt")
    (tmp_path / "c.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a loadable"):
        load_checkpoint(tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="cannot checkpoint"):
        save_checkpoint(tmp_path / "d.pt", torch.nn.Linear(2, 2))


# ---- export-friendliness -----------------------------------------------------------------
class _EpochGraph(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x, present):
        z = self.m.embed(x, present)
        return (z, *self.m.epoch_heads(z))


class _StepGraph(torch.nn.Module):
    def __init__(self, t):
        super().__init__()
        self.t = t

    def forward(self, z, *state):
        heads, new_state = self.t.step(z, state)
        return (*heads, *new_state)


@pytest.mark.slow
def test_embed_and_step_export_to_onnx_and_match_ort(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = SynthSleepNet(preset("tiny", modalities=("EEG", "EOG"))).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    epoch = _EpochGraph(model).eval()
    torch.onnx.export(epoch, (_x(2, 2), torch.ones(2, 2)), tmp_path / "epoch.onnx", dynamo=True,
                      dynamic_shapes={"x": {0: batch}, "present": {0: batch}}, external_data=False,
                      input_names=["x", "present"],
                      output_names=["z", "stage_logits", "apnea_logit", "hypopnea_logit"])
    tc = model.temporal
    step = _StepGraph(tc).eval()
    names = tc.state_names
    torch.onnx.export(step, (torch.randn(2, 64), *tc.init_state(2)), tmp_path / "step.onnx", dynamo=True,
                      dynamic_shapes={"z": {0: batch}, "state": tuple({0: batch} for _ in names)},
                      external_data=False, input_names=["z", *names],
                      output_names=["stage_logits", "apnea_logit", "hypopnea_logit", *[n + "_out" for n in names]])
    se = ort.InferenceSession(str(tmp_path / "epoch.onnx"), providers=["CPUExecutionProvider"])
    ss = ort.InferenceSession(str(tmp_path / "step.onnx"), providers=["CPUExecutionProvider"])
    worst = 0.0
    for b in (1, 3):
        x = _x(b, 2, seed=b)
        pr = torch.ones(b, 2)
        pr[0, 1] = 0.0
        with torch.no_grad():
            ref = epoch(x, pr)
        out = se.run(None, {"x": x.numpy(), "present": pr.numpy()})
        assert [o.shape for o in out] == [tuple(r.shape) for r in ref]
        worst = max(worst, *(float(abs(o - r.numpy()).max()) for o, r in zip(out, ref)))
        # a 20-epoch rollout through the step graph, state fed back
        state = [s.numpy() for s in tc.init_state(b)]
        tstate = tc.init_state(b)
        zs = torch.randn(b, 20, 64)
        for t in range(20):
            o = ss.run(None, {"z": zs[:, t].numpy(), **dict(zip(names, state))})
            with torch.no_grad():
                heads, tstate = tc.step(zs[:, t], tstate)
            worst = max(worst, *(float(abs(a - r.numpy()).max()) for a, r in zip(o[:3], heads)))
            state = o[3:]
    print(f"ONNX vs torch max |diff| = {worst:.3g}")
    assert worst <= 1e-4


def test_shared_frame_cnn_tokens_match_per_frame_cnn_away_from_frame_edges():
    """The edge preset's shared CNN computes the same per-frame features as running the CNN on
    each frame, up to the frame edges (receptive field): check the pooled interior agrees."""
    import torch

    from sleepedge.models.config import EncoderConfig
    from sleepedge.models.neuronet import NeuroNetEncoder

    torch.manual_seed(0)
    cfg = EncoderConfig(cnn_channels=(4, 8), frame_cnn="shared", d_model=16, n_layers=1, n_heads=2,
                        decoder_d_model=16, decoder_heads=2)
    enc = NeuroNetEncoder(cfg).eval()
    x = torch.randn(2, cfg.epoch_samples, dtype=torch.float64)
    enc = enc.double()
    with torch.no_grad():
        tokens = enc.frame_tokens(x)
        assert tokens.shape == (2, cfg.n_frames, 16)
        # full-epoch feature map, pooled by hand under frame 5's window
        feats = enc.cnn.convs(x.unsqueeze(1))
        r = cfg.shared_cnn_stride
        lo = 5 * cfg.frame_step_samples // r
        manual = enc.cnn.out(feats[..., lo : lo + cfg.frame_samples // r].mean(-1))
    torch.testing.assert_close(tokens[:, 5], manual)
