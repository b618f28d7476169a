"""The batch replication's configuration: one pydantic model, loadable from YAML presets.

Static checks (unknown stage, malformed hookpoint, impossible numbers) happen here when the
config is parsed; checks that need the models' configs or the SAE files on disk (layer out of
range, missing model path, SAE width) live in `preflight.py` and run before any work starts.

Source specs used below:

* models: a local directory, a Hub id, or ``zoo:<size>`` (the zoo's base or chat model,
  chosen by the field it appears in);
* SAEs: a sparsify directory holding ``layers.N/`` folders, a Hub id, ``zoo:<size>``, or
  ``null`` to train the base SAE with sparsify;
* data: ``zoo:<size>:<part>`` (part: base_corpus, chat_sft, base_text, chat_text, harmful,
  harmless), ``hf:NAME:SPLIT:COLUMN`` (Hugging Face ``datasets``, for real runs only), or a
  local ``.jsonl``/``.txt`` file. Several sources may be given as a list; they are concatenated.
  JSONL rows carrying a ``split`` label (the probe files' ``train``/``heldout``) are read only
  for the split ``data.splits`` names for that field; unlabelled rows belong to every split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

STAGES = ("activations", "saes", "transfer", "drift", "refusal", "interventions", "diffsae", "steering")
PRESETS_DIR = Path(__file__).parent / "presets"

Sources = list[str]
SOURCE_FIELDS = (
    "base_text_train", "base_text_eval", "chat_text_train", "chat_text_eval",
    "harmful", "harmless", "harmful_eval", "harmless_eval",
)
ALL_SPLITS = "all"


class ConfigError(ValueError):
    """A replication config that cannot run; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """Where each text/prompt set comes from and how much of it to use."""

    base_text_train: Sources = Field(description="Base-like text for training SAEs (SlimPajama).")
    base_text_eval: Sources = Field(description="Held-out base-like text for FVU and drift.")
    chat_text_train: Sources = Field(description="Chat-like conversations for the chat SAE (LMSYS-Chat-1M).")
    chat_text_eval: Sources = Field(description="Held-out chat-like conversations for FVU.")
    harmful: Sources = Field(description="Harmful instructions for the refusal direction.")
    harmless: Sources = Field(description="Harmless instructions for the refusal direction.")
    harmful_eval: Sources = Field(description="Held-out harmful instructions (ablation, safety score).")
    harmless_eval: Sources = Field(description="Held-out harmless instructions (addition, refusal score).")
    max_length: int = Field(128, ge=8, description="Tokens per text (longer texts are truncated).")
    max_train_texts: int = Field(2000, ge=1)
    max_eval_texts: int = Field(256, ge=1)
    max_prompts: int = Field(128, ge=2, description="Prompts per class for the refusal direction.")
    max_eval_prompts: int = Field(32, ge=1, description="Prompts per class for interventions.")
    # Probe files label rows train/heldout: the refusal direction is found on train prompts and
    # judged on held-out ones, as the live monitor keeps them apart (`probe_split`).
    splits: dict[str, str] = Field(
        default_factory=lambda: {"harmful": "train", "harmless": "train", "harmful_eval": "heldout", "harmless_eval": "heldout"},
        description="Per data field, the split label of the rows it reads ('all' or absent: every row).",
    )

    @field_validator(*SOURCE_FIELDS, mode="before")
    @classmethod
    def _one_source_is_a_list(cls, value):
        return [value] if isinstance(value, str) else value

    @field_validator("splits")
    @classmethod
    def _splits_name_fields(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(SOURCE_FIELDS))
        if unknown:
            raise ValueError(f"expected data fields from {list(SOURCE_FIELDS)}, found {unknown}")
        return value

    def split_of(self, field_name: str) -> str:
        return self.splits.get(field_name, ALL_SPLITS)


class PaperReadings(_Strict):
    """The paper's ambiguities (`monitor.readings.READINGS`; defaults: ours). The shared ones keep
    the live monitor's `MonitorConfig` names and defaults. ``paper_readings: paper`` (or ``ours``)
    sets all of them; a mapping may start from a side (``side: paper``) and change single ones."""

    scale_reading: Literal["sigma", "energy", "unit_norm"] = Field(
        "sigma", description="ER's normaliser (Appx. B): sqrt(E|x|^2), E|x|^2 (the text) or mean|x|/sqrt(d) (the code)."
    )
    er_aggregate: Literal["ratio_of_sums", "median", "mean"] = Field(
        "ratio_of_sums", description="The headline ER over divergent tokens."
    )
    token_mask: Literal["content", "bos_eos"] = Field(
        "content", description="content: no control, template or first (sink) tokens; bos_eos: only BOS/EOS out (Appx. A.2)."
    )
    fvu_reading: Literal["batch", "per_token"] = Field(
        "batch", description="batch: one FVU centred on the set's mean (sparsify); per_token: each token centred on its "
        "own mean over dimensions, averaged (the paper's code)."
    )
    outlier_rule: Literal["norm", "quantile"] = Field(
        "norm", description="norm: the base-model norm rule (sink_norm_ratio, in the activations stage); quantile: per "
        "hookpoint and data set, tokens at or above the outlier_quantile of chat per-token FVU or of MSE (the code)."
    )
    ir_reading: Literal["active", "top_min_l0"] = Field(
        "active", description="active: Jaccard of active sets, two empty sets = 1; top_min_l0: min(L0, L0', 100) largest "
        "per side, two empty sets = 0 (the code)."
    )
    refusal_feature_reading: Literal["positive", "top_k"] = Field(
        "positive", description="positive: the k largest positive entries of d̄; top_k: its literal top-k (the code)."
    )
    decoder_norm: Literal["as_trained", "folded"] = Field(
        "as_trained", description="folded: codes scaled by decoder row norms before d̄ (the code folds SAELens decoders)."
    )
    refusal_direction: Literal["last_token", "arditi"] = Field(
        "last_token", description="last_token: the readout token at the refusal hookpoint (§5); arditi: Arditi et al.'s "
        "selection over post-instruction positions and hookpoints."
    )
    base_prompt: Literal["instruction", "chat_template", "auto"] = Field(
        "instruction", description="How the base model reads refusal prompts: '{instruction}\\n' (§5), its chat template, or "
        "the template when the tokenizer has one."
    )
    ablation_reading: Literal["unit", "unnormalised"] = Field(
        "unit", description="unit: x - u u^T x (a projection); unnormalised: Eq. 5 as printed, x - r (r^T x)."
    )

    @model_validator(mode="before")
    @classmethod
    def _from_side(cls, value):
        from featuredrift.monitor.readings import readings_of

        if isinstance(value, str):
            return readings_of(value.strip().lower())
        if isinstance(value, dict) and "side" in value:
            rest = {k: v for k, v in value.items() if k != "side"}
            return {**readings_of(str(value["side"]).strip().lower()), **rest}
        return value

    @property
    def side(self) -> str:
        """'ours', 'paper' or 'mixed'."""
        from featuredrift.monitor.readings import side_of

        return side_of(self.model_dump())


# refusal.prompt_format's base-model entry, as the base_prompt reading names it
_BASE_FORMAT_READING = {"base": "instruction", "chat": "chat_template", "auto": "auto"}
BASE_PROMPT_FORMAT = {"instruction": "base", "chat_template": "chat", "auto": "auto"}


class SaeTrainConfig(_Strict):
    """TopK SAE hyperparameters (the paper's Appx. A.2 in the paper presets)."""

    num_latents: int = Field(65536, ge=1)
    k: int = Field(100, ge=1)
    activation: Literal["topk", "batchtopk"] = Field(
        "topk", description="topk: k latents per token (sparsify, the paper); batchtopk: k x batch latents per batch "
        "while training (Bussmann et al., the post's diff-SAE), read as top-k afterwards."
    )
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(4096, ge=1, description="Tokens per optimiser step.")
    num_tokens: int = Field(2_000_000_000, ge=1, description="Training tokens.")
    lr_warmup_steps: int = Field(1000, ge=0)
    auxk_alpha: float = Field(0.03125, ge=0)
    dead_feature_threshold: int = Field(10_000_000, ge=1, description="Tokens without firing before a latent is dead.")
    multi_topk: bool = True
    grad_clip_norm: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _k_fits(self):
        if self.k > self.num_latents:
            raise ValueError(f"k: expected at most num_latents={self.num_latents}, found {self.k}")
        return self

    @property
    def steps(self) -> int:
        return max(1, self.num_tokens // self.batch_size)


class SaeConfig(_Strict):
    base: str | None = Field(None, description="Base SAE source; None = train it on base data.")
    train_missing: bool = Field(True, description="Train base SAEs for hookpoints the source lacks.")
    base_train: SaeTrainConfig = Field(default_factory=SaeTrainConfig)
    chat: bool = Field(True, description="Train chat SAEs (the FVU ceiling).")
    trainer: Literal["sparsify", "activations"] = Field(
        "sparsify",
        description="'sparsify': sae_store.train_sae (sparsify's Trainer, model forward every step); "
        "'activations': collect the training activations once and fit in memory (small models only).",
    )
    chat_train: SaeTrainConfig = Field(
        default_factory=lambda: SaeTrainConfig(num_tokens=500_000_000)
    )


class RefusalConfig(_Strict):
    ks: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    # How the chat model's prompts are written: 'chat' (its chat template), 'base'
    # ("{instruction}\n") or 'auto' (the chat template when its tokenizer has one). The base
    # model's is the `paper_readings.base_prompt` reading; a `base` entry here is read as it.
    prompt_format: dict[Literal["base", "chat"], Literal["auto", "base", "chat"]] = Field(
        default_factory=lambda: {"chat": "chat"}
    )
    selection_prompts: int = Field(
        8, ge=1, description="With refusal_direction='arditi': prompts per class held out of each training set to "
        "score the candidate directions (Arditi et al.'s validation split)."
    )
    # Arditi et al.'s filters (their defaults); a model of a few layers may need them relaxed.
    selection_kl_threshold: float = Field(0.1, gt=0, description="Drop candidates whose ablation moves harmless KL more.")
    selection_induce_threshold: float = Field(0.0, description="Drop candidates whose addition gives lower refusal log-odds.")
    selection_prune_layers: float = Field(0.2, ge=0, lt=1, description="Drop candidates from this last share of layers.")

    @field_validator("ks")
    @classmethod
    def _positive_sorted(cls, value: list[int]) -> list[int]:
        if not value or any(k < 1 for k in value):
            raise ValueError(f"expected a non-empty list of positive integers, found {value}")
        return sorted(set(value))


class InterventionConfig(_Strict):
    judge: str = Field("refusal", description="'refusal' (substring proxy) or 'harmbench:<path>'.")
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(16, ge=1)
    ks: list[int] | None = Field(None, description="Subset of refusal.ks to intervene with (None = all).")


class DiffSaeConfig(_Strict):
    hookpoint: str | None = Field(None, description="Default: the refusal hookpoint.")
    sae: str | None = Field(None, description="A diff-SAE trained elsewhere (a sparsify SAE directory) to analyse "
                            "instead of training one.")
    train: SaeTrainConfig = Field(
        default_factory=lambda: SaeTrainConfig(num_latents=16384, k=64, num_tokens=100_000_000, multi_topk=False)
    )
    high_kl_positions: int = Field(64, ge=1, description="Highest-KL positions analysed.")
    top_latents: int = Field(8, ge=1, description="Latents with a KL dashboard.")
    dashboard_rows: int = Field(8, ge=1)
    dashboard_tokens: int = Field(3, ge=1, description="Up/down-weighted tokens shown per row.")


class SamplingConfig(_Strict):
    """How hybrid-model rollouts are sampled (recorded with the shares)."""

    num_rollouts: int = Field(1000, ge=1, description="The post: 1,000 rollouts.")
    max_new_tokens: int = Field(4, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0: the full distribution.")
    batch_size: int = Field(250, ge=1)


class DatasetSteeringConfig(_Strict):
    """A prompt set whose chat responses the KL is summed over (the post's roleplay and
    unanswerable-question sets), the behaviour to look for, and where to add the latent."""

    name: str
    prompts: str = Field(description="A data field (e.g. harmful_eval) or a source spec (file, zoo:<size>:<part>).")
    control: str | None = Field(None, description="Prompts without the behaviour, for positive steering (a field or source).")
    behaviour: list[str] | None = Field(
        None, description="Substrings that mark the behaviour in a completion (case-insensitive); None = refusal phrases."
    )
    max_prompts: int = Field(24, ge=1)


class SteeringConfig(_Strict):
    """Stage `steering`: does the diff-SAE latent attribution points at actually move the model?"""

    positions: int = Field(16, ge=1, description="Highest-KL positions steered with their top latent.")
    scales: list[float] = Field(
        default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0],
        description="λ in units of the mean |x_chat - x_base| at the hookpoint (held-out tokens).",
    )
    random_draws: int = Field(4, ge=1, description="Random unit dictionaries averaged into the control.")
    hybrid: bool = Field(True, description="Run the hybrid-model rollouts.")
    hybrid_candidates: int = Field(8, ge=1, description="High-KL contexts scored for the hybrid experiment.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    continuation_tokens: int = Field(2, ge=1, description="Tokens of a rollout that name its continuation.")
    datasets: list[DatasetSteeringConfig] = Field(
        default_factory=lambda: [DatasetSteeringConfig(name="refusal", prompts="harmful_eval", control="harmless_eval")]
    )
    dataset_scales: list[float] = Field(
        default_factory=lambda: [1.0, 2.0, 4.0], description="Dataset-level steering λ, in the same unit as `scales`."
    )
    max_new_tokens: int = Field(24, ge=1, description="Response tokens for dataset-level attribution and steering.")

    @field_validator("scales", "dataset_scales")
    @classmethod
    def _positive_scales(cls, value: list[float]) -> list[float]:
        if not value or any(v <= 0 for v in value):
            raise ValueError(f"expected a non-empty list of positive multipliers, found {value}")
        return sorted(set(value))


class ReplicateConfig(_Strict):
    """Everything one replication needs; `stage_inputs` slices it per stage for caching."""

    name: str
    seed: int = 0
    base_model: str
    chat_model: str
    hookpoints: list[str] = Field(min_length=1)
    refusal_hookpoint: str | None = Field(None, description="Default: the middle of `hookpoints`.")
    device: str | None = Field(None, description="None = cuda when available, else cpu.")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    activation_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype of the activation shards on disk."
    )
    batch_size: int = Field(16, ge=1, description="Texts per forward pass.")
    shard_tokens: int = Field(262_144, ge=1, description="Tokens per activation shard.")
    divergence_threshold: float = Field(0.9, ge=-1.0, le=1.0)
    paper_readings: PaperReadings = Field(default_factory=PaperReadings)
    sink_norm_ratio: float | None = Field(
        50.0, gt=1, description="Tokens whose base-model norm exceeds this x the median at any hookpoint (attention "
        "sinks, massive activations) are left out of every stage, as the live monitor does; null keeps them. "
        "Read under paper_readings.outlier_rule='norm' only.",
    )
    outlier_quantile: float = Field(0.998, gt=0, le=1, description="The quantile of paper_readings.outlier_rule='quantile'.")
    reading_effects: bool = Field(
        False, description="After the run, rerun each reading on the other side (only the stages it moves) and report "
        "how far it moves each headline number.",
    )
    data: DataConfig
    sae: SaeConfig = Field(default_factory=SaeConfig)
    refusal: RefusalConfig = Field(default_factory=RefusalConfig)
    interventions: InterventionConfig = Field(default_factory=InterventionConfig)
    diffsae: DiffSaeConfig = Field(default_factory=DiffSaeConfig)
    steering: SteeringConfig = Field(default_factory=SteeringConfig)
    stages: list[str] = Field(default_factory=lambda: list(STAGES))

    @model_validator(mode="before")
    @classmethod
    def _base_prompt_is_a_reading(cls, data):
        """A `refusal.prompt_format.base` entry (the older place) is the base_prompt reading."""
        if not isinstance(data, dict):
            return data
        refusal = data.get("refusal")
        formats = refusal.get("prompt_format") if isinstance(refusal, dict) else None
        if not isinstance(formats, dict) or "base" not in formats:
            return data
        wanted = _BASE_FORMAT_READING.get(formats["base"], formats["base"])
        readings = data.get("paper_readings")
        given = readings.get("base_prompt") if isinstance(readings, dict) else None
        if given is not None and given != wanted:
            raise ValueError(f"refusal.prompt_format.base: expected the base_prompt reading {given!r} "
                             f"(paper_readings.base_prompt), found {formats['base']!r}")
        if isinstance(readings, str):
            readings = {"side": readings}
        readings = {**(readings or {}), "base_prompt": wanted}
        rest = {k: v for k, v in formats.items() if k != "base"} or {"chat": "chat"}
        return {**data, "paper_readings": readings, "refusal": {**refusal, "prompt_format": rest}}

    @field_validator("hookpoints")
    @classmethod
    def _hookpoint_names(cls, value: list[str]) -> list[str]:
        from featuredrift.lm.hookpoints import layer_index

        for hookpoint in value:
            layer_index(hookpoint)  # raises naming the bad value
        if len(set(value)) != len(value):
            raise ValueError(f"expected distinct hookpoints, found {value}")
        return sorted(value, key=layer_index)

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, value: list[str]) -> list[str]:
        return parse_stages(value)

    @model_validator(mode="after")
    def _refusal_hookpoint_listed(self):
        for field, hookpoint in (("refusal_hookpoint", self.refusal_hookpoint), ("diffsae.hookpoint", self.diffsae.hookpoint)):
            if hookpoint is not None and hookpoint not in self.hookpoints:
                raise ValueError(f"{field}: expected one of hookpoints {self.hookpoints}, found {hookpoint!r}")
        return self

    @property
    def main_hookpoint(self) -> str:
        """The hookpoint of the refusal case study (the paper's middle layer)."""
        return self.refusal_hookpoint or self.hookpoints[len(self.hookpoints) // 2]

    @property
    def diff_hookpoint(self) -> str:
        return self.diffsae.hookpoint or self.main_hookpoint


def parse_stages(stages: str | list[str]) -> list[str]:
    """Stage names from `a,b,c` or a list, in pipeline order; unknown names raise."""
    if isinstance(stages, str):
        stages = [s.strip() for s in stages.split(",") if s.strip()]
    if "all" in stages:
        return list(STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"stages: unknown stage(s) {unknown}: expected names from {list(STAGES)} or 'all'")
    if not stages:
        raise ConfigError(f"stages: expected at least one of {list(STAGES)}, found none")
    return [s for s in STAGES if s in stages]


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_config(source: str | Path | dict, overrides: dict | None = None) -> ReplicateConfig:
    """A config from a preset name, a YAML file or a dict, with optional nested overrides.
    Validation errors are re-raised as `ConfigError` naming the field path."""
    import yaml
    from pydantic import ValidationError

    if isinstance(source, dict):
        data, origin = dict(source), "config"
    else:
        path = Path(source)
        if isinstance(source, str) and (PRESETS_DIR / f"{source}.yaml").is_file() and not path.is_file():
            path = PRESETS_DIR / f"{source}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"config: expected a YAML file or a preset name from {list_presets()}, found {str(source)!r}"
            )
        data, origin = yaml.safe_load(path.read_text(encoding="utf-8")) or {}, str(path)
        if not isinstance(data, dict):
            raise ConfigError(f"{origin}: expected a YAML mapping at the top level, found {type(data).__name__}")
    if overrides:
        data = deep_merge(data, overrides)
    try:
        return ReplicateConfig.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        if not field:  # a cross-field check names its field itself
            raise ConfigError(f"{origin}: {message}") from error
        message = message.removeprefix(f"{field}: ")
        found = first.get("input")
        shown = "" if isinstance(found, dict) else f" (input: {repr(found)[:200]})"
        raise ConfigError(f"{origin}: field {field!r}: {message}{shown}") from error
    except ConfigError as error:
        raise ConfigError(f"{origin}: {error}") from error


def deep_merge(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` merged in, recursively for nested mappings."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> dict:
    """`a.b.c=value` (value parsed as YAML) → nested dict, for `--set` on the command line."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set: expected KEY.PATH=VALUE, found {text!r}")
    value = yaml.safe_load(raw)
    for part in reversed(key.split(".")):
        value = {part: value}
    return value
