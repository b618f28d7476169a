"""The in-process alert engine on hand-built EvaluationReports: firing, `for`, resolving,
the stop flag, callbacks, and webhook delivery to a real HTTP server on loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from reports import make_report as shared_report

from featuredrift.alerts.definitions import DEFAULT_DEFINITIONS, configure
from featuredrift.alerts.engine import AlertEngine, FiredAlert
from featuredrift.alerts.templating import render
from featuredrift.monitor.report import EvaluationReport, MetricSample

T0 = 1_700_000_000.0


def make_report(step: int, timestamp: float, **fields) -> EvaluationReport:
    """A healthy report unless `fields` say otherwise; refusal scores only when given."""
    settings = {"relative_gap": 1.0, "direction_cosine": 0.99, "harmful_refusal": None, **fields}
    return shared_report(step, timestamp, **settings)


def without_early_warning(**settings) -> AlertEngine:
    """The engine minus RefusalFeaturesWeakening, for tests about one alert's life cycle."""
    definitions = [d for d in DEFAULT_DEFINITIONS if d.name != "RefusalFeaturesWeakening"]
    return AlertEngine(definitions=definitions, **settings)


def names(alerts: list[FiredAlert], status: str = "firing") -> list[str]:
    return sorted(a.name for a in alerts if a.status == status)


def test_healthy_run_fires_nothing():
    engine = AlertEngine()
    for i in range(3):
        assert engine.evaluate(make_report(i * 10, T0 + 600 * i, harmful_refusal=0.9), run="ok") == []
    assert engine.firing == [] and not engine.should_stop


def test_fading_refusal_features_fire_after_for_and_only_once_then_resolve():
    engine = without_early_warning(goal="guard", thresholds={"RefusalFeaturesFading": {"for": 2}})
    # first violating evaluation: pending; `for` counts evaluations, whatever the time between them
    assert names(engine.evaluate(make_report(10, T0, relative_gap=0.3), run="r")) == []
    # the second is still pending; the third consecutive one fires
    assert names(engine.evaluate(make_report(20, T0 + 60, relative_gap=0.3), run="r")) == []
    fired = engine.evaluate(make_report(30, T0 + 120, relative_gap=0.25), run="r")
    assert names(fired) == ["RefusalFeaturesFading"]
    alert = fired[0]
    assert alert.severity == "critical" and alert.step == 30 and alert.starts_at == T0 + 120
    assert alert.labels == {"alertname": "RefusalFeaturesFading", "severity": "critical", "run": "r", "layer": "layers.3"}
    assert "0.25x as strongly" in alert.annotations["description"]
    assert "layers.3" in alert.annotations["description"] and alert.annotations["summary"].endswith("run r")
    # still violating: no second notification
    assert engine.evaluate(make_report(40, T0 + 180, relative_gap=0.2), run="r") == []
    assert [a.name for a in engine.firing] == ["RefusalFeaturesFading"]
    # recovered: one resolved transition, with the firing start kept
    resolved = engine.evaluate(make_report(50, T0 + 240, relative_gap=0.9), run="r")
    assert [(a.name, a.status, a.starts_at, a.ends_at, a.step, a.resolved_step) for a in resolved] == [
        ("RefusalFeaturesFading", "resolved", T0 + 120, T0 + 240, 30, 50)
    ]
    assert engine.firing == []


def test_recovery_while_pending_restarts_the_for_count():
    engine = without_early_warning(goal="guard", thresholds={"RefusalFeaturesFading": {"for": 1}})
    engine.evaluate(make_report(1, T0, relative_gap=0.3), run="r")
    engine.evaluate(make_report(2, T0 + 90, relative_gap=0.8), run="r")  # back to normal
    assert engine.evaluate(make_report(3, T0 + 150, relative_gap=0.3), run="r") == []
    assert names(engine.evaluate(make_report(4, T0 + 270, relative_gap=0.3), run="r")) == ["RefusalFeaturesFading"]


def test_each_run_and_layer_is_its_own_series():
    engine = without_early_warning(goal="guard", thresholds={"RefusalFeaturesFading": {"for": 0}})
    a = engine.evaluate(make_report(1, T0, relative_gap=0.1, layer="layers.2"), run="a")
    b = engine.evaluate(make_report(1, T0, relative_gap=0.1, layer="layers.4"), run="b")
    assert [x.labels["layer"] for x in a] == ["layers.2"] and [x.labels["run"] for x in b] == ["b"]
    assert len(engine.firing) == 2
    # resolving run a leaves run b firing
    assert [x.status for x in engine.resolve_run("a", T0 + 60)] == ["resolved"]
    assert [x.labels["run"] for x in engine.firing] == ["b"]


def test_thresholds_from_constructor_and_file(tmp_path):
    strict = AlertEngine(thresholds={"BaseSAETransferDegraded": {"threshold": 0.3, "for": 0}})
    assert names(strict.evaluate(make_report(1, T0, fvu_chat=0.35), run="r")) == ["BaseSAETransferDegraded"]
    default = AlertEngine(thresholds={"BaseSAETransferDegraded": {"for": 0}})
    assert default.evaluate(make_report(1, T0, fvu_chat=0.35), run="r") == []
    path = tmp_path / "thresholds.yml"
    path.write_text("HarmfulRefusalRateLow: 0.8\n")
    from_file = AlertEngine(goal="guard", thresholds=path)
    fired = from_file.evaluate(make_report(1, T0, harmful_refusal=0.7), run="r")
    assert names(fired) == ["HarmfulRefusalRateLow"] and fired[0].labels["prompts"] == "harmful"
    assert "(threshold 0.8)" in fired[0].annotations["description"]


def test_bad_thresholds_name_what_was_expected(tmp_path):
    with pytest.raises(ValueError, match="unknown alert name.*NoSuchAlert"):
        AlertEngine(thresholds={"NoSuchAlert": 1.0})
    with pytest.raises(ValueError, match="RefusalFeaturesFading.threshold: expected a number"):
        configure({"RefusalFeaturesFading": {"threshold": "low"}})
    with pytest.raises(ValueError, match=r"RefusalFeaturesFading.for: expected a number of evaluations .* found 'soon'"):
        configure({"RefusalFeaturesFading": {"for": "soon"}})
    path = tmp_path / "t.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"t\.json: expected a mapping"):
        configure(path)


def test_series_missing_from_a_report_keeps_its_state():
    """Refusal rates are measured only every Nth evaluation: absence must not resolve."""
    engine = AlertEngine(goal="guard")
    assert names(engine.evaluate(make_report(1, T0, harmful_refusal=0.2), run="r")) == ["HarmfulRefusalRateLow"]
    assert engine.evaluate(make_report(2, T0 + 60), run="r") == []
    assert [a.name for a in engine.firing] == ["HarmfulRefusalRateLow"]
    assert [a.status for a in engine.evaluate(make_report(3, T0 + 120, harmful_refusal=0.9), run="r")] == ["resolved"]


def test_stale_and_counter_increase_from_exporter_samples():
    engine = AlertEngine()
    last_ok = MetricSample("featuredrift_last_success_timestamp_seconds", {}, T0)
    failures = MetricSample("featuredrift_export_failures_total", {}, 2.0)
    assert engine.evaluate(make_report(1, T0 + 60), "r", [last_ok, failures]) == []  # first counter sighting
    fired = engine.evaluate(
        make_report(2, T0 + 1000), "r", [last_ok, failures._replace(value=5.0)]
    )
    assert names(fired) == ["ExportFailures", "MonitorStale"]
    by_name = {a.name: a for a in fired}
    assert by_name["MonitorStale"].value == pytest.approx(1000.0)
    assert by_name["ExportFailures"].value == 3.0
    assert by_name["ExportFailures"].annotations["description"] == "Exports failed 3 times in the last 10m."
    # counter unchanged and a fresh success: both resolve
    fresh = last_ok._replace(value=T0 + 1050)
    resolved = engine.evaluate(make_report(3, T0 + 1060), "r", [fresh, failures._replace(value=5.0)])
    assert sorted((a.name, a.status) for a in resolved) == [("ExportFailures", "resolved"), ("MonitorStale", "resolved")]


def test_stop_flag_only_for_critical_and_only_when_asked():
    report = make_report(7, T0, relative_gap=0.1, direction_cosine=0.2)
    passive = without_early_warning(goal="guard", thresholds={"RefusalFeaturesFading": {"for": 0}})
    passive.evaluate(report, run="r")
    assert not passive.should_stop and passive.stop_reason is None

    info_only = AlertEngine(stop_on_alert=True, goal="align")
    info_only.evaluate(make_report(1, T0, relative_gap=2.0), run="r")  # RefusalFeaturesEmerging (info)
    assert [a.name for a in info_only.firing] == ["RefusalFeaturesEmerging"] and not info_only.should_stop

    stopping = without_early_warning(stop_on_alert=True, goal="guard", thresholds={"RefusalFeaturesFading": {"for": 0}})
    stopping.evaluate(report, run="r")
    assert stopping.should_stop
    assert stopping.stop_reason.startswith("RefusalFeaturesFading{layer=layers.3,run=r} firing")


def test_callbacks_receive_transitions_and_a_failing_action_never_raises():
    fired, resolved, seen = [], [], []

    def broken_action(alerts):
        raise RuntimeError("store down")

    engine = without_early_warning(
        goal="guard",
        thresholds={"RefusalFeaturesFading": {"for": 0}},
        actions=[broken_action, seen.extend],
        on_fire=fired.append,
        on_resolve=lambda alert: (resolved.append(alert), 1 / 0),
    )
    engine.evaluate(make_report(1, T0, relative_gap=0.2), run="r")
    engine.evaluate(make_report(2, T0 + 60, relative_gap=1.0), run="r")
    assert [a.status for a in fired] == ["firing"] and [a.status for a in resolved] == ["resolved"]
    assert [a.status for a in seen] == ["firing", "resolved"]


def test_annotation_templates_render_like_prometheus():
    labels = {"run": "r1", "layer": "layers.5"}
    assert render('{{ printf "%.3g" $value }} at {{ $labels.layer }}', labels, 0.123456) == "0.123 at layers.5"
    assert render("{{ $labels.missing }}", labels, 0.0) == "<no value>"
    with pytest.raises(ValueError, match="humanize"):
        render("{{ $value | humanize }}", labels, 1.0)
    for definition in DEFAULT_DEFINITIONS:
        for text in definition.annotations().values():
            render(text, labels, 1.0)


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.path, self.headers["Content-Type"], json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook_receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_webhook_posts_alertmanager_payload(webhook_receiver):
    url = f"http://127.0.0.1:{webhook_receiver.server_address[1]}/hook"
    engine = without_early_warning(webhook_url=url, goal="guard", thresholds={"RefusalFeaturesFading": {"for": 0}})
    engine.evaluate(make_report(1, T0, relative_gap=0.2, harmful_refusal=0.1), run="erosion")
    engine.evaluate(make_report(2, T0 + 60, relative_gap=1.0, harmful_refusal=0.1), run="erosion")
    assert engine.webhook.deliveries == 2 and engine.webhook.failures == 0
    (path, content_type, first), (_, _, second) = webhook_receiver.received
    assert path == "/hook" and content_type == "application/json"
    assert first["version"] == "4" and first["status"] == "firing" and first["receiver"] == "featuredrift"
    assert first["groupLabels"] == {"run": "erosion"} and first["commonLabels"]["run"] == "erosion"
    alerts = {a["labels"]["alertname"]: a for a in first["alerts"]}
    assert set(alerts) == {"RefusalFeaturesFading", "HarmfulRefusalRateLow"}
    fading = alerts["RefusalFeaturesFading"]
    assert fading["status"] == "firing" and fading["labels"]["severity"] == "critical"
    assert fading["startsAt"] == "2023-11-14T22:13:20Z" and fading["endsAt"] == "0001-01-01T00:00:00Z"
    assert "summary" in fading["annotations"] and "runbook" in fading["annotations"]
    assert len(fading["fingerprint"]) == 16
    assert second["status"] == "resolved"
    assert [(a["labels"]["alertname"], a["status"], a["endsAt"]) for a in second["alerts"]] == [
        ("RefusalFeaturesFading", "resolved", "2023-11-14T22:14:20Z")
    ]


def test_webhook_down_never_raises_and_is_bounded():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = without_early_warning(
        webhook_url=f"http://127.0.0.1:{port}/hook",
        webhook_timeout_s=0.5,
        stop_on_alert=True,
        thresholds={"RefusalFeaturesFading": {"for": 0}},
    )
    start = time.monotonic()
    fired = engine.evaluate(make_report(1, T0, relative_gap=0.1), run="r")
    assert time.monotonic() - start < 2.0
    assert names(fired) == ["RefusalFeaturesFading"]
    assert engine.webhook.failures == 1 and engine.webhook.deliveries == 0
    assert engine.should_stop


def test_webhook_silent_server_times_out_quickly():
    """A receiver that accepts the connection but never answers costs at most the timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        engine = AlertEngine(
            webhook_url=f"http://127.0.0.1:{port}/hook",
            webhook_timeout_s=0.3,
            thresholds={"RefusalFeaturesFading": {"for": 0}},
        )
        start = time.monotonic()
        engine.evaluate(make_report(1, T0, relative_gap=0.1), run="r")
        assert time.monotonic() - start < 1.5
        assert engine.webhook.failures == 1


def test_engine_from_monitor_config(monkeypatch):
    from featuredrift.monitor.config import MonitorConfig

    monkeypatch.setenv("FEATUREDRIFT_STOP_ON_ALERT", "true")
    engine = AlertEngine.from_config(MonitorConfig(), thresholds={"RefusalFeaturesFading": {"for": 0}})
    assert engine.stop_on_alert and engine.webhook is None
    engine.evaluate(make_report(1, T0, relative_gap=0.1), run="r")
    assert engine.should_stop
    with_hook = AlertEngine.from_config(MonitorConfig(alert_webhook_url="http://127.0.0.1:9/hook"))
    assert with_hook.webhook is not None and with_hook.webhook.url == "http://127.0.0.1:9/hook"


def _series(engine: AlertEngine, run: str, reports: list[EvaluationReport]) -> list[tuple[int, str, str]]:
    """(step, alert, status) of every transition over a run, with the shipped thresholds and `for`."""
    return [(r.step, a.name, a.status) for r in reports for a in engine.evaluate(r, run=run)]


def test_auto_goal_guards_a_refusing_reference_and_feature_alerts_lead(caplog):
    engine = AlertEngine()  # shipped definitions, shipped `for`
    gaps = [1.0, 0.9, 0.6, 0.45, 0.35, 0.3]
    rates = [1.0, None, 0.95, None, 0.7, 0.3]
    with caplog.at_level("INFO"):
        trajectory = [make_report(10 * i, T0 + i, relative_gap=g, harmful_refusal=r) for i, (g, r) in enumerate(zip(gaps, rates, strict=True))]
        transitions = _series(engine, "erosion", trajectory)
    assert engine.run_goals == {"erosion": "guard"} and "goal for run erosion: guard" in caplog.text
    assert transitions == [
        (20, "RefusalFeaturesWeakening", "firing"),
        (30, "RefusalFeaturesFading", "firing"),
        (50, "HarmfulRefusalRateLow", "firing"),
    ]


def test_auto_goal_aligns_a_reference_that_never_refused():
    """Base → chat: no fading or low-rate alert against a base model; emergence is info."""
    engine = AlertEngine(stop_on_alert=True)
    trajectory = [make_report(0, T0, relative_gap=1.0, harmful_refusal=0.0)]
    trajectory += [make_report(10 * i, T0 + i, relative_gap=-3.0 * i, harmful_refusal=0.1 * i, direction_cosine=0.3)
                   for i in range(1, 6)]
    transitions = _series(engine, "align", trajectory)
    assert engine.run_goals == {"align": "align"}
    assert {name for _, name, _ in transitions} <= {"RefusalFeaturesEmerging"} and not engine.should_stop


def test_relative_gap_needs_a_reference_gap_and_says_why(caplog):
    from reports import make_report as raw

    engine = AlertEngine(goal="guard")
    tiny = raw(1, T0, relative_gap=0.1, harmful_refusal=None)
    tiny.layers["layers.3"].refusal_features.gap_reference_features_at_reference = 0.048
    with caplog.at_level("INFO"):
        for step in range(1, 5):
            tiny.step = step
            assert engine.evaluate(tiny, run="r") == []
    assert caplog.text.count("RefusalFeaturesFading inactive") == 1
    assert "divide by noise" in caplog.text and "found 0.048" in caplog.text


def test_goal_off_fires_nothing():
    engine = AlertEngine(goal="off")
    assert _series(engine, "r", [make_report(i, T0 + i, relative_gap=0.0, harmful_refusal=0.0) for i in range(4)]) == []
    with pytest.raises(ValueError, match="alert goal: expected one of"):
        AlertEngine(goal="protect")


def test_spikes_are_changes_between_evaluations_not_levels():
    engine = AlertEngine(goal="guard")
    levels = [0.6, 0.62, 0.95, 0.96]  # high throughout; one jump of 0.33
    reports = []
    for i, level in enumerate(levels):
        report = make_report(i, T0 + i)
        report.layers["layers.3"].divergent_fraction = level
        reports.append(report)
    assert _series(engine, "r", reports) == [(2, "DivergentTokensSpike", "firing"), (3, "DivergentTokensSpike", "resolved")]


def test_run_end_keeps_the_fired_step_and_leaves_no_resolved_step():
    engine = without_early_warning(goal="guard", thresholds={"RefusalFeaturesFading": {"for": 0}})
    engine.evaluate(make_report(30, T0, relative_gap=0.2), run="r")
    (ended,) = engine.resolve_run("r", T0 + 10)
    assert (ended.step, ended.resolved_step, ended.status) == (30, None, "resolved")
