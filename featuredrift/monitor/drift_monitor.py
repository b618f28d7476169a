"""DriftMonitor: turns (model, reference, SAE, probes) into EvaluationReports.

`start()` validates everything and caches what the reference model produces on the fixed probe
set (activations, SAE codes, refusal statistics, next-token log-probs), so an evaluation costs one
probe forward pass of the current model plus batched SAE encodes. No I/O happens here: the
callback, the CLI and notebooks decide where reports go.

Under torch.distributed every rank runs its shard of the probe batches (FSDP/ZeRO-3 forwards are
collectives) and the activations are gathered, so every rank computes the same report; only
rank 0 should export it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from featuredrift import sae_store
from featuredrift.lm.capture import (
    capture_activations,
    chat_content_mask,
    content_token_mask,
    encode_prompts,
    pad_id_of,
    pad_token_lists,
    tokenize_texts,
)
from featuredrift.lm.hookpoints import hidden_size, resolve_hookpoint, unwrap_model
from featuredrift.lm.prompts import format_prompts, render_conversation
from featuredrift.monitor import feature_contexts, metrics, refusal
from featuredrift.monitor import kl as kl_metrics
from featuredrift.monitor.config import MonitorConfig
from featuredrift.monitor.distributed import (
    broadcast_from_main,
    broadcast_tensor_from_main,
    gather_list,
    gather_rows,
    is_main_process,
    padded_shard,
    world,
)
from featuredrift.monitor.judges import refusal_start_tokens
from featuredrift.monitor.probes import ProbeSet, load_probe_set
from featuredrift.monitor.report import (
    EvaluationReport,
    FeatureContext,
    LayerReport,
    Reconstruction,
    RefusalFeatures,
)

logger = logging.getLogger(__name__)
TEXT_SUBSETS = ("base", "chat")
REFERENCE_FORMAT = "featuredrift-reference-3"  # 3: next-token log-probs kept compactly (top-k + rest)
PROMPT_SUBSETS = ("harmful", "harmless")


class MonitorError(ValueError):
    """The monitor cannot run with what it was given (raised at attach time)."""


@dataclass
class ProbeBatch:
    """One tokenised batch of probe inputs and which of its positions we read."""

    input_ids: Tensor
    attention_mask: Tensor
    read_mask: Tensor  # [B, T] bool: content tokens (texts) or the last prompt token (prompts)


@dataclass
class ModelReading:
    """What one model produced on the probe set: activations per subset and hookpoint."""

    activations: dict[str, dict[str, Tensor]]  # subset → hookpoint → [N, d] (float32)
    next_token: kl_metrics.CompactLogProbs | None = None  # next-token log-probs at the KL positions
    refusal_probability: dict[str, Tensor] = field(default_factory=dict)  # prompt subset → [N] P(refusal start)

    def to(self, device: torch.device) -> ModelReading:
        moved = {s: {h: x.to(device) for h, x in per.items()} for s, per in self.activations.items()}
        return ModelReading(moved, None if self.next_token is None else self.next_token.to(device),
                            {s: p.to(device) for s, p in self.refusal_probability.items()})


@dataclass
class LayerReference:
    """Cached reference statistics at one hookpoint."""

    codes: dict[str, metrics.SaeCodes]
    fvu: dict[str, float]
    scale: float
    stats: dict[str, metrics.FeatureStats]
    direction: Tensor
    dbar: Tensor
    refusal_features: Tensor
    separation: float  # Cohen's d of `refusal_features` here, at the reference
    top_rows: feature_contexts.TopRows | None = None  # every latent's strongest probe tokens (contexts on)


@dataclass
class _State:
    saes: dict[str, nn.Module] = field(default_factory=dict)
    batches: dict[str, list[ProbeBatch]] = field(default_factory=dict)
    reference: ModelReading | None = None
    layer_reference: dict[str, LayerReference] = field(default_factory=dict)
    prompt_format: str = "chat"
    evaluations: int = 0
    keep: dict[str, Tensor] = field(default_factory=dict)  # text subset → rows read (norm outliers out)
    probes: ProbeSet | None = None
    fingerprint: str = ""  # probe tokens + hookpoints + SAE: what a cached reference is valid for
    sae_fingerprint: str = ""
    model_fingerprint: str = ""  # architecture and weights of the reference model
    evaluation_dtype: str = ""  # the parameters' dtype the probe forward runs in (autocast off)
    probe_tokens: feature_contexts.ProbeTokens | None = None  # reading rows → probe and position (contexts on)
    refusal_tokens: list[int] = field(default_factory=list)  # the logit refusal score's tokens ([]: off)
    kl_support: Tensor | None = None  # [N_kl, k] the reference's next-token ids, on every rank


class DriftMonitor:
    """Evaluate feature drift of a model under fine-tuning against a cached reference.

    `start(model, tokenizer)` validates the SAE, hookpoints and probes and caches the reference
    readings; `evaluate(model, step)` returns an `EvaluationReport`. No I/O happens here.

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

    # ------------------------------------------------------------------ start
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
        """The tokenised probe set, by subset (base, chat, harmful, harmless)."""
        return self._require_started().batches

    @property
    def reference_reading(self) -> ModelReading | None:
        """What the monitor keeps of the reference model between evaluations (its cache)."""
        return self._require_started().reference

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
        device = _model_device(model)
        state.saes = self._load_saes(model, device)
        probes = self._probes or load_probe_set(cfg.probes, split=cfg.probe_split)
        if cfg.max_probes:
            probes = probes.limit(cfg.max_probes)
        _check_probes(probes)
        self.tokenizer = tokenizer
        state.prompt_format = _prompt_format(tokenizer, cfg.prompt_format)
        state.evaluation_dtype = str(next(unwrap_model(model).parameters()).dtype).removeprefix("torch.")
        state.batches = self._tokenise(tokenizer, probes, state.prompt_format)
        if cfg.refusal_logits and probes.harmful:
            first_prompt = format_prompts(tokenizer, [probes.harmful[0]], state.prompt_format)[0]
            state.refusal_tokens = refusal_start_tokens(tokenizer, first_prompt)
        state.probes = probes
        state.sae_fingerprint = _sae_fingerprint(state.saes)
        state.fingerprint = _fingerprint(state)
        self._state = state

        cache_key = f"{state.fingerprint}/next-token {cfg.kl_max_positions} top {cfg.kl_top_k}"
        # Rank 0 decides (its file system holds the cache): every rank must then take the same
        # forward passes, or a sharded model's collectives would wait for ever.
        cached = _load_reading(reference_cache, cache_key) if reference_cache and is_main_process() else None
        if broadcast_from_main(cached is not None):
            if cached is not None:
                state.reference = cached.reading.to(device)
                state.model_fingerprint = cached.model_fingerprint
        else:
            policy_needs_cache = reference_model is None and self.config.reference in ("initial", "auto") and not _is_peft(model)
            if require_cache and policy_needs_cache:
                found = "a cache made for other probes, hookpoints or SAE" if reference_cache and Path(reference_cache).exists() else "nothing"
                raise MonitorError(
                    f"resuming with reference policy {self.config.reference!r}: expected the cached step-0 reference at "
                    f"{reference_cache}, found {found}; pass reference=<base model path> to recompute it from the base model"
                )
            with self._reference_source(model, reference_model) as reference:
                state.model_fingerprint = model_fingerprint(reference)
                state.reference = self._read(reference, kl=cfg.kl_every > 0)
            if reference_cache and state.reference is not None:
                try:
                    _save_reading(reference_cache, state.reference, cache_key, state.model_fingerprint)
                except Exception as error:  # noqa: BLE001 - a full disk must not stop training; only a resume needs the cache
                    logger.warning("featuredrift could not cache the reference readings at %s (%s); a resumed run "
                                   "will need reference=<base model path>", reference_cache, error)
        if state.reference is not None:  # rank 0, which alone computes reports
            state.keep = self._outlier_keep(state.reference)
            state.reference = _kept(state.reference, state.keep)
            if cfg.feature_contexts:
                state.probe_tokens = feature_contexts.ProbeTokens.from_batches(state.batches, state.keep)
            for hookpoint, sae in state.saes.items():
                state.layer_reference[hookpoint] = self._summarise_reference(hookpoint, sae, state.reference)
        # Every rank reads later models' next-token log-probs on the reference's tokens.
        next_token = state.reference.next_token if state.reference is not None else None
        support = broadcast_tensor_from_main(None if next_token is None else next_token.indices)
        state.kl_support = None if support is None else support.to(device)

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

    def _reference_source(self, model: nn.Module, reference_model: nn.Module | None):
        policy = self.config.reference
        is_peft = _is_peft(model)
        if reference_model is not None:
            return contextlib.nullcontext(reference_model)
        if policy == "adapters-disabled" or (policy == "auto" and is_peft):
            if not is_peft:
                raise MonitorError(
                    f"reference: 'adapters-disabled' expects a PEFT model, found {type(model).__name__}"
                )
            return _adapters_disabled(model)
        if policy in ("initial", "auto"):
            return contextlib.nullcontext(model)
        return _loaded_reference(policy, model)

    def _tokenise(self, tokenizer, probes: ProbeSet, prompt_format: str) -> dict[str, list[ProbeBatch]]:
        cfg = self.config
        size = cfg.batch_size
        base = list(probes.base_text)
        batches: dict[str, list[ProbeBatch]] = {
            "base": [_text_batch(tokenizer, base[i : i + size], cfg.max_length, cfg.token_mask)
                     for i in range(0, len(base), size)]
        }
        if probes.chat_text and prompt_format == "chat":
            chats = list(probes.chat_text)
            batches["chat"] = [_chat_batch(tokenizer, chats[i : i + size], cfg.max_length, cfg.token_mask)
                               for i in range(0, len(chats), size)]
        for subset in PROMPT_SUBSETS:
            prompts = encode_prompts(tokenizer, getattr(probes, subset), prompt_format, max_length=cfg.max_length)
            batches[subset] = [
                _prompt_batch(tokenizer, prompts[i : i + cfg.batch_size]) for i in range(0, len(prompts), cfg.batch_size)
            ]
        return batches

    # ------------------------------------------------------------- readings
    def _read(self, model: nn.Module, *, kl: bool) -> ModelReading | None:
        """One pass of `model` over every probe batch (this rank's shard), gathered on rank 0
        (other ranks get None).

        With `kl`, next-token log-probs are kept at the KL positions: the reference's on its own
        top-k tokens, a later model's on the reference's tokens (so only k+1 numbers per position
        ever leave the pass, whatever the vocabulary).
        """
        state = self._require_started()
        hookpoints = list(state.saes)
        device = _model_device(model)
        kl_subset = "chat" if "chat" in state.batches else "base"
        support = state.kl_support if kl else None
        rank, size = world()
        # Sharded models (FSDP, ZeRO-3) need every rank to run every layer: no early stop.
        stop_early = size == 1
        activations: dict[str, dict[str, Tensor]] = {}
        next_token: list[list[Tensor]] = [[], [], []]  # per real batch: indices, log-probs, rest mass
        refusal_parts: dict[str, list[Tensor]] = {}
        for subset, batches in state.batches.items():
            want_refusal = bool(state.refusal_tokens) and subset in PROMPT_SUBSETS
            kl_rows = _kl_row_ranges(batches, self.config.kl_max_positions) if kl and subset == kl_subset else []
            want_logits = bool(kl_rows) or want_refusal
            parts: dict[str, list[Tensor]] = {h: [] for h in hookpoints}
            padded, real = padded_shard(batches)
            for number, batch in enumerate(padded):
                out = capture_activations(
                    model,
                    batch.input_ids.to(device),
                    batch.attention_mask.to(device),
                    hookpoints,
                    return_logits=want_logits,
                    stop_early=stop_early,
                )
                if number >= real:
                    continue  # padding: the pass kept the ranks in step, its result is not ours
                mask = batch.read_mask.to(device)
                for h in hookpoints:
                    parts[h].append(out.activations[h][mask].float())
                if want_refusal:
                    refusal_parts.setdefault(subset, []).append(
                        refusal.refusal_token_probability(out.logits[mask], state.refusal_tokens))
                if kl_rows:
                    start, stop = kl_rows[rank + number * size]  # this rank's batch `number`, in probe order
                    compact = kl_metrics.compact_log_probs(
                        out.logits[mask][: stop - start], self.config.kl_top_k,
                        support=None if support is None else support[start:stop],
                    )
                    for kept, part in zip(next_token, compact, strict=True):
                        kept.append(part)
            activations[subset] = {h: gather_rows(parts[h]) for h in hookpoints}
        compact = kl_metrics.CompactLogProbs(*(gather_rows(kept) for kept in next_token)) if kl else None
        refusal_probability = {s: gather_rows(parts) for s, parts in refusal_parts.items()}
        if not is_main_process():
            return None
        if compact is not None and compact.indices.numel() == 0:
            compact = None
        return _kept(ModelReading(activations, compact, refusal_probability), state.keep)

    def _outlier_keep(self, reference: ModelReading) -> dict[str, Tensor]:
        """Per text subset, the rows kept: tokens that are norm outliers at the reference at any
        hookpoint (sinks, massive activations) are left out of every later reading too, so
        pairs stay aligned. The rule and the counts go into the run's provenance."""
        ratio = self.config.sink_norm_ratio
        keep: dict[str, Tensor] = {}
        if ratio is None:
            return keep
        for subset in TEXT_SUBSETS:
            per_hookpoint = reference.activations.get(subset)
            if not per_hookpoint:
                continue
            outliers = torch.stack([metrics.norm_outliers(x, ratio) for x in per_hookpoint.values()]).any(dim=0)
            keep[subset] = ~outliers
            if bool(outliers.any()):
                logger.info("featuredrift leaves out %d of %d %s probe tokens whose norm exceeds %g× the median",
                            int(outliers.sum()), outliers.numel(), subset, ratio)
        return keep

    def _summarise_reference(self, hookpoint: str, sae, reading: ModelReading) -> LayerReference:
        acts = {s: reading.activations[s][hookpoint] for s in reading.activations}
        codes = {s: metrics.encode_batched(sae, x, batch_size=self.config.encode_batch_size) for s, x in acts.items()}
        stats = {s: metrics.feature_statistics(c.top_acts, c.top_indices, sae.num_latents) for s, c in codes.items()}
        fvu = {f"reference/{s}": float(metrics.fvu(acts[s], codes[s].reconstruction)) for s in TEXT_SUBSETS if s in acts}
        direction = refusal.refusal_direction(acts["harmful"], acts["harmless"])
        dbar = refusal.feature_diff_in_means(codes["harmful"][:2], codes["harmless"][:2], sae.num_latents)
        k = min(self.config.refusal_k, sae.num_latents)
        refusal_features = refusal.top_refusal_features(dbar, k, strict=False)
        probe_tokens = self._require_started().probe_tokens
        top_rows = None
        if probe_tokens is not None:
            # Once per run, for every latent: evaluations then only look their features up.
            top_rows = feature_contexts.top_rows_all_latents(
                *feature_contexts.concat_codes(codes, probe_tokens.subsets), sae.num_latents, self.config.feature_contexts)
        return LayerReference(
            codes=codes,
            fvu=fvu,
            scale=float(metrics.scale_for(acts["base"], self.config.scale_reading)),
            stats=stats,
            direction=direction,
            dbar=dbar,
            refusal_features=refusal_features,
            separation=refusal.feature_separation(codes["harmful"], codes["harmless"], refusal_features, sae.num_latents),
            top_rows=top_rows,
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

        reading = self._read(model, kl=do_kl)
        timings["forward"] = time.perf_counter() - t0
        t = time.perf_counter()
        completions = self._generate(model) if do_generation else None
        timings["generation"] = time.perf_counter() - t
        report = None
        if reading is not None:  # rank 0; the others take its report
            report = self._report(reading, completions, int(step), epoch, final, timings, do_kl)
            timings["total"] = time.perf_counter() - t0
        state.evaluations += 1
        return broadcast_from_main(report)

    def _report(self, reading: ModelReading, completions: dict[str, list[str]] | None, step: int,
                epoch: float | None, final: bool, timings: dict[str, float], do_kl: bool) -> EvaluationReport:
        """Rank 0: the metrics of one reading (and its completions) against the reference."""
        state = self._require_started()

        t = time.perf_counter()
        layers = {h: self._layer_report(h, sae, reading, timings) for h, sae in state.saes.items()}
        timings["metrics"] = time.perf_counter() - t - timings.get("contexts", 0.0)

        report = EvaluationReport(step=int(step), timestamp=time.time(), layers=layers, epoch=epoch, final=final)
        if reading.refusal_probability:
            report.refusal_token_probability = {s: float(p.mean()) for s, p in reading.refusal_probability.items()}
            report.refusal_token_logodds = {s: float(refusal.log_odds(p).mean()) for s, p in reading.refusal_probability.items()}
        if do_kl:
            t = time.perf_counter()
            summary = kl_metrics.summarise_kl(kl_metrics.compact_kl(state.reference.next_token, reading.next_token))
            report.kl_mean, report.kl_p95 = float(summary.mean), float(summary.p95)
            timings["kl"] = time.perf_counter() - t
        if completions is not None:
            self._score_refusals(report, completions, reading.refusal_probability)
        else:
            timings.pop("generation", None)
        report.timings = timings
        return report

    def _layer_report(self, hookpoint: str, sae, reading: ModelReading, timings: dict[str, float]) -> LayerReport:
        cfg = self.config
        ref = self._require_started().layer_reference[hookpoint]
        ref_acts = self._state.reference.activations
        acts = {s: reading.activations[s][hookpoint] for s in reading.activations}
        codes = {s: metrics.encode_batched(sae, x, batch_size=cfg.encode_batch_size) for s, x in acts.items()}

        fvu = dict(ref.fvu)
        for s in TEXT_SUBSETS:
            if s in acts:
                fvu[f"current/{s}"] = float(metrics.fvu(acts[s], codes[s].reconstruction))

        x0, xt = ref_acts["base"][hookpoint], acts["base"]
        scale = float(metrics.scale_for(xt, cfg.scale_reading))
        cos = metrics.paired_cosine(x0, xt)  # once: the divergent mask, the profile and `moved` read it
        divergent = cos < cfg.divergence_threshold
        # With no divergent token (e.g. at step 0) ER is undefined: reported as NaN, not an error.
        any_divergent = bool(divergent.any())
        er = metrics.explained_ratio(x0, xt, codes["base"].reconstruction, divergent, ref.scale, scale) if any_divergent else None
        ir = metrics.intersection_ratio(ref.codes["base"], codes["base"], mask=divergent if any_divergent else None)
        profile = metrics.cosine_profile(cos, cfg.most_divergent_share)
        moved = bool((cos[profile.most_divergent] < 1 - 1e-6).any())
        er_top = (metrics.explained_ratio(x0, xt, codes["base"].reconstruction, profile.most_divergent, ref.scale, scale)
                  if moved else None)
        ir_top = metrics.intersection_ratio(ref.codes["base"], codes["base"], mask=profile.most_divergent)

        stats = {s: metrics.feature_statistics(c.top_acts, c.top_indices, sae.num_latents) for s, c in codes.items()}
        drifted = metrics.drifted_features(ref.stats, stats, cfg.top_n_features)

        direction = refusal.refusal_direction(acts["harmful"], acts["harmless"])
        dbar = refusal.feature_diff_in_means(codes["harmful"][:2], codes["harmless"][:2], sae.num_latents)
        k = min(cfg.refusal_k, sae.num_latents)
        current_features = refusal.top_refusal_features(dbar, k, strict=False)
        reference_features = ref.refusal_features
        harmful_mean = _mean_activation(codes["harmful"], reference_features, sae.num_latents)
        harmless_mean = _mean_activation(codes["harmless"], reference_features, sae.num_latents)
        refusal_features = RefusalFeatures(
            k=k,
            current=current_features.tolist(),
            reference=reference_features.tolist(),
            overlap=refusal.feature_overlap(current_features, reference_features),
            gap_current=_mean_at(dbar, current_features),
            gap_reference_features=_mean_at(dbar, reference_features),
            gap_reference_features_at_reference=_mean_at(ref.dbar, reference_features),
            separation_current=refusal.feature_separation(
                codes["harmful"], codes["harmless"], current_features, sae.num_latents),
            separation_at_reference=ref.separation,
            harmful_activation=harmful_mean,
            harmless_activation=harmless_mean,
            current_values=dbar[current_features].tolist(),
            reference_values=dbar[reference_features].tolist(),
        )
        reconstructions = []
        for source, features in (("current", current_features), ("reference", reference_features)):
            for rk in sorted({*(kk for kk in cfg.reconstruction_ks if kk <= len(features)), len(features)}):
                if rk == 0:
                    continue
                rec = refusal.reconstruct_direction(sae.W_dec, features[:rk], direction)
                reconstructions.append(
                    Reconstruction(
                        k=rk,
                        source=source,
                        features=features[:rk].tolist(),
                        weights=[float(w) for w in rec.weights],
                        nmse=float(rec.nmse),
                        cosine=float(rec.cosine),
                    )
                )
        t = time.perf_counter()
        listed = _listed_features(drifted, current_features, reference_features)
        contexts = self._feature_contexts(ref, codes, listed, sae.num_latents)
        timings["contexts"] = timings.get("contexts", 0.0) + time.perf_counter() - t
        return LayerReport(
            hookpoint=hookpoint,
            fvu=fvu,
            scale_reference=ref.scale,
            scale_current=scale,
            divergent_fraction=float(divergent.float().mean()) if divergent.numel() else math.nan,
            explained_ratio=float(er.aggregate(cfg.er_aggregate)) if er else math.nan,
            explained_ratio_median=float(er.median) if er else math.nan,
            intersection_ratio_divergent=float(ir.divergent) if ir.divergent is not None else math.nan,
            intersection_ratio_all=float(ir.all),
            refusal_direction_cosine=float(torch.nn.functional.cosine_similarity(direction, ref.direction, dim=0)),
            refusal_direction_norm=float(direction.norm()),
            refusal_features=refusal_features,
            reconstructions=reconstructions,
            drifted_features=drifted,
            cosine_quantiles={f"{q:g}": v for q, v in profile.quantiles.items()},
            divergent_fraction_by_tau={f"{t:g}": v for t, v in profile.fractions.items()},
            explained_ratio_most_divergent=float(er_top.ratio) if er_top else math.nan,
            intersection_ratio_most_divergent=float(ir_top.divergent) if ir_top.divergent is not None else math.nan,
            feature_contexts=contexts,
        )

    def _feature_contexts(self, ref: LayerReference, codes: dict[str, metrics.SaeCodes], features: list[int],
                          num_latents: int) -> list[FeatureContext]:
        """Top-activating probe contexts of `features` at the reference (looked up) and now (from this
        evaluation's codes, no extra forward pass); empty when contexts are off."""
        probe_tokens = self._require_started().probe_tokens
        if probe_tokens is None or ref.top_rows is None or not features:
            return []
        window = self.config.feature_context_tokens
        index = torch.tensor(features, dtype=torch.long, device=ref.top_rows.values.device)
        at_reference = feature_contexts.TopRows(ref.top_rows.values[index], ref.top_rows.rows[index])
        now = feature_contexts.top_rows(*feature_contexts.concat_codes(codes, probe_tokens.subsets),
                                        torch.tensor(features), num_latents, self.config.feature_contexts)
        return [
            *feature_contexts.contexts(features, at_reference, probe_tokens, self.tokenizer, model="reference", window=window),
            *feature_contexts.contexts(features, now, probe_tokens, self.tokenizer, model="current", window=window),
        ]

    def _generate(self, model: nn.Module) -> dict[str, list[str]] | None:
        """Greedy completions of the harmful and harmless prompts (each rank its padded shard),
        gathered on rank 0; None on the other ranks."""
        from featuredrift.lm.generation import generate_greedy

        cfg = self.config
        gathered = {}
        for subset in PROMPT_SUBSETS:
            prompts = format_prompts(self.tokenizer, getattr(self._state_probes(), subset), self._state.prompt_format)
            mine, real = padded_shard(prompts)
            gathered[subset] = gather_list(
                generate_greedy(model, self.tokenizer, mine, max_new_tokens=cfg.max_new_tokens,
                                batch_size=cfg.generation_batch_size, synced_gpus=world()[1] > 1)[:real]
            )
        return gathered if is_main_process() else None

    def _score_refusals(self, report: EvaluationReport, generated: dict[str, list[str]],
                        token_probability: dict[str, Tensor]) -> None:
        from featuredrift.monitor.judges import get_judge, is_refusal, refusal_score

        probes = self._state_probes()
        cfg = self.config
        rates = {}
        kept: list[dict] = []  # the evidence behind the rates, a bounded sample per subset
        completions_harmful: list[str] = []
        for subset in PROMPT_SUBSETS:
            instructions = getattr(probes, subset)
            completions = generated[subset]
            rates[subset] = refusal_score(completions)
            probability = token_probability[subset].tolist() if subset in token_probability else [None] * len(completions)
            kept += [
                {"subset": subset, "prompt": prompt, "completion": completion, "refused": is_refusal(completion),
                 "refusal_token_probability": p}
                for prompt, completion, p in list(zip(instructions, completions, probability, strict=False))[: cfg.completions_kept]
            ]
            if subset == "harmful":
                completions_harmful = completions
        judge = get_judge(cfg.judge)
        verdicts = judge.judge(list(probes.harmful), completions_harmful)
        report.refusal_rate = rates
        report.completions = kept
        report.safety_score = sum(verdicts) / len(verdicts) if verdicts else None
        report.judge = judge.name

    def provenance(self) -> dict:
        """What this monitor measures with, for the run store."""
        state = self._require_started()
        return {
            "model_fingerprint": state.model_fingerprint,
            "evaluation_dtype": state.evaluation_dtype,
            "sae_fingerprint": state.sae_fingerprint,
            "probe_fingerprint": state.fingerprint,
            "hookpoints": list(state.saes),
            "paper_readings": {k: getattr(self.config, k) for k in ("scale_reading", "er_aggregate", "token_mask")},
            "refusal_tokens": [self.tokenizer.convert_ids_to_tokens(i) for i in state.refusal_tokens],
            "next_token_kept": {"positions": self.config.kl_max_positions, "top_k": self.config.kl_top_k},
            "token_exclusion": {
                "rule": "padding, control tokens, each text's first token, chat-template tokens, "
                f"reference norm > {self.config.sink_norm_ratio}x median",
                "outliers_left_out": {s: int((~k).sum()) for s, k in state.keep.items()},
            },
            "sae_source": self.config.sae,
            "probe_source": self.config.probes,
            "reference_policy": self.config.reference,
        }

    # ---------------------------------------------------------------- helpers
    def _state_probes(self) -> ProbeSet:
        return self._require_started().probes

    def _require_started(self) -> _State:
        if self._state is None:
            raise MonitorError("DriftMonitor.start(model, tokenizer) must run before evaluate()")
        return self._state


# ---------------------------------------------------------------------------- module helpers
def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(unwrap_model(model).parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _check_probes(probes: ProbeSet) -> None:
    missing = [name for name in ("harmful", "harmless", "base_text") if not getattr(probes, name)]
    if missing:
        raise MonitorError(
            f"probe set {probes.source!r}: expected non-empty {', '.join(missing)}, found none "
            "(a probe set needs harmful and harmless instructions and base-like text)"
        )


def _text_batch(tokenizer, texts: list[str], max_length: int, rule: str = "content") -> ProbeBatch:
    """Right-padded texts; we read every content token (no padding, control tokens or sink)."""
    tokens = tokenize_texts(tokenizer, texts, max_length=max_length, padding_side="right")
    mask = content_token_mask(tokens.input_ids, tokens.attention_mask, tokenizer, rule=rule)
    return ProbeBatch(tokens.input_ids, tokens.attention_mask, mask)


def _chat_batch(tokenizer, conversations: list, max_length: int, rule: str = "content") -> ProbeBatch:
    """Rendered conversations (their template writes BOS, so none is added again); we read
    only the tokens inside message contents."""
    texts = [render_conversation(tokenizer, messages) for messages in conversations]
    tokens = tokenize_texts(tokenizer, texts, max_length=max_length, padding_side="right", add_special_tokens=False)
    mask = content_token_mask(tokens.input_ids, tokens.attention_mask, tokenizer, rule=rule)
    if rule == "content":
        mask &= chat_content_mask(tokenizer, texts, conversations, tokens)
    return ProbeBatch(tokens.input_ids, tokens.attention_mask, mask)


def _prompt_batch(tokenizer, prompts: list) -> ProbeBatch:
    """Left-padded encoded prompts; we read each one's readout token (the last before the response)."""
    tokens = pad_token_lists([p.input_ids for p in prompts], pad_id_of(tokenizer), "left")
    width = tokens.input_ids.shape[1]
    readout = torch.tensor([width - len(p.input_ids) + p.readout for p in prompts])
    mask = torch.zeros_like(tokens.attention_mask, dtype=torch.bool)
    mask[torch.arange(len(prompts)), readout] = True
    return ProbeBatch(tokens.input_ids, tokens.attention_mask, mask)


def _kept(reading: ModelReading, keep: dict[str, Tensor]) -> ModelReading:
    """The reading without the rows `keep` leaves out (subsets without a mask unchanged)."""
    if not keep:
        return reading
    activations = {
        s: ({h: x[keep[s].to(x.device)] for h, x in per.items()} if s in keep else per)
        for s, per in reading.activations.items()
    }
    return ModelReading(activations, reading.next_token, reading.refusal_probability)


def _kl_row_ranges(batches: list[ProbeBatch], limit: int) -> list[tuple[int, int]]:
    """Per batch, which of the KL positions (the first `limit` read positions of the subset, in
    batch order; 0 = all) its read positions are: (start, stop), possibly empty. Fixed by the
    probes alone, so a rank reading its shard knows where its rows sit in the reference's."""
    limit = limit or 2**62
    ranges, start = [], 0
    for batch in batches:
        stop = start + int(batch.read_mask.sum())
        ranges.append((min(start, limit), min(stop, limit)))
        start = stop
    return ranges


def _listed_features(drifted, current_refusal: Tensor, reference_refusal: Tensor) -> list[int]:
    """The features a layer report lists (drifted, then current and reference refusal features), each once."""
    listed = [d.feature for d in drifted] + current_refusal.tolist() + reference_refusal.tolist()
    return list(dict.fromkeys(int(f) for f in listed))


def _mean_activation(codes: metrics.SaeCodes, features: Tensor, num_latents: int) -> float:
    return float(metrics.mean_dense_activation(codes, features, num_latents)) if features.numel() else math.nan


def _mean_at(values: Tensor, indices: Tensor) -> float:
    return float(values[indices].mean()) if indices.numel() else math.nan


@contextlib.contextmanager
def _adapters_disabled(model: nn.Module):
    with model.disable_adapter():
        yield model


@contextlib.contextmanager
def _loaded_reference(path: str, model: nn.Module):
    """Load an explicit reference model next to the monitored one, and free it afterwards."""
    from transformers import AutoModelForCausalLM

    device = _model_device(model)
    dtype = next(unwrap_model(model).parameters()).dtype
    try:
        reference = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype).to(device)
    except OSError as error:
        raise MonitorError(f"reference: expected a model directory or Hub id, could not load {path!r}: {error}") from error
    try:
        yield reference
    finally:
        del reference
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _is_peft(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


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


def model_fingerprint(model: nn.Module, sample: int = 4096) -> str:
    """Architecture plus a strided sample of every parameter: tells models apart in milliseconds,
    without hashing gigabytes of weights."""
    digest = hashlib.sha256()
    base = unwrap_model(model)
    config = getattr(base, "config", None)
    if config is not None:
        digest.update(repr((config.model_type, getattr(config, "hidden_size", None), getattr(config, "num_hidden_layers", None),
                            getattr(config, "vocab_size", None))).encode())
    with torch.no_grad():
        for name, parameter in base.named_parameters():
            if hasattr(parameter, "full_tensor"):  # FSDP2 shards: gathered (a collective, once at start)
                parameter = parameter.full_tensor()
            flat = parameter.detach().reshape(-1)
            stride = max(1, flat.numel() // sample)
            digest.update(name.encode())
            digest.update(repr(tuple(parameter.shape)).encode())
            digest.update(flat[::stride][:sample].float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _sae_fingerprint(saes: dict[str, nn.Module]) -> str:
    digest = hashlib.sha256()
    for hookpoint, sae in sorted(saes.items()):
        digest.update(hookpoint.encode())
        digest.update(repr((sae.d_in, sae.num_latents, getattr(sae.cfg, "k", None))).encode())
        digest.update(sae.W_dec.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _fingerprint(state: _State) -> str:
    """Identify (probe tokens, hookpoints, SAE weights): a cached reference is valid only for these."""
    digest = hashlib.sha256()
    for subset in sorted(state.batches):
        digest.update(subset.encode())
        for batch in state.batches[subset]:
            digest.update(batch.input_ids.numpy().tobytes())
            digest.update(batch.read_mask.numpy().tobytes())
    digest.update(state.sae_fingerprint.encode())
    return digest.hexdigest()


@dataclass
class CachedReference:
    reading: ModelReading
    model_fingerprint: str


def _tensor_checksum(tensors: dict[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(tensors[key].contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _save_reading(path: str | Path, reading: ModelReading, fingerprint: str, model_fp: str) -> None:
    from safetensors.torch import save_file

    tensors = {f"act/{s}/{h}": x.contiguous().cpu() for s, per in reading.activations.items() for h, x in per.items()}
    if reading.next_token is not None:
        tensors.update({f"next_token/{name}": t.contiguous().cpu() for name, t in reading.next_token._asdict().items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    metadata = {"fingerprint": fingerprint, "format": REFERENCE_FORMAT, "model_fingerprint": model_fp,
                "checksum": _tensor_checksum(tensors)}
    try:
        save_file(tensors, str(tmp), metadata=metadata)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def _load_reading(path: str | Path, fingerprint: str) -> CachedReference | None:
    """The cached reference readings; None when absent or made for other inputs; an error when corrupt."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("fingerprint") != fingerprint or metadata.get("format") != REFERENCE_FORMAT:
                return None
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as error:
        raise MonitorError(f"reference cache {path}: expected a safetensors file, found an unreadable one ({error}); "
                           "delete it to recompute the reference") from error
    if metadata.get("checksum") != _tensor_checksum(tensors):
        raise MonitorError(f"reference cache {path}: corrupt (its data does not match the checksum written with it); "
                           "delete it and pass reference=<base model path> to recompute the reference")
    activations: dict[str, dict[str, Tensor]] = {}
    for key, tensor in tensors.items():
        if key.startswith("act/"):
            _, subset, hookpoint = key.split("/", 2)
            activations.setdefault(subset, {})[hookpoint] = tensor
    fields = kl_metrics.CompactLogProbs._fields
    next_token = (kl_metrics.CompactLogProbs(*(tensors[f"next_token/{name}"] for name in fields))
                  if all(f"next_token/{name}" in tensors for name in fields) else None)
    return CachedReference(ModelReading(activations, next_token), metadata.get("model_fingerprint", ""))
