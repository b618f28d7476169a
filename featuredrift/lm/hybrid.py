"""Hybrid models: the base model's first blocks, then the chat model's (the post's "base model
weights through layer 13 and chat model weights beyond", after Minder et al. 2025).

A hybrid shares its modules with the two models it is made of: nothing is copied, so it costs
no memory and any hook on a shared block (steering at the split's hookpoint) acts in the hybrid
while it runs. It is a `*ForCausalLM` of the chat model's class, so `generate`, KV caches and
every featuredrift helper (hookpoints, capture, interventions) work on it unchanged.

``base_blocks`` counts the blocks taken from the base model: blocks ``0 … base_blocks − 1`` are
the base's, the rest the chat's. The token embedding goes with block 0 and the final norm and
unembedding with the last block, so ``base_blocks = 0`` is exactly the chat model and
``base_blocks = num_layers`` exactly the base model; in between the embedding is the base's and
the head the chat's. The post's hybrid at layer 13 (residual ``layers.13`` from the base) is
``base_blocks = 14``: see `base_blocks_through`.
"""

from __future__ import annotations

import copy

from torch import nn

from featuredrift.lm.hookpoints import decoder_layers, layer_index, transformer_body, unwrap_model


class HybridError(ValueError):
    """Two models that cannot be joined into a hybrid (different architectures or shapes)."""


def base_blocks_through(hookpoint: str) -> int:
    """``base_blocks`` for a hybrid whose residual at `hookpoint` (``layers.N``) is the base model's."""
    return layer_index(hookpoint) + 1


def hybrid_model(base: nn.Module, chat: nn.Module, base_blocks: int) -> nn.Module:
    """A model running the base model's embedding and first `base_blocks` decoder blocks, then
    the chat model's remaining blocks, final norm and unembedding (see the module docstring for
    the two ends). The models must share an architecture and shape (a model and its fine-tune)."""
    base, chat = unwrap_model(base), unwrap_model(chat)
    base_layers, chat_layers = decoder_layers(base), decoder_layers(chat)
    _check_compatible(base, chat, len(base_layers), len(chat_layers))
    n = len(chat_layers)
    if not 0 <= base_blocks <= n:
        raise HybridError(f"base_blocks: expected 0 … {n} (the models' decoder blocks), found {base_blocks}")
    owner = base if base_blocks == n else chat  # the model whose head (final norm, unembedding) is used
    hybrid = _shallow(owner)
    owner_body = transformer_body(owner)
    body = _shallow(owner_body)
    _replace_child(hybrid, owner_body, body)
    layers = nn.ModuleList([*base_layers[:base_blocks], *chat_layers[base_blocks:]])
    _replace_child(body, decoder_layers(owner), layers)
    if base_blocks > 0:
        _replace_child(body, owner.get_input_embeddings(), base.get_input_embeddings())
    return hybrid.eval()


def _check_compatible(base: nn.Module, chat: nn.Module, base_n: int, chat_n: int) -> None:
    if type(base) is not type(chat):
        raise HybridError(f"chat: expected the base model's architecture {type(base).__name__}, found {type(chat).__name__}")
    if base_n != chat_n:
        raise HybridError(f"chat: expected {base_n} decoder blocks (as the base model), found {chat_n}")
    sizes = [getattr(getattr(m, "config", None), "hidden_size", None) for m in (base, chat)]
    if sizes[0] != sizes[1]:
        raise HybridError(f"chat: expected hidden size {sizes[0]} (as the base model), found {sizes[1]}")


def _shallow(module: nn.Module) -> nn.Module:
    """A new module object with the same children, parameters and attributes, whose own
    containers (children, hooks) can change without touching the original."""
    clone = copy.copy(module)
    for name, value in vars(module).items():
        if isinstance(value, dict | set):
            setattr(clone, name, type(value)(value))
    for name in [n for n in vars(clone) if n.startswith("_") and n.endswith("hooks")]:
        setattr(clone, name, type(getattr(clone, name))())  # hooks stay with the original
    return clone


def _replace_child(parent: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Point the attribute path under `parent` that holds `old` at `new` (parent's copy only)."""
    for path, child in parent.named_modules(remove_duplicate=False):
        if child is old and path:
            *head, last = path.split(".")
            holder = parent
            for part in head:
                if not isinstance(holder, nn.Module) or part not in holder._modules:
                    break
                nxt = holder._modules[part]
                if nxt is not old and any(c is old for c in nxt.modules()):
                    nxt = _own_copy(holder, part, nxt)
                holder = nxt
            holder._modules[last] = new
            return
    raise HybridError(f"cannot find {type(old).__name__} inside {type(parent).__name__}")


def _own_copy(holder: nn.Module, name: str, child: nn.Module) -> nn.Module:
    """Replace a shared intermediate container by a shallow copy, so edits below stay local."""
    clone = _shallow(child)
    holder._modules[name] = clone
    return clone
