"""`featuredrift alerts …` commands."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Generate and check alert rules.", no_args_is_help=True)


@app.command()
def generate(
    thresholds: Path | None = typer.Option(
        None, "--thresholds", help="YAML/JSON overrides: {AlertName: value} or {AlertName: {threshold, for, severity}}."
    ),
    output: Path | None = typer.Option(None, "--output", "-o", help="Rule file to write ('-' = stdout); default alerts/rules.yml."),
    tests_output: Path | None = typer.Option(
        None, "--tests-output", help="promtool unit-test file to write; default alerts/tests/rules_test.yml next to the rules."
    ),
) -> None:
    """Write the Prometheus rule file and its promtool unit tests from the alert definitions."""
    from featuredrift.alerts.definitions import configure
    from featuredrift.alerts.promtool_tests import TESTS_PATH, render_tests
    from featuredrift.alerts.rules import RULES_PATH, render_rules

    try:
        definitions = configure(thresholds)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--thresholds") from exc
    rules_text = render_rules(definitions)
    if str(output) == "-":
        typer.echo(rules_text, nl=False)
        return
    rules_path = output or RULES_PATH
    tests_path = tests_output or (TESTS_PATH if output is None else rules_path.parent / "tests" / "rules_test.yml")
    rules_path.parent.mkdir(parents=True, exist_ok=True)
    tests_path.parent.mkdir(parents=True, exist_ok=True)
    rules_path.write_text(rules_text)
    relative_rules = Path(_relpath(rules_path, tests_path.parent))
    tests_path.write_text(render_tests(definitions, rule_file=str(relative_rules)))
    typer.echo(f"wrote {rules_path} ({len(definitions)} alerts) and {tests_path}")


@app.command("list")
def list_alerts(
    thresholds: Path | None = typer.Option(None, "--thresholds", help="YAML/JSON threshold overrides."),
) -> None:
    """Show every alert with its severity, PromQL expression and `for` duration."""
    from featuredrift.alerts.definitions import configure
    from rich.console import Console
    from rich.table import Table

    try:
        definitions = configure(thresholds)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--thresholds") from exc
    table = Table("alert", "severity", "expr", "for")
    for d in definitions:
        table.add_row(d.name, d.severity, d.expr(), d.for_)
    Console().print(table)


def _relpath(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), start.resolve())
