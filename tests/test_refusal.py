"""Refusal direction, feature difference-in-means, refusal features and NNLS reconstruction."""

from __future__ import annotations

import math

import pytest
import torch

from featuredrift.monitor import refusal
from featuredrift.monitor.metrics import EmptySetError, MetricInputError


def t(rows, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype)


def test_refusal_direction_hand_computed():
    r = refusal.refusal_direction(t([[1.0, 2.0], [3.0, 4.0]]), t([[0.0, 1.0]]))
    assert r.dtype == torch.float64
    assert r.tolist() == [2.0, 2.0]


def test_refusal_direction_accumulates_in_float64():
    # Each value is exact in float32, but a float32 sum loses the 1 next to 1e8 (spacing 8).
    harmful = t([[1e8], [1.0], [-1e8]])
    assert harmful.mean(0).item() == 0.0
    assert refusal.refusal_direction(harmful, t([[0.0]])).item() == pytest.approx(1 / 3, rel=1e-15)


def test_refusal_direction_bad_input():
    with pytest.raises(MetricInputError, match="^x_harmless:"):
        refusal.refusal_direction(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(EmptySetError, match="^x_harmful:"):
        refusal.refusal_direction(torch.zeros(0, 3), torch.zeros(2, 3))
    with pytest.raises(MetricInputError, match="^x_harmful:.*NaN"):
        refusal.refusal_direction(t([[float("inf"), 0.0]]), torch.zeros(1, 2))


def test_feature_diff_in_means_dense_and_topk_agree():
    # harmful: token 1 has features {0: 1, 2: 3}, token 2 {2: 1, 3: 2}; harmless: {0: 2, 1: 2}
    acts_h, idx_h = t([[1.0, 3.0], [1.0, 2.0]]), torch.tensor([[0, 2], [2, 3]])
    acts_n, idx_n = t([[2.0, 2.0]]), torch.tensor([[0, 1]])
    expected = [0.5 - 2.0, 0.0 - 2.0, 2.0, 1.0]
    sparse = refusal.feature_diff_in_means((acts_h, idx_h), (acts_n, idx_n), num_latents=4)
    assert sparse.dtype == torch.float64
    assert sparse.tolist() == expected
    dense_h = torch.zeros(2, 4).scatter_(1, idx_h, acts_h)
    dense_n = torch.zeros(1, 4).scatter_(1, idx_n, acts_n)
    assert refusal.feature_diff_in_means(dense_h, dense_n).tolist() == expected
    with pytest.raises(MetricInputError, match="^num_latents:"):
        refusal.feature_diff_in_means((acts_h, idx_h), (acts_n, idx_n))
    with pytest.raises(MetricInputError, match="^z_harmless:"):
        refusal.feature_diff_in_means(dense_h, torch.zeros(1, 5))
    with pytest.raises(MetricInputError, match="^z_harmful: top_indices:"):
        refusal.feature_diff_in_means((acts_h, idx_h), (acts_n, idx_n), num_latents=3)


def test_top_refusal_features():
    dbar = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0], dtype=torch.float64)
    assert refusal.top_refusal_features(dbar, 2).tolist() == [2, 4]
    assert refusal.top_refusal_features(dbar, 3).tolist() == [2, 4, 0]
    with pytest.raises(MetricInputError, match="^k: expected at most the 3 positive"):
        refusal.top_refusal_features(dbar, 4)
    assert refusal.top_refusal_features(dbar, 4, strict=False).tolist() == [2, 4, 0]
    assert refusal.top_refusal_features(-dbar.abs(), 2, strict=False).numel() == 0
    for k in (0, 6):
        with pytest.raises(MetricInputError, match="^k:"):
            refusal.top_refusal_features(dbar, k)


def test_reconstruct_direction_hand_computed():
    W_dec = torch.eye(3)  # decoder rows e0, e1, e2
    result = refusal.reconstruct_direction(W_dec, [0, 2], torch.tensor([3.0, 4.0, -1.0]))
    # best w ≥ 0: 3·e0 + 0·e2 → r̂ = (3, 0, 0); ‖r̂ − r‖² = 17, ‖r‖² = 26
    assert result.weights.tolist() == pytest.approx([3.0, 0.0])
    assert result.direction.tolist() == pytest.approx([3.0, 0.0, 0.0])
    assert result.nmse == pytest.approx(17 / 26)
    assert result.cosine == pytest.approx(3 / math.sqrt(26))


def test_reconstruct_direction_recovers_a_planted_combination():
    generator = torch.Generator().manual_seed(0)
    W_dec = torch.nn.functional.normalize(torch.randn(50, 16, generator=generator), dim=1)
    r = 2.0 * W_dec[3] + 0.5 * W_dec[11] + 1.25 * W_dec[40]
    result = refusal.reconstruct_direction(W_dec, torch.tensor([3, 7, 11, 40, 2]), r)
    assert result.weights.tolist() == pytest.approx([2.0, 0.0, 0.5, 1.25, 0.0], abs=1e-5)
    assert result.nmse == pytest.approx(0.0, abs=1e-10)
    assert result.cosine == pytest.approx(1.0, abs=1e-10)


def test_reconstruct_direction_all_zero_weights_gives_cosine_zero():
    result = refusal.reconstruct_direction(torch.eye(2), [0], torch.tensor([-1.0, 0.0]))
    assert result.weights.tolist() == [0.0]
    assert (result.nmse, result.cosine) == (1.0, 0.0)


def test_reconstruct_direction_bad_input():
    W_dec = torch.eye(3)
    with pytest.raises(MetricInputError, match="^r: expected a non-zero"):
        refusal.reconstruct_direction(W_dec, [0], torch.zeros(3))
    with pytest.raises(MetricInputError, match="^features:"):
        refusal.reconstruct_direction(W_dec, [3], torch.ones(3))
    with pytest.raises(EmptySetError, match="^features:"):
        refusal.reconstruct_direction(W_dec, [], torch.ones(3))
    with pytest.raises(MetricInputError, match="^r: expected width"):
        refusal.reconstruct_direction(W_dec, [0], torch.ones(4))


def test_reconstruction_sweep_improves_with_k():
    generator = torch.Generator().manual_seed(1)
    W_dec = torch.nn.functional.normalize(torch.randn(40, 8, generator=generator), dim=1)
    r = W_dec[:6].T @ torch.tensor([3.0, 2.5, 2.0, 1.5, 1.0, 0.5])
    dbar = torch.linspace(1.0, -1.0, 40, dtype=torch.float64)  # S_k = first k features
    sweep = refusal.reconstruction_sweep(W_dec, dbar, r, ks=(1, 2, 4, 8))
    nmse = [sweep[k].nmse for k in (1, 2, 4, 8)]
    assert nmse == sorted(nmse, reverse=True)  # nested feature sets: never worse
    assert sweep[8].nmse == pytest.approx(0.0, abs=1e-10)


def test_feature_overlap():
    assert refusal.feature_overlap(torch.tensor([1, 2, 3]), [3, 4, 1]) == 2
    assert refusal.shared_features([5, 1], torch.tensor([1, 5, 9])) == [1, 5]
    assert refusal.feature_overlap([], [1]) == 0


def test_feature_diff_in_means_accepts_sae_codes():
    from featuredrift.monitor.metrics import SaeCodes

    harmful = SaeCodes(t([[1.0, 3.0]]), torch.tensor([[0, 2]]), torch.zeros(1, 2))
    harmless = SaeCodes(t([[2.0, 1.0]]), torch.tensor([[2, 1]]), torch.zeros(1, 2))
    assert refusal.feature_diff_in_means(harmful, harmless, 3).tolist() == [1.0, -1.0, 1.0]


def test_refusal_token_probability_and_log_odds_hand_computed():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    p = refusal.refusal_token_probability(logits, [0, 1])
    assert torch.allclose(p, torch.tensor([0.75, 0.2]))
    assert torch.allclose(refusal.log_odds(p), torch.log(torch.tensor([3.0, 0.25])), atol=1e-6)
    with pytest.raises(MetricInputError, match="refusal-starting"):
        refusal.refusal_token_probability(logits, [])


def test_logit_refusal_score_agrees_with_generated_refusals(zoo_nano, zoo_nano_models):
    """The one-pass score ranks prompts as greedy generation judges them: on the zoo's base model
    (which rarely refuses) and its chat model (which refuses harmful requests)."""
    from scipy.stats import mannwhitneyu

    from featuredrift.monitor.config import MonitorConfig
    from featuredrift.monitor.drift_monitor import DriftMonitor

    base, chat, tokenizer = zoo_nano_models
    config = MonitorConfig(sae=str(zoo_nano.sae), probes=str(zoo_nano.probes), max_probes=24, kl_every=0,
                           refusal_score_every=1, completions_kept=24, max_new_tokens=8)
    monitor = DriftMonitor(config)
    monitor.start(base, tokenizer)
    assert [tokenizer.convert_ids_to_tokens(i) for i in monitor._state.refusal_tokens], "refusal tokens found"
    pairs = []
    for step, model in enumerate((base, chat)):
        report = monitor.evaluate(model, step)
        assert set(report.refusal_token_probability) == {"harmful", "harmless"}
        assert report.refusal_token_probability["harmful"] == pytest.approx(
            sum(c["refusal_token_probability"] for c in report.completions if c["subset"] == "harmful")
            / sum(c["subset"] == "harmful" for c in report.completions), abs=1e-6)
        pairs += [(c["refusal_token_probability"], c["refused"]) for c in report.completions]
    refused = [p for p, r in pairs if r]
    answered = [p for p, r in pairs if not r]
    assert refused and answered
    auroc = mannwhitneyu(refused, answered).statistic / (len(refused) * len(answered))
    assert auroc > 0.8, auroc


def test_feature_separation_hand_computed_and_scale_free():
    """Cohen's d of the summed activation of the feature set: (mean_h − mean_l) / pooled SD."""
    harmful = torch.tensor([[1.0, 0.0, 2.0], [3.0, 1.0, 0.0], [2.0, 1.0, 5.0]])
    harmless = torch.tensor([[0.0, 0.0, 9.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    features = torch.tensor([0, 1])
    # summed over features 0 and 1: harmful [1, 4, 3] (mean 8/3, var 7/3), harmless [0, 1, 1] (mean 2/3, var 1/3)
    expected = (8 / 3 - 2 / 3) / math.sqrt((7 / 3 + 1 / 3) / 2)
    assert refusal.feature_separation(harmful, harmless, features, 3) == pytest.approx(expected)
    # Same value from top-k codes, and whatever the SAE's activation scale.
    top = lambda z: z.topk(2, dim=1)  # noqa: E731  (every row here has at most 2 non-zeros in 0..1)
    pair = lambda z: (top(z).values, top(z).indices)  # noqa: E731
    two = torch.tensor([[1.0, 0.0], [3.0, 1.0], [2.0, 1.0]]), torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert refusal.feature_separation(pair(two[0]), pair(two[1]), features, 2) == pytest.approx(expected)
    assert refusal.feature_separation(100 * harmful, 100 * harmless, features, 3) == pytest.approx(expected)


def test_feature_separation_edge_cases():
    z = torch.ones(3, 4)
    assert refusal.feature_separation(z, z, torch.tensor([1]), 4) == 0.0  # no spread: no separation
    assert math.isnan(refusal.feature_separation(z, z, torch.tensor([], dtype=torch.long), 4))
    assert math.isnan(refusal.feature_separation(z[:1], z, torch.tensor([1]), 4))  # one prompt has no spread
    with pytest.raises(MetricInputError, match="z_harmful: expected 4 latents, found 3"):
        refusal.feature_separation(torch.ones(3, 3), z, torch.tensor([1]), 4)
