"""Arditi et al.'s choice of the refusal direction among positions and layers.

The paper reads the direction at one fixed place (the last template token, the middle layer);
Arditi et al. (2024, `select_direction`) compute a difference-in-means candidate at every
post-instruction position and layer and keep the one that best bypasses refusal when ablated,
among those that (a) still induce refusal when added to harmless prompts (refusal log-odds
above 0), (b) barely change harmless next-token distributions when ablated (KL below 0.1) and
(c) do not come from the last 20 % of the layers. Scores are the refusal log-odds of the first
response token (`refusal.refusal_token_probability` on the prompt pass's logits), so no
generation is needed.

Positions are offsets from the readout token (−1 = the readout itself, the last token before
the response). Layers are sparsify hookpoints: ``layers.N`` is the output of block N, Arditi's
``resid_pre`` of block N + 1, and the pruning reads it so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from featuredrift.lm.capture import capture_activations, encode_prompts, pad_id_of, pad_token_lists
from featuredrift.lm.hookpoints import layer_index, num_layers
from featuredrift.monitor.interventions import activation_addition, directional_ablation
from featuredrift.monitor.kl import next_token_kl
from featuredrift.monitor.metrics import EmptySetError, MetricInputError
from featuredrift.monitor.refusal import log_odds, refusal_token_probability

KL_THRESHOLD = 0.1
INDUCE_THRESHOLD = 0.0
PRUNE_LAYER_FRACTION = 0.2


class CandidateScore(NamedTuple):
    position: int
    """Offset from the readout token (−1 = the readout)."""
    hookpoint: str
    bypass: float
    """Mean refusal log-odds on harmful prompts with the candidate ablated everywhere (lower = better)."""
    induce: float
    """Mean refusal log-odds on harmless prompts with the candidate added at its layer."""
    kl: float
    """Mean KL of harmless prompts' first-token distributions, ablated vs not."""
    kept: bool
    reason: str | None
    """Why a candidate was filtered out (None when kept)."""


class DirectionSelection(NamedTuple):
    position: int
    hookpoint: str
    direction: Tensor
    candidates: list[CandidateScore]
    baseline_harmful: float
    """Mean refusal log-odds on harmful prompts without intervention."""
    baseline_harmless: float


def select_refusal_direction(
    model: nn.Module,
    tokenizer,
    candidates: dict[tuple[int, str], Tensor],
    harmful: Sequence[str],
    harmless: Sequence[str],
    refusal_tokens: Sequence[int],
    *,
    prompt_format: str = "chat",
    kl_threshold: float = KL_THRESHOLD,
    induce_threshold: float = INDUCE_THRESHOLD,
    prune_layer_fraction: float = PRUNE_LAYER_FRACTION,
    batch_size: int = 16,
) -> DirectionSelection:
    """The candidate ``(position, hookpoint) → direction`` Arditi et al. would keep, scored on
    held-out `harmful`/`harmless` instructions; every candidate's scores are returned."""
    if not candidates:
        raise EmptySetError("candidates: expected at least one candidate direction, found none")
    if not harmful or not harmless:
        raise EmptySetError("harmful/harmless: expected validation prompts on both sides, found none")
    n_layers = num_layers(model)
    prune_from = int(n_layers * (1.0 - prune_layer_fraction))
    readout = _ReadoutLogits(model, tokenizer, prompt_format, batch_size)
    base_harmful = readout.logits(harmful)
    base_harmless = readout.logits(harmless)
    scores = []
    for (position, hookpoint), direction in candidates.items():
        with directional_ablation(model, direction):
            ablated_harmful, ablated_harmless = readout.logits(harmful), readout.logits(harmless)
        with activation_addition(model, hookpoint, direction):
            added_harmless = readout.logits(harmless)
        bypass = _mean_log_odds(ablated_harmful, refusal_tokens)
        induce = _mean_log_odds(added_harmless, refusal_tokens)
        kl = float(next_token_kl(base_harmless, ablated_harmless, dtype=torch.float64).mean())
        reason = None
        if any(math.isnan(v) for v in (bypass, induce, kl)):
            reason = "NaN score"
        elif prune_layer_fraction > 0 and layer_index(hookpoint) + 1 >= prune_from:
            reason = f"from the last {prune_layer_fraction:.0%} of layers"
        elif kl > kl_threshold:
            reason = f"KL {kl:.3f} > {kl_threshold}"
        elif induce < induce_threshold:
            reason = f"addition log-odds {induce:.2f} < {induce_threshold}"
        scores.append(CandidateScore(position, hookpoint, bypass, induce, kl, reason is None, reason))
    kept = [c for c in scores if c.kept]
    if not kept:
        raise EmptySetError(
            "candidates: every candidate direction was filtered out ("
            + "; ".join(f"{c.hookpoint}@{c.position}: {c.reason}" for c in scores) + ")"
        )
    best = min(kept, key=lambda c: c.bypass)
    return DirectionSelection(
        best.position, best.hookpoint, candidates[best.position, best.hookpoint], scores,
        _mean_log_odds(base_harmful, refusal_tokens), _mean_log_odds(base_harmless, refusal_tokens),
    )


def _mean_log_odds(logits: Tensor, refusal_tokens: Sequence[int]) -> float:
    return float(log_odds(refusal_token_probability(logits, list(refusal_tokens))).double().mean())


class _ReadoutLogits:
    """Next-token logits at each prompt's readout token (the response's first token), under
    whatever interventions are active around the call."""

    def __init__(self, model: nn.Module, tokenizer, prompt_format: str, batch_size: int):
        self.model, self.tokenizer, self.prompt_format, self.batch_size = model, tokenizer, prompt_format, batch_size
        self._encoded: dict[tuple[str, ...], list] = {}

    def logits(self, instructions: Sequence[str]) -> Tensor:
        key = tuple(instructions)
        if key not in self._encoded:
            self._encoded[key] = encode_prompts(self.tokenizer, list(instructions), self.prompt_format)
        prompts = self._encoded[key]
        if not prompts:
            raise MetricInputError("instructions: expected at least one prompt, found none")
        hookpoint = "layers.0"
        rows = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            tokens = pad_token_lists([p.input_ids for p in batch], pad_id_of(self.tokenizer), "left")
            width = tokens.input_ids.shape[1]
            readout = torch.tensor([width - len(p.input_ids) + p.readout for p in batch])
            out = capture_activations(self.model, *tokens, [hookpoint], return_logits=True)
            rows.append(out.logits[torch.arange(len(batch), device=out.logits.device), readout.to(out.logits.device)].float().cpu())
        return torch.cat(rows)
