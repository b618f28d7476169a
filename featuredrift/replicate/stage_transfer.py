"""Stage `transfer` (Fig. 1): FVU of the base SAE on B-LLM+B-Data, B-LLM+C-Data and
C-LLM+C-Data (plus C-LLM+B-Data), and of the chat SAE on C-LLM+C-Data (the ceiling), per
hookpoint, over the activation shards. `paper_readings.fvu_reading` picks batch-centred or
per-token FVU; under `outlier_rule='quantile'` every setting of a data set reads the token pairs
the paper's rule keeps at that hookpoint (both models' tokens pair, so the settings stay comparable)."""

from __future__ import annotations

from featuredrift.replicate.context import RunContext
from featuredrift.replicate.outliers import left_out, shard_masks
from featuredrift.replicate.saes import load_stage_saes
from featuredrift.replicate.shards import iter_model
from featuredrift.replicate.streaming import FvuSum, MomentSum

SETTINGS = {
    "B-LLM+B-Data": ("base", "base"),
    "B-LLM+C-Data": ("base", "chat"),
    "C-LLM+C-Data": ("chat", "chat"),
    "C-LLM+B-Data": ("chat", "base"),
}


def set_fvu(sae, folder, model: str, data: str, hookpoint: str, device, *, reading: str = "batch",
            keep: list | None = None) -> float:
    """FVU of `sae` over every shard of (model, data) (the kept rows of each, when masks are given)."""
    from featuredrift.monitor.metrics import encode_batched

    def shards():
        for index, x in enumerate(iter_model(folder, model, data, hookpoint)):
            yield x if keep is None else x[keep[index]]

    moments = MomentSum()
    for x in shards():
        moments.add(x)
    total = FvuSum(moments.mean)
    for x in shards():
        x = x.to(device)
        total.add(x, encode_batched(sae, x).reconstruction.float())
    return total.value_of(reading)


def run(ctx: RunContext, folder) -> dict:
    activations = ctx.stage_dirs["activations"]
    base_saes = load_stage_saes(ctx, "base")
    chat_saes = load_stage_saes(ctx, "chat") if ctx.results["saes"]["chat"] else {}
    reading = ctx.config.paper_readings.fvu_reading
    result: dict = {"settings": list(SETTINGS), "fvu_reading": reading,
                    "outlier_rule": ctx.config.paper_readings.outlier_rule, "hookpoints": {}}
    for hookpoint in ctx.track(ctx.config.hookpoints, "transfer FVU", len(ctx.config.hookpoints)):
        masks = {data: shard_masks(ctx, base_saes[hookpoint], activations, data, hookpoint) for data in ("base", "chat")}
        row = {
            name: set_fvu(base_saes[hookpoint], activations, model, data, hookpoint, ctx.device, reading=reading,
                          keep=masks[data])
            for name, (model, data) in SETTINGS.items()
        }
        entry = {"base_sae": row, "outliers_left_out": {data: left_out(m) for data, m in masks.items()}}
        if hookpoint in chat_saes:
            entry["chat_sae"] = {
                "C-LLM+C-Data": set_fvu(chat_saes[hookpoint], activations, "chat", "chat", hookpoint, ctx.device,
                                        reading=reading, keep=masks["chat"])
            }
        result["hookpoints"][hookpoint] = entry
    return result
