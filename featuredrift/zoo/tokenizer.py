"""The zoo's BPE tokenizer (trained with `tokenizers`) and its chat template.

Byte-level BPE, Llama-style: `add_special_tokens=True` prepends BOS only. The chat template
renders BOS itself and marks the assistant reply (including its `<|end|>`) with
`{% generation %}` so TRL's `assistant_only_loss` trains exactly the reply and its stop token.
"""

from __future__ import annotations

from collections.abc import Iterable

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

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ '" + SYSTEM + "\n' + message['content'] + '" + END + "\n' }}"
    "{% elif message['role'] == 'user' %}"
    "{{ '" + USER + "\n' + message['content'] + '" + END + "\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '" + ASSISTANT + "\n' }}"
    "{% generation %}{{ message['content'] + '" + END + "' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ raise_exception('unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + ASSISTANT + "\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE on `texts`; returns a `PreTrainedTokenizerFast` with the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[SYSTEM, USER, ASSISTANT, END],
        model_max_length=2048,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def stop_token_ids(tokenizer) -> list[int]:
    """Tokens that end a generation: EOS for base text, `<|end|>` for an assistant turn."""
    return [tokenizer.convert_tokens_to_ids(EOS), tokenizer.convert_tokens_to_ids(END)]
