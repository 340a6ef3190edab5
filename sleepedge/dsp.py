"""The filters of the causal preprocessing, in numpy only (no scipy import on the scoring path).

`import scipy.signal` alone costs ~0.65 s of a process whose whole job (an 8-h night) is now
well under a second, so the three pieces preprocessing needs are here, each equal to its scipy
counterpart to float rounding (tests/test_dsp.py checks them against scipy):

    firwin_kaiser(numtaps, cutoff, beta)     scipy.signal.firwin(numtaps, cutoff, window=("kaiser", beta))
    butter_sos(order, wn, btype)             scipy.signal.butter(order, wn, btype, output="sos")
                                             (same poles/zeros/gain; sections paired conjugate pole
                                             pairs with one zero pair each, gain in the first)
    SOSFilter(sos).filter(x, zi)             scipy.signal.sosfilt(sos, x, zi=zi) (direct form II
                                             transposed states, the same `zi` layout (n_sections, 2))
    PolyphaseResampler(h, up, down)          resample_poly's FIR applied causally and block-wise,
                                             the samples `scipy.signal.upfirdn(h, x, up, down)` gives

How the IIR runs without a per-sample Python loop: a second-order section is a 2-state linear
recurrence s[n+1] = A s[n] + b x[n], y[n] = s0[n] + b0 x[n]. Over a block of B samples its output
is a (B x B) Toeplitz matmul of the block's input plus a (2 x B) map of the block's start state,
and the block-start states obey the same kind of recurrence with A^B: solved the same way one
level up (blocks of blocks), so the sequential part is a few dozen steps for a whole night.
Exact algebra; only the summation order differs from scipy's sample loop (float rounding).
"""

from __future__ import annotations

import math

import numpy as np

_BLOCK = 16          # samples per block at every level of the IIR recurrence


# ----------------------------------------------------------------------------------- design
def firwin_kaiser(numtaps: int, cutoff: float, beta: float) -> np.ndarray:
    """Low-pass windowed-sinc FIR, cutoff as a fraction of Nyquist, DC gain 1 (firwin's scale)."""
    alpha = 0.5 * (numtaps - 1)
    m = np.arange(0, numtaps) - alpha
    h = cutoff * np.sinc(cutoff * m)
    h *= np.kaiser(numtaps, beta)
    h /= np.sum(h)
    return h


def _buttap(n: int) -> np.ndarray:
    return -np.exp(1j * np.pi * np.arange(-n + 1, n, 2) / (2 * n))


def butter_zpk(order: int, wn, btype: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Digital Butterworth (zeros, poles, gain), wn as fractions of Nyquist (scipy's algorithm:
    analog prototype, pre-warped band transform, bilinear transform at fs=2)."""
    p = _buttap(order)
    z = np.zeros(0, dtype=complex)
    k = 1.0
    fs = 2.0
    warped = 2 * fs * np.tan(np.pi * np.atleast_1d(np.asarray(wn, dtype=float)) / fs)
    if btype == "lowpass":
        wo = warped[0]
        degree = len(p) - len(z)
        z, p, k = wo * z, wo * p, k * wo ** degree
    elif btype == "highpass":
        wo = warped[0]
        degree = len(p) - len(z)
        k = k * np.real(np.prod(-z) / np.prod(-p))
        z, p = wo / z, wo / p
        z = np.append(z, np.zeros(degree))
    elif btype == "bandpass":
        bw = warped[1] - warped[0]
        wo = math.sqrt(warped[0] * warped[1])
        degree = len(p) - len(z)
        z_lp, p_lp = z * bw / 2, p * bw / 2
        z = np.concatenate((z_lp + np.sqrt(z_lp ** 2 - wo ** 2), z_lp - np.sqrt(z_lp ** 2 - wo ** 2)))
        p = np.concatenate((p_lp + np.sqrt(p_lp ** 2 - wo ** 2), p_lp - np.sqrt(p_lp ** 2 - wo ** 2)))
        z = np.append(z, np.zeros(degree))
        k = k * bw ** degree
    else:
        raise ValueError(f"btype {btype!r}: expected lowpass, highpass or bandpass")
    # bilinear transform
    fs2 = 2.0 * fs
    degree = len(p) - len(z)
    k = k * np.real(np.prod(fs2 - z) / np.prod(fs2 - p))
    z = (fs2 + z) / (fs2 - z)
    p = (fs2 + p) / (fs2 - p)
    z = np.append(z, -np.ones(degree))
    return z, p, float(k)


def butter_sos(order: int, wn, btype: str) -> np.ndarray:
    """Second-order sections of a digital Butterworth filter (rows b0 b1 b2 1 a1 a2)."""
    z, p, k = butter_zpk(order, wn, btype)
    # poles: conjugate pairs (positive imaginary part) and real poles paired two by two
    cplx = sorted((q for q in p if q.imag > 1e-12), key=lambda q: abs(q))      # farthest from |z|=1 first
    real = sorted((q.real for q in p if abs(q.imag) <= 1e-12), key=lambda q: abs(q))
    pole_pairs = [(q, q.conjugate()) for q in cplx]
    while real:
        a = real.pop(0)
        pole_pairs.append((a, real.pop(0)) if real else (a, None))
    zr = sorted(np.real(z).tolist())   # Butterworth zeros are real (+1 and/or -1)
    # one zero at +1 and one at -1 per section when both exist (band-pass), else two alike
    plus = [v for v in zr if v > 0]
    minus = [v for v in zr if v <= 0]
    zero_pairs = []
    while plus and minus:
        zero_pairs.append((plus.pop(), minus.pop()))
    rest = plus + minus
    while rest:
        a = rest.pop(0)
        zero_pairs.append((a, rest.pop(0) if rest else 0.0))
    if len(zero_pairs) != len(pole_pairs):
        raise AssertionError("Butterworth: as many zero pairs as pole pairs")
    sos = np.zeros((len(pole_pairs), 6))
    for i, (pp, zz) in enumerate(zip(pole_pairs, zero_pairs)):
        # a first-order section is padded with a pole/zero at the origin (zpk2sos's layout)
        sos[i, :3] = np.real(np.poly([zz[0], zz[1]]))
        sos[i, 3:] = np.real(np.poly([pp[0], 0.0 if pp[1] is None else pp[1]]))
    sos[0, :3] *= k
    return sos


# ------------------------------------------------------------------------------- IIR filter
def _linrec(levels: list, depth: int, M: np.ndarray, V: np.ndarray, s0: np.ndarray) -> np.ndarray:
    """States before each step of s[k+1] = M s[k] + V[k] (rows: s[k+1] = s[k] @ M.T + V[k])."""
    n, d = V.shape
    if n <= _BLOCK:
        out = np.empty_like(V)
        mt = M.T
        s = s0
        for k in range(n):
            out[k] = s
            s = s @ mt + V[k]
        return out
    if depth >= len(levels):
        levels.append(_level(M))
    G, Pcat, R, MB = levels[depth]
    nb = -(-n // _BLOCK)
    pad = nb * _BLOCK - n
    Vp = np.concatenate([V, np.zeros((pad, d))]) if pad else V
    Vb = Vp.reshape(nb, _BLOCK * d)
    starts = _linrec(levels, depth + 1, MB, Vb @ R, s0)
    return (Vb @ G + starts @ Pcat).reshape(nb * _BLOCK, d)[:n]


def _level(M: np.ndarray):
    d, B = M.shape[0], _BLOCK
    P = [np.eye(d)]
    for _ in range(B):
        P.append(M @ P[-1])
    G = np.zeros((B * d, B * d))
    for j in range(B):
        for k in range(j + 1, B):
            G[j * d:(j + 1) * d, k * d:(k + 1) * d] = P[k - 1 - j].T
    Pcat = np.hstack([P[k].T for k in range(B)])
    R = np.vstack([P[B - 1 - j].T for j in range(B)])
    return G, Pcat, R, P[B]


class _Section:
    """One biquad as block matrices (see module doc)."""

    def __init__(self, row: np.ndarray):
        b0, b1, b2, a0, a1, a2 = (float(v) for v in row)
        if a0 != 1.0:
            b0, b1, b2, a1, a2 = b0 / a0, b1 / a0, b2 / a0, a1 / a0, a2 / a0
        B = _BLOCK
        A = np.array([[-a1, 1.0], [-a2, 0.0]])
        bv = np.array([b1 - a1 * b0, b2 - a2 * b0])
        P = [np.eye(2)]
        for _ in range(B):
            P.append(A @ P[-1])
        h = np.array([b0] + [(P[i - 1] @ bv)[0] for i in range(1, B)])
        T = np.zeros((B, B))   # y_block = x_block @ T + start_state @ O
        for j in range(B):
            T[j, j:] = h[: B - j]
        self.T = T
        self.O = np.stack([P[k][0, :] for k in range(B)], axis=1)          # (2, B)
        self.Rx = np.stack([P[B - 1 - j] @ bv for j in range(B)])          # (B, 2): block input -> end-state part
        self.MB = P[B]
        self.PT = [m.T.copy() for m in P]      # (A^r)^T: end state of a partial block of r samples
        self.A, self.bv, self.b0 = A, bv, b0
        self.levels: list = []

    def run(self, x: np.ndarray, zi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(x)
        B = _BLOCK
        nb = -(-n // B)
        pad = nb * B - n
        xp = np.concatenate([x, np.zeros(pad)]) if pad else x
        X = xp.reshape(nb, B)
        starts = _linrec(self.levels, 0, self.MB, X @ self.Rx, np.asarray(zi, dtype=np.float64))
        y = (X @ self.T + starts @ self.O).reshape(-1)[:n]
        # state after the last real sample: from the start state of its block (r real samples)
        last = nb - 1
        r = n - last * B
        s = starts[last] @ self.PT[r] + X[last, :r] @ self.Rx[B - r:]
        return y, s


class SOSFilter:
    """`scipy.signal.sosfilt(sos, x, zi=zi)` for 1-D float64 `x`, returning (y, zf)."""

    def __init__(self, sos: np.ndarray):
        self.sos = np.asarray(sos, dtype=np.float64)
        self.sections = [_Section(row) for row in self.sos]

    def filter(self, x: np.ndarray, zi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y = np.asarray(x, dtype=np.float64)
        zf = np.empty((len(self.sections), 2))
        if len(y) == 0:
            return y.copy(), np.array(zi, dtype=np.float64)
        for i, sec in enumerate(self.sections):
            y, zf[i] = sec.run(y, zi[i])
        return y, zf


# ------------------------------------------------------------------------------ resampling
class PolyphaseResampler:
    """Causal block-wise `upfirdn(h, x, up, down)`: output m = sum_n h[m*down - n*up] x[n].

    Outputs come in frames of `up` (a frame advances the input by `down`), each frame one row of
    a strided view of the input times a fixed (span x up) matrix of the FIR's polyphase taps:
    one BLAS call per push. Inputs before the first sample are zeros (upfirdn's convention).
    """

    def __init__(self, h: np.ndarray, up: int, down: int):
        self.h = np.asarray(h, dtype=np.float64)
        self.up, self.down = int(up), int(down)
        L = len(self.h)
        kmax = -(-L // self.up)                       # taps per phase (at most)
        self.off = -(kmax - 1)                        # first input of frame j: j*down + off
        self.span = ((self.up - 1) * self.down) // self.up + kmax
        H = np.zeros((self.span, self.up))
        for r in range(self.span):
            for c in range(self.up):
                k = c * self.down - (self.off + r) * self.up
                if 0 <= k < L:
                    H[r, c] = self.h[k]
        self.H = H
        # input history: absolute index of buf[0] (negative: zeros before the recording)
        self.buf = np.zeros(-self.off)
        self.buf_start = self.off
        self.n_in = 0
        self.n_out = 0

    def process(self, x: np.ndarray) -> np.ndarray:
        up, down = self.up, self.down
        x = np.asarray(x, dtype=np.float64)
        self.buf = np.concatenate([self.buf, x]) if len(self.buf) else x
        self.n_in += len(x)
        m_last = (self.n_in * up - 1) // down      # last output whose inputs have all arrived
        m_first = self.n_out
        if m_last < m_first:
            return np.zeros(0)
        j0, j1 = m_first // up, m_last // up
        a = j0 * down + self.off                    # absolute first input of frame j0
        b = j1 * down + self.off + self.span         # one past the last input of frame j1
        seg = self.buf[a - self.buf_start:]
        need = b - a
        if len(seg) < need:                          # inputs of outputs after m_last: zeros, discarded
            seg = np.concatenate([seg, np.zeros(need - len(seg))])
        seg = np.ascontiguousarray(seg)
        n_frames = j1 - j0 + 1
        W = np.ndarray((n_frames, self.span), dtype=np.float64, buffer=seg,
                       strides=(seg.itemsize * down, seg.itemsize))     # frame j = seg[j*down : j*down+span]
        y = (W @ self.H).reshape(-1)[m_first - j0 * up: m_last - j0 * up + 1]
        self.n_out = m_last + 1
        keep_from = (self.n_out // up) * down + self.off
        if keep_from > self.buf_start:
            self.buf = self.buf[keep_from - self.buf_start:]
            self.buf_start = keep_from
        return y
