"""Train TopK SAEs on a model's residual stream with sparsify's `Trainer`, and write them in
sparsify's on-disk layout (`OUT/layers.N/{cfg.json,sae.safetensors}`) plus `training.json`.

sparsify's trainer also writes optimizer and scheduler state with `torch.save`; it trains into a
temporary folder and only the safetensors SAE and its JSON config are kept, so the output holds
no pickle. The CLI (`featuredrift sae train`) and batch replication both call `train_sae`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

from featuredrift import sae_store  # noqa: F401  (Triton guard before sparsify loads)
from featuredrift.sae_store.validate import CFG_FILE, TRAINED_AT_FILE, WEIGHTS_FILE, SaeError


@dataclass(frozen=True)
class SaeTrainingPreset:
    num_latents: int
    k: int
    optimizer: str
    lr: float
    adam_betas: tuple[float, float]
    batch_tokens: int
    grad_clip: float | None
    lr_warmup_steps: int
    normalize_decoder: bool
    auxk_alpha: float
    dead_feature_threshold: int
    multi_topk: bool

    def train_kwargs(self, ctx_len: int) -> dict:
        """Keyword arguments for `train_sae`; the token batch becomes `batch_tokens // ctx_len` sequences."""
        kwargs = asdict(self)
        kwargs["batch_size"] = max(1, kwargs.pop("batch_tokens") // ctx_len)
        kwargs["ctx_len"] = ctx_len
        kwargs["adam_betas"] = tuple(self.adam_betas)
        return kwargs


# The Feature Drift paper's SAE recipe (Appx. A.2).
PAPER_PRESET = SaeTrainingPreset(
    num_latents=65_536,
    k=100,
    optimizer="adam",
    lr=1e-4,
    adam_betas=(0.9, 0.999),
    batch_tokens=4096,
    grad_clip=1.0,
    lr_warmup_steps=1000,
    normalize_decoder=True,
    auxk_alpha=1 / 32,
    dead_feature_threshold=10_000_000,
    multi_topk=True,
)


class SaeTrainingResult(NamedTuple):
    out_dir: Path
    sae_dirs: dict[str, Path]  # hookpoint → directory
    initial_fvu: dict[str, float]  # the untrained SAE, as the trainer initialises it
    final_fvu: dict[str, float]
    num_tokens: int
    num_steps: int


def pack_token_chunks(
    token_lists: Sequence[Sequence[int]], ctx_len: int, separator_id: int | None, max_tokens: int | None = None
) -> list[list[int]]:
    """sparsify's packing: texts joined into one stream, each preceded by the separator (EOS),
    cut into full `ctx_len` chunks; the incomplete tail is dropped.

    With a separator, every chunk also starts with it: position 0 of a sequence is the model's
    attention sink, whose activation dwarfs the rest, and a special token there is excluded from
    training like the other special tokens (the first word would not be)."""
    if ctx_len < 2:
        raise ValueError(f"ctx_len: expected at least 2 tokens, found {ctx_len}")
    stream: list[int] = []
    for ids in token_lists:
        if separator_id is not None:
            stream.append(separator_id)
        stream.extend(ids)
        if max_tokens is not None and len(stream) >= max_tokens:
            break
    if max_tokens is not None:
        stream = stream[:max_tokens]
    if separator_id is None:
        return [stream[i : i + ctx_len] for i in range(0, len(stream) - ctx_len + 1, ctx_len)]
    body = ctx_len - 1
    return [[separator_id, *stream[i : i + body]] for i in range(0, len(stream) - body + 1, body)]


def _module_path(body, block) -> str:
    for name, module in body.named_modules():
        if module is block:
            return name
    raise SaeError(f"cannot find the module path of {type(block).__name__} in {type(body).__name__}")


def _fvu(sae, activations) -> float:
    import torch

    with torch.no_grad():
        return float(sae(activations.to(sae.device, torch.float32)).fvu)


def _eval_activations(model, tokenizer, chunks, hookpoints, batch_size):
    """Content-token activations of a few training chunks, for before/after FVU."""
    import torch

    from featuredrift.lm.capture import capture_activations, content_token_mask

    ids = torch.tensor(chunks, dtype=torch.long)
    mask = torch.ones_like(ids)
    parts = {h: [] for h in hookpoints}
    for start in range(0, len(ids), batch_size):
        batch, batch_mask = ids[start : start + batch_size], mask[start : start + batch_size]
        output = capture_activations(model, batch, batch_mask, hookpoints)
        keep = content_token_mask(batch, batch_mask, tokenizer)
        for h in hookpoints:
            parts[h].append(output.activations[h][keep.to(output.activations[h].device)].float())
    return {h: torch.cat(p) for h, p in parts.items()}


def train_sae(
    model,
    tokenizer,
    texts: Sequence[str],
    hookpoints: Sequence[str],
    *,
    num_latents: int,
    k: int,
    out_dir: Path | str,
    ctx_len: int = 256,
    batch_size: int = 8,
    max_tokens: int | None = None,
    lr: float | None = None,
    optimizer: str = "adam",
    adam_betas: tuple[float, float] = (0.9, 0.999),
    lr_warmup_steps: int = 0,
    grad_clip: float | None = None,
    normalize_decoder: bool = True,
    auxk_alpha: float = 0.0,
    dead_feature_threshold: int = 10_000_000,
    multi_topk: bool = False,
    exclude_special_tokens: bool = True,
    seed: int = 0,
    log_to_wandb: bool = False,
    run_name: str | None = None,
    eval_sequences: int = 8,
) -> SaeTrainingResult:
    """Train one SAE per hookpoint (`layers.N`) on `texts` and write them to `out_dir`.

    `batch_size` counts sequences of `ctx_len` tokens (sparsify's unit). Special tokens (BOS,
    EOS, padding) are excluded from training, as in the paper (Appx. A.2). The model's
    requires_grad and train/eval flags are restored afterwards. FVU before/after is measured on
    the first `eval_sequences` training chunks.
    """
    import torch
    from sparsify import SparseCoder, SparseCoderConfig, TrainConfig, Trainer

    from featuredrift.lm.hookpoints import (
        hidden_size,
        resolve_hookpoint,
        transformer_body,
        unwrap_model,
    )
    from featuredrift.sae_store.load import load_sae_dir

    hookpoints = list(dict.fromkeys(hookpoints))
    if not hookpoints:
        raise SaeError("hookpoints: expected at least one hookpoint such as 'layers.3', found none")
    if k > num_latents:
        raise SaeError(f"k: expected at most num_latents={num_latents}, found {k}")
    if optimizer not in ("adam", "signum", "muon"):
        raise SaeError(f"optimizer: expected 'adam', 'signum' or 'muon', found {optimizer!r}")
    inner = unwrap_model(model)
    body = transformer_body(inner)
    module_paths = {h: _module_path(body, resolve_hookpoint(inner, h)) for h in hookpoints}

    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise SaeError("texts: expected at least one non-empty training text, found none")
    # Shuffled (seeded) before packing, so --max-tokens takes a sample, not the file's head.
    import random

    texts = random.Random(seed).sample(texts, len(texts))
    token_lists = tokenizer(texts, add_special_tokens=False)["input_ids"]
    separator = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
    chunks = pack_token_chunks(token_lists, ctx_len, separator, max_tokens)
    if len(chunks) < batch_size:
        available = sum(len(t) + 1 for t in token_lists)
        raise SaeError(
            f"training data: expected at least batch_size × ctx_len = {batch_size} × {ctx_len} tokens, "
            f"found {len(chunks)} full chunks ({min(available, max_tokens or available)} tokens)"
        )

    out_dir = Path(out_dir)
    from featuredrift.lm.capture import control_token_ids

    exclude = control_token_ids(tokenizer) if exclude_special_tokens else []
    sae_cfg = SparseCoderConfig(num_latents=num_latents, k=k, multi_topk=multi_topk, normalize_decoder=normalize_decoder)
    eval_acts = _eval_activations(inner, tokenizer, chunks[:eval_sequences], hookpoints, batch_size)
    device = next(inner.parameters()).device
    initial_fvu = {}
    for h in hookpoints:
        torch.manual_seed(seed)  # the trainer seeds the same way before building each SAE
        fresh = SparseCoder(hidden_size(inner), sae_cfg, device, dtype=torch.float32)
        fresh.b_dec.data = eval_acts[h].mean(0).to(device)
        initial_fvu[h] = _fvu(fresh, eval_acts[h])

    grad_flags = [(p, p.requires_grad) for p in inner.parameters()]
    training_flags = [(m, m.training) for m in inner.modules()]
    matmul_precision = torch.get_float32_matmul_precision()
    with tempfile.TemporaryDirectory(prefix="featuredrift-sae-") as scratch:
        cfg = TrainConfig(
            sae=sae_cfg,
            batch_size=batch_size,
            lr=lr,
            optimizer=optimizer,
            lr_warmup_steps=lr_warmup_steps,
            auxk_alpha=auxk_alpha,
            dead_feature_threshold=dead_feature_threshold,
            exclude_tokens=exclude,
            hookpoints=list(module_paths.values()),
            init_seeds=[seed],
            save_every=10**9,
            log_to_wandb=log_to_wandb,
            run_name=run_name or "sae",
            save_dir=scratch,
        )
        dataset = [{"input_ids": torch.tensor(chunk, dtype=torch.long)} for chunk in chunks]
        try:
            inner.eval()
            trainer = Trainer(cfg, dataset, inner)
            _configure_optimizers(trainer, adam_betas if optimizer == "adam" else None, grad_clip)
            trainer.fit()
        finally:
            for param, flag in grad_flags:
                param.requires_grad_(flag)
            for module, flag in training_flags:
                module.training = flag
            torch.set_float32_matmul_precision(matmul_precision)
        sae_dirs = {}
        for h, module_path in module_paths.items():
            source = Path(scratch) / cfg.run_name / module_path
            target = out_dir / h
            target.mkdir(parents=True, exist_ok=True)
            for name in (CFG_FILE, WEIGHTS_FILE):
                (target / name).write_bytes((source / name).read_bytes())
            sae_dirs[h] = target

    final_fvu = {h: _fvu(load_sae_dir(path, device=device), eval_acts[h]) for h, path in sae_dirs.items()}
    num_tokens = len(chunks) * ctx_len
    result = SaeTrainingResult(out_dir, sae_dirs, initial_fvu, final_fvu, num_tokens, len(chunks) // batch_size)
    record = {
        "hookpoints": hookpoints,
        "model": getattr(inner.config, "_name_or_path", "") or type(inner).__name__,
        "num_latents": num_latents, "k": k, "ctx_len": ctx_len, "batch_size": batch_size, "lr": lr,
        "optimizer": optimizer, "adam_betas": list(adam_betas), "lr_warmup_steps": lr_warmup_steps,
        "grad_clip": grad_clip, "normalize_decoder": normalize_decoder, "auxk_alpha": auxk_alpha,
        "dead_feature_threshold": dead_feature_threshold, "multi_topk": multi_topk,
        "exclude_tokens": exclude, "seed": seed, "num_tokens": num_tokens, "num_steps": result.num_steps,
        "initial_fvu": initial_fvu, "final_fvu": final_fvu,
    }
    (out_dir / "training.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    for h, path in sae_dirs.items():  # each SAE knows its layer, whatever its folder is renamed to
        (path / TRAINED_AT_FILE).write_text(json.dumps({"hookpoint": h, **record}, indent=2), encoding="utf-8")
    return result


def _configure_optimizers(trainer, adam_betas, grad_clip: float | None) -> None:
    """Apply what sparsify's trainer has no option for: Adam betas and gradient-norm clipping."""
    params = [p for sae in trainer.saes.values() for p in sae.parameters()]
    for optimizer in trainer.optimizers:
        if adam_betas is not None:
            for group in optimizer.param_groups:
                if "betas" in group:
                    group["betas"] = tuple(adam_betas)
        if grad_clip is not None and hasattr(optimizer, "register_step_pre_hook"):
            optimizer.register_step_pre_hook(_clip_hook(params, grad_clip))


def _clip_hook(params, max_norm: float):
    import torch

    def clip(_optimizer, _args, _kwargs) -> None:
        torch.nn.utils.clip_grad_norm_(params, max_norm)

    return clip
