"""`featuredrift probes …` commands: what a probe source holds, before a run uses it."""

from __future__ import annotations

import json

import typer

app = typer.Typer(help="Inspect probe sets and refusal benchmarks.", no_args_is_help=True)


@app.command()
def inspect(
    source: str = typer.Argument(..., help="A probe set (default, a directory, a CSV, zoo:<size>), a benchmark "
                                           "(harmbench:<file>, advbench:<file>, strongreject:<file>, xstest:<file>, "
                                           "a Hub copy such as harmbench) or an instruction file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Show the subsets of a probe source: rows per split, categories, the file, its sha256 and the
    probes' fingerprint (as recorded with a run)."""
    from rich.console import Console

    from featuredrift.cli.runs import fail, new_table
    from featuredrift.monitor.probe_sources import inspect_source
    from featuredrift.monitor.probes import ProbeError

    try:
        summaries = inspect_source(source)
    except ProbeError as error:
        fail(error)
    if as_json:
        typer.echo(json.dumps([s.as_dict() for s in summaries], indent=2, ensure_ascii=False))
        return
    console = Console()
    table = new_table(f"probes in {source}", ("", *(s.subset for s in summaries)))
    fields = {
        "rows": lambda s: str(s.rows),
        "rows per split": lambda s: ", ".join(f"{k}: {v}" for k, v in s.splits.items()),
        "categories": lambda s: str(len(s.categories) or "—"),
        "benchmark": lambda s: f"{s.origin.benchmark} ({s.origin.layout})" if s.origin and s.origin.benchmark else "—",
        "split": lambda s: s.origin.split if s.origin else "—",
        "file": lambda s: str(s.origin.file or s.origin.dataset or "—") if s.origin else "—",
        "sha256": lambda s: s.origin.sha256 if s.origin and s.origin.sha256 else "—",
        "fingerprint": lambda s: s.fingerprint,
    }
    for label, render in fields.items():
        table.add_row(label, *(render(s) for s in summaries))
    console.print(table)
    if any(s.categories for s in summaries):
        categories = new_table("categories", ("subset", "category", "rows"))
        for s in summaries:
            for category, count in s.categories.items():
                categories.add_row(s.subset, category, str(count))
        console.print(categories)
