"""Batched decoding of already-formatted prompts: greedy (refusal scores, judges, demos) and
sampled rollouts from one fixed context (the hybrid-model experiment).

Prompts are strings the caller has already formatted (chat template or base format). A chat
template usually renders BOS itself, so BOS is added by the tokenizer only to prompts that do
not already start with it: never twice, never missing for base-format prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


def _encode(tokenizer, prompt: str) -> list[int]:
    bos = tokenizer.bos_token
    has_bos = bool(bos) and prompt.startswith(bos)
    return tokenizer(prompt, add_special_tokens=not has_bos)["input_ids"]


def _pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    raise ValueError("tokenizer has neither a pad token nor an eos token to pad prompts with")


def left_pad(sequences: Sequence[list[int]], pad_id: int):
    """Left-padded `input_ids` and `attention_mask` tensors for a batch of token lists."""
    import torch

    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        if ids:
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
    return input_ids, attention_mask


def generate_greedy(model, tokenizer, prompts: Sequence[str], **options) -> list[str]:
    """Greedy completions (new text only, special tokens dropped), one per prompt, in order;
    `options` as `generate_greedy_ids` (max_new_tokens, batch_size, synced_gpus)."""
    return [tokenizer.decode(new, skip_special_tokens=True) for _, new in generate_greedy_ids(model, tokenizer, prompts, **options)]


def generate_greedy_ids(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 24,
    batch_size: int = 16,
    synced_gpus: bool = False,
) -> list[tuple[list[int], list[int]]]:
    """Greedy decoding as token ids: per prompt, (prompt ids, new ids up to and including the
    first end-of-sequence token), so a caller can read the exact response tokens back.

    Batches are left-padded; the model's train/eval mode and the tokenizer are left as found.
    `synced_gpus` keeps ranks stepping together until all are done (FSDP/ZeRO-3 forwards are
    collectives, and one rank's batch may stop earlier than another's).
    """
    import torch
    from transformers import GenerationConfig

    if isinstance(prompts, str):
        raise TypeError("generate_greedy expects a list of prompt strings, got a single str")
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(
            f"batch_size and max_new_tokens must be >= 1, got {batch_size} and {max_new_tokens}"
        )
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module  # generation needs no gradient sync; DDP does not forward `generate`
    pad_id = _pad_id(tokenizer)
    eos = _eos_ids(model, tokenizer)
    generation_config = GenerationConfig(
        do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos or None,
    )
    encoded = [_encode(tokenizer, p) for p in prompts]
    outputs: list[tuple[list[int], list[int]]] = []
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start : start + batch_size]
        new_tokens = _generate(model, batch, pad_id, generation_config, synced_gpus)
        outputs.extend((ids, _until_eos(new, eos)) for ids, new in zip(batch, new_tokens, strict=True))
    return outputs


class SamplingSettings(NamedTuple):
    """How rollouts are sampled; recorded next to every share computed from them."""

    num_rollouts: int = 1000
    max_new_tokens: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k truncation (the full distribution)
    seed: int = 0
    batch_size: int = 250


def sample_rollouts(model, tokenizer, context_ids: Sequence[int], settings: SamplingSettings = SamplingSettings()) -> list[list[int]]:
    """`settings.num_rollouts` sampled continuations (new token ids, up to and including the
    first end-of-sequence token) of one fixed context. The random state is forked and seeded
    from `settings.seed`, so the rollouts are reproducible and the caller's RNG is untouched."""
    import torch
    from transformers import GenerationConfig

    if settings.num_rollouts < 1 or settings.max_new_tokens < 1 or settings.batch_size < 1:
        raise ValueError(f"settings: expected positive num_rollouts, max_new_tokens and batch_size, found {settings}")
    if settings.temperature <= 0:
        raise ValueError(f"settings.temperature: expected > 0 (use greedy decoding for 0), found {settings.temperature}")
    if not context_ids:
        raise ValueError("context_ids: expected at least one context token, found none")
    pad_id = _pad_id(tokenizer)
    eos = _eos_ids(model, tokenizer)
    generation_config = GenerationConfig(
        do_sample=True, max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
        top_p=settings.top_p, top_k=settings.top_k, pad_token_id=pad_id, eos_token_id=eos or None,
    )
    device = next(model.parameters()).device
    rollouts: list[list[int]] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(settings.seed)
        for start in range(0, settings.num_rollouts, settings.batch_size):
            count = min(settings.batch_size, settings.num_rollouts - start)
            new_tokens = _generate(model, [list(context_ids)] * count, pad_id, generation_config, False)
            rollouts.extend(_until_eos(new, eos) for new in new_tokens)
    return rollouts


def _generate(model, batch: list[list[int]], pad_id: int, generation_config, synced_gpus: bool) -> list[list[int]]:
    """New token ids of one left-padded batch (eval mode, inference mode; the mode is restored)."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            input_ids, attention_mask = left_pad(batch, pad_id)
            output = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                generation_config=generation_config, synced_gpus=synced_gpus,
            )
    finally:
        model.train(was_training)
    return output[:, input_ids.shape[1] :].cpu().tolist()


def _eos_ids(model, tokenizer) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, list | tuple) else [int(eos)]


def _until_eos(new: list[int], eos: list[int]) -> list[int]:
    """New tokens up to and including the first end-of-sequence token (padding after it dropped)."""
    for index, token in enumerate(new):
        if token in eos:
            return new[: index + 1]
    return new
