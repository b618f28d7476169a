"""The paper's readings: each named choice computes what the paper's code (or text) computes,
`paper_readings: paper` selects them all, and flipping one reading changes the numbers it should
and only those, in the live monitor and in `replicate`."""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest
import torch

from featuredrift.monitor import metrics, refusal
from featuredrift.monitor.metrics import MetricInputError
from featuredrift.monitor.readings import READING_NAMES, READINGS, readings_of, side_of

# ------------------------------------------------------------------ the readings themselves


def test_per_token_fvu_is_the_paper_codes_formula():
    x = torch.tensor([[1.0, 2.0, 3.0], [0.0, 4.0, 8.0]])
    x_hat = torch.tensor([[1.0, 2.0, 2.0], [1.0, 4.0, 7.0]])
    # _calculate_fvu: Σ(a − r)² / Σ(a − mean(a))², per token, the mean over the token's own dimensions
    expected = [1.0 / 2.0, 2.0 / 32.0]
    assert metrics.per_token_fvu(x, x_hat).tolist() == pytest.approx(expected)
    assert float(metrics.fvu_of(x, x_hat, "per_token")) == pytest.approx(sum(expected) / 2)
    assert float(metrics.fvu_of(x, x_hat, "batch")) == pytest.approx(float(metrics.fvu(x, x_hat)))
    assert float(metrics.fvu_of(x, x_hat, "batch")) != pytest.approx(sum(expected) / 2)
    with pytest.raises(MetricInputError, match="constant rows"):
        metrics.per_token_fvu(torch.ones(2, 3), torch.zeros(2, 3))
    with pytest.raises(MetricInputError, match="FVU reading"):
        metrics.fvu_of(x, x_hat, "mean")


def test_streamed_per_token_fvu_equals_the_whole_set():
    from featuredrift.replicate.streaming import FvuSum, MomentSum

    torch.manual_seed(0)
    x, x_hat = torch.randn(90, 8), torch.randn(90, 8)
    moments = MomentSum()
    moments.add(x)
    total = FvuSum(moments.mean)
    for rows in (slice(0, 30), slice(30, 90)):
        total.add(x[rows], x_hat[rows])
    assert total.value_of("per_token") == pytest.approx(float(metrics.fvu_of(x, x_hat, "per_token")), rel=1e-9)
    assert total.value_of("batch") == pytest.approx(float(metrics.fvu(x, x_hat)), rel=1e-9)


def test_intersection_ratio_readings_differ_when_l0s_differ_and_on_empty_sets():
    # Variable L0 (JumpReLU-like): row 0 has 2 active base features, 1 active chat feature.
    idx0 = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    acts0 = torch.tensor([[3.0, 2.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    idxt = torch.tensor([[2, 11, 12], [4, 5, 6], [1, 2, 3]])
    actst = torch.tensor([[5.0, 0.0, 0.0], [2.0, 3.0, 1.0], [0.0, 0.0, 0.0]])
    ours = metrics.intersection_ratio(idx0, idxt, acts0, actst).per_token.tolist()
    paper = metrics.intersection_ratio(idx0, idxt, acts0, actst, reading="top_min_l0").per_token.tolist()
    # ours: {1,2} vs {2} → 1/2; same sets → 1; two empty sets → 1
    assert ours == pytest.approx([0.5, 1.0, 1.0])
    # the paper's code: k = min(2, 1) = 1 → {1} (its largest) vs {2} → 0; equal L0 → the same; empty → 0
    assert paper == pytest.approx([0.0, 1.0, 0.0])
    capped = metrics.intersection_ratio(idx0[1:2], idxt[1:2], acts0[1:2], torch.tensor([[2.0, 3.0, 1.0]]),
                                        reading="top_min_l0", k_cap=1).per_token
    assert capped.tolist() == [0.0]  # k = 1: base keeps 4 (first of the ties), chat keeps 5
    # A TopK SAE whose slots are all positive: both readings agree.
    full = torch.ones(3, 3)
    assert torch.equal(metrics.intersection_ratio(idx0, idxt, full, full).per_token,
                       metrics.intersection_ratio(idx0, idxt, full, full, reading="top_min_l0").per_token)
    with pytest.raises(MetricInputError, match="IR reading"):
        metrics.intersection_ratio(idx0, idxt, reading="jaccard")


def test_quantile_inliers_drop_the_top_of_either_statistic():
    fvu = torch.arange(1000, dtype=torch.float64)
    mse = torch.zeros(1000, dtype=torch.float64)
    mse[10] = 99.0
    keep = metrics.quantile_inliers(fvu, mse, q=0.998)
    assert not bool(keep[998:].any()) and not bool(keep[10])  # above the FVU quantile; above the MSE one
    assert int(keep.sum()) == 997
    # Between identical models MSE is 0 everywhere: its quantile leaves nothing out.
    assert bool(metrics.quantile_inliers(torch.zeros(50, dtype=torch.float64)).all())
    pair = torch.randn(20, 4), torch.randn(20, 4)
    assert metrics.token_mse(*pair).tolist() == pytest.approx(((pair[1] - pair[0]) ** 2).mean(-1).tolist())


def test_refusal_feature_readings_and_decoder_norm_folding():
    dbar = torch.tensor([0.5, -0.2, 0.0, 0.9, 0.1], dtype=torch.float64)
    assert refusal.top_refusal_features(dbar, 4, strict=False).tolist() == [3, 0, 4]  # positive entries only
    assert refusal.top_refusal_features(dbar, 4, reading="top_k").tolist() == [3, 0, 4, 2]  # the literal top-k
    norms = torch.tensor([1.0, 1.0, 1.0, 0.1, 3.0])
    W_dec = norms[:, None] * torch.nn.functional.normalize(torch.randn(5, 3), dim=1)
    assert torch.equal(refusal.fold_decoder_norms(dbar, W_dec, "as_trained"), dbar)
    folded = refusal.fold_decoder_norms(dbar, W_dec, "folded")
    assert folded.tolist() == pytest.approx((dbar * norms.double()).tolist(), rel=1e-5)
    assert refusal.top_refusal_features(folded, 2).tolist() == [0, 4]  # feature 3's small decoder row drops it
    unit = torch.nn.functional.normalize(torch.randn(5, 3), dim=1)
    assert torch.allclose(refusal.fold_decoder_norms(dbar, unit, "folded"), dbar)  # sparsify: a no-op


def test_unnormalised_ablation_applies_eq5_as_printed():
    from transformers import LlamaConfig, LlamaForCausalLM

    from featuredrift.lm.hookpoints import decoder_layers
    from featuredrift.monitor.interventions import directional_ablation

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2)).eval()
    direction = 2.0 * torch.nn.functional.normalize(torch.randn(16), dim=0)  # ‖r‖ = 2
    unit = direction / 2.0
    ids = torch.tensor([[1, 5, 7, 9]])
    seen = {}

    def record(_m, args, kwargs):
        seen["x"] = (args[0] if args else kwargs["hidden_states"]).detach()

    embedded = model.get_input_embeddings()(ids).detach()
    for reading, factor in (("unit", 0.0), ("unnormalised", 1.0 - 4.0)):
        with directional_ablation(model, direction, reading=reading):
            handle = decoder_layers(model)[0].register_forward_pre_hook(record, with_kwargs=True)
            with torch.no_grad():
                model(input_ids=ids)
            handle.remove()
        # along r̂ the block input keeps (1 − ‖r‖²) of the embedding's component: 0 for a projection
        assert torch.allclose(seen["x"] @ unit, factor * (embedded @ unit), atol=1e-5)
    with pytest.raises(MetricInputError, match="ablation reading"), directional_ablation(model, direction, reading="half"):
        pass


# ------------------------------------------------------------------ one switch, recorded


def test_every_reading_has_both_sides_and_a_source():
    from featuredrift.monitor.config import MonitorConfig
    from featuredrift.replicate.config import PaperReadings

    assert set(READING_NAMES) == set(PaperReadings.model_fields)
    for reading in READINGS:
        assert reading.ours in reading.choices and reading.paper in reading.choices and reading.paper_source
        assert PaperReadings.model_fields[reading.name].default == reading.ours
        if reading.monitor:
            assert MonitorConfig.model_fields[reading.name].default == reading.ours
    assert side_of(readings_of("ours")) == "ours" and side_of(readings_of("paper")) == "paper"
    assert side_of({**readings_of("paper"), "token_mask": "content"}) == "mixed"


def test_paper_readings_paper_selects_the_papers_code_everywhere(monkeypatch):
    from featuredrift.monitor.config import MonitorConfig
    from featuredrift.replicate.config import load_config

    paper = load_config("zoo", {"paper_readings": "paper"}).paper_readings
    assert paper.model_dump() == readings_of("paper") and paper.side == "paper"
    mixed = load_config("zoo", {"paper_readings": {"side": "paper", "token_mask": "content"}}).paper_readings
    assert mixed.token_mask == "content" and mixed.fvu_reading == "per_token" and mixed.side == "mixed"
    assert load_config("zoo").paper_readings.side == "ours"

    monitor = MonitorConfig(sae="zoo:nano", paper_readings="paper", token_mask="content")
    assert monitor.readings() == {**readings_of("paper", monitor=True), "token_mask": "content"}
    assert MonitorConfig(sae="zoo:nano").readings() == readings_of("ours", monitor=True)
    monkeypatch.setenv("FEATUREDRIFT_PAPER_READINGS", "paper")
    assert MonitorConfig(sae="zoo:nano").ir_reading == "top_min_l0"
    with pytest.raises(ValueError):
        MonitorConfig(sae="zoo:nano", paper_readings="theirs")


# ------------------------------------------------------------------ the live monitor: one reading, its numbers only


# LayerReport fields each monitor reading may move (everything else must stay exactly as it was).
TOKEN_SET = {"fvu", "divergent_fraction", "explained_ratio", "explained_ratio_median", "intersection_ratio_divergent",
             "intersection_ratio_all", "cosine_quantiles", "divergent_fraction_by_tau", "explained_ratio_most_divergent",
             "intersection_ratio_most_divergent", "scale_reference", "scale_current", "drifted_features"}
MOVES = {
    "scale_reading": ({"explained_ratio"}, {"explained_ratio", "explained_ratio_median", "explained_ratio_most_divergent",
                                            "scale_reference", "scale_current"}),
    "er_aggregate": ({"explained_ratio"}, {"explained_ratio"}),
    "fvu_reading": ({"fvu"}, {"fvu"}),
    "ir_reading": ({"intersection_ratio_all"}, {"intersection_ratio_divergent", "intersection_ratio_all",
                                                "intersection_ratio_most_divergent"}),
    "refusal_feature_reading": ({"refusal_features"}, {"refusal_features", "reconstructions"}),
    "decoder_norm": ({"refusal_features"}, {"refusal_features", "reconstructions"}),
    "outlier_rule": ({"fvu", "intersection_ratio_all"}, TOKEN_SET),
    "token_mask": ({"fvu"}, TOKEN_SET),
}


@pytest.fixture(scope="module")
def jumprelu_sae(zoo_nano, tmp_path_factory):
    """A SAELens JumpReLU SAE (variable L0, decoder rows not unit-norm, as Gemma Scope's)."""
    from test_saelens import make_saelens_sae

    pytest.importorskip("sae_lens")
    return make_saelens_sae(tmp_path_factory.mktemp("jumprelu"), "jumprelu", 64, int(zoo_nano.hookpoint.split(".")[1]))


def _layer(zoo_nano, zoo_nano_models, sae_dir, **readings):
    from featuredrift.monitor.config import MonitorConfig
    from featuredrift.monitor.drift_monitor import DriftMonitor

    base, chat, tokenizer = zoo_nano_models
    config = MonitorConfig(sae=str(sae_dir), probes=str(zoo_nano.probes), max_probes=12, refusal_score_every=0,
                           kl_every=0, feature_contexts=0, refusal_k=250, top_n_features=5, **readings)
    monitor = DriftMonitor(config)
    monitor.start(base, tokenizer)
    assert monitor.provenance()["paper_readings"] == config.readings()
    return asdict(monitor.evaluate(chat, 1).layers[zoo_nano.hookpoint])


def _differs(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return not (a == b or (math.isnan(a) and math.isnan(b)))
    return a != b


@pytest.mark.slow
def test_each_monitor_reading_moves_its_numbers_and_only_those(zoo_nano, zoo_nano_models, jumprelu_sae):
    ours = _layer(zoo_nano, zoo_nano_models, jumprelu_sae)
    for reading in (r for r in READINGS if r.monitor):
        flipped = reading.paper if reading.paper != reading.ours else next(c for c in reading.choices if c != reading.ours)
        other = _layer(zoo_nano, zoo_nano_models, jumprelu_sae, **{reading.name: flipped})
        moved = {name for name in ours if _differs(ours[name], other[name])}
        must, may = MOVES[reading.name]
        assert must <= moved, f"{reading.name}={flipped} left {must - moved} unchanged"
        assert moved <= may, f"{reading.name}={flipped} also moved {moved - may}"
    # With every reading the paper's way at once, the refusal direction itself is untouched.
    paper = _layer(zoo_nano, zoo_nano_models, jumprelu_sae, paper_readings="paper")
    assert paper["refusal_direction_cosine"] == ours["refusal_direction_cosine"]
