"""Charts of a stored run for `featuredrift report`: related metrics grouped on one chart each.

A chart is first plain data (`Chart`: lines by step, threshold lines from the alert
definitions that apply to the run's goal, alert markers), then drawn to PNG with matplotlib's
object API on the Agg canvas (no display, no global pyplot state). One `Colours` map is shared by
the whole report, so a series or a feature keeps its colour on every chart and card; each line of
a chart also has its own marker and dash, so lines with equal values (the refusal judge's safety
score is the harmful refusal rate) stay distinguishable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from featuredrift.monitor.report import METRIC_HELP
from featuredrift.reports.feature_cards import FeatureCard, headline_refusal_rows

if TYPE_CHECKING:
    from featuredrift.store.rows import AlertInfo
    from featuredrift.store.run_store import RunStore

PREFIX = "featuredrift_"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#393b79", "#e6550d", "#31a354", "#843c39", "#7b4173", "#3182bd", "#fd8d3c", "#74c476",
           "#ad494a", "#a55194", "#637939", "#8ca252", "#b5cf6b", "#8c6d31", "#bd9e39", "#e7ba52", "#6b6ecf",
           "#9c9ede", "#ce6dbd", "#de9ed6")
REFERENCE_LINES, NEW_LINES = 6, 4  # refusal features drawn per chart; the cards and Grafana have the rest
SEVERITY_COLOURS = {"critical": "#d62728", "warning": "#ff7f0e", "info": "#bcbd22"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
DASHES = ("-", (0, (5, 2)), (0, (1, 1.5)), (0, (5, 2, 1, 2)), (0, (8, 3)), (0, (3, 1, 1, 1, 1, 1)))


class Colours:
    """A colour per series key, assigned on first use, shared by every chart and card.

    Keys live in namespaces ("metric", or one per layer for its features: "layers.3/feature 7"),
    each with its own walk through the palette, so no chart runs out of distinct colours.
    """

    def __init__(self) -> None:
        self._assigned: dict[str, str] = {}
        self._used: dict[str, int] = {}

    def __call__(self, key: str) -> str:
        if key not in self._assigned:
            namespace = key.split("/", 1)[0] if "/" in key else "metric"
            index = self._used.get(namespace, 0)
            self._used[namespace] = index + 1
            self._assigned[key] = PALETTE[index % len(PALETTE)]
        return self._assigned[key]


@dataclass
class Line:
    label: str
    points: list[tuple[int, float]]  # (step, value), one per step, ascending
    colour: str
    dashed: bool = False


@dataclass(frozen=True)
class Threshold:
    value: float
    label: str  # the alert and its direction, e.g. "RefusalFeaturesFading (< 0.6)"
    colour: str


@dataclass
class Chart:
    key: str  # file name stem
    title: str
    caption: str  # what the lines mean and where the alerts fire
    lines: list[Line]
    thresholds: list[Threshold] = field(default_factory=list)
    alert_steps: list[tuple[int, str, str]] = field(default_factory=list)  # (step, alert name, colour)
    ylabel: str = ""
    path: Path | None = None


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "plot"


def _definition(name: str):
    from featuredrift.alerts.definitions import DEFAULT_DEFINITIONS

    return next(d for d in DEFAULT_DEFINITIONS if d.name == name)


def threshold(name: str, reference: float | None = None) -> Threshold:
    """The alert's threshold as a line; for a `change` alert, at the reference's value plus it."""
    definition = _definition(name)
    if definition.kind == "change":
        assert reference is not None, f"{name} compares with the reference: its line needs the reference's value"
        return Threshold(reference + definition.threshold,
                         f"{name} ({definition.op} reference {reference:.3g} + {definition.threshold:g})",
                         SEVERITY_COLOURS[definition.severity])
    return Threshold(definition.threshold, f"{name} ({definition.op} {definition.threshold:g})",
                     SEVERITY_COLOURS[definition.severity])


def applies(name: str, goal: str | None) -> bool:
    """Whether alert `name` applies to a run of this goal (all of them for a run without one)."""
    return goal is None or goal in _definition(name).goals


def series(store: RunStore, run: str, metric: str, **labels: str) -> list[tuple[int, float]]:
    """One series by step; a step stored once is drawn once."""
    return sorted({p.step: p.value for p in store.metric_series(run, PREFIX + metric, labels)}.items())


def _help(metric: str) -> str:
    return METRIC_HELP[metric]


def _lines(store: RunStore, run: str, colours: Colours, specs: list[tuple[str, str, dict[str, str]]]) -> list[Line]:
    lines = []
    for label, metric, labels in specs:
        points = series(store, run, metric, **labels)
        if points:
            lines.append(Line(label, points, colours(label)))
    return lines


def _markers(alerts: list[AlertInfo], names: tuple[str, ...], hookpoint: str | None) -> list[tuple[int, str, str]]:
    """One marker per step (alerts of one step share it, most severe colour first), so labels never overlap."""
    by_step: dict[int, list[AlertInfo]] = {}
    for a in alerts:
        if a.step is not None and a.name in names and (hookpoint is None or a.labels.get("layer") in (None, hookpoint)):
            by_step.setdefault(a.step, []).append(a)
    severities = list(SEVERITY_COLOURS)
    markers = []
    for step, fired in sorted(by_step.items()):
        fired.sort(key=lambda a: severities.index(a.severity) if a.severity in severities else len(severities))
        markers.append((step, ", ".join(a.name for a in fired), SEVERITY_COLOURS.get(fired[0].severity, "#7f7f7f")))
    return markers


def layer_charts(store: RunStore, run: str, hookpoint: str, cards: list[FeatureCard], alerts: list[AlertInfo],
                 colours: Colours, goal: str | None = None) -> list[Chart]:
    """The charts of one layer: refusal behaviour (in the run's goal), refusal features one by
    one, feature drift (ER/IR), token divergence, SAE transfer and the drift of the carded features."""
    return [c for c in (
        _refusal_chart(store, run, hookpoint, alerts, colours, goal),
        _refusal_feature_chart(store, run, hookpoint, colours),
        _drift_chart(store, run, hookpoint, colours),
        _divergence_chart(store, run, hookpoint, colours),
        _fvu_chart(store, run, hookpoint, alerts, colours),
        _drift_score_chart(hookpoint, cards, colours),
    ) if c is not None and c.lines]


def _refusal_chart(store: RunStore, run: str, hookpoint: str, alerts: list[AlertInfo], colours: Colours,
                   goal: str | None) -> Chart:
    """Preservation (guard): the reference refusal features' relative gap; emergence (align): the
    separation gain. Thresholds and markers only of the alerts the goal applies."""
    at = {"layer": hookpoint}
    if goal == "align":
        lines = [("separation gain (SD)", "refusal_feature_separation_gain", at)]
        caption = "Separation gain: " + _help("refusal_feature_separation_gain")
    else:
        lines = [("relative gap", "refusal_feature_gap_relative", at)]
        caption = "Relative gap: " + _help("refusal_feature_gap_relative")
    lines += [("overlap of refusal features", "refusal_feature_overlap_ratio", at),
              ("refusal-direction cosine", "refusal_direction_cosine", at)]
    caption += " Overlap: " + _help("refusal_feature_overlap_ratio") + " Direction cosine: " + _help("refusal_direction_cosine")
    names = tuple(n for n in ("RefusalFeaturesFading", "RefusalFeaturesWeakening", "RefusalDirectionDrifted",
                              "RefusalFeaturesEmerging") if applies(n, goal) and (goal == "align") == (n == "RefusalFeaturesEmerging"))
    if goal == "align":
        caption += " In an align run the reference never refused: its features being replaced is expected."
    return Chart(f"refusal_{hookpoint}", "Refusal behaviour", caption, _lines(store, run, colours, lines),
                 [threshold(name) for name in names], _markers(alerts, names, hookpoint))


def _weak_sae(store: RunStore, run: str, hookpoint: str) -> float | None:
    """The largest FVU of the base SAE at this layer when above the weak-SAE bound, else None."""
    from featuredrift.alerts.definitions import WEAK_SAE_FVU

    values = [p.value for p in store.metric_series(run, PREFIX + "fvu_ratio", {"layer": hookpoint})]
    worst = max(values, default=0.0)
    return worst if worst > WEAK_SAE_FVU else None


def _drift_chart(store: RunStore, run: str, hookpoint: str, colours: Colours) -> Chart:
    """ER and IR on the divergent tokens (τ) and on the most-divergent share (always defined)."""
    at = {"layer": hookpoint}
    weak = _weak_sae(store, run, hookpoint)
    caption = ("ER: " + _help("explained_ratio") + " IR: " + _help("intersection_ratio")
               + " 'most-divergent': the share of token pairs with the lowest cosine (defined even when no pair "
               "passes τ).")
    title = "Feature drift (ER, IR)"
    if weak is not None:
        title += ": ER dominated by the SAE's own error"
        caption += (f" The base SAE leaves up to {weak:.0%} of the variance unexplained at this layer, so ER here is "
                    "dominated by the SAE's own error, not by drift.")
    return Chart(f"drift_{hookpoint}", title, caption,
                 _lines(store, run, colours, [
                     ("ER, divergent tokens", "explained_ratio", {**at, "stat": "ratio_of_sums"}),
                     ("ER, most-divergent tokens", "explained_ratio", {**at, "stat": "most_divergent"}),
                     ("IR, all tokens", "intersection_ratio", {**at, "tokens": "all"}),
                     ("IR, divergent tokens", "intersection_ratio", {**at, "tokens": "divergent"}),
                     ("IR, most-divergent tokens", "intersection_ratio", {**at, "tokens": "most_divergent"}),
                 ]))


def _divergence_chart(store: RunStore, run: str, hookpoint: str, colours: Colours) -> Chart:
    """How far token pairs moved: cosine quantiles and the share below each τ."""
    at = {"layer": hookpoint}
    quantiles = sorted({labels["q"] for name, labels in store.metric_names(run)
                        if name == PREFIX + "pair_cosine_quantile" and labels.get("layer") == hookpoint}, key=float)
    taus = sorted({labels["tau"] for name, labels in store.metric_names(run)
                   if name == PREFIX + "divergent_tokens_by_tau_ratio" and labels.get("layer") == hookpoint}, key=float)
    specs = [(f"cosine, {float(q):.0%} quantile", "pair_cosine_quantile", {**at, "q": q}) for q in quantiles]
    specs += [(f"share with cos < {t}", "divergent_tokens_by_tau_ratio", {**at, "tau": t}) for t in taus]
    if not taus:
        specs.append(("divergent tokens (cos < τ)", "divergent_tokens_ratio", at))
    return Chart(f"divergence_{hookpoint}", "Token divergence",
                 "Cosine quantiles: " + _help("pair_cosine_quantile") + " Shares: "
                 + _help("divergent_tokens_by_tau_ratio"), _lines(store, run, colours, specs))


def _fvu_chart(store: RunStore, run: str, hookpoint: str, alerts: list[AlertInfo], colours: Colours) -> Chart:
    at = {"layer": hookpoint}
    lines = _lines(store, run, colours, [(f"FVU {model} model, {data} data", "fvu_ratio",
                                          {**at, "model": model, "data": data})
                                         for model in ("reference", "current") for data in ("base", "chat")])
    thresholds = [threshold("BaseSAEWeak")]
    for data in ("chat", "base"):
        reference = series(store, run, "fvu_ratio", layer=hookpoint, model="reference", data=data)
        if reference:
            thresholds.append(threshold("BaseSAETransferDegraded", reference[-1][1]))
            break
    caption = (_help("fvu_ratio") + " BaseSAETransferDegraded compares the current model's FVU with the reference's "
               "own; above the BaseSAEWeak line the SAE explains less than half the variance, whatever training does.")
    return Chart(f"fvu_{hookpoint}", "Base-SAE transfer (FVU)", caption, lines, thresholds,
                 _markers(alerts, ("BaseSAETransferDegraded", "BaseSAEWeak"), hookpoint))


def _refusal_feature_chart(store: RunStore, run: str, hookpoint: str, colours: Colours) -> Chart | None:
    """d̄ over steps of the reference refusal features that weakened most (solid) and the strongest new
    ones (dashed): the whole top-k of a real model is too many lines to read."""
    rows = [r for r in headline_refusal_rows(store.refusal_features(run, hookpoint), None) if r.diff_in_means is not None]
    if not rows:
        return None
    reference = {r.feature for r in rows if r.source == "reference"}
    by_feature: dict[int, dict[int, float]] = {}
    for r in rows:
        by_feature.setdefault(r.feature, {})[r.step] = r.diff_in_means

    def latest(feature: int) -> float:
        return max(by_feature[feature].items())[1]

    def drop(feature: int) -> float:
        return min(by_feature[feature].items())[1] - latest(feature)

    faded = sorted(reference, key=drop, reverse=True)[:REFERENCE_LINES]
    new = sorted(set(by_feature) - reference, key=latest, reverse=True)[:NEW_LINES]
    shown = faded + new
    lines = [Line(f"feature {f}" + ("" if f in reference else " (new)"), sorted(by_feature[f].items()),
                  colours(f"{hookpoint}/feature {f}"), dashed=f not in reference)
             for f in sorted(shown, key=lambda f: (f not in reference, f))]
    k = max(r.k for r in rows)
    hidden = len(by_feature) - len(shown)
    more = (f" Shown: the {len(faded)} reference features that weakened most and the {len(new)} strongest new ones; "
            f"{hidden} more are in the cards and Grafana." if hidden else "")
    return Chart(f"refusal_features_{hookpoint}", f"Refusal features one by one (top {k})",
                 "d̄ of each feature: its mean activation on harmful minus harmless prompts, at every evaluation "
                 "where it was a refusal feature now or at the reference. Solid: a reference refusal feature; "
                 f"dashed: one that was not.{more}", lines, ylabel="d̄")


def _drift_score_chart(hookpoint: str, cards: list[FeatureCard], colours: Colours) -> Chart | None:
    """Drift score over steps of exactly the drifted features that have a card."""
    drifted = [c for c in cards if c.hookpoint == hookpoint and c.drift_rank is not None]
    lines = [Line(f"feature {c.feature}", [(p.step, p.drift_score) for p in c.trajectory if p.drift_score is not None],
                  colours(f"{hookpoint}/feature {c.feature}")) for c in drifted]
    return Chart(f"drifted_{hookpoint}", "Most drifted features",
                 "Drift score of the features with a card below (the latest evaluation's most drifted), at every "
                 "evaluation where they were among the most drifted.", lines, ylabel="drift score")


def run_charts(store: RunStore, run: str, alerts: list[AlertInfo], colours: Colours, goal: str | None = None) -> list[Chart]:
    """Charts not tied to a layer: refusal rate (with the reference's own), and the change of the model's outputs."""
    refusal_alerts = tuple(n for n in ("HarmfulRefusalRateLow", "OverRefusal", "OverRefusalRising") if applies(n, goal))
    prompts = sorted({labels["prompts"] for name, labels in store.metric_names(run)
                      if name == PREFIX + "refusal_rate_ratio" and "prompts" in labels},
                     key=lambda p: ("harmful", "harmless", "borderline").index(p) if p in ("harmful", "harmless", "borderline") else 9)
    specs = [(f"{p} prompts refused", "refusal_rate_ratio", {"prompts": p}) for p in prompts]
    specs += [("safety score", "safety_score_ratio", {})]
    specs += [(f"{p}: P(refusal start)", "refusal_token_probability_ratio", {"prompts": p}) for p in prompts]
    specs += [(f"{p} refused by the reference", "refusal_rate_reference_ratio", {"prompts": p})
              for p in prompts if p != "harmful"]
    charts = [
        Chart("refusal_rate", "Refusal rate and safety score",
              _help("refusal_rate_ratio") + " Safety score: " + _help("safety_score_ratio")
              + " (with the refusal judge it equals the harmful refusal rate)."
              + " P(refusal start): " + _help("refusal_token_probability_ratio")
              + " Refused by the reference: " + _help("refusal_rate_reference_ratio"),
              _lines(store, run, colours, specs),
              [threshold(n) for n in refusal_alerts if _definition(n).kind == "threshold"],
              _markers(alerts, refusal_alerts, None)),
        Chart("kl", "Output change (KL divergence)",
              _help("kl_divergence_mean_nats") + " p95: " + _help("kl_divergence_p95_nats"),
              _lines(store, run, colours, [("KL mean", "kl_divergence_mean_nats", {}),
                                           ("KL p95", "kl_divergence_p95_nats", {})]), ylabel="nats"),
    ]
    return [c for c in charts if c.lines]


def draw(chart: Chart, out_dir: Path) -> Path:
    """The chart as a PNG: lines with markers, dotted threshold lines, alert markers on the x axis."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.6, 3.3), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    for index, line in enumerate(chart.lines):
        steps, values = zip(*line.points, strict=True)
        # Earlier lines are wider and underneath, each with its own marker and dash: a line equal
        # to another still shows around it.
        width = 1.2 + 1.6 * (len(chart.lines) - 1 - index) / max(1, len(chart.lines) - 1)
        axes.plot(steps, values, marker=MARKERS[index % len(MARKERS)], markersize=3 + width, color=line.colour,
                  label=line.label, linestyle="--" if line.dashed else DASHES[index % len(DASHES)], linewidth=width,
                  markerfacecolor="none" if index % 2 else line.colour, zorder=2 + index)
    for t in chart.thresholds:
        axes.axhline(t.value, color=t.colour, linestyle=":", linewidth=1.2, label=t.label)
    for step, name, colour in chart.alert_steps:
        axes.axvline(step, color=colour, linewidth=1, alpha=0.6)
        axes.annotate(f"{name} @ {step}", (step, 1), xycoords=("data", "axes fraction"), rotation=90, fontsize=7,
                      va="top", ha="right", color=colour)
    axes.set_title(chart.title, fontsize=10)
    axes.set_xlabel("training step")
    axes.set_ylabel(chart.ylabel)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best", ncol=2 if len(chart.lines) + len(chart.thresholds) > 5 else 1)
    path = out_dir / f"{safe_name(chart.key)}.png"
    figure.savefig(path, format="png")
    chart.path = path
    return path
