"""Steering validation of KL-attributed latents (the "SAE on activation differences" post).

Attribution says which latent's addition would lower ``KL(p_ref ‖ p_cur)`` to first order;
steering checks it: the reference model is run with ``λv`` added at the hookpoint (every
position, `interventions.activation_addition`, the one hook mechanism) and the KL and the
probability of the current model's token are read again at the same position, for a few λ.
Rollout shares summarise sampled continuations of one fixed context (the post's hybrid-model
experiment: "42 % of 1,000 rollouts complete the context with *or concerns*").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from featuredrift.monitor.interventions import activation_addition
from featuredrift.monitor.kl import next_token_kl
from featuredrift.monitor.metrics import MetricInputError, check_tensor, row_chunks


class SteeringEffect(NamedTuple):
    """What adding ``λ·v_p`` at the hookpoint does at each position p, for every λ in `scales`."""

    scales: Tensor
    """[S] the λ values; the first is 0 (no steering)."""
    kl: Tensor
    """[P, S] ``KL(p_ref,λ ‖ p_cur)`` at each position for each λ."""
    target: Tensor
    """[P] the token whose probability is tracked (default: the current model's most likely one)."""
    target_probability: Tensor
    """[P, S] the steered reference's probability of `target`."""
    top_token: Tensor
    """[P, S] the steered reference's most likely next token."""

    @property
    def best(self) -> Tensor:
        """[P] index into `scales` of the λ with the lowest KL at each position (0: steering never helped)."""
        return self.kl.argmin(dim=1)

    @property
    def kl_change(self) -> Tensor:
        """[P] relative KL change at the best λ: ``KL(best)/KL(0) − 1`` (−0.5 = the post's "KL falls by 50 %")."""
        rows = torch.arange(self.kl.shape[0])
        return self.kl[rows, self.best] / self.kl[:, 0].clamp_min(1e-12) - 1.0


@torch.no_grad()
def steer_positions(
    model_ref: nn.Module,
    input_ids: Tensor,
    cur_at: Tensor,
    positions: Tensor,
    vectors: Tensor,
    hookpoint: str,
    scales: Sequence[float],
    *,
    attention_mask: Tensor | None = None,
    targets: Tensor | None = None,
    batch_size: int = 8,
) -> SteeringEffect:
    """Steer the reference model at each ``(row, t)`` of `positions` with its own vector
    (``vectors[p]``, e.g. the decoder row of the latent with the most negative attribution there)
    scaled by each λ of `scales`, and read the next-token distribution predicted at t.

    ``cur_at`` ``[P, V]`` are the current model's next-token logits (or log-probs) at each
    position of `input_ids` ``[B, T]``; a λ of 0 is always evaluated first (the unsteered KL)."""
    check_tensor("input_ids", input_ids, ndim=2, floating=False)
    check_tensor("cur_at", cur_at, ndim=2)
    check_tensor("vectors", vectors, ndim=2)
    if not isinstance(positions, Tensor) or positions.ndim != 2 or positions.shape[1] != 2:
        raise MetricInputError("positions: expected a [P, 2] tensor of (row, position) pairs")
    if vectors.shape[0] != positions.shape[0] or cur_at.shape[0] != positions.shape[0]:
        raise MetricInputError(f"vectors, cur_at: expected one row per position ({positions.shape[0]}), found "
                               f"{vectors.shape[0]} and {cur_at.shape[0]}")
    lambdas = [0.0, *(float(s) for s in scales if float(s) != 0.0)]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    positions = positions.long().cpu()
    rows_all, ts_all = positions[:, 0], positions[:, 1]
    if targets is None:
        targets = cur_at.argmax(-1).cpu()
    device = next(model_ref.parameters()).device
    was_training = model_ref.training
    model_ref.eval()
    kl = torch.empty(len(positions), len(lambdas))
    probability = torch.empty_like(kl)
    top = torch.empty(len(positions), len(lambdas), dtype=torch.long)
    try:
        for column, scale in enumerate(lambdas):
            for chunk in row_chunks(len(positions), batch_size):
                rows, ts = rows_all[chunk], ts_all[chunk]
                ids, mask = input_ids[rows].to(device), attention_mask[rows].to(device)
                if scale == 0.0:
                    logits = model_ref(input_ids=ids, attention_mask=mask, use_cache=False).logits
                else:
                    with activation_addition(model_ref, hookpoint, vectors[chunk].to(device), scale):
                        logits = model_ref(input_ids=ids, attention_mask=mask, use_cache=False).logits
                at = logits[torch.arange(len(rows), device=device), ts.to(device)].float()
                cur = cur_at[chunk].to(device).float()
                kl[chunk, column] = next_token_kl(at, cur).cpu()
                log_p = torch.log_softmax(at, dim=-1)
                probability[chunk, column] = log_p.gather(-1, targets[chunk, None].to(device)).squeeze(-1).exp().cpu()
                top[chunk, column] = at.argmax(-1).cpu()
    finally:
        model_ref.train(was_training)
    return SteeringEffect(torch.tensor(lambdas), kl, targets, probability, top)


class ContinuationShares(NamedTuple):
    """How sampled continuations of one context split."""

    num_rollouts: int
    target_share: float | None
    """Fraction of rollouts whose decoded continuation starts with the target (None: no target)."""
    top: list[tuple[str, float]]
    """The most common continuations (their first `tokens` tokens, decoded) and their shares."""


def continuation_shares(rollouts: Sequence[Sequence[int]], tokenizer, *, target: str | None = None,
                        tokens: int = 2, top: int = 5) -> ContinuationShares:
    """Shares of the first `tokens` tokens of each rollout (decoded, special tokens kept so an
    immediate end of turn counts as its own continuation), and of those starting with `target`."""
    if not rollouts:
        raise MetricInputError("rollouts: expected at least one rollout, found none")
    decoded = [tokenizer.decode(list(r[:tokens]), skip_special_tokens=False) for r in rollouts]
    full = [tokenizer.decode(list(r), skip_special_tokens=False) for r in rollouts] if target is not None else []
    counts = Counter(decoded)
    n = len(rollouts)
    share = sum(text.startswith(target) for text in full) / n if target is not None else None
    return ContinuationShares(n, share, [(text, count / n) for text, count in counts.most_common(top)])
