"""Activation shards on disk (safetensors): one file per (model, data, shard index) holding every
hookpoint's ``[N, d]`` activations plus the token ids, text index and position of each row.

The base and chat model read identical token ids in identical shard boundaries, so row ``i``
of ``base_<data>_<n>`` pairs with row ``i`` of ``chat_<data>_<n>``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

META_KEYS = ("token_ids", "text_index", "position")


def shard_path(folder: Path, model: str, data: str, index: int) -> Path:
    return folder / f"{model}_{data}_{index:05d}.safetensors"


def write_shard(path: Path, activations: dict[str, torch.Tensor], meta: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """Atomic write: a crash leaves either the whole shard or none (resume redoes it)."""
    tensors = {h: a.to(dtype).contiguous().cpu() for h, a in activations.items()}
    tensors.update({k: v.long().contiguous().cpu() for k, v in meta.items()})
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)


def shard_paths(folder: Path, model: str, data: str) -> list[Path]:
    paths = sorted(folder.glob(f"{model}_{data}_*.safetensors"))
    if not paths:
        raise FileNotFoundError(f"{folder}: expected activation shards {model}_{data}_*.safetensors, found none")
    return paths


def iter_paired(folder: Path, data: str, hookpoint: str) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(x_base, x_chat, token_ids) per shard, float32, checked to be on identical tokens."""
    for base_path in shard_paths(folder, "base", data):
        chat_path = base_path.with_name(base_path.name.replace("base_", "chat_", 1))
        base, chat = load_file(str(base_path)), load_file(str(chat_path))
        if not torch.equal(base["token_ids"], chat["token_ids"]):
            raise ValueError(f"{chat_path}: expected the token ids of {base_path.name}, found different tokens")
        yield base[hookpoint].float(), chat[hookpoint].float(), base["token_ids"]


def iter_model(folder: Path, model: str, data: str, hookpoint: str) -> Iterator[torch.Tensor]:
    for path in shard_paths(folder, model, data):
        yield load_file(str(path))[hookpoint].float()


def load_all(folder: Path, model: str, data: str, hookpoint: str) -> torch.Tensor:
    return torch.cat(list(iter_model(folder, model, data, hookpoint)))
