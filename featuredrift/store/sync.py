"""Journal → run store: events applied in order, exactly once, off the training thread.

`StoreSync` is the background writer a run's session hands its journaled events to;
`store_event` is the one way an event enters the store, also used by `featuredrift runs import`
(`import_journals`: any set of a run's journals, rescues included, in any order, all or nothing).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path
from types import SimpleNamespace

from featuredrift.monitor.audit_report import DataAudit
from featuredrift.monitor.report import EvaluationReport
from featuredrift.store.errors import HistoryConflictError, RunMismatchError
from featuredrift.store.journal import JournalError, JournalEvent, journal_run, read_journal

logger = logging.getLogger(__name__)


# Errors that retrying cannot fix: the event stays in the journal, for a human to look at.
PERMANENT_ERRORS = (HistoryConflictError, RunMismatchError)


def apply_event(store, event: JournalEvent) -> None:
    """Write one journal event into a run store, as the run's own event number `event.seq`."""
    data, seq = event.data, event.seq
    if event.kind == "run":
        store.start_run(event.run, data.get("config") or {}, journal_sequence=seq,
                        resumed_at_step=data.get("resumed_at_step"), **(data.get("provenance") or {}))
        store.record_heartbeat(event.run, event.at, data.get("expected_s"))
    elif event.kind == "heartbeat":
        store.record_heartbeat(event.run, event.at, data.get("expected_s"))
    elif event.kind == "checkpoint":
        store.record_checkpoint(event.run, data["step"], data["path"], event.at)
    elif event.kind == "goal":
        store.record_goal(event.run, data["goal"], data["reason"], data.get("step"))
    elif event.kind == "audit":
        store.record_audit(event.run, [DataAudit.from_dict(a) for a in data["audits"]])
    elif event.kind == "evaluation":
        store.record_evaluation(event.run, EvaluationReport.from_dict(data), journal_sequence=seq)
    elif event.kind == "alert":
        store.record_alert(event.run, SimpleNamespace(**data))
    elif event.kind == "stop":
        store.record_stop(event.run, data["step"], data["reason"], journal_sequence=seq)
    elif event.kind == "finish":
        store.finish_run(event.run, data["status"], data.get("error"), journal_sequence=seq)


def store_event(store, event: JournalEvent) -> bool:
    """Apply an event unless the store has it; the event and its record commit together."""
    with store.applying_journal_event(event) as new:
        if new:
            apply_event(store, event)
    return new


def merge_journals(journals: dict[Path, list[JournalEvent]]) -> list[tuple[Path, JournalEvent]]:
    """The events of several journals of one or more runs, each once, in the runs' own order.

    A journal must hold one run's events with one set of fingerprints; the same event found in
    two files (a rescue next to the journal it came from) counts once; two different events
    under one number are refused, naming both files.
    """
    seen: dict[tuple[str, int], tuple[Path, JournalEvent]] = {}
    for path, events in journals.items():
        journal_run(events, path)
        for event in events:
            first = seen.setdefault((event.run, event.seq), (path, event))
            if first[1].digest != event.digest:
                raise JournalError(f"run {event.run!r}: event {event.seq} differs between {first[0]} ({first[1].kind}) "
                                   f"and {path} ({event.kind}); refused: an edited journal, or two runs' journals")
    return [seen[key] for key in sorted(seen)]


def import_journals(store, paths: list[Path]) -> dict[str, int]:
    """Store what a set of journals holds and the store does not: all of it or, when any event is
    refused (another run's history, an edited journal), nothing. Returns run → events stored."""
    merged = merge_journals({Path(path): read_journal(path) for path in paths})
    stored: dict[str, int] = {}
    with store.atomically():
        for path, event in merged:
            try:
                new = store_event(store, event)
            except PERMANENT_ERRORS as error:
                raise type(error)(f"{path}: {error}; nothing of {', '.join(map(str, paths))} was stored") from error
            stored[event.run] = stored.get(event.run, 0) + int(new)
    return stored


class StoreSync:
    """Applies journal events to the run store on a background thread, in order.

    It opens the store itself (an unreachable store at attach time is a warning, not a crash),
    first replays events an earlier process journaled but never stored, retries with backoff
    while the store is down, and remembers in the store which event it applied last.
    """

    def __init__(self, url: str, run: str, journal_path: Path, *, backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0):
        self.url = url
        self.run = run
        self.journal_path = journal_path
        self.failures = 0
        self.applied = 0
        self.refused = 0  # events the store will never take (see PERMANENT_ERRORS)
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._backlog = read_journal(journal_path) if journal_path.exists() else []
        self._pending: deque[tuple[JournalEvent, bool]] = deque()  # (event, durable in the journal)
        self._condition = threading.Condition()
        self._closing = threading.Event()
        self._deadline = float("inf")
        self._store = None
        self._failing_since: float | None = None
        self._worker = threading.Thread(target=self._run, name=f"featuredrift-store-{run}", daemon=True)
        self._worker.start()

    @property
    def pending(self) -> list[tuple[JournalEvent, bool]]:
        with self._condition:
            return list(self._pending)

    def submit(self, event: JournalEvent, durable: bool) -> None:
        with self._condition:
            self._pending.append((event, durable))
            self._condition.notify()

    def close(self, timeout_s: float) -> list[tuple[JournalEvent, bool]]:
        """Stop after what can be stored within `timeout_s`; return what was not stored."""
        with self._condition:
            self._deadline = time.monotonic() + max(0.0, timeout_s)
            self._closing.set()
            self._condition.notify_all()
        self._worker.join(timeout=max(0.0, timeout_s))
        left = self.pending
        if not self._worker.is_alive() and self._store is not None:
            self._store.close()
        return left

    def _remaining(self) -> float:
        return self._deadline - time.monotonic()

    def _abandoned(self) -> bool:
        """Past the close deadline: what is left belongs to the journal (and to whoever imports
        it), so this worker must not write any more, even when a blocked call returns late."""
        return self._closing.is_set() and self._remaining() <= 0

    def _run(self) -> None:
        backoff = self.backoff_initial_s
        while True:
            with self._condition:
                while not self._pending and not self._backlog and not self._closing.is_set():
                    self._condition.wait()
                if self._abandoned() or (self._closing.is_set() and not (self._pending or self._backlog)):
                    return
            try:
                self._sync_once()
                backoff = self.backoff_initial_s
            except Exception as error:  # noqa: BLE001 - any store failure is counted and retried
                self._note_failure(error)
                if self._closing.is_set():
                    time.sleep(min(backoff, max(0.0, self._remaining())))
                else:
                    self._closing.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)

    def _sync_once(self) -> None:
        if self._store is None:
            from featuredrift.store import RunStore

            self._store = RunStore(self.url)
            applied = self._store.applied_sequences(self.run)
            self._backlog = [event for event in self._backlog if event.seq not in applied]
            if self._backlog:
                logger.info("featuredrift replays %d journal event(s) of run %r into %s",
                            len(self._backlog), self.run, self._store.display_url)
        while self._backlog and not self._abandoned():
            self._apply(self._backlog[0])
            self._backlog.pop(0)
        while True:
            with self._condition:
                if not self._pending or self._abandoned():
                    return
                event, _ = self._pending[0]
            self._apply(event)
            with self._condition:
                self._pending.popleft()

    def _apply(self, event: JournalEvent) -> None:
        try:
            store_event(self._store, event)
        except PERMANENT_ERRORS as error:
            self.refused += 1
            logger.error("featuredrift run store refused event %d (%s) of run %r: %s; it stays in %s",
                         event.seq, event.kind, self.run, error, self.journal_path)
            return
        self.applied += 1
        if self._failing_since is not None:
            logger.info("featuredrift run store is back after %.1fs", time.time() - self._failing_since)
            self._failing_since = None

    def _note_failure(self, error: Exception) -> None:
        self.failures += 1
        if self._failing_since is None:
            self._failing_since = time.time()
            logger.warning("featuredrift run store %s unavailable (%s); evaluations are safe in %s and will be stored "
                           "when it is back", self.url_for_humans, error, self.journal_path)
        from featuredrift.store import StoreUnavailableError

        if self._store is not None and not isinstance(error, StoreUnavailableError):
            # A half-open connection can wedge; start over with a fresh engine on the next try.
            self._store.close()
            self._store = None

    @property
    def url_for_humans(self) -> str:
        from featuredrift.store.engine import parse_store_url, url_for_humans

        try:
            return url_for_humans(parse_store_url(self.url))
        except Exception:  # noqa: BLE001
            return "(unparsable URL)"
