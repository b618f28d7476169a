"""The zoo's texts as replication data: its base corpus and chat SFT set (training data for
SAEs) and its held-out probe texts and prompts (evaluation data), read from the built zoo."""

from __future__ import annotations

from pathlib import Path

ZOO_FILES = {
    "base_corpus": ("data", "base_corpus.jsonl"),
    "chat_sft": ("data", "chat_sft.jsonl"),
    "base_text": ("probes", "base_text.jsonl"),
    "chat_text": ("probes", "chat_text.jsonl"),
    "harmful": ("probes", "harmful.jsonl"),
    "harmless": ("probes", "harmless.jsonl"),
}


def zoo_part(size: str, part: str, split: str = "all") -> list:
    from featuredrift.monitor.replicate.sources import _file_items, zoo_paths

    folder, name = ZOO_FILES[part]
    return _file_items(Path(zoo_paths(size).root) / folder / name, part, split)
