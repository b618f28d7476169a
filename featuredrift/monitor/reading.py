"""Reading a model on the probe set: the tokenised probe batches and one pass over them.

`tokenise_probes` fixes the batches once per run (the same tokens for the reference and every
checkpoint). `read_probes` runs a model over them and keeps what the metrics need: the
activations at the positions we read, per subset and hookpoint, the probability of a refusal
start at each prompt, and (for KL) compact next-token log-probs. Under torch.distributed every
rank reads its padded shard (FSDP/ZeRO-3 forwards are collectives) and rank 0 gathers the rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from featuredrift.lm.capture import (
    capture_activations,
    char_budget,
    chat_content_mask,
    content_token_mask,
    cut_text,
    encode_prompts,
    pad_id_of,
    pad_token_lists,
    tokenize_texts,
)
from featuredrift.lm.hookpoints import unwrap_model
from featuredrift.lm.prompts import format_prompts, render_conversation
from featuredrift.monitor import kl as kl_metrics
from featuredrift.monitor import refusal
from featuredrift.monitor.distributed import (
    gather_list,
    gather_rows,
    is_main_process,
    padded_shard,
    world,
)
from featuredrift.monitor.probes import PROMPT_SUBSETS, ProbeSet

TEXT_SUBSETS = ("base", "chat")


@dataclass
class ProbeBatch:
    """One tokenised batch of probe inputs and which of its positions we read."""

    input_ids: Tensor
    attention_mask: Tensor
    read_mask: Tensor  # [B, T] bool: content tokens (texts) or the last prompt token (prompts)


@dataclass
class ModelReading:
    """What one model produced on the probe set: activations per subset and hookpoint."""

    activations: dict[str, dict[str, Tensor]]  # subset → hookpoint → [N, d] (float32)
    next_token: kl_metrics.CompactLogProbs | None = None  # next-token log-probs at the KL positions
    refusal_probability: dict[str, Tensor] = field(default_factory=dict)  # prompt subset → [N] P(refusal start)

    def to(self, device: torch.device) -> ModelReading:
        moved = {s: {h: x.to(device) for h, x in per.items()} for s, per in self.activations.items()}
        return ModelReading(moved, None if self.next_token is None else self.next_token.to(device),
                            {s: p.to(device) for s, p in self.refusal_probability.items()})


def model_device(model: nn.Module) -> torch.device:
    try:
        return next(unwrap_model(model).parameters()).device
    except StopIteration:
        return torch.device("cpu")


def tokenise_probes(tokenizer, probes: ProbeSet, prompt_format: str, *, batch_size: int, max_length: int,
                    token_mask: str) -> dict[str, list[ProbeBatch]]:
    """The probe set as batches by subset: base texts, chat conversations (chat format only),
    harmful, harmless and (when the set has them) borderline prompts."""
    base = list(probes.base_text)
    batches: dict[str, list[ProbeBatch]] = {
        "base": [_text_batch(tokenizer, base[i : i + batch_size], max_length, token_mask)
                 for i in range(0, len(base), batch_size)]
    }
    if probes.chat_text and prompt_format == "chat":
        chats = list(probes.chat_text)
        batches["chat"] = [_chat_batch(tokenizer, chats[i : i + batch_size], max_length, token_mask)
                           for i in range(0, len(chats), batch_size)]
    for subset in probes.prompt_subsets():
        prompts = encode_prompts(tokenizer, getattr(probes, subset), prompt_format, max_length=max_length)
        batches[subset] = prompt_batches(tokenizer, prompts, batch_size)
    return batches


def prompt_batches(tokenizer, prompts: list, batch_size: int) -> list[ProbeBatch]:
    """Encoded prompts (`EncodedPrompt`) as left-padded batches that read each one's readout token."""
    return [_prompt_batch(tokenizer, prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)]


def read_probes(
    model: nn.Module,
    batches: dict[str, list[ProbeBatch]],
    hookpoints: list[str],
    *,
    keep: dict[str, Tensor],
    refusal_tokens: list[int],
    kl: bool = False,
    kl_support: Tensor | None = None,
    kl_max_positions: int = 512,
    kl_top_k: int | None = 256,
    refusal_subsets: tuple[str, ...] = PROMPT_SUBSETS,
) -> ModelReading | None:
    """One pass of `model` over every probe batch (this rank's shard), gathered on rank 0
    (other ranks get None), without the rows `keep` leaves out.

    The refusal-token probability is read at the prompts of `refusal_subsets`.
    With `kl`, next-token log-probs are kept at the KL positions: the reference's on its own
    top-k tokens (`kl_support` None), a later model's on the reference's tokens (so only k+1
    numbers per position ever leave the pass, whatever the vocabulary).
    """
    device = model_device(model)
    kl_subset = "chat" if "chat" in batches else "base"
    support = kl_support if kl else None
    rank, size = world()
    # Sharded models (FSDP, ZeRO-3) need every rank to run every layer: no early stop.
    stop_early = size == 1
    activations: dict[str, dict[str, Tensor]] = {}
    next_token: list[list[Tensor]] = [[], [], []]  # per real batch: indices, log-probs, rest mass
    refusal_parts: dict[str, list[Tensor]] = {}
    for subset, subset_batches in batches.items():
        want_refusal = bool(refusal_tokens) and subset in refusal_subsets
        kl_rows = kl_row_ranges(subset_batches, kl_max_positions) if kl and subset == kl_subset else []
        want_logits = bool(kl_rows) or want_refusal
        parts: dict[str, list[Tensor]] = {h: [] for h in hookpoints}
        padded, real = padded_shard(subset_batches)
        for number, batch in enumerate(padded):
            out = capture_activations(
                model,
                batch.input_ids.to(device),
                batch.attention_mask.to(device),
                hookpoints,
                return_logits=want_logits,
                stop_early=stop_early,
            )
            if number >= real:
                continue  # padding: the pass kept the ranks in step, its result is not ours
            mask = batch.read_mask.to(device)
            for h in hookpoints:
                parts[h].append(out.activations[h][mask].float())
            if want_refusal:
                refusal_parts.setdefault(subset, []).append(refusal.refusal_token_probability(out.logits[mask], refusal_tokens))
            if kl_rows:
                start, stop = kl_rows[rank + number * size]  # this rank's batch `number`, in probe order
                compact = kl_metrics.compact_log_probs(
                    out.logits[mask][: stop - start], kl_top_k, support=None if support is None else support[start:stop],
                )
                for kept_part, part in zip(next_token, compact, strict=True):
                    kept_part.append(part)
        activations[subset] = {h: gather_rows(parts[h]) for h in hookpoints}
    compact = kl_metrics.CompactLogProbs(*(gather_rows(kept_part) for kept_part in next_token)) if kl else None
    refusal_probability = {s: gather_rows(parts) for s, parts in refusal_parts.items()}
    if not is_main_process():
        return None
    if compact is not None and compact.indices.numel() == 0:
        compact = None
    return kept(ModelReading(activations, compact, refusal_probability), keep)


def kept(reading: ModelReading, keep: dict[str, Tensor]) -> ModelReading:
    """The reading without the rows `keep` leaves out (subsets without a mask unchanged)."""
    if not keep:
        return reading
    activations = {
        s: ({h: x[keep[s].to(x.device)] for h, x in per.items()} if s in keep else per)
        for s, per in reading.activations.items()
    }
    return ModelReading(activations, reading.next_token, reading.refusal_probability)


def kl_row_ranges(batches: list[ProbeBatch], limit: int) -> list[tuple[int, int]]:
    """Per batch, which of the KL positions (the first `limit` read positions of the subset, in
    batch order; 0 = all) its read positions are: (start, stop), possibly empty. Fixed by the
    probes alone, so a rank reading its shard knows where its rows sit in the reference's."""
    limit = limit or 2**62
    ranges, start = [], 0
    for batch in batches:
        stop = start + int(batch.read_mask.sum())
        ranges.append((min(start, limit), min(stop, limit)))
        start = stop
    return ranges


def generate_completions(model: nn.Module, tokenizer, probes: ProbeSet, prompt_format: str, *,
                         max_new_tokens: int, batch_size: int) -> dict[str, list[str]] | None:
    """Greedy completions of every prompt subset (each rank its padded shard), gathered on rank 0;
    None on the other ranks."""
    from featuredrift.lm.generation import generate_greedy

    gathered = {}
    for subset in probes.prompt_subsets():
        prompts = format_prompts(tokenizer, getattr(probes, subset), prompt_format)
        mine, real = padded_shard(prompts)
        gathered[subset] = gather_list(
            generate_greedy(model, tokenizer, mine, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            synced_gpus=world()[1] > 1)[:real]
        )
    return gathered if is_main_process() else None


def _text_batch(tokenizer, texts: list[str], max_length: int, rule: str = "content") -> ProbeBatch:
    """Right-padded texts; we read every content token (no padding, control tokens or sink)."""
    tokens = tokenize_texts(tokenizer, texts, max_length=max_length, padding_side="right")
    mask = content_token_mask(tokens.input_ids, tokens.attention_mask, tokenizer, rule=rule)
    return ProbeBatch(tokens.input_ids, tokens.attention_mask, mask)


def _chat_batch(tokenizer, conversations: list, max_length: int, rule: str = "content") -> ProbeBatch:
    """Rendered conversations (their template writes BOS, so none is added again); we read
    only the tokens inside message contents. Each content is cut to a character budget first:
    what lies past `max_length` tokens is never rendered or tokenised."""
    budget = char_budget(tokenizer, max_length)
    conversations = [[{**m, "content": cut_text(m["content"], budget)} for m in messages] for messages in conversations]
    texts = [render_conversation(tokenizer, messages) for messages in conversations]
    tokens = tokenize_texts(tokenizer, texts, max_length=max_length, padding_side="right", add_special_tokens=False)
    mask = content_token_mask(tokens.input_ids, tokens.attention_mask, tokenizer, rule=rule)
    if rule == "content":
        mask &= chat_content_mask(tokenizer, texts, conversations, tokens)
    return ProbeBatch(tokens.input_ids, tokens.attention_mask, mask)


def _prompt_batch(tokenizer, prompts: list) -> ProbeBatch:
    """Left-padded encoded prompts; we read each one's readout token (the last before the response)."""
    tokens = pad_token_lists([p.input_ids for p in prompts], pad_id_of(tokenizer), "left")
    width = tokens.input_ids.shape[1]
    readout = torch.tensor([width - len(p.input_ids) + p.readout for p in prompts])
    mask = torch.zeros_like(tokens.attention_mask, dtype=torch.bool)
    mask[torch.arange(len(prompts)), readout] = True
    return ProbeBatch(tokens.input_ids, tokens.attention_mask, mask)
