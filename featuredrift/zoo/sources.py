"""The zoo as a named source: `zoo:<size>` names its SAE and probe set, built on first use."""

from __future__ import annotations

from pathlib import Path

from featuredrift.zoo import ensure_zoo
from featuredrift.zoo.config import ZOO_SIZES


class ZooSource:
    """`zoo:<size>` for the SAE loader and the probe reader (registered in pyproject.toml)."""

    def _paths(self, size: str):
        if size not in ZOO_SIZES:
            raise ValueError(f"expected zoo:<size> with size one of {', '.join(ZOO_SIZES)}, found {size!r}")
        return ensure_zoo(size)

    def sae(self, size: str) -> tuple[Path, str]:
        paths = self._paths(size)
        return Path(paths.sae), paths.hookpoint

    def probes(self, size: str) -> Path:
        return Path(self._paths(size).probes)


ZOO_SOURCE = ZooSource()
