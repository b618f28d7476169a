"""What real models do that the zoo does not: chat templates whose control tokens are registered
in different ways (Llama-3 headers, Gemma turns, ChatML, Mistral [INST]), tokenizers without
BOS, attention sinks and massive activations, and the Trainer's autocast. Tokenizers are built
offline (tests/chat_tokenizers.py), with each family's real chat template."""

from __future__ import annotations

import math

import pytest
import torch
from chat_tokenizers import CONVERSATION, FAMILIES, build_tokenizer

from featuredrift import sae_store  # noqa: F401  (Triton guard)
from featuredrift.lm.capture import (
    chat_content_mask,
    content_token_mask,
    control_token_ids,
    tokenize_texts,
)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_only_message_contents_are_read_from_a_chat(family):
    tokenizer = build_tokenizer(family)
    control = set(control_token_ids(tokenizer))
    for token in FAMILIES[family][3]:
        assert tokenizer.convert_tokens_to_ids(token) in control, f"{token} not treated as a control token"
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    tokens = tokenize_texts(tokenizer, [text], max_length=None, add_special_tokens=False)
    bos_id = tokenizer.bos_token_id
    if bos_id is not None:
        assert int((tokens.input_ids == bos_id).sum()) == 1, "the rendered chat must carry exactly one BOS"
    mask = content_token_mask(*tokens, tokenizer) & chat_content_mask(tokenizer, [text], [CONVERSATION], tokens)
    read = tokenizer.decode(tokens.input_ids[0][mask[0]].tolist())
    expected = "".join(m["content"] for m in CONVERSATION)
    # Everything read is message content; the only content left out is a first-token sink, if any.
    assert read.replace(" ", "") in expected.replace(" ", "")
    assert len(read.replace(" ", "")) >= len(expected.replace(" ", "")) - 8
    for template_word in ("user", "assistant", "model", "INST", "start_header_id", "im_start", "start_of_turn"):
        assert template_word not in read


def test_a_tokenizer_without_bos_loses_its_first_token_to_the_sink():
    tokenizer = build_tokenizer("qwen2.5-chatml")
    tokens = tokenize_texts(tokenizer, ["bake bread at home", "the dough rise"], max_length=None)
    assert tokens.input_ids[0, 0] != tokenizer.bos_token_id  # no BOS: the first word is the sink
    mask = content_token_mask(*tokens, tokenizer)
    assert not bool(mask[:, 0].any())
    assert bool(mask[0, 1:].any())


def _plant_massive_activations(model, token_id: int, size: float = 2000.0):
    """A hook that adds a huge value on one residual dimension wherever `token_id` occurs, as
    real LLMs' massive activations do (the same for every model that carries the hook)."""
    from featuredrift.lm.hookpoints import resolve_hookpoint

    seen = {}
    pre = model.register_forward_pre_hook(lambda _m, args, kwargs: seen.update(ids=kwargs.get("input_ids")), with_kwargs=True)

    def spike(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hit = (seen["ids"] == token_id).to(hidden.device)
        hidden[..., 3] += size * hit
        return output

    block = resolve_hookpoint(model, "layers.0")
    return [pre, block.register_forward_hook(spike)]


@pytest.mark.slow
def test_massive_activation_tokens_do_not_dominate_scale_and_fvu(zoo_nano, zoo_nano_models):
    from featuredrift.monitor.config import MonitorConfig
    from featuredrift.monitor.drift_monitor import DriftMonitor

    base, _, tokenizer = zoo_nano_models
    settings = dict(sae=str(zoo_nano.sae), probes=str(zoo_nano.probes), max_probes=16, refusal_score_every=0, kl_every=0)
    clean = DriftMonitor(MonitorConfig(**settings))
    clean.start(base, tokenizer)
    clean_layer = next(iter(clean.evaluate(base, 0).layers.values()))

    frequent = int(torch.cat([b.input_ids[b.read_mask] for b in clean.probe_batches["base"]]).mode().values)
    handles = _plant_massive_activations(base, frequent)
    try:
        blind = DriftMonitor(MonitorConfig(**settings, sink_norm_ratio=None))
        blind.start(base, tokenizer)
        blind_layer = next(iter(blind.evaluate(base, 0).layers.values()))
        robust = DriftMonitor(MonitorConfig(**settings))
        robust.start(base, tokenizer)
        robust_layer = next(iter(robust.evaluate(base, 0).layers.values()))
    finally:
        for handle in handles:
            handle.remove()
    # Without the rule the planted tokens own the scale and the variance; with it, the numbers
    # are those of the ordinary tokens.
    assert blind_layer.scale_reference > 5 * clean_layer.scale_reference
    assert robust_layer.scale_reference == pytest.approx(clean_layer.scale_reference, rel=0.15)
    assert robust.provenance()["token_exclusion"]["outliers_left_out"]["base"] > 0
    assert math.isfinite(robust_layer.fvu["reference/base"])


def test_trainer_autocast_does_not_change_the_probe_forward(zoo_nano_models):
    from featuredrift.lm.capture import capture_activations

    base, _, tokenizer = zoo_nano_models
    tokens = tokenize_texts(tokenizer, ["the dough will rise at home"], max_length=None)
    plain = capture_activations(base, *tokens, ["layers.1"]).activations["layers.1"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = capture_activations(base, *tokens, ["layers.1"]).activations["layers.1"]
    assert under_autocast.dtype == plain.dtype == torch.float32
    assert torch.equal(plain, under_autocast)


def test_robust_divergence_sees_small_moves():
    from featuredrift.monitor.metrics import divergence_profile

    torch.manual_seed(0)
    x0 = torch.randn(200, 32)
    xt = x0 + 0.15 * torch.randn(200, 32)  # a few degrees: the paper's τ = 0.9 sees nothing
    profile = divergence_profile(x0, xt, share=0.1)
    assert profile.fractions[0.9] == 0.0 and profile.fractions[0.99] > 0.0
    assert profile.quantiles[0.01] < profile.quantiles[0.5] < 1.0
    assert int(profile.most_divergent.sum()) == 20


def test_the_papers_ambiguities_are_parameters_recorded_with_the_run(zoo_nano, zoo_nano_models):
    from featuredrift.monitor.config import MonitorConfig
    from featuredrift.monitor.drift_monitor import DriftMonitor

    base, chat, tokenizer = zoo_nano_models
    settings = dict(sae=str(zoo_nano.sae), probes=str(zoo_nano.probes), max_probes=8, refusal_score_every=0, kl_every=0)
    readings, layers = {}, {}
    for scale_reading in ("sigma", "energy", "unit_norm"):
        for er_aggregate in ("ratio_of_sums", "median", "mean"):
            monitor = DriftMonitor(MonitorConfig(**settings, scale_reading=scale_reading, er_aggregate=er_aggregate))
            monitor.start(base, tokenizer)
            layer = next(iter(monitor.evaluate(chat, 1).layers.values()))
            readings[scale_reading, er_aggregate], layers[scale_reading, er_aggregate] = layer.explained_ratio, layer
            assert monitor.provenance()["paper_readings"]["scale_reading"] == scale_reading
    # The median is reported whatever the headline; with er_aggregate=median it is the headline.
    assert readings["sigma", "median"] == pytest.approx(layers["sigma", "ratio_of_sums"].explained_ratio_median, rel=1e-9)
    assert len({round(v, 6) for v in readings.values()}) >= 5  # the readings really differ
    literal = DriftMonitor(MonitorConfig(**settings, token_mask="bos_eos"))
    literal.start(base, tokenizer)
    ours = DriftMonitor(MonitorConfig(**settings))
    ours.start(base, tokenizer)
    count = lambda m: sum(int(b.read_mask.sum()) for b in m.probe_batches["chat"])  # noqa: E731
    assert count(literal) > count(ours)  # template tokens are read under the literal rule
    with pytest.raises(ValueError, match="scale_reading"):
        MonitorConfig(**settings, scale_reading="rms")
