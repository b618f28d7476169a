"""Exporters against real servers: Pushgateway → Prometheus, a gateway that is down or hangs,
replay after an outage, group deletion, and the in-process /metrics endpoint."""

from __future__ import annotations

import base64
import socket
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from prometheus_client.parser import text_string_to_metric_families
from servers import free_port, http_get
from test_store import make_report

from featuredrift.exporters import (
    MetricsEndpointExporter,
    NullExporter,
    PushgatewayExporter,
    make_exporter,
)
from featuredrift.monitor.config import MonitorConfig

GAP = 'featuredrift_refusal_feature_gap{{run="{run}",layer="layers.1",features="reference"}}'


def single_value(result: list[dict]) -> float | None:
    return float(result[0]["value"][1]) if len(result) == 1 else None


def value_is(expected: float):
    return lambda result: single_value(result) is not None and abs(single_value(result) - expected) < 1e-9


def wait_until(condition, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def hanging_gateway():
    """A socket that accepts connections (via the kernel backlog) but never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.mark.servers
@pytest.mark.slow
def test_pushed_metrics_reach_prometheus(pushgateway, prometheus_factory):
    prometheus = prometheus_factory([pushgateway.url])
    exporter = PushgatewayExporter(pushgateway.url, job="fd-test", run="push-visible", timeout_s=2.0)
    before = time.time()
    exporter.submit(make_report(5))
    result = prometheus.wait_for(GAP.format(run="push-visible"), value_is(0.9))
    assert result[0]["metric"]["job"] == "fd-test"  # honor_labels keeps the pushed job
    assert single_value(prometheus.wait_for('featuredrift_global_step{run="push-visible"}', value_is(5.0))) == 5.0
    assert single_value(prometheus.query('featuredrift_evaluations_total{run="push-visible"}')) == 1.0
    assert single_value(prometheus.query('featuredrift_export_failures_total{run="push-visible"}')) == 0.0
    last_success = single_value(prometheus.query('featuredrift_last_success_timestamp_seconds{run="push-visible"}'))
    assert before <= last_success <= time.time()
    fvu = prometheus.query('featuredrift_fvu_ratio{run="push-visible"}')
    assert {(r["metric"]["layer"], r["metric"]["model"], r["metric"]["data"]) for r in fvu} == {
        (layer, model, data) for layer in ("layers.1", "layers.3")
        for model in ("reference", "current") for data in ("base", "chat")
    }
    assert exporter.failures == 0 and exporter.delivered == 1
    exporter.close(timeout=5)


@pytest.fixture
def answering_gateway():
    """A gateway on loopback that accepts every push at once: the fault-free baseline."""

    class Accept(BaseHTTPRequestHandler):
        def _answer(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_PUT = do_POST = do_DELETE = _answer  # noqa: N815

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Accept)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def submit_and_close(url: str, reports: int, close_timeout: float, **options) -> tuple[float, float, PushgatewayExporter]:
    """(longest submit, close) of an exporter to `url`, and the exporter."""
    exporter = PushgatewayExporter(url, run="stall", **options)
    latencies = []
    for step in range(reports):
        start = time.perf_counter()
        exporter.submit(make_report(step))
        latencies.append(time.perf_counter() - start)
    wait_until(lambda: exporter.failures >= 2 or exporter.delivered >= 1, what="a push attempt")
    start = time.perf_counter()
    exporter.close(timeout=close_timeout)
    return max(latencies), time.perf_counter() - start, exporter


@pytest.mark.parametrize("fault", ["hanging", "refused"])
def test_a_failing_gateway_adds_no_stall_to_submit_and_close_keeps_its_timeout(fault, hanging_gateway,
                                                                               answering_gateway):
    """The stall a hanging or refusing gateway adds over an answering one, measured in the same
    test: none to `submit` (it only queues), at most the close timeout to `close`."""
    options = dict(timeout_s=0.3, buffer_size=8, backoff_initial_s=0.05, backoff_max_s=0.1)
    url = hanging_gateway if fault == "hanging" else f"http://127.0.0.1:{free_port()}"
    submit_ok, close_ok, _ = submit_and_close(answering_gateway, 50, 1.0, **options)
    submit_bad, close_bad, exporter = submit_and_close(url, 50, 1.0, **options)
    print(f"{fault} gateway adds {(submit_bad - submit_ok) * 1e3:+.2f} ms to the longest submit "
          f"and {close_bad - close_ok:+.2f} s to close (timeout 1.0 s)")
    assert submit_bad - submit_ok < MonitorConfig().telemetry_budget_s
    assert close_bad - close_ok < 1.0 + MonitorConfig().telemetry_budget_s
    assert exporter.pending == 8 and exporter.dropped == 50 - 8 and exporter.delivered == 0
    exporter.submit(make_report(51))  # after close: dropped, not raised
    assert exporter.dropped == 50 - 8 + 1


@pytest.mark.servers
@pytest.mark.slow
def test_buffer_is_replayed_when_the_gateway_comes_back(pushgateway_factory, prometheus_factory):
    port = free_port()
    gateway_url = f"http://127.0.0.1:{port}"
    exporter = PushgatewayExporter(gateway_url, run="replayed", timeout_s=0.5,
                                   backoff_initial_s=0.05, backoff_max_s=0.3)
    for step in range(1, 6):
        exporter.submit(make_report(step))
    wait_until(lambda: exporter.failures >= 1, what="a failed push while the gateway is down")
    assert exporter.pending == 5
    pushgateway_factory(port)  # the gateway comes back on the same address
    prometheus = prometheus_factory([gateway_url])
    wait_until(lambda: exporter.pending == 0, what="the buffer to drain")
    assert exporter.delivered == 5
    prometheus.wait_for('featuredrift_global_step{run="replayed"}', value_is(5.0))
    assert single_value(prometheus.query('featuredrift_evaluations_total{run="replayed"}')) == 5.0
    failures = single_value(prometheus.query('featuredrift_export_failures_total{run="replayed"}'))
    assert failures is not None and 1 <= failures <= exporter.failures
    exporter.close(timeout=5, keep_group=True)


@pytest.mark.servers
def test_group_deleted_on_close_unless_kept(pushgateway):
    def runs_on_gateway() -> set[str]:
        return {group["labels"].get("run") for group in pushgateway.groups()}

    deleted = PushgatewayExporter(pushgateway.url, run="delete-me", timeout_s=2.0)
    kept = PushgatewayExporter(pushgateway.url, run="keep-me", timeout_s=2.0, delete_on_close=False)
    for exporter in (deleted, kept):
        exporter.submit(make_report(3))
    wait_until(lambda: {"delete-me", "keep-me"} <= runs_on_gateway(), what="both groups on the gateway")
    deleted.close(timeout=5)
    kept.close(timeout=5)
    groups = runs_on_gateway()
    assert "delete-me" not in groups and "keep-me" in groups
    assert deleted.failures == 0 and kept.failures == 0


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_endpoint_serves_the_latest_report():
    with MetricsEndpointExporter(0, run="local") as exporter:
        assert exporter.port > 0 and exporter.url.endswith(f":{exporter.port}/metrics")
        before = scrape(exporter.url)
        assert before[("featuredrift_evaluations_total", (("run", "local"),))] == 0.0
        assert not any(name == "featuredrift_global_step" for name, _ in before)
        exporter.submit(make_report(4))
        exporter.submit(make_report(8))
        samples = scrape(exporter.url)
        key = ("featuredrift_refusal_feature_gap", (("features", "reference"), ("layer", "layers.1"), ("run", "local")))
        assert samples[key] == pytest.approx(1.0 - 0.02 * 8)
        assert samples[("featuredrift_global_step", (("run", "local"),))] == 8.0
        assert samples[("featuredrift_evaluations_total", (("run", "local"),))] == 2.0
        expected = {(s.name, tuple(sorted({**s.labels, "run": "local"}.items()))): s.value
                    for s in make_report(8).metric_samples()}
        assert {k: v for k, v in samples.items() if k in expected} == expected


def test_metrics_endpoint_close_does_not_wait_for_the_server_poll():
    """The endpoint's HTTP server notices a shutdown at its next poll (every 0.5 s): a close
    with no time left returns at once, and the endpoint still stops serving."""
    exporter = MetricsEndpointExporter(0, run="closing")
    assert http_get(exporter.url)[0] == 200
    time.sleep(0.3)  # between two polls of the server loop
    start = time.perf_counter()
    exporter.close(timeout=0.0)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.1, f"close(timeout=0) waited {elapsed:.2f}s for the server's poll"

    def refused() -> bool:
        try:
            http_get(exporter.url, timeout=0.5)
        except OSError:
            return True
        return False

    wait_until(refused, timeout=5, what="the endpoint to stop serving")


@pytest.mark.servers
@pytest.mark.slow
def test_metrics_endpoint_is_scraped_by_prometheus(prometheus_factory):
    with MetricsEndpointExporter(0, run="scraped") as exporter:
        exporter.submit(make_report(6))
        prometheus = prometheus_factory([exporter.url])
        prometheus.wait_for(GAP.format(run="scraped"), value_is(1.0 - 0.02 * 6))


def test_make_exporter_picks_by_config(monkeypatch):
    for name in ("FEATUREDRIFT_PUSHGATEWAY_URL", "FEATUREDRIFT_METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)
    pushing = make_exporter(MonitorConfig(pushgateway_url=f"http://127.0.0.1:{free_port()}", export_timeout_s=0.2,
                                          export_buffer_size=4, keep_group_on_end=True), run="r")
    assert isinstance(pushing, PushgatewayExporter)
    assert (pushing.timeout_s, pushing.delete_on_close, pushing.grouping_key) == (0.2, False, {"run": "r"})
    pushing.close(timeout=0.1)
    assert isinstance(make_exporter(MonitorConfig(metrics_port=-1), run="r"), NullExporter)
    with make_exporter(MonitorConfig(metrics_port=0), run="r") as first:
        assert isinstance(first, MetricsEndpointExporter)
        # A port already taken (a second job on the same machine) falls back to a free one.
        with make_exporter(MonitorConfig(metrics_port=first.port), run="r2") as second:
            assert isinstance(second, MetricsEndpointExporter) and second.port != first.port
            second.submit(make_report(1))
            assert scrape(second.url)[("featuredrift_global_step", (("run", "r2"),))] == 1.0


def test_pushgateway_credentials_from_environment(monkeypatch):
    """Basic auth from FEATUREDRIFT_PUSHGATEWAY_* reaches the server on every push."""
    seen: list[tuple[str, str, str | None]] = []

    class Recorder(BaseHTTPRequestHandler):
        def do_PUT(self):  # noqa: N802 - http.server naming
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append((self.command, self.path, self.headers.get("Authorization")))
            self.send_response(200)
            self.end_headers()

        do_DELETE = do_PUT

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("FEATUREDRIFT_PUSHGATEWAY_USERNAME", "trainer")
    monkeypatch.setenv("FEATUREDRIFT_PUSHGATEWAY_PASSWORD", "pa:ss")
    try:
        exporter = PushgatewayExporter(f"http://127.0.0.1:{server.server_port}", job="j", run="auth", timeout_s=2)
        exporter.submit(make_report(2))
        exporter.close(timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    token = "Basic " + base64.b64encode(b"trainer:pa:ss").decode()
    assert seen == [("PUT", "/metrics/job/j/run/auth", token), ("DELETE", "/metrics/job/j/run/auth", token)]


def test_every_series_has_real_help_and_the_endpoint_binds_the_configured_address():
    from reports import make_report

    from featuredrift.exporters.factory import make_exporter
    from featuredrift.monitor.config import MonitorConfig

    report = make_report(7)
    with make_exporter(MonitorConfig(metrics_port=0, metrics_address="0.0.0.0"), run="pod") as exporter:
        assert exporter.addr == "0.0.0.0"
        exporter.submit(report)
        status, body = http_get(f"http://127.0.0.1:{exporter.port}/metrics")
    assert status == 200
    helps = dict(line.split(" ", 3)[2:] for line in body.decode().splitlines() if line.startswith("# HELP"))
    emitted = {s.name for s in report.metric_samples()}
    assert emitted <= set(helps)
    assert not [name for name, text in helps.items() if "evaluation metric" in text or len(text) < 15]
