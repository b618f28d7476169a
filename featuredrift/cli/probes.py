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
    from rich.markup import escape

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
    table = new_table(f"probes in {escape(source)}", ("subset", "rows", "rows per split", "categories", "benchmark",
                                                      "file", "sha256", "fingerprint"))
    for s in summaries:
        origin = s.origin
        categories = ", ".join(f"{c} ({n})" for c, n in s.categories.items()) or "—"
        table.add_row(
            s.subset, str(s.rows), ", ".join(f"{k}: {v}" for k, v in s.splits.items()), escape(categories),
            escape(f"{origin.benchmark} ({origin.layout}, split {origin.split})") if origin and origin.benchmark else "—",
            escape(str(origin.file or origin.dataset)) if origin and (origin.file or origin.dataset) else "—",
            origin.sha256 if origin and origin.sha256 else "—", s.fingerprint,
        )
    console.print(table)
