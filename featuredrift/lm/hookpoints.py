"""Resolve sparsify hookpoint names (`layers.N`) to modules of any Hugging Face causal LM.

sparsify names hookpoints relative to the transformer body (`model.base_model` for a plain
`*ForCausalLM`), so `layers.N` is the output of decoder block N: the residual stream after
block N. Wrappers (PEFT, DDP/FSDP `.module`) are peeled off first, so the same name works on
the base model, its chat fine-tune and a LoRA-wrapped copy.
"""

from __future__ import annotations

import re

from torch import nn

HOOKPOINT_PATTERN = re.compile(r"^layers\.(\d+)$")
# Transformer bodies keep their blocks under one of these attribute paths.
_LAYER_CONTAINERS = ("layers", "h", "blocks", "decoder.layers")
# Modules whose output is added into the residual stream, per architecture family. Gemma-2 adds
# the *normalised* sublayer outputs, so its post-norms are the residual writers.
_RESIDUAL_WRITERS = (
    ("post_attention_layernorm", "post_feedforward_layernorm"),  # Gemma-2/3
    ("self_attn", "mlp"),  # Llama, Qwen2, Mistral
    ("attention", "mlp"),  # GPT-NeoX
    ("attn", "mlp"),  # GPT-2 style
)


class HookpointError(ValueError):
    """A hookpoint name that does not exist in the model."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """Peel DDP/FSDP/compile and PEFT wrappers off to reach the `*ForCausalLM` module."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()  # PEFT
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod  # torch.compile
        elif isinstance(getattr(model, "module", None), nn.Module) and not hasattr(model, "config"):
            model = model.module  # DDP / FSDP / DeepSpeed engines
    return model


def transformer_body(model: nn.Module) -> nn.Module:
    """The module sparsify hookpoints are relative to (e.g. `LlamaModel`, `GPTNeoXModel`)."""
    model = unwrap_model(model)
    body = getattr(model, "base_model", None)
    return body if isinstance(body, nn.Module) else model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks, in order."""
    body = transformer_body(model)
    for path in _LAYER_CONTAINERS:
        try:
            layers = body.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    raise HookpointError(
        f"cannot find the decoder blocks of {type(body).__name__}: expected one of "
        f"{', '.join(_LAYER_CONTAINERS)} to be a non-empty ModuleList"
    )


def num_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def hookpoint_at_depth(model: nn.Module, fraction: float) -> str:
    """The `layers.N` hookpoint at a relative depth (the paper's early/middle/late ≈ 0.35/0.55/0.75)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction: expected a depth in [0, 1], found {fraction}")
    n = num_layers(model)
    return f"layers.{min(n - 1, round(fraction * n))}"


def layer_index(hookpoint: str) -> int:
    match = HOOKPOINT_PATTERN.match(hookpoint)
    if match is None:
        raise HookpointError(f"hookpoint: expected a sparsify residual hookpoint 'layers.N', found {hookpoint!r}")
    return int(match.group(1))


def resolve_hookpoint(model: nn.Module, hookpoint: str) -> nn.Module:
    """The decoder block whose output is the residual stream at `hookpoint`."""
    index = layer_index(hookpoint)
    layers = decoder_layers(model)
    if index >= len(layers):
        raise HookpointError(
            f"hookpoint {hookpoint!r} does not exist in {type(unwrap_model(model)).__name__}: "
            f"expected layers.0 … layers.{len(layers) - 1}, found index {index}"
        )
    return layers[index]


def residual_writers(block: nn.Module) -> list[nn.Module]:
    """The sub-modules of one decoder block whose outputs are added to the residual stream."""
    for names in _RESIDUAL_WRITERS:
        modules = [getattr(block, name, None) for name in names]
        if all(isinstance(m, nn.Module) for m in modules):
            return modules
    raise HookpointError(
        f"cannot find the attention/MLP outputs of {type(block).__name__}: expected one of "
        + ", ".join("+".join(names) for names in _RESIDUAL_WRITERS)
    )


def hidden_size(model: nn.Module) -> int:
    config = unwrap_model(model).config
    config = getattr(config, "get_text_config", lambda: config)()
    return int(config.hidden_size)
