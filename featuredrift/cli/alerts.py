"""`featuredrift alerts …` commands."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="List, generate and check alert rules.", no_args_is_help=True)


@app.command()
def generate(
    thresholds: Path | None = typer.Option(
        None, "--thresholds",
        help="YAML/JSON overrides: {AlertName: value} or {AlertName: {threshold, for, severity, window, requires}}."
    ),
    output: Path = typer.Option(Path("rules.yml"), "--output", "-o", help="Rule file to write ('-' = stdout)."),
    tests_output: Path | None = typer.Option(
        None, "--tests-output", help="promtool unit-test file to write \\[default: <rules>_test.yml next to the rules]."
    ),
    cadence: str = typer.Option(
        "1m", "--cadence", help="Time between two evaluations of your runs: Prometheus `for` = evaluations × cadence."
    ),
) -> None:
    """Write the Prometheus rule file and its promtool unit tests from the alert definitions."""
    from featuredrift.alerts.definitions import configure
    from featuredrift.alerts.promtool_tests import render_tests
    from featuredrift.alerts.rules import render_rules

    try:
        definitions = configure(thresholds)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--thresholds") from exc
    rules_text = render_rules(definitions, cadence)
    if str(output) == "-":
        typer.echo(rules_text, nl=False)
        return
    rules_path = output
    tests_path = tests_output or rules_path.with_name(f"{rules_path.stem}_test.yml")
    rules_path.parent.mkdir(parents=True, exist_ok=True)
    tests_path.parent.mkdir(parents=True, exist_ok=True)
    rules_path.write_text(rules_text)
    relative_rules = Path(_relpath(rules_path, tests_path.parent))
    tests_path.write_text(render_tests(definitions, rule_file=str(relative_rules), cadence=cadence))
    typer.echo(f"wrote {rules_path} ({len(definitions)} alerts) and {tests_path}")


@app.command("list")
def list_alerts(
    thresholds: Path | None = typer.Option(None, "--thresholds", help="YAML/JSON threshold overrides."),
) -> None:
    """Show every alert with its severity, PromQL expression and `for` duration."""
    from rich.console import Console
    from rich.table import Table

    from featuredrift.alerts.definitions import configure

    try:
        definitions = configure(thresholds)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--thresholds") from exc
    table = Table("alert", "severity", "goals", "expr", "for (evaluations)")
    for d in definitions:
        table.add_row(d.name, d.severity, ",".join(d.goals), d.expr(), str(d.for_evaluations))
    table.caption = "`requires` (the `and on(…)` part) can be moved per alert in --thresholds: {Alert: {requires: 0.2}}"
    Console().print(table)


@app.command()
def check(
    rules: Path = typer.Argument(..., help="A rule file written by `featuredrift alerts generate`."),
    tests: Path | None = typer.Option(None, "--tests", help="Its promtool unit tests \\[default: <rules>_test.yml]."),
) -> None:
    """Check a rule file and run its unit tests with promtool (Prometheus' own checker)."""
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        typer.secho("error: promtool not found on PATH (it ships with Prometheus)", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    tests = tests or rules.with_name(f"{rules.stem}_test.yml")
    for path in (rules, tests):
        if not path.is_file():
            typer.secho(f"error: {path}: no such file", fg=typer.colors.RED, err=True)
            raise typer.Exit(2)
    for command in ([promtool, "check", "rules", str(rules)], [promtool, "test", "rules", str(tests)]):
        done = subprocess.run(command, capture_output=True, text=True)
        typer.echo((done.stdout + done.stderr).strip())
        if done.returncode != 0:
            raise typer.Exit(1)


def _relpath(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), start.resolve())
