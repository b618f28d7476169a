"""Turn an SAE source (a sparsify directory, a Hub id or `zoo:<size>`) into frozen, validated
`SparseCoder`s on the requested device and dtype.

A source directory is either one hookpoint directory (`cfg.json` + `sae.safetensors`) or a
directory of hookpoint subdirectories (`layers.N/…`), sparsify's two on-disk layouts. Hub ids
(`owner/name`) are only tried when no such path exists; they are fetched with
`huggingface_hub.snapshot_download` (what `SparseCoder.load_from_hub`/`load_many` use) and
then validated like any local directory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from featuredrift import sae_store  # noqa: F401  (Triton guard before sparsify loads)
from featuredrift.lm.hookpoints import HOOKPOINT_PATTERN
from featuredrift.sae_store.saelens import (
    SAELENS_PREFIX,
    is_saelens_dir,
    load_saelens_dir,
    saelens_hookpoint,
    saelens_release_dir,
)
from featuredrift.sae_store.validate import (
    CFG_FILE,
    TRAINED_AT_FILE,
    WEIGHTS_FILE,
    SaeError,
    check_finite,
    check_fits_model,
    validate_sae_dir,
)
from featuredrift.sources import named_source

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(source: str) -> bool:
    return bool(_HUB_ID.match(source)) and not Path(source).exists()


def _is_sae_dir(path: Path) -> bool:
    return (path / CFG_FILE).exists() or (path / WEIGHTS_FILE).exists()


def _download_from_hub(repo_id: str, hookpoints: list[str] | None) -> Path:
    try:
        from huggingface_hub import snapshot_download

        patterns = [f"{h}/*" for h in hookpoints] if hookpoints else None
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as err:  # offline, unknown repo, auth, HTTP errors: all mean "not available"
        raise SaeError(
            f"SAE source {repo_id!r}: no such local path, and downloading it from the Hugging Face Hub failed: "
            f"{type(err).__name__}: {err}"
        ) from err


def _named_sae(source: str) -> tuple[Path, str] | None:
    """`zoo:<size>` and other named sources (see `featuredrift.sources`): root and default hookpoint."""
    named = named_source(source)
    if named is None:
        return None
    plugin, name = named
    try:
        return plugin.sae(name)
    except ValueError as err:
        raise SaeError(f"SAE source {source!r}: {err}") from err


def locate_sae_dirs(source: str | Path, hookpoints: list[str] | None = None) -> dict[str, Path]:
    """Map hookpoint name → directory for everything the source holds (no tensor is read).

    A single hookpoint directory is named after itself (`layers.3`), or after the only requested
    hookpoint when its folder has another name.
    """
    source_text = str(source)
    named = _named_sae(source_text)
    if named is not None:
        root = named[0]
    elif source_text.startswith(SAELENS_PREFIX):
        root = saelens_release_dir(source_text)
    elif Path(source_text).exists():
        root = Path(source_text)
    elif looks_like_hub_id(source_text):
        root = _download_from_hub(source_text, hookpoints)
    else:
        raise SaeError(
            f"SAE source {source_text!r}: expected an existing sparsify or SAELens directory, a Hub id 'owner/name', "
            "'saelens:<release>/<sae id>' or 'zoo:<size>'; no such path exists"
        )

    if not root.is_dir():
        raise SaeError(f"SAE source {root}: expected a directory holding {CFG_FILE} and {WEIGHTS_FILE}, found a file")
    if is_saelens_dir(root):
        own = saelens_hookpoint(root)
        return {own or (hookpoints[0] if hookpoints and len(hookpoints) == 1 else root.name): root}
    if _is_sae_dir(root):
        trained_at = _trained_hookpoint(root)
        if trained_at is not None:
            if hookpoints and len(hookpoints) == 1 and hookpoints[0] != trained_at:
                raise SaeError(
                    f"SAE {root}: trained at {trained_at} (from {TRAINED_AT_FILE}), but requested for {hookpoints[0]}"
                )
            return {trained_at: root}
        named_after_hookpoint = HOOKPOINT_PATTERN.match(root.name) is not None
        if hookpoints and len(hookpoints) == 1 and not (named_after_hookpoint and hookpoints[0] != root.name):
            return {hookpoints[0]: root}
        return {root.name: root}
    found = {}
    for child in sorted(root.iterdir(), key=lambda p: _natural_key(p.name)):
        if child.is_dir() and is_saelens_dir(child):
            found[saelens_hookpoint(child) or child.name] = child
        elif child.is_dir() and _is_sae_dir(child):
            found[child.name] = child
    if not found:
        listing = sorted(p.name for p in root.iterdir())[:20]
        raise SaeError(
            f"SAE source {root}: expected {CFG_FILE} + {WEIGHTS_FILE}, or hookpoint subdirectories "
            f"such as layers.N/ holding them; found {listing}"
        )
    return found


def _trained_hookpoint(path: Path) -> str | None:
    """The hookpoint `featuredrift sae train` recorded for this SAE folder, if it did."""
    record = path / TRAINED_AT_FILE
    if not record.is_file():
        return None
    try:
        return json.loads(record.read_text()).get("hookpoint")
    except (OSError, json.JSONDecodeError) as error:
        raise SaeError(f"{record}: expected JSON recording the SAE's hookpoint, found an unreadable file ({error})") from error


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _pick(available: dict[str, Path], requested: list[str], source: str | Path) -> dict[str, Path]:
    missing = [h for h in requested if h not in available]
    if missing:
        raise SaeError(f"SAE source {source}: expected hookpoints {missing}, found {sorted(available, key=_natural_key)}")
    return {h: available[h] for h in requested}


def _model_device(model):
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return "cpu"


def load_sae_dir(path: Path | str, *, hookpoint: str | None = None, model=None, device=None, dtype=None):
    """Validate and load one hookpoint directory (sparsify or SAELens); the result is frozen and
    in eval mode."""
    if is_saelens_dir(Path(path)):
        return load_saelens_dir(Path(path), hookpoint=hookpoint, model=model, device=device, dtype=dtype)
    files = validate_sae_dir(path)
    if model is not None:
        check_fits_model(files, model, hookpoint)
        device = device if device is not None else _model_device(model)
    from sparsify import SparseCoder

    try:
        sae = SparseCoder.load_from_disk(files.path, device=device or "cpu")
    except Exception as err:  # safetensors errors we did not anticipate in the header check
        raise SaeError(f"{files.path / WEIGHTS_FILE}: cannot load SAE weights: {type(err).__name__}: {err}") from err
    if dtype is not None:
        sae = sae.to(dtype=dtype)
    check_finite(sae, files.path)
    sae.requires_grad_(False)
    return sae.eval()


def load_saes(source: str | Path, hookpoints: list[str] | None = None, *, model=None, device=None, dtype=None) -> dict:
    """Every requested hookpoint's SAE (all of the source's when `hookpoints` is None)."""
    available = locate_sae_dirs(source, hookpoints)
    chosen = _pick(available, list(hookpoints), source) if hookpoints else available
    return {
        name: load_sae_dir(path, hookpoint=name, model=model, device=device, dtype=dtype)
        for name, path in chosen.items()
    }


def default_hookpoint(source: str | Path) -> str | None:
    """The hookpoint a source implies: the zoo's, or the only one it holds."""
    named = _named_sae(str(source))
    if named is not None:
        return named[1]
    available = locate_sae_dirs(source)
    return next(iter(available)) if len(available) == 1 else None


def load_sae(source: str | Path, *, model=None, hookpoint: str | None = None, device=None, dtype=None):
    """One frozen `SparseCoder`; `hookpoint` picks among several and is checked against `model`."""
    if hookpoint is None:
        hookpoint = default_hookpoint(source)
        if hookpoint is None:
            found = sorted(locate_sae_dirs(source), key=_natural_key)
            raise SaeError(f"SAE source {source}: holds several hookpoints {found}; expected hookpoint= to pick one")
    (sae,) = load_saes(source, [hookpoint], model=model, device=device, dtype=dtype).values()
    return sae
