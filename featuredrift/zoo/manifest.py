"""The zoo manifest (`DIR/manifest.json`): what was built (config, seed, package versions)
and sha256 fingerprints of every output file, so a cached build is reused only when it is
what the caller asks for and is intact."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "featuredrift-zoo"
VERSIONED_PACKAGES = ("torch", "transformers", "trl", "tokenizers", "eai-sparsify", "datasets")
# The parts of a manifest that must equal the request for a cached build to be reused.
IDENTITY_KEYS = ("format", "config", "seed", "all_layers", "versions")


class ZooCheck(NamedTuple):
    """Whether a zoo directory can be reused, and if not, why."""

    ok: bool
    reason: str


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "missing"
    return versions


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint_tree(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (except the manifest), keyed by POSIX relative path."""
    return {
        path.relative_to(root).as_posix(): sha256_file(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != MANIFEST_NAME
    }


def identity(config: dict, seed: int, all_layers: bool) -> dict:
    """The manifest fields a build request is matched on."""
    return {
        "format": MANIFEST_FORMAT,
        "config": config,
        "seed": seed,
        "all_layers": all_layers,
        "versions": package_versions(),
    }


def read_manifest(root: Path) -> dict:
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"zoo manifest not found: expected {path}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"zoo manifest {path} is not valid JSON: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"zoo manifest {path}: expected format {MANIFEST_FORMAT!r}")
    return manifest


def write_manifest(root: Path, manifest: dict) -> None:
    (Path(root) / MANIFEST_NAME).write_text(
        json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


def check_zoo(root: Path, expected: dict) -> ZooCheck:
    """Compare a zoo directory with the expected identity and verify every fingerprint."""
    root = Path(root)
    try:
        manifest = read_manifest(root)
    except (FileNotFoundError, ValueError) as error:
        return ZooCheck(False, str(error))
    for key in IDENTITY_KEYS:
        if manifest.get(key) != expected[key]:
            return ZooCheck(
                False,
                f"manifest field {key!r} differs: expected {expected[key]!r}, found {manifest.get(key)!r}",
            )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return ZooCheck(False, "manifest lists no files")
    for relative, digest in files.items():
        path = root / relative
        if not path.is_file():
            return ZooCheck(False, f"missing file {path}")
        if sha256_file(path) != digest:
            return ZooCheck(False, f"file {path} does not match its sha256 fingerprint")
    return ZooCheck(True, "manifest matches and every file is intact")
