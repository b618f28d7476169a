"""Stage `drift` (§4, Fig. 3, Appx. B): on paired base/chat activations of the same tokens,
the divergent fraction (cos < τ), the Explained Ratio (scaled by each model's scale) and the
Intersection Ratio of active base-SAE features, per hookpoint and data set. The paper readings
pick ER's scale and headline, the IR's feature sets and the outlier rule."""

from __future__ import annotations

from featuredrift.replicate.context import RunContext
from featuredrift.replicate.outliers import left_out, shard_masks
from featuredrift.replicate.saes import load_stage_saes
from featuredrift.replicate.shards import iter_model, iter_paired
from featuredrift.replicate.stage_activations import DATA_FIELDS
from featuredrift.replicate.streaming import DriftSum, MomentSum


def drift_of(sae, folder, data: str, hookpoint: str, threshold: float, device, readings=None,
             keep: list | None = None) -> dict:
    """Drift of one (hookpoint, data set); `readings` (`PaperReadings`) picks ER's scale and
    headline and the IR's sets; `keep` (per-shard masks) the token pairs read. Scales are each
    model's over every token (the paper's code estimates them before it drops outliers)."""
    from featuredrift.monitor.metrics import encode_batched, intersection_ratio

    scales = {}
    for model in ("base", "chat"):
        moments = MomentSum()
        for x in iter_model(folder, model, data, hookpoint):
            moments.add(x)
        scales[model] = moments.scale_for(readings.scale_reading if readings else "sigma")
    total = DriftSum(scales["base"], scales["chat"], threshold, readings.er_aggregate if readings else "ratio_of_sums")
    ir_reading = readings.ir_reading if readings else "active"
    for index, (x_base, x_chat, _) in enumerate(iter_paired(folder, data, hookpoint)):
        if keep is not None:
            x_base, x_chat = x_base[keep[index]], x_chat[keep[index]]
        if x_base.shape[0] == 0:
            continue
        x_base, x_chat = x_base.to(device), x_chat.to(device)
        codes_base, codes_chat = encode_batched(sae, x_base), encode_batched(sae, x_chat)
        ir = intersection_ratio(codes_base.top_indices, codes_chat.top_indices, codes_base.top_acts, codes_chat.top_acts,
                                reading=ir_reading)
        total.add(x_base, x_chat, codes_chat.reconstruction.float(), ir.per_token)
    return {**total.summary(), "outliers_left_out": left_out(keep)}


def run(ctx: RunContext, folder) -> dict:
    activations = ctx.stage_dirs["activations"]
    saes = load_stage_saes(ctx, "base")
    cfg = ctx.config
    result: dict = {"threshold": cfg.divergence_threshold, "paper_readings": cfg.paper_readings.model_dump(), "hookpoints": {}}
    for hookpoint in ctx.track(cfg.hookpoints, "feature drift", len(cfg.hookpoints)):
        result["hookpoints"][hookpoint] = {
            data: drift_of(saes[hookpoint], activations, data, hookpoint, cfg.divergence_threshold, ctx.device,
                           cfg.paper_readings, shard_masks(ctx, saes[hookpoint], activations, data, hookpoint))
            for data in DATA_FIELDS
        }
    return result
