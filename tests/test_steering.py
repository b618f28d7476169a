"""The post's causal checks on the zoo pair: steering with the top negative-attribution latent
(checked against a direct forward with the vector added), hybrid models (exactly base or chat
at the ends), dataset-level attribution (the sum of per-position attributions), seeded rollouts."""

from __future__ import annotations

import json

import pytest
import torch

from featuredrift.lm.capture import capture_activations, pad_token_lists, tokenize_texts
from featuredrift.lm.hookpoints import decoder_layers, resolve_hookpoint
from featuredrift.monitor import kl
from featuredrift.monitor.metrics import MetricInputError

HOOKPOINT = "layers.2"


@pytest.fixture(scope="module")
def chat_texts(zoo_nano, zoo_nano_models):
    from featuredrift.lm.prompts import render_conversation

    _, _, tokenizer = zoo_nano_models
    rows = [json.loads(line) for line in (zoo_nano.probes / "chat_text.jsonl").read_text().splitlines() if line.strip()]
    return [render_conversation(tokenizer, row["messages"]) for row in rows[:24]]


@pytest.fixture(scope="module")
def diff_decoder(zoo_nano_models, chat_texts):
    """A small diff-SAE of the zoo pair (x_chat − x_base at layers.2), trained here in a second."""
    from featuredrift.lm.capture import collect_token_activations
    from featuredrift.replicate.config import SaeTrainConfig
    from featuredrift.replicate.sae_training import cycle_shuffled, train_sparse_coder

    base, chat, tokenizer = zoo_nano_models
    acts = [collect_token_activations(m, tokenizer, chat_texts, [HOOKPOINT], add_special_tokens=False).activations[HOOKPOINT]
            for m in (base, chat)]
    settings = SaeTrainConfig(num_latents=128, k=8, lr=3e-3, batch_size=256, num_tokens=256 * 80, lr_warmup_steps=5,
                              dead_feature_threshold=20_000, multi_topk=False)
    sae, _ = train_sparse_coder(cycle_shuffled(acts[1] - acts[0], 256, 0), acts[0].shape[1], settings)
    return sae.W_dec.detach()


def _logits(model, tokens):
    return capture_activations(model, *tokens, [HOOKPOINT], return_logits=True).logits


def test_steering_with_the_top_latent_lowers_kl_as_a_direct_forward_does(zoo_nano_models, chat_texts, diff_decoder):
    from featuredrift.monitor.steering import steer_positions

    base, chat, tokenizer = zoo_nano_models
    tokens = tokenize_texts(tokenizer, chat_texts[:8], max_length=64, add_special_tokens=False)
    logits_base, logits_chat = _logits(base, tokens), _logits(chat, tokens)
    per_position = kl.next_token_kl(logits_base, logits_chat, tokens.attention_mask.bool())
    positions = kl.high_kl_positions(per_position, tokens.attention_mask.bool(), n=4).index
    attribution = kl.kl_attribution(base, tokens.input_ids, logits_chat, positions, diff_decoder, HOOKPOINT,
                                    attention_mask=tokens.attention_mask)
    latents = kl.most_negative_latents(attribution, 1)[:, 0]
    assert bool((attribution.attribution.gather(1, latents[:, None]) < 0).all())
    scales = [0.5, 1.0, 2.0, 4.0]
    effect = steer_positions(base, tokens.input_ids, attribution.log_probs_cur, positions, diff_decoder[latents], HOOKPOINT,
                             scales, attention_mask=tokens.attention_mask)
    assert torch.allclose(effect.kl[:, 0], attribution.kl, atol=1e-4)  # λ = 0 is the unsteered KL
    assert bool((effect.kl.min(dim=1).values < effect.kl[:, 0]).all()), effect.kl
    assert float(effect.kl_change.median()) < -0.1

    # The same number from a plain forward with the vector added to the block's output by hand.
    block = resolve_hookpoint(base, HOOKPOINT)
    for p in range(len(positions)):
        row, t = positions[p].tolist()
        best = int(effect.best[p])
        vector = effect.scales[best] * diff_decoder[latents[p]]
        handle = block.register_forward_hook(lambda _m, _a, out, v=vector: (out[0] + v, *out[1:]) if isinstance(out, tuple)
                                             else out + v)
        try:
            with torch.no_grad():
                steered = base(input_ids=tokens.input_ids[row : row + 1], attention_mask=tokens.attention_mask[row : row + 1]).logits
        finally:
            handle.remove()
        direct = kl.next_token_kl(steered[0, t], logits_chat[row, t])
        assert float(direct) == pytest.approx(float(effect.kl[p, best]), rel=1e-4, abs=1e-5)
        probability = torch.softmax(steered[0, t], -1)[int(effect.target[p])]
        assert float(probability) == pytest.approx(float(effect.target_probability[p, best]), rel=1e-4, abs=1e-6)
        assert int(effect.target[p]) == int(logits_chat[row, t].argmax())


def test_steering_rejects_mismatched_inputs(zoo_nano_models):
    from featuredrift.monitor.steering import steer_positions

    base, _, _ = zoo_nano_models
    ids = torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(MetricInputError, match="one row per position"):
        steer_positions(base, ids, torch.zeros(2, 8), torch.tensor([[0, 1]]), torch.zeros(1, 64), HOOKPOINT, [1.0])


def test_activation_addition_takes_one_vector_per_row(zoo_nano_models, chat_texts):
    from featuredrift.monitor.interventions import activation_addition

    base, _, tokenizer = zoo_nano_models
    tokens = tokenize_texts(tokenizer, chat_texts[:2], max_length=32, add_special_tokens=False)
    vectors = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    with activation_addition(base, HOOKPOINT, vectors, 2.0):
        both = _logits(base, tokens)
    for row in range(2):
        one = tokens.input_ids[row : row + 1], tokens.attention_mask[row : row + 1]
        with activation_addition(base, HOOKPOINT, vectors[row], 2.0):
            alone = _logits(base, one)
        width = int(one[1].sum())
        assert torch.allclose(both[row, :width], alone[0, :width], atol=1e-4)
    with pytest.raises(MetricInputError, match="one row per batch row"), activation_addition(base, HOOKPOINT, vectors[:1].repeat(3, 1)):
        _logits(base, tokens)


# ------------------------------------------------------------------ hybrid models


def test_hybrid_is_exactly_base_or_chat_at_the_ends_and_both_in_between(zoo_nano_models, chat_texts):
    from featuredrift.lm.hybrid import HybridError, base_blocks_through, hybrid_model

    base, chat, tokenizer = zoo_nano_models
    tokens = tokenize_texts(tokenizer, chat_texts[:4], max_length=48, add_special_tokens=False)
    n = len(decoder_layers(chat))
    reference = {"base": _logits(base, tokens), "chat": _logits(chat, tokens)}
    assert torch.allclose(_logits(hybrid_model(base, chat, n), tokens), reference["base"], atol=1e-6)
    assert torch.allclose(_logits(hybrid_model(base, chat, 0), tokens), reference["chat"], atol=1e-6)

    split = base_blocks_through(HOOKPOINT)
    assert split == 3
    hybrid = hybrid_model(base, chat, split)
    middle = capture_activations(hybrid, *tokens, ["layers.1", HOOKPOINT], return_logits=True)
    from_base = capture_activations(base, *tokens, ["layers.1", HOOKPOINT])
    assert torch.equal(middle.activations[HOOKPOINT], from_base.activations[HOOKPOINT])  # the base's residual there
    # ... and the chat model's later blocks and head read it: the chat model with its layers.2 output replaced.
    replacement = from_base.activations[HOOKPOINT]
    handle = resolve_hookpoint(chat, HOOKPOINT).register_forward_hook(
        lambda _m, _a, out: (replacement.to(out[0].dtype), *out[1:]) if isinstance(out, tuple) else replacement)
    try:
        patched = _logits(chat, tokens)
    finally:
        handle.remove()
    assert torch.allclose(middle.logits, patched, atol=1e-5)
    assert not torch.allclose(middle.logits, reference["base"], atol=1e-3)
    assert not torch.allclose(middle.logits, reference["chat"], atol=1e-3)
    # Shared modules, own containers: hooks on the hybrid never reach the chat model, nothing is copied.
    assert decoder_layers(hybrid)[split] is decoder_layers(chat)[split]
    assert decoder_layers(hybrid)[0] is decoder_layers(base)[0]
    assert decoder_layers(chat)[0] is not decoder_layers(base)[0]
    handle = hybrid.register_forward_hook(lambda *a: None)
    assert not chat._forward_hooks
    handle.remove()
    with pytest.raises(HybridError, match="base_blocks"):
        hybrid_model(base, chat, n + 1)


def test_hybrid_rejects_models_of_different_shapes(zoo_nano_models):
    from transformers import LlamaConfig, LlamaForCausalLM

    from featuredrift.lm.hybrid import HybridError, hybrid_model

    base, _, _ = zoo_nano_models
    other = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(HybridError, match="decoder blocks"):
        hybrid_model(base, other, 1)


def test_rollouts_are_seeded_recorded_and_leave_the_rng_alone(zoo_nano_models, chat_texts):
    from featuredrift.lm.generation import SamplingSettings, sample_rollouts
    from featuredrift.lm.hybrid import hybrid_model
    from featuredrift.monitor.steering import continuation_shares

    base, chat, tokenizer = zoo_nano_models
    context = tokenizer(chat_texts[0], add_special_tokens=False).input_ids[:20]
    settings = SamplingSettings(num_rollouts=60, max_new_tokens=3, seed=3, batch_size=25)
    hybrid = hybrid_model(base, chat, 3)
    state = torch.get_rng_state()
    first = sample_rollouts(hybrid, tokenizer, context, settings)
    assert torch.equal(torch.get_rng_state(), state)
    assert first == sample_rollouts(hybrid, tokenizer, context, settings)
    assert first != sample_rollouts(hybrid, tokenizer, context, settings._replace(seed=4))
    assert len(first) == 60 and all(1 <= len(r) <= 3 for r in first)
    shares = continuation_shares(first, tokenizer, target=tokenizer.decode(first[0][:1]), tokens=1)
    counts = sum(tokenizer.decode(r[:1]) == tokenizer.decode(first[0][:1]) for r in first)
    assert shares.target_share >= counts / 60 > 0
    assert abs(sum(s for _, s in continuation_shares(first, tokenizer, tokens=1, top=1000).top) - 1.0) < 1e-9
    with pytest.raises(ValueError, match="temperature"):
        sample_rollouts(hybrid, tokenizer, context, settings._replace(temperature=0.0))


# ------------------------------------------------------------------ dataset-level attribution


def test_dataset_attribution_is_the_sum_of_per_position_attributions(zoo_nano, zoo_nano_models, diff_decoder):
    from featuredrift.lm.generation import generate_greedy_ids
    from featuredrift.lm.prompts import format_prompts

    base, chat, tokenizer = zoo_nano_models
    instructions = [json.loads(line)["instruction"] for line in (zoo_nano.probes / "harmful.jsonl").read_text().splitlines()[:3]]
    pairs = generate_greedy_ids(chat, tokenizer, format_prompts(tokenizer, instructions, "chat"), max_new_tokens=6)
    assert all(1 <= len(new) <= 6 for _, new in pairs)
    batch = pad_token_lists([prompt + new for prompt, new in pairs], tokenizer.pad_token_id, "right")
    mask = torch.zeros_like(batch.input_ids, dtype=torch.bool)
    for row, (prompt, new) in enumerate(pairs):
        mask[row, len(prompt) - 1 : len(prompt) + len(new) - 1] = True
    logits_chat = _logits(chat, batch)
    summed = kl.summed_kl_attribution(base, batch.input_ids, logits_chat, mask, diff_decoder, HOOKPOINT,
                                      attention_mask=batch.attention_mask, batch_size=2)
    per_position = kl.kl_attribution(base, batch.input_ids, logits_chat, mask.nonzero(), diff_decoder, HOOKPOINT,
                                     attention_mask=batch.attention_mask, batch_size=4)
    assert summed.num_positions == int(mask.sum())
    assert torch.allclose(summed.attribution, per_position.attribution.sum(0), rtol=1e-3, atol=1e-4)
    rows = mask.nonzero()[:, 0]
    for row in range(len(pairs)):
        assert torch.allclose(summed.per_row[row], per_position.attribution[rows == row].sum(0), rtol=1e-3, atol=1e-4)
        assert float(summed.kl[row]) == pytest.approx(float(per_position.kl[rows == row].sum()), rel=1e-4)
    with pytest.raises(MetricInputError, match="mask"):
        kl.summed_kl_attribution(base, batch.input_ids, logits_chat, torch.zeros_like(mask), diff_decoder, HOOKPOINT)


# ------------------------------------------------------------------ BatchTopK, Arditi et al.'s selection


def test_batch_topk_keeps_k_per_token_on_average_not_per_token():
    from sparsify import SaeConfig, SparseCoder

    from featuredrift.sae_store.activation_training import (
        batch_topk_forward,
        shuffled_batches,
        train_on_activations,
    )

    torch.manual_seed(0)
    sae = SparseCoder(16, SaeConfig(num_latents=64, k=4))
    x = torch.randn(512, 16) @ torch.randn(16, 16)
    out = batch_topk_forward(sae, x[:32])
    assert out.latent_indices.numel() <= 4 * 32
    pre = torch.relu(torch.nn.functional.linear(x[:32] - sae.b_dec, sae.encoder.weight, sae.encoder.bias))
    kept = pre >= out.threshold
    assert int(kept.sum()) == 4 * 32 and len(set(kept.sum(1).tolist())) > 1  # the batch keeps k·B; tokens vary
    fresh = SparseCoder(16, SaeConfig(num_latents=64, k=4))
    summary = train_on_activations(fresh, shuffled_batches(x, 128, torch.Generator().manual_seed(0)), steps=150, lr=3e-3,
                                   batch_topk=True)
    assert summary.activation == "batchtopk" and summary.threshold > 0 and summary.final_fvu < 0.5


def test_arditi_selection_keeps_the_best_bypassing_candidate_that_passes_the_filters(zoo_nano, zoo_nano_models):
    from featuredrift.lm.capture import collect_prompt_window_activations, post_instruction_tokens
    from featuredrift.lm.prompts import format_prompts
    from featuredrift.monitor.judges import refusal_start_tokens
    from featuredrift.monitor.refusal import refusal_direction
    from featuredrift.monitor.refusal_selection import select_refusal_direction

    _, chat, tokenizer = zoo_nano_models
    read = lambda name: [json.loads(line)["instruction"] for line in (zoo_nano.probes / name).read_text().splitlines()]  # noqa: E731
    harmful, harmless = read("harmful.jsonl"), read("harmless.jsonl")
    window = post_instruction_tokens(tokenizer, "chat")
    assert window >= 2  # the zoo template: <|end|>, "\n", <|assistant|>, "\n" after the instruction
    assert post_instruction_tokens(tokenizer, "base") == 1  # "{instruction}\n": the "\n"
    hookpoints = ["layers.1", "layers.2"]
    acts = {label: collect_prompt_window_activations(chat, tokenizer, prompts[:24], hookpoints, window=window)
            for label, prompts in (("harmful", harmful), ("harmless", harmless))}
    last = collect_prompt_window_activations(chat, tokenizer, harmful[:3], hookpoints, window=1)
    assert torch.allclose(last["layers.2"][:, 0], acts["harmful"]["layers.2"][:3, -1], atol=1e-4)  # the readout is the window's last
    candidates = {(offset - window, h): refusal_direction(acts["harmful"][h][:, offset], acts["harmless"][h][:, offset]).float()
                  for h in hookpoints for offset in range(window)}
    tokens = refusal_start_tokens(tokenizer, format_prompts(tokenizer, [harmful[0]], "chat")[0])
    chosen = select_refusal_direction(chat, tokenizer, candidates, harmful[24:32], harmless[24:32], tokens,
                                      kl_threshold=10.0, prune_layer_fraction=0.0)
    kept = [c for c in chosen.candidates if c.kept]
    assert kept and (chosen.position, chosen.hookpoint) == min(kept, key=lambda c: c.bypass)[:2]
    assert chosen.baseline_harmful > min(c.bypass for c in kept)  # ablating the chosen direction lowers refusal
    assert torch.equal(chosen.direction, candidates[chosen.position, chosen.hookpoint])
    strict = select_refusal_direction(chat, tokenizer, {k: v for k, v in candidates.items() if k[1] == "layers.1"},
                                      harmful[24:32], harmless[24:32], tokens, kl_threshold=10.0)
    assert strict.hookpoint == "layers.1"
    with pytest.raises(Exception, match="filtered out.*last 20%"):
        select_refusal_direction(chat, tokenizer, {k: v for k, v in candidates.items() if k[1] == "layers.2"},
                                 harmful[24:32], harmless[24:32], tokens)
