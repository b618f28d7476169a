"""`featuredrift judges …` commands: how far each refusal judge agrees with people."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="Measure refusal judges against human labels.", no_args_is_help=True)


@app.command()
def evaluate(
    files: list[Path] = typer.Argument(..., help="CSV files of human-labelled responses (PyRIT's refusal-scorer "
                                                 "layout objective,assistant_response,human_score, or prompt,response,refused)."),
    judge: list[str] = typer.Option(None, "--judge", help="Refusal judge spec (repeat); default: every built-in "
                                                          "judge (substring, lecture). wildguard:<path> works too."),
    errors: bool = typer.Option(False, "--errors", help="List the responses each judge got wrong."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Precision, recall and F1 of refusal judges on human-labelled responses (all files together)."""
    from rich.console import Console

    from featuredrift.cli.runs import fail, new_table
    from featuredrift.monitor.judge_evaluation import (
        answers_to_another_request,
        read_labelled_responses,
        score_judge,
    )
    from featuredrift.monitor.judges import BUILT_IN_REFUSAL_JUDGES, get_refusal_judge
    from featuredrift.monitor.probes import ProbeError

    try:
        rows = [row for path in files for row in read_labelled_responses(path)]
        judges = [get_refusal_judge(spec) for spec in (judge or list(BUILT_IN_REFUSAL_JUDGES))]
        elsewhere = answers_to_another_request(rows)
        on_topic = [row for row, other in zip(rows, elsewhere, strict=True) if not other]
        sets = {"all": rows, "on-topic": on_topic}
        results = {(j.name, name): score_judge(j, chosen) for j in judges for name, chosen in sets.items()}
    except (ProbeError, ValueError, FileNotFoundError) as error:
        fail(error)
    if as_json:
        typer.echo(json.dumps([{**score.as_dict(), "rows_set": name, **({"wrong": [
            {"where": r.where, "prompt": r.prompt, "response": r.response, "labelled_refusal": r.refused}
            for r, _ in wrong]} if errors else {})} for (_, name), (score, wrong) in results.items()],
            indent=2, ensure_ascii=False))
        return
    console = Console()
    table = new_table(f"refusal judges on {len(rows)} human-labelled responses ({sum(r.refused for r in rows)} refusals; "
                      f"on-topic: without the {len(rows) - len(on_topic)} labelled refusals that answer another request)",
                      ("judge", "rows", "precision", "recall", "F1", "true pos.", "false pos.", "false neg.", "true neg."))
    for (judge_name, name), (score, _) in results.items():
        table.add_row(judge_name, f"{name} ({score.rows})", f"{score.precision:.3f}", f"{score.recall:.3f}",
                      f"{score.f1:.3f}", str(score.true_positives), str(score.false_positives),
                      str(score.false_negatives), str(score.true_negatives))
    console.print(table)
    results = [value for (_, name), value in results.items() if name == "all"]
    if errors:
        for score, wrong in results:
            listing = new_table(f"{score.judge}: {len(wrong)} responses judged differently from people",
                                ("where", "people", "judge", "response"))
            for row, said in wrong:
                listing.add_row(row.where, "refusal" if row.refused else "no refusal",
                                "refusal" if said else "no refusal", row.response[:160])
            console.print(listing)
