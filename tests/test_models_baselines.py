"""Baselines from the CLIP seed: U2-Net encoder, CLIP, SimCLR, TS-TCC, supervised."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sleepedge.contract import IGNORE
from sleepedge.models import ModelInputError, load_checkpoint, save_checkpoint
from sleepedge.models.baselines import (
    CLIP,
    RSU,
    SimCLR,
    Supervised,
    TSTCC,
    U2NetEncoder,
    jitter,
    random_crop_resize,
    scale,
    segment_permutation,
)

torch.set_num_threads(1)
SSL = [CLIP, SimCLR, TSTCC]


def _x(b: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(3000) / 100.0
    # sinusoids + noise: structured enough that views of one epoch resemble each other
    f = 1 + 10 * torch.rand(b, 1, generator=g)
    return torch.sin(2 * torch.pi * f * t) + 0.3 * torch.randn(b, 3000, generator=g)


def _loss(model, x, generator=None):
    if isinstance(model, CLIP):
        return model.ssl_loss(x, torch.roll(x, 7, dims=1) + 0.1 * x.flip(1))
    if isinstance(model, Supervised):
        return model.loss(x, torch.arange(x.shape[0]) % 5)
    return model.ssl_loss(x, generator=generator)


@pytest.mark.parametrize("cls", [CLIP, SimCLR, TSTCC, Supervised])
def test_encode_shapes_batch1_and_gradients(cls):
    torch.manual_seed(0)
    model = cls()
    d = model.config.backbone.d_out
    model.eval()
    with torch.no_grad():
        z = model.encode(_x(1))
    assert z.shape == (1, d) and torch.isfinite(z).all()
    if cls is Supervised:
        with torch.no_grad():
            assert model(_x(1)).shape == (1, 5)
    model.train()
    loss, parts = _loss(model, _x(4), torch.Generator().manual_seed(1))
    assert torch.isfinite(loss) and parts and all(v.dim() == 0 for v in parts.values())
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or float(p.grad.abs().sum()) == 0]
    assert not no_grad, f"no gradient for {no_grad[:8]}"


@pytest.mark.parametrize("cls", [CLIP, SimCLR, TSTCC, Supervised])
def test_losses_decrease_on_a_fixed_batch(cls):
    torch.manual_seed(0)
    model = cls().train()
    x = _x(4, seed=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss, _ = _loss(model, x, torch.Generator().manual_seed(3))   # same views every step
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    print(f"{cls.__name__}: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    assert losses[-1] < 0.7 * losses[0]


def test_u2net_structure_rsu_pdc_attention():
    enc = U2NetEncoder()
    cfg = enc.config
    rsus = [m for m in enc.modules() if isinstance(m, RSU)]
    assert len(rsus) == len(cfg.stage_channels)
    for rsu in rsus:
        assert len(rsu.enc) == cfg.rsu_depth
        assert [b[0].dilation[0] for b in rsu.bottom.branches] == [1, 2, 3, 4]
    feats = enc.features(_x(2))
    # stem /2 then two /4 pools: ceil(ceil(1500/4)/4) = 94 feature steps
    assert feats.shape == (2, 94, cfg.d_out)
    with pytest.raises(ModelInputError, match=r"expected \[batch, 3000\]"):
        enc.encode(torch.zeros(2, 1000))


def test_augmentations():
    g = torch.Generator().manual_seed(0)
    x = _x(5)
    p = segment_permutation(x, 8, generator=g)
    assert p.shape == x.shape
    assert torch.equal(torch.sort(p, 1).values, torch.sort(x, 1).values)   # same samples
    assert not torch.equal(p, x)
    c = random_crop_resize(x, crop_min=1.0, generator=g)                     # full crop = identity
    assert torch.allclose(c, x, atol=1e-5)
    c = random_crop_resize(x, crop_min=0.5, generator=g)
    assert c.shape == x.shape and not torch.allclose(c, x)
    j = jitter(x, 0.1, generator=g)
    ratio = float(((j - x).std(1) / x.std(1)).mean())
    assert 0.09 < ratio < 0.11
    s = scale(x, 0.1, generator=g)
    factors = (s / x)[:, 0]
    assert torch.allclose(s, x * factors[:, None], atol=1e-5) and float((factors - 1).abs().max()) > 1e-4


def test_supervised_ignores_unscored_epochs():
    torch.manual_seed(0)
    model = Supervised().eval()
    x = _x(4)
    y = torch.tensor([2, IGNORE, 0, IGNORE])
    loss, parts = model.loss(x, y)
    with torch.no_grad():
        ref = F.cross_entropy(model(x)[[0, 2]], y[[0, 2]])
    assert torch.allclose(loss, ref, atol=1e-6)


def test_clip_encodes_per_modality_and_checkpoints(tmp_path):
    torch.manual_seed(0)
    model = CLIP().eval()
    x = _x(2)
    with torch.no_grad():
        a, b = model.encode(x, "EEG"), model.encode(x, "EOG")
    assert not torch.allclose(a, b)                      # two independent encoders
    with pytest.raises(ModelInputError, match="EMG"):
        model.encode(x, "EMG")
    m2, ckpt = load_checkpoint(save_checkpoint(tmp_path / "clip.pt", model, metrics={"top1": 0.5}))
    assert ckpt["family"] == "CLIP" and m2.config == model.config
    with torch.no_grad():
        assert torch.equal(m2.encode(x, "EOG"), b)
