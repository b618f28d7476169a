"""A model with an attention sink and no BOS, as Qwen2.5 and SmolLM are: the monitor, `sae train`
and `replicate` keep the sink out of FVU, σ and SAE training, agree with each other, and still
see a small fine-tune that moves no token past the paper's τ = 0.9.

The pair is built once per session (tests/sink_fixtures.py): a Qwen2 model whose position 0
carries massive activations (tests/sink_model.py), its SAE from `featuredrift sae train`, and a
short refusal SFT with FeatureDriftCallback attached."""

from __future__ import annotations

import json
import math

import pytest
import torch
from sink_fixtures import PROBES, live_and_replicated, monitor_settings, replicate_config

from featuredrift import sae_store  # noqa: F401  (Triton guard)

pytestmark = pytest.mark.slow


def _load(folder, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def _base_texts() -> list[str]:
    return [json.loads(line)["text"] for line in (PROBES / "base_text.jsonl").read_text().splitlines() if line.strip()]


def _layer_activations(model, tokenizer, hookpoint):
    from featuredrift.lm.capture import capture_activations, tokenize_texts

    tokens = tokenize_texts(tokenizer, _base_texts(), max_length=128)
    return tokens, capture_activations(model, *tokens, [hookpoint]).activations[hookpoint]


def test_the_first_position_is_an_attention_sink_with_massive_dimensions(sink_pair):
    base, tokenizer = _load(sink_pair.base, attn_implementation="eager")  # eager: attention weights out
    chat, _ = _load(sink_pair.chat)
    tokens, x = _layer_activations(base, tokenizer, sink_pair.hookpoint)
    assert tokenizer.bos_token_id is None and tokenizer("bake bread")["input_ids"][0] not in tokenizer.all_special_ids
    real = tokens.attention_mask.bool()
    norms = x.norm(dim=-1)
    rest = norms[:, 1:][real[:, 1:]]
    assert float(norms[:, 0].median()) > 50 * float(rest.median())
    # Two dimensions hold the sink's norm, as in real models' massive activations.
    top2 = x[:, 0].pow(2).topk(2, dim=-1).values.sum(-1) / x[:, 0].pow(2).sum(-1)
    assert float(top2.min()) > 0.99
    # Block 0's head 0 attends to position 0 from every position.
    with torch.no_grad():
        attentions = base(input_ids=tokens.input_ids[:2, :20], output_attentions=True).attentions[0]
    assert float(attentions[:, 0, 1:, 0].min()) > 0.99
    # The fine-tune leaves the sink where it was: its raw cosine stays at 1.
    _, xt = _layer_activations(chat, tokenizer, sink_pair.hookpoint)
    assert float(torch.nn.functional.cosine_similarity(x[:, 0], xt[:, 0], dim=-1).min()) > 0.999


def _monitors(sink_pair):
    """(robust, blind) monitors started on the base model: ours, and one that reads position 0
    (Appx. A.2's literal mask, no norm-outlier rule)."""
    from featuredrift.monitor.config import MonitorConfig
    from featuredrift.monitor.drift_monitor import DriftMonitor

    base, tokenizer = _load(sink_pair.base)
    settings = {**monitor_settings(sink_pair.root, sink_pair.sae), "kl_every": 0}
    robust = DriftMonitor(MonitorConfig(**settings))
    blind = DriftMonitor(MonitorConfig(**settings, token_mask="bos_eos", sink_norm_ratio=None))
    for monitor in (robust, blind):
        monitor.start(base, tokenizer)
    return base, tokenizer, robust, blind


def test_sink_exclusion_keeps_fvu_and_scale_off_position_zero(sink_pair):
    from featuredrift.monitor.metrics import encode_batched, fvu

    base, tokenizer, robust, blind = _monitors(sink_pair)
    chat, _ = _load(sink_pair.chat)
    ours = robust.evaluate(chat, 1).layers[sink_pair.hookpoint]
    literal = blind.evaluate(chat, 1).layers[sink_pair.hookpoint]
    tokens, x = _layer_activations(base, tokenizer, sink_pair.hookpoint)
    content = x[:, 1:][tokens.attention_mask[:, 1:].bool()]
    sigma_content = float(content.pow(2).sum(-1).mean().sqrt())
    # σ is the ordinary tokens' scale with the sink out, the sink's without.
    assert ours.scale_reference == pytest.approx(sigma_content, rel=0.02)
    assert literal.scale_reference > 5 * ours.scale_reference
    # FVU is the ordinary tokens' FVU with the sink out (computed here independently) ...
    sae = sae_store.load_saes(str(sink_pair.sae), [sink_pair.hookpoint])[sink_pair.hookpoint]
    assert ours.fvu["reference/base"] == pytest.approx(float(fvu(content, encode_batched(sae, content).reconstruction)), rel=1e-3)
    assert ours.fvu["reference/base"] < 0.9
    # ... and a different number, owned by a few sink tokens, with it in.
    assert abs(literal.fvu["reference/base"] - ours.fvu["reference/base"]) > 0.1
    assert robust.provenance()["token_exclusion"]["outliers_left_out"]["base"] == 0  # the first-token rule did it


def test_sae_train_leaves_the_sink_out(sink_pair, tmp_path):
    """`sae train` starts every chunk with the separator (a control token) so position 0, the
    sink, is never trained on; an SAE trained on the same chunks with the sink in is skewed."""
    from featuredrift.sae_store.train import train_sae

    record = sink_pair.sae_training
    base, tokenizer = _load(sink_pair.base)
    assert tokenizer.eos_token_id in record["exclude_tokens"]
    texts = sink_pair.texts.read_text().splitlines()
    settings = {k: record[k] for k in ("num_latents", "k", "ctx_len", "batch_size", "lr")}
    skewed = train_sae(base, tokenizer, texts, [sink_pair.hookpoint], out_dir=tmp_path / "skewed",
                       exclude_special_tokens=False, **settings)
    # Both measured on the same content tokens (the sink out): training on the sink costs the rest.
    assert record["final_fvu"][sink_pair.hookpoint] < 0.5
    assert skewed.final_fvu[sink_pair.hookpoint] > record["final_fvu"][sink_pair.hookpoint] + 0.1


def test_live_numbers_agree_with_replicate(sink_pair, tmp_path):
    """The callback's step-0 and final evaluations equal `replicate` on the saved base/fine-tuned
    pair, the same SAE and the same probe texts: one capture path, one token mask."""
    from featuredrift.replicate.pipeline import run_replication

    results = run_replication(replicate_config(sink_pair), tmp_path / "replicate", stages="transfer,drift", progress=False)
    for name, (live, batch) in live_and_replicated(sink_pair, results).items():
        assert live == pytest.approx(batch, rel=1e-4, abs=1e-6), name
    last = sink_pair.reports[-1].layers[sink_pair.hookpoint]
    drift = results["stages"]["drift"]["hookpoints"][sink_pair.hookpoint]["base"]
    # No token passes τ = 0.9 in either: ER is undefined in both (results.json writes NaN as null).
    assert math.isnan(last.explained_ratio) and drift["explained_ratio"] is None


def test_small_fine_tune_drift_is_visible_where_tau_sees_nothing(sink_pair):
    first, last = (report.layers[sink_pair.hookpoint] for report in (sink_pair.reports[0], sink_pair.reports[-1]))
    assert last.divergent_fraction == 0.0  # the paper's τ = 0.9 sees nothing ...
    assert math.isnan(last.explained_ratio) and math.isnan(last.intersection_ratio_divergent)
    # ... while the cosine distribution, the finer τ and the most-divergent share do.
    assert last.cosine_quantiles["0.01"] < 0.999 and last.divergent_fraction_by_tau["0.99"] > 0
    assert math.isfinite(last.explained_ratio_most_divergent) and last.explained_ratio_most_divergent > 0
    assert 0 < last.intersection_ratio_most_divergent < 1
    assert first.intersection_ratio_most_divergent == 1.0 and math.isnan(first.explained_ratio_most_divergent)
    assert sink_pair.reports[-1].kl_mean > 0
