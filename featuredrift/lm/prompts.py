"""How instructions become model inputs: the chat template for chat models and the paper's
base format `"{instruction}\\n"` for base models (Appx. C.2; the activation is read at that
final newline, the last token before the response)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

PromptFormat = Literal["chat", "base"]


class ChatTemplateError(ValueError):
    """The tokenizer cannot render chat prompts."""


def require_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)!r} has no chat_template: "
            "expected a chat model's tokenizer, or use prompt format 'base' (\"{instruction}\\n\")"
        )


def format_chat_prompt(tokenizer, instruction: str) -> str:
    """One user turn followed by the assistant generation prompt, as text."""
    require_chat_template(tokenizer)
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
    )


def format_chat_messages(tokenizer, messages: Sequence[dict[str, str]]) -> str:
    """A conversation so far (system/user/assistant turns) followed by the assistant generation
    prompt: where the next assistant turn, e.g. a training example's target, starts."""
    require_chat_template(tokenizer)
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def format_base_prompt(instruction: str) -> str:
    return f"{instruction}\n"


def format_prompts(tokenizer, instructions: Sequence[str], prompt_format: PromptFormat) -> list[str]:
    if prompt_format == "chat":
        return [format_chat_prompt(tokenizer, i) for i in instructions]
    if prompt_format == "base":
        return [format_base_prompt(i) for i in instructions]
    raise ValueError(f"prompt_format: expected 'chat' or 'base', found {prompt_format!r}")


def render_conversation(tokenizer, messages: list[dict[str, str]]) -> str:
    """A whole conversation (chat-like probe text) rendered through the chat template."""
    require_chat_template(tokenizer)
    return tokenizer.apply_chat_template(messages, tokenize=False)
