"""The run journal: every evaluation (and alert transition) of a run, appended and fsync-ed to a
local JSONL file before anything else happens to it.

The journal is what makes "no data lost" hold when the run store is down, locked, frozen or on
a full disk: the store is only a synced copy. Each line is one event of one run, with a sequence
number that is its identity within the run (kept when an event is rescued to another file) and
the run's fingerprints (model, SAE, probe set); the store remembers every sequence it applied, so
a later process (a resumed run, or `featuredrift runs import`) replays exactly what is missing,
from any set of the run's journals in any order. A torn last line (a kill in the middle of a
write) is skipped, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
JOURNAL_FORMAT = "featuredrift-journal/1"
EVENT_KINDS = ("run", "evaluation", "alert", "stop", "finish", "heartbeat", "checkpoint", "goal", "audit")
# What a run measures with: two journals (or a journal and a stored run) that differ here are two runs.
FINGERPRINT_FIELDS = ("model_fingerprint", "sae_fingerprint", "probe_fingerprint")


class JournalError(ValueError):
    """A journal that cannot be one run's history: several runs or several fingerprints in one file."""


def run_fingerprints(provenance: dict[str, Any]) -> dict[str, str]:
    """The fingerprints of a run's provenance (`DriftMonitor.provenance()`), the ones it has."""
    return {name: str(provenance[name]) for name in FINGERPRINT_FIELDS if provenance.get(name)}


def safe_file_name(name: str, limit: int = 120) -> str:
    """`name` as one path component: no separators, no `..`, nothing a shell would trip on."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "run"
    return cleaned[:limit]


@dataclass(frozen=True)
class JournalEvent:
    seq: int
    kind: str
    run: str
    data: dict[str, Any]
    fingerprints: dict[str, str] = field(default_factory=dict)
    at: float | None = None  # unix seconds when it was journaled: the run's heartbeat (absent in older journals)

    def to_line(self) -> str:
        row = {"format": JOURNAL_FORMAT, "seq": self.seq, "kind": self.kind, "run": self.run,
               "fingerprints": self.fingerprints, "data": self.data}
        if self.at is not None:
            row["at"] = self.at
        return json.dumps(row, allow_nan=True) + "\n"

    @property
    def digest(self) -> str:
        """sha256 of what the event says (not where or when it was written): the same event read from
        the run's journal or from a rescue file has the same digest, an edited one does not."""
        content = json.dumps({"kind": self.kind, "run": self.run, "fingerprints": self.fingerprints, "data": self.data},
                             sort_keys=True, allow_nan=True)
        return hashlib.sha256(content.encode()).hexdigest()


class RunJournal:
    """Append-only JSONL journal of one run (thread-safe appends).

    `first_sequence` continues the numbering of a run whose journal file is not here (a resumed
    run on another machine): sequence numbers identify events, so they never start over.
    """

    def __init__(self, path: str | Path, run: str, fingerprints: dict[str, str] | None = None,
                 first_sequence: int = 0) -> None:
        self.path = Path(path)
        self.run = run
        self.fingerprints = dict(fingerprints or {})
        self._lock = threading.Lock()
        written = max((event.seq for event in read_journal(self.path)), default=0) if self.path.exists() else 0
        self._seq = max(written, int(first_sequence))

    @classmethod
    def for_run(cls, folder: str | Path, run: str, fingerprints: dict[str, str] | None = None,
                first_sequence: int = 0) -> RunJournal:
        return cls(Path(folder) / f"journal-{safe_file_name(run)}.jsonl", run, fingerprints, first_sequence)

    @property
    def sequence(self) -> int:
        """The sequence number of the newest event (written or not)."""
        return self._seq

    def unwritten(self, kind: str, data: dict[str, Any]) -> JournalEvent:
        """The next event, for when the disk refused it (it lives in memory, with its own number)."""
        with self._lock:
            self._seq += 1
            return JournalEvent(self._seq, kind, self.run, data, fingerprints=self.fingerprints, at=time.time())

    def append(self, kind: str, data: dict[str, Any]) -> JournalEvent:
        """Write one event durably (append + fsync); raises OSError when the disk refuses."""
        if kind not in EVENT_KINDS:
            raise ValueError(f"journal event kind: expected one of {EVENT_KINDS}, found {kind!r}")
        with self._lock:
            event = JournalEvent(self._seq + 1, kind, self.run, data, fingerprints=self.fingerprints, at=time.time())
            self._write(event)
            self._seq = event.seq
            return event

    def append_event(self, event: JournalEvent) -> None:
        """Write an event of this run as it is, number included (a rescue of events another file refused)."""
        if event.run != self.run:
            raise ValueError(f"journal {self.path}: expected events of run {self.run!r}, found one of {event.run!r}")
        with self._lock:
            self._write(event)
            self._seq = max(self._seq, event.seq)

    def _write(self, event: JournalEvent) -> None:
        """Append one line and fsync; a write the disk cut short is undone, so the next line starts clean."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = event.to_line().encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            try:
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")
                os.fsync(fd)
            except OSError:
                try:
                    os.ftruncate(fd, size)
                except OSError:
                    pass  # a torn last line is skipped by readers
                raise
        finally:
            os.close(fd)


def read_journal(path: str | Path) -> list[JournalEvent]:
    """Every complete event in a journal file, in order (a torn or foreign line is skipped)."""
    return list(_iter_events(Path(path)))


def _iter_events(path: Path) -> Iterator[JournalEvent]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith("\n"):
                log.warning("%s:%d: skipping a torn last line (the process died while writing it)", path, number)
                return
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: skipping a line that is not JSON", path, number)
                continue
            if not isinstance(row, dict) or row.get("format") != JOURNAL_FORMAT:
                log.warning("%s:%d: skipping a line that is not a %s event", path, number, JOURNAL_FORMAT)
                continue
            at = row.get("at")
            yield JournalEvent(int(row["seq"]), row["kind"], row["run"], row["data"],
                               fingerprints=dict(row.get("fingerprints") or {}),
                               at=float(at) if isinstance(at, int | float) else None)


def journal_run(events: list[JournalEvent], path: str | Path) -> tuple[str, dict[str, str]]:
    """(run, fingerprints) of a journal's events; a journal that names several runs, or carries
    several fingerprints, is refused, naming both."""
    if not events:
        raise JournalError(f"{path}: expected journal events, found none")
    run, fingerprints = events[0].run, events[0].fingerprints
    for event in events[1:]:
        if event.run != run:
            raise JournalError(f"{path}: expected the events of one run, found run {run!r} (event {events[0].seq}) "
                               f"and run {event.run!r} (event {event.seq})")
        if event.fingerprints != fingerprints:
            changed = sorted(k for k in set(fingerprints) | set(event.fingerprints)
                             if fingerprints.get(k) != event.fingerprints.get(k))
            raise JournalError(f"{path}: expected one run's fingerprints throughout, found {changed[0]} "
                               f"{fingerprints.get(changed[0])!r} (event {events[0].seq}) and "
                               f"{event.fingerprints.get(changed[0])!r} (event {event.seq})")
    return run, fingerprints
