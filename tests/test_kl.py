"""Next-token KL, its summary, KL attribution (checked against finite differences) and dashboards."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from featuredrift.lm.hookpoints import resolve_hookpoint
from featuredrift.monitor import kl
from featuredrift.monitor.interventions import activation_addition
from featuredrift.monitor.metrics import EmptySetError, MetricInputError

HIDDEN = 32


def tiny_llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def test_next_token_kl_hand_computed():
    ref = torch.tensor([[0.5, 0.5], [0.9, 0.1]]).log()
    cur = torch.tensor([[0.25, 0.75], [0.9, 0.1]]).log()
    values = kl.next_token_kl(ref, cur, dtype=torch.float64)
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert values.tolist() == pytest.approx([expected, 0.0], abs=1e-7)
    # logits are shift-invariant; log-probs can be passed directly
    assert kl.next_token_kl(ref + 3.0, cur - 1.0)[0].item() == pytest.approx(expected, rel=1e-5)
    assert kl.next_token_kl(ref, cur, log_probs=True)[0].item() == pytest.approx(expected, rel=1e-5)
    masked = kl.next_token_kl(ref, cur, torch.tensor([False, True]))
    assert masked.tolist() == [0.0, 0.0]


def test_next_token_kl_bad_input():
    with pytest.raises(MetricInputError, match="^cur:"):
        kl.next_token_kl(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(MetricInputError, match="^ref:.*NaN"):
        kl.next_token_kl(torch.tensor([[float("nan"), 0.0]]), torch.zeros(1, 2))
    with pytest.raises(MetricInputError, match="^mask:"):
        kl.next_token_kl(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3, dtype=torch.bool))


def test_summarise_kl_hand_computed():
    values = torch.arange(100, dtype=torch.float32).reshape(4, 25)
    summary = kl.summarise_kl(values)
    assert summary.mean.item() == pytest.approx(49.5)
    assert summary.p95.item() == pytest.approx(0.95 * 99)  # linear interpolation
    assert (summary.max.item(), summary.num_positions) == (99.0, 100)
    mask = values < 10
    assert kl.summarise_kl(values, mask).mean.item() == pytest.approx(4.5)
    with pytest.raises(EmptySetError, match="^mask:"):
        kl.summarise_kl(values, torch.zeros_like(mask))


def test_kl_summary_of_two_logit_tensors():
    ref = torch.randn(3, 5, 11)
    summary = kl.kl_summary(ref, ref.clone())
    assert summary.mean.item() == pytest.approx(0.0, abs=1e-6)
    other = kl.kl_summary(ref, torch.randn(3, 5, 11))
    assert other.mean.item() > 0 and other.p95.item() >= other.mean.item() * 0.5


def test_compact_log_probs_keep_the_kl_exact_at_full_support_and_a_lower_bound_below():
    torch.manual_seed(0)
    vocab = 2000
    # Peaked next-token distributions, as language models have, and a moved copy.
    ref = torch.randn(64, vocab) * 5
    cur = ref + torch.randn(64, vocab) * 0.7
    exact = kl.next_token_kl(ref, cur, dtype=torch.float64)
    full = kl.compact_log_probs(ref)
    assert full.indices.shape == (64, vocab)
    on_full = kl.compact_kl(full, kl.compact_log_probs(cur, support=full.indices))
    assert torch.allclose(on_full.double(), exact, atol=5e-5)  # float32 log-softmax
    errors = []
    for k in (16, 64, 256):
        compact = kl.compact_log_probs(ref, k)
        approx = kl.compact_kl(compact, kl.compact_log_probs(cur, support=compact.indices)).double()
        assert bool((approx <= exact + 1e-5).all()), "coarsening can only lower the KL"
        errors.append(float((exact - approx).mean() / exact.mean()))
        assert compact.indices.shape == compact.log_probs.shape == (64, k) and compact.rest_log_mass.shape == (64,)
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.05, errors


def test_compact_kl_refuses_log_probs_read_elsewhere():
    ref = kl.compact_log_probs(torch.randn(4, 50), 8)
    other = kl.compact_log_probs(torch.randn(4, 50), 8)
    with pytest.raises(MetricInputError, match="support"):
        kl.compact_kl(ref, other)
    with pytest.raises(MetricInputError, match="support: expected"):
        kl.compact_log_probs(torch.randn(4, 50), support=torch.zeros(3, 8, dtype=torch.long))


def test_high_kl_positions():
    values = torch.tensor([[0.1, 5.0, 0.3], [2.0, 0.0, 9.0]])
    top = kl.high_kl_positions(values, n=2)
    assert top.index.tolist() == [[1, 2], [0, 1]]
    assert top.kl.tolist() == [9.0, 5.0]
    mask = torch.tensor([[True, False, True], [False, False, False]])
    top = kl.high_kl_positions(values, mask, n=5)  # only 2 candidates
    assert top.index.tolist() == [[0, 2], [0, 0]]
    with pytest.raises(EmptySetError, match="^mask:"):
        kl.high_kl_positions(values, torch.zeros_like(mask))


# ------------------------------------------------------------------------------ attribution


@pytest.fixture(scope="module")
def pair():
    """A reference and a 'fine-tuned' tiny Llama in float64, the current logits, a decoder."""
    reference = tiny_llama(seed=0).double()
    current = tiny_llama(seed=1).double()
    input_ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(3))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :2] = 0  # left padding on the second row
    with torch.no_grad():
        logits_cur = current(input_ids=input_ids, attention_mask=attention_mask).logits
    decoder = torch.nn.functional.normalize(torch.randn(20, HIDDEN, dtype=torch.float64), dim=1)
    return reference, input_ids, attention_mask, logits_cur, decoder


def kl_at(model, input_ids, attention_mask, logits_cur, row, t) -> float:
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    values = kl.next_token_kl(logits[row, t], logits_cur[row, t], dtype=torch.float64)
    return float(values)


def test_kl_attribution_matches_finite_differences_for_all_positions(pair):
    reference, input_ids, attention_mask, logits_cur, decoder = pair
    positions = torch.tensor([[0, 7], [1, 5], [0, 3]])
    result = kl.kl_attribution(
        reference, input_ids, logits_cur, positions, decoder, "layers.1",
        attention_mask=attention_mask, batch_size=2,
    )
    assert result.attribution.shape == (3, 20)
    eps = 1e-3  # RMSNorm computes in float32 even in a float64 model: smaller steps hit its rounding
    for p, (row, t) in enumerate(positions.tolist()):
        assert result.kl[p].item() == pytest.approx(kl_at(reference, input_ids, attention_mask, logits_cur, row, t), rel=1e-5)
        for latent in (0, 7, 19):
            values = []
            for sign in (1, -1):
                with activation_addition(reference, "layers.1", decoder[latent], scale=sign * eps):
                    values.append(kl_at(reference, input_ids, attention_mask, logits_cur, row, t))
            finite_difference = (values[0] - values[1]) / (2 * eps)
            assert result.attribution[p, latent].item() == pytest.approx(finite_difference, rel=1e-3, abs=1e-7)


def test_kl_attribution_at_the_position_only(pair):
    reference, input_ids, attention_mask, logits_cur, decoder = pair
    row, t, eps = 0, 6, 1e-3
    result = kl.kl_attribution(
        reference, input_ids, logits_cur, torch.tensor([[row, t]]), decoder, "layers.1",
        attention_mask=attention_mask, intervene_at="position",
    )
    latent = int(result.attribution[0].abs().argmax())  # well above the float32 RMSNorm noise
    block = resolve_hookpoint(reference, "layers.1")
    values = []
    for sign in (1, -1):
        def hook(_m, _a, out, sign=sign):
            out = out.clone()
            out[row, t] += sign * eps * decoder[latent]
            return out

        handle = block.register_forward_hook(hook)
        values.append(kl_at(reference, input_ids, attention_mask, logits_cur, row, t))
        handle.remove()
    finite_difference = (values[0] - values[1]) / (2 * eps)
    assert result.attribution[0, latent].item() == pytest.approx(finite_difference, rel=1e-3, abs=1e-7)
    everywhere = kl.kl_attribution(reference, input_ids, logits_cur, torch.tensor([[row, t]]), decoder, "layers.1",
                                   attention_mask=attention_mask)
    assert not torch.allclose(everywhere.attribution, result.attribution)


def test_kl_attribution_most_negative_latent_moves_the_reference_toward_current(pair):
    reference, input_ids, attention_mask, logits_cur, decoder = pair
    positions = torch.tensor([[0, 7]])
    result = kl.kl_attribution(reference, input_ids, logits_cur, positions, decoder, "layers.1",
                               attention_mask=attention_mask)
    best = int(kl.most_negative_latents(result, 1)[0, 0])
    assert result.attribution[0, best].item() < 0
    with activation_addition(reference, "layers.1", decoder[best], scale=1e-2):
        steered = kl_at(reference, input_ids, attention_mask, logits_cur, 0, 7)
    assert steered < result.kl[0].item()


def test_kl_attribution_accepts_an_sae_and_leaves_the_model_as_it_was(pair):
    from sparsify import SparseCoder, SparseCoderConfig

    from featuredrift import sae_store  # noqa: F401

    reference, input_ids, attention_mask, logits_cur, decoder = pair
    sae = SparseCoder(HIDDEN, SparseCoderConfig(num_latents=48, k=4), dtype=torch.float64)
    reference.train()
    hooks_before = sum(len(m._forward_hooks) for m in reference.modules())
    result = kl.kl_attribution(reference, input_ids, logits_cur, torch.tensor([[1, 7]]), sae, "layers.0",
                               attention_mask=attention_mask)
    assert reference.training
    reference.eval()
    assert result.attribution.shape == (1, 48)
    assert all(p.grad is None for p in reference.parameters())
    assert sum(len(m._forward_hooks) for m in reference.modules()) == hooks_before


def test_kl_attribution_bad_input(pair):
    reference, input_ids, attention_mask, logits_cur, decoder = pair
    with pytest.raises(MetricInputError, match="^positions:"):
        kl.kl_attribution(reference, input_ids, logits_cur, torch.tensor([[0, 8]]), decoder, "layers.1")
    with pytest.raises(MetricInputError, match="^positions:"):
        kl.kl_attribution(reference, input_ids, logits_cur, torch.tensor([0, 1]), decoder, "layers.1")
    with pytest.raises(MetricInputError, match="^logits_cur:"):
        kl.kl_attribution(reference, input_ids, logits_cur[:1], torch.tensor([[0, 1]]), decoder, "layers.1")
    with pytest.raises(MetricInputError, match="^decoder:"):
        kl.kl_attribution(reference, input_ids, logits_cur, torch.tensor([[0, 1]]), decoder[:, :5], "layers.1")
    with pytest.raises(MetricInputError, match="^intervene_at:"):
        kl.kl_attribution(reference, input_ids, logits_cur, torch.tensor([[0, 1]]), decoder, "layers.1",
                          intervene_at="nowhere")


# ------------------------------------------------------------------------------- dashboards


def test_kl_dashboard_hand_computed():
    p0 = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.25, 0.25], [0.1, 0.1, 0.8]], dtype=torch.float64)
    pt = torch.tensor([[0.1, 0.2, 0.7], [0.25, 0.5, 0.25], [0.1, 0.1, 0.8]], dtype=torch.float64)
    attribution = torch.tensor(
        [
            [-5.0, -1.0, 0.0, 2.0, -3.0],  # latent 1 ranks 2 (after 0 and 4)
            [-1.0, -0.5, -2.0, -3.0, -4.0],  # latent 1 ranks 4: excluded
            [1.0, -0.1, 2.0, 3.0, 4.0],  # latent 1 ranks 0
        ],
        dtype=torch.float64,
    )
    result = kl.KLAttribution(
        positions=torch.tensor([[0, 3], [1, 2], [0, 5]]),
        attribution=attribution,
        gradient=torch.zeros(3, 4),
        kl=torch.tensor([0.4, 0.9, 0.2]),
        log_probs_ref=p0.log(),
        log_probs_cur=pt.log(),
    )
    rows = kl.kl_dashboard(result, 1, num_up=1, num_down=1)
    assert [(r.row, r.position, r.rank) for r in rows] == [(0, 3, 2), (0, 5, 0)]  # highest KL first
    first = rows[0]
    assert first.attribution == pytest.approx(-1.0)
    assert (first.top_ref.token_id, first.top_ref.value) == (0, pytest.approx(0.7))
    assert (first.top_cur.token_id, first.top_cur.value) == (2, pytest.approx(0.7))
    assert first.upweighted[0].token_id == 2
    assert first.upweighted[0].value == pytest.approx(0.7 * math.log(0.7 / 0.1))
    assert first.downweighted[0].token_id == 0
    assert first.downweighted[0].value == pytest.approx(0.7 * math.log(0.7 / 0.1))
    assert [(r.row, r.position, r.rank) for r in kl.kl_dashboard(result, 3)] == [(1, 2, 1)]
    assert kl.kl_dashboard(result, 3, top_rank=1) == []  # never the most negative
    with pytest.raises(MetricInputError, match="^latent:"):
        kl.kl_dashboard(result, 5)
