"""Train a TopK SAE on activations already in hand (cached residuals, or differences of two
models' residuals for a diff-SAE), with sparsify's `SparseCoder` and its training recipe.

sparsify's `Trainer` drives a model forward for every batch; when the activations are already
computed (the zoo's base SAE, batch replication's SAEs, the diff-SAE, which no model produces)
this loop does the same optimisation directly: Adam, warmup then linear decay, unit-norm decoder
rows with the parallel gradient component removed, AuxK on dead latents, Multi-TopK when the
SAE's config asks for it, optional gradient clipping. It touches no global random state, so it
can run in a thread beside another training job without changing either's results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from featuredrift import sae_store  # noqa: F401  (Triton guard before sparsify loads)


class ActivationTrainingSummary(NamedTuple):
    steps: int
    tokens: int
    final_fvu: float  # FVU of the last training batch
    dead_fraction: float  # latents that had not fired for `dead_feature_threshold` tokens at the end
    activation: str = "topk"
    threshold: float | None = None  # BatchTopK: running mean of the smallest kept activation (the inference threshold)


class _BatchOutput(NamedTuple):
    fvu: Tensor
    auxk_loss: Tensor
    multi_topk_fvu: Tensor
    latent_indices: Tensor
    threshold: Tensor


def batch_topk_forward(sae, x: Tensor, dead_mask: Tensor | None = None) -> _BatchOutput:
    """BatchTopK (Bussmann et al. 2024, the post's diff-SAE): the `k · batch` largest
    pre-activations of the whole batch are kept, so a token may use more or fewer than k latents;
    FVU and sparsify's AuxK on dead latents as in `SparseCoder.forward`."""
    pre = torch.relu(torch.nn.functional.linear(x - sae.b_dec, sae.encoder.weight, sae.encoder.bias))
    flat = pre.flatten()
    values, index = flat.topk(min(sae.cfg.k * x.shape[0], flat.numel()), sorted=False)
    codes = torch.zeros_like(flat).scatter(0, index, values).view_as(pre)
    out = codes @ sae.W_dec + sae.b_dec
    error = x - out
    total_variance = (x - x.mean(0)).pow(2).sum()
    auxk = out.new_tensor(0.0)
    if dead_mask is not None and (num_dead := int(dead_mask.sum())) > 0:
        k_aux = min(x.shape[-1] // 2, num_dead)
        scale = min(num_dead / (x.shape[-1] // 2), 1.0)
        aux_acts, aux_index = torch.where(dead_mask[None], pre, -torch.inf).topk(k_aux, sorted=False)
        e_hat = torch.zeros_like(pre).scatter(1, aux_index, aux_acts) @ sae.W_dec
        auxk = scale * (e_hat - error.detach()).pow(2).sum() / total_variance
    kept = values > 0
    threshold = values[kept].min() if bool(kept.any()) else out.new_tensor(0.0)
    return _BatchOutput(error.pow(2).sum() / total_variance, auxk, out.new_tensor(0.0),
                        (index[kept] % pre.shape[1]), threshold.detach())


def shuffled_batches(rows: Tensor, batch_rows: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless full batches of rows, reshuffled every pass (a short remainder is skipped)."""
    if rows.shape[0] < batch_rows:
        raise ValueError(f"activations: expected at least batch size {batch_rows} rows, found {rows.shape[0]}")
    while True:
        order = torch.randperm(rows.shape[0], generator=generator)
        for start in range(0, rows.shape[0] - batch_rows + 1, batch_rows):
            yield rows[order[start : start + batch_rows]]


def train_on_activations(
    sae,
    batches: Iterator[Tensor],
    *,
    steps: int,
    lr: float,
    warmup_steps: int = 0,
    final_lr_fraction: float = 0.0,
    auxk_alpha: float = 1 / 32,
    dead_feature_threshold: int = 10_000_000,
    grad_clip_norm: float | None = None,
    adam_betas: tuple[float, float] = (0.9, 0.999),
    on_step: Callable[[int, float], None] | None = None,
    batch_topk: bool = False,
) -> ActivationTrainingSummary:
    """Fit `sae` (a sparsify `SparseCoder`, modified in place) on up to `steps` batches.

    `b_dec` starts at the first batch's mean (centred pre-activations, as sparsify does). The
    learning rate warms up linearly over `warmup_steps`, then decays linearly to
    `final_lr_fraction` of `lr`. `batch_topk` trains with `batch_topk_forward`; the SAE is
    still stored and read as sparsify's TopK with the same k (its decoder, which KL attribution
    and steering read, is the BatchTopK-trained one). Returns a summary; the SAE is left frozen
    in eval mode.
    """
    device = sae.device
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr, betas=adam_betas)
    warmup = min(warmup_steps, max(steps - 1, 0))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(final_lr_fraction, (steps - step) / max(1, steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    tokens_since_fired = torch.zeros(sae.num_latents, dtype=torch.long, device=device)
    fvu, tokens, done = float("nan"), 0, 0
    thresholds: list[float] = []
    sae.train()
    for step, x in enumerate(batches):
        if step >= steps:
            break
        x = x.to(device=device, dtype=sae.dtype)
        if step == 0:
            with torch.no_grad():
                sae.b_dec.copy_(x.mean(0))
        dead_mask = tokens_since_fired > dead_feature_threshold if auxk_alpha > 0 else None
        out = batch_topk_forward(sae, x, dead_mask) if batch_topk else sae(x, dead_mask=dead_mask)
        loss = out.fvu + auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        if grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), grad_clip_norm)
        optimizer.step()
        scheduler.step()
        sae.set_decoder_norm_to_unit_norm()
        with torch.no_grad():
            tokens_since_fired += x.shape[0]
            tokens_since_fired[out.latent_indices.flatten()] = 0
        fvu, tokens, done = float(out.fvu.detach()), tokens + x.shape[0], step + 1
        if batch_topk:
            thresholds.append(float(out.threshold))
        if on_step is not None:
            on_step(step, fvu)
    if done == 0:
        raise ValueError("activations: expected at least one training batch, found an empty stream")
    dead = float((tokens_since_fired > min(dead_feature_threshold, tokens)).float().mean())
    sae.requires_grad_(False).eval()
    threshold = sum(thresholds[-100:]) / len(thresholds[-100:]) if thresholds else None
    return ActivationTrainingSummary(done, tokens, fvu, dead, "batchtopk" if batch_topk else "topk", threshold)
