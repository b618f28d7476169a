"""The run journal: every evaluation (and alert transition) of a run, appended and fsync-ed to a
local JSONL file before anything else happens to it.

The journal is what makes "no data lost" hold when the run store is down, locked, frozen or on
a full disk: the store is only a synced copy. Each line is one event with a sequence number;
the store remembers the last sequence it applied, so a later process (a resumed run, or
`featuredrift runs import`) replays exactly what is missing. A torn last line (a kill in the
middle of a write) is skipped, never fatal.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
JOURNAL_FORMAT = "featuredrift-journal/1"
EVENT_KINDS = ("run", "evaluation", "alert", "stop", "finish", "heartbeat", "checkpoint", "goal", "audit")


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
    at: float | None = None  # unix seconds when it was journaled: the run's heartbeat (absent in older journals)

    def to_line(self) -> str:
        row = {"format": JOURNAL_FORMAT, "seq": self.seq, "kind": self.kind, "run": self.run, "data": self.data}
        if self.at is not None:
            row["at"] = self.at
        return json.dumps(row, allow_nan=True) + "\n"


class RunJournal:
    """Append-only JSONL journal of one run (thread-safe appends)."""

    def __init__(self, path: str | Path, run: str) -> None:
        self.path = Path(path)
        self.run = run
        self._lock = threading.Lock()
        self._seq = max((event.seq for event in read_journal(self.path)), default=0) if self.path.exists() else 0

    @classmethod
    def for_run(cls, folder: str | Path, run: str) -> RunJournal:
        return cls(Path(folder) / f"journal-{safe_file_name(run)}.jsonl", run)

    def next_sequence(self) -> int:
        """Take a sequence number for an event that could not be written (it lives in memory)."""
        with self._lock:
            self._seq += 1
            return self._seq

    def append(self, kind: str, data: dict[str, Any]) -> JournalEvent:
        """Write one event durably (append + fsync); raises OSError when the disk refuses."""
        if kind not in EVENT_KINDS:
            raise ValueError(f"journal event kind: expected one of {EVENT_KINDS}, found {kind!r}")
        with self._lock:
            event = JournalEvent(self._seq + 1, kind, self.run, data, time.time())
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = event.to_line().encode()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")
                os.fsync(fd)
            finally:
                os.close(fd)
            self._seq = event.seq
            return event


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
                               float(at) if isinstance(at, int | float) else None)
