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

from featuredrift.alerts.definitions import DEFAULT_DEFINITIONS, AlertDefinition, configure
from featuredrift.alerts.engine import AlertEngine, FiredAlert
from featuredrift.alerts.templating import render
from featuredrift.monitor.config import MonitorConfig
from featuredrift.monitor.report import EvaluationReport, MetricSample

T0 = 1_700_000_000.0
DEFAULT = {d.name: d for d in DEFAULT_DEFINITIONS}


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


def test_fading_refusal_features_fire_once_then_resolve_keeping_the_fired_step():
    engine = without_early_warning(goal="guard")  # shipped threshold 0.6 and `for` 0
    assert DEFAULT["RefusalFeaturesFading"].for_evaluations == 0
    fired = engine.evaluate(make_report(30, T0, relative_gap=0.25), run="r")
    assert names(fired) == ["RefusalFeaturesFading"]
    alert = fired[0]
    assert alert.severity == "critical" and alert.step == 30 and alert.starts_at == T0 and alert.resolved_step is None
    assert alert.labels == {"alertname": "RefusalFeaturesFading", "severity": "critical", "run": "r", "layer": "layers.3"}
    assert "0.25x as strongly" in alert.annotations["description"]
    assert "layers.3" in alert.annotations["description"] and alert.annotations["summary"].endswith("run r")
    # still violating: no second notification
    assert engine.evaluate(make_report(40, T0 + 60, relative_gap=0.2), run="r") == []
    assert [a.name for a in engine.firing] == ["RefusalFeaturesFading"]
    # recovered: one resolved transition that keeps the step and time it first fired at
    resolved = engine.evaluate(make_report(50, T0 + 120, relative_gap=0.9), run="r")
    assert [(a.name, a.status, a.starts_at, a.ends_at, a.step, a.resolved_step) for a in resolved] == [
        ("RefusalFeaturesFading", "resolved", T0, T0 + 120, 30, 50)
    ]
    assert engine.firing == []


@pytest.mark.parametrize("seconds_between", [1.0, 6 * 3600.0], ids=["seconds apart", "hours apart"])
def test_for_counts_evaluations_whatever_the_time_between_them(seconds_between):
    """Shipped `for`: 2 for BaseSAETransferDegraded, 1 for RefusalDirectionDrifted."""
    assert DEFAULT["BaseSAETransferDegraded"].for_evaluations == 2
    assert DEFAULT["RefusalDirectionDrifted"].for_evaluations == 1
    engine = AlertEngine(goal="guard")
    reports = [make_report(10 * i, T0 + seconds_between * i, fvu_chat=0.7, direction_cosine=0.3) for i in range(4)]
    assert _series(engine, "r", reports) == [
        (10, "RefusalDirectionDrifted", "firing"),
        (20, "BaseSAETransferDegraded", "firing"),
    ]


def test_recovery_while_pending_restarts_the_for_count():
    engine = AlertEngine()
    fvu = [0.7, 0.7, 0.3, 0.7, 0.7, 0.7]  # pending twice, recovered, then three in a row
    reports = [make_report(i, T0 + i, fvu_chat=value) for i, value in enumerate(fvu)]
    assert _series(engine, "r", reports) == [(5, "BaseSAETransferDegraded", "firing")]


def test_each_run_and_layer_is_its_own_series():
    engine = without_early_warning(goal="guard")
    a = engine.evaluate(make_report(1, T0, relative_gap=0.1, layer="layers.2"), run="a")
    b = engine.evaluate(make_report(1, T0, relative_gap=0.1, layer="layers.4"), run="b")
    assert [x.labels["layer"] for x in a] == ["layers.2"] and [x.labels["run"] for x in b] == ["b"]
    assert len(engine.firing) == 2
    # resolving run a leaves run b firing
    assert [x.status for x in engine.resolve_run("a", T0 + 60)] == ["resolved"]
    assert [x.labels["run"] for x in engine.firing] == ["b"]


def test_thresholds_from_constructor_and_file(tmp_path):
    strict = AlertEngine(thresholds={"BaseSAETransferDegraded": 0.1})
    reports = [make_report(i, T0 + i, fvu_chat=0.28) for i in range(3)]  # 0.13 above the reference's 0.15
    assert _series(strict, "r", reports) == [(2, "BaseSAETransferDegraded", "firing")]
    assert _series(AlertEngine(), "r", reports) == []  # 0.13 is below the shipped 0.15
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
    with pytest.raises(ValueError, match=r"RefusalFeaturesFading.requires: expected a number .* found 'big'"):
        configure({"RefusalFeaturesFading": {"requires": "big"}})
    with pytest.raises(ValueError, match="KLDivergenceSpike.requires: this alert has no requirement"):
        configure({"KLDivergenceSpike": {"requires": 0.1}})
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
    passive = without_early_warning(goal="guard")
    passive.evaluate(report, run="r")
    assert not passive.should_stop and passive.stop_reason is None

    info_only = AlertEngine(stop_on_alert=True, goal="align")
    info_only.evaluate(make_report(1, T0, relative_gap=2.0), run="r")  # RefusalFeaturesEmerging (info)
    assert [a.name for a in info_only.firing] == ["RefusalFeaturesEmerging"] and not info_only.should_stop

    stopping = without_early_warning(stop_on_alert=True, goal="guard")
    stopping.evaluate(report, run="r")
    assert stopping.should_stop
    assert stopping.stop_reason.startswith("RefusalFeaturesFading{layer=layers.3,run=r} firing")


def test_callbacks_receive_transitions_and_a_failing_action_never_raises():
    fired, resolved, seen = [], [], []

    def broken_action(alerts):
        raise RuntimeError("store down")

    engine = without_early_warning(
        goal="guard",
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
    engine = without_early_warning(webhook_url=url, goal="guard")
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


def timed_evaluate(engine: AlertEngine) -> tuple[float, list[FiredAlert]]:
    start = time.monotonic()
    fired = engine.evaluate(make_report(1, T0, relative_gap=0.1), run="r")
    return time.monotonic() - start, fired


def test_webhook_down_never_raises_and_is_bounded():
    """A receiver nobody listens on adds at most the webhook timeout over the same evaluation
    without a webhook, measured in the same test."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    baseline, _ = timed_evaluate(without_early_warning(stop_on_alert=True, goal="guard"))
    engine = without_early_warning(
        webhook_url=f"http://127.0.0.1:{port}/hook",
        webhook_timeout_s=0.5,
        stop_on_alert=True,
        goal="guard",
    )
    elapsed, fired = timed_evaluate(engine)
    assert elapsed - baseline < 0.5 + MonitorConfig().telemetry_budget_s
    assert names(fired) == ["RefusalFeaturesFading"]
    assert engine.webhook.failures == 1 and engine.webhook.deliveries == 0
    assert engine.should_stop


def test_webhook_silent_server_times_out_quickly():
    """A receiver that accepts the connection but never answers adds at most the timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        baseline, _ = timed_evaluate(AlertEngine(goal="guard"))
        engine = AlertEngine(
            webhook_url=f"http://127.0.0.1:{port}/hook",
            webhook_timeout_s=0.3,
            goal="guard",
        )
        elapsed, _ = timed_evaluate(engine)
        print(f"silent webhook adds {elapsed - baseline:.2f}s (timeout 0.3 s)")
        assert 0.3 * 0.9 < elapsed - baseline < 0.3 + MonitorConfig().telemetry_budget_s
        assert engine.webhook.failures == 1


def test_engine_from_monitor_config(monkeypatch):
    monkeypatch.setenv("FEATUREDRIFT_STOP_ON_ALERT", "true")
    monkeypatch.setenv("FEATUREDRIFT_ALERT_GOAL", "guard")
    engine = AlertEngine.from_config(MonitorConfig())
    assert engine.goal == "guard"
    assert engine.stop_on_alert and engine.webhook is None
    engine.evaluate(make_report(1, T0, relative_gap=0.1), run="r")
    assert engine.should_stop
    with_hook = AlertEngine.from_config(MonitorConfig(alert_webhook_url="http://127.0.0.1:9/hook"))
    assert with_hook.webhook is not None and with_hook.webhook.url == "http://127.0.0.1:9/hook"


def _series(engine: AlertEngine, run: str, reports: list[EvaluationReport]) -> list[tuple[int, str, str]]:
    """(step, alert, status) of every transition over a run, with the shipped thresholds and `for`."""
    return [(r.step, a.name, a.status) for r in reports for a in engine.evaluate(r, run=run)]


def _trajectory(rates: list[float | None], **series: list[float]) -> list[EvaluationReport]:
    """One report per evaluation, 10 steps and one second apart (a short run: `for` must still
    work), refusal rates where measured and the given per-evaluation report fields."""
    return [
        make_report(10 * i, T0 + i, harmful_refusal=rate, **{name: values[i] for name, values in series.items()})
        for i, rate in enumerate(rates)
    ]


def test_erosion_stops_on_the_feature_alert_before_refusals_drop(caplog):
    """A chat model eroded by fine-tuning: the SAE-based alerts lead the behavioural one."""
    engine = AlertEngine(stop_on_alert=True)  # shipped definitions, `for` and goal (auto)
    erosion = _trajectory([1.0, None, 0.95, None, 0.7, 0.3], relative_gap=[1.0, 0.9, 0.6, 0.45, 0.35, 0.3])
    with caplog.at_level("INFO"):
        transitions = _series(engine, "erosion", erosion)
    assert engine.run_goals == {"erosion": "guard"} and "goal for run 'erosion': guard" in caplog.text
    assert "refuses 100% of harmful probes" in engine.goal_reasons["erosion"]
    assert transitions == [
        (20, "RefusalFeaturesWeakening", "firing"),
        (30, "RefusalFeaturesFading", "firing"),
        (50, "HarmfulRefusalRateLow", "firing"),
    ]
    assert engine.stop_reason.startswith("RefusalFeaturesFading{layer=layers.3,run=erosion} firing")


def test_align_fires_no_critical_alert_and_says_when_refusal_emerges():
    """Base → chat: the reference never refused and its refusal-feature gap is ~0.05, so the
    relative gap swings wildly; no fading or low-rate alert, an info alert once the refusal
    features separate harmful from harmless prompts clearly better than the base's did."""
    engine = AlertEngine(stop_on_alert=True)
    align = _trajectory(
        [0.0, 0.05, None, 0.3, None, 0.9],
        reference_gap=[0.048] * 6,
        relative_gap=[1.0, -0.5, -2.0, -3.5, -4.6, -5.4],
        current_gap=[0.05, 0.1, 0.24, 0.62, 0.8, 0.9],
        reference_separation=[0.2] * 6,
        current_separation=[0.2, 0.25, 0.4, 0.85, 1.0, 1.1],
        direction_cosine=[1.0, 0.6, 0.4, 0.3, 0.28, 0.27],
    )
    assert _series(engine, "align", align) == [(30, "RefusalFeaturesEmerging", "firing")]
    assert engine.run_goals == {"align": "align"} and "refuses 0% of harmful probes" in engine.goal_reasons["align"]
    assert not engine.should_stop


def test_benign_fine_tune_fires_nothing():
    """A chat model fine-tuned on harmless data: small wobbles, no alert at all."""
    engine = AlertEngine(stop_on_alert=True)
    benign = _trajectory(
        [1.0, None, 0.97, None, 1.0, 0.97],
        relative_gap=[1.0, 0.97, 0.95, 0.96, 0.93, 0.94],
        direction_cosine=[1.0, 0.98, 0.97, 0.96, 0.96, 0.96],
        divergent_fraction=[0.0, 0.08, 0.12, 0.15, 0.17, 0.18],
        kl_mean=[0.0, 0.05, 0.09, 0.12, 0.14, 0.15],
    )
    assert _series(engine, "benign", benign) == [] and engine.run_goals == {"benign": "guard"}


def test_auto_goal_waits_for_the_first_refusal_rate(caplog):
    """Until a refusal rate is measured, only the alerts for every goal apply."""
    engine = AlertEngine()
    with caplog.at_level("INFO"):
        assert engine.evaluate(make_report(0, T0, relative_gap=0.2), run="r") == []
        assert engine.evaluate(make_report(5, T0 + 1, relative_gap=0.2), run="r") == []
    assert engine.goal_for("r") is None and engine.run_goals == {}
    assert caplog.text.count("undecided until an evaluation measures the refusal rate") == 1
    fired = engine.evaluate(make_report(10, T0 + 2, relative_gap=0.2, harmful_refusal=0.9), run="r")
    assert names(fired) == ["RefusalFeaturesFading", "RefusalFeaturesWeakening"]
    assert engine.run_goals == {"r": "guard"} and "at step 10" in engine.goal_reasons["r"]


@pytest.mark.parametrize(("rate", "goal"), [(0.5, "guard"), (0.49, "align")])
def test_auto_goal_threshold(rate, goal):
    engine = AlertEngine()
    engine.evaluate(make_report(0, T0, harmful_refusal=rate), run="r")
    assert engine.goal_for("r") == goal


def test_explicit_goal_is_kept_whatever_the_reference_does(caplog):
    engine = AlertEngine(goal="align")
    with caplog.at_level("INFO"):
        fired = engine.evaluate(make_report(0, T0, relative_gap=0.1, harmful_refusal=1.0), run="r")
    assert names(fired) == ["RefusalFeaturesEmerging"]
    assert engine.run_goals == {"r": "align"} and engine.goal_reasons == {"r": "set by alert_goal"}
    assert "goal for run 'r': align (set by alert_goal)" in caplog.text


def test_goal_off_fires_nothing():
    engine = AlertEngine(goal="off")
    assert _series(engine, "r", [make_report(i, T0 + i, relative_gap=0.0, harmful_refusal=0.0) for i in range(4)]) == []
    assert engine.run_goals == {"r": "off"}
    with pytest.raises(ValueError, match="alert goal: expected one of"):
        AlertEngine(goal="protect")


def test_alert_goal_setting_is_validated(monkeypatch):
    assert MonitorConfig().alert_goal == "auto"
    monkeypatch.setenv("FEATUREDRIFT_ALERT_GOAL", "Align")
    assert MonitorConfig().alert_goal == "align"
    with pytest.raises(ValueError, match="alert_goal: expected one of auto, guard, align, off, found 'protect'"):
        MonitorConfig(alert_goal="protect")


def test_relative_gap_needs_a_reference_gap_and_says_why(caplog):
    assert DEFAULT["RefusalFeaturesFading"].requires.value == 0.1
    engine = AlertEngine(goal="guard")
    with caplog.at_level("INFO"):
        for step in range(1, 5):  # relative gap -5: far past the threshold, yet inactive
            assert engine.evaluate(make_report(step, T0 + step, relative_gap=-5.0, reference_gap=0.048), run="r") == []
    assert caplog.text.count("RefusalFeaturesFading inactive") == 1
    assert "divide by noise" in caplog.text and "found 0.048" in caplog.text
    reasons = {key[0]: reason for key, reason in engine.inactive.items()}
    assert set(reasons) == {"RefusalFeaturesFading", "RefusalFeaturesWeakening"}
    assert "expected featuredrift_refusal_feature_gap_at_reference >= 0.1, found 0.048" in reasons["RefusalFeaturesFading"]


def test_a_firing_alert_resolves_when_its_requirement_fails_and_becomes_active_again():
    engine = without_early_warning(goal="guard")
    assert names(engine.evaluate(make_report(1, T0, relative_gap=0.2), run="r")) == ["RefusalFeaturesFading"]
    resolved = engine.evaluate(make_report(2, T0 + 1, relative_gap=0.2, reference_gap=0.05), run="r")
    assert [(a.name, a.status, a.step, a.resolved_step) for a in resolved] == [("RefusalFeaturesFading", "resolved", 1, 2)]
    assert len(engine.inactive) == 1
    assert names(engine.evaluate(make_report(3, T0 + 2, relative_gap=0.2), run="r")) == ["RefusalFeaturesFading"]
    assert engine.inactive == {}


def test_minimum_reference_gap_is_a_definition_parameter():
    engine = without_early_warning(goal="guard", thresholds={"RefusalFeaturesFading": {"requires": 0.01}})
    fired = engine.evaluate(make_report(1, T0, relative_gap=0.2, reference_gap=0.048), run="r")
    assert names(fired) == ["RefusalFeaturesFading"]
    rules = {d.name: d for d in configure({"RefusalFeaturesFading": {"requires": 0.01}})}
    assert "featuredrift_refusal_feature_gap_at_reference >= 0.01" in rules["RefusalFeaturesFading"].expr()


@pytest.mark.parametrize(("field", "alert", "levels"), [
    ("divergent_fraction", "DivergentTokensSpike", [0.6, 0.62, 0.95, 0.96]),  # high throughout; one jump of 0.33
    ("kl_mean", "KLDivergenceSpike", [1.5, 1.6, 2.3, 2.35]),  # above the 0.5 threshold throughout; one jump of 0.7
])
def test_spikes_are_changes_between_evaluations_not_levels(field, alert, levels):
    assert DEFAULT[alert].kind == "jump"
    engine = AlertEngine(goal="guard")
    reports = _trajectory([None] * len(levels), **{field: levels})
    assert _series(engine, "r", reports) == [(20, alert, "firing"), (30, alert, "resolved")]


def test_run_end_keeps_the_fired_step_and_leaves_no_resolved_step():
    engine = without_early_warning(goal="guard")
    engine.evaluate(make_report(30, T0, relative_gap=0.2), run="r")
    (ended,) = engine.resolve_run("r", T0 + 10)
    assert (ended.step, ended.resolved_step, ended.status) == (30, None, "resolved")


def test_transfer_alert_measures_what_fine_tuning_changed_and_a_weak_sae_is_said_once():
    """A real chat model's SAE already leaves 0.685 of the variance unexplained at the reference:
    an absolute FVU rule fires at the third evaluation whatever training does; the shipped one
    says once, at the start, that the SAE is weak (info) and waits for a change of its own."""
    weak = [make_report(10 * i, T0 + i, fvu_reference_chat=0.685, fvu_chat=0.685 + 0.01 * i) for i in range(6)]
    absolute = AlertDefinition(name="AbsoluteFVU", kind="threshold", metric="featuredrift_fvu_ratio",
                               matchers={"model": "current", "data": "chat"}, op=">", threshold=0.5,
                               for_evaluations=2, severity="warning", summary="s", description="d", runbook="r")
    assert _series(AlertEngine(definitions=[absolute]), "r", weak) == [(20, "AbsoluteFVU", "firing")]  # teeth

    engine = AlertEngine(goal="guard")
    assert _series(engine, "r", weak) == [(0, "BaseSAEWeak", "firing")]
    (said,) = engine.firing
    assert said.severity == "info" and said.labels["data"] == "chat" and said.value == pytest.approx(0.685)
    assert "a property of the SAE" in said.annotations["description"] and "not of the fine-tune" in said.annotations["description"]
    # A real loss of transfer on top of the weak SAE still fires, on its change.
    worse = [make_report(60 + 10 * i, T0 + 10 + i, fvu_reference_chat=0.685, fvu_chat=0.9) for i in range(3)]
    transitions = [(r.step, a.name, a.status, a.value) for r in worse for a in engine.evaluate(r, run="r")]
    assert [(s, n, st) for s, n, st, _ in transitions] == [(80, "BaseSAETransferDegraded", "firing")]
    assert transitions[0][3] == pytest.approx(0.215)
    degraded = next(a for a in engine.firing if a.name == "BaseSAETransferDegraded")
    assert "model" not in degraded.labels and degraded.labels["data"] == "chat"  # as `ignoring(model)` leaves it


def test_over_refusal_reads_the_borderline_prompts_when_the_run_has_them_else_the_harmless_ones():
    reference = {"harmful": 1.0, "harmless": 0.05, "borderline": 0.1}
    probability = {"harmful": 0.87, "harmless": 0.03, "borderline": 0.1}
    harmless = AlertEngine(goal="guard")
    fired = harmless.evaluate(make_report(10, T0, harmful_refusal=1.0, harmless_refusal=0.6, harmless_probability=0.5,
                                          reference_refusal=reference, reference_probability=probability), run="r")
    assert names(fired) == ["OverRefusal", "OverRefusalRising"]
    assert {a.labels["prompts"] for a in fired} == {"harmless"}
    by_name = {a.name: a for a in fired}
    assert by_name["OverRefusal"].value == pytest.approx(0.55) and by_name["OverRefusal"].severity == "warning"
    assert "rose by 0.55 over the reference's" in by_name["OverRefusal"].annotations["description"]
    assert by_name["OverRefusalRising"].value == pytest.approx(0.47)

    # Borderline prompts present and calm: the harmless ones are not what the alert reads.
    shadowed = AlertEngine(goal="guard")
    calm = make_report(10, T0, harmful_refusal=1.0, harmless_refusal=0.6, harmless_probability=0.5, borderline=(0.1, 0.1),
                       reference_refusal=reference, reference_probability=probability)
    assert shadowed.evaluate(calm, run="r") == []
    # …and violating: they fire, labelled as such.
    rising = make_report(20, T0 + 1, harmful_refusal=1.0, borderline=(0.7, 0.6),
                         reference_refusal=reference, reference_probability=probability)
    assert sorted((a.name, a.labels["prompts"]) for a in shadowed.evaluate(rising, run="r")) == [
        ("OverRefusal", "borderline"), ("OverRefusalRising", "borderline")]
    # The same level at the reference is no over-refusal: fine-tuning did not cause it.
    already = AlertEngine(goal="align")
    assert [a for a in already.evaluate(make_report(0, T0, harmful_refusal=0.0, harmless_refusal=0.6, harmless_probability=0.5,
                                        reference_refusal={"harmful": 0.0, "harmless": 0.6},
                                        reference_probability={"harmful": 0.1, "harmless": 0.5}), run="r")
            if a.name.startswith("OverRefusal")] == []


def test_auto_goal_reads_the_reference_refusal_rate_measured_at_start():
    engine = AlertEngine()
    engine.evaluate(make_report(0, T0, harmful_refusal=None, reference_refusal={"harmful": 0.9, "harmless": 0.0}), run="r")
    assert engine.goal_for("r") == "guard" and "at the reference" in engine.goal_reasons["r"]


def test_critical_alerts_carry_the_annotations_the_session_adds():
    seen = []
    engine = AlertEngine(goal="guard", annotate=lambda alert: seen.append(alert.step) or {"last_safe_checkpoint": "ckpt-9"})
    fired = engine.evaluate(make_report(18, T0, relative_gap=0.3), run="r")
    by_name = {a.name: a for a in fired}
    assert by_name["RefusalFeaturesFading"].annotations["last_safe_checkpoint"] == "ckpt-9"
    assert "last_safe_checkpoint" not in by_name["RefusalFeaturesWeakening"].annotations  # a warning
    assert seen == [18]
    resolved = engine.evaluate(make_report(27, T0 + 1, relative_gap=1.0), run="r")
    assert {a.annotations.get("last_safe_checkpoint") for a in resolved if a.name == "RefusalFeaturesFading"} == {"ckpt-9"}
