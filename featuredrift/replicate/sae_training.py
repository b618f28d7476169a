"""Train a sparsify TopK `SparseCoder` on a stream of activation batches (replication settings).

sparsify's own `Trainer` reads one model's hookpoints; the replication also needs SAEs on
quantities no single forward pass produces (the diff-SAE reads ``x_chat − x_base``), and on
small CPU runs it is cheaper to reuse activations already in memory. The optimisation is
`sae_store.activation_training` with the paper's Appx. A.2 settings; this module maps the
replication config onto it and re-chunks streams of any batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from featuredrift.replicate.config import SaeTrainConfig
from featuredrift.sae_store.activation_training import train_on_activations


def train_sparse_coder(
    batches: Iterator[Tensor],
    d_in: int,
    settings: SaeTrainConfig,
    *,
    device: torch.device | str = "cpu",
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
):
    """Fit a TopK (or BatchTopK, `settings.activation`) SAE on `settings.steps` batches of `settings.batch_size` rows each, drawn from
    `batches` (any row counts; they are re-chunked). Returns (frozen SparseCoder, summary)."""
    from sparsify import SaeConfig, SparseCoder

    torch.manual_seed(seed)
    cfg = SaeConfig(num_latents=settings.num_latents, k=settings.k, multi_topk=settings.multi_topk)
    sae = SparseCoder(d_in, cfg, device=device, dtype=torch.float32)
    summary = train_on_activations(
        sae,
        _rechunk(batches, settings.batch_size, settings.steps),
        steps=settings.steps,
        lr=settings.lr,
        warmup_steps=settings.lr_warmup_steps,
        auxk_alpha=settings.auxk_alpha,
        dead_feature_threshold=settings.dead_feature_threshold,
        grad_clip_norm=settings.grad_clip_norm,
        on_step=on_step,
        batch_topk=settings.activation == "batchtopk",
    )
    return sae, summary


def _rechunk(batches: Iterator[Tensor], rows: int, steps: int) -> Iterator[Tensor]:
    """Yield `steps` tensors of exactly `rows` rows (the last may be short), cycling is the
    caller's job: a finite stream ends training early."""
    buffer: list[Tensor] = []
    held = 0
    produced = 0
    for batch in batches:
        buffer.append(batch)
        held += batch.shape[0]
        while held >= rows and produced < steps:
            merged = torch.cat(buffer)
            yield merged[:rows]
            produced += 1
            rest = merged[rows:]
            buffer, held = ([rest] if rest.shape[0] else []), rest.shape[0]
        if produced >= steps:
            return
    if held and produced < steps:
        yield torch.cat(buffer)


def cycle_shuffled(rows: Tensor, batch_rows: int, seed: int) -> Iterator[Tensor]:
    """An endless stream of shuffled row batches from an in-memory activation matrix."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(rows.shape[0], generator=generator)
        for start in range(0, rows.shape[0], batch_rows):
            yield rows[order[start : start + batch_rows]]
