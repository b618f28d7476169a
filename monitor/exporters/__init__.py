"""Exporters: turn evaluation reports into Prometheus metrics (Pushgateway or /metrics), off the training thread."""

from featuredrift.monitor.exporters.base import Exporter, NullExporter
from featuredrift.monitor.exporters.endpoint import MetricsEndpointExporter
from featuredrift.monitor.exporters.factory import make_exporter
from featuredrift.monitor.exporters.metrics import ExportStats, registry_for_report, report_families
from featuredrift.monitor.exporters.pushgateway import PushgatewayExporter

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
