"""SQLAlchemy 2 ORM models of the run store: runs, evaluations and what each evaluation found.

One row per evaluation holds the full report JSON (the source of truth, so nothing is lost);
the other tables are flat, queryable projections of that report (metric values, drifted
features, refusal features, their top-activating probe contexts, refusal per prompt category)
and the alerts raised during a run.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Run(Base):
    """One monitored fine-tuning run; the name is its identity across restarts."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now, onupdate=utc_now)
    status: Mapped[str] = mapped_column(String(32), default="running")
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    model_fingerprint: Mapped[str | None] = mapped_column(String(128))
    sae_fingerprint: Mapped[str | None] = mapped_column(String(128))
    reference_policy: Mapped[str | None] = mapped_column(String(255))
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The newest event the run's journal holds (its own clock, so a late replay never revives a
    # dead run) and how long the run said the next one may take: a running run silent for several
    # of those is stale. Status itself is never rewritten.
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_interval_s: Mapped[float | None] = mapped_column(Float)

    evaluations: Mapped[list[Evaluation]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True, order_by="Evaluation.step"
    )
    alerts: Mapped[list[Alert]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True
    )
    checkpoints: Mapped[list[Checkpoint]] = relationship(cascade="all, delete-orphan", passive_deletes=True)
    audit_examples: Mapped[list[AuditExample]] = relationship(cascade="all, delete-orphan", passive_deletes=True)


class Evaluation(Base):
    """One evaluation at one training step; `report` is `EvaluationReport.to_json()` verbatim."""

    __tablename__ = "evaluations"
    __table_args__ = (UniqueConstraint("run_id", "step", name="uq_evaluations_run_step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    timestamp: Mapped[float] = mapped_column(Float)  # unix seconds, from the report
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now, onupdate=utc_now)
    epoch: Mapped[float | None] = mapped_column(Float)
    duration_s: Mapped[float | None] = mapped_column(Float)
    timings: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    # Text, not JSON: reports may hold NaN, which PostgreSQL's JSON types reject.
    report: Mapped[str] = mapped_column(Text)
    # The journal event that stored it (None: recorded directly or from a JSON export).
    journal_sequence: Mapped[int | None] = mapped_column(Integer)

    run: Mapped[Run] = relationship(back_populates="evaluations")
    metric_values: Mapped[list[MetricValue]] = relationship(
        back_populates="evaluation", cascade="all, delete-orphan", passive_deletes=True
    )
    drifted_features: Mapped[list[DriftedFeature]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )
    refusal_features: Mapped[list[RefusalFeature]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )
    feature_contexts: Mapped[list[FeatureContext]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )
    category_refusals: Mapped[list[CategoryRefusal]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )


class MetricValue(Base):
    """One `MetricSample` of an evaluation. `labels` is canonical JSON (sorted keys) for exact matching."""

    __tablename__ = "metric_values"
    __table_args__ = (
        UniqueConstraint("evaluation_id", "name", "labels", name="uq_metric_values_sample"),
        Index("ix_metric_values_name", "name"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    labels: Mapped[str] = mapped_column(String(1024))
    value: Mapped[float] = mapped_column(Float)

    evaluation: Mapped[Evaluation] = relationship(back_populates="metric_values")


class DriftedFeature(Base):
    """One of the top-N most drifted SAE features of an evaluation (rank 0 = most drifted)."""

    __tablename__ = "drifted_features"
    __table_args__ = (Index("ix_drifted_features_feature", "hookpoint", "feature"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), index=True)
    hookpoint: Mapped[str] = mapped_column(String(255))
    feature: Mapped[int] = mapped_column(Integer)
    subset: Mapped[str] = mapped_column(String(64))
    freq_reference: Mapped[float | None] = mapped_column(Float)
    freq_current: Mapped[float | None] = mapped_column(Float)
    mean_reference: Mapped[float | None] = mapped_column(Float)
    mean_current: Mapped[float | None] = mapped_column(Float)
    score: Mapped[float | None] = mapped_column(Float)
    rank: Mapped[int] = mapped_column(Integer)


class RefusalFeature(Base):
    """One member of a refusal-feature set S_k (source: whose d̄ chose it, current or reference)."""

    __tablename__ = "refusal_features"
    __table_args__ = (
        UniqueConstraint("evaluation_id", "hookpoint", "k", "source", "rank", name="uq_refusal_features_slot"),
        Index("ix_refusal_features_feature", "hookpoint", "feature"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), index=True)
    hookpoint: Mapped[str] = mapped_column(String(255))
    k: Mapped[int] = mapped_column(Integer)
    feature: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(16))  # "current" | "reference"
    rank: Mapped[int] = mapped_column(Integer)
    diff_in_means: Mapped[float | None] = mapped_column(Float)  # d̄_j at this step, when the report has it
    nnls_weight: Mapped[float | None] = mapped_column(Float)


class FeatureContext(Base):
    """One top-activating probe token of a listed feature (model: reference or current), with its text around it."""

    __tablename__ = "feature_contexts"
    __table_args__ = (
        UniqueConstraint("evaluation_id", "hookpoint", "feature", "model", "rank", name="uq_feature_contexts_slot"),
        Index("ix_feature_contexts_feature", "hookpoint", "feature"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), index=True)
    hookpoint: Mapped[str] = mapped_column(String(255))
    feature: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(16))  # "reference" | "current"
    rank: Mapped[int] = mapped_column(Integer)  # 0 = strongest
    subset: Mapped[str] = mapped_column(String(64))
    probe_index: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)
    left_text: Mapped[str] = mapped_column(Text)
    token: Mapped[str] = mapped_column(Text)
    right_text: Mapped[str] = mapped_column(Text)
    activation: Mapped[float] = mapped_column(Float)


class CategoryRefusal(Base):
    """Refusal on one category of one prompt subset (HarmBench semantic category, XSTest type, …) at
    one evaluation: a table, not metric labels, since a benchmark may have any number of categories."""

    __tablename__ = "category_refusals"
    __table_args__ = (
        UniqueConstraint("evaluation_id", "subset", "category", name="uq_category_refusals_slot"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), index=True)
    subset: Mapped[str] = mapped_column(String(64))  # harmful | harmless | borderline
    category: Mapped[str] = mapped_column(String(255))
    prompts: Mapped[int] = mapped_column(Integer)
    refusal_rate: Mapped[float | None] = mapped_column(Float)  # None where no completions were generated
    refusal_token_probability: Mapped[float | None] = mapped_column(Float)
    refusal_token_logodds: Mapped[float | None] = mapped_column(Float)
class JournalRecord(Base):
    """One journal event the store has applied, by its sequence number within the run: what makes
    replaying any set of a run's journals, in any order, store each event exactly once."""

    __tablename__ = "journal_events"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    digest: Mapped[str | None] = mapped_column(String(64))  # JournalEvent.digest; None: applied before digests were kept
    step: Mapped[int | None] = mapped_column(Integer)  # an evaluation's step; a resumed run's checkpoint step
    applied_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class Alert(Base):
    """An alert raised during a run; resolved alerts keep their start and get an end."""

    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_run_name_status", "run_id", "name", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    evaluation_id: Mapped[int | None] = mapped_column(ForeignKey("evaluations.id", ondelete="SET NULL"))
    step: Mapped[int | None] = mapped_column(Integer)  # the step it first fired at
    resolved_step: Mapped[int | None] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(255))
    labels: Mapped[str] = mapped_column(String(1024), default="{}")  # canonical JSON: which series fired
    severity: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))  # "firing" | "resolved"
    message: Mapped[str] = mapped_column(Text, default="")
    value: Mapped[float | None] = mapped_column(Float)  # the alerting expression's value
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # For a critical alert: the last saved checkpoint that passed every critical alert when it fired.
    checkpoint: Mapped[str | None] = mapped_column(Text)
    checkpoint_step: Mapped[int | None] = mapped_column(Integer)

    run: Mapped[Run] = relationship(back_populates="alerts")


class Checkpoint(Base):
    """A checkpoint the Trainer saved during a run (its folder, as the Trainer wrote it)."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "step", name="uq_checkpoints_run_step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    saved_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class AuditExample(Base):
    """One training example the data audit read at train begin, with its scores (see monitor/audit.py)."""

    __tablename__ = "audit_examples"
    __table_args__ = (UniqueConstraint("run_id", "hookpoint", "example", name="uq_audit_examples_slot"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    hookpoint: Mapped[str] = mapped_column(String(255))
    example: Mapped[int] = mapped_column(Integer)  # its index in the train dataset
    prompt: Mapped[str] = mapped_column(Text)
    target: Mapped[str] = mapped_column(Text)
    harmfulness: Mapped[float | None] = mapped_column(Float)
    direction_score: Mapped[float | None] = mapped_column(Float)
    feature_score: Mapped[float | None] = mapped_column(Float)
    target_refuses: Mapped[bool] = mapped_column(Boolean)
    refusal_probability: Mapped[float | None] = mapped_column(Float)
    erosion_risk: Mapped[float | None] = mapped_column(Float)
    over_refusal_risk: Mapped[float | None] = mapped_column(Float)
