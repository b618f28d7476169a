"""Two ranks (torchrun, gloo on the CPU) evaluate the zoo's chat model against its base model,
replicated (DDP) or sharded (FSDP2 `fully_shard`). Each subset has an odd number of probe
batches, so one rank runs a padding pass; under FSDP a rank short of a pass would hang. Every
rank must end with rank 0's report, equal to a single-process evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from featuredrift.monitor.config import MonitorConfig
from featuredrift.monitor.drift_monitor import DriftMonitor
from featuredrift.monitor.report import EvaluationReport

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).parent / "scripts" / "sharded_probe_pass.py"


def _config(zoo) -> dict:
    # 10 probes per subset in batches of 4: 3 batches, which 2 ranks cannot split evenly.
    return {"sae": str(zoo.sae), "probes": str(zoo.probes), "max_probes": 10, "batch_size": 4,
            "refusal_score_every": 1, "max_new_tokens": 6, "generation_batch_size": 4}


def _values(report: EvaluationReport) -> dict:
    return {(s.name, json.dumps(s.labels, sort_keys=True)): s.value for s in report.metric_samples()
            if s.name != "featuredrift_evaluation_duration_seconds"}


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_end_with_the_single_process_report(mode, zoo_nano, zoo_nano_models, tmp_path):
    from servers import free_port

    opts = {"mode": mode, "out": str(tmp_path), "config": _config(zoo_nano)}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPARSIFY_DISABLE_TRITON": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    done = subprocess.run([*torchrun, str(SCRIPT), json.dumps(opts)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    reports = [EvaluationReport.from_dict(json.loads((tmp_path / f"report-{mode}-rank{r}.json").read_text())) for r in (0, 1)]
    assert reports[0].to_dict() == reports[1].to_dict()  # rank 1 holds rank 0's report, timings included

    base, chat, tokenizer = zoo_nano_models
    single = DriftMonitor(MonitorConfig(**_config(zoo_nano)))
    single.start(base, tokenizer)
    expected = single.evaluate(chat, step=1, final=True)
    got, want = _values(reports[0]), _values(expected)
    assert got.keys() == want.keys()
    assert all(abs(got[k] - want[k]) <= 1e-4 * max(1.0, abs(want[k])) for k in want), [
        (k, got[k], want[k]) for k in want if abs(got[k] - want[k]) > 1e-4 * max(1.0, abs(want[k]))]
    assert [c["completion"] for c in reports[0].completions] == [c["completion"] for c in expected.completions]
    assert reports[0].kl_mean is not None and reports[0].refusal_token_probability["harmful"] > 0.5
