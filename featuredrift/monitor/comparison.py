"""One evaluation's report: a model's reading compared with the cached reference.

Pure computation on tensors already read: per hookpoint the SAE codes, FVU, divergence, ER/IR,
drifted features, refusal direction and features and their NNLS reconstructions; for the whole
report the logit refusal score, KL and, when completions were generated, the refusal rates and
the judge's safety score.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from featuredrift.monitor import feature_contexts, metrics, refusal
from featuredrift.monitor import kl as kl_metrics
from featuredrift.monitor.config import MonitorConfig
from featuredrift.monitor.probes import ProbeSet
from featuredrift.monitor.reading import TEXT_SUBSETS, ModelReading
from featuredrift.monitor.reference import LayerReference, refusal_dbar, refusal_features_of
from featuredrift.monitor.report import (
    CategoryRefusal,
    EvaluationReport,
    FeatureContext,
    LayerReport,
    Reconstruction,
    RefusalFeatures,
)


def build_report(
    reading: ModelReading,
    reference: ModelReading,
    layer_references: dict[str, LayerReference],
    saes: dict,
    config: MonitorConfig,
    *,
    step: int,
    epoch: float | None,
    final: bool,
    timings: dict[str, float],
    with_kl: bool,
    contexts: ContextLookup | None,
) -> EvaluationReport:
    """The metrics of one reading against the reference (completions are scored separately)."""
    t = time.perf_counter()
    layers = {
        h: layer_report(h, sae, layer_references[h], reference, reading, config, timings, contexts)
        for h, sae in saes.items()
    }
    timings["metrics"] = time.perf_counter() - t - timings.get("contexts", 0.0)

    report = EvaluationReport(step=int(step), timestamp=time.time(), layers=layers, epoch=epoch, final=final)
    if reading.refusal_probability:
        report.refusal_token_probability = {s: float(p.mean()) for s, p in reading.refusal_probability.items()}
        report.refusal_token_logodds = {s: float(refusal.log_odds(p).mean()) for s, p in reading.refusal_probability.items()}
    if reference.refusal_probability:
        report.refusal_token_probability_reference = {s: float(p.mean()) for s, p in reference.refusal_probability.items()}
    if with_kl:
        t = time.perf_counter()
        summary = kl_metrics.summarise_kl(kl_metrics.compact_kl(reference.next_token, reading.next_token))
        report.kl_mean, report.kl_p95 = float(summary.mean), float(summary.p95)
        timings["kl"] = time.perf_counter() - t
    report.timings = timings
    return report


def layer_report(hookpoint: str, sae, ref: LayerReference, reference: ModelReading, reading: ModelReading,
                 config: MonitorConfig, timings: dict[str, float], contexts: ContextLookup | None) -> LayerReport:
    cfg = config
    ref_acts = reference.activations
    acts = {s: reading.activations[s][hookpoint] for s in reading.activations}
    codes = {s: metrics.encode_batched(sae, x, batch_size=cfg.encode_batch_size) for s, x in acts.items()}

    inliers = _quantile_inliers(ref_acts, acts, codes, hookpoint, cfg)
    fvu = dict(ref.fvu)
    for s in TEXT_SUBSETS:
        if s in acts:
            keep = inliers.get(s, slice(None))
            fvu[f"current/{s}"] = float(metrics.fvu_of(acts[s][keep], codes[s].reconstruction[keep], cfg.fvu_reading))
            if s in inliers:  # the paper's rule drops tokens per comparison: the reference's FVU on the same ones
                fvu[f"reference/{s}"] = float(metrics.fvu_of(ref_acts[s][hookpoint][keep], ref.codes[s].reconstruction[keep],
                                                             cfg.fvu_reading))

    keep = inliers.get("base", slice(None))
    scale = float(metrics.scale_for(acts["base"], cfg.scale_reading))
    x0, xt = ref_acts["base"][hookpoint][keep], acts["base"][keep]
    base_codes, ref_base_codes = _rows(codes["base"], keep), _rows(ref.codes["base"], keep)
    cos = metrics.paired_cosine(x0, xt)  # once: the divergent mask, the profile and `moved` read it
    divergent = cos < cfg.divergence_threshold
    # With no divergent token (e.g. at step 0) ER is undefined: reported as NaN, not an error.
    any_divergent = bool(divergent.any())
    er = metrics.explained_ratio(x0, xt, base_codes.reconstruction, divergent, ref.scale, scale) if any_divergent else None
    ir = metrics.intersection_ratio(ref_base_codes, base_codes, mask=divergent if any_divergent else None,
                                    reading=cfg.ir_reading)
    profile = metrics.cosine_profile(cos, cfg.most_divergent_share)
    moved = bool((cos[profile.most_divergent] < 1 - 1e-6).any())
    er_top = (metrics.explained_ratio(x0, xt, base_codes.reconstruction, profile.most_divergent, ref.scale, scale)
              if moved else None)
    ir_top = metrics.intersection_ratio(ref_base_codes, base_codes, mask=profile.most_divergent, reading=cfg.ir_reading)

    stats = {s: metrics.feature_statistics(c.top_acts, c.top_indices, sae.num_latents) for s, c in codes.items()}
    drifted = metrics.drifted_features(ref.stats, stats, cfg.top_n_features)

    direction = refusal.refusal_direction(acts["harmful"], acts["harmless"])
    dbar = refusal_dbar(codes, sae, cfg)
    current_features = refusal_features_of(dbar, sae, cfg)
    k = min(cfg.refusal_k, sae.num_latents)
    reference_features = ref.refusal_features
    refusal_features = RefusalFeatures(
        k=k,
        current=current_features.tolist(),
        reference=reference_features.tolist(),
        overlap=refusal.feature_overlap(current_features, reference_features),
        gap_current=_mean_at(dbar, current_features),
        gap_reference_features=_mean_at(dbar, reference_features),
        gap_reference_features_at_reference=_mean_at(ref.dbar, reference_features),
        separation_current=refusal.feature_separation(codes["harmful"], codes["harmless"], current_features, sae.num_latents),
        separation_at_reference=ref.separation,
        harmful_activation=_mean_activation(codes["harmful"], reference_features, sae.num_latents),
        harmless_activation=_mean_activation(codes["harmless"], reference_features, sae.num_latents),
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
                Reconstruction(k=rk, source=source, features=features[:rk].tolist(),
                               weights=[float(w) for w in rec.weights], nmse=float(rec.nmse), cosine=float(rec.cosine))
            )
    t = time.perf_counter()
    listed = _listed_features(drifted, current_features, reference_features)
    found = contexts.lookup(ref, codes, listed, sae.num_latents) if contexts is not None else []
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
        feature_contexts=found,
    )


def _quantile_inliers(ref_acts, acts, codes, hookpoint: str, cfg: MonitorConfig) -> dict[str, Tensor]:
    """Per text subset, the token pairs the paper's outlier rule keeps (empty under the norm rule,
    which left its outliers out of every reading already)."""
    if cfg.outlier_rule != "quantile":
        return {}
    return {
        s: metrics.quantile_inliers(metrics.per_token_fvu(acts[s], codes[s].reconstruction),
                                    metrics.token_mse(ref_acts[s][hookpoint], acts[s]), q=cfg.outlier_quantile)
        for s in TEXT_SUBSETS if s in acts
    }


def _rows(codes: metrics.SaeCodes, keep) -> metrics.SaeCodes:
    return metrics.SaeCodes(*(t[keep] for t in codes))


class ContextLookup:
    """Top-activating probe contexts of listed features: at the reference looked up (picked once
    per run), now from this evaluation's codes (no extra forward pass)."""

    def __init__(self, probe_tokens: feature_contexts.ProbeTokens, tokenizer, *, per_feature: int, window: int):
        self.probe_tokens = probe_tokens
        self.tokenizer = tokenizer
        self.per_feature = per_feature
        self.window = window

    def lookup(self, ref: LayerReference, codes: dict[str, metrics.SaeCodes], features: list[int],
               num_latents: int) -> list[FeatureContext]:
        if ref.top_rows is None or not features:
            return []
        index = torch.tensor(features, dtype=torch.long, device=ref.top_rows.values.device)
        at_reference = feature_contexts.TopRows(ref.top_rows.values[index], ref.top_rows.rows[index])
        now = feature_contexts.top_rows(*feature_contexts.concat_codes(codes, self.probe_tokens.subsets),
                                        torch.tensor(features), num_latents, self.per_feature)
        return [
            *feature_contexts.contexts(features, at_reference, self.probe_tokens, self.tokenizer, model="reference",
                                       window=self.window),
            *feature_contexts.contexts(features, now, self.probe_tokens, self.tokenizer, model="current", window=self.window),
        ]


def score_refusals(report: EvaluationReport, probes: ProbeSet, generated: dict[str, list[str]],
                   token_probability: dict[str, Tensor], config: MonitorConfig, refusal_judge,
                   safety_judge) -> dict[str, list[bool]]:
    """Refusal rates of the completions by the refusal judge, a bounded sample of them as
    evidence, and the safety judge's score of the harmful ones; returns the verdicts by subset."""
    from featuredrift.monitor.judges import RefusalJudge

    refused = {s: refusal_judge.refusals(list(getattr(probes, s)), generated[s]) for s in probes.prompt_subsets()}
    kept: list[dict] = []
    for subset, verdicts in refused.items():
        instructions, completions = getattr(probes, subset), generated[subset]
        probability = token_probability[subset].tolist() if subset in token_probability else [None] * len(completions)
        kept += [
            {"subset": subset, "prompt": prompt, "completion": completion, "refused": verdict,
             "refusal_token_probability": p}
            for prompt, completion, verdict, p in
            list(zip(instructions, completions, verdicts, probability, strict=False))[: config.completions_kept]
        ]
    if isinstance(safety_judge, RefusalJudge) and safety_judge.refusal_judge is refusal_judge:
        safe = refused["harmful"]  # the proxy: the same verdicts, not a second pass of a classifier
    else:
        safe = safety_judge.judge(list(probes.harmful), generated["harmful"])
    report.refusal_rate = {s: sum(v) / len(v) for s, v in refused.items() if v}
    report.completions = kept
    report.safety_score = sum(safe) / len(safe) if safe else None
    report.judge = safety_judge.name
    report.refusal_judge = refusal_judge.name
    return refused


UNCATEGORISED = "(no category)"


def refusal_by_category(probes: ProbeSet, token_probability: dict[str, Tensor],
                        refused: dict[str, list[bool]] | None) -> list[CategoryRefusal] | None:
    """Per category of every prompt subset that has categories: its prompts, the share refused
    (when completions were generated) and the mean logit refusal score."""
    rows = []
    for subset in probes.prompt_subsets():
        categories = probes.categories.get(subset)
        if not categories:
            continue
        labels = [c if c is not None else UNCATEGORISED for c in categories]
        probability = token_probability.get(subset)
        verdicts = refused.get(subset) if refused else None
        for category in sorted(set(labels)):
            index = [i for i, c in enumerate(labels) if c == category]
            p = probability[torch.tensor(index, device=probability.device)] if probability is not None else None
            rows.append(CategoryRefusal(
                subset=subset, category=category, prompts=len(index),
                refusal_rate=sum(verdicts[i] for i in index) / len(index) if verdicts else None,
                refusal_token_probability=float(p.mean()) if p is not None else None,
                refusal_token_logodds=float(refusal.log_odds(p).mean()) if p is not None else None,
            ))
    return rows or None


def refusal_rates(probes: ProbeSet, generated: dict[str, list[str]], refusal_judge) -> dict[str, float]:
    """Per prompt subset, the share of completions the refusal judge calls a refusal."""
    rates = {}
    for subset, completions in generated.items():
        if completions:
            verdicts = refusal_judge.refusals(list(getattr(probes, subset)), completions)
            rates[subset] = sum(verdicts) / len(verdicts)
    return rates


def _listed_features(drifted, current_refusal: Tensor, reference_refusal: Tensor) -> list[int]:
    """The features a layer report lists (drifted, then current and reference refusal features), each once."""
    listed = [d.feature for d in drifted] + current_refusal.tolist() + reference_refusal.tolist()
    return list(dict.fromkeys(int(f) for f in listed))


def _mean_activation(codes: metrics.SaeCodes, features: Tensor, num_latents: int) -> float:
    return float(metrics.mean_dense_activation(codes, features, num_latents)) if features.numel() else math.nan


def _mean_at(values: Tensor, indices: Tensor) -> float:
    return float(values[indices].mean()) if indices.numel() else math.nan
