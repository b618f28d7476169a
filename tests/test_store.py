"""The run store on SQLite and on a real PostgreSQL server: recording, idempotence, resume,
export round trips, migrations, and the errors a user sees."""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from featuredrift.monitor.report import (
    EvaluationReport,
    FeatureDrift,
    LayerReport,
    Reconstruction,
    RefusalFeatures,
)
from featuredrift.store import (
    CorruptStoreError,
    RunMismatchError,
    RunStore,
    SchemaTooNewError,
    StoreUnavailableError,
    UnknownRunError,
    parse_csv_export,
)
from featuredrift.store.migrate import head_revision
from featuredrift.store.models import Base


def make_report(step: int, hookpoints: tuple[str, ...] = ("layers.1", "layers.3"), fade: float = 0.02) -> EvaluationReport:
    """A hand-built report whose values move with `step` (refusal features fading by `fade` per step)."""
    layers = {}
    for index, hookpoint in enumerate(hookpoints):
        gap_ref = 1.0 - fade * step
        refusal = RefusalFeatures(
            k=4,
            current=[10 + index, 11, 14 + step % 3, 13],
            reference=[10 + index, 11, 20, 21],
            overlap=2,
            gap_current=0.9 + 0.01 * step,
            gap_reference_features=gap_ref,
            gap_reference_features_at_reference=1.0,
            harmful_activation=2.0 - 0.05 * step,
            harmless_activation=0.1,
        )
        layers[hookpoint] = LayerReport(
            hookpoint=hookpoint,
            fvu={"reference/base": 0.1, "reference/chat": 0.12, "current/base": 0.1 + 0.01 * step,
                 "current/chat": 0.15 + 0.02 * step},
            scale_reference=3.0,
            scale_current=3.0 + 0.1 * step,
            divergent_fraction=min(1.0, 0.05 * step),
            explained_ratio=0.7 + 0.001 * step if step else math.nan,
            explained_ratio_median=math.nan,
            intersection_ratio_divergent=0.5 - 0.01 * step,
            intersection_ratio_all=0.9 - 0.01 * step,
            refusal_direction_cosine=1.0 - 0.01 * step,
            refusal_direction_norm=4.0 + index,
            refusal_features=refusal,
            reconstructions=[
                Reconstruction(4, "current", refusal.current, [0.5, 0.0, 0.25 + step, 0.1], 0.2, 0.9),
                Reconstruction(2, "reference", refusal.reference[:2], [0.7, 0.3], 0.4, 0.8),
            ],
            drifted_features=[
                FeatureDrift(100 + rank + step, "harmful", 0.01, 0.2 + rank, 0.5, 1.5, 3.0 - rank)
                for rank in range(3)
            ],
        )
    return EvaluationReport(
        step=step,
        timestamp=1_700_000_000.0 + step,
        layers=layers,
        refusal_rate={"harmful": 0.9 - 0.01 * step, "harmless": 0.05},
        safety_score=0.9,
        judge="refusal",
        kl_mean=0.01 * step,
        kl_p95=0.05 * step,
        epoch=step / 100,
        timings={"total": 1.25, "forward": 1.0},
    )


def sample_set(report: EvaluationReport) -> dict[tuple[str, str], float]:
    return {(s.name, json.dumps(s.labels, sort_keys=True)): s.value for s in report.metric_samples()}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.servers)])
def store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    from servers import create_postgres_database

    server_url = request.getfixturevalue("postgres_url")
    name = "t_" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:16]
    return create_postgres_database(server_url, name)


@pytest.fixture
def store(store_url):
    with RunStore(store_url) as opened:
        yield opened


def test_record_and_query(store):
    run = store.start_run("sft-a", {"refusal_k": 4}, sae_fingerprint="sae1", reference_policy="initial", seed=3)
    assert not run.resumed and run.status == "running" and run.extra == {"seed": 3}
    reports = [make_report(step) for step in (0, 5, 10)]
    ids = [store.record_evaluation("sft-a", report) for report in reports]
    assert len(set(ids)) == 3
    assert store.last_step("sft-a") == 10

    stored = store.evaluations("sft-a")
    assert [e.step for e in stored] == [0, 5, 10]
    # The full report round-trips exactly (NaN included).
    assert [e.report.to_json() for e in stored] == [r.to_json() for r in reports]
    assert stored[1].duration_s == 1.25 and stored[1].epoch == 0.05

    series = store.metric_series("sft-a", "featuredrift_refusal_feature_gap",
                                 {"layer": "layers.1", "features": "reference"})
    assert [(p.step, p.value) for p in series] == [(0, 1.0), (5, 0.9), (10, 0.8)]
    all_fvu = store.metric_series("sft-a", "featuredrift_fvu_ratio")
    assert len(all_fvu) == 3 * 2 * 4  # steps × layers × (model, data)

    drifted = store.drifted_features("sft-a", "layers.3")
    assert [(d.step, d.rank, d.feature) for d in drifted if d.step == 5] == [(5, 0, 105), (5, 1, 106), (5, 2, 107)]
    refusal = [r for r in store.refusal_features("sft-a", "layers.1") if r.step == 10]
    headline = [(r.feature, r.nnls_weight) for r in refusal if r.k == 4 and r.source == "current"]
    assert headline == [(10, 0.5), (11, 0.0), (15, 10.25), (13, 0.1)]
    assert [r.feature for r in refusal if r.k == 4 and r.source == "reference"] == [10, 11, 20, 21]
    assert [(r.feature, r.nnls_weight) for r in refusal if r.k == 2] == [(10, 0.7), (11, 0.3)]


def test_rerecording_a_step_replaces_it(store):
    store.start_run("sft-b", {})
    first = store.record_evaluation("sft-b", make_report(7))
    changed = make_report(7, fade=0.1)
    again = store.record_evaluation("sft-b", changed)
    assert again == first
    evaluations = store.evaluations("sft-b")
    assert len(evaluations) == 1 and evaluations[0].report.to_json() == changed.to_json()
    series = store.metric_series("sft-b", "featuredrift_refusal_feature_gap",
                                 {"layer": "layers.1", "features": "reference"})
    assert [(p.step, p.value) for p in series] == [(7, pytest.approx(0.3))]
    assert len(store.drifted_features("sft-b")) == 2 * 3


def test_resume_continues_the_same_run(store_url):
    with RunStore(store_url) as store:
        first = store.start_run("sft-c", {"lr": 1e-4}, sae_fingerprint="sae1")
        for step in (0, 10, 20):
            store.record_evaluation("sft-c", make_report(step))
        store.finish_run("sft-c", "failed")  # the job was killed
    with RunStore(store_url) as store:
        resumed = store.start_run("sft-c", {"lr": 1e-4}, sae_fingerprint="sae1")
        assert resumed.resumed and resumed.id == first.id and resumed.status == "running"
        assert store.last_step("sft-c") == 20
        # The resumed job re-evaluates its checkpoint step, then continues.
        for step in (20, 30):
            store.record_evaluation("sft-c", make_report(step))
        assert [e.step for e in store.evaluations("sft-c")] == [0, 10, 20, 30]
        assert store.recorded_steps("sft-c") == [0, 10, 20, 30]
        assert [r.name for r in store.list_runs()] == ["sft-c"]
        with pytest.raises(RunMismatchError, match="sae2"):
            store.start_run("sft-c", {}, sae_fingerprint="sae2")
        assert store.finish_run("sft-c").status == "finished"


def test_a_writer_that_returns_late_cannot_undo_an_import(store_url):
    """A store writer blocked on a locked database (the run's sync thread at close) may return
    after `runs import` stored the whole journal; its late write must not reopen the run."""
    import threading

    from featuredrift.store.journal import JournalEvent
    from featuredrift.store.sync import apply_event, store_event

    run = "late-writer"
    journal = [
        JournalEvent(1, "run", run, {"config": {"lr": 1e-4}}),
        JournalEvent(2, "evaluation", run, make_report(0).to_dict()),
        JournalEvent(3, "finish", run, {"status": "finished"}),
    ]
    read_done, go = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def late_writer():
        try:
            with RunStore(store_url) as late, late.applying_journal_event(journal[0]) as new:
                outcome["saw_it_new"] = new
                read_done.set()
                go.wait(5)
                if new:
                    apply_event(late, journal[0])
            outcome["late"] = "stored"
        except Exception as error:  # noqa: BLE001 - which error depends on the database
            outcome["late"] = type(error).__name__

    def importer():
        with RunStore(store_url) as store:
            outcome["imported"] = sum(store_event(store, event) for event in journal)

    writer = threading.Thread(target=late_writer)
    writer.start()
    assert read_done.wait(10)
    importing = threading.Thread(target=importer)
    importing.start()
    importing.join(1.0)  # SQLite: the import completes; PostgreSQL: it waits on the locked run row
    go.set()
    writer.join(10)
    importing.join(20)
    assert outcome["saw_it_new"] is True
    with RunStore(store_url) as store:
        info = store.get_run(run)
        assert info.status == "finished", outcome
        assert store.applied_sequences(run) == {1, 2, 3}
        assert store.recorded_steps(run) == [0]
        # Replaying the journal once more changes nothing.
        assert sum(store_event(store, event) for event in journal) == 0


def test_export_round_trips(store):
    store.start_run("sft-d", {"refusal_k": 4}, model_fingerprint="m1")
    reports = [make_report(step) for step in (0, 3, 6)]
    for report in reports:
        store.record_evaluation("sft-d", report)
    store.record_alert("sft-d", "RefusalFeaturesFading", "critical", message="gap 0.6", step=6)
    store.record_checkpoint("sft-d", 3, "/runs/sft-d/checkpoint-3")
    from featuredrift.monitor.audit_report import AuditedExample, DataAudit

    audit = DataAudit("layers.1", [AuditedExample(4, "How do I pick a lock?", "Sure!", 1.2, 1.1, 1.3, False, 0.9)], 40)
    store.record_audit("sft-d", [audit])

    rows = parse_csv_export(store.export("sft-d", "csv"))
    from_csv: dict[int, dict] = {}
    for row in rows:
        assert row["run"] == "sft-d"
        from_csv.setdefault(row["step"], {})[(row["metric"], json.dumps(row["labels"], sort_keys=True))] = row["value"]
    assert from_csv == {r.step: sample_set(r) for r in reports}

    exported = store.export("sft-d", "json")
    imported = store.import_json(exported, name="sft-d-copy")
    assert imported.evaluation_count == 3 and imported.model_fingerprint == "m1"
    assert [e.report.to_json() for e in store.evaluations("sft-d-copy")] == [r.to_json() for r in reports]
    [alert] = store.alerts("sft-d-copy")
    assert (alert.name, alert.status, alert.step) == ("RefusalFeaturesFading", "firing", 6)
    assert [(c.step, c.path) for c in store.checkpoints("sft-d-copy")] == [(3, "/runs/sft-d/checkpoint-3")]
    assert store.audit("sft-d-copy") == [audit] and audit.summary == {"harmful-looking request answered compliantly": 1}


def test_alerts_open_and_resolve(store):
    store.start_run("sft-e", {})
    store.record_evaluation("sft-e", make_report(4))
    opened = store.record_alert("sft-e", "RefusalFeaturesFading", "critical", message="fading", step=4)
    assert store.record_alert("sft-e", "RefusalFeaturesFading", "critical", message="still", step=4) == opened
    assert store.record_alert("sft-e", "RefusalFeaturesFading", "critical", status="resolved") == opened
    [alert] = store.alerts("sft-e")
    assert alert.status == "resolved" and alert.ended_at >= alert.started_at and alert.message == "still"
    with pytest.raises(ValueError, match="firing"):
        store.record_alert("sft-e", "X", "warning", status="pending")


def test_alert_engine_transitions_are_stored_per_series(store):
    from featuredrift.alerts.engine import FiredAlert

    store.start_run("sft-f", {})
    store.record_evaluation("sft-f", make_report(8))

    def fired(layer: str, status: str, ends_at: float | None = None) -> FiredAlert:
        return FiredAlert(
            name="RefusalFeaturesFading", status=status, severity="critical",
            labels={"alertname": "RefusalFeaturesFading", "severity": "critical", "run": "sft-f", "layer": layer},
            annotations={"summary": f"refusal features fading at {layer}"}, value=0.42,
            starts_at=1_700_000_100.0, ends_at=ends_at, step=8,
        )

    first = store.record_alert("sft-f", fired("layers.1", "firing"))
    second = store.record_alert("sft-f", fired("layers.3", "firing"))
    assert first != second  # same alert name, different series
    assert store.record_alert("sft-f", fired("layers.1", "resolved", ends_at=1_700_000_200.0)) == first
    alerts = {a.labels["layer"]: a for a in store.alerts("sft-f")}
    assert (alerts["layers.1"].status, alerts["layers.3"].status) == ("resolved", "firing")
    assert alerts["layers.1"].ended_at.timestamp() == 1_700_000_200.0
    assert alerts["layers.1"].started_at.timestamp() == 1_700_000_100.0
    assert (alerts["layers.3"].message, alerts["layers.3"].value, alerts["layers.3"].step) == (
        "refusal features fading at layers.3", 0.42, 8)

    stopped = store.record_stop("sft-f", 8, "RefusalFeaturesFading at layers.3")
    assert stopped.status == "stopped" and stopped.extra["stopped_at_step"] == 8


def test_compare_latest_values(store):
    store.start_run("a", {"lr": 1e-4, "k": 4})
    store.start_run("b", {"lr": 3e-4, "k": 4})
    store.record_evaluation("a", make_report(10, fade=0.01))
    store.record_evaluation("b", make_report(0))
    store.record_evaluation("b", make_report(10, fade=0.05))
    comparison = store.compare("a", "b")
    assert comparison.config_differences == {"lr": (1e-4, 3e-4)}
    by_key = {(m.name, json.dumps(m.labels, sort_keys=True)): m for m in comparison.metrics}
    gap = by_key[("featuredrift_refusal_feature_gap", json.dumps(
        {"features": "reference", "layer": "layers.1"}, sort_keys=True))]
    assert (gap.step_a, gap.step_b) == (10, 10)
    assert gap.delta == pytest.approx(0.5 - 0.9)


def test_unknown_run_names_the_known_ones(store):
    store.start_run("alpha", {})
    store.start_run("beta", {})
    with pytest.raises(UnknownRunError, match="'gamma' not found.*known runs: alpha, beta"):
        store.record_evaluation("gamma", make_report(1))


def test_schema_is_at_head_and_matches_models(store):
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection)
        assert context.get_current_heads() == (head_revision(),)
        assert compare_metadata(context, Base.metadata) == []


def test_sqlite_pragmas(tmp_path):
    with RunStore(f"sqlite:///{tmp_path / 'p.db'}") as store, store.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_corrupt_sqlite_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.db"
    path.write_bytes(b"this is not a database " * 200)
    with pytest.raises(CorruptStoreError, match=r"broken\.db.*not a valid SQLite database"):
        RunStore(f"sqlite:///{path}")


def test_schema_newer_than_code_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'future.db'}"
    RunStore(url).close()
    with sqlite3.connect(tmp_path / "future.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'f00dfeed'")
    with pytest.raises(SchemaTooNewError, match="'f00dfeed' is newer"):
        RunStore(url)


def test_unreachable_database_hides_the_password():
    from servers import free_port

    url = f"postgresql+psycopg://user:s3cret@127.0.0.1:{free_port()}/nope"
    with pytest.raises(StoreUnavailableError) as raised:
        RunStore(url)
    assert "s3cret" not in str(raised.value) and "user:***@127.0.0.1" in str(raised.value)


def test_an_alert_keeps_the_step_it_fired_at_and_records_the_step_it_resolved(store):
    from featuredrift.alerts.engine import AlertEngine

    store.start_run("alerting", {})
    engine = AlertEngine(goal="guard", on_fire=lambda a: store.record_alert("alerting", a),
                         on_resolve=lambda a: store.record_alert("alerting", a))
    from reports import make_report as hand_made

    for step, gap in ((0, 1.0), (10, 0.3), (20, 0.3), (30, 0.95)):
        report = hand_made(step, 1_700_000_000.0 + step, relative_gap=gap, harmful_refusal=None)
        store.record_evaluation("alerting", report)
        engine.evaluate(report, run="alerting")
    fading = next(a for a in store.alerts("alerting") if a.name == "RefusalFeaturesFading")
    assert (fading.status, fading.step, fading.resolved_step) == ("resolved", 10, 30)


def test_compare_aligns_runs_by_step_and_finds_where_they_diverge(store):
    store.start_run("slow", {})
    store.start_run("fast", {})
    for step in (0, 5, 10, 15):
        store.record_evaluation("slow", make_report(step, fade=0.01))
    for step in (0, 5, 10, 15, 20):  # a longer run: its latest step (20) is not the common one
        store.record_evaluation("fast", make_report(step, fade=0.05))
    comparison = store.compare("slow", "fast")
    by_key = {(m.name, json.dumps(m.labels, sort_keys=True)): m for m in comparison.metrics}
    gap = by_key[("featuredrift_refusal_feature_gap", json.dumps({"features": "reference", "layer": "layers.1"}, sort_keys=True))]
    assert (gap.step_a, gap.step_b, gap.common_steps) == (15, 15, 4)
    assert gap.value_a == pytest.approx(1 - 0.15) and gap.value_b == pytest.approx(1 - 0.75)
    assert gap.diverges_at == 5  # 0.95 vs 0.75 at step 5; identical at step 0
    same = by_key[("featuredrift_fvu_ratio", json.dumps({"data": "base", "layer": "layers.1", "model": "reference"}, sort_keys=True))]
    assert same.diverges_at is None


def test_the_last_safe_checkpoint_is_the_newest_that_passed_every_critical_alert(tmp_path):
    from featuredrift.store.checkpoints import last_safe_checkpoint

    folders = {step: tmp_path / f"checkpoint-{step}" for step in (9, 15, 18, 27, 36)}
    for folder in folders.values():
        folder.mkdir()
    saved = [(step, str(path)) for step, path in folders.items()]
    evaluated = [0, 9, 18, 27, 36]

    def safe(critical, checkpoints=saved):
        found = last_safe_checkpoint(checkpoints, evaluated, critical)
        return None if found is None else (found.step, found.judged_by)

    assert safe([]) == (36, (36,))
    assert safe([(27, None)]) == (18, (18,))  # fired at 27 and never recovered (or the run's end closed it)
    assert safe([(18, 27)]) == (36, (36,))  # fired at 18, recovered at 27
    # 15 lies between a passing 9 and a failing 18: not safe
    assert safe([(18, None)], [(9, str(folders[9])), (15, str(folders[15]))]) == (9, (9,))
    assert safe([(27, None)], [(15, str(folders[15]))]) == (15, (9, 18))
    assert safe([(9, None)]) is None
    folders[18].rmdir()  # save_total_limit removed it: the next older one that exists
    assert safe([(27, None)]) == (15, (9, 18))
    # saved after the last evaluation (the final save, before the final evaluation): judged by the one before
    assert last_safe_checkpoint([(40, str(folders[36]))], evaluated, []).judged_by == (36,)


def test_heartbeats_never_move_back_and_staleness_is_read_not_written(store):
    from datetime import datetime, timedelta, timezone

    store.start_run("r", {})
    now = datetime.now(timezone.utc)
    store.record_heartbeat("r", (now - timedelta(minutes=10)).timestamp(), expected_s=30)
    store.record_heartbeat("r", (now - timedelta(hours=2)).timestamp())  # a late replay of an older event
    info = store.get_run("r")
    assert info.status == "running" and info.heartbeat_interval_s == 30
    assert 590 < info.silent_for(now) < 610
    assert info.stale(now) and not info.stale(now - timedelta(minutes=9))  # silent for 10 min: > 3 × 30 s
    assert info.status_text(now) == "running (stale: no event for 10 min, expected every 30 s)"
    store.finish_run("r", "failed", {"type": "KeyboardInterrupt", "message": ""})
    failed = store.get_run("r")
    assert not failed.stale(now) and failed.status_text(now) == "failed: KeyboardInterrupt"


def test_a_replayed_journal_keeps_the_time_its_events_were_written(tmp_path):
    """`runs import` hours after a run died must not make it look alive: heartbeats are the events' own times."""
    import time

    from featuredrift.store.journal import RunJournal, read_journal
    from featuredrift.store.sync import store_event

    journal = RunJournal.for_run(tmp_path, "dead")
    journal.append("run", {"config": {}, "provenance": {}, "expected_s": 60})
    journal.append("evaluation", make_report(0).to_dict())
    journal.append("checkpoint", {"step": 0, "path": str(tmp_path / "checkpoint-0")})
    events = read_journal(journal.path)
    written = events[-1].at
    assert all(e.at is not None and abs(e.at - time.time()) < 60 for e in events)
    old = [type(e)(e.seq, e.kind, e.run, e.data, fingerprints=e.fingerprints, at=e.at - 7200) for e in events]  # as if journaled two hours ago
    with RunStore(f"sqlite:///{tmp_path / 'runs.db'}") as store:
        for event in old:
            store_event(store, event)
        info = store.get_run("dead")
        assert abs(info.heartbeat_at.timestamp() - (written - 7200)) < 1e-3 and info.stale()
        assert [c.step for c in store.checkpoints("dead")] == [0]
# One process opening the store once the parent says go: what a job does at train begin.
OPEN_AT_ONCE = """
import pathlib, sys, time
from featuredrift.store import RunStore
url, ready, go = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.001)
with RunStore(url) as store:
    store.start_run(ready.name, {})
"""


def test_jobs_starting_at_once_on_a_fresh_store_migrate_one_at_a_time(store_url, tmp_path):
    """Several processes open the same fresh store at the same instant: each one opens it (no
    duplicate-type or locked-table error from two migrations racing) and the schema is migrated once."""
    import subprocess
    import sys
    import time

    jobs = 6
    go = tmp_path / "go"
    processes = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, store_url, str(tmp_path / f"job-{i}"), str(go)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(jobs)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"job-{i}").exists() for i in range(jobs)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes), "a job died before the start"
        time.sleep(0.01)
    go.touch()
    outcomes = [(p.wait(timeout=120), p.stderr.read()) for p in processes]
    assert [code for code, _ in outcomes] == [0] * jobs, "\n".join(err[-2000:] for code, err in outcomes if code)
    with RunStore(store_url) as store, store.engine.connect() as connection:
        assert sorted(r.name for r in store.list_runs()) == [f"job-{i}" for i in range(jobs)]
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head_revision()]


def _journal_file(path, events) -> str:
    path.write_text("".join(event.to_line() for event in events))
    return path


def _events(run: str, *items: tuple[str, dict], first: int = 1):
    from featuredrift.store.journal import JournalEvent

    prints = {"model_fingerprint": "model-a", "sae_fingerprint": "sae-a", "probe_fingerprint": "probes-a"}
    return [JournalEvent(seq, kind, run, data, fingerprints=prints) for seq, (kind, data) in enumerate(items, start=first)]


def _report(step: int, **changes) -> dict:
    import dataclasses

    return dataclasses.replace(make_report(step), **changes).to_dict()


def _stored(store, run: str) -> dict[int, dict]:
    return {e.step: e.report.to_dict() for e in store.evaluations(run)}


def test_a_resumed_run_rewrites_its_own_steps_past_the_checkpoint_from_any_journal_order(store_url, tmp_path):
    """A run killed after evaluating step 20 and resumed from its step-10 checkpoint evaluates
    20 again: the newer reading replaces the abandoned one however the journals are imported,
    and a final evaluation completes the one training stopped at. Nothing else may be rewritten."""
    from featuredrift.store.errors import HistoryConflictError
    from featuredrift.store.sync import import_journals

    run = "resumed"
    events = _events(
        run,
        ("run", {"config": {}, "provenance": {}}),
        ("evaluation", _report(0)), ("evaluation", _report(10)), ("evaluation", _report(20, timestamp=1.0)),
        ("run", {"config": {}, "provenance": {}, "resumed_at_step": 10}),
        ("evaluation", _report(20, timestamp=2.0)),
        ("evaluation", _report(30)), ("evaluation", _report(30, final=True, safety_score=0.5)),
        ("finish", {"status": "finished"}),
    )
    killed, resumed = _journal_file(tmp_path / "killed.jsonl", events[:4]), _journal_file(tmp_path / "resumed.jsonl", events[4:])
    for order in ((killed, resumed), (resumed, killed)):
        with RunStore(store_url) as store:
            for path in order:
                import_journals(store, [path])
            stored = _stored(store, run)
            assert sorted(stored) == [0, 10, 20, 30]
            assert stored[20]["timestamp"] == 2.0 and stored[30]["final"] and stored[30]["safety_score"] == 0.5
            assert store.get_run(run).status == "finished"
            assert store.applied_sequences(run) == set(range(1, 10))
            assert import_journals(store, [killed, resumed]) == {run: 0}
            # Step 10 is before the checkpoint: no journal of the run may change it.
            forged = _journal_file(tmp_path / "forged.jsonl", _events(run, ("evaluation", _report(10, timestamp=3.0)),
                                                                      first=10))
            with pytest.raises(HistoryConflictError, match="step 10"):
                import_journals(store, [forged])
            assert _stored(store, run) == stored and 10 not in store.applied_sequences(run)
            store.engine.dispose()
        with RunStore(store_url) as store, store.engine.begin() as connection:
            for table in ("journal_events", "metric_values", "drifted_features", "refusal_features", "feature_contexts",
                          "alerts", "evaluations", "runs"):
                connection.execute(text(f"DELETE FROM {table}"))


def test_the_same_event_number_with_other_content_is_refused(store_url, tmp_path):
    from featuredrift.store.errors import HistoryConflictError
    from featuredrift.store.sync import import_journals

    events = _events("edited", ("run", {"config": {}, "provenance": {}}), ("evaluation", _report(0)))
    with RunStore(store_url) as store:
        import_journals(store, [_journal_file(tmp_path / "journal.jsonl", events)])
        edited = _events("edited", ("run", {"config": {}, "provenance": {}}), ("evaluation", _report(0, kl_mean=9.0)))
        with pytest.raises(HistoryConflictError, match="event 2 .*differs"):
            import_journals(store, [_journal_file(tmp_path / "edited.jsonl", edited)])
        assert _stored(store, "edited")[0]["kl_mean"] == 0.0


def test_a_quiet_training_loop_journals_a_heartbeat_every_heartbeat_s(tmp_path):
    """Between evaluations the loop's step ends are signs of life: journaled at most once per
    `heartbeat_s`, however often they come, and never skipped when `heartbeat_s` has passed."""
    import time

    from featuredrift.callbacks.session import MonitorSession
    from featuredrift.monitor.config import MonitorConfig
    from featuredrift.store.journal import read_journal

    config = MonitorConfig(store_url=f"sqlite:///{tmp_path / 'runs.db'}", heartbeat_s=0.2, alert_goal="off")
    session = MonitorSession.open(config, "quiet", journal_dir=tmp_path)
    for step in range(200):  # a burst of fast steps: one heartbeat at most
        session.heartbeat(step)
    burst = [e for e in read_journal(session.journal.path) if e.kind == "heartbeat"]
    for step in range(200, 204):
        time.sleep(0.25)
        session.heartbeat(step)
    session.close()
    beats = [e for e in read_journal(session.journal.path) if e.kind == "heartbeat"]
    assert len(burst) <= 1 and len(beats) - len(burst) == 4
    assert [e.data["step"] for e in beats[len(burst):]] == [200, 201, 202, 203]
    assert all(b.at > a.at for a, b in zip(beats, beats[1:], strict=False))
    with RunStore(config.store_url) as store:
        assert abs(store.get_run("quiet").heartbeat_at.timestamp() - beats[-1].at) < 1.0
