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
