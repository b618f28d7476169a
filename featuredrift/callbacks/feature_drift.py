"""FeatureDriftCallback: a thin adapter from Trainer events to the DriftMonitor.

It holds no science. It decides *when* to evaluate (train begin, every N steps, optionally on
save, train end; once per global step) and *where* reports go (run store first, then the
exporter and the alert engine), with side effects on the main process only. The probe forward
runs on every rank because under FSDP/ZeRO-3 it is a collective.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from pathlib import Path

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from featuredrift.callbacks.exits import error_info
from featuredrift.callbacks.session import MonitorSession
from featuredrift.monitor.audit import sample_indices
from featuredrift.monitor.config import MonitorConfig
from featuredrift.monitor.distributed import broadcast_from_main, is_main_process
from featuredrift.monitor.drift_monitor import DriftMonitor, MonitorError
from featuredrift.monitor.report import EvaluationReport
from featuredrift.store.journal import safe_file_name

logger = logging.getLogger(__name__)
DEFAULT_EVAL_EVERY = 50
STATE_FILE = "featuredrift_state.json"  # in each checkpoint folder: which run it belongs to


def _timed(event):
    """Count the wall time of a Trainer event handler into `self.seconds`."""

    @functools.wraps(event)
    def wrapper(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return event(self, *args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started

    return wrapper


class FeatureDriftCallback(TrainerCallback):
    """Evaluate feature drift while a `transformers` Trainer (or TRL's SFTTrainer) trains.

    Attach with `trainer.add_callback(FeatureDriftCallback(config))`. The model is read at train
    begin (the reference), every `eval_every` steps and at train end; every evaluation is
    stored, exported and checked against the alerts on the main process.

    Args:
        config: The monitor's settings (`MonitorConfig`); `sae` is required.
        trainer: The Trainer, so every evaluation is also logged through `trainer.log` to the
            loggers it reports to (W&B, TensorBoard, MLflow, trackio) as `featuredrift/...`
            keys at the evaluation's step. `FeatureDriftCallback.attach(trainer, config)` sets it.
        **overrides: Fields of `MonitorConfig` to set or replace, e.g.
            `FeatureDriftCallback(sae="path/to/sae", eval_every=25)`.
    """

    @classmethod
    def attach(cls, trainer, config: MonitorConfig | None = None, **overrides) -> FeatureDriftCallback:
        """Add a callback to `trainer` that also logs through the trainer's own loggers, audits
        its train dataset, and ends the run `failed` when `trainer.train()` raises."""
        callback = cls(config, trainer=trainer, **overrides)
        trainer.add_callback(callback)
        train = trainer.train

        @functools.wraps(train)
        def train_and_fail_on_error(*args, **kwargs):
            try:
                return train(*args, **kwargs)
            except BaseException as error:  # KeyboardInterrupt and OOMs too: the run must say it failed
                callback.fail(error)
                raise

        trainer.train = train_and_fail_on_error
        return callback

    def __init__(self, config: MonitorConfig | None = None, *, trainer=None, **overrides):
        if config is None:
            config = MonitorConfig(**overrides)
        elif overrides:
            config = config.model_copy(update=overrides)
        self.config = config
        self.trainer = trainer
        self.monitor = DriftMonitor(config)
        self.session: MonitorSession | None = None
        self.eval_every = config.eval_every or DEFAULT_EVAL_EVERY
        self.reports: list[EvaluationReport] = []
        self.alerts: list = []  # alert transitions, as the engine reported them (main process)
        self.stop_reason: str | None = None
        self.seconds = 0.0  # wall time spent inside this callback: its whole cost to training
        self.run_id: str | None = None
        self._done_steps: set[int] = set()

    # --------------------------------------------------------------- events
    @_timed
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        model, tokenizer = kwargs["model"], kwargs.get("processing_class") or kwargs.get("tokenizer")
        if tokenizer is None:
            raise ValueError("FeatureDriftCallback: expected the Trainer to have a tokenizer (processing_class), found None")
        eval_steps = getattr(args, "eval_steps", None)
        if self.config.eval_every is None and eval_steps:
            # transformers reads an eval_steps below 1 as a fraction of the total steps.
            steps = eval_steps if eval_steps >= 1 else eval_steps * state.max_steps
            self.eval_every = max(1, int(steps))
        if self.session is not None and not self.session.closed:
            # The previous train() raised and its caller caught it (a notebook): it never ended.
            self.session.fail({"type": "interrupted", "message": "train() ended without reaching train end"})
        started = time.perf_counter()
        display_name = self.config.run_name or _default_run_name(args)
        resuming = state.global_step > 0
        saved = read_checkpoint_state(args, state) if resuming else None
        if resuming and saved is None:
            logger.warning("featuredrift: resuming at step %d from a checkpoint without %s; this is a new run",
                           state.global_step, STATE_FILE)
        # Every fresh train() is a new run; only a resumed checkpoint continues one.
        # Rank 0 names the run, so every rank journals, caches and resumes under the same id.
        self.run_id = broadcast_from_main(saved["run_id"] if saved else new_run_id(display_name))
        folder = Path(args.output_dir) / "featuredrift"
        cache = folder / f"reference-{safe_file_name(self.run_id)}.safetensors"
        self.monitor.start(model, tokenizer, reference_cache=cache, require_cache=resuming)
        if saved:
            check_same_inputs(saved, self.monitor.provenance(), self.run_id)
            self.monitor.evaluations = int(saved.get("evaluations", 0))
        if is_main_process():
            # Until the first step ends the run reads the probes at least once more (step 0).
            self.session = MonitorSession.open(
                self.config, self.run_id, self.monitor, journal_dir=folder, display_name=display_name,
                expected_s=2 * (time.perf_counter() - started),
                resumed_at_step=state.global_step if saved else None,
                first_sequence=int(saved.get("journal_sequence", 0)) if saved else 0,
            )
        # Evaluations up to the resumed step are kept; later ones belong to the trajectory that
        # was abandoned at the kill and are replaced as the resumed run reaches them. Every rank
        # must agree on this, since each evaluation is a collective.
        stored = set(saved.get("evaluated_steps", [])) if saved else set()
        self._done_steps = {s for s in broadcast_from_main(stored) if s <= state.global_step}
        self._evaluate(model, state, control)
        if self.config.audit_examples and not resuming:
            self._audit(model, kwargs.get("train_dataloader"))

    @_timed
    def on_step_end(self, args, state, control, **kwargs):
        # The last step is left to on_train_end, whose evaluation is the complete, final one.
        if state.global_step % self.eval_every == 0 and state.global_step < state.max_steps:
            self._evaluate(kwargs["model"], state, control)
        if self.session is not None:
            self.session.heartbeat(state.global_step)

    @_timed
    def on_save(self, args, state, control, **kwargs):
        if self.config.eval_on_save:
            self._evaluate(kwargs["model"], state, control)
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.session is not None and folder.is_dir():  # a save that wrote a folder: a way back
            self.session.record_checkpoint(state.global_step, folder.resolve())
        if is_main_process() and self.run_id is not None:
            write_checkpoint_state(args, state, {
                "run_id": self.run_id,
                "evaluated_steps": sorted(s for s in self._done_steps if s <= state.global_step),
                "evaluations": self.monitor.evaluations,
                # Where the journal's numbering stands: a resume without the journal file continues it.
                "journal_sequence": self.session.journal.sequence if self.session is not None else 0,
                **{k: v for k, v in self.monitor.provenance().items() if k.endswith("_fingerprint")},
            })

    @_timed
    def on_train_end(self, args, state, control, **kwargs):
        self._evaluate(kwargs["model"], state, control, final=True)
        if self.session is not None:
            if any(a.severity == "critical" for a in self.alerts):
                safe = self.session.last_safe_checkpoint()
                logger.warning("featuredrift: critical alerts fired in run %s; last checkpoint that passed every "
                               "critical alert: %s", self.run_id, safe.describe() if safe else "none")
            self.session.close(status="stopped" if self.stop_reason else "finished")

    def fail(self, error: BaseException) -> None:
        """End the run `failed` with the exception's type and message (training raised)."""
        if self.session is not None:
            self.session.fail(error_info(error))

    # -------------------------------------------------------------- helpers
    def _evaluate(self, model, state: TrainerState, control: TrainerControl, *, final: bool = False) -> None:
        step = int(state.global_step)
        if step in self._done_steps and not (final and self._incomplete(step)):
            return
        self._done_steps.add(step)
        report = self.monitor.evaluate(model, step, epoch=state.epoch, final=final)
        self.reports.append(report)
        if self.trainer is not None:
            # Trainer.log stamps the current global_step: the step this report measured.
            self.trainer.log(trainer_log_values(report))
        reason = self._publish(report, final) if self.session is not None else None
        # Stopping is decided on rank 0 but must happen on every rank at the same step.
        reason = broadcast_from_main(reason)
        if reason:
            self.stop_reason = reason
            control.should_training_stop = True

    def _incomplete(self, step: int) -> bool:
        """Whether this process evaluated `step` without the costly parts the final one must carry
        (e.g. training stopped by an alert at an evaluation that did not generate)."""
        report = next((r for r in reversed(self.reports) if r.step == step), None)
        if report is None:
            return False
        wants_refusal = self.config.refusal_score_every > 0 and report.refusal_rate is None
        wants_kl = self.config.kl_every > 0 and report.kl_mean is None
        return wants_refusal or wants_kl

    def _publish(self, report: EvaluationReport, final: bool) -> str | None:
        """Store, export, alert; the reason to stop training, if a critical alert says so."""
        fired = self.session.publish(report)
        self.alerts.extend(fired)
        if not self.config.stop_on_alert or final:
            return None
        critical = [a for a in fired if a.severity == "critical" and a.status == "firing"]
        if not critical:
            return None
        safe = self.session.last_safe_checkpoint()
        reason = "; ".join(a.describe() for a in critical) + "; last safe checkpoint: " + (
            safe.describe() if safe else "none (no saved checkpoint passed every critical alert)")
        logger.warning("featuredrift stops training at step %d: %s", report.step, reason)
        self.session.record_stop(report.step, reason)
        return reason


    def _audit(self, model, dataloader) -> None:
        """Read a sample of the train dataset with the reference (monitor/audit.py) and store it
        with the run. Never stops training: a dataset it cannot read is a warning."""
        dataset = getattr(self.trainer, "train_dataset", None) if self.trainer is not None else None
        if dataset is None:
            dataset = getattr(dataloader, "dataset", None)
        try:
            rows, size = dataset_sample(dataset, self.config.audit_examples)
            audits = self.monitor.audit(model, rows, size)
        except Exception as error:  # noqa: BLE001 - an audit must never stop training
            logger.warning("featuredrift could not audit the training data (%s: %s)", type(error).__name__, error)
            return
        if self.session is None or not audits:
            return
        self.session.record_audit(audits)
        first = audits[0]
        if first.skipped_reason and not first.examples:
            logger.warning("featuredrift could not read the training examples for the audit: %s", first.skipped_reason)
            return
        logger.info("featuredrift audited %d of %d training examples at %s: %s", len(first.examples), first.dataset_size,
                    first.hookpoint, ", ".join(f"{n} {kind}" for kind, n in first.summary.items()))


def dataset_sample(dataset, limit: int) -> tuple[list[tuple[int, dict]], int]:
    """(index, row) of at most `limit` rows spread over a map-style dataset (the first `limit`
    of an iterable one), and the dataset's size (-1 when unknown)."""
    if dataset is None:
        raise ValueError("expected the Trainer's train dataset, found none")
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        size = len(dataset)
        return [(i, dict(dataset[i])) for i in sample_indices(size, limit)], size
    rows = []
    for index, row in enumerate(dataset):
        if index >= limit:
            break
        rows.append((index, dict(row)))
    return rows, -1


def trainer_log_values(report: EvaluationReport) -> dict[str, float]:
    """The report as flat `featuredrift/<layer>/<metric>[/<labels>]` scalars for the Trainer's loggers."""
    values = {}
    for sample in report.metric_samples():
        name = sample.name.removeprefix("featuredrift_")
        if name in ("global_step", "monitoring_goal"):
            continue
        layer = sample.labels.get("layer")
        rest = "_".join(v for k, v in sorted(sample.labels.items()) if k != "layer")
        key = "/".join(part for part in ("featuredrift", layer, name, rest) if part)
        values[key] = float(sample.value)
    return values


def _default_run_name(args: TrainingArguments) -> str:
    name = getattr(args, "run_name", None)
    if name and name != args.output_dir:
        return name
    return Path(args.output_dir).resolve().name


def new_run_id(display_name: str) -> str:
    """A unique run id that starts with the (possibly repeated) display name."""
    return f"{display_name}-{uuid.uuid4().hex[:8]}"


def _checkpoint_dir(args: TrainingArguments, state: TrainerState) -> Path:
    resumed = getattr(args, "resume_from_checkpoint", None)
    if isinstance(resumed, str) and Path(resumed, "trainer_state.json").is_file():
        return Path(resumed)
    return Path(args.output_dir) / f"checkpoint-{state.global_step}"


def read_checkpoint_state(args: TrainingArguments, state: TrainerState) -> dict | None:
    """The run this checkpoint belongs to (written by `on_save`), or None."""
    path = _checkpoint_dir(args, state) / STATE_FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise MonitorError(f"{path}: expected featuredrift's checkpoint state (JSON), found an unreadable file ({error})") from error
    if not isinstance(saved, dict) or not isinstance(saved.get("run_id"), str):
        raise MonitorError(f"{path}: expected a JSON object with a 'run_id', found {str(saved)[:120]!r}")
    return saved


def write_checkpoint_state(args: TrainingArguments, state: TrainerState, data: dict) -> None:
    folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
    if not folder.is_dir():
        return  # a save that wrote no checkpoint folder (e.g. save_strategy="no" with eval_on_save)
    tmp = folder / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(folder / STATE_FILE)


def check_same_inputs(saved: dict, provenance: dict, run_id: str) -> None:
    """A resumed run must be measured with the SAE and probes it started with."""
    for key, what in (("sae_fingerprint", "SAE"), ("probe_fingerprint", "probe set")):
        if saved.get(key) and provenance.get(key) and saved[key] != provenance[key]:
            raise MonitorError(
                f"resuming run {run_id}: expected the {what} the run started with ({key} {saved[key][:12]}…), "
                f"found a different one ({provenance[key][:12]}…); start a new run to use another {what}"
            )
