"""The one configuration object shared by the callback, the CLI and the checkpoint watcher.

Constructor arguments win; any field not given falls back to a `FEATUREDRIFT_<FIELD>`
environment variable (pydantic-settings; lists as comma-separated values or JSON), then to the
default here.
"""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_STORE_URL = "sqlite:///featuredrift-out/featuredrift.db"
DEFAULT_MAX_PROBES = 1000  # per probe subset: every evaluation runs every probe
GOALS = ("guard", "align")  # what a run can be for; each alert belongs to one or both
MONITORING_GOALS = ("auto", *GOALS, "off")  # what a run may ask for (`alert_goal`)


ENV_PREFIX = "FEATUREDRIFT_"


def _split_list(value: Any) -> Any:
    """`"a,b"` or `'["a", "b"]'` (an environment variable) → a list; lists pass through."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class MonitorConfig(BaseSettings):
    """What to measure, when, and where the results go: one object for the callback, the CLI
    and the checkpoint watcher.

    Args:
        sae: Where the frozen SAE of the base model lives: a sparsify directory, a Hub id, or
            `zoo:<size>` for the embedded zoo. Required: there is no sensible default for a
            real model.
        hookpoints: sparsify hookpoints (`layers.N`, the output of decoder block N); None reads
            every SAE in the source.
        probes: The fixed probe set: `"default"` (shipped with featuredrift), a directory of
            JSONL/CSV files, or `zoo:<size>`.
        harmful_probes / harmless_probes / borderline_probes: Take that prompt subset from a
            benchmark (`harmbench:<file>`, `advbench:<file>`, `strongreject:<file>`,
            `xstest:<file>`, or a Hub copy such as `harmbench`) or an instruction file instead;
            borderline (safe requests that look unsafe) adds the over-refusal series.
        max_probes: At most this many probes per subset (None: no bound); what is left out is logged.
        refusal_judge: Who decides that a completion refuses: `substring` (the paper's list),
            `lecture` (also refusals that lecture or redirect) or `wildguard:<local path>`.
        probe_split: Which split of the probe set is evaluated (`"heldout"` by default, `"all"`
            for every row).
        reference: `"auto"`, `"initial"`, `"adapters-disabled"` or a model path.
        eval_every: Steps between evaluations (None: the Trainer's eval_steps, else 50).
        store_url: SQLAlchemy URL of the run store.
        pushgateway_url: Push metrics to this Pushgateway instead of serving /metrics.
        stop_on_alert: Stop training when a critical alert fires.

    Every field can also be set as `FEATUREDRIFT_<FIELD>` in the environment.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_assignment=True, validate_default=True,
        hide_input_in_errors=True,  # a webhook URL or password must not end up in a log
    )

    # What to measure
    sae: str | None = Field(None, description="SAE source: a sparsify directory, a Hub id or zoo:<size> (required to monitor).")
    hookpoints: Annotated[list[str] | None, NoDecode] = Field(
        None, description="sparsify hookpoints (layers.N); None = every SAE in the source."
    )
    probes: str = Field("default", description="Probe set: 'default', a directory of JSONL/CSV files, or zoo:<size>.")
    harmful_probes: str | None = Field(
        None, description="Harmful subset from a benchmark (harmbench:<file>, advbench:<file>, strongreject:<file>, "
        "xstest:<file>, a Hub copy such as 'harmbench') or an instruction file, instead of the probe set's.",
    )
    harmless_probes: str | None = Field(None, description="Harmless subset from an instruction file or xstest:<file>.")
    borderline_probes: str | None = Field(
        None, description="Borderline subset (safe requests that look unsafe: over-refusal) from xstest:<file> or an "
        "instruction file; evaluated separately (prompts=borderline).",
    )
    probe_split: str = Field("heldout", min_length=1, description="Split of the probe set to evaluate ('all' = every row).")
    reference: str = Field(
        "auto",
        description="'initial' (model at train begin, cached), 'adapters-disabled' (PEFT), "
        "'auto' (adapters-disabled for PEFT models, else initial) or a model path.",
    )
    max_probes: int | None = Field(
        DEFAULT_MAX_PROBES, ge=1, description="Use at most this many prompts/texts per probe subset (None: no bound; "
        "a warning says how many were left out).",
    )
    max_length: int = Field(128, ge=8, description="Truncate probe texts to this many tokens.")
    batch_size: int = Field(16, ge=1)
    encode_batch_size: int = Field(4096, ge=1, description="Tokens per SAE encode chunk.")
    kl_max_positions: int = Field(512, ge=0, description="Probe positions whose reference log-probs are cached for KL (0 = all).")
    kl_top_k: int | None = Field(
        256, ge=1,
        description="Reference next-token tokens kept per KL position: the top k and the rest's mass (None = the whole "
        "vocabulary, exact). KL over these k+1 bins is a lower bound of the full KL.",
    )
    divergence_threshold: float = Field(0.9, gt=-1.0, lt=1.0, description="τ: token pairs with cos < τ are divergent.")
    # The paper's ambiguities, as parameters (defaults: our readings; recorded with the run).
    scale_reading: str = Field(
        "sigma", pattern="^(sigma|energy|unit_norm)$",
        description="How ER normalises each model (Appx. B): sigma = /sqrt(E|x|^2), energy = /E|x|^2 (the text), "
        "unit_norm = x sqrt(d)/mean|x| (the code).",
    )
    er_aggregate: str = Field(
        "ratio_of_sums", pattern="^(ratio_of_sums|median|mean)$", description="The headline ER over divergent tokens."
    )
    token_mask: str = Field(
        "content", pattern="^(content|bos_eos)$",
        description="content: leave out every control token, each text's first token and chat-template tokens; "
        "bos_eos: only BOS/EOS (Appx. A.2 read literally).",
    )
    fvu_reading: str = Field(
        "batch", pattern="^(batch|per_token)$",
        description="batch: one FVU over the token set, centred on its mean (sparsify); per_token: each token's "
        "FVU centred on its own mean over dimensions, averaged (the paper's code).",
    )
    outlier_rule: str = Field(
        "norm", pattern="^(norm|quantile)$",
        description="norm: leave out probe tokens whose reference norm exceeds sink_norm_ratio x the median; "
        "quantile: leave out, per evaluation, tokens at or above the outlier_quantile of the current model's "
        "per-token FVU or of MSE(reference, current) (the paper's code).",
    )
    outlier_quantile: float = Field(0.998, gt=0, le=1, description="The quantile of outlier_rule='quantile'.")
    ir_reading: str = Field(
        "active", pattern="^(active|top_min_l0)$",
        description="active: Jaccard of the active feature sets, two empty sets = 1; top_min_l0: each side's "
        "min(L0, L0', 100) largest features, two empty sets = 0 (the paper's code).",
    )
    refusal_feature_reading: str = Field(
        "positive", pattern="^(positive|top_k)$",
        description="positive: the k largest positive entries of the feature diff-in-means; top_k: its literal "
        "top-k, whatever the sign (the paper's code).",
    )
    decoder_norm: str = Field(
        "as_trained", pattern="^(as_trained|folded)$",
        description="folded: scale codes by their decoder row norms before the diff-in-means (the paper's code "
        "folds SAELens decoders); a no-op for unit-norm decoders.",
    )
    paper_readings: str | None = Field(
        None, pattern="^(ours|paper)$",
        description="'paper' sets every reading above the paper's way (its code where it has code), 'ours' to "
        "the defaults; readings given explicitly win.",
    )
    most_divergent_share: float = Field(
        0.1, gt=0, le=1, description="ER and IR are also reported on this share of most-divergent tokens (always defined)."
    )
    sink_norm_ratio: float | None = Field(
        50.0, gt=1, description="Probe tokens whose reference norm exceeds this × the median are left out (sinks, "
        "massive activations); None keeps them. The first token of every text is always left out.",
    )
    refusal_k: int = Field(32, ge=1, description="Headline number of refusal features (clipped to the SAE's latents).")
    reconstruction_ks: Annotated[list[int], NoDecode] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    top_n_features: int = Field(20, ge=0, description="Most drifted features kept per evaluation.")
    feature_contexts: int = Field(
        3, ge=0, le=16, description="Top-activating probe contexts stored per listed feature, at the reference and "
        "now (0 = none).",
    )
    feature_context_tokens: int = Field(4, ge=0, le=32, description="Tokens of context decoded on each side of a context's token.")

    # When to measure
    eval_every: int | None = Field(None, ge=1, description="Steps between evaluations; None = eval_steps, else 50.")
    eval_on_save: bool = False
    refusal_score_every: int = Field(
        4, ge=0, description="Run generation-based refusal scores every Nth evaluation (0 = never; first and last always when > 0)."
    )
    kl_every: int = Field(1, ge=0, description="Compute KL every Nth evaluation (0 = never).")
    refusal_logits: bool = Field(
        True, description="Every evaluation, the probability that the response to each harmful/harmless prompt starts "
        "with a refusal token, from the prompt pass's logits (no generation).",
    )
    max_new_tokens: int = Field(24, ge=1)
    generation_batch_size: int = Field(64, ge=1, description="Prompts per batch in refusal-score generation.")
    completions_kept: int = Field(8, ge=0, description="Completions stored per prompt subset at each generating evaluation.")
    refusal_judge: str = Field(
        "substring", description="Refusal judge: 'substring' (the paper's phrases), 'lecture' (also refusals that "
        "lecture or redirect) or 'wildguard:<local path>'.",
    )
    judge: str = Field(
        "refusal", description="Safety judge: 'refusal' (refused => safe, by the refusal judge), 'harmbench:<path>' or "
        "'wildguard:<path>'.",
    )
    audit_examples: int = Field(
        256, ge=0, description="At train begin, the reference reads a sample of at most this many training examples and "
        "scores which would erode refusal or teach over-refusal (0 = no audit).",
    )

    # Where results go
    run_name: str | None = None
    store_url: str = Field(DEFAULT_STORE_URL, repr=False, description="SQLAlchemy URL of the run store.")
    pushgateway_url: str | None = Field(None, repr=False, description="Pushgateway base URL (http or https).")
    metrics_port: int | None = Field(
        None, description="Serve /metrics on this port (default 9464 when no Pushgateway; 0 = any free port; -1 = none)."
    )
    metrics_address: str = Field(
        "127.0.0.1", description="Address the /metrics endpoint binds; '0.0.0.0' lets Prometheus scrape a pod or another host."
    )
    job: str = "featuredrift"
    keep_group_on_end: bool = False
    export_timeout_s: float = Field(3.0, gt=0, description="Deadline of one whole HTTP request (push, webhook).")
    export_buffer_size: int = Field(256, ge=1, description="Reports the exporter buffers while Prometheus is down (newest kept).")
    telemetry_budget_s: float = Field(
        0.25, gt=0, description="Longest the training thread may spend handing one evaluation to telemetry (warned past it)."
    )
    close_timeout_s: float = Field(
        5.0, ge=0, description="At train end, how long to wait for the store, exporter and webhook; the rest stays in the journal."
    )
    strict_store: bool = Field(False, description="Fail at attach time when the run store is unreachable (default: warn, keep journaling).")
    heartbeat_s: float = Field(
        60.0, gt=0, description="Seconds between the run's heartbeats while it trains: a running run silent for several of "
        "its heartbeat intervals shows as stale (most likely dead).",
    )

    # Alerts
    alert_goal: str = Field(
        "auto",
        description="guard: the model must keep refusing (fading is critical); align: refusal should emerge; "
        "off: no alerts; auto: guard when the reference refuses most harmful probes, else align.",
    )
    stop_on_alert: bool = False
    alert_webhook_url: str | None = Field(None, repr=False, description="Alertmanager-compatible webhook (a secret: never stored).")
    alert_thresholds: str | None = Field(None, description="YAML/JSON file overriding alert thresholds (see `featuredrift alerts list`).")

    device: str | None = None
    prompt_format: str = Field(
        "chat", pattern="^(chat|base)$",
        description="How prompts are written: 'chat' (the tokenizer's chat template, required) or 'base' ('{instruction}\\n').",
    )

    @model_validator(mode="before")
    @classmethod
    def _expand_paper_readings(cls, data: Any) -> Any:
        """`paper_readings='paper'` fills every reading the caller did not set."""
        if not isinstance(data, dict) or data.get("paper_readings") in (None, ""):
            return data
        from featuredrift.monitor.readings import readings_of

        side = str(data["paper_readings"]).strip().lower()
        if side not in ("ours", "paper"):
            return data  # the field's own pattern reports it
        return {**readings_of(side, monitor=True), **data, "paper_readings": side}

    def readings(self) -> dict[str, str]:
        """The paper readings this monitor uses (recorded with every run)."""
        from featuredrift.monitor.readings import readings_of

        return {name: getattr(self, name) for name in readings_of("ours", monitor=True)}

    @field_validator("hookpoints", "reconstruction_ks", mode="before")
    @classmethod
    def _lists_from_text(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("max_probes", mode="before")
    @classmethod
    def _no_bound_from_text(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() in ("", "none", "null") else value

    @field_validator("refusal_judge", "judge")
    @classmethod
    def _known_judge(cls, value: str, info) -> str:
        from featuredrift.monitor.judges import check_judge_spec

        check_judge_spec(value, refusal=info.field_name == "refusal_judge")
        return value

    @field_validator("hookpoints")
    @classmethod
    def _hookpoints_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("hookpoints: expected at least one hookpoint such as 'layers.3' or None, found []")
        return value

    @field_validator("alert_goal", mode="before")
    @classmethod
    def _known_alert_goal(cls, value: Any) -> Any:
        goal = value.strip().lower() if isinstance(value, str) else value
        if goal not in MONITORING_GOALS:
            raise ValueError(f"alert_goal: expected one of {', '.join(MONITORING_GOALS)}, found {value!r}")
        return goal

    @field_validator("pushgateway_url", "alert_webhook_url")
    @classmethod
    def _http_url(cls, value: str | None, info) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{info.field_name}: expected an http(s)://host[:port]/… URL, found {mask_url(value)!r}")
        return value

    @field_validator("store_url")
    @classmethod
    def _usable_store_url(cls, value: str) -> str:
        """A URL no database driver can ever open fails here, not as a warning retried all run."""
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        shown = value if "://" not in value and "@" not in value else mask_url(value)
        expected = (f"store_url: expected a SQLAlchemy database URL such as {DEFAULT_STORE_URL!r} or "
                    "'postgresql+psycopg://user:pass@host/db'")
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(f"{expected}, found {shown!r} (not a URL)") from None
        try:
            url.get_dialect()
        except NoSuchModuleError:
            raise ValueError(f"{expected}, found {shown!r}: SQLAlchemy has no database driver "
                             f"{url.drivername!r}") from None
        return value

    def public_dump(self) -> dict[str, Any]:
        """The settings as stored and shown: no password, token or webhook path (secrets stay in memory)."""
        data = self.model_dump(mode="json")
        for name in SECRET_URL_FIELDS:
            if data.get(name):
                data[name] = mask_url(data[name])
        return data


SECRET_URL_FIELDS = ("store_url", "pushgateway_url", "alert_webhook_url")


def mask_url(url: str) -> str:
    """Scheme, host and port only; credentials, path and query (where tokens live) become ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if not parts.scheme:
        return "***"
    if parts.scheme.startswith("sqlite"):
        return url  # a local file path holds no secret
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = "***@" if parts.username or parts.password else ""
    rest = "/***" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{user}{host}{port}{rest}"
