"""`featuredrift bench --store`: the run store under a platform team's history, query by query.

It builds a store of many runs × many evaluations on SQLite and/or PostgreSQL, with rows of the
shape a real evaluation writes (taken from one real evaluation of the zoo: its metric samples,
drifted features, refusal-feature sets and feature contexts, values and feature ids varied per
run and step), then times what people wait for: every SQL panel and variable of the Grafana
step dashboard (PostgreSQL, with one run, 30 runs and all runs selected) and `runs list`,
`runs show`, `runs show --features` and `runs compare` end to end (rendering included; the CLI
hands in how to run them).

Two economies keep the store buildable on a laptop, neither changing what a query reads: the
stored report JSON of each evaluation is its minimal form (no query here parses it), and
feature contexts are kept for the newest `contexts_kept` evaluations of each run (their panel
and the feature cards read only the newest one, through the evaluation index).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone

from featuredrift.monitor.report import EvaluationReport

RUN_SELECTIONS = (1, 30, None)  # runs selected in Grafana's $run; None = All


@dataclass
class StoreLoadSettings:
    urls: list[str]
    runs: int = 1000
    evaluations: int = 100
    eval_every: int = 50
    contexts_kept: int = 10
    repeats: int = 3  # each query is timed this often; the median counts

    def check(self) -> None:
        for name in ("runs", "evaluations", "eval_every", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}: expected at least 1, found {getattr(self, name)}")
        if self.contexts_kept < 0:
            raise ValueError(f"contexts kept: expected 0 or more, found {self.contexts_kept}")


@dataclass
class QueryTiming:
    query: str
    seconds: dict[str, float] = field(default_factory=dict)  # backend → median seconds
    rows: dict[str, int] = field(default_factory=dict)


def template_report() -> EvaluationReport:
    """One real evaluation: the nano zoo's chat model read against its base, default settings."""
    from featuredrift.monitor.config import MonitorConfig
    from featuredrift.monitor.drift_monitor import DriftMonitor
    from featuredrift.zoo import ensure_zoo, load_zoo_models

    zoo = ensure_zoo("nano", progress=False)
    base, _ = load_zoo_models(zoo, "base")
    chat, tokenizer = load_zoo_models(zoo, "chat")
    monitor = DriftMonitor(MonitorConfig(sae=str(zoo.sae), probes=str(zoo.probes)))
    monitor.start(base, tokenizer)
    return monitor.evaluate(chat, 1)


# ---- building ---------------------------------------------------------------------------------

TABLE_COLUMNS = {
    "evaluations": ("id", "run_id", "step", "timestamp", "recorded_at", "epoch", "duration_s", "timings", "report"),
    "metric_values": ("evaluation_id", "name", "labels", "value"),
    "drifted_features": ("evaluation_id", "hookpoint", "feature", "subset", "freq_reference", "freq_current",
                         "mean_reference", "mean_current", "score", "rank"),
    "refusal_features": ("evaluation_id", "hookpoint", "k", "feature", "source", "rank", "diff_in_means", "nnls_weight"),
    "feature_contexts": ("evaluation_id", "hookpoint", "feature", "model", "rank", "subset", "probe_index", "position",
                         "left_text", "token", "right_text", "activation"),
    "category_refusals": ("evaluation_id", "subset", "category", "prompts", "refusal_rate", "refusal_token_probability",
                          "refusal_token_logodds"),
    "alerts": ("run_id", "evaluation_id", "step", "resolved_step", "name", "labels", "severity", "status", "message",
               "value", "started_at", "ended_at"),
}


class _Template:
    """The rows of the template evaluation, ready to be varied."""

    def __init__(self, report: EvaluationReport) -> None:
        from featuredrift.store import rows
        from featuredrift.store.rows import labels_key

        self.samples = [(s.name, labels_key(s.labels), s.value) for s in report.metric_samples()]
        self.drifted, self.refusal, self.contexts = [], [], []
        for hookpoint, layer in report.layers.items():
            self.drifted += [(hookpoint, f) for f in rows.drifted_feature_fields(layer)]
            self.refusal += [(hookpoint, f) for f in rows.refusal_feature_fields(layer)]
            self.contexts += [(hookpoint, f) for f in rows.feature_context_fields(layer)]
        self.categories = rows.category_refusal_fields(report)
        self.hookpoints = list(report.layers)


def _varied(value: float | None, run: int, step: int) -> float | None:
    if value is None or not math.isfinite(value):
        return value
    return value * (1.0 + 0.1 * math.sin(run + step / 500.0))


def _run_rows(template: _Template, settings: StoreLoadSettings, run: int, run_id: int, first_evaluation_id: int,
              started: datetime) -> dict[str, list[tuple]]:
    """Every row of one run, by table."""
    out: dict[str, list[tuple]] = {name: [] for name in TABLE_COLUMNS}
    report = json.dumps({"step": 0, "layers": {}})
    for j in range(settings.evaluations):
        step, evaluation_id = j * settings.eval_every, first_evaluation_id + j
        moment = started + timedelta(minutes=j)
        out["evaluations"].append((evaluation_id, run_id, step, moment.timestamp(), moment, j / 10, 1.0, "{}", report))
        out["metric_values"] += [(evaluation_id, name, labels, _varied(value, run, step) if name != "featuredrift_global_step"
                                  else float(step)) for name, labels, value in template.samples]
        churn = j // 20  # the most drifted features change every 20 evaluations
        out["drifted_features"] += [
            (evaluation_id, hookpoint, f["feature"] + churn, f["subset"], f["freq_reference"], _varied(f["freq_current"], run, step),
             f["mean_reference"], _varied(f["mean_current"], run, step), _varied(f["score"], run, step), f["rank"])
            for hookpoint, f in template.drifted]
        out["refusal_features"] += [
            (evaluation_id, hookpoint, f["k"], f["feature"] + (churn if f["source"] == "current" else 0), f["source"], f["rank"],
             _varied(f["diff_in_means"], run, step), f["nnls_weight"])
            for hookpoint, f in template.refusal]
        out["category_refusals"] += [
            (evaluation_id, c["subset"], c["category"], c["prompts"], _varied(c["refusal_rate"], run, step),
             _varied(c["refusal_token_probability"], run, step), _varied(c["refusal_token_logodds"], run, step))
            for c in template.categories]
        if j >= settings.evaluations - settings.contexts_kept:
            out["feature_contexts"] += [
                (evaluation_id, hookpoint, f["feature"], f["model"], f["rank"], f["subset"], f["probe_index"], f["position"],
                 f["left_text"], f["token"], f["right_text"], _varied(f["activation"], run, step))
                for hookpoint, f in template.contexts]
    fired = started + timedelta(minutes=settings.evaluations // 2)
    out["alerts"].append((run_id, None, (settings.evaluations // 2) * settings.eval_every, None, "RefusalFeaturesFading",
                          json.dumps({"layer": template.hookpoints[0]}), "critical", "firing",
                          f"Refusal features fade in run load-{run:04d}", 0.4, fired, None))
    return out


def _bulk_insert(connection, table: str, rows: list[tuple]) -> None:
    """As fast as the driver allows: COPY on PostgreSQL, executemany on SQLite."""
    if not rows:
        return
    columns = TABLE_COLUMNS[table]
    raw = connection.connection.driver_connection
    if connection.dialect.name == "postgresql":
        with raw.cursor() as cursor, cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    else:
        marks = ", ".join("?" for _ in columns)
        as_stored = [tuple(v.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(v, datetime) else v
                           for v in row) for row in rows]  # SQLAlchemy's SQLite DateTime: naive UTC text
        raw.cursor().executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", as_stored)


def build_store(url: str, settings: StoreLoadSettings, report: EvaluationReport,
                progress: Callable[[str], None] = lambda message: None) -> tuple[dict[str, int], bool]:
    """A fresh store at `url` (migrated by RunStore itself) holding the load: (rows per table,
    whether the store held this load already and was only counted)."""
    from sqlalchemy import insert, text

    from featuredrift.store.models import Run
    from featuredrift.store.run_store import RunStore

    template = _Template(report)
    counts = dict.fromkeys(TABLE_COLUMNS, 0)
    with RunStore(url) as store:
        with store.engine.begin() as connection:
            runs = connection.execute(text("SELECT count(*) FROM runs")).scalar()
            evaluations = connection.execute(text("SELECT count(*) FROM evaluations")).scalar()
            if runs == settings.runs and evaluations == settings.runs * settings.evaluations and connection.execute(
                    text("SELECT count(*) FROM runs WHERE name LIKE 'load-%'")).scalar() == runs:
                progress(f"{store.display_url}: holds this load already; timing it again")
                return {table: connection.execute(text(f"SELECT count(*) FROM {table}")).scalar()
                        for table in TABLE_COLUMNS}, True
            if runs:
                raise ValueError(f"{store.display_url}: expected an empty run store for the load test (or one it built "
                                 f"with the same --runs and --evaluations), found {runs} runs in it")
        epoch = datetime(2026, 1, 1, tzinfo=timezone.utc)
        evaluation_id = 1
        for run in range(settings.runs):
            started = epoch + timedelta(hours=run)
            with store.engine.begin() as connection:
                run_id = connection.execute(insert(Run).returning(Run.id), {
                    "name": f"load-{run:04d}", "config": {"eval_every": settings.eval_every}, "status": "finished",
                    "model_fingerprint": "load-model", "sae_fingerprint": "load-sae", "reference_policy": "initial",
                    "extra": {"display_name": "load", "probe_fingerprint": "load-probes"},
                    "created_at": started, "updated_at": started,
                }).scalar_one()
                rows = _run_rows(template, settings, run, run_id, evaluation_id, started)
                for table, table_rows in rows.items():
                    _bulk_insert(connection, table, table_rows)
                    counts[table] += len(table_rows)
            evaluation_id += settings.evaluations
            if (run + 1) % max(1, settings.runs // 10) == 0:
                progress(f"{store.display_url}: {run + 1}/{settings.runs} runs stored")
        if store.engine.dialect.name == "postgresql":
            with store.engine.begin() as connection:
                connection.execute(text(f"SELECT setval('evaluations_id_seq', {evaluation_id})"))
                connection.execute(text("ANALYZE"))  # what autovacuum does to a store soon after a load
    return counts, False


# ---- timing -----------------------------------------------------------------------------------


def _median_seconds(action: Callable[[], int], repeats: int) -> tuple[float, int]:
    """Median wall time of `action` and the rows it returned; infinity when the store's statement
    timeout cancelled it (see store.engine)."""
    from sqlalchemy.exc import OperationalError

    times, rows = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        try:
            rows = action()
        except OperationalError as error:
            if "statement timeout" not in str(error) and "canceling statement" not in str(error):
                raise
            return math.inf, 0
        times.append(time.perf_counter() - started)
    return statistics.median(times), rows


def _grafana_sql(query: str, runs: list[str], layers: list[str]) -> str:
    """The SQL Grafana sends for a panel: multi-value variables as quoted, comma-separated lists."""
    def quoted(values: list[str]) -> str:
        return ",".join("'" + value.replace("'", "''") + "'" for value in values)

    return query.replace("$run", quoted(runs)).replace("$layer", quoted(layers))


def _panel_queries() -> Iterator[tuple[str, str]]:
    from featuredrift.dashboards.spec import STEPS, panel_sql, render

    dashboard = render(STEPS)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield f"variable ${variable['name']}", variable["query"]
    yield from panel_sql(dashboard)


def time_grafana_panels(url: str, settings: StoreLoadSettings, runs: list[str], layers: list[str]) -> list[QueryTiming]:
    """Every SQL panel and variable of the step dashboard with 1, 30 and all runs selected."""
    from sqlalchemy import text

    from featuredrift.store.run_store import RunStore

    timings = []
    with RunStore(url) as store:
        def rows_of(sql: str) -> int:
            with store.engine.connect() as connection:  # its own transaction: a cancelled one ends there
                return len(connection.execute(text(sql)).all())

        for title, query in _panel_queries():
            for selected in RUN_SELECTIONS:
                chosen = runs if selected is None else runs[len(runs) // 2:][:selected]
                label = f"Grafana: {title}" + (
                    f" ({'all' if selected is None else selected} run{'s' if selected != 1 else ''})" if "$run" in query else "")
                sql = _grafana_sql(query, chosen, layers)
                seconds, rows = _median_seconds(lambda sql=sql: rows_of(sql), settings.repeats)
                timings.append(QueryTiming(label, {"postgresql": seconds}, {"postgresql": rows}))
                if "$run" not in query:
                    break
    return timings


RunsCommand = Callable[[list[str]], int]  # runs a `featuredrift runs …` command line; returns lines printed


def time_cli(url: str, backend: str, settings: StoreLoadSettings, runs: list[str], run_command: RunsCommand) -> list[QueryTiming]:
    """The `runs` commands end to end, in this process (no interpreter start-up), output rendered."""
    one, other = runs[len(runs) // 2], runs[len(runs) // 2 + 1]
    commands = {
        f"runs list ({len(runs)} runs)": ["list"],
        "runs show RUN": ["show", one],
        "runs show RUN --features": ["show", one, "--features"],
        "runs compare RUN RUN --all": ["compare", one, other, "--all"],
    }
    timings = []
    for label, args in commands.items():
        seconds, lines = _median_seconds(lambda args=args: run_command([*args, "--db", url]), settings.repeats)
        timings.append(QueryTiming(label, {backend: seconds}, {backend: lines}))
    return timings


def run_store_load(settings: StoreLoadSettings, run_command: RunsCommand,
                   progress: Callable[[str], None] = lambda message: None) -> dict:
    """Build the load on every URL and time every query; the numbers, as plain data."""
    from featuredrift.store.engine import parse_store_url

    progress("reading the zoo once for the shape of an evaluation")
    report = template_report()
    runs = [f"load-{run:04d}" for run in range(settings.runs)]
    if len(runs) < 2:
        raise ValueError("store load: expected at least 2 runs (runs compare needs two)")
    layers = list(report.layers)
    timings: dict[str, QueryTiming] = {}
    built = {}
    for url in settings.urls:
        backend = parse_store_url(url).get_backend_name()
        started = time.perf_counter()
        counts, reused = build_store(url, settings, report, progress)
        built[backend] = {"rows": counts, "build_s": None if reused else time.perf_counter() - started}
        progress(f"{backend}: timing queries")
        measured = time_cli(url, backend, settings, runs, run_command)
        if backend == "postgresql":
            measured += time_grafana_panels(url, settings, runs, layers)
        for timing in measured:
            merged = timings.setdefault(timing.query, QueryTiming(timing.query))
            merged.seconds.update(timing.seconds)
            merged.rows.update(timing.rows)
    return {"settings": {k: v for k, v in asdict(settings).items() if k != "urls"}, "stores": built,
            "timings": [asdict(t) for t in timings.values()]}


def print_store_load(results: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    s = results["settings"]
    backends = list(results["stores"])
    table = Table(title=f"run store under load: {s['runs']:,} runs × {s['evaluations']} evaluations "
                        f"(median of {s['repeats']})")
    table.add_column("query")
    for backend in backends:
        table.add_column(f"{backend} (s)", justify="right")
    for timing in results["timings"]:
        table.add_row(timing["query"], *(_seconds(timing["seconds"].get(b)) for b in backends))
    console.print(table)
    for backend, store in results["stores"].items():
        rows = ", ".join(f"{table} {count:,}" for table, count in store["rows"].items())
        console.print(f"{backend}: built in {store['build_s']:.0f}s ({rows})" if store["build_s"] is not None
                      else f"{backend}: the load built before ({rows})")
    for backend in backends:
        measured = [t for t in results["timings"] if backend in t["seconds"]]
        slowest = max(measured, key=lambda t: t["seconds"][backend])
        console.print(f"slowest on {backend}: {slowest['query']}: {_seconds(slowest['seconds'][backend])}")


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return "> 10 (statement timeout)" if math.isinf(value) else f"{value:.3f}"
