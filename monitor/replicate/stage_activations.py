"""Stage `activations`: the base and chat model's residual activations on held-out base-like
and chat-like text, paired on identical tokens, written in shards. Which tokens are read is
`paper_readings.token_mask` (default: no control, template or first/sink tokens).

Shard boundaries are fixed by text counts, so an interrupted stage resumes at the first
missing shard and both models' shards always pair.
"""

from __future__ import annotations

import torch

from featuredrift.monitor.replicate.context import RunContext
from featuredrift.monitor.replicate.shards import shard_path, write_shard

DATA_FIELDS = {"base": "base_text_eval", "chat": "chat_text_eval"}


def run(ctx: RunContext, folder) -> dict:
    from featuredrift.monitor.capture import collect_token_activations

    cfg = ctx.config
    texts_per_shard = max(1, cfg.shard_tokens // cfg.data.max_length)
    store_dtype = getattr(torch, cfg.activation_dtype)
    summary: dict = {"hookpoints": cfg.hookpoints, "data": {}}
    for data, field_name in DATA_FIELDS.items():
        texts, has_special = ctx.texts(field_name, cfg.data.max_eval_texts)
        conversations = ctx.conversations(field_name, cfg.data.max_eval_texts)
        shards = [texts[i : i + texts_per_shard] for i in range(0, len(texts), texts_per_shard)]
        tokens = 0
        for role in ("base", "chat"):
            model, _ = ctx.model(role)
            for index, shard_texts in enumerate(ctx.track(shards, f"activations {role} model, {data} data", len(shards))):
                path = shard_path(folder, role, data, index)
                if path.exists():
                    continue  # finished before an interruption (same stage key)
                offset = index * texts_per_shard
                acts = collect_token_activations(
                    model, ctx.tokenizer, shard_texts, cfg.hookpoints,
                    batch_size=cfg.batch_size, max_length=cfg.data.max_length,
                    add_special_tokens=not has_special, device="cpu",
                    conversations=conversations[offset : offset + len(shard_texts)] if conversations else None,
                    rule=cfg.paper_readings.token_mask,
                )
                meta = {"token_ids": acts.token_ids, "text_index": acts.text_index + offset, "position": acts.position}
                write_shard(path, acts.activations, meta, store_dtype)
        from safetensors import safe_open

        for index in range(len(shards)):
            with safe_open(str(shard_path(folder, "base", data, index)), "pt") as handle:
                tokens += handle.get_slice("token_ids").get_shape()[0]
        summary["data"][data] = {"texts": len(texts), "tokens": tokens, "shards": len(shards)}
    return summary
