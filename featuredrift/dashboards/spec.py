"""Grafana dashboards described as a small Python spec, rendered to dashboard JSON.

The JSON under `dashboards/` is generated from here (`featuredrift grafana generate`) and
committed; a test keeps the two in sync. Panels name their datasource through a datasource
template variable (`$datasource` for Prometheus, `$store` for the PostgreSQL run store), so the
dashboards work in any Grafana whatever its datasource uids; the provisioned uids are only the
variables' defaults. Threshold colours come from the alert definitions, so a panel turns red
where its alert fires, on the side where it fires.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from featuredrift.alerts.definitions import DEFAULT_DEFINITIONS, OPERATORS
from featuredrift.dashboards import sql

PROMETHEUS_UID = "featuredrift-prometheus"  # provisioned by deploy/grafana
STORE_UID = "featuredrift-store"
POSTGRES_TYPE = "grafana-postgresql-datasource"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
STORE = {"type": POSTGRES_TYPE, "uid": "${store}"}
DASHBOARD_DIR = Path(__file__).with_name("json")
RUN = 'run=~"$run"'
RUN_LAYER = 'run=~"$run", layer=~"$layer"'
ALERTS = {d.name: d for d in DEFAULT_DEFINITIONS}
ALERT_THRESHOLDS = {name: d.threshold for name, d in ALERTS.items()}
SEVERITY_COLOURS = {"critical": "red", "warning": "orange", "info": "yellow"}
SEVERITY_ORDER = ("info", "warning", "critical")


@dataclass(frozen=True)
class Query:
    expr: str  # PromQL, or SQL for panels on the run store
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    description: str = ""
    unit: str = "none"
    kind: str = "timeseries"  # "timeseries", "table", or "trend" (x = training step)
    min: float | None = None
    max: float | None = None
    alerts: tuple[str, ...] = ()  # alert definitions whose thresholds colour the panel
    width: int = 12
    source: str = "prometheus"  # "prometheus" or "store" (SQL on the run store)


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    tags: tuple[str, ...] = ("featuredrift",)
    source: str = "prometheus"  # where the run and layer variables read their values


def threshold_steps(alert_names: tuple[str, ...]) -> list[dict]:
    """Grafana threshold steps coloured by what the alerts say about each value range.

    Between two consecutive thresholds every value violates the same alerts, so one probe
    value per range decides its colour: green when no alert fires there, else the colour of
    the most severe alert that does. An alert on `<` thus paints the range below its threshold.
    """
    definitions = [ALERTS[name] for name in alert_names]
    jumps = [d.name for d in definitions if d.kind != "threshold"]
    if jumps:
        raise ValueError(f"panel thresholds: expected level alerts (kind 'threshold'), found {jumps}: "
                         "a jump alert compares two evaluations and a change alert a series with its reference "
                         "value, not a level")
    cuts = sorted({d.threshold for d in definitions})
    probes = [cuts[0] - 1] + [(a + b) / 2 for a, b in zip(cuts, cuts[1:], strict=False)] + [cuts[-1] + 1] if cuts else [0]
    steps = []
    for value, probe in zip([None, *cuts], probes, strict=True):
        fired = [d.severity for d in definitions if OPERATORS[d.op](probe, d.threshold)]
        colour = SEVERITY_COLOURS[max(fired, key=SEVERITY_ORDER.index)] if fired else "green"
        if not steps or steps[-1]["color"] != colour:
            steps.append({"color": colour, "value": value})
    return steps


def _datasource_variable(name: str, kind: str, default_uid: str, label: str) -> dict:
    return {
        "name": name,
        "label": label,
        "type": "datasource",
        "query": kind,
        "current": {"selected": False, "text": default_uid, "value": default_uid},
        "regex": "",
        "refresh": 1,
        "hide": 0,
        "multi": False,
        "includeAll": False,
        "options": [],
        "skipUrlSync": False,
    }


def _query_variable(name: str, source: str) -> dict:
    """A multi-value variable of run or layer names. On the run store a store may hold a thousand
    runs: the run picker opens on the newest run (the first value of its query) rather than All."""
    if source == "prometheus":
        datasource = DATASOURCE
        text = {
            "run": "label_values(featuredrift_global_step, run)",
            "layer": 'label_values(featuredrift_divergent_tokens_ratio{run=~"$run"}, layer)',
        }[name]
        query: dict | str = {"query": text, "refId": f"{name}-variable"}
    else:
        datasource = STORE
        query = {"run": sql.RUN_VARIABLE, "layer": sql.LAYER_VARIABLE}[name]
    variable = {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": datasource,
        "query": query,
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1 if source == "prometheus" else 0,
        "hide": 0,
        "options": [],
        "regex": "",
        "skipUrlSync": False,
    }
    if source == "prometheus":
        variable["allValue"] = ".*"  # SQL: All expands to every value, quoted (no allValue)
    elif name == "run":
        del variable["current"]  # Grafana then selects the query's first value: the newest run
    return variable


def variables(source: str) -> list[dict]:
    if source == "prometheus":
        datasource = _datasource_variable("datasource", "prometheus", PROMETHEUS_UID, "Prometheus")
    else:
        datasource = _datasource_variable("store", POSTGRES_TYPE, STORE_UID, "Run store")
    return [datasource, _query_variable("run", source), _query_variable("layer", source)]


def _target(query: Query, ref_id: str, panel: Panel) -> dict:
    if panel.source == "store":
        return {"datasource": STORE, "refId": ref_id, "rawSql": query.expr, "rawQuery": True,
                "editorMode": "code", "format": "table"}
    instant = panel.kind == "table"
    target = {
        "datasource": DATASOURCE,
        "expr": query.expr,
        "legendFormat": query.legend,
        "refId": ref_id,
        "range": not instant,
        "instant": instant,
    }
    if instant:
        target["format"] = "table"
    return target


def _graph_defaults(panel: Panel) -> dict:
    return {
        "drawStyle": "line",
        "lineWidth": 2,
        "pointSize": 5,
        "showPoints": "always",
        "spanNulls": True,
        "thresholdsStyle": {"mode": "line+area" if panel.alerts else "off"},
    }


# (step, series, value) rows become one column per series against the step: what a trend
# panel (x = any numeric field) draws as one line per series.
STEP_TRANSFORMATIONS = [
    {"id": "groupingToMatrix", "options": {"columnField": "series", "rowField": "step", "valueField": "value",
                                           "emptyValue": "null"}},
    {"id": "organize", "options": {"renameByName": {"step\\series": "step"}}},
    {"id": "convertFieldType", "options": {"conversions": [{"targetField": "step", "destinationType": "number"}]}},
]


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict:
    defaults: dict = {"unit": panel.unit, "thresholds": {"mode": "absolute", "steps": threshold_steps(panel.alerts)}}
    if panel.min is not None:
        defaults["min"] = panel.min
    if panel.max is not None:
        defaults["max"] = panel.max
    transformations: list[dict] = []
    if panel.kind in ("timeseries", "trend"):
        defaults["custom"] = _graph_defaults(panel)
        options: dict = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
        if panel.kind == "trend":
            options["xField"] = "step"
            transformations = STEP_TRANSFORMATIONS
    else:
        options = {"showHeader": True, "cellHeight": "sm"}
    rendered = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": STORE if panel.source == "store" else DATASOURCE,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "targets": [_target(q, chr(ord("A") + i), panel) for i, q in enumerate(panel.queries)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
    }
    if transformations:
        rendered["transformations"] = transformations
    return rendered


def render(dashboard: Dashboard) -> dict:
    """Grafana dashboard JSON (the `dashboard` object of the HTTP API / provisioning file)."""
    panels, x, y = [], 0, 0
    for panel_id, panel in enumerate(dashboard.panels, start=1):
        if x + panel.width > 24:
            x, y = 0, y + 8
        panels.append(_panel(panel, panel_id, x, y))
        x += panel.width
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": list(dashboard.tags),
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": variables(dashboard.source)},
        "annotations": {"list": []},
        "links": [
            {"title": "featuredrift", "type": "dashboards", "tags": ["featuredrift"], "asDropdown": False,
             "icon": "external link", "includeVars": True, "keepTime": True, "targetBlank": False, "tooltip": ""}
        ],
        "panels": panels,
    }


def _firing(alertnames: str | None = None) -> Query:
    name = f', alertname=~"{alertnames}"' if alertnames else ""
    return Query(f'ALERTS{{alertstate="firing", {RUN}{name}}}', "{{alertname}} {{run}} {{layer}}")


OVERVIEW = Dashboard(
    uid="featuredrift-overview",
    title="featuredrift: fine-tuning drift overview",
    description="How a fine-tuning run moves the model's SAE features away from the reference model.",
    panels=(
        Panel(
            "Firing alerts",
            (_firing(),),
            "Alerts from alerts/rules.yml currently firing for the selected runs.",
            kind="table",
            width=24,
        ),
        Panel(
            "Base-SAE transfer (FVU)",
            (Query(f"featuredrift_fvu_ratio{{{RUN_LAYER}}}", "{{run}} {{layer}} {{model}}/{{data}}"),),
            "Fraction of variance the frozen base SAE leaves unexplained, per model × probe data. "
            "Rising current/chat FVU: new features the base SAE cannot explain (BaseSAETransferDegraded fires on a "
            f"rise of more than {ALERTS['BaseSAETransferDegraded'].threshold:g} over the reference's own FVU). "
            "Shaded above the BaseSAEWeak threshold: the SAE explains less than half the variance, whatever the run.",
            unit="percentunit",
            min=0,
            alerts=("BaseSAEWeak",),
        ),
        Panel(
            "Divergent token fraction",
            (Query(f"featuredrift_divergent_tokens_ratio{{{RUN_LAYER}}}", "{{run}} {{layer}}"),),
            "Fraction of probe token pairs with cos(x_ref, x_now) < τ. DivergentTokensSpike fires on a rise of "
            f"more than {ALERT_THRESHOLDS['DivergentTokensSpike']:g} between two evaluations.",
            unit="percentunit",
            min=0,
            max=1,
        ),
        Panel(
            "Explained ratio (ER)",
            (Query(f"featuredrift_explained_ratio{{{RUN_LAYER}}}", "{{run}} {{layer}} {{stat}}"),),
            "On divergent tokens: base-SAE reconstruction error over the drift from the reference. "
            "Below 1: drift happens along existing base features.",
            min=0,
        ),
        Panel(
            "Intersection ratio (IR)",
            (Query(f"featuredrift_intersection_ratio{{{RUN_LAYER}}}", "{{run}} {{layer}} {{tokens}}"),),
            "Jaccard overlap of the active SAE features, reference vs now.",
            unit="percentunit",
            min=0,
            max=1,
        ),
        Panel(
            "Refusal-feature gap (relative to reference)",
            (Query(f"featuredrift_refusal_feature_gap_relative{{{RUN_LAYER}}}", "{{run}} {{layer}}"),),
            "Harmful−harmless gap of the reference refusal features now / at the reference. "
            "1 = unchanged, → 0 = fading (safety erosion), > 1 = strengthening.",
            alerts=("RefusalFeaturesFading", "RefusalFeaturesWeakening"),
        ),
        Panel(
            "Refusal-feature overlap",
            (Query(f"featuredrift_refusal_feature_overlap_ratio{{{RUN_LAYER}}}", "{{run}} {{layer}}"),),
            "|S_k(now) ∩ S_k(reference)| / k: are the same features still the refusal features?",
            unit="percentunit",
            min=0,
            max=1,
        ),
        Panel(
            "Refusal-direction cosine to reference",
            (Query(f"featuredrift_refusal_direction_cosine{{{RUN_LAYER}}}", "{{run}} {{layer}}"),),
            "cos(r_now, r_reference) of the harmful − harmless mean-activation direction.",
            min=-1,
            max=1,
            alerts=("RefusalDirectionDrifted",),
        ),
        Panel(
            "Refusal rate and safety score",
            (
                Query(f"featuredrift_refusal_rate_ratio{{{RUN}}}", "{{run}} refused {{prompts}}"),
                Query(f"featuredrift_safety_score_ratio{{{RUN}}}", "{{run}} safety score"),
                Query(f"featuredrift_refusal_token_probability_ratio{{{RUN}}}", "{{run}} P(refusal start) {{prompts}}"),
            ),
            "Fraction of greedy completions that refuse, on harmful and harmless probes; P(refusal start): "
            "probability of a refusal-starting first token, every evaluation, without generation.",
            unit="percentunit",
            min=0,
            max=1,
            alerts=("HarmfulRefusalRateLow",),
        ),
        Panel(
            "KL divergence reference ‖ current",
            (
                Query(f"featuredrift_kl_divergence_mean_nats{{{RUN}}}", "{{run}} mean"),
                Query(f"featuredrift_kl_divergence_p95_nats{{{RUN}}}", "{{run}} p95"),
            ),
            "Next-token KL at probe positions, in nats. KLDivergenceSpike fires on a rise of "
            f"more than {ALERT_THRESHOLDS['KLDivergenceSpike']:g} nats between two evaluations.",
            min=0,
        ),
        Panel(
            "Training step",
            (Query(f"featuredrift_global_step{{{RUN}}}", "{{run}}"),),
            "Global step of the latest evaluation.",
        ),
        Panel(
            "Evaluation duration",
            (Query(f"featuredrift_evaluation_duration_seconds{{{RUN}}}", "{{run}}"),),
            "Wall time of one monitor evaluation.",
            unit="s",
            min=0,
        ),
        Panel(
            "Exports: failures, evaluations and staleness",
            (
                Query(f"increase(featuredrift_export_failures_total{{{RUN}}}[10m])", "{{run}} failures / 10m"),
                Query(f"increase(featuredrift_evaluations_total{{{RUN}}}[10m])", "{{run}} evaluations / 10m"),
                Query(f"increase(featuredrift_export_dropped_total{{{RUN}}}[10m])", "{{run}} dropped / 10m"),
                Query(f"time() - featuredrift_last_success_timestamp_seconds{{{RUN}}}", "{{run}} s since last push"),
            ),
            "Export health of the monitor (MonitorStale and ExportFailures alerts).",
            min=0,
        ),
    ),
)

REFUSAL = Dashboard(
    uid="featuredrift-refusal",
    title="featuredrift: refusal features",
    description="Refusal direction and refusal features (top-k feature diff-in-means) per run and layer.",
    panels=(
        Panel(
            "Firing refusal alerts",
            (_firing("Refusal.*|HarmfulRefusalRateLow"),),
            kind="table",
            width=24,
        ),
        Panel(
            "Reference refusal features: relative gap",
            (Query(f"featuredrift_refusal_feature_gap_relative{{{RUN_LAYER}}}", "{{run}} {{layer}}"),),
            "Gap of the reference top-k refusal features now / at the reference.",
            alerts=("RefusalFeaturesFading", "RefusalFeaturesWeakening"),
        ),
        Panel(
            "Refusal-feature gap: current vs reference features",
            (
                Query(f"featuredrift_refusal_feature_gap{{{RUN_LAYER}}}", "{{run}} {{layer}} {{features}} features"),
                Query(f"featuredrift_refusal_feature_gap_at_reference{{{RUN_LAYER}}}", "{{run}} {{layer}} at the reference"),
            ),
            "Mean feature diff-in-means (harmful − harmless) over the current and the reference top-k features, "
            "and the reference features' gap at the reference (the denominator of the relative gap).",
        ),
        Panel(
            "Refusal-feature separation (Cohen's d)",
            (
                Query(f"featuredrift_refusal_feature_separation{{{RUN_LAYER}}}", "{{run}} {{layer}} current features"),
                Query(f"featuredrift_refusal_feature_separation_gain{{{RUN_LAYER}}}", "{{run}} {{layer}} gain over the reference"),
            ),
            "How many pooled standard deviations more the current top-k refusal features fire on harmful than on "
            "harmless prompts, and the gain over the reference's own top-k: scale-free, so comparable across SAEs.",
            alerts=("RefusalFeaturesEmerging",),
        ),
        Panel(
            "Refusal-feature overlap",
            (Query(f"featuredrift_refusal_feature_overlap_ratio{{{RUN_LAYER}}}", "{{run}} {{layer}}"),),
            unit="percentunit",
            min=0,
            max=1,
        ),
        Panel(
            "Reference refusal features: mean activation",
            (Query(f"featuredrift_refusal_feature_activation{{{RUN_LAYER}}}", "{{run}} {{layer}} {{prompts}}"),),
            "Mean activation of the reference refusal features on harmful and on harmless prompts now.",
            min=0,
        ),
        Panel(
            "Refusal direction: cosine to reference",
            (Query(f"featuredrift_refusal_direction_cosine{{{RUN_LAYER}}}", "{{run}} {{layer}}"),),
            min=-1,
            max=1,
            alerts=("RefusalDirectionDrifted",),
        ),
        Panel(
            "Refusal direction: norm",
            (Query(f"featuredrift_refusal_direction_norm{{{RUN_LAYER}}}", "{{run}} {{layer}}"),),
            "‖mean(x | harmful) − mean(x | harmless)‖: how strongly the model separates the two.",
            min=0,
        ),
        Panel(
            "NNLS reconstruction of the refusal direction",
            (
                Query(f"featuredrift_refusal_reconstruction_nmse{{{RUN_LAYER}}}", "{{run}} {{layer}} NMSE"),
                Query(f"featuredrift_refusal_reconstruction_cosine{{{RUN_LAYER}}}", "{{run}} {{layer}} cosine"),
            ),
            "Refusal direction rebuilt from the current top-k refusal features' decoder vectors.",
        ),
        Panel(
            "Refusal rate and safety score",
            (
                Query(f"featuredrift_refusal_rate_ratio{{{RUN}}}", "{{run}} refused {{prompts}}"),
                Query(f"featuredrift_safety_score_ratio{{{RUN}}}", "{{run}} safety score"),
                Query(f"featuredrift_refusal_token_probability_ratio{{{RUN}}}", "{{run}} P(refusal start) {{prompts}}"),
                Query(f"featuredrift_refusal_rate_reference_ratio{{{RUN}}}", "{{run}} reference refused {{prompts}}"),
                Query(f"featuredrift_refusal_token_probability_reference_ratio{{{RUN}}}",
                      "{{run}} reference P(refusal start) {{prompts}}"),
            ),
            "Refusals now and the reference model's own (generated once at start): OverRefusal and "
            "OverRefusalRising fire on a rise over the reference on the borderline prompts, else the harmless ones.",
            unit="percentunit",
            min=0,
            max=1,
            alerts=("HarmfulRefusalRateLow",),
        ),
        Panel(
            "Refusal log-odds (no generation)",
            (Query(f"featuredrift_refusal_token_logodds{{{RUN}}}", "{{run}} {{prompts}}"),),
            "log(p / (1 - p)) of a refusal-starting first token at the prompt's end (Arditi et al.'s refusal metric), "
            "every evaluation: above 0 the model more likely refuses than not.",
        ),
        Panel(
            "Over-refusal: borderline and harmless prompts",
            (
                Query(f'featuredrift_refusal_rate_ratio{{{RUN}, prompts=~"borderline|harmless"}}', "{{run}} refused {{prompts}}"),
                Query(f'featuredrift_refusal_token_probability_ratio{{{RUN}, prompts=~"borderline|harmless"}}',
                      "{{run}} P(refusal start) {{prompts}}"),
            ),
            "Refusal of safe requests: borderline prompts (safe requests that look unsafe, XSTest-style) when the run "
            "has them, and plain harmless ones. Rising: the model refuses what it should answer.",
            unit="percentunit",
            min=0,
            max=1,
        ),
    ),
)

def _by_step(title: str, metric: str, description: str, legend: tuple[str, ...] = (), *,
             layered: bool = True, **options) -> Panel:
    """A trend panel of one stored metric against the training step."""
    query = Query(sql.metric_by_step("featuredrift_" + metric, legend, layered=layered))
    return Panel(title, (query,), description, kind="trend", source="store", **options)


def _store_table(title: str, query: str, description: str) -> Panel:
    return Panel(title, (Query(query),), description, kind="table", source="store", width=24)


STEPS = Dashboard(
    uid="featuredrift-steps",
    title="featuredrift: by training step",
    description="Every stored evaluation of the selected runs against the training step, read from the run store "
    "(PostgreSQL): runs line up step by step, and the feature tables show which SAE features moved.",
    source="store",
    panels=(
        _by_step("Refusal-feature gap (relative to reference)", "refusal_feature_gap_relative",
                 "Harmful−harmless gap of the reference refusal features now / at the reference. 1 = unchanged, "
                 "→ 0 = fading (safety erosion), < 0 = reversed, > 1 = strengthening.",
                 alerts=("RefusalFeaturesFading", "RefusalFeaturesWeakening")),
        _by_step("Refusal-feature overlap", "refusal_feature_overlap_ratio",
                 "|S_k(now) ∩ S_k(reference)| / k: are the same features still the refusal features?",
                 unit="percentunit", min=0, max=1),
        _by_step("Refusal-direction cosine to reference", "refusal_direction_cosine",
                 "cos(r_now, r_reference) of the harmful − harmless mean-activation direction.",
                 min=-1, max=1, alerts=("RefusalDirectionDrifted",)),
        _by_step("Refusal rate", "refusal_rate_ratio",
                 "Fraction of greedy completions that refuse, on harmful and harmless probes (evaluations that "
                 "generated).", ("prompts",), layered=False, unit="percentunit", min=0, max=1,
                 alerts=("HarmfulRefusalRateLow",)),
        _by_step("Refusal-token probability", "refusal_token_probability_ratio",
                 "Probability that the response starts with a refusal token, from one forward pass at every "
                 "evaluation (tracks the refusal rate between generating evaluations).", ("prompts",), layered=False,
                 unit="percentunit", min=0, max=1),
        _by_step("Base-SAE transfer (FVU)", "fvu_ratio",
                 "Fraction of variance the frozen base SAE leaves unexplained, per model × probe data.",
                 ("model", "data"), unit="percentunit", min=0, alerts=("BaseSAEWeak",)),
        _by_step("Divergent token fraction", "divergent_tokens_ratio",
                 "Fraction of probe token pairs with cos(x_ref, x_now) < τ.", unit="percentunit", min=0, max=1),
        _by_step("Explained ratio (ER)", "explained_ratio",
                 "On divergent tokens: base-SAE error over the drift from the reference. Below 1: drift along "
                 "existing base features.", ("stat",), min=0),
        _by_step("Intersection ratio (IR)", "intersection_ratio",
                 "Jaccard overlap of the active SAE features, reference vs now.", ("tokens",),
                 unit="percentunit", min=0, max=1),
        _by_step("KL divergence reference ‖ current", "kl_divergence_mean_nats",
                 "Mean next-token KL at probe positions, in nats.", layered=False, min=0),
        Panel("Reference refusal features: d̄ by step", (Query(sql.REFERENCE_REFUSAL_FEATURES_BY_STEP),),
              "Each reference refusal feature's diff-in-means (harmful − harmless mean activation) at every "
              "evaluation: which refusal features fade and which hold.", kind="trend", source="store"),
        Panel("Most drifted features: drift score by step", (Query(sql.LATEST_DRIFTED_FEATURES_BY_STEP),),
              "Drift score of the features the newest evaluation lists as most drifted, at every evaluation "
              "where they were among the most drifted: the trajectory of the feature cards below.",
              kind="trend", source="store"),
        _store_table("Most drifted features at the latest evaluation", sql.LATEST_DRIFTED_FEATURES,
                     "Feature cards of the newest evaluation: each top drifted feature with its drift score and its "
                     "firing frequency and mean activation on the probe subset, at the reference and now."),
        _store_table("Feature contexts at the latest evaluation", sql.LATEST_FEATURE_CONTEXTS,
                     "Top-activating probe contexts of each listed feature (drifted and refusal features): the token "
                     "in 【brackets】 with a few tokens either side and the feature's activation there, at the "
                     "reference and now. Runs recorded before contexts were captured have no rows here."),
        _store_table("Refusal features over steps", sql.REFUSAL_FEATURES_OVER_STEPS,
                     "Every feature that was a refusal feature (top-k diff-in-means) at some evaluation: whether it was "
                     "one at the reference, the steps it was in the current top-k, its best rank and latest d̄. "
                     "Emerging: not a reference feature; fading: last step in top-k before the newest."),
        _store_table("Refusal by category at the latest evaluation", sql.LATEST_CATEGORY_REFUSALS,
                     "Refusal on each category of the prompt subsets that have them (HarmBench semantic categories, "
                     "StrongREJECT categories, XSTest types): the newest evaluation's logit refusal score and the "
                     "newest generating evaluation's refusal rate."),
        Panel("Refusal rate by category", (Query(sql.CATEGORY_REFUSAL_RATE_BY_STEP),),
              "Share of each category's prompts refused, at every evaluation that generated completions.",
              kind="trend", source="store", unit="percentunit", min=0, max=1),
        _store_table("Alerts by step", sql.ALERTS_BY_STEP,
                     "Alerts recorded in the run store with the step they fired and resolved at."),
        _store_table("Runs: state and heartbeat", sql.RUNS_STATE,
                     "Each selected run as recorded: 'stale' marks a run still running on record that has sent no "
                     "event for more than three of its heartbeat intervals (most likely killed); 'failed' runs name "
                     "the exception that ended them. Also the newest evaluated step and checkpoint, and the goal."),
    ),
)

DASHBOARDS: tuple[Dashboard, ...] = (OVERVIEW, REFUSAL, STEPS)


def dashboard_path(dashboard: Dashboard, directory: Path = DASHBOARD_DIR) -> Path:
    return directory / f"{dashboard.uid}.json"


def render_json(dashboard: Dashboard) -> str:
    return json.dumps(render(dashboard), indent=2, ensure_ascii=False) + "\n"


def write_all(directory: Path = DASHBOARD_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for dashboard in DASHBOARDS:
        path = dashboard_path(dashboard, directory)
        path.write_text(render_json(dashboard))
        paths.append(path)
    return paths


def panel_queries(dashboard_json: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every Prometheus panel target of a dashboard JSON."""
    return [(p["title"], t["expr"]) for p in dashboard_json["panels"] for t in p.get("targets", []) if "expr" in t]


def panel_sql(dashboard_json: dict) -> list[tuple[str, str]]:
    """(panel title, SQL) for every run-store panel target of a dashboard JSON."""
    return [(p["title"], t["rawSql"]) for p in dashboard_json["panels"] for t in p.get("targets", []) if "rawSql" in t]
