"""Bundle format: round trips, tamper detection, hostile zips (no torch needed)."""

from __future__ import annotations

import copy
import json
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from sleepedge.bundle import (  # noqa: E402
    SCHEMA,
    Bundle,
    default_bundle_path,
    load_bundle,
    read_graph_io,
    write_bundle,
)
from sleepedge.errors import BundleError  # noqa: E402

M, D, S = 2, 4, 3  # modalities, embedding dim, state width


def _graph(path: Path, inputs: dict[str, list], outputs: dict[str, list]) -> Path:
    """A tiny valid ONNX graph: every output = Identity/ReduceMean of the first input."""
    first = next(iter(inputs))
    nodes, outs = [], []
    for name, shape in outputs.items():
        nodes.append(helper.make_node("Identity", [first], [name]) if len(shape) == len(inputs[first])
                     else helper.make_node("ReduceMean", [first], [name], keepdims=0, axes=[1]) if len(shape) == 1
                     else helper.make_node("Identity", [first], [name]))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    w = helper.make_tensor("w_init", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()], outs,
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return path


def _manifest() -> dict:
    return {
        "schema": SCHEMA, "name": "unit", "created": "2026-01-01T00:00:00Z",
        "model": {"family": "SynthSleepNet", "preset": "tiny", "config": {}, "n_params": 1},
        "signal": {"fs_hz": 100, "epoch_s": 30.0, "epoch_samples": 3000, "modalities": ["EEG", "EOG"],
                   "preprocessing": {"fs_hz": 100}},
        "labels": {"stages": ["W", "N1", "N2", "N3", "REM"], "tasks": ["stage", "apnea", "hypopnea"]},
        "graphs": {
            "epoch": {"file": "epoch.onnx",
                      "inputs": {"x": {"shape": ["batch", D], "dtype": "float32"}},
                      "outputs": {"z": {"shape": ["batch", D]}, "apnea_logit": {"shape": ["batch"]}}},
            "step": {"file": "step.onnx",
                     "inputs": {"z": {"shape": ["batch", S], "dtype": "float32"},
                                "h": {"shape": ["batch", S], "dtype": "float32"}},
                     "outputs": {"h_out": {"shape": ["batch", S]}}},
        },
        "state": {"h": {"shape": [1, S], "dtype": "float32"}},
        "engines": {}, "opset": 13, "versions": {"sleepedge": "0"},
        "provenance": {"simulated": True, "notice": "trained on SIMULATED nights; not validated on real sleep",
                       "data": "sim", "metrics": {}},
    }


@pytest.fixture()
def parts(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "src"
    src.mkdir()
    return {
        "epoch.onnx": _graph(src / "e.onnx", {"x": ["batch", D]}, {"z": ["batch", D], "apnea_logit": ["batch"]}),
        "step.onnx": _graph(src / "s.onnx", {"z": ["batch", S], "h": ["batch", S]}, {"h_out": ["batch", S]}),
    }


@pytest.mark.parametrize("name", ["model.sleepedge", "model.zip"])
def test_round_trip(tmp_path: Path, parts, name: str) -> None:
    man = _manifest()
    out = write_bundle(tmp_path / name, man, parts)
    assert out.is_dir() == (not name.endswith(".zip"))
    assert set(man["files"]) == {"epoch.onnx", "step.onnx"} and all(len(h) == 64 for h in man["files"].values())
    b = load_bundle(out)
    assert isinstance(b, Bundle)
    assert b.manifest["files"] == man["files"]
    assert b.simulated and "SIMULATED" in b.notice
    assert b.modalities == ("EEG", "EOG") and b.fs_hz == 100 and b.epoch_samples == 3000
    assert b.path("epoch.onnx").read_bytes() == parts["epoch.onnx"].read_bytes()
    spec = b.state_specs["h"]
    assert spec.shape == (1, S) and spec.zeros(5).shape == (5, S) and spec.zeros().dtype == np.float32
    with pytest.raises(BundleError, match="no file 'nope.onnx'"):
        b.path("nope.onnx")


def test_zip_temp_dir_removed_on_collect(tmp_path: Path, parts) -> None:
    b = load_bundle(write_bundle(tmp_path / "m.zip", _manifest(), parts))
    root = b.root
    assert root.is_dir()
    del b
    import gc

    gc.collect()
    assert not root.exists()


def test_read_graph_io_matches_onnx(parts) -> None:
    ins, outs = read_graph_io(parts["epoch.onnx"])
    assert [i.name for i in ins] == ["x"]  # the initializer w_init is excluded
    assert ins[0].shape == ("batch", D) and ins[0].dtype == "float32"
    assert [o.name for o in outs] == ["z", "apnea_logit"] and outs[1].shape == ("batch",)


def test_tampered_byte_is_a_checksum_error(tmp_path: Path, parts) -> None:
    out = write_bundle(tmp_path / "m.sleepedge", _manifest(), parts)
    f = out / "step.onnx"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch for 'step.onnx'"):
        load_bundle(out)


def test_tampered_zip_member(tmp_path: Path, parts) -> None:
    out = write_bundle(tmp_path / "m.zip", _manifest(), parts)
    man = json.loads(zipfile.ZipFile(out).read("manifest.json"))
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("manifest.json", json.dumps(man))
        zf.writestr("epoch.onnx", parts["step.onnx"].read_bytes())  # swapped content
        zf.writestr("step.onnx", parts["step.onnx"].read_bytes())
    with pytest.raises(BundleError, match="checksum mismatch for 'epoch.onnx'"):
        load_bundle(bad)


def test_unknown_schema(tmp_path: Path, parts) -> None:
    out = write_bundle(tmp_path / "m.sleepedge", _manifest(), parts)
    man = json.loads((out / "manifest.json").read_text())
    man["schema"] = "sleepedge.bundle/99"
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match=r"unknown schema 'sleepedge.bundle/99'.*reads 'sleepedge.bundle/1'"):
        load_bundle(out)


def test_missing_file_and_missing_keys(tmp_path: Path, parts) -> None:
    out = write_bundle(tmp_path / "m.sleepedge", _manifest(), parts)
    (out / "epoch.onnx").unlink()
    with pytest.raises(BundleError, match="'epoch.onnx' listed in the manifest is missing"):
        load_bundle(out)
    man = _manifest()
    del man["state"], man["signal"]
    with pytest.raises(BundleError, match="manifest lacks signal, state"):
        write_bundle(tmp_path / "n.sleepedge", man, parts)
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nowhere")


def _zip_with(tmp_path: Path, parts, extra: zipfile.ZipInfo | str, payload: bytes = b"x") -> Path:
    good = write_bundle(tmp_path / "good.zip", _manifest(), parts)
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr(extra, payload)
    return bad


@pytest.mark.parametrize("evil", ["../x", "/abs/x", "a/../../x", "C:/x"])
def test_zip_traversal_entries_refused(tmp_path: Path, parts, evil: str) -> None:
    bad = _zip_with(tmp_path, parts, evil)
    with pytest.raises(BundleError, match="absolute path|'\\.\\.'"):
        load_bundle(bad)
    assert not (tmp_path / "x").exists() and not Path("/abs/x").exists()


def test_zip_symlink_refused(tmp_path: Path, parts) -> None:
    info = zipfile.ZipInfo("link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    bad = _zip_with(tmp_path, parts, info, b"/etc/passwd")
    with pytest.raises(BundleError, match="'link' is a symlink"):
        load_bundle(bad)


def test_zip_bomb_refused(tmp_path: Path, parts) -> None:
    info = zipfile.ZipInfo("bomb.bin")
    info.compress_type = zipfile.ZIP_DEFLATED
    bad = _zip_with(tmp_path, parts, info, b"\0" * (8 << 20))  # 8 MiB of zeros deflates ~1000x
    with pytest.raises(BundleError, match="zip bomb"):
        load_bundle(bad)


def test_directory_symlink_refused(tmp_path: Path, parts) -> None:
    out = write_bundle(tmp_path / "m.sleepedge", _manifest(), parts)
    target = tmp_path / "elsewhere.onnx"
    (out / "step.onnx").rename(target)
    (out / "step.onnx").symlink_to(target)
    with pytest.raises(BundleError, match="'step.onnx' is a symlink"):
        load_bundle(out)


def test_graph_io_must_match_manifest(tmp_path: Path, parts) -> None:
    man = _manifest()
    man["graphs"]["step"]["outputs"] = {"h_out": {"shape": ["batch", S]}, "stage_logits": {"shape": ["batch", 5]}}
    with pytest.raises(BundleError, match=r"outputs in step.onnx are \['h_out'\]"):
        write_bundle(tmp_path / "m.sleepedge", man, parts)
    man = _manifest()
    man["graphs"]["epoch"]["inputs"]["x"]["shape"] = ["batch", D + 1]
    with pytest.raises(BundleError, match="'x' has shape"):
        write_bundle(tmp_path / "m2.sleepedge", man, parts)
    # a static batch axis where the manifest promises a dynamic one
    static = {"epoch.onnx": parts["epoch.onnx"],
              "step.onnx": _graph(tmp_path / "st.onnx", {"z": [1, S], "h": [1, S]}, {"h_out": [1, S]})}
    with pytest.raises(BundleError, match="'z' has shape \\[1, 3\\]"):
        write_bundle(tmp_path / "m3.sleepedge", _manifest(), static)


def test_state_must_pair_with_step_io(tmp_path: Path, parts) -> None:
    man = _manifest()
    man["state"]["c"] = {"shape": [1, 2], "dtype": "float32"}
    with pytest.raises(BundleError, match="state 'c' needs step input"):
        write_bundle(tmp_path / "m.sleepedge", man, parts)


def test_overwrite_rules(tmp_path: Path, parts) -> None:
    out = tmp_path / "m.sleepedge"
    write_bundle(out, _manifest(), parts)
    man = _manifest()
    man["name"] = "second"
    write_bundle(out, man, parts)  # replacing a bundle is fine
    assert load_bundle(out).name == "second"
    other = tmp_path / "notabundle"
    other.mkdir()
    (other / "precious.txt").write_text("keep")
    with pytest.raises(BundleError, match="not a bundle"):
        write_bundle(other, _manifest(), parts)
    assert (other / "precious.txt").read_text() == "keep"
    assert not list(tmp_path.glob(".m.sleepedge.*"))  # no temp leftovers


def test_unsafe_names_refused_on_write(tmp_path: Path, parts) -> None:
    with pytest.raises(BundleError, match="'\\.\\.'"):
        write_bundle(tmp_path / "m.sleepedge", _manifest(), {**parts, "../evil": parts["step.onnx"]})


def test_nan_in_manifest_refused(tmp_path: Path, parts) -> None:
    man = copy.deepcopy(_manifest())
    man["gate"] = {"max_abs_diff": float("nan")}
    with pytest.raises(BundleError, match="not plain JSON"):
        write_bundle(tmp_path / "m.sleepedge", man, parts)


def test_default_bundle_path() -> None:
    p = default_bundle_path()
    assert p.name == "default.sleepedge" and p.parent.name == "assets"


def test_embedded_bundles_and_resolve_model(tmp_path: Path, monkeypatch) -> None:
    import sleepedge.bundle as sb

    emb = sb.embedded_bundles()
    assert list(emb)[0] == "default" and emb["default"] == default_bundle_path()
    assert "synthsleepnet-tiny-sim" in emb and emb["synthsleepnet-tiny-sim"].name == "synthsleepnet-tiny-sim.sleepedge"
    assert sb.resolve_model(None) == default_bundle_path()
    assert sb.resolve_model("synthsleepnet-tiny-sim") == emb["synthsleepnet-tiny-sim"]
    assert sb.resolve_model("synthsleepnet-tiny-sim.sleepedge") == emb["synthsleepnet-tiny-sim"]
    assert sb.resolve_model("default") == default_bundle_path()
    # a path is a path (existing or not: load_bundle says what is wrong with it)
    local = tmp_path / "synthsleepnet-tiny-sim"
    local.mkdir()
    assert sb.resolve_model(local) == local and sb.resolve_model(str(local)) == local
    assert sb.resolve_model(tmp_path / "nope.zip") == tmp_path / "nope.zip"
    monkeypatch.chdir(tmp_path)  # a folder of that name in the working directory wins over the embedded one
    assert sb.resolve_model("synthsleepnet-tiny-sim") == Path("synthsleepnet-tiny-sim")
    with pytest.raises(BundleError) as ei:
        sb.resolve_model("no-such-model")
    msg = str(ei.value)
    assert "\n" not in msg and "no-such-model" in msg and "synthsleepnet-tiny-sim" in msg and "default" in msg


def test_embedded_sim_bundle_is_a_verified_copy_of_the_six_role_model() -> None:
    from sleepedge.bundle import embedded_bundles

    p = embedded_bundles().get("synthsleepnet-tiny-sim")
    if p is None or not p.exists():
        pytest.skip("embedded bundle synthsleepnet-tiny-sim not shipped")
    b = load_bundle(p)  # checksums and graph I/O verified
    assert b.simulated and b.modalities == ("EEG", "EOG", "EMG", "ECG", "RESP", "SPO2")
    assert b.manifest["labels"]["tasks"] == ["stage", "apnea", "hypopnea"]


def test_bundle_module_imports_no_torch() -> None:
    code = "import sys, sleepedge.bundle; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0
