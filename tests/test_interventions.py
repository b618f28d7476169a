"""Directional ablation and activation addition on tiny random models (Llama, Gemma-2, PEFT)."""

from __future__ import annotations

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

from monitor.hookpoints import decoder_layers, residual_writers, resolve_hookpoint
from monitor.interventions import activation_addition, directional_ablation, map_hidden_states
from monitor.metrics import MetricInputError

HIDDEN = 32


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gemma2() -> Gemma2ForCausalLM:
    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=64, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
        sliding_window=16,
    )
    return Gemma2ForCausalLM(config).eval()


class ResidualRecorder:
    """Records every tensor the ablation is meant to clean: block inputs, attention/MLP outputs
    and block outputs (hooks registered after the intervention's, so they see its result)."""

    def __init__(self, model):
        self.seen: list[torch.Tensor] = []
        self.handles = []
        for block in decoder_layers(model):
            self.handles.append(block.register_forward_pre_hook(self._pre, with_kwargs=True))
            self.handles.append(block.register_forward_hook(self._post))
            for writer in residual_writers(block):
                self.handles.append(writer.register_forward_hook(self._post))

    def _pre(self, _module, args, kwargs):
        self.seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    def _post(self, _module, _args, output):
        map_hidden_states(output, lambda x: self.seen.append(x.detach().clone()) or x)

    def max_relative_component(self, unit: torch.Tensor) -> float:
        return max(float(((x @ unit).abs() / x.norm(dim=-1).clamp_min(1e-12)).max()) for x in self.seen)

    def remove(self):
        for handle in self.handles:
            handle.remove()


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("make_model", [tiny_llama, tiny_gemma2], ids=["llama", "gemma2"])
def test_ablation_removes_the_direction_everywhere_during_cached_generation(make_model):
    model = make_model()
    direction = torch.randn(HIDDEN)
    unit = direction / direction.norm()
    input_ids = torch.randint(0, 64, (2, 7))
    before = hook_count(model)

    recorder = ResidualRecorder(model)
    with torch.no_grad():
        model(input_ids)
    baseline = recorder.max_relative_component(unit)
    recorder.remove()
    assert baseline > 0.05  # the direction is really present without the intervention

    with directional_ablation(model, direction) as used:
        assert used.dtype == torch.float64 and torch.allclose(used.float(), unit)
        recorder = ResidualRecorder(model)
        with torch.no_grad():
            out = model.generate(input_ids, max_new_tokens=5, do_sample=False, use_cache=True, pad_token_id=0)
        recorder.remove()
    assert out.shape[1] == 12
    # prompt pass + 4 cached single-token passes, each through every hooked point
    assert any(x.shape[1] == 1 for x in recorder.seen)
    assert recorder.max_relative_component(unit) < 1e-5
    assert hook_count(model) == before


def test_ablation_changes_outputs_and_final_hidden_state_has_no_component():
    model = tiny_llama()
    direction = torch.randn(HIDDEN)
    unit = direction / direction.norm()
    input_ids = torch.randint(0, 64, (1, 9))
    with torch.no_grad():
        plain = model(input_ids, output_hidden_states=True)
        with directional_ablation(model, direction):
            ablated = model(input_ids, output_hidden_states=True)
    assert not torch.allclose(plain.logits, ablated.logits)
    # hidden_states[i] for i < L are block inputs (embeddings first): all orthogonal to û
    for hidden in ablated.hidden_states[:-1]:
        assert float((hidden @ unit).abs().max()) < 1e-5 * float(hidden.norm(dim=-1).max())


def test_ablation_removes_hooks_when_the_body_raises():
    model = tiny_llama()
    before = hook_count(model)
    with pytest.raises(RuntimeError, match="boom"):
        with directional_ablation(model, torch.randn(HIDDEN)):
            assert hook_count(model) > before
            raise RuntimeError("boom")
    assert hook_count(model) == before


def test_ablation_in_bfloat16_keeps_dtype():
    model = tiny_llama().to(torch.bfloat16)
    direction = torch.randn(HIDDEN)
    unit = direction / direction.norm()
    with directional_ablation(model, direction), torch.no_grad():
        recorder = ResidualRecorder(model)
        logits = model(torch.randint(0, 64, (1, 5))).logits
        recorder.remove()
    assert logits.dtype == torch.bfloat16
    assert all(x.dtype == torch.bfloat16 for x in recorder.seen)
    # bf16 keeps ~3 significant digits of the projected activations
    components = [float(((x.float() @ unit).abs() / x.float().norm(dim=-1)).max()) for x in recorder.seen]
    assert max(components) < 2e-2


def test_ablation_through_a_peft_wrapper():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    direction = torch.randn(HIDDEN)
    unit = direction / direction.norm()
    with directional_ablation(model, direction), torch.no_grad():
        hidden = model(input_ids=torch.randint(0, 64, (1, 6)), output_hidden_states=True).hidden_states
    assert float((hidden[2] @ unit).abs().max()) < 1e-5 * float(hidden[2].norm(dim=-1).max())


def test_ablation_bad_input():
    model = tiny_llama()
    with pytest.raises(MetricInputError, match="^direction: expected a non-zero"):
        with directional_ablation(model, torch.zeros(HIDDEN)):
            pass
    with pytest.raises(MetricInputError, match="^direction: expected the model's hidden size"):
        with directional_ablation(model, torch.ones(HIDDEN + 1)):
            pass
    with pytest.raises(MetricInputError, match="^direction:.*NaN"):
        with directional_ablation(model, torch.full((HIDDEN,), float("nan"))):
            pass
    assert hook_count(model) == 0


def block_outputs(model, input_ids):
    outputs = {}
    handles = [
        block.register_forward_hook(lambda _m, _a, out, i=i: outputs.__setitem__(i, out.detach().clone()))
        for i, block in enumerate(decoder_layers(model))
    ]
    with torch.no_grad():
        model(input_ids)
    for handle in handles:
        handle.remove()
    return outputs


def test_addition_shifts_the_hookpoint_by_exactly_the_vector():
    model = tiny_llama().double()
    input_ids = torch.randint(0, 64, (2, 6))
    vector = torch.randn(HIDDEN, dtype=torch.float64)
    plain = block_outputs(model, input_ids)
    with activation_addition(model, "layers.1", vector, scale=2.5):
        added = block_outputs(model, input_ids)
    assert torch.allclose(plain[0], added[0])  # upstream untouched
    assert torch.allclose(added[1] - plain[1], (2.5 * vector).expand_as(plain[1]), atol=1e-12)
    assert not torch.allclose(plain[2], added[2])  # downstream changes
    assert hook_count(model) == 0


def test_addition_during_cached_generation_and_bad_input():
    model = tiny_llama()
    block = resolve_hookpoint(model, "layers.0")
    input_ids = torch.randint(0, 64, (1, 4))
    vector = torch.randn(HIDDEN)

    def generate_recording():
        seen = []  # registered after the intervention's hook, so it sees the shifted output
        handle = block.register_forward_hook(lambda _m, _a, out: seen.append(out.clone()))
        with torch.no_grad():
            model.generate(input_ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
        handle.remove()
        return seen

    plain = generate_recording()
    with activation_addition(model, "layers.0", vector):
        shifted = generate_recording()
    # the prompt pass is identical up to the hookpoint, so the shift is exactly the vector
    assert torch.allclose(shifted[0] - plain[0], vector.expand_as(plain[0]), atol=1e-5)
    assert len(shifted) == 3 and shifted[-1].shape[1] == 1  # cached one-token passes are shifted too
    assert not torch.allclose(shifted[-1], plain[-1])
    with pytest.raises(MetricInputError, match="^vector:"):
        with activation_addition(model, "layers.0", torch.ones(HIDDEN - 1)):
            pass
    with pytest.raises(ValueError, match="layers.9"):
        with activation_addition(model, "layers.9", vector):
            pass
    assert hook_count(model) == 0
