"""End to end through real servers on loopback: the Pushgateway exporter pushes a report whose
refusal features fade → Prometheus (scraping the Pushgateway, evaluating rules generated from
alerts/definitions.py) fires → Alertmanager (alerts/alertmanager.yml, receivers pointed at this
test) routes by severity → our webhook receiver; then recovery resolves it. Every Grafana
panel query is run against the same Prometheus and must return data."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from reports import make_report
from servers import alertmanager_factory, prometheus_factory, pushgateway, pushgateway_factory  # noqa: F401

from featuredrift.alerts.definitions import configure
from featuredrift.alerts.rules import render_rules
from featuredrift.dashboards.spec import DASHBOARDS, dashboard_path, panel_queries
from featuredrift.exporters.pushgateway import PushgatewayExporter
from featuredrift.monitor.report import EvaluationReport

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.servers, pytest.mark.slow]


def report(step: int, relative_gap: float, harmful_refusal: float) -> EvaluationReport:
    """As the monitor reports: with the reference's own refusals, measured at start."""
    return make_report(step, relative_gap=relative_gap, harmful_refusal=harmful_refusal,
                       reference_refusal={"harmful": 1.0, "harmless": 0.05},
                       reference_probability={"harmful": 0.9, "harmless": 0.04})


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.received.append((self.path, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    server.received, server.lock = [], threading.Lock()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def wait_for_notification(receiver, predicate, timeout: float = 45.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with receiver.lock:
            for path, payload in receiver.received:
                for alert in payload["alerts"]:
                    if predicate(path, payload, alert):
                        return path, payload, alert
        time.sleep(0.2)
    raise AssertionError(f"no matching notification in {timeout}s; received: {receiver.received}")


def alertmanager_config_for(receiver_url: str) -> dict:
    """alerts/alertmanager.yml with its receivers pointed at the test and no waiting."""
    config = yaml.safe_load((ROOT / "featuredrift" / "alerts" / "alertmanager.yml").read_text())
    for item in config["receivers"]:
        for hook in item.get("webhook_configs", []):
            hook["url"] = receiver_url + "/" + hook["url"].split("/", 3)[3]
    for route in [config["route"], *config["route"]["routes"]]:
        route["group_wait"] = "1s"
        route["group_interval"] = "1s"
    return config


def delivered(exporter: PushgatewayExporter, count: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while exporter.delivered < count:
        assert time.monotonic() < deadline, f"exporter delivered {exporter.delivered} < {count}"
        time.sleep(0.05)


def test_fading_refusal_features_reach_the_webhook_and_every_panel_has_data(
    tmp_path, pushgateway, prometheus_factory, alertmanager_factory, receiver  # noqa: F811
):
    run, calm_run = f"erosion-{uuid.uuid4().hex[:8]}", f"calm-{uuid.uuid4().hex[:8]}"
    rules = tmp_path / "rules.yml"
    rules.write_text(render_rules(configure(), cadence="2s"))  # the shipped `for`, at this test's cadence
    receiver_url = f"http://127.0.0.1:{receiver.server_address[1]}"
    alertmanager = alertmanager_factory(alertmanager_config_for(receiver_url))
    prometheus = prometheus_factory([pushgateway.url.split("://")[1]], rule_files=[rules], alertmanager_url=alertmanager.url)

    eroding = PushgatewayExporter(pushgateway.url, run=run, delete_on_close=False, timeout_s=2.0)
    calm = PushgatewayExporter(pushgateway.url, run=calm_run, delete_on_close=True, timeout_s=2.0)
    try:
        calm.submit(report(10, relative_gap=1.0, harmful_refusal=0.95))
        eroding.submit(report(10, relative_gap=0.2, harmful_refusal=0.1))
        delivered(eroding, 1)
        delivered(calm, 1)

        path, payload, alert = wait_for_notification(
            receiver,
            lambda p, body, a: a["labels"]["alertname"] == "RefusalFeaturesFading"
            and a["status"] == "firing"
            and a["labels"].get("run") == run,
        )
        assert path == "/alerts/critical"  # routed by severity
        assert payload["version"] == "4" and payload["receiver"] == "featuredrift-critical"
        assert alert["labels"] == {
            "alertname": "RefusalFeaturesFading",
            "severity": "critical",
            "job": "featuredrift",
            "run": run,
            "layer": "layers.3",
        }
        assert "0.2x as strongly" in alert["annotations"]["description"]
        wait_for_notification(
            receiver, lambda p, body, a: a["labels"]["alertname"] == "HarmfulRefusalRateLow" and a["labels"]["run"] == run
        )

        # Every panel query of every dashboard returns data from this Prometheus.
        prometheus.wait_for(f'ALERTS{{alertstate="firing", run="{run}"}}')
        prometheus.wait_for(f'increase(featuredrift_evaluations_total{{run="{run}"}}[10m])')
        for dashboard in DASHBOARDS:
            document = json.loads(dashboard_path(dashboard).read_text())
            for title, expr in panel_queries(document):
                result = prometheus.query(expr.replace("$run", ".*").replace("$layer", ".*"))
                assert result, f"{dashboard.uid} / {title}: no data for {expr}"
            for variable in document["templating"]["list"]:
                if variable["type"] != "query" or variable["datasource"]["type"] != "prometheus":
                    continue  # datasource pickers and run-store (SQL) variables
                selector = variable["query"]["query"][len("label_values(") :].rsplit(",", 1)[0]
                assert prometheus.query(selector.replace("$run", ".*")), variable["name"]

        # Recovery: the next evaluation is healthy, the alert resolves through the same path.
        eroding.submit(report(20, relative_gap=0.95, harmful_refusal=0.9))
        delivered(eroding, 2)
        _, resolved_payload, resolved = wait_for_notification(
            receiver,
            lambda p, body, a: a["labels"]["alertname"] == "RefusalFeaturesFading"
            and a["status"] == "resolved"
            and a["labels"].get("run") == run,
        )
        assert resolved["labels"]["run"] == run and resolved["endsAt"] > resolved["startsAt"]

        with receiver.lock:
            calm_alerts = [a for _, body in receiver.received for a in body["alerts"] if a["labels"].get("run") == calm_run]
        assert calm_alerts == []  # the healthy run never alerted
    finally:
        eroding.close(timeout=2.0, keep_group=False)
        calm.close(timeout=2.0)
