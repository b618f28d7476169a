"""The one configuration object shared by the callback, the CLI and the checkpoint watcher.

Constructor arguments win; any field not given falls back to a `FEATUREDRIFT_<FIELD>`
environment variable (lists as comma-separated values), then to the default here.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ENV_PREFIX = "FEATUREDRIFT_"


class MonitorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # What to measure
    sae: str = Field("zoo:tiny", description="SAE source: a sparsify directory, a Hub id or zoo:<size>.")
    hookpoints: list[str] | None = Field(None, description="sparsify hookpoints (layers.N); None = every SAE in the source.")
    probes: str = Field("zoo:tiny", description="Probe set: a directory of JSONL files, 'default' or zoo:<size>.")
    reference: str = Field(
        "auto",
        description="'initial' (model at train begin, cached), 'adapters-disabled' (PEFT), "
        "'auto' (adapters-disabled for PEFT models, else initial) or a model path.",
    )
    max_probes: int | None = Field(None, ge=1, description="Use at most this many prompts/texts per probe subset.")
    max_length: int = Field(128, ge=8, description="Truncate probe texts to this many tokens.")
    batch_size: int = Field(16, ge=1)
    encode_batch_size: int = Field(4096, ge=1, description="Tokens per SAE encode chunk.")
    kl_max_positions: int = Field(512, ge=0, description="Probe positions whose reference log-probs are cached for KL (0 = all).")
    divergence_threshold: float = Field(0.9, gt=-1.0, lt=1.0, description="τ: token pairs with cos < τ are divergent.")
    refusal_k: int = Field(32, ge=1, description="Headline number of refusal features (clipped to the SAE's latents).")
    reconstruction_ks: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    top_n_features: int = Field(20, ge=0, description="Most drifted features kept per evaluation.")

    # When to measure
    eval_every: int | None = Field(None, ge=1, description="Steps between evaluations; None = eval_steps, else 50.")
    eval_on_save: bool = False
    refusal_score_every: int = Field(
        4, ge=0, description="Run generation-based refusal scores every Nth evaluation (0 = never; first and last always when > 0)."
    )
    kl_every: int = Field(1, ge=0, description="Compute KL every Nth evaluation (0 = never).")
    max_new_tokens: int = Field(24, ge=1)
    generation_batch_size: int = Field(64, ge=1, description="Prompts per batch in refusal-score generation.")
    judge: str = Field("refusal", description="Safety judge: 'refusal' (substring proxy) or 'harmbench:<path>'.")

    # Where results go
    run_name: str | None = None
    store_url: str = Field("sqlite:///featuredrift.db", description="SQLAlchemy URL of the run store.")
    pushgateway_url: str | None = None
    metrics_port: int | None = Field(
        None, description="Serve /metrics on this port (default 9464 when no Pushgateway; 0 = any free port; -1 = none)."
    )
    job: str = "featuredrift"
    keep_group_on_end: bool = False
    export_timeout_s: float = Field(3.0, gt=0)
    export_buffer_size: int = Field(256, ge=1)

    # Alerts
    stop_on_alert: bool = False
    alert_webhook_url: str | None = None
    alert_thresholds: str | None = Field(None, description="YAML/JSON file overriding alert thresholds (see `featuredrift alerts list`).")

    device: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _fill_from_environment(cls, data: Any) -> Any:
        data = dict(data or {})
        for name, info in cls.model_fields.items():
            env = os.environ.get(ENV_PREFIX + name.upper())
            if name in data or env is None:
                continue
            annotation = str(info.annotation)
            data[name] = [v.strip() for v in env.split(",") if v.strip()] if "list" in annotation else env
        return data

    @field_validator("hookpoints")
    @classmethod
    def _hookpoints_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("hookpoints: expected at least one hookpoint such as 'layers.3' or None, found []")
        return value
