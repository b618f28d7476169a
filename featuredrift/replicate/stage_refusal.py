"""Stage `refusal` (§5, Table 1): the true refusal direction (chat model, chat template, last
template token), the top-k refusal features of the base SAE found on the base model (base
format "{instruction}\\n", at the "\\n", by default) and on the chat model, their NNLS
reconstructions of the direction (NMSE, cosine) and their overlap, for every k. Directions are
saved for the `interventions` stage.

Readings: `refusal_feature_reading` (positive entries of d̄ or its literal top-k),
`decoder_norm` (fold decoder norms into d̄), `base_prompt` (how the base model reads prompts)
and `refusal_direction`: with 'arditi' the direction is chosen among the post-instruction
positions and the hookpoints by Arditi et al.'s selection, on prompts held out of the training
sets, and the whole table is read at the chosen hookpoint."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from featuredrift.replicate.config import BASE_PROMPT_FORMAT
from featuredrift.replicate.context import RunContext
from featuredrift.replicate.saes import load_stage_saes

DIRECTIONS_FILE = "directions.safetensors"


def resolve_prompt_format(wanted: str, tokenizer) -> str:
    """'auto' → 'chat' when the tokenizer has a chat template, else 'base'."""
    if wanted == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "base"
    return wanted


def direction_key(source: str, k: int | None) -> str:
    return "true" if source == "true" else f"{source}_k{k}"


def prompt_formats(ctx: RunContext) -> dict[str, str]:
    """How each model writes its prompts: the chat model per `refusal.prompt_format`, the base
    model per the `base_prompt` reading."""
    cfg = ctx.config
    wanted = {"chat": cfg.refusal.prompt_format.get("chat", "chat"),
              "base": BASE_PROMPT_FORMAT[cfg.paper_readings.base_prompt]}
    return {role: resolve_prompt_format(wanted[role], ctx.model(role)[1]) for role in ("chat", "base")}


def run(ctx: RunContext, folder) -> dict:
    from featuredrift.lm.capture import collect_prompt_activations
    from featuredrift.monitor.metrics import encode_batched
    from featuredrift.monitor.refusal import (
        feature_diff_in_means,
        fold_decoder_norms,
        reconstruct_direction,
        refusal_direction,
        top_refusal_features,
    )

    cfg = ctx.config
    readings = cfg.paper_readings
    harmful = ctx.instructions("harmful", cfg.data.max_prompts)
    harmless = ctx.instructions("harmless", cfg.data.max_prompts)
    formats = prompt_formats(ctx)
    selection = None
    hookpoint = cfg.main_hookpoint
    if readings.refusal_direction == "arditi":
        harmful, harmless, selection = _arditi_selection(ctx, harmful, harmless, formats["chat"])
        hookpoint = selection["hookpoint"]
    sae = load_stage_saes(ctx, "base")[hookpoint]
    acts = {}
    for role in ("chat", "base"):
        model, tokenizer = ctx.model(role)
        for label, instructions in (("harmful", harmful), ("harmless", harmless)):
            acts[role, label] = collect_prompt_activations(
                model, tokenizer, instructions, [hookpoint], prompt_format=formats[role],
                batch_size=cfg.batch_size, device="cpu",
            )[hookpoint]
    true_direction = refusal_direction(acts["chat", "harmful"], acts["chat", "harmless"])
    if selection is not None:
        true_direction = selection.pop("direction").double()
    base_direction = refusal_direction(acts["base", "harmful"], acts["base", "harmless"])
    dbar = {}
    for role in ("base", "chat"):
        codes = {label: encode_batched(sae, acts[role, label].to(ctx.device)) for label in ("harmful", "harmless")}
        dbar[role] = fold_decoder_norms(feature_diff_in_means(
            (codes["harmful"].top_acts, codes["harmful"].top_indices),
            (codes["harmless"].top_acts, codes["harmless"].top_indices),
            sae.num_latents,
        ), sae.W_dec, readings.decoder_norm).cpu()
    directions = {"true": true_direction.float().cpu()}
    rows = []
    ks = [k for k in cfg.refusal.ks if k <= sae.num_latents]
    for k in ks:
        row: dict = {"k": k}
        chosen = {}
        for role in ("base", "chat"):
            features = top_refusal_features(dbar[role], k, strict=False, reading=readings.refusal_feature_reading)
            chosen[role] = features
            if features.numel() == 0:  # no feature fires more on harmful prompts: r̂ = 0
                directions[direction_key(role, k)] = torch.zeros_like(directions["true"])
                row[role] = {"nmse": 1.0, "cosine": 0.0, "num_features": 0, "features": [], "weights": [],
                             "dbar_base_model": None, "dbar_chat_model": None}
                continue
            rec = reconstruct_direction(sae.W_dec.detach().cpu(), features, true_direction.cpu())
            directions[direction_key(role, k)] = rec.direction.float()
            row[role] = {
                "nmse": rec.nmse,
                "cosine": rec.cosine,
                "num_features": int(features.numel()),
                "num_positive": int((dbar[role][features] > 0).sum()),
                "features": features.tolist(),
                "weights": [float(w) for w in rec.weights],
                "dbar_base_model": float(dbar["base"][features].mean()),
                "dbar_chat_model": float(dbar["chat"][features].mean()),
            }
        shared = sorted(set(chosen["base"].tolist()) & set(chosen["chat"].tolist()))
        row["overlap"] = len(shared)
        row["shared_features"] = shared
        rows.append(row)
    save_file({k: v.contiguous() for k, v in directions.items()}, str(folder / DIRECTIONS_FILE))
    cosine = torch.nn.functional.cosine_similarity(true_direction.cpu(), base_direction.cpu().to(true_direction.dtype), dim=0)
    result = {
        "hookpoint": hookpoint,
        "prompt_format": formats,
        "readings": {name: getattr(readings, name) for name in
                     ("refusal_feature_reading", "decoder_norm", "refusal_direction", "base_prompt")},
        "num_harmful": len(harmful),
        "num_harmless": len(harmless),
        "direction_norm": float(true_direction.norm()),
        "base_model_direction_cosine": float(cosine),
        "positive_features": {role: int((dbar[role] > 0).sum()) for role in ("base", "chat")},
        "table": rows,
    }
    if selection is not None:
        result["selection"] = selection
    return result


def _arditi_selection(ctx: RunContext, harmful: list[str], harmless: list[str], chat_format: str):
    """Hold `selection_prompts` of each training set out, build a candidate direction at every
    post-instruction position and hookpoint from the rest, and keep Arditi et al.'s choice."""
    from featuredrift.lm.capture import collect_prompt_window_activations, post_instruction_tokens
    from featuredrift.lm.prompts import format_prompts
    from featuredrift.monitor.judges import refusal_start_tokens
    from featuredrift.monitor.refusal import refusal_direction
    from featuredrift.monitor.refusal_selection import select_refusal_direction

    cfg = ctx.config
    held = min(cfg.refusal.selection_prompts, len(harmful) // 2, len(harmless) // 2)
    if held < 1:
        from featuredrift.replicate.config import ConfigError

        raise ConfigError(f"refusal.selection_prompts: expected at least 2 prompts per class to hold one out, "
                          f"found {len(harmful)} harmful and {len(harmless)} harmless")
    train_harmful, val_harmful = harmful[:-held], harmful[-held:]
    train_harmless, val_harmless = harmless[:-held], harmless[-held:]
    model, tokenizer = ctx.model("chat")
    window = post_instruction_tokens(tokenizer, chat_format)
    acts = {
        label: collect_prompt_window_activations(model, tokenizer, instructions, cfg.hookpoints, window=window,
                                                 prompt_format=chat_format, batch_size=cfg.batch_size, device="cpu")
        for label, instructions in (("harmful", train_harmful), ("harmless", train_harmless))
    }
    candidates = {
        (offset - window, hookpoint): refusal_direction(acts["harmful"][hookpoint][:, offset], acts["harmless"][hookpoint][:, offset]).float()
        for hookpoint in cfg.hookpoints for offset in range(window)
    }
    tokens = refusal_start_tokens(tokenizer, format_prompts(tokenizer, [val_harmful[0]], chat_format)[0])
    chosen = select_refusal_direction(
        model, tokenizer, candidates, val_harmful, val_harmless, tokens, prompt_format=chat_format,
        kl_threshold=cfg.refusal.selection_kl_threshold, induce_threshold=cfg.refusal.selection_induce_threshold,
        prune_layer_fraction=cfg.refusal.selection_prune_layers, batch_size=cfg.batch_size,
    )
    selection = {
        "position": chosen.position,
        "hookpoint": chosen.hookpoint,
        "direction": chosen.direction,
        "validation_prompts": held,
        "baseline_harmful_logodds": chosen.baseline_harmful,
        "baseline_harmless_logodds": chosen.baseline_harmless,
        "candidates": [c._asdict() for c in chosen.candidates],
    }
    return train_harmful, train_harmless, selection
