"""`RunStore`: the history of monitored runs in SQL (SQLite by default, PostgreSQL by URL).

Every write is one transaction that is committed before the method returns, so a report
recorded here is durable before anything exports it. Evaluations are unique per
(run, step): recording the same step again (a resumed run re-evaluating it) replaces the
stored evaluation in place instead of adding a second one. What comes from a journal or an
export is held to the run's identity: it must carry the run's fingerprints, and it may change a
stored evaluation only as the run itself would (a resumed run re-evaluating a step past its
checkpoint, the final evaluation completing the one training stopped at).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from featuredrift.monitor.audit_report import AuditedExample, DataAudit
from featuredrift.monitor.config import DEFAULT_STORE_URL
from featuredrift.monitor.report import EvaluationReport
from featuredrift.store import rows
from featuredrift.store.checkpoints import SafeCheckpoint, last_safe_checkpoint
from featuredrift.store.engine import (
    SQLITE_BEGIN,
    make_engine,
    parse_store_url,
    require_existing_store,
    translate_open_error,
    url_for_humans,
)
from featuredrift.store.errors import (
    HistoryConflictError,
    RunMismatchError,
    SchemaTooNewError,
    StoreError,
    StoreUnavailableError,
    UnknownRunError,
)
from featuredrift.store.journal import FINGERPRINT_FIELDS, JournalEvent
from featuredrift.store.migrate import require_current_schema, upgrade_to_head
from featuredrift.store.models import (
    Alert,
    AuditExample,
    CategoryRefusal,
    Checkpoint,
    DriftedFeature,
    Evaluation,
    FeatureContext,
    JournalRecord,
    MetricValue,
    RefusalFeature,
    Run,
    utc_now,
)
from featuredrift.store.rows import (
    AlertInfo,
    CategoryRefusalRow,
    CheckpointRow,
    DriftedFeatureRow,
    EvaluationInfo,
    FeatureContextRow,
    MetricComparison,
    RefusalFeatureRow,
    RunComparison,
    RunInfo,
    SeriesPoint,
    labels_key,
)

log = logging.getLogger(__name__)

RUN_STATUSES = ("running", "finished", "failed", "stopped")
ALERT_STATUSES = ("firing", "resolved")
EXPORT_FORMATS = ("csv", "json")
JSON_EXPORT_FORMAT = "featuredrift-run/1"
CSV_COLUMNS = ("run", "step", "timestamp", "epoch", "metric", "labels", "value")


class AlignedPoint(NamedTuple):
    """One series of two runs at one step both evaluated."""

    step: int
    value_a: float
    value_b: float


class RunStore:
    """Open (and migrate to head) the run store at `url`."""

    def __init__(self, url: str = DEFAULT_STORE_URL, *, read_only: bool = False) -> None:
        """`read_only` (the `runs` and `report` commands) never creates or migrates a database."""
        self.url = parse_store_url(url)
        self.display_url = url_for_humans(self.url)
        if read_only:
            require_existing_store(self.url, self.display_url)
        self.engine = make_engine(self.url, create_folder=not read_only)
        try:
            if read_only:
                require_current_schema(self.engine, self.display_url)
            else:
                upgrade_to_head(self.engine, self.display_url)
        except (SchemaTooNewError, StoreError):
            self.engine.dispose()
            raise
        except Exception as error:
            self.engine.dispose()
            raise translate_open_error(error, self.url) from error
        # A writer's transactions take SQLite's write lock at BEGIN: concurrent writers (jobs sharing
        # one file) queue on the busy timeout instead of failing on a snapshot another one changed.
        bind = self.engine if read_only else self.engine.execution_options(**{SQLITE_BEGIN: "BEGIN IMMEDIATE"})
        self._sessions = sessionmaker(bind, expire_on_commit=False)
        self._held = threading.local()

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunStore({self.display_url!r})"

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        """A transaction of its own, or the one `applying_journal_event` holds open on this thread."""
        held = getattr(self._held, "session", None)
        if held is not None:
            yield held
            return
        try:
            with self._sessions.begin() as session:
                yield session
        except OperationalError as error:
            raise StoreUnavailableError(
                f"run store {self.display_url}: {str(error.orig).strip() or error}"
            ) from error

    # ---- runs -------------------------------------------------------------------------

    def start_run(
        self,
        name: str,
        config: dict[str, Any] | None = None,
        *,
        model_fingerprint: str | None = None,
        sae_fingerprint: str | None = None,
        reference_policy: str | None = None,
        journal_sequence: int | None = None,
        resumed_at_step: int | None = None,
        **extra: Any,
    ) -> RunInfo:
        """Create the run, or continue it when one of that name exists (a resumed job).

        Continuing with a different model, SAE or probe fingerprint is refused: the stored
        metrics would silently stop being comparable. `journal_sequence` is the journal event
        this comes from: an event older than the run's latest status change only adds what it
        knows (a resume point), it does not turn the run back to running.
        """
        if not name or not name.strip():
            raise ValueError(f"run name: expected a non-empty string, found {name!r}")
        config = dict(config or {})
        for attempt in range(2):
            try:
                with self._transaction() as session:
                    run = session.scalar(select(Run).where(Run.name == name))
                    resumed = run is not None
                    if run is None:
                        run = Run(
                            name=name,
                            config=config,
                            model_fingerprint=model_fingerprint,
                            sae_fingerprint=sae_fingerprint,
                            reference_policy=reference_policy,
                            extra=extra,
                            status="running",
                        )
                        session.add(run)
                    else:
                        given = {"model_fingerprint": model_fingerprint, "sae_fingerprint": sae_fingerprint,
                                 "probe_fingerprint": extra.get("probe_fingerprint")}
                        self._require_same_inputs(run, given, "resumed")
                        if self._is_current(run, journal_sequence):
                            run.status = "running"
                            run.config = config or run.config
                            run.model_fingerprint = model_fingerprint or run.model_fingerprint
                            run.sae_fingerprint = sae_fingerprint or run.sae_fingerprint
                            run.reference_policy = reference_policy or run.reference_policy
                            run.extra = {**(run.extra or {}), **extra}
                        run.updated_at = utc_now()
                    self._note_status_sequence(run, journal_sequence)
                    if resumed_at_step is not None and journal_sequence is not None:
                        resumes = sorted({*map(tuple, (run.extra or {}).get("resumes", [])),
                                          (int(journal_sequence), int(resumed_at_step))})
                        run.extra = {**(run.extra or {}), "resumes": [list(point) for point in resumes]}
                    session.flush()
                    return self._run_info(session, run, resumed=resumed)
            except IntegrityError:
                if attempt == 1 or getattr(self._held, "session", None) is not None:
                    raise
                # Another process created the same run between our SELECT and INSERT.
        raise AssertionError("unreachable")

    def _require_same_inputs(self, run: Run, fingerprints: dict[str, str | None], doing: str) -> None:
        """Refuse to write to `run` with another model, SAE or probe set, naming both."""
        stored = {"model_fingerprint": run.model_fingerprint, "sae_fingerprint": run.sae_fingerprint,
                  "probe_fingerprint": (run.extra or {}).get("probe_fingerprint")}
        for field in FINGERPRINT_FIELDS:
            mine, theirs = stored.get(field), fingerprints.get(field)
            if mine and theirs and mine != theirs:
                what = field.removesuffix("_fingerprint").replace("probe", "probe set").replace("sae", "SAE")
                raise RunMismatchError(
                    f"run {run.name!r} in {self.display_url}: {doing} with {what} fingerprint {theirs!r}, but the run "
                    f"was recorded with {mine!r}; a different {what} is a different run: use a new run name"
                )

    @staticmethod
    def _is_current(run: Run, journal_sequence: int | None) -> bool:
        """Whether a status change from this journal event is newer than the run's latest one."""
        return journal_sequence is None or journal_sequence > int((run.extra or {}).get("status_sequence", 0))

    @staticmethod
    def _note_status_sequence(run: Run, journal_sequence: int | None) -> None:
        if journal_sequence is not None and journal_sequence > int((run.extra or {}).get("status_sequence", 0)):
            run.extra = {**(run.extra or {}), "status_sequence": int(journal_sequence)}

    def finish_run(self, name: str, status: str = "finished", error: dict[str, str] | None = None, *,
                   journal_sequence: int | None = None) -> RunInfo:
        """End a run; a `failed` one keeps the exception's type and message (`error`)."""
        if status not in RUN_STATUSES:
            raise ValueError(f"run status: expected one of {RUN_STATUSES}, found {status!r}")
        with self._transaction() as session:
            run = self._require_run(session, name)
            if self._is_current(run, journal_sequence):
                run.status = status
                if error:
                    run.extra = {**(run.extra or {}), "error": {k: str(v) for k, v in error.items()}}
                run.updated_at = utc_now()
            self._note_status_sequence(run, journal_sequence)
            session.flush()
            return self._run_info(session, run)

    def get_run(self, name: str) -> RunInfo:
        with self._transaction() as session:
            return self._run_info(session, self._require_run(session, name))

    def list_runs(self) -> list[RunInfo]:
        with self._transaction() as session:
            stats = self._evaluation_stats(session)
            runs = session.scalars(select(Run).order_by(Run.created_at, Run.id)).all()
            return [self._run_info(session, run, stats=stats) for run in runs]

    def last_step(self, run_name: str) -> int | None:
        """The newest recorded step (None before the first evaluation): where a resumed run stands."""
        with self._transaction() as session:
            run = self._require_run(session, run_name)
            return session.scalar(select(func.max(Evaluation.step)).where(Evaluation.run_id == run.id))

    # ---- evaluations ------------------------------------------------------------------

    def record_evaluation(self, run_name: str, report: EvaluationReport, *, journal_sequence: int | None = None,
                          replace: bool = True) -> int:
        """Store a report and its flat projections in one transaction; returns the evaluation id.

        Idempotent per (run, step): the same step again replaces the stored one in place. A report
        from a journal (`journal_sequence`) or an import (`replace=False`) never changes a stored
        evaluation with different content, unless it is the run's own newer reading of that step
        (see `_replaces`): that is refused with `HistoryConflictError`. The same content is a no-op.
        """
        for attempt in range(2):
            try:
                with self._transaction() as session:
                    return self._write_evaluation(session, run_name, report, journal_sequence,
                                                  replace and journal_sequence is None)
            except IntegrityError:
                if attempt == 1 or getattr(self._held, "session", None) is not None:
                    raise
                # A concurrent writer inserted the same (run, step); retry as an update.
        raise AssertionError("unreachable")

    def _write_evaluation(self, session: Session, run_name: str, report: EvaluationReport,
                          journal_sequence: int | None, replace: bool) -> int:
        run = self._require_run(session, run_name)
        step = int(report.step)
        text = report.to_json()
        evaluation = session.scalar(
            select(Evaluation).where(Evaluation.run_id == run.id, Evaluation.step == step)
        )
        if evaluation is None:
            evaluation = Evaluation(run_id=run.id, step=step)
            session.add(evaluation)
        else:
            if evaluation.report == text:
                return evaluation.id
            if not replace:
                verdict = self._replaces(run, evaluation, report, journal_sequence)
                if verdict == "superseded":
                    return evaluation.id
                if verdict != "newer":
                    origin = (f"journal event {evaluation.journal_sequence}" if evaluation.journal_sequence is not None
                              else "an import or a direct write")
                    incoming = f"journal event {journal_sequence}" if journal_sequence is not None else "this import"
                    raise HistoryConflictError(
                        f"run {run.name!r} in {self.display_url}: {incoming} would replace the evaluation stored at "
                        f"step {step} (from {origin}, recorded {evaluation.recorded_at:%Y-%m-%d %H:%M:%S}) with a "
                        "different one; refused: a run's history is only rewritten by its own resumed trajectory "
                        "(is this another run's journal or export?)"
                    )
            for table in (MetricValue, DriftedFeature, RefusalFeature, FeatureContext, CategoryRefusal):
                session.execute(delete(table).where(table.evaluation_id == evaluation.id))
        evaluation.journal_sequence = journal_sequence
        evaluation.timestamp = float(report.timestamp)
        evaluation.epoch = rows.finite_or_none(report.epoch)
        evaluation.duration_s = rows.report_duration(report)
        evaluation.timings = {k: v for k, v in report.timings.items() if rows.finite_or_none(v) is not None}
        evaluation.report = text
        evaluation.recorded_at = utc_now()
        run.updated_at = utc_now()
        session.flush()

        samples: dict[tuple[str, str], float] = {}
        for sample in report.metric_samples():
            key = (sample.name, labels_key(sample.labels))
            if key in samples:
                log.warning("report step %d: duplicate metric sample %s %s; keeping the last", step, *key)
            samples[key] = sample.value
        if samples:
            session.execute(
                insert(MetricValue),
                [
                    {"evaluation_id": evaluation.id, "name": name, "labels": labels, "value": value}
                    for (name, labels), value in samples.items()
                ],
            )
        drifted, refusal, contexts = [], [], []
        for hookpoint, layer in report.layers.items():
            contexts += [
                {"evaluation_id": evaluation.id, "hookpoint": hookpoint, **fields}
                for fields in rows.feature_context_fields(layer)
            ]
            drifted += [
                {"evaluation_id": evaluation.id, "hookpoint": hookpoint, **fields}
                for fields in rows.drifted_feature_fields(layer)
            ]
            refusal += [
                {"evaluation_id": evaluation.id, "hookpoint": hookpoint, **fields}
                for fields in rows.refusal_feature_fields(layer)
            ]
        if drifted:
            session.execute(insert(DriftedFeature), drifted)
        if refusal:
            session.execute(insert(RefusalFeature), refusal)
        if contexts:
            session.execute(insert(FeatureContext), contexts)
        categories = [{"evaluation_id": evaluation.id, **fields} for fields in rows.category_refusal_fields(report)]
        if categories:
            session.execute(insert(CategoryRefusal), categories)
        return evaluation.id

    @staticmethod
    def _replaces(run: Run, stored: Evaluation, report: EvaluationReport, sequence: int | None) -> str:
        """How a journal's reading of a stored step relates to the stored one: "newer" (it replaces
        it), "superseded" (the stored one replaced it already; replayed late), or "conflict".

        A run reads one step twice only when it resumes from a checkpoint before that step (the
        steps after it belong to the trajectory abandoned at the kill) or when its final
        evaluation completes the one training stopped at; both come later in the run's journal.
        """
        old = stored.journal_sequence
        if sequence is None or old is None or sequence == old:
            return "conflict"
        first, last = sorted((old, sequence))
        step = int(report.step)
        resumed = any(first < seq < last and resumed_at < step for seq, resumed_at in (run.extra or {}).get("resumes", []))
        stored_final = bool(json.loads(stored.report).get("final"))
        later_final = report.final if sequence > old else stored_final
        earlier_final = stored_final if sequence > old else report.final
        if resumed or (later_final and not earlier_final):
            return "newer" if sequence > old else "superseded"
        return "conflict"

    def recorded_steps(self, run_name: str) -> list[int]:
        """Steps already stored, ascending (cheap: no report is parsed); a resumed run skips them."""
        with self._transaction() as session:
            run = self._require_run(session, run_name)
            return list(session.scalars(
                select(Evaluation.step).where(Evaluation.run_id == run.id).order_by(Evaluation.step)
            ).all())

    def evaluations(self, run_name: str) -> list[EvaluationInfo]:
        with self._transaction() as session:
            run = self._require_run(session, run_name)
            found = session.scalars(
                select(Evaluation).where(Evaluation.run_id == run.id).order_by(Evaluation.step)
            ).all()
            return [
                EvaluationInfo(
                    id=e.id,
                    step=e.step,
                    timestamp=e.timestamp,
                    epoch=e.epoch,
                    duration_s=e.duration_s,
                    report=EvaluationReport.from_dict(json.loads(e.report)),
                )
                for e in found
            ]

    def metric_names(self, run_name: str) -> list[tuple[str, dict[str, str]]]:
        """Every (metric name, labels) series the run has, sorted."""
        with self._transaction() as session:
            run = self._require_run(session, run_name)
            found = session.execute(
                select(MetricValue.name, MetricValue.labels)
                .join(Evaluation, MetricValue.evaluation_id == Evaluation.id)
                .where(Evaluation.run_id == run.id)
                .distinct()
            ).all()
            return [(name, json.loads(labels)) for name, labels in sorted(found)]

    def metric_series(
        self, run_name: str, name: str, labels: dict[str, str] | None = None
    ) -> list[SeriesPoint]:
        """Values of metric `name` over steps; `labels` keeps series whose labels include them."""
        with self._transaction() as session:
            run = self._require_run(session, run_name)
            found = session.execute(
                select(Evaluation.step, MetricValue.labels, MetricValue.value)
                .join(Evaluation, MetricValue.evaluation_id == Evaluation.id)
                .where(Evaluation.run_id == run.id, MetricValue.name == name)
                .order_by(Evaluation.step, MetricValue.labels)
            ).all()
        wanted = {str(k): str(v) for k, v in (labels or {}).items()}
        points = [SeriesPoint(step, json.loads(key), value) for step, key, value in found]
        return [p for p in points if all(p.labels.get(k) == v for k, v in wanted.items())]

    def _projection(self, run_name: str, columns: tuple, order: tuple, *conditions) -> list[tuple]:
        """(step, *columns) of one projection table for a run's evaluations, oldest step first. Columns,
        not entities: a run's history is tens of thousands of rows."""
        table = columns[0].class_
        with self._transaction() as session:
            run = self._require_run(session, run_name)
            query = (
                select(Evaluation.step, *columns)
                .join(Evaluation, table.evaluation_id == Evaluation.id)
                .where(Evaluation.run_id == run.id, *conditions)
                .order_by(Evaluation.step, *order)
            )
            return [tuple(row) for row in session.execute(query).all()]

    def drifted_features(self, run_name: str, hookpoint: str | None = None) -> list[DriftedFeatureRow]:
        d = DriftedFeature
        where = (d.hookpoint == hookpoint,) if hookpoint is not None else ()
        columns = (d.hookpoint, d.feature, d.subset, d.freq_reference, d.freq_current, d.mean_reference,
                   d.mean_current, d.score, d.rank)
        return [DriftedFeatureRow(*row) for row in self._projection(run_name, columns, (d.hookpoint, d.rank), *where)]

    def refusal_features(self, run_name: str, hookpoint: str | None = None) -> list[RefusalFeatureRow]:
        r = RefusalFeature
        where = (r.hookpoint == hookpoint,) if hookpoint is not None else ()
        columns = (r.hookpoint, r.k, r.feature, r.source, r.rank, r.diff_in_means, r.nnls_weight)
        order = (r.hookpoint, r.k, r.source, r.rank)
        return [RefusalFeatureRow(*row) for row in self._projection(run_name, columns, order, *where)]

    def category_refusals(self, run_name: str, step: int | None = None) -> list[CategoryRefusalRow]:
        """Refusal per prompt category of `run_name`, at `step` or at every step."""
        c = CategoryRefusal
        where = (Evaluation.step == step,) if step is not None else ()
        columns = (c.subset, c.category, c.prompts, c.refusal_rate, c.refusal_token_probability, c.refusal_token_logodds)
        return [CategoryRefusalRow(*row) for row in self._projection(run_name, columns, (c.subset, c.category), *where)]

    def feature_contexts(self, run_name: str, step: int | None = None) -> list[FeatureContextRow]:
        """Stored top-activating contexts of `run_name`, at `step` or at every step."""
        c = FeatureContext
        where = (Evaluation.step == step,) if step is not None else ()
        columns = (c.hookpoint, c.feature, c.model, c.rank, c.subset, c.probe_index, c.position, c.left_text, c.token,
                   c.right_text, c.activation)
        order = (c.hookpoint, c.feature, c.model, c.rank)
        return [FeatureContextRow(*row) for row in self._projection(run_name, columns, order, *where)]

    # ---- heartbeats, checkpoints, goal, audit --------------------------------------------

    def record_heartbeat(self, run_name: str, at: float | None = None, expected_s: float | None = None) -> None:
        """The run was alive at `at` (unix seconds, the run's own clock) and expects its next
        event within `expected_s`; an older `at` (a late replay) never moves the heartbeat back."""
        with self._transaction() as session:
            run = self._require_run(session, run_name)
            self._beat(run, at)
            if expected_s is not None and expected_s > 0:
                run.heartbeat_interval_s = float(expected_s)

    @staticmethod
    def _beat(run: Run, at: float | None) -> None:
        if at is None:
            return
        moment = datetime.fromtimestamp(float(at), timezone.utc)
        if run.heartbeat_at is None or _aware(run.heartbeat_at) < moment:
            run.heartbeat_at = moment

    def record_checkpoint(self, run_name: str, step: int, path: str, at: float | None = None) -> None:
        """A checkpoint the Trainer saved (the same step again replaces the path)."""
        saved = datetime.fromtimestamp(at, timezone.utc) if at else utc_now()
        with self._transaction() as session:
            run = self._require_run(session, run_name)
            row = session.scalar(select(Checkpoint).where(Checkpoint.run_id == run.id, Checkpoint.step == int(step)))
            if row is None:
                session.add(Checkpoint(run_id=run.id, step=int(step), path=str(path), saved_at=saved))
            else:
                row.path, row.saved_at = str(path), saved

    def checkpoints(self, run_name: str) -> list[CheckpointRow]:
        with self._transaction() as session:
            run = self._require_run(session, run_name)
            found = session.scalars(select(Checkpoint).where(Checkpoint.run_id == run.id).order_by(Checkpoint.step)).all()
            return [CheckpointRow(c.step, c.path, _aware(c.saved_at)) for c in found]

    def last_safe_checkpoint(self, run_name: str) -> SafeCheckpoint | None:
        """The newest saved checkpoint that passed every critical alert and still exists (see store/checkpoints.py)."""
        critical = [(a.step, a.resolved_step) for a in self.alerts(run_name) if a.severity == "critical"]
        return last_safe_checkpoint([(c.step, c.path) for c in self.checkpoints(run_name)],
                                    self.recorded_steps(run_name), critical)

    def record_goal(self, run_name: str, goal: str, reason: str, step: int | None = None) -> None:
        """The run's monitoring goal (guard, align, off) and why it was chosen."""
        with self._transaction() as session:
            run = self._require_run(session, run_name)
            run.extra = {**(run.extra or {}), "monitoring_goal": str(goal), "goal_reason": str(reason),
                         "goal_step": None if step is None else int(step)}

    def record_audit(self, run_name: str, audits: list[DataAudit]) -> None:
        """The training-data audit of the run (replacing an earlier one): its examples as rows,
        its size and summary with the run."""
        with self._transaction() as session:
            run = self._require_run(session, run_name)
            session.execute(delete(AuditExample).where(AuditExample.run_id == run.id))
            rows_ = [{"run_id": run.id, "hookpoint": a.hookpoint, **rows.audit_example_fields(e)}
                     for a in audits for e in a.examples]
            if rows_:
                session.execute(insert(AuditExample), rows_)
            run.extra = {**(run.extra or {}), "audit": [
                {"hookpoint": a.hookpoint, "dataset_size": a.dataset_size, "examples": len(a.examples),
                 "skipped": a.skipped, "skipped_reason": a.skipped_reason, "summary": a.summary} for a in audits]}

    def audit(self, run_name: str) -> list[DataAudit]:
        """The stored training-data audit, one per hookpoint (empty when the run has none)."""
        with self._transaction() as session:
            run = self._require_run(session, run_name)
            found = session.scalars(select(AuditExample).where(AuditExample.run_id == run.id)
                                    .order_by(AuditExample.hookpoint, AuditExample.example)).all()
            meta = {m["hookpoint"]: m for m in (run.extra or {}).get("audit", [])}
        by_layer: dict[str, list[AuditedExample]] = {h: [] for h in meta}
        for e in found:
            by_layer.setdefault(e.hookpoint, []).append(AuditedExample(
                e.example, e.prompt, e.target, e.harmfulness if e.harmfulness is not None else math.nan,
                e.direction_score if e.direction_score is not None else math.nan, e.feature_score,
                bool(e.target_refuses), e.refusal_probability))
        return [DataAudit(h, examples, int(meta.get(h, {}).get("dataset_size", len(examples))),
                          int(meta.get(h, {}).get("skipped", 0)), meta.get(h, {}).get("skipped_reason"))
                for h, examples in by_layer.items()]

    # ---- alerts -----------------------------------------------------------------------

    def record_alert(
        self,
        run_name: str,
        alert: Any,
        severity: str | None = None,
        status: str = "firing",
        message: str = "",
        step: int | None = None,
        at: datetime | None = None,
        labels: dict[str, str] | None = None,
        value: float | None = None,
    ) -> int:
        """Open (firing) or close (resolved) an alert of one series; returns its id.

        `alert` is either the alert name (with the other fields as arguments) or an alert
        object with `name`, `status`, `severity`, `labels`, `annotations`, `value`, `step`,
        `starts_at` and `ends_at` (unix seconds), such as `alerts.engine.FiredAlert`.
        A firing alert already open for the same name and labels is updated, not duplicated;
        resolving closes the open one (or records a resolved alert if none was open).
        """
        if not isinstance(alert, str):
            name = alert.name
            severity = alert.severity
            status = alert.status
            labels = {k: v for k, v in (alert.labels or {}).items() if k not in ("alertname", "severity", "run")}
            annotations = getattr(alert, "annotations", None) or {}
            message = annotations.get("summary") or annotations.get("description") or message
            value = getattr(alert, "value", value)
            step = getattr(alert, "step", step)
            resolved_step = getattr(alert, "resolved_step", None)
            moment = alert.ends_at if status == "resolved" and alert.ends_at else alert.starts_at
            at = datetime.fromtimestamp(moment, timezone.utc) if moment else at
            checkpoint = annotations.get("last_safe_checkpoint")
            checkpoint_step = annotations.get("last_safe_checkpoint_step")
        else:
            name = alert
            resolved_step = step if status == "resolved" else None
            step = None if status == "resolved" else step
            checkpoint = checkpoint_step = None
        if status not in ALERT_STATUSES:
            raise ValueError(f"alert status: expected one of {ALERT_STATUSES}, found {status!r}")
        if not severity:
            raise ValueError(f"alert {name!r}: expected a severity such as 'warning' or 'critical', found {severity!r}")
        key = labels_key(labels or {})
        at = at or utc_now()
        with self._transaction() as session:
            run = self._require_run(session, run_name)
            evaluation_id = None
            if step is not None:
                evaluation_id = session.scalar(
                    select(Evaluation.id).where(Evaluation.run_id == run.id, Evaluation.step == step)
                )
            record = session.scalar(
                select(Alert)
                .where(Alert.run_id == run.id, Alert.name == name, Alert.labels == key, Alert.status == "firing")
                .order_by(Alert.started_at.desc(), Alert.id.desc())
            )
            if record is None:
                record = Alert(run_id=run.id, name=name, labels=key, started_at=at)
                session.add(record)
            record.severity = severity
            record.status = status
            record.message = message or record.message or ""
            record.value = rows.finite_or_none(value) if value is not None else record.value
            record.step = record.step if record.step is not None else step  # the first firing step stays
            record.resolved_step = resolved_step if status == "resolved" else None
            record.evaluation_id = evaluation_id if evaluation_id is not None else record.evaluation_id
            record.ended_at = at if status == "resolved" else None
            if checkpoint is not None:
                record.checkpoint = checkpoint
                record.checkpoint_step = int(checkpoint_step) if checkpoint_step not in (None, "") else None
            session.flush()
            return record.id

    def applied_sequences(self, run_name: str) -> set[int]:
        """The journal events of this run the store holds, by sequence number (empty: none, or no such run)."""
        with self._transaction() as session:
            run = session.scalar(select(Run).where(Run.name == run_name))
            if run is None:
                return set()
            return set(session.scalars(select(JournalRecord.seq).where(JournalRecord.run_id == run.id)).all())

    @contextmanager
    def atomically(self) -> Iterator[None]:
        """One transaction for a batch of writes (an import): all of them are stored, or none."""
        if getattr(self._held, "session", None) is not None:
            yield
            return
        with self._transaction() as session:
            self._held.session = session
            try:
                yield
            finally:
                self._held.session = None

    @contextmanager
    def applying_journal_event(self, event: JournalEvent) -> Iterator[bool]:
        """Store one journal event exactly once, whoever else replays the same journal.

        The writes made inside the block and the event's record commit in one transaction, and
        the block is told to skip (False) when the store already holds the event. An event the
        store holds with other content under the same number (an edited journal), or one that
        carries other fingerprints than the stored run, is refused. Writers of one run are
        serialised (PostgreSQL: an advisory lock, which also covers a run not created yet;
        SQLite: a write on a stale snapshot fails and is retried), so a writer that was blocked
        and returns late cannot undo what `runs import` stored meanwhile.
        """
        outer = getattr(self._held, "session", None)
        with self._transaction() as session:
            self._held.session = session
            try:
                if self.engine.dialect.name == "postgresql":
                    session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                                    {"key": f"featuredrift journal {event.run}"})
                run = session.scalar(select(Run).where(Run.name == event.run))
                if run is not None:
                    held = session.get(JournalRecord, (run.id, event.seq))
                    if held is not None:
                        if held.digest is not None and held.digest != event.digest:
                            raise HistoryConflictError(
                                f"run {run.name!r} in {self.display_url}: journal event {event.seq} ({event.kind}) "
                                f"differs from the event {event.seq} ({held.kind}) stored "
                                f"{held.applied_at:%Y-%m-%d %H:%M:%S}; refused: an edited journal, or another run's"
                            )
                        yield False
                        return
                    self._require_same_inputs(run, event.fingerprints, f"journal event {event.seq} comes")
                yield True
                run = self._require_run(session, event.run)
                step = event.data.get("step") if event.kind in ("evaluation", "stop") else event.data.get("resumed_at_step")
                session.add(JournalRecord(run_id=run.id, seq=int(event.seq), kind=event.kind, digest=event.digest,
                                          step=None if step is None else int(step)))
                self._beat(run, event.at)  # every event is a sign of life, at the time it was journaled
                session.flush()
            finally:
                self._held.session = outer

    def record_stop(self, run_name: str, step: int, reason: str, *, journal_sequence: int | None = None) -> RunInfo:
        """Note that training was stopped on purpose (an alert with stop_on_alert) and why."""
        with self._transaction() as session:
            run = self._require_run(session, run_name)
            if self._is_current(run, journal_sequence):
                run.status = "stopped"
                run.updated_at = utc_now()
            run.extra = {**(run.extra or {}), "stopped_at_step": int(step), "stop_reason": str(reason)}
            self._note_status_sequence(run, journal_sequence)
            session.flush()
            return self._run_info(session, run)

    def alerts(self, run_name: str, status: str | None = None) -> list[AlertInfo]:
        with self._transaction() as session:
            run = self._require_run(session, run_name)
            query = select(Alert).where(Alert.run_id == run.id).order_by(Alert.started_at, Alert.id)
            if status is not None:
                query = query.where(Alert.status == status)
            return [
                AlertInfo(a.id, run.name, a.name, a.severity, a.status, a.message, a.step,
                          _aware(a.started_at), _aware(a.ended_at), json.loads(a.labels or "{}"), a.value,
                          a.resolved_step, a.checkpoint, a.checkpoint_step)
                for a in session.scalars(query).all()
            ]

    # ---- comparison and export -----------------------------------------------------------

    def latest_values(self, run_name: str) -> dict[tuple[str, str], tuple[int, float]]:
        """(name, labels key) → (step, value) of the newest evaluation that has that series."""
        return {key: (max(by_step), by_step[max(by_step)]) for key, by_step in self._series_by_step(run_name).items()}

    def compare(self, run_a: str, run_b: str, tolerance: float = 0.05) -> RunComparison:
        """Every series of either run, aligned by step: the values at the last step both runs
        evaluated (else each run's latest), and the first common step at which they differ by
        more than `tolerance` (relative); plus the config keys that differ."""
        info_a, info_b = self.get_run(run_a), self.get_run(run_b)
        series_a, series_b = self._series_by_step(run_a), self._series_by_step(run_b)
        metrics = []
        for name, key in sorted(set(series_a) | set(series_b)):
            a, b = series_a.get((name, key), {}), series_b.get((name, key), {})
            common = sorted(set(a) & set(b))
            step_a = common[-1] if common else (max(a) if a else None)
            step_b = common[-1] if common else (max(b) if b else None)
            diverges = next((s for s in common if _differs(a[s], b[s], tolerance)), None)
            metrics.append(MetricComparison(name, json.loads(key), step_a, a.get(step_a), step_b, b.get(step_b),
                                            len(common), diverges, a.get(diverges), b.get(diverges)))
        keys = sorted(set(info_a.config) | set(info_b.config))
        differences = {
            k: (info_a.config.get(k), info_b.config.get(k))
            for k in keys
            if info_a.config.get(k) != info_b.config.get(k)
        }
        return RunComparison(info_a, info_b, metrics, differences)

    def aligned_series(self, run_a: str, run_b: str) -> dict[tuple[str, str], list[AlignedPoint]]:
        """(metric, labels key) → the values of both runs at every step both evaluated, ascending."""
        series_a, series_b = self._series_by_step(run_a), self._series_by_step(run_b)
        return {
            key: [AlignedPoint(step, series_a[key][step], series_b[key][step])
                  for step in sorted(set(series_a[key]) & set(series_b[key]))]
            for key in sorted(set(series_a) & set(series_b))
        }

    def export(self, run_name: str, format: str = "csv", out: str | Path | None = None) -> str:
        """The run as CSV (one row per metric sample) or JSON (run, full reports, alerts).

        JSON is standard: an undefined value (NaN, e.g. ER with no divergent token) is `null`,
        and `import_json` reads it back as NaN.
        """
        if format not in EXPORT_FORMATS:
            raise ValueError(f"export format: expected one of {EXPORT_FORMATS}, found {format!r}")
        text = self._export_csv(run_name) if format == "csv" else self._export_json(run_name)
        if out is not None:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(text, encoding="utf-8")
        return text

    def _series_by_step(self, run_name: str) -> dict[tuple[str, str], dict[int, float]]:
        """(metric, labels key) → {step: value} for every stored sample of a run."""
        with self._transaction() as session:
            run = self._require_run(session, run_name)
            found = session.execute(
                select(Evaluation.step, MetricValue.name, MetricValue.labels, MetricValue.value)
                .join(Evaluation, MetricValue.evaluation_id == Evaluation.id)
                .where(Evaluation.run_id == run.id)
            ).all()
        series: dict[tuple[str, str], dict[int, float]] = {}
        for step, name, labels, value in found:
            series.setdefault((name, labels), {})[int(step)] = value
        return series

    def _export_csv(self, run_name: str) -> str:
        with self._transaction() as session:
            run = self._require_run(session, run_name)
            found = session.execute(
                select(Evaluation.step, Evaluation.timestamp, Evaluation.epoch,
                       MetricValue.name, MetricValue.labels, MetricValue.value)
                .join(Evaluation, MetricValue.evaluation_id == Evaluation.id)
                .where(Evaluation.run_id == run.id)
                .order_by(Evaluation.step, MetricValue.name, MetricValue.labels)
            ).all()
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for step, timestamp, epoch, name, labels, value in found:
            writer.writerow([run_name, step, repr(timestamp), "" if epoch is None else repr(epoch),
                             name, labels, repr(value)])
        return buffer.getvalue()

    def _export_json(self, run_name: str) -> str:
        info = self.get_run(run_name)
        document = {
            "format": JSON_EXPORT_FORMAT,
            "run": {
                "name": info.name,
                "status": info.status,
                "created_at": _aware(info.created_at).isoformat(),
                "updated_at": _aware(info.updated_at).isoformat(),
                "config": info.config,
                "model_fingerprint": info.model_fingerprint,
                "sae_fingerprint": info.sae_fingerprint,
                "reference_policy": info.reference_policy,
                "extra": info.extra,
            },
            "evaluations": [e.report.to_dict() for e in self.evaluations(run_name)],
            "alerts": [
                {
                    "name": a.name, "labels": a.labels, "severity": a.severity, "status": a.status,
                    "message": a.message, "value": a.value, "step": a.step, "resolved_step": a.resolved_step,
                    "started_at": a.started_at.isoformat(),
                    "ended_at": a.ended_at.isoformat() if a.ended_at else None,
                    "checkpoint": a.checkpoint, "checkpoint_step": a.checkpoint_step,
                }
                for a in self.alerts(run_name)
            ],
            "checkpoints": [{"step": c.step, "path": c.path, "saved_at": c.saved_at.timestamp()}
                            for c in self.checkpoints(run_name)],
            "audit": [a.to_dict() for a in self.audit(run_name)],
        }
        return json.dumps(_nan_to_null(document), indent=1, allow_nan=False)

    def import_json(self, text: str, name: str | None = None) -> RunInfo:
        """Load a JSON export (from this or another store) as run `name` (default: its own name;
        a given name is also its display name).

        All or nothing, and held to the run's identity: into an existing run, an export with
        other fingerprints, or with another evaluation at a stored step, is refused
        (`RunMismatchError`, `HistoryConflictError`); importing the same export again changes nothing.
        """
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise StoreError(f"run import: expected a JSON export, found invalid JSON ({error})") from error
        if not isinstance(document, dict) or document.get("format") != JSON_EXPORT_FORMAT:
            found = document.get("format") if isinstance(document, dict) else type(document).__name__
            raise StoreError(f"run import: expected format {JSON_EXPORT_FORMAT!r}, found {found!r}")
        run = document["run"]
        extra = dict(run.get("extra") or {})
        for bookkeeping in ("journal_sequence", "status_sequence", "resumes"):  # the source store's, not ours
            extra.pop(bookkeeping, None)
        if name:
            extra["display_name"] = name
        name = name or run["name"]
        with self.atomically():
            self.start_run(
                name, run.get("config") or {}, model_fingerprint=run.get("model_fingerprint"),
                sae_fingerprint=run.get("sae_fingerprint"), reference_policy=run.get("reference_policy"), **extra,
            )
            for data in document.get("evaluations", []):
                self.record_evaluation(name, EvaluationReport.from_dict(data), replace=False)
            known = {(a.name, labels_key(a.labels), a.step, a.started_at) for a in self.alerts(name)}
            for alert in document.get("alerts", []):
                started = datetime.fromisoformat(alert["started_at"])
                if (alert["name"], labels_key(alert.get("labels") or {}), alert["step"], _aware(started)) in known:
                    continue  # imported before
                common = {"message": alert["message"], "step": alert["step"], "labels": alert.get("labels") or {},
                          "value": alert.get("value")}
                self.record_alert(name, alert["name"], alert["severity"], "firing", at=started, **common)
                if alert["status"] == "resolved":
                    ended = datetime.fromisoformat(alert["ended_at"]) if alert.get("ended_at") else started
                    self.record_alert(name, alert["name"], alert["severity"], "resolved", at=ended,
                                      **{**common, "step": alert.get("resolved_step")})
                if alert.get("checkpoint"):
                    self._note_alert_checkpoint(name, alert["name"], alert.get("labels") or {}, alert["checkpoint"],
                                                alert.get("checkpoint_step"))
            for checkpoint in document.get("checkpoints", []):
                self.record_checkpoint(name, checkpoint["step"], checkpoint["path"], checkpoint.get("saved_at"))
            if document.get("audit"):
                self.record_audit(name, [DataAudit.from_dict(a) for a in document["audit"]])
            return self.finish_run(name, run.get("status") if run.get("status") in RUN_STATUSES else "finished",
                                   (run.get("extra") or {}).get("error"))

    def _note_alert_checkpoint(self, run_name: str, alert: str, labels: dict, checkpoint: str, step: int | None) -> None:
        with self._transaction() as session:
            run = self._require_run(session, run_name)
            for record in session.scalars(select(Alert).where(Alert.run_id == run.id, Alert.name == alert,
                                                             Alert.labels == labels_key(labels))).all():
                record.checkpoint, record.checkpoint_step = checkpoint, step

    # ---- helpers ----------------------------------------------------------------------

    def _require_run(self, session: Session, name: str) -> Run:
        """The run with id `name`, or the one run whose display name is `name`."""
        run = session.scalar(select(Run).where(Run.name == name))
        if run is None:
            candidates = session.scalars(
                select(Run).where(Run.name.like(f"{name}-%")).order_by(Run.created_at, Run.id)
            ).all()
            candidates = [r for r in candidates if (r.extra or {}).get("display_name") == name]
            if len(candidates) == 1:
                return candidates[0]
            if candidates:
                listing = ", ".join(f"{r.name} (created {r.created_at:%Y-%m-%d %H:%M:%S})" for r in candidates)
                raise UnknownRunError(f"run name {name!r} names {len(candidates)} runs in {self.display_url}: {listing}; pass the run id")
        if run is None:
            known = session.scalars(select(Run.name).order_by(Run.name).limit(21)).all()
            listing = ", ".join(known[:20]) + (", …" if len(known) > 20 else "") if known else "none yet"
            raise UnknownRunError(f"run {name!r} not found in {self.display_url}; known runs: {listing}")
        return run

    @staticmethod
    def _evaluation_stats(session: Session) -> dict[int, tuple[int, int | None]]:
        found = session.execute(
            select(Evaluation.run_id, func.count(Evaluation.id), func.max(Evaluation.step)).group_by(
                Evaluation.run_id
            )
        ).all()
        return {run_id: (count, last) for run_id, count, last in found}

    def _run_info(
        self, session: Session, run: Run, resumed: bool = False,
        stats: dict[int, tuple[int, int | None]] | None = None,
    ) -> RunInfo:
        if stats is None:
            count, last = session.execute(
                select(func.count(Evaluation.id), func.max(Evaluation.step)).where(Evaluation.run_id == run.id)
            ).one()
        else:
            count, last = stats.get(run.id, (0, None))
        return RunInfo(
            id=run.id, name=run.name, status=run.status, created_at=_aware(run.created_at),
            updated_at=_aware(run.updated_at), config=dict(run.config or {}),
            model_fingerprint=run.model_fingerprint, sae_fingerprint=run.sae_fingerprint,
            reference_policy=run.reference_policy, extra=dict(run.extra or {}),
            evaluation_count=int(count), last_step=last, resumed=resumed,
            heartbeat_at=_aware(run.heartbeat_at), heartbeat_interval_s=run.heartbeat_interval_s,
        )


def _aware(moment: datetime | None) -> datetime | None:
    """SQLite drops the timezone of stored datetimes; they were written in UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment


def parse_csv_export(text: str) -> list[dict[str, Any]]:
    """Rows of a CSV export with types restored (labels as a dict, numbers as numbers)."""
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
        raise StoreError(f"CSV export: expected columns {CSV_COLUMNS}, found {tuple(reader.fieldnames or ())}")
    return [
        {
            "run": row["run"],
            "step": int(row["step"]),
            "timestamp": float(row["timestamp"]),
            "epoch": float(row["epoch"]) if row["epoch"] else None,
            "metric": row["metric"],
            "labels": json.loads(row["labels"]),
            "value": float(row["value"]),
        }
        for row in reader
    ]


def _nan_to_null(value):
    """Replace non-finite floats by None, recursively (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _nan_to_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_null(v) for v in value]
    return value


def _differs(a: float | None, b: float | None, tolerance: float) -> bool:
    if a is None or b is None:
        return a is not b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) != math.isnan(b)
    return abs(a - b) > tolerance * max(abs(a), abs(b), 1e-12)
