"""Rich progress display for a zoo build: one line per stage with its elapsed time."""

from __future__ import annotations

from pathlib import Path

from featuredrift.zoo.config import ZooConfig


def build_with_progress(
    root: Path, config: ZooConfig, seed: int, *, all_layers: bool = False, reason: str = ""
) -> dict:
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from featuredrift.zoo.build import STAGES, build_zoo

    console = Console(stderr=True)
    console.print(f"[bold]Building zoo[/] [cyan]{config.size}[/] (seed {seed}) at {root}")
    if reason:
        console.print(f"  reason: {reason}", style="dim")
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        tasks = {name: progress.add_task(name, start=False, total=1) for name in STAGES}

        def on_stage(name: str, event: str) -> None:
            if event == "start":
                progress.start_task(tasks[name])
            else:
                progress.update(tasks[name], completed=1)
                progress.stop_task(tasks[name])

        manifest = build_zoo(root, config, seed, all_layers=all_layers, on_stage=on_stage)
    total = manifest["timings_s"]["total"]
    console.print(f"[green]zoo {config.size} built[/] in {total:.1f} s")
    return manifest
