"""Read residual-stream activations at sparsify hookpoints (`layers.N`, the output of decoder
block N) in one batched forward pass.

Hooks sit on the decoder blocks found by `monitor.hookpoints.resolve_hookpoint`, so PEFT, DDP
and compiled wrappers work unchanged. When logits are not needed, the forward pass stops right
after the last needed block. Every function here is pure over the batch it is given, so under
DDP each rank passes its own shard (or the same probe batch: the forward is a collective).

`layers.N` equals `output_hidden_states[N + 1]` for every block except the last: transformers
applies the final norm before it appends the last hidden state, our hook reads the block output.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from featuredrift.lm.hookpoints import resolve_hookpoint, unwrap_model
from featuredrift.lm.prompts import PromptFormat, format_prompts

PaddingSide = Literal["right", "left"]
# How probe tokens are chosen (see `content_token_mask`): ours, or Appx. A.2 read literally.
TOKEN_MASK_RULES = ("content", "bos_eos")


class TokenBatch(NamedTuple):
    input_ids: Tensor  # [B, T] long
    attention_mask: Tensor  # [B, T] long, 1 on real tokens


class CaptureOutput(NamedTuple):
    activations: dict[str, Tensor]  # hookpoint → [B, T, d]
    logits: Tensor | None  # [B, T, vocab] when asked for


class TokenActivations(NamedTuple):
    """Content-token activations, flattened, with what identifies each token.

    Two models run on the same texts with the same tokenizer give rows that pair one-to-one
    (same `text_index`, `position` and `token_ids`), whatever the padding side or batch size.
    """

    activations: dict[str, Tensor]  # hookpoint → [N, d]
    token_ids: Tensor  # [N]
    text_index: Tensor  # [N] which input text
    position: Tensor  # [N] index of the token within its text (padding not counted)


class EncodedPrompt(NamedTuple):
    input_ids: list[int]
    readout: int  # index of the token the refusal direction is read at


class _StopForward(Exception):
    """Raised from the last needed hook to skip the rest of the model."""


# --- tokenization -------------------------------------------------------------------------


def iter_batches(items: Sequence, batch_size: int) -> Iterator[Sequence]:
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, found {batch_size}")
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


def pad_id_of(tokenizer) -> int:
    """The id used for padding; padding is masked out, so any id is fine when none is defined."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def pad_token_lists(token_lists: Sequence[Sequence[int]], pad_id: int, padding_side: PaddingSide = "right") -> TokenBatch:
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side: expected 'right' or 'left', found {padding_side!r}")
    if not token_lists:
        raise ValueError("token_lists: expected at least one sequence, found none")
    empty = [i for i, ids in enumerate(token_lists) if len(ids) == 0]
    if empty:
        raise ValueError(f"token_lists: expected non-empty sequences, found empty ones at indices {empty[:10]}")
    width = max(len(ids) for ids in token_lists)
    input_ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for row, ids in enumerate(token_lists):
        span = slice(0, len(ids)) if padding_side == "right" else slice(width - len(ids), width)
        input_ids[row, span] = torch.as_tensor(list(ids), dtype=torch.long)
        attention_mask[row, span] = 1
    return TokenBatch(input_ids, attention_mask)


# Texts are cut to a character budget before tokenising: a 10 MB probe must not cost minutes
# when only its first (or last) `max_length` tokens are kept. The budget holds `max_length`
# tokens plus this many more of the tokenizer's longest piece, so the kept tokens never change.
CUT_MARGIN_TOKENS = 16
_LONGEST_PIECE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def longest_piece(tokenizer) -> int:
    """Characters in the tokenizer's longest vocabulary piece: no token covers more text."""
    try:
        return _LONGEST_PIECE[tokenizer]
    except (KeyError, TypeError):
        pass
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    longest = max((len(p) for p in pieces if p), default=1)
    try:
        _LONGEST_PIECE[tokenizer] = longest
    except TypeError:  # a tokenizer that takes no weak reference: computed each time
        pass
    return longest


def char_budget(tokenizer, max_tokens: int) -> int:
    """How many characters surely hold `max_tokens` tokens of any text (plus a margin)."""
    return (max_tokens + CUT_MARGIN_TOKENS) * longest_piece(tokenizer)


def cut_text(text: str, max_chars: int | None, keep: Literal["head", "tail"] = "head") -> str:
    if max_chars is None or len(text) <= max_chars:
        return text
    return text[:max_chars] if keep == "head" else text[-max_chars:]


def _encode_cut(encode, texts: Sequence[str], budget: int | None, wanted: int | None,
                keep: Literal["head", "tail"]) -> list[list[int]]:
    """Token ids of each text cut to `budget` characters; a cut text that then holds fewer than
    `wanted` tokens (a normaliser that drops characters) is encoded again from a larger cut."""
    encoded = encode([cut_text(t, budget, keep) for t in texts])
    if budget is None or wanted is None:
        return encoded
    for row, text in enumerate(texts):
        size = budget
        while len(text) > size and len(encoded[row]) < wanted:
            size *= 4
            encoded[row] = encode([cut_text(text, size, keep)])[0]
    return encoded


def tokenize_texts(
    tokenizer,
    texts: Sequence[str],
    *,
    max_length: int | None,
    padding_side: PaddingSide = "right",
    add_special_tokens: bool = True,
) -> TokenBatch:
    """Tokenize and pad without touching the tokenizer's own padding settings.

    Texts longer than `max_length` keep their first `max_length` tokens; they are cut to a
    character budget first, so only that much text is ever tokenised.
    """
    budget = char_budget(tokenizer, max_length) if max_length is not None else None

    def encode(batch: Sequence[str]) -> list[list[int]]:
        return tokenizer(list(batch), add_special_tokens=add_special_tokens)["input_ids"]

    encoded = _encode_cut(encode, texts, budget, max_length, "head")
    if max_length is not None:
        encoded = [ids[:max_length] for ids in encoded]
    return pad_token_lists(encoded, pad_id_of(tokenizer), padding_side)


def control_token_ids(tokenizer) -> list[int]:
    """Every id the tokenizer treats as a control token: the named special tokens and the added
    tokens registered as special (Llama-3's `<|start_header_id|>`/`<|eot_id|>`, ChatML's
    `<|im_start|>`, Gemma's `<start_of_turn>`, Mistral's `[INST]`), which transformers 5 leaves
    out of `all_special_ids`."""
    ids = set(tokenizer.all_special_ids)
    for token_id, added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(added, "special", False):
            ids.add(int(token_id))
    return sorted(ids)


def content_token_mask(
    input_ids: Tensor, attention_mask: Tensor, tokenizer, *, skip_first: bool = True, rule: str = "content"
) -> Tensor:
    """True on the tokens whose activations we read (paper Appx. A.2, extended to real models).

    Not padding, not a control token, and (with `skip_first`) not a row's first real token:
    that position is the attention sink, whose residual norm is orders of magnitude above the
    rest. It is BOS when the tokenizer adds one (a control token anyway); tokenizers that add
    no BOS (SmolLM, Qwen2.5) make the first word the sink, and it must go too.
    `rule="bos_eos"` reads the paper's Appx. A.2 literally: only BOS and EOS are left out.
    """
    if rule == "bos_eos":
        ends = [t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id) if t is not None]
        ids = torch.as_tensor(ends, dtype=input_ids.dtype, device=input_ids.device)
        return attention_mask.bool() & ~torch.isin(input_ids, ids)
    if rule not in TOKEN_MASK_RULES:
        raise ValueError(f"token mask rule: expected one of {TOKEN_MASK_RULES}, found {rule!r}")
    control = torch.as_tensor(control_token_ids(tokenizer), dtype=input_ids.dtype, device=input_ids.device)
    mask = attention_mask.bool() & ~torch.isin(input_ids, control)
    if skip_first:
        mask &= token_positions(attention_mask).to(mask.device) != 0
    return mask


def chat_content_mask(tokenizer, texts: Sequence[str], conversations: Sequence[Sequence[dict]], tokens: TokenBatch,
                      *, padding_side: PaddingSide = "right") -> Tensor:
    """True on tokens inside a message's content: role headers, turn delimiters and whatever
    else the chat template adds are template, not content, for every model family (their role
    names are ordinary words in some vocabularies). Needs a fast tokenizer's offsets; with a
    slow one every position is kept (the control-token mask still applies)."""
    keep = torch.ones_like(tokens.attention_mask, dtype=torch.bool)
    if not getattr(tokenizer, "is_fast", False):
        return keep
    offsets = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    width = tokens.input_ids.shape[1]
    for row, (text, messages, spans) in enumerate(zip(texts, conversations, offsets, strict=True)):
        inside = _content_spans(text, messages) if messages else [(0, len(text))]  # a plain text is all content
        start = 0 if padding_side == "right" else width - int(tokens.attention_mask[row].sum())
        for index, (begin, end) in enumerate(spans[: width - start]):
            keep[row, start + index] = any(b <= begin and end <= e for b, e in inside) and end > begin
    return keep


def _content_spans(text: str, messages: Sequence[dict]) -> list[tuple[int, int]]:
    """Character spans of each message's content in the rendered text, found in order."""
    spans, cursor = [], 0
    for message in messages:
        content = message["content"]
        for candidate in (content, content.strip()):
            found = text.find(candidate, cursor) if candidate else -1
            if found >= 0:
                spans.append((found, found + len(candidate)))
                cursor = found + len(candidate)
                break
    return spans


def last_prompt_positions(attention_mask: Tensor, padding_side: PaddingSide) -> Tensor:
    """Index of the last real token of each row, for either padding side."""
    mask = attention_mask.bool()
    if not bool(mask.any(dim=1).all()):
        raise ValueError("attention_mask: expected at least one real token per row, found an all-padding row")
    width = mask.shape[1]
    last = width - 1 - mask.flip(1).int().argmax(dim=1)
    if padding_side == "left" and not bool(mask[:, -1].all()):
        raise ValueError("attention_mask: padding_side='left' expects every row to end on a real token, found padding")
    if padding_side == "right" and not bool(mask[:, 0].all()):
        raise ValueError("attention_mask: padding_side='right' expects every row to start on a real token, found padding")
    return last


def token_positions(attention_mask: Tensor) -> Tensor:
    """Per token, its index among the real tokens of its row (the same for either padding side)."""
    return attention_mask.long().cumsum(dim=1) - 1


# --- the forward pass ---------------------------------------------------------------------


def input_device(model: nn.Module) -> torch.device:
    """Where input ids must live: the embedding's device (first parameter's as a fallback)."""
    inner = unwrap_model(model)
    embeddings = getattr(inner, "get_input_embeddings", lambda: None)()
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        return embeddings.weight.device
    return next(model.parameters()).device


def capture_activations(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    hookpoints: Sequence[str],
    *,
    return_logits: bool = False,
    stop_early: bool = True,
) -> CaptureOutput:
    """Residual activations `[B, T, d]` at each hookpoint from one forward pass.

    Position ids count real tokens only (as `generate` does), so a row's activations do not
    depend on the padding side. Runs in eval mode under `torch.inference_mode()`; every
    module's train/eval flag is put back and every hook removed afterwards, also on error.
    Returned tensors are ordinary (cloned out of inference mode) so callers may modify them
    in place. Pass `stop_early=False` under FSDP/ZeRO-3, whose per-module gather/release must
    see the whole forward. Any surrounding autocast (the Trainer's bf16) is switched off: the
    probe forward runs in the parameters' own dtype, the same for the reference, every
    checkpoint and the watcher, whatever the training precision.
    """
    hookpoints = list(dict.fromkeys(hookpoints))
    if not hookpoints:
        raise ValueError("hookpoints: expected at least one hookpoint such as 'layers.3', found none")
    blocks = {hookpoint: resolve_hookpoint(model, hookpoint) for hookpoint in hookpoints}
    stop = stop_early and not return_logits
    captured: dict[str, Tensor] = {}

    def make_hook(hookpoint: str):
        def hook(_module, _args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            captured[hookpoint] = hidden.detach()
            if stop and len(captured) == len(blocks):
                raise _StopForward

        return hook

    device = input_device(model)
    training_flags = [(module, module.training) for module in model.modules()]
    handles = [block.register_forward_hook(make_hook(h)) for h, block in blocks.items()]
    logits = None
    try:
        model.eval()
        with torch.inference_mode(), torch.autocast(device_type=device.type, enabled=False):
            try:
                output = model(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    position_ids=token_positions(attention_mask).clamp(min=0).to(device),
                    use_cache=False,
                )
                logits = output.logits if return_logits else None
            except _StopForward:
                pass
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in training_flags:
            module.training = flag
    missing = [h for h in hookpoints if h not in captured]
    if missing:
        raise RuntimeError(f"hookpoints {missing} were not reached by the forward pass of {type(model).__name__}")
    activations = {h: captured[h].clone() for h in hookpoints}
    return CaptureOutput(activations, logits.clone() if logits is not None else None)


# --- higher level: probe texts and prompts ------------------------------------------------


def collect_token_activations(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    hookpoints: Sequence[str],
    *,
    batch_size: int = 16,
    max_length: int | None = 128,
    add_special_tokens: bool = True,
    padding_side: PaddingSide = "right",
    dtype: torch.dtype | None = torch.float32,
    device: torch.device | str | None = None,
    stop_early: bool = True,
    conversations: Sequence[Sequence[dict]] | None = None,
    rule: str = "content",
) -> TokenActivations:
    """Content-token activations of many texts, flattened to `[N, d]` per hookpoint.

    Rendered conversations already hold their special tokens: pass `add_special_tokens=False`,
    and the `conversations` themselves (aligned with `texts`) so only message contents are read,
    exactly as the live monitor reads its chat probes. `rule` is `content_token_mask`'s (with
    'bos_eos' the template's tokens are read too). Outputs stay on the model's device unless
    `device` is given.
    """
    if conversations is not None and len(conversations) != len(texts):
        raise ValueError(f"conversations: expected one per text ({len(texts)}), found {len(conversations)}")
    if not texts:
        raise ValueError("texts: expected at least one probe text, found none")
    hookpoints = list(dict.fromkeys(hookpoints))
    parts: dict[str, list[Tensor]] = {h: [] for h in hookpoints}
    token_ids, text_index, position = [], [], []
    for batch_number, batch in enumerate(iter_batches(list(texts), batch_size)):
        tokens = tokenize_texts(
            tokenizer, batch, max_length=max_length, padding_side=padding_side, add_special_tokens=add_special_tokens
        )
        output = capture_activations(model, *tokens, hookpoints, stop_early=stop_early)
        mask = content_token_mask(*tokens, tokenizer, rule=rule)
        if conversations is not None and rule == "content":
            first = batch_number * batch_size
            mask &= chat_content_mask(tokenizer, batch, conversations[first : first + len(batch)], tokens,
                                      padding_side=padding_side)
        out_device = device if device is not None else next(iter(output.activations.values())).device
        rows = torch.arange(len(batch)).unsqueeze(1).expand_as(mask) + batch_number * batch_size
        for h in hookpoints:
            acts = output.activations[h][mask.to(output.activations[h].device)]
            parts[h].append(acts.to(device=out_device, dtype=dtype or acts.dtype))
        token_ids.append(tokens.input_ids[mask].to(out_device))
        text_index.append(rows[mask].to(out_device))
        position.append(token_positions(tokens.attention_mask)[mask].to(out_device))
    return TokenActivations(
        {h: torch.cat(p) for h, p in parts.items()}, torch.cat(token_ids), torch.cat(text_index), torch.cat(position)
    )


def encode_prompts(
    tokenizer, instructions: Sequence[str], prompt_format: PromptFormat, *, max_length: int | None = None
) -> list[EncodedPrompt]:
    """Token ids of each formatted prompt and the index of its readout token.

    The readout is the token holding the prompt's last character: the end of the chat
    template's generation prompt, or the final "\\n" of the base format `"{instruction}\\n"`.
    BPE vocabularies may fold that "\\n" into a longer token (Llama-3 merges "?\\n"), and some
    tokenizers append EOS; taking the token that contains the character handles both. Slow
    tokenizers without offsets fall back to the last non-special token. Chat templates render
    their own BOS, so they are encoded without extra special tokens. Prompts longer than
    `max_length` keep their last `max_length` tokens (the readout must survive); instructions are
    cut to a character budget (keeping their end) before they are formatted and tokenised.
    """
    budget = char_budget(tokenizer, max_length) if max_length is not None else None
    texts = format_prompts(tokenizer, [cut_text(i, budget, "tail") for i in instructions], prompt_format)
    return encode_prompt_texts(tokenizer, texts, add_special_tokens=prompt_format == "base", max_length=max_length)


def encode_prompt_texts(
    tokenizer, texts: Sequence[str], *, add_special_tokens: bool, max_length: int | None = None
) -> list[EncodedPrompt]:
    """`encode_prompts` for texts already formatted (a chat template's rendering of a whole
    conversation up to its generation prompt, or a raw prompt string): the same readout rule."""
    texts = list(texts)
    encoding = tokenizer(texts, add_special_tokens=add_special_tokens)
    special = set(tokenizer.all_special_ids)
    prompts = []
    for row, (text, ids) in enumerate(zip(texts, encoding["input_ids"], strict=True)):
        readout = None
        if getattr(encoding, "is_fast", False) and text:
            readout = encoding.char_to_token(row, len(text) - 1)
        if readout is None:
            real = [i for i, token in enumerate(ids) if token not in special] or list(range(len(ids)))
            readout = real[-1]
        if max_length is not None and len(ids) > max_length:
            cut = len(ids) - max_length
            if readout < cut:
                raise ValueError(f"prompt {row}: readout token {readout} falls outside the last {max_length} tokens")
            ids, readout = ids[cut:], readout - cut
        prompts.append(EncodedPrompt(list(ids), readout))
    return prompts


def collect_prompt_activations(model: nn.Module, tokenizer, instructions: Sequence[str], hookpoints: Sequence[str],
                               **options) -> dict[str, Tensor]:
    """Activations `[P, d]` at the readout token of each prompt (see `encode_prompts`); `options`
    as `collect_prompt_window_activations` (prompt_format, batch_size, max_length, …)."""
    window = collect_prompt_window_activations(model, tokenizer, instructions, hookpoints, window=1, **options)
    return {h: x[:, -1] for h, x in window.items()}


def collect_prompt_window_activations(
    model: nn.Module,
    tokenizer,
    instructions: Sequence[str],
    hookpoints: Sequence[str],
    *,
    window: int,
    prompt_format: PromptFormat = "chat",
    batch_size: int = 16,
    max_length: int | None = None,
    padding_side: PaddingSide = "left",
    dtype: torch.dtype | None = torch.float32,
    device: torch.device | str | None = None,
    stop_early: bool = True,
) -> dict[str, Tensor]:
    """Activations `[P, window, d]` at the `window` tokens ending at each prompt's readout token
    (the last is the readout): the post-instruction positions Arditi et al. choose the refusal
    direction among. Every prompt must hold at least `window` tokens up to its readout."""
    if not instructions:
        raise ValueError("instructions: expected at least one prompt, found none")
    if window < 1:
        raise ValueError(f"window: expected at least one position, found {window}")
    hookpoints = list(dict.fromkeys(hookpoints))
    prompts = encode_prompts(tokenizer, instructions, prompt_format, max_length=max_length)
    short = [i for i, p in enumerate(prompts) if p.readout + 1 < window]
    if short:
        raise ValueError(f"window: expected {window} tokens up to each readout, found fewer in prompts {short[:10]}")
    parts: dict[str, list[Tensor]] = {h: [] for h in hookpoints}
    offsets_in_window = torch.arange(window - 1, -1, -1)
    for batch in iter_batches(prompts, batch_size):
        tokens = pad_token_lists([p.input_ids for p in batch], pad_id_of(tokenizer), padding_side)
        width = tokens.input_ids.shape[1]
        offsets = [0 if padding_side == "right" else width - len(p.input_ids) for p in batch]
        readout = torch.tensor([off + p.readout for off, p in zip(offsets, batch, strict=True)])
        columns = readout[:, None] - offsets_in_window[None, :]  # [B, window], the readout last
        output = capture_activations(model, *tokens, hookpoints, stop_early=stop_early)
        for h in hookpoints:
            acts = output.activations[h]
            picked = acts[torch.arange(len(batch), device=acts.device)[:, None], columns.to(acts.device)]
            parts[h].append(picked.to(device=device or picked.device, dtype=dtype or picked.dtype))
    return {h: torch.cat(p) for h, p in parts.items()}


def post_instruction_tokens(tokenizer, prompt_format: PromptFormat) -> int:
    """How many tokens a formatted prompt holds after the instruction's own text (Arditi et al.'s
    end-of-instruction tokens: the chat template's closing and generation-prompt markers, or the
    base format's final "\\n"), read from one rendered placeholder prompt."""
    marker = "Xq7 instruction Zv9"
    text = format_prompts(tokenizer, [marker], prompt_format)[0]
    end = text.index(marker) + len(marker)
    prompt = encode_prompts(tokenizer, [marker], prompt_format)[0]
    encoding = tokenizer(text, add_special_tokens=prompt_format == "base")
    if getattr(encoding, "is_fast", False) or hasattr(encoding, "char_to_token"):
        try:
            last_instruction = encoding.char_to_token(end - 1)
        except (ValueError, TypeError):
            last_instruction = None
        if last_instruction is not None:
            return max(1, prompt.readout - last_instruction)
    suffix = tokenizer(text[end:], add_special_tokens=False)["input_ids"]
    return max(1, len(suffix))
