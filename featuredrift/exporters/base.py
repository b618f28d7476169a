"""The exporter interface shared by the Pushgateway, /metrics and null exporters."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from featuredrift.monitor.report import EvaluationReport


@runtime_checkable
class Exporter(Protocol):
    """Never raises into the caller; `submit` returns immediately."""

    def submit(self, report: EvaluationReport) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...

    @property
    def failures(self) -> int: ...


class NullExporter:
    """Exports nothing: non-zero ranks, or metrics switched off (metrics_port < 0)."""

    url: str | None = None

    def submit(self, report: EvaluationReport) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass

    @property
    def failures(self) -> int:
        return 0

    @property
    def dropped(self) -> int:
        return 0

    def __enter__(self) -> NullExporter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
