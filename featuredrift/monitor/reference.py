"""The reference: the model training started from, read once per run and kept.

What the monitor keeps of it between evaluations: its reading of the probe set (cached on disk
as safetensors with a checksum, so a resumed run keeps its step-0 reference), the rows left out
as norm outliers, and per hookpoint the statistics every evaluation compares with (SAE codes,
FVU, scale, refusal direction and features). Fingerprints say what a cache is valid for.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from featuredrift.lm.hookpoints import unwrap_model
from featuredrift.monitor import feature_contexts, metrics, refusal
from featuredrift.monitor import kl as kl_metrics
from featuredrift.monitor.config import MonitorConfig
from featuredrift.monitor.errors import MonitorError
from featuredrift.monitor.reading import TEXT_SUBSETS, ModelReading, ProbeBatch, model_device

logger = logging.getLogger(__name__)
REFERENCE_FORMAT = "featuredrift-reference-3"  # 3: next-token log-probs kept compactly (top-k + rest)


@dataclass
class LayerReference:
    """Cached reference statistics at one hookpoint."""

    codes: dict[str, metrics.SaeCodes]
    fvu: dict[str, float]
    scale: float
    stats: dict[str, metrics.FeatureStats]
    direction: Tensor
    dbar: Tensor
    refusal_features: Tensor
    separation: float  # Cohen's d of `refusal_features` here, at the reference
    top_rows: feature_contexts.TopRows | None = None  # every latent's strongest probe tokens (contexts on)


@dataclass
class CachedReference:
    reading: ModelReading
    model_fingerprint: str
    refusal_rate: dict[str, float] | None = None  # the reference's generated refusal rates, when measured


def outlier_keep(reference: ModelReading, ratio: float | None) -> dict[str, Tensor]:
    """Per text subset, the rows kept: tokens that are norm outliers at the reference at any
    hookpoint (sinks, massive activations) are left out of every later reading too, so
    pairs stay aligned. The rule and the counts go into the run's provenance."""
    keep: dict[str, Tensor] = {}
    if ratio is None:
        return keep
    for subset in TEXT_SUBSETS:
        per_hookpoint = reference.activations.get(subset)
        if not per_hookpoint:
            continue
        outliers = torch.stack([metrics.norm_outliers(x, ratio) for x in per_hookpoint.values()]).any(dim=0)
        keep[subset] = ~outliers
        if bool(outliers.any()):
            logger.info("featuredrift leaves out %d of %d %s probe tokens whose norm exceeds %g× the median",
                        int(outliers.sum()), outliers.numel(), subset, ratio)
    return keep


def summarise_reference(hookpoint: str, sae, reading: ModelReading, config: MonitorConfig,
                        probe_tokens: feature_contexts.ProbeTokens | None) -> LayerReference:
    """What every evaluation compares with at `hookpoint`, computed once."""
    acts = {s: reading.activations[s][hookpoint] for s in reading.activations}
    codes = {s: metrics.encode_batched(sae, x, batch_size=config.encode_batch_size) for s, x in acts.items()}
    stats = {s: metrics.feature_statistics(c.top_acts, c.top_indices, sae.num_latents) for s, c in codes.items()}
    fvu = {f"reference/{s}": float(metrics.fvu_of(acts[s], codes[s].reconstruction, config.fvu_reading))
           for s in TEXT_SUBSETS if s in acts}
    direction = refusal.refusal_direction(acts["harmful"], acts["harmless"])
    dbar = refusal_dbar(codes, sae, config)
    refusal_features = refusal_features_of(dbar, sae, config)
    top_rows = None
    if probe_tokens is not None:
        # Once per run, for every latent: evaluations then only look their features up.
        top_rows = feature_contexts.top_rows_all_latents(
            *feature_contexts.concat_codes(codes, probe_tokens.subsets), sae.num_latents, config.feature_contexts)
    return LayerReference(
        codes=codes,
        fvu=fvu,
        scale=float(metrics.scale_for(acts["base"], config.scale_reading)),
        stats=stats,
        direction=direction,
        dbar=dbar,
        refusal_features=refusal_features,
        separation=refusal.feature_separation(codes["harmful"], codes["harmless"], refusal_features, sae.num_latents),
        top_rows=top_rows,
    )


def refusal_dbar(codes: dict[str, metrics.SaeCodes], sae, config: MonitorConfig):
    """``d̄`` of the harmful vs harmless prompt codes, folded by decoder norms when the reading says so."""
    dbar = refusal.feature_diff_in_means(codes["harmful"][:2], codes["harmless"][:2], sae.num_latents)
    return refusal.fold_decoder_norms(dbar, sae.W_dec, config.decoder_norm)


def refusal_features_of(dbar, sae, config: MonitorConfig):
    """The headline refusal features (`refusal_k`, clipped to the SAE) under the configured reading."""
    k = min(config.refusal_k, sae.num_latents)
    return refusal.top_refusal_features(dbar, k, strict=False, reading=config.refusal_feature_reading)


# ---------------------------------------------------------------- which model is the reference
def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def reference_source(model: nn.Module, reference_model: nn.Module | None, policy: str):
    """A context yielding the reference model under `policy` (see `MonitorConfig.reference`)."""
    if reference_model is not None:
        return contextlib.nullcontext(reference_model)
    peft = is_peft(model)
    if policy == "adapters-disabled" or (policy == "auto" and peft):
        if not peft:
            raise MonitorError(f"reference: 'adapters-disabled' expects a PEFT model, found {type(model).__name__}")
        return _adapters_disabled(model)
    if policy in ("initial", "auto"):
        return contextlib.nullcontext(model)
    return _loaded_reference(policy, model)


@contextlib.contextmanager
def _adapters_disabled(model: nn.Module):
    with model.disable_adapter():
        yield model


@contextlib.contextmanager
def _loaded_reference(path: str, model: nn.Module):
    """Load an explicit reference model next to the monitored one, and free it afterwards."""
    from transformers import AutoModelForCausalLM

    device = model_device(model)
    dtype = next(unwrap_model(model).parameters()).dtype
    try:
        reference = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype).to(device)
    except OSError as error:
        raise MonitorError(f"reference: expected a model directory or Hub id, could not load {path!r}: {error}") from error
    try:
        yield reference
    finally:
        del reference
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- fingerprints
def model_fingerprint(model: nn.Module, sample: int = 4096) -> str:
    """Architecture plus a strided sample of every parameter: tells models apart in milliseconds,
    without hashing gigabytes of weights."""
    digest = hashlib.sha256()
    base = unwrap_model(model)
    config = getattr(base, "config", None)
    if config is not None:
        digest.update(repr((config.model_type, getattr(config, "hidden_size", None), getattr(config, "num_hidden_layers", None),
                            getattr(config, "vocab_size", None))).encode())
    with torch.no_grad():
        for name, parameter in base.named_parameters():
            if hasattr(parameter, "full_tensor"):  # FSDP2 shards: gathered (a collective, once at start)
                parameter = parameter.full_tensor()
            flat = parameter.detach().reshape(-1)
            stride = max(1, flat.numel() // sample)
            digest.update(name.encode())
            digest.update(repr(tuple(parameter.shape)).encode())
            digest.update(flat[::stride][:sample].float().cpu().numpy().tobytes())
    return digest.hexdigest()


def sae_fingerprint(saes: dict[str, nn.Module]) -> str:
    digest = hashlib.sha256()
    for hookpoint, sae in sorted(saes.items()):
        digest.update(hookpoint.encode())
        digest.update(repr((sae.d_in, sae.num_latents, getattr(sae.cfg, "k", None))).encode())
        digest.update(sae.W_dec.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def probe_fingerprint(batches: dict[str, list[ProbeBatch]], sae_fp: str) -> str:
    """Identify (probe tokens, hookpoints, SAE weights): a cached reference is valid only for these."""
    digest = hashlib.sha256()
    for subset in sorted(batches):
        digest.update(subset.encode())
        for batch in batches[subset]:
            digest.update(batch.input_ids.numpy().tobytes())
            digest.update(batch.read_mask.numpy().tobytes())
    digest.update(sae_fp.encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------- the cache
def _tensor_checksum(tensors: dict[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(tensors[key].contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_reading(path: str | Path, reading: ModelReading, fingerprint: str, model_fp: str,
                 refusal_rate: dict[str, float] | None = None) -> None:
    """Write the reference reading atomically (a temporary file, then a rename)."""
    import json

    from safetensors.torch import save_file

    tensors = {f"act/{s}/{h}": x.contiguous().cpu() for s, per in reading.activations.items() for h, x in per.items()}
    tensors.update({f"refusal/{s}": p.contiguous().cpu() for s, p in reading.refusal_probability.items()})
    if reading.next_token is not None:
        tensors.update({f"next_token/{name}": t.contiguous().cpu() for name, t in reading.next_token._asdict().items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    metadata = {"fingerprint": fingerprint, "format": REFERENCE_FORMAT, "model_fingerprint": model_fp,
                "checksum": _tensor_checksum(tensors)}
    if refusal_rate is not None:
        metadata["refusal_rate"] = json.dumps(refusal_rate)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def load_reading(path: str | Path, fingerprint: str) -> CachedReference | None:
    """The cached reference readings; None when absent or made for other inputs; an error when corrupt."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("fingerprint") != fingerprint or metadata.get("format") != REFERENCE_FORMAT:
                return None
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as error:
        raise MonitorError(f"reference cache {path}: expected a safetensors file, found an unreadable one ({error}); "
                           "delete it to recompute the reference") from error
    if metadata.get("checksum") != _tensor_checksum(tensors):
        raise MonitorError(f"reference cache {path}: corrupt (its data does not match the checksum written with it); "
                           "delete it and pass reference=<base model path> to recompute the reference")
    activations: dict[str, dict[str, Tensor]] = {}
    refusal_probability: dict[str, Tensor] = {}
    for key, tensor in tensors.items():
        if key.startswith("act/"):
            _, subset, hookpoint = key.split("/", 2)
            activations.setdefault(subset, {})[hookpoint] = tensor
        elif key.startswith("refusal/"):
            refusal_probability[key.split("/", 1)[1]] = tensor
    fields = kl_metrics.CompactLogProbs._fields
    next_token = (kl_metrics.CompactLogProbs(*(tensors[f"next_token/{name}"] for name in fields))
                  if all(f"next_token/{name}" in tensors for name in fields) else None)
    rates = metadata.get("refusal_rate")
    return CachedReference(ModelReading(activations, next_token, refusal_probability), metadata.get("model_fingerprint", ""),
                           _json_rates(rates) if rates else None)


def _json_rates(text: str) -> dict[str, float] | None:
    import json

    try:
        rates = json.loads(text)
    except json.JSONDecodeError:
        return None
    return {str(k): float(v) for k, v in rates.items()} if isinstance(rates, dict) else None
