"""Batched greedy decoding of already-formatted prompts (refusal scores, judges, demos).

Prompts are strings the caller has already formatted (chat template or base format). A chat
template usually renders BOS itself, so BOS is added by the tokenizer only to prompts that do
not already start with it: never twice, never missing for base-format prompts.
"""

from __future__ import annotations

from collections.abc import Sequence


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


def generate_greedy(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 24,
    batch_size: int = 16,
    synced_gpus: bool = False,
) -> list[str]:
    """Greedy completions (new text only, special tokens dropped), one per prompt, in order.

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
    eos = getattr(model.generation_config, "eos_token_id", None)
    generation_config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=eos if eos is not None else tokenizer.eos_token_id,
    )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    completions: list[str] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                encoded = [_encode(tokenizer, p) for p in prompts[start : start + batch_size]]
                input_ids, attention_mask = left_pad(encoded, pad_id)
                output = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    generation_config=generation_config,
                    synced_gpus=synced_gpus,
                )
                new_tokens = output[:, input_ids.shape[1] :].cpu()
                completions.extend(
                    tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                )
    finally:
        model.train(was_training)
    return completions
