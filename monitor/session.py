"""MonitorSession: where a run's reports go, on the main process.

Order matters for "no data lost": each report is committed to the run store *before* it is
handed to the exporter and the alert engine. Telemetry never hurts training: a store that is
down keeps reports in a bounded pending list (retried on the next publish, and spilled to a
JSONL file at close if still down), exporters run on their own thread, and no error from any
backend propagates into the training loop.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import deque
from pathlib import Path

from featuredrift.monitor.config import MonitorConfig
from featuredrift.monitor.report import EvaluationReport

logger = logging.getLogger(__name__)
COSTLY_FIELDS = ("refusal_rate", "safety_score", "judge", "kl_mean", "kl_p95")


class MonitorSession:
    """Store, exporter and alert engine for one run."""

    def __init__(self, config: MonitorConfig, run_name: str, store, exporter, engine, spill_dir: Path):
        self.config = config
        self.run_name = run_name
        self.store = store
        self.exporter = exporter
        self.engine = engine
        self.spill_dir = spill_dir
        self.pending: deque[EvaluationReport] = deque(maxlen=config.export_buffer_size)
        self.store_failures = 0
        self._latest_costly: dict[str, object] = {}

    @classmethod
    def open(cls, config: MonitorConfig, run_name: str, monitor=None, *, resumed: bool = False) -> MonitorSession:
        """Open the store (errors here are configuration errors and do raise), exporter and engine."""
        from featuredrift.alerts.engine import AlertEngine
        from featuredrift.monitor.exporters import make_exporter
        from featuredrift.monitor.store import RunStore

        store = RunStore(config.store_url)
        meta = {}
        if monitor is not None and monitor.started:
            meta = monitor.provenance()
        store.start_run(run_name, config.model_dump(mode="json"), **meta)
        exporter = make_exporter(config, run_name)
        engine = AlertEngine.from_config(
            config,
            on_fire=lambda alert: _record_alert(store, run_name, alert),
            on_resolve=lambda alert: _record_alert(store, run_name, alert),
        )
        spill_dir = Path(config.store_url.split("///")[-1]).parent if config.store_url.startswith("sqlite") else Path(".")
        return cls(config, run_name, store, exporter, engine, spill_dir)

    def stored_steps(self) -> set[int]:
        """Steps this run already has in the store (a resumed run skips them)."""
        return set(self.store.recorded_steps(self.run_name))

    def publish(self, report: EvaluationReport) -> list:
        """Store, then export and alert. Returns the alerts that fired; never raises."""
        self.pending.append(report)
        self._flush_store()
        try:
            self.exporter.submit(self._with_latest_costly(report))
        except Exception:  # exporters should not raise; belt and braces for third-party ones
            logger.exception("featuredrift exporter failed on step %d", report.step)
        try:
            return list(self.engine.evaluate(report, run=self.run_name))
        except Exception:
            logger.exception("featuredrift alert engine failed on step %d", report.step)
            return []

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

    def record_stop(self, step: int, reason: str) -> None:
        try:
            self.store.record_stop(self.run_name, step, reason)
        except Exception:
            logger.exception("featuredrift could not record the stop reason")

    def close(self, status: str = "finished") -> None:
        try:
            self.engine.resolve_run(self.run_name, time.time())
        except Exception:
            logger.exception("featuredrift could not resolve the run's alerts")
        self._flush_store()
        if self.pending:
            self._spill()
        try:
            self.exporter.close(timeout=self.config.export_timeout_s)
        except Exception:
            logger.exception("featuredrift exporter failed to close")
        try:
            self.store.finish_run(self.run_name, status)
        except Exception:
            logger.exception("featuredrift could not mark run %s %s", self.run_name, status)

    def _flush_store(self) -> None:
        while self.pending:
            report = self.pending[0]
            try:
                self.store.record_evaluation(self.run_name, report)
            except Exception as error:
                self.store_failures += 1
                logger.warning(
                    "featuredrift run store unavailable (%s); %d evaluation(s) pending", error, len(self.pending)
                )
                return
            self.pending.popleft()

    def _spill(self) -> None:
        path = self.spill_dir / f"featuredrift-pending-{self.run_name}.jsonl"
        try:
            with path.open("a") as f:
                for report in self.pending:
                    f.write(json.dumps({"run": self.run_name, "report": report.to_dict()}) + "\n")
            logger.warning("featuredrift wrote %d unstored evaluation(s) to %s", len(self.pending), path)
            self.pending.clear()
        except OSError:
            logger.exception("featuredrift could not spill pending evaluations")


def _record_alert(store, run_name: str, alert) -> None:
    try:
        store.record_alert(run_name, alert)
    except Exception:
        logger.exception("featuredrift could not store alert %s", getattr(alert, "name", alert))
