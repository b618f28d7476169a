"""The embedded model zoo: a tiny base/chat model pair, its SAE and probe sets, built locally.

`ensure_zoo(size)` returns the paths of a cached build when its manifest matches the request
(config, seed, package versions) and every file is intact, and (re)builds it otherwise. Builds
are serialised by a file lock, so parallel test sessions share one build.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from featuredrift.zoo.config import ZOO_SIZES, get_zoo_config

__all__ = [
    "ZOO_SIZES",
    "ZooPaths",
    "default_zoo_root",
    "ensure_zoo",
    "load_zoo_models",
    "zoo_paths",
]


class ZooPaths(NamedTuple):
    """Where a built zoo's parts live. `sae` is the sparsify SAE root (one `layers.N` folder
    per hookpoint); `hookpoint` is the default SAE's name, e.g. "layers.2"."""

    root: Path
    base: Path
    chat: Path
    sae: Path
    hookpoint: str
    probes: Path
    data: Path


def default_zoo_root(size: str) -> Path:
    """`$FEATUREDRIFT_HOME/zoo/<size>`, or `~/.cache/featuredrift/zoo/<size>`."""
    get_zoo_config(size)
    home = os.environ.get("FEATUREDRIFT_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".cache" / "featuredrift"
    return base / "zoo" / size


def zoo_paths(root: str | Path, hookpoint: str) -> ZooPaths:
    root = Path(root)
    return ZooPaths(
        root=root,
        base=root / "base",
        chat=root / "chat",
        sae=root / "sae",
        hookpoint=hookpoint,
        probes=root / "probes",
        data=root / "data",
    )


@contextlib.contextmanager
def build_lock(root: Path) -> Iterator[None]:
    """An exclusive lock next to the zoo directory, held while checking and building it."""
    import fcntl

    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.with_name(f".{root.name}.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_zoo(
    size: str = "nano",
    root: str | Path | None = None,
    *,
    seed: int = 0,
    all_layers: bool = False,
    force: bool = False,
    progress: bool = True,
) -> ZooPaths:
    """Reuse the zoo at `root` (default: `default_zoo_root(size)`) or build it."""
    from featuredrift.zoo.build import build_zoo
    from featuredrift.zoo.manifest import check_zoo, identity

    config = get_zoo_config(size)
    root = Path(root).expanduser() if root is not None else default_zoo_root(size)
    with build_lock(root):
        check = check_zoo(root, identity(config.to_dict(), seed, all_layers))
        if force or not check.ok:
            from featuredrift.extras import require_extra

            require_extra("demo", f"building the model zoo ({size})")
            reason = "forced rebuild" if force else check.reason
            if progress:
                from featuredrift.zoo.progress import build_with_progress

                build_with_progress(root, config, seed, all_layers=all_layers, reason=reason)
            else:
                build_zoo(root, config, seed, all_layers=all_layers)
    return zoo_paths(root, config.hookpoint)


def load_zoo_models(paths: ZooPaths, which: str = "chat"):
    """`(model, tokenizer)` of the zoo's chat or base model, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if which not in ("chat", "base"):
        raise ValueError(f"which: expected 'chat' or 'base', found {which!r}")
    directory = paths.chat if which == "chat" else paths.base
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return model, tokenizer
