"""Short monitored SFT runs on the nano zoo, and the stall a fault adds to one.

`train_monitored` fine-tunes for six steps with the callback evaluating every two. A fault test
compares what telemetry cost the training thread in the faulty run with what the same
evaluations cost with nothing failing, measured in the same test (`fault_free_stalls`), so a
busy machine slows both sides alike and only the fault's own stall is judged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from featuredrift import sae_store  # noqa: F401  (Triton guard)
from featuredrift.callbacks.feature_drift import FeatureDriftCallback
from featuredrift.callbacks.session import MonitorSession
from featuredrift.monitor.config import MonitorConfig
from featuredrift.zoo.finetune import make_sft_trainer, read_conversations

EXPECTED_STEPS = [0, 2, 4, 6]


def train_monitored(zoo, tmp_path: Path, run_name: str = "fault", output_dir: Path | None = None, callbacks=(),
                    **overrides) -> FeatureDriftCallback:
    """Six SFT steps with the callback evaluating at steps 0, 2, 4, 6; `callbacks` run after it."""
    settings = dict(
        sae=str(zoo.sae), probes=str(zoo.probes), max_probes=8, refusal_score_every=0, eval_every=2, metrics_port=-1,
        store_url=f"sqlite:///{tmp_path}/runs.db", run_name=run_name, close_timeout_s=2.0, export_timeout_s=1.0,
    )
    config = MonitorConfig(**{**settings, **overrides})
    model = AutoModelForCausalLM.from_pretrained(zoo.base)
    tokenizer = AutoTokenizer.from_pretrained(zoo.base)
    data = read_conversations(zoo.data / "chat_sft.jsonl")[:48]
    callback = FeatureDriftCallback(config)
    trainer = make_sft_trainer(model, tokenizer, data, output_dir=output_dir or tmp_path / "out", max_steps=6,
                               learning_rate=5e-3, batch_size=8, callbacks=[callback, *callbacks])
    trainer.train()
    return callback


@dataclass(frozen=True)
class Stalls:
    """Training-thread time telemetry took: the longest hand-over of one evaluation, and train end."""

    handoff: float
    close: float


def stalls(session: MonitorSession) -> Stalls:
    return Stalls(max(session.handoff_seconds[:-1]), session.handoff_seconds[-1])


def fault_free_stalls(callback: FeatureDriftCallback, folder: Path) -> Stalls:
    """The same evaluations handed to a session whose store, exporter and webhook all work, now."""
    folder.mkdir(parents=True, exist_ok=True)
    config = callback.config.model_copy(update={
        "store_url": f"sqlite:///{folder}/fault-free.db", "pushgateway_url": None, "alert_webhook_url": None,
        "metrics_port": -1,
    })
    session = MonitorSession.open(config, f"{callback.run_id}-fault-free", callback.monitor, journal_dir=folder)
    for report in callback.reports:
        session.publish(report)
    session.close()
    return stalls(session)


def assert_fault_adds_bounded_stall(callback: FeatureDriftCallback, folder: Path, label: str) -> tuple[float, float]:
    """The stall the fault adds over the fault-free baseline stays within the configured budgets:
    `telemetry_budget_s` per hand-over, `close_timeout_s` at train end. Returns both added stalls."""
    faulty, baseline = stalls(callback.session), fault_free_stalls(callback, folder)
    added_handoff, added_close = faulty.handoff - baseline.handoff, faulty.close - baseline.close
    config = callback.config
    print(f"{label}: the fault adds {added_handoff * 1e3:+.1f} ms to the longest hand-over "
          f"({faulty.handoff * 1e3:.1f} ms vs {baseline.handoff * 1e3:.1f} ms fault-free) and {added_close:+.2f} s "
          f"at train end ({faulty.close:.2f} s vs {baseline.close:.2f} s; close_timeout_s {config.close_timeout_s:g})")
    assert added_handoff < config.telemetry_budget_s, f"{label}: the fault held a step {added_handoff:.3f}s"
    # Past the close budget only the thread hand-offs remain, each bounded by the hand-over budget.
    assert added_close < config.close_timeout_s + config.telemetry_budget_s, \
        f"{label}: the fault held train end {added_close:.2f}s (close_timeout_s {config.close_timeout_s:g})"
    return added_handoff, added_close
