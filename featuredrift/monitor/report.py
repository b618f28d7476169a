"""The evaluation report: what one DriftMonitor evaluation produced, as plain data.

Everything downstream (exporters, the run store, the alert engine, plots) reads this and
nothing else. `metric_samples` is the single mapping from a report to flat metric samples,
so Prometheus names, stored metric values and alert expressions cannot disagree.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

PREFIX = "featuredrift_"


# HELP text of every series `metric_samples` emits (without the prefix): the one place it is written.
METRIC_HELP = {
    "global_step": "Training step of the latest evaluation.",
    "fvu_ratio": "Fraction of variance the base SAE leaves unexplained (model=reference|current, data=base|chat).",
    "activation_scale": "Normaliser of each model's residual stream in ER: sqrt(E||x||^2) (scale_reading=sigma) by default.",
    "divergent_tokens_ratio": "Share of probe token pairs (reference vs current) with cosine below tau (0.9).",
    "divergent_tokens_by_tau_ratio": "Share of probe token pairs with cosine below each tau in 0.99/0.95/0.9.",
    "pair_cosine_quantile": "Quantiles of cos(reference, current) over probe token pairs.",
    "explained_ratio": "On divergent (or most-divergent) tokens, SAE error of the current model / distance to the "
    "reference, scaled; < 1: the base SAE explains the new activations (feature drift).",
    "intersection_ratio": "Jaccard overlap of the active SAE features of each token pair, averaged.",
    "refusal_direction_cosine": "Cosine of the current refusal direction (harmful - harmless mean) to the reference's.",
    "refusal_direction_norm": "Norm of the current refusal direction.",
    "refusal_feature_gap": "Mean harmful-minus-harmless activation of the top-k refusal features (current or reference set).",
    "refusal_feature_gap_relative": "Gap of the reference refusal features now / at the reference (1 = unchanged).",
    "refusal_feature_gap_at_reference": "Gap of the reference refusal features at the reference (the relative gap's denominator).",
    "refusal_feature_separation": "Cohen's d of the top-k refusal features' summed activation, harmful vs harmless prompts: "
    "the gap in pooled standard deviations, comparable across SAEs.",
    "refusal_feature_separation_gain": "Refusal-feature separation now minus the reference's (top-k sets of each): "
    "how much more clearly the model's features now tell harmful from harmless prompts.",
    "refusal_feature_overlap_ratio": "Share of the reference top-k refusal features still among the current top-k.",
    "refusal_feature_activation": "Mean activation of the reference refusal features on harmful or harmless prompts.",
    "refusal_reconstruction_nmse": "NMSE of the NNLS reconstruction of the refusal direction from the refusal features.",
    "refusal_reconstruction_cosine": "Cosine of that NNLS reconstruction to the refusal direction.",
    "refusal_rate_ratio": "Share of greedy completions the refusal judge calls a refusal (prompts=harmful|harmless|"
    "borderline; borderline: safe requests that look unsafe, i.e. over-refusal).",
    "refusal_token_probability_ratio": "Mean probability that the response starts with a refusal token, from the "
    "logits at the prompt's end (one forward pass, every evaluation; prompts=harmful|harmless|borderline).",
    "refusal_rate_reference_ratio": "Share of greedy completions of the reference model the refusal judge calls a "
    "refusal, generated once when the run starts (what the over-refusal alert compares with).",
    "refusal_token_probability_reference_ratio": "The reference model's mean probability that the response starts "
    "with a refusal token (the baseline of the early over-refusal alert).",
    "refusal_token_logodds": "Mean log-odds of a refusal-starting first token (Arditi et al.'s refusal metric).",
    "safety_score_ratio": "Share of harmful-prompt completions the configured judge rates safe.",
    "kl_divergence_mean_nats": "Mean KL(reference || current) of next-token distributions at probe positions.",
    "kl_divergence_p95_nats": "95th percentile of KL(reference || current) at probe positions.",
    "evaluation_duration_seconds": "Wall time of the latest evaluation.",
    "monitoring_goal": "1 for the run's monitoring goal (guard: keep refusing; align: refusal should emerge).",
}


class MetricSample(NamedTuple):
    """One flat metric value. `labels` never holds the run or a step: the exporter adds `run`."""

    name: str
    labels: dict[str, str]
    value: float


@dataclass
class FeatureDrift:
    """How one SAE feature's firing changed on one probe subset, reference → now."""

    feature: int
    subset: str
    freq_reference: float
    freq_current: float
    mean_reference: float
    mean_current: float
    score: float


@dataclass
class FeatureContext:
    """One of a feature's top-activating probe tokens, with a few decoded tokens either side."""

    feature: int
    model: str  # "reference" (picked once per run) or "current" (this evaluation)
    rank: int  # 0 = where the feature fires most
    subset: str  # probe subset: base, chat, harmful, harmless
    probe_index: int  # which text or prompt of that subset
    position: int  # token index within that probe's tokens (padding excluded)
    left: str
    token: str
    right: str
    activation: float


@dataclass
class Reconstruction:
    """NNLS reconstruction of the current refusal direction from `k` refusal features."""

    k: int
    source: str  # "current" or "reference": whose top-k features were used
    features: list[int]
    weights: list[float]
    nmse: float
    cosine: float


@dataclass
class RefusalFeatures:
    """Top-k refusal features (largest feature diff-in-means) now and at the reference.

    The gaps are means of the feature diff-in-means `d̄` over a feature set: how much more
    those features fire on harmful than on harmless prompts.
    """

    k: int
    current: list[int]
    reference: list[int]
    overlap: int
    gap_current: float  # d̄(t) averaged over S_k(t)
    gap_reference_features: float  # d̄(t) averaged over S_k(reference): are the old features still there?
    gap_reference_features_at_reference: float  # d̄(0) over S_k(reference)
    harmful_activation: float  # mean activation of S_k(reference) on harmful prompts now
    harmless_activation: float  # same on harmless prompts
    separation_current: float | None = None  # Cohen's d of S_k(t)'s summed activation now: the gap in pooled SDs
    separation_at_reference: float | None = None  # Cohen's d of S_k(reference) at the reference
    current_values: list[float] | None = None  # d̄(t) of each feature in `current`, same order
    reference_values: list[float] | None = None  # d̄(t) of each feature in `reference`, same order

    @property
    def separation_gain(self) -> float | None:
        """Separation now minus at the reference, each on its own top-k set, so the selection bias
        of picking the k most separating of many features cancels (a base model's is not 0)."""
        if self.separation_current is None or self.separation_at_reference is None:
            return None
        return self.separation_current - self.separation_at_reference

    @property
    def overlap_ratio(self) -> float:
        """Share of the reference refusal features still among the current top-k."""
        return self.overlap / len(self.reference) if self.reference else math.nan

    @property
    def relative_gap(self) -> float:
        """Reference refusal features' gap now relative to the reference (1.0 = unchanged)."""
        base = self.gap_reference_features_at_reference
        return self.gap_reference_features / base if base > 0 else math.nan


@dataclass
class LayerReport:
    """Everything measured at one hookpoint."""

    hookpoint: str
    fvu: dict[str, float]  # keys "<model>/<data>", model ∈ {reference,current}, data ∈ {base,chat}
    scale_reference: float
    scale_current: float
    divergent_fraction: float
    explained_ratio: float
    explained_ratio_median: float
    intersection_ratio_divergent: float
    intersection_ratio_all: float
    refusal_direction_cosine: float
    refusal_direction_norm: float
    refusal_features: RefusalFeatures | None = None
    reconstructions: list[Reconstruction] = field(default_factory=list)
    drifted_features: list[FeatureDrift] = field(default_factory=list)
    # Drift at monitoring scale, where τ = 0.9 sees nothing (see metrics.divergence_profile).
    cosine_quantiles: dict[str, float] = field(default_factory=dict)  # "0.05" → quantile of cos(x_0, x_t)
    divergent_fraction_by_tau: dict[str, float] = field(default_factory=dict)  # "0.95" → fraction below
    explained_ratio_most_divergent: float = math.nan
    intersection_ratio_most_divergent: float = math.nan
    # Top-activating probe contexts of the listed (drifted and refusal) features, at the reference and now.
    feature_contexts: list[FeatureContext] = field(default_factory=list)


@dataclass
class CategoryRefusal:
    """Refusal on the prompts of one category of one prompt subset (HarmBench's semantic
    categories, StrongREJECT's, XSTest's types). Kept in the report and the run store, never as a
    Prometheus label: a benchmark may have any number of categories."""

    subset: str  # harmful | harmless | borderline
    category: str
    prompts: int
    refusal_rate: float | None = None  # None at evaluations that generated no completions
    refusal_token_probability: float | None = None
    refusal_token_logodds: float | None = None


@dataclass
class EvaluationReport:
    """One evaluation of the model at one training step."""

    step: int
    timestamp: float
    layers: dict[str, LayerReport]
    refusal_rate: dict[str, float] | None = None  # prompts ∈ {harmful, harmless, borderline} → fraction refused
    refusal_token_probability: dict[str, float] | None = None  # prompts → mean P(refusal-starting first token)
    refusal_token_logodds: dict[str, float] | None = None  # prompts → mean log-odds of that probability
    # The reference model's own values (generated once at start; the logit score from its reading),
    # so alerts measure what fine-tuning changed rather than a level the reference already had.
    refusal_rate_reference: dict[str, float] | None = None
    refusal_token_probability_reference: dict[str, float] | None = None
    safety_score: float | None = None
    judge: str | None = None  # the safety judge
    refusal_judge: str | None = None  # who decided the refusal rates (substring, lecture, wildguard)
    refusal_by_category: list[CategoryRefusal] | None = None  # per category of the subsets that have them
    kl_mean: float | None = None
    kl_p95: float | None = None
    epoch: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    final: bool = False  # the run's last evaluation (train end, or the watcher's last checkpoint)
    monitoring_goal: str | None = None  # guard | align | off, decided by the alert engine for the run
    completions: list[dict[str, Any]] | None = None  # a bounded sample: subset, prompt, completion, refused

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationReport:
        """Inverse of `to_dict`; also reads JSON exports, where an undefined float is null."""
        layers = {}
        for name, layer in data["layers"].items():
            layer = _null_floats_to_nan(LayerReport, layer)
            rf = layer.get("refusal_features")
            layer["refusal_features"] = RefusalFeatures(**_null_floats_to_nan(RefusalFeatures, rf)) if rf else None
            layer["reconstructions"] = [Reconstruction(**_null_floats_to_nan(Reconstruction, r)) for r in layer.get("reconstructions", [])]
            layer["drifted_features"] = [FeatureDrift(**_null_floats_to_nan(FeatureDrift, d)) for d in layer.get("drifted_features", [])]
            layer["feature_contexts"] = [FeatureContext(**c) for c in layer.get("feature_contexts", [])]
            layers[name] = LayerReport(**layer)
        by_category = data.get("refusal_by_category")
        if by_category is not None:
            by_category = [CategoryRefusal(**row) for row in by_category]
        return cls(**{**data, "layers": layers, "refusal_by_category": by_category})

    def metric_samples(self) -> list[MetricSample]:
        """Flatten to metric samples with bounded labels (see DESIGN.md, Prometheus conventions)."""
        out: list[MetricSample] = [MetricSample(PREFIX + "global_step", {}, float(self.step))]

        def add(name: str, value: float | None, **labels: str) -> None:
            if value is not None and math.isfinite(value):
                out.append(MetricSample(PREFIX + name, labels, float(value)))

        for hookpoint, layer in self.layers.items():
            for key, value in layer.fvu.items():
                model, data = key.split("/")
                add("fvu_ratio", value, layer=hookpoint, model=model, data=data)
            add("activation_scale", layer.scale_current, layer=hookpoint, model="current")
            add("activation_scale", layer.scale_reference, layer=hookpoint, model="reference")
            add("divergent_tokens_ratio", layer.divergent_fraction, layer=hookpoint)
            add("explained_ratio", layer.explained_ratio, layer=hookpoint, stat="ratio_of_sums")
            add("explained_ratio", layer.explained_ratio_median, layer=hookpoint, stat="median")
            add("intersection_ratio", layer.intersection_ratio_divergent, layer=hookpoint, tokens="divergent")
            add("intersection_ratio", layer.intersection_ratio_all, layer=hookpoint, tokens="all")
            add("explained_ratio", layer.explained_ratio_most_divergent, layer=hookpoint, stat="most_divergent")
            add("intersection_ratio", layer.intersection_ratio_most_divergent, layer=hookpoint, tokens="most_divergent")
            for q, value in layer.cosine_quantiles.items():
                add("pair_cosine_quantile", value, layer=hookpoint, q=q)
            for tau, value in layer.divergent_fraction_by_tau.items():
                add("divergent_tokens_by_tau_ratio", value, layer=hookpoint, tau=tau)
            add("refusal_direction_cosine", layer.refusal_direction_cosine, layer=hookpoint)
            add("refusal_direction_norm", layer.refusal_direction_norm, layer=hookpoint)
            rf = layer.refusal_features
            if rf is not None:
                add("refusal_feature_gap", rf.gap_current, layer=hookpoint, features="current")
                add("refusal_feature_gap", rf.gap_reference_features, layer=hookpoint, features="reference")
                add("refusal_feature_gap_relative", rf.relative_gap, layer=hookpoint)
                add("refusal_feature_gap_at_reference", rf.gap_reference_features_at_reference, layer=hookpoint)
                if rf.separation_current is not None:
                    add("refusal_feature_separation", rf.separation_current, layer=hookpoint, features="current")
                if rf.separation_gain is not None:
                    add("refusal_feature_separation_gain", rf.separation_gain, layer=hookpoint)
                add("refusal_feature_overlap_ratio", rf.overlap_ratio, layer=hookpoint)
                add("refusal_feature_activation", rf.harmful_activation, layer=hookpoint, prompts="harmful")
                add("refusal_feature_activation", rf.harmless_activation, layer=hookpoint, prompts="harmless")
                # The headline reconstruction uses all current refusal features (k, or fewer
                # when fewer than k features fire more on harmful than harmless prompts).
                current = [r for r in layer.reconstructions if r.source == "current" and r.k <= rf.k]
                headline = max(current, key=lambda r: r.k, default=None)
                if headline is not None:
                    add("refusal_reconstruction_nmse", headline.nmse, layer=hookpoint)
                    add("refusal_reconstruction_cosine", headline.cosine, layer=hookpoint)
        for name, values in (("refusal_rate_ratio", self.refusal_rate),
                             ("refusal_token_probability_ratio", self.refusal_token_probability),
                             ("refusal_token_logodds", self.refusal_token_logodds),
                             ("refusal_rate_reference_ratio", self.refusal_rate_reference),
                             ("refusal_token_probability_reference_ratio", self.refusal_token_probability_reference)):
            for prompts, value in (values or {}).items():
                add(name, value, prompts=prompts)
        add("safety_score_ratio", self.safety_score)
        add("kl_divergence_mean_nats", self.kl_mean)
        add("kl_divergence_p95_nats", self.kl_p95)
        add("evaluation_duration_seconds", self.timings.get("total"))
        if self.monitoring_goal:
            out.append(MetricSample(PREFIX + "monitoring_goal", {"goal": self.monitoring_goal}, 1.0))
        return out


def _null_floats_to_nan(kind: type, data: dict[str, Any]) -> dict[str, Any]:
    """A copy of `data` where fields that `kind` declares as plain `float` read None as NaN."""
    floats = {f.name for f in dataclasses.fields(kind) if f.type == "float"}
    return {k: (math.nan if v is None and k in floats else v) for k, v in data.items()}
