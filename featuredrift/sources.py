"""Named sources: `scheme:name` strings such as the embedded `zoo:nano`, provided by plugins.

The SAE loader and the probe reader sit below the zoo that builds these files, so they never
import it: a package registers a source under the `featuredrift.sources` entry-point group (the
zoo does, in pyproject.toml) and it is looked up by its scheme here. A source answers
`sae(name) -> (SAE root, default hookpoint)` and `probes(name) -> probe directory`, and raises
`ValueError` naming what it expected for a name it does not know.
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol

ENTRY_POINT_GROUP = "featuredrift.sources"


class NamedSource(Protocol):
    def sae(self, name: str) -> tuple[Path, str]: ...

    def probes(self, name: str) -> Path: ...


@functools.cache
def _registered() -> dict[str, object]:
    return {entry.name: entry for entry in entry_points(group=ENTRY_POINT_GROUP)}


def schemes() -> list[str]:
    """The schemes installed plugins provide, e.g. `["zoo"]`."""
    return sorted(_registered())


def named_source(spec: str) -> tuple[NamedSource, str] | None:
    """The plugin and the name of `spec` when its scheme is registered (`"zoo:nano"` → zoo, "nano")."""
    scheme, separator, name = str(spec).partition(":")
    entry = _registered().get(scheme) if separator else None
    if entry is None:
        return None
    return entry.load(), name
