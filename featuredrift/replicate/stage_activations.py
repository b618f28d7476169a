"""Stage `activations`: the base and chat model's residual activations on held-out base-like
and chat-like text, paired on identical tokens, written in shards. Which tokens are read is
`paper_readings.token_mask` (default: no control, template or first/sink tokens).

Shard boundaries are fixed by text counts, so an interrupted stage resumes at the first
missing shard and both models' shards always pair.
"""

from __future__ import annotations

import torch

from featuredrift.replicate.context import RunContext
from featuredrift.replicate.shards import iter_model, shard_path, shard_paths, write_shard

DATA_FIELDS = {"base": "base_text_eval", "chat": "chat_text_eval"}


def run(ctx: RunContext, folder) -> dict:
    from featuredrift.lm.capture import collect_token_activations

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
        ratio = cfg.sink_norm_ratio if cfg.paper_readings.outlier_rule == "norm" else None  # else: per stage, by quantile
        left_out = leave_out_norm_outliers(folder, data, cfg.hookpoints, ratio) if ratio else 0
        from safetensors import safe_open

        for index in range(len(shards)):
            with safe_open(str(shard_path(folder, "base", data, index)), "pt") as handle:
                tokens += handle.get_slice("token_ids").get_shape()[0]
        summary["data"][data] = {"texts": len(texts), "tokens": tokens, "shards": len(shards), "outliers_left_out": left_out}
    return summary


def leave_out_norm_outliers(folder, data: str, hookpoints: list[str], ratio: float) -> int:
    """Remove the tokens whose base-model norm at any hookpoint exceeds `ratio` × the median (the
    live monitor's rule) from both models' shards, so pairs stay aligned; returns how many.

    The decision is written first (`outliers_<data>.safetensors`, with each shard's row count
    before), so a stage interrupted while rewriting finishes the same rewrite on resume.
    """
    from safetensors.torch import load_file, save_file

    from featuredrift.monitor.metrics import outlier_norms

    decision_path = folder / f"outliers_{data}.safetensors"
    paths = shard_paths(folder, "base", data)
    if decision_path.exists():
        decision = load_file(str(decision_path))
    else:
        counts = torch.tensor([load_file(str(p))["token_ids"].shape[0] for p in paths])
        norms = [torch.cat([x.double().norm(dim=1) for x in iter_model(folder, "base", data, h)]) for h in hookpoints]
        decision = {"outliers": torch.stack([outlier_norms(n, ratio) for n in norms]).any(dim=0), "counts": counts}
        save_file(decision, str(decision_path))
    outliers, counts = decision["outliers"], decision["counts"].tolist()
    starts = [0, *torch.tensor(counts).cumsum(0).tolist()]
    for base_path, count, start in zip(paths, counts, starts, strict=False):
        keep = ~outliers[start : start + count]
        if bool(keep.all()):
            continue
        for path in (base_path, base_path.with_name(base_path.name.replace("base_", "chat_", 1))):
            tensors = load_file(str(path))
            rows = tensors["token_ids"].shape[0]
            if rows == int(keep.sum()):
                continue  # rewritten before an interruption
            if rows != count:
                raise ValueError(f"{path}: expected {count} rows (or {int(keep.sum())} after leaving out norm outliers), "
                                 f"found {rows}; delete the stage folder to recompute it")
            tmp = path.with_suffix(".tmp")
            save_file({k: v[keep].contiguous() for k, v in tensors.items()}, str(tmp))
            tmp.replace(path)
    return int(outliers.sum())
