"""Offline tokenizers that register their control tokens the way real model families do
(Llama-3 headers, Gemma turns, ChatML, Mistral [INST]) and carry each family's real chat
template: shared by the chat-template tests and the sink/no-BOS test model."""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA2_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)

# family → (template, bos, eos, control tokens registered as added special tokens, adds BOS)
FAMILIES = {
    "llama-3": (LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>", ["<|start_header_id|>", "<|end_header_id|>"], True),
    "gemma-2": (GEMMA2_TEMPLATE, "<bos>", "<eos>", ["<start_of_turn>", "<end_of_turn>"], True),
    "qwen2.5-chatml": (CHATML_TEMPLATE, None, "<|im_end|>", ["<|im_start|>"], False),
    "mistral": (MISTRAL_TEMPLATE, "<s>", "</s>", ["[INST]", "[/INST]"], True),
}
CONVERSATION = [
    {"role": "user", "content": "How do I bake bread at home?"},
    {"role": "assistant", "content": "Mix flour, water and yeast, then let the dough rise."},
]
CORPUS = [
    "How do I bake bread at home? Mix flour, water and yeast, then let the dough rise.",
    "user assistant model system the a of to and in is it you that he was for on are with as",
] * 20


def build_tokenizer(family: str, corpus: Sequence[str] = CORPUS, vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `corpus`, registering its control tokens the way
    `family` does (ChatML adds no BOS, as Qwen2.5 and SmolLM do)."""
    template, bos, eos, control, adds_bos = FAMILIES[family]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = [t for t in (bos, eos, "<pad>") if t]
    tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    if adds_bos:
        from tokenizers.processors import TemplateProcessing

        tokenizer.post_processor = TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tokenizer.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=bos, eos_token=eos, pad_token="<pad>")
    fast.chat_template = template
    return fast
