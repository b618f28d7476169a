"""What `featuredrift sae inspect` reports about an SAE: config, fingerprint, sizes and
decoder-norm statistics, as plain data (the CLI renders it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from featuredrift.sae_store.load import load_sae_dir, locate_sae_dirs
from featuredrift.sae_store.registry import fingerprint_sae
from featuredrift.sae_store.validate import CFG_FILE, WEIGHTS_FILE, validate_sae_dir


@dataclass(frozen=True)
class SaeSummary:
    hookpoint: str
    path: str
    fingerprint: str
    d_in: int
    num_latents: int
    k: int
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

    files = validate_sae_dir(path)
    sae = load_sae_dir(path)
    norms = sae.W_dec.detach().float().norm(dim=1)
    dtypes = sorted({info.dtype for info in files.tensors.values()})
    return SaeSummary(
        hookpoint=hookpoint,
        path=str(files.path),
        fingerprint=fingerprint_sae(files.path),
        d_in=files.d_in,
        num_latents=files.num_latents,
        k=int(files.cfg.get("k", 32)),
        activation=str(files.cfg.get("activation", "topk")),
        multi_topk=bool(files.cfg.get("multi_topk", False)),
        normalize_decoder=bool(files.cfg.get("normalize_decoder", True)),
        dtype="/".join(dtypes),
        weights_bytes=(files.path / WEIGHTS_FILE).stat().st_size + (files.path / CFG_FILE).stat().st_size,
        num_parameters=sum(p.numel() for p in sae.parameters()),
        decoder_norm_min=float(norms.min()),
        decoder_norm_mean=float(norms.mean()),
        decoder_norm_max=float(torch.max(norms)),
        config=files.cfg,
    )


def summarize_source(source: str | Path) -> list[SaeSummary]:
    """One summary per hookpoint the source holds."""
    return [summarize_sae_dir(path, hookpoint) for hookpoint, path in locate_sae_dirs(source).items()]
