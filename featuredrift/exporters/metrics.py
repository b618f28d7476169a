"""The one mapping from an evaluation report to Prometheus metric families.

Both exporters use it: the Pushgateway exporter builds a fresh registry per report, the
/metrics endpoint swaps the snapshot of one long-lived collector. Names and labels come from
`EvaluationReport.metric_samples()`; this module only adds `run` and the exporter's own
health metrics.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from featuredrift.monitor.report import METRIC_HELP, PREFIX, EvaluationReport

EVALUATIONS_TOTAL = PREFIX + "evaluations_total"
EXPORT_FAILURES_TOTAL = PREFIX + "export_failures_total"
EXPORT_DROPPED_TOTAL = PREFIX + "export_dropped_total"
LAST_SUCCESS = PREFIX + "last_success_timestamp_seconds"


@dataclass(frozen=True)
class ExportStats:
    """The exporter's own health, published next to the report's gauges."""

    evaluations: int = 0  # reports delivered (pushed or served) so far
    failures: int = 0  # failed delivery attempts so far
    dropped: int = 0  # reports dropped because the buffer was full
    last_success: float | None = None  # unix time of the delivery this payload belongs to


def report_families(report: EvaluationReport | None, run: str, stats: ExportStats) -> list[Metric]:
    """Gauges for every sample of the report (labels + `run`) and the exporter's counters."""
    families: list[Metric] = []
    if report is not None:
        grouped: dict[str, list] = {}
        for sample in report.metric_samples():
            grouped.setdefault(sample.name, []).append(sample)
        for name, samples in grouped.items():
            label_names = sorted({key for s in samples for key in s.labels} - {"run"})
            family = GaugeMetricFamily(name, METRIC_HELP[name.removeprefix(PREFIX)], labels=[*label_names, "run"])
            for s in samples:
                family.add_metric([str(s.labels.get(k, "")) for k in label_names] + [run], s.value)
            families.append(family)
    for name, value, help_text in (
        (EVALUATIONS_TOTAL, stats.evaluations, "Evaluations delivered by this run's exporter."),
        (EXPORT_FAILURES_TOTAL, stats.failures, "Failed metric export attempts."),
        (EXPORT_DROPPED_TOTAL, stats.dropped, "Evaluations dropped because the export buffer was full."),
    ):
        counter = CounterMetricFamily(name, help_text, labels=["run"])
        counter.add_metric([run], value)
        families.append(counter)
    if stats.last_success is not None:
        gauge = GaugeMetricFamily(LAST_SUCCESS, "Unix time of the last successful export.", labels=["run"])
        gauge.add_metric([run], stats.last_success)
        families.append(gauge)
    return families


class SnapshotCollector(Collector):
    """Serves the latest families; `update` swaps them atomically, so a scrape never sees half a report."""

    def __init__(self, families: list[Metric] | None = None) -> None:
        self._families = list(families or [])
        self._lock = threading.Lock()

    def update(self, families: list[Metric]) -> None:
        with self._lock:
            self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            return list(self._families)


def registry_for_report(report: EvaluationReport | None, run: str, stats: ExportStats) -> CollectorRegistry:
    """A fresh registry holding exactly one report's state (what one Pushgateway PUT sends)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(report_families(report, run, stats)))
    return registry
