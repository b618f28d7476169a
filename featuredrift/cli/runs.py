"""`featuredrift runs …` commands: list, show, compare and export stored runs.

The store is imported inside each command so `featuredrift --help` stays fast.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import typer

from featuredrift.cli.output import StoredTextTable, echo, error_line, shown
from featuredrift.monitor.config import DEFAULT_STORE_URL

app = typer.Typer(help="Inspect, compare and export stored runs.", no_args_is_help=True)

DB_HELP = f"Run store URL (default: $FEATUREDRIFT_STORE_URL or {DEFAULT_STORE_URL})."


def default_store_url() -> str:
    return os.environ.get("FEATUREDRIFT_STORE_URL") or DEFAULT_STORE_URL


DbOption = typer.Option(None, "--db", help=DB_HELP, show_default=False)


def open_store(db: str | None, *, read_only: bool = True):
    """Open the store or exit with the store's own clear message (no traceback)."""
    from featuredrift.store.errors import StoreError
    from featuredrift.store.run_store import RunStore

    try:
        return RunStore(db or default_store_url(), read_only=read_only)
    except StoreError as error:
        error_line(error)
        raise typer.Exit(2) from error


def fail(error: Exception) -> None:
    error_line(error)
    raise typer.Exit(2) from error


DEFAULT_CARD_LIMIT = 20


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def new_table(title: str, columns: tuple[str, ...], show_header: bool = True):
    """A rich table whose cells wrap instead of truncating (names and labels must stay readable);
    its strings are shown as stored, never read as markup."""
    table = StoredTextTable(title=title, show_header=show_header)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


@app.command("list")
def list_runs(db: str | None = DbOption) -> None:
    """All runs with their status, evaluation count and newest step."""
    from rich.console import Console
    with open_store(db) as store:
        runs = store.list_runs()
    table = new_table(f"runs in {store.display_url}",
                      ("name", "status", "evaluations", "last step", "created", "updated", "reference"))
    for run in runs:
        table.add_row(
            run.name, run.status_text(), str(run.evaluation_count),
            "—" if run.last_step is None else str(run.last_step),
            run.created_at.strftime("%Y-%m-%d %H:%M:%S"), run.updated_at.strftime("%Y-%m-%d %H:%M:%S"),
            run.reference_policy or "—",
        )
    Console().print(table if runs else shown(f"no runs in {store.display_url}"))


@app.command("show")
def show_run(
    run: str,
    db: str | None = DbOption,
    completions: int | None = typer.Option(
        None, "--completions", help="Print the completions judged at this step (the evidence behind refusal alerts)."
    ),
    features: bool = typer.Option(
        False, "--features", help="Print the feature cards of the latest evaluation: drifted and refusal features."
    ),
    limit: int = typer.Option(
        DEFAULT_CARD_LIMIT, "--limit", min=1, help="With --features or --data: print at most this many (the most telling first)."
    ),
    data: bool = typer.Option(
        False, "--data", help="Print the training-data audit: the examples most likely to erode refusal or teach over-refusal."
    ),
) -> None:
    """A run's state and goal, what it found, the latest value of every metric, its alerts and the last safe checkpoint."""
    if completions is not None:
        _show_completions(run, completions, db)
        return
    if features:
        _show_features(run, db, limit)
        return
    if data:
        _show_audit(run, db, limit)
        return
    from rich.console import Console

    from featuredrift.reports.feature_cards import build_cards
    from featuredrift.reports.findings import run_findings, run_goal
    from featuredrift.store.errors import StoreError
    from featuredrift.store.rows import duration_text

    console = Console()
    with open_store(db) as store:
        try:
            info = store.get_run(run)
            latest = store.latest_values(run)
            alerts = store.alerts(run)
            categories = store.category_refusals(run)
            goal = run_goal(store, run, info)
            safe = store.last_safe_checkpoint(run)
            checkpoints = store.checkpoints(run)
            findings = run_findings(store, run, build_cards(store, run))
        except StoreError as error:
            fail(error)
    meta = new_table(f"run {info.name}", ("field", "value"), show_header=False)
    silent = info.silent_for()
    for field, value in (
        ("status", info.status_text()),
        ("goal", f"{goal.goal or '—'} ({goal.reason})"),
        ("last event", "—" if silent is None else f"{duration_text(silent)} ago (expected every "
                                                   f"{duration_text(info.expected_interval_s)})"),
        ("evaluations", str(info.evaluation_count)),
        ("last step", "—" if info.last_step is None else str(info.last_step)),
        ("checkpoints", ", ".join(str(c.step) for c in checkpoints) or "—"),
        ("last safe checkpoint", safe.describe() if safe else "—"),
        ("created", info.created_at.isoformat()), ("updated", info.updated_at.isoformat()),
        ("model", info.model_fingerprint or "—"), ("sae", info.sae_fingerprint or "—"),
        ("reference", info.reference_policy or "—"),
        *_probe_and_judge_rows(info.extra or {}),
    ):
        meta.add_row(field, value)
    console.print(meta)
    tone_style = {"alarm": "bold red", "notice": "dark_orange", "ok": "green", "neutral": "dim"}
    for finding in findings:
        console.print(f"[{tone_style.get(finding.tone, '')}]{shown(finding.title)}.[/] {shown(finding.text)}")
    import json

    for table in _refusal_tables(latest, categories):
        console.print(table)

    metrics = new_table("latest metrics", ("metric", "labels", "step", "value"))
    for (name, key), (step, value) in sorted(latest.items()):
        metrics.add_row(name, _labels(json.loads(key)), str(step), _fmt(value))
    console.print(metrics)
    if alerts:
        table = new_table("alerts", ("name", "severity", "status", "fired at step", "resolved at step", "started", "ended",
                                     "message", "last safe checkpoint"))
        for alert in alerts:
            table.add_row(
                alert.name, alert.severity, alert.status, "—" if alert.step is None else str(alert.step),
                "—" if alert.resolved_step is None else str(alert.resolved_step),
                alert.started_at.isoformat(timespec="seconds"),
                alert.ended_at.isoformat(timespec="seconds") if alert.ended_at else "—", alert.message,
                alert.checkpoint or "—",
            )
        console.print(table)


REFUSAL_SERIES = (("featuredrift_refusal_rate_ratio", "refusal rate"),
                  ("featuredrift_refusal_token_probability_ratio", "P(refusal start)"),
                  ("featuredrift_refusal_token_logodds", "log-odds"))


def _probe_and_judge_rows(extra: dict) -> list[tuple[str, str]]:
    """Where each probe subset came from (benchmark, file, sha256, split) and which judges decided."""

    rows = []
    for subset, origin in (extra.get("probe_subsets") or {}).items():
        parts = [f"{origin.get('probes', '?')} probes"]
        if origin.get("benchmark"):
            parts.append(f"{origin['benchmark']} ({origin.get('layout', '')}, split {origin.get('split', 'all')})")
        if origin.get("categories"):
            parts.append(f"{origin['categories']} categories")
        parts.append(str(origin.get("file") or origin.get("dataset") or origin.get("source") or "—"))
        if origin.get("sha256"):
            parts.append(f"sha256 {origin['sha256'][:16]}…")
        rows.append((f"probes: {subset}", ", ".join(parts)))
    judges = extra.get("judges") or {}
    if judges:
        rows.append(("judges", f"refusal: {judges.get('refusal', '—')}, safety: {judges.get('safety', '—')}"))
    return rows


def _refusal_tables(latest: dict, categories: list) -> list:
    """The refusal series by prompt subset (latest value of each) and by category (the newest
    evaluation's logit scores, the newest generating evaluation's rate)."""
    import json


    tables = []
    by_subset: dict[str, dict[str, tuple[int, float]]] = {}
    for (name, key), point in latest.items():
        if name in dict(REFUSAL_SERIES):
            by_subset.setdefault(json.loads(key).get("prompts", "—"), {})[name] = point
    if by_subset:
        table = new_table("refusal by prompt subset (latest value, at step)", ("prompts", *(t for _, t in REFUSAL_SERIES)))
        for prompts in sorted(by_subset, key=lambda p: (p not in ("harmful", "harmless", "borderline"), p)):
            cells = [f"{_fmt(by_subset[prompts][n][1])} ({by_subset[prompts][n][0]})" if n in by_subset[prompts] else "—"
                     for n, _ in REFUSAL_SERIES]
            table.add_row(prompts, *cells)
        tables.append(table)
    if categories:
        from featuredrift.store.rows import latest_by_category

        table = new_table("refusal by category", ("prompts", "category", "probes", "refusal rate (step)",
                                                  "P(refusal start)", "log-odds", "step"))
        for row, rated in latest_by_category(categories):
            table.add_row(row.subset, row.category, str(row.prompts),
                          f"{_fmt(rated.refusal_rate)} ({rated.step})" if rated else "—",
                          _fmt(row.refusal_token_probability), _fmt(row.refusal_token_logodds), str(row.step))
        tables.append(table)
    return tables


def _show_features(run: str, db: str | None, limit: int = DEFAULT_CARD_LIMIT) -> None:
    """One card per feature the latest evaluation singled out (see reports/feature_cards.py), the first `limit`."""
    from rich.console import Console

    from featuredrift.reports.feature_cards import build_cards
    from featuredrift.store.errors import StoreError

    with open_store(db) as store:
        try:
            cards = build_cards(store, run)
        except StoreError as error:
            fail(error)
    console = Console()
    if not cards:
        console.print(shown(f"run {run}: no drifted or refusal features stored yet"))
        return
    for card in cards[:limit]:
        console.print(_card_table(card))
    if len(cards) > limit:
        console.print(f"{len(cards) - limit} more cards left out (of {len(cards)}); --limit {len(cards)} shows all")


def _card_table(card):
    """A feature card as a rich table: why it is listed, firing per subset, trajectory, contexts."""
    table = new_table(f"{card.title} (step {card.step})", ("", "reference (or first seen)", "now"))
    for reason in card.reasons:
        table.add_row("why", reason, "")
    for firing in card.firing:
        table.add_row(f"fires on {firing.subset}", _fmt(firing.freq_reference), _fmt(firing.freq_now))
        table.add_row(f"mean activation on {firing.subset}", _fmt(firing.mean_reference), _fmt(firing.mean_now))
    first, now = card.diff_in_means_first_and_now()
    if first is not None:
        table.add_row("d̄ (harmful − harmless)", _fmt(first), _fmt(now))
    table.add_row("trajectory", "step: drift score / d̄", "  ".join(
        f"{p.step}: {_fmt(p.drift_score)} / {_fmt(p.diff_in_means)}{'*' if p.in_refusal_top_k else ''}"
        for p in card.trajectory) + "  (* in the refusal top-k)")
    if card.contexts_note:
        table.add_row("contexts", card.contexts_note, "")
    else:
        table.add_row("top contexts", _contexts_cell(card, "reference"), _contexts_cell(card, "current"))
    return table


def _contexts_cell(card, model: str):
    """One line per context, its token highlighted (rich markup; probe text is shown as stored)."""
    from rich.text import Text

    from featuredrift.reports.feature_cards import shown_token

    lines = [f"…{shown(c.left)} [bold reverse]{shown(shown_token(c.token))} read-out[/] {_fmt(c.activation)} ({shown(c.subset)} prompt)"
             if c.readout else
             f"…{shown(c.left)}[bold reverse]{shown(shown_token(c.token))}[/]{shown(c.right)}… {_fmt(c.activation)} ({shown(c.subset)})"
             for c in card.contexts if c.model == model]
    return Text.from_markup("\n".join(lines) or "does not fire on any probe token")


def _show_audit(run: str, db: str | None, limit: int) -> None:
    """The training-data audit stored with the run: what it read and its most telling examples."""
    from rich.console import Console

    from featuredrift.store.errors import StoreError

    with open_store(db) as store:
        try:
            audits = store.audit(run)
        except StoreError as error:
            fail(error)
    console = Console()
    if not audits:
        console.print(f"run {run}: no training-data audit stored (audit_examples=0, or a run recorded before audits)")
        return
    print_audit(console, audits, limit)


def print_audit(console, audits, limit: int) -> None:
    """Per hookpoint: what the audit read, then the examples most likely to erode refusal and to teach over-refusal."""
    for audit in audits:
        console.print(f"training-data audit at {audit.hookpoint}: {len(audit.examples)} of {audit.dataset_size} examples "
                      "read by the reference; " + "; ".join(f"{n} {kind}" for kind, n in audit.summary.items()))
        if audit.skipped:
            console.print(f"{audit.skipped} row(s) could not be read, e.g. {audit.skipped_reason}")
        for title, examples in (("most likely to erode refusal (compliant answers, most harmful-looking first)",
                                 audit.eroding(limit)),
                                ("most likely to teach over-refusal (refusals, most harmless-looking first)",
                                 [e for e in audit.over_refusing(limit) if not e.harmful_request])):
            if not examples:
                continue
            table = new_table(title, ("example", "prompt", "target", "harmfulness", "reference P(refusal)", "reading"))
            for e in examples:
                table.add_row(str(e.example), e.prompt, e.target, f"{e.harmfulness:.2f}", _fmt(e.refusal_probability), e.kind)
            console.print(table)


def _show_completions(run: str, step: int, db: str | None) -> None:
    """The stored sample of greedy completions of one evaluation, with the judge's verdict."""
    from rich.console import Console

    from featuredrift.store.errors import StoreError

    with open_store(db) as store:
        try:
            evaluations = {e.step: e.report for e in store.evaluations(run)}
        except StoreError as error:
            fail(error)
    report = evaluations.get(step)
    if report is None:
        fail(ValueError(f"run {run!r}: expected an evaluation at step {step}, found steps {sorted(evaluations)}"))
    if not report.completions:
        with_completions = sorted(s for s, r in evaluations.items() if r.completions)
        fail(ValueError(f"run {run!r} step {step}: no completions were generated at this evaluation; "
                        f"steps with completions: {with_completions or 'none'}"))
    table = new_table(f"completions of {run} at step {step} (judge: {report.judge or '—'})",
                      ("prompts", "prompt", "completion", "refused"))
    for item in report.completions:
        table.add_row(item["subset"], item["prompt"], item["completion"], "yes" if item["refused"] else "no")
    Console().print(table)


@app.command("compare")
def compare_runs(
    run_a: str,
    run_b: str,
    db: str | None = DbOption,
    show_all: bool = typer.Option(False, "--all", help="Also list the series on which the runs agree."),
) -> None:
    """Both runs aligned by step and layer: where they diverge (more than 5% apart) first, with
    the values at that step and at the last step both evaluated; then the config differences."""
    from rich.console import Console

    from featuredrift.store.errors import StoreError

    console = Console()
    with open_store(db) as store:
        try:
            comparison = store.compare(run_a, run_b)
            steps_a, steps_b = store.recorded_steps(run_a), store.recorded_steps(run_b)
        except StoreError as error:
            fail(error)
    console.print(shown(_steps_summary(run_a, run_b, steps_a, steps_b)))
    rows = sorted(comparison.metrics, key=lambda r: (r.labels.get("layer", ""), r.diverges_at is None,
                                                     r.diverges_at or 0, r.name, _labels(r.labels)))
    diverging = [r for r in rows if r.diverges_at is not None]
    agreeing = [r for r in rows if r.diverges_at is None and r.name != "featuredrift_global_step"]
    columns = ("layer", "metric", "labels", "diverges at step", f"{run_a} there", f"{run_b} there",
               "last common step", run_a, run_b, "Δ (b − a)")
    table = new_table(f"where {run_a} and {run_b} diverge (more than 5% apart), by layer", columns)
    for row in diverging + (agreeing if show_all else []):
        step = row.step_a if row.step_a == row.step_b else f"{row.step_a} / {row.step_b}"
        table.add_row(
            row.labels.get("layer", "—"), row.name.removeprefix("featuredrift_"),
            _labels({k: v for k, v in row.labels.items() if k != "layer"}),
            "—" if row.diverges_at is None else str(row.diverges_at),
            _fmt(row.diverged_a), _fmt(row.diverged_b),
            "—" if step is None else str(step), _fmt(row.value_a), _fmt(row.value_b), _fmt(row.delta),
        )
    console.print(table if diverging or show_all else shown(f"{run_a} and {run_b} agree within 5% at every common step"))
    if agreeing and not show_all:
        console.print(f"{len(agreeing)} more series agree within 5% at every common step (--all lists them)")
    if comparison.config_differences:
        config = new_table("config differences", ("field", run_a, run_b))
        for field, (a, b) in comparison.config_differences.items():
            config.add_row(field, repr(a), repr(b))
        console.print(config)


def _steps_summary(run_a: str, run_b: str, steps_a: list[int], steps_b: list[int]) -> str:
    """Which steps the comparison can align, and which only one run evaluated."""
    common = sorted(set(steps_a) & set(steps_b))
    only_a, only_b = sorted(set(steps_a) - set(steps_b)), sorted(set(steps_b) - set(steps_a))
    text = f"steps both evaluated: {', '.join(map(str, common)) or 'none'}"
    if only_a:
        text += f"; only {run_a}: {', '.join(map(str, only_a))}"
    if only_b:
        text += f"; only {run_b}: {', '.join(map(str, only_b))}"
    return text


@app.command("export")
def export_run(
    run: str,
    format: str = typer.Option("csv", "--format", "-f", help="csv (one row per metric sample) or json (full reports)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write here instead of stdout."),
    db: str | None = DbOption,
) -> None:
    """Export a run's history for analysis elsewhere."""
    from featuredrift.store.errors import StoreError

    with open_store(db) as store:
        try:
            text = store.export(run, format=format, out=out)
        except (StoreError, ValueError) as error:
            fail(error)
    if out is None:
        typer.echo(text, nl=False)
    else:
        echo(f"wrote {out}", err=True)


@app.command("import")
def import_runs(
    paths: list[Path] = typer.Argument(..., help="Run journals (journal-*.jsonl, written beside every run, and "
                                       "rescued ones) or JSON exports."),
    name: str | None = typer.Option(None, "--name", help="Store a JSON export under this run name (its display name too)."),
    db: str | None = DbOption,
) -> None:
    """Load journals or JSON exports into the store: what a run could not store while it ran.

    The journals given are read together, each event stored once whatever file holds it; an
    import that would change another run's history (other fingerprints, other evaluations at
    stored steps) is refused and stores nothing."""
    from featuredrift.store.errors import StoreError
    from featuredrift.store.journal import JOURNAL_FORMAT, JournalError
    from featuredrift.store.sync import import_journals

    journals, exports = [], []
    for path in paths:
        if not path.is_file():
            fail(FileNotFoundError(f"{path}: expected a journal or a JSON export, found no file"))
        with open(path, encoding="utf-8") as handle:
            first_line = handle.readline()
        (journals if JOURNAL_FORMAT in first_line else exports).append(path)
    with open_store(db, read_only=False) as store:
        try:
            if journals:
                for run, applied in import_journals(store, journals).items():
                    echo(f"{', '.join(map(str, journals))}: {applied} event(s) of run {run} stored")
            for path in exports:
                info = store.import_json(path.read_text(encoding="utf-8"), name=name)
                echo(f"{path}: run {info.name} with {info.evaluation_count} evaluation(s) stored")
        except (StoreError, JournalError, ValueError, KeyError) as error:
            fail(error)
