"""`featuredrift report RUN`: plots of a stored run as PNGs and one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path

import typer

from featuredrift.cli.output import echo, error_line
from featuredrift.cli.runs import DB_HELP, default_store_url


def report_command(
    run: str = typer.Argument(..., help="Run name in the store."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP, show_default=False),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default: featuredrift-out/report-<run>, "
                                    "the run name made safe as one folder name)."),
) -> None:
    """An HTML report of a run: findings, charts per layer with thresholds and alerts, feature cards."""
    from featuredrift.reports.html import write_run_report
    from featuredrift.store.errors import StoreError
    from featuredrift.store.journal import safe_file_name
    from featuredrift.store.run_store import RunStore

    out = out or Path("featuredrift-out") / f"report-{safe_file_name(run)}"
    try:
        with RunStore(db or default_store_url(), read_only=True) as store:
            files = write_run_report(store, run, out)
    except (StoreError, ValueError) as error:
        error_line(error)
        raise typer.Exit(2) from error
    echo(f"wrote {files.html} ({len(files.images)} charts)")
