"""`sleepedge cohort score` / `sleepedge.cohort`: a cohort on a Dask LocalCluster (issue 15).

Every cluster here listens on 127.0.0.1 only (no dashboard), has single-threaded worker
processes, is bounded in time and is closed by the test that starts it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("distributed")
pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

from sleepedge import cohort  # noqa: E402
from sleepedge.cli import app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def nights(tmp_path_factory) -> dict:
    """4 simulated quarter-hour nights, a truncated EDF, a file that is not an EDF."""
    from sleepedge.simulate import simulate_night, write_night

    d = tmp_path_factory.mktemp("cohort-in")
    good = []
    for seed in range(4):
        edf, _ = write_night(simulate_night(hours=0.25, seed=seed), d / f"sim{seed}.edf")
        good.append(edf)
    cut = d / "cut.edf"
    cut.write_bytes(good[0].read_bytes()[:5000])          # header + no complete record
    junk = d / "junk.edf"
    junk.write_bytes(b"this is not an EDF at all\n" * 20)
    return {"dir": d, "good": good, "bad": [cut, junk]}


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0", silence_logs=40)
    c = Client(cluster, timeout=60)
    try:
        yield c
    finally:
        c.close()
        cluster.close(timeout=30)


def _rows(out: Path):
    return pd.read_parquet(out / cohort.TABLE)


def test_discover_files_folders_globs(nights, tmp_path):
    d = nights["dir"]
    out = d / "out"
    (out).mkdir(exist_ok=True)
    (out / "x.edf").write_bytes(b"")                      # under OUT: never an input
    (d / "sim0.sleepedge.edf").write_bytes(b"")           # our own output: never an input
    try:
        found = cohort.discover([d], out)
        assert [p.name for p in found] == ["cut.edf", "junk.edf", "sim0.edf", "sim1.edf", "sim2.edf", "sim3.edf"]
        assert [p.name for p in cohort.discover([str(d / "sim*.edf"), nights["good"][0]])] == \
            ["sim0.edf", "sim1.edf", "sim2.edf", "sim3.edf"]   # each once, in order
    finally:
        (d / "sim0.sleepedge.edf").unlink()
    for bad in ([str(d / "nope.edf")], [str(d / "zz*.edf")], [tmp_path]):
        with pytest.raises(cohort.CohortError) as ex:
            cohort.discover(bad)
        assert "\n" not in str(ex.value)


def test_cohort_equals_score_resume_force_and_failures(nights, client, tmp_path):
    from sleepedge.commands.score import score_files

    out = tmp_path / "cohort"
    inputs = [*nights["good"], *nights["bad"]]
    t0 = time.perf_counter()
    table, counts = cohort.run(inputs, out, client, formats="tsv,csv,json")
    first_s = time.perf_counter() - t0
    assert counts == {"ok": 4, "failed": 2, "skipped": 0}
    rows = _rows(out)
    assert table == out / "cohort.parquet" and len(rows) == 6 and rows["night"].is_unique
    ok = rows[rows.status == "ok"]
    err = rows[rows.status == "error"].set_index("name")
    assert set(ok.name) == {p.name for p in nights["good"]}
    # failure isolation: each bad night is one error row with a one-line reason naming it
    assert set(err.index) == {"cut.edf", "junk.edf"}
    for name, reason in err.error.items():
        assert name in reason and "\n" not in reason and reason
    assert (ok.n_epochs == 30).all() and (ok.duration_s == 900.0).all()
    assert ok.tst_min.notna().all() and ok.model_id.nunique() == 1 and ok.content_sha256.str.len().eq(64).all()
    assert ok.worker.str.startswith("tcp://127.0.0.1:").all() and (ok.wall_s > 0).all()
    # the same files as `sleepedge score`, byte for byte (TSV/CSV: stages and probabilities)
    ref = tmp_path / "score"
    assert score_files(nights["good"], None, ref, "tsv,csv,json", quiet=True) == 0
    for p in nights["good"]:
        for fmt in ("tsv", "csv"):
            name = f"{p.stem}.sleepedge.{fmt}"
            assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    # epochs.parquet: one row per scored epoch, stages equal to the TSV, partitioned by shard
    ep = pd.read_parquet(out / cohort.EPOCHS)
    assert len(ep) == 4 * 30 and not ep.duplicated(["night", "epoch"]).any()
    assert set(ep.night) == set(ok.night)
    one = ep[ep.night == ok.set_index("name").loc["sim1.edf", "night"]].sort_values("epoch")
    tsv = pd.read_csv(out / "sim1.sleepedge.tsv", sep="\t")
    assert list(one.stage_name) == list(tsv.stage)
    assert len(list((out / cohort.EPOCHS).glob("shard=*/*.parquet"))) == 4

    # resume: nothing scored twice, the errors tried again, the table unchanged in size
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.sleepedge.tsv")}
    table, counts = cohort.run(inputs, out, client, formats="tsv,csv,json")
    assert counts == {"ok": 0, "failed": 2, "skipped": 4}
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.sleepedge.tsv")} == before
    rows2 = _rows(out)
    assert len(rows2) == 6 and rows2.night.is_unique
    # a touched file (same content) is hashed, found done, and skipped
    os.utime(nights["good"][2], None)
    _, counts = cohort.run(nights["good"][2:3], out, client, formats="tsv,csv,json")
    assert counts == {"ok": 0, "failed": 0, "skipped": 1}
    # a night whose files are not all there (more --formats, a deleted file) is scored again
    (out / "sim0.sleepedge.csv").unlink()
    _, counts = cohort.run(nights["good"], out, client, formats="tsv,csv,json")
    assert counts == {"ok": 1, "failed": 0, "skipped": 3} and (out / "sim0.sleepedge.csv").exists()
    # --force rescores; still one row per night
    _, counts = cohort.run(inputs, out, client, formats="tsv,csv,json", force=True)
    assert counts == {"ok": 4, "failed": 2, "skipped": 0}
    rows3 = _rows(out)
    assert len(rows3) == 6 and rows3.night.is_unique
    assert len(pd.read_parquet(out / cohort.EPOCHS)) == 4 * 30
    assert first_s < 60


def test_worker_killed_mid_night_is_retried_elsewhere(nights, client, tmp_path):
    """SIGKILL a worker process while it scores a night: its nights run again on a worker
    (the nanny restarts the dead one), nothing lost, nothing duplicated."""
    from sleepedge.simulate import simulate_night, write_night

    d = tmp_path / "in"
    d.mkdir()
    files = [write_night(simulate_night(hours=0.5, seed=10 + k), d / f"long{k}.edf")[0] for k in range(6)]
    out = tmp_path / "out"
    client.wait_for_workers(2, timeout=60)
    pids = client.run(os.getpid)                           # worker address -> pid
    result: dict = {}

    def go():
        try:
            result["run"] = cohort.run(files, out, client, formats="tsv,json")
        except BaseException as ex:  # noqa: BLE001 - re-raised in the test thread
            result["error"] = ex

    th = threading.Thread(target=go, daemon=True)
    th.start()
    killed, deadline = None, time.monotonic() + 60
    while killed is None and time.monotonic() < deadline and th.is_alive():
        busy = {a: ks for a, ks in client.processing().items() if ks and a in pids}
        if busy and any(p.suffix == ".tsv" for p in out.glob("long*.sleepedge.tsv")):
            addr, keys = next(iter(busy.items()))
            os.kill(pids[addr], signal.SIGKILL)
            killed = (pids[addr], set(keys), cohort._utc())
        time.sleep(0.02)
    th.join(120)
    assert not th.is_alive() and "error" not in result, result.get("error")
    assert killed is not None, "no night was in flight to kill"
    _, counts = result["run"]
    assert counts == {"ok": 6, "failed": 0, "skipped": 0}
    rows = _rows(out)
    assert len(rows) == 6 and rows.night.is_unique and (rows.status == "ok").all()
    assert set(rows.name) == {f.name for f in files}
    in_flight = {cohort.task_stem(k) for k in killed[1]}
    assert in_flight and in_flight <= set(rows.stem)
    # the killed process wrote nothing after its death; its night(s) in flight were finished by another one
    assert (rows[rows.pid == killed[0]].finished_utc < killed[2]).all()
    assert (rows[rows.stem.isin(in_flight)].pid != killed[0]).any()
    ep = pd.read_parquet(out / cohort.EPOCHS)
    assert len(ep) == 6 * 60 and not ep.duplicated(["night", "epoch"]).any()
    for f in files:                                       # the retried nights' files are whole
        assert len((out / f"{f.stem}.sleepedge.tsv").read_text().splitlines()) == 61
    client.wait_for_workers(2, timeout=60)                # the nanny brought the worker back


def test_client_killed_mid_run_loses_only_nights_in_flight(nights, client, tmp_path):
    """SIGKILL the `sleepedge cohort score` process itself mid-run: every night it finished is kept
    (its row and epoch file on disk), its workers go with it, and the next run scores only the rest."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "sleepedge", "cohort", "score", *map(str, nights["good"]),
                             "--out", str(out), "--workers", "1", "--formats", "tsv", "-q"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None and len(list(out.glob("parts/*.json"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    finished = {p.stem for p in out.glob("parts/*.json")}
    assert len(finished) >= 2
    _, counts = cohort.run(nights["good"], out, client, formats="tsv")
    assert counts["skipped"] >= len(finished) and counts["ok"] + counts["skipped"] == 4 and counts["failed"] == 0
    rows = _rows(out)
    assert len(rows) == 4 and rows.night.is_unique and (rows.status == "ok").all()
    assert len(pd.read_parquet(out / cohort.EPOCHS)) == 4 * 30


def test_cli_scheduler_address(nights, client, tmp_path):
    """`--scheduler tcp://HOST:PORT`: the path a SLURM / Kubernetes cluster takes (here on loopback)."""
    out = tmp_path / "sched"
    r = runner.invoke(app, ["cohort", "score", str(nights["dir"] / "sim3.edf"), "--out", str(out),
                            "--scheduler", client.scheduler.address, "--formats", "tsv", "-q"])
    assert r.exit_code == 0, r.output
    rows = _rows(out)
    assert list(rows.status) == ["ok"] and rows.worker[0] in client.scheduler_info()["workers"]
    assert len(client.scheduler_info()["workers"]) == 2          # the cluster is the caller's: left running


def test_cli_local_cluster_exit_codes_and_errors(nights, tmp_path):
    out = tmp_path / "cli"
    r = runner.invoke(app, ["cohort", "score", str(nights["good"][0]), str(nights["bad"][1]), "--out", str(out),
                            "--workers", "1", "--formats", "tsv", "--quiet"])
    assert r.exit_code == 1, r.output                     # one night failed: its row says why
    assert "junk.edf" in r.output and "1 scored, 0 skipped" in r.output
    rows = _rows(out)
    assert sorted(rows.status) == ["error", "ok"]
    for args in (["cohort", "score", str(tmp_path / "missing.edf"), "--out", str(out)],
                 ["cohort", "score", str(nights["good"][0]), "--workers", "1", "--scheduler", "tcp://127.0.0.1:1"],
                 ["cohort", "score", str(nights["good"][0]), "--model", "no-such-model", "--out", str(out)]):
        r = runner.invoke(app, args)
        assert isinstance(r.exception, cohort.SleepEdgeError), (args, r.output)
        assert "\n" not in str(r.exception)
    # the console entry point: one line, exit code 2, no traceback
    r = subprocess.run([sys.executable, "-m", "sleepedge", "cohort", "score", str(tmp_path / "missing.edf")],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "missing.edf does not exist" in lines[0], r.stderr


def test_cli_stays_free_of_dask_and_pyarrow():
    code = ("import sys, sleepedge.cli; "
            "bad = [m for m in ('dask', 'distributed', 'pyarrow', 'pandas', 'torch') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "sleepedge", "cohort", "score", "--help"], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0 and "--scheduler" in r.stdout and "--workers" in r.stdout, r.stdout + r.stderr
