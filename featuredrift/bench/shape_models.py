"""Real model shapes for `featuredrift bench --shape`: what to build, never what to measure.

The monitor's costs depend on width, vocabulary, latents and probe tokens, not on trained
weights, so the benchmark builds random-initialised models of real architectures from their
transformers configs (depth reducible), a random sparsify SAE of the paper's size, and a
word-level tokenizer with the model's full vocabulary built locally: nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAPER_LATENTS = 65_536
PAPER_K = 100


class ShapeError(ValueError):
    """An unknown shape or an impossible size asked of the benchmark."""


@dataclass(frozen=True)
class Shape:
    """The widths of one released model (its depth is `full_layers`; the bench builds fewer)."""

    name: str
    family: str  # "llama" | "gemma2" | "qwen2": which transformers config class
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    full_layers: int
    head_dim: int | None = None
    tied: bool = True

    def config(self, layers: int):
        """The transformers config of this shape at `layers` decoder blocks."""
        from transformers import Gemma2Config, LlamaConfig, Qwen2Config

        if layers < 1:
            raise ShapeError(f"layers: expected at least 1 decoder block, found {layers}")
        common = dict(
            vocab_size=self.vocab, hidden_size=self.hidden, intermediate_size=self.intermediate,
            num_hidden_layers=layers, num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
            tie_word_embeddings=self.tied, max_position_embeddings=4096, bos_token_id=0, eos_token_id=1, pad_token_id=2,
        )
        if self.head_dim is not None:
            common["head_dim"] = self.head_dim
        classes = {"llama": LlamaConfig, "gemma2": Gemma2Config, "qwen2": Qwen2Config}
        return classes[self.family](**common)


SHAPES = {
    shape.name: shape
    for shape in (
        Shape("llama-3.2-1b", "llama", 2048, 8192, 32, 8, 128_256, 16),
        Shape("gemma-2-2b", "gemma2", 2304, 9216, 8, 4, 256_000, 26, head_dim=256),
        Shape("qwen2.5-0.5b", "qwen2", 896, 4864, 14, 2, 151_936, 24),
        # A toy of the Llama architecture, so the whole benchmark runs in seconds (tests, smoke runs).
        Shape("tiny", "llama", 64, 128, 4, 2, 4_096, 2),
    )
}


def get_shape(name: str) -> Shape:
    try:
        return SHAPES[name]
    except KeyError:
        raise ShapeError(f"shape: expected one of {', '.join(SHAPES)}, found {name!r}") from None


def build_model(shape: Shape, layers: int, device: str = "cpu", seed: int = 0):
    """A random-initialised causal LM of `shape` with `layers` blocks, in float32 on `device`."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(shape.config(layers), dtype=torch.float32)
    return model.to(device)


def build_sae(d_in: int, latents: int = PAPER_LATENTS, k: int = PAPER_K, device: str = "cpu", seed: int = 0):
    """A random sparsify TopK SAE (sparsify's own initialisation: unit-norm decoder = encoder)."""
    from sparsify import SparseCoder, SparseCoderConfig

    if not 0 < k <= latents:
        raise ShapeError(f"k: expected 1 ≤ k ≤ latents ({latents}), found {k}")
    torch.manual_seed(seed)
    return SparseCoder(d_in, SparseCoderConfig(num_latents=latents, k=k), device=device)


def build_tokenizer(vocab_size: int, texts: list[str]):
    """A word-level tokenizer with exactly `vocab_size` ids and the zoo's chat template: the probe
    texts' words get ids spread over the whole vocabulary (so embedding and logit rows are real
    rows of a large table), the rest are filler."""
    import random

    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from featuredrift.zoo.config import (
        ASSISTANT,
        BOS,
        END,
        EOS,
        PAD,
        SPECIAL_TOKENS,
        SYSTEM,
        USER,
    )
    from featuredrift.zoo.tokenizer import CHAT_TEMPLATE

    unknown = "<unk>"
    specials = [*SPECIAL_TOKENS, unknown]
    words = sorted({word for text in texts for word in pre_tokenizers.Whitespace().pre_tokenize_str(text)
                    for word in [word[0]]} - set(specials))
    if vocab_size < len(specials) + len(words):
        raise ShapeError(f"vocab: expected at least {len(specials) + len(words)} ids for the probe words, found {vocab_size}")
    free_ids = list(range(len(specials), vocab_size))
    random.Random(0).shuffle(free_ids)
    vocab = {token: i for i, token in enumerate(specials)}
    vocab.update(zip(words, free_ids, strict=False))
    vocab.update((f"<w{i}>", i) for i in free_ids[len(words):])
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=unknown))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=unknown,
        additional_special_tokens=[SYSTEM, USER, ASSISTANT, END], model_max_length=4096, padding_side="right",
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def probe_texts(probes) -> list[str]:
    """Every string of a probe set (for the tokenizer's vocabulary)."""
    chats = [message["content"] for messages in probes.chat_text for message in messages]
    return [*probes.harmful, *probes.harmless, *probes.base_text, *chats]
