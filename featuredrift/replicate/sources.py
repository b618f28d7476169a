"""Resolve the config's source specs into models, tokenizers, texts and instructions.

Texts come back either as strings (base-like text) or as message lists (conversations), which
`render_texts` turns into strings with the chat tokenizer's template, so the base and the chat
model read identical token ids.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from featuredrift.replicate.config import ALL_SPLITS, ConfigError

# The zoo's texts as replication data: its base corpus and chat SFT set (training data for
# SAEs) and its held-out probe texts and prompts (evaluation data), read from the built zoo.
ZOO_FILES = {
    "base_corpus": ("data", "base_corpus.jsonl"),
    "chat_sft": ("data", "chat_sft.jsonl"),
    "base_text": ("probes", "base_text.jsonl"),
    "chat_text": ("probes", "chat_text.jsonl"),
    "harmful": ("probes", "harmful.jsonl"),
    "harmless": ("probes", "harmless.jsonl"),
}
ZOO_PARTS = tuple(ZOO_FILES)
Item = str | list[dict[str, str]]


# ------------------------------------------------------------------------------ models


def is_local_path(spec: str) -> bool:
    """Specs that name a folder on disk rather than a Hub id."""
    return spec.startswith(("/", "./", "../", "~")) or Path(spec).expanduser().exists()


def zoo_size(spec: str) -> str | None:
    return spec.split(":", 2)[1] if spec.startswith("zoo:") else None


def zoo_paths(size: str):
    from featuredrift.zoo import ensure_zoo

    return ensure_zoo(size)


def model_location(spec: str, role: str) -> str:
    """Where `from_pretrained` should load a model spec from (`role`: base or chat)."""
    size = zoo_size(spec)
    if size is not None:
        return str(getattr(zoo_paths(size), role))
    return str(Path(spec).expanduser()) if is_local_path(spec) else spec


def load_model_and_tokenizer(spec: str, role: str, *, device, dtype):
    """A causal LM in eval mode with gradients off, and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    location = model_location(spec, role)
    tokenizer = AutoTokenizer.from_pretrained(location)
    model = AutoModelForCausalLM.from_pretrained(location, dtype=getattr(torch, dtype))
    model.to(device).eval().requires_grad_(False)
    return model, tokenizer


# ------------------------------------------------------------------------------ data


def split_slice(spec: str) -> tuple[str, slice]:
    """`SPEC[a:b]` → (SPEC, slice(a, b)); a spec without brackets takes everything."""
    if spec.endswith("]") and "[" in spec:
        head, _, body = spec[:-1].rpartition("[")
        start, sep, stop = body.partition(":")
        try:
            if sep:
                return head, slice(int(start) if start else None, int(stop) if stop else None)
        except ValueError:
            pass
        raise ConfigError(f"data source {spec!r}: expected a trailing [start:stop] slice of integers, found [{body}]")
    return spec, slice(None)


def load_items(specs: Sequence[str], field: str, limit: int | None = None, split: str = ALL_SPLITS) -> list[Item]:
    """Concatenate the items of several source specs, up to `limit`; file rows labelled with
    another `split` are skipped (before any `[a:b]` slice applies)."""
    items: list[Item] = []
    for spec in specs:
        base, part = split_slice(spec)
        stop = part.stop
        if limit is not None:
            wanted = (part.start or 0) + limit - len(items)
            stop = wanted if stop is None else min(stop, wanted)
        items.extend(load_one(base, field, stop, split)[part.start : stop])
        if limit is not None and len(items) >= limit:
            return items[:limit]
    if not items:
        where = f" of split {split!r} (data.splits)" if split != ALL_SPLITS else ""
        raise ConfigError(f"data.{field}: expected at least one text{where}, found none in {list(specs)}")
    return items


def load_one(spec: str, field: str, limit: int | None = None, split: str = ALL_SPLITS) -> list[Item]:
    if spec.startswith("zoo:"):
        return _zoo_items(spec, field, split)
    if spec.startswith("hf:"):
        return _hub_items(spec, field, limit)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"data.{field}: expected 'zoo:<size>:<part>', 'hf:NAME:SPLIT:COLUMN' or an existing "
            f".jsonl/.txt file, found {spec!r}"
        )
    return _file_items(path, field, split)


def _zoo_items(spec: str, field: str, split: str) -> list[Item]:
    parts = spec.split(":")
    if len(parts) != 3 or parts[2] not in ZOO_PARTS:
        raise ConfigError(f"data.{field}: expected 'zoo:<size>:<part>' with part in {ZOO_PARTS}, found {spec!r}")
    folder, name = ZOO_FILES[parts[2]]
    return _file_items(Path(zoo_paths(parts[1]).root) / folder / name, field, split)


def _hub_items(spec: str, field: str, limit: int | None) -> list[Item]:
    """`hf:NAME:SPLIT:COLUMN` (NAME may carry a config as `NAME@CONFIG`), streamed so that only
    the first `limit` rows are read."""
    parts = spec.split(":")
    if len(parts) != 4 or not all(parts[1:]):
        raise ConfigError(f"data.{field}: expected 'hf:NAME:SPLIT:COLUMN', found {spec!r}")
    _, name, split, column = parts
    name, _, subset = name.partition("@")
    from itertools import islice

    from featuredrift.extras import require_extra

    require_extra("replicate", f"reading {spec}", modules=("datasets",))
    from datasets import load_dataset

    dataset = load_dataset(name, subset or None, split=split, streaming=True)
    items = []
    for i, row in enumerate(islice(dataset, limit)):
        if column not in row:
            raise ConfigError(f"data.{field}: dataset {name} split {split}: expected column {column!r}, found {sorted(row)}")
        items.append(_normalise(row[column], f"{spec} row {i}", field))
    return items


def _file_items(path: Path, field: str, split: str = ALL_SPLITS) -> list[Item]:
    """A .txt file's lines or a .jsonl file's rows; rows whose `split` label is another split
    are skipped (unlabelled rows belong to every split, as in the live monitor's probe sets)."""
    if path.suffix == ".txt":
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if isinstance(row, dict):
            label = row.get("split")
            if split != ALL_SPLITS and label is not None and label != split:
                continue
            row = next((row[k] for k in ("messages", "conversation", "instruction", "text", "prompt") if k in row), None)
        items.append(_normalise(row, f"{path}:{number}", field))
    return items


def _normalise(value, where: str, field: str) -> Item:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
        return [{"role": m.get("role", "user"), "content": m["content"]} for m in value]
    raise ConfigError(f"data.{field}: {where}: expected a string or a list of messages, found {type(value).__name__}")


def render_texts(items: Sequence[Item], tokenizer) -> tuple[list[str], bool]:
    """Strings ready to tokenize, and whether they already hold their special tokens
    (conversations rendered with the chat template do)."""
    from featuredrift.lm.prompts import render_conversation

    if all(isinstance(i, str) for i in items):
        return list(items), False
    return [render_conversation(tokenizer, i) if not isinstance(i, str) else i for i in items], True


def instructions_of(items: Sequence[Item], field: str) -> list[str]:
    """Instruction strings; a conversation contributes its first user turn."""
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
        else:
            user = next((m["content"] for m in item if m["role"] == "user"), None)
            if user is None:
                raise ConfigError(f"data.{field}: expected instructions, found a conversation without a user turn")
            out.append(user)
    return out
