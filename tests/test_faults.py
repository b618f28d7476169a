"""Faults injected for real while a zoo model trains: a Pushgateway and a webhook that hang,
trickle bytes or answer 500, a frozen PostgreSQL, a locked SQLite store, a store that is down
at attach time, a disk that is full or fills mid-run. Each test asserts the training finishes,
the stall the fault adds to the training thread (over the same evaluations with nothing failing,
measured in the same test) stays within the configured budgets, and every evaluation ends up in
the store (or in the run's journals, from which `featuredrift runs import` stores it)."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from monitored_runs import EXPECTED_STEPS, assert_fault_adds_bounded_stall, train_monitored
from transformers import TrainerCallback
from typer.testing import CliRunner

from featuredrift.callbacks import session as session_module
from featuredrift.cli.main import app
from featuredrift.store.journal import read_journal
from featuredrift.store.run_store import RunStore

pytestmark = pytest.mark.slow


class MisbehavingServer:
    """An HTTP server on loopback that hangs, trickles its answer or fails, counting requests."""

    def __init__(self, mode: str):
        self.mode = mode
        self.requests = 0
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                server.requests += 1
                if server.mode == "error":
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif server.mode == "hang":
                    server.stop.wait(120)
                elif server.mode == "trickle":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    for _ in range(1000):
                        if server.stop.wait(0.5):
                            return
                        self.wfile.write(b"x")
                        self.wfile.flush()

            do_PUT = do_POST = do_DELETE = _answer  # noqa: N815

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def misbehaving():
    servers = []

    def start(mode: str) -> MisbehavingServer:
        servers.append(MisbehavingServer(mode))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


_train = train_monitored


def _stored_steps(url: str, run: str) -> list[int]:
    with RunStore(url) as store:
        return store.recorded_steps(run)


def _journal(callback) -> Path:
    return callback.session.journal.path


def _import(*paths: Path, db: str) -> str:
    result = CliRunner().invoke(app, ["runs", "import", *map(str, paths), "--db", db])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("mode", ["trickle", "hang", "error"])
def test_misbehaving_pushgateway_never_stalls_training(zoo_nano, tmp_path, misbehaving, mode):
    gateway = misbehaving(mode)
    callback = _train(zoo_nano, tmp_path, pushgateway_url=gateway.url)
    assert_fault_adds_bounded_stall(callback, tmp_path / "fault-free", f"pushgateway {mode}")
    exporter = callback.session.exporter
    assert exporter.failures >= 1 and exporter.delivered == 0
    # Backoff holds during close too: a few attempts, not a tight loop of retries.
    assert gateway.requests <= 12, f"{gateway.requests} requests to a failing gateway"
    assert _stored_steps(callback.config.store_url, callback.run_id) == EXPECTED_STEPS


@pytest.mark.parametrize("mode", ["trickle", "hang", "error"])
def test_misbehaving_alert_webhook_never_stalls_training(zoo_nano, tmp_path, misbehaving, mode):
    hook = misbehaving(mode)
    thresholds = tmp_path / "always.yml"
    thresholds.write_text("BaseSAETransferDegraded: {threshold: -1, for: 0}\n")  # fires at step 0
    callback = _train(zoo_nano, tmp_path, alert_webhook_url=f"{hook.url}/hooks/T0KEN", alert_thresholds=str(thresholds))
    assert_fault_adds_bounded_stall(callback, tmp_path / "fault-free", f"webhook {mode}")
    assert hook.requests >= 1
    assert _stored_steps(callback.config.store_url, callback.run_id) == EXPECTED_STEPS
    with RunStore(callback.config.store_url) as store:
        assert "BaseSAETransferDegraded" in [a.name for a in store.alerts(callback.run_id)]


@pytest.mark.parametrize("metrics_port", [-1, 0], ids=["no endpoint", "metrics endpoint"])
def test_sqlite_locked_for_the_whole_run(zoo_nano, tmp_path, caplog, metrics_port):
    """Train end waits `close_timeout_s` for the locked store and not longer, also while the
    /metrics endpoint is served (its shutdown waits for the server's poll)."""
    db = tmp_path / "runs.db"
    RunStore(f"sqlite:///{db}").close()
    blocker = sqlite3.connect(db, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with caplog.at_level(logging.WARNING):
            callback = _train(zoo_nano, tmp_path, metrics_port=metrics_port)
    finally:
        blocker.rollback()
        blocker.close()
    assert_fault_adds_bounded_stall(callback, tmp_path / "fault-free", f"sqlite locked ({'with' if metrics_port == 0 else 'no'} /metrics)")
    assert "runs import" in caplog.text and str(_journal(callback)) in caplog.text
    events = read_journal(_journal(callback))
    assert sorted(e.data["step"] for e in events if e.kind == "evaluation") == EXPECTED_STEPS
    _import(_journal(callback), db=f"sqlite:///{db}")
    assert _stored_steps(f"sqlite:///{db}", callback.run_id) == EXPECTED_STEPS
    with RunStore(f"sqlite:///{db}") as store:
        assert store.get_run(callback.run_id).status == "finished"
    _import(_journal(callback), db=f"sqlite:///{db}")  # importing again adds nothing
    with RunStore(f"sqlite:///{db}") as store:
        assert len(store.evaluations(callback.run_id)) == len(EXPECTED_STEPS)


def test_store_down_at_attach_is_a_warning_and_a_later_process_replays(zoo_nano, tmp_path, caplog):
    from servers import free_port

    down = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    with caplog.at_level(logging.WARNING):
        callback = _train(zoo_nano, tmp_path, store_url=down)
    assert "unavailable" in caplog.text
    assert_fault_adds_bounded_stall(callback, tmp_path / "fault-free", "store down at attach")
    journal = _journal(callback)
    _import(journal, db=f"sqlite:///{tmp_path}/later.db")
    assert _stored_steps(f"sqlite:///{tmp_path}/later.db", callback.run_id) == EXPECTED_STEPS
    with pytest.raises(Exception, match="127.0.0.1"):
        _train(zoo_nano, tmp_path / "strict", store_url=down, strict_store=True)


def _postgres_pids(url: str) -> list[int]:
    port = url.split("@127.0.0.1:")[1].split("/")[0]
    found = subprocess.run(["pgrep", "-f", "--", f"-p {port} "], capture_output=True, text=True).stdout.split()
    pids = [int(p) for p in found]
    for pid in list(pids):
        pids += [int(c) for c in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]
    return pids


def test_postgres_frozen_mid_run(zoo_nano, tmp_path, postgres_url):
    from servers import create_postgres_database

    url = create_postgres_database(postgres_url, "frozen")
    RunStore(url).close()
    pids = _postgres_pids(postgres_url)
    assert pids, "no PostgreSQL processes found to freeze"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        callback = _train(zoo_nano, tmp_path, store_url=url)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert_fault_adds_bounded_stall(callback, tmp_path / "fault-free", "postgres frozen (SIGSTOP)")
    journal = _journal(callback)
    assert sorted(e.data["step"] for e in read_journal(journal) if e.kind == "evaluation") == EXPECTED_STEPS
    _import(journal, db=url)
    assert _stored_steps(url, callback.run_id) == EXPECTED_STEPS


def _fill(mount_point: Path) -> None:
    """Write zeros until the file system refuses one more byte."""
    with open(mount_point / "filler", "ab", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass
        try:
            while True:
                handle.write(b"\0")
        except OSError:
            pass


@pytest.fixture
def small_disk(tmp_path):
    """A small tmpfs of its own (skipped where mounting is not allowed); `_fill` fills it."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount_point)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


@pytest.fixture
def full_disk(small_disk):
    """A tmpfs filled to the last byte."""
    _fill(small_disk)
    return small_disk


def test_full_disk_under_the_store_keeps_everything_in_the_journal(zoo_nano, tmp_path, full_disk):
    url = f"sqlite:///{full_disk}/runs.db"
    callback = _train(zoo_nano, tmp_path, store_url=url)
    assert_fault_adds_bounded_stall(callback, tmp_path / "fault-free", "disk full under the store")
    _import(_journal(callback), db=f"sqlite:///{tmp_path}/elsewhere.db")
    assert _stored_steps(f"sqlite:///{tmp_path}/elsewhere.db", callback.run_id) == EXPECTED_STEPS


def test_full_disk_under_journal_and_store_rescues_to_a_fallback(zoo_nano, tmp_path, full_disk, monkeypatch, caplog):
    fallback = tmp_path / "fallback"
    monkeypatch.setattr(session_module, "FALLBACK_JOURNAL_DIR", fallback)
    with caplog.at_level(logging.WARNING):
        callback = _train(zoo_nano, tmp_path, store_url=f"sqlite:///{full_disk}/runs.db", output_dir=full_disk / "out")
    assert "cannot write the run journal" in caplog.text
    (rescued,) = fallback.glob("journal-*.jsonl")
    assert f"wrote {len(read_journal(rescued))} event(s)" in caplog.text and str(rescued) in caplog.text
    assert_fault_adds_bounded_stall(callback, tmp_path / "fault-free", "disk full under journal and store")
    _import(rescued, db=f"sqlite:///{tmp_path}/elsewhere.db")
    assert _stored_steps(f"sqlite:///{tmp_path}/elsewhere.db", callback.run_id) == EXPECTED_STEPS


class FillDiskAt(TrainerCallback):
    """Fills the disk when training reaches `step`: the journal's disk runs out mid-run."""

    def __init__(self, disk: Path, step: int):
        self.disk, self.step = disk, step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            _fill(self.disk)


def test_disk_filling_mid_run_rescues_with_the_same_event_numbers(zoo_nano, tmp_path, small_disk, monkeypatch, caplog):
    """Steps 0 and 2 reach the journal, then its disk fills (the store is down throughout): steps 4
    and 6 are rescued to the fallback journal under their own event numbers, so importing the two
    journals, together or one after the other in either order, stores every evaluation once."""
    from servers import free_port

    fallback = tmp_path / "fallback"
    monkeypatch.setattr(session_module, "FALLBACK_JOURNAL_DIR", fallback)
    down = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    with caplog.at_level(logging.WARNING):
        callback = _train(zoo_nano, tmp_path, store_url=down, output_dir=small_disk / "out",
                          callbacks=[FillDiskAt(small_disk, 3)])
    assert "cannot write the run journal" in caplog.text
    assert_fault_adds_bounded_stall(callback, tmp_path / "fault-free", "disk filling mid-run")
    journal, (rescued,) = _journal(callback), fallback.glob("journal-*.jsonl")
    kept, saved = read_journal(journal), read_journal(rescued)
    assert sorted(e.data["step"] for e in kept if e.kind == "evaluation") == [0, 2]
    assert sorted(e.data["step"] for e in saved if e.kind == "evaluation") == [4, 6]
    # The rescue starts with the run's own start event (so it imports alone) and keeps every number.
    assert saved[0] == kept[0] and [e.kind for e in saved].count("run") == 1
    assert {e.seq for e in saved[1:]}.isdisjoint(e.seq for e in kept)
    numbers = sorted({e.seq for e in kept} | {e.seq for e in saved})
    assert numbers == list(range(1, numbers[-1] + 1))  # every event of the run, in one file or the other
    for order in ([journal, rescued], [rescued, journal]):
        separately, together = tmp_path / f"one-by-one-{order[0].name}.db", tmp_path / f"together-{order[0].name}.db"
        for path in order:
            _import(path, db=f"sqlite:///{separately}")
        _import(*order, db=f"sqlite:///{together}")
        for db in (separately, together):
            with RunStore(f"sqlite:///{db}") as store:
                assert [e.step for e in store.evaluations(callback.run_id)] == EXPECTED_STEPS
                assert store.get_run(callback.run_id).status == "finished"
        assert "0 event(s)" in _import(*order, db=f"sqlite:///{together}")  # once more: nothing new


@pytest.mark.parametrize("name", ["team/exp1", "../../etc/x"])
def test_run_names_never_escape_the_output_folder(zoo_nano, tmp_path, name):
    callback = _train(zoo_nano, tmp_path, run_name=name)
    journal = _journal(callback)
    assert journal.parent == tmp_path / "out" / "featuredrift"
    assert sorted(p.name for p in journal.parent.iterdir())[0].startswith("journal-")
    with RunStore(callback.config.store_url) as store:
        assert store.recorded_steps(name) == EXPECTED_STEPS  # found by its display name
        assert store.get_run(callback.run_id).extra["display_name"] == name
