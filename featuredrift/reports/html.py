"""`featuredrift report RUN`: one self-contained HTML page (and its PNG charts) for a stored run.

The page reads top-down: the run's goal and state, findings in plain words told in that goal,
then one section per layer with related metrics grouped on each chart (meaning, the thresholds of
the alerts the goal applies and alert markers), the run-wide charts, the feature cards, the
alerts with their steps and the last safe checkpoint, the training-data audit, and a sample of
completions when evaluations generated some. Nothing is fetched from elsewhere: charts are embedded PNGs and the
card trajectories inline SVG.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from featuredrift.reports.feature_cards import FeatureCard, build_cards, shown_token
from featuredrift.reports.findings import Finding, RunGoal, run_findings, run_goal
from featuredrift.reports.plots import Chart, Colours, draw, layer_charts, run_charts

if TYPE_CHECKING:
    from featuredrift.store.rows import AlertInfo, RunInfo
    from featuredrift.store.run_store import RunStore

esc = html.escape
# Cards per layer and kind (a real model's top-k has dozens of refusal features); the rest are listed by id.
CARDS_PER_KIND = {"fading": 8, "emerging": 8, "drifted": 6, "held": 4}

STYLE = """
body{font-family:system-ui,sans-serif;margin:0 auto;padding:1.5em;max-width:1400px;color:#222}
h1{margin-bottom:.2em}.meta{color:#555;font-size:90%}
section{margin-top:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em}
.findings{list-style:none;padding:0}.findings li{padding:.5em .8em;margin:.4em 0;border-left:6px solid #999;
background:#f7f7f7}.findings li.alarm{border-color:#d62728;background:#fdecea}
.findings li.notice{border-color:#ff7f0e;background:#fff4e5}.findings li.ok{border-color:#2ca02c;background:#eef8ee}
.findings li.neutral{border-color:#8c8c8c;background:#f4f4f6}.goal{font-size:105%;margin:.3em 0}
.status-failed,.status-stale{color:#b71c1c;font-weight:bold}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(640px,1fr));gap:1em}
figure{margin:0}figure img{width:100%;height:auto}figcaption{font-size:85%;color:#444}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:1em}
.feature-card{border:1px solid #ccc;border-radius:6px;padding:.7em;background:#fff}
.feature-card h3{margin:.1em 0 .4em;font-size:105%}.feature-card .swatch{display:inline-block;width:.8em;
height:.8em;border-radius:50%;margin-right:.4em}.badge{display:inline-block;font-size:75%;padding:1px 6px;
border-radius:8px;background:#eee;margin-right:.3em}.badge.fading{background:#fdecea}.badge.emerging{background:#e8f0fd}
.feature-card ul{padding-left:1.1em;margin:.3em 0;font-size:88%}
table{border-collapse:collapse;font-size:88%}th,td{border:1px solid #ddd;padding:2px 7px;text-align:left}
.contexts{font-size:85%;color:#444}.context-columns{display:grid;grid-template-columns:1fr 1fr;gap:.5em}
.context{white-space:pre-wrap;margin:.15em 0}.context mark{background:#ffe08a}.context .activation{color:#888}
.context mark.readout{background:#cfe3ff;outline:1px solid #6b9bd8}.context .where{color:#888;font-size:90%}
.badge.replaced{background:#eceff1}.feature-card a{font-size:85%}
.trajectory{display:flex;align-items:center;gap:.5em;font-size:88%;margin:.3em 0}.trajectory svg{flex:none}.trajectory span:last-child{white-space:nowrap}
"""


@dataclass
class ReportFiles:
    html: Path
    images: list[Path] = field(default_factory=list)


def _findings_html(findings: list[Finding]) -> str:
    items = "".join(f"<li class='{f.tone}'><strong>{esc(f.title)}.</strong> {esc(f.text)}</li>" for f in findings)
    return f"<section id='findings'><h2>Findings</h2><ul class='findings'>{items}</ul></section>"


def _figure(chart: Chart) -> str:
    encoded = base64.b64encode(chart.path.read_bytes()).decode("ascii")
    thresholds = "; ".join(t.label for t in chart.thresholds)
    limits = f" Alert thresholds: {esc(thresholds)}." if thresholds else ""
    return (f"<figure><img alt='{esc(chart.title)}' src='data:image/png;base64,{encoded}'>"
            f"<figcaption>{esc(chart.caption)}{limits}</figcaption></figure>")


def _charts_section(section_id: str, title: str, charts: list[Chart]) -> str:
    figures = "".join(_figure(c) for c in charts)
    return f"<section id='{esc(section_id)}'><h2>{esc(title)}</h2><div class='charts'>{figures}</div></section>"


def _sparkline(values: list[tuple[int, float]], colour: str, width: int = 110, height: int = 28) -> str:
    """An inline SVG polyline of (step, value) points, scaled to the box."""
    if len(values) < 2:
        return ""
    steps, ys = [s for s, _ in values], [v for _, v in values]
    x0, x1, y0, y1 = min(steps), max(steps), min(ys), max(ys)
    def scale(v: float, lo: float, hi: float, size: int) -> float:
        return (v - lo) / (hi - lo) * size if hi > lo else size / 2
    points = " ".join(f"{scale(s, x0, x1, width - 4) + 2:.1f},{height - 2 - scale(v, y0, y1, height - 4):.1f}"
                      for s, v in values)
    return (f"<svg width='{width}' height='{height}' role='img'><polyline fill='none' stroke='{colour}' "
            f"stroke-width='2' points='{points}'/></svg>")


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _badges(card: FeatureCard, goal: RunGoal) -> str:
    """Why the card is here; in an align run a reference refusal feature leaving the top-k is
    expected ('replaced'), not 'fading'."""
    names = ([card.refusal_status] if card.refusal_status else []) + (["drifted"] if card.drift_rank else [])
    if not goal.preserving:
        names = ["replaced" if name == "fading" else name for name in names]
    return "".join(f"<span class='badge {b}'>{b}</span>" for b in names)


def _card_html(card: FeatureCard, colours: Colours, goal: RunGoal) -> str:
    colour = colours(f"{card.hookpoint}/feature {card.feature}")
    badges = _badges(card, goal)
    if card.neuronpedia_url:
        badges += (f" <a href='{esc(card.neuronpedia_url)}' target='_blank' rel='noopener'>Neuronpedia: explanation "
                   "and dashboards</a>")
    reasons = "".join(f"<li>{esc(r)}</li>" for r in card.reasons)
    rows = "".join(
        f"<tr><td>{esc(f.subset)}</td><td>{_number(f.freq_reference)} → {_number(f.freq_now)}</td>"
        f"<td>{_number(f.mean_reference)} → {_number(f.mean_now)}</td></tr>" for f in card.firing)
    firing = (f"<table><tr><th>prompts</th><th>fires on (share of tokens)</th><th>mean activation</th></tr>{rows}"
              "</table>") if rows else ""
    trajectory = []
    drift = [(p.step, p.drift_score) for p in card.trajectory if p.drift_score is not None]
    diff = [(p.step, p.diff_in_means) for p in card.trajectory if p.diff_in_means is not None]
    for name, points in (("drift score", drift), ("d̄", diff)):
        if len(points) > 1:
            trajectory.append(f"<div class='trajectory'><span>{name}, steps {points[0][0]}–{points[-1][0]}</span>"
                              f"{_sparkline(points, colour)}<span>{_number(points[0][1])} → "
                              f"{_number(points[-1][1])}</span></div>")
    return (f"<div class='feature-card' data-layer='{esc(card.hookpoint)}' data-feature='{card.feature}'>"
            f"<h3><span class='swatch' style='background:{colour}'></span>{esc(card.title)}</h3>{badges}"
            f"<ul>{reasons}</ul>{firing}{''.join(trajectory)}"
            f"<div class='contexts' data-section='contexts'>{_contexts_html(card)}</div></div>")


def _contexts_html(card: FeatureCard) -> str:
    """The top-activating probe contexts, reference beside now, the token marked."""
    if card.contexts_note:
        return f"Top-activating contexts: {esc(card.contexts_note)}."
    columns = []
    for model, title in (("reference", "reference"), ("current", f"step {card.step}")):
        lines = "".join(_context_html(c) for c in card.contexts if c.model == model) \
            or "<div>does not fire on any probe token</div>"
        columns.append(f"<div><b>{title}</b>{lines}</div>")
    return f"<div class='context-columns'>{''.join(columns)}</div>"


def _context_html(context) -> str:
    """One context. A prompt's read-out token (the last before the response: often a newline or a
    template token, invisible as text) is shown after the prompt, marked as the read position."""
    if context.readout:
        return (f"<div class='context readout' data-model='{context.model}'>…{esc(context.left)} "
                f"<mark class='readout' title='read-out position: the token before the response'>"
                f"{esc(shown_token(context.token))} read-out</mark> <span class='activation'>{context.activation:.3g}"
                f"</span> <span class='where'>({esc(context.subset)} prompt)</span></div>")
    return (f"<div class='context' data-model='{context.model}'>…{esc(context.left)}<mark>{esc(shown_token(context.token))}"
            f"</mark>{esc(context.right)}… <span class='activation'>{context.activation:.3g}</span></div>")


def _kind(card: FeatureCard) -> str:
    """What a card is mainly about: a refusal feature that changed, a drifted feature, or one that held."""
    if card.refusal_status in ("fading", "emerging"):
        return card.refusal_status
    return "drifted" if card.drift_rank is not None else "held"


def _cards_section(cards: list[FeatureCard], colours: Colours, goal: RunGoal) -> str:
    if not cards:
        return "<section id='feature-cards'><h2>Feature cards</h2><p>No drifted or refusal features stored.</p></section>"
    parts = ["<section id='feature-cards'><h2>Feature cards</h2>"
             f"<p class='meta'>The features the latest evaluation (step {cards[0].step}) singled out, per layer.</p>"]
    for hookpoint in sorted({c.hookpoint for c in cards}):
        shown, notes = [], []
        for kind, cap in CARDS_PER_KIND.items():
            of_kind = [c for c in cards if c.hookpoint == hookpoint and _kind(c) == kind]
            shown += of_kind[:cap]
            if of_kind[cap:]:
                notes.append(f"{len(of_kind) - cap} more {kind}: {', '.join(str(c.feature) for c in of_kind[cap:])}")
        shown.sort(key=cards.index)
        note = f"<p class='meta'>Without a card here ({'; '.join(notes)}).</p>" if notes else ""
        parts.append(f"<h3>{esc(hookpoint)}</h3><div class='cards'>{''.join(_card_html(c, colours, goal) for c in shown)}"
                     f"</div>{note}")
    return "".join(parts) + "</section>"


def _alerts_section(alerts: list[AlertInfo], safe) -> str:
    if not alerts:
        return ""
    rows = "".join(
        f"<tr><td>{esc(a.name)}</td><td>{esc(a.severity)}</td><td>{esc(a.status)}</td>"
        f"<td>{'—' if a.step is None else a.step}</td><td>{'—' if a.resolved_step is None else a.resolved_step}</td>"
        f"<td>{esc(', '.join(f'{k}={v}' for k, v in sorted(a.labels.items())))}</td><td>{esc(a.message)}</td>"
        f"<td>{esc(a.checkpoint or '—')}</td></tr>"
        for a in alerts)
    way_back = ""
    if any(a.severity == "critical" for a in alerts):
        way_back = ("<p id='last-safe-checkpoint'><b>Last safe checkpoint:</b> "
                    + (esc(safe.describe()) if safe else "none saved that passed every critical alert") + "</p>")
    return ("<section id='alerts'><h2>Alerts</h2>" + way_back + "<table><tr><th>alert</th><th>severity</th><th>status</th>"
            "<th>fired at step</th><th>resolved at step</th><th>where</th><th>message</th>"
            f"<th>last safe checkpoint when it fired</th></tr>{rows}</table></section>")


def _audit_section(store: RunStore, run: str, shown: int = 8) -> str:
    """The training examples most likely to erode refusal, and to teach over-refusal."""
    audits = store.audit(run)
    if not audits or not audits[0].examples:
        return ""
    audit = audits[0]

    def table(title: str, examples, risk: str) -> str:
        rows = "".join(
            f"<tr><td>{e.example}</td><td>{esc(e.prompt)}</td><td>{esc(e.target)}</td><td>{e.harmfulness:.2f}</td>"
            f"<td>{'—' if e.refusal_probability is None else f'{e.refusal_probability:.2f}'}</td><td>{esc(e.kind)}</td></tr>"
            for e in examples)
        return (f"<h3>{esc(title)}</h3><table data-risk='{risk}'><tr><th>example</th><th>prompt</th><th>target</th>"
                "<th>harmfulness</th><th>reference P(refusal)</th><th>reading</th></tr>" + rows + "</table>") if rows else ""

    counts = "; ".join(f"{n} {esc(kind)}" for kind, n in audit.summary.items())
    return (f"<section id='training-data'><h2>Training data</h2><p class='meta'>{len(audit.examples)} of "
            f"{audit.dataset_size} training examples read by the reference at {esc(audit.hookpoint)} before training: "
            f"{counts}. Harmfulness: where the prompt's read-out lies between the harmless (0) and harmful (1) probes, "
            "on the refusal direction and the refusal features; reference P(refusal): the reference's own refusal "
            "score where the target starts.</p>"
            + table("Most likely to erode refusal (compliant answers, most harmful-looking first)", audit.eroding(shown),
                    "erosion")
            + table("Most likely to teach over-refusal (refusals, most harmless-looking first)",
                    [e for e in audit.over_refusing(shown) if not e.harmful_request], "over-refusal")
            + "</section>")


REFUSAL_SERIES = (("refusal_rate_ratio", "refusal rate"), ("refusal_token_probability_ratio", "P(refusal start)"),
                  ("refusal_token_logodds", "log-odds"))


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _refusal_section(store: RunStore, run: str, info: RunInfo) -> str:
    """Refusal by prompt subset (latest value of each series) and by category (the newest
    evaluation's logit score, the newest generating evaluation's rate), with where each subset's
    probes came from and which judges decided."""
    subsets: dict[str, dict[str, tuple[int, float]]] = {}
    for name, label in REFUSAL_SERIES:
        for point in store.metric_series(run, "featuredrift_" + name):
            subsets.setdefault(point.labels.get("prompts", "—"), {})[label] = (point.step, point.value)
    categories = store.category_refusals(run)
    if not subsets and not categories:
        return ""
    origins = info.extra.get("probe_subsets") or {}
    rows = ""
    for prompts, values in sorted(subsets.items(), key=lambda item: (item[0] not in ("harmful", "harmless", "borderline"), item[0])):
        origin = origins.get(prompts, {})
        where = ", ".join(str(part) for part in (
            origin.get("benchmark") and f"{origin['benchmark']} (split {origin.get('split', 'all')})",
            origin.get("file") or origin.get("dataset") or origin.get("source"),
            origin.get("sha256") and f"sha256 {origin['sha256'][:16]}…") if part)
        cells = "".join(f"<td>{_num(values[label][1])} (step {values[label][0]})</td>" if label in values else "<td>—</td>"
                        for _, label in REFUSAL_SERIES)
        rows += f"<tr><td>{esc(prompts)}</td><td>{origin.get('probes', '—')}</td>{cells}<td>{esc(where or '—')}</td></tr>"
    judges = info.extra.get("judges") or {}
    table = (f"<p class='meta'>Refusal judge: {esc(str(judges.get('refusal', '—')))}; safety judge: "
             f"{esc(str(judges.get('safety', '—')))}. Borderline prompts are safe requests that look unsafe: "
             "their refusal rate is over-refusal.</p><table><tr><th>prompts</th><th>probes</th>"
             + "".join(f"<th>{label}</th>" for _, label in REFUSAL_SERIES) + f"<th>from</th></tr>{rows}</table>")
    if categories:
        from featuredrift.store.rows import latest_by_category

        lines = "".join(
            f"<tr><td>{esc(r.subset)}</td><td>{esc(r.category)}</td><td>{r.prompts}</td>"
            f"<td>{_num(rated.refusal_rate) + f' (step {rated.step})' if rated else '—'}</td>"
            f"<td>{_num(r.refusal_token_probability)}</td><td>{_num(r.refusal_token_logodds)}</td><td>{r.step}</td></tr>"
            for r, rated in latest_by_category(categories))
        table += ("<h3>By category</h3><table><tr><th>prompts</th><th>category</th><th>probes</th><th>refusal rate</th>"
                  f"<th>P(refusal start)</th><th>log-odds</th><th>step</th></tr>{lines}</table>")
    return f"<section id='refusal'><h2>Refusal by prompt subset and category</h2>{table}</section>"


def _completions_section(store: RunStore, run: str) -> str:
    generated = [e for e in store.evaluations(run) if e.report.completions]
    if not generated:
        return ""
    latest = generated[-1]
    rows = "".join(f"<tr><td>{esc(c['subset'])}</td><td>{esc(c['prompt'])}</td><td>{esc(c['completion'])}</td>"
                   f"<td>{'yes' if c['refused'] else 'no'}</td></tr>" for c in latest.report.completions)
    return (f"<section id='completions'><h2>Sample completions at step {latest.step}</h2><table><tr><th>prompts</th>"
            f"<th>prompt</th><th>completion</th><th>refused</th></tr>{rows}</table></section>")


def _header(info: RunInfo, display_url: str, goal: RunGoal) -> str:
    name = info.extra.get("display_name") or info.name
    status = info.status_text()
    status_class = "status-stale" if info.stale() else "status-failed" if info.status == "failed" else "status"
    meta = " · ".join(esc(str(part)) for part in (
        f"run id {info.name}", f"{info.evaluation_count} evaluations up to step {info.last_step}",
        f"reference: {info.reference_policy or '—'}", f"model {info.model_fingerprint or '—'}",
        f"SAE {info.sae_fingerprint or '—'}", f"store {display_url}"))
    return (f"<h1>featuredrift report: {esc(name)}</h1>"
            f"<p class='goal' id='goal' data-goal='{esc(goal.goal or '')}'><b>Goal: {esc(goal.goal or 'not recorded')}</b>"
            f" — {esc(goal.reason)}</p><p class='meta'><span class='{status_class}'>{esc(status)}</span> · {meta}</p>")


def write_run_report(store: RunStore, run: str, out_dir: str | Path) -> ReportFiles:
    """Write the charts of `run` as PNG into `out_dir` and `index.html` embedding them."""
    from featuredrift.extras import require_extra

    require_extra("report", "featuredrift report (plots)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = store.get_run(run)  # fails early, listing known runs, for an unknown name
    if info.evaluation_count == 0:
        raise ValueError(f"run {run!r} in {store.display_url}: expected at least one evaluation, found none")
    alerts = store.alerts(run)
    cards = build_cards(store, run)
    goal = run_goal(store, run, info)
    colours = Colours()
    hookpoints = sorted({labels["layer"] for _, labels in store.metric_names(run) if "layer" in labels})
    sections = [_header(info, store.display_url, goal), _findings_html(run_findings(store, run, cards))]
    images = []
    for hookpoint in hookpoints:
        charts = layer_charts(store, run, hookpoint, cards, alerts, colours, goal=goal.goal)
        images += [draw(c, out_dir) for c in charts]
        sections.append(_charts_section(f"layer-{hookpoint}", f"Layer {hookpoint}", charts))
    charts = run_charts(store, run, alerts, colours, goal=goal.goal)
    images += [draw(c, out_dir) for c in charts]
    safe = store.last_safe_checkpoint(run)
    sections += [_charts_section("run-wide", "Refusal rate and outputs", charts), _refusal_section(store, run, info),
                 _cards_section(cards, colours, goal), _alerts_section(alerts, safe), _audit_section(store, run),
                 _completions_section(store, run)]
    page = ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>featuredrift report: {esc(info.extra.get('display_name') or run)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>")
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return ReportFiles(index, images)
