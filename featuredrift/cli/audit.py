"""`featuredrift audit DATA --model … --sae …`: which training examples would erode refusal or teach over-refusal.

The same audit the callback runs at train begin (monitor/audit.py), on a data file, before any
training: the model (the one you are about to fine-tune) reads each example's prompt, and each
gets its harmfulness and its target's refusal reading. With `--label FIELD` (rows carrying a
boolean, e.g. from `featuredrift zoo data`), it states how well each score picks those rows (AUROC).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

AUROC_SCORES = (
    ("harmfulness", lambda e: e.harmfulness),
    ("refusal direction", lambda e: e.direction_score),
    ("refusal features", lambda e: e.feature_score),
    ("reference P(refusal) at the target", lambda e: e.refusal_probability),
    ("target refuses (judge)", lambda e: float(e.target_refuses)),
    ("erosion risk", lambda e: -1.0 if e.erosion_risk is None else e.erosion_risk),
    ("over-refusal risk", lambda e: -1.0 if e.over_refusal_risk is None else e.over_refusal_risk),
)


def read_rows(path: Path) -> list[dict]:
    """Rows of a JSONL file (conversations, prompt-completion pairs, or tokenised rows)."""
    from featuredrift.monitor.probes import read_json_lines

    if not path.is_file():
        raise ValueError(f"{path}: expected a JSONL file of training examples, found no file")
    rows = [row for _, row in read_json_lines(path)]
    if not rows:
        raise ValueError(f"{path}: expected at least one training example, found none")
    return rows


def label_of(row: dict, label: str, where: str) -> bool:
    value = (row.get("labels") or {}).get(label, row.get(label))
    if not isinstance(value, bool):
        raise ValueError(f"{where}: expected a boolean '{label}' (in the row or its 'labels'), found {value!r}")
    return value


def audit_command(
    data: Path = typer.Argument(..., help="JSONL training data: {'messages': [...]}, {'prompt', 'completion'}, or tokenised rows."),
    model: str = typer.Option(..., "--model", help="The model about to be fine-tuned (a directory or Hub id): it reads the examples."),
    sae: str = typer.Option(..., "--sae", help="Its SAE (sparsify or SAELens directory, Hub id, saelens:<release>/<id>, zoo:<size>)."),
    probes: str = typer.Option("default", "--probes", help="Probe set whose harmful/harmless prompts set the 0–1 scale."),
    hookpoints: list[str] | None = typer.Option(None, "--hookpoint", help="Hookpoint(s) to read (default: every SAE)."),
    limit: int = typer.Option(256, "--limit", min=1, help="Read at most this many examples, spread over the file."),
    shown: int = typer.Option(10, "--show", min=0, help="Examples listed per table."),
    label: str | None = typer.Option(None, "--label", help="A boolean field of each row: print the AUROC of every score for it."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the audit (and AUROCs) here."),
    prompt_format: str = typer.Option("chat", "--prompt-format", help="chat (the tokenizer's template) or base."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, …"),
) -> None:
    """Audit training data before (or without) training: the examples most likely to erode refusal or teach over-refusal."""
    from rich.console import Console

    from featuredrift.cli.runs import new_table, print_audit

    console = Console()
    try:
        rows = read_rows(data)
        labels = [label_of(row, label, f"{data}:{i + 1}") for i, row in enumerate(rows)] if label else None
    except ValueError as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from error
    audits = run_audit(rows, model=model, sae=sae, probes=probes, hookpoints=hookpoints, limit=limit,
                       prompt_format=prompt_format, device=device)
    print_audit(console, audits, shown)
    aurocs = {}
    if labels is not None:
        from featuredrift.monitor.audit import auroc

        for audit in audits:
            picked = [labels[e.example] for e in audit.examples]
            aurocs[audit.hookpoint] = {name: auroc([score(e) if score(e) is not None else math.nan for e in audit.examples],
                                                   picked) for name, score in AUROC_SCORES}
            table = new_table(f"AUROC for picking the rows labelled '{label}' ({sum(picked)} of {len(picked)}) at "
                              f"{audit.hookpoint}", ("score", "AUROC"))
            for name, value in aurocs[audit.hookpoint].items():
                table.add_row(name, "—" if math.isnan(value) else f"{value:.3f}")
            console.print(table)
    if json_out is not None:
        document = {"data": str(data), "model": model, "sae": sae, "audits": [a.to_dict() for a in audits]}
        if label:
            document["auroc"] = {"label": label, **aurocs}
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(document, indent=1, allow_nan=True))
        console.print(f"wrote {json_out}")


def run_audit(rows: list[dict], *, model: str, sae: str, probes: str, hookpoints: list[str] | None, limit: int,
              prompt_format: str, device: str | None):
    """Load the model, read the reference statistics the scores are scaled by, audit a sample of `rows`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from featuredrift.monitor.audit import sample_indices
    from featuredrift.monitor.config import MonitorConfig
    from featuredrift.monitor.drift_monitor import DriftMonitor

    tokenizer = AutoTokenizer.from_pretrained(model)
    loaded = AutoModelForCausalLM.from_pretrained(model).eval()
    if device:
        loaded = loaded.to(device)
    monitor = DriftMonitor(MonitorConfig(sae=sae, hookpoints=hookpoints or None, probes=probes, prompt_format=prompt_format,
                                         refusal_score_every=0, kl_every=0, feature_contexts=0, device=device))
    monitor.start(loaded, tokenizer)
    sample = [(i, rows[i]) for i in sample_indices(len(rows), limit)]
    return monitor.audit(loaded, sample, len(rows))
