"""`featuredrift bench`: the monitor's overhead as ratios against its targets."""

from __future__ import annotations

from pathlib import Path

import typer

from featuredrift.cli.zoo import ZooSize


def bench(
    shape: str = typer.Option(None, help="Measure at a real model's shape (llama-3.2-1b, gemma-2-2b, qwen2.5-0.5b, tiny) "
                              "instead of the zoo: random weights, nothing downloaded."),
    size: ZooSize = typer.Option(ZooSize.tiny, help="Zoo size to measure on (without --shape)."),
    steps: int = typer.Option(200, help="Training steps per run (zoo bench)."),
    eval_every: int = typer.Option(50, help="Evaluation cadence (the callback's default is 50)."),
    repeats: int = typer.Option(2, help="Repeats per measurement (the fastest counts; --store: the median)."),
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
    store: bool = typer.Option(False, "--store", help="Time the run store instead: build a store of --runs × "
                               "--evaluations and time every Grafana SQL panel and `runs list/show/compare`."),
    store_url: list[str] = typer.Option([], "--store-url", help="--store: an empty database to build it in (repeat for "
                                        "SQLite and PostgreSQL; default: a fresh SQLite file in a temp folder)."),
    runs: int = typer.Option(1000, help="--store: runs in the store."),
    evaluations: int = typer.Option(100, help="--store: evaluations per run."),
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

    if store:
        import tempfile

        from featuredrift.bench.store_load import (
            StoreLoadSettings,
            print_store_load,
            run_store_load,
        )

        with tempfile.TemporaryDirectory(prefix="featuredrift-store-load-") as tmp:
            settings = StoreLoadSettings(urls=store_url or [f"sqlite:///{tmp}/load.db"], runs=runs,
                                         evaluations=evaluations, repeats=repeats)
            try:
                settings.check()
            except ValueError as error:
                raise typer.BadParameter(str(error)) from None
            with console.status("store load") as status:
                results = run_store_load(settings, _runs_command, progress=lambda message: progress(status, message))
        print_store_load(results)
    elif shape:
        from featuredrift.bench.shapes import (
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
        from featuredrift.bench.zoo import print_benchmark, run_benchmark

        with console.status("benchmark") as status:
            results = run_benchmark(size.value, steps, eval_every, repeats, progress=lambda message: progress(status, message))
        print_benchmark(results)
    if json_out:
        json_out.write_text(json.dumps(results, indent=2))


def _runs_command(args: list[str]) -> int:
    """`featuredrift runs ARGS` in this process, its output rendered as on a 160-column terminal."""
    import os

    from typer.testing import CliRunner

    from featuredrift.cli.runs import app

    result = CliRunner().invoke(app, args, env={**os.environ, "COLUMNS": "160"})
    if result.exit_code != 0:
        raise RuntimeError(f"featuredrift runs {' '.join(args)}: {result.output[-500:]}")
    return result.output.count("\n")
