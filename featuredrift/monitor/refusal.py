"""Refusal analysis (§5, Appx. C): the refusal direction, feature difference-in-means, the
refusal features, and their non-negative reconstruction of the direction. Pure functions.

Activations here are one vector per prompt (the last token before the response); codes are
either dense ``[prompts, M]`` tensors or top-k ``(acts, indices)`` pairs from the SAE.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from scipy.optimize import nnls
from torch import Tensor

from featuredrift.monitor.metrics import (
    EmptySetError,
    MetricInputError,
    SaeCodes,
    _check_codes,
    check_tensor,
    row_chunks,
)

Codes = Tensor | tuple[Tensor, Tensor] | SaeCodes
"""Dense SAE codes ``[N, M]``, a top-k pair ``(top_acts, top_indices)`` (each ``[N, k]``), or
the :class:`~monitor.metrics.SaeCodes` of :func:`~monitor.metrics.encode_batched`."""


def refusal_token_probability(logits: Tensor, token_ids: Sequence[int]) -> Tensor:
    """Per prompt, the probability that the response starts with a refusal token, from the
    `[N, V]` next-token logits at each prompt's last position: one forward pass, no generation."""
    check_tensor("logits", logits, ndim=2)
    if not token_ids:
        raise MetricInputError("token_ids: expected at least one refusal-starting token id, found none")
    ids = torch.as_tensor(list(token_ids), device=logits.device)
    return torch.softmax(logits.float(), dim=-1)[:, ids].sum(-1)


def log_odds(probability: Tensor, eps: float = 1e-6) -> Tensor:
    """log(p / (1 - p)), the refusal metric of Arditi et al., with p kept inside (eps, 1 - eps)."""
    p = probability.double().clamp(eps, 1 - eps)
    return (p.log() - (-p).log1p()).float()


def refusal_direction(x_harmful: Tensor, x_harmless: Tensor) -> Tensor:
    """``r = mean(x | harmful) − mean(x | harmless)`` (Eqs. 7–9), accumulated and returned in
    float64 on the inputs' device."""
    check_tensor("x_harmful", x_harmful, ndim=2)
    check_tensor("x_harmless", x_harmless, ndim=2)
    if x_harmful.shape[1] != x_harmless.shape[1]:
        raise MetricInputError(
            f"x_harmless: expected width {x_harmful.shape[1]} (as x_harmful), found {x_harmless.shape[1]}"
        )
    return x_harmful.double().mean(0) - x_harmless.double().mean(0).to(x_harmful.device)


def _checked_codes(codes: Codes, num_latents: int, name: str) -> Tensor | tuple[Tensor, Tensor]:
    """`codes` as a dense ``[N, M]`` tensor or a top-k ``(acts, indices)`` pair, checked against
    `num_latents`; errors name the argument."""
    if isinstance(codes, Tensor):
        check_tensor(name, codes, ndim=2)
        if codes.shape[1] != num_latents:
            raise MetricInputError(f"{name}: expected {num_latents} latents, found {codes.shape[1]}")
        return codes
    if isinstance(codes, SaeCodes):
        codes = (codes.top_acts, codes.top_indices)
    if not (isinstance(codes, tuple | list) and len(codes) == 2):
        raise MetricInputError(
            f"{name}: expected a dense [N, M] tensor or a (top_acts, top_indices) pair, found {type(codes).__name__}"
        )
    top_acts, top_indices = codes
    try:
        _check_codes(top_acts, top_indices, num_latents)
    except MetricInputError as error:
        raise type(error)(f"{name}: {error}") from None
    return top_acts, top_indices


def mean_codes(codes: Codes, num_latents: int, *, name: str = "codes", chunk_rows: int = 4096) -> Tensor:
    """Mean dense code ``mean(z)`` over prompts (float64 [M]). Top-k codes are scattered into the
    sum directly; dense codes are summed in row chunks."""
    codes = _checked_codes(codes, num_latents, name)
    if isinstance(codes, Tensor):
        total = codes.new_zeros(num_latents, dtype=torch.float64)
        for rows in row_chunks(codes.shape[0], chunk_rows):
            total += codes[rows].double().sum(0)
        return total / codes.shape[0]
    top_acts, top_indices = codes
    total = top_acts.new_zeros(num_latents, dtype=torch.float64)
    total.scatter_add_(0, top_indices.long().flatten(), top_acts.double().flatten())
    return total / top_acts.shape[0]


def feature_diff_in_means(z_harmful: Codes, z_harmless: Codes, num_latents: int | None = None) -> Tensor:
    """``d̄ = mean(z | harmful) − mean(z | harmless)`` over dense SAE codes (Appx. C.2), float64 [M].
    ``num_latents`` is required for top-k codes and inferred from dense ones."""
    if num_latents is None:
        if not isinstance(z_harmful, Tensor):
            raise MetricInputError("num_latents: required when the codes are (top_acts, top_indices) pairs")
        num_latents = z_harmful.shape[-1]
    harmful = mean_codes(z_harmful, num_latents, name="z_harmful")
    harmless = mean_codes(z_harmless, num_latents, name="z_harmless")
    return harmful - harmless.to(harmful.device)


def feature_columns(codes: Codes, features: Tensor, num_latents: int, *, name: str = "codes") -> Tensor:
    """The dense codes of `features` only, float64 ``[N, len(features)]`` (0 where a feature is
    not among a prompt's top-k), without building the full ``[N, M]`` matrix."""
    features = torch.as_tensor(features, dtype=torch.long).flatten()
    codes = _checked_codes(codes, num_latents, name)
    if isinstance(codes, Tensor):
        return codes[:, features.to(codes.device)].double()
    top_acts, top_indices = codes
    hits = top_indices.long().unsqueeze(-1) == features.to(top_indices.device)  # [N, k, F]
    return (hits * top_acts.double().unsqueeze(-1)).sum(1)


def feature_separation(z_harmful: Codes, z_harmless: Codes, features: Tensor, num_latents: int) -> float:
    """Standardised difference (Cohen's d) of the summed activation of `features` between
    harmful and harmless prompts: how many pooled standard deviations more the feature set
    fires on harmful ones.

    The gap ``d̄`` is in the SAE's activation units, which differ by orders of magnitude between
    SAEs; d is not, so one alert threshold fits every SAE. The set is scored as a sum because
    refusal is often spread over several features that each separate weakly (the zoo's tiny
    chat model: mean per-feature d 0.38 over 32 features, d of their sum 1.79). NaN when there
    is no feature or fewer than two prompts on a side: a spread needs two.
    """
    features = torch.as_tensor(features, dtype=torch.long).flatten()
    if features.numel() == 0:
        return float("nan")
    harmful = feature_columns(z_harmful, features, num_latents, name="z_harmful").sum(1)
    harmless = feature_columns(z_harmless, features, num_latents, name="z_harmless").sum(1).to(harmful.device)
    if harmful.numel() < 2 or harmless.numel() < 2:
        return float("nan")
    spread = float(((harmful.var() + harmless.var()) / 2).sqrt())
    return float(harmful.mean() - harmless.mean()) / spread if spread > 0 else 0.0


REFUSAL_FEATURE_READINGS = ("positive", "top_k")
DECODER_NORM_READINGS = ("as_trained", "folded")


def top_refusal_features(dbar: Tensor, k: int, *, strict: bool = True, reading: str = "positive") -> Tensor:
    """``S_k``: indices of the ``k`` largest *positive* entries of ``d̄``, largest first.

    Only positive entries qualify (features more active on harmful than on harmless prompts).
    With ``strict`` (default) fewer than ``k`` positive entries raise, because a silently
    shorter ``S_k`` would make Table 1 rows for different ``k`` incomparable; with
    ``strict=False`` only the positive ones are returned (possibly none: an empty tensor).
    ``reading="top_k"`` is the paper's code (``diff_in_means.topk(k)``): always ``k`` indices,
    the tail of which may be features that never fire (d̄ = 0) or fire more on harmless prompts;
    their decoder vectors still enter the NNLS fit, which can only raise its cosine.
    """
    check_tensor("dbar", dbar, ndim=1)
    if not 0 < k <= dbar.shape[0]:
        raise MetricInputError(f"k: expected 1 … {dbar.shape[0]} (the number of features), found {k}")
    if reading not in REFUSAL_FEATURE_READINGS:
        raise MetricInputError(f"refusal feature reading: expected one of {REFUSAL_FEATURE_READINGS}, found {reading!r}")
    values, indices = dbar.topk(k)
    if reading == "top_k":
        return indices
    num_positive = int((values > 0).sum())
    if num_positive < k:
        if strict:
            raise MetricInputError(
                f"k: expected at most the {num_positive} positive entries of dbar, found k={k} "
                "(pass strict=False to use only the positive ones)"
            )
        indices = indices[:num_positive]
    return indices


def fold_decoder_norms(dbar: Tensor, W_dec: Tensor, reading: str = "as_trained") -> Tensor:
    """``d̄`` as an SAE with its decoder norms folded into the codes would give it (the paper's
    code calls SAELens's ``fold_W_dec_norm()`` before the diff-in-means): ``d̄_j · ‖W_dec[j]‖``.
    A no-op for unit-norm decoders (sparsify); Gemma Scope's JumpReLU decoders are not unit-norm,
    so folding re-ranks the features. ``reading="as_trained"`` returns ``d̄`` unchanged."""
    if reading == "as_trained":
        return dbar
    if reading != "folded":
        raise MetricInputError(f"decoder norm reading: expected one of {DECODER_NORM_READINGS}, found {reading!r}")
    check_tensor("W_dec", W_dec, ndim=2)
    if W_dec.shape[0] != dbar.shape[0]:
        raise MetricInputError(f"W_dec: expected {dbar.shape[0]} decoder rows (as dbar), found {W_dec.shape[0]}")
    return dbar * W_dec.detach().double().norm(dim=1).to(dbar.device)


class DirectionReconstruction(NamedTuple):
    features: Tensor
    """The features used, int64 [k]."""
    weights: Tensor
    """Non-negative weights ``w*`` of their decoder vectors, float64 [k]."""
    direction: Tensor
    """``r̂ = D_S w*``, float64 [d]."""
    nmse: float
    """``‖r̂ − r‖² / ‖r‖²``."""
    cosine: float
    """``cos(r̂, r)``; 0 when every weight is 0 (``r̂ = 0``)."""


def reconstruct_direction(W_dec: Tensor, features: Tensor | Sequence[int], r: Tensor) -> DirectionReconstruction:
    """Best non-negative combination of the features' decoder vectors for ``r`` (§5):
    ``w* = argmin_{w ≥ 0} ‖D_S w − r‖²`` with ``scipy.optimize.nnls``, in float64.
    ``W_dec`` is ``[M, d]`` (sparsify layout, one decoder row per latent)."""
    check_tensor("W_dec", W_dec, ndim=2)
    check_tensor("r", r, ndim=1)
    if r.shape[0] != W_dec.shape[1]:
        raise MetricInputError(f"r: expected width d={W_dec.shape[1]} (as W_dec), found {r.shape[0]}")
    features = torch.as_tensor(features, dtype=torch.long).flatten()
    if features.numel() == 0:
        raise EmptySetError("features: expected at least one feature, found none")
    low, high = int(features.min()), int(features.max())
    if low < 0 or high >= W_dec.shape[0]:
        raise MetricInputError(f"features: expected indices in [0, {W_dec.shape[0]}), found range [{low}, {high}]")
    target = r.detach().double().cpu().numpy()
    norm_sq = float(target @ target)
    if norm_sq == 0.0:
        raise MetricInputError("r: expected a non-zero direction, found the zero vector")
    columns = W_dec.detach()[features.to(W_dec.device)].double().cpu().numpy().T  # [d, k]
    weights, _ = nnls(columns, target, maxiter=50 * max(columns.shape))
    estimate = columns @ weights
    estimate_norm = float(np.linalg.norm(estimate))
    cosine = float(estimate @ target) / (estimate_norm * norm_sq**0.5) if estimate_norm > 0 else 0.0
    return DirectionReconstruction(
        features=features,
        weights=torch.from_numpy(weights),
        direction=torch.from_numpy(estimate),
        nmse=float(((estimate - target) ** 2).sum()) / norm_sq,
        cosine=cosine,
    )


def reconstruction_sweep(
    W_dec: Tensor, dbar: Tensor, r: Tensor, ks: Sequence[int] = (1, 2, 4, 8, 16, 32, 64)
) -> dict[int, DirectionReconstruction]:
    """Table 1 for one model: the reconstruction of ``r`` from ``S_k`` for each ``k``."""
    return {k: reconstruct_direction(W_dec, top_refusal_features(dbar, k), r) for k in ks}


def feature_overlap(a: Tensor | Sequence[int], b: Tensor | Sequence[int]) -> int:
    """``|a ∩ b|`` of two feature sets, e.g. ``S_k`` of the base and of the chat model (§5)."""
    return len(shared_features(a, b))


def shared_features(a: Tensor | Sequence[int], b: Tensor | Sequence[int]) -> list[int]:
    """The features two sets have in common, ascending."""
    return sorted(set(torch.as_tensor(a).flatten().tolist()) & set(torch.as_tensor(b).flatten().tolist()))
