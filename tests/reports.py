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
) -> EvaluationReport:
    """A one-layer report; `harmful_refusal=None` leaves out the (costly, occasional) refusal scores.

    `reference_gap` is the reference refusal features' gap at the reference (the relative gap's
    denominator: ~2 for a chat model, ~0.05 for a base model that never refused); `current_gap`
    the gap of the current top refusal features. `current_separation` and `reference_separation`
    are their Cohen's d now and at the reference: the gain is what grows when refusal emerges."""
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
        fvu={"reference/base": 0.1, "reference/chat": 0.15, "current/base": 0.12, "current/chat": fvu_chat},
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
    return EvaluationReport(
        step=step,
        timestamp=time.time() if timestamp is None else timestamp,
        layers={layer: layer_report},
        refusal_rate={"harmful": harmful_refusal, "harmless": 0.05} if scored else None,
        # Read every evaluation, without generation: present whether or not this one generated.
        refusal_token_probability={"harmful": 0.9 if harmful_refusal is None else 0.9 * harmful_refusal, "harmless": 0.04},
        refusal_token_logodds={"harmful": 2.2, "harmless": -3.2},
        safety_score=harmful_refusal,
        judge="refusal" if scored else None,
        kl_mean=kl_mean,
        kl_p95=0.4,
        timings={"total": 1.5},
        monitoring_goal="guard",  # a hand-built aligned model whose refusal must hold
    )
