"""The model bundle: what `export` writes and `runtime` reads (torch-free).

A bundle is a directory, or a `.zip` of the same files, holding

    manifest.json     schema, model config, signal contract, labels, graph I/O, state
                      shapes, opset, library versions, provenance, gate figures, sha256 of
                      every other file
    epoch.onnx        x [batch, M, 3000] + present [batch, M] -> z, stage_logits, apnea_logit,
                      hypopnea_logit
    step.onnx         z [batch, D] + one input per recurrent state -> the three heads and
                      `<state>_out` for each state
    (optional)        more graphs (e.g. int8 / fp16 variants) and TensorRT engines

Nothing in a bundle is ever executed or unpickled: JSON and ONNX protobufs only.

Decisions (documented here, tested in tests/test_bundle.py):
- `write_bundle(out, ...)` writes a zip when `out` ends in `.zip`, otherwise a directory
  (e.g. `model.sleepedge/`). Writing is atomic: a temporary sibling is renamed into place,
  and an existing path is replaced only when it is itself a bundle (or an empty directory).
- `load_bundle(path)` accepts either. A zip is checked member by member (no absolute paths,
  no `..`, no symlinks, size and compression-ratio limits against zip bombs) and only the
  manifest and the files it lists are extracted, into a private temporary directory that is
  removed when the `Bundle` is garbage-collected (or at interpreter exit).
- Graph I/O names are checked without `onnx` or onnxruntime: a ~60-line reader of the
  protobuf wire format walks `ModelProto.graph` and reads the names, element types and dims
  of its inputs and outputs (initialisers excluded). So the runtime, which has no `onnx`
  package, still refuses a bundle whose graphs do not match their manifest, before any
  session is created.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import stat
import tempfile
import weakref
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import numpy as np

from sleepedge.contract import ROLES, is_finite_number
from sleepedge.errors import BundleError, SleepEdgeError

SCHEMA = "sleepedge.bundle/1"
MANIFEST = "manifest.json"

# top-level keys the runtime relies on (the rest of ARCHITECTURE.md's manifest is informative)
REQUIRED_KEYS: tuple[str, ...] = (
    "schema", "name", "model", "signal", "labels", "graphs", "state", "engines", "opset",
    "versions", "provenance", "files",
)
REQUIRED_SIGNAL_KEYS: tuple[str, ...] = ("fs_hz", "epoch_s", "epoch_samples", "modalities", "preprocessing")
REQUIRED_GRAPHS: tuple[str, ...] = ("epoch", "step")

# zip-bomb / abuse limits for archives (a paper-size fp32 bundle is a few hundred MB)
MAX_MEMBERS = 256
MAX_MEMBER_BYTES = 4 * 1024**3
MAX_TOTAL_BYTES = 8 * 1024**3
MAX_RATIO = 200.0          # uncompressed/compressed; ONNX weights compress ~1.1x, bombs ~1000x
_RATIO_MIN_BYTES = 1 << 20  # ratios of small members (JSON) are not meaningful

# ONNX TensorProto.DataType codes -> numpy dtype names
ONNX_DTYPES: dict[int, str] = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
    9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16",
}


# ----------------------------------------------------------------------------------------
# public types
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StateSpec:
    """One recurrent state tensor of the step graph (fed as `name`, returned as `name_out`)."""

    name: str
    shape: tuple[int, ...]      # with batch 1 as the first dim, as written in the manifest
    dtype: str = "float32"

    def zeros(self, batch: int = 1) -> np.ndarray:
        """The initial state (zeros) for `batch` parallel streams."""
        return np.zeros((int(batch), *self.shape[1:]), dtype=self.dtype)


class Bundle:
    """A verified bundle on disk. Construct with `load_bundle`."""

    def __init__(self, root: Path, manifest: dict, source: Path, _tmpdir: Path | None = None):
        self.root = Path(root)
        self.manifest = manifest
        self.source = Path(source)  # what the user passed (the dir or the zip)
        if _tmpdir is not None:
            self._finalizer = weakref.finalize(self, shutil.rmtree, str(_tmpdir), True)

    def __repr__(self) -> str:
        return f"Bundle({self.name!r}, source={str(self.source)!r}, simulated={self.simulated})"

    def path(self, name: str) -> Path:
        """Absolute path of a file listed in the manifest (BundleError if it is not listed)."""
        files = self.manifest.get("files", {})
        if name not in files:
            known = ", ".join(sorted(files)) or "none"
            raise BundleError(
                f"bundle {self.source}: no file {name!r} in the manifest (files: {known}); "
                "re-export the bundle or ask for one of the listed files"
            )
        return self.root / name

    def graph(self, name: str) -> dict:
        """The manifest entry of a graph (`epoch`, `step`, ...)."""
        graphs = self.manifest["graphs"]
        if name not in graphs:
            raise BundleError(
                f"bundle {self.source}: no graph {name!r} (graphs: {', '.join(graphs)}); "
                "re-export with a sleepedge that writes it"
            )
        return graphs[name]

    def graph_path(self, name: str) -> Path:
        return self.path(self.graph(name)["file"])

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.source.name))

    @property
    def simulated(self) -> bool:
        """True when the model was trained on simulated nights only."""
        return bool(self.manifest.get("provenance", {}).get("simulated", False))

    @property
    def notice(self) -> str:
        """One-line provenance notice to show users ('' when there is none)."""
        return str(self.manifest.get("provenance", {}).get("notice", "") or "")

    @property
    def modalities(self) -> tuple[str, ...]:
        """Roles in model input order (the M axis of `x` / `present`)."""
        return tuple(self.manifest["signal"]["modalities"])

    @property
    def fs_hz(self) -> float:
        return float(self.manifest["signal"]["fs_hz"])

    @property
    def epoch_samples(self) -> int:
        return int(self.manifest["signal"]["epoch_samples"])

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(self.manifest["labels"]["stages"])

    @property
    def preprocessing(self) -> dict:
        return dict(self.manifest["signal"]["preprocessing"])

    @property
    def state_specs(self) -> dict[str, StateSpec]:
        """Recurrent states of the step graph, in manifest order."""
        return {
            name: StateSpec(name, tuple(int(d) for d in spec["shape"]), str(spec.get("dtype", "float32")))
            for name, spec in self.manifest["state"].items()
        }

    @property
    def engines(self) -> dict:
        """TensorRT engines: {key: {"file", "graph", "tensorrt", "gpu", "precision", ...}}."""
        return dict(self.manifest.get("engines", {}))


# ----------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------
def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_bundle(out: Path, manifest: dict, files: Mapping[str, Path]) -> Path:
    """Write `manifest` + `files` ({name in bundle: source path}) as a bundle at `out`.

    A zip when `out` ends in `.zip`, a directory otherwise. Fills `manifest["files"]` (in
    place) with the sha256 of every file, validates the result exactly as `load_bundle`
    would (so a bundle that cannot be loaded is never written) and returns `out`.
    """
    out = Path(out)
    manifest["schema"] = manifest.get("schema", SCHEMA)
    checked: dict[str, Path] = {}
    for name, src in files.items():
        _check_member_name(name, f"write_bundle({out})")
        if name == MANIFEST:
            raise BundleError(f"write_bundle({out}): {MANIFEST!r} is written from the manifest dict; drop it from files")
        src = Path(src)
        if not src.is_file():
            raise BundleError(f"write_bundle({out}): file {name!r} -> {src} does not exist; export it first")
        checked[name] = src
    manifest["files"] = {name: sha256_file(src) for name, src in sorted(checked.items())}
    try:
        text = json.dumps(manifest, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as err:
        raise BundleError(f"write_bundle({out}): manifest is not plain JSON ({err}); pass only str/number/list/dict values") from err
    _validate_manifest(manifest, out)

    out.parent.mkdir(parents=True, exist_ok=True)
    _check_replaceable(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if out.suffix.lower() == ".zip":
            staged = tmp / out.name
            with zipfile.ZipFile(staged, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
                zf.writestr(MANIFEST, text)
                for name, src in sorted(checked.items()):
                    zf.write(src, arcname=name)
        else:
            staged = tmp / "bundle"
            staged.mkdir()
            (staged / MANIFEST).write_text(text, encoding="utf-8")
            for name, src in checked.items():
                dst = staged / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
        # verify what was staged (checksums, graph I/O) before it replaces anything
        load_bundle(staged)
        if out.is_dir():
            shutil.rmtree(out)
        os.replace(staged, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_replaceable(out: Path) -> None:
    if out.is_symlink():
        raise BundleError(f"output {out} is a symlink; give a plain path for the bundle")
    if out.is_dir():
        if any(out.iterdir()) and not (out / MANIFEST).is_file():
            raise BundleError(
                f"output {out} is a non-empty directory that is not a bundle; choose a new path "
                "or remove it"
            )
    elif out.exists() and out.suffix.lower() != ".zip":
        raise BundleError(f"output {out} exists and is a file; a directory bundle needs a free path (or end it in .zip)")
    elif out.exists() and not zipfile.is_zipfile(out):
        raise BundleError(f"output {out} exists and is not a zip; choose a new path or remove it")


# ----------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------
def assets_dir() -> Path:
    """Where the embedded bundles live (`sleepedge/assets/`, shipped as package data)."""
    return Path(__file__).resolve().parent / "assets"


def default_bundle_path() -> Path:
    """The embedded default model shipped with the package."""
    return assets_dir() / "default.sleepedge"


def embedded_bundles() -> dict[str, Path]:
    """Every bundle shipped in `sleepedge/assets/`: {name: path}, name = the file name without
    `.sleepedge` (or `.sleepedge.zip`); `default` (= `default_bundle_path()`) first, the rest sorted."""
    found: dict[str, Path] = {}
    base = assets_dir()
    if base.is_dir():
        for p in sorted(base.iterdir()):
            if p.name.endswith(".sleepedge"):
                found[p.name[: -len(".sleepedge")]] = p
            elif p.name.endswith(".sleepedge.zip") and p.is_file():
                found.setdefault(p.name[: -len(".sleepedge.zip")], p)
    found.pop("default", None)  # `default` follows default_bundle_path() (tests may point it elsewhere)
    return {"default": default_bundle_path(), **found}


def resolve_model(arg: str | Path | None) -> Path:
    """What `--model` means: None -> the embedded default; an existing path, or anything that looks
    like a path (a separator, `.zip`), -> that path (`load_bundle` reports what is wrong with it);
    a bare name of an embedded bundle (`synthsleepnet-tiny-sim`, `default`) -> its path in the
    package. An unknown bare name is a one-line BundleError listing the embedded names."""
    if arg is None:
        return default_bundle_path()
    path = Path(arg)
    text = str(arg)
    if path.exists() or os.sep in text or "/" in text or text.lower().endswith(".zip"):
        return path
    embedded = embedded_bundles()
    name = text[: -len(".sleepedge")] if text.endswith(".sleepedge") else text
    if name in embedded:
        return embedded[name]
    names = ", ".join(n for n, p in embedded.items() if p.exists()) or "none"
    raise BundleError(
        f"--model {text}: no bundle at that path (does not exist) and no embedded bundle of that name "
        f"(embedded: {names}); pass a bundle written by `sleepedge export` or one of those names"
    )


def load_bundle(path: Path | str) -> Bundle:
    """Open and verify a bundle (directory or zip). Raises BundleError with one line."""
    path = Path(path)
    if not path.exists():
        hint = " (the default model is produced by the release build; pass --model PATH)" if path == default_bundle_path() else ""
        raise BundleError(f"bundle {path} does not exist{hint}; pass a bundle written by `sleepedge export`")
    if path.is_dir():
        manifest = _read_manifest_file(path / MANIFEST, path)
        _validate_manifest(manifest, path)
        _verify_files(path, manifest, path)
        return Bundle(path, manifest, path)
    if not zipfile.is_zipfile(path):
        raise BundleError(f"bundle {path} is neither a directory nor a zip; pass a bundle written by `sleepedge export`")
    tmp = Path(tempfile.mkdtemp(prefix="sleepedge-bundle-"))
    try:
        manifest = _extract_zip(path, tmp)
        _verify_files(tmp, manifest, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Bundle(tmp, manifest, path, _tmpdir=tmp)


def _read_manifest_file(mpath: Path, src: Path) -> dict:
    if not mpath.is_file():
        raise BundleError(f"bundle {src}: no {MANIFEST}; this is not a sleepedge bundle (re-export it)")
    return _parse_manifest(mpath.read_bytes(), src)


def _parse_manifest(raw: bytes, src: Path) -> dict:
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"bundle {src}: {MANIFEST} is not valid JSON ({err}); re-export the bundle") from err
    if not isinstance(manifest, dict):
        raise BundleError(f"bundle {src}: {MANIFEST} must hold a JSON object; re-export the bundle")
    return manifest


def _validate_manifest(m: dict, src: Path) -> None:
    schema = m.get("schema")
    if schema != SCHEMA:
        raise BundleError(
            f"bundle {src}: unknown schema {schema!r}; this sleepedge reads {SCHEMA!r} "
            "(upgrade sleepedge or re-export the model with this version)"
        )
    missing = [k for k in REQUIRED_KEYS if k not in m]
    if missing:
        raise BundleError(f"bundle {src}: manifest lacks {', '.join(missing)}; re-export the bundle")
    not_objects = [k for k in _OBJECT_KEYS if not isinstance(m[k], dict)]
    if not_objects:
        raise BundleError(f"bundle {src}: manifest {', '.join(repr(k) for k in not_objects)} must be JSON objects; "
                          "re-export the bundle")
    sig = m["signal"]
    miss_sig = [k for k in REQUIRED_SIGNAL_KEYS if not isinstance(sig, dict) or k not in sig]
    if miss_sig:
        raise BundleError(f"bundle {src}: manifest 'signal' lacks {', '.join(miss_sig)}; re-export the bundle")
    if not isinstance(m["files"], dict) or not isinstance(m["graphs"], dict) or not isinstance(m["state"], dict):
        raise BundleError(f"bundle {src}: manifest 'files', 'graphs' and 'state' must be objects; re-export the bundle")
    for name in m["files"]:
        _check_member_name(name, f"bundle {src}")
    for g in REQUIRED_GRAPHS:
        if g not in m["graphs"]:
            raise BundleError(f"bundle {src}: manifest has no {g!r} graph (graphs: {', '.join(m['graphs']) or 'none'}); re-export the bundle")
    for g, spec in m["graphs"].items():
        if not isinstance(spec, dict) or not {"file", "inputs", "outputs"} <= set(spec):
            raise BundleError(f"bundle {src}: graph {g!r} needs 'file', 'inputs' and 'outputs'; re-export the bundle")
        if not isinstance(spec["file"], str) or not isinstance(spec["inputs"], dict) or not isinstance(spec["outputs"], dict):
            raise BundleError(f"bundle {src}: graph {g!r} needs a file name and 'inputs'/'outputs' objects; re-export the bundle")
        if spec["file"] not in m["files"]:
            raise BundleError(f"bundle {src}: graph {g!r} file {spec['file']!r} is not checksummed in 'files'; re-export the bundle")
    for key, eng in m["engines"].items():
        if not isinstance(eng, dict) or not isinstance(eng.get("file"), str) or eng["file"] not in m["files"]:
            raise BundleError(f"bundle {src}: engine {key!r} file is not checksummed in 'files'; re-export the bundle")
    step_in = set(m["graphs"]["step"]["inputs"])
    step_out = set(m["graphs"]["step"]["outputs"])
    for s in m["state"]:
        if s not in step_in or f"{s}_out" not in step_out:
            raise BundleError(
                f"bundle {src}: state {s!r} needs step input {s!r} and output {s + '_out'!r}; re-export the bundle"
            )
    _validate_values(m, src)


_OBJECT_KEYS = ("model", "signal", "labels", "graphs", "state", "engines", "versions", "provenance", "files")
MAX_STATE_ELEMENTS = 10_000_000   # 40 MB of float32 per recurrent state (the paper-size model holds ~0.1 M)


def _validate_values(m: dict, src: Path) -> None:
    """Types and values the runtime relies on (issue 14: a mutated manifest is a one-line BundleError,
    never a TypeError in the scorer or a state allocation sized by the manifest)."""

    def bad(what: str, value) -> BundleError:
        text = repr(value)
        return BundleError(f"bundle {src}: manifest {what} is {text[:80]}{'...' if len(text) > 80 else ''}; re-export the bundle")

    if not isinstance(m["name"], str):
        raise bad("'name'", m["name"])
    sig = m["signal"]
    mods = sig["modalities"]
    if (not isinstance(mods, list) or not mods or any(r not in ROLES for r in mods if isinstance(r, str))
            or not all(isinstance(r, str) for r in mods) or len(set(mods)) != len(mods)):
        raise bad(f"signal.modalities (expected distinct roles from {list(ROLES)})", mods)
    if not (is_finite_number(sig["fs_hz"]) and sig["fs_hz"] > 0):
        raise bad("signal.fs_hz", sig["fs_hz"])
    if not (is_finite_number(sig["epoch_s"]) and sig["epoch_s"] > 0):
        raise bad("signal.epoch_s", sig["epoch_s"])
    n = sig["epoch_samples"]
    want = float(sig["fs_hz"]) * float(sig["epoch_s"])
    if not (isinstance(n, int) and not isinstance(n, bool) and math.isfinite(want) and n == round(want)
            and 0 < n <= 1_000_000):
        raise bad(f"signal.epoch_samples (expected fs_hz x epoch_s = {sig['fs_hz'] * sig['epoch_s']:g})", n)
    pre = sig["preprocessing"]
    if not isinstance(pre, dict):
        raise bad("signal.preprocessing", pre)
    if pre:
        from sleepedge.preprocess import PreprocessConfig

        try:
            cfg = PreprocessConfig.from_dict(pre)
        except SleepEdgeError as ex:
            raise BundleError(f"bundle {src}: manifest signal.preprocessing: {ex}; re-export the bundle") from None
        if cfg.fs_hz != sig["fs_hz"] or cfg.epoch_samples != n:
            raise BundleError(f"bundle {src}: manifest signal.preprocessing gives {cfg.fs_hz} Hz x {cfg.epoch_s:g} s "
                              f"but signal says {sig['fs_hz']} Hz, {n} samples; re-export the bundle")
    labels = m["labels"]
    for key in ("stages", "tasks"):
        if key in labels and not (isinstance(labels[key], list) and all(isinstance(t, str) for t in labels[key])):
            raise bad(f"labels.{key}", labels[key])
    heads = m["provenance"].get("heads")
    if heads is not None and not isinstance(heads, dict):
        raise bad("provenance.heads", heads)
    for name, digest in m["files"].items():
        if not isinstance(digest, str):
            raise bad(f"files[{name!r}] (expected a sha256)", digest)
    for g, spec in m["graphs"].items():
        for kind in ("inputs", "outputs"):
            io = spec[kind]
            if not isinstance(io, dict):
                raise bad(f"graphs.{g}.{kind}", io)
            for tname, t in io.items():
                if t is None:
                    continue
                if not isinstance(t, dict):
                    raise bad(f"graphs.{g}.{kind}.{tname}", t)
                shape = t.get("shape")
                if shape is not None and not (isinstance(shape, list) and all(
                        d is None or isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)
                        for d in shape)):
                    raise bad(f"graphs.{g}.{kind}.{tname}.shape", shape)
                if "dtype" in t and not isinstance(t["dtype"], str):
                    raise bad(f"graphs.{g}.{kind}.{tname}.dtype", t["dtype"])
    x = m["graphs"]["epoch"]["inputs"].get("x")
    x_shape = (x or {}).get("shape") if isinstance(x, dict) else None
    if x_shape and len(x_shape) == 3:
        for d, want, what in ((x_shape[1], len(mods), "len(signal.modalities)"), (x_shape[2], n, "signal.epoch_samples")):
            if isinstance(d, int) and d != want:
                raise BundleError(f"bundle {src}: epoch graph input x has shape {x_shape} but {what} is {want}; "
                                  "re-export the bundle")
    step_inputs = m["graphs"]["step"]["inputs"]
    stateless = sorted(set(step_inputs) - {"z"} - set(m["state"]))
    if stateless:
        raise BundleError(f"bundle {src}: step graph inputs {stateless} have no entry in the manifest 'state'; "
                          "re-export the bundle")
    for name, spec in m["state"].items():
        shape = spec.get("shape") if isinstance(spec, dict) else None
        if not (isinstance(shape, list) and shape and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1
                                                          for d in shape) and shape[0] == 1):
            raise bad(f"state.{name}.shape (expected [1, positive dims...])", shape)
        if math.prod(shape) > MAX_STATE_ELEMENTS:
            raise bad(f"state.{name}.shape ({math.prod(shape)} elements, at most {MAX_STATE_ELEMENTS})", shape)
        if spec.get("dtype", "float32") != "float32":
            raise bad(f"state.{name}.dtype (the runtime feeds float32)", spec.get("dtype"))
        declared = (step_inputs.get(name) or {}).get("shape")
        if declared and (len(declared) != len(shape) or any(
                isinstance(d, int) and d != s for d, s in zip(declared[1:], shape[1:]))):
            raise BundleError(f"bundle {src}: state {name!r} has shape {shape} but the step graph input is "
                              f"{declared}; re-export the bundle")


def _check_member_name(name: str, where: str) -> None:
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        raise BundleError(f"{where}: file name {name!r} is not a plain relative path; use names like 'epoch.onnx'")
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise BundleError(f"{where}: file name {name!r} is an absolute path; bundles hold relative paths only")
    if any(part in ("..", ".", "") for part in name.split("/")):
        raise BundleError(f"{where}: file name {name!r} contains '..' or empty parts; bundles hold plain relative paths only")


def _extract_zip(path: Path, dest: Path) -> dict:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise BundleError(f"bundle {path}: unreadable zip ({err}); re-export or re-download it") from err
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise BundleError(f"bundle {path}: {len(infos)} zip members (limit {MAX_MEMBERS}); this is not a sleepedge bundle")
        by_name: dict[str, zipfile.ZipInfo] = {}
        total = 0
        for info in infos:
            name = info.filename
            where = f"bundle {path}"
            if info.is_dir():
                _check_member_name(name.rstrip("/"), where)
                continue
            _check_member_name(name, where)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise BundleError(f"bundle {path}: zip member {name!r} is a symlink; bundles hold regular files only")
            if info.file_size > MAX_MEMBER_BYTES:
                raise BundleError(f"bundle {path}: zip member {name!r} is {info.file_size} bytes (limit {MAX_MEMBER_BYTES}); refusing it")
            if info.file_size > _RATIO_MIN_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                raise BundleError(
                    f"bundle {path}: zip member {name!r} expands {info.file_size / max(info.compress_size, 1):.0f}x "
                    f"(limit {MAX_RATIO:.0f}x), a zip bomb; refusing it"
                )
            total += info.file_size
            if name in by_name:
                raise BundleError(f"bundle {path}: zip member {name!r} appears twice; refusing an ambiguous archive")
            by_name[name] = info
        if total > MAX_TOTAL_BYTES:
            raise BundleError(f"bundle {path}: {total} bytes uncompressed (limit {MAX_TOTAL_BYTES}); refusing it")
        if MANIFEST not in by_name:
            raise BundleError(f"bundle {path}: no {MANIFEST} in the zip; this is not a sleepedge bundle (re-export it)")
        manifest = _parse_manifest(_read_member(zf, by_name[MANIFEST], path), path)
        _validate_manifest(manifest, path)
        for name in manifest["files"]:
            if name not in by_name:
                raise BundleError(f"bundle {path}: file {name!r} listed in the manifest is missing from the zip; re-export the bundle")
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy_member(zf, by_name[name], target, path)
    return manifest


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, limit: int = 64 << 20) -> bytes:
    with zf.open(info) as fh:
        data = fh.read(limit + 1)
    if len(data) > min(limit, info.file_size):
        raise BundleError(f"bundle {path}: zip member {info.filename!r} is larger than its header says; refusing it")
    return data


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, path: Path) -> None:
    written = 0
    try:
        with zf.open(info) as src, open(target, "xb") as dst:
            while block := src.read(1 << 20):
                written += len(block)
                if written > info.file_size:  # a lying header: stop before filling the disk
                    raise BundleError(f"bundle {path}: zip member {info.filename!r} is larger than its header says; refusing it")
                dst.write(block)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        if isinstance(err, BundleError):
            raise
        raise BundleError(f"bundle {path}: zip member {info.filename!r} is corrupt ({err}); re-export or re-download it") from err


def _verify_files(root: Path, manifest: dict, src: Path) -> None:
    for name, digest in manifest["files"].items():
        fpath = root / name
        if fpath.is_symlink():
            raise BundleError(f"bundle {src}: file {name!r} is a symlink; bundles hold regular files only")
        if not fpath.is_file():
            raise BundleError(f"bundle {src}: file {name!r} listed in the manifest is missing; re-export the bundle")
        actual = sha256_file(fpath)
        if actual != digest:
            raise BundleError(
                f"bundle {src}: checksum mismatch for {name!r} (manifest {str(digest)[:12]}..., file {actual[:12]}...); "
                "the bundle was modified or corrupted, re-export or re-download it"
            )
    for gname, spec in manifest["graphs"].items():
        check_graph_io(root / spec["file"], spec, f"bundle {src}: graph {gname!r}")


# ----------------------------------------------------------------------------------------
# protobuf-free ONNX I/O reader
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorIO:
    name: str
    dtype: str                       # numpy name, "unknown" when not declared
    shape: tuple[int | str | None, ...] | None   # int = fixed, str = symbolic, None = unnamed dynamic


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: memoryview):
    """Yield (field_number, wire_type, value) over one protobuf message; value is an int or a memoryview."""
    pos, n = 0, len(buf)
    while pos < n:
        key, pos = _varint(buf, pos)
        field, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = _varint(buf, pos)
        elif wt == 1:
            val, pos = buf[pos:pos + 8], pos + 8
        elif wt == 2:
            ln, pos = _varint(buf, pos)
            if pos + ln > n:
                raise ValueError("truncated length-delimited field")
            val, pos = buf[pos:pos + ln], pos + ln
        elif wt == 5:
            val, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        if pos > n:
            raise ValueError("truncated field")
        yield field, wt, val


def _value_info(buf: memoryview) -> TensorIO:
    name, dtype, shape = "", "unknown", None
    for f, wt, v in _fields(buf):
        if f == 1 and wt == 2:
            name = bytes(v).decode("utf-8")
        elif f == 2 and wt == 2:                       # TypeProto
            for tf, twt, tv in _fields(v):
                if tf == 1 and twt == 2:               # tensor_type
                    for ef, ewt, ev in _fields(tv):
                        if ef == 1 and ewt == 0:
                            dtype = ONNX_DTYPES.get(ev, f"onnx:{ev}")
                        elif ef == 2 and ewt == 2:     # TensorShapeProto
                            dims: list[int | str | None] = []
                            for df, dwt, dv in _fields(ev):
                                if df == 1 and dwt == 2:
                                    dim: int | str | None = None
                                    for xf, xwt, xv in _fields(dv):
                                        if xf == 1 and xwt == 0:
                                            dim = int(xv)
                                        elif xf == 2 and xwt == 2:
                                            dim = bytes(xv).decode("utf-8")
                                    dims.append(dim)
                            shape = tuple(dims)
    return TensorIO(name, dtype, shape)


def read_graph_io(path: Path) -> tuple[list[TensorIO], list[TensorIO]]:
    """Inputs (initialisers excluded) and outputs of an ONNX model file, without `onnx`."""
    import mmap

    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise ValueError("empty file")
        # mapped, not read: only the protobuf headers are touched (a paper-size graph is ~0.5 GB).
        # The map is never closed explicitly: sub-views made while walking keep it alive and it
        # is released with the last of them.
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    buf = memoryview(mm)
    inputs, outputs, inits = [], [], set()
    graph_seen = False
    for f, wt, v in _fields(buf):
        if f == 7 and wt == 2:             # ModelProto.graph
            graph_seen = True
            for gf, gwt, gv in _fields(v):
                if gf == 11 and gwt == 2:
                    inputs.append(_value_info(gv))
                elif gf == 12 and gwt == 2:
                    outputs.append(_value_info(gv))
                elif gf == 5 and gwt == 2:  # initializer: TensorProto.name = 8
                    for tf, twt, tv in _fields(gv):
                        if tf == 8 and twt == 2:
                            inits.add(bytes(tv).decode("utf-8"))
    if not graph_seen:
        raise ValueError("no graph in the model")
    return [i for i in inputs if i.name not in inits], outputs


def check_graph_io(path: Path, spec: Mapping[str, Any], where: str) -> None:
    """Refuse a graph whose input/output names, dtypes or fixed dims differ from `spec`."""
    try:
        inputs, outputs = read_graph_io(path)
    except (ValueError, UnicodeDecodeError, OSError) as err:
        raise BundleError(f"{where}: {path.name} is not a readable ONNX model ({err}); re-export the bundle") from err
    for kind, actual, declared in (("inputs", inputs, spec["inputs"]), ("outputs", outputs, spec["outputs"])):
        got = [t.name for t in actual]
        if sorted(got) != sorted(declared):
            raise BundleError(
                f"{where}: {kind} in {path.name} are {got} but the manifest declares {list(declared)}; re-export the bundle"
            )
        for t in actual:
            d = declared[t.name] or {}
            if "dtype" in d and t.dtype != "unknown" and d["dtype"] != t.dtype:
                raise BundleError(f"{where}: {t.name!r} is {t.dtype} in {path.name} but {d['dtype']} in the manifest; re-export the bundle")
            if "shape" in d and t.shape is not None:
                want = list(d["shape"])
                if len(want) != len(t.shape) or any(
                    (isinstance(w, int) and isinstance(a, int) and w != a)
                    or (isinstance(w, str) and isinstance(a, int))   # declared dynamic, exported static
                    for w, a in zip(want, t.shape)
                ):
                    raise BundleError(
                        f"{where}: {t.name!r} has shape {list(t.shape)} in {path.name} but {want} in the manifest; re-export the bundle"
                    )
