"""Grafana dashboards described as a small Python spec, rendered to dashboard JSON.

The JSON under `dashboards/` is generated from here (`featuredrift grafana generate`) and
committed; a test keeps the two in sync. Every panel uses the fixed datasource uid
`featuredrift-prometheus` (provisioned by deploy/grafana and created by `grafana push` users),
so dashboards import without `${DS_…}` placeholders. Threshold lines come from the alert
definitions so a panel shows where its alert fires.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from featuredrift.alerts.definitions import DEFAULT_DEFINITIONS

DATASOURCE = {"type": "prometheus", "uid": "featuredrift-prometheus"}
DASHBOARD_DIR = Path(__file__).with_name("dashboards")
RUN = 'run=~"$run"'
RUN_LAYER = 'run=~"$run", layer=~"$layer"'
ALERT_THRESHOLDS = {d.name: d.threshold for d in DEFAULT_DEFINITIONS}


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    description: str = ""
    unit: str = "none"
    kind: str = "timeseries"  # "timeseries" or "table" (instant query, one row per series)
    min: float | None = None
    max: float | None = None
    thresholds: tuple[float, ...] = ()  # alert thresholds drawn as red lines
    width: int = 12


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    tags: tuple[str, ...] = ("featuredrift",)
    variables: tuple[str, ...] = ("run", "layer")


def _variable(name: str) -> dict:
    queries = {
        "run": "label_values(featuredrift_global_step, run)",
        "layer": 'label_values(featuredrift_divergent_tokens_ratio{run=~"$run"}, layer)',
    }
    query = queries[name]
    return {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-variable"},
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "hide": 0,
        "options": [],
        "regex": "",
        "skipUrlSync": False,
    }


def _target(query: Query, ref_id: str, instant: bool) -> dict:
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


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict:
    instant = panel.kind == "table"
    steps = [{"color": "green", "value": None}] + [{"color": "red", "value": t} for t in panel.thresholds]
    defaults: dict = {"unit": panel.unit, "thresholds": {"mode": "absolute", "steps": steps}}
    if panel.min is not None:
        defaults["min"] = panel.min
    if panel.max is not None:
        defaults["max"] = panel.max
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 2,
            "pointSize": 5,
            "showPoints": "always",
            "spanNulls": True,
            "thresholdsStyle": {"mode": "line" if panel.thresholds else "off"},
        }
        options = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    else:
        options = {"showHeader": True, "cellHeight": "sm"}
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "targets": [_target(q, chr(ord("A") + i), instant) for i, q in enumerate(panel.queries)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
    }


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
        "templating": {"list": [_variable(v) for v in dashboard.variables]},
        "annotations": {"list": []},
        "links": [
            {"title": "featuredrift", "type": "dashboards", "tags": ["featuredrift"], "asDropdown": False}
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
            "Rising current/chat FVU: new features the base SAE cannot explain.",
            unit="percentunit",
            min=0,
            thresholds=(ALERT_THRESHOLDS["BaseSAETransferDegraded"],),
        ),
        Panel(
            "Divergent token fraction",
            (Query(f"featuredrift_divergent_tokens_ratio{{{RUN_LAYER}}}", "{{run}} {{layer}}"),),
            "Fraction of probe token pairs with cos(x_ref, x_now) < τ.",
            unit="percentunit",
            min=0,
            max=1,
            thresholds=(ALERT_THRESHOLDS["DivergentTokensSpike"],),
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
            thresholds=(ALERT_THRESHOLDS["RefusalFeaturesFading"], ALERT_THRESHOLDS["RefusalFeaturesWeakening"]),
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
            thresholds=(ALERT_THRESHOLDS["RefusalDirectionDrifted"],),
        ),
        Panel(
            "Refusal rate and safety score",
            (
                Query(f"featuredrift_refusal_rate_ratio{{{RUN}}}", "{{run}} refused {{prompts}}"),
                Query(f"featuredrift_safety_score_ratio{{{RUN}}}", "{{run}} safety score"),
            ),
            "Fraction of greedy completions that refuse, on harmful and harmless probes.",
            unit="percentunit",
            min=0,
            max=1,
            thresholds=(ALERT_THRESHOLDS["HarmfulRefusalRateLow"],),
        ),
        Panel(
            "KL divergence reference ‖ current",
            (
                Query(f"featuredrift_kl_divergence_mean_nats{{{RUN}}}", "{{run}} mean"),
                Query(f"featuredrift_kl_divergence_p95_nats{{{RUN}}}", "{{run}} p95"),
            ),
            "Next-token KL at probe positions, in nats.",
            min=0,
            thresholds=(ALERT_THRESHOLDS["KLDivergenceSpike"],),
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
            thresholds=(ALERT_THRESHOLDS["RefusalFeaturesFading"], ALERT_THRESHOLDS["RefusalFeaturesWeakening"]),
        ),
        Panel(
            "Refusal-feature gap: current vs reference features",
            (
                Query(f"featuredrift_refusal_feature_gap{{{RUN_LAYER}}}", "{{run}} {{layer}} {{features}} features"),
                Query(f"featuredrift_refusal_feature_gap_at_reference{{{RUN_LAYER}}}", "{{run}} {{layer}} at the reference"),
            ),
            "Mean feature diff-in-means (harmful − harmless) over the current and the reference top-k features, "
            "and the reference features' gap at the reference (the denominator of the relative gap).",
            thresholds=(ALERT_THRESHOLDS["RefusalFeaturesEmerging"],),
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
            thresholds=(ALERT_THRESHOLDS["RefusalDirectionDrifted"],),
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
            ),
            unit="percentunit",
            min=0,
            max=1,
            thresholds=(ALERT_THRESHOLDS["HarmfulRefusalRateLow"],),
        ),
    ),
)

DASHBOARDS: tuple[Dashboard, ...] = (OVERVIEW, REFUSAL)


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
    """(panel title, PromQL) for every panel target of a dashboard JSON."""
    return [(p["title"], t["expr"]) for p in dashboard_json["panels"] for t in p.get("targets", [])]
