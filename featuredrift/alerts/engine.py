"""The in-process alert engine: the alert definitions evaluated on each EvaluationReport.

Used when no Prometheus is deployed (the embedded default). It evaluates the same
`AlertDefinition`s as `alerts/rules.yml` against `report.metric_samples()` (plus any
exporter samples passed in), keeps per-series state so an alert fires once and later
resolves, and runs actions on each transition: log, a callback (e.g. the run store), an
Alertmanager-compatible webhook, and a stop request for critical alerts.

Semantics, chosen to agree with the generated Prometheus rules:
- `for` counts evaluations: an alert fires at the evaluation at which its condition has held
  at `for` + 1 consecutive evaluations of its series (with `for` 0, at the first violating
  one), however long or short the run's cadence is.
- The monitoring goal (`guard`, `align`, `off`, or `auto`: guard when the reference refuses at
  least half of the harmful probes, else align) selects the alerts that apply. `auto` decides at
  the run's first evaluation that measures a refusal rate (normally step 0); until then only the
  alerts for every goal apply. The choice is kept in `run_goals` (why: `goal_reasons`), logged,
  and exported as `featuredrift_monitoring_goal`.
- An alert with `requires` is inactive while its requirement fails: it never fires (and
  resolves if it was firing), the series is listed in `inactive` with the reason, and the log
  says so once per stretch of inactivity.
- `stale` compares `report.timestamp - value`; `increase` is the growth of the counter since
  the previous evaluation of the same series (a counter reset counts from zero; the first
  sighting of a counter has no increase yet), so the window is the evaluation interval;
  `jump` is the change of a gauge since the previous evaluation of its series.
- A series missing from a report (refusal rates run only every Nth evaluation) keeps its
  state; `resolve_run` resolves everything left active when a run ends.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featuredrift.alerts.definitions import (
    DEFAULT_DEFINITIONS,
    AlertDefinition,
    configure,
    format_number,
)
from featuredrift.alerts.templating import render
from featuredrift.alerts.webhook import WebhookAction
from featuredrift.monitor.config import GOALS, MONITORING_GOALS
from featuredrift.monitor.report import EvaluationReport, MetricSample
from featuredrift.text import printable

logger = logging.getLogger(__name__)

Action = Callable[[Sequence["FiredAlert"]], None]
AUTO_GUARD_REFUSAL_RATE = 0.5  # a reference that refuses at least this often is guarded
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
    step: int | None = None  # the step at which it first fired
    # the step at which it recovered; None while firing and when only the run's end closed it
    # (`resolve_run`: status "resolved" for Alertmanager, yet it never recovered)
    resolved_step: int | None = None

    def describe(self) -> str:
        series = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()) if k not in ("alertname", "severity"))
        return f"{self.name}{{{series}}} {self.status}: {self.annotations.get('summary', '')}"


@dataclass
class _SeriesState:
    violations: int = 0  # consecutive evaluations with the condition holding
    firing: FiredAlert | None = None


def log_action(alerts: Sequence[FiredAlert]) -> None:
    """Default action: one log line per transition."""
    for alert in alerts:
        level = logging.INFO if alert.status == "resolved" or alert.severity == "info" else logging.WARNING
        logger.log(level, "alert %s", printable(alert.describe()))


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
    goal: str = "auto"
    # Extra annotations for each alert of a stop severity as it starts firing (the session adds the
    # last checkpoint that passed every critical alert), in the record, the log and the webhook alike.
    annotate: Callable[[FiredAlert], Mapping[str, str]] | None = None
    should_stop: bool = field(default=False, init=False)
    stop_reason: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        base = tuple(self.definitions) if self.definitions is not None else DEFAULT_DEFINITIONS
        self.definitions = configure(self.thresholds, base)
        self.actions = list(self.actions) if self.actions is not None else [log_action]
        self.webhook = WebhookAction(self.webhook_url, self.webhook_timeout_s) if self.webhook_url else None
        if self.webhook is not None:
            self.actions.append(self.webhook)
        if self.goal not in MONITORING_GOALS:
            raise ValueError(f"alert goal: expected one of {MONITORING_GOALS}, found {self.goal!r}")
        self._state: dict[SeriesKey, _SeriesState] = {}
        self._last_counter: dict[SeriesKey, float] = {}
        self.run_goals: dict[str, str] = {}  # run -> guard | align | off, once decided
        self.goal_reasons: dict[str, str] = {}  # run -> why that goal
        self.inactive: dict[SeriesKey, str] = {}  # series whose alert's requirement fails -> why
        self._undecided_said: set[str] = set()

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> AlertEngine:
        """Engine from a MonitorConfig (`stop_on_alert`, `alert_webhook_url`); keyword
        arguments (thresholds, on_fire, …) win."""
        settings = {
            "goal": getattr(config, "alert_goal", "auto"),
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
        self.goal_for(run, report)
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

    def goal_for(self, run: str, report: EvaluationReport | None = None) -> str | None:
        """The run's monitoring goal: fixed by `goal`, or with `auto` decided at the run's first
        report that carries a harmful-prompt refusal rate (the reference's behaviour is what tells
        a model that must keep refusing from one that should learn to). None while undecided."""
        if run in self.run_goals or report is None:
            return self.run_goals.get(run)
        if self.goal != "auto":
            return self._decide(run, self.goal, "set by alert_goal")
        # The reference's own generated refusals when the monitor measured them at start, else the
        # first evaluation's (the model at train begin).
        measured_at = "at the reference"
        rate = (report.refusal_rate_reference or {}).get("harmful")
        if rate is None:
            rate = (report.refusal_rate or {}).get("harmful")
            measured_at = f"at step {report.step}"
        if rate is None:
            if run not in self._undecided_said:
                self._undecided_said.add(run)
                logger.info("featuredrift monitoring goal for run %r: undecided until an evaluation measures the "
                            "refusal rate (until then only alerts for every goal apply)", run)
            return None
        goal = "guard" if rate >= AUTO_GUARD_REFUSAL_RATE else "align"
        return self._decide(run, goal, f"auto: the model refuses {rate:.0%} of harmful probes {measured_at}, "
                                       f"guard from {AUTO_GUARD_REFUSAL_RATE:.0%}")

    def _decide(self, run: str, goal: str, why: str) -> str:
        self.run_goals[run] = goal
        self.goal_reasons[run] = why
        logger.info("featuredrift monitoring goal for run %r: %s (%s)", run, goal, why)
        return goal

    def evaluate_samples(
        self, samples: Iterable[MetricSample], run: str, now: float, step: int | None = None
    ) -> list[FiredAlert]:
        """The pure state transition on flat samples (no actions run)."""
        samples = list(samples)
        goal = self.run_goals.get(run, self.goal if self.goal != "auto" else None)
        transitions: list[FiredAlert] = []
        for definition in self.definitions:
            applies = goal in definition.goals or (goal is None and tuple(definition.goals) == GOALS)
            if not applies:
                continue
            for sample in samples:
                matchers = _read_matchers(definition, sample, samples)
                if matchers is None:
                    continue
                ignored = definition.ignored_labels(matchers)
                series = {**{k: v for k, v in sample.labels.items() if k not in ignored}, "run": run}
                key: SeriesKey = (definition.name, tuple(sorted(series.items())))
                value = self._derived_value(definition, key, sample, samples, matchers, now)
                if value is None:
                    continue
                if not self._requirement_holds(definition, key, sample, samples):
                    value = math.nan  # inactive: counts as not violating, resolves if firing
                transition = self._advance(definition, key, series, value, now, step)
                if transition is not None:
                    transitions.append(transition)
        return transitions

    def _requirement_holds(self, definition: AlertDefinition, key: SeriesKey, sample: MetricSample,
                           samples: list[MetricSample]) -> bool:
        """Whether the alert is active for this series; an inactive one is listed in `inactive`
        and said once in the log, with the value found."""
        requirement = definition.requires
        if requirement is None:
            return True
        layer = sample.labels.get("layer")
        values = [s.value for s in samples if s.name == requirement.metric and s.labels.get("layer") == layer]
        if values and requirement.holds(values[0]):
            self.inactive.pop(key, None)
            return True
        found = f"{values[0]:.3g}" if values else "no value"
        expected = f"{requirement.metric} {requirement.op} {format_number(requirement.value)}"
        reason = f"{requirement.reason} (expected {expected}, found {found})"
        if key not in self.inactive:
            logger.info("alert %s inactive for %s: %s", definition.name, dict(key[1]), reason)
        self.inactive[key] = reason
        return False

    def _derived_value(self, definition: AlertDefinition, key: SeriesKey, sample: MetricSample,
                       samples: list[MetricSample], matchers: dict[str, str], now: float) -> float | None:
        value = sample.value
        if definition.kind == "threshold":
            return value
        if definition.kind == "stale":
            return now - value
        if definition.kind == "change":
            assert definition.baseline is not None
            wanted = {**sample.labels, **definition.baseline.labels(matchers)}
            baseline = next((s.value for s in samples if s.name == definition.baseline.metric and s.labels == wanted), None)
            return None if baseline is None else value - baseline
        previous = self._last_counter.get(key)
        self._last_counter[key] = value
        if previous is None:
            return None
        if definition.kind == "jump":
            return value - previous
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
        if math.isnan(value) or not definition.holds(value):
            state.violations = 0
            if state.firing is None:
                return None
            resolved = _resolved(state.firing, now, value, step)
            state.firing = None
            return resolved
        state.violations += 1
        if state.firing is not None or state.violations <= definition.for_evaluations:
            return None
        labels = {**series, "alertname": definition.name, "severity": definition.severity}
        annotations = {k: render(text, labels, value) for k, text in definition.annotations().items()}
        firing = FiredAlert(
            name=definition.name,
            status="firing",
            severity=definition.severity,
            labels=labels,
            annotations=annotations,
            value=value,
            starts_at=now,
            step=step,
        )
        if self.annotate is not None and definition.severity in self.stop_severities:
            try:
                firing = dataclasses.replace(firing, annotations={**annotations, **self.annotate(firing)})
            except Exception:  # an annotation must never keep an alert from firing
                logger.exception("alert annotation for %s failed", definition.name)
        state.firing = firing
        return firing

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


def _read_matchers(definition: AlertDefinition, sample: MetricSample,
                   samples: list[MetricSample]) -> dict[str, str] | None:
    """The matchers by which `sample` is one of the alert's series: its own, or its fallback's
    when the report has no series of the preferred kind (at the sample's layer), as the rule's
    `unless on(job, run[, layer])` decides in Prometheus."""
    preferred, *fallbacks = definition.candidate_matchers()
    if definition.matches(sample.name, sample.labels, preferred):
        return preferred
    for fallback in fallbacks:
        if not definition.matches(sample.name, sample.labels, fallback):
            continue
        layer = sample.labels.get("layer")
        shadowed = any(definition.matches(s.name, s.labels, preferred) and s.labels.get("layer") == layer
                       for s in samples)
        return None if shadowed else fallback
    return None


def _resolved(alert: FiredAlert, now: float, value: float, step: int | None = None) -> FiredAlert:
    """The resolution of a firing alert: it keeps the step it first fired at."""
    return dataclasses.replace(alert, status="resolved", value=value, ends_at=now, resolved_step=step)


def _never_raise(function: Callable[..., Any], *args: Any) -> None:
    try:
        function(*args)
    except Exception:  # an action's failure must never reach training
        logger.exception("alert action %r failed", function)
