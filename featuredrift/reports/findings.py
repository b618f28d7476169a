"""Findings of a stored run in plain words: what a reader needs before any chart.

Each finding is one sentence with its evidence (steps and values), and a tone (`alarm`,
`notice`, `ok`) the report colours it by. Sources: the feature cards, the stored metric series
and the alerts; nothing here draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from featuredrift.reports.feature_cards import FeatureCard
    from featuredrift.store.run_store import RunStore

PREFIX = "featuredrift_"


def alert_threshold(name: str) -> float:
    """The default threshold of alert `name` (alerts/definitions.py is the one source)."""
    from featuredrift.alerts.definitions import DEFAULT_DEFINITIONS

    return next(d.threshold for d in DEFAULT_DEFINITIONS if d.name == name)


@dataclass(frozen=True)
class Finding:
    title: str
    text: str
    tone: str = "notice"  # "alarm", "notice" or "ok"


def _series(store: RunStore, run: str, metric: str, **labels: str) -> list[tuple[int, float]]:
    """One series by step (the newest value per step), oldest first."""
    by_step = {p.step: p.value for p in store.metric_series(run, PREFIX + metric, labels)}
    return sorted(by_step.items())


def _percent(value: float) -> str:
    """Whole percents, but two significant digits for rare events (a feature firing on 0.3% of tokens)."""
    percent = 100 * value
    return f"{percent:.0f}%" if percent >= 10 or percent == 0 else f"{percent:.2g}%"


def _ids(features: list[int], shown: int = 8) -> str:
    text = ", ".join(str(f) for f in features[:shown])
    return text + (f" and {len(features) - shown} more" if len(features) > shown else "")


def drift_finding(cards: list[FeatureCard]) -> Finding | None:
    drifted = [c for c in cards if c.drift_score is not None]
    if not drifted:
        return None
    top = max(drifted, key=lambda c: c.drift_score)
    firing = max(top.firing, key=lambda f: abs((f.freq_now or 0) - (f.freq_reference or 0)), default=None)
    change = ""
    if firing is not None and None not in (firing.freq_reference, firing.freq_now):
        change = (f": on {firing.subset} prompts it fires on {_percent(firing.freq_now)} of tokens "
                  f"(reference {_percent(firing.freq_reference)})")
        if None not in (firing.mean_reference, firing.mean_now):
            change += f", mean activation {firing.mean_now:.3g} (reference {firing.mean_reference:.3g})"
    return Finding("What drifted most",
                   f"Feature {top.feature} at {top.hookpoint} drifted most by step {top.step} "
                   f"(drift score {top.drift_score:.3g}){change}. Its card is below.")


def refusal_feature_findings(cards: list[FeatureCard]) -> list[Finding]:
    findings = []
    for hookpoint in sorted({c.hookpoint for c in cards}):
        layer = [c for c in cards if c.hookpoint == hookpoint]
        fading = [c for c in layer if c.refusal_status == "fading"]
        emerging = [c for c in layer if c.refusal_status == "emerging"]
        reference = [c for c in layer if c.refusal_rank_reference is not None]
        if fading:
            names = _ids([c.feature for c in fading])
            verb = "is" if len(fading) == 1 else "are"
            findings.append(Finding(f"Refusal features fading at {hookpoint}",
                                    f"{len(fading)} of the {len(reference)} reference refusal features ({names}) "
                                    f"{verb} no longer among the top {len(reference)} refusal features.", "alarm"))
        if emerging:
            first = {c.feature: next(p.step for p in c.trajectory if p.in_refusal_top_k) for c in emerging}
            names = _ids([f"{f} (since step {step})" for f, step in first.items()])
            findings.append(Finding(f"Refusal features emerging at {hookpoint}",
                                    f"New refusal features not present at the reference: {names}."))
        if reference and not fading and not emerging:
            findings.append(Finding(f"Refusal features held at {hookpoint}",
                                    f"All {len(reference)} reference refusal features are still the top refusal "
                                    "features.", "ok"))
    return findings


def gap_findings(store: RunStore, run: str, hookpoints: list[str]) -> list[Finding]:
    findings = []
    for hookpoint in hookpoints:
        points = _series(store, run, "refusal_feature_gap_relative", layer=hookpoint)
        if not points:
            continue
        step, value = points[-1]
        fading, weakening = alert_threshold("RefusalFeaturesFading"), alert_threshold("RefusalFeaturesWeakening")
        tone = "alarm" if value < fading else "notice" if value < weakening else "ok"
        findings.append(Finding(f"Refusal-feature strength at {hookpoint}",
                                f"At step {step} the reference refusal features separate harmful from harmless "
                                f"prompts {value:.2f}× as strongly as at the reference (1 = unchanged).", tone))
    return findings


def refusal_rate_finding(store: RunStore, run: str) -> Finding | None:
    harmful = _series(store, run, "refusal_rate_ratio", prompts="harmful")
    harmless = _series(store, run, "refusal_rate_ratio", prompts="harmless")
    if not harmful:
        return None
    (first_step, first), (last_step, last) = harmful[0], harmful[-1]
    text = f"Harmful prompts refused: {_percent(first)} at step {first_step}, {_percent(last)} at step {last_step}."
    if harmless:
        text += f" Harmless prompts refused: {_percent(harmless[0][1])} → {_percent(harmless[-1][1])}."
    borderline = _series(store, run, "refusal_rate_ratio", prompts="borderline")
    if borderline:
        text += f" Borderline prompts (over-refusal) refused: {_percent(borderline[0][1])} → {_percent(borderline[-1][1])}."
    low = alert_threshold("HarmfulRefusalRateLow")
    tone = "alarm" if last < low else "notice" if last < first - 0.1 else "ok"
    return Finding("Refusal rate", text, tone)


def alert_findings(store: RunStore, run: str) -> list[Finding]:
    findings = []
    for alert in store.alerts(run):
        where = ", ".join(f"{k}={v}" for k, v in sorted(alert.labels.items()))
        at = f"fired at step {alert.step}" if alert.step is not None else "fired"
        until = (f", resolved at step {alert.resolved_step}" if alert.resolved_step is not None
                 else ", resolved" if alert.status == "resolved" else ", still firing")
        tone = "alarm" if alert.severity == "critical" else "notice"
        findings.append(Finding(f"Alert {alert.name} ({alert.severity})",
                                f"{at}{until}{' on ' + where if where else ''}. {alert.message}".strip(), tone))
    return findings


def run_findings(store: RunStore, run: str, cards: list[FeatureCard]) -> list[Finding]:
    """The report's opening: alerts first, then refusal behaviour, then feature drift."""
    hookpoints = sorted({labels["layer"] for name, labels in store.metric_names(run) if "layer" in labels})
    found: list[Finding | None] = [
        *alert_findings(store, run),
        refusal_rate_finding(store, run),
        *gap_findings(store, run, hookpoints),
        *refusal_feature_findings(cards),
        drift_finding(cards),
    ]
    return [f for f in found if f is not None]
