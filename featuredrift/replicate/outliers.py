"""The paper's outlier rule over activation shards (`paper_readings.outlier_rule='quantile'`).

The paper's code keeps the token pairs whose chat-model per-token FVU (base SAE) and whose
MSE(x_chat, x_base) are both below their 99.8 % quantile, per layer and data set, and computes
every drift number on them. Here that is one pass over the paired shards at a hookpoint, giving
one keep-mask per shard (in `iter_paired`/`iter_model` order) for the stages to apply. Under
the `norm` rule the activations stage has already left its outliers out: no masks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from featuredrift.replicate.shards import iter_paired


def shard_masks(ctx, sae, folder, data: str, hookpoint: str) -> list[Tensor] | None:
    """Per-shard keep masks for (data, hookpoint), or None when the run reads the norm rule."""
    from featuredrift.monitor.metrics import (
        encode_batched,
        per_token_fvu,
        quantile_inliers,
        token_mse,
    )

    cfg = ctx.config
    if cfg.paper_readings.outlier_rule != "quantile":
        return None
    fvus, mses, counts = [], [], []
    for x_base, x_chat, _ in iter_paired(folder, data, hookpoint):
        x_chat_device = x_chat.to(ctx.device)
        recon = encode_batched(sae, x_chat_device).reconstruction.float()
        fvus.append(per_token_fvu(x_chat_device, recon).cpu())
        mses.append(token_mse(x_base, x_chat).cpu())
        counts.append(x_base.shape[0])
    keep = quantile_inliers(torch.cat(fvus), torch.cat(mses), q=cfg.outlier_quantile)
    return list(torch.split(keep, counts))


def left_out(masks: list[Tensor] | None) -> int:
    return 0 if masks is None else int(sum(int((~m).sum()) for m in masks))
