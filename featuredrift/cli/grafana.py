"""`featuredrift grafana …` commands."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Write featuredrift's Grafana dashboards, or upload them to Grafana.", no_args_is_help=True)


@app.command()
def push(
    url: str = typer.Option(..., "--url", envvar="GRAFANA_URL", help="Grafana base URL, e.g. http://localhost:3000."),
    token: str = typer.Option(
        None, "--token", envvar="GRAFANA_TOKEN", help="Service-account token (Editor); user:pass in the URL also works."
    ),
    folder: str = typer.Option("featuredrift", "--folder", help="Dashboard folder (created if missing)."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds per HTTP request."),
) -> None:
    """Upload the featuredrift dashboards (idempotent: stable uids, overwrite)."""
    from featuredrift.dashboards.push import GrafanaPushError, push_dashboards

    try:
        pushed = push_dashboards(url, token, folder=folder, timeout_s=timeout)
    except GrafanaPushError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    for dashboard in pushed:
        typer.echo(f"pushed {dashboard.uid} ({dashboard.title}) to folder {dashboard.folder_uid}: {dashboard.url or ''}")


@app.command()
def generate(
    out: Path = typer.Option(Path("."), "--out", "-o", help="Folder to write the dashboard JSON files into."),
) -> None:
    """Write the dashboard JSON files (the ones Grafana provisioning and `push` use) into a folder."""
    from featuredrift.dashboards.spec import write_all

    for path in write_all(out):
        typer.echo(f"wrote {path}")
