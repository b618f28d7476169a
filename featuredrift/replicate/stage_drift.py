"""Stage `drift` (§4, Fig. 3, Appx. B): on paired base/chat activations of the same tokens,
the divergent fraction (cos < τ), the Explained Ratio (scaled by each model's σ) and the
Intersection Ratio of active base-SAE features, per hookpoint and data set."""

from __future__ import annotations

from featuredrift.replicate.context import RunContext
from featuredrift.replicate.saes import load_stage_saes
from featuredrift.replicate.shards import iter_model, iter_paired
from featuredrift.replicate.stage_activations import DATA_FIELDS
from featuredrift.replicate.streaming import DriftSum, MomentSum


def drift_of(sae, folder, data: str, hookpoint: str, threshold: float, device, readings=None) -> dict:
    """Drift of one (hookpoint, data set); `readings` (`PaperReadings`) picks ER's scale and headline."""
    from featuredrift.monitor.metrics import encode_batched, intersection_ratio

    scales = {}
    for model in ("base", "chat"):
        moments = MomentSum()
        for x in iter_model(folder, model, data, hookpoint):
            moments.add(x)
        scales[model] = moments.scale_for(readings.scale_reading if readings else "sigma")
    total = DriftSum(scales["base"], scales["chat"], threshold, readings.er_aggregate if readings else "ratio_of_sums")
    for x_base, x_chat, _ in iter_paired(folder, data, hookpoint):
        x_base, x_chat = x_base.to(device), x_chat.to(device)
        codes_base, codes_chat = encode_batched(sae, x_base), encode_batched(sae, x_chat)
        ir = intersection_ratio(codes_base.top_indices, codes_chat.top_indices, codes_base.top_acts, codes_chat.top_acts)
        total.add(x_base, x_chat, codes_chat.reconstruction.float(), ir.per_token)
    return total.summary()


def run(ctx: RunContext, folder) -> dict:
    activations = ctx.stage_dirs["activations"]
    saes = load_stage_saes(ctx, "base")
    cfg = ctx.config
    result: dict = {"threshold": cfg.divergence_threshold, "paper_readings": cfg.paper_readings.model_dump(), "hookpoints": {}}
    for hookpoint in ctx.track(cfg.hookpoints, "feature drift", len(cfg.hookpoints)):
        result["hookpoints"][hookpoint] = {
            data: drift_of(saes[hookpoint], activations, data, hookpoint, cfg.divergence_threshold, ctx.device,
                           cfg.paper_readings)
            for data in DATA_FIELDS
        }
    return result
