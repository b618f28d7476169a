"""Check a sparsify SAE directory before trusting it: config, safetensors header, tensor shapes,
finite weights, and fit to a model. Every failure is one `SaeError` naming the file, what was
expected and what was found. Nothing here unpickles anything: the header is JSON, the tensors
are safetensors.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import NamedTuple

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
SAELENS_WEIGHTS = "sae_weights.safetensors"  # a SAELens folder's weights, next to its own cfg.json
TRAINED_AT_FILE = "featuredrift_training.json"  # written by `sae train` in each SAE folder: its hookpoint
ACTIVATIONS = ("topk", "groupmax")
# A real SAE header is a few hundred bytes; anything huge is corruption, not a header.
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}


class SaeError(ValueError):
    """A missing, corrupt or mismatched sparse autoencoder."""


class TensorInfo(NamedTuple):
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


class SaeFiles(NamedTuple):
    """What a validated directory holds, read without loading any tensor."""

    path: Path
    cfg: dict
    d_in: int
    num_latents: int
    tensors: dict[str, TensorInfo]


def read_sae_config(path: Path) -> dict:
    """Parse and check `cfg.json`; returns the dict with `num_latents` resolved."""
    cfg_path = Path(path) / CFG_FILE
    if not cfg_path.is_file():
        raise SaeError(f"{cfg_path}: missing SAE config: expected a sparsify {CFG_FILE} next to {WEIGHTS_FILE}")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SaeError(f"{cfg_path}: unreadable SAE config: expected valid JSON, found {type(err).__name__}: {err}") from err
    if not isinstance(cfg, dict):
        raise SaeError(f"{cfg_path}: expected a JSON object, found {type(cfg).__name__}")

    def positive_int(name: str, default=None, *, allow_zero=False) -> int:
        value = cfg.get(name, default)
        ok = isinstance(value, int) and not isinstance(value, bool) and (value > 0 or (allow_zero and value == 0))
        if not ok:
            expected = "an integer ≥ 0" if allow_zero else "a positive integer"
            found = "missing" if name not in cfg and default is None else repr(value)
            raise SaeError(f"{cfg_path}: field {name!r}: expected {expected}, found {found}")
        return value

    d_in = positive_int("d_in")
    k = positive_int("k", 32)
    num_latents = positive_int("num_latents", 0, allow_zero=True) or d_in * positive_int("expansion_factor", 32)
    activation = cfg.get("activation", "topk")
    if activation not in ACTIVATIONS:
        raise SaeError(f"{cfg_path}: field 'activation': expected one of {ACTIVATIONS}, found {activation!r}")
    if k > num_latents:
        raise SaeError(f"{cfg_path}: field 'k': expected at most num_latents={num_latents}, found {k}")
    return {**cfg, "num_latents": num_latents}


def read_safetensors_header(weights_path: Path) -> dict[str, TensorInfo]:
    """The tensor table of a safetensors file, with its size checked against the header."""
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise SaeError(f"{weights_path}: missing SAE weights: expected a sparsify {WEIGHTS_FILE} next to {CFG_FILE}")
    size = weights_path.stat().st_size
    if size < 8:
        raise SaeError(f"{weights_path}: truncated safetensors file: expected at least 8 bytes, found {size}")
    with open(weights_path, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        if header_len > min(size - 8, _MAX_HEADER_BYTES):
            raise SaeError(
                f"{weights_path}: corrupt safetensors header: header length {header_len} bytes, "
                f"but the file has only {size - 8} bytes after the length field"
            )
        raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SaeError(f"{weights_path}: corrupt safetensors header: expected JSON, found {type(err).__name__}: {err}") from err
    if not isinstance(header, dict):
        raise SaeError(f"{weights_path}: corrupt safetensors header: expected a JSON object, found {type(header).__name__}")
    header.pop("__metadata__", None)

    tensors: dict[str, TensorInfo] = {}
    data_end = 0
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
        except (TypeError, KeyError, ValueError) as err:
            raise SaeError(f"{weights_path}: corrupt safetensors header entry {name!r}: {info!r}") from err
        if dtype not in _DTYPE_BYTES:
            raise SaeError(f"{weights_path}: tensor {name!r}: unknown dtype {dtype!r}")
        nbytes = math.prod(shape) * _DTYPE_BYTES[dtype]
        if end - begin != nbytes or begin < 0:
            raise SaeError(
                f"{weights_path}: tensor {name!r}: shape {list(shape)} of {dtype} needs {nbytes} bytes, "
                f"header gives offsets [{begin}, {end}]"
            )
        tensors[name] = TensorInfo(dtype, shape, nbytes)
        data_end = max(data_end, end)
    expected_size = 8 + header_len + data_end
    if size != expected_size:
        raise SaeError(
            f"{weights_path}: truncated or padded safetensors file: header describes {expected_size} bytes, "
            f"file has {size}"
        )
    return tensors


def expected_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of `sparsify.SparseCoder` for this config."""
    d_in, num_latents = cfg["d_in"], cfg["num_latents"]
    shapes = {
        "encoder.weight": (num_latents, d_in),
        "encoder.bias": (num_latents,),
        "W_dec": (num_latents, d_in),
        "b_dec": (d_in,),
    }
    if cfg.get("skip_connection", False):
        shapes["W_skip"] = (d_in, d_in)
    return shapes


def validate_sae_dir(path: Path | str) -> SaeFiles:
    """Check config, header and shapes of one hookpoint directory without loading tensors."""
    path = Path(path)
    if not path.is_dir():
        raise SaeError(f"{path}: expected an SAE directory holding {CFG_FILE} and {WEIGHTS_FILE}, found no such directory")
    cfg = read_sae_config(path)
    weights_path = path / WEIGHTS_FILE
    tensors = read_safetensors_header(weights_path)
    expected = expected_shapes(cfg)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise SaeError(
            f"{weights_path}: expected tensors {sorted(expected)}, found {sorted(tensors)}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unexpected {extra})" if extra else "")
        )
    for name, shape in expected.items():
        if tensors[name].shape != shape:
            raise SaeError(
                f"{weights_path}: tensor {name!r}: expected shape {list(shape)} "
                f"(d_in={cfg['d_in']}, num_latents={cfg['num_latents']} from {CFG_FILE}), found {list(tensors[name].shape)}"
            )
    return SaeFiles(path, cfg, cfg["d_in"], cfg["num_latents"], tensors)


def check_finite(sae, path: Path | str) -> None:
    """Raise if any weight is NaN or infinite (a diverged or corrupted training run)."""
    import torch

    for name, tensor in sae.state_dict().items():
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise SaeError(
                f"{Path(path) / WEIGHTS_FILE}: tensor {name!r}: expected finite weights, "
                f"found {bad} NaN/inf of {tensor.numel()}"
            )


def check_fits_model(files: SaeFiles, model, hookpoint: str | None) -> None:
    """The SAE must read the model's residual stream at an existing hookpoint.

    `HookpointError` from `monitor.hookpoints` is re-raised as `SaeError` (chained), so callers
    that load SAEs catch one exception type for every way an SAE can fail to fit.
    """
    from featuredrift.lm.hookpoints import HookpointError, hidden_size, resolve_hookpoint

    expected = hidden_size(model)
    if files.d_in != expected:
        raise SaeError(
            f"{files.path / CFG_FILE}: d_in: expected the hidden size of "
            f"{type(model).__name__} ({expected}), found {files.d_in}"
        )
    if hookpoint is None:
        raise SaeError(f"{files.path}: cannot check the SAE against the model: no hookpoint given (expected 'layers.N')")
    try:
        resolve_hookpoint(model, hookpoint)
    except HookpointError as err:
        raise SaeError(f"{files.path}: {err}") from err
