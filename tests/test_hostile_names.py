"""Run names (and the alert messages and labels that carry them) are data wherever they are
shown: a real monitored run named with rich markup, ANSI escapes, a raw newline and slashes is
listed, shown, compared, exported and reported by the CLI without a markup error, without a
control character reaching the terminal, and without nesting folders; its log lines stay one
line each."""

from __future__ import annotations

import logging
import os

import pytest
from monitored_runs import EXPECTED_STEPS, train_monitored
from typer.testing import CliRunner

from featuredrift.cli.main import app
from featuredrift.store.run_store import RunStore
from featuredrift.text import printable

pytestmark = pytest.mark.slow
HOSTILE = "markup[/]name \x1b[31mred\x1b[0m\nforged line [bold]team/../exp"
WIDE = {"COLUMNS": "500", "TERM": "xterm-256color"}  # no wrapping, and a terminal that would obey escapes


@pytest.fixture(scope="module")
def hostile_run(zoo_nano, tmp_path_factory):
    """(store URL, run id, the featuredrift log records of the run)."""
    root = tmp_path_factory.mktemp("hostile")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler, logger = Keep(level=logging.INFO), logging.getLogger("featuredrift")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        # An always-firing alert: its log lines and stored message carry the run name.
        thresholds = root / "always.yml"
        thresholds.write_text("BaseSAETransferDegraded: {threshold: -1, for: 0}\n")
        callback = train_monitored(zoo_nano, root, run_name=HOSTILE, alert_thresholds=str(thresholds))
    finally:
        logger.removeHandler(handler)
        logger.level = level
    return callback.config.store_url, callback.run_id, records


def cli(*args: str):
    return CliRunner().invoke(app, list(args), env=WIDE)


def assert_shown_as_text(output: str, run: str, named: bool = True) -> None:
    assert "MarkupError" not in output and "Traceback" not in output
    assert "\x1b" not in output, "an ANSI escape from a stored string reached the terminal"
    assert not named or printable(run) in output, "the name is not shown (escaped) as stored"


def test_the_run_is_stored_under_its_name(hostile_run):
    url, run, _ = hostile_run
    with RunStore(url) as store:
        assert store.recorded_steps(run) == EXPECTED_STEPS
        assert store.get_run(run).extra["display_name"] == HOSTILE


@pytest.mark.parametrize("command", [("runs", "list"), ("runs", "show", "{run}"), ("runs", "show", "{run}", "--features"),
                                     ("runs", "compare", "{run}", "{run}", "--all")], ids=" ".join)
def test_runs_commands_show_stored_strings_as_text(hostile_run, command):
    url, run, _ = hostile_run
    result = cli(*(part.format(run=run) for part in command), "--db", url)
    assert result.exit_code == 0, result.output
    assert_shown_as_text(result.output, run, named="--features" not in command)  # cards do not repeat it
    assert "\nforged line" not in result.output  # the newline in the name is not a new output line


def test_errors_that_name_the_run_stay_one_line(hostile_run):
    url, run, _ = hostile_run
    result = cli("runs", "show", run, "--completions", "0", "--db", url)
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: ") and printable(run) in line and "\x1b" not in line
    unknown = cli("runs", "show", "[bold]nobody\x1b[2J", "--db", url)
    assert unknown.exit_code == 2 and "\x1b" not in unknown.output and "[bold]nobody\\x1b[2J" in unknown.output


def test_report_default_folder_is_one_safe_folder_name(hostile_run, tmp_path, monkeypatch):
    url, run, _ = hostile_run
    monkeypatch.chdir(tmp_path)
    result = cli("report", run, "--db", url)
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "featuredrift-out").iterdir()
    assert folder.name.startswith("report-markup_name_") and "/" not in folder.name and "\x1b" not in folder.name
    assert (folder / "index.html").is_file() or any(folder.glob("*.html"))
    assert "\x1b" not in result.output and os.sep not in folder.name


def test_log_lines_naming_the_run_stay_one_line(hostile_run):
    _, run, records = hostile_run
    naming = [r for r in records if printable(run) in r.getMessage() or repr(run) in r.getMessage()]
    assert naming, "no featuredrift log line named the run"
    for record in records:
        message = record.getMessage()
        assert "\x1b" not in message and "\n" not in message, f"{record.name}: {message!r}"
