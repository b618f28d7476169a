"""Stage `refusal` (§5, Table 1): the true refusal direction (chat model, chat template, last
template token), the top-k refusal features of the base SAE found on the base model (base
format "{instruction}\\n", at the "\\n") and on the chat model, their NNLS reconstructions of
the direction (NMSE, cosine) and their overlap, for every k. Directions are saved for the
`interventions` stage."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

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


def run(ctx: RunContext, folder) -> dict:
    from featuredrift.lm.capture import collect_prompt_activations
    from featuredrift.monitor.metrics import encode_batched
    from featuredrift.monitor.refusal import (
        feature_diff_in_means,
        reconstruct_direction,
        refusal_direction,
        top_refusal_features,
    )

    cfg = ctx.config
    hookpoint = cfg.main_hookpoint
    sae = load_stage_saes(ctx, "base")[hookpoint]
    harmful = ctx.instructions("harmful", cfg.data.max_prompts)
    harmless = ctx.instructions("harmless", cfg.data.max_prompts)
    acts = {}
    formats = {}
    for role in ("chat", "base"):
        model, tokenizer = ctx.model(role)
        prompt_format = resolve_prompt_format(cfg.refusal.prompt_format.get(role, role), tokenizer)
        formats[role] = prompt_format
        for label, instructions in (("harmful", harmful), ("harmless", harmless)):
            acts[role, label] = collect_prompt_activations(
                model, tokenizer, instructions, [hookpoint], prompt_format=prompt_format,
                batch_size=cfg.batch_size, device="cpu",
            )[hookpoint]
    true_direction = refusal_direction(acts["chat", "harmful"], acts["chat", "harmless"])
    base_direction = refusal_direction(acts["base", "harmful"], acts["base", "harmless"])
    dbar = {}
    for role in ("base", "chat"):
        codes = {label: encode_batched(sae, acts[role, label].to(ctx.device)) for label in ("harmful", "harmless")}
        dbar[role] = feature_diff_in_means(
            (codes["harmful"].top_acts, codes["harmful"].top_indices),
            (codes["harmless"].top_acts, codes["harmless"].top_indices),
            sae.num_latents,
        ).cpu()
    directions = {"true": true_direction.float().cpu()}
    rows = []
    ks = [k for k in cfg.refusal.ks if k <= sae.num_latents]
    for k in ks:
        row: dict = {"k": k}
        chosen = {}
        for role in ("base", "chat"):
            features = top_refusal_features(dbar[role], k, strict=False)
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
    cosine = torch.nn.functional.cosine_similarity(true_direction, base_direction.to(true_direction.device), dim=0)
    return {
        "hookpoint": hookpoint,
        "prompt_format": formats,
        "num_harmful": len(harmful),
        "num_harmless": len(harmless),
        "direction_norm": float(true_direction.norm()),
        "base_model_direction_cosine": float(cosine),
        "positive_features": {role: int((dbar[role] > 0).sum()) for role in ("base", "chat")},
        "table": rows,
    }
