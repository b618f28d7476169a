"""Turning the zoo's base model into its chat model with TRL's `SFTTrainer`.

The dataset is conversational (`{"messages": [...]}`) and the loss covers only the assistant
reply and its `<|end|>` (`assistant_only_loss`, via the template's `{% generation %}` markers):
refusals are learned as a function of the instruction instead of being diluted by prompt tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

from featuredrift.zoo.config import ZooConfig
from featuredrift.zoo.tokenizer import stop_token_ids


def supervised_finetune(
    config: ZooConfig,
    model,
    tokenizer,
    conversations: Sequence[list[dict[str, str]]],
    seed: int,
    work_dir: str,
):
    """SFT `model` (modified in place) on `conversations`; returns it in eval mode on CPU."""
    from featuredrift.zoo.finetune import make_sft_trainer

    trainer = make_sft_trainer(
        model,
        tokenizer,
        [{"messages": list(c)} for c in conversations],
        output_dir=work_dir,
        num_train_epochs=config.sft_epochs,
        learning_rate=config.sft_lr,
        batch_size=config.sft_batch_size,
        max_length=config.max_length,
        seed=seed,
    )
    trainer.train()
    model = trainer.model.to("cpu").eval()
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
