"""Shard-by-shard accumulation of the paper's token-set metrics, for token sets too large to
hold in memory. Pure tensor code: every `add` takes one shard's tensors; totals are float64.

The reported numbers equal `monitor.metrics` on the concatenated shards (tests check this):
FVU is Σ‖x − x̂‖² / Σ‖x − mean(x)‖² with the mean of the whole set (first pass: `MomentSum`), or
the mean of per-token FVUs (`fvu_reading='per_token'`);
ER is Σ unexplained / Σ divergence over divergent tokens of the whole set (or the per-token
median or mean: `er_aggregate`), on activations scaled by each model's scale over the whole set
(`metrics.scale_for`'s readings; σ = sqrt(E‖x‖²) by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class MomentSum:
    """Σx, Σ‖x‖² and Σ‖x‖ over tokens: the mean (for FVU) and the scale (for ER)."""

    count: int = 0
    total: Tensor | None = None
    squared: float = 0.0
    norms: float = 0.0

    def add(self, x: Tensor) -> None:
        x64 = x.double()
        self.total = x64.sum(0) if self.total is None else self.total + x64.sum(0)
        self.squared += float(x64.pow(2).sum())
        self.norms += float(x64.norm(dim=1).sum())
        self.count += x.shape[0]

    @property
    def mean(self) -> Tensor:
        return self.total / self.count

    @property
    def scale(self) -> float:
        return (self.squared / self.count) ** 0.5

    def scale_for(self, reading: str = "sigma") -> float:
        """`metrics.scale_for` over the whole set: sigma, energy (E‖x‖²) or unit_norm (mean‖x‖/√d)."""
        from featuredrift.monitor.metrics import SCALE_READINGS

        if reading == "sigma":
            return self.scale
        if reading == "energy":
            return self.squared / self.count
        if reading == "unit_norm":
            return self.norms / self.count / self.total.shape[0] ** 0.5
        raise ValueError(f"scale reading: expected one of {SCALE_READINGS}, found {reading!r}")


@dataclass
class FvuSum:
    """Σ‖x − x̂‖² and Σ‖x − μ‖² given the whole set's mean μ (the batch FVU), and the sum of
    per-token FVUs (the paper code's reading, `metrics.per_token_fvu`)."""

    mean: Tensor
    error: float = 0.0
    variance: float = 0.0
    per_token_sum: float = 0.0
    tokens: int = 0

    def add(self, x: Tensor, x_hat: Tensor) -> None:
        from featuredrift.monitor.metrics import per_token_fvu

        x64 = x.double()
        self.error += float((x64 - x_hat.double()).pow(2).sum())
        self.variance += float((x64 - self.mean.to(x.device)).pow(2).sum())
        if x.shape[0]:
            self.per_token_sum += float(per_token_fvu(x, x_hat).sum())
        self.tokens += x.shape[0]

    @property
    def value(self) -> float:
        return self.error / self.variance

    def value_of(self, reading: str = "batch") -> float:
        """`metrics.fvu_of` over the whole set: 'batch' or 'per_token'."""
        from featuredrift.monitor.metrics import FVU_READINGS

        if reading == "batch":
            return self.value
        if reading == "per_token":
            return self.per_token_sum / self.tokens
        raise ValueError(f"FVU reading: expected one of {FVU_READINGS}, found {reading!r}")


@dataclass
class DriftSum:
    """Divergent fraction, ER (ratio and per-token median) and IR over paired shards."""

    scale_base: float
    scale_chat: float
    threshold: float
    aggregate: str = "ratio_of_sums"  # the headline ER: ratio_of_sums, median or mean
    tokens: int = 0
    divergent: int = 0
    unexplained: float = 0.0
    divergence: float = 0.0
    per_token_er: list[Tensor] = field(default_factory=list)
    ir_all: float = 0.0
    ir_divergent: float = 0.0
    cosine_sum: float = 0.0

    def add(self, x_base: Tensor, x_chat: Tensor, x_chat_hat: Tensor, ir_per_token: Tensor) -> None:
        from featuredrift.monitor.metrics import divergent_mask, paired_cosine

        mask = divergent_mask(x_base, x_chat, self.threshold)
        self.cosine_sum += float(paired_cosine(x_base, x_chat).double().sum())
        self.tokens += x_base.shape[0]
        self.divergent += int(mask.sum())
        self.ir_all += float(ir_per_token.double().sum())
        if bool(mask.any()):
            a0 = x_base[mask].double() / self.scale_base
            at = x_chat[mask].double() / self.scale_chat
            at_hat = x_chat_hat[mask].double() / self.scale_chat
            unexplained = (at - at_hat).pow(2).sum(-1)
            divergence = (at - a0).pow(2).sum(-1)
            self.unexplained += float(unexplained.sum())
            self.divergence += float(divergence.sum())
            self.per_token_er.append((unexplained / divergence.clamp_min(1e-30)).float())
            self.ir_divergent += float(ir_per_token[mask.to(ir_per_token.device)].double().sum())

    def summary(self) -> dict:
        ratios = torch.cat(self.per_token_er) if self.per_token_er else torch.empty(0)
        nan = float("nan")
        readings = {
            "ratio_of_sums": self.unexplained / self.divergence if self.divergence > 0 else nan,
            "median": float(ratios.median()) if ratios.numel() else nan,
            "mean": float(ratios.double().mean()) if ratios.numel() else nan,
        }
        return {
            "tokens": self.tokens,
            "divergent_tokens": self.divergent,
            "divergent_fraction": self.divergent / self.tokens if self.tokens else nan,
            "mean_cosine": self.cosine_sum / self.tokens if self.tokens else nan,
            "explained_ratio": readings[self.aggregate],
            "explained_ratio_aggregate": self.aggregate,
            "explained_ratio_ratio_of_sums": readings["ratio_of_sums"],
            "explained_ratio_median": readings["median"],
            "explained_ratio_mean": readings["mean"],
            "intersection_ratio_divergent": self.ir_divergent / self.divergent if self.divergent else nan,
            "intersection_ratio_all": self.ir_all / self.tokens if self.tokens else nan,
            "scale_base": self.scale_base,
            "scale_chat": self.scale_chat,
        }
