"""Plain result types of run-store queries and the report → table-row projections.

Queries return these (not ORM objects) so callers never touch a closed session.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple

from featuredrift.monitor.report import EvaluationReport, LayerReport


def labels_key(labels: dict[str, str]) -> str:
    """Canonical JSON of a label set: equal label sets give equal strings."""
    return json.dumps({str(k): str(v) for k, v in labels.items()}, sort_keys=True, separators=(",", ":"))


def finite_or_none(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


@dataclass(frozen=True)
class RunInfo:
    id: int
    name: str
    status: str
    created_at: datetime
    updated_at: datetime
    config: dict[str, Any]
    model_fingerprint: str | None
    sae_fingerprint: str | None
    reference_policy: str | None
    extra: dict[str, Any] = field(default_factory=dict)
    evaluation_count: int = 0
    last_step: int | None = None
    resumed: bool = False  # set by start_run when the run already existed
    heartbeat_at: datetime | None = None  # the newest event of the run's journal
    heartbeat_interval_s: float | None = None  # how long the run said its next event may take

    @property
    def expected_interval_s(self) -> float:
        """How long the run said its next event may take (the default when it never said)."""
        return self.heartbeat_interval_s or DEFAULT_HEARTBEAT_INTERVAL_S

    def silent_for(self, now: datetime | None = None) -> float | None:
        """Seconds since the run's last event (runs recorded before heartbeats: since the store
        last wrote to them)."""
        last = self.heartbeat_at or self.updated_at
        if last is None:
            return None
        now = now or datetime.now(timezone.utc)
        return max(0.0, (now - last).total_seconds())

    def stale(self, now: datetime | None = None) -> bool:
        """A run still `running` on record that has been silent for more than
        `STALE_AFTER_INTERVALS` of its own heartbeat intervals: most likely dead (killed, lost
        its node). Derived when read; the stored status is never rewritten."""
        silent = self.silent_for(now)
        if self.status != "running" or silent is None:
            return False
        return silent > STALE_AFTER_INTERVALS * self.expected_interval_s

    def status_text(self, now: datetime | None = None) -> str:
        """The status as users read it: `running (stale: …)`, `failed: TypeError: …`."""
        if self.stale(now):
            return (f"running (stale: no event for {duration_text(self.silent_for(now))}, "
                    f"expected every {duration_text(self.expected_interval_s)})")
        error = self.extra.get("error")
        if self.status == "failed" and isinstance(error, dict):
            return f"failed: {error.get('type', 'error')}: {error.get('message', '')}".rstrip(": ")
        return self.status


STALE_AFTER_INTERVALS = 3
DEFAULT_HEARTBEAT_INTERVAL_S = 60.0


def duration_text(seconds: float | None) -> str:
    """12 s, 4 min, 3 h 5 min, 2 d 4 h."""
    if seconds is None:
        return "—"
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    hours, minutes = divmod(int(minutes), 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


@dataclass(frozen=True)
class EvaluationInfo:
    id: int
    step: int
    timestamp: float
    epoch: float | None
    duration_s: float | None
    report: EvaluationReport


class SeriesPoint(NamedTuple):
    step: int
    labels: dict[str, str]
    value: float


class MetricComparison(NamedTuple):
    """One series in two runs, aligned by step (None where a run lacks the series)."""

    name: str
    labels: dict[str, str]
    step_a: int | None
    value_a: float | None
    step_b: int | None
    value_b: float | None
    common_steps: int = 0  # steps both runs evaluated
    diverges_at: int | None = None  # first common step where the values differ beyond tolerance
    diverged_a: float | None = None  # the two values at `diverges_at`
    diverged_b: float | None = None

    @property
    def delta(self) -> float | None:
        if self.value_a is None or self.value_b is None:
            return None
        return self.value_b - self.value_a


class RunComparison(NamedTuple):
    run_a: RunInfo
    run_b: RunInfo
    metrics: list[MetricComparison]
    config_differences: dict[str, tuple[Any, Any]]


@dataclass(frozen=True)
class AlertInfo:
    id: int
    run: str
    name: str
    severity: str
    status: str
    message: str
    step: int | None
    started_at: datetime
    ended_at: datetime | None
    labels: dict[str, str] = field(default_factory=dict)
    value: float | None = None
    resolved_step: int | None = None
    checkpoint: str | None = None  # critical alerts: the last safe checkpoint when it fired
    checkpoint_step: int | None = None


class CheckpointRow(NamedTuple):
    step: int
    path: str
    saved_at: datetime


class DriftedFeatureRow(NamedTuple):
    step: int
    hookpoint: str
    feature: int
    subset: str
    freq_reference: float | None
    freq_current: float | None
    mean_reference: float | None
    mean_current: float | None
    score: float | None
    rank: int


class RefusalFeatureRow(NamedTuple):
    step: int
    hookpoint: str
    k: int
    feature: int
    source: str
    rank: int
    diff_in_means: float | None
    nnls_weight: float | None


class FeatureContextRow(NamedTuple):
    step: int
    hookpoint: str
    feature: int
    model: str  # "reference" | "current"
    rank: int
    subset: str
    probe_index: int
    position: int
    left: str
    token: str
    right: str
    activation: float


class CategoryRefusalRow(NamedTuple):
    step: int
    subset: str
    category: str
    prompts: int
    refusal_rate: float | None
    refusal_token_probability: float | None
    refusal_token_logodds: float | None


def latest_by_category(rows: list[CategoryRefusalRow]) -> list[tuple[CategoryRefusalRow, CategoryRefusalRow | None]]:
    """Per (subset, category): its newest row (the newest logit score) and the newest row that has
    a refusal rate (the newest generating evaluation), sorted by subset and category."""
    newest: dict[tuple[str, str], CategoryRefusalRow] = {}
    rated: dict[tuple[str, str], CategoryRefusalRow] = {}
    for row in sorted(rows, key=lambda r: r.step):
        newest[(row.subset, row.category)] = row
        if row.refusal_rate is not None:
            rated[(row.subset, row.category)] = row
    return [(row, rated.get(key)) for key, row in sorted(newest.items())]


CATEGORY_CHARS = 255  # the column's width: a longer category name is cut


def category_refusal_fields(report: EvaluationReport) -> list[dict[str, Any]]:
    """One row per (subset, category) of the report; names cut to the column (a row per name, first kept)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for c in report.refusal_by_category or []:
        key = (c.subset, c.category[:CATEGORY_CHARS])
        rows.setdefault(key, {
            "subset": key[0], "category": key[1], "prompts": int(c.prompts),
            "refusal_rate": finite_or_none(c.refusal_rate),
            "refusal_token_probability": finite_or_none(c.refusal_token_probability),
            "refusal_token_logodds": finite_or_none(c.refusal_token_logodds),
        })
    return list(rows.values())


def feature_context_fields(layer: LayerReport) -> list[dict[str, Any]]:
    return [
        {
            "feature": int(c.feature), "model": c.model, "rank": int(c.rank), "subset": c.subset,
            "probe_index": int(c.probe_index), "position": int(c.position),
            "left_text": c.left, "token": c.token, "right_text": c.right, "activation": float(c.activation),
        }
        for c in layer.feature_contexts
    ]


def drifted_feature_fields(layer: LayerReport) -> list[dict[str, Any]]:
    return [
        {
            "feature": int(drift.feature),
            "subset": drift.subset,
            "freq_reference": finite_or_none(drift.freq_reference),
            "freq_current": finite_or_none(drift.freq_current),
            "mean_reference": finite_or_none(drift.mean_reference),
            "mean_current": finite_or_none(drift.mean_current),
            "score": finite_or_none(drift.score),
            "rank": rank,
        }
        for rank, drift in enumerate(layer.drifted_features)
    ]


def refusal_feature_fields(layer: LayerReport) -> list[dict[str, Any]]:
    """Every refusal-feature set in a layer report: the headline S_k (current and reference)
    and the S_k of every NNLS reconstruction, each feature with its NNLS weight when known.

    d̄ per feature is filled when the report carries `current_values` / `reference_values`
    (d̄(t) aligned with `current` / `reference`); older reports leave it empty.
    """
    weights = {(r.k, r.source): dict(zip(r.features, r.weights, strict=False)) for r in layer.reconstructions}
    sets: dict[tuple[int, str], tuple[list[int], list[float] | None]] = {}
    rf = layer.refusal_features
    if rf is not None:
        sets[(rf.k, "current")] = (list(rf.current), getattr(rf, "current_values", None))
        sets[(rf.k, "reference")] = (list(rf.reference), getattr(rf, "reference_values", None))
    for reconstruction in layer.reconstructions:
        sets.setdefault((reconstruction.k, reconstruction.source), (list(reconstruction.features), None))
    rows = []
    for (k, source), (features, values) in sorted(sets.items()):
        weight_of = weights.get((k, source), {})
        for rank, feature in enumerate(features):
            value = values[rank] if values is not None and rank < len(values) else None
            rows.append(
                {
                    "k": int(k),
                    "feature": int(feature),
                    "source": source,
                    "rank": rank,
                    "diff_in_means": finite_or_none(value),
                    "nnls_weight": finite_or_none(weight_of.get(feature)),
                }
            )
    return rows


def audit_example_fields(example) -> dict[str, Any]:
    """An `AuditedExample` as an `audit_examples` row (without run and hookpoint)."""
    return {
        "example": int(example.example), "prompt": example.prompt, "target": example.target,
        "harmfulness": finite_or_none(example.harmfulness), "direction_score": finite_or_none(example.direction_score),
        "feature_score": finite_or_none(example.feature_score), "target_refuses": bool(example.target_refuses),
        "refusal_probability": finite_or_none(example.refusal_probability),
        "erosion_risk": finite_or_none(example.erosion_risk), "over_refusal_risk": finite_or_none(example.over_refusal_risk),
    }


def report_duration(report: EvaluationReport) -> float | None:
    return finite_or_none(report.timings.get("total")) if report.timings else None
