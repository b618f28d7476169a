"""Findings of a stored run in plain words, told in the run's goal: what a reader needs before any chart.

Each finding is one sentence with its evidence (steps and values), and a tone the report colours
it by: `alarm`, `notice`, `ok`, or `neutral` (what the goal expects, shown without alarm). The
goal decides the story. A `guard` run (an aligned model that must keep refusing) is about
preservation: fading and weakening refusal features and a falling refusal rate are alarms. An
`align` run (refusal should emerge) is about emergence: the separation gain of the refusal
features, new refusal features and the refusal rate rising; the reference's refusal features
being replaced is expected there, never an alarm. Over-refusal matters to both. Sources: the
feature cards, the stored metric series, the alerts, checkpoints and the data audit; nothing
here draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from featuredrift.reports.feature_cards import FeatureCard
    from featuredrift.store.rows import RunInfo
    from featuredrift.store.run_store import RunStore

PREFIX = "featuredrift_"
TONES = ("alarm", "notice", "ok", "neutral")
OVER_REFUSAL_PROMPTS = ("borderline", "harmless")  # what the over-refusal alerts read, in order of preference


def definition(name: str):
    """The shipped definition of alert `name` (alerts/definitions.py is the one source)."""
    from featuredrift.alerts.definitions import DEFAULT_DEFINITIONS

    return next(d for d in DEFAULT_DEFINITIONS if d.name == name)


def alert_threshold(name: str) -> float:
    return definition(name).threshold


@dataclass(frozen=True)
class Finding:
    title: str
    text: str
    tone: str = "notice"  # one of TONES


@dataclass(frozen=True)
class RunGoal:
    goal: str | None  # guard | align | off | None (not recorded)
    reason: str

    @property
    def preserving(self) -> bool:
        """Guard, or a run recorded before goals: fading refusal is an alarm."""
        return self.goal in ("guard", None)


def _series(store: RunStore, run: str, metric: str, **labels: str) -> list[tuple[int, float]]:
    """One series by step (the newest value per step), oldest first."""
    by_step = {p.step: p.value for p in store.metric_series(run, PREFIX + metric, labels)}
    return sorted(by_step.items())


def _by_layer(store: RunStore, run: str, metric: str, hookpoints: list[str]):
    """(hookpoint, its series) for each layer that has the metric."""
    for hookpoint in hookpoints:
        points = _series(store, run, metric, layer=hookpoint)
        if points:
            yield hookpoint, points


def _percent(value: float) -> str:
    """Whole percents, but two significant digits for rare events (a feature firing on 0.3% of tokens)."""
    percent = 100 * value
    return f"{percent:.0f}%" if percent >= 10 or percent == 0 else f"{percent:.2g}%"


def _ids(features: list, shown: int = 8) -> str:
    text = ", ".join(str(f) for f in features[:shown])
    return text + (f" and {len(features) - shown} more" if len(features) > shown else "")


def run_goal(store: RunStore, run: str, info: RunInfo | None = None) -> RunGoal:
    """The goal the alert engine chose for the run and why (older runs: from the stored goal gauge)."""
    info = info or store.get_run(run)
    if info.extra.get("monitoring_goal"):
        return RunGoal(info.extra["monitoring_goal"], info.extra.get("goal_reason") or "")
    goals = sorted({labels["goal"] for name, labels in store.metric_names(run)
                    if name == PREFIX + "monitoring_goal" and "goal" in labels})
    return RunGoal(goals[-1], "recorded with its evaluations") if goals else RunGoal(None, "not recorded for this run")


GOAL_STORIES = {
    "guard": "an aligned model must keep refusing harmful requests: fading refusal features and a falling "
             "refusal rate are the alarms, and refusing safe requests is the other failure to watch.",
    "align": "refusal should emerge: the story is the refusal features' separation gain, new refusal features and "
             "the refusal rate rising; the reference's own refusal features being replaced is expected, and "
             "refusing safe requests is the failure to watch.",
    "off": "no alerts apply; the findings below are shown without judgement.",
}


def goal_finding(goal: RunGoal) -> Finding:
    if goal.goal is None:
        return Finding("Monitoring goal not recorded", "This run was stored without a monitoring goal; refusal is "
                       "read as something to preserve.", "neutral")
    return Finding(f"Monitoring goal: {goal.goal}", f"{goal.reason[:1].upper() + goal.reason[1:]}. In a {goal.goal} "
                   f"run {GOAL_STORIES.get(goal.goal, '')}".strip(), "neutral")


def status_finding(info: RunInfo) -> Finding | None:
    """A run that failed or fell silent says so before anything else."""
    error = info.extra.get("error")
    if info.status == "failed":
        what = f"{error.get('type')}: {error.get('message')}" if isinstance(error, dict) else "an error"
        return Finding("Training failed", f"The run ended failed at step {info.last_step}: {what}.", "alarm")
    if info.stale():
        from featuredrift.store.rows import duration_text

        return Finding("Run stale", f"The run is still 'running' on record but no event came for "
                       f"{duration_text(info.silent_for())} (expected every {duration_text(info.expected_interval_s)}): "
                       "most likely it died (killed, or its machine was lost). Its history is kept as recorded.", "alarm")
    return None


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
                   f"(drift score {top.drift_score:.3g}){change}. Its card is below.", "neutral")


def refusal_feature_findings(cards: list[FeatureCard], goal: RunGoal) -> list[Finding]:
    findings = []
    for hookpoint in sorted({c.hookpoint for c in cards}):
        layer = [c for c in cards if c.hookpoint == hookpoint]
        fading = [c for c in layer if c.refusal_status == "fading"]
        emerging = [c for c in layer if c.refusal_status == "emerging"]
        reference = [c for c in layer if c.refusal_rank_reference is not None]
        if fading:
            names = _ids([c.feature for c in fading])
            verb = "is" if len(fading) == 1 else "are"
            text = (f"{len(fading)} of the {len(reference)} reference refusal features ({names}) {verb} no longer "
                    f"among the top {len(reference)} refusal features.")
            if goal.preserving:
                findings.append(Finding(f"Refusal features fading at {hookpoint}", text, "alarm"))
            else:
                findings.append(Finding(f"Reference refusal features replaced at {hookpoint} (expected)",
                                        text + " Expected when refusal emerges: the reference never refused, so its "
                                        "top features were not refusal features to keep.", "neutral"))
        if emerging:
            first = {c.feature: next(p.step for p in c.trajectory if p.in_refusal_top_k) for c in emerging}
            names = _ids([f"{f} (since step {step})" for f, step in first.items()])
            findings.append(Finding(f"Refusal features emerging at {hookpoint}",
                                    f"New refusal features not present at the reference: {names}.",
                                    "notice" if goal.preserving else "ok"))
        if reference and not fading and not emerging:
            findings.append(Finding(f"Refusal features held at {hookpoint}",
                                    f"All {len(reference)} reference refusal features are still the top refusal "
                                    "features.", "ok" if goal.preserving else "neutral"))
    return findings


def gap_findings(store: RunStore, run: str, hookpoints: list[str], goal: RunGoal) -> list[Finding]:
    """Preservation: how strongly the reference refusal features still separate harmful from
    harmless prompts (guard). In align runs the reference's gap is the base model's and its
    relative gap divides by noise: omitted."""
    if not goal.preserving:
        return []
    findings = []
    for hookpoint, points in _by_layer(store, run, "refusal_feature_gap_relative", hookpoints):
        step, value = points[-1]
        fading, weakening = alert_threshold("RefusalFeaturesFading"), alert_threshold("RefusalFeaturesWeakening")
        tone = "alarm" if value < fading else "notice" if value < weakening else "ok"
        findings.append(Finding(f"Refusal-feature strength at {hookpoint}",
                                f"At step {step} the reference refusal features separate harmful from harmless "
                                f"prompts {value:.2f}× as strongly as at the reference (1 = unchanged).", tone))
    return findings


def separation_findings(store: RunStore, run: str, hookpoints: list[str], goal: RunGoal) -> list[Finding]:
    """Emergence: how much more clearly the refusal features now tell harmful from harmless (align)."""
    if goal.goal != "align":
        return []
    threshold = alert_threshold("RefusalFeaturesEmerging")
    findings = []
    for hookpoint, points in _by_layer(store, run, "refusal_feature_separation_gain", hookpoints):
        step, gain = points[-1]
        best_step, best = max(points, key=lambda p: p[1])
        peak = f", largest {best:+.2f} at step {best_step}" if best_step != step and best > gain + 0.1 else ""
        tone = "ok" if gain > threshold else "neutral"
        findings.append(Finding(f"Refusal emerging at {hookpoint}" if gain > threshold else f"Refusal separation at {hookpoint}",
                                f"At step {step} the top refusal features separate harmful from harmless prompts by "
                                f"{gain:+.2f} pooled standard deviations more than the reference's own top features"
                                f"{peak} (RefusalFeaturesEmerging from {threshold:g}).", tone))
    return findings


def refusal_rate_finding(store: RunStore, run: str, goal: RunGoal) -> Finding | None:
    harmful = _series(store, run, "refusal_rate_ratio", prompts="harmful")
    if not harmful:
        return None
    (first_step, first), (last_step, last) = harmful[0], harmful[-1]
    text = f"Harmful prompts refused: {_percent(first)} at step {first_step}, {_percent(last)} at step {last_step}."
    if goal.preserving:
        low = alert_threshold("HarmfulRefusalRateLow")
        tone = "alarm" if last < low else "notice" if last < first - 0.1 else "ok"
    else:
        tone = "ok" if last > first + 0.1 else "neutral"
    return Finding("Refusal rate", text, tone)


def over_refusal_finding(store: RunStore, run: str) -> Finding | None:
    """Refusing safe requests, on the prompts the over-refusal alerts read: the generated rate
    against the reference's own, and the logit score beside it (every evaluation)."""
    for prompts in OVER_REFUSAL_PROMPTS:
        rates = _series(store, run, "refusal_rate_ratio", prompts=prompts)
        scores = _series(store, run, "refusal_token_probability_ratio", prompts=prompts)
        if rates or scores:
            break
    else:
        return None
    reference_rate = _series(store, run, "refusal_rate_reference_ratio", prompts=prompts)
    reference_score = _series(store, run, "refusal_token_probability_reference_ratio", prompts=prompts)
    parts, tone = [], "ok"
    if rates:
        base = reference_rate[-1][1] if reference_rate else rates[0][1]
        where = "the reference" if reference_rate else f"step {rates[0][0]}"
        (last_step, last), (peak_step, peak) = rates[-1], max(rates, key=lambda p: p[1])
        text = f"{prompts.capitalize()} prompts refused: {_percent(base)} at {where}, {_percent(last)} at step {last_step}"
        if peak_step != last_step and peak > last + 0.1:
            text += f" (peak {_percent(peak)} at step {peak_step})"
        parts.append(text)
        if last - base > alert_threshold("OverRefusal"):
            tone = "alarm"
        elif peak - base > alert_threshold("OverRefusal"):
            tone = "notice"
    if scores:
        base = reference_score[-1][1] if reference_score else scores[0][1]
        last_step, last = scores[-1]
        parts.append(f"the probability of a refusal-starting reply on them {base:.3f} → {last:.3f} (step {last_step})")
        if last - base > alert_threshold("OverRefusalRising") and tone == "ok":
            tone = "notice"
    return Finding("Over-refusal", "; ".join(parts) + ".", tone)


def sae_quality_findings(store: RunStore, run: str, hookpoints: list[str]) -> list[Finding]:
    """A weak SAE, said once as a property of the SAE (the reference's own FVU), never as drift."""
    from featuredrift.alerts.definitions import WEAK_SAE_FVU

    findings = []
    for hookpoint in hookpoints:
        fvu = reference_fvu(store, run, hookpoint)
        if fvu is None or fvu[1] <= WEAK_SAE_FVU:
            continue
        data, value = fvu
        explains = f"explains only {_percent(1 - value)} of the variance" if value < 1 else "explains none of the variance"
        findings.append(Finding(f"Weak base SAE at {hookpoint}",
                                f"The base SAE {explains} at the reference (FVU {value:.3g} on {data} probes): a "
                                "property of the SAE, not of the fine-tune. ER and SAE-based readings are dominated by "
                                "its own error; the alerts compare with the reference's values, so they still measure "
                                "what training changed.", "notice"))
    return findings


def reference_fvu(store: RunStore, run: str, hookpoint: str) -> tuple[str, float] | None:
    """(probe data, FVU) of the base SAE on the reference model: chat probes, else base ones."""
    for data in ("chat", "base"):
        points = _series(store, run, "fvu_ratio", layer=hookpoint, model="reference", data=data)
        if points:
            return data, points[-1][1]
    return None


def explained_ratio_findings(store: RunStore, run: str, hookpoints: list[str]) -> list[Finding]:
    """ER on the most-divergent tokens (always defined), with what a weak SAE does to it."""
    from featuredrift.alerts.definitions import WEAK_SAE_FVU

    findings = []
    for hookpoint in hookpoints:
        points = [(s, v) for s, v in _series(store, run, "explained_ratio", layer=hookpoint, stat="most_divergent")
                  if math.isfinite(v)]
        if not points:
            continue
        step, value = points[-1]
        text = (f"At step {step} the base SAE's error on the most-divergent tokens is {value:.2f}× their distance from "
                "the reference (ER; below 1 the base SAE explains the new activations: drift along existing features).")
        fvu = reference_fvu(store, run, hookpoint)
        current = _series(store, run, "fvu_ratio", layer=hookpoint, model="current", data=fvu[0]) if fvu else []
        worst = max(([fvu[1]] if fvu else []) + [v for _, v in current[-1:]], default=0.0)
        tone = "neutral"
        if worst > WEAK_SAE_FVU:
            text += (f" The base SAE leaves {_percent(worst)} of the variance unexplained here, so this ER is dominated "
                     "by the SAE's own error, not by drift.")
            tone = "notice"
        findings.append(Finding(f"Explained ratio at {hookpoint}", text, tone))
    return findings


def alert_findings(store: RunStore, run: str) -> list[Finding]:
    findings = []
    for alert in store.alerts(run):
        where = ", ".join(f"{k}={v}" for k, v in sorted(alert.labels.items()))
        at = f"Fired at step {alert.step}" if alert.step is not None else "Fired"
        until = (f", resolved at step {alert.resolved_step}" if alert.resolved_step is not None
                 else ", resolved" if alert.status == "resolved" else ", still firing")
        tone = {"critical": "alarm", "warning": "notice"}.get(alert.severity, "neutral")
        message = f": {alert.message.rstrip('.')}." if alert.message else "."
        back = f" Last safe checkpoint then: {alert.checkpoint}." if alert.checkpoint else ""
        findings.append(Finding(f"Alert {alert.name} ({alert.severity})",
                                f"{at}{until}{' on ' + where if where else ''}{message}{back}", tone))
    return findings


def checkpoint_finding(store: RunStore, run: str) -> Finding | None:
    """The way back, when a critical alert fired: the newest checkpoint that passed them all."""
    if not any(a.severity == "critical" for a in store.alerts(run)):
        return None
    safe = store.last_safe_checkpoint(run)
    if safe is None:
        saved = store.checkpoints(run)
        why = "none of the saved checkpoints passed every critical alert" if saved else "the run saved no checkpoint"
        return Finding("Last safe checkpoint", f"None: {why}; the model training started from is the way back.", "notice")
    return Finding("Last safe checkpoint", f"{safe.describe()}: the newest saved checkpoint that passed every "
                   "critical alert.", "ok")


def audit_finding(store: RunStore, run: str) -> Finding | None:
    audits = store.audit(run)
    if not audits:
        return None
    audit = audits[0]
    if not audit.examples:
        return Finding("Training-data audit", f"No example could be read: {audit.skipped_reason}.", "neutral")
    eroding = [e for e in audit.examples if e.harmful_request and not e.target_refuses]
    over = [e for e in audit.examples if not e.harmful_request and e.target_refuses]
    text = (f"Of {len(audit.examples)} training examples read (of {audit.dataset_size}), {len(eroding)} answer a "
            f"harmful-looking request compliantly (they erode refusal) and {len(over)} answer a harmless request with a "
            "refusal (they teach over-refusal).")
    for label, examples in (("Most likely to erode refusal", audit.eroding(1)),
                            ("most likely to teach over-refusal", [e for e in audit.over_refusing(1) if not e.harmful_request])):
        if examples:
            e = examples[0]
            text += f" {label}: example {e.example}, “{e.prompt[:80]}” → “{e.target[:80]}”."
    return Finding("Training-data audit", text + " The examples are listed below.", "notice" if eroding or over else "ok")


def run_findings(store: RunStore, run: str, cards: list[FeatureCard]) -> list[Finding]:
    """The report's opening: the goal and why, a failed or silent run, alerts and the way back,
    the SAE's own quality, then the story the goal asks for, the data audit, feature drift."""
    info = store.get_run(run)
    goal = run_goal(store, run, info)
    hookpoints = sorted({labels["layer"] for name, labels in store.metric_names(run) if "layer" in labels})
    found: list[Finding | None] = [
        goal_finding(goal),
        status_finding(info),
        *alert_findings(store, run),
        checkpoint_finding(store, run),
        *sae_quality_findings(store, run, hookpoints),
        refusal_rate_finding(store, run, goal),
        *separation_findings(store, run, hookpoints, goal),
        *gap_findings(store, run, hookpoints, goal),
        *refusal_feature_findings(cards, goal),
        over_refusal_finding(store, run),
        audit_finding(store, run),
        *explained_ratio_findings(store, run, hookpoints),
        drift_finding(cards),
    ]
    return [f for f in found if f is not None]
