"""report.md and a self-contained report.html (figures embedded as base64 PNG) from
results.json: Fig. 1–3, Table 1, the findings, the diff-SAE analysis and provenance."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from featuredrift.replicate import figures


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines


def markdown_sections(results: dict) -> list[tuple[str, list[str], str | None]]:
    """(title, markdown lines, figure key) per section; shared by the .md and .html writers."""
    stages = results["stages"]
    sections = []
    findings = results["findings"]
    lines = _table(
        ["finding", "holds", "evidence"],
        [[f["claim"], {True: "yes", False: "no", None: "inconclusive"}[f["holds"]], f["evidence"]] for f in findings],
    )
    sections.append(("Findings", lines, None))
    if "transfer" in stages:
        t = stages["transfer"]
        rows = [
            [h] + [r["base_sae"][s] for s in t["settings"]] + [r.get("chat_sae", {}).get("C-LLM+C-Data")]
            for h, r in t["hookpoints"].items()
        ]
        sections.append(("Fig. 1 — SAE transfer (FVU)", _table(["hookpoint", *t["settings"], "chat SAE (C+C)"], rows), "fig1"))
    if "drift" in stages:
        d = stages["drift"]
        rows = []
        for h, per_data in d["hookpoints"].items():
            for data, r in per_data.items():
                rows.append([h, data, r["tokens"], r["divergent_fraction"], r["explained_ratio"],
                             r["explained_ratio_median"], r["intersection_ratio_divergent"], r["intersection_ratio_all"]])
        header = ["hookpoint", "data", "tokens", f"divergent (cos<{d['threshold']})", "ER", "ER median", "IR (divergent)", "IR (all)"]
        readings = results["provenance"].get("paper_readings") or {}
        lines = ([f"Paper readings: scale {readings.get('scale_reading')}, ER {readings.get('er_aggregate')}, "
                  f"token mask {readings.get('token_mask')}.", ""] if readings else [])
        sections.append(("Fig. 3 — feature drift (ER, IR)", lines + _table(header, rows), "fig3"))
    if "refusal" in stages:
        r = stages["refusal"]
        rows = [[row["k"], row["base"]["nmse"], row["base"]["cosine"], row["chat"]["nmse"], row["chat"]["cosine"], row["overlap"]]
                for row in r["table"]]
        rows.append(["True", None, None, 0.0, 1.0, None])
        lines = [f"Hookpoint {r['hookpoint']}; {r['num_harmful']} harmful / {r['num_harmless']} harmless prompts; "
                 f"positive d̄ entries: base {r['positive_features']['base']}, chat {r['positive_features']['chat']}.", ""]
        lines += _table(["k", "base NMSE", "base Cos", "chat NMSE", "chat Cos", "overlap"], rows)
        sections.append(("Table 1 — refusal direction reconstruction", lines, None))
    if "interventions" in stages:
        iv = stages["interventions"]
        rows = [[r["source"], r["k"], r["safety_score"], r["refusal_score"]] for r in iv["rows"]]
        lines = [f"Chat model; ablation on {iv['num_harmful']} held-out harmful prompts (safety judge: "
                 f"**{iv['judge']}**), addition at {iv['hookpoint']} on {iv['num_harmless']} harmless prompts "
                 f"(refusal substrings); {iv['max_new_tokens']} new tokens, greedy.", ""]
        lines += _table(["direction", "k", "safety score (ablation)", "refusal score (addition)"], rows)
        sections.append(("Fig. 2 — causal interventions", lines, "fig2"))
    if "diffsae" in stages:
        ds = stages["diffsae"]
        lines = [
            f"Hookpoint {ds['hookpoint']}; diff-SAE trained {ds['training']['steps']} steps on {ds['training']['tokens']} tokens; "
            f"held-out FVU of x_chat − x_base: base data {_fmt(ds['held_out_fvu']['base'])}, chat data {_fmt(ds['held_out_fvu']['chat'])}.",
            f"Mean next-token KL(base ‖ chat) on chat text: {_fmt(ds['mean_kl'], 4)}; {ds['high_kl']['positions']} highest-KL positions "
            f"(mean {_fmt(ds['high_kl']['mean'], 4)}).",
            f"Best-latent alignment with −∇KL (mean over positions): diff-SAE {_fmt(ds['alignment']['diff_sae'])}, "
            f"base SAE {_fmt(ds['alignment']['base_sae'])}.",
            "",
        ]
        for latent in ds["top_latents"]:
            extra = f", cos with refusal direction {_fmt(latent['refusal_cosine'])}" if "refusal_cosine" in latent else ""
            lines.append(f"**Latent {latent['latent']}** — among the 3 most negative attributions at {latent['top3_count']} positions{extra}")
            lines.append("")
            lines += _table(
                ["context", "KL", "change (base → chat)", "up-weighted", "down-weighted"],
                [[_escape_cell(row["context"][-60:]), row["kl"], f"{row['change'][0]!r} → {row['change'][1]!r}",
                  ", ".join(repr(t) for t, _ in row["upweighted"]), ", ".join(repr(t) for t, _ in row["downweighted"])]
                 for row in latent["dashboard"]],
            )
            lines.append("")
        sections.append(("Diff-SAE and KL dashboards", lines, None))
    p = results["provenance"]
    lines = [
        f"- base model: `{p['models']['base']}`", f"- chat model: `{p['models']['chat']}`",
        f"- shape: {p['model_shape']}", f"- seed: {p['seed']}, device: {p['device']}",
    ]
    for kind, entries in p["saes"].items():
        for h, e in entries.items():
            lines.append(f"- {kind} SAE {h}: `{e['path']}` sha256 `{e['fingerprint'][:16]}…` ({'trained here' if e['trained_here'] else 'loaded'})")
    lines.append("- data: " + "; ".join(f"{k}={v}" for k, v in p["data"].items()))
    lines.append("- packages: " + ", ".join(f"{k} {v}" for k, v in p["packages"].items()))
    lines.append("- timings: " + ", ".join(
        f"{k} {t['seconds']:.1f}s{' (cached)' if t['cached'] else ''}" for k, t in p["timings"].items()))
    lines.append(f"- total wall time: {p['total_seconds']:.1f}s")
    sections.append(("Provenance", lines, None))
    return sections


def _escape_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "⏎")


def render_figures(results: dict) -> dict[str, bytes]:
    stages = results["stages"]
    out = {}
    if "transfer" in stages:
        out["fig1"] = figures.fig1_transfer(stages["transfer"])
    if "interventions" in stages:
        out["fig2"] = figures.fig2_interventions(stages["interventions"])
    if "drift" in stages:
        out["fig3"] = figures.fig3_drift(stages["drift"])
    return out


def write_reports(results: dict, out: Path) -> tuple[Path, Path]:
    out = Path(out)
    pngs = render_figures(results)
    sections = markdown_sections(results)
    (out / "figures").mkdir(exist_ok=True)
    md = [f"# Feature Drift replication: {results['name']}", "",
          f"results.json schema version {results['schema_version']}; stages: {', '.join(results['stages'])}.", ""]
    body = [f"<h1>Feature Drift replication: {html.escape(results['name'])}</h1>"]
    for title, lines, figure in sections:
        md += [f"## {title}", "", *lines, ""]
        body.append(f"<h2>{html.escape(title)}</h2>")
        body.append(_markdown_to_html(lines))
        if figure and figure in pngs:
            (out / "figures" / f"{figure}.png").write_bytes(pngs[figure])
            md += [f"![{title}](figures/{figure}.png)", ""]
            encoded = base64.b64encode(pngs[figure]).decode("ascii")
            body.append(f'<img alt="{html.escape(title)}" src="data:image/png;base64,{encoded}"/>')
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text("\n".join(md), encoding="utf-8")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;} table{border-collapse:collapse;margin:1em 0;}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;} img{max-width:100%;}")
    html_path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(results['name'])}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>",
        encoding="utf-8",
    )
    return md_path, html_path


def _markdown_to_html(lines: list[str]) -> str:
    """The few markdown shapes the sections use: tables, bullets, paragraphs."""
    out, table = [], []

    def flush():
        if table:
            header, *rows = [r for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
            cells = lambda r, tag: "".join(f"<{tag}>{html.escape(c.strip())}</{tag}>" for c in r.strip().strip("|").split(" | "))  # noqa: E731
            out.append("<table><tr>" + cells(header, "th") + "</tr>" + "".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows) + "</table>")
            table.clear()

    for line in lines:
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("- "):
            out.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{html.escape(line).replace('**', '')}</p>")
    flush()
    return "\n".join(out)
