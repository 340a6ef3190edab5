"""The console entry point: --version, usage errors and domain errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys

from sleepedge import __version__


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sleepedge", *args], capture_output=True, text=True, timeout=120)


def test_version():
    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"sleepedge {__version__}"


def test_usage_error_is_short_and_non_zero():
    r = _cli("export", "--bogus-option")
    assert r.returncode == 2
    assert "No such option" in r.stderr and "Traceback" not in r.stderr


def test_domain_error_is_one_line(tmp_path):
    bad = tmp_path / "not_an_edf.edf"
    bad.write_text("hello, I am not an EDF file")
    r = _cli("info", str(bad))
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "not_an_edf.edf" in lines[0]
    assert "Traceback" not in r.stderr


def test_cli_and_runtime_import_no_torch():
    code = ("import sys, sleepedge, sleepedge.cli, sleepedge.preprocess, sleepedge.bundle, runtime; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_missing_extra_is_one_line(tmp_path):
    """The bedside install has no torch: `sleepedge export` says which extra to install."""
    shim = ("import sys\n"
            "class _NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch' or name.startswith('torch.'):\n"
            "            raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n"
            "sys.meta_path.insert(0, _NoTorch())\n"
            "sys.argv = ['sleepedge'] + sys.argv[1:]\n"
            "from sleepedge.cli import run\n"
            "run()\n")
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"not used")
    r = subprocess.run([sys.executable, "-c", shim, "export", str(ckpt), "-o", str(tmp_path / "m.sleepedge")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "needs torch" in lines[0] and "sleepedge[train,export]" in lines[0]
