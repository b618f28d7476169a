"""Batch replication (`featuredrift replicate`): config errors before work, stage caching and
selection, results schema, and the zoo preset end to end with the paper's findings."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from featuredrift.monitor.readings import readings_of
from featuredrift.replicate.config import ConfigError, load_config, parse_stages
from featuredrift.replicate.pipeline import run_replication, stage_keys
from featuredrift.replicate.preflight import preflight
from featuredrift.replicate.results import validate_results

WORDS = "the cat dog sun rain tree river stone bread milk house road city light music book".split()


def _sentences(n: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict:
    """A tiny random Llama pair (chat = base with perturbed weights), its tokenizer with a chat
    template, and data files: enough to exercise every stage's plumbing in seconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from featuredrift.zoo.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("pair")
    texts = _sentences(300, 0)
    tokenizer = train_tokenizer(texts, vocab_size=300)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    base = LlamaForCausalLM(config)
    chat = LlamaForCausalLM(config)
    chat.load_state_dict(base.state_dict())
    with torch.no_grad():
        for param in chat.parameters():
            param.add_(0.5 * param.std() * torch.randn_like(param))
    for name, model in (("base", base), ("chat", chat)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    (root / "base.txt").write_text("\n".join(texts[:200]), encoding="utf-8")
    (root / "base_eval.txt").write_text("\n".join(_sentences(24, 1)), encoding="utf-8")
    conversations = [
        [{"role": "user", "content": a}, {"role": "assistant", "content": b}]
        for a, b in zip(_sentences(120, 2), _sentences(120, 3), strict=True)
    ]
    (root / "chat.jsonl").write_text("\n".join(json.dumps({"messages": m}) for m in conversations), encoding="utf-8")
    (root / "harmful.txt").write_text("\n".join("how to " + s for s in _sentences(16, 4)), encoding="utf-8")
    (root / "harmless.txt").write_text("\n".join("tell me about " + s for s in _sentences(16, 5)), encoding="utf-8")
    return {"root": root}


def pair_config(root: Path, **overrides) -> dict:
    small = {
        "num_latents": 64, "k": 4, "lr": 0.003, "batch_size": 256, "num_tokens": 256 * 20,
        "lr_warmup_steps": 2, "dead_feature_threshold": 5000, "multi_topk": False,
    }
    config = {
        "name": "tiny-pair",
        "base_model": str(root / "base"),
        "chat_model": str(root / "chat"),
        "hookpoints": ["layers.0", "layers.1", "layers.2"],
        "device": "cpu",
        "batch_size": 8,
        "shard_tokens": 256,
        "data": {
            "base_text_train": str(root / "base.txt"),
            "base_text_eval": str(root / "base_eval.txt"),
            "chat_text_train": str(root / "chat.jsonl") + "[:100]",
            "chat_text_eval": str(root / "chat.jsonl") + "[100:]",
            "harmful": str(root / "harmful.txt") + "[:10]",
            "harmless": str(root / "harmless.txt") + "[:10]",
            "harmful_eval": str(root / "harmful.txt") + "[10:]",
            "harmless_eval": str(root / "harmless.txt") + "[10:]",
            "max_length": 32,
        },
        "sae": {"base": None, "base_train": small, "chat_train": small},
        "refusal": {"ks": [1, 2, 4]},
        "interventions": {"max_new_tokens": 4, "batch_size": 8},
        "diffsae": {"train": {**small, "num_latents": 32}, "high_kl_positions": 8, "top_latents": 2, "dashboard_rows": 2},
        "steering": {"positions": 4, "hybrid_candidates": 2, "sampling": {"num_rollouts": 50, "max_new_tokens": 2},
                     "dataset_scales": [1.0], "max_new_tokens": 4},
    }
    from featuredrift.replicate.config import deep_merge

    return deep_merge(config, overrides)


# ------------------------------------------------------------------ config errors before work


def test_unknown_stage_is_rejected():
    with pytest.raises(ConfigError, match="unknown stage.*'bogus'"):
        parse_stages("activations,bogus")
    with pytest.raises(ConfigError, match="field 'stages'"):
        load_config("zoo", {"stages": ["bogus"]})


def test_bad_hookpoint_and_unknown_field_name_the_field():
    with pytest.raises(ConfigError, match="field 'hookpoints'"):
        load_config("zoo", {"hookpoints": ["block3"]})
    with pytest.raises(ConfigError, match="field 'data.max_lenght'"):
        load_config("zoo", {"data": {"max_lenght": 64}})


def test_every_paper_preset_parses():
    expected = {
        "gemma-2-2b": [10, 15, 17], "gemma-2-9b": [15, 24, 29], "llama-3.2-3b": [12, 18, 23],
        "llama-3.1-8b": [11, 18, 24], "qwen2.5-3b": [14, 21, 27], "qwen2.5-7b": [10, 15, 21],
    }
    for name, layers in expected.items():
        config = load_config(name)
        assert config.hookpoints == [f"layers.{n}" for n in layers]
        assert config.main_hookpoint == f"layers.{layers[1]}"
        assert config.sae.base_train.num_latents == 65536 and config.sae.base_train.k == 100
        assert any(s.startswith("hf:") for s in config.data.harmful)


def test_layer_out_of_range_fails_in_preflight(pair, tmp_path):
    config = load_config(pair_config(pair["root"], hookpoints=["layers.1", "layers.7"]))
    with pytest.raises(ConfigError, match=r"hookpoints: 'layers.7' is out of range: expected layers.0 … layers.2"):
        run_replication(config, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "stages").exists()  # nothing ran


def test_missing_model_path_fails_in_preflight(pair, tmp_path):
    config = load_config(pair_config(pair["root"], chat_model=str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match="chat_model: expected a model directory with config.json"):
        preflight(config)


def test_sae_width_mismatch_fails_in_preflight(pair, tmp_path):
    from sparsify import SaeConfig, SparseCoder

    SparseCoder(48, SaeConfig(num_latents=64, k=4)).save_to_disk(tmp_path / "saes" / "layers.1")
    config = load_config(pair_config(pair["root"], sae={"base": str(tmp_path / "saes")}))
    with pytest.raises(ConfigError, match=r"sae.base: SAE for layers.1 has d_in=48, expected the models' hidden size 32"):
        run_replication(config, tmp_path / "out", progress=False)


def test_missing_data_file_fails_in_preflight(pair, tmp_path):
    config = load_config(pair_config(pair["root"], data={"harmful": str(tmp_path / "none.txt")}))
    with pytest.raises(ConfigError, match="data.harmful: expected an existing"):
        preflight(config)


# ------------------------------------------------------------------ streaming metrics


def test_streamed_fvu_and_drift_equal_whole_set_metrics():
    from featuredrift.monitor.metrics import divergent_mask, explained_ratio, fvu
    from featuredrift.replicate.streaming import DriftSum, FvuSum, MomentSum

    torch.manual_seed(0)
    x0 = torch.randn(300, 16)
    xt = x0 + 0.8 * torch.randn(300, 16) + 0.3
    xt_hat = xt + 0.2 * torch.randn(300, 16)
    moments_t, moments_0 = MomentSum(), MomentSum()
    for rows in (slice(0, 100), slice(100, 300)):
        moments_t.add(xt[rows])
        moments_0.add(x0[rows])
    total = FvuSum(moments_t.mean)
    drift = DriftSum(moments_0.scale, moments_t.scale, 0.9)
    for rows in (slice(0, 100), slice(100, 300)):
        total.add(xt[rows], xt_hat[rows])
        drift.add(x0[rows], xt[rows], xt_hat[rows], torch.ones(xt[rows].shape[0]))
    assert total.value == pytest.approx(float(fvu(xt, xt_hat)), rel=1e-9)
    mask = divergent_mask(x0, xt)
    er = explained_ratio(x0, xt, xt_hat, mask, moments_0.scale, moments_t.scale)
    summary = drift.summary()
    assert summary["explained_ratio"] == pytest.approx(float(er.ratio), rel=1e-9)
    assert summary["divergent_fraction"] == pytest.approx(float(mask.double().mean()))
    assert summary["explained_ratio_mean"] == pytest.approx(float(er.mean), rel=1e-6)
    assert summary["explained_ratio_median"] == pytest.approx(float(er.median), rel=1e-6)


def test_streamed_scale_readings_equal_the_monitors():
    from featuredrift.monitor.metrics import SCALE_READINGS, scale_for
    from featuredrift.replicate.streaming import MomentSum

    torch.manual_seed(0)
    x = 3 * torch.randn(200, 8) + 1
    moments = MomentSum()
    for rows in (slice(0, 50), slice(50, 200)):
        moments.add(x[rows])
    for reading in SCALE_READINGS:
        assert moments.scale_for(reading) == pytest.approx(float(scale_for(x, reading)), rel=1e-9)


def test_data_files_honour_probe_split_labels(tmp_path):
    """Rows labelled train/heldout (the probe files' `split`) are read only for their split;
    unlabelled rows belong to every split; the splits are part of the stages' cache keys."""
    from featuredrift.replicate.context import RunContext
    from featuredrift.replicate.pipeline import stage_inputs

    rows = [{"instruction": f"train {i}", "split": "train"} for i in range(3)]
    rows += [{"instruction": f"held {i}", "split": "heldout"} for i in range(2)] + [{"instruction": "any"}]
    path = tmp_path / "harmful.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    data = {"harmful": str(path), "harmful_eval": str(path), "harmless": str(path), "harmless_eval": str(path)}
    config = load_config(pair_config(tmp_path, data=data))
    ctx = RunContext(config=config, out=tmp_path)
    assert ctx.instructions("harmful", 100) == ["train 0", "train 1", "train 2", "any"]
    assert ctx.instructions("harmful_eval", 100) == ["held 0", "held 1", "any"]
    everything = load_config(pair_config(tmp_path, data={**data, "splits": {"harmful": "all"}}))
    assert len(RunContext(config=everything, out=tmp_path).instructions("harmful", 100)) == 6
    assert stage_inputs(everything, "refusal", {"base": "b", "chat": "c"}) != stage_inputs(config, "refusal", {"base": "b", "chat": "c"})
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("\n".join(json.dumps(r) for r in rows[:-1]), encoding="utf-8")
    with pytest.raises(ConfigError, match="split 'nope'"):
        unknown = {**data, "harmful": str(labelled), "splits": {"harmful": "nope"}}
        RunContext(config=load_config(pair_config(tmp_path, data=unknown)), out=tmp_path).instructions("harmful", 100)
    with pytest.raises(ConfigError, match="data.splits.*harmfull"):
        load_config(pair_config(tmp_path, data={**data, "splits": {"harmfull": "train"}}))


# ------------------------------------------------------------------ pipeline on the tiny pair


@pytest.mark.slow
def test_pipeline_caching_selection_and_invalidation(pair, tmp_path):
    out = tmp_path / "run"
    config = load_config(pair_config(pair["root"]))
    first = run_replication(config, out, stages="transfer,drift", progress=False)
    validate_results(first)
    timings = first["provenance"]["timings"]
    assert set(first["stages"]) == {"activations", "saes", "transfer", "drift"}  # dependencies ran, nothing else
    assert not any(t["cached"] for t in timings.values())
    assert sorted(p.name for p in (out / "stages" / "activations").glob("base_base_*.safetensors"))
    for hookpoint in config.hookpoints:
        row = first["stages"]["transfer"]["hookpoints"][hookpoint]
        assert 0 < row["base_sae"]["B-LLM+B-Data"] < 1.5 and "chat_sae" in row

    t0 = time.perf_counter()
    second = run_replication(config, out, stages="transfer,drift", progress=False)
    assert time.perf_counter() - t0 < 10
    assert all(t["cached"] for t in second["provenance"]["timings"].values())
    assert second["stages"]["drift"] == first["stages"]["drift"]

    # a changed drift input recomputes drift only
    changed = load_config(pair_config(pair["root"], divergence_threshold=0.5))
    third = run_replication(changed, out, stages="drift", progress=False)
    timings = third["provenance"]["timings"]
    assert not timings["drift"]["cached"] and timings["activations"]["cached"] and timings["saes"]["cached"]
    assert third["stages"]["drift"]["threshold"] == 0.5
    assert stage_keys(changed, preflight(changed))["transfer"] == stage_keys(config, preflight(config))["transfer"]

    # --force recomputes the selected stage even when cached
    forced = run_replication(config, out, stages="transfer", force=True, progress=False)
    assert not forced["provenance"]["timings"]["transfer"]["cached"]
    assert forced["provenance"]["timings"]["saes"]["cached"]


@pytest.mark.slow
def test_pipeline_all_stages_write_reports(pair, tmp_path):
    out = tmp_path / "all"
    config = load_config(pair_config(pair["root"], sae={"trainer": "activations"}))
    results = run_replication(config, out, progress=False)
    assert all(e["trained_here"] for e in results["stages"]["saes"]["base"].values())
    validate_results(json.loads((out / "results.json").read_text()))
    assert set(results["stages"]) == {"activations", "saes", "transfer", "drift", "refusal", "interventions", "diffsae", "steering"}
    table = results["stages"]["refusal"]["table"]
    assert [row["k"] for row in table] == [1, 2, 4]
    for row in table:
        for source in ("base", "chat"):
            assert 0 <= row[source]["nmse"] <= 1 + 1e-9 and -1 <= row[source]["cosine"] <= 1
    rows = results["stages"]["interventions"]["rows"]
    assert {(r["source"], r["k"]) for r in rows} >= {("none", None), ("true", None), ("chat", 4), ("base", 4)}
    assert results["stages"]["interventions"]["judge"] == "refusal"
    diff = results["stages"]["diffsae"]
    assert diff["top_latents"] and diff["held_out_fvu"]["base"] > 0
    steering = results["stages"]["steering"]
    assert set(steering["validation"]) == {"diff_sae", "base_sae", "random"}
    assert steering["hybrid"]["sampling"]["num_rollouts"] == 50 and steering["datasets"][0]["response_tokens"] > 0
    assert {"steering_lowers_kl", "hybrid_steering_moves_rollouts", "dataset_negative_steering_refusal"} <= {
        f["id"] for f in results["findings"]}
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and "Table 1" in html and "Hybrid-model rollouts" in html
    assert "Table 1" in (out / "report.md").read_text()


@pytest.mark.slow
def test_paper_readings_are_honoured_and_recorded_in_results(pair, tmp_path):
    """The ambiguity parameters (the live monitor's names and defaults) change the drift stage
    as documented and are written into results.json's provenance."""
    from featuredrift.monitor.config import MonitorConfig

    default = run_replication(load_config(pair_config(pair["root"])), tmp_path / "ours", stages="drift", progress=False)
    readings = default["provenance"]["paper_readings"]
    shared = {name: value for name, value in readings.items() if name in MonitorConfig.model_fields}
    assert shared == {name: MonitorConfig.model_fields[name].default for name in shared} and len(shared) == 8
    literal = {"scale_reading": "energy", "er_aggregate": "median", "token_mask": "bos_eos"}
    other = run_replication(load_config(pair_config(pair["root"], paper_readings=literal)), tmp_path / "literal",
                            stages="drift", progress=False)
    validate_results(json.loads((tmp_path / "literal" / "results.json").read_text()))
    assert other["provenance"]["paper_readings"] == {**readings, **literal}
    assert other["provenance"]["paper_readings_side"] == "mixed"
    for hookpoint in default["stages"]["drift"]["hookpoints"]:
        ours, read = default["stages"]["drift"]["hookpoints"][hookpoint], other["stages"]["drift"]["hookpoints"][hookpoint]
        # bos_eos also reads the chat template's role headers and turn delimiters
        assert read["chat"]["tokens"] > ours["chat"]["tokens"]
        assert read["base"]["explained_ratio"] == read["base"]["explained_ratio_median"]
        assert read["base"]["scale_base"] == pytest.approx(ours["base"]["scale_base"] ** 2, rel=1e-6)
    assert "token mask bos_eos" in (tmp_path / "literal" / "report.md").read_text()


# Headline numbers each reading may move on the tiny pair (stages transfer, drift, refusal, interventions).
READING_METRICS = {
    "scale_reading": ("ER @",),
    "er_aggregate": ("ER @",),
    "token_mask": ("FVU ", "tokens ", "divergent fraction", "ER @", "IR "),
    "fvu_reading": ("FVU ",),
    "outlier_rule": ("FVU ", "tokens ", "divergent fraction", "ER @", "IR "),
    "ir_reading": ("IR ",),
    "refusal_feature_reading": ("Table 1", "safety under", "refusal under"),
    "decoder_norm": ("Table 1", "safety under", "refusal under"),
    "refusal_direction": ("refusal hookpoint", "refusal direction", "Table 1", "safety under", "refusal under"),
    "base_prompt": ("Table 1 base", "Table 1 overlap"),
    "ablation_reading": ("safety under",),
}


@pytest.mark.slow
def test_reading_effects_flip_one_reading_and_move_only_its_numbers(pair, tmp_path):
    """`reading_effects`: every reading rerun on its other side, only the stages it moves
    recomputed (the rest linked to the main run), and only its numbers differ."""
    out = tmp_path / "effects"
    overrides = {"reading_effects": True, "interventions": {"ks": [4], "max_new_tokens": 2},
                 "refusal": {"ks": [1, 2, 4], "selection_prompts": 3, "selection_kl_threshold": 50.0,
                             "selection_prune_layers": 0.0, "selection_induce_threshold": -50.0}}
    results = run_replication(load_config(pair_config(pair["root"], **overrides)), out,
                              stages="transfer,drift,refusal,interventions", progress=False)
    validate_results(json.loads((out / "results.json").read_text()))
    effects = {e["reading"]: e for e in results["reading_effects"]}
    assert set(effects) == set(READING_METRICS)
    for name, prefixes in READING_METRICS.items():
        effect = effects[name]
        assert effect.get("error") is None, effect
        moved = [n["metric"] for n in effect["numbers"]]
        assert all(m.startswith(prefixes) for m in moved), (name, moved)
    for name in ("scale_reading", "er_aggregate", "fvu_reading", "refusal_feature_reading", "token_mask"):
        assert effects[name]["numbers"], f"{name} moved nothing"
    assert effects["ir_reading"]["numbers"] == []  # TopK SAEs whose slots all fire: the readings agree
    # Stages a reading leaves alone are the main run's folders (only what it moves is recomputed).
    linked = out / "readings" / "fvu_reading" / "stages"
    assert (linked / "drift").is_symlink() and (linked / "activations").is_symlink() and not (linked / "transfer").is_symlink()
    report = (out / "report.md").read_text()
    assert "Paper readings and their effects" in report and "**fvu_reading**: batch → per_token" in report


# ------------------------------------------------------------------ the zoo preset end to end


@pytest.mark.slow
def test_zoo_preset_end_to_end_shows_feature_drift(tmp_path):
    """`--preset zoo` (nano) through every stage; the findings the zoo shows robustly hold."""
    from typer.testing import CliRunner

    from featuredrift.cli.main import app

    out = tmp_path / "zoo"
    result = CliRunner().invoke(app, ["replicate", "--preset", "zoo", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    results = validate_results(json.loads((out / "results.json").read_text()))
    assert set(results.stages) == {"activations", "saes", "transfer", "drift", "refusal", "interventions", "diffsae", "steering"}
    assert results.provenance.saes["base"]["layers.2"]["trained_here"] is False  # the zoo's own SAE
    findings = {f.id: f for f in results.findings}
    # Robust on the nano zoo (see the report for the rest, with numbers):
    assert findings["explained_ratio_below_one"].holds, findings["explained_ratio_below_one"].evidence
    assert findings["intersection_ratio_low"].holds, findings["intersection_ratio_low"].evidence
    assert findings["chat_sae_ceiling"].holds, findings["chat_sae_ceiling"].evidence
    assert findings["chat_features_reconstruct_better"].holds, findings["chat_features_reconstruct_better"].evidence
    assert findings["addition_induces_refusal"].holds, findings["addition_induces_refusal"].evidence
    assert findings["true_direction_mediates_refusal"].holds, findings["true_direction_mediates_refusal"].evidence
    # The post's causal checks, with its numbers beside ours.
    for finding in ("steering_lowers_kl", "hybrid_steering_moves_rollouts", "dataset_negative_steering_refusal",
                    "diff_sae_latents_explain_kl", "diff_sae_latents_steer_better"):
        assert findings[finding].holds, findings[finding].evidence
    assert "42 %" in findings["hybrid_steering_moves_rollouts"].claim and "1000 rollouts" in findings["hybrid_steering_moves_rollouts"].evidence
    rows = {(r["source"], r["k"]): r for r in results.stages["interventions"]["rows"]}
    assert rows[("true", None)]["safety_score"] < rows[("none", None)]["safety_score"] - 0.3
    assert rows[("chat", 64)]["safety_score"] < rows[("none", None)]["safety_score"] - 0.3
    for name in ("report.md", "report.html", "figures/fig1.png", "figures/fig2.png", "figures/fig3.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "Findings" in report and "Steering validation" in report and "Paper readings" in report

    # a second run of every stage is a cache hit and fast; --stages selects
    t0 = time.perf_counter()
    again = CliRunner().invoke(app, ["replicate", "--preset", "zoo", "--out", str(out), "--quiet", "--stages", "drift,refusal"])
    assert again.exit_code == 0, again.output
    assert time.perf_counter() - t0 < 30
    timings = json.loads((out / "results.json").read_text())["provenance"]["timings"]
    assert len(timings) == 8 and all(t["cached"] for t in timings.values())  # the rest reported from cache
    assert json.loads((out / "results.json").read_text())["selected_stages"] == ["drift", "refusal"]

    # The paper's code everywhere (`--set paper_readings=paper`), in the same folder: the SAEs are reused.
    paper = CliRunner().invoke(app, ["replicate", "--preset", "zoo", "--out", str(out), "--quiet", "--set", "paper_readings=paper"])
    assert paper.exit_code == 0, paper.output
    read = validate_results(json.loads((out / "results.json").read_text()))
    assert read.provenance.paper_readings == readings_of("paper") and read.provenance.paper_readings_side == "paper"
    assert read.provenance.timings["saes"].cached and not read.provenance.timings["activations"].cached
    stages = read.stages
    assert stages["transfer"]["fvu_reading"] == "per_token" and stages["interventions"]["ablation_reading"] == "unnormalised"
    assert stages["drift"]["hookpoints"]["layers.2"]["base"]["outliers_left_out"] > 0  # the 99.8 % quantile rule
    assert stages["refusal"]["table"][-1]["chat"]["num_features"] == 64  # the literal top-64 of d̄
    assert "**paper** way" in (out / "report.md").read_text()


def test_cli_reports_config_errors_without_traceback(tmp_path):
    from typer.testing import CliRunner

    from featuredrift.cli.main import app

    result = CliRunner().invoke(app, ["replicate", "--preset", "zoo", "--out", str(tmp_path), "--stages", "nope"])
    assert result.exit_code == 2 and "unknown stage" in result.output
    result = CliRunner().invoke(app, ["replicate", "--preset", "zoo", "--out", str(tmp_path), "--set", "hookpoints=[layers.1, layers.2, layers.9]"])
    assert result.exit_code == 2 and "layers.9" in result.output and "out of range" in result.output


def test_findings_need_a_margin_and_nan_is_not_a_verdict():
    from featuredrift.replicate.results import findings, lower

    assert lower(0.1475, 0.1483, relative=0.02) is None  # within tolerance: inconclusive
    assert lower(0.10, 0.15, relative=0.02) is True and lower(0.15, 0.10, relative=0.02) is False
    assert lower(float("nan"), 0.5, absolute=0.05) is None
    stages = {
        "diffsae": {"alignment": {"diff_sae": 0.1483, "base_sae": 0.1475}},
        "drift": {"hookpoints": {"layers.2": {"base": {"explained_ratio": float("nan"),
                                                       "intersection_ratio_divergent": float("nan")}}}},
    }
    by_id = {f.id: f for f in findings(stages)}
    assert by_id["diff_sae_latents_explain_kl"].holds is None
    assert by_id["intersection_ratio_low"].holds is None and by_id["explained_ratio_below_one"].holds is None


def test_refusal_prompt_format_follows_the_tokenizer_when_auto():
    from types import SimpleNamespace

    from featuredrift.replicate.config import RefusalConfig
    from featuredrift.replicate.stage_refusal import resolve_prompt_format

    assert resolve_prompt_format("auto", SimpleNamespace(chat_template="{{ x }}")) == "chat"
    assert resolve_prompt_format("auto", SimpleNamespace(chat_template=None)) == "base"
    assert RefusalConfig().prompt_format == {"chat": "chat"}
    assert load_config("zoo").paper_readings.base_prompt == "instruction"  # the paper's "{instruction}\n"
    # The older place of the base model's format is read as the base_prompt reading, which it must agree with.
    auto = load_config("zoo", {"refusal": {"prompt_format": {"base": "auto", "chat": "auto"}}})
    assert auto.paper_readings.base_prompt == "auto" and auto.refusal.prompt_format == {"chat": "auto"}
    with pytest.raises(ConfigError, match="base_prompt"):
        load_config("zoo", {"refusal": {"prompt_format": {"base": "chat"}}, "paper_readings": {"base_prompt": "instruction"}})
    with pytest.raises(ValueError):
        RefusalConfig(prompt_format={"base": "instruct"})


def test_norm_outliers_leave_both_models_shards_aligned_and_resume(tmp_path):
    """The live monitor's sink rule in replicate: rows whose base-model norm dwarfs the median at
    any hookpoint leave both models' shards; a rewrite interrupted half way is finished on resume."""
    from safetensors.torch import load_file

    from featuredrift.replicate.shards import iter_paired, shard_path, write_shard
    from featuredrift.replicate.stage_activations import leave_out_norm_outliers

    torch.manual_seed(0)
    hookpoints = ["layers.1", "layers.2"]
    sinks = {(0, 0), (1, 3)}  # (shard, row): a sink at layers.1 in shard 0, one at layers.2 in shard 1
    for index in range(2):
        ids = torch.arange(6) + 10 * index
        meta = {"token_ids": ids, "text_index": ids // 3, "position": ids % 3}
        for model in ("base", "chat"):
            acts = {h: torch.randn(6, 8) for h in hookpoints}
            for shard, row in sinks:
                if shard == index and model == "base":
                    acts[hookpoints[shard]][row] *= 500
            write_shard(shard_path(tmp_path, model, "base", index), acts, meta, torch.float32)
    before = load_file(str(shard_path(tmp_path, "chat", "base", 1)))
    assert leave_out_norm_outliers(tmp_path, "base", hookpoints, 50.0) == 2
    kept_ids = [int(t) for _, _, ids in iter_paired(tmp_path, "base", "layers.1") for t in ids]  # checks the pairing
    assert kept_ids == [1, 2, 3, 4, 5, 10, 11, 12, 14, 15]
    after = load_file(str(shard_path(tmp_path, "chat", "base", 1)))
    assert torch.equal(after["layers.2"], before["layers.2"][[0, 1, 2, 4, 5]])
    # Idempotent, and an interruption after the base shard's rewrite is completed on resume.
    write_shard(shard_path(tmp_path, "chat", "base", 1), {h: before[h] for h in hookpoints},
                {k: before[k] for k in ("token_ids", "text_index", "position")}, torch.float32)
    assert leave_out_norm_outliers(tmp_path, "base", hookpoints, 50.0) == 2
    assert [int(t) for _, _, ids in iter_paired(tmp_path, "base", "layers.2") for t in ids] == kept_ids
