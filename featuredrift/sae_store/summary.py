"""What `featuredrift sae inspect` reports about an SAE (sparsify or SAELens): config,
fingerprint, sizes and decoder-norm statistics, as plain data (the CLI renders it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from featuredrift.sae_store.load import load_sae_dir, locate_sae_dirs
from featuredrift.sae_store.registry import fingerprint_sae, weights_file
from featuredrift.sae_store.saelens import is_saelens_dir, read_saelens_config
from featuredrift.sae_store.validate import CFG_FILE, read_safetensors_header, validate_sae_dir


@dataclass(frozen=True)
class SaeSummary:
    hookpoint: str
    path: str
    fingerprint: str
    d_in: int
    num_latents: int
    k: int | None  # None: as many active latents as the activation lets through (JumpReLU, ReLU)
    activation: str
    multi_topk: bool
    normalize_decoder: bool
    dtype: str
    weights_bytes: int
    num_parameters: int
    decoder_norm_min: float
    decoder_norm_mean: float
    decoder_norm_max: float
    config: dict

    def as_dict(self) -> dict:
        return asdict(self)


def summarize_sae_dir(path: Path | str, hookpoint: str) -> SaeSummary:
    import torch

    path = Path(path)
    if is_saelens_dir(path):
        cfg = read_saelens_config(path)
        tensors = read_safetensors_header(path / weights_file(path))
        d_in, num_latents = int(cfg["d_in"]), int(cfg["d_sae"])
        k = int(cfg["k"]) if cfg.get("k") is not None else None
        activation, multi_topk = str(cfg.get("architecture", "standard")), False
        normalize_decoder = bool(cfg.get("normalize_decoder", False))
    else:
        files = validate_sae_dir(path)
        cfg, tensors, d_in, num_latents = files.cfg, files.tensors, files.d_in, files.num_latents
        k = int(cfg.get("k", 32))
        activation, multi_topk = str(cfg.get("activation", "topk")), bool(cfg.get("multi_topk", False))
        normalize_decoder = bool(cfg.get("normalize_decoder", True))
    sae = load_sae_dir(path)
    norms = sae.W_dec.detach().float().norm(dim=1)
    dtypes = sorted({info.dtype for info in tensors.values()})
    return SaeSummary(
        hookpoint=hookpoint,
        path=str(path),
        fingerprint=fingerprint_sae(path),
        d_in=d_in,
        num_latents=num_latents,
        k=k,
        activation=activation,
        multi_topk=multi_topk,
        normalize_decoder=normalize_decoder,
        dtype="/".join(dtypes),
        weights_bytes=(path / weights_file(path)).stat().st_size + (path / CFG_FILE).stat().st_size,
        num_parameters=sum(p.numel() for p in sae.parameters()),
        decoder_norm_min=float(norms.min()),
        decoder_norm_mean=float(norms.mean()),
        decoder_norm_max=float(torch.max(norms)),
        config=cfg,
    )


def summarize_source(source: str | Path) -> list[SaeSummary]:
    """One summary per hookpoint the source holds."""
    return [summarize_sae_dir(path, hookpoint) for hookpoint, path in locate_sae_dirs(source).items()]
