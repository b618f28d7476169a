"""Choose the exporter a run uses from its `MonitorConfig`.

Pushgateway when `pushgateway_url` is set; otherwise the in-process `/metrics` endpoint on
`metrics_port` (default 9464; 0 picks a free port; a negative port switches metrics off).
A port already taken (another training job on the same machine) falls back to a free port
with a warning rather than failing the run.
"""

from __future__ import annotations

import logging

from featuredrift.exporters.base import Exporter, NullExporter
from featuredrift.exporters.endpoint import MetricsEndpointExporter
from featuredrift.exporters.pushgateway import PushgatewayExporter
from featuredrift.monitor.config import MonitorConfig

log = logging.getLogger(__name__)

DEFAULT_METRICS_PORT = 9464


def make_exporter(config: MonitorConfig, run: str, addr: str | None = None) -> Exporter:
    """The run's exporter; `addr` overrides `config.metrics_address` for the /metrics endpoint."""
    addr = addr or config.metrics_address
    if config.pushgateway_url:
        return PushgatewayExporter(
            config.pushgateway_url,
            job=config.job,
            run=run,
            timeout_s=config.export_timeout_s,
            buffer_size=config.export_buffer_size,
            delete_on_close=not config.keep_group_on_end,
        )
    port = DEFAULT_METRICS_PORT if config.metrics_port is None else int(config.metrics_port)
    if port < 0:
        return NullExporter()
    try:
        exporter = MetricsEndpointExporter(port, addr=addr, run=run)
    except OSError as error:
        exporter = MetricsEndpointExporter(0, addr=addr, run=run)
        log.warning("%s; serving metrics on %s instead", error, exporter.url)
        return exporter
    log.info("serving featuredrift metrics on %s", exporter.url)
    return exporter
