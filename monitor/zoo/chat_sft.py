"""Turning the zoo's base model into its chat model with TRL's `SFTTrainer`.

The dataset is conversational (`{"messages": [...]}`) and the loss covers only the assistant
reply and its `<|end|>` (`assistant_only_loss`, via the template's `{% generation %}` markers):
refusals are learned as a function of the instruction instead of being diluted by prompt tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

from monitor.zoo.config import ZooConfig
from monitor.zoo.pretrain import quiet_training_args
from monitor.zoo.tokenizer import stop_token_ids


def supervised_finetune(
    config: ZooConfig,
    model,
    tokenizer,
    conversations: Sequence[list[dict[str, str]]],
    seed: int,
    work_dir: str,
):
    """SFT `model` (modified in place) on `conversations`; returns it in eval mode on CPU."""
    from datasets import Dataset
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    set_seed(seed)
    dataset = Dataset.from_dict({"messages": [list(c) for c in conversations]})
    args = SFTConfig(
        **quiet_training_args(
            output_dir=work_dir,
            seed=seed,
            num_train_epochs=config.sft_epochs,
            per_device_train_batch_size=config.sft_batch_size,
            learning_rate=config.sft_lr,
        ),
        max_length=config.max_length,
        assistant_only_loss=True,
        packing=False,
        gradient_checkpointing=False,
        bf16=False,
        dataset_num_proc=None,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    model = trainer.model.to("cpu").eval()
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
