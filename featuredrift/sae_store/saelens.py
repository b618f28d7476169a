"""SAEs in SAELens format (Gemma Scope, Llama Scope, most public SAEs): loaded by SAELens itself
and presented with the interface the monitor uses for sparsify SAEs.

A SAELens directory holds `cfg.json` (with an `architecture`: jumprelu, standard, topk, …) and
`sae_weights.safetensors`. Its hook name (`blocks.N.hook_resid_post`) maps to our `layers.N`
(the output of decoder block N). JumpReLU and ReLU SAEs have a variable number of active
features per token: `encode` returns, per chunk, as many slots as its busiest token uses, with
zeros in the unused ones, and every metric counts only non-zero codes as active.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from featuredrift.sae_store.validate import SAELENS_WEIGHTS, SaeError

SAELENS_CFG = "cfg.json"
_RESID_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")


def is_saelens_dir(path: Path) -> bool:
    return (path / SAELENS_WEIGHTS).is_file()


def read_saelens_config(path: Path) -> dict:
    """The SAELens `cfg.json` of a folder, with the sizes every architecture has."""
    try:
        cfg = json.loads((path / SAELENS_CFG).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SaeError(f"{path / SAELENS_CFG}: expected the SAELens config (JSON), found an unreadable file ({error})") from error
    if not isinstance(cfg, dict) or not all(isinstance(cfg.get(key), int) for key in ("d_in", "d_sae")):
        found = {key: cfg.get(key) for key in ("d_in", "d_sae")} if isinstance(cfg, dict) else type(cfg).__name__
        raise SaeError(f"{path / SAELENS_CFG}: expected a SAELens config with integer d_in and d_sae, found {found}")
    return cfg


def saelens_hookpoint(path: Path) -> str | None:
    """`layers.N` for an SAE of the residual stream after block N; None when the config names no hook."""
    cfg = read_saelens_config(path)
    hook = (cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_name")
    if hook is None:
        return None
    match = _RESID_HOOK.match(hook)
    if match is None:
        raise SaeError(
            f"{path / SAELENS_CFG}: expected an SAE of the residual stream (hook 'blocks.N.hook_resid_post', "
            f"our 'layers.N'), found hook {hook!r}"
        )
    return f"layers.{match.group(1)}"


class SaeLensCoder(nn.Module):
    """A SAELens SAE behind the small sparsify-like interface the metrics use."""

    def __init__(self, sae: nn.Module) -> None:
        super().__init__()
        self.sae = sae
        self.architecture = type(sae).__name__
        self.cfg = SimpleNamespace(k=getattr(sae.cfg, "k", None), architecture=self.architecture)
        self.W_skip = None

    @property
    def neuronpedia_id(self) -> str | None:
        """Neuronpedia's id of this SAE (e.g. `gemma-2-2b/12-gemmascope-res-16k`), which SAELens
        releases carry in their config's metadata; None when Neuronpedia does not host it."""
        metadata = getattr(self.sae.cfg, "metadata", None)
        value = getattr(metadata, "neuronpedia_id", None) if metadata is not None else None
        return value or getattr(self.sae.cfg, "neuronpedia_id", None) or None

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    @property
    def num_latents(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def W_dec(self) -> Tensor:  # noqa: N802 - sparsify's name
        return self.sae.W_dec

    @property
    def device(self) -> torch.device:
        return self.sae.W_dec.device

    @property
    def dtype(self) -> torch.dtype:
        return self.sae.W_dec.dtype

    @torch.no_grad()
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, None]:
        """(acts, indices, None) of the non-zero codes, padded with zeros to the chunk's largest L0."""
        dense = self.sae.encode(x)
        width = max(1, int((dense != 0).sum(dim=1).max())) if dense.numel() else 1
        top = dense.abs().topk(width, dim=1)
        return dense.gather(1, top.indices), top.indices, None

    @torch.no_grad()
    def decode(self, top_acts: Tensor, top_indices: Tensor) -> Tensor:
        dense = top_acts.new_zeros(top_acts.shape[0], self.num_latents).scatter_add_(1, top_indices.long(), top_acts)
        return self.sae.decode(dense)


SAELENS_PREFIX = "saelens:"


def saelens_release_dir(source: str) -> Path:
    """A local SAELens directory for `saelens:<release>/<sae id>` (e.g. Gemma Scope's
    `saelens:gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical`).

    The release and id are checked against SAELens's own directory (shipped with it, no
    network), so a typo fails at once with the nearest names. The SAE is loaded once by SAELens
    (`SAE.from_pretrained`, which downloads and converts it) and saved under
    `$FEATUREDRIFT_HOME/saelens/`, from where it loads like any SAELens folder, offline too.
    """
    import difflib

    from featuredrift.extras import require_extra
    from featuredrift.sae_store.registry import featuredrift_home

    release, _, sae_id = source.removeprefix(SAELENS_PREFIX).partition("/")
    if not release or not sae_id:
        raise SaeError(f"SAE source {source!r}: expected saelens:<release>/<sae id>, e.g. "
                       "saelens:gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical")
    target = featuredrift_home() / "saelens" / release / sae_id
    if is_saelens_dir(target):
        return target
    require_extra("saelens", f"loading the SAELens release {release!r}")
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release not in directory:
        near = difflib.get_close_matches(release, list(directory), n=5, cutoff=0.5)
        raise SaeError(f"SAE source {source!r}: expected a SAELens release, found no release {release!r}"
                       + (f"; nearest: {', '.join(near)}" if near else ""))
    ids = list(directory[release].saes_map)
    if sae_id not in ids:
        near = difflib.get_close_matches(sae_id, ids, n=5, cutoff=0.5) or ids[:5]
        raise SaeError(f"SAE source {source!r}: release {release!r} has no SAE {sae_id!r} ({len(ids)} SAEs; "
                       f"e.g. {', '.join(near)})")
    try:
        sae = SAE.from_pretrained(release, sae_id, device="cpu")
    except Exception as error:  # offline, auth, HTTP, conversion: all mean "not available here"
        raise SaeError(f"SAE source {source!r}: SAELens could not fetch it from the Hugging Face Hub (repo "
                       f"{directory[release].repo_id}); it needs network access once: {type(error).__name__}: {error}") from error
    staging = target.with_name(target.name + ".partial")
    sae.save_model(str(staging))
    staging.replace(target)
    return target


def load_saelens_dir(path: Path, *, hookpoint: str | None = None, model=None, device=None, dtype=None) -> SaeLensCoder:
    """Load one SAELens SAE, check it fits the model, freeze it."""
    from featuredrift.extras import require_extra

    require_extra("saelens", f"loading the SAELens SAE in {path}")
    from sae_lens import SAE

    own = saelens_hookpoint(path)
    if hookpoint is not None and own is not None and own != hookpoint:
        raise SaeError(f"SAE {path}: trained at hook {own} (from {SAELENS_CFG}), but requested for {hookpoint}")
    try:
        sae = SAE.load_from_disk(str(path), device=str(device or "cpu"))
    except Exception as error:
        raise SaeError(f"{path / SAELENS_WEIGHTS}: cannot load the SAELens SAE: {type(error).__name__}: {error}") from error
    coder = SaeLensCoder(sae)
    if dtype is not None:
        coder = coder.to(dtype=dtype)
    if model is not None:
        from featuredrift.lm.hookpoints import hidden_size, resolve_hookpoint

        if hookpoint is not None:
            resolve_hookpoint(model, hookpoint)
        if coder.d_in != hidden_size(model):
            raise SaeError(f"SAE {path}: expected d_in = model hidden size {hidden_size(model)}, found d_in = {coder.d_in}")
    for name, tensor in sae.state_dict().items():
        if not torch.isfinite(tensor).all():
            raise SaeError(f"{path / SAELENS_WEIGHTS}: tensor {name!r} holds NaN or infinite values")
    coder.requires_grad_(False)
    return coder.eval()
