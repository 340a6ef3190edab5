"""Causal preprocessing: streaming == whole-recording, resampling, quality flags, presence mask."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import resample_poly, welch

from sleepedge import contract
from sleepedge.errors import PreprocessError
from sleepedge.preprocess import (
    CausalPreprocessor,
    PreprocessConfig,
    _Resampler,
    model_input,
    preprocess_arrays,
    quality_summary,
    stack_epochs,
)

RATES = {"EEG": 256.0, "EOG": 200.0, "EMG": 100.0, "RESP": 25.0, "SPO2": 3.0}


def _night(seconds: float, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sig = {r: rng.normal(0, 30, int(seconds * f)) for r, f in RATES.items()}
    sig["SPO2"] = 95 + rng.normal(0, 1, int(seconds * RATES["SPO2"]))
    return sig


def test_streaming_equals_whole_recording_for_random_chunks():
    sig = _night(300)
    data, quality, roles = preprocess_arrays(sig, RATES)
    assert roles == ("EEG", "EOG", "EMG", "RESP", "SPO2")
    assert data.shape == (10, 5, contract.EPOCH_SAMPLES) and data.dtype == np.float32
    rng = np.random.default_rng(1)
    pre = CausalPreprocessor(RATES)
    epochs, pos = [], {r: 0 for r in RATES}
    while any(pos[r] < len(sig[r]) for r in RATES):
        chunk = {}
        for r in RATES:
            k = int(rng.integers(1, int(RATES[r] * 7) + 2))
            chunk[r] = sig[r][pos[r] : pos[r] + k]
            pos[r] += k
        epochs += pre.push(chunk)
    d2, q2 = stack_epochs(epochs, len(roles), contract.EPOCH_SAMPLES)
    assert [e.index for e in epochs] == list(range(10))
    np.testing.assert_allclose(d2, data, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(q2, quality)


def test_one_epoch_per_push_equals_whole():
    sig = _night(120, seed=3)
    data, quality, _ = preprocess_arrays(sig, RATES)
    pre = CausalPreprocessor(RATES)
    out = []
    for e in range(4):
        out += pre.push({r: sig[r][int(e * 30 * f) : int((e + 1) * 30 * f)] for r, f in RATES.items()})
    d2, _ = stack_epochs(out, 5, 3000)
    np.testing.assert_allclose(d2, data, atol=1e-6, rtol=0)


def test_resampler_is_resample_poly_delayed():
    x = np.random.default_rng(2).normal(size=256 * 60)
    r = _Resampler(256, 100, 10)
    y = np.concatenate([r.process(x[:1000]), r.process(x[1000:])])
    ref = resample_poly(x, 25, 64)
    delay = 10 * 64 // 64  # half_len / down output samples
    np.testing.assert_allclose(y[delay + 100 : 5000], ref[100 : 5000 - delay], atol=1e-9)


def test_resampled_sine_keeps_frequency_and_band_pass_removes_drift():
    fs = 256.0
    t = np.arange(int(90 * fs)) / fs
    x = 40 * np.sin(2 * np.pi * 10 * t) + 500 * t / t[-1]  # 10 Hz + slow drift
    data, _, _ = preprocess_arrays({"EEG": x}, {"EEG": fs})
    f, p = welch(data[-1, 0], fs=100, nperseg=400)
    assert abs(f[np.argmax(p)] - 10.0) < 0.3
    assert abs(np.mean(data[-1, 0])) < 0.1


def test_irrational_rate_is_a_clear_error():
    with pytest.raises(PreprocessError, match="resample"):
        CausalPreprocessor({"EEG": 100 * np.pi})
    with pytest.raises(PreprocessError, match="unknown role"):
        CausalPreprocessor({"FOO": 100})


def test_quality_flags_nan_flat_clipped_disconnected():
    fs = 100.0
    rng = np.random.default_rng(4)
    x = rng.normal(0, 20, int(5 * 30 * fs))
    x[30 * 100 + 500 : 30 * 100 + 700] = np.nan       # epoch 1: NaN burst
    x[2 * 3000 : 3 * 3000] = 3.0                      # epoch 2: flat -> flat + disconnected
    e3 = x[3 * 3000 : 4 * 3000]
    x[3 * 3000 : 4 * 3000] = np.clip(e3, -15, 15)     # epoch 3: clipped at rails
    data, q, _ = preprocess_arrays({"EEG": x}, {"EEG": fs})
    names = [contract.quality_names(v) for v in q[:, 0]]
    assert names[0] == []
    assert names[1] == ["nan"]
    assert "flat" in names[2] and "disconnected" in names[2]
    assert "clipped" in names[3]
    assert names[4] == []
    assert np.isfinite(data).all()                     # NaN never reaches the model
    summary = quality_summary(q, ["EEG"])
    assert summary["EEG"]["nan"] == 1 and summary["EEG"]["clipped"] >= 1


def test_normalisation_is_causal():
    sig = _night(240, seed=5)
    full, _, _ = preprocess_arrays(sig, RATES)
    short = {r: v[: int(120 * RATES[r])] for r, v in sig.items()}
    head, _, _ = preprocess_arrays(short, RATES)
    np.testing.assert_allclose(full[: len(head)], head, atol=1e-6)  # the future never changes the past


def test_model_input_orders_roles_and_masks_missing_and_disconnected():
    data = np.ones((3, 2, 3000), np.float32)
    data[:, 1] = 2
    quality = np.zeros((3, 2), np.uint8)
    quality[1, 1] = contract.Q_DISCONNECTED
    x, present = model_input(data, quality, ("EEG", "EMG"), ("EEG", "EOG", "EMG", "ECG"))
    assert x.shape == (3, 4, 3000)
    np.testing.assert_array_equal(present, [[1, 0, 1, 0], [1, 0, 0, 0], [1, 0, 1, 0]])
    assert x[0, 2, 0] == 2 and x[1, 2, 0] == 0 and x[0, 1].sum() == 0


def test_config_round_trip_and_unknown_keys():
    cfg = PreprocessConfig(norm_halflife_epochs=5.0)
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(PreprocessError, match="unknown keys"):
        PreprocessConfig.from_dict({"bogus": 1})


def test_low_rate_channels_are_not_flagged_by_construction():
    # 1-Hz channels (Sleep-EDF's EMG submental / Resp oro-nasal) and a steady SpO2
    rng = np.random.default_rng(6)
    n = 300
    sig = {"EMG": rng.normal(0, 5, n), "RESP": np.sin(np.arange(n) / 3) * 100, "SPO2": np.full(n, 97.0)}
    _, q, roles = preprocess_arrays(sig, {"EMG": 1.0, "RESP": 1.0, "SPO2": 1.0})
    assert roles == ("EMG", "RESP", "SPO2")
    assert q.max() == 0, [contract.quality_names(v) for v in q.ravel()]
    sig["SPO2"][:] = 0.0  # a dead oximeter reads 0
    _, q, _ = preprocess_arrays(sig, {"EMG": 1.0, "RESP": 1.0, "SPO2": 1.0})
    assert (q[:, 2] & contract.Q_DISCONNECTED).all()


def test_usable_rates_drops_envelope_channels_with_a_reason():
    from sleepedge.preprocess import usable_rates

    ok, dropped = usable_rates({"EEG": 100.0, "EMG": 1.0, "RESP": 1.0})
    assert ok == {"EEG": 100.0, "RESP": 1.0}
    assert "EMG" in dropped and "1 Hz" in dropped["EMG"]


def test_batched_quality_flags_equal_per_epoch_flags():
    """`_raw_flags_finite` (whole blocks of epochs at once, the offline path) gives exactly the
    flags `_raw_flags` gives epoch by epoch (the live path), for flat, clipped, railed, dead and
    ordinary epochs of every role."""
    pre = CausalPreprocessor({"EEG": 256.0})
    rng = np.random.default_rng(0)
    for role, fs in (("EEG", 256.0), ("EMG", 200.0), ("ECG", 100.0), ("RESP", 32.0), ("SPO2", 4.0)):
        n = int(30 * fs)
        rows = []
        for _ in range(200):
            x = rng.standard_normal(n) * rng.choice([1e-7, 0.01, 0.3, 1.0, 20.0, 100.0])
            kind = rng.integers(0, 6)
            if kind == 1:
                x[: n // 2] = 0.0
            elif kind == 2:
                x = np.clip(x, -0.5, 0.5)
            elif kind == 3:
                x[:] = 5.0
            elif kind == 4:
                x[rng.integers(0, n, 50)] = x.max()
            if role == "SPO2":
                x = x + 95.0 if kind == 5 else x * 20 + 80
            rows.append(x)
        got = pre._raw_flags_finite(role, np.stack(rows), fs)
        want = [pre._raw_flags(role, r, fs) for r in rows]
        assert got.tolist() == want, role
