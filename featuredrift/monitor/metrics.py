"""Feature-drift metrics on paired residual activations: pure functions of tensors, no I/O.

Conventions (DESIGN.md, "Metric specification"):

* activations are ``[tokens, d]`` floating tensors of already-selected content tokens (no BOS,
  EOS, padding); SAE codes are top-k ``(acts, indices)`` pairs, ``[tokens, k]``;
* sums that decide a reported number are accumulated in float64, in row chunks so that a large
  token set never needs a float64 copy of the whole matrix;
* results are small ``NamedTuple``s of 0-d tensors on the inputs' device (call ``float()`` to
  export), so a metric pass does no host round trip per metric;
* bad input (wrong shape, empty set, NaN/inf, impossible parameter) raises
  :class:`MetricInputError` naming the argument, never returns a silent NaN. An empty divergent
  token set raises its subclass :class:`EmptySetError`, so callers can report "no divergent
  tokens" (e.g. at step 0, where ``x_t == x_0``) instead of a number.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# One row of the per-evaluation drift table: the report's own type, so no conversion is needed.
from featuredrift.monitor.report import FeatureDrift as DriftedFeature

DEFAULT_CHUNK_ROWS = 65_536
DIVERGENCE_THRESHOLD = 0.9


class MetricInputError(ValueError):
    """An argument of a metric function has the wrong shape, type or values."""


class EmptySetError(MetricInputError):
    """A metric was asked for over an empty token (or prompt, or feature) set."""


# --------------------------------------------------------------------------------------------
# validation


def check_tensor(name: str, x, *, ndim: int | None = None, floating: bool = True) -> Tensor:
    """Validate one tensor argument: type, rank, non-empty first dim, dtype, all finite."""
    if not isinstance(x, Tensor):
        raise MetricInputError(f"{name}: expected a torch.Tensor, found {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise MetricInputError(f"{name}: expected a {ndim}-D tensor, found shape {tuple(x.shape)}")
    if x.ndim > 0 and x.shape[0] == 0:
        raise EmptySetError(f"{name}: expected at least one row, found shape {tuple(x.shape)}")
    if floating:
        if not x.is_floating_point():
            raise MetricInputError(f"{name}: expected a floating tensor, found dtype {x.dtype}")
        if not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).sum())
            raise MetricInputError(f"{name}: expected finite values, found {bad} NaN/inf entries")
    return x


def check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise MetricInputError(
            f"{name_b}: expected the shape of {name_a} {tuple(a.shape)}, found {tuple(b.shape)}"
        )


def check_mask(name: str, mask, num_rows: int) -> Tensor:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        found = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise MetricInputError(f"{name}: expected a bool tensor, found {found}")
    if mask.shape != (num_rows,):
        raise MetricInputError(f"{name}: expected shape ({num_rows},), found {tuple(mask.shape)}")
    return mask


def check_scale(name: str, scale) -> Tensor:
    scale = torch.as_tensor(scale, dtype=torch.float64)
    if scale.numel() != 1 or not bool(torch.isfinite(scale)) or float(scale) <= 0:
        raise MetricInputError(f"{name}: expected a positive finite scalar, found {scale.tolist()}")
    return scale.reshape(())


def row_chunks(num_rows: int, chunk_rows: int) -> Iterator[slice]:
    if chunk_rows <= 0:
        raise MetricInputError(f"chunk_rows: expected a positive integer, found {chunk_rows}")
    for start in range(0, num_rows, chunk_rows):
        yield slice(start, min(start + chunk_rows, num_rows))


# --------------------------------------------------------------------------------------------
# reconstruction quality and scale


def fvu(x: Tensor, x_hat: Tensor, *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Tensor:
    """Fraction of variance unexplained, batch-centred as in sparsify:
    ``Σ‖x − x̂‖² / Σ‖x − mean(x)‖²`` (0 = perfect, 1 = no better than predicting the mean)."""
    check_tensor("x", x, ndim=2)
    check_tensor("x_hat", x_hat, ndim=2)
    check_same_shape("x", x, "x_hat", x_hat)
    mean = _row_sum(x, chunk_rows) / x.shape[0]
    error = x.new_zeros((), dtype=torch.float64)
    variance = x.new_zeros((), dtype=torch.float64)
    for rows in row_chunks(x.shape[0], chunk_rows):
        x64 = x[rows].double()
        error += (x64 - x_hat[rows].double()).pow(2).sum()
        variance += (x64 - mean).pow(2).sum()
    if float(variance) == 0.0:
        raise MetricInputError(
            f"x: expected activations with non-zero variance to normalise FVU, found {x.shape[0]} identical rows"
        )
    return error / variance


FVU_READINGS = ("batch", "per_token")


def per_token_fvu(x: Tensor, x_hat: Tensor) -> Tensor:
    """[N] float64 FVU of each token against its own mean over dimensions,
    ``Σ_i (x_i − x̂_i)² / Σ_i (x_i − mean_i x)²``: the paper's code (``_calculate_fvu``), which
    then averages over tokens. A token whose entries are all equal has no variance and raises."""
    check_tensor("x", x, ndim=2)
    check_tensor("x_hat", x_hat, ndim=2)
    check_same_shape("x", x, "x_hat", x_hat)
    x64 = x.double()
    error = (x64 - x_hat.double()).pow(2).sum(-1)
    variance = (x64 - x64.mean(-1, keepdim=True)).pow(2).sum(-1)
    if bool((variance == 0).any()):
        raise MetricInputError(f"x: expected every token to vary over its dimensions, found {int((variance == 0).sum())} constant rows")
    return error / variance


def fvu_of(x: Tensor, x_hat: Tensor, reading: str = "batch") -> Tensor:
    """The FVU a reading reports: 'batch' (ours, sparsify's: one ratio, centred on the set's mean)
    or 'per_token' (the paper's code: the mean of `per_token_fvu`)."""
    if reading == "batch":
        return fvu(x, x_hat)
    if reading == "per_token":
        return per_token_fvu(x, x_hat).mean()
    raise MetricInputError(f"FVU reading: expected one of {FVU_READINGS}, found {reading!r}")


def activation_scale(x: Tensor, *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Tensor:
    """Per-model activation scale ``σ = sqrt(E‖x‖²)`` over tokens: our reading of Appx. B's
    normalisation (its text divides by E‖x‖²; the paper's code rescales the SAE input instead),
    used inside ER only."""
    check_tensor("x", x, ndim=2)
    total = x.new_zeros((), dtype=torch.float64)
    for rows in row_chunks(x.shape[0], chunk_rows):
        total += x[rows].double().pow(2).sum()
    return (total / x.shape[0]).sqrt()


SCALE_READINGS = ("sigma", "energy", "unit_norm")
ER_AGGREGATES = ("ratio_of_sums", "median", "mean")


def scale_for(x: Tensor, reading: str = "sigma") -> Tensor:
    """The divisor that normalises a model's activations before they are compared (Appx. B is
    ambiguous): 'sigma' (ours) σ = sqrt(E‖x‖²); 'energy' (the paper's text) E‖x‖²; 'unit_norm'
    (the paper's code, which rescales by √d / mean‖x‖) mean‖x‖ / √d. Only ER uses it."""
    if reading == "sigma":
        return activation_scale(x)
    if reading == "energy":
        return activation_scale(x).pow(2)
    if reading == "unit_norm":
        check_tensor("x", x, ndim=2)
        return x.double().norm(dim=1).mean() / x.shape[1] ** 0.5
    raise MetricInputError(f"scale reading: expected one of {SCALE_READINGS}, found {reading!r}")


def _row_sum(x: Tensor, chunk_rows: int) -> Tensor:
    total = x.new_zeros(x.shape[1], dtype=torch.float64)
    for rows in row_chunks(x.shape[0], chunk_rows):
        total += x[rows].double().sum(0)
    return total


# --------------------------------------------------------------------------------------------
# paired activations: divergence and the Explained Ratio


def paired_cosine(x0: Tensor, xt: Tensor) -> Tensor:
    """Per-token cosine between the reference and current activations (float32, [N]).
    A zero vector has cosine 0 with anything (eps-clamped norm), so it counts as divergent."""
    check_tensor("x0", x0, ndim=2)
    check_tensor("xt", xt, ndim=2)
    check_same_shape("x0", x0, "xt", xt)
    return torch.nn.functional.cosine_similarity(x0.float(), xt.float(), dim=-1, eps=1e-12)


def divergent_mask(x0: Tensor, xt: Tensor, tau: float = DIVERGENCE_THRESHOLD) -> Tensor:
    """Token pairs whose representations diverge: ``cos(x_0, x_t) < τ`` (§4, τ = 0.9)."""
    if not -1.0 <= tau <= 1.0:
        raise MetricInputError(f"tau: expected a cosine threshold in [-1, 1], found {tau}")
    return paired_cosine(x0, xt) < tau


def divergent_fraction(x0: Tensor, xt: Tensor, tau: float = DIVERGENCE_THRESHOLD) -> Tensor:
    """Fraction of token pairs with ``cos(x_0, x_t) < τ``."""
    return divergent_mask(x0, xt, tau).double().mean()


class ExplainedRatio(NamedTuple):
    ratio: Tensor
    """``Σ‖x_t − x̂_t‖² / Σ‖x_t − x_0‖²`` over divergent tokens, on scaled activations (Eq. 3)."""
    median: Tensor
    """Median over divergent tokens of the per-token ratio (lower median for an even count)."""
    num_tokens: int
    """Number of divergent tokens the ratio is taken over."""
    mean: Tensor | None = None
    """Mean over divergent tokens of the per-token ratio."""

    def aggregate(self, how: str) -> Tensor:
        """The headline ER: 'ratio_of_sums' (Eq. 3 as we read it), 'median' or 'mean' of per-token ratios."""
        values = {"ratio_of_sums": self.ratio, "median": self.median, "mean": self.mean}
        if how not in ER_AGGREGATES:
            raise MetricInputError(f"ER aggregate: expected one of {ER_AGGREGATES}, found {how!r}")
        return values[how]


def explained_ratio(
    x0: Tensor,
    xt: Tensor,
    xt_hat: Tensor,
    divergent: Tensor,
    scale0,
    scalet,
) -> ExplainedRatio:
    """Explained Ratio on divergent tokens (Eq. 3). Each model's activations are divided by its
    own scale σ_M (``x_0/σ_0``, ``x_t/σ_t``, ``x̂_t/σ_t``) so that a change of overall norm does
    not count as divergence. ER < 1: the base SAE explains ``x_t`` better than ``x_0`` does."""
    for name, value in (("x0", x0), ("xt", xt), ("xt_hat", xt_hat)):
        check_tensor(name, value, ndim=2)
    check_same_shape("x0", x0, "xt", xt)
    check_same_shape("x0", x0, "xt_hat", xt_hat)
    check_mask("divergent", divergent, x0.shape[0])
    scale0 = check_scale("scale0", scale0).to(x0.device)
    scalet = check_scale("scalet", scalet).to(x0.device)
    rows = divergent.nonzero().squeeze(-1)
    if rows.numel() == 0:
        raise EmptySetError("divergent: expected at least one divergent token, found none")
    a0 = x0[rows].double() / scale0
    at = xt[rows].double() / scalet
    at_hat = xt_hat[rows].double() / scalet
    unexplained = (at - at_hat).pow(2).sum(-1)
    divergence = (at - a0).pow(2).sum(-1)
    if bool((divergence == 0).any()):
        raise MetricInputError(
            "divergent: a token marked divergent has identical scaled activations in both models"
        )
    return ExplainedRatio(
        ratio=unexplained.sum() / divergence.sum(),
        median=(unexplained / divergence).median(),
        num_tokens=int(rows.numel()),
        mean=(unexplained / divergence).mean(),
    )


# --------------------------------------------------------------------------------------------
# active feature sets: the Intersection Ratio


IR_READINGS = ("active", "top_min_l0")
IR_K_CAP = 100  # the paper's code: at most the SAE's nominal sparsity (`SPARSITY_CUTOFF`)


class IntersectionRatio(NamedTuple):
    per_token: Tensor
    """Jaccard index ``|F_0 ∩ F_t| / |F_0 ∪ F_t|`` of each token pair, float64 [N]."""
    all: Tensor
    """Mean over all token pairs."""
    divergent: Tensor | None
    """Mean over the token pairs selected by ``mask`` (``None`` when no mask was given)."""
    num_divergent: int


def intersection_ratio(
    idx0,
    idxt,
    acts0: Tensor | None = None,
    actst: Tensor | None = None,
    mask: Tensor | None = None,
    *,
    reading: str = "active",
    k_cap: int = IR_K_CAP,
) -> IntersectionRatio:
    """Intersection Ratio of active SAE features per token pair (Eq. 4).

    ``idx0``/``idxt`` are ``[N, k]`` top-k indices (or :class:`SaeCodes`, whose acts are then
    used). With ``reading="active"`` (ours) ``F`` is the set of indices whose activation is > 0
    (all indices when acts are not given) and two empty sets count as identical (IR 1). With
    ``"top_min_l0"`` (the paper's code, ``calculate_feature_metrics``) each side keeps only its
    ``min(L0_0, L0_t, k_cap)`` largest activations and two empty sets score 0; the readings
    differ when the two L0s differ (JumpReLU/ReLU SAEs, or top-k slots ReLU left at 0).
    Indices within one row must be distinct, as top-k (and groupmax) produce them. Vectorised
    by sorting the concatenated index rows: a shared index shows up as two equal neighbours, so
    no [N, num_latents] matrix is built. ``mask`` (e.g. :func:`divergent_mask`) selects the
    tokens of the ``divergent`` mean; an empty mask raises :class:`EmptySetError`.
    """
    if reading not in IR_READINGS:
        raise MetricInputError(f"IR reading: expected one of {IR_READINGS}, found {reading!r}")
    if isinstance(idx0, SaeCodes):
        idx0, acts0 = idx0.top_indices, idx0.top_acts if acts0 is None else acts0
    if isinstance(idxt, SaeCodes):
        idxt, actst = idxt.top_indices, idxt.top_acts if actst is None else actst
    check_tensor("idx0", idx0, ndim=2, floating=False)
    check_tensor("idxt", idxt, ndim=2, floating=False)
    if idx0.shape[0] != idxt.shape[0]:
        raise MetricInputError(
            f"idxt: expected {idx0.shape[0]} rows (as idx0), found {idxt.shape[0]}"
        )
    device = idx0.device
    valid0 = _active(idx0, acts0, "acts0")
    validt = _active(idxt, actst, "actst").to(device)
    if reading == "top_min_l0":
        keep = torch.minimum(valid0.sum(1), validt.sum(1)).clamp_max(k_cap)
        valid0 = _largest(valid0, acts0, keep)
        validt = _largest(validt, actst, keep)
    # Inactive slots get distinct negative sentinels that can never match anything.
    k0, kt = idx0.shape[1], idxt.shape[1]
    sentinels = -1 - torch.arange(k0 + kt, device=device, dtype=torch.long)
    both = torch.cat([idx0.long(), idxt.long().to(device)], dim=1)
    both = torch.where(torch.cat([valid0, validt], dim=1), both, sentinels)
    ordered = both.sort(dim=1).values
    shared = (ordered[:, 1:] == ordered[:, :-1]).sum(1).double()
    union = valid0.sum(1).double() + validt.sum(1).double() - shared
    empty = torch.ones_like(union) if reading == "active" else torch.zeros_like(union)
    per_token = torch.where(union > 0, shared / union.clamp_min(1.0), empty)
    divergent, num_divergent = None, 0
    if mask is not None:
        check_mask("mask", mask, idx0.shape[0])
        num_divergent = int(mask.sum())
        if num_divergent == 0:
            raise EmptySetError("mask: expected at least one selected (divergent) token, found none")
        divergent = per_token[mask.to(device)].mean()
    return IntersectionRatio(per_token, per_token.mean(), divergent, num_divergent)


def _active(indices: Tensor, acts: Tensor | None, name: str) -> Tensor:
    if acts is None:
        return torch.ones_like(indices, dtype=torch.bool)
    check_tensor(name, acts, ndim=2)
    if acts.shape != indices.shape:
        raise MetricInputError(
            f"{name}: expected the shape of its indices {tuple(indices.shape)}, found {tuple(acts.shape)}"
        )
    return acts.to(indices.device) > 0


def _largest(valid: Tensor, acts: Tensor | None, keep: Tensor) -> Tensor:
    """The `keep[i]` largest active slots of each row (all active slots rank first)."""
    if acts is None:
        values = valid.double()
    else:
        values = torch.where(valid, acts.to(valid.device).double(), -torch.inf)
    order = values.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return valid & (rank < keep.unsqueeze(1))


# --------------------------------------------------------------------------------------------
# SAE encoding in chunks


class SaeCodes(NamedTuple):
    top_acts: Tensor
    """[N, k] activations of the selected latents (SAE dtype)."""
    top_indices: Tensor
    """[N, k] latent indices."""
    reconstruction: Tensor
    """[N, d] the SAE's reconstruction ``x̂`` (SAE dtype, skip connection included)."""


# Bytes of dense pre-activations one encode chunk may hold: bounds memory at any latent count
# (1,024 tokens at 65,536 float32 latents) while keeping each matmul large enough to run at speed.
ENCODE_CHUNK_BYTES = 256 * 2**20


def encode_chunk_rows(num_latents: int, itemsize: int, batch_size: int) -> int:
    """Tokens per encode chunk: at most `batch_size`, and few enough that the dense
    pre-activations stay within `ENCODE_CHUNK_BYTES`."""
    return max(1, min(batch_size, ENCODE_CHUNK_BYTES // (num_latents * itemsize)))


def topk_codes(sae, x: Tensor) -> tuple[Tensor, Tensor]:
    """sparsify's TopK encode (`relu(W x' + b)`, `x' = x - b_dec` unless transcoding, then top-k),
    with one dense buffer instead of two: the bias-added matmul writes it, ReLU runs in place,
    and `topk` reads it. Other activations and non-sparsify SAEs use their own `encode`."""
    cfg = getattr(sae, "cfg", None)
    if getattr(cfg, "activation", None) != "topk" or not hasattr(sae, "encoder"):
        top_acts, top_indices, _ = sae.encode(x)
        return top_acts, top_indices
    if not cfg.transcode:
        x = x - sae.b_dec
    pre = torch.addmm(sae.encoder.bias, x, sae.encoder.weight.mT)
    return pre.relu_().topk(cfg.k, dim=-1, sorted=False)


@torch.no_grad()
def encode_batched(sae, x: Tensor, batch_size: int = 4096) -> SaeCodes:
    """Top-k codes and reconstructions of ``x`` with a sparsify ``SparseCoder``, in chunks so
    the dense ``[chunk, num_latents]`` pre-activations never exist for the whole set at once
    (see `encode_chunk_rows`). The decode is sparsify's (an embedding bag on CPU, its Triton
    kernel on a GPU that has it). Runs on the SAE's device and dtype; results stay there."""
    check_tensor("x", x, ndim=2)
    if x.shape[1] != sae.d_in:
        raise MetricInputError(f"x: expected activations of width d_in={sae.d_in}, found {x.shape[1]}")
    rows_per_chunk = encode_chunk_rows(sae.num_latents, sae.dtype.itemsize, batch_size)
    acts, indices, recon = [], [], []
    for rows in row_chunks(x.shape[0], rows_per_chunk):
        chunk = x[rows].to(device=sae.device, dtype=sae.dtype)
        top_acts, top_indices = topk_codes(sae, chunk)
        x_hat = sae.decode(top_acts, top_indices)
        if getattr(sae, "W_skip", None) is not None:
            x_hat = x_hat + chunk @ sae.W_skip.mT
        acts.append(top_acts)
        indices.append(top_indices)
        recon.append(x_hat)
    return SaeCodes(*cat_codes(acts, indices), torch.cat(recon))


def cat_codes(acts: Sequence[Tensor], indices: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Row blocks of codes stacked. A variable-L0 SAE (JumpReLU, ReLU) gives blocks of different
    widths: narrower ones are padded with zero activations, which never count as active."""
    width = max(a.shape[1] for a in acts)
    padded = [(F.pad(a, (0, width - a.shape[1])), F.pad(i, (0, width - i.shape[1]))) for a, i in zip(acts, indices, strict=True)]
    return torch.cat([a for a, _ in padded]), torch.cat([i for _, i in padded])


encode = encode_batched
SaeEncoding = SaeCodes


def densify(top_acts: Tensor, top_indices: Tensor, num_latents: int) -> Tensor:
    """Dense ``[N, num_latents]`` codes from top-k codes (scatter; for small N only)."""
    _check_codes(top_acts, top_indices, num_latents)
    dense = top_acts.new_zeros(top_acts.shape[0], num_latents)
    return dense.scatter_add_(1, top_indices.long(), top_acts)  # add: zero-padded slots may repeat an index


def _check_codes(top_acts: Tensor, top_indices: Tensor, num_latents: int) -> None:
    check_tensor("top_acts", top_acts, ndim=2)
    check_tensor("top_indices", top_indices, ndim=2, floating=False)
    if top_acts.shape != top_indices.shape:
        raise MetricInputError(
            f"top_indices: expected the shape of top_acts {tuple(top_acts.shape)}, found {tuple(top_indices.shape)}"
        )
    if num_latents <= 0:
        raise MetricInputError(f"num_latents: expected a positive integer, found {num_latents}")
    low, high = int(top_indices.min()), int(top_indices.max())
    if low < 0 or high >= num_latents:
        raise MetricInputError(
            f"top_indices: expected indices in [0, {num_latents}), found range [{low}, {high}]"
        )


# --------------------------------------------------------------------------------------------
# per-feature statistics and drift


class FeatureStats(NamedTuple):
    frequency: Tensor
    """Fraction of tokens on which each feature is active (act > 0), float64 [M]."""
    mean_active: Tensor
    """Mean activation over the tokens where the feature is active (0 if never), float64 [M]."""
    count: Tensor
    """Number of tokens on which each feature is active, int64 [M]."""
    num_tokens: int


def feature_statistics(top_acts: Tensor, top_indices: Tensor, num_latents: int) -> FeatureStats:
    """Firing frequency and mean active value of every feature (one scatter_add, no loops)."""
    _check_codes(top_acts, top_indices, num_latents)
    active = top_acts > 0
    flat_indices = top_indices.long().flatten()
    count = torch.zeros(num_latents, dtype=torch.long, device=top_acts.device)
    count.scatter_add_(0, flat_indices, active.flatten().long())
    total = torch.zeros(num_latents, dtype=torch.float64, device=top_acts.device)
    total.scatter_add_(0, flat_indices, torch.where(active, top_acts.double(), 0.0).flatten())
    num_tokens = top_acts.shape[0]
    mean_active = torch.where(count > 0, total / count.clamp_min(1), 0.0)
    return FeatureStats(count.double() / num_tokens, mean_active, count, num_tokens)


DriftScore = Literal["freq_mean", "firing_kl", "mass"]


class FeatureDrift(NamedTuple):
    indices: Tensor
    """Feature indices, most drifted first, int64 [top_n]."""
    scores: Tensor
    """Their drift scores (see :func:`drift_scores`), float64 [top_n]."""
    delta_frequency: Tensor
    """``frequency_cur − frequency_ref`` of those features."""
    delta_mean_active: Tensor
    """``mean_active_cur − mean_active_ref`` of those features."""
    score: str


def drift_scores(ref: FeatureStats, cur: FeatureStats, score: DriftScore = "freq_mean") -> Tensor:
    """One drift score per feature (float64 [M]); higher = more drift.

    * ``freq_mean`` (default): ``|Δfreq| + |Δmean_active| / s`` where ``s`` is the reference's
      overall mean active value (mean over all active (token, feature) pairs). Both terms are
      unitless: a feature that starts firing everywhere scores 1 from frequency, one whose
      typical activation changes by the model's typical activation scores 1 from magnitude.
    * ``firing_kl``: symmetric KL between the Bernoulli firing distributions, with Jeffreys
      smoothing ``(count + ½)/(N + 1)`` so never/always-firing features stay finite.
    * ``mass``: ``|Δ(freq · mean_active)| / s``, the change of the feature's mean activation
      over all tokens (what a dense difference-in-means would show).
    """
    if ref.frequency.shape != cur.frequency.shape:
        raise MetricInputError(
            f"stats_cur: expected {ref.frequency.shape[0]} features (as stats_ref), found {cur.frequency.shape[0]}"
        )
    cur = FeatureStats(*(t.to(ref.frequency.device) if isinstance(t, Tensor) else t for t in cur))
    if score == "firing_kl":
        p = (ref.count.double() + 0.5) / (ref.num_tokens + 1)
        q = (cur.count.double() + 0.5) / (cur.num_tokens + 1)
        return (p - q) * (p.log() - q.log()) + ((1 - p) - (1 - q)) * ((1 - p).log() - (1 - q).log())
    total_count = ref.count.sum()
    if int(total_count) == 0:
        raise EmptySetError("stats_ref: expected some active features to set the scale, found none")
    typical = (ref.mean_active * ref.count).sum() / total_count
    if score == "freq_mean":
        return (cur.frequency - ref.frequency).abs() + (cur.mean_active - ref.mean_active).abs() / typical
    if score == "mass":
        return (cur.frequency * cur.mean_active - ref.frequency * ref.mean_active).abs() / typical
    raise MetricInputError(f"score: expected one of freq_mean, firing_kl, mass, found {score!r}")


def feature_drift_ranking(
    stats_ref: FeatureStats, stats_cur: FeatureStats, top_n: int, score: DriftScore = "freq_mean"
) -> FeatureDrift:
    """The ``top_n`` features whose firing drifted most between reference and current."""
    scores = drift_scores(stats_ref, stats_cur, score)
    if not 0 < top_n <= scores.shape[0]:
        raise MetricInputError(f"top_n: expected 1 … {scores.shape[0]} (the number of features), found {top_n}")
    top_scores, indices = scores.topk(top_n)
    ref_freq, ref_mean = stats_ref.frequency[indices], stats_ref.mean_active[indices]
    cur_freq = stats_cur.frequency.to(indices.device)[indices]
    cur_mean = stats_cur.mean_active.to(indices.device)[indices]
    return FeatureDrift(indices, top_scores, cur_freq - ref_freq, cur_mean - ref_mean, score)


def drifted_features(
    stats_ref: Mapping[str, FeatureStats],
    stats_cur: Mapping[str, FeatureStats],
    top_n: int,
    score: DriftScore = "freq_mean",
) -> list[DriftedFeature]:
    """The ``top_n`` most drifted features of every probe subset present in both mappings, as
    plain rows (one host transfer per subset)."""
    rows: list[DriftedFeature] = []
    for subset in (s for s in stats_ref if s in stats_cur):
        ref, cur = stats_ref[subset], stats_cur[subset]
        ranking = feature_drift_ranking(ref, cur, min(top_n, ref.frequency.shape[0]), score)
        index = ranking.indices
        columns = torch.stack(
            [
                ref.frequency[index],
                cur.frequency.to(index.device)[index],
                ref.mean_active[index],
                cur.mean_active.to(index.device)[index],
                ranking.scores,
            ]
        ).T.tolist()
        for feature, (f0, ft, m0, mt, s) in zip(index.tolist(), columns, strict=True):
            rows.append(DriftedFeature(feature, subset, f0, ft, m0, mt, s))
    return rows


def mean_dense_activation(codes: SaeCodes, features: Tensor, num_latents: int) -> Tensor:
    """Mean over tokens and over ``features`` of the dense codes ``z`` (0 where a feature is not
    among a token's top-k): how strongly a feature set fires on a subset. 0-d float64."""
    _check_codes(codes.top_acts, codes.top_indices, num_latents)
    features = torch.as_tensor(features, dtype=torch.long, device=codes.top_acts.device).flatten()
    if features.numel() == 0:
        raise EmptySetError("features: expected at least one feature, found none")
    totals = codes.top_acts.new_zeros(num_latents, dtype=torch.float64)
    totals.scatter_add_(0, codes.top_indices.long().flatten(), codes.top_acts.double().flatten())
    return totals[features].mean() / codes.top_acts.shape[0]


COSINE_QUANTILES = (0.01, 0.05, 0.25, 0.5)
DIVERGENCE_TAUS = (0.99, 0.95, 0.9)


class DivergenceProfile(NamedTuple):
    """What makes drift visible when the paper's τ = 0.9 sees nothing (small fine-tunes move
    residuals by a few degrees): cosine quantiles, the divergent fraction at several τ, and the
    mask of the most-divergent share of tokens, on which ER and IR are always defined."""

    quantiles: dict[float, float]  # q → q-quantile of cos(x_0, x_t)
    fractions: dict[float, float]  # τ → fraction of pairs with cos < τ
    most_divergent: Tensor  # [N] bool: the `share` of pairs with the lowest cosine


def divergence_profile(x0: Tensor, xt: Tensor, share: float = 0.1, quantiles=COSINE_QUANTILES,
                       taus=DIVERGENCE_TAUS) -> DivergenceProfile:
    return cosine_profile(paired_cosine(x0, xt), share, quantiles, taus)


def cosine_profile(cos: Tensor, share: float = 0.1, quantiles=COSINE_QUANTILES,
                   taus=DIVERGENCE_TAUS) -> DivergenceProfile:
    """`divergence_profile` from the pairs' cosines, for a caller that has them already."""
    if not 0.0 < share <= 1.0:
        raise MetricInputError(f"share: expected a fraction in (0, 1], found {share}")
    cos = cos.double()
    if cos.numel() == 0:
        raise EmptySetError("divergence_profile: expected at least one token pair, found none")
    values = torch.quantile(cos, torch.tensor(list(quantiles), dtype=cos.dtype))
    count = max(1, int(round(share * cos.numel())))
    most = torch.zeros_like(cos, dtype=torch.bool)
    most[torch.topk(-cos, count).indices] = True
    return DivergenceProfile(
        {q: float(v) for q, v in zip(quantiles, values, strict=True)},
        {t: float((cos < t).double().mean()) for t in taus},
        most,
    )


def norm_outliers(x: Tensor, ratio: float) -> Tensor:
    """[N] bool: tokens whose norm exceeds `ratio` × the median token norm (attention sinks and
    massive-activation tokens that dwarf the rest, Sun et al. 2024)."""
    check_tensor("x", x, ndim=2)
    return outlier_norms(x.double().norm(dim=1), ratio)


OUTLIER_RULES = ("norm", "quantile")
OUTLIER_QUANTILE = 0.998  # the paper's code: tokens at or above the 99.8% quantile are dropped


def token_mse(x0: Tensor, xt: Tensor) -> Tensor:
    """[N] float64 mean squared difference of each token pair (the paper's code's `mse`)."""
    check_tensor("x0", x0, ndim=2)
    check_tensor("xt", xt, ndim=2)
    check_same_shape("x0", x0, "xt", xt)
    return (xt.double() - x0.double().to(xt.device)).pow(2).mean(-1)


def quantile_inliers(*statistics: Tensor, q: float = OUTLIER_QUANTILE) -> Tensor:
    """[N] bool: tokens strictly below the `q`-quantile of every statistic (the paper's code keeps
    ``chat_fvu < quantile(chat_fvu, .998)`` and ``mse < quantile(mse, .998)``). A statistic
    whose quantile is its minimum (MSE 0 everywhere between identical models) keeps the tokens
    at that minimum rather than none."""
    import numpy as np

    if not statistics:
        raise MetricInputError("statistics: expected at least one per-token statistic, found none")
    if not 0.0 < q <= 1.0:
        raise MetricInputError(f"q: expected a quantile in (0, 1], found {q}")
    keep = None
    for number, values in enumerate(statistics):
        check_tensor(f"statistics[{number}]", values, ndim=1)
        values = values.double()
        cut = float(np.quantile(values.cpu().numpy(), q))
        inside = values < cut if cut > float(values.min()) else values <= cut
        keep = inside if keep is None else keep & inside.to(keep.device)
    return keep


def outlier_norms(norms: Tensor, ratio: float) -> Tensor:
    """[N] bool: norms above `ratio` × their median (`norm_outliers` on norms read shard by shard)."""
    return norms > ratio * norms.median()
