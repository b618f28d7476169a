"""Stage `saes`: the base SAE per hookpoint (loaded from its source, or trained with sparsify
on base data where the source lacks it) and the chat SAE (trained on the chat model's
activations of chat data), the FVU ceiling of Fig. 1. Training goes through
`sae_store.train.train_sae` (sparsify's `Trainer`); multi-GPU users train with `torchrun`
beforehand and point `sae.base` at the result (see presets/README.md)."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import NamedTuple

from featuredrift.replicate.config import SaeTrainConfig
from featuredrift.replicate.context import RunContext


def run(ctx: RunContext, folder: Path) -> dict:
    from featuredrift.sae_store.load import locate_sae_dirs
    from featuredrift.sae_store.registry import fingerprint_sae

    cfg = ctx.config
    result: dict = {"base": {}, "chat": {}}
    available = {}
    if cfg.sae.base is not None:
        available = locate_sae_dirs(cfg.sae.base, cfg.hookpoints)
    for hookpoint in cfg.hookpoints:
        if hookpoint in available:
            result["base"][hookpoint] = _describe(available[hookpoint], trained=False, fingerprint=fingerprint_sae)
    missing = [h for h in cfg.hookpoints if h not in result["base"]]
    if missing:
        trained = _train(ctx, "base", "base_text_train", missing, cfg.sae.base_train, folder / "base")
        for hookpoint, path in trained.sae_dirs.items():
            result["base"][hookpoint] = _describe(path, trained=True, fingerprint=fingerprint_sae, training=trained)
    if cfg.sae.chat:
        trained = _train(ctx, "chat", "chat_text_train", cfg.hookpoints, cfg.sae.chat_train, folder / "chat")
        for hookpoint, path in trained.sae_dirs.items():
            result["chat"][hookpoint] = _describe(path, trained=True, fingerprint=fingerprint_sae, training=trained)
    return result


def _describe(path: Path, *, trained: bool, fingerprint, training=None) -> dict:
    from featuredrift.sae_store.validate import read_sae_config

    sae_cfg = read_sae_config(Path(path))
    hookpoint = Path(path).name
    entry = {
        "path": str(path),
        "fingerprint": fingerprint(path),
        "trained_here": trained,
        "d_in": sae_cfg["d_in"],
        "num_latents": sae_cfg["num_latents"],
        "k": sae_cfg.get("k"),
    }
    if training is not None:
        entry["training"] = {
            "num_tokens": training.num_tokens,
            "num_steps": training.num_steps,
            "initial_fvu": training.initial_fvu.get(hookpoint),
            "final_fvu": training.final_fvu.get(hookpoint),
        }
    return entry


def _train(ctx: RunContext, role: str, field_name: str, hookpoints: list[str], settings: SaeTrainConfig, out: Path):
    cfg = ctx.config
    if ctx.progress is not None:
        ctx.progress.console.log(f"training {role} SAEs for {hookpoints} ({settings.steps} steps, {cfg.sae.trainer})")
    if cfg.sae.trainer == "activations":
        return _train_in_memory(ctx, role, field_name, hookpoints, settings, out)
    from featuredrift.sae_store.train import train_sae

    model, tokenizer = ctx.model(role)
    texts, _ = ctx.texts(field_name, cfg.data.max_train_texts)
    texts = repeat_to_tokens(texts, tokenizer, settings.num_tokens, cfg.seed)
    ctx_len = cfg.data.max_length
    return train_sae(
        model, tokenizer, texts, hookpoints,
        num_latents=settings.num_latents, k=settings.k, out_dir=out, ctx_len=ctx_len,
        batch_size=max(1, settings.batch_size // ctx_len), max_tokens=settings.num_tokens,
        lr=settings.lr, optimizer="adam", lr_warmup_steps=settings.lr_warmup_steps,
        grad_clip=settings.grad_clip_norm, auxk_alpha=settings.auxk_alpha,
        dead_feature_threshold=settings.dead_feature_threshold, multi_topk=settings.multi_topk,
        seed=cfg.seed, run_name=f"{role}-sae",
    )


class InMemoryTraining(NamedTuple):
    """The fields of `sae_store.train.SaeTrainingResult` this stage reports."""

    sae_dirs: dict[str, Path]
    initial_fvu: dict[str, float]
    final_fvu: dict[str, float]
    num_tokens: int
    num_steps: int


def _train_in_memory(ctx: RunContext, role: str, field_name: str, hookpoints: list[str], settings: SaeTrainConfig, out: Path):
    """One forward pass over the training texts for every hookpoint, then the Appx. A.2 loop
    of `sae_training.train_sparse_coder` on the cached activations (cycled in shuffled epochs)."""
    from featuredrift.lm.capture import collect_token_activations
    from featuredrift.monitor.metrics import encode_batched, fvu
    from featuredrift.replicate.sae_training import cycle_shuffled, train_sparse_coder

    cfg = ctx.config
    model, tokenizer = ctx.model(role)
    texts, special = ctx.texts(field_name, cfg.data.max_train_texts)
    acts = collect_token_activations(
        model, tokenizer, texts, hookpoints, batch_size=cfg.batch_size, max_length=cfg.data.max_length,
        add_special_tokens=not special, device="cpu",
    ).activations
    dirs, final, steps = {}, {}, 0
    for index, hookpoint in enumerate(hookpoints):
        x = acts[hookpoint]
        sae, summary = train_sparse_coder(
            cycle_shuffled(x, settings.batch_size, cfg.seed + index), x.shape[1], settings,
            device=ctx.device, seed=cfg.seed,
        )
        dirs[hookpoint] = out / hookpoint
        sae.save_to_disk(dirs[hookpoint])
        sample = x[: 8 * settings.batch_size].to(ctx.device)
        final[hookpoint] = float(fvu(sample, encode_batched(sae, sample).reconstruction.float()))
        steps = summary.steps
    tokens = steps * settings.batch_size
    return InMemoryTraining(dirs, {}, final, tokens, steps)


def repeat_to_tokens(texts: list[str], tokenizer, num_tokens: int, seed: int) -> list[str]:
    """Shuffled copies of `texts` (epochs) until they hold about `num_tokens` tokens."""
    sample = texts[: min(len(texts), 256)]
    per_text = sum(len(ids) + 1 for ids in tokenizer(sample, add_special_tokens=False)["input_ids"]) / max(1, len(sample))
    epochs = max(1, math.ceil(num_tokens / max(1.0, per_text * len(texts))))
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(epochs):
        copy = list(texts)
        rng.shuffle(copy)
        out.extend(copy)
    return out
