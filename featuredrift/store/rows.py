"""Plain result types of run-store queries and the report → table-row projections.

Queries return these (not ORM objects) so callers never touch a closed session.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
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


def report_duration(report: EvaluationReport) -> float | None:
    return finite_or_none(report.timings.get("total")) if report.timings else None
