"""The `featuredrift` command line: this module only assembles the command groups, one module
each in this folder. They import heavy libraries (torch, transformers) inside their commands so
that `featuredrift --help` stays instant."""

from __future__ import annotations

import typer

from featuredrift.cli.alerts import app as alerts_app
from featuredrift.cli.audit import audit_command
from featuredrift.cli.bench import bench
from featuredrift.cli.demo import demo
from featuredrift.cli.diff import app as diff_app
from featuredrift.cli.grafana import app as grafana_app
from featuredrift.cli.judges import app as judges_app
from featuredrift.cli.probes import app as probes_app
from featuredrift.cli.replicate import replicate as replicate_command
from featuredrift.cli.report import report_command
from featuredrift.cli.runs import app as runs_app
from featuredrift.cli.sae import app as sae_app
from featuredrift.cli.watch import watch
from featuredrift.cli.zoo import app as zoo_app

app = typer.Typer(
    name="featuredrift",
    help="Monitor how fine-tuning makes a model's sparse-autoencoder features drift.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(zoo_app, name="zoo")
app.add_typer(sae_app, name="sae")
app.add_typer(probes_app, name="probes")
app.add_typer(judges_app, name="judges")
app.add_typer(runs_app, name="runs")
app.add_typer(alerts_app, name="alerts")
app.add_typer(grafana_app, name="grafana")
app.add_typer(diff_app, name="diff")
app.command("report")(report_command)
app.command("audit")(audit_command)
app.command("replicate")(replicate_command)
app.command()(demo)
app.command()(bench)
app.command()(watch)


def _print_version(value: bool) -> None:
    if value:
        from featuredrift import __version__

        typer.echo(f"featuredrift {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Monitor how fine-tuning makes a model's sparse-autoencoder features drift."""


def main() -> None:
    from featuredrift.extras import MissingExtraError

    try:
        app()
    except MissingExtraError as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
