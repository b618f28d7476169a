"""Serve the latest evaluation on an HTTP `/metrics` endpoint inside the training process.

The default when no Pushgateway is configured. A private registry (not the global one, so
other libraries' metrics and ours never collide) holds one collector whose snapshot each
report replaces atomically.
"""

from __future__ import annotations

import logging
import threading
import time

from prometheus_client import CollectorRegistry, start_http_server

from featuredrift.exporters.metrics import ExportStats, SnapshotCollector, report_families
from featuredrift.monitor.report import EvaluationReport

log = logging.getLogger(__name__)


class MetricsEndpointExporter:
    """`/metrics` on `addr:port` (port 0 picks a free one; see `.port` and `.url`)."""

    def __init__(self, port: int = 9464, addr: str = "127.0.0.1", run: str = "default") -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"metrics port: expected 0..65535, found {port}")
        self.run = run
        self.addr = addr
        self.registry = CollectorRegistry(auto_describe=False)
        self._collector = SnapshotCollector(report_families(None, run, ExportStats()))
        self.registry.register(self._collector)
        self._lock = threading.Lock()
        self._delivered = 0
        self._failures = 0
        try:
            self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as error:
            raise OSError(f"metrics endpoint: cannot listen on {addr}:{port} ({error})") from error
        self.port = int(self._server.server_address[1])
        self._closed = False

    @property
    def url(self) -> str:
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    @property
    def failures(self) -> int:
        return self._failures

    @property
    def dropped(self) -> int:
        return 0

    def submit(self, report: EvaluationReport) -> None:
        """Replace the served state with this report; cheap, synchronous, never raises."""
        try:
            with self._lock:
                stats = ExportStats(self._delivered + 1, self._failures, 0, time.time())
                self._collector.update(report_families(report, self.run, stats))
                self._delivered += 1
        except Exception:  # noqa: BLE001 - telemetry must never raise into training
            self._failures += 1
            log.exception("metrics endpoint: could not update metrics for step %s", getattr(report, "step", "?"))

    def close(self, timeout: float | None = None) -> None:
        """Stop serving, waiting at most `timeout` (default 1 s).

        `shutdown()` waits for the server loop's next poll (every 0.5 s): it runs on a thread of
        its own, so a close with less time left than that does not overrun it.
        """
        if self._closed:
            return
        self._closed = True
        stopping = threading.Thread(target=self._stop, name="featuredrift-metrics-shutdown", daemon=True)
        stopping.start()
        stopping.join(timeout=max(0.0, timeout) if timeout is not None else 1.0)

    def _stop(self) -> None:
        try:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
        except Exception:  # noqa: BLE001
            log.exception("metrics endpoint: error while shutting down")

    def __enter__(self) -> MetricsEndpointExporter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
