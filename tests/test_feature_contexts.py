"""Top-activating probe contexts of the listed features.

Fast: the top-row selection against a brute-force dense ranking, the row → probe mapping with
norm outliers left out, the report round trip, the config bounds. Slow: a real short SFT run on
the nano zoo whose stored contexts are real probe tokens, whose activations equal the SAE code
recomputed independently (transformers' hidden states + sparsify's encoder) for the reference
and the trained model, whose reference contexts are the same at every step, and which show up
in `runs show --features` and in the report Chromium renders.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from test_report_browser import console_messages, run_chromium
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from featuredrift.callbacks.feature_drift import FeatureDriftCallback
from featuredrift.cli.main import app
from featuredrift.monitor.config import MonitorConfig
from featuredrift.monitor.drift_monitor import ProbeBatch
from featuredrift.monitor.feature_contexts import ProbeTokens, top_rows, top_rows_all_latents
from featuredrift.monitor.probes import load_probe_set
from featuredrift.monitor.report import EvaluationReport
from featuredrift.reports.html import write_run_report
from featuredrift.store import RunStore
from featuredrift.zoo.finetune import make_sft_trainer, read_conversations

N_CONTEXTS = 3
WINDOW = 4


def random_codes(rows: int = 40, k: int = 4, latents: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    indices = torch.stack([torch.randperm(latents, generator=generator)[:k] for _ in range(rows)])
    return torch.rand(rows, k, generator=generator), indices


def test_top_rows_match_a_brute_force_dense_ranking():
    acts, indices = random_codes()
    dense = torch.zeros(acts.shape[0], 16).scatter_(1, indices, acts)
    features = torch.tensor([3, 11, 0])
    top = top_rows(acts, indices, features, 16, 5)
    expected = torch.topk(dense[:, features], 5, dim=0)
    assert torch.equal(top.values, expected.values.T) and torch.equal(top.rows, expected.indices.T)
    every = top_rows_all_latents(acts, indices, 16, 5)
    assert torch.equal(every.values[features], top.values) and torch.equal(every.rows[features], top.rows)


def test_probe_tokens_map_rows_to_probe_and_position_without_padding_or_left_out_rows():
    # two left-padded prompts read at their last token, and a right-padded text read at three tokens
    prompts = ProbeBatch(torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]]), torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]),
                         torch.tensor([[False, False, False, True], [False, False, False, True]]))
    text = ProbeBatch(torch.tensor([[1, 2, 3, 0]]), torch.tensor([[1, 1, 1, 0]]),
                      torch.tensor([[False, True, True, False]]))
    tokens = ProbeTokens.from_batches({"harmful": [prompts], "base": [text]}, {"base": torch.tensor([True, False])})
    assert tokens.probe_of_row == [0, 1, 0] and tokens.position_of_row == [1, 3, 1]
    assert [tokens.subsets[s] for s in tokens.subset_of_row] == ["harmful", "harmful", "base"]
    assert tokens.tokens["harmful"] == [[5, 6], [7, 8, 9, 10]]
    with pytest.raises(ValueError, match="expected a keep mask of 2 rows, found 3"):
        ProbeTokens.from_batches({"base": [text]}, {"base": torch.tensor([True, True, False])})


@pytest.mark.parametrize("bad", [{"feature_contexts": -1}, {"feature_contexts": 17}, {"feature_context_tokens": 33}])
def test_context_settings_are_bounded(bad):
    with pytest.raises(ValidationError, match=next(iter(bad))):
        MonitorConfig(sae="zoo:nano", **bad)


# ---------------------------------------------------------------------------------- a real run
@pytest.fixture(scope="module")
def contexts_run(zoo_nano, tmp_path_factory):
    """Four SFT steps of the nano base model on chat data, evaluated at steps 0, 2 and 4."""
    out = tmp_path_factory.mktemp("contexts")
    model = AutoModelForCausalLM.from_pretrained(zoo_nano.base)
    tokenizer = AutoTokenizer.from_pretrained(zoo_nano.base)
    data = read_conversations(zoo_nano.data / "chat_sft.jsonl")[:48]
    trainer = make_sft_trainer(model, tokenizer, data, output_dir=out / "trainer", max_steps=4, learning_rate=5e-3,
                               batch_size=8)
    config = MonitorConfig(sae=str(zoo_nano.sae), probes=str(zoo_nano.probes), max_probes=16, refusal_score_every=0,
                           kl_every=0, eval_every=2, store_url=f"sqlite:///{out}/runs.db", metrics_port=0,
                           run_name="contexts", feature_contexts=N_CONTEXTS, feature_context_tokens=WINDOW)
    callback = FeatureDriftCallback.attach(trainer, config)
    trainer.train()
    assert [r.step for r in callback.reports] == [0, 2, 4]
    with RunStore(config.store_url) as store:
        stored = store.feature_contexts("contexts")
    return {"out": out, "config": config, "reports": callback.reports, "trained": model.eval(),
            "tokenizer": tokenizer, "stored": stored, "hookpoint": zoo_nano.hookpoint}


@pytest.mark.slow
def test_every_listed_feature_keeps_a_bounded_set_of_contexts_and_reference_contexts_are_fixed(contexts_run):
    stored, reports = contexts_run["stored"], contexts_run["reports"]
    assert {c.step for c in stored} == {0, 2, 4}
    per_slot = Counter((c.step, c.hookpoint, c.feature, c.model) for c in stored)
    assert max(per_slot.values()) <= N_CONTEXTS
    for report in reports:
        layer = report.layers[contexts_run["hookpoint"]]
        listed = {d.feature for d in layer.drifted_features} | set(layer.refusal_features.current) | set(
            layer.refusal_features.reference)
        at_step = {c.feature for c in stored if c.step == report.step}
        assert at_step <= listed and len(at_step) >= len(listed) // 2  # a listed feature fires on some probe token
        for feature, kind in {(c.feature, c.model) for c in layer.feature_contexts}:
            mine = [c for c in layer.feature_contexts if (c.feature, c.model) == (feature, kind)]
            assert [c.rank for c in mine] == list(range(len(mine)))
            assert [c.activation for c in mine] == sorted((c.activation for c in mine), reverse=True)
            assert all(c.activation > 0 for c in mine)
    reference = {}
    for c in stored:
        if c.model == "reference":
            slot = reference.setdefault((c.hookpoint, c.feature, c.rank), c[3:])
            assert slot == c[3:], "reference contexts are picked once per run: the same at every step"
    # at step 0 the current model is the reference: both pick the same tokens
    first = [c for c in stored if c.step == 0]
    assert {(c.feature, c.subset, c.probe_index, c.position) for c in first if c.model == "current"} == {
        (c.feature, c.subset, c.probe_index, c.position) for c in first if c.model == "reference"}
    # the report the journal replays round-trips with its contexts
    last = reports[-1]
    assert EvaluationReport.from_dict(json.loads(last.to_json())).layers == last.layers


def _base_contexts(run, model: str, step: int):
    return [c for c in run["stored"] if c.step == step and c.model == model and c.subset == "base"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["reference", "current"])
def test_context_tokens_are_real_probe_tokens_and_activations_match_the_sae_recomputed(contexts_run, zoo_nano, model):
    """Tokenise the probe text and run transformers' forward and sparsify's encoder independently:
    the stored token and its neighbours decode to the stored text, and the feature's code there is
    the stored activation. The reference is the untrained base model; 'current' at the last step
    is the trained model."""
    from sparsify import SparseCoder

    run, tokenizer, hookpoint = contexts_run, contexts_run["tokenizer"], contexts_run["hookpoint"]
    texts = load_probe_set(run["config"].probes, split=run["config"].probe_split).limit(16).base_text
    network = AutoModelForCausalLM.from_pretrained(zoo_nano.base).eval() if model == "reference" else run["trained"]
    sae = SparseCoder.load_from_disk(Path(zoo_nano.sae) / hookpoint)
    layer = int(hookpoint.split(".")[1])
    contexts = _base_contexts(run, model, step=4)
    assert len(contexts) >= 10
    for c in contexts:
        ids = tokenizer(texts[c.probe_index], truncation=True, max_length=run["config"].max_length)["input_ids"]
        assert tokenizer.decode(ids[c.position : c.position + 1]) == c.token
        assert tokenizer.decode(ids[max(0, c.position - WINDOW) : c.position]) == c.left
        assert tokenizer.decode(ids[c.position + 1 : c.position + 1 + WINDOW]) == c.right
        with torch.no_grad():
            hidden = network(torch.tensor([ids]), output_hidden_states=True).hidden_states[layer + 1][0, c.position]
            encoded = sae.encode(hidden.unsqueeze(0))
        code = dict(zip(encoded.top_indices[0].tolist(), encoded.top_acts[0].tolist(), strict=True))
        assert code.get(c.feature, 0.0) == pytest.approx(c.activation, rel=1e-3, abs=1e-4), c


@pytest.mark.slow
def test_contexts_show_in_runs_show_features_with_a_card_limit(contexts_run):
    db = contexts_run["config"].store_url
    shown = CliRunner().invoke(app, ["runs", "show", "contexts", "--features", "--limit", "2", "--db", db],
                               terminal_width=220)
    assert shown.exit_code == 0, shown.output
    assert shown.output.count("top contexts") == 2 and "not captured" not in shown.output
    every = CliRunner().invoke(app, ["runs", "show", "contexts", "--features", "--db", db, "--limit", "1000"])
    cards = every.output.count("top contexts") + every.output.count("does not fire on any probe token")
    assert f"{cards - 2} more cards left out (of {cards})" in shown.output
    last = [c for c in contexts_run["stored"] if c.step == 4 and c.rank == 0]
    assert any(c.left.strip() and c.left.strip()[-8:] in shown.output for c in last)


@pytest.mark.slow
def test_contexts_render_in_the_report_in_chromium(contexts_run, tmp_path):
    with RunStore(contexts_run["config"].store_url) as store:
        files = write_run_report(store, "contexts", tmp_path / "report")
    result = run_chromium(files.html.as_uri(), "--dump-dom", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert console_messages(result.stderr) == []
    assert "not captured for this run" not in dom
    assert dom.count("class=\"context\" data-model=\"reference\"") >= 3
    assert dom.count("class=\"context\" data-model=\"current\"") >= 3
    marked = {c.token.strip() for c in contexts_run["stored"] if c.step == 4 and c.token.strip()}
    assert any(f"<mark>{token}" in dom or f"<mark> {token}" in dom for token in marked)
