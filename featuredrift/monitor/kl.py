"""Next-token KL between a reference and a current model, KL attribution of SAE latents, and KL
dashboards (the "SAE on activation differences" post, steps 1–3).

* ``KL(p_ref ‖ p_cur)`` per position from two logits (or log-prob) tensors, with a summary
  (mean, p95) over masked positions;
* KL attribution: for chosen positions of an input, the derivative of the KL when every SAE
  latent's decoder vector ``v`` is added to the reference model's residual at the hookpoint,
  ``∂/∂λ KL(p_ref(x_l + λv) ‖ p_cur)|_{λ=0} = (∇_{x_l} KL) · v``: one forward/backward pass for
  a batch of positions, then one matmul with the decoder for all latents. It works with any
  decoder matrix (the base SAE, a diff-SAE);
* dataset-level attribution (`summed_kl_attribution`): the same derivative for the KL summed
  over many positions of whole sequences (a prompt set's response tokens), one backward per
  batch of rows;
* KL dashboard of a latent: the high-KL positions where it is among the most negative
  attributions, with the tokens the current model up-weights ``p_t log(p_t/p_0)`` and
  down-weights ``p_0 log(p_0/p_t)`` there. Plain data, no HTML.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featuredrift.lm.hookpoints import resolve_hookpoint
from featuredrift.monitor.interventions import map_hidden_states
from featuredrift.monitor.metrics import EmptySetError, MetricInputError, check_tensor, row_chunks

KL_CHUNK_ROWS = 1024


def _log_probs(x: Tensor, log_probs: bool, dtype: torch.dtype) -> Tensor:
    x = x.to(dtype)
    return x if log_probs else torch.log_softmax(x, dim=-1)


def next_token_kl(
    ref: Tensor,
    cur: Tensor,
    mask: Tensor | None = None,
    *,
    log_probs: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``KL(p_ref ‖ p_cur)`` of the next-token distributions at every position.

    ``ref``/``cur`` are logits (or log-probs with ``log_probs=True``) of shape ``[..., V]``; the
    result has shape ``[...]`` in ``dtype`` (float32 default, float64 for exact work), with 0 at
    positions where ``mask`` is False. Rows are processed in chunks to bound the ``V``-wide
    temporaries.
    """
    check_tensor("ref", ref)
    check_tensor("cur", cur)
    if ref.shape != cur.shape:
        raise MetricInputError(f"cur: expected the shape of ref {tuple(ref.shape)}, found {tuple(cur.shape)}")
    if ref.ndim < 1 or ref.shape[-1] == 0:
        raise MetricInputError(f"ref: expected [..., vocab] logits, found shape {tuple(ref.shape)}")
    lead = ref.shape[:-1]
    flat_ref, flat_cur = ref.reshape(-1, ref.shape[-1]), cur.reshape(-1, cur.shape[-1])
    kl = torch.empty(flat_ref.shape[0], dtype=dtype, device=ref.device)
    for rows in row_chunks(flat_ref.shape[0], KL_CHUNK_ROWS):
        log_p = _log_probs(flat_ref[rows], log_probs, dtype)
        log_q = _log_probs(flat_cur[rows].to(ref.device), log_probs, dtype)
        kl[rows] = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
    kl = kl.reshape(lead).clamp_min(0.0)  # rounding can make an exact 0 slightly negative
    if mask is not None:
        _check_position_mask(mask, lead)
        kl = torch.where(mask.to(kl.device), kl, 0.0)
    return kl


def _check_position_mask(mask, shape: torch.Size) -> None:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != shape:
        found = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise MetricInputError(f"mask: expected a bool tensor of shape {tuple(shape)}, found {found}")


class CompactLogProbs(NamedTuple):
    """Next-token distributions kept on a support: log-probs of `indices` plus the rest's mass.

    The reference keeps its own top-k tokens per position (k+1 numbers instead of a vocabulary:
    about 1 MB for 512 positions at k = 256 where Gemma's 256k vocabulary takes 0.5 GB in
    float32); a later model is read on the same support. KL over these k+1 bins is the KL of
    the coarsened distributions, a lower bound of the full KL (data-processing inequality)
    that equals it when k covers the vocabulary.
    """

    indices: Tensor
    """[N, k] int64 token ids of the support."""
    log_probs: Tensor
    """[N, k] float32 log-probabilities of those tokens."""
    rest_log_mass: Tensor
    """[N] float32 log of the probability of every other token (floored at 1e-30)."""

    def to(self, device) -> CompactLogProbs:
        return CompactLogProbs(*(t.to(device) for t in self))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self)


def compact_log_probs(logits: Tensor, top_k: int | None = None, support: Tensor | None = None) -> CompactLogProbs:
    """`[N, V]` logits kept as `CompactLogProbs`: on the `support` ids when given (a model read
    where the reference was), else on their own `top_k` tokens (None: the whole vocabulary)."""
    if logits.ndim == 2 and logits.shape[0] == 0:  # a batch past the KL positions: an empty block keeps the order
        k = support.shape[-1] if support is not None else min(top_k or logits.shape[-1], logits.shape[-1])
        empty = torch.empty(0, k, device=logits.device)
        return CompactLogProbs(empty.long(), empty, torch.empty(0, device=logits.device))
    check_tensor("logits", logits, ndim=2)
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    if support is None:
        k = log_probs.shape[-1] if top_k is None else min(int(top_k), log_probs.shape[-1])
        values, indices = log_probs.topk(k, dim=-1)
    else:
        if support.ndim != 2 or support.shape[0] != log_probs.shape[0]:
            raise MetricInputError(f"support: expected [{log_probs.shape[0]}, k] token ids, found {tuple(support.shape)}")
        indices = support.to(log_probs.device, torch.int64)
        values = log_probs.gather(-1, indices)
    return CompactLogProbs(indices, values, _log_rest(values))


def _log_rest(log_probs: Tensor) -> Tensor:
    """log(1 - Σ p) of the support; floored, since 1 - Σ p rounds to 0 or below at full support."""
    covered = torch.logsumexp(log_probs.double(), dim=-1)
    return (-torch.expm1(covered.clamp(max=0.0))).clamp_min(1e-30).log().float()


def compact_kl(ref: CompactLogProbs, cur: CompactLogProbs) -> Tensor:
    """Per-position KL(p_ref ‖ p_cur) over the support's k tokens and the rest bin, in nats."""
    if ref.indices.shape != cur.indices.shape or not torch.equal(ref.indices, cur.indices.to(ref.indices.device)):
        raise MetricInputError("cur: expected log-probs read on the reference's support (same token ids per position)")
    ref_bins = torch.cat([ref.log_probs, ref.rest_log_mass[:, None]], dim=-1).double()
    cur_bins = torch.cat([cur.log_probs, cur.rest_log_mass[:, None]], dim=-1).to(ref_bins)
    return (ref_bins.exp() * (ref_bins - cur_bins)).sum(-1).clamp_min(0.0).float()


class KLSummary(NamedTuple):
    mean: Tensor
    p95: Tensor
    max: Tensor
    num_positions: int


def summarise_kl(kl: Tensor, mask: Tensor | None = None) -> KLSummary:
    """Mean, 95th percentile (linear interpolation) and max of per-position KL over ``mask``."""
    check_tensor("kl", kl)
    if mask is not None:
        _check_position_mask(mask, kl.shape)
        kl = kl[mask.to(kl.device)]
    values = kl.flatten().double()
    if values.numel() == 0:
        raise EmptySetError("mask: expected at least one position to summarise KL over, found none")
    return KLSummary(values.mean(), torch.quantile(values, 0.95), values.max(), int(values.numel()))


def kl_summary(ref: Tensor, cur: Tensor, mask: Tensor | None = None, *, log_probs: bool = False) -> KLSummary:
    """``summarise_kl(next_token_kl(ref, cur, mask))`` over the masked (or all) positions."""
    kl = next_token_kl(ref, cur, mask, log_probs=log_probs)
    return summarise_kl(kl, mask)


class Positions(NamedTuple):
    index: Tensor
    """[n, kl.ndim] int64 coordinates (e.g. ``(row, position)``), highest KL first."""
    kl: Tensor
    """[n] their KL values."""


def high_kl_positions(kl: Tensor, mask: Tensor | None = None, n: int = 16) -> Positions:
    """The ``n`` highest-KL positions among the masked ones (fewer if fewer are masked in)."""
    check_tensor("kl", kl)
    if n <= 0:
        raise MetricInputError(f"n: expected a positive number of positions, found {n}")
    candidates = kl.double()
    if mask is not None:
        _check_position_mask(mask, kl.shape)
        if not bool(mask.any()):
            raise EmptySetError("mask: expected at least one candidate position, found none")
        candidates = torch.where(mask.to(kl.device), candidates, -torch.inf)
        n = min(n, int(mask.sum()))
    n = min(n, candidates.numel())
    values, flat = candidates.flatten().topk(n)
    index = torch.stack(torch.unravel_index(flat, kl.shape), dim=-1)
    return Positions(index, values.to(kl.dtype))


# --------------------------------------------------------------------------------------------
# KL attribution


class KLAttribution(NamedTuple):
    positions: Tensor
    """[P, 2] ``(row, position)`` pairs the KL was read at."""
    attribution: Tensor
    """[P, M] ``(∇_{x_l} KL) · v`` for every decoder row ``v``; negative = adding ``v`` moves the
    reference toward the current model."""
    gradient: Tensor
    """[P, d] ``∇_{x_l} KL`` (summed over intervened positions), float32 (float64 models: float64)."""
    kl: Tensor
    """[P] ``KL(p_ref ‖ p_cur)`` at each position."""
    log_probs_ref: Tensor
    """[P, V] reference next-token log-probs at each position (for dashboards)."""
    log_probs_cur: Tensor
    """[P, V] current next-token log-probs at each position."""


InterveneAt = Literal["all", "position"]


def kl_attribution(
    model_ref: nn.Module,
    input_ids: Tensor,
    logits_cur: Tensor,
    positions: Tensor,
    decoder: Tensor | nn.Module,
    hookpoint: str,
    *,
    attention_mask: Tensor | None = None,
    intervene_at: InterveneAt = "all",
    batch_size: int = 8,
) -> KLAttribution:
    """Attribution of every latent to ``KL(p_ref ‖ p_cur)`` at each chosen position.

    ``input_ids`` ``[B, T]`` go through ``model_ref``; ``logits_cur`` ``[B, T, V]`` are the current
    model's logits on the same inputs (held fixed). ``positions`` ``[P, 2]`` are ``(row, t)``
    pairs: the KL of the next-token distribution predicted at ``t``. ``decoder`` is ``[M, d]``
    (or an SAE with ``W_dec``).

    ``intervene_at="all"`` (default, as in the post: ``layers[l].output += λv``) adds ``λv`` at
    every position of the input, so the gradient is summed over positions ≤ t;
    ``"position"`` adds it only at ``t``. Each chosen position gets its own copy of its input
    row in a batch, so one backward pass per batch of ``batch_size`` positions gives exact
    per-position gradients (no cross-talk between positions of the same row).
    """
    W_dec = _checked_attribution_inputs(decoder, input_ids, logits_cur)
    positions = _check_positions(positions, input_ids.shape)
    if intervene_at not in ("all", "position"):
        raise MetricInputError(f"intervene_at: expected 'all' or 'position', found {intervene_at!r}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    block = resolve_hookpoint(model_ref, hookpoint)
    device = next(model_ref.parameters()).device
    was_training = model_ref.training
    model_ref.eval()
    gradients, kls, ref_rows, cur_rows = [], [], [], []
    try:
        for chunk in row_chunks(positions.shape[0], batch_size):
            rows, ts = positions[chunk, 0], positions[chunk, 1]
            grad, kl, log_p, log_q = _kl_gradient(
                model_ref, block, input_ids[rows].to(device), attention_mask[rows].to(device),
                logits_cur[rows, ts].to(device), ts.to(device), intervene_at,
            )
            gradients.append(grad)
            kls.append(kl)
            ref_rows.append(log_p)
            cur_rows.append(log_q)
    finally:
        model_ref.train(was_training)
    gradient = torch.cat(gradients)
    attribution = _project(gradient, W_dec)
    return KLAttribution(positions, attribution, gradient, torch.cat(kls), torch.cat(ref_rows), torch.cat(cur_rows))


def _checked_attribution_inputs(decoder, input_ids: Tensor, logits_cur: Tensor) -> Tensor:
    """The decoder matrix ``[M, d]`` (of an SAE or given), after checking the inputs' shapes."""
    W_dec = getattr(decoder, "W_dec", decoder)
    check_tensor("decoder", W_dec, ndim=2)
    check_tensor("input_ids", input_ids, ndim=2, floating=False)
    check_tensor("logits_cur", logits_cur, ndim=3)
    if logits_cur.shape[:2] != input_ids.shape:
        raise MetricInputError(
            f"logits_cur: expected [B, T, V] with B, T = {tuple(input_ids.shape)}, found {tuple(logits_cur.shape)}"
        )
    return W_dec


def _project(gradient: Tensor, W_dec: Tensor) -> Tensor:
    """``gradient @ W_decᵀ``: every latent's attribution, after checking the widths agree."""
    if gradient.shape[1] != W_dec.shape[1]:
        raise MetricInputError(f"decoder: expected rows of the residual width {gradient.shape[1]}, found {W_dec.shape[1]}")
    return gradient @ W_dec.detach().to(device=gradient.device, dtype=gradient.dtype).T


def _check_positions(positions, shape: torch.Size) -> Tensor:
    if not isinstance(positions, Tensor) or positions.ndim != 2 or positions.shape[1] != 2:
        found = tuple(positions.shape) if isinstance(positions, Tensor) else type(positions).__name__
        raise MetricInputError(f"positions: expected a [P, 2] tensor of (row, position) pairs, found {found}")
    if positions.shape[0] == 0:
        raise EmptySetError("positions: expected at least one position, found none")
    positions = positions.long().cpu()
    rows, ts = positions[:, 0], positions[:, 1]
    if int(rows.min()) < 0 or int(rows.max()) >= shape[0] or int(ts.min()) < 0 or int(ts.max()) >= shape[1]:
        raise MetricInputError(
            f"positions: expected rows in [0, {shape[0]}) and positions in [0, {shape[1]}), "
            f"found rows [{int(rows.min())}, {int(rows.max())}], positions [{int(ts.min())}, {int(ts.max())}]"
        )
    return positions


@contextlib.contextmanager
def _residual_delta(block: nn.Module) -> Iterator[dict[str, Tensor]]:
    """A zero ``delta`` (requiring grad) added to the block's output; yields where it is kept,
    so a backward pass reads ``∇_{x_l}`` of any objective of the forward."""
    captured: dict[str, Tensor] = {}

    def hook(_module, _args, output):
        def shift(x: Tensor) -> Tensor:
            delta = torch.zeros_like(x, requires_grad=True)
            captured["delta"] = delta
            return x + delta

        return map_hidden_states(output, shift)

    handle = block.register_forward_hook(hook, prepend=True)
    try:
        yield captured
    finally:
        handle.remove()


def _kl_gradient(model, block, input_ids, attention_mask, logits_cur, ts, intervene_at):
    """One forward/backward pass: ∇ of each copy's KL at its own position w.r.t. the residual."""
    batch = torch.arange(input_ids.shape[0], device=input_ids.device)
    with _residual_delta(block) as captured, torch.enable_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        dtype = torch.promote_types(logits.dtype, torch.float32)  # float32, or float64 models
        log_p = torch.log_softmax(logits[batch, ts].to(dtype), dim=-1)
        log_q = torch.log_softmax(logits_cur.detach().to(dtype), dim=-1)
        kl = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
        (grad,) = torch.autograd.grad(kl.sum(), captured["delta"])
    grad = grad.to(dtype)
    grad = grad.sum(1) if intervene_at == "all" else grad[batch, ts]
    return grad, kl.detach(), log_p.detach(), log_q


class SummedAttribution(NamedTuple):
    """Attribution of every latent to the KL summed over chosen positions of whole sequences
    (the post's dataset-level attribution: the KL over the chat model's response tokens)."""

    attribution: Tensor
    """[M] ``(∇_{x_l} Σ KL) · v`` summed over every row: negative = adding ``v`` everywhere
    moves the reference toward the current model over the whole set."""
    per_row: Tensor
    """[B, M] the same per row (one prompt and its response)."""
    gradient: Tensor
    """[d] ``∇_{x_l} Σ KL`` summed over rows and intervened positions."""
    kl: Tensor
    """[B] ``Σ_t KL(p_ref ‖ p_cur)`` over each row's chosen positions."""
    num_positions: int


def summed_kl_attribution(
    model_ref: nn.Module,
    input_ids: Tensor,
    logits_cur: Tensor,
    mask: Tensor,
    decoder: Tensor | nn.Module,
    hookpoint: str,
    *,
    attention_mask: Tensor | None = None,
    batch_size: int = 8,
) -> SummedAttribution:
    """Attribution of every latent to ``Σ_t KL(p_ref(x_l + λv) ‖ p_cur)`` over the positions
    ``mask`` selects (``[B, T]`` bool: position t predicts token t+1, so a response's tokens are
    selected from the last prompt token to the one before the last response token).

    ``λv`` is added at every position (as `kl_attribution`'s default ``intervene_at="all"``), so
    the result equals the sum of `kl_attribution`'s per-position attributions over the selected
    positions, in one backward pass per batch of rows instead of one per position.
    """
    W_dec = _checked_attribution_inputs(decoder, input_ids, logits_cur)
    _check_position_mask(mask, input_ids.shape)
    if not bool(mask.any()):
        raise EmptySetError("mask: expected at least one position to attribute the KL of, found none")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    block = resolve_hookpoint(model_ref, hookpoint)
    device = next(model_ref.parameters()).device
    was_training = model_ref.training
    model_ref.eval()
    gradients, kls = [], []
    try:
        for rows in row_chunks(input_ids.shape[0], batch_size):
            chosen = mask[rows].to(device)
            with _residual_delta(block) as captured, torch.enable_grad():
                logits = model_ref(input_ids=input_ids[rows].to(device), attention_mask=attention_mask[rows].to(device),
                                   use_cache=False).logits
                dtype = torch.promote_types(logits.dtype, torch.float32)
                kl = next_token_kl(logits, logits_cur[rows].to(device).detach(), chosen, dtype=dtype)
                per_row = kl.sum(-1)
                (grad,) = torch.autograd.grad(per_row.sum(), captured["delta"])
            gradients.append(grad.to(dtype).sum(1))
            kls.append(per_row.detach())
    finally:
        model_ref.train(was_training)
    gradient = torch.cat(gradients)
    per_row = _project(gradient, W_dec)
    return SummedAttribution(per_row.sum(0), per_row, gradient.sum(0), torch.cat(kls), int(mask.sum()))


# --------------------------------------------------------------------------------------------
# KL dashboards


class TokenShift(NamedTuple):
    token_id: int
    token: str | None
    value: float
    """``p_t log(p_t/p_0)`` (up-weighted) or ``p_0 log(p_0/p_t)`` (down-weighted)."""


class DashboardRow(NamedTuple):
    row: int
    position: int
    kl: float
    attribution: float
    rank: int
    """0 = the most negative attribution at this position."""
    top_ref: TokenShift
    """The reference model's most likely next token (value: its probability)."""
    top_cur: TokenShift
    """The current model's most likely next token (value: its probability)."""
    upweighted: list[TokenShift]
    downweighted: list[TokenShift]


def token_shifts(log_p_ref: Tensor, log_p_cur: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top-``n`` up-weighted ``p_t log(p_t/p_0)`` and down-weighted ``p_0 log(p_0/p_t)`` tokens
    of each row: ``(up_values, up_ids, down_values, down_ids)``, each ``[P, n]``."""
    up = log_p_cur.exp() * (log_p_cur - log_p_ref)
    down = log_p_ref.exp() * (log_p_ref - log_p_cur)
    up_values, up_ids = up.topk(n, dim=-1)
    down_values, down_ids = down.topk(n, dim=-1)
    return up_values, up_ids, down_values, down_ids


def kl_dashboard(
    result: KLAttribution,
    latent: int,
    *,
    top_rank: int = 3,
    num_up: int = 3,
    num_down: int = 2,
    tokenizer=None,
) -> list[DashboardRow]:
    """The KL dashboard of one latent: positions (highest KL first) where it is among the
    ``top_rank`` most negative attributions, with the tokens most up- and down-weighted by the
    current model there. Token strings are filled in when a tokenizer is given."""
    num_latents = result.attribution.shape[1]
    if not 0 <= latent < num_latents:
        raise MetricInputError(f"latent: expected an index in [0, {num_latents}), found {latent}")
    own = result.attribution[:, latent : latent + 1]
    rank = (result.attribution < own).sum(1)
    selected = ((rank < top_rank) & (own.squeeze(1) < 0)).nonzero().squeeze(1)
    if selected.numel() == 0:
        return []
    selected = selected[result.kl[selected].argsort(descending=True)]
    log_p, log_q = result.log_probs_ref[selected], result.log_probs_cur[selected]
    up_v, up_i, down_v, down_i = token_shifts(log_p, log_q, max(num_up, num_down))
    ref_p, ref_i = log_p.exp().max(-1)
    cur_p, cur_i = log_q.exp().max(-1)
    data = {
        name: t.tolist()
        for name, t in dict(
            pos=result.positions[selected.cpu()], kl=result.kl[selected], attr=own[selected, 0], rank=rank[selected],
            up_v=up_v[:, :num_up], up_i=up_i[:, :num_up], down_v=down_v[:, :num_down], down_i=down_i[:, :num_down],
            ref_p=ref_p, ref_i=ref_i, cur_p=cur_p, cur_i=cur_i,
        ).items()
    }

    def shift(token_id: int, value: float) -> TokenShift:
        text = tokenizer.decode([token_id]) if tokenizer is not None else None
        return TokenShift(int(token_id), text, float(value))

    return [
        DashboardRow(
            row=data["pos"][j][0],
            position=data["pos"][j][1],
            kl=data["kl"][j],
            attribution=data["attr"][j],
            rank=data["rank"][j],
            top_ref=shift(data["ref_i"][j], data["ref_p"][j]),
            top_cur=shift(data["cur_i"][j], data["cur_p"][j]),
            upweighted=[shift(i, v) for i, v in zip(data["up_i"][j], data["up_v"][j], strict=True)],
            downweighted=[shift(i, v) for i, v in zip(data["down_i"][j], data["down_v"][j], strict=True)],
        )
        for j in range(len(data["kl"]))
    ]


def most_negative_latents(result: KLAttribution, n: int = 3) -> Tensor:
    """[P, n] the latents with the most negative attribution at each position (step 3)."""
    if not 0 < n <= result.attribution.shape[1]:
        raise MetricInputError(f"n: expected 1 … {result.attribution.shape[1]}, found {n}")
    return (-result.attribution).topk(n, dim=1).indices
