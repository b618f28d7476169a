"""report.md and a self-contained report.html (figures embedded as base64 PNG) from
results.json: Fig. 1–3, Table 1, the findings, the diff-SAE analysis, the post's steering,
hybrid-model and dataset-level experiments, the paper readings (and their effects) and provenance."""

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
            f"Hookpoint {ds['hookpoint']}; diff-SAE " + (f"loaded from `{ds['training']['loaded']}`" if ds["training"].get("loaded")
            else f"trained ({ds['training'].get('activation', 'topk')}) {ds['training']['steps']} steps on "
                 f"{ds['training']['tokens']} tokens") + "; "
            f"held-out FVU of x_chat − x_base: base data {_fmt(ds['held_out_fvu']['base'])}, chat data {_fmt(ds['held_out_fvu']['chat'])}.",
            f"Mean next-token KL(base ‖ chat) on chat text: {_fmt(ds['mean_kl'], 4)}; {ds['high_kl']['positions']} highest-KL positions "
            f"(mean {_fmt(ds['high_kl']['mean'], 4)}).",
            f"Best-latent alignment with −∇KL (mean over positions): diff-SAE {_fmt(ds['alignment']['diff_sae'])}, "
            f"base SAE {_fmt(ds['alignment']['base_sae'])}" + (
                f"; chance (random unit dictionaries of {ds['num_latents']['diff_sae']} and "
                f"{ds['num_latents']['base_sae']} rows): {_fmt(ds['alignment_chance']['diff_sae'])} and "
                f"{_fmt(ds['alignment_chance']['base_sae'])}; the base SAE cut to {ds['num_latents']['diff_sae']} "
                f"random latents: {_fmt(ds['alignment_base_sae_at_diff_size'])}" if "alignment_chance" in ds else "") + ".",
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
    if "steering" in stages:
        sections += steering_sections(stages["steering"])
    sections.append(readings_section(results))
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


def steering_sections(st: dict) -> list[tuple[str, list[str], str | None]]:
    """Steering validation, the hybrid rollouts and dataset-level steering, the post's numbers beside ours."""
    post = st["post"]
    unit = st["unit"]["value"]
    v = st["validation"]
    lines = [
        f"Hookpoint {st['hookpoint']}; λ ∈ {st['scales']} × {unit:.3f} (mean ‖x_chat − x_base‖ there); at each "
        "position the best λ (lowest KL, λ = 0 included) is kept, for every dictionary alike.", "",
    ]
    lines += _table(
        ["steered with", "median KL change (best λ each)", "KL halved at", "mean P(chat token) before → after",
         "top token becomes chat's", "mean KL change, one λ for all", "first-order cos"],
        [[name.replace("_", " ") + (f" (mean of {s['draws']} dictionaries)" if "draws" in s else ""),
          f"{s['median_kl_change']:+.0%}", f"{s['kl_halved_share']:.0%}",
          f"{s['mean_chat_token_probability_before']:.2f} → {s['mean_chat_token_probability_after']:.2f}",
          f"{s['top_token_becomes_chat_share']:.0%}",
          f"{s['kl_change_at_common_scale']:+.0%} (λ {s['common_scale']:g}×)" if "common_scale" in s else "—",
          s["first_order"]] for name, s in v.items()]
        + [["the post (one context)", f"{post['kl_change']:+.0%}", "—", f"? → {post['chat_token_probability_after']}", "—",
            "—", None]],
    )
    lines += ["", "Diff-SAE latent at each position:", ""]
    lines += _table(
        ["context", "base → chat token", "latent", "λ", "KL before → after", "P(chat token)"],
        [[_escape_cell(r["context"][-50:]), f"{r['base_token']!r} → {r['chat_token']!r}", r["latent"], f"{r['scale']:g}",
          f"{r['kl_before']:.2f} → {r['kl_after']:.2f}",
          f"{r['chat_token_probability_before']:.3f} → {r['chat_token_probability_after']:.3f}"]
         for r in v["diff_sae"]["per_position"]],
    )
    sections = [("Steering validation (the post's step 3, checked)", lines, "steering")]
    hybrid = st.get("hybrid")
    if hybrid:
        s = hybrid["sampling"]
        lines = [
            f"Hybrid: the base model's embedding and blocks 0–{hybrid['base_blocks'] - 1}, the chat model's blocks after "
            f"and its head. Context (last tokens): `{_escape_cell(hybrid['context'])}`; target continuation "
            f"{hybrid['target']!r} (the token the chat model suppresses most there); steering: latent {hybrid['latent']} "
            f"at λ = {hybrid['scale']:.2f}.",
            f"Sampling: {s['num_rollouts']} rollouts, {s['max_new_tokens']} new tokens, temperature {s['temperature']}, "
            f"top-p {s['top_p']}, top-k {s['top_k']} (0 = off), seed {s['seed']}.", "",
        ]
        lines += _table(
            ["model", "target share", "most common continuations"],
            [[MODEL_LABELS.get(name, name), _pct(m["target_share"]),
              ", ".join(f"{_escape_cell(t)!r} {share:.0%}" for t, share in m["top"][:4])]
             for name, m in hybrid["models"].items()]
            + [["the post (hybrid → + latent)", f"{post['rollout_share_before']:.0%} → {post['rollout_share_after']:.0%}",
                f"of {post['num_rollouts']} rollouts"]],
        )
        sections.append(("Hybrid-model rollouts", lines, None))
    datasets = st.get("datasets") or []
    if datasets:
        lines = []
        for d in datasets:
            lines += [
                f"**{d['name']}**: {d['prompts']} prompts ({d['control_prompts']} control), behaviour: "
                f"{d['behaviour'] if isinstance(d['behaviour'], str) else ', '.join(d['behaviour'])}; KL summed over "
                f"{d['response_tokens']} chat response tokens ({d['summed_kl']:.1f} nats); lowest attribution: latent "
                f"{d['latent']} ({d['attribution']:.3f}; next: " + ", ".join(f"{j} ({a:.3f})" for j, a in d["lowest"][1:4]) + ").",
                "",
            ]
            lines += _table(
                ["λ", "chat − latent", "chat − random", "chat + latent (control)", "base + latent"],
                [[f"{r['scale']:g}", *(_rate(r.get(key)) for key in
                  ("chat_negative", "chat_negative_random", "chat_positive", "base_positive"))] for r in d["steering"]],
            )
            lines.append("")
        sections.append(("Dataset-level attribution and steering", lines, "dataset_steering"))
    return sections


MODEL_LABELS = {"base": "base", "chat": "chat", "hybrid": "hybrid", "hybrid_steered": "hybrid + latent"}


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def _rate(entry: dict | None) -> str:
    if entry is None:
        return "—"
    degenerate = f" ({entry['degenerate']:.0%} degenerate)" if entry.get("degenerate") else ""
    return f"{entry['rate']:.0%}{degenerate}"


def readings_section(results: dict) -> tuple[str, list[str], None]:
    """Every paper reading: this run's value, ours, the paper's and where it is read from; with
    `reading_effects`, the headline numbers each one moves when flipped."""
    from featuredrift.monitor.readings import READINGS

    used = results["provenance"].get("paper_readings") or {}
    side = results["provenance"].get("paper_readings_side", "")
    lines = [f"This run reads the paper **{side}** way (`paper_readings: {side}`)." if side in ("ours", "paper")
             else "This run mixes our readings and the paper's.", ""]
    lines += _table(
        ["reading", "this run", "ours", "paper", "the paper's choice is read from", "moves"],
        [[r.name, used.get(r.name, "—"), r.ours, r.paper, r.paper_source, ", ".join(r.moves)] for r in READINGS],
    )
    effects = results.get("reading_effects")
    if not effects:
        lines += ["", "Run with `--set reading_effects=true` to measure how far each reading moves each number."]
        return ("Paper readings", lines, None)
    lines += ["", "Each reading flipped on its own (everything else as this run):", ""]
    for effect in effects:
        title = f"**{effect['reading']}**: {effect['this_run']} → {effect['flipped']}"
        if effect.get("error"):
            lines += [f"{title}: {effect['error']}", ""]
            continue
        if not effect["numbers"]:
            lines += [f"{title}: no headline number moves.", ""]
            continue
        lines += [title, ""]
        lines += _table(["number", "this run", "flipped", "Δ"],
                        [[n["metric"], n["this_run"], n["flipped"], n["delta"]] for n in effect["numbers"]])
        lines.append("")
    return ("Paper readings and their effects", lines, None)


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
    if "steering" in stages:
        out["steering"] = figures.fig_steering(stages["steering"])
        if stages["steering"].get("datasets"):
            out["dataset_steering"] = figures.fig_dataset_steering(stages["steering"])
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
