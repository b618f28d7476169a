"""Stage `transfer` (Fig. 1): FVU of the base SAE on B-LLM+B-Data, B-LLM+C-Data and
C-LLM+C-Data (plus C-LLM+B-Data), and of the chat SAE on C-LLM+C-Data (the ceiling), per
hookpoint, over the activation shards."""

from __future__ import annotations

from featuredrift.replicate.context import RunContext
from featuredrift.replicate.saes import load_stage_saes
from featuredrift.replicate.shards import iter_model
from featuredrift.replicate.streaming import FvuSum, MomentSum

SETTINGS = {
    "B-LLM+B-Data": ("base", "base"),
    "B-LLM+C-Data": ("base", "chat"),
    "C-LLM+C-Data": ("chat", "chat"),
    "C-LLM+B-Data": ("chat", "base"),
}


def set_fvu(sae, folder, model: str, data: str, hookpoint: str, device) -> float:
    """FVU of `sae` over every shard of (model, data), with the whole set's mean."""
    from featuredrift.monitor.metrics import encode_batched

    moments = MomentSum()
    for x in iter_model(folder, model, data, hookpoint):
        moments.add(x)
    total = FvuSum(moments.mean)
    for x in iter_model(folder, model, data, hookpoint):
        x = x.to(device)
        total.add(x, encode_batched(sae, x).reconstruction.float())
    return total.value


def run(ctx: RunContext, folder) -> dict:
    activations = ctx.stage_dirs["activations"]
    base_saes = load_stage_saes(ctx, "base")
    chat_saes = load_stage_saes(ctx, "chat") if ctx.results["saes"]["chat"] else {}
    result: dict = {"settings": list(SETTINGS), "hookpoints": {}}
    for hookpoint in ctx.track(ctx.config.hookpoints, "transfer FVU", len(ctx.config.hookpoints)):
        row = {
            name: set_fvu(base_saes[hookpoint], activations, model, data, hookpoint, ctx.device)
            for name, (model, data) in SETTINGS.items()
        }
        entry = {"base_sae": row}
        if hookpoint in chat_saes:
            entry["chat_sae"] = {
                "C-LLM+C-Data": set_fvu(chat_saes[hookpoint], activations, "chat", "chat", hookpoint, ctx.device)
            }
        result["hookpoints"][hookpoint] = entry
    return result
