"""`featuredrift replicate`: the paper's analysis (and the diff-SAE analysis) as one batch job."""

from __future__ import annotations

from pathlib import Path

import typer


def replicate(
    preset: str = typer.Option(None, "--preset", help="A bundled preset: zoo, gemma-2-2b, llama-3.1-8b, …"),
    config: Path = typer.Option(None, "--config", help="A YAML config file (see presets/*.yaml)."),
    out: Path = typer.Option(None, "--out", help="Output folder (stage caches, results.json, report.md/html)."),
    stages: str = typer.Option(None, "--stages", help="Comma-separated stages (default: all in the config)."),
    force: bool = typer.Option(False, "--force", help="Recompute the selected stages even when cached."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config field: KEY.PATH=VALUE (YAML value)."),
    list_presets: bool = typer.Option(False, "--list-presets", help="List the bundled presets and exit."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Reproduce Fig. 1–3 and Table 1 of the Feature Drift paper (plus the diff-SAE analysis) for a model pair."""
    from featuredrift.replicate.config import (
        ConfigError,
        deep_merge,
        load_config,
        parse_override,
    )
    from featuredrift.replicate.config import list_presets as presets

    if list_presets:
        for name in presets():
            typer.echo(name)
        raise typer.Exit(0)
    if (preset is None) == (config is None):
        raise typer.BadParameter("expected exactly one of --preset or --config")
    if out is None:
        raise typer.BadParameter("expected --out DIR for the stage caches and reports")
    merged: dict = {}
    try:
        for text in overrides:
            merged = deep_merge(merged, parse_override(text))
        cfg = load_config(preset or config, merged or None)
        from featuredrift.replicate.pipeline import run_replication

        results = run_replication(cfg, out, stages=stages, force=force, progress=not quiet)
    except ConfigError as error:
        typer.echo(f"config error: {error}", err=True)
        raise typer.Exit(2) from None
    print_findings(results, out)


def print_findings(results: dict, out: Path) -> None:
    """Each finding with its verdict and evidence, then where the reports went."""
    for finding in results["findings"]:
        mark = {True: "holds", False: "does not hold", None: "inconclusive (no data, or within tolerance)"}[finding["holds"]]
        typer.echo(f"[{mark}] {finding['claim']} ({finding['evidence']})")
    typer.echo(f"wrote {out / 'results.json'}, {out / 'report.md'}, {out / 'report.html'}")
