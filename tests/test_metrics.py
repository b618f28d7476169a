"""Drift metrics on hand-computed fixtures, cross-checked against sparsify and brute force."""

from __future__ import annotations

import math

import pytest
import torch

from featuredrift import sae_store  # noqa: F401  (disables Triton on CPU before sparsify loads)
from featuredrift.monitor import metrics
from featuredrift.monitor.metrics import EmptySetError, MetricInputError


def t(rows, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype)


# ----------------------------------------------------------------------------- FVU and scale


def test_fvu_hand_computed():
    x = t([[1.0, 0.0], [3.0, 0.0]])  # mean [2, 0]; Σ‖x − mean‖² = 2
    x_hat = t([[1.0, 1.0], [3.0, 0.0]])  # Σ‖x − x̂‖² = 1
    assert metrics.fvu(x, x_hat).item() == pytest.approx(0.5, abs=1e-12)
    assert metrics.fvu(x, x_hat).dtype == torch.float64


def test_fvu_is_zero_for_exact_and_one_for_the_mean():
    x = torch.randn(50, 8)
    assert metrics.fvu(x, x.clone()).item() == pytest.approx(0.0, abs=1e-12)
    mean = x.double().mean(0, keepdim=True).expand_as(x)
    assert metrics.fvu(x.double(), mean).item() == pytest.approx(1.0, abs=1e-12)


def test_fvu_chunking_does_not_change_the_result():
    x, x_hat = torch.randn(101, 6), torch.randn(101, 6)
    assert metrics.fvu(x, x_hat, chunk_rows=7).item() == pytest.approx(metrics.fvu(x, x_hat).item(), rel=1e-12)


@pytest.mark.parametrize(
    ("x", "x_hat", "argument"),
    [
        (torch.ones(3, 2), torch.ones(3, 2), "x"),  # zero variance
        (torch.randn(3, 2), torch.randn(3, 3), "x_hat"),  # shape
        (torch.randn(3, 2), torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [1.0, 1.0]]), "x_hat"),
        (torch.randn(0, 2), torch.randn(0, 2), "x"),  # empty
        (torch.randn(3), torch.randn(3), "x"),  # rank
    ],
)
def test_fvu_bad_input_names_the_argument(x, x_hat, argument):
    with pytest.raises(MetricInputError, match=rf"^{argument}:"):
        metrics.fvu(x, x_hat)


def test_activation_scale_hand_computed():
    x = t([[3.0, 4.0], [0.0, 0.0]])  # E‖x‖² = 25 / 2
    assert metrics.activation_scale(x).item() == pytest.approx(math.sqrt(12.5), rel=1e-12)


# ----------------------------------------------------------------------- divergence and ER


def test_divergent_mask_and_fraction():
    x0 = t([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    xt = t([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [4.0, 0.1]])  # cos 1, 0.707, 0, 0.9988
    assert metrics.divergent_mask(x0, xt).tolist() == [False, True, True, False]
    assert metrics.divergent_fraction(x0, xt).item() == pytest.approx(0.5)
    assert metrics.divergent_mask(x0, xt, tau=0.5).tolist() == [False, False, True, False]
    with pytest.raises(MetricInputError, match="^tau:"):
        metrics.divergent_mask(x0, xt, tau=1.5)


def er_fixture():
    # scale0 = 1, scalet = 2: scaled a0 = x0, at = xt / 2, ât = x̂t / 2.
    x0 = t([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0], [5.0, 5.0]])
    xt = t([[0.0, 2.0], [2.0, 0.0], [0.0, 6.0], [10.0, 10.0]])
    xt_hat = t([[0.0, 1.0], [2.0, 2.0], [0.0, 6.0], [-90.0, 7.0]])
    # per token: unexplained ‖at − ât‖² = 0.25, 1, 0; divergence ‖at − a0‖² = 2, 2, 18
    divergent = torch.tensor([True, True, True, False])  # the last token's huge error is masked out
    return x0, xt, xt_hat, divergent


def test_explained_ratio_hand_computed():
    x0, xt, xt_hat, divergent = er_fixture()
    er = metrics.explained_ratio(x0, xt, xt_hat, divergent, 1.0, 2.0)
    assert er.ratio.item() == pytest.approx(1.25 / 22, rel=1e-12)
    assert er.median.item() == pytest.approx(0.125, rel=1e-12)  # median of 0.125, 0.5, 0
    assert er.num_tokens == 3


def test_explained_ratio_is_invariant_to_each_models_scale():
    x0, xt, xt_hat = torch.randn(40, 5), torch.randn(40, 5), torch.randn(40, 5)
    mask = torch.ones(40, dtype=torch.bool)
    s0, st = metrics.activation_scale(x0), metrics.activation_scale(xt)
    er = metrics.explained_ratio(x0, xt, xt_hat, mask, s0, st)
    scaled = metrics.explained_ratio(3 * x0, 7 * xt, 7 * xt_hat, mask, 3 * s0, 7 * st)
    assert scaled.ratio.item() == pytest.approx(er.ratio.item(), rel=1e-6)


def test_explained_ratio_bad_input():
    x0, xt, xt_hat, divergent = er_fixture()
    with pytest.raises(EmptySetError, match="^divergent:"):
        metrics.explained_ratio(x0, xt, xt_hat, torch.zeros(4, dtype=torch.bool), 1.0, 1.0)
    with pytest.raises(MetricInputError, match="^scalet:"):
        metrics.explained_ratio(x0, xt, xt_hat, divergent, 1.0, 0.0)
    with pytest.raises(MetricInputError, match="^divergent:"):
        metrics.explained_ratio(x0, xt, xt_hat, divergent[:3], 1.0, 1.0)
    with pytest.raises(MetricInputError, match="^xt_hat:"):
        metrics.explained_ratio(x0, xt, xt_hat[:, :1], divergent, 1.0, 1.0)
    with pytest.raises(MetricInputError, match="^divergent:"):  # identical pair marked divergent
        metrics.explained_ratio(x0, x0, xt_hat, divergent, 1.0, 1.0)


# ------------------------------------------------------------------------------------ IR


def test_intersection_ratio_identical_disjoint_partial():
    idx0 = torch.tensor([[1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3]])
    idxt = torch.tensor([[3, 1, 2], [4, 5, 6], [2, 3, 4], [2, 3, 4]])
    acts0 = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    actst = torch.ones(4, 3)
    # 1; 0; {1,2,3}∩{2,3,4} = 2 of 4; {1,2}∩{2,3,4} = 1 of 4 (index 3 inactive in F_0)
    ir = metrics.intersection_ratio(idx0, idxt, acts0, actst, mask=torch.tensor([True, False, True, True]))
    assert ir.per_token.tolist() == [1.0, 0.0, 0.5, 0.25]
    assert ir.all.item() == pytest.approx(1.75 / 4)
    assert ir.divergent.item() == pytest.approx(1.75 / 3)
    assert ir.num_divergent == 3
    without_acts = metrics.intersection_ratio(idx0, idxt)
    assert without_acts.per_token.tolist() == [1.0, 0.0, 0.5, 0.5]
    assert without_acts.divergent is None


def test_intersection_ratio_of_two_empty_sets_is_one():
    idx = torch.tensor([[0, 1]])
    zero = torch.zeros(1, 2)
    assert metrics.intersection_ratio(idx, idx, zero, zero).per_token.tolist() == [1.0]


def test_intersection_ratio_matches_python_sets_on_random_codes():
    generator = torch.Generator().manual_seed(0)
    n, k, m = 200, 6, 20
    idx0 = torch.stack([torch.randperm(m, generator=generator)[:k] for _ in range(n)])
    idxt = torch.stack([torch.randperm(m, generator=generator)[:k] for _ in range(n)])
    acts0 = torch.relu(torch.randn(n, k, generator=generator))
    actst = torch.relu(torch.randn(n, k, generator=generator))
    expected = []
    for i in range(n):
        a = {int(j) for j, v in zip(idx0[i], acts0[i], strict=True) if v > 0}
        b = {int(j) for j, v in zip(idxt[i], actst[i], strict=True) if v > 0}
        expected.append(len(a & b) / len(a | b) if a | b else 1.0)
    got = metrics.intersection_ratio(idx0, idxt, acts0, actst).per_token
    assert got.tolist() == pytest.approx(expected, abs=1e-12)


def test_intersection_ratio_bad_input():
    idx = torch.tensor([[0, 1]])
    with pytest.raises(MetricInputError, match="^idxt:"):
        metrics.intersection_ratio(idx, torch.tensor([[0, 1], [1, 2]]))
    with pytest.raises(MetricInputError, match="^acts0:"):
        metrics.intersection_ratio(idx, idx, torch.ones(1, 3))
    with pytest.raises(EmptySetError, match="^mask:"):
        metrics.intersection_ratio(idx, idx, mask=torch.tensor([False]))


# ------------------------------------------------------------------------------ SAE encode


@pytest.fixture(scope="module")
def sae():
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(0)
    coder = SparseCoder(16, SparseCoderConfig(num_latents=64, k=4))
    with torch.no_grad():
        coder.b_dec.normal_()
        coder.encoder.bias.normal_(0.0, 0.1)
    return coder


def test_encode_batched_matches_sparsify_forward(sae):
    x = torch.randn(37, 16)
    codes = metrics.encode_batched(sae, x, batch_size=5)
    with torch.no_grad():
        reference = sae(x)
    assert torch.equal(codes.top_indices.sort(1).values, reference.latent_indices.sort(1).values)
    assert torch.allclose(codes.reconstruction, reference.sae_out, atol=1e-5)
    assert metrics.fvu(x, codes.reconstruction).item() == pytest.approx(reference.fvu.item(), rel=1e-4)
    with pytest.raises(MetricInputError, match="^x:"):
        metrics.encode_batched(sae, torch.randn(3, 8))


def _dense(acts, indices, num_latents):
    return metrics.densify(acts, indices, num_latents)


@pytest.mark.parametrize("transcode", [False, True])
def test_topk_codes_equal_sparsify_encode(transcode):
    """The one-buffer encode selects the same latents with the same values as sparsify's."""
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(1)
    coder = SparseCoder(32, SparseCoderConfig(num_latents=512, k=16, transcode=transcode))
    with torch.no_grad():
        coder.b_dec.normal_()
        coder.encoder.bias.normal_(0.0, 0.1)
    x = torch.randn(300, 32)
    with torch.no_grad():
        expected = coder.encode(x)
        acts, indices = metrics.topk_codes(coder, x)
    assert torch.allclose(_dense(acts, indices, 512), _dense(expected.top_acts, expected.top_indices, 512), atol=1e-6, rtol=0)


def test_encode_batched_chunks_bound_memory_and_keep_results(sae, monkeypatch):
    """Chunks shrink with the latent count; the codes do not depend on the chunking."""
    x = torch.randn(50, 16)
    whole = metrics.encode_batched(sae, x)
    monkeypatch.setattr(metrics, "ENCODE_CHUNK_BYTES", 7 * sae.num_latents * 4)
    assert metrics.encode_chunk_rows(sae.num_latents, 4, 4096) == 7
    assert metrics.encode_chunk_rows(sae.num_latents, 4, 3) == 3
    chunked = metrics.encode_batched(sae, x)
    dense = _dense(chunked.top_acts, chunked.top_indices, sae.num_latents)
    assert torch.allclose(dense, _dense(whole.top_acts, whole.top_indices, sae.num_latents), atol=1e-6, rtol=0)
    assert torch.allclose(chunked.reconstruction, whole.reconstruction, atol=1e-6, rtol=0)


def test_topk_codes_defers_to_the_saes_own_encode_for_other_activations():
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(2)
    coder = SparseCoder(16, SparseCoderConfig(num_latents=64, k=4, activation="groupmax"))
    x = torch.randn(10, 16)
    with torch.no_grad():
        expected = coder.encode(x)
        acts, indices = metrics.topk_codes(coder, x)
    assert torch.equal(indices, expected.top_indices) and torch.equal(acts, expected.top_acts)


def test_densify_and_mean_dense_activation(sae):
    codes = metrics.encode_batched(sae, torch.randn(9, 16))
    dense = metrics.densify(codes.top_acts, codes.top_indices, sae.num_latents)
    assert torch.equal(dense.gather(1, codes.top_indices), codes.top_acts)
    assert int((dense != 0).sum(1).max()) <= sae.cfg.k
    features = torch.tensor([0, 5, 9])
    expected = dense[:, features].double().mean()
    assert metrics.mean_dense_activation(codes, features, sae.num_latents).item() == pytest.approx(expected.item())


# --------------------------------------------------------------------- feature statistics


def stats_fixture():
    top_indices = torch.tensor([[0, 1], [1, 2], [1, 3]])
    top_acts = t([[1.0, 2.0], [4.0, 0.0], [3.0, 5.0]])
    return metrics.feature_statistics(top_acts, top_indices, 4)


def test_feature_statistics_hand_computed():
    stats = stats_fixture()
    assert stats.count.tolist() == [1, 3, 0, 1]  # feature 2's only activation is 0: not active
    assert stats.frequency.tolist() == pytest.approx([1 / 3, 1.0, 0.0, 1 / 3])
    assert stats.mean_active.tolist() == pytest.approx([1.0, 3.0, 0.0, 5.0])
    assert stats.num_tokens == 3
    with pytest.raises(MetricInputError, match="^top_indices:"):
        metrics.feature_statistics(t([[1.0]]), torch.tensor([[4]]), 4)


CUR_ACTS = t([[1.0, 2.0], [9.0, 0.0], [0.5, 0.0]])


def test_feature_drift_ranking_scores_hand_computed():
    ref = stats_fixture()  # typical active value s = (1 + 2 + 4 + 3 + 5) / 5 = 3
    cur = metrics.feature_statistics(CUR_ACTS, torch.tensor([[2, 1], [1, 0], [3, 0]]), 4)
    # ref: freq [1/3, 1, 0, 1/3], mean [1, 3, 0, 5]; cur: freq [0, 2/3, 1/3, 1/3], mean [0, 5.5, 1, 0.5]
    scores = metrics.drift_scores(ref, cur, "freq_mean")
    expected = [1 / 3 + 1 / 3, 1 / 3 + 2.5 / 3, 1 / 3 + 1 / 3, 0 + 4.5 / 3]
    assert scores.tolist() == pytest.approx(expected)
    ranking = metrics.feature_drift_ranking(ref, cur, 2)
    assert ranking.indices.tolist() == [3, 1]
    assert ranking.scores.tolist() == pytest.approx([1.5, 7 / 6])
    assert ranking.delta_frequency.tolist() == pytest.approx([0.0, -1 / 3])
    assert ranking.delta_mean_active.tolist() == pytest.approx([-4.5, 2.5])
    mass = metrics.drift_scores(ref, cur, "mass")  # |Δ(freq·mean)| / 3
    assert mass.tolist() == pytest.approx([1 / 9, 2 / 9, 1 / 9, 1 / 2])


def test_firing_kl_is_symmetric_and_zero_without_drift():
    ref = stats_fixture()
    cur = metrics.feature_statistics(t([[1.0, 2.0]]), torch.tensor([[2, 3]]), 4)
    assert metrics.drift_scores(ref, ref, "firing_kl").abs().max().item() == 0.0
    forward, backward = metrics.drift_scores(ref, cur, "firing_kl"), metrics.drift_scores(cur, ref, "firing_kl")
    assert torch.allclose(forward, backward)
    p, q = (3 + 0.5) / 4, (0 + 0.5) / 2  # feature 1: always in ref, never in cur
    expected = (p - q) * math.log(p / q) + (q - p) * math.log((1 - p) / (1 - q))
    assert forward[1].item() == pytest.approx(expected)


def test_drift_ranking_bad_input():
    ref = stats_fixture()
    other = metrics.feature_statistics(t([[1.0]]), torch.tensor([[0]]), 5)
    with pytest.raises(MetricInputError, match="^stats_cur:"):
        metrics.feature_drift_ranking(ref, other, 2)
    with pytest.raises(MetricInputError, match="^top_n:"):
        metrics.feature_drift_ranking(ref, ref, 5)
    with pytest.raises(MetricInputError, match="^score:"):
        metrics.feature_drift_ranking(ref, ref, 2, score="nope")


def test_drifted_features_rows():
    ref = stats_fixture()
    cur = metrics.feature_statistics(CUR_ACTS, torch.tensor([[2, 1], [1, 0], [3, 0]]), 4)
    rows = metrics.drifted_features({"base": ref, "chat": ref}, {"base": cur}, top_n=1)
    assert len(rows) == 1
    row = rows[0]
    assert (row.feature, row.subset) == (3, "base")
    assert (row.freq_reference, row.freq_current, row.mean_reference, row.mean_current) == pytest.approx((1 / 3, 1 / 3, 5.0, 0.5))
    assert row.score == pytest.approx(1.5)
