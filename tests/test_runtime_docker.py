"""Dockerfile.jetson: L4T JetPack base, Jetson ONNX Runtime GPU index, no torch, sleepedge entrypoint."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

DOCKERFILE = Path(__file__).resolve().parents[1] / "Dockerfile.jetson"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_required_parts():
    ins = _instructions()
    froms = [a for i, a in ins if i == "FROM"]
    assert len(froms) == 1 and re.fullmatch(r"nvcr\.io/nvidia/l4t-jetpack:r36\.\d+\.\d+", froms[0]), froms
    runs = " ".join(a for i, a in ins if i == "RUN")
    args = " ".join(a for i, a in ins if i == "ARG")
    assert "pypi.jetson-ai-lab.io/jp6/cu126" in args and "--index-url \"${JETSON_PIP_INDEX}\" onnxruntime-gpu" in runs
    # no torch (or the training extras) anywhere in what gets installed
    installs = re.findall(r"pip install ([^&]+)", runs)
    assert installs and not any(re.search(r"\btorch|\[(train|export|dev)", i) for i in installs), installs
    assert "--no-deps ." in runs  # the CPU onnxruntime requirement is not pulled from PyPI
    assert not re.search(r"pip install[^&]*\btensorrt\b", runs)  # TensorRT comes from JetPack
    assert ("ENTRYPOINT", '["sleepedge"]') in ins
    copies = [a for i, a in ins if i == "COPY"]
    assert not any(re.match(r"(train|export)\b", c) for c in copies), copies
    text = DOCKERFILE.read_text()
    assert "docker build -f Dockerfile.jetson -t sleepedge:jetson ." in text and "--runtime nvidia" in text


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed")
def test_hadolint():
    r = subprocess.run(["hadolint", "--failure-threshold", "error", str(DOCKERFILE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
