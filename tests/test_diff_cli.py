"""`featuredrift diff …` on the zoo pair: single-context steering, hybrid rollouts, and the whole
analysis for a user's own pair (texts and prompts from files, a diff-SAE given or trained)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from featuredrift.cli.main import app


def _json(result):
    """The command's JSON (stdout; libraries may print progress to stderr)."""
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(("[", "{")))
    return json.loads("\n".join(lines[start:]))


@pytest.fixture(scope="module")
def context(zoo_nano, zoo_nano_models):
    from featuredrift.lm.prompts import render_conversation

    _, _, tokenizer = zoo_nano_models
    row = json.loads((zoo_nano.probes / "chat_text.jsonl").read_text().splitlines()[0])
    return render_conversation(tokenizer, row["messages"])


def test_diff_steer_reports_the_top_latent_and_what_it_does(zoo_nano, context):
    sae = str(zoo_nano.sae / zoo_nano.hookpoint)
    result = CliRunner().invoke(app, ["diff", "steer", "--base", "zoo:nano", "--chat", "zoo:nano", "--diff-sae", sae,
                                      "--hookpoint", zoo_nano.hookpoint, "--text", context, "--positions", "2", "--json",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = _json(result)
    assert len(rows) == 2
    for row in rows:
        assert row["kl_after"] <= row["kl_before"] and row["latent"] >= 0 and row["scale"] >= 0


def test_diff_hybrid_samples_every_model_with_its_settings(zoo_nano, zoo_nano_models, context):
    _, _, tokenizer = zoo_nano_models
    prefix = tokenizer.decode(tokenizer(context, add_special_tokens=False).input_ids[:30])
    sae = str(zoo_nano.sae / zoo_nano.hookpoint)
    args = ["diff", "hybrid", "--base", "zoo:nano", "--chat", "zoo:nano", "--hookpoint", "layers.2", "--context", prefix,
            "--rollouts", "40", "--max-new-tokens", "2", "--seed", "5", "--target", " ", "--diff-sae", sae, "--latent", "3",
            "--scale", "4", "--json", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    found = _json(result)
    assert set(found["models"]) == {"base", "chat", "hybrid", "hybrid + latent"}
    assert found["settings"]["num_rollouts"] == 40 and found["settings"]["seed"] == 5
    assert all(0.0 <= m["target_share"] <= 1.0 for m in found["models"].values())
    again = CliRunner().invoke(app, args)
    assert _json(again) == found  # seeded
    without_latent = [a for i, a in enumerate(args) if a != "--latent" and (i == 0 or args[i - 1] != "--latent")]
    bad = CliRunner().invoke(app, without_latent)
    assert bad.exit_code == 2 and "together" in " ".join(bad.output.split())


@pytest.mark.slow
def test_diff_run_analyses_a_users_pair_from_files(zoo_nano, tmp_path):
    """The stages `diffsae` and `steering` for a pair given by flags, with texts and prompts from
    files, the base SAE given and a BatchTopK diff-SAE trained here."""
    from featuredrift.replicate.results import validate_results

    texts = tmp_path / "texts.jsonl"
    rows = (zoo_nano.data / "chat_sft.jsonl").read_text().splitlines()[:160]
    texts.write_text("\n".join(rows), encoding="utf-8")
    small = {"num_latents": 128, "k": 8, "lr": 0.003, "batch_size": 512, "num_tokens": 512 * 40, "lr_warmup_steps": 5,
             "dead_feature_threshold": 20000}
    args = ["diff", "run", "--base", "zoo:nano", "--chat", "zoo:nano", "--hookpoint", "layers.2", "--texts", str(texts),
            "--sae", "zoo:nano", "--out", str(tmp_path / "out"), "--quiet", "--behaviour", "I'm sorry,I cannot",
            "--set", f"diffsae.train={json.dumps(small)}", "--set", "device=cpu",
            "--set", "steering.sampling.num_rollouts=100", "--set", "steering.positions=6", "--set", "steering.dataset_scales=[2]",
            "--set", "data.max_prompts=24", "--set", "interventions.max_new_tokens=8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    results = validate_results(json.loads((tmp_path / "out" / "results.json").read_text()))
    assert {"activations", "saes", "refusal", "diffsae", "steering"} <= set(results.stages)
    assert results.stages["diffsae"]["training"]["activation"] == "batchtopk"
    dataset = results.stages["steering"]["datasets"][0]
    assert dataset["behaviour"] == ["I'm sorry", "I cannot"] and dataset["response_tokens"] > 0
    assert "Steering validation" in (tmp_path / "out" / "report.md").read_text()
    # Your own diff-SAE instead of one trained here: analysed as given.
    mine = str(tmp_path / "out" / "stages" / "diffsae" / "diff_sae" / "layers.2")
    loaded = CliRunner().invoke(app, [*args[:12], "--out", str(tmp_path / "mine"), *args[14:], "--diff-sae", mine])
    assert loaded.exit_code == 0, loaded.output
    record = json.loads((tmp_path / "mine" / "results.json").read_text())["stages"]["diffsae"]["training"]
    assert record["loaded"] == mine
