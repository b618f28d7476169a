"""A journal owns one run: real monitored runs share a store, and journals edited to name another
run, journals of a run with other fingerprints, journals mixing runs, edited events and JSON
exports under another run's name are refused by `featuredrift runs import`, naming both sides,
and change nothing; importing a run's own journal or export again is a no-op."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from monitored_runs import EXPECTED_STEPS, train_monitored
from typer.testing import CliRunner

from featuredrift.cli.main import app
from featuredrift.store.journal import JournalEvent, read_journal
from featuredrift.store.run_store import RunStore

pytestmark = pytest.mark.slow


@dataclasses.dataclass(frozen=True)
class SharedStore:
    url: str
    first: str  # run ids
    second: str  # same recipe as the first: same model, SAE and probes
    other_probes: str
    journals: dict[str, Path]


@pytest.fixture(scope="module")
def shared(zoo_nano, tmp_path_factory) -> SharedStore:
    """Three runs in one store, as jobs of one team leave them."""
    root = tmp_path_factory.mktemp("shared")
    url = f"sqlite:///{root}/runs.db"
    runs = {}
    for label, options in (("first", {}), ("second", {}), ("other_probes", {"max_probes": 6})):
        callback = train_monitored(zoo_nano, root / label, run_name="exp", store_url=url, **options)
        runs[label] = (callback.run_id, callback.session.journal.path)
    return SharedStore(url, runs["first"][0], runs["second"][0], runs["other_probes"][0],
                       {label: path for label, (_, path) in runs.items()})


def history(url: str, run: str) -> dict:
    """Everything the store holds of a run that an import could change."""
    with RunStore(url) as store:
        info = store.get_run(run)
        return {"config": info.config, "status": info.status, "extra": info.extra,
                "evaluations": {e.step: e.report.to_json() for e in store.evaluations(run)},
                "applied": store.applied_sequences(run), "alerts": [a.name for a in store.alerts(run)]}


def import_cli(*paths: Path, db: str, name: str | None = None):
    return CliRunner().invoke(app, ["runs", "import", *map(str, paths), "--db", db, *(["--name", name] if name else [])])


def forged(path: Path, events: list[JournalEvent]) -> Path:
    path.write_text("".join(event.to_line() for event in events))
    return path


def renamed(journal: Path, run: str, shift: int = 1000) -> list[JournalEvent]:
    """The attack: another run's journal, every event renamed to `run` and numbered past its own."""
    return [dataclasses.replace(e, run=run, seq=e.seq + shift) for e in read_journal(journal)]


def test_each_run_stored_every_evaluation(shared):
    for run in (shared.first, shared.second, shared.other_probes):
        with RunStore(shared.url) as store:
            assert store.recorded_steps(run) == EXPECTED_STEPS


def test_another_runs_journal_renamed_to_this_run_is_refused_and_changes_nothing(shared, tmp_path):
    """Run 2's journal edited to name run 1, numbers +1000: same model, SAE and probes, but other
    evaluations at run 1's stored steps. Before, it replaced run 1's steps 0, 2, 4 and its config."""
    before = history(shared.url, shared.first)
    path = forged(tmp_path / "forged.jsonl", renamed(shared.journals["second"], shared.first))
    result = import_cli(path, db=shared.url)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert f"run '{shared.first}'" in message and "would replace the evaluation stored at step 0" in message
    assert "journal event 1002" in message and str(path) in message and "nothing of" in message
    assert history(shared.url, shared.first) == before


def test_a_journal_with_other_fingerprints_is_refused_naming_both(shared, tmp_path):
    before = history(shared.url, shared.first)
    theirs = read_journal(shared.journals["other_probes"])[0].fingerprints["probe_fingerprint"]
    ours = before["extra"]["probe_fingerprint"]
    assert theirs != ours
    path = forged(tmp_path / "forged.jsonl", renamed(shared.journals["other_probes"], shared.first))
    result = import_cli(path, db=shared.url)
    assert result.exit_code == 2, result.output
    message = "".join(result.output.split())  # joins what the terminal width wrapped
    assert "probesetfingerprint" in message and theirs in message and ours in message
    assert history(shared.url, shared.first) == before


def test_a_journal_naming_two_runs_is_refused(shared, tmp_path):
    mixed = read_journal(shared.journals["first"]) + read_journal(shared.journals["second"])
    result = import_cli(forged(tmp_path / "mixed.jsonl", mixed), db=shared.url)
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "expected the events of one run" in message and shared.first in message and shared.second in message


def test_an_edited_event_under_its_own_number_is_refused(shared, tmp_path):
    before = history(shared.url, shared.first)
    events = read_journal(shared.journals["first"])
    index = next(i for i, e in enumerate(events) if e.kind == "evaluation" and e.data["step"] == 2)
    events[index] = dataclasses.replace(events[index], data={**events[index].data, "kl_mean": 123.0})
    result = import_cli(forged(tmp_path / "edited.jsonl", events), db=shared.url)
    assert result.exit_code == 2
    assert f"journal event {events[index].seq} (evaluation) differs" in " ".join(result.output.split())
    assert history(shared.url, shared.first) == before


def test_importing_a_runs_own_journal_again_is_a_no_op(shared):
    before = history(shared.url, shared.first)
    result = import_cli(shared.journals["first"], db=shared.url)
    assert result.exit_code == 0, result.output
    assert f"0 event(s) of run {shared.first} stored" in result.output
    assert history(shared.url, shared.first) == before


def test_exports_import_once_keep_their_identity_and_take_the_given_name(shared, tmp_path):
    exported = tmp_path / "first.json"
    with RunStore(shared.url) as store:
        store.export(shared.first, format="json", out=exported)
        second = tmp_path / "second.json"
        store.export(shared.second, format="json", out=second)
    elsewhere = f"sqlite:///{tmp_path}/elsewhere.db"
    assert import_cli(exported, db=elsewhere).exit_code == 0
    copied = history(elsewhere, shared.first)
    assert import_cli(exported, db=elsewhere).exit_code == 0  # again: nothing changes, no alert doubles
    assert history(elsewhere, shared.first) == copied

    # Another run's export under this run's name: refused, nothing of it stored.
    before = history(shared.url, shared.first)
    result = import_cli(second, db=shared.url, name=shared.first)
    assert result.exit_code == 2 and "would replace the evaluation stored at step 0" in " ".join(result.output.split())
    assert history(shared.url, shared.first) == before

    # --name is the display name too: the run's own display name keeps naming one run.
    result = import_cli(exported, db=elsewhere, name="exp-copy")
    assert result.exit_code == 0, result.output
    shown = CliRunner().invoke(app, ["runs", "show", "exp", "--db", elsewhere])
    assert shown.exit_code == 0, shown.output
    assert shared.first in shown.output
    with RunStore(elsewhere) as store:
        assert store.get_run("exp-copy").extra["display_name"] == "exp-copy"
        assert json.loads(store.export("exp-copy", format="json"))["evaluations"] == json.loads(
            store.export(shared.first, format="json"))["evaluations"]
