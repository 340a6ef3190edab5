"""SpectralSleepNet: the front end equals scipy's Welch, reproduces the REAL stored band powers
of Sleep-EDF subject 0 from its raw night, its causal centring is streaming == offline and
removes per-night constants; the model exports through the gate and scores through the runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import signal as sps

from sleepedge.models.checkpoint import load_checkpoint, save_checkpoint
from sleepedge.models.config import ConfigError, ModelInputError
from sleepedge.models.spectral import (
    SpectralConfig,
    SpectralSleepNet,
    SpectralSleepNetConfig,
    _median_bias,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PSG = DATA / "sleep-edf" / "SC4001E0-PSG.edf"
NPZ = DATA / "sleep-edf-bandpower-78" / "SC4001E0-PSG.npz"
FIRST_EPOCH = 961          # epoch 0 of the .npz is epoch 961 of the EDF (data README)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SpectralSleepNet().eval()


def test_welch_matmul_equals_scipy(model):
    fe = model.frontend
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.standard_normal((3, 2, 3000)), axis=-1) * 0.3 + 20 * rng.standard_normal((3, 2, 3000))
    f, P = sps.welch(x, fs=100, window="hamming", nperseg=400, noverlap=200, average="median", axis=-1)
    bins = np.nonzero((f >= 0.5) & (f < 30))[0]
    xt = torch.from_numpy(x).float()
    with torch.no_grad():
        p = fe.periodograms(xt)                                         # half-overlap blocks, no Gather
        srt = torch.sort(p, 2).values
        np.testing.assert_allclose(fe.median(p).numpy(), (0.5 * (srt[:, :, 6] + srt[:, :, 7])).numpy(), rtol=1e-6)
        ties = torch.zeros(2, 2, 14, 3)
        ties[0, 0, 3:, 0] = 5.0                                         # equal values: ranks broken by position
        assert fe.median(ties)[0, 0, 0] == 5.0 and fe.median(ties)[1].abs().max() == 0
        med = fe.median(p) * 2 / (100 * np.sum(sps.get_window("hamming", 400) ** 2)) / _median_bias(14)
    np.testing.assert_allclose(med.numpy(), P[..., bins], rtol=2e-4, atol=1e-6 * P.max())
    assert fe.n_seg == 14 and len(fe.freqs) == 118 and fe.freqs[0] == 0.5 and fe.freqs[-1] == 29.75


def test_band_powers_of_a_sine_land_in_their_band(model):
    t = np.arange(3000) / 100.0
    x = np.zeros((5, 2, 3000), np.float32)
    for k, f0 in enumerate((2.0, 6.0, 10.0, 14.0, 22.0)):
        x[k, :] = 50 * np.sin(2 * np.pi * f0 * t) + np.random.default_rng(k).normal(0, 0.5, 3000)
    with torch.no_grad():
        logp = model.features(torch.from_numpy(x), torch.ones(5, 2))
    assert logp[:, 0].argmax(-1).tolist() == [0, 1, 2, 3, 4]        # EEG: 0.5-30 Hz reference band-pass
    assert logp[:4, 1].argmax(-1).tolist() == [0, 1, 2, 3]       # EOG: 0.5-15 Hz, beta filtered away
    assert float(logp[4, 1, 4]) < float(logp[4, 0, 4]) - 3.0


def test_absent_roles_are_zero_and_nan_safe(model):
    x = torch.randn(3, 2, 3000) * 30
    x[1, 1] = float("nan")
    present = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    with torch.no_grad():
        z = model.embed(x, present)
        heads = model.epoch_heads(z)
    assert torch.isfinite(z).all() and all(torch.isfinite(h).all() for h in heads)
    assert (z[1, 5:10] == 0).all() and (z[2, 0:5] == 0).all()
    assert z[:, 10:].tolist() == present.tolist()
    with pytest.raises(ModelInputError, match=r"expected \[batch, 2, 3000\]"):
        model.embed(torch.zeros(1, 3, 3000), torch.ones(1, 3))


def test_config_roundtrip_and_checks():
    cfg = SpectralSleepNetConfig(modalities=("EEG",), norm_horizon_epochs=120)
    assert SpectralSleepNetConfig.from_json(cfg.to_json()) == cfg
    assert cfg.d_embed == 6 and cfg.epoch_samples == 3000
    pc = cfg.preprocess_config()
    assert pc.normalise is False and pc.band("EEG") == (0.4, None)
    with pytest.raises(ConfigError, match="modality"):
        SpectralSleepNetConfig(modalities=("EEG", "XYZ"))
    with pytest.raises(ConfigError, match="band"):
        SpectralConfig(bands_hz=((4.0, 2.0),))


def test_centring_streaming_equals_offline_and_removes_constants(model):
    ctx = model.temporal
    g = torch.Generator().manual_seed(3)
    T = 300
    logp = torch.randn(2, T, 2, 5, generator=g).cumsum(1) * 0.05 + torch.randn(2, T, 2, 5, generator=g)
    present = (torch.rand(2, T, 2, generator=g) > 0.1).float()
    present[1, :, 1] = 0.0                                    # EEG-only night
    z = model.pack(logp, present)
    with torch.no_grad():
        off = ctx(z)
        st = ctx.init_state(2)
        steps = []
        for t in range(T):
            h, st = ctx.step(z[:, t], st)
            steps.append(h[0])
        # chunked (truncated-BPTT path) equals both
        h1, s1 = ctx.forward_chunk(z[:, :120])
        h2, _ = ctx.forward_chunk(z[:, 120:], s1)
        shifted = ctx(model.pack(logp + torch.tensor([1.7, -2.3]).view(1, 1, 2, 1)
                                 + torch.randn(1, 1, 2, 5, generator=g), present))
    np.testing.assert_allclose(torch.stack(steps, 1).numpy(), off[0].numpy(), atol=2e-5)
    np.testing.assert_allclose(torch.cat([h1[0], h2[0]], 1).numpy(), off[0].numpy(), atol=2e-5)
    # a per-night constant per role and band changes only the relative-power input; with it
    # removed (equal gain across bands) the outputs are identical
    same_gain = ctx(model.pack(logp + 4.0, present))[0]
    np.testing.assert_allclose(same_gain.detach().numpy(), off[0].numpy(), atol=1e-4)
    assert not torch.allclose(shifted[0], off[0])


def test_checkpoint_roundtrip(tmp_path, model):
    p = save_checkpoint(tmp_path / "m.pt", model, provenance={"data": "random", "tasks": ["stage"]})
    m2, ck = load_checkpoint(p)
    assert type(m2).__name__ == "SpectralSleepNet" and ck["family"] == "SpectralSleepNet"
    x = torch.randn(2, 2, 3000) * 20
    with torch.no_grad():
        np.testing.assert_allclose(m2(x, torch.ones(2, 2))[0].numpy(), model(x, torch.ones(2, 2))[0].numpy())


def _real_night_logp():
    from sleepedge.edf import open_edf
    from sleepedge.preprocess import model_input, preprocess_arrays

    cfg = SpectralSleepNetConfig()
    with pytest.warns(Warning), open_edf(PSG) as r:       # the file is 1 byte longer than its header says
        eeg, eog = r.read("EEG Fpz-Cz"), r.read("EOG horizontal")
    data, q, roles = preprocess_arrays({"EEG": eeg, "EOG": eog}, {"EEG": 100.0, "EOG": 100.0}, cfg.preprocess_config())
    x, present = model_input(data, q, roles, cfg.modalities)
    m = SpectralSleepNet(cfg).eval()
    with torch.no_grad():
        logp = torch.cat([m.features(torch.from_numpy(x[i:i + 512]), torch.from_numpy(present[i:i + 512]))
                          for i in range(0, len(x), 512)])
    return m, logp.numpy(), present


@pytest.mark.skipif(not (PSG.exists() and NPZ.exists()), reason="../shared/data real night + band powers not available")
def test_front_end_reproduces_the_real_stored_features():
    """Raw SC4001E0-PSG.edf through the runtime preprocessing + front end vs the stored features."""
    m, logp, present = _real_night_logp()
    stored = np.load(NPZ)["features"]
    n = len(stored)
    ours = logp[FIRST_EPOCH:FIRST_EPOCH + n]
    assert present[FIRST_EPOCH:FIRST_EPOCH + n].all()
    rel = np.exp(ours) / np.exp(ours).sum(-1, keepdims=True)
    report = {}
    for role, ch, rel_min in ((0, 0, 0.99), (1, 2, 0.97)):
        # EOG: the reference ran a whole-night ICA (non-causal) before its band powers; 0.978 here
        for k in range(5):
            r_rel = np.corrcoef(rel[:, role, k], stored[:, ch, 5 + k])[0, 1]
            r_log = np.corrcoef(ours[:, role, k], stored[:, ch, k])[0, 1]
            report[(role, k)] = (round(r_rel, 4), round(r_log, 4))
            assert r_rel >= rel_min, (role, k, r_rel)
            assert r_log >= 0.99, (role, k, r_log)
        # log powers equal up to one per-night constant: the mean offset is the same for every band
        # (EEG: all five within 0.15; EOG: the passband bands; its beta sits in the 15-Hz FIR's stopband)
        off = (stored[:, ch, :5] - ours[:, role]).mean(0)
        assert np.ptp(off if role == 0 else off[1:4]) < 0.15, off
    print("rel/log correlation per (role, band):", report)

    # causal centring: how close the runtime's running level (over the whole 22-h recording, as
    # `sleepedge score` runs it) stays to (a) the reference's whole-night centring (non-causal) and
    # (b) the same causal centring run over the stored (cropped) night, as training sees it
    ctx = m.temporal
    with torch.no_grad():
        live = ctx.centring(torch.from_numpy(logp)[None], torch.from_numpy(present)[None])[0][0].numpy()
        st = torch.from_numpy(stored[None][:, :, [0, 2], :5].copy())
        train_view = ctx.centring(st, torch.ones(1, n, 2))[0][0].numpy()
    live = live[FIRST_EPOCH:FIRST_EPOCH + n]
    whole = stored[:, [0, 2], :5] - stored[:, [0, 2], :5].mean(0)
    out = {}
    for name, ref in (("whole-night", whole), ("training view", train_view)):
        r = [np.corrcoef(live[:, i, k], ref[:, i, k])[0, 1] for i in range(2) for k in range(5)]
        out[name] = (min(r), float(np.median(r)), float(np.abs(live - ref).mean()))
        print(f"causal centring vs {name}: correlation min {out[name][0]:.3f} median {out[name][1]:.3f}, "
              f"mean |diff| {out[name][2]:.3f} (log units)")
    # measured 2026-12-01: vs whole-night min 0.61 / median 0.71 / |diff| 0.48 (a causal level
    # cannot know the night's future); vs the training view min 0.966 / median 0.979 / |diff| 0.22
    assert out["whole-night"][1] >= 0.6 and out["whole-night"][2] < 0.6
    assert out["training view"][0] >= 0.95 and out["training view"][2] < 0.3
