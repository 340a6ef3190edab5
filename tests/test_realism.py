"""Simulator realism on EVERY EEG/EOG derivation of EVERY montage (issue 17).

Measured independently of the simulator's own feature code (`bench.sim_vs_real`: scipy only,
the real set's settings: 100 Hz, FIR band-pass EEG 0.5-30 / EOG 0.5-15 Hz, per-night z-score,
30-s epochs, Welch hamming 4 s 50 % median, relative band powers) against the 151 real
Sleep-EDF-78 band-power nights that are not subject 0. Each derivation is compared with the real
channel its spectra are calibrated on (`night.REAL_REFERENCE`): central (C4-M1 and its variants)
and occipital/posterior (Pz-Oz) -> real Pz-Oz, frontal (Fpz-Cz, F4-M1 ...) -> real Fpz-Cz,
EOG (E1-M2, LOC ...) -> real EOG horizontal. SMD = (mean_sim - mean_real) / sd_real per stage x
band (`realism.smd`).

Why pooled: a single REAL night is far from the pooled real distribution (worst stage x band
|SMD| of the 151 real nights: median ~1.2, only 1-2 % of them <= 0.5 on one channel, none on all
three; `test_single_real_nights_are_far_from_the_pool`). The simulator reproduces that
night-to-night spread on purpose (per-night offsets from the real between-night covariance), so
the <= 0.5 bar is held by the simulator's population of nights: 24 short nights (one 30-min
"night" per seed, every stage in one bout, AHI 5 / 20 / 40 in turn, artefacts on; epochs of a
simulated device fault -- a disconnected or clipped channel -- left out as quality control would)
pooled per derivation. One night's offset has an SD of up to ~0.7 SMD in a cell; 24 nights bring
that to ~0.14, so the bar tests the model's bias, not the luck of the seeds. Single sampled nights (the
issue's kind, several seeds and AHI values) must lie within the range of single real nights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BAR = 0.5
SEEDS = range(1, 25)


@pytest.fixture(scope="module")
def svr():
    if not (DATA / "sleep-edf-bandpower-78").is_dir():
        pytest.skip(f"real fixture {DATA / 'sleep-edf-bandpower-78'} not available (../shared/data absent)")
    from bench import sim_vs_real

    return sim_vs_real


def _fmt(res):
    return "; ".join(f"{k} {r['labels']} vs {r['ref']}: {abs(r['worst'][2]):.2f} ({r['worst'][0]} {r['worst'][1]} "
                     f"{r['worst'][3]:.3f} vs {r['worst'][4]:.3f})" for k, r in res.items())


@pytest.mark.parametrize("montage,kinds", [("default", {"central", "frontal", "eog"}),
                                           ("sleep-edf", {"frontal", "posterior", "eog"})])
def test_every_derivation_within_bar_pooled(svr, montage, kinds):
    res = svr.pooled_smd(montage, SEEDS)
    assert set(res) == kinds, res.keys()
    for kind, r in res.items():
        assert r["ref"] == {"central": "Pz-Oz", "posterior": "Pz-Oz", "frontal": "Fpz-Cz", "eog": "EOG horizontal"}[kind]
        assert np.nanmax(np.abs(r["smd"])) <= BAR, _fmt(res) + "\n" + np.array2string(np.round(r["smd"], 2))


def test_variants_montage_writes_the_default_derivations(svr):
    """'variants' relabels the default montage (labels of real systems): the same signals under
    other names, so its realism is the default's; checked on every channel for two seeds."""
    from sleepedge.simulate import simulate_night

    for seed in (3, 4):
        a = simulate_night(hypnogram=svr.BALANCED_30MIN[:20], seed=seed, ahi=20.0, montage="default")
        b = simulate_night(hypnogram=svr.BALANCED_30MIN[:20], seed=seed, ahi=20.0, montage="variants")
        assert len(a.signals) == len(b.signals)
        for (la, xa), (lb, xb) in zip(a.signals.items(), b.signals.items()):
            np.testing.assert_array_equal(xa, xb, err_msg=f"{la} vs {lb}")
        kinds_a = [d["kind"] for d in a.meta["derivations"].values()]
        kinds_b = [d["kind"] for d in b.meta["derivations"].values()]
        assert kinds_a == kinds_b


def test_single_real_nights_are_far_from_the_pool(svr):
    """The reason the bar is pooled: single real nights rarely meet it."""
    w = svr.real_single_night_worst()
    for ch, v in w.items():
        assert v.size == 151
        assert np.median(v) > BAR and (v <= BAR).mean() < 0.05, (ch, np.percentile(v, [5, 50, 95]))


@pytest.mark.parametrize("montage", ["default", "sleep-edf"])
def test_single_sampled_nights_within_real_range(svr, montage):
    """Whole sampled nights (the issue's check; 2 h to keep the test short), 2 seeds x 2 AHI:
    every derivation's worst |SMD| is within the 95th percentile of single real nights (epochs
    of simulated device faults left out, as in the pooled test)."""
    real = svr.real_single_night_worst()
    lim = {ch: float(np.percentile(v, 95)) for ch, v in real.items()}
    for seed, ahi in ((11, 20.0), (12, 5.0)):
        res = svr.smd_night(2.0, seed, ahi, montage, via_edf=False, qc=True)
        for lab, r in res.items():
            assert abs(r["worst"][2]) <= lim[r["ref"]], (montage, seed, ahi, lab, r["worst"], lim[r["ref"]])
