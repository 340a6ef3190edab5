"""`sleepedge data download sleep-edf` against a local HTTP server (127.0.0.1, ephemeral port)
that serves fixture EDFs + a SHA256SUMS.txt and honours HTTP Range."""

import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sleepedge.cli import app
from train.download import DownloadError, fetch

runner = CliRunner()


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    ranges_seen: list = []

    def log_message(self, *a):  # keep test output quiet
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            type(self).ranges_seen.append(start)
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def server(tmp_path):
    from sleepedge.edf import SignalSpec, write_edf

    root = tmp_path / "www"
    sc = root / "sleep-cassette"
    sc.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = []
    for subj, night, hyp in ((0, 1, "EC"), (1, 1, "EV")):
        psg = sc / f"SC4{subj:02d}{night}E0-PSG.edf"
        write_edf(psg, [SignalSpec("EEG Fpz-Cz", 100.0, rng.normal(0, 20, 6000))])
        names.append(psg.name)
        h = sc / f"SC4{subj:02d}{night}{hyp}-Hypnogram.edf"
        h.write_bytes(b"hypnogram fixture %d" % subj)
        names.append(h.name)
    sums = "".join(f"{hashlib.sha256((sc / n).read_bytes()).hexdigest()}  sleep-cassette/{n}\n" for n in names)
    sums += "0" * 64 + "  sleep-telemetry/ST7011J0-PSG.edf\n"
    (root / "SHA256SUMS.txt").write_text(sums)

    handler = lambda *a, **k: _RangeHandler(*a, directory=str(root), **k)  # noqa: E731
    _RangeHandler.ranges_seen = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", root
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(5)


def test_download_resume_and_verify(server, tmp_path):
    url, root = server
    out = tmp_path / "dl"
    # an interrupted earlier run left a truncated .part of subject 0's PSG
    full = (root / "sleep-cassette" / "SC4001E0-PSG.edf").read_bytes()
    out.mkdir()
    (out / "SC4001E0-PSG.edf.part").write_bytes(full[:1000])
    res = runner.invoke(app, ["data", "download", "sleep-edf", "--subjects", "0", "1", "-o", str(out), "--base-url", url])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["SC4001E0-PSG.edf", "SC4001EC-Hypnogram.edf",
                                                     "SC4011E0-PSG.edf", "SC4011EV-Hypnogram.edf"]
    assert (out / "SC4001E0-PSG.edf").read_bytes() == full
    assert 1000 in _RangeHandler.ranges_seen            # resumed with Range: bytes=1000-
    # a second run verifies and skips: no new requests with a Range
    before = list(_RangeHandler.ranges_seen)
    res = runner.invoke(app, ["data", "download", "sleep-edf", "--subjects", "1", "-o", str(out), "--base-url", url])
    assert res.exit_code == 0 and "2 files verified" in res.output
    assert _RangeHandler.ranges_seen == before


def test_checksum_mismatch_is_one_line_error(server, tmp_path):
    url, root = server
    with pytest.raises(DownloadError) as err:
        fetch(url + "sleep-cassette/SC4001E0-PSG.edf", tmp_path / "x.edf", "f" * 64)
    msg = str(err.value)
    assert "\n" not in msg and "does not match SHA256SUMS.txt" in msg and "x.edf" in msg
    assert not (tmp_path / "x.edf").exists() and not (tmp_path / "x.edf.part").exists()
    # through the CLI: a tampered file on the server -> error line, non-zero exit
    (root / "sleep-cassette" / "SC4011EV-Hypnogram.edf").write_bytes(b"tampered")
    res = runner.invoke(app, ["data", "download", "sleep-edf", "--subjects", "1", "-o", str(tmp_path / "o"), "--base-url", url])
    assert res.exit_code != 0
    assert isinstance(res.exception, DownloadError) and "SC4011EV-Hypnogram.edf" in str(res.exception)


def test_unknown_subject_and_unreachable_server(server, tmp_path):
    url, _ = server
    res = runner.invoke(app, ["data", "download", "sleep-edf", "--subjects", "42", "-o", str(tmp_path), "--base-url", url])
    assert isinstance(res.exception, DownloadError) and "[42]" in str(res.exception)
    res = runner.invoke(app, ["data", "download", "sleep-edf", "-o", str(tmp_path), "--base-url", "http://127.0.0.1:9/"])
    assert isinstance(res.exception, DownloadError) and "cannot connect" in str(res.exception)
