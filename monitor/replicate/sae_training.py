"""Train a sparsify TopK `SparseCoder` on a stream of activation batches.

sparsify's own `Trainer` reads one model's hookpoints; the replication also needs SAEs on
quantities no single forward pass produces (the diff-SAE reads ``x_chat − x_base``), and on
small CPU runs it is cheaper to reuse activations already in memory. This loop follows the
paper's Appx. A.2 with sparsify's building blocks: Adam (0.9, 0.999), linear warmup then linear
decay (sparsify's Adam schedule), gradient-norm clipping, unit-norm decoder rows with the
parallel gradient component removed, AuxK on latents dead for `dead_feature_threshold` tokens,
and the Multi-TopK term (``fvu + α·auxk + multi_topk_fvu/8``, sparsify's loss).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch import Tensor

import sae_store  # noqa: F401  (Triton guard before sparsify loads)
from monitor.replicate.config import SaeTrainConfig


class TrainSummary(NamedTuple):
    steps: int
    tokens: int
    final_fvu: float
    dead_fraction: float


def train_sparse_coder(
    batches: Iterator[Tensor],
    d_in: int,
    settings: SaeTrainConfig,
    *,
    device: torch.device | str = "cpu",
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
):
    """Fit a TopK SAE on `settings.steps` batches of `settings.batch_size` rows each, drawn from
    `batches` (any row counts; they are re-chunked). Returns (frozen SparseCoder, TrainSummary)."""
    from sparsify import SaeConfig, SparseCoder

    torch.manual_seed(seed)
    cfg = SaeConfig(num_latents=settings.num_latents, k=settings.k, multi_topk=settings.multi_topk)
    sae = SparseCoder(d_in, cfg, device=device, dtype=torch.float32)
    optimizer = torch.optim.Adam(sae.parameters(), lr=settings.lr, betas=(0.9, 0.999))
    steps = settings.steps
    warmup = min(settings.lr_warmup_steps, max(steps - 1, 0))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (steps - step) / max(1, steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    tokens_since_fired = torch.zeros(sae.num_latents, dtype=torch.long, device=device)
    fvu, tokens = float("nan"), 0
    for step, x in enumerate(_rechunk(batches, settings.batch_size, steps)):
        x = x.to(device=device, dtype=torch.float32)
        if step == 0:
            sae.b_dec.data = x.mean(0)  # centred pre-activations at init, as sparsify does
        dead_mask = tokens_since_fired > settings.dead_feature_threshold if settings.auxk_alpha > 0 else None
        out = sae(x, dead_mask=dead_mask)
        loss = out.fvu + settings.auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), settings.grad_clip_norm)
        optimizer.step()
        scheduler.step()
        sae.set_decoder_norm_to_unit_norm()
        with torch.no_grad():
            fired = torch.zeros_like(tokens_since_fired, dtype=torch.bool)
            fired[out.latent_indices.flatten()] = True
            tokens_since_fired += x.shape[0]
            tokens_since_fired[fired] = 0
        fvu, tokens = float(out.fvu.detach()), tokens + x.shape[0]
        if on_step is not None:
            on_step(step, fvu)
    if tokens == 0:
        raise ValueError("train_sparse_coder: the activation stream was empty")
    dead = float((tokens_since_fired > min(settings.dead_feature_threshold, tokens)).float().mean())
    sae.requires_grad_(False).eval()
    return sae, TrainSummary(min(steps, step + 1), tokens, fvu, dead)


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
