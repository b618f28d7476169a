"""Pretraining the zoo's base model: a small Llama trained from scratch with the HF `Trainer`
on the synthetic base corpus.

Documents are packed whole (`<s> doc </s>`) into rows of at most `max_length` tokens, so each
row starts at a document start, like the probes the model is later evaluated on. Chat-format
documents are rendered by the tokenizer's own chat template (which writes the BOS itself) and
shuffled in among the text documents.
"""

from __future__ import annotations

from collections.abc import Sequence

from featuredrift.zoo.config import ZooConfig


def quiet_training_args(**overrides) -> dict:
    """TrainingArguments shared by the zoo's trainers: CPU-friendly, silent, no checkpoints."""
    import torch

    args = dict(
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        weight_decay=0.0,
        max_grad_norm=1.0,
        data_seed=overrides.get("seed", 0),
    )
    args.update(overrides)
    return args


def make_model_config(config: ZooConfig, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=2 * config.max_length,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rms_norm_eps=1e-5,
    )


def pack_documents(token_lists: Sequence[list[int]], max_length: int) -> list[list[int]]:
    """Greedy packing of whole documents into rows of at most `max_length` tokens."""
    rows: list[list[int]] = []
    current: list[int] = []
    for ids in token_lists:
        ids = ids[:max_length]
        if len(current) + len(ids) > max_length:
            rows.append(current)
            current = []
        current = current + ids
    if current:
        rows.append(current)
    return rows


class PackedRows:
    """A map-style dataset of right-padded LM rows with labels masked on padding."""

    def __init__(self, rows: list[list[int]], pad_id: int, max_length: int):
        import torch

        n = len(rows)
        self.input_ids = torch.full((n, max_length), pad_id, dtype=torch.long)
        self.attention_mask = torch.zeros((n, max_length), dtype=torch.long)
        for i, row in enumerate(rows):
            self.input_ids[i, : len(row)] = torch.tensor(row)
            self.attention_mask[i, : len(row)] = 1
        self.labels = self.input_ids.masked_fill(self.attention_mask == 0, -100)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {
            "input_ids": self.input_ids[i],
            "attention_mask": self.attention_mask[i],
            "labels": self.labels[i],
        }


def pretraining_documents(
    tokenizer, corpus: Sequence[str], chats: Sequence[list[dict[str, str]]], seed: int
) -> list[list[int]]:
    """Token ids of every document, each `<s> ... </s>`, text and chats shuffled together."""
    import random

    texts = tokenizer(list(corpus), add_special_tokens=True)["input_ids"]
    rendered = [tokenizer.apply_chat_template(list(c), tokenize=False) for c in chats]
    conversations = tokenizer(rendered, add_special_tokens=False)["input_ids"] if rendered else []
    docs = [ids + [tokenizer.eos_token_id] for ids in texts + conversations]
    random.Random(f"featuredrift-zoo/{seed}/pretraining-order").shuffle(docs)
    return docs


def pretrain_base_model(
    config: ZooConfig,
    tokenizer,
    corpus: Sequence[str],
    chats: Sequence[list[dict[str, str]]],
    seed: int,
    work_dir: str,
):
    """Train a fresh Llama on the base corpus and chat documents; returns it (eval mode, CPU)."""
    from transformers import LlamaForCausalLM, Trainer, TrainingArguments, set_seed
    from transformers.trainer_callback import PrinterCallback

    set_seed(seed)
    model = LlamaForCausalLM(make_model_config(config, tokenizer))
    docs = pretraining_documents(tokenizer, corpus, chats, seed)
    dataset = PackedRows(pack_documents(docs, config.max_length), tokenizer.pad_token_id, config.max_length)
    args = TrainingArguments(
        **quiet_training_args(
            output_dir=work_dir,
            seed=seed,
            num_train_epochs=config.pretrain_epochs,
            per_device_train_batch_size=config.pretrain_batch_size,
            learning_rate=config.pretrain_lr,
        )
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    model = trainer.model.to("cpu").eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
