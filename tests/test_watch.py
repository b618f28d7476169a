"""`featuredrift watch`: checkpoints written by an unmodified Trainer (full weights and LoRA
adapters) are evaluated from outside, stored once per step, and a restart continues the run."""

from __future__ import annotations

import shutil

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from featuredrift.callbacks.watch import completed_checkpoints, watch
from featuredrift.cli.main import app
from featuredrift.monitor.config import MonitorConfig
from featuredrift.monitor.drift_monitor import MonitorError
from featuredrift.store.run_store import RunStore
from featuredrift.zoo.finetune import make_sft_trainer, read_conversations

pytestmark = pytest.mark.slow


def _train_with_checkpoints(zoo, out, *, lora=False):
    """A plain SFT run that knows nothing about featuredrift, saving every 2 steps."""
    model = AutoModelForCausalLM.from_pretrained(zoo.base)
    tokenizer = AutoTokenizer.from_pretrained(zoo.base)
    data = read_conversations(zoo.data / "chat_sft.jsonl")[:64]
    trainer = make_sft_trainer(
        model, tokenizer, data, output_dir=out, max_steps=4, learning_rate=5e-3, batch_size=8, save_steps=2, lora=lora
    )
    trainer.train()


def _config(zoo, tmp_path, run):
    return MonitorConfig(
        sae=str(zoo.sae), probes=str(zoo.probes), max_probes=8, refusal_score_every=0, metrics_port=-1,
        store_url=f"sqlite:///{tmp_path}/watch.db", run_name=run,
    )


def test_full_weight_checkpoints_are_evaluated_once_each(zoo_nano, tmp_path):
    out = tmp_path / "job"
    _train_with_checkpoints(zoo_nano, out)
    assert [step for step, _ in completed_checkpoints(out)] == [2, 4]
    config = _config(zoo_nano, tmp_path, "watched")

    (out / "checkpoint-5").mkdir()  # still being written: no trainer_state.json yet
    warnings = []
    reports = watch(out, config, reference=str(zoo_nano.base), once=True, on_warning=warnings.append)
    assert [r.step for r in reports] == [0, 2, 4]  # step 0 is the reference itself
    assert [r.final for r in reports] == [False, False, True]
    assert len(warnings) == 1 and "checkpoint-5" in warnings[0] and "trainer_state.json" in warnings[0]
    assert next(iter(reports[0].layers.values())).divergent_fraction == 0
    layer = next(iter(reports[-1].layers.values()))
    assert layer.divergent_fraction > 0  # the checkpoints really differ from the reference
    (out / "checkpoint-5").rmdir()

    # A restarted watcher skips what is stored and picks up only the new checkpoint.
    assert watch(out, config, reference=str(zoo_nano.base), once=True) == []
    shutil.copytree(out / "checkpoint-4", out / "checkpoint-6")
    assert [r.step for r in watch(out, config, reference=str(zoo_nano.base), once=True)] == [6]
    with RunStore(config.store_url) as store:
        assert store.recorded_steps("watched") == [0, 2, 4, 6]
        assert store.get_run("watched").status == "finished"


def test_lora_checkpoints_use_their_base_model_as_reference(zoo_nano, tmp_path):
    out = tmp_path / "lora-job"
    _train_with_checkpoints(zoo_nano, out, lora=True)
    reports = watch(out, _config(zoo_nano, tmp_path, "lora"), once=True)
    assert [r.step for r in reports] == [0, 2, 4]
    layer = next(iter(reports[1].layers.values()))
    assert layer.fvu["current/base"] != layer.fvu["reference/base"]


def test_full_weight_checkpoints_need_a_reference(zoo_nano, tmp_path):
    out = tmp_path / "job"
    _train_with_checkpoints(zoo_nano, out)
    with pytest.raises(MonitorError, match="--reference"):
        watch(out, _config(zoo_nano, tmp_path, "noref"), once=True)


def test_missing_folder_is_a_clear_error(zoo_nano, tmp_path):
    with pytest.raises(MonitorError, match="no directory"):
        watch(tmp_path / "nope", _config(zoo_nano, tmp_path, "x"), once=True)


def test_cli_watch_once(zoo_nano, tmp_path):
    out = tmp_path / "job"
    _train_with_checkpoints(zoo_nano, out)
    db = f"sqlite:///{tmp_path}/cli.db"
    result = CliRunner().invoke(
        app,
        ["watch", str(out), "--sae", str(zoo_nano.sae), "--probes", str(zoo_nano.probes), "--reference", str(zoo_nano.base),
         "--db", db, "--once"],
        env={"FEATUREDRIFT_METRICS_PORT": "-1", "FEATUREDRIFT_MAX_PROBES": "8", "FEATUREDRIFT_REFUSAL_SCORE_EVERY": "0"},
    )
    assert result.exit_code == 0, result.output
    assert "step 0:" in result.output and "step 2:" in result.output and "step 4:" in result.output
    with RunStore(db) as store:
        assert store.recorded_steps("job") == [0, 2, 4]
        assert store.get_run("job").status == "finished"
    missing = CliRunner().invoke(
        app, ["watch", str(out), "--sae", str(zoo_nano.sae), "--db", db, "--run-name", "noref", "--once"],
        env={"FEATUREDRIFT_METRICS_PORT": "-1"},
    )
    assert missing.exit_code == 2 and "--reference" in missing.output and "Traceback" not in missing.output
