"""Stage results on disk, keyed by a hash of their inputs, so a replication is resumable.

Each stage owns ``<out>/stages/<name>/``. The stage's key (a hash of the config slice it reads,
the keys of the stages it depends on and `CODE_VERSION`) is written to ``key.json`` when it
starts; ``done.json`` (key, result, seconds) is written last and atomically. A directory whose
``done.json`` carries the current key is a cache hit; anything else is recomputed. Work files
written under a matching ``key.json`` (e.g. finished activation shards) may be reused by a
resumed stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CODE_VERSION = 1
"""Bump when a stage's computation changes, to invalidate every cached result."""


def stable_hash(payload: Any) -> str:
    """sha256 of the canonical JSON of `payload` (sorted keys), 16 hex digits."""
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str), encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class StageDir:
    """One stage's folder and its cache bookkeeping."""

    root: Path
    name: str
    key: str

    @property
    def path(self) -> Path:
        return self.root / "stages" / self.name

    def cached_result(self) -> dict | None:
        """The stored result if it was computed with this key, else None."""
        done = self.path / "done.json"
        if not done.is_file():
            return None
        try:
            record = json.loads(done.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        if record.get("key") != self.key:
            return None
        return record

    def begin(self, *, force: bool) -> Path:
        """Prepare the folder for a fresh computation; keeps work files of the same key."""
        same_key = False
        key_file = self.path / "key.json"
        if key_file.is_file() and not force:
            try:
                same_key = json.loads(key_file.read_text(encoding="utf-8")).get("key") == self.key
            except (OSError, json.JSONDecodeError):
                same_key = False
        if not same_key and self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "done.json").unlink(missing_ok=True)
        write_json_atomic(key_file, {"key": self.key, "stage": self.name})
        return self.path

    def finish(self, result: dict, seconds: float) -> dict:
        record = {"key": self.key, "stage": self.name, "seconds": seconds, "result": result}
        write_json_atomic(self.path / "done.json", record)
        return record
