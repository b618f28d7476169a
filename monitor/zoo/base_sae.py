"""The zoo's base SAE: a sparsify TopK `SparseCoder` trained on the base model's residual
stream (`layers.N`, the output of decoder block N) over base text.

Activations are cached once (every token except special tokens, the paper's Appx. A.2) and
the SAE is trained with a compact loop that follows sparsify: Adam, unit-norm decoder rows
with the parallel gradient component removed, and AuxK on latents dead for a while.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

from monitor.zoo.config import ZooConfig

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # CPU builds: sparsify's Triton decoder needs a GPU

AUXK_ALPHA = 1 / 32  # weight of the AuxK loss, as in the TopK SAE paper
DEAD_AFTER_TOKENS = 50_000  # a latent that has not fired for this many tokens counts as dead


class SaeTrainingSummary(NamedTuple):
    fvu: float  # batch-centred FVU on the training activations after training
    dead_fraction: float
    num_tokens: int


def residual_activations(
    model,
    tokenizer,
    texts: Sequence[str],
    layer: int,
    *,
    batch_size: int = 32,
    max_length: int = 128,
    add_special_tokens: bool = True,
):
    """Residual stream after decoder block `layer` for every non-special token of `texts`, as (N, d).

    Pass `add_special_tokens=False` for text rendered by a chat template (it already has BOS).
    """
    import torch

    from monitor.hookpoints import decoder_layers

    special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    captured: list[torch.Tensor] = []
    block = decoder_layers(model)[layer]
    outputs: list[torch.Tensor] = []

    def keep_output(_module, _inputs, output):
        outputs.append(output[0] if isinstance(output, tuple) else output)

    handle = block.register_forward_hook(keep_output)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(
                    list(texts[start : start + batch_size]),
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    add_special_tokens=add_special_tokens,
                )
                outputs.clear()
                model(**batch)
                keep = batch["attention_mask"].bool() & ~torch.isin(batch["input_ids"], special_ids)
                captured.append(outputs[0][keep].float())
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(captured)


def batch_fvu(x, x_hat) -> float:
    """sparsify's FVU: Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over the batch."""
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def new_sparse_coder(config: ZooConfig, d_in: int, seed: int):
    """A fresh TopK SparseCoder with a seeded initialisation (sparsify's: decoder = encoderᵀ, unit norm)."""
    import torch
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=config.sae_num_latents, k=config.sae_k))
    generator = torch.Generator().manual_seed(seed)
    bound = d_in**-0.5  # nn.Linear's default range
    weight = torch.empty(sae.num_latents, d_in).uniform_(-bound, bound, generator=generator)
    with torch.no_grad():
        sae.encoder.weight.copy_(weight)
        sae.encoder.bias.zero_()
        sae.W_dec.copy_(weight)
        sae.set_decoder_norm_to_unit_norm()
    return sae


def train_base_sae(config: ZooConfig, sae, activations, seed: int) -> SaeTrainingSummary:
    """Train `sae` in place on cached activations (N, d_in).

    Uses no global random state (only its own generator), so it can run in a thread next to
    another training job without changing either's results.
    """
    import torch

    n = activations.shape[0]
    with torch.no_grad():
        sae.b_dec.copy_(activations.mean(0))
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.sae_lr)
    warmup = max(1, config.sae_steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * max(0.05, 1 - step / config.sae_steps)
    )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    tokens_since_fired = torch.zeros(sae.num_latents, dtype=torch.long)
    cursor = 0
    for _ in range(config.sae_steps):
        if cursor + config.sae_batch_tokens > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        batch = activations[order[cursor : cursor + config.sae_batch_tokens]]
        cursor += config.sae_batch_tokens
        out = sae(batch, dead_mask=tokens_since_fired > DEAD_AFTER_TOKENS)
        loss = out.fvu + AUXK_ALPHA * out.auxk_loss
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        sae.set_decoder_norm_to_unit_norm()
        tokens_since_fired += batch.shape[0]
        tokens_since_fired[out.latent_indices.flatten().unique()] = 0
    sae.eval()
    with torch.no_grad():
        fvu = float(sae(activations[: min(n, 20_000)]).fvu)
    dead = float((tokens_since_fired > DEAD_AFTER_TOKENS).float().mean())
    return SaeTrainingSummary(fvu=fvu, dead_fraction=dead, num_tokens=n)
