"""Hand-built EvaluationReports for tests of what sits below the report (alerts, dashboards,
exporters): every field set to plausible values, with the ones alerts look at as parameters."""

from __future__ import annotations

import time

from featuredrift.monitor.report import (
    EvaluationReport,
    LayerReport,
    Reconstruction,
    RefusalFeatures,
)


def make_report(
    step: int = 100,
    timestamp: float | None = None,
    *,
    relative_gap: float = 0.9,
    direction_cosine: float = 0.95,
    harmful_refusal: float | None = 0.9,
    fvu_chat: float = 0.2,
    layer: str = "layers.3",
    reference_gap: float = 2.0,
    current_gap: float = 1.5,
    current_separation: float = 1.8,
    reference_separation: float = 0.6,
    divergent_fraction: float = 0.1,
    kl_mean: float = 0.1,
    fvu_reference_chat: float = 0.15,
    harmless_refusal: float = 0.05,
    harmless_probability: float = 0.04,
    reference_refusal: dict[str, float] | None = None,
    reference_probability: dict[str, float] | None = None,
    borderline: tuple[float, float] | None = None,
) -> EvaluationReport:
    """A one-layer report; `harmful_refusal=None` leaves out the (costly, occasional) refusal scores.

    `reference_gap` is the reference refusal features' gap at the reference (the relative gap's
    denominator: ~2 for a chat model, ~0.05 for a base model that never refused); `current_gap`
    the gap of the current top refusal features. `current_separation` and `reference_separation`
    are their Cohen's d now and at the reference: the gain is what grows when refusal emerges.
    `reference_refusal` / `reference_probability` are the reference model's own refusal rates and
    logit scores by prompt subset (what the over-refusal alerts compare with); `borderline` adds
    that subset as (refusal rate, refusal-token probability)."""
    features = RefusalFeatures(
        k=4,
        current=[1, 2, 3, 4],
        reference=[1, 2, 3, 5],
        overlap=3,
        gap_current=current_gap,
        gap_reference_features=reference_gap * relative_gap,
        gap_reference_features_at_reference=reference_gap,
        harmful_activation=1.0,
        harmless_activation=0.1,
        separation_current=current_separation,
        separation_at_reference=reference_separation,
    )
    layer_report = LayerReport(
        hookpoint=layer,
        fvu={"reference/base": 0.1, "reference/chat": fvu_reference_chat, "current/base": 0.12, "current/chat": fvu_chat},
        scale_reference=10.0,
        scale_current=10.5,
        divergent_fraction=divergent_fraction,
        explained_ratio=0.6,
        explained_ratio_median=0.55,
        intersection_ratio_divergent=0.4,
        intersection_ratio_all=0.8,
        refusal_direction_cosine=direction_cosine,
        refusal_direction_norm=3.0,
        refusal_features=features,
        reconstructions=[Reconstruction(4, "current", [1, 2, 3, 4], [0.5, 0.2, 0.1, 0.1], 0.3, 0.85)],
    )
    scored = harmful_refusal is not None
    rates = {"harmful": harmful_refusal, "harmless": harmless_refusal}
    # Read every evaluation, without generation: present whether or not this one generated.
    probability = {"harmful": 0.9 if harmful_refusal is None else 0.9 * harmful_refusal, "harmless": harmless_probability}
    logodds = {"harmful": 2.2, "harmless": -3.2}
    if borderline is not None:
        rates["borderline"], probability["borderline"] = borderline
        logodds["borderline"] = -1.0
    return EvaluationReport(
        step=step,
        timestamp=time.time() if timestamp is None else timestamp,
        layers={layer: layer_report},
        refusal_rate=rates if scored else None,
        refusal_token_probability=probability,
        refusal_token_logodds=logodds,
        refusal_rate_reference=reference_refusal,
        refusal_token_probability_reference=reference_probability,
        safety_score=harmful_refusal,
        judge="refusal" if scored else None,
        kl_mean=kl_mean,
        kl_p95=0.4,
        timings={"total": 1.5},
        monitoring_goal="guard",  # a hand-built aligned model whose refusal must hold
    )
