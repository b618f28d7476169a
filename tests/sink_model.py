"""A tiny Qwen2 causal LM that behaves like a real no-BOS chat model where the monitor cares:
its first position is an attention sink carrying massive activations.

Real LLMs (Qwen2.5, SmolLM, Llama) park attention on position 0 and give that position a
residual norm two orders of magnitude above the rest, concentrated on a couple of dimensions.
A random-initialised model has neither, so the mechanism is written into the weights of the
first two blocks (the others stay random):

* block 0, head 0 attends to position 0 from every position (query and key are constant
  biases; RoPE makes the score grow with the distance) and copies a projection of that first
  token's embedding into a reserved block of dimensions. Its MLP computes, with SwiGLU's exact
  square ``z·silu(z) + (−z)·silu(−z) = z²``, how far that copy is from the current token's
  own projection: zero exactly where the current token is the first one.
* block 1's MLP fires a gate only where that distance is zero and writes a huge value into
  two "massive" dimensions.

Everything else (embeddings, the other heads, blocks 2+) is random and trainable, so a short
SFT moves the ordinary tokens while the sink keeps dominating raw norms.
"""

from __future__ import annotations

import math

import torch

HIDDEN = 64
HEAD_DIM = 16
CONSTANT_DIM = 0  # every embedding holds the same value here: the gate's reference
CONTENT_DIMS = range(1, 40)  # token identity
COPY_DIMS = range(40, 40 + HEAD_DIM)  # head 0's copy of the first token's projection
DISTANCE_DIM = 56  # block 0's squared distance to the first token (0 at the sink)
MASSIVE_DIMS = (60, 61)
SINK_LAYER = 1  # the block whose MLP writes the massive activation
COPY_SCALE = 0.05  # the copy stays a small part of every token's residual (the detector rescales it)


def sink_config(vocab_size: int, *, layers: int = 4, bos_token_id=None, eos_token_id=None, pad_token_id=None):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=4 * HIDDEN, num_hidden_layers=layers,
        num_attention_heads=HIDDEN // HEAD_DIM, num_key_value_heads=HIDDEN // HEAD_DIM, max_position_embeddings=512,
        rope_theta=10_000.0, tie_word_embeddings=False, use_sliding_window=False,
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
    )


def build_sink_model(tokenizer, *, layers: int = 4, sink_ratio: float = 100.0, seed: int = 0):
    """A Qwen2ForCausalLM for `tokenizer` whose position 0 is an attention sink with a residual
    norm about `sink_ratio` × the median token's at block `SINK_LAYER` and after."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = sink_config(len(tokenizer), layers=layers, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = Qwen2ForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        projection = _plant_embeddings(model, generator)
        _plant_first_token_copy(model, projection)
        _plant_distance(model, projection)
        _plant_massive_gate(model)
        _scale_massive_activation(model, tokenizer, sink_ratio)
    return model


def _plant_embeddings(model, generator) -> torch.Tensor:
    """Token identity in CONTENT_DIMS, rows of equal norm (so RMSNorm scales every token alike),
    a constant in CONSTANT_DIM, nothing in the reserved dimensions. Returns head 0's value
    projection (HEAD_DIM × HIDDEN) of the normalised embedding."""
    embed = model.get_input_embeddings().weight
    content = torch.randn(embed.shape[0], len(CONTENT_DIMS), generator=generator)
    content = content / content.norm(dim=1, keepdim=True) * math.sqrt(len(CONTENT_DIMS))
    embed.zero_()
    embed[:, CONSTANT_DIM] = 1.0
    embed[:, CONTENT_DIMS.start : CONTENT_DIMS.stop] = content
    projection = torch.zeros(HEAD_DIM, HIDDEN)
    projection[:, CONTENT_DIMS.start : CONTENT_DIMS.stop] = torch.randn(HEAD_DIM, len(CONTENT_DIMS), generator=generator)
    return projection / math.sqrt(len(CONTENT_DIMS))


def _plant_first_token_copy(model, projection: torch.Tensor) -> None:
    """Block 0: head 0 reads position 0 from everywhere; the other heads and block 1's
    attention write nothing, so the detector's inputs stay exact."""
    attention = model.model.layers[0].self_attn
    inv_freq = model.model.rotary_emb.inv_freq
    slowest = int(inv_freq.argmin())
    theta = float(inv_freq[slowest])
    # score(i, j) = A·sin((i − j)·θ) for constant q, k on the slowest rotary pair: it grows with
    # the distance, so position 0 wins by ≈ A·θ nats over position 1 from every query.
    amplitude = 40.0 / theta
    half = HEAD_DIM // 2
    head = slice(0, HEAD_DIM)
    for proj in (attention.q_proj, attention.k_proj):
        proj.weight[head] = 0.0
        proj.bias[head] = 0.0
    magnitude = math.sqrt(amplitude * math.sqrt(HEAD_DIM))
    attention.q_proj.bias[slowest] = magnitude
    attention.k_proj.bias[slowest + half] = magnitude
    attention.v_proj.weight[head] = projection
    attention.v_proj.bias[head] = 0.0
    attention.o_proj.weight.zero_()
    for k, dim in enumerate(COPY_DIMS):
        attention.o_proj.weight[dim, k] = COPY_SCALE
    model.model.layers[SINK_LAYER].self_attn.o_proj.weight.zero_()


def _plant_distance(model, projection: torch.Tensor) -> None:
    """Block 0's MLP: DISTANCE_DIM ← ε Σ_k z_k², z = (copy of the first token's projection −
    this token's projection), all read from the normalised residual."""
    mlp = model.model.layers[0].mlp
    for proj in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
        proj.weight.zero_()
    embedding_rms = math.sqrt((1 + len(CONTENT_DIMS)) / HIDDEN)  # every row's RMS, by construction
    for k, dim in enumerate(COPY_DIMS):
        read = torch.zeros(HIDDEN)
        read[dim] = 1.0
        read -= COPY_SCALE * projection[k] / embedding_rms
        read /= COPY_SCALE
        for neuron, sign in ((2 * k, 1.0), (2 * k + 1, -1.0)):
            mlp.gate_proj.weight[neuron] = sign * read
            mlp.up_proj.weight[neuron] = sign * read
            mlp.down_proj.weight[DISTANCE_DIM, neuron] = 0.02


def _plant_massive_gate(model) -> None:
    """Block 1's MLP: one neuron, silu(γ(c − β·distance))·c, open only where distance = 0,
    writes into MASSIVE_DIMS (scaled later)."""
    mlp = model.model.layers[SINK_LAYER].mlp
    for proj in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
        proj.weight.zero_()
    mlp.gate_proj.weight[0, CONSTANT_DIM] = 10.0
    mlp.gate_proj.weight[0, DISTANCE_DIM] = -200.0
    mlp.up_proj.weight[0, CONSTANT_DIM] = 1.0
    mlp.down_proj.weight[MASSIVE_DIMS[0], 0] = 1.0
    mlp.down_proj.weight[MASSIVE_DIMS[1], 0] = -0.5


def _scale_massive_activation(model, tokenizer, sink_ratio: float) -> None:
    """Scale the massive write so that position 0's norm is `sink_ratio` × the median norm."""
    from featuredrift.lm.capture import capture_activations, tokenize_texts

    texts = ["The quick brown fox jumps over the lazy dog near the river bank today.",
             "How do I bake bread at home with flour, water and a little yeast?"]
    tokens = tokenize_texts(tokenizer, texts, max_length=None, add_special_tokens=False)
    hookpoint = f"layers.{SINK_LAYER}"
    x = capture_activations(model, *tokens, [hookpoint]).activations[hookpoint]
    norms = x.norm(dim=-1)[tokens.attention_mask.bool()]
    sink = float(x[:, 0].norm(dim=-1).mean())
    typical = float(norms.median())
    massive = model.model.layers[SINK_LAYER].mlp.down_proj.weight
    written = math.sqrt(max(sink**2 - typical**2, 1e-12))
    massive[list(MASSIVE_DIMS), 0] *= sink_ratio * typical / written
