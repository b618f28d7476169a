"""Offline report of a stored run: PNG plots and one self-contained HTML page.

Reads only the run store. Plots: every metric over steps (one line per label set), the
refusal-feature trajectories (each reference refusal feature's d̄ over steps when the store
has it, otherwise the gap metrics), and the most drifted features. Uses matplotlib's
object API on the Agg canvas, so it needs no display and touches no global pyplot state.
"""

from __future__ import annotations

import base64
import html
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from featuredrift.monitor.store.run_store import RunStore

PREFIX = "featuredrift_"
TOP_DRIFTED = 8


@dataclass
class ReportFiles:
    html: Path
    images: list[Path] = field(default_factory=list)


@dataclass
class Plot:
    title: str
    path: Path
    section: str


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "plot"


def label_text(labels: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "(no labels)"


def new_figure(width: float = 7.0, height: float = 3.6) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, format="png")
    return path


def plot_metric(store: RunStore, run: str, name: str, out_dir: Path) -> Plot:
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for point in store.metric_series(run, name):
        series[label_text(point.labels)].append((point.step, point.value))
    figure = new_figure()
    axes = figure.add_subplot()
    for label, points in sorted(series.items()):
        steps, values = zip(*points, strict=True)
        axes.plot(steps, values, marker="o", markersize=3, label=label)
    short = name.removeprefix(PREFIX)
    axes.set_title(short)
    axes.set_xlabel("step")
    axes.grid(alpha=0.3)
    if 1 < len(series) <= 12:
        axes.legend(fontsize=7)
    return Plot(short, save(figure, out_dir / f"metric_{safe_name(short)}.png"), "Metrics over steps")


def plot_refusal_trajectories(store: RunStore, run: str, out_dir: Path) -> list[Plot]:
    """Per hookpoint: d̄ of each reference refusal feature over steps if stored, else the gap metrics."""
    rows = store.refusal_features(run)
    hookpoints = sorted({r.hookpoint for r in rows}) or sorted(
        {p.labels.get("layer", "") for p in store.metric_series(run, PREFIX + "refusal_feature_gap")}
    )
    plots = []
    for hookpoint in hookpoints:
        layer_rows = [r for r in rows if r.hookpoint == hookpoint and r.source == "reference"]
        headline_k = max((r.k for r in layer_rows), default=None)
        with_values = [r for r in layer_rows if r.k == headline_k and r.diff_in_means is not None]
        figure = new_figure(8.0, 4.0)
        if with_values:
            axes = figure.add_subplot()
            by_feature: dict[int, list[tuple[int, float]]] = defaultdict(list)
            for r in with_values:
                by_feature[r.feature].append((r.step, r.diff_in_means))
            for feature, points in sorted(by_feature.items()):
                steps, values = zip(*points, strict=True)
                axes.plot(steps, values, marker="o", markersize=3, label=f"feature {feature}")
            axes.set_ylabel("d̄ (harmful − harmless)")
            axes.set_title(f"{hookpoint}: reference refusal features (k={headline_k})")
            if len(by_feature) <= 16:
                axes.legend(fontsize=7, ncol=2)
        else:
            gap_axes, ratio_axes = figure.subplots(1, 2)
            for features in ("reference", "current"):
                points = store.metric_series(run, PREFIX + "refusal_feature_gap", {"layer": hookpoint, "features": features})
                if points:
                    gap_axes.plot([p.step for p in points], [p.value for p in points], marker="o", markersize=3,
                                  label=f"S_k({features})")
            gap_axes.set_title(f"{hookpoint}: mean d̄ over refusal features")
            gap_axes.legend(fontsize=7)
            for name, label in (("refusal_feature_gap_relative", "gap relative to reference"),
                                ("refusal_feature_overlap_ratio", "overlap S_k(t) ∩ S_k(0) / k"),
                                ("refusal_direction_cosine", "cos(r_t, r_0)")):
                points = store.metric_series(run, PREFIX + name, {"layer": hookpoint})
                if points:
                    ratio_axes.plot([p.step for p in points], [p.value for p in points], marker="o", markersize=3,
                                    label=label)
            ratio_axes.set_title("refusal drift ratios")
            ratio_axes.legend(fontsize=7)
            for axes in (gap_axes, ratio_axes):
                axes.set_xlabel("step")
                axes.grid(alpha=0.3)
        path = save(figure, out_dir / f"refusal_{safe_name(hookpoint)}.png")
        plots.append(Plot(f"Refusal features at {hookpoint}", path, "Refusal features"))
    return plots


def plot_drifted_features(store: RunStore, run: str, out_dir: Path) -> list[Plot]:
    """Per hookpoint: the latest top drifted features, and the drift score of the most drifted ones over steps."""
    rows = store.drifted_features(run)
    plots = []
    for hookpoint in sorted({r.hookpoint for r in rows}):
        layer_rows = [r for r in rows if r.hookpoint == hookpoint and r.score is not None]
        if not layer_rows:
            continue
        last_step = max(r.step for r in layer_rows)
        latest = sorted((r for r in layer_rows if r.step == last_step), key=lambda r: r.rank)[:TOP_DRIFTED * 2]
        figure = new_figure(10.0, 4.0)
        bar_axes, line_axes = figure.subplots(1, 2)
        names = [f"{r.feature} ({r.subset})" for r in latest]
        bar_axes.barh(range(len(latest)), [r.score for r in latest], color="tab:orange")
        bar_axes.set_yticks(range(len(latest)), names, fontsize=7)
        bar_axes.invert_yaxis()
        bar_axes.set_title(f"{hookpoint}: most drifted at step {last_step}")
        bar_axes.set_xlabel("drift score")
        best: dict[tuple[int, str], float] = {}
        for r in layer_rows:
            best[(r.feature, r.subset)] = max(best.get((r.feature, r.subset), float("-inf")), r.score)
        for feature, subset in sorted(best, key=best.get, reverse=True)[:TOP_DRIFTED]:
            points = sorted((r.step, r.score) for r in layer_rows if (r.feature, r.subset) == (feature, subset))
            line_axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3,
                           label=f"{feature} ({subset})")
        line_axes.set_title("drift score over steps (top-N only)")
        line_axes.set_xlabel("step")
        line_axes.grid(alpha=0.3)
        line_axes.legend(fontsize=7)
        path = save(figure, out_dir / f"drifted_{safe_name(hookpoint)}.png")
        plots.append(Plot(f"Most drifted features at {hookpoint}", path, "Drifted features"))
    return plots


def render_html(store: RunStore, run: str, plots: list[Plot]) -> str:
    info = store.get_run(run)
    alerts = store.alerts(run)
    esc = html.escape
    meta_rows = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>"
        for k, v in (
            ("status", info.status), ("evaluations", info.evaluation_count), ("last step", info.last_step),
            ("created", info.created_at.isoformat(timespec="seconds")),
            ("updated", info.updated_at.isoformat(timespec="seconds")),
            ("model", info.model_fingerprint or "—"), ("SAE", info.sae_fingerprint or "—"),
            ("reference", info.reference_policy or "—"), ("store", store.display_url),
        )
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>featuredrift report: {esc(run)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:90%}"
        "figure{margin:1em 0}img{max-width:100%}</style></head><body>",
        f"<h1>featuredrift report: {esc(run)}</h1><table>{meta_rows}</table>",
    ]
    if alerts:
        parts.append("<h2>Alerts</h2><table><tr><th>name</th><th>severity</th><th>status</th><th>step</th>"
                     "<th>started</th><th>ended</th><th>message</th></tr>")
        for a in alerts:
            parts.append(
                f"<tr><td>{esc(a.name)}</td><td>{esc(a.severity)}</td><td>{esc(a.status)}</td>"
                f"<td>{'' if a.step is None else a.step}</td><td>{a.started_at.isoformat(timespec='seconds')}</td>"
                f"<td>{a.ended_at.isoformat(timespec='seconds') if a.ended_at else ''}</td><td>{esc(a.message)}</td></tr>"
            )
        parts.append("</table>")
    section = None
    for plot in plots:
        if plot.section != section:
            section = plot.section
            parts.append(f"<h2>{esc(section)}</h2>")
        encoded = base64.b64encode(plot.path.read_bytes()).decode("ascii")
        parts.append(f"<figure><img alt='{esc(plot.title)}' src='data:image/png;base64,{encoded}'>"
                     f"<figcaption>{esc(plot.title)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_run_report(store: RunStore, run: str, out_dir: str | Path) -> ReportFiles:
    """Write every plot of `run` as PNG into `out_dir` and `index.html` embedding them all."""
    from featuredrift.monitor.extras import require_extra

    require_extra("report", "featuredrift report (plots)")
    import matplotlib

    matplotlib.use("Agg", force=False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = store.get_run(run)  # fails early, listing known runs, for an unknown name
    if info.evaluation_count == 0:
        raise ValueError(f"run {run!r} in {store.display_url}: expected at least one evaluation, found none")
    plots = plot_refusal_trajectories(store, run, out_dir)
    plots += plot_drifted_features(store, run, out_dir)
    for name in sorted({name for name, _ in store.metric_names(run)}):
        plots.append(plot_metric(store, run, name, out_dir))
    index = out_dir / "index.html"
    index.write_text(render_html(store, run, plots), encoding="utf-8")
    return ReportFiles(index, [plot.path for plot in plots])
