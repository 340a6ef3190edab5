"""sleepedge.dsp (numpy-only filters of the scoring path) == scipy.signal to float rounding."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from sleepedge import dsp

sps = pytest.importorskip("scipy.signal")

DESIGNS = [
    (2, 0.4 / 50, "highpass"), (2, [0.3 / 50, 35 / 50], "bandpass"), (2, [10 / 50, 45 / 50], "bandpass"),
    (2, [0.5 / 50, 40 / 50], "bandpass"), (2, [0.05 / 50, 5 / 50], "bandpass"), (3, 0.2, "highpass"),
    (3, 0.3, "lowpass"), (4, 0.1, "lowpass"), (1, 0.2, "highpass"),
]


@pytest.mark.parametrize("order,wn,btype", DESIGNS)
def test_butter_sos_filters_like_scipy(order, wn, btype):
    ref = sps.butter(order, wn, btype, output="sos")
    mine = dsp.butter_sos(order, wn, btype)
    assert mine.shape == ref.shape
    # same transfer function: same zeros/poles/gain
    z, p, k = sps.butter(order, wn, btype, output="zpk")
    z2, p2, k2 = dsp.butter_zpk(order, wn, btype)
    np.testing.assert_allclose(np.sort_complex(p2), np.sort_complex(p), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.sort_complex(z2), np.sort_complex(z), atol=1e-12)
    assert k2 == pytest.approx(k, rel=1e-12)
    x = np.random.default_rng(0).standard_normal(20000) * 50
    want = sps.sosfilt(ref, x)
    got, _ = dsp.SOSFilter(mine).filter(x, np.zeros((mine.shape[0], 2)))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * np.abs(want).max())


@pytest.mark.parametrize("order,wn,btype", DESIGNS[:5])
def test_sosfilter_streams_any_chunking(order, wn, btype):
    """Chunk by chunk with carried states == scipy's sosfilt over the whole signal."""
    sos = dsp.butter_sos(order, wn, btype)
    f = dsp.SOSFilter(sos)
    x = np.random.default_rng(1).standard_normal(120_000) * 30
    want = sps.sosfilt(sps.butter(order, wn, btype, output="sos"), x)
    rng = np.random.default_rng(2)
    zi, out, pos = np.zeros((sos.shape[0], 2)), [], 0
    while pos < len(x):
        n = int(rng.choice([1, 2, 15, 16, 17, 100, 3000, 7000]))
        y, zi = f.filter(x[pos:pos + n], zi)
        out.append(y)
        pos += n
    np.testing.assert_allclose(np.concatenate(out), want, rtol=0, atol=1e-9 * np.abs(want).max())


def test_firwin_kaiser_equals_scipy():
    for numtaps, cutoff in ((1281, 1 / 64), (41, 1 / 2), (101, 1 / 5), (2561, 1 / 128)):
        np.testing.assert_allclose(dsp.firwin_kaiser(numtaps, cutoff, 5.0),
                                   sps.firwin(numtaps, cutoff, window=("kaiser", 5.0)), rtol=0, atol=1e-15)


@pytest.mark.parametrize("fs_in", [256, 200, 128, 500, 512, 250, 150, 1000, 32, 25])
def test_polyphase_resampler_equals_upfirdn(fs_in):
    frac = Fraction(100 / fs_in).limit_denominator(1000)
    up, down = frac.numerator, frac.denominator
    mr = max(up, down)
    h = sps.firwin(2 * 10 * mr + 1, 1.0 / mr, window=("kaiser", 5.0)) * up
    x = np.random.default_rng(3).standard_normal(int(fs_in * 300))
    want = sps.upfirdn(h, x, up, down)
    r = dsp.PolyphaseResampler(h, up, down)
    rng = np.random.default_rng(4)
    out, pos = [], 0
    while pos < len(x):
        n = int(rng.integers(1, 9000))
        out.append(r.process(x[pos:pos + n]))
        pos += n
    got = np.concatenate(out)
    assert len(got) == (len(x) * up - 1) // down + 1   # every output whose inputs have all arrived
    np.testing.assert_allclose(got, want[: len(got)], rtol=0, atol=1e-12 * np.abs(want).max())


def test_score_path_does_not_import_scipy():
    code = ("import sys, numpy as np; from sleepedge.preprocess import preprocess_arrays; "
            "x = np.random.default_rng(0).standard_normal(256 * 90); "
            "preprocess_arrays({'EEG': x, 'EMG': x}, {'EEG': 256.0, 'EMG': 256.0}); "
            "import runtime.scorer, runtime.sinks, sleepedge.edf, sleepedge.cli; "
            "print(any(m == 'scipy' or m.startswith('scipy.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
