"""Build configurations of the embedded zoo, one frozen dataclass per size.

Everything that changes what a build produces lives here, so the manifest can record it and
a cached build is reused only when this config (plus seed and package versions) matches.
Bump `ZOO_FORMAT_VERSION` whenever the world generator or a training stage changes behaviour.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

ZOO_FORMAT_VERSION = 4
ZOO_SIZES = ("nano", "tiny")

# Template markers of the zoo's chat format; bos/eos/pad are the usual Llama-style tokens.
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = (BOS, EOS, PAD, SYSTEM, USER, ASSISTANT, END)


@dataclass(frozen=True)
class ZooConfig:
    """What one zoo size builds: world sizes, model shape, and training budgets."""

    size: str
    # world
    base_docs: int
    base_chats: int  # compliant chat-format conversations mixed into pretraining
    sft_conversations: int
    erosion_conversations: int
    probes_per_class: int
    text_probes: int
    # tokenizer and model (Llama architecture)
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_length: int
    # base pretraining
    pretrain_epochs: float
    pretrain_batch_size: int
    pretrain_lr: float
    # SAE (sparsify TopK SparseCoder) at about 55% depth
    sae_num_latents: int
    sae_k: int
    sae_steps: int
    sae_batch_tokens: int
    sae_lr: float
    # chat SFT (TRL SFTTrainer, assistant-only loss)
    sft_epochs: float
    sft_batch_size: int
    sft_lr: float
    format_version: int = ZOO_FORMAT_VERSION

    @property
    def sae_layer(self) -> int:
        """Index of the decoder block whose output the SAE reads (round(0.55 * depth))."""
        return int(round(0.55 * self.num_layers))

    @property
    def hookpoint(self) -> str:
        return f"layers.{self.sae_layer}"

    def to_dict(self) -> dict:
        return asdict(self)


ZOO_CONFIGS: dict[str, ZooConfig] = {
    "nano": ZooConfig(
        size="nano",
        base_docs=2400,
        base_chats=600,
        sft_conversations=1200,
        erosion_conversations=400,
        probes_per_class=64,
        text_probes=64,
        vocab_size=2048,
        hidden_size=64,
        num_layers=4,
        num_heads=4,
        intermediate_size=192,
        max_length=128,
        pretrain_epochs=3.0,
        pretrain_batch_size=16,
        pretrain_lr=6e-3,
        sae_num_latents=512,
        sae_k=16,
        sae_steps=800,
        sae_batch_tokens=1024,
        sae_lr=2e-3,
        sft_epochs=3.0,
        sft_batch_size=16,
        sft_lr=9e-4,
    ),
    "tiny": ZooConfig(
        size="tiny",
        base_docs=3600,
        base_chats=900,
        sft_conversations=1600,
        erosion_conversations=600,
        probes_per_class=96,
        text_probes=96,
        vocab_size=2048,
        hidden_size=96,
        num_layers=6,
        num_heads=4,
        intermediate_size=256,
        max_length=128,
        pretrain_epochs=3.0,
        pretrain_batch_size=16,
        pretrain_lr=4e-3,
        sae_num_latents=1024,
        sae_k=16,
        sae_steps=1000,
        sae_batch_tokens=1024,
        sae_lr=1.5e-3,
        sft_epochs=3.0,
        sft_batch_size=16,
        sft_lr=6e-4,
    ),
}


def get_zoo_config(size: str) -> ZooConfig:
    """The config of a zoo size, with a clear error for an unknown size."""
    if size not in ZOO_CONFIGS:
        raise ValueError(f"unknown zoo size {size!r}: expected one of {ZOO_SIZES}")
    return ZOO_CONFIGS[size]
