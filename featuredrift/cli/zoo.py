"""`featuredrift zoo …` commands: build (or reuse) a zoo, and summarise one."""

from __future__ import annotations

import contextlib
import json
import sys
from enum import Enum
from pathlib import Path

import typer

app = typer.Typer(help="Build and inspect the embedded model zoo.", no_args_is_help=True)


class ZooSize(str, Enum):
    """The zoo sizes, for commands that take one as an option."""

    nano = "nano"
    tiny = "tiny"


_SIZE_HELP = "Zoo size: nano (tests, < 1 min on 2 CPU cores) or tiny (demo, < 3 min)."


def _check_size(size: str) -> str:
    from featuredrift.zoo.config import ZOO_SIZES

    if size not in ZOO_SIZES:
        raise typer.BadParameter(f"expected one of {', '.join(ZOO_SIZES)}, found {size!r}")
    return size


@app.command()
def build(
    size: str = typer.Option("nano", "--size", help=_SIZE_HELP, callback=_check_size),
    out: Path | None = typer.Option(
        None, "--out", help="Zoo directory (default: $FEATUREDRIFT_HOME/zoo/<size> or ~/.cache/featuredrift/zoo/<size>)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the world and of every training stage."),
    all_layers: bool = typer.Option(False, "--all-layers", help="Train a base SAE for every layer."),
    force: bool = typer.Option(False, "--force", help="Rebuild even when a matching build exists."),
) -> None:
    """Build the zoo (reused when the cached build matches and is intact)."""
    from rich.console import Console

    from featuredrift.zoo import ensure_zoo

    paths = ensure_zoo(size, out, seed=seed, all_layers=all_layers, force=force, progress=True)
    Console().print(f"zoo [cyan]{size}[/] ready at {paths.root}")
    _print_summary(paths.root)


@app.command()
def data(
    scenario: str = typer.Argument(..., help="A demo scenario: align, erosion, benign or overrefusal."),
    size: str = typer.Option("nano", "--size", help=_SIZE_HELP, callback=_check_size),
    out: Path = typer.Option(..., "--out", "-o", help="JSONL file to write."),
) -> None:
    """Write a demo scenario's training set, each row with its ground truth (`labels`: harmful_request,
    refusal, harmful_compliance, harmless_refused), e.g. to measure `featuredrift audit --label`."""
    from featuredrift.zoo import ensure_zoo
    from featuredrift.zoo.demo import SCENARIOS, example_labels, scenario_conversations

    if scenario not in SCENARIOS:
        raise typer.BadParameter(f"expected one of {', '.join(SCENARIOS)}, found {scenario!r}", param_hint="SCENARIO")
    paths = ensure_zoo(size, progress=True)
    conversations = scenario_conversations(scenario, paths.data)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for conversation in conversations:
            handle.write(json.dumps({**conversation, "labels": example_labels(conversation)}) + "\n")
    start = paths.base if SCENARIOS[scenario].start == "base" else paths.chat
    typer.echo(f"wrote {len(conversations)} examples of the {scenario} demo to {out}; the model it fine-tunes: {start}")


@app.command()
def info(
    size: str = typer.Option("nano", "--size", help=_SIZE_HELP, callback=_check_size),
    root: Path | None = typer.Option(None, "--root", help="Zoo directory (default: the size's cache folder)."),
    evaluate: bool = typer.Option(
        False, "--evaluate", help="Also measure refusal rates and SAE FVU (loads the models)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest (and evaluation) as JSON."),
) -> None:
    """Summarise a built zoo from its manifest."""
    from featuredrift.zoo import default_zoo_root, zoo_paths
    from featuredrift.zoo.manifest import read_manifest

    root = root or default_zoo_root(size)
    try:
        manifest = read_manifest(root)
    except (FileNotFoundError, ValueError) as error:
        typer.echo(f"error: {error} (build it with `featuredrift zoo build --size {size}`)", err=True)
        raise typer.Exit(1) from None
    evaluation = None
    if evaluate:
        from featuredrift.zoo.build import quiet_libraries
        from featuredrift.zoo.evaluate import evaluate_zoo

        # Libraries print notices to stdout (sparsify's Triton message); keep stdout for results.
        with contextlib.redirect_stdout(sys.stderr), quiet_libraries():
            evaluation = evaluate_zoo(zoo_paths(root, manifest["hookpoint"])).as_dict()
    if as_json:
        typer.echo(json.dumps({"manifest": manifest, "evaluation": evaluation}, indent=2))
        return
    _print_summary(root, evaluation)


def _print_summary(root: Path, evaluation: dict | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    from featuredrift.zoo.manifest import read_manifest

    manifest = read_manifest(root)
    config = manifest["config"]
    table = Table(title=f"zoo {manifest['size']} — {root}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("seed", str(manifest["seed"]))
    table.add_row("created", manifest.get("created", "?"))
    table.add_row(
        "model",
        f"Llama, {config['num_layers']} layers, hidden {config['hidden_size']}, "
        f"vocab {config['vocab_size']}",
    )
    table.add_row("SAE", f"{', '.join(manifest['hookpoints'])}: {config['sae_num_latents']} latents, k={config['sae_k']}")
    for hookpoint, metrics in manifest.get("metrics", {}).get("sae", {}).items():
        table.add_row(f"SAE {hookpoint}", ", ".join(f"{k}={v}" for k, v in metrics.items()))
    table.add_row("timings (s)", ", ".join(f"{k}={v}" for k, v in manifest.get("timings_s", {}).items()))
    table.add_row("versions", ", ".join(f"{k} {v}" for k, v in manifest["versions"].items()))
    table.add_row("files", str(len(manifest["files"])))
    for key, value in (evaluation or {}).items():
        table.add_row(key, f"{value:.4f}")
    Console().print(table)
