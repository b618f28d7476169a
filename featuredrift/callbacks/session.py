"""MonitorSession: where a run's reports go, on the main process.

The training thread only hands a report over: it is appended (and fsync-ed) to the run's local
journal, the alert engine judges it (pure computation), and the exporter and the store sync
take it from there on their own threads. Nothing on the training thread waits for a network
or a database, so a down, frozen, locked or trickling backend never stalls a step; `close()`
waits for them at most `close_timeout_s`, and whatever is not stored by then stays in the
journal, replayed by the next process of the run or `featuredrift runs import`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from featuredrift.callbacks import exits
from featuredrift.monitor.config import MonitorConfig
from featuredrift.monitor.report import EvaluationReport
from featuredrift.store.checkpoints import SafeCheckpoint, last_safe_checkpoint
from featuredrift.store.journal import JournalEvent, RunJournal, read_journal, run_fingerprints
from featuredrift.store.sync import StoreSync

logger = logging.getLogger(__name__)
COSTLY_FIELDS = ("refusal_rate", "safety_score", "judge", "kl_mean", "kl_p95")
FALLBACK_JOURNAL_DIR = Path.home() / ".cache" / "featuredrift" / "journals"


class BackgroundActions:
    """Runs alert actions (webhooks) on a thread of their own: a hanging receiver cannot stall training."""

    def __init__(self, actions: Sequence[Callable[[Sequence[Any]], Any]]) -> None:
        self.actions = list(actions)
        self._queue: deque[list] = deque()
        self._condition = threading.Condition()
        self._closing = False
        self._worker = threading.Thread(target=self._run, name="featuredrift-alert-actions", daemon=True)
        self._worker.start()

    def __call__(self, alerts: Sequence[Any]) -> None:
        with self._condition:
            self._queue.append(list(alerts))
            self._condition.notify()

    def close(self, timeout_s: float) -> None:
        with self._condition:
            self._closing = True
            self._condition.notify_all()
        self._worker.join(timeout=max(0.0, timeout_s))
        if self._worker.is_alive():
            logger.warning("featuredrift alert delivery did not finish within %.1fs; %d batch(es) undelivered",
                           timeout_s, len(self._queue))

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._queue and not self._closing:
                    self._condition.wait()
                if not self._queue:
                    return
                alerts = self._queue.popleft()
            for action in self.actions:
                try:
                    action(alerts)
                except Exception:  # noqa: BLE001
                    logger.exception("featuredrift alert action failed")


class MonitorSession:
    """Journal, store sync, exporter and alert engine for one run; what it saw of checkpoints,
    evaluations and critical alerts, to name the last safe checkpoint; its heartbeat."""

    def __init__(self, config: MonitorConfig, run_name: str, journal: RunJournal, sync: StoreSync, exporter, engine,
                 deliveries: BackgroundActions | None = None):
        self.config = config
        self.run_name = run_name
        self.journal = journal
        self.sync = sync
        self.exporter = exporter
        self.engine = engine
        self.deliveries = deliveries
        self.handoff_seconds: list[float] = []  # training-thread time of each publish: the stall telemetry costs
        self.closed = False
        self.checkpoints: list[tuple[int, str]] = []
        self.evaluated: set[int] = set()
        self._critical: dict[tuple, list[list[int | None]]] = {}  # alert series -> [fired, resolved] intervals
        self._latest_costly: dict[str, object] = {}
        self._journal_broken = False
        self._goal_said = False
        self._last_call = self._last_recorded = time.monotonic()
        self._longest_gap = 0.0
        self._expected_s = config.heartbeat_s
        self._run_event: JournalEvent | None = None  # this process's start of the run: rescues carry it

    @classmethod
    def open(cls, config: MonitorConfig, run_name: str, monitor=None, *, journal_dir: str | Path | None = None,
             display_name: str | None = None, expected_s: float | None = None, resumed_at_step: int | None = None,
             first_sequence: int = 0) -> MonitorSession:
        """Start the run's journal and its background writers. `expected_s` is how long the run
        may be silent before its next event (e.g. its first evaluation), at least `heartbeat_s`.

        `resumed_at_step` marks a run resumed from the checkpoint of that step (its later steps
        are evaluated again and replace the abandoned trajectory's); `first_sequence` is the
        journal's numbering where the checkpoint left it. Nothing here touches the store on the
        calling thread unless `config.strict_store` asks for it, in which case an unreachable
        store raises now.
        """
        from featuredrift.alerts.engine import AlertEngine, log_action
        from featuredrift.alerts.webhook import WebhookAction
        from featuredrift.exporters import make_exporter

        journal_dir = Path(journal_dir) if journal_dir is not None else default_journal_dir(config)
        provenance = monitor.provenance() if monitor is not None and monitor.started else {}
        journal = RunJournal.for_run(journal_dir, run_name, run_fingerprints(provenance), first_sequence)
        if config.strict_store:
            from featuredrift.store import RunStore

            RunStore(config.store_url).close()  # raises StoreError naming the database
        sync = StoreSync(config.store_url, run_name, journal.path)
        exporter = make_exporter(config, run_name)
        deliveries = None
        actions: list = [log_action]
        if config.alert_webhook_url:
            deliveries = BackgroundActions([WebhookAction(config.alert_webhook_url, config.export_timeout_s)])
            actions.append(deliveries)
        session = cls(config, run_name, journal, sync, exporter, None, deliveries)
        session.engine = AlertEngine.from_config(
            config, webhook_url=None, actions=actions, on_fire=session._journal_alert, on_resolve=session._journal_alert,
            annotate=session._checkpoint_annotations,
        )
        provenance["display_name"] = display_name or run_name
        session._expected_s = max(config.heartbeat_s, expected_s or 0.0)
        start = {"config": config.public_dump(), "provenance": provenance, "expected_s": session._expected_s}
        if resumed_at_step is not None:
            start["resumed_at_step"] = int(resumed_at_step)
        session._run_event = session._record("run", start)
        exits.watch(session)
        return session

    def evaluated_steps(self) -> set[int]:
        """Steps this run has evaluated: in its journal or in the store (read here; for the
        watcher, which is not a training loop). A store that cannot be read counts as empty."""
        steps = {int(e.data["step"]) for e in read_journal(self.journal.path) if e.kind == "evaluation"} if self.journal.path.exists() else set()
        try:
            from featuredrift.store import RunStore, UnknownRunError

            with RunStore(self.config.store_url) as store:
                try:
                    steps |= set(store.recorded_steps(self.run_name))
                except UnknownRunError:
                    pass
        except Exception as error:  # noqa: BLE001
            logger.warning("featuredrift could not read run %r from the store (%s); using its journal", self.run_name, error)
        return steps

    # ---- the training thread's side: hand over and return -----------------------------

    def publish(self, report: EvaluationReport) -> list:
        """Journal, then export and alert. Returns the alerts that fired; never raises."""
        started = time.perf_counter()
        try:
            goal = self.engine.goal_for(self.run_name, report)
            if goal is not None and report.monitoring_goal is None:
                report.monitoring_goal = goal
            self._record("evaluation", report.to_dict())
            if goal is not None and not self._goal_said:
                self._goal_said = True
                self._record("goal", {"goal": goal, "reason": self.engine.goal_reasons.get(self.run_name, ""),
                                      "step": int(report.step)})
            try:
                self.exporter.submit(self._with_latest_costly(report))
            except Exception:  # exporters should not raise; belt and braces for third-party ones
                logger.exception("featuredrift exporter failed on step %d", report.step)
            try:
                return list(self.engine.evaluate(report, run=self.run_name))
            except Exception:
                logger.exception("featuredrift alert engine failed on step %d", report.step)
                return []
            finally:
                self.evaluated.add(int(report.step))
        finally:
            self._note_handoff(time.perf_counter() - started, f"step {report.step}")

    def record_stop(self, step: int, reason: str) -> None:
        self._record("stop", {"step": int(step), "reason": reason})

    def heartbeat(self, step: int | None = None) -> None:
        """A sign of life from the training loop (each step end): journaled at most every
        `heartbeat_s` (any other event counts too), with how long the next one may take: the
        longest gap seen between two calls, evaluations included, and at least `heartbeat_s`."""
        now = time.monotonic()
        self._longest_gap = max(self._longest_gap, now - self._last_call)
        self._last_call = now
        expected = max(self.config.heartbeat_s, self._longest_gap)
        if now - self._last_recorded < self.config.heartbeat_s and expected <= self._expected_s:
            return
        self._expected_s = expected
        self._record("heartbeat", {"step": None if step is None else int(step), "expected_s": expected})

    def record_checkpoint(self, step: int, path: str | Path) -> None:
        """A checkpoint the Trainer saved: a candidate for the last safe checkpoint."""
        self.checkpoints.append((int(step), str(path)))
        self._record("checkpoint", {"step": int(step), "path": str(path)})

    def record_audit(self, audits: list) -> None:
        """The training-data audit (monitor/audit.py), stored with the run."""
        self._record("audit", {"audits": [a.to_dict() for a in audits]})

    def last_safe_checkpoint(self, failing_step: int | None = None) -> SafeCheckpoint | None:
        """The newest checkpoint saved so far that passed every critical alert (`failing_step`:
        an evaluation also known to fail, e.g. one whose alert is firing right now)."""
        intervals = [tuple(i) for spans in self._critical.values() for i in spans]
        if failing_step is not None:
            intervals.append((failing_step, None))
        return last_safe_checkpoint(self.checkpoints, self.evaluated | ({failing_step} - {None}), intervals)

    def fail(self, error: dict[str, str]) -> None:
        """End the run as failed with the exception's type and message (never raises)."""
        if self.closed:
            return
        logger.error("featuredrift: training of run %s failed (%s: %s)", self.run_name, error.get("type"),
                     error.get("message"))
        try:
            self.close(status="failed", error=error)
        except Exception:  # noqa: BLE001 - we are already handling a failure
            logger.exception("featuredrift could not close run %s", self.run_name)

    def close(self, status: str = "finished", error: dict[str, str] | None = None) -> None:
        """Resolve alerts, finish the run and give the writers `close_timeout_s` in all: every
        writer gets what is left of that one deadline, nothing waits past it."""
        if self.closed:
            return
        self.closed = True
        exits.forget(self)
        started = time.perf_counter()
        budget = self.config.close_timeout_s
        deadline = time.monotonic() + budget
        try:
            self.engine.resolve_run(self.run_name, time.time())
        except Exception:
            logger.exception("featuredrift could not resolve the run's alerts")
        self._record("finish", {"status": status, **({"error": error} if error else {})})
        left = self.sync.close(max(0.0, deadline - time.monotonic()))
        for closer in (self.exporter.close, getattr(self.deliveries, "close", None)):
            if closer is None:
                continue
            try:
                closer(max(0.0, deadline - time.monotonic()))
            except Exception:
                logger.exception("featuredrift could not close a telemetry writer")
        if left:
            self._report_unstored(left)
        self._note_handoff(time.perf_counter() - started, "close", budget=budget + self.config.telemetry_budget_s)

    # ---- helpers ------------------------------------------------------------------------

    def _record(self, kind: str, data: dict) -> JournalEvent:
        """Journal an event durably, then hand it to the store sync (in memory if the disk refuses)."""
        self._last_recorded = time.monotonic()
        try:
            event = self.journal.append(kind, data)
            durable = True
        except OSError as error:
            event = self.journal.unwritten(kind, data)
            durable = False
            if not self._journal_broken:
                self._journal_broken = True
                logger.error("featuredrift cannot write the run journal %s (%s); evaluations are kept in memory "
                             "until the store takes them", self.journal.path, error)
        self.sync.submit(event, durable)
        return event

    def _journal_alert(self, alert) -> None:
        if alert.severity in self.engine.stop_severities:
            spans = self._critical.setdefault((alert.name, tuple(sorted(alert.labels.items()))), [])
            if alert.status == "firing":
                spans.append([alert.step, None])
            elif spans:
                spans[-1][1] = alert.resolved_step
        if alert.status == "resolved" and getattr(alert, "resolved_step", None) is None:
            return  # closed because the run ended, not because it recovered: it stays firing on record
        self._record("alert", dataclasses.asdict(alert) if dataclasses.is_dataclass(alert) else dict(vars(alert)))

    def _checkpoint_annotations(self, alert) -> dict[str, str]:
        """What a critical alert says about the way back: the last checkpoint that passed every
        critical alert (this one firing at its step included)."""
        safe = self.last_safe_checkpoint(failing_step=alert.step)
        if safe is None:
            return {"last_safe_checkpoint": "none: no saved checkpoint has passed every critical alert yet"}
        return {"last_safe_checkpoint": safe.path, "last_safe_checkpoint_step": str(safe.step)}

    def _note_handoff(self, seconds: float, what: str, budget: float | None = None) -> None:
        self.handoff_seconds.append(seconds)
        budget = self.config.telemetry_budget_s if budget is None else budget
        if seconds > budget:
            logger.warning("featuredrift telemetry held the training thread %.3fs at %s (budget %.3fs)", seconds, what, budget)

    def _report_unstored(self, left: list[tuple[JournalEvent, bool]]) -> None:
        durable = [event for event, ok in left if ok]
        volatile = [event for event, ok in left if not ok]
        evaluations = sum(1 for event in durable if event.kind == "evaluation")
        if durable:
            logger.warning(
                "featuredrift: %d event(s) (%d evaluation(s)) of run %r are not in the run store %s yet; they are in %s "
                "and will be stored when the run resumes, or now with `featuredrift runs import %s`",
                len(durable), evaluations, self.run_name, self.sync.url_for_humans, self.journal.path, self.journal.path,
            )
        if volatile:
            self._rescue(volatile)

    def _rescue(self, events: list[JournalEvent]) -> None:
        """Write events that neither the journal nor the store took to a fallback journal.

        They keep their numbers (their identity in the run), and the file starts with this
        process's start of the run, so it can be imported alone, before or after the journal.
        """
        fallback = RunJournal.for_run(FALLBACK_JOURNAL_DIR, self.run_name, self.journal.fingerprints)
        if self._run_event is not None and all(event.seq != self._run_event.seq for event in events):
            events = [self._run_event, *events]
        try:
            for event in events:
                fallback.append_event(event)
        except OSError as error:
            logger.error("featuredrift LOST %d event(s) (%d evaluation(s)) of run %r: neither the journal %s, the store "
                         "%s nor %s could take them (%s)", len(events), sum(e.kind == "evaluation" for e in events),
                         self.run_name, self.journal.path, self.sync.url_for_humans, fallback.path, error)
            return
        logger.error("featuredrift wrote %d event(s) of run %r that the journal and the store refused to %s; "
                     "load them with the rest of the run by `featuredrift runs import %s %s`", len(events), self.run_name,
                     fallback.path, self.journal.path, fallback.path)

    def _with_latest_costly(self, report: EvaluationReport) -> EvaluationReport:
        """The report as exported: costly measurements that run on a slower cadence (refusal
        scores, KL) keep their latest value, so their gauges do not vanish from the Pushgateway
        (a push replaces the whole group) on evaluations that skipped them. The store keeps the
        report as measured."""
        missing = {}
        for name in COSTLY_FIELDS:
            value = getattr(report, name)
            if value is None:
                if name in self._latest_costly:
                    missing[name] = self._latest_costly[name]
            else:
                self._latest_costly[name] = value
        return dataclasses.replace(report, **missing) if missing else report


def default_journal_dir(config: MonitorConfig) -> Path:
    """Next to a SQLite store, else `featuredrift-out/journals` in the current folder."""
    url = config.store_url
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url[len("sqlite:///"):]).expanduser().parent / "journals"
    return Path("featuredrift-out") / "journals"
