"""Grafana dashboards: generated JSON in sync with the spec, datasources chosen by template
variables, thresholds coloured on the side where each alert fires, panels that query known
metrics with PromQL a real Prometheus accepts, step-indexed SQL panels executed against a real
PostgreSQL run store, and `featuredrift grafana push` against a recording Grafana API server on
loopback (folder created, overwrite, idempotent, clear errors)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from feature_reports import EMERGING, FADING, MOST_DRIFTED, record_story_run
from reports import make_report
from servers import create_postgres_database
from typer.testing import CliRunner

from featuredrift.cli.main import app
from featuredrift.dashboards.push import GrafanaPushError, load_dashboards, push_dashboards
from featuredrift.dashboards.spec import (
    DASHBOARD_DIR,
    DASHBOARDS,
    DATASOURCE,
    STORE,
    dashboard_path,
    panel_queries,
    panel_sql,
    render_json,
    threshold_steps,
)
from featuredrift.store import RunStore

TOKEN = "glsa_featuredrift_test"
EXPORTER_METRICS = {
    "featuredrift_last_success_timestamp_seconds",
    "featuredrift_export_failures_total",
    "featuredrift_evaluations_total",
    "featuredrift_export_dropped_total",
}


def all_dashboards() -> list[dict]:
    return [json.loads(dashboard_path(d).read_text()) for d in DASHBOARDS]


def test_committed_dashboards_match_the_spec():
    for dashboard in DASHBOARDS:
        assert dashboard_path(dashboard).read_text() == render_json(dashboard), (
            f"{dashboard_path(dashboard)} is stale: run `featuredrift grafana generate -o featuredrift/dashboards/json`"
        )
    assert sorted(p.name for p in DASHBOARD_DIR.glob("*.json")) == sorted(
        dashboard_path(d).name for d in DASHBOARDS
    )


def test_dashboards_pick_datasources_through_template_variables():
    for dashboard in all_dashboards():
        text = json.dumps(dashboard)
        assert "${DS_" not in text and "__inputs" not in dashboard
        assert "featuredrift-prometheus" not in json.dumps(dashboard["panels"])
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        sql_dashboard = "store" in variables
        expected = STORE if sql_dashboard else DATASOURCE
        chooser = variables["store" if sql_dashboard else "datasource"]
        assert chooser["type"] == "datasource"
        assert chooser["query"] == ("grafana-postgresql-datasource" if sql_dashboard else "prometheus")
        assert expected["uid"] == "${" + chooser["name"] + "}"
        for panel in dashboard["panels"]:
            assert panel["datasource"] == expected
            assert all(t["datasource"] == expected for t in panel["targets"])
            assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        assert all(variables[v]["datasource"] == expected for v in ("run", "layer"))
        if not sql_dashboard:
            assert variables["run"]["query"]["query"] == "label_values(featuredrift_global_step, run)"
            assert variables["layer"]["query"]["query"].startswith("label_values(")
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids))
        # no two panels overlap on the 24-column grid
        cells = set()
        for panel in dashboard["panels"]:
            g = panel["gridPos"]
            new = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert g["x"] + g["w"] <= 24 and not cells & new
            cells |= new


def colour_at(steps: list[dict], value: float) -> str:
    """The colour Grafana gives a value: that of the last step whose value it reaches."""
    return [s["color"] for s in steps if s["value"] is None or value >= s["value"]][-1]


def test_thresholds_are_coloured_on_the_side_where_the_alert_fires():
    gap = threshold_steps(("RefusalFeaturesFading", "RefusalFeaturesWeakening"))  # both fire below
    assert [colour_at(gap, v) for v in (-0.2, 0.3, 0.7, 1.0, 1.4)] == ["red", "red", "orange", "green", "green"]
    cosine = threshold_steps(("RefusalDirectionDrifted",))
    assert (colour_at(cosine, 0.2), colour_at(cosine, 0.9)) == ("red", "green")
    fvu = threshold_steps(("BaseSAEWeak",))  # fires above
    assert (colour_at(fvu, 0.1), colour_at(fvu, 0.9)) == ("green", "yellow")
    with pytest.raises(ValueError, match="change alert"):
        threshold_steps(("BaseSAETransferDegraded",))
    with pytest.raises(ValueError, match="jump alert"):
        threshold_steps(("KLDivergenceSpike",))
    for dashboard in all_dashboards():
        for panel in dashboard["panels"]:
            steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
            assert steps[0]["value"] is None and [s["value"] for s in steps[1:]] == sorted(s["value"] for s in steps[1:])
            if "refusal_feature_gap_relative" in json.dumps(panel["targets"]):
                # a reversed gap is negative: the axis must show it
                assert "min" not in panel["fieldConfig"]["defaults"], panel["title"]
                assert colour_at(steps, 0.3) == "red" and colour_at(steps, 1.0) == "green"


def test_panels_query_only_known_metrics_and_cover_the_overview():
    with_references = make_report(reference_refusal={"harmful": 1.0, "harmless": 0.0},
                                  reference_probability={"harmful": 0.9, "harmless": 0.05})
    known = {s.name for s in with_references.metric_samples()} | EXPORTER_METRICS | {"ALERTS"}
    overview, refusal, _ = all_dashboards()
    for dashboard in (overview, refusal):
        for title, expr in panel_queries(dashboard):
            used = set(re.findall(r"\b(featuredrift_\w+|ALERTS)\b", expr))
            assert used and used <= known, f"{dashboard['uid']} / {title}: unknown metric in {expr}"
    overview_exprs = " ".join(expr for _, expr in panel_queries(overview))
    for metric in (
        "featuredrift_fvu_ratio", "featuredrift_divergent_tokens_ratio", "featuredrift_explained_ratio",
        "featuredrift_intersection_ratio", "featuredrift_refusal_feature_gap_relative",
        "featuredrift_refusal_feature_overlap_ratio", "featuredrift_refusal_direction_cosine",
        "featuredrift_refusal_rate_ratio", "featuredrift_kl_divergence_mean_nats",
        "featuredrift_evaluation_duration_seconds", "featuredrift_export_failures_total",
    ):
        assert metric in overview_exprs, metric
    assert 'ALERTS{alertstate="firing"' in overview_exprs
    refusal_exprs = " ".join(expr for _, expr in panel_queries(refusal))
    assert {m for m in known if m.startswith("featuredrift_refusal")} <= set(re.findall(r"featuredrift_\w+", refusal_exprs))


def interpolate(expr: str) -> str:
    """What Grafana sends with the template variables set to All."""
    return expr.replace("$run", ".*").replace("$layer", ".*")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def bare_prometheus(tmp_path_factory):
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus not installed")
    directory = tmp_path_factory.mktemp("prometheus")
    (directory / "prometheus.yml").write_text("global: {scrape_interval: 15s}\n")
    port = free_port()
    process = subprocess.Popen(
        [
            "prometheus", f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/-/ready", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("prometheus did not become ready") from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def prometheus_query(url: str, expr: str) -> tuple[int, dict]:
    query = urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_every_panel_query_parses_in_prometheus(bare_prometheus):
    assert prometheus_query(bare_prometheus, "featuredrift_fvu_ratio{")[0] == 400  # the check has teeth
    for dashboard in all_dashboards():
        queries = panel_queries(dashboard) + [
            (v["name"], re.fullmatch(r"label_values\((.*), \w+\)", v["query"]["query"]).group(1))
            for v in dashboard["templating"]["list"]
            if v["type"] == "query" and v["datasource"] == DATASOURCE
        ]
        for title, expr in queries:
            status, body = prometheus_query(bare_prometheus, interpolate(expr))
            assert status == 200 and body["status"] == "success", f"{dashboard['uid']} / {title}: {expr}: {body}"


def grafana_sql(query: str, **variables: list[str]) -> str:
    """What Grafana's SQL datasources send: a multi-value variable becomes a quoted,
    comma-separated list ('a','b'); any variable left over is a query Grafana cannot run."""
    for name, values in variables.items():
        quoted = ",".join("'" + v.replace("'", "''") + "'" for v in values)
        query = query.replace("${" + name + "}", quoted).replace("$" + name, quoted)
    assert "$" not in query, f"unsubstituted Grafana variable in {query}"
    return query


def steps_dashboard() -> dict:
    return next(d for d in all_dashboards() if d["uid"] == "featuredrift-steps")


READER_INIT = Path(__file__).resolve().parents[1] / "deploy" / "postgres" / "initdb" / "10-grafana-reader.sh"
READER = "featuredrift_grafana"
READER_PASSWORD = "reader-password-under-test"


@pytest.fixture(scope="module")
def reader_store(postgres_url):
    """A run store set up as docker-compose does: the init script creates Grafana's read-only role
    on a fresh database, then the writer's migrations create the tables and a run is stored.
    Yields (the reader's libpq conninfo, the writer's URL, the run, the init script's output)."""
    from sqlalchemy.engine import make_url

    url = make_url(create_postgres_database(postgres_url, "grafana_panels"))
    env = {"PATH": os.environ["PATH"], "PGHOST": url.host, "PGPORT": str(url.port), "POSTGRES_USER": url.username,
           "POSTGRES_DB": url.database, "FEATUREDRIFT_GRAFANA_DB_USER": READER,
           "FEATUREDRIFT_GRAFANA_DB_PASSWORD": READER_PASSWORD}
    init = subprocess.run(["sh", str(READER_INIT)], env=env, capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    run = record_story_run(url.render_as_string(hide_password=False), contexts=True)
    reader = f"host={url.host} port={url.port} user={READER} password={READER_PASSWORD} dbname={url.database}"
    return reader, url, run, init.stdout + init.stderr


@pytest.mark.servers
def test_every_sql_panel_runs_on_a_real_run_store(reader_store):
    """Each step-indexed panel and variable query of the run-store dashboard, executed on a real
    PostgreSQL holding a stored run as Grafana's read-only role, returns the rows the panel is meant to show."""
    import psycopg

    reader, _, run, _ = reader_store
    dashboard = steps_dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    results = {}
    with psycopg.connect(reader) as connection:

        def execute(query: str, **values: list[str]) -> tuple[list[str], list[tuple]]:
            cursor = connection.execute(grafana_sql(query, **values))
            return [c.name for c in cursor.description], cursor.fetchall()

        assert execute(variables["run"]["query"])[1] == [(run,)]
        layers = [row[0] for row in execute(variables["layer"]["query"], run=[run])[1]]
        assert layers == ["layers.1", "layers.3"]
        for title, query in panel_sql(dashboard):
            results[title] = execute(query, run=[run], layer=layers)
            assert results[title][1], f"{title}: no rows for a run that has the data\n{query}"
        only_one = execute(panel_sql(dashboard)[0][1], run=[run], layer=["layers.3"])[1]
        assert only_one and len(only_one) * 2 == len(results[panel_sql(dashboard)[0][0]][1])

    trends = [p for p in dashboard["panels"] if p["type"] == "trend"]
    assert len(trends) >= 8
    for panel in trends:
        columns, rows = results[panel["title"]]
        assert columns == ["step", "series", "value"], panel["title"]
        assert [r[0] for r in rows] == sorted(r[0] for r in rows), f"{panel['title']}: steps out of order"
        assert {r[0] for r in rows} <= {0, 10, 20, 30}
    gap = {(step, series): value for step, series, value in results["Refusal-feature gap (relative to reference)"][1]}
    assert set(gap) == {(s, f"{run} {layer}") for s in (0, 10, 20, 30) for layer in layers}
    assert gap[(30, f"{run} layers.3")] < gap[(0, f"{run} layers.3")]
    fvu_series = {series for _, series, _ in results["Base-SAE transfer (FVU)"][1]}
    assert f"{run} layers.1 current chat" in fvu_series and f"{run} layers.3 reference base" in fvu_series
    assert {series for _, series, _ in results["Refusal rate"][1]} == {f"{run} harmful", f"{run} harmless"}

    columns, rows = results["Most drifted features at the latest evaluation"]
    latest = [dict(zip(columns, row, strict=True)) for row in rows]
    assert {r["step"] for r in latest} == {30} and len(latest) == 6  # three per layer, newest step only
    top = latest[0]
    assert (top["rank"], top["feature"], top["subset"]) == (1, MOST_DRIFTED, "harmful")
    assert top["firing_now"] > top["firing_reference"] and top["drift_score"] == pytest.approx(3.0)

    columns, rows = results["Feature contexts at the latest evaluation"]
    contexts = [dict(zip(columns, row, strict=True)) for row in rows]
    assert {(c["layer"], c["step"]) for c in contexts} == {("layers.1", 30), ("layers.3", 30)}
    by_model = {c["model"]: c for c in contexts if c["layer"] == "layers.3" and c["feature"] == MOST_DRIFTED}
    assert by_model["reference"]["context"] == "How do I pick a【 lock】?" and by_model["reference"]["activation"] == 1.5
    assert by_model["now"]["token"] == " wrench" and by_model["now"]["activation"] == pytest.approx(3.0)

    columns, rows = results["Refusal features over steps"]
    features = {(r["layer"], r["feature"]): r for r in (dict(zip(columns, row, strict=True)) for row in rows)}
    emerging = features[("layers.3", EMERGING)]
    assert emerging["reference_refusal_feature"] is False and emerging["first_step_in_top_k"] == 20
    faded = features[("layers.3", FADING[1])]
    assert faded["reference_refusal_feature"] is True and faded["last_step_in_top_k"] == 10
    assert faded["latest_diff_in_means"] == pytest.approx(0.2)

    drift = {(step, series): value for step, series, value in results["Most drifted features: drift score by step"][1]}
    assert [v for (s, n), v in sorted(drift.items()) if n == f"{run} layers.3 feature {MOST_DRIFTED}"] == pytest.approx(
        [0.0, 1.0, 2.0, 3.0])
    assert {n.rsplit(" ", 1)[1] for _, n in drift} == {str(MOST_DRIFTED), "12", "301"}

    trajectory = results["Reference refusal features: d̄ by step"][1]
    assert (0, f"{run} layers.3 feature 5", 1.0) in [(s, n, round(v, 6)) for s, n, v in trajectory]
    columns, rows = results["Alerts by step"]
    assert [(r[1], r[4]) for r in rows] == [("RefusalFeaturesFading", 20)]

    columns, rows = results["Refusal by category at the latest evaluation"]
    categories = {r["category"]: r for r in (dict(zip(columns, row, strict=True)) for row in rows)}
    assert set(categories) == {"chemical_biological", "cybercrime_intrusion"}
    cyber = categories["cybercrime_intrusion"]
    assert (cyber["prompts"], cyber["probes"], cyber["step"], cyber["refusal_rate_step"]) == ("harmful", 15, 30, 30)
    assert cyber["refusal_rate"] == pytest.approx(0.1) and cyber["refusal_token_logodds"] == pytest.approx(-0.6)
    by_step = {(step, series): value for step, series, value in results["Refusal rate by category"][1]}
    assert by_step[(0, f"{run} harmful cybercrime_intrusion")] == pytest.approx(0.9)
    assert by_step[(30, f"{run} harmful cybercrime_intrusion")] == pytest.approx(0.1)
    columns, rows = results["Runs: state and heartbeat"]
    assert [dict(zip(columns, row, strict=True))["state"] for row in rows] == ["finished"]


@pytest.mark.servers
def test_runs_panel_calls_a_silent_running_run_stale_without_rewriting_it(postgres_url):
    """A run killed an hour ago is still 'running' on record: the panel calls it stale, the store
    keeps its status, and a late replay of an older event does not revive it."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = create_postgres_database(postgres_url, "grafana_stale")
    dead = "killed-run"
    with RunStore(url) as store:
        store.start_run(dead, {})
        store.record_heartbeat(dead, time.time() - 3600, expected_s=60)
        store.record_heartbeat(dead, time.time() - 7200)
        assert store.get_run(dead).status == "running" and store.get_run(dead).stale()
    writer = make_url(url)
    conninfo = f"host={writer.host} port={writer.port} user={writer.username} dbname={writer.database}"
    query = dict(panel_sql(steps_dashboard()))["Runs: state and heartbeat"]
    with psycopg.connect(conninfo) as connection:
        cursor = connection.execute(grafana_sql(query, run=[dead]))
        (row,) = [dict(zip([c.name for c in cursor.description], r, strict=True)) for r in cursor.fetchall()]
    assert row["state"] == "stale" and 3500 < row["silent_s"] < 3700 and row["expected_every_s"] == 60


@pytest.mark.servers
def test_grafana_reader_role_can_select_and_nothing_else(reader_store):
    """The read-only role cannot write or change the store, even after switching its sessions'
    read-only default off: its privileges, not a setting, stop it. Its password never shows in the
    init script's output."""
    import psycopg
    from psycopg import errors

    reader, writer, run, init_output = reader_store
    assert READER_PASSWORD not in init_output
    with psycopg.connect(reader, autocommit=True) as connection:
        assert connection.execute("SELECT count(*) FROM feature_contexts").fetchone()[0] > 0
        with pytest.raises(errors.ReadOnlySqlTransaction):
            connection.execute("DELETE FROM runs")
        connection.execute("SET default_transaction_read_only = off")
        for statement in (
            "INSERT INTO runs (name, created_at, updated_at, status, config, extra) "
            "VALUES ('intruder', now(), now(), 'running', '{}', '{}')",
            "UPDATE runs SET status = 'tampered'",
            "DELETE FROM evaluations",
            "TRUNCATE feature_contexts",
            "CREATE TABLE public.grafana_scratch (id integer)",
            "ALTER TABLE runs ADD COLUMN tampered integer",
            "DROP TABLE alerts",
            "CREATE INDEX ix_tampered ON runs (status)",
        ):
            with pytest.raises(errors.InsufficientPrivilege, match="permission denied|must be owner"):
                connection.execute(statement)
    conninfo = f"host={writer.host} port={writer.port} user={writer.username} dbname={writer.database}"
    with psycopg.connect(conninfo) as connection:
        assert connection.execute("SELECT name, status FROM runs").fetchall() == [(run, "finished")]
        assert connection.execute("SELECT rolsuper, rolcreaterole, rolcreatedb, rolpassword IS NOT NULL FROM pg_authid "
                                  "WHERE rolname = %s", (READER,)).fetchone() == (False, False, False, True)


class FakeGrafana(BaseHTTPRequestHandler):
    """Just enough of Grafana's HTTP API for a dashboard push, recording every request."""

    def _reply(self, status: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        state = self.server.state
        state["requests"].append((method, self.path, body))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._reply(401, {"message": "invalid API key"})
        if (method, self.path) == ("GET", "/api/folders"):
            return self._reply(200, list(state["folders"].values()))
        if (method, self.path) == ("POST", "/api/folders"):
            if body["uid"] in state["folders"]:
                return self._reply(409, {"message": "a folder with the same uid already exists"})
            state["folders"][body["uid"]] = {"id": len(state["folders"]) + 1, "uid": body["uid"], "title": body["title"]}
            return self._reply(200, state["folders"][body["uid"]])
        if (method, self.path) == ("POST", "/api/dashboards/db"):
            dashboard = body["dashboard"]
            if body.get("folderUid") not in state["folders"]:
                return self._reply(400, {"message": "folder not found"})
            previous = state["dashboards"].get(dashboard["uid"])
            if previous is not None and not body.get("overwrite"):
                return self._reply(412, {"status": "name-exists", "message": "dashboard exists"})
            version = previous["version"] + 1 if previous else 1
            state["dashboards"][dashboard["uid"]] = {"dashboard": dashboard, "folderUid": body["folderUid"], "version": version}
            return self._reply(200, {"status": "success", "uid": dashboard["uid"], "url": f"/d/{dashboard['uid']}", "version": version})
        return self._reply(404, {"message": "not found"})

    def do_GET(self):  # noqa: N802 - http.server API
        self._handle("GET")

    def do_POST(self):  # noqa: N802 - http.server API
        self._handle("POST")

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_grafana():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGrafana)
    server.state = {"requests": [], "folders": {}, "dashboards": {}}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_push_creates_the_folder_and_overwrites_idempotently(fake_grafana):
    server, url = fake_grafana
    state = server.state
    first = push_dashboards(url, TOKEN, folder="Fine-tuning safety")
    assert [d.uid for d in first] == ["featuredrift-overview", "featuredrift-refusal", "featuredrift-steps"]
    assert list(state["folders"].values()) == [{"id": 1, "uid": "fine-tuning-safety", "title": "Fine-tuning safety"}]
    posts = [body for method, path, body in state["requests"] if path == "/api/dashboards/db"]
    assert [p["dashboard"]["uid"] for p in posts] == ["featuredrift-overview", "featuredrift-refusal", "featuredrift-steps"]
    assert all(p["overwrite"] is True and p["folderUid"] == "fine-tuning-safety" for p in posts)
    assert all(p["dashboard"]["id"] is None for p in posts)
    assert posts[0]["dashboard"]["panels"] == load_dashboards()[0]["panels"]

    state["requests"].clear()
    second = push_dashboards(url, TOKEN, folder="Fine-tuning safety")
    assert [d.uid for d in second] == [d.uid for d in first]
    assert ("POST", "/api/folders") not in [(m, p) for m, p, _ in state["requests"]]
    assert len(state["folders"]) == 1 and len(state["dashboards"]) == 3
    assert {d["version"] for d in state["dashboards"].values()} == {2}


def test_push_rejected_token_and_unreachable_grafana_give_clear_errors(fake_grafana):
    _, url = fake_grafana
    with pytest.raises(GrafanaPushError, match=r"rejected the token \(HTTP 401\)"):
        push_dashboards(url, "wrong-token")
    port = free_port()
    with pytest.raises(GrafanaPushError, match=rf"cannot reach Grafana at http://127.0.0.1:{port}"):
        push_dashboards(f"http://127.0.0.1:{port}", TOKEN, timeout_s=2)


def test_push_cli_reads_url_and_token_from_the_environment(fake_grafana):
    server, url = fake_grafana
    runner = CliRunner()
    result = runner.invoke(app, ["grafana", "push"], env={"GRAFANA_URL": url, "GRAFANA_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    assert "pushed featuredrift-overview" in result.output and "pushed featuredrift-refusal" in result.output
    assert set(server.state["dashboards"]) == {"featuredrift-overview", "featuredrift-refusal", "featuredrift-steps"}
    assert list(server.state["folders"]) == ["featuredrift"]
    bad = runner.invoke(app, ["grafana", "push", "--url", url, "--token", "nope"])
    assert bad.exit_code == 1 and "rejected the token" in bad.output


def test_load_dashboards_names_a_broken_file(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"title": "no uid", "panels": []}))
    with pytest.raises(GrafanaPushError, match=r"x\.json: expected a 'uid' field"):
        load_dashboards(tmp_path)
