"""The `featuredrift` command line. Each command group lives next to the code it drives;
this module only assembles them. Sub-modules import heavy libraries (torch, transformers)
inside their commands so that `featuredrift --help` stays instant."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from featuredrift.alerts.cli import app as alerts_app
from featuredrift.monitor.grafana.cli import app as grafana_app
from featuredrift.monitor.replicate.cli import replicate as replicate_command
from featuredrift.monitor.report_cli import report_command
from featuredrift.monitor.store.cli import app as runs_app
from featuredrift.monitor.zoo.cli import app as zoo_app
from featuredrift.sae_store.cli import app as sae_app

app = typer.Typer(
    name="featuredrift",
    help="Monitor how fine-tuning makes a model's sparse-autoencoder features drift.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(zoo_app, name="zoo")
app.add_typer(sae_app, name="sae")
app.add_typer(runs_app, name="runs")
app.add_typer(alerts_app, name="alerts")
app.add_typer(grafana_app, name="grafana")
app.command("report")(report_command)
app.command("replicate")(replicate_command)


class Scenario(str, Enum):
    align = "align"
    erosion = "erosion"
    benign = "benign"


class ZooSize(str, Enum):
    nano = "nano"
    tiny = "tiny"


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


@app.command()
def demo(
    scenario: Scenario = typer.Option(
        Scenario.align,
        help="align: base → chat, refusal features emerge; erosion: chat → harmful-compliant SFT, they fade; "
        "benign: chat → harmless SFT, nothing critical should fire.",
    ),
    size: ZooSize = typer.Option(ZooSize.tiny, help="Zoo size: nano (fast) or tiny."),
    steps: int = typer.Option(0, help="Training steps (0 = the zoo's SFT recipe)."),
    eval_every: int = typer.Option(0, help="Steps between drift evaluations (0 = about 8 per run)."),
    lora: bool = typer.Option(False, help="Fine-tune LoRA adapters; the reference is the model with adapters disabled."),
    out: Path = typer.Option(Path("featuredrift-out"), help="Where the run store and trainer output go."),
    db: str = typer.Option(None, help="Run store URL (default: sqlite in --out)."),
    pushgateway: str = typer.Option(None, envvar="FEATUREDRIFT_PUSHGATEWAY_URL", help="Push to this Pushgateway instead of serving /metrics."),
    metrics_port: int = typer.Option(9464, help="Port of the /metrics endpoint served during the run (0 = any free port)."),
    run_name: str = typer.Option(None, help="Run name (default: demo-<scenario>-<size>-<time>)."),
    stop_on_alert: bool = typer.Option(False, help="Stop training when a critical alert fires."),
) -> None:
    """Run a monitored fine-tuning demo on the embedded model zoo."""
    from featuredrift.monitor.demo import run_demo

    run_demo(
        scenario.value,
        size.value,
        out=out,
        max_steps=steps or None,
        eval_every=eval_every or None,
        lora=lora,
        store_url=db,
        pushgateway_url=pushgateway,
        metrics_port=metrics_port,
        run_name=run_name,
        stop_on_alert=stop_on_alert,
    )


@app.command()
def bench(
    shape: str = typer.Option(None, help="Measure at a real model's shape (llama-3.2-1b, gemma-2-2b, qwen2.5-0.5b, tiny) "
                              "instead of the zoo: random weights, nothing downloaded."),
    size: ZooSize = typer.Option(ZooSize.tiny, help="Zoo size to measure on (without --shape)."),
    steps: int = typer.Option(200, help="Training steps per run (zoo bench)."),
    eval_every: int = typer.Option(50, help="Evaluation cadence (the callback's default is 50)."),
    repeats: int = typer.Option(2, help="Repeats per measurement (the fastest counts)."),
    layers: int = typer.Option(2, help="--shape: decoder blocks built (costs of the SAE and metrics do not depend on depth)."),
    latents: int = typer.Option(65_536, help="--shape: SAE latents (the paper's 65,536; shrink on CPU)."),
    k: int = typer.Option(100, help="--shape: SAE top-k."),
    device: str = typer.Option("cpu", help="--shape: cpu or cuda."),
    train_batch: int = typer.Option(8, help="--shape: batch of the realistic training step the share is stated for."),
    train_seq: int = typer.Option(512, help="--shape: sequence length of that step."),
    measure_batch: int = typer.Option(1, help="--shape: batch of the training step actually timed."),
    measure_seq: int = typer.Option(128, help="--shape: sequence length of the timed step (timed at it and at half, fitted as fixed + per-token cost)."),
    probes: int = typer.Option(4, help="--shape: prompts and texts per probe subset."),
    probe_length: int = typer.Option(128, help="--shape: probe texts truncated to this many tokens."),
    offline: bool = typer.Option(True, help="--shape: also time the offline route (save, reload in a fresh process, recompute)."),
    scaling: bool = typer.Option(True, help="--shape: also measure the scaling table."),
    json_out: Path = typer.Option(None, "--json", help="Also write the numbers to this JSON file."),
) -> None:
    """Measure the monitor's overhead (on the zoo, or at a real model's shape) and print ratios against the targets."""
    import json

    from rich.console import Console

    console = Console(stderr=True)

    def progress(status, message: str) -> None:  # a spinner on a terminal, a log line otherwise
        status.update(message)
        if not console.is_terminal:
            console.log(message)

    if shape:
        from featuredrift.monitor.bench_real import (
            ShapeBenchSettings,
            print_shape_benchmark,
            run_shape_benchmark,
        )

        settings = ShapeBenchSettings(
            shape=shape, layers=layers, latents=latents, k=k, device=device, train_batch=train_batch, train_seq=train_seq,
            measure_batch=measure_batch, measure_seq=measure_seq, eval_every=eval_every, probes=probes,
            probe_length=probe_length, repeats=repeats, offline=offline, scaling=scaling,
        )
        try:
            settings.check()
        except ValueError as error:
            raise typer.BadParameter(str(error)) from None
        with console.status("benchmark") as status:
            results = run_shape_benchmark(settings, progress=lambda message: progress(status, message))
        print_shape_benchmark(results)
    else:
        from featuredrift.monitor.bench import print_benchmark, run_benchmark

        with console.status("benchmark") as status:
            results = run_benchmark(size.value, steps, eval_every, repeats, progress=lambda message: progress(status, message))
        print_benchmark(results)
    if json_out:
        json_out.write_text(json.dumps(results, indent=2))


@app.command()
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
    from featuredrift.monitor.config import MonitorConfig
    from featuredrift.monitor.drift_monitor import MonitorError
    from featuredrift.monitor.watch import watch as watch_folder

    settings = {"sae": sae, "probes": probes, "hookpoints": hookpoint or None, "run_name": run_name, "pushgateway_url": pushgateway}
    if db:
        settings["store_url"] = db
    try:
        watch_folder(
            folder, MonitorConfig(**settings), reference=reference, interval_s=interval, once=once,
            on_report=lambda r: typer.echo(f"step {r.step}: evaluated in {r.timings.get('total', 0):.2f}s"),
            on_warning=lambda message: typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True),
        )
    except MonitorError as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from error


def main() -> None:
    from featuredrift.monitor.extras import MissingExtraError

    try:
        app()
    except MissingExtraError as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
