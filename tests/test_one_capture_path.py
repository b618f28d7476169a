"""One capture path: the live monitor's step-0 numbers equal the batch replication's for the
same model pair, SAE and probe texts (same tokens, same read mask, same FVU)."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from featuredrift import sae_store  # noqa: F401  (Triton guard)

pytestmark = pytest.mark.slow


def test_live_monitor_and_replicate_agree_on_transfer_fvu(zoo_nano, zoo_nano_models, tmp_path):
    from featuredrift.cli.main import app
    from featuredrift.monitor.config import MonitorConfig
    from featuredrift.monitor.drift_monitor import DriftMonitor
    from featuredrift.replicate.config import PRESETS_DIR

    preset = yaml.safe_load((PRESETS_DIR / "zoo.yaml").read_text())
    preset.update(hookpoints=[zoo_nano.hookpoint], refusal_hookpoint=zoo_nano.hookpoint)
    preset["sae"].update(chat=False, train_missing=False)
    preset["data"]["max_eval_texts"] = 1000  # every probe text, as the live monitor reads them
    config_path = tmp_path / "pair.yaml"
    config_path.write_text(yaml.safe_dump(preset))
    out = tmp_path / "replicate"
    result = CliRunner().invoke(app, ["replicate", "--config", str(config_path), "--out", str(out), "--quiet",
                                      "--stages", "activations,saes,transfer"])
    assert result.exit_code == 0, result.output
    transfer = json.loads((out / "results.json").read_text())["stages"]["transfer"]
    batch = transfer["hookpoints"][zoo_nano.hookpoint]["base_sae"]

    base, chat, tokenizer = zoo_nano_models
    # The norm-outlier rule is the live monitor's own addition; everything else is shared.
    monitor = DriftMonitor(MonitorConfig(sae=str(zoo_nano.sae), probes=str(zoo_nano.probes), probe_split="all",
                                         refusal_score_every=0, kl_every=0, sink_norm_ratio=None))
    monitor.start(base, tokenizer)
    live = monitor.evaluate(chat, 0).layers[zoo_nano.hookpoint].fvu
    assert live["reference/base"] == pytest.approx(batch["B-LLM+B-Data"], rel=1e-4)
    assert live["reference/chat"] == pytest.approx(batch["B-LLM+C-Data"], rel=1e-4)
    assert live["current/chat"] == pytest.approx(batch["C-LLM+C-Data"], rel=1e-4)
    assert live["current/base"] == pytest.approx(batch["C-LLM+B-Data"], rel=1e-4)
