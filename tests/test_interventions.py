"""Directional ablation and activation addition on tiny random models (Llama, Gemma-2, PEFT)."""

from __future__ import annotations

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

from featuredrift.lm.hookpoints import decoder_layers, residual_writers, resolve_hookpoint
from featuredrift.monitor.interventions import (
    activation_addition,
    directional_ablation,
    map_hidden_states,
)
from featuredrift.monitor.metrics import MetricInputError

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


# ------------------------------------------------------------------------- on the zoo (slow)


@pytest.fixture(scope="module")
def zoo_refusal(zoo_nano):
    """The zoo chat model, its true refusal direction (difference in means at the SAE
    hookpoint, chat template) fitted on one half of the probes, and the other half to score."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from featuredrift import sae_store
    from featuredrift.lm.capture import collect_prompt_activations
    from featuredrift.monitor import metrics, refusal
    from featuredrift.monitor.probes import read_probe_dir

    tokenizer = AutoTokenizer.from_pretrained(zoo_nano.chat)
    chat = AutoModelForCausalLM.from_pretrained(zoo_nano.chat).eval()
    base = AutoModelForCausalLM.from_pretrained(zoo_nano.base).eval()
    sae = sae_store.load_sae(zoo_nano.sae, hookpoint=zoo_nano.hookpoint)
    probes = read_probe_dir(zoo_nano.probes)
    if {"train", "heldout"} <= set(probes.splits()):
        fit, held = probes.split("train"), probes.split("heldout")
        fit_harmful, fit_harmless, held_harmful, held_harmless = fit.harmful, fit.harmless, held.harmful, held.harmless
    else:  # no split labels: fit on the first half, score the second
        h, n = len(probes.harmful) // 2, len(probes.harmless) // 2
        fit_harmful, held_harmful = probes.harmful[:h], probes.harmful[h:]
        fit_harmless, held_harmless = probes.harmless[:n], probes.harmless[n:]
    hookpoint = zoo_nano.hookpoint

    def read(model, instructions, prompt_format):
        return collect_prompt_activations(model, tokenizer, instructions, [hookpoint], prompt_format=prompt_format)[hookpoint]

    def dbar(model, prompt_format):
        harmful = metrics.encode_batched(sae, read(model, fit_harmful, prompt_format))
        harmless = metrics.encode_batched(sae, read(model, fit_harmless, prompt_format))
        return refusal.feature_diff_in_means(harmful, harmless, sae.num_latents)

    direction = refusal.refusal_direction(read(chat, fit_harmful, "chat"), read(chat, fit_harmless, "chat"))
    return dict(
        chat=chat, tokenizer=tokenizer, sae=sae, hookpoint=hookpoint, direction=direction,
        held_harmful=held_harmful, held_harmless=held_harmless,
        dbar_chat=dbar(chat, "chat"), dbar_base=dbar(base, "base"),
    )


def _refusal(setup, instructions, intervention=None) -> float:
    from featuredrift.monitor.interventions import refusal_score_under

    return refusal_score_under(
        setup["chat"], setup["tokenizer"], instructions, intervention, max_new_tokens=24, batch_size=32
    ).score


@pytest.mark.slow
def test_zoo_ablating_the_refusal_direction_bypasses_refusal(zoo_refusal):
    setup = zoo_refusal
    chat, direction = setup["chat"], setup["direction"]
    before = _refusal(setup, setup["held_harmful"])
    after = _refusal(setup, setup["held_harmful"], lambda: directional_ablation(chat, direction))
    print(f"zoo nano held-out harmful refusal: {before:.3f} -> {after:.3f} after ablating r")
    assert before >= 0.5
    assert after <= 0.25
    assert before - after >= 0.4


@pytest.mark.slow
def test_zoo_adding_the_refusal_direction_induces_refusal(zoo_refusal):
    setup = zoo_refusal
    chat, direction, hookpoint = setup["chat"], setup["direction"], setup["hookpoint"]
    before = _refusal(setup, setup["held_harmless"])
    after = _refusal(setup, setup["held_harmless"], lambda: activation_addition(chat, hookpoint, direction))
    print(f"zoo nano held-out harmless refusal: {before:.3f} -> {after:.3f} after adding r")
    assert after - before >= 0.5


@pytest.mark.slow
def test_zoo_chat_feature_reconstruction_mediates_refusal_better_than_base_features(zoo_refusal):
    """Fig. 2's shape: NNLS reconstructions of r from the chat model's top refusal features
    ablate refusal; reconstructions from the base model's top features do much less."""
    from featuredrift.monitor import refusal

    setup = zoo_refusal
    chat, sae, r = setup["chat"], setup["sae"], setup["direction"]
    before = _refusal(setup, setup["held_harmful"])
    k = min(8, int((setup["dbar_chat"] > 0).sum()), int((setup["dbar_base"] > 0).sum()))
    assert k >= 2
    results = {}
    for source in ("chat", "base"):
        features = refusal.top_refusal_features(setup[f"dbar_{source}"], k)
        rec = refusal.reconstruct_direction(sae.W_dec, features, r)
        after = _refusal(setup, setup["held_harmful"], lambda d=rec.direction.float(): directional_ablation(chat, d))
        results[source] = (rec.cosine, after)
        print(f"zoo nano k={k} {source} features: cos={rec.cosine:.3f} nmse={rec.nmse:.3f} harmful refusal {before:.3f} -> {after:.3f}")
    assert results["chat"][0] > results["base"][0]
    assert results["chat"][1] <= results["base"][1] - 0.2


@pytest.mark.slow
def test_zoo_score_under_takes_a_judge_object_or_a_callable(zoo_refusal):
    from featuredrift.monitor.interventions import refusal_score_under, score_under
    from featuredrift.monitor.judges import RefusalJudge, is_refusal

    setup = zoo_refusal
    chat, tokenizer, prompts = setup["chat"], setup["tokenizer"], setup["held_harmful"][:8]
    plain = refusal_score_under(chat, tokenizer, prompts, max_new_tokens=16)
    assert plain.flags == [is_refusal(c) for c in plain.completions]
    assert plain.score == sum(plain.flags) / 8
    judged = score_under(chat, tokenizer, prompts, judge=RefusalJudge(), max_new_tokens=16)
    assert (judged.judge, judged.flags) == ("refusal", plain.flags)
    complied = score_under(chat, tokenizer, prompts, judge=lambda _i, cs: [not is_refusal(c) for c in cs], max_new_tokens=16)
    assert complied.score == pytest.approx(1 - plain.score)
    with pytest.raises(MetricInputError, match="^instructions:"):
        score_under(chat, tokenizer, [])
