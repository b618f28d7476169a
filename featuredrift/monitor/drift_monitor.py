"""DriftMonitor: turns (model, reference, SAE, probes) into EvaluationReports.

`start()` validates everything and caches what the reference model produces on the fixed probe
set (activations, SAE codes, refusal statistics, next-token log-probs), so an evaluation costs one
probe forward pass of the current model plus batched SAE encodes. No I/O happens here: the
callback, the CLI and notebooks decide where reports go.

The work is split along its seams: `reading` reads a model on the probe set, `reference` keeps
the reference (and its cache), `comparison` builds a report from the two readings. This class
holds the run's state and the cadence of the costly parts.

Under torch.distributed every rank runs its shard of the probe batches (FSDP/ZeRO-3 forwards are
collectives) and the activations are gathered, so every rank computes the same report; only
rank 0 should export it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from featuredrift import sae_store
from featuredrift.lm.hookpoints import hidden_size, resolve_hookpoint, unwrap_model
from featuredrift.lm.prompts import format_prompts
from featuredrift.monitor import audit, feature_contexts, reading, reference
from featuredrift.monitor.comparison import (
    ContextLookup,
    build_report,
    refusal_by_category,
    refusal_rates,
    score_refusals,
)
from featuredrift.monitor.config import MonitorConfig
from featuredrift.monitor.distributed import (
    broadcast_from_main,
    broadcast_tensor_from_main,
    is_main_process,
)
from featuredrift.monitor.errors import MonitorError
from featuredrift.monitor.judges import get_judge, get_refusal_judge, refusal_start_tokens
from featuredrift.monitor.probe_sources import bound_with_warning, configured_probe_set
from featuredrift.monitor.probes import (
    PROMPT_SUBSETS,
    REQUIRED_PROMPT_SUBSETS,
    ProbeSet,
    rows_fingerprint,
)
from featuredrift.monitor.reading import ModelReading, ProbeBatch, model_device
from featuredrift.monitor.report import EvaluationReport

__all__ = ["DriftMonitor", "ModelReading", "MonitorError", "ProbeBatch"]
logger = logging.getLogger(__name__)


@dataclass
class _State:
    saes: dict[str, nn.Module] = field(default_factory=dict)
    batches: dict[str, list[ProbeBatch]] = field(default_factory=dict)
    reference: ModelReading | None = None
    layer_reference: dict[str, reference.LayerReference] = field(default_factory=dict)
    prompt_format: str = "chat"
    evaluations: int = 0
    keep: dict[str, Tensor] = field(default_factory=dict)  # text subset → rows read (norm outliers out)
    probes: ProbeSet | None = None
    fingerprint: str = ""  # probe tokens + hookpoints + SAE: what a cached reference is valid for
    sae_fingerprint: str = ""
    model_fingerprint: str = ""  # architecture and weights of the reference model
    evaluation_dtype: str = ""  # the parameters' dtype the probe forward runs in (autocast off)
    contexts: ContextLookup | None = None  # feature contexts (None: off)
    refusal_tokens: list[int] = field(default_factory=list)  # the logit refusal score's tokens ([]: off)
    kl_support: Tensor | None = None  # [N_kl, k] the reference's next-token ids, on every rank
    refusal_judge: object | None = None  # decides the refusal rates (monitor.judges)
    safety_judge: object | None = None  # decides the safety score
    reference_refusal_rate: dict[str, float] | None = None  # the reference's generated refusal rates (rank 0)
    # The reference's completions, kept for the first evaluation when it reads the very same model
    # (the callback's step 0): greedy decoding would repeat them exactly. Every rank knows whether.
    reference_completions: dict[str, list[str]] | None = None
    reuse_reference_completions: bool = False


class DriftMonitor:
    """Evaluate feature drift of a model under fine-tuning against a cached reference.

    `start(model, tokenizer)` validates the SAE, hookpoints and probes and caches the reference
    readings; `evaluate(model, step)` returns an `EvaluationReport`. No I/O happens here::

        monitor = DriftMonitor(MonitorConfig(sae="zoo:nano"))
        monitor.start(base_model, tokenizer)
        report = monitor.evaluate(finetuned_model, step=1000)

    Args:
        config: The monitor's settings (`MonitorConfig`); `sae` is required unless `saes` is given.
        probes: A `ProbeSet` to use instead of loading `config.probes`.
        saes: Already-loaded SAEs by hookpoint, instead of loading `config.sae`.
    """

    def __init__(self, config: MonitorConfig | None = None, *, probes: ProbeSet | None = None, saes=None):
        self.config = config or MonitorConfig()
        if self.config.sae is None and saes is None:
            raise MonitorError(
                "sae: expected the base model's SAE (a sparsify or SAELens directory, a Hub id, or zoo:<size>), "
                "found none: pass MonitorConfig(sae=...) or set FEATUREDRIFT_SAE"
            )
        self._probes = probes
        self._preloaded_saes = saes
        self._state: _State | None = None
        self.tokenizer = None

    @property
    def started(self) -> bool:
        return self._state is not None

    @property
    def hookpoints(self) -> list[str]:
        return list(self._require_started().saes)

    @property
    def evaluations(self) -> int:
        """Evaluations done so far: the cadence of the costly parts counts from it (kept across a resume)."""
        return self._require_started().evaluations

    @evaluations.setter
    def evaluations(self, count: int) -> None:
        self._require_started().evaluations = int(count)

    @property
    def probe_batches(self) -> dict[str, list[ProbeBatch]]:
        """The tokenised probe set, by subset (base, chat, harmful, harmless, borderline)."""
        return self._require_started().batches

    @property
    def probes(self) -> ProbeSet:
        """The probe set this monitor evaluates (composed and bounded)."""
        return self._require_started().probes

    @property
    def reference_reading(self) -> ModelReading | None:
        """What the monitor keeps of the reference model between evaluations (its cache)."""
        return self._require_started().reference

    # ------------------------------------------------------------------ start
    def start(
        self,
        model: nn.Module,
        tokenizer,
        *,
        reference_model: nn.Module | None = None,
        reference_cache: str | Path | None = None,
        require_cache: bool = False,
    ) -> None:
        """Validate inputs and cache the reference model's readings on the probe set.

        With `reference_cache`, the readings are saved there (safetensors) and reused when the
        file matches this probe set and SAE, so a run resumed from a checkpoint keeps its step-0
        reference. `require_cache` (set when resuming with the 'initial' policy) refuses to
        silently take the resumed model as the reference.
        """
        cfg = self.config
        state = _State()
        device = model_device(model)
        state.saes = self._load_saes(model, device)
        probes = bound_with_warning(self._probes, cfg.max_probes) if self._probes else configured_probe_set(cfg)
        _check_probes(probes)
        # Built now, so a classifier path that is not there fails at attach time, not at the first generation.
        state.refusal_judge = get_refusal_judge(cfg.refusal_judge)
        state.safety_judge = get_judge(cfg.judge, state.refusal_judge)
        self.tokenizer = tokenizer
        state.prompt_format = _prompt_format(tokenizer, cfg.prompt_format)
        state.evaluation_dtype = str(next(unwrap_model(model).parameters()).dtype).removeprefix("torch.")
        state.batches = reading.tokenise_probes(tokenizer, probes, state.prompt_format, batch_size=cfg.batch_size,
                                                max_length=cfg.max_length, token_mask=cfg.token_mask)
        if cfg.refusal_logits and probes.harmful:
            first_prompt = format_prompts(tokenizer, [probes.harmful[0]], state.prompt_format)[0]
            state.refusal_tokens = refusal_start_tokens(tokenizer, first_prompt)
        state.probes = probes
        state.sae_fingerprint = reference.sae_fingerprint(state.saes)
        state.fingerprint = reference.probe_fingerprint(state.batches, state.sae_fingerprint)
        self._state = state

        self._read_reference(model, reference_model, reference_cache, require_cache)
        if state.reference is not None:  # rank 0, which alone computes reports
            state.keep = reference.outlier_keep(state.reference, cfg.sink_norm_ratio if cfg.outlier_rule == "norm" else None)
            state.reference = reading.kept(state.reference, state.keep)
            probe_tokens = None
            if cfg.feature_contexts:
                probe_tokens = feature_contexts.ProbeTokens.from_batches(state.batches, state.keep)
                state.contexts = ContextLookup(probe_tokens, tokenizer, per_feature=cfg.feature_contexts,
                                               window=cfg.feature_context_tokens)
            for hookpoint, sae in state.saes.items():
                state.layer_reference[hookpoint] = reference.summarise_reference(
                    hookpoint, sae, state.reference, cfg, probe_tokens)
        # Every rank reads later models' next-token log-probs on the reference's tokens.
        next_token = state.reference.next_token if state.reference is not None else None
        support = broadcast_tensor_from_main(None if next_token is None else next_token.indices)
        state.kl_support = None if support is None else support.to(device)

    def _read_reference(self, model: nn.Module, reference_model: nn.Module | None, reference_cache: str | Path | None,
                        require_cache: bool) -> None:
        """The reference reading: from the cache when it matches, else read now (and cached)."""
        cfg = self.config
        state = self._require_started()
        cache_key = f"{state.fingerprint}/next-token {cfg.kl_max_positions} top {cfg.kl_top_k}"
        # Rank 0 decides (its file system holds the cache): every rank must then take the same
        # forward passes, or a sharded model's collectives would wait for ever.
        cached = reference.load_reading(reference_cache, cache_key) if reference_cache and is_main_process() else None
        if broadcast_from_main(cached is not None):
            if cached is not None:
                state.reference = cached.reading.to(model_device(model))
                state.model_fingerprint = cached.model_fingerprint
                state.reference_refusal_rate = cached.refusal_rate
            return
        policy_needs_cache = reference_model is None and cfg.reference in ("initial", "auto") and not reference.is_peft(model)
        if require_cache and policy_needs_cache:
            found = "a cache made for other probes, hookpoints or SAE" if reference_cache and Path(reference_cache).exists() else "nothing"
            raise MonitorError(
                f"resuming with reference policy {cfg.reference!r}: expected the cached step-0 reference at "
                f"{reference_cache}, found {found}; pass reference=<base model path> to recompute it from the base model"
            )
        generate = cfg.refusal_score_every > 0
        with reference.reference_source(model, reference_model, cfg.reference) as source:
            state.model_fingerprint = reference.model_fingerprint(source)
            state.reference = self._read(source, kl=cfg.kl_every > 0)
            # Once per run: what the reference itself refuses, so the over-refusal alerts compare
            # with it instead of blaming fine-tuning for a reference that already refused.
            completions = self._generate(source) if generate else None
        if completions is not None:
            state.reference_refusal_rate = refusal_rates(state.probes, completions, state.refusal_judge)
            state.reference_completions = completions
        state.reuse_reference_completions = generate and policy_needs_cache
        if reference_cache and state.reference is not None:
            try:
                reference.save_reading(reference_cache, state.reference, cache_key, state.model_fingerprint,
                                       refusal_rate=state.reference_refusal_rate)
            except Exception as error:  # noqa: BLE001 - a full disk must not stop training; only a resume needs the cache
                logger.warning("featuredrift could not cache the reference readings at %s (%s); a resumed run "
                               "will need reference=<base model path>", reference_cache, error)

    def _load_saes(self, model: nn.Module, device: torch.device) -> dict[str, nn.Module]:
        if self._preloaded_saes is not None:
            saes = dict(self._preloaded_saes)
            for hookpoint, sae in saes.items():
                resolve_hookpoint(model, hookpoint)
                if sae.d_in != hidden_size(model):
                    raise sae_store.SaeError(
                        f"SAE for {hookpoint}: expected d_in = model hidden size {hidden_size(model)}, found {sae.d_in}"
                    )
            return {h: s.to(device) for h, s in saes.items()}
        return sae_store.load_saes(self.config.sae, self.config.hookpoints, model=model, device=device)

    def _read(self, model: nn.Module, *, kl: bool) -> ModelReading | None:
        state = self._require_started()
        cfg = self.config
        return reading.read_probes(
            model, state.batches, list(state.saes), keep=state.keep, refusal_tokens=state.refusal_tokens, kl=kl,
            kl_support=state.kl_support, kl_max_positions=cfg.kl_max_positions, kl_top_k=cfg.kl_top_k,
        )

    # --------------------------------------------------------------- evaluate
    def evaluate(self, model: nn.Module, step: int, *, epoch: float | None = None, final: bool = False) -> EvaluationReport:
        """Measure drift of `model` against the cached reference. Costly parts follow the cadence."""
        state = self._require_started()
        cfg = self.config
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        index = state.evaluations
        do_kl = cfg.kl_every > 0 and index % cfg.kl_every == 0 and state.kl_support is not None
        do_generation = cfg.refusal_score_every > 0 and (index % cfg.refusal_score_every == 0 or final)

        current = self._read(model, kl=do_kl)
        timings["forward"] = time.perf_counter() - t0
        t = time.perf_counter()
        completions = None
        if do_generation:
            reuse = index == 0 and self._is_unchanged_reference(model)
            completions = state.reference_completions if reuse else self._generate(model)
        state.reference_completions = None
        state.reuse_reference_completions = False
        if completions is not None:
            timings["generation"] = time.perf_counter() - t
        report = None
        if current is not None:  # rank 0; the others take its report
            report = build_report(current, state.reference, state.layer_reference, state.saes, cfg, step=int(step),
                                  epoch=epoch, final=final, timings=timings, with_kl=do_kl, contexts=state.contexts)
            refused = None
            if completions is not None:
                refused = score_refusals(report, state.probes, completions, current.refusal_probability, cfg,
                                         state.refusal_judge, state.safety_judge)
            report.refusal_by_category = refusal_by_category(state.probes, current.refusal_probability, refused)
            report.refusal_rate_reference = state.reference_refusal_rate
            timings["total"] = time.perf_counter() - t0
        state.evaluations += 1
        return broadcast_from_main(report)

    def _generate(self, model: nn.Module) -> dict[str, list[str]] | None:
        state, cfg = self._require_started(), self.config
        return reading.generate_completions(model, self.tokenizer, state.probes, state.prompt_format,
                                            max_new_tokens=cfg.max_new_tokens, batch_size=cfg.generation_batch_size)

    def _is_unchanged_reference(self, model: nn.Module) -> bool:
        """Whether `model` is the reference itself, unchanged (its fingerprint says so), so its
        completions are the reference's. Every rank takes the same branch."""
        state = self._require_started()
        return state.reuse_reference_completions and reference.model_fingerprint(model) == state.model_fingerprint

    def audit(self, model: nn.Module, rows: Sequence[tuple[int, Mapping]], dataset_size: int) -> list[audit.DataAudit] | None:
        """Read training examples (index, row) with the reference model and score how each would
        move refusal (see `monitor/audit.py`): one audit per hookpoint. Runs on every rank (the
        forward is a collective); rank 0 gets the audits, the other ranks None."""
        state, cfg = self._require_started(), self.config
        inputs, problems = audit.audit_inputs(rows, self.tokenizer, state.prompt_format, max_length=cfg.max_length)
        if not inputs:
            reason = problems[0] if problems else "no rows"
            return [audit.DataAudit(h, [], dataset_size, len(problems), reason) for h in state.saes] if is_main_process() else None
        batches = {"audit": reading.prompt_batches(self.tokenizer, [item.prompt for item in inputs], cfg.batch_size)}
        with reference.reference_source(model, None, cfg.reference) as source:
            read = reading.read_probes(source, batches, list(state.saes), keep={}, refusal_tokens=state.refusal_tokens,
                                       refusal_subsets=("audit",))
        if read is None:
            return None
        audits = []
        for hookpoint, sae in state.saes.items():
            ref = state.layer_reference[hookpoint]
            probe_acts = {s: state.reference.activations[s][hookpoint] for s in REQUIRED_PROMPT_SUBSETS}
            scores = audit.harmfulness_scores(read.activations["audit"][hookpoint], sae, ref.direction, ref.refusal_features,
                                              probe_acts, {s: ref.codes[s] for s in REQUIRED_PROMPT_SUBSETS},
                                              encode_batch_size=cfg.encode_batch_size)
            examples = audit.audited_examples(inputs, *scores, read.refusal_probability.get("audit"))
            audits.append(audit.DataAudit(hookpoint, examples, dataset_size, len(problems), problems[0] if problems else None))
        return audits

    def provenance(self) -> dict:
        """What this monitor measures with, for the run store."""
        state = self._require_started()
        return {
            "model_fingerprint": state.model_fingerprint,
            "evaluation_dtype": state.evaluation_dtype,
            "sae_fingerprint": state.sae_fingerprint,
            "probe_fingerprint": state.fingerprint,
            "hookpoints": list(state.saes),
            "paper_readings": self.config.readings(),
            "refusal_tokens": [self.tokenizer.convert_ids_to_tokens(i) for i in state.refusal_tokens],
            "next_token_kept": {"positions": self.config.kl_max_positions, "top_k": self.config.kl_top_k},
            "token_exclusion": {
                "rule": _exclusion_rule(self.config),
                "outliers_left_out": {s: int((~k).sum()) for s, k in state.keep.items()},
            },
            "sae_source": self.config.sae,
            "neuronpedia_ids": {h: sae.neuronpedia_id for h, sae in state.saes.items() if getattr(sae, "neuronpedia_id", None)},
            "probe_source": self.config.probes,
            "probe_subsets": probe_subsets(state.probes),
            "judges": {"refusal": self.config.refusal_judge, "safety": self.config.judge},
            "reference_policy": self.config.reference,
        }

    def _require_started(self) -> _State:
        if self._state is None:
            raise MonitorError("DriftMonitor.start(model, tokenizer) must run before evaluate()")
        return self._state


def probe_subsets(probes: ProbeSet) -> dict[str, dict]:
    """Per evaluated subset: how many probes, and where they came from (benchmark, file, sha256, split)."""
    subsets = {}
    for subset, count in probes.sizes().items():
        if not count:
            continue
        origin = probes.origins.get(subset)
        subsets[subset] = {"probes": count, **(origin.as_dict() if origin else {"source": probes.source})}
        if subset in PROMPT_SUBSETS:
            subsets[subset]["fingerprint"] = rows_fingerprint(probes.subset_rows(subset))
        categories = probes.categories.get(subset)
        if categories:
            subsets[subset]["categories"] = len({c for c in categories if c is not None})
    return subsets


def _exclusion_rule(config: MonitorConfig) -> str:
    read = ("padding, control tokens, each text's first token, chat-template tokens" if config.token_mask == "content"
            else "padding, BOS and EOS")
    if config.outlier_rule == "quantile":
        return f"{read}; per evaluation, tokens at or above the {config.outlier_quantile:g} quantile of the current FVU or MSE"
    return f"{read}, reference norm > {config.sink_norm_ratio}x median"


def _check_probes(probes: ProbeSet) -> None:
    missing = [name for name in ("harmful", "harmless", "base_text") if not getattr(probes, name)]
    if missing:
        raise MonitorError(
            f"probe set {probes.source!r}: expected non-empty {', '.join(missing)}, found none "
            "(a probe set needs harmful and harmless instructions and base-like text)"
        )


def _prompt_format(tokenizer, wanted: str) -> str:
    """'chat' needs a chat template (an error otherwise); 'base' is accepted with a warning."""
    if wanted == "chat" and not getattr(tokenizer, "chat_template", None):
        raise MonitorError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)!r}: expected a chat template "
            "(prompt_format='chat'), found none; set prompt_format='base' to monitor a base model with "
            "'{instruction}\\n' prompts and no chat-data series"
        )
    if wanted == "base":
        logger.warning("featuredrift: prompt_format='base': prompts are '{instruction}\\n' and the chat-data series is off")
    return wanted
