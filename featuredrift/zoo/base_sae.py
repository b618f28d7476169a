"""The zoo's base SAE: a sparsify TopK `SparseCoder` trained on the base model's residual
stream (`layers.N`, the output of decoder block N) over base text.

Activations are cached once (every token except special tokens, the paper's Appx. A.2) and
the SAE is trained with a compact loop that follows sparsify: Adam, unit-norm decoder rows
with the parallel gradient component removed, and AuxK on latents dead for a while.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from featuredrift import sae_store  # noqa: F401  (Triton guard before sparsify loads)
from featuredrift.zoo.config import ZooConfig

AUXK_ALPHA = 1 / 32  # weight of the AuxK loss, as in the TopK SAE paper
DEAD_AFTER_TOKENS = 50_000  # a latent that has not fired for this many tokens counts as dead


class SaeTrainingSummary(NamedTuple):
    fvu: float  # batch-centred FVU on the training activations after training
    dead_fraction: float
    num_tokens: int


def residual_activations(
    model, tokenizer, texts: Sequence[str], layer: int, *, max_length: int = 128, add_special_tokens: bool = True
):
    """Residual stream after decoder block `layer` for every non-special token of `texts`, as (N, d).

    Pass `add_special_tokens=False` for text rendered by a chat template (it already has BOS).
    """
    from featuredrift.lm.capture import collect_token_activations

    hookpoint = f"layers.{layer}"
    return collect_token_activations(
        model, tokenizer, texts, [hookpoint], batch_size=32, max_length=max_length, add_special_tokens=add_special_tokens
    ).activations[hookpoint]


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
    """Train `sae` in place on cached activations (N, d_in), with its own random generator."""
    import torch

    from featuredrift.sae_store.activation_training import shuffled_batches, train_on_activations

    generator = torch.Generator().manual_seed(seed)
    summary = train_on_activations(
        sae,
        shuffled_batches(activations, config.sae_batch_tokens, generator),
        steps=config.sae_steps,
        lr=config.sae_lr,
        warmup_steps=max(1, config.sae_steps // 20),
        final_lr_fraction=0.05,
        auxk_alpha=AUXK_ALPHA,
        dead_feature_threshold=DEAD_AFTER_TOKENS,
    )
    with torch.no_grad():
        sample = activations[: min(activations.shape[0], 20_000)]
        fvu = float(sae(sample).fvu)
    return SaeTrainingSummary(fvu=fvu, dead_fraction=summary.dead_fraction, num_tokens=activations.shape[0])
