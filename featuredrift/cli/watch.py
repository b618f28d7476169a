"""`featuredrift watch`: evaluate a job you cannot change through its checkpoint folder."""

from __future__ import annotations

from pathlib import Path

import typer


def watch(
    folder: Path = typer.Argument(..., help="A Trainer output folder with checkpoint-<step> directories."),
    sae: str = typer.Option(..., envvar="FEATUREDRIFT_SAE", help="SAE source of the base model (dir, Hub id, zoo:<size>)."),
    probes: str = typer.Option("default", envvar="FEATUREDRIFT_PROBES", help="Probe set: 'default', a directory or zoo:<size>."),
    reference: str = typer.Option(
        None, help="The model training started from (required for full-weight checkpoints; LoRA adapters name their base)."
    ),
    hookpoint: list[str] = typer.Option(None, help="Hookpoints (layers.N); default every SAE in the source."),
    db: str = typer.Option(None, envvar="FEATUREDRIFT_STORE_URL", help="Run store URL."),
    pushgateway: str = typer.Option(None, envvar="FEATUREDRIFT_PUSHGATEWAY_URL", help="Pushgateway URL."),
    run_name: str = typer.Option(None, help="Run name (default: the folder name)."),
    interval: float = typer.Option(30.0, help="Seconds between scans for new checkpoints."),
    once: bool = typer.Option(False, help="Evaluate what is there now and exit."),
) -> None:
    """Watch a training job from outside through its checkpoint folder."""
    from featuredrift.callbacks.watch import watch as watch_folder
    from featuredrift.cli.output import error_line
    from featuredrift.monitor.config import MonitorConfig
    from featuredrift.monitor.drift_monitor import MonitorError
    from featuredrift.text import printable

    settings = {"sae": sae, "probes": probes, "hookpoints": hookpoint or None, "run_name": run_name, "pushgateway_url": pushgateway}
    if db:
        settings["store_url"] = db
    try:
        watch_folder(
            folder, MonitorConfig(**settings), reference=reference, interval_s=interval, once=once,
            on_report=lambda r: typer.echo(f"step {r.step}: evaluated in {r.timings.get('total', 0):.2f}s"),
            on_warning=lambda message: typer.secho(f"warning: {printable(message)}", fg=typer.colors.YELLOW, err=True),
        )
    except MonitorError as error:
        error_line(error)
        raise typer.Exit(2) from error
