"""Download PhysioNet's Sleep-EDF Expanded (sleep-cassette) with urllib only.

Files and checksums come from PhysioNet's `SHA256SUMS.txt`; every file is streamed into
`<name>.part`, resumed with an HTTP Range request after an interruption, verified by sha256
and only then renamed to its final name. Files already present with the right checksum are
skipped.
"""

from __future__ import annotations

import hashlib
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Sequence

from sleepedge.errors import SleepEdgeError

SLEEP_EDF_URL = "https://physionet.org/files/sleep-edfx/1.0.0/"
CHUNK = 1 << 16


class DownloadError(SleepEdgeError):
    """A download failed (network, HTTP status, checksum mismatch)."""


def _open(url: str, headers: dict | None = None, timeout: float = 60.0):
    req = urllib.request.Request(url, headers={"User-Agent": "sleepedge", **(headers or {})})
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as err:
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}; check --base-url or try again later") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"{url}: cannot connect ({reason}); check the network or --base-url") from None


def read_checksums(base_url: str) -> dict[str, str]:
    """{relative path: sha256} from `<base_url>/SHA256SUMS.txt`."""
    url = base_url.rstrip("/") + "/SHA256SUMS.txt"
    with _open(url) as r:
        text = r.read().decode("utf-8", "replace")
    sums = {}
    for line in text.splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2 and re.fullmatch(r"[0-9a-fA-F]{64}", parts[0]):
            sums[parts[1].lstrip("*").strip()] = parts[0].lower()
    if not sums:
        raise DownloadError(f"{url} lists no sha256 checksums; check --base-url (expected PhysioNet's sleep-edfx root)")
    return sums


def sleep_edf_files(sums: dict[str, str], subjects: Sequence[int] | None) -> list[str]:
    """The sleep-cassette PSG + hypnogram paths of the given subjects (all when None), sorted."""
    pat = re.compile(r"^sleep-cassette/SC4(\d\d)\d[A-Z0-9]{2}-(PSG|Hypnogram)\.edf$")
    out = []
    for rel in sorted(sums):
        m = pat.match(rel)
        if m and (subjects is None or int(m.group(1)) in set(subjects)):
            out.append(rel)
    if subjects is not None:
        found = {int(pat.match(r).group(1)) for r in out}
        missing = sorted(set(subjects) - found)
        if missing:
            raise DownloadError(f"subjects {missing} are not in Sleep-EDF sleep-cassette (SHA256SUMS.txt lists subjects "
                                f"{sorted({int(pat.match(r).group(1)) for r in sums if pat.match(r)})[:3]}...); pick others")
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def fetch(url: str, dest: Path, sha256: str, progress: Callable[[int, int | None], None] | None = None) -> Path:
    """Download `url` to `dest` (resuming `dest.part`), verify `sha256`, rename. Returns dest."""
    dest = Path(dest)
    if dest.is_file() and _sha256(dest) == sha256:
        return dest
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        resp = _open(url, headers)
    except DownloadError:
        if not have:
            raise
        # a server may answer 416 when the .part is already complete
        resp = None
    if resp is not None:
        with resp:
            status = getattr(resp, "status", 200)
            mode = "ab" if (have and status == 206) else "wb"
            if mode == "wb":
                have = 0
            total = resp.headers.get("Content-Length")
            total = int(total) + have if total is not None else None
            with open(part, mode) as f:
                while True:
                    b = resp.read(CHUNK)
                    if not b:
                        break
                    f.write(b)
                    have += len(b)
                    if progress:
                        progress(have, total)
    got = _sha256(part)
    if got != sha256:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{dest.name}: sha256 {got[:12]}... does not match SHA256SUMS.txt ({sha256[:12]}...); the partial file was deleted, run the download again")
    part.replace(dest)
    return dest


def download_sleep_edf(out: Path, subjects: Sequence[int] | None = None, base_url: str = SLEEP_EDF_URL,
                       progress: Callable[[str, int, int | None], None] | None = None) -> list[Path]:
    """Fetch Sleep-EDF Expanded sleep-cassette PSG + hypnograms into `out` (flat folder)."""
    base = base_url.rstrip("/") + "/"
    sums = read_checksums(base)
    files = sleep_edf_files(sums, subjects)
    out = Path(out)
    paths = []
    for rel in files:
        name = rel.split("/")[-1]
        cb = (lambda done, total, _n=name: progress(_n, done, total)) if progress else None
        paths.append(fetch(base + rel, out / name, sums[rel], cb))
    return paths
