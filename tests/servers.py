"""Real servers on loopback for tests: Pushgateway, Prometheus, Alertmanager, PostgreSQL.

Each starts the Debian binary on a free port with its own temp dir, waits until it answers,
and is stopped at the end of the session. Fixtures skip (with the binary's name) only when
the binary is not installed; CI installs all of them.

Register with `from servers import *` in tests/conftest.py (or import the fixtures you need).
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "alertmanager",
    "alertmanager_factory",
    "postgres_url",
    "prometheus_factory",
    "pushgateway",
    "pushgateway_factory",
]

READY_TIMEOUT_S = 60.0
# Loopback only: never route test traffic through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (expected on PATH; Debian package of the same name)")
    return path


@dataclass
class ServerProcess:
    """A started server: its process, base URL, working dir and log file."""

    name: str
    url: str
    port: int
    workdir: Path
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_process(name: str, argv: list[str], url: str, port: int, workdir: Path, ready_path: str) -> ServerProcess:
    """Start `argv`, wait until GET url+ready_path answers 200, or fail with the server's log."""
    log_path = workdir / f"{name}.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - the server owns it until it exits
    process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=workdir)
    server = ServerProcess(name, url, port, workdir, process, log_path)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode} at start:\n{server.log_tail()}")
        try:
            status, _ = http_get(url + ready_path, timeout=1.0)
            if status == 200:
                return server
        except OSError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{name} not ready at {url}{ready_path} after {READY_TIMEOUT_S}s:\n{server.log_tail()}")


def _tracked_servers() -> tuple[list[ServerProcess], Callable[[], None]]:
    started: list[ServerProcess] = []

    def stop_all() -> None:
        for server in reversed(started):
            server.stop()

    return started, stop_all


# ---- Pushgateway -----------------------------------------------------------------------


@dataclass
class Pushgateway(ServerProcess):
    def metrics_text(self) -> str:
        status, body = http_get(self.url + "/metrics")
        assert status == 200, f"pushgateway /metrics answered {status}"
        return body.decode()

    def groups(self) -> list[dict[str, Any]]:
        """The pushed groups (`GET /api/v1/metrics`): each with its grouping labels."""
        status, body = http_get(self.url + "/api/v1/metrics")
        assert status == 200, f"pushgateway /api/v1/metrics answered {status}"
        return json.loads(body)["data"]


def _start_pushgateway(binary: str, workdir: Path, port: int | None = None) -> Pushgateway:
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_process(
        "pushgateway", [binary, f"--web.listen-address=127.0.0.1:{port}"], url, port, workdir, "/-/ready"
    )
    return Pushgateway(**vars(server))


@pytest.fixture(scope="session")
def pushgateway_factory(tmp_path_factory) -> Iterator[Callable[..., Pushgateway]]:
    """`start(port=None)`: a new Pushgateway (on `port`, e.g. one a test kept down until now)."""
    binary = require_binary("prometheus-pushgateway")
    started, stop_all = _tracked_servers()

    def start(port: int | None = None) -> Pushgateway:
        server = _start_pushgateway(binary, tmp_path_factory.mktemp("pushgateway"), port)
        started.append(server)
        return server

    yield start
    stop_all()


@pytest.fixture(scope="session")
def pushgateway(pushgateway_factory) -> Pushgateway:
    """One Pushgateway shared by the session; tests use distinct run names as groups."""
    return pushgateway_factory()


# ---- Prometheus --------------------------------------------------------------------------


def _scrape_target(target: str) -> tuple[str, str, str]:
    """'host:port' or 'http://host:port/path' → (scheme, host:port, metrics path)."""
    if "://" not in target:
        return "http", target, "/metrics"
    parsed = urllib.parse.urlparse(target)
    return parsed.scheme, parsed.netloc, parsed.path or "/metrics"


@dataclass
class Prometheus(ServerProcess):
    config: dict[str, Any] = field(default_factory=dict)

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        status, body = http_get(url)
        payload = json.loads(body)
        if status != 200 or payload.get("status") != "success":
            raise AssertionError(f"prometheus {path} {params}: HTTP {status}: {payload}")
        return payload["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; returns `data.result` (a list of {metric, value})."""
        return self.api("query", query=promql)["result"]

    def wait_for(
        self,
        promql: str,
        predicate: Callable[[list[dict[str, Any]]], bool] = bool,
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Poll `promql` until `predicate(result)` holds; fail with the last result otherwise."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(promql)
            if predicate(result):
                return result
            time.sleep(0.25)
        raise AssertionError(f"prometheus: {promql!r} did not satisfy the condition in {timeout}s; last: {result}")

    def targets(self) -> list[dict[str, Any]]:
        return self.api("targets")["activeTargets"]

    def rules(self) -> list[dict[str, Any]]:
        return self.api("rules")["groups"]

    def alerts(self) -> list[dict[str, Any]]:
        return self.api("alerts")["alerts"]


def prometheus_config(
    targets: list[str],
    rule_files: list[str | Path] | None = None,
    alertmanager_url: str | None = None,
    interval: str = "1s",
) -> dict[str, Any]:
    scrape_configs = []
    for index, target in enumerate(targets):
        scheme, address, path = _scrape_target(target)
        scrape_configs.append(
            {
                "job_name": f"target{index}",
                "honor_labels": True,
                "scheme": scheme,
                "metrics_path": path,
                "static_configs": [{"targets": [address]}],
            }
        )
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "scrape_configs": scrape_configs,
    }
    if rule_files:
        config["rule_files"] = [str(Path(f).resolve()) for f in rule_files]
    if alertmanager_url:
        _, address, _ = _scrape_target(alertmanager_url)
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [address]}]}]}
    return config


@pytest.fixture(scope="session")
def prometheus_factory(tmp_path_factory) -> Iterator[Callable[..., Prometheus]]:
    """`start(targets, rule_files=None, alertmanager_url=None)`: a Prometheus scraping `targets`
    ('host:port' or full /metrics URLs, `honor_labels: true`) every second."""
    binary = require_binary("prometheus")
    started, stop_all = _tracked_servers()

    def start(
        targets: list[str],
        rule_files: list[str | Path] | None = None,
        alertmanager_url: str | None = None,
    ) -> Prometheus:
        workdir = tmp_path_factory.mktemp("prometheus")
        config = prometheus_config(targets, rule_files, alertmanager_url)
        config_path = workdir / "prometheus.yml"
        config_path.write_text(json.dumps(config, indent=1))  # JSON is YAML
        port = free_port()
        server = start_process(
            "prometheus",
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            f"http://127.0.0.1:{port}",
            port,
            workdir,
            "/-/ready",
        )
        prometheus = Prometheus(**vars(server), config=config)
        started.append(prometheus)
        return prometheus

    yield start
    stop_all()


# ---- Alertmanager ------------------------------------------------------------------------


@dataclass
class Alertmanager(ServerProcess):
    def alerts(self, **filters: str) -> list[dict[str, Any]]:
        query = "?" + urllib.parse.urlencode(filters) if filters else ""
        status, body = http_get(f"{self.url}/api/v2/alerts{query}")
        assert status == 200, f"alertmanager /api/v2/alerts answered {status}: {body[:300]!r}"
        return json.loads(body)


@pytest.fixture(scope="session")
def alertmanager_factory(tmp_path_factory) -> Iterator[Callable[..., Alertmanager]]:
    """`start(config)`: an Alertmanager with `config` (a dict, YAML text or a file path);
    clustering is off."""
    binary = require_binary("prometheus-alertmanager")
    started, stop_all = _tracked_servers()

    def start(config: dict[str, Any] | str | Path) -> Alertmanager:
        workdir = tmp_path_factory.mktemp("alertmanager")
        config_path = workdir / "alertmanager.yml"
        if isinstance(config, dict):
            config_path.write_text(json.dumps(config, indent=1))
        elif isinstance(config, Path) or (isinstance(config, str) and "\n" not in config and Path(config).is_file()):
            shutil.copy(config, config_path)
        else:
            config_path.write_text(str(config))
        port = free_port()
        server = start_process(
            "alertmanager",
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            f"http://127.0.0.1:{port}",
            port,
            workdir,
            "/-/ready",
        )
        alertmanager = Alertmanager(**vars(server))
        started.append(alertmanager)
        return alertmanager

    yield start
    stop_all()


@pytest.fixture(scope="session")
def alertmanager(alertmanager_factory) -> Callable[..., Alertmanager]:
    """Same as `alertmanager_factory`: call it with the test's config."""
    return alertmanager_factory


# ---- PostgreSQL --------------------------------------------------------------------------


def postgres_bin_dir() -> Path | None:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]), reverse=True
    )
    if candidates:
        return Path(candidates[0]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _as_postgres_user(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run through `runuser` as the `postgres` system user."""
    if os.geteuid() != 0:
        return argv
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "postgres", "--", *argv]
    return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(map(_shell_quote, argv))]


def _shell_quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def _run(argv: list[str], what: str, timeout: float = 120) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}): {' '.join(argv)}\n{result.stdout}\n{result.stderr}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL cluster (trust auth, loopback, fsync off) with database `featuredrift_test`;
    yields its `postgresql+psycopg://` URL."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (package postgresql)")
    pytest.importorskip("psycopg", reason="psycopg (featuredrift[postgres]) is needed for PostgreSQL tests")
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' system user to run PostgreSQL as")
    # Under /tmp, not pytest's 0700 per-user dir: the postgres user must reach it.
    workdir = Path(tempfile.mkdtemp(prefix="featuredrift-pg-"))
    data_dir, socket_dir = workdir / "data", workdir / "socket"
    socket_dir.mkdir()
    if os.geteuid() == 0:
        for path in (workdir, socket_dir):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port = free_port()
    log_path = workdir / "postgres.log"
    pg_ctl = str(bin_dir / "pg_ctl")
    try:
        _run(_as_postgres_user([str(bin_dir / "initdb"), "-D", str(data_dir), "-A", "trust", "-U", "postgres",
                                "--no-sync", "-E", "UTF8"]), "initdb")
        options = f"-p {port} -k {socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        _run(_as_postgres_user([pg_ctl, "-D", str(data_dir), "-o", options, "-l", str(log_path), "-w", "-t", "60",
                                "start"]), "pg_ctl start")
        _run(_as_postgres_user([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                                "featuredrift_test"]), "createdb")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/featuredrift_test"
    finally:
        if (data_dir / "postmaster.pid").exists():
            subprocess.run(_as_postgres_user([pg_ctl, "-D", str(data_dir), "-m", "immediate", "-w", "stop"]),
                           capture_output=True, timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)


def create_postgres_database(server_url: str, name: str) -> str:
    """Create database `name` on the server of `server_url` (dropping an old one); returns its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    conninfo = f"host={url.host} port={url.port} user={url.username} dbname=postgres"
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        connection.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False)
