"""torch.distributed helpers for the probe pass: shard work across ranks, gather results.

Every rank reads its shard of the probe batches (under FSDP/ZeRO-3 a forward pass is a
collective, so all ranks must take part) and the results are gathered in the original order,
so every rank ends up with the same tensors. Without an initialised process group these are
no-ops, which keeps single-process use free of distributed concerns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return world()[0] == 0


def padded_shard(items: Sequence[T]) -> tuple[list[T], int]:
    """This rank's strided slice padded (with its last item, or the first item of all) to the
    same length on every rank, and how many of them are real.

    Under FSDP/ZeRO-3 every forward pass is a collective: a rank with one batch more than the
    others would wait for ever. Padding gives every rank the same number of passes; results of
    the padding are dropped. (accelerate's `split_between_processes(apply_padding=True)` does
    the same for contiguous splits.)
    """
    rank, size = world()
    mine = list(items[rank::size])
    if size == 1 or not items:
        return mine, len(mine)
    per_rank = -(-len(items) // size)
    filler = mine[-1] if mine else items[0]
    return mine + [filler] * (per_rank - len(mine)), len(mine)


def _unshard(per_rank: list[list[T]]) -> list[T]:
    """Invert the strided split of `padded_shard` (without its padding): interleave the ranks'
    lists back into the original order."""
    out: list[T] = []
    longest = max((len(p) for p in per_rank), default=0)
    for i in range(longest):
        out.extend(p[i] for p in per_rank if i < len(p))
    return out


def gather_list(items: list[T]) -> list[T]:
    """All ranks' sharded items, in the original order, on every rank."""
    rank, size = world()
    if size == 1:
        return list(items)
    per_rank: list[list[T]] = [None] * size  # type: ignore[list-item]
    dist.all_gather_object(per_rank, list(items))
    return _unshard(per_rank)


def gather_rows(parts: list[Tensor], width: int | None = None) -> Tensor:
    """Concatenate per-batch row blocks from every rank in the original batch order.

    `parts` are this rank's per-batch results (one block per sharded batch). Tensors travel as
    CPU tensors through `all_gather_object`, which works with gloo and NCCL alike.
    """
    rank, size = world()
    if size == 1:
        if not parts:
            return torch.empty(0, width or 0)
        return torch.cat(parts)
    device = parts[0].device if parts else torch.device("cpu")
    gathered = gather_list([p.cpu() for p in parts])
    if not gathered:
        return torch.empty(0, width or 0, device=device)
    return torch.cat(gathered).to(device)


def broadcast_from_main(obj: T) -> T:
    """Rank 0's `obj` on every rank, so that decisions taken from rank-0 state (which steps
    are already stored) keep every rank in step with the collectives that follow."""
    rank, size = world()
    if size == 1:
        return obj
    holder = [obj if rank == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
