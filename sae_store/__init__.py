"""Finding, loading, validating, fingerprinting, freezing and training sparsify SAEs.

Importing this package makes sparsify CPU-safe: sparsify picks its Triton decoder at import
time, and that decoder fails without a GPU, so we disable it first when no GPU is visible.
Every featuredrift module that needs sparsify imports it after this package.
"""

import os


def _disable_triton_without_gpu() -> None:
    if "SPARSIFY_DISABLE_TRITON" in os.environ:
        return
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # torch missing or broken: sparsify will fail loudly later anyway
        has_gpu = False
    if not has_gpu:
        os.environ["SPARSIFY_DISABLE_TRITON"] = "1"


_disable_triton_without_gpu()

# Public API, imported lazily so `import sae_store` (and `featuredrift --help`) stays instant.
_EXPORTS = {
    "SaeError": "sae_store.validate",
    "validate_sae_dir": "sae_store.validate",
    "load_sae": "sae_store.load",
    "load_saes": "sae_store.load",
    "load_sae_dir": "sae_store.load",
    "locate_sae_dirs": "sae_store.load",
    "SaeRegistry": "sae_store.registry",
    "RegistryEntry": "sae_store.registry",
    "fingerprint_sae": "sae_store.registry",
    "train_sae": "sae_store.train",
    "PAPER_PRESET": "sae_store.train",
    "SaeTrainingPreset": "sae_store.train",
    "SaeTrainingResult": "sae_store.train",
    "summarize_source": "sae_store.summary",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sae_store' has no attribute {name!r}")
