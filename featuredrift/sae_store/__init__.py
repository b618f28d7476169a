"""Finding, loading, validating, fingerprinting, freezing and training sparsify SAEs.

Importing this package makes sparsify CPU-safe: sparsify picks its Triton decoder at import
time, and that decoder fails without a GPU, so we disable it first when no GPU is visible.
Every featuredrift module that needs sparsify imports it after this package.
"""

import os
import sys


def _gpu_visible() -> bool:
    """Whether a CUDA GPU is there, without importing torch just for that (CLI start-up stays fast)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return bool(torch.cuda.is_available())
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")


def _disable_triton_without_gpu() -> None:
    if "SPARSIFY_DISABLE_TRITON" not in os.environ and not _gpu_visible():
        os.environ["SPARSIFY_DISABLE_TRITON"] = "1"


_disable_triton_without_gpu()

# Public API, imported lazily so `import sae_store` (and `featuredrift --help`) stays instant.
_EXPORTS = {
    "SaeError": "featuredrift.sae_store.validate",
    "validate_sae_dir": "featuredrift.sae_store.validate",
    "load_sae": "featuredrift.sae_store.load",
    "load_saes": "featuredrift.sae_store.load",
    "load_sae_dir": "featuredrift.sae_store.load",
    "locate_sae_dirs": "featuredrift.sae_store.load",
    "SaeRegistry": "featuredrift.sae_store.registry",
    "RegistryEntry": "featuredrift.sae_store.registry",
    "fingerprint_sae": "featuredrift.sae_store.registry",
    "train_sae": "featuredrift.sae_store.train",
    "PAPER_PRESET": "featuredrift.sae_store.train",
    "SaeTrainingPreset": "featuredrift.sae_store.train",
    "SaeTrainingResult": "featuredrift.sae_store.train",
    "summarize_source": "featuredrift.sae_store.summary",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sae_store' has no attribute {name!r}")
