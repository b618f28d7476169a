"""`featuredrift watch`: monitor a training job that cannot be changed, through its checkpoints.

The watcher is the second front door onto the DriftMonitor (the callback is the first): it
polls a Trainer output folder for `checkpoint-<step>` directories, loads each new one (a full
model or a PEFT adapter), evaluates it against the reference (an explicit base model, or for
adapters the base model they were trained on), and publishes the report exactly as the callback
does: run store first, then exporter and alerts. Steps already in the store are skipped, so a
restarted watcher continues the same run.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

from featuredrift.monitor.config import MonitorConfig
from featuredrift.monitor.drift_monitor import DriftMonitor, MonitorError
from featuredrift.monitor.report import EvaluationReport
from featuredrift.monitor.session import MonitorSession

logger = logging.getLogger(__name__)
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
# A checkpoint is complete once the Trainer has written its state (the last file it saves).
COMPLETE_MARKER = "trainer_state.json"


def completed_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every finished checkpoint in a Trainer output folder, by step."""
    found = []
    for child in Path(folder).iterdir() if Path(folder).is_dir() else []:
        match = CHECKPOINT_PATTERN.match(child.name)
        if match and (child / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def _adapter_base(checkpoint: Path) -> str | None:
    config = checkpoint / "adapter_config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("base_model_name_or_path")


def load_checkpoint(checkpoint: Path, reference: str | None):
    """The model saved in a checkpoint: full weights, or a PEFT adapter on its base model."""
    from transformers import AutoModelForCausalLM

    adapter_base = _adapter_base(checkpoint)
    if adapter_base is None:
        return AutoModelForCausalLM.from_pretrained(checkpoint)
    from peft import PeftModel

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(reference or adapter_base), checkpoint)


def watch(
    folder: str | Path,
    config: MonitorConfig,
    *,
    reference: str | None = None,
    interval_s: float = 30.0,
    once: bool = False,
    stop: Callable[[], bool] = lambda: False,
    on_report: Callable[[EvaluationReport], None] | None = None,
) -> list[EvaluationReport]:
    """Evaluate every new checkpoint under `folder`; with `once`, stop after one sweep."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise MonitorError(f"checkpoint folder: expected a Trainer output directory, found no directory at {folder}")
    run_name = config.run_name or folder.resolve().name
    reports: list[EvaluationReport] = []
    monitor = session = None
    try:
        while True:
            checkpoints = completed_checkpoints(folder)
            if monitor is None and checkpoints:
                reference_path = reference or _adapter_base(checkpoints[0][1])
                if reference_path is None:
                    raise MonitorError(
                        f"reference: expected --reference (the model training started from) for the full-weight "
                        f"checkpoints in {folder}, found none"
                    )
                tokenizer_source = checkpoints[0][1] if (checkpoints[0][1] / "tokenizer_config.json").exists() else reference_path
                tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
                base = AutoModelForCausalLM.from_pretrained(reference_path)
                monitor = DriftMonitor(config.model_copy(update={"reference": "initial", "run_name": run_name}))
                monitor.start(base, tokenizer)
                del base
                session = MonitorSession.open(monitor.config, run_name, monitor)
            done = session.stored_steps() if session else set()
            for step, path in checkpoints:
                if step in done:
                    continue
                model = load_checkpoint(path, reference).eval()
                report = monitor.evaluate(model, step)
                session.publish(report)
                reports.append(report)
                if on_report is not None:
                    on_report(report)
                del model
            if once or stop():
                return reports
            time.sleep(interval_s)
    finally:
        if session is not None:
            session.close(status="watched")
