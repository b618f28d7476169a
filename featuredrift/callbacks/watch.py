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

from featuredrift.callbacks.exits import error_info
from featuredrift.callbacks.session import MonitorSession
from featuredrift.monitor.config import MonitorConfig
from featuredrift.monitor.drift_monitor import DriftMonitor, MonitorError
from featuredrift.monitor.report import EvaluationReport

logger = logging.getLogger(__name__)
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
# A checkpoint is complete once the Trainer has written its state (the last file it saves).
COMPLETE_MARKER = "trainer_state.json"
# What `trainer.save_model()` leaves at the top of the output folder when a job ends.
FINAL_MODEL_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")


def completed_checkpoints(folder: Path, on_incomplete: Callable[[Path], None] | None = None) -> list[tuple[int, Path]]:
    """(step, path) of every finished checkpoint in a Trainer output folder, by step;
    `on_incomplete` hears of each `checkpoint-*` without `trainer_state.json`."""
    found = []
    for child in Path(folder).iterdir() if Path(folder).is_dir() else []:
        match = CHECKPOINT_PATTERN.match(child.name)
        if not match:
            continue
        if (child / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), child))
        elif on_incomplete is not None:
            on_incomplete(child)
    return sorted(found)


def training_finished(folder: Path) -> bool:
    """Whether the job saved its final model at the top of its output folder (`trainer.save_model()`)."""
    return any((Path(folder) / name).is_file() for name in FINAL_MODEL_FILES)


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
    from featuredrift.extras import require_extra

    require_extra("demo", f"reading the LoRA adapter in {checkpoint}", modules=("peft",))
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
    on_warning: Callable[[str], None] | None = None,
) -> list[EvaluationReport]:
    """Evaluate the reference (step 0) and every new checkpoint under `folder`.

    With `once`, stop after one sweep; otherwise stop when `stop()` says so or when the job has
    saved its final model. The last evaluation of a sweep that ends the watch is marked final,
    and the run is finished in the store.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise MonitorError(f"checkpoint folder: expected a Trainer output directory, found no directory at {folder}")
    warn = on_warning or (lambda message: logger.warning("%s", message))
    warned: set[Path] = set()

    def incomplete(path: Path) -> None:
        if path not in warned:
            warned.add(path)
            warn(f"{path} has no {COMPLETE_MARKER}: skipped until the Trainer finishes writing it")

    run_name = config.run_name or folder.resolve().name
    reports: list[EvaluationReport] = []
    monitor = session = None
    status = "failed"
    error = None
    try:
        while True:
            checkpoints = completed_checkpoints(folder, incomplete)
            ending = once or stop() or training_finished(folder)
            if monitor is None and checkpoints:
                reference_path = reference or _adapter_base(checkpoints[0][1])
                if reference_path is None:
                    raise MonitorError(
                        f"reference: expected --reference (the model training started from) for the full-weight "
                        f"checkpoints in {folder}, found none"
                    )
                tokenizer_source = checkpoints[0][1] if (checkpoints[0][1] / "tokenizer_config.json").exists() else reference_path
                tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
                base = AutoModelForCausalLM.from_pretrained(reference_path).eval()
                monitor = DriftMonitor(config.model_copy(update={"reference": "initial", "run_name": run_name}))
                monitor.start(base, tokenizer)
                session = MonitorSession.open(monitor.config, run_name, monitor)
                if 0 not in session.evaluated_steps():
                    # Step 0 is the reference itself: the point every curve starts from.
                    _publish(session, monitor.evaluate(base, 0), reports, on_report)
                del base
            done = session.evaluated_steps() if session else set()
            todo = [(step, path) for step, path in checkpoints if step not in done]
            for index, (step, path) in enumerate(todo):
                model = load_checkpoint(path, reference).eval()
                final = ending and index == len(todo) - 1
                _publish(session, monitor.evaluate(model, step, final=final), reports, on_report)
                del model
            if ending:
                status = "finished"
                return reports
            if session is not None:
                session.heartbeat()  # alive between checkpoints: the run is not stale while it waits
            time.sleep(interval_s)
    except KeyboardInterrupt:
        status = "stopped"
        raise
    except BaseException as raised:
        error = error_info(raised)
        raise
    finally:
        if session is not None:
            session.close(status=status, error=error if status == "failed" else None)


def _publish(session: MonitorSession, report: EvaluationReport, reports: list, on_report) -> None:
    session.publish(report)
    reports.append(report)
    if on_report is not None:
        on_report(report)
