"""The in-process alert engine: the alert definitions evaluated on each EvaluationReport.

Used when no Prometheus is deployed (the embedded default). It evaluates the same
`AlertDefinition`s as `alerts/rules.yml` against `report.metric_samples()` (plus any
exporter samples passed in), keeps per-series state so an alert fires once and later
resolves, and runs actions on each transition: log, a callback (e.g. the run store), an
Alertmanager-compatible webhook, and a stop request for critical alerts.

Semantics, chosen to agree with Prometheus:
- `for` is wall time measured on the reports' timestamps: an alert fires at the first
  evaluation at which its condition has held, at every evaluation, for at least `for`
  (with `for: 0s`, at the first violating evaluation). Between two evaluations the value is
  taken as constant, as it is in the Pushgateway.
- `stale` compares `report.timestamp - value`; `increase` is the growth of the counter since
  the previous evaluation of the same series (a counter reset counts from zero; the first
  sighting of a counter has no increase yet), so the window is the evaluation interval.
- A series missing from a report (refusal rates run only every Nth evaluation) keeps its
  state; `resolve_run` resolves everything left active when a run ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featuredrift.alerts.definitions import DEFAULT_DEFINITIONS, AlertDefinition, configure
from featuredrift.alerts.templating import render
from featuredrift.alerts.webhook import WebhookAction
from featuredrift.monitor.report import EvaluationReport, MetricSample

logger = logging.getLogger(__name__)

Action = Callable[[Sequence["FiredAlert"]], None]
SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class FiredAlert:
    """One alert transition: it started firing, or it resolved."""

    name: str
    status: str  # "firing" or "resolved"
    severity: str
    labels: dict[str, str]  # alertname, severity, run and the series' labels
    annotations: dict[str, str]
    value: float
    starts_at: float  # unix seconds
    ends_at: float | None = None  # set when resolved
    step: int | None = None

    def describe(self) -> str:
        series = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()) if k not in ("alertname", "severity"))
        return f"{self.name}{{{series}}} {self.status}: {self.annotations.get('summary', '')}"


@dataclass
class _SeriesState:
    pending_since: float | None = None
    firing: FiredAlert | None = None


def log_action(alerts: Sequence[FiredAlert]) -> None:
    """Default action: one log line per transition."""
    for alert in alerts:
        level = logging.INFO if alert.status == "resolved" or alert.severity == "info" else logging.WARNING
        logger.log(level, "alert %s", alert.describe())


@dataclass
class AlertEngine:
    """Evaluate alert definitions on reports; see the module docstring for the semantics.

    `thresholds` overrides definitions (a mapping or a YAML/JSON file, as for
    `featuredrift alerts generate --thresholds`). `on_fire` is called with each alert that
    starts firing, `on_resolve` with each that resolves; `webhook_url` receives an
    Alertmanager webhook payload per evaluation with transitions. With `stop_on_alert`, an
    alert of a severity in `stop_severities` sets `should_stop` and `stop_reason`.
    Actions never raise into the caller.
    """

    definitions: Sequence[AlertDefinition] | None = None
    thresholds: Mapping[str, Any] | str | Path | None = None
    actions: Sequence[Action] | None = None
    on_fire: Callable[[FiredAlert], Any] | None = None
    on_resolve: Callable[[FiredAlert], Any] | None = None
    webhook_url: str | None = None
    webhook_timeout_s: float = 2.0
    stop_on_alert: bool = False
    stop_severities: tuple[str, ...] = ("critical",)
    should_stop: bool = field(default=False, init=False)
    stop_reason: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        base = tuple(self.definitions) if self.definitions is not None else DEFAULT_DEFINITIONS
        self.definitions = configure(self.thresholds, base)
        self.actions = list(self.actions) if self.actions is not None else [log_action]
        self.webhook = WebhookAction(self.webhook_url, self.webhook_timeout_s) if self.webhook_url else None
        if self.webhook is not None:
            self.actions.append(self.webhook)
        self._state: dict[SeriesKey, _SeriesState] = {}
        self._last_counter: dict[SeriesKey, float] = {}

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> AlertEngine:
        """Engine from a MonitorConfig (`stop_on_alert`, `alert_webhook_url`); keyword
        arguments (thresholds, on_fire, …) win."""
        settings = {
            "stop_on_alert": config.stop_on_alert,
            "webhook_url": config.alert_webhook_url,
            "thresholds": getattr(config, "alert_thresholds", None),
        }
        return cls(**{**settings, **overrides})

    @property
    def firing(self) -> list[FiredAlert]:
        """Alerts currently firing, over all runs."""
        return [s.firing for s in self._state.values() if s.firing is not None]

    def evaluate(
        self, report: EvaluationReport, run: str, extra_samples: Iterable[MetricSample] = ()
    ) -> list[FiredAlert]:
        """Evaluate one report; return the transitions (newly firing, newly resolved)."""
        samples = [*report.metric_samples(), *extra_samples]
        transitions = self.evaluate_samples(samples, run, report.timestamp, step=report.step)
        self._act(transitions)
        return transitions

    def resolve_run(self, run: str, timestamp: float) -> list[FiredAlert]:
        """Resolve every alert still active for `run` (the run ended)."""
        transitions = []
        for key, state in list(self._state.items()):
            if dict(key[1]).get("run") != run:
                continue
            if state.firing is not None:
                transitions.append(_resolved(state.firing, timestamp, state.firing.value))
            del self._state[key]
        self._act(transitions)
        return transitions

    def evaluate_samples(
        self, samples: Iterable[MetricSample], run: str, now: float, step: int | None = None
    ) -> list[FiredAlert]:
        """The pure state transition on flat samples (no actions run)."""
        samples = list(samples)
        transitions: list[FiredAlert] = []
        for definition in self.definitions:
            for sample in samples:
                if not definition.matches(sample.name, sample.labels):
                    continue
                series = {**sample.labels, "run": run}
                key: SeriesKey = (definition.name, tuple(sorted(series.items())))
                value = self._derived_value(definition, key, sample.value, now)
                if value is None:
                    continue
                transition = self._advance(definition, key, series, value, now, step)
                if transition is not None:
                    transitions.append(transition)
        return transitions

    def _derived_value(self, definition: AlertDefinition, key: SeriesKey, value: float, now: float) -> float | None:
        if definition.kind == "threshold":
            return value
        if definition.kind == "stale":
            return now - value
        previous = self._last_counter.get(key)
        self._last_counter[key] = value
        if previous is None:
            return None
        return value - previous if value >= previous else value

    def _advance(
        self,
        definition: AlertDefinition,
        key: SeriesKey,
        series: dict[str, str],
        value: float,
        now: float,
        step: int | None,
    ) -> FiredAlert | None:
        state = self._state.setdefault(key, _SeriesState())
        if not definition.holds(value):
            state.pending_since = None
            if state.firing is None:
                return None
            resolved = _resolved(state.firing, now, value, step)
            state.firing = None
            return resolved
        if state.pending_since is None:
            state.pending_since = now
        if state.firing is not None or now - state.pending_since < definition.for_seconds:
            return None
        labels = {**series, "alertname": definition.name, "severity": definition.severity}
        annotations = {k: render(text, labels, value) for k, text in definition.annotations().items()}
        state.firing = FiredAlert(
            name=definition.name,
            status="firing",
            severity=definition.severity,
            labels=labels,
            annotations=annotations,
            value=value,
            starts_at=now,
            step=step,
        )
        return state.firing

    def _act(self, transitions: list[FiredAlert]) -> None:
        if not transitions:
            return
        for alert in transitions:
            if alert.status == "firing" and self.stop_on_alert and alert.severity in self.stop_severities:
                if not self.should_stop:
                    self.should_stop = True
                    self.stop_reason = alert.describe()
            callback = self.on_fire if alert.status == "firing" else self.on_resolve
            if callback is not None:
                _never_raise(callback, alert)
        for action in self.actions:
            _never_raise(action, transitions)


def _resolved(alert: FiredAlert, now: float, value: float, step: int | None = None) -> FiredAlert:
    return FiredAlert(
        name=alert.name,
        status="resolved",
        severity=alert.severity,
        labels=alert.labels,
        annotations=alert.annotations,
        value=value,
        starts_at=alert.starts_at,
        ends_at=now,
        step=step if step is not None else alert.step,
    )


def _never_raise(function: Callable[..., Any], *args: Any) -> None:
    try:
        function(*args)
    except Exception:  # an action's failure must never reach training
        logger.exception("alert action %r failed", function)
