"""Exporters: turn evaluation reports into Prometheus metrics (Pushgateway or /metrics), off the training thread."""

from monitor.exporters.base import Exporter, NullExporter
from monitor.exporters.endpoint import MetricsEndpointExporter
from monitor.exporters.factory import make_exporter
from monitor.exporters.metrics import ExportStats, registry_for_report, report_families
from monitor.exporters.pushgateway import PushgatewayExporter

__all__ = [
    "ExportStats",
    "Exporter",
    "MetricsEndpointExporter",
    "NullExporter",
    "PushgatewayExporter",
    "make_exporter",
    "registry_for_report",
    "report_families",
]
