"""Causal interventions on the residual stream (§5, Eqs. 5–6) and the glue that scores them.

Both interventions are context managers that register forward hooks and always remove them,
also when the body raises. They act on every forward call inside the ``with`` block, so they
apply to all positions of the prompt and to every newly generated token when the KV cache is
used (cached keys/values were computed from already-intervened activations). Their hooks are
prepended, so observers registered earlier (activation capture, ``output_hidden_states``) see
the intervened activations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import NamedTuple

import torch
from torch import Tensor, nn

from featuredrift.lm.hookpoints import (
    decoder_layers,
    hidden_size,
    residual_writers,
    resolve_hookpoint,
)
from featuredrift.lm.prompts import PromptFormat, format_prompts
from featuredrift.monitor.metrics import MetricInputError, check_tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)


class _CastCache:
    """A vector cast once per (device, dtype) it meets, so hooks do no per-call conversion."""

    def __init__(self, vector: Tensor):
        self.vector = vector.detach()
        self._casts: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def like(self, x: Tensor) -> Tensor:
        key = (x.device, x.dtype)
        if key not in self._casts:
            self._casts[key] = self.vector.to(device=x.device, dtype=x.dtype)
        return self._casts[key]


ABLATION_READINGS = ("unit", "unnormalised")


def _unit_vector(direction: Tensor, hidden: int, name: str = "direction", *, normalise: bool = True) -> Tensor:
    check_tensor(name, direction, ndim=1)
    if direction.shape[0] != hidden:
        raise MetricInputError(f"{name}: expected the model's hidden size {hidden}, found {direction.shape[0]}")
    norm = direction.double().norm()
    if float(norm) == 0.0:
        raise MetricInputError(f"{name}: expected a non-zero direction, found the zero vector")
    return direction.double() / norm if normalise else direction.double()


def project_out(x: Tensor, unit: Tensor) -> Tensor:
    """``x − û ûᵀx`` along the last dim; low-precision inputs are projected in float32."""
    if x.dtype in _LOW_PRECISION:
        xf = x.float()
        u = unit.to(device=x.device, dtype=torch.float32)
        return (xf - (xf @ u).unsqueeze(-1) * u).to(x.dtype)
    return x - (x @ unit).unsqueeze(-1) * unit


def map_hidden_states(output, fn: Callable[[Tensor], Tensor]):
    """Apply ``fn`` to the hidden-state part of a module output (a tensor or a tuple/list whose
    first element is the hidden states, e.g. attention's ``(output, weights)``)."""
    if isinstance(output, Tensor):
        return fn(output)
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return type(output)((fn(output[0]), *output[1:]))
    raise TypeError(f"cannot intervene on a module output of type {type(output).__name__}")


@contextlib.contextmanager
def _hooks(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def directional_ablation(model: nn.Module, direction: Tensor, *, reading: str = "unit") -> Iterator[Tensor]:
    """Remove ``direction`` from the residual stream everywhere (Eq. 5): ``x ← x − û ûᵀx`` with
    ``û = direction/‖direction‖`` at every decoder block input (embeddings included) and every
    attention/MLP output that is added to the residual stream. Yields the vector used (float64).

    ``reading="unnormalised"`` applies Eq. 5 as printed, ``x ← x − r (rᵀx)`` with the
    reconstructed direction itself: that removes ``‖r‖²`` times the component along ``r̂`` (a
    projection only when ‖r‖ = 1), so it over-ablates long directions and under-ablates short ones."""
    if reading not in ABLATION_READINGS:
        raise MetricInputError(f"ablation reading: expected one of {ABLATION_READINGS}, found {reading!r}")
    layers = decoder_layers(model)
    unit = _unit_vector(direction, hidden_size(model), normalise=reading == "unit")
    cache = _CastCache(unit)

    def ablate(x: Tensor) -> Tensor:
        return project_out(x, cache.like(x))

    def pre_hook(_module, args, kwargs):
        if args:
            return (ablate(args[0]), *args[1:]), kwargs
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": ablate(kwargs["hidden_states"])}
        raise TypeError("directional_ablation: decoder block called without hidden states")

    def writer_hook(_module, _args, output):
        return map_hidden_states(output, ablate)

    handles = []
    try:
        for block in layers:
            handles.append(block.register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=True))
            for writer in residual_writers(block):
                handles.append(writer.register_forward_hook(writer_hook, prepend=True))
    except BaseException:
        for handle in handles:
            handle.remove()
        raise
    with _hooks(handles):
        yield unit


@contextlib.contextmanager
def activation_addition(
    model: nn.Module, hookpoint: str, vector: Tensor, scale: float = 1.0
) -> Iterator[None]:
    """Add ``scale · vector`` to the residual stream at ``hookpoint`` (the output of decoder
    block N for ``layers.N``), at every position (Eq. 6 with ``scale = 1``; the post's steering,
    ``layers[l].output += λv``). ``vector`` is ``[d]``, or ``[B, d]``: one vector per row of
    every batch run inside the block (steering many contexts, each with its own latent, at once)."""
    block = resolve_hookpoint(model, hookpoint)
    if not isinstance(vector, Tensor) or vector.ndim not in (1, 2):
        found = tuple(vector.shape) if isinstance(vector, Tensor) else type(vector).__name__
        raise MetricInputError(f"vector: expected a [d] or [B, d] tensor, found {found}")
    check_tensor("vector", vector)
    hidden = hidden_size(model)
    if vector.shape[-1] != hidden:
        raise MetricInputError(f"vector: expected the model's hidden size {hidden}, found {vector.shape[-1]}")
    per_row = vector.ndim == 2
    cache = _CastCache(vector.detach().double().mul(scale))

    def add(x: Tensor) -> Tensor:
        shift = cache.like(x)
        if per_row:
            if x.ndim != 3 or x.shape[0] != shift.shape[0]:
                raise MetricInputError(f"vector: expected one row per batch row ({x.shape[0]}), found {shift.shape[0]}")
            shift = shift.unsqueeze(1)
        return x + shift

    def hook(_module, _args, output):
        return map_hidden_states(output, add)

    with _hooks([block.register_forward_hook(hook, prepend=True)]):
        yield


# --------------------------------------------------------------------------------------------
# scoring interventions by generation


Intervention = AbstractContextManager | Callable[[], AbstractContextManager] | None
Judge = Callable[[Sequence[str], Sequence[str]], Sequence[bool]]


class InterventionScore(NamedTuple):
    score: float
    """Fraction of completions the judge flags (refusals for the default judge)."""
    flags: list[bool]
    completions: list[str]
    judge: str


def refusal_judge(instructions: Sequence[str], completions: Sequence[str]) -> list[bool]:
    """Substring refusal judge (Appx. C.3): True when a completion refuses."""
    from featuredrift.monitor.judges import is_refusal

    return [is_refusal(c) for c in completions]


def score_under(
    model: nn.Module,
    tokenizer,
    instructions: Sequence[str],
    intervention: Intervention = None,
    *,
    judge: Judge | object | None = None,
    prompt_format: PromptFormat = "chat",
    max_new_tokens: int = 32,
    batch_size: int = 16,
) -> InterventionScore:
    """Format ``instructions`` (chat template or base format), generate greedily under the
    intervention, and score the completions with ``judge``.

    ``intervention`` is a context manager or a zero-argument factory of one (e.g.
    ``lambda: directional_ablation(model, r)``); a factory is entered fresh for this call.
    ``judge`` is a callable ``(instructions, completions) -> list[bool]`` or an object with a
    ``judge`` method and a ``name`` (monitor.judges' SafetyJudge); default: refusal substrings.
    """
    from featuredrift.lm.generation import generate_greedy

    if len(instructions) == 0:
        raise MetricInputError("instructions: expected at least one instruction, found none")
    prompts = format_prompts(tokenizer, list(instructions), prompt_format)
    if intervention is None:
        context = contextlib.nullcontext()
    elif isinstance(intervention, AbstractContextManager):
        context = intervention
    elif callable(intervention):
        context = intervention()
    else:
        raise MetricInputError(
            f"intervention: expected a context manager or a factory of one, found {type(intervention).__name__}"
        )
    with context, torch.no_grad():
        completions = generate_greedy(
            model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size
        )
    judge = refusal_judge if judge is None else judge
    if hasattr(judge, "judge"):
        name, flags = str(getattr(judge, "name", type(judge).__name__)), judge.judge(list(instructions), completions)
    else:
        name, flags = getattr(judge, "__name__", "judge"), judge(list(instructions), completions)
    flags = [bool(f) for f in flags]
    return InterventionScore(sum(flags) / len(flags), flags, list(completions), name)


def refusal_score_under(
    model: nn.Module,
    tokenizer,
    instructions: Sequence[str],
    intervention: Intervention = None,
    **kwargs,
) -> InterventionScore:
    """Refusal score (fraction of completions with a refusal substring) under an intervention."""
    return score_under(model, tokenizer, instructions, intervention, judge=refusal_judge, **kwargs)
