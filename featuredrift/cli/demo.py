"""`featuredrift demo`: a monitored fine-tuning run on the embedded zoo."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from featuredrift.cli.zoo import ZooSize


class Scenario(str, Enum):
    align = "align"
    erosion = "erosion"
    benign = "benign"
    overrefusal = "overrefusal"


def demo(
    scenario: Scenario = typer.Option(
        Scenario.align,
        help="align: base → chat, refusal features emerge; erosion: chat → harmful-compliant SFT, they fade; "
        "benign: chat → harmless SFT, nothing critical should fire; overrefusal: chat → SFT that refuses half the "
        "harmless requests, the over-refusal alerts fire.",
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
    from featuredrift.zoo.demo import run_demo

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
