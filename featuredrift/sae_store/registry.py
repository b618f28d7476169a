"""A small JSON registry of known SAEs: (model id, revision, hookpoint) → directory and sha256
fingerprint, under `$FEATUREDRIFT_HOME` (default `~/.cache/featuredrift`).

The fingerprint is what runs record next to their metrics, so two runs can prove they used the
same SAE bytes; it equals `cat cfg.json sae.safetensors | sha256sum` (`sae_weights.safetensors`
for a SAELens folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from featuredrift.sae_store.validate import (
    CFG_FILE,
    SAELENS_WEIGHTS,
    WEIGHTS_FILE,
    SaeError,
    validate_sae_dir,
)

REGISTRY_FILE = "sae_registry.json"
_CHUNK_BYTES = 1 << 20


def featuredrift_home() -> Path:
    return Path(os.environ.get("FEATUREDRIFT_HOME") or Path.home() / ".cache" / "featuredrift")


def weights_file(path: Path) -> str:
    """The weights file name of an SAE folder: sparsify's, or SAELens' when only that one is there."""
    if not (path / WEIGHTS_FILE).is_file() and (path / SAELENS_WEIGHTS).is_file():
        return SAELENS_WEIGHTS
    return WEIGHTS_FILE


def fingerprint_sae(path: Path | str) -> str:
    """sha256 over the bytes of `cfg.json` then the weights file, streamed."""
    path = Path(path)
    digest = hashlib.sha256()
    for name in (CFG_FILE, weights_file(path)):
        file = path / name
        if not file.is_file():
            raise SaeError(f"{file}: missing: expected {CFG_FILE} and {weights_file(path)} to fingerprint")
        with open(file, "rb") as handle:
            while chunk := handle.read(_CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class RegistryEntry:
    model_id: str
    revision: str | None
    hookpoint: str
    path: str
    fingerprint: str
    registered_at: float

    @property
    def key(self) -> tuple[str, str | None, str]:
        return (self.model_id, self.revision, self.hookpoint)


class SaeRegistry:
    """Read-modify-write of one JSON file; writes are atomic (temp file + rename)."""

    def __init__(self, home: Path | str | None = None):
        self.file = Path(home or featuredrift_home()) / REGISTRY_FILE

    def entries(self) -> list[RegistryEntry]:
        if not self.file.exists():
            return []
        try:
            rows = json.loads(self.file.read_text(encoding="utf-8"))["entries"]
            return [RegistryEntry(**row) for row in rows]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SaeError(
                f"{self.file}: corrupt SAE registry: expected {{'entries': [{{model_id, revision, hookpoint, path, "
                f"fingerprint, registered_at}}]}}, found {type(err).__name__}: {err}"
            ) from err

    def register(self, model_id: str, hookpoint: str, path: Path | str, *, revision: str | None = None) -> RegistryEntry:
        """Validate the SAE directory, fingerprint it and record it (replacing the same key)."""
        files = validate_sae_dir(path)
        entry = RegistryEntry(
            model_id, revision, hookpoint, str(files.path.resolve()), fingerprint_sae(files.path), time.time()
        )
        kept = [e for e in self.entries() if e.key != entry.key]
        self._write([*kept, entry])
        return entry

    def lookup(
        self, model_id: str, hookpoint: str, *, revision: str | None = None, verify: bool = False
    ) -> RegistryEntry | None:
        """The registered SAE, or None; `verify` re-hashes the files and raises if they changed."""
        for entry in self.entries():
            if entry.key == (model_id, revision, hookpoint):
                if verify:
                    actual = fingerprint_sae(entry.path)
                    if actual != entry.fingerprint:
                        raise SaeError(
                            f"{entry.path}: SAE changed since it was registered: expected sha256 "
                            f"{entry.fingerprint}, found {actual}"
                        )
                return entry
        return None

    def _write(self, entries: list[RegistryEntry]) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"entries": [asdict(e) for e in entries]}, indent=2)
        handle, tmp = tempfile.mkstemp(dir=self.file.parent, prefix=".sae_registry.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(payload)
            os.replace(tmp, self.file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
