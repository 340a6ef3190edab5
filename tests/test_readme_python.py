"""README "## Python": its code block runs as written on the real Sleep-EDF night (skips when
../shared/data or MNE is absent) and gives the figures its comments state."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NIGHT = ROOT.parent / "shared" / "data" / "sleep-edf" / "SC4001E0-PSG.edf"


def python_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "README ## Python has no ```python block"
    return blocks[0]


def test_block_is_ten_lines_or_so():
    code = [ln for ln in python_block().splitlines() if ln.strip()]
    assert len(code) <= 10 and "sleepedge.score(" in python_block() and "sleepedge.compare(" in python_block()


@pytest.mark.skipif(not NIGHT.is_file(), reason=f"{NIGHT} not available (the real Sleep-EDF night)")
@pytest.mark.filterwarnings("ignore:.*read leniently")   # the known 1-byte quirk of this file
def test_readme_python_example_runs(monkeypatch, capsys):
    pytest.importorskip("mne")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    monkeypatch.chdir(ROOT)   # the block's paths are relative to the project root
    ns: dict = {"__name__": "readme"}
    t0 = time.perf_counter()
    exec(compile(python_block(), "README.md ## Python", "exec"), ns)
    wall = time.perf_counter() - t0
    night, agreement = ns["night"], ns["agreement"]
    assert len(night) == 2650 and night.model["name"] == "spectral-real-sedf78"
    # the numbers the block's comment states (README headline table: whole 22 h)
    assert round(agreement.accuracy, 3) == 0.942 and round(agreement.kappa, 3) == 0.858
    assert "kappa 0.858" in capsys.readouterr().out
    assert isinstance(ns["fig"], Figure)
    assert len(ns["raw"].annotations) > 10
    assert wall < 60, f"README example took {wall:.1f} s"
    # the same night by path (the CLI's reader): identical stages and probabilities
    import numpy as np

    import sleepedge

    by_path = sleepedge.score(NIGHT)
    assert list(by_path.stages) == list(night.stages)
    assert np.abs(by_path.proba - night.proba).max() < 1e-6
