"""Supervised fine-tuning with TRL's SFTTrainer, as the demo and the zoo run it.

One place decides the SFT recipe (loss on assistant turns only when the chat template marks
them, CPU-friendly defaults, no checkpoints unless asked, no external loggers), so the zoo's
chat model and the demo's monitored runs are trained the same way.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch


def read_conversations(path: str | Path) -> list[dict[str, Any]]:
    """Rows `{"messages": [...]}` from a JSONL file, with a clear error for anything else."""
    path = Path(path)
    rows = []
    with path.open() as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: expected a JSON object with 'messages', found invalid JSON ({error})") from None
            if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
                found = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise ValueError(f"{path}:{number}: expected a 'messages' list, found {found}")
            rows.append({"messages": row["messages"]})
    if not rows:
        raise ValueError(f"{path}: expected at least one conversation, found none")
    return rows


def make_sft_trainer(
    model,
    tokenizer,
    conversations: list[dict[str, Any]],
    *,
    output_dir: str | Path,
    max_steps: int = -1,
    num_train_epochs: float = 1.0,
    learning_rate: float = 1e-3,
    batch_size: int = 16,
    max_length: int = 128,
    seed: int = 0,
    save_steps: int | None = None,
    lora: bool = False,
    callbacks: list | None = None,
    **overrides: Any,
):
    """An `SFTTrainer` over conversational data, loss on assistant turns where the template marks them.

    CPU-friendly and silent by default (no bf16, no gradient checkpointing, no checkpoints, no
    external loggers, cosine schedule with 5% warmup); `overrides` go to `SFTConfig`.
    """
    from featuredrift.extras import require_extra

    require_extra("demo", "fine-tuning with TRL's SFTTrainer")
    from datasets import Dataset
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    set_seed(seed)
    assistant_only = "{% generation %}" in (getattr(tokenizer, "chat_template", None) or "")
    settings: dict[str, Any] = dict(
        output_dir=str(output_dir),
        max_steps=max_steps,
        num_train_epochs=num_train_epochs,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        max_length=max_length,
        assistant_only_loss=assistant_only,
        packing=False,
        bf16=False,
        dataset_num_proc=None,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=seed,
        data_seed=seed,
        report_to="none",
        logging_strategy="no",
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    # TRL turns activation (gradient) checkpointing on by default; transformers 5 renamed it.
    names = {f.name for f in dataclasses.fields(SFTConfig)}
    settings["activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"] = False
    args = SFTConfig(**{**settings, **overrides})
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"messages": [list(c["messages"]) for c in conversations]}),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks or [],
    )
    trainer.remove_callback(PrinterCallback)
    return trainer
