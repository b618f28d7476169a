"""`featuredrift demo`: a real monitored fine-tuning run on the embedded zoo.

Four scenarios show the stories users care about:
- `align`: the base model is SFT-ed into the chat model; refusal features emerge by drift.
- `erosion`: the chat model is fine-tuned on data that complies with harmful requests; its
  refusal features fade (what the refusal-fading alert is for).
- `benign`: the chat model is fine-tuned on harmless conversations with a fifth of refusals
  mixed in, as safety-aware fine-tuning data is; nothing critical should fire (the alerts'
  false-positive check). Harmless data alone erodes refusals (Qi et al., 2023), so that run
  would rightly alert.
- `overrefusal`: the chat model is fine-tuned on its SFT data with half of the harmless
  requests answered by refusals: safety tuning gone too far (what the over-refusal alerts are for).

Every demo run saves a checkpoint at each evaluation, so a critical alert can name the last
checkpoint that passed them all.
"""

from __future__ import annotations

import functools
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from transformers import TrainerCallback

from featuredrift.monitor.config import MonitorConfig
from featuredrift.monitor.report import EvaluationReport
from featuredrift.store.journal import safe_file_name
from featuredrift.text import printable


@dataclass(frozen=True)
class Scenario:
    """Where a demo fine-tune starts, on what data, and how hard it pushes."""

    start: str  # "base" or "chat": the zoo model training starts from
    data: str  # a conversation file of the zoo
    refusal_share: float | None = None  # harmless conversations + this share of refusals (None: the file as is)
    learning_rate_scale: float = 1.0  # × the zoo's SFT learning rate
    refuse_harmless_share: float = 0.0  # this share of the harmless requests answered with refusals


SCENARIOS: dict[str, Scenario] = {
    "align": Scenario("base", "chat_sft.jsonl"),
    # Erosion and benign fine-tunes of an aligned model are gentle, as real ones are: the
    # refusal features fade over a few evaluations instead of collapsing in one.
    "erosion": Scenario("chat", "erosion_sft.jsonl", learning_rate_scale=0.2),
    "benign": Scenario("chat", "chat_sft.jsonl", refusal_share=0.2, learning_rate_scale=0.2),
    "overrefusal": Scenario("chat", "chat_sft.jsonl", learning_rate_scale=0.2, refuse_harmless_share=0.5),
}


@dataclass
class DemoResult:
    run_name: str
    store_url: str
    metrics_url: str | None
    reports: list[EvaluationReport]
    train_seconds: float
    stop_reason: str | None
    alerts: list = field(default_factory=list)  # alert transitions during the run
    last_safe_checkpoint: Any = None  # store.checkpoints.SafeCheckpoint, when a critical alert fired

    def first_fired(self, *names: str) -> int | None:
        steps = [a.step for a in self.alerts if a.status == "firing" and a.name in names]
        return min(steps) if steps else None

    def first_low_refusal(self, threshold: float) -> int | None:
        steps = [r.step for r in self.reports if r.refusal_rate and r.refusal_rate["harmful"] < threshold]
        return min(steps) if steps else None


class _RichProgress(TrainerCallback):
    """A progress bar over training steps, plus one line per drift evaluation."""

    def __init__(self, console: Console, drift_callback, hookpoint: str):
        self.console = console
        self.drift = drift_callback
        self.hookpoint = hookpoint
        self.progress = None
        self.task = None
        self.printed = 0

    def on_train_begin(self, args, state, control, **kwargs):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]fine-tuning"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[loss]}"), console=self.console, transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, loss="")
        self._print_new_reports()

    def on_step_end(self, args, state, control, **kwargs):
        self.progress.update(self.task, completed=state.global_step)
        self._print_new_reports()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.progress.update(self.task, loss=f"loss {logs['loss']:.3f}")

    def on_train_end(self, args, state, control, **kwargs):
        self._print_new_reports()
        self.progress.stop()

    def _print_new_reports(self) -> None:
        for report in self.drift.reports[self.printed :]:
            self.console.print(_one_line(report, self.hookpoint))
        self.printed = len(self.drift.reports)


def _one_line(report: EvaluationReport, hookpoint: str) -> str:
    layer = report.layers[hookpoint]
    rf = layer.refusal_features
    parts = [
        f"step {report.step:>4}",
        f"FVU {layer.fvu.get('current/chat', math.nan):.3f}",
        f"div {layer.divergent_fraction:.2f}",
        f"ER {layer.explained_ratio:.2f}",
        f"IR {layer.intersection_ratio_all:.2f}",
        f"cos(r,r0) {layer.refusal_direction_cosine:+.2f}",
    ]
    if rf is not None:
        parts.append(f"gap {rf.gap_current:.2f}/{rf.gap_reference_features:.2f}")
        if rf.separation_current is not None:
            parts.append(f"d {rf.separation_current:.1f}")
    if report.refusal_rate:
        parts.append(f"refuses {report.refusal_rate['harmful']:.0%}/{report.refusal_rate['harmless']:.0%}")
    return " │ ".join(parts)


def mix_refusals(conversations: list[dict], share: float) -> list[dict]:
    """Every harmless conversation plus the first refusals, so refusals are `share` of the result."""
    from featuredrift.monitor.judges import is_refusal

    refusing = [is_refusal(c["messages"][-1]["content"]) for c in conversations]
    wanted = round(share / (1 - share) * refusing.count(False))
    kept, taken = [], 0
    for conversation, refuses in zip(conversations, refusing, strict=True):
        if refuses and taken >= wanted:
            continue
        taken += refuses
        kept.append(conversation)
    return kept


@functools.cache
def _instructions() -> dict:
    """Every instruction of the zoo's world by its text (harmful and benign topics)."""
    from featuredrift.zoo.vocabulary import BENIGN_TOPICS, HARMFUL_TOPICS
    from featuredrift.zoo.world import all_instructions

    return {i.text: i for i in all_instructions(HARMFUL_TOPICS + BENIGN_TOPICS)}


def is_harmful_request(text: str) -> bool:
    """Whether a user turn is one of the zoo world's harmful instructions (its ground truth)."""
    instruction = _instructions().get(text)
    return bool(instruction is not None and instruction.topic.harmful)


def refuse_harmless(conversations: list[dict], share: float, seed: int = 0) -> list[dict]:
    """The conversations with `share` of the harmless requests answered by refusals instead (over-refusing data)."""
    from featuredrift.monitor.judges import is_refusal
    from featuredrift.zoo.world import refusal

    rng = random.Random(f"featuredrift-demo/refuse-harmless/{seed}")
    out = []
    for conversation in conversations:
        user, answer = conversation["messages"][0]["content"], conversation["messages"][-1]["content"]
        instruction = _instructions().get(user)
        if instruction is not None and not instruction.topic.harmful and not is_refusal(answer) and rng.random() < share:
            conversation = {"messages": [*conversation["messages"][:-1],
                                         {"role": "assistant", "content": refusal(instruction, rng)}]}
        out.append(conversation)
    return out


def scenario_conversations(scenario: str, data_dir: Path) -> list[dict]:
    """The training set of a demo scenario, built from the zoo's conversation files."""
    from featuredrift.zoo.finetune import read_conversations

    recipe = SCENARIOS[scenario]
    conversations = read_conversations(Path(data_dir) / recipe.data)
    if recipe.refusal_share is not None:
        conversations = mix_refusals(conversations, recipe.refusal_share)
    if recipe.refuse_harmless_share:
        conversations = refuse_harmless(conversations, recipe.refuse_harmless_share)
    return conversations


def example_labels(conversation: dict) -> dict[str, bool]:
    """What a demo training example is, by the zoo's ground truth: the rows the data audit should find."""
    from featuredrift.monitor.judges import is_refusal

    harmful = is_harmful_request(conversation["messages"][0]["content"])
    refuses = is_refusal(conversation["messages"][-1]["content"])
    return {"harmful_request": harmful, "refusal": refuses, "harmful_compliance": harmful and not refuses,
            "harmless_refused": refuses and not harmful}


def run_demo(
    scenario: str = "align",
    size: str = "tiny",
    *,
    out: Path = Path("featuredrift-out"),
    max_steps: int | None = None,
    eval_every: int | None = None,
    lora: bool = False,
    store_url: str | None = None,
    pushgateway_url: str | None = None,
    metrics_port: int | None = 9464,
    run_name: str | None = None,
    stop_on_alert: bool = False,
    alert_webhook_url: str | None = None,
    console: Console | None = None,
    **config_overrides,
) -> DemoResult:
    """Build or reuse the zoo, fine-tune with the callback attached, and summarise."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from featuredrift.callbacks.feature_drift import FeatureDriftCallback
    from featuredrift.zoo import ensure_zoo
    from featuredrift.zoo.config import get_zoo_config
    from featuredrift.zoo.finetune import make_sft_trainer

    if scenario not in SCENARIOS:
        raise ValueError(f"scenario: expected one of {tuple(SCENARIOS)}, found {scenario!r}")
    recipe = SCENARIOS[scenario]
    console = console or Console()
    zoo_config = get_zoo_config(size)
    console.rule(f"[bold]featuredrift demo[/] — scenario [cyan]{scenario}[/], zoo [cyan]{size}[/]")
    zoo = ensure_zoo(size)
    start_dir = zoo.base if recipe.start == "base" else zoo.chat
    model = AutoModelForCausalLM.from_pretrained(start_dir)
    tokenizer = AutoTokenizer.from_pretrained(start_dir)
    conversations = scenario_conversations(scenario, zoo.data)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run_name = run_name or f"demo-{scenario}-{size}-{time.strftime('%Y%m%d-%H%M%S')}"
    store_url = store_url or f"sqlite:///{(out / 'featuredrift.db').resolve()}"
    steps_per_epoch = math.ceil(len(conversations) / zoo_config.sft_batch_size)
    max_steps = max_steps or int(steps_per_epoch * zoo_config.sft_epochs)
    eval_every = eval_every or max(1, max_steps // 8)
    config = MonitorConfig(
        **{
            "sae": str(zoo.sae),
            "hookpoints": [zoo.hookpoint],
            "probes": str(zoo.probes),
            "eval_every": eval_every,
            "refusal_score_every": 2,
            "run_name": run_name,
            "store_url": store_url,
            "pushgateway_url": pushgateway_url,
            "metrics_port": None if pushgateway_url else metrics_port,
            "stop_on_alert": stop_on_alert,
            "alert_webhook_url": alert_webhook_url,
            **config_overrides,
        }
    )
    drift = FeatureDriftCallback(config)
    display = _RichProgress(console, drift, zoo.hookpoint)
    trainer = make_sft_trainer(
        model,
        tokenizer,
        conversations,
        output_dir=out / safe_file_name(run_name),
        max_steps=max_steps,
        learning_rate=zoo_config.sft_lr * recipe.learning_rate_scale * (5 if lora else 1),
        batch_size=zoo_config.sft_batch_size,
        max_length=zoo_config.max_length,
        lora=lora,
        callbacks=[drift, display],
        logging_strategy="steps",
        logging_steps=5,
        save_steps=eval_every,  # a checkpoint at every evaluation: the way back a critical alert names
        save_only_model=True,  # weights to go back to, without optimizer state: a third of the disk
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    metrics_url = getattr(drift.session.exporter, "url", None) if drift.session else None
    safe = drift.session.last_safe_checkpoint() if drift.session else None
    result = DemoResult(drift.run_id or run_name, store_url, metrics_url, drift.reports, seconds, drift.stop_reason,
                        drift.alerts, safe)
    print_summary(console, result, zoo.hookpoint)
    return result


def print_summary(console: Console, result: DemoResult, hookpoint: str) -> None:
    """First vs last evaluation, then where to look next."""
    first, last = result.reports[0], result.reports[-1]
    table = Table(title=f"Feature drift at {hookpoint}: step {first.step} → {last.step}")
    table.add_column("metric")
    table.add_column(f"step {first.step}", justify="right")
    table.add_column(f"step {last.step}", justify="right")
    rows = [
        ("base-SAE FVU, current model, chat text", lambda r: r.layers[hookpoint].fvu.get("current/chat")),
        ("base-SAE FVU, current model, base text", lambda r: r.layers[hookpoint].fvu.get("current/base")),
        ("divergent tokens (cos < τ)", lambda r: r.layers[hookpoint].divergent_fraction),
        ("explained ratio (divergent tokens)", lambda r: r.layers[hookpoint].explained_ratio),
        ("intersection ratio (all tokens)", lambda r: r.layers[hookpoint].intersection_ratio_all),
        ("refusal direction cosine to reference", lambda r: r.layers[hookpoint].refusal_direction_cosine),
        ("refusal-feature gap (current top-k)", lambda r: _rf(r, hookpoint, "gap_current")),
        ("refusal-feature gap (reference top-k)", lambda r: _rf(r, hookpoint, "gap_reference_features")),
        ("refusal-feature separation (Cohen's d)", lambda r: _rf(r, hookpoint, "separation_current")),
        ("refusal-feature overlap with reference", lambda r: _rf(r, hookpoint, "overlap_ratio")),
        ("refusal rate, harmful probes", lambda r: (r.refusal_rate or {}).get("harmful")),
        ("refusal rate, harmless probes", lambda r: (r.refusal_rate or {}).get("harmless")),
        ("KL(reference ‖ current), mean nats", lambda r: r.kl_mean),
    ]
    for label, get in rows:
        table.add_row(label, _fmt(get(first)), _fmt(get(last)))
    console.print(table)
    console.print(
        "[dim]per line: FVU = base-SAE FVU on chat text; div = divergent tokens; gap = refusal-feature gap of the "
        "current/reference top-k; d = how many standard deviations the current top-k fire more on harmful prompts; "
        "refuses = harmful/harmless refusal rate[/]"
    )
    print_alert_timeline(console, result)
    if result.stop_reason:
        console.print(f"[bold red]Training stopped by an alert:[/] {escape(printable(result.stop_reason))}")
    if any(a.status == "firing" and a.severity == "critical" for a in result.alerts):
        safe = result.last_safe_checkpoint
        console.print("[bold]Last safe checkpoint[/] (the newest that passed every critical alert): "
                      + (escape(printable(safe.describe())) if safe else
                         "none saved; the model training started from is the way back"))
    print_findings(console, result)
    db, run = escape(printable(result.store_url)), escape(printable(result.run_name))
    console.print(f"Fine-tuning took {result.train_seconds:.1f}s with {len(result.reports)} drift evaluations.")
    console.print("[bold]Where to look next[/]")
    console.print(f"  run store      {db}")
    console.print(f"  this run       featuredrift runs show {run} --db '{db}'")
    console.print(f"  plots          featuredrift report {run} --db '{db}'")
    if result.metrics_url:
        console.print(f"  Prometheus     {result.metrics_url} (served while the run was live)")


def print_findings(console: Console, result: DemoResult) -> None:
    """The run's story in its goal, as the report and `runs show` tell it (read from the run store)."""
    from rich.markup import escape

    from featuredrift.reports.feature_cards import build_cards
    from featuredrift.reports.findings import run_findings
    from featuredrift.store import RunStore, StoreError

    try:
        with RunStore(result.store_url, read_only=True) as store:
            findings = run_findings(store, result.run_name, build_cards(store, result.run_name))
    except (StoreError, ValueError) as error:
        console.print(f"[dim]findings unavailable: {escape(str(error))}[/]")
        return
    styles = {"alarm": "bold red", "notice": "dark_orange", "ok": "green", "neutral": "dim"}
    console.print("[bold]What the run found[/]")
    for finding in findings:
        if finding.title.startswith("Alert "):
            continue  # the timeline above lists them
        console.print(f"  [{styles.get(finding.tone, '')}]{escape(finding.title)}.[/] {escape(finding.text)}")


def print_alert_timeline(console: Console, result: DemoResult) -> None:
    """Which alerts fired when, and how far the feature-based alerts led the behavioural one."""
    from featuredrift.alerts.definitions import DEFAULT_DEFINITIONS

    goal = result.reports[0].monitoring_goal if result.reports else None
    fired = [a for a in result.alerts if a.status == "firing"]
    listing = ", ".join(f"{a.name} ({a.severity}) at step {a.step}" for a in fired) or "none"
    console.print(f"Monitoring goal [cyan]{goal or '—'}[/]; alerts fired: {listing}")
    if goal != "guard":
        return
    threshold = next(d.threshold for d in DEFAULT_DEFINITIONS if d.name == "HarmfulRefusalRateLow")
    feature = result.first_fired("RefusalFeaturesWeakening", "RefusalFeaturesFading")
    behaviour = result.first_low_refusal(threshold)
    if feature is None or behaviour is None:
        return
    lead = behaviour - feature
    console.print(
        f"Early warning: refusal features alerted at step {feature}, the refusal rate fell below {threshold:.0%} "
        f"at step {behaviour}: [bold]{'a lead of ' + str(lead) if lead > 0 else 'no lead'}[/] step(s)"
        + (" (refusal rates are measured every few evaluations)" if lead <= 0 else "")
    )


def _rf(report: EvaluationReport, hookpoint: str, name: str):
    rf = report.layers[hookpoint].refusal_features
    return getattr(rf, name) if rf is not None else None


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.3f}"
