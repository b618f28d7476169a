"""Faults injected for real while a zoo model trains: a Pushgateway and a webhook that hang,
trickle bytes or answer 500, a frozen PostgreSQL, a locked SQLite store, a store that is down
at attach time, a full disk. Each test asserts the training finishes, the training thread never
waits longer than the configured budget for telemetry, and every evaluation ends up in the
store (or in the run journal, from which `featuredrift runs import` stores it)."""

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
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from featuredrift import sae_store  # noqa: F401  (Triton guard)
from featuredrift.callbacks import session as session_module
from featuredrift.callbacks.feature_drift import FeatureDriftCallback
from featuredrift.cli.main import app
from featuredrift.monitor.config import MonitorConfig
from featuredrift.store.journal import read_journal
from featuredrift.store.run_store import RunStore
from featuredrift.zoo.finetune import make_sft_trainer, read_conversations

pytestmark = pytest.mark.slow
EXPECTED_STEPS = [0, 2, 4, 6]


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


def _train(zoo, tmp_path, run_name="fault", output_dir=None, **overrides):
    settings = dict(
        sae=str(zoo.sae), probes=str(zoo.probes), max_probes=8, refusal_score_every=0, eval_every=2, metrics_port=-1,
        store_url=f"sqlite:///{tmp_path}/runs.db", run_name=run_name, close_timeout_s=2.0, export_timeout_s=1.0,
    )
    config = MonitorConfig(**{**settings, **overrides})
    model = AutoModelForCausalLM.from_pretrained(zoo.base)
    tokenizer = AutoTokenizer.from_pretrained(zoo.base)
    data = read_conversations(zoo.data / "chat_sft.jsonl")[:48]
    callback = FeatureDriftCallback(config)
    trainer = make_sft_trainer(model, tokenizer, data, output_dir=output_dir or tmp_path / "out", max_steps=6,
                               learning_rate=5e-3, batch_size=8, callbacks=[callback])
    trainer.train()
    return callback


def _stalls(callback) -> tuple[float, float]:
    """(longest hand-over of one evaluation, the close at train end) on the training thread."""
    handoffs = callback.session.handoff_seconds
    return max(handoffs[:-1]), handoffs[-1]


def _assert_bounded(callback, label: str, baseline: tuple[float, float] | None = None) -> None:
    stall, close = _stalls(callback)
    config = callback.config
    print(f"{label}: longest hand-over {stall * 1e3:.1f} ms, close {close:.2f} s"
          + (f" (fault-free: {baseline[0] * 1e3:.1f} ms, {baseline[1]:.2f} s)" if baseline else ""))
    assert stall < config.telemetry_budget_s, f"{label}: a step waited {stall:.3f}s for telemetry"
    assert close < config.close_timeout_s + 1.0, f"{label}: train end waited {close:.2f}s"


def _stored_steps(url: str, run: str) -> list[int]:
    with RunStore(url) as store:
        return store.recorded_steps(run)


def _journal(callback) -> Path:
    return callback.session.journal.path


def _import(path: Path, db: str) -> None:
    result = CliRunner().invoke(app, ["runs", "import", str(path), "--db", db])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def fault_free(zoo_nano, tmp_path_factory):
    """The same run with no fault: the stall baseline printed next to every fault."""
    return _stalls(_train(zoo_nano, tmp_path_factory.mktemp("fault-free")))


@pytest.mark.parametrize("mode", ["trickle", "hang", "error"])
def test_misbehaving_pushgateway_never_stalls_training(zoo_nano, tmp_path, misbehaving, fault_free, mode):
    gateway = misbehaving(mode)
    callback = _train(zoo_nano, tmp_path, pushgateway_url=gateway.url)
    _assert_bounded(callback, f"pushgateway {mode}", fault_free)
    exporter = callback.session.exporter
    assert exporter.failures >= 1 and exporter.delivered == 0
    # Backoff holds during close too: a few attempts, not a tight loop of retries.
    assert gateway.requests <= 12, f"{gateway.requests} requests to a failing gateway"
    assert _stored_steps(callback.config.store_url, callback.run_id) == EXPECTED_STEPS


@pytest.mark.parametrize("mode", ["trickle", "hang", "error"])
def test_misbehaving_alert_webhook_never_stalls_training(zoo_nano, tmp_path, misbehaving, fault_free, mode):
    hook = misbehaving(mode)
    thresholds = tmp_path / "always.yml"
    thresholds.write_text("BaseSAETransferDegraded: {threshold: -1, for: 0}\n")  # fires at step 0
    callback = _train(zoo_nano, tmp_path, alert_webhook_url=f"{hook.url}/hooks/T0KEN", alert_thresholds=str(thresholds))
    _assert_bounded(callback, f"webhook {mode}", fault_free)
    assert hook.requests >= 1
    assert _stored_steps(callback.config.store_url, callback.run_id) == EXPECTED_STEPS
    with RunStore(callback.config.store_url) as store:
        assert "BaseSAETransferDegraded" in [a.name for a in store.alerts(callback.run_id)]


def test_sqlite_locked_for_the_whole_run(zoo_nano, tmp_path, fault_free, caplog):
    db = tmp_path / "runs.db"
    RunStore(f"sqlite:///{db}").close()
    blocker = sqlite3.connect(db, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with caplog.at_level(logging.WARNING):
            callback = _train(zoo_nano, tmp_path)
    finally:
        blocker.rollback()
        blocker.close()
    _assert_bounded(callback, "sqlite locked", fault_free)
    assert "runs import" in caplog.text and str(_journal(callback)) in caplog.text
    events = read_journal(_journal(callback))
    assert sorted(e.data["step"] for e in events if e.kind == "evaluation") == EXPECTED_STEPS
    _import(_journal(callback), f"sqlite:///{db}")
    assert _stored_steps(f"sqlite:///{db}", callback.run_id) == EXPECTED_STEPS
    with RunStore(f"sqlite:///{db}") as store:
        assert store.get_run(callback.run_id).status == "finished"
    _import(_journal(callback), f"sqlite:///{db}")  # importing again adds nothing
    with RunStore(f"sqlite:///{db}") as store:
        assert len(store.evaluations(callback.run_id)) == len(EXPECTED_STEPS)


def test_store_down_at_attach_is_a_warning_and_a_later_process_replays(zoo_nano, tmp_path, caplog):
    from servers import free_port

    down = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    with caplog.at_level(logging.WARNING):
        callback = _train(zoo_nano, tmp_path, store_url=down)
    assert "unavailable" in caplog.text
    journal = _journal(callback)
    _import(journal, f"sqlite:///{tmp_path}/later.db")
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


def test_postgres_frozen_mid_run(zoo_nano, tmp_path, postgres_url, fault_free):
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
    _assert_bounded(callback, "postgres frozen (SIGSTOP)", fault_free)
    journal = _journal(callback)
    assert sorted(e.data["step"] for e in read_journal(journal) if e.kind == "evaluation") == EXPECTED_STEPS
    _import(journal, url)
    assert _stored_steps(url, callback.run_id) == EXPECTED_STEPS


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs filled to the last byte (skipped where mounting is not allowed)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        handle = open(mount_point / "filler", "wb", buffering=0)  # noqa: SIM115
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass
        finally:
            handle.close()
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_full_disk_under_the_store_keeps_everything_in_the_journal(zoo_nano, tmp_path, full_disk, fault_free):
    url = f"sqlite:///{full_disk}/runs.db"
    callback = _train(zoo_nano, tmp_path, store_url=url)
    _assert_bounded(callback, "disk full under the store", fault_free)
    _import(_journal(callback), f"sqlite:///{tmp_path}/elsewhere.db")
    assert _stored_steps(f"sqlite:///{tmp_path}/elsewhere.db", callback.run_id) == EXPECTED_STEPS


def test_full_disk_under_journal_and_store_rescues_to_a_fallback(zoo_nano, tmp_path, full_disk, monkeypatch, caplog):
    fallback = tmp_path / "fallback"
    monkeypatch.setattr(session_module, "FALLBACK_JOURNAL_DIR", fallback)
    with caplog.at_level(logging.WARNING):
        callback = _train(zoo_nano, tmp_path, store_url=f"sqlite:///{full_disk}/runs.db", output_dir=full_disk / "out")
    assert "cannot write the run journal" in caplog.text
    (rescued,) = fallback.glob("journal-*.jsonl")
    assert f"wrote {len(read_journal(rescued))} event(s)" in caplog.text and str(rescued) in caplog.text
    _import(rescued, f"sqlite:///{tmp_path}/elsewhere.db")
    assert _stored_steps(f"sqlite:///{tmp_path}/elsewhere.db", callback.run_id) == EXPECTED_STEPS


@pytest.mark.parametrize("name", ["team/exp1", "../../etc/x"])
def test_run_names_never_escape_the_output_folder(zoo_nano, tmp_path, name):
    callback = _train(zoo_nano, tmp_path, run_name=name)
    journal = _journal(callback)
    assert journal.parent == tmp_path / "out" / "featuredrift"
    assert sorted(p.name for p in journal.parent.iterdir())[0].startswith("journal-")
    with RunStore(callback.config.store_url) as store:
        assert store.recorded_steps(name) == EXPECTED_STEPS  # found by its display name
        assert store.get_run(callback.run_id).extra["display_name"] == name
