"""Exporters: turn evaluation reports into Prometheus metrics (Pushgateway or /metrics), off the training thread."""

from featuredrift.exporters.base import Exporter, NullExporter
from featuredrift.exporters.endpoint import MetricsEndpointExporter
from featuredrift.exporters.factory import make_exporter
from featuredrift.exporters.metrics import ExportStats, registry_for_report, report_families
from featuredrift.exporters.pushgateway import PushgatewayExporter

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
