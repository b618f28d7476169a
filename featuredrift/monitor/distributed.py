"""torch.distributed helpers for the probe pass: shard work across ranks, gather on rank 0.

Every rank reads its shard of the probe batches (under FSDP/ZeRO-3 a forward pass is a
collective, so all ranks must take part, the same number of times) and sends its rows to rank 0
as tensors; rank 0 alone computes the report and shares it (a few kilobytes). Other ranks hold
no activations. Without an initialised process group these are no-ops, which keeps
single-process use free of distributed concerns.
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


def gather_list(items: list[T]) -> list[T] | None:
    """Rank 0: all ranks' sharded items (small Python objects) in the original order; others: None."""
    rank, size = world()
    if size == 1:
        return list(items)
    per_rank: list[list[T]] | None = [None] * size if rank == 0 else None  # type: ignore[list-item]
    dist.gather_object(list(items), per_rank, dst=0)
    return _unshard(per_rank) if rank == 0 else None


def _transport_device() -> torch.device:
    """Where collectives want tensors: the rank's GPU under NCCL, the CPU otherwise (gloo)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(parts: list[Tensor]) -> Tensor | None:
    """Rank 0: every rank's per-batch row blocks, concatenated in the original batch order; other
    ranks: None.

    `parts` are this rank's results, one block per real batch of its `padded_shard`. Row counts
    and the block layout travel first (a few integers), then each rank's rows as one padded
    tensor through `dist.gather`: no pickling, nothing sent to ranks that do not need it.
    """
    rank, size = world()
    if size == 1:
        return torch.cat(parts) if parts else torch.empty(0)
    local = torch.cat(parts) if parts else None
    layout = (
        [int(p.shape[0]) for p in parts],
        None if local is None else (tuple(local.shape[1:]), local.dtype, str(local.device)),
    )
    layouts: list = [None] * size
    dist.all_gather_object(layouts, layout)
    shapes = [meta for _, meta in layouts if meta is not None]
    if not shapes:
        return torch.empty(0) if rank == 0 else None
    trailing, dtype, _ = shapes[0]
    longest = max(sum(counts) for counts, _ in layouts)
    transport = _transport_device()
    block = torch.zeros((longest, *trailing), dtype=dtype, device=transport)
    if local is not None:
        block[: local.shape[0]] = local.to(transport)
    received = [torch.empty_like(block) for _ in range(size)] if rank == 0 else None
    dist.gather(block, received, dst=0)
    if rank != 0:
        return None
    per_rank = [list(rows[: sum(counts)].split(counts)) for rows, (counts, _) in zip(received, layouts, strict=True)]
    return torch.cat(_unshard(per_rank)).to(parts[0].device if parts else transport)


def broadcast_tensor_from_main(tensor: Tensor | None) -> Tensor | None:
    """Rank 0's tensor (or None) on every rank, sent as a tensor; each rank gets it on the CPU."""
    rank, size = world()
    if size == 1:
        return tensor
    meta = broadcast_from_main(None if tensor is None else (tuple(tensor.shape), tensor.dtype))
    if meta is None:
        return None
    shape, dtype = meta
    transport = _transport_device()
    buffer = tensor.to(transport) if rank == 0 else torch.empty(shape, dtype=dtype, device=transport)
    dist.broadcast(buffer, src=0)
    return buffer.cpu()


def broadcast_from_main(obj: T) -> T:
    """Rank 0's `obj` on every rank, so that decisions taken from rank-0 state (which steps
    are already stored) keep every rank in step with the collectives that follow."""
    rank, size = world()
    if size == 1:
        return obj
    holder = [obj if rank == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
