"""The zoo's texts as replication data: its base corpus and chat SFT set (training data for
SAEs) and its held-out probe texts and prompts (evaluation data).

The zoo world is a pure function of (size config, seed), so it is regenerated here rather
than read back, and the seed is the one the built zoo records.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=4)
def _world(size: str):
    from monitor.zoo.config import get_zoo_config
    from monitor.zoo.world import build_world

    return build_world(get_zoo_config(size), _zoo_seed(size))


def _zoo_seed(size: str) -> int:
    import json
    from pathlib import Path

    from monitor.replicate.sources import zoo_paths

    root = Path(zoo_paths(size).root)
    for name in ("manifest.json", "zoo.json"):
        manifest = root / name
        if manifest.is_file():
            return int(json.loads(manifest.read_text(encoding="utf-8")).get("seed", 0))
    return 0


def zoo_part(size: str, part: str) -> list:
    world = _world(size)
    if part in ("harmful", "harmless"):
        return [row["instruction"] for row in getattr(world, f"{part}_probes")]
    return list(
        {
            "base_corpus": world.base_corpus,
            "chat_sft": world.chat_sft,
            "base_text": world.base_text_probes,
            "chat_text": world.chat_text_probes,
        }[part]
    )
