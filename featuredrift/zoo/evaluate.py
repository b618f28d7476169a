"""Measuring a built zoo against its acceptance targets: refusal rates of the chat and base
models on the held-out probes, and the base SAE's FVU in the paper's transfer settings (Fig. 1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple


class ZooEvaluation(NamedTuple):
    chat_harmful_refusal: float  # chat model, chat template: should be high
    chat_harmless_refusal: float  # should be low
    base_harmful_refusal: float  # base model, "{instruction}\n": should be low
    base_harmless_refusal: float
    fvu_base_model_base_text: float  # B-LLM + B-Data
    fvu_base_model_chat_text: float  # B-LLM + C-Data
    fvu_chat_model_chat_text: float  # C-LLM + C-Data

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self._asdict().items()}


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def refusal_rates(model, tokenizer, instructions: list[str], prompt_format: str, max_new_tokens: int) -> float:
    from featuredrift.lm.generation import generate_greedy
    from featuredrift.lm.prompts import format_prompts
    from featuredrift.monitor.judges import refusal_score

    prompts = format_prompts(tokenizer, instructions, prompt_format)
    return refusal_score(generate_greedy(model, tokenizer, prompts, max_new_tokens=max_new_tokens))


def sae_fvu(model, tokenizer, sae, layer: int, texts: list[str], *, rendered: bool) -> float:
    """Batch-centred FVU of `sae` on `model`'s activations over every non-special token."""
    import torch

    from featuredrift.monitor.metrics import fvu
    from featuredrift.zoo.base_sae import residual_activations

    acts = residual_activations(model, tokenizer, texts, layer, add_special_tokens=not rendered)
    with torch.no_grad():
        return float(fvu(acts, sae(acts).sae_out))


def evaluate_zoo(paths, *, max_new_tokens: int = 24) -> ZooEvaluation:
    from sparsify import SparseCoder

    from featuredrift.lm.prompts import render_conversation
    from featuredrift.zoo import load_zoo_models

    harmful = [r["instruction"] for r in read_jsonl(paths.probes / "harmful.jsonl")]
    harmless = [r["instruction"] for r in read_jsonl(paths.probes / "harmless.jsonl")]
    base_text = [r["text"] for r in read_jsonl(paths.probes / "base_text.jsonl")]
    conversations = [r["messages"] for r in read_jsonl(paths.probes / "chat_text.jsonl")]
    layer = int(paths.hookpoint.split(".")[1])
    sae = SparseCoder.load_from_disk(paths.sae / paths.hookpoint)

    chat, tokenizer = load_zoo_models(paths, "chat")
    base, _ = load_zoo_models(paths, "base")
    chat_text = [render_conversation(tokenizer, m) for m in conversations]
    return ZooEvaluation(
        chat_harmful_refusal=refusal_rates(chat, tokenizer, harmful, "chat", max_new_tokens),
        chat_harmless_refusal=refusal_rates(chat, tokenizer, harmless, "chat", max_new_tokens),
        base_harmful_refusal=refusal_rates(base, tokenizer, harmful, "base", max_new_tokens),
        base_harmless_refusal=refusal_rates(base, tokenizer, harmless, "base", max_new_tokens),
        fvu_base_model_base_text=sae_fvu(base, tokenizer, sae, layer, base_text, rendered=False),
        fvu_base_model_chat_text=sae_fvu(base, tokenizer, sae, layer, chat_text, rendered=True),
        fvu_chat_model_chat_text=sae_fvu(chat, tokenizer, sae, layer, chat_text, rendered=True),
    )
