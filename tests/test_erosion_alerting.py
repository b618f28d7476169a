"""The erosion demo scenario end to end: real fine-tuning on the nano zoo pushes real metrics
through the Pushgateway; Prometheus evaluates the generated rules and the refusal-fading alert
reaches Alertmanager and our webhook; every Grafana panel has data. The in-process engine stops the
same kind of run at its first critical refusal alert, with the feature warning already out."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from servers import alertmanager_factory, prometheus_factory, pushgateway, pushgateway_factory  # noqa: F401
from test_alerts_e2e import alertmanager_config_for, receiver, wait_for_notification  # noqa: F401

from featuredrift.alerts.definitions import configure
from featuredrift.alerts.rules import render_rules
from featuredrift.dashboards.spec import DASHBOARDS, dashboard_path, panel_queries
from featuredrift.store.run_store import RunStore
from featuredrift.zoo.demo import run_demo

pytestmark = [pytest.mark.servers, pytest.mark.slow]
# The shipped definitions, with Prometheus' `for` at this test's cadence (a few seconds between
# evaluations) instead of production minutes: `for` counts evaluations either way.
TEST_CADENCE = "2s"


def _console():
    from rich.console import Console

    return Console(file=open(os.devnull, "w"))


def test_erosion_demo_alerts_through_prometheus_and_alertmanager(
    zoo_nano, tmp_path, pushgateway, prometheus_factory, alertmanager_factory, receiver  # noqa: F811
):
    rules = tmp_path / "rules.yml"
    rules.write_text(render_rules(configure(), cadence=TEST_CADENCE))
    receiver_url = f"http://127.0.0.1:{receiver.server_address[1]}"
    alertmanager = alertmanager_factory(alertmanager_config_for(receiver_url))
    prometheus = prometheus_factory([pushgateway.url.split("://")[1]], rule_files=[rules], alertmanager_url=alertmanager.url)
    result = run_demo(
        "erosion", "nano", out=tmp_path, eval_every=10, pushgateway_url=pushgateway.url, run_name="erosion",
        console=_console(), keep_group_on_end=True,
    )
    run = result.run_name  # the run's unique id, the `run` label of every series
    assert run.startswith("erosion-")
    assert result.reports[-1].refusal_rate["harmful"] < 0.5

    _, payload, alert = wait_for_notification(
        receiver,
        lambda path, body, a: a["labels"]["alertname"] == "RefusalFeaturesFading" and a["labels"].get("run") == run,
        timeout=60,
    )
    assert alert["status"] == "firing" and alert["labels"]["severity"] == "critical"
    assert payload["receiver"] == "featuredrift-critical"

    prometheus.wait_for(f'featuredrift_global_step{{run="{run}"}}')
    for dashboard in DASHBOARDS:
        document = json.loads(dashboard_path(dashboard).read_text())
        for title, expr in panel_queries(document):
            if "export" in title.lower():
                continue  # export-failure panels have data only after a failure
            query = expr.replace("$run", run).replace("$layer", ".*")
            assert prometheus.query(query), f"{dashboard.uid} / {title}: no data for {query}"


def test_in_process_engine_stops_training_at_the_first_critical_refusal_alert(zoo_nano, tmp_path):
    """The zoo's chat model loses its refusals within about ten erosion steps, so whether the
    feature alert (RefusalFeaturesFading) or the behavioural one goes critical first depends on
    the cadence; the feature warning is out by then either way."""
    result = run_demo(
        "erosion", "nano", out=tmp_path, eval_every=5, metrics_port=0, run_name="erosion-stop",
        console=_console(), stop_on_alert=True,
    )
    critical = {"RefusalFeaturesFading", "HarmfulRefusalRateLow"}
    assert result.stop_reason and result.stop_reason.split("{")[0] in critical, result.stop_reason
    full_run_steps = 75
    assert result.reports[-1].step <= 15 < full_run_steps  # stopped within three evaluations
    warned = result.first_fired("RefusalFeaturesWeakening", "RefusalFeaturesFading")
    assert warned is not None and warned <= result.reports[-1].step
    with RunStore(result.store_url) as store:
        info = store.get_run("erosion-stop")
        assert info.status == "stopped"
        assert store.recorded_steps("erosion-stop")[-1] == result.reports[-1].step  # the last evaluation is stored
        assert {a.name for a in store.alerts("erosion-stop")} & critical


def test_stopped_erosion_demo_names_its_last_safe_checkpoint_everywhere(zoo_nano, tmp_path, receiver):  # noqa: F811
    """`featuredrift demo --scenario erosion --stop-on-alert` at the demo's own cadence: every
    evaluation saves a checkpoint, the first evaluation only warns, and the critical alert that
    stops training names the checkpoint before it: in the alert's record and webhook payload,
    the stop message, the demo summary and `runs show`; the folder exists. The data audit ran at
    train begin and `runs show --data` lists the harmful requests answered compliantly."""
    from rich.console import Console
    from typer.testing import CliRunner

    from featuredrift.cli.main import app

    summary = io.StringIO()
    result = run_demo("erosion", "nano", out=tmp_path, metrics_port=0, run_name="erosion-back", stop_on_alert=True,
                      alert_webhook_url=f"http://127.0.0.1:{receiver.server_address[1]}/hook",
                      console=Console(file=summary, width=250))
    safe = result.last_safe_checkpoint
    assert safe is not None and Path(safe.path).is_dir() and (Path(safe.path) / "trainer_state.json").is_file()
    assert safe.step < result.reports[-1].step and safe.judged_by == (safe.step,)
    assert f"last safe checkpoint: {safe.describe()}" in result.stop_reason
    assert f"Last safe checkpoint (the newest that passed every critical alert): {safe.describe()}" in summary.getvalue()
    _, _, alert = wait_for_notification(
        receiver, lambda path, body, a: a["labels"]["severity"] == "critical" and a["status"] == "firing", timeout=30)
    assert alert["annotations"]["last_safe_checkpoint"] == safe.path
    assert alert["annotations"]["last_safe_checkpoint_step"] == str(safe.step)
    with RunStore(result.store_url) as store:
        critical = [a for a in store.alerts(result.run_name) if a.severity == "critical"]
        assert critical and {(a.checkpoint, a.checkpoint_step) for a in critical} == {(safe.path, safe.step)}
        assert store.last_safe_checkpoint(result.run_name) == safe
    runner = CliRunner(env={"COLUMNS": "300"})
    shown = runner.invoke(app, ["runs", "show", result.run_name, "--db", result.store_url])
    assert shown.exit_code == 0 and safe.describe() in shown.output
    data = runner.invoke(app, ["runs", "show", result.run_name, "--db", result.store_url, "--data", "--limit", "5"])
    assert data.exit_code == 0 and "most likely to erode refusal" in data.output, data.output
    assert data.output.count("harmful-looking request answered compliantly") >= 3
