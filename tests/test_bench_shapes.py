"""`featuredrift bench --shape`: what it builds and what it writes (never how fast: timings on
shared machines are noise, so the bench prints its targets and tests assert structure only)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from featuredrift import sae_store  # noqa: F401  (disables Triton on CPU before sparsify loads)
from featuredrift.bench import shapes as bench_real
from featuredrift.bench.shape_models import (
    SHAPES,
    ShapeError,
    build_sae,
    build_tokenizer,
    get_shape,
)
from featuredrift.cli.main import app

HEADLINE_KEYS = ("callback_share", "evaluation_over_forward", "encode_over_matmul", "reference_cache_mb",
                 "peak_memory_ratio", "offline_over_live")


@pytest.mark.parametrize(
    ("name", "hidden", "heads", "kv_heads", "vocab"),
    [("llama-3.2-1b", 2048, 32, 8, 128_256), ("gemma-2-2b", 2304, 8, 4, 256_000), ("qwen2.5-0.5b", 896, 14, 2, 151_936)],
)
def test_real_shapes_have_the_released_widths(name, hidden, heads, kv_heads, vocab):
    config = get_shape(name).config(layers=3)
    assert (config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (
        hidden, heads, kv_heads, vocab)
    assert config.num_hidden_layers == 3
    if name == "gemma-2-2b":
        assert config.model_type == "gemma2" and config.head_dim == 256 and config.intermediate_size == 9216


def test_unknown_shape_names_the_known_ones():
    with pytest.raises(ShapeError, match="llama-3.2-1b.*gemma-2-2b.*qwen2.5-0.5b.*found 'gpt-5'"):
        get_shape("gpt-5")
    result = CliRunner().invoke(app, ["bench", "--shape", "gpt-5"])
    assert result.exit_code != 0 and "qwen2.5-0.5b" in result.output
    result = CliRunner().invoke(app, ["bench", "--shape", "tiny", "--device", "tpu"])
    assert result.exit_code != 0 and "expected 'cpu' or 'cuda'" in result.output and "found 'tpu'" in result.output


def test_tokenizer_has_the_models_vocabulary_and_a_chat_template():
    tokenizer = build_tokenizer(5000, ["the quick fox", "jumps over"])
    assert len(tokenizer) == 5000
    ids = tokenizer("the quick fox").input_ids
    assert ids[0] == tokenizer.bos_token_id and tokenizer.unk_token_id not in ids and len(ids) == 4
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "jumps over"}], tokenize=False, add_generation_prompt=True)
    assert "jumps over" in rendered
    with pytest.raises(ShapeError, match="vocab"):
        build_tokenizer(8, ["many different words here"])


def test_sae_has_the_asked_size_and_rejects_impossible_k():
    sae = build_sae(16, latents=64, k=8)
    assert (sae.d_in, sae.num_latents, sae.cfg.k) == (16, 64, 8)
    with pytest.raises(ShapeError, match="^k:"):
        build_sae(16, latents=64, k=65)


def test_tensor_megabytes_walks_nested_readings():
    from featuredrift.monitor.drift_monitor import ModelReading

    reading = ModelReading({"base": {"layers.0": torch.zeros(256, 1024)}}, torch.zeros(512, 512, dtype=torch.float16))
    assert bench_real.tensor_megabytes(reading) == pytest.approx(1.0 + 0.5)


@pytest.mark.slow  # about 30 s: a training step, evaluations, a fresh process for the offline route
def test_bench_at_the_tiny_shape_writes_every_key(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, [
        "bench", "--shape", "tiny", "--latents", "256", "--k", "8", "--layers", "2", "--probes", "1",
        "--measure-seq", "32", "--train-batch", "2", "--train-seq", "64", "--repeats", "1", "--json", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert "callback" in result.output and ("met" in result.output or "missed" in result.output)
    results = json.loads(out.read_text())
    for key in HEADLINE_KEYS:
        assert math.isfinite(results[key]) and results[key] > 0, key
    assert 0 < results["callback_share"] < results["callback_share_default_probes"] < 1  # the default set is bigger
    assert results["evaluation"]["default_probe_tokens_estimate"] > results["evaluation"]["probe_tokens"]
    assert results["peak_memory_ratio"] >= 1.0
    assert set(results["targets"]) <= {*HEADLINE_KEYS, "callback_share_default_probes"} and all(isinstance(t["met"], bool) for t in results["targets"].values())
    assert results["shape"] == {**results["shape"], "name": "tiny", "hidden": SHAPES["tiny"].hidden, "latents": 256, "layers": 2}
    training = results["training"]
    assert training["step_tokens"] == 2 * 64 and training["measured_tokens"] == 32
    assert set(training["forward_backward_s"]) == {"16", "32"}
    assert training["step_s"] >= training["optimizer_step_s"] > 0
    assert training["forward_backward_fixed_s"] >= 0 and training["forward_backward_per_token_s"] >= 0
    assert results["offline"]["offline_s"] > results["offline"]["save_s"] > 0
    rows = results["scaling"]
    assert {row["vary"] for row in rows} == {"probe_tokens", "latents", "hookpoints"}
    assert sorted(r["latents"] for r in rows if r["vary"] == "latents") == [64, 128, 256]
    assert [r["hookpoints"] for r in rows if r["vary"] == "hookpoints"] == [1, 2]
    assert all(r["evaluation_s"] >= r["forward_s"] > 0 for r in rows)
