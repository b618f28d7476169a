"""FeatureDriftCallback end to end: real SFT steps on the nano zoo, real SAE, real store,
real exporters. Scenarios: the demo's align and erosion runs, a LoRA run against its
adapter-disabled reference, bad SAE/hookpoint at train begin, a dead Pushgateway, DDP under
torchrun, and kill-and-resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from monitored_runs import assert_fault_adds_bounded_stall
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from typer.testing import CliRunner

from featuredrift import sae_store
from featuredrift.callbacks.feature_drift import FeatureDriftCallback
from featuredrift.cli.main import app
from featuredrift.lm.hookpoints import HookpointError
from featuredrift.monitor.config import MonitorConfig
from featuredrift.store.journal import read_journal
from featuredrift.store.run_store import RunStore
from featuredrift.zoo.demo import run_demo
from featuredrift.zoo.finetune import make_sft_trainer, read_conversations

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).parent / "scripts" / "monitored_sft.py"
# The align demo behind `align_run` trains ~30 s on a quiet machine and several times that on a
# loaded one; whichever of its tests runs first pays for it, so each gets room beyond the suite's
# 600 s default.
align_demo = pytest.mark.timeout(1800)


def _quiet_console():
    from rich.console import Console

    return Console(file=open(os.devnull, "w"), width=120)


@pytest.fixture(scope="module")
def align_run(zoo_nano, tmp_path_factory):
    out = tmp_path_factory.mktemp("align")
    result = run_demo("align", "nano", out=out, eval_every=10, metrics_port=0, run_name="align", console=_quiet_console())
    return result, out


@align_demo
def test_align_demo_evaluates_on_cadence_and_stores_every_evaluation(align_run):
    result, out = align_run
    steps = [r.step for r in result.reports]
    assert steps[0] == 0 and steps == sorted(set(steps))
    assert all(s % 10 == 0 for s in steps[:-1])
    with RunStore(result.store_url) as store:
        assert store.recorded_steps("align") == steps
        assert store.get_run("align").status == "finished"


@align_demo
def test_align_demo_refusal_features_emerge(align_run):
    result, _ = align_run
    first, last = result.reports[0], result.reports[-1]
    hookpoint = next(iter(first.layers))
    # The base model does not refuse; after chat SFT it does, and the refusal features' gap grows.
    assert first.refusal_rate["harmful"] <= 0.1
    assert last.refusal_rate["harmful"] >= 0.8
    assert last.layers[hookpoint].refusal_features.gap_current > 2 * first.layers[hookpoint].refusal_features.gap_current
    # Same inputs, different weights: activations drift away from the reference.
    assert first.layers[hookpoint].divergent_fraction == pytest.approx(0.0, abs=1e-6)
    assert last.layers[hookpoint].refusal_direction_cosine < 0.99


@align_demo
def test_align_demo_drifts_by_paper_like_amounts(align_run):
    """The zoo's base model already knows the chat format, so instruction tuning moves a minority
    of tokens past τ = 0.9 (the paper: 13–17%), ER and IR stay in the paper's ranges and KL in
    the order of a nat, instead of every token diverging as when SFT teaches a new format."""
    result, _ = align_run
    last = result.reports[-1]
    layer = last.layers[next(iter(last.layers))]
    assert 0.02 < layer.divergent_fraction < 0.5
    assert 0.3 <= layer.explained_ratio <= 0.7
    assert 0.1 <= layer.intersection_ratio_divergent <= 0.5
    assert 0.1 < last.kl_mean < 1.5


@align_demo
def test_align_demo_fires_no_critical_alert_and_says_refusal_emerged(align_run):
    """Base → chat with the shipped alerts: the base model never refused, so the goal is align."""
    result, _ = align_run
    assert {r.monitoring_goal for r in result.reports} == {"align"}
    fired = [a for a in result.alerts if a.status == "firing"]
    assert not [a for a in fired if a.severity == "critical"], [a.describe() for a in fired]
    assert "RefusalFeaturesEmerging" in {a.name for a in fired}


def test_benign_fine_tune_fires_no_critical_alert(zoo_nano, tmp_path):
    result = run_demo("benign", "nano", out=tmp_path, eval_every=20, metrics_port=0, run_name="benign",
                      console=_quiet_console(), stop_on_alert=True)
    assert {r.monitoring_goal for r in result.reports} == {"guard"}
    assert result.stop_reason is None
    assert not [a.describe() for a in result.alerts if a.status == "firing" and a.severity != "info"]
    assert not {a.name for a in result.alerts} & {"OverRefusal", "OverRefusalRising"}  # it refuses no more safe requests
    assert result.reports[-1].refusal_rate["harmful"] >= 0.9


def test_erosion_demo_refusal_features_fade(zoo_nano, tmp_path):
    result = run_demo("erosion", "nano", out=tmp_path, eval_every=10, metrics_port=0, run_name="erosion", console=_quiet_console())
    first, last = result.reports[0], result.reports[-1]
    hookpoint = next(iter(first.layers))
    assert first.refusal_rate["harmful"] >= 0.9
    assert last.refusal_rate["harmful"] < first.refusal_rate["harmful"] - 0.3
    assert last.layers[hookpoint].refusal_features.relative_gap < 0.8
    # The evidence behind the rates is stored with each generating evaluation.
    assert last.final and last.completions and {c["subset"] for c in last.completions} == {"harmful", "harmless"}
    shown = CliRunner().invoke(app, ["runs", "show", result.run_name, "--db", result.store_url,
                                     "--completions", str(last.step)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and last.completions[0]["prompt"][:30] in shown.output
    # The feature alerts warn first: the refusal-feature alerts fire no later than the behavioural one.
    feature = result.first_fired("RefusalFeaturesWeakening", "RefusalFeaturesFading")
    behaviour = result.first_fired("HarmfulRefusalRateLow")
    assert feature is not None and behaviour is not None and feature <= behaviour
    with RunStore(result.store_url) as store:
        stored = {a.name: a for a in store.alerts(result.run_name)}
    assert stored["RefusalFeaturesFading"].step == feature or stored["RefusalFeaturesWeakening"].step == feature


def _trainer(zoo, config, tmp_path, *, max_steps=6, lora=False, conversations=64):
    model = AutoModelForCausalLM.from_pretrained(zoo.base)
    tokenizer = AutoTokenizer.from_pretrained(zoo.base)
    data = read_conversations(zoo.data / "chat_sft.jsonl")[:conversations]
    callback = FeatureDriftCallback(config)
    trainer = make_sft_trainer(
        model, tokenizer, data, output_dir=tmp_path / "out", max_steps=max_steps, learning_rate=5e-3,
        batch_size=8, lora=lora, callbacks=[callback],
    )
    return trainer, callback


def _config(zoo, tmp_path, **overrides):
    settings = dict(
        sae=str(zoo.sae), probes=str(zoo.probes), max_probes=16, refusal_score_every=0, eval_every=3,
        store_url=f"sqlite:///{tmp_path}/runs.db", metrics_port=0, run_name="test",
    )
    return MonitorConfig(**{**settings, **overrides})


def test_lora_run_uses_adapter_disabled_reference(zoo_nano, tmp_path):
    trainer, callback = _trainer(zoo_nano, _config(zoo_nano, tmp_path), tmp_path, lora=True)
    trainer.train()
    first, last = callback.reports[0], callback.reports[-1]
    layer0, layer_t = next(iter(first.layers.values())), next(iter(last.layers.values()))
    # LoRA B matrices start at zero: at step 0 the adapted model *is* the reference.
    assert layer0.divergent_fraction == 0.0
    assert layer0.refusal_direction_cosine == pytest.approx(1.0, abs=1e-5)
    assert layer0.fvu["current/base"] == pytest.approx(layer0.fvu["reference/base"], rel=1e-5)
    assert layer_t.fvu["current/base"] != pytest.approx(layer_t.fvu["reference/base"], rel=1e-6)
    with RunStore(f"sqlite:///{tmp_path}/runs.db") as store:
        assert store.get_run("test").reference_policy == "auto"


def test_wrong_sae_fails_at_train_begin_and_stores_nothing(zoo_nano, tmp_path):
    from sparsify import SparseCoder, SparseCoderConfig

    wrong = tmp_path / "wrong-sae" / zoo_nano.hookpoint
    SparseCoder(7, SparseCoderConfig(num_latents=32, k=4)).save_to_disk(wrong)
    trainer, _ = _trainer(zoo_nano, _config(zoo_nano, tmp_path, sae=str(wrong.parent)), tmp_path)
    with pytest.raises(sae_store.SaeError, match="d_in") as error:
        trainer.train()
    assert "7" in str(error.value)
    assert not (tmp_path / "runs.db").exists()


def test_missing_hookpoint_fails_at_train_begin(zoo_nano, tmp_path):
    trainer, _ = _trainer(zoo_nano, _config(zoo_nano, tmp_path, hookpoints=["layers.99"]), tmp_path)
    with pytest.raises((sae_store.SaeError, HookpointError), match="layers.99"):
        trainer.train()


def test_dead_pushgateway_never_breaks_training(zoo_nano, tmp_path):
    from servers import free_port

    config = _config(zoo_nano, tmp_path, pushgateway_url=f"http://127.0.0.1:{free_port()}", export_timeout_s=0.5)
    trainer, callback = _trainer(zoo_nano, config, tmp_path)
    trainer.train()
    assert_fault_adds_bounded_stall(callback, tmp_path / "fault-free", "dead pushgateway")
    assert trainer.state.global_step == 6
    assert callback.session.exporter.failures > 0
    with RunStore(config.store_url) as store:  # stored before export: nothing lost
        assert store.recorded_steps("test") == [0, 3, 6]


def test_ddp_two_processes_shard_probes_and_push_once(zoo_nano, tmp_path, pushgateway):
    opts = {
        "zoo": str(zoo_nano.root), "eval_every": 2, "max_steps": 4, "store_url": f"sqlite:///{tmp_path}/ddp.db",
        "pushgateway_url": pushgateway.url, "run_name": "ddp", "output_dir": str(tmp_path / "out"), "keep_group": True,
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPARSIFY_DISABLE_TRITON": "1"}
    from servers import free_port

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    done = subprocess.run([*torchrun, str(SCRIPT), json.dumps(opts)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"summary-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # The probe set (16 per subset, batches of 4) is split between the ranks.
    assert ranks[0]["batches"]["harmful"] == 4
    assert ranks[0]["shard_batches"]["harmful"] == ranks[1]["shard_batches"]["harmful"] == 2
    # Every rank computed the same (gathered) report…
    assert ranks[0]["steps"] == ranks[1]["steps"] == [0, 2, 4]
    assert ranks[0]["fvu"] == ranks[1]["fvu"]
    # …but only rank 0 stored and pushed.
    assert ranks[0]["pushes"] >= 1 and ranks[1]["pushes"] is None
    assert ranks[0]["run_id"] == ranks[1]["run_id"] and ranks[0]["run_id"].startswith("ddp-")
    groups = [g for g in pushgateway.groups() if g["labels"].get("run") == ranks[0]["run_id"]]
    assert len(groups) == 1 and groups[0]["labels"]["job"] == "featuredrift"
    evaluations = groups[0]["featuredrift_evaluations_total"]["metrics"][0]["value"]
    assert float(evaluations) == 3
    with RunStore(opts["store_url"]) as store:
        assert store.recorded_steps("ddp") == [0, 2, 4]


def test_kill_and_resume_continues_the_same_run(zoo_nano, tmp_path):
    out = tmp_path / "out"
    opts = {
        "zoo": str(zoo_nano.root), "eval_every": 2, "max_steps": 400, "save_steps": 4,
        "store_url": f"sqlite:///{tmp_path}/resume.db", "run_name": "resume", "output_dir": str(out), "heartbeat_s": 0.5,
    }
    env = {**os.environ, "SPARSIFY_DISABLE_TRITON": "1"}
    process = subprocess.Popen([sys.executable, str(SCRIPT), json.dumps(opts)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (out / "checkpoint-8" / "trainer_state.json").exists():
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint-8 within 300 s"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    # The journal holds every evaluation durably, whether or not the store had caught up.
    (journal,) = (out / "featuredrift").glob("journal-resume-*.jsonl")
    before = sorted({e.data["step"] for e in read_journal(journal) if e.kind == "evaluation"})
    assert before[:5] == [0, 2, 4, 6, 8]
    assert all(e.at is not None for e in read_journal(journal))  # every event is a sign of life, with its time

    # Dead, and nothing said so: the run is still 'running' on record, and shows as stale once it
    # has been silent for several of its own heartbeat intervals.
    listed = ""
    while "stale" not in listed:
        assert time.time() < deadline, f"the killed run never showed as stale:\n{listed}"
        time.sleep(0.5)
        listed = CliRunner().invoke(app, ["runs", "list", "--db", opts["store_url"]], env={"COLUMNS": "250"}).output
    assert "running (stale: no event for" in listed and "expected every" in listed
    with RunStore(opts["store_url"]) as store:
        info = store.get_run("resume")
        assert info.status == "running" and info.stale() and info.heartbeat_interval_s < 30
    shown = CliRunner().invoke(app, ["runs", "show", "resume", "--db", opts["store_url"]], env={"COLUMNS": "250"})
    assert "Run stale" in shown.output and "most likely it died" in shown.output

    killed_at = time.time()
    opts.update(max_steps=12, resume=str(out / "checkpoint-8"))
    done = subprocess.run([sys.executable, str(SCRIPT), json.dumps(opts)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with RunStore(opts["store_url"]) as store:
        steps = store.recorded_steps("resume")
        evaluations = {e.step: e for e in store.evaluations("resume")}
        assert store.get_run("resume").status == "finished" and not store.get_run("resume").stale()
    assert steps[:7] == [0, 2, 4, 6, 8, 10, 12]
    assert len(evaluations) == len(steps)  # one evaluation per step, no duplicates
    # Steps up to the checkpoint are kept; later ones belong to the resumed trajectory.
    assert all(evaluations[s].timestamp < killed_at for s in (0, 2, 4, 6, 8))
    assert all(evaluations[s].timestamp > killed_at for s in (10, 12))
    summary = json.loads((out / "summary-rank0.json").read_text())
    assert summary["steps"] == [10, 12]
    # The step-0 reference survived the kill: reference FVUs are identical before and after.
    hookpoint = next(iter(evaluations[0].report.layers))
    assert evaluations[12].report.layers[hookpoint].fvu["reference/base"] == evaluations[0].report.layers[hookpoint].fvu["reference/base"]


def test_evaluations_reach_the_trainers_own_loggers(zoo_nano, tmp_path):
    """`attach` logs through trainer.log: TensorBoard's own reader finds the featuredrift scalars
    at the steps the evaluations measured."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = AutoModelForCausalLM.from_pretrained(zoo_nano.base)
    tokenizer = AutoTokenizer.from_pretrained(zoo_nano.base)
    data = read_conversations(zoo_nano.data / "chat_sft.jsonl")[:48]
    trainer = make_sft_trainer(model, tokenizer, data, output_dir=tmp_path / "out", max_steps=4, learning_rate=5e-3,
                               batch_size=8, report_to=["tensorboard"])
    callback = FeatureDriftCallback.attach(trainer, _config(zoo_nano, tmp_path, eval_every=2))
    trainer.train()
    assert [r.step for r in callback.reports] == [0, 2, 4]
    (events,) = {p.parent for p in (tmp_path).rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    hookpoint = callback.monitor.hookpoints[0]
    key = next(t for t in accumulator.Tags()["scalars"] if t.endswith(f"featuredrift/{hookpoint}/divergent_tokens_ratio"))
    points = accumulator.Scalars(key)
    assert [p.step for p in points] == [0, 2, 4]
    expected = [r.layers[hookpoint].divergent_fraction for r in callback.reports]
    assert [p.value for p in points] == pytest.approx(expected, abs=1e-6)


def test_ddp_with_a_batch_count_that_does_not_divide_by_the_world_size(zoo_nano, tmp_path):
    """3 probe batches per subset on 2 ranks, and generation on 5 prompts: every rank runs the
    same number of passes (the last one padded), and both end with identical reports."""
    opts = {
        "zoo": str(zoo_nano.root), "eval_every": 2, "max_steps": 2, "store_url": f"sqlite:///{tmp_path}/uneven.db",
        "run_name": "uneven", "output_dir": str(tmp_path / "out"), "max_probes": 10, "refusal_score_every": 1,
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPARSIFY_DISABLE_TRITON": "1"}
    from servers import free_port

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    done = subprocess.run([*torchrun, str(SCRIPT), json.dumps(opts)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"summary-rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["batches"]["harmful"] == 3
    assert ranks[0]["shard_batches"]["harmful"] == ranks[1]["shard_batches"]["harmful"] == 2  # one padded
    assert ranks[0]["steps"] == ranks[1]["steps"] == [0, 2]
    assert ranks[0]["fvu"] == ranks[1]["fvu"] and ranks[0]["refusal_rates"] == ranks[1]["refusal_rates"]
    assert ranks[0]["refusal_rates"][0] is not None


class _OutOfMemory(TrainerCallback):
    """Raises what a CUDA OOM raises, at one step (its message holds a URL with a secret in it)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB; see https://ops:hunter2@example.com/oom?token=abc")


def test_a_run_whose_training_raised_ends_failed_with_the_exception(zoo_nano, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(zoo_nano.base)
    tokenizer = AutoTokenizer.from_pretrained(zoo_nano.base)
    data = read_conversations(zoo_nano.data / "chat_sft.jsonl")[:48]
    trainer = make_sft_trainer(model, tokenizer, data, output_dir=tmp_path / "out", max_steps=6, learning_rate=5e-3,
                               batch_size=8, callbacks=[_OutOfMemory()])
    config = _config(zoo_nano, tmp_path, eval_every=2, audit_examples=0)
    FeatureDriftCallback.attach(trainer, config)
    with pytest.raises(RuntimeError, match="out of memory"):
        trainer.train()
    with RunStore(config.store_url) as store:
        info = store.get_run("test")
    assert info.status == "failed" and info.extra["error"]["type"] == "RuntimeError"
    message = info.extra["error"]["message"]
    assert message.startswith("CUDA out of memory") and "hunter2" not in message and "token=abc" not in message
    listed = CliRunner().invoke(app, ["runs", "list", "--db", config.store_url], env={"COLUMNS": "250"})
    assert "failed: RuntimeError: CUDA out of memory" in listed.output
    shown = CliRunner().invoke(app, ["runs", "show", "test", "--db", config.store_url], env={"COLUMNS": "250"})
    assert "Training failed. The run ended failed at step 2: RuntimeError: CUDA out of memory" in shown.output


def test_ctrl_c_ends_a_run_failed_even_without_attach(zoo_nano, tmp_path):
    """A KeyboardInterrupt escapes train() where no callback sees it; the process's exception hook
    ends the run failed before Python exits."""
    opts = {"zoo": str(zoo_nano.root), "eval_every": 2, "max_steps": 40, "interrupt_at": 3,
            "store_url": f"sqlite:///{tmp_path}/interrupted.db", "run_name": "interrupted", "output_dir": str(tmp_path / "out")}
    env = {**os.environ, "SPARSIFY_DISABLE_TRITON": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), json.dumps(opts)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "KeyboardInterrupt" in done.stderr
    with RunStore(opts["store_url"]) as store:
        info = store.get_run("interrupted")
        assert store.recorded_steps("interrupted")[:2] == [0, 2]
    assert info.status == "failed" and info.extra["error"]["type"] == "KeyboardInterrupt"
    assert info.status_text() == "failed: KeyboardInterrupt"


def test_over_refusing_fine_tune_fires_the_over_refusal_alerts(zoo_nano, tmp_path):
    """The chat model fine-tuned on data that refuses half the harmless requests: the logit score
    on harmless prompts leads, the generated refusals follow; harmful refusal holds, nothing critical."""
    result = run_demo("overrefusal", "nano", out=tmp_path, max_steps=60, eval_every=15, metrics_port=0,
                      run_name="overrefusal", console=_quiet_console())
    fired = {a.name: a for a in result.alerts if a.status == "firing"}
    assert {"OverRefusalRising", "OverRefusal"} <= set(fired), sorted(fired)
    assert fired["OverRefusalRising"].step <= fired["OverRefusal"].step
    assert fired["OverRefusal"].labels["prompts"] == "harmless" and fired["OverRefusal"].severity == "warning"
    assert not [a.name for a in fired.values() if a.severity == "critical"]
    last = result.reports[-1]
    assert last.refusal_rate["harmful"] >= 0.9 and last.refusal_rate["harmless"] > last.refusal_rate_reference["harmless"] + 0.25
    from featuredrift.reports.findings import over_refusal_finding

    with RunStore(result.store_url) as store:
        finding = over_refusal_finding(store, result.run_name)
    assert finding.tone == "alarm" and "at the reference" in finding.text


def test_a_weak_sae_is_said_once_as_its_own_property_never_as_drift(zoo_nano, tmp_path):
    """An SAE that explains little even of the reference (a random one): one info alert at the
    start, no transfer alert however often training evaluates, and the report says why ER is high."""
    from sparsify import SparseCoder, SparseCoderConfig

    from featuredrift.reports.feature_cards import build_cards
    from featuredrift.reports.findings import run_findings
    from featuredrift.zoo.config import get_zoo_config

    weak = tmp_path / "weak-sae" / zoo_nano.hookpoint
    torch.manual_seed(0)
    SparseCoder(get_zoo_config("nano").hidden_size, SparseCoderConfig(num_latents=256, k=8)).save_to_disk(weak)
    config = _config(zoo_nano, tmp_path, sae=str(weak.parent), eval_every=2, audit_examples=0)
    trainer, callback = _trainer(zoo_nano, config, tmp_path, max_steps=8)
    trainer.train()
    first = callback.reports[0].layers[zoo_nano.hookpoint]
    assert first.fvu["reference/chat"] > 0.5
    fired = [(a.name, a.step) for a in callback.alerts if a.status == "firing"]
    assert ("BaseSAEWeak", 0) in fired and [n for n, _ in fired].count("BaseSAEWeak") == 1
    assert "BaseSAETransferDegraded" not in {n for n, _ in fired}
    with RunStore(config.store_url) as store:
        findings = {f.title: f for f in run_findings(store, "test", build_cards(store, "test"))}
    weak_finding = findings[f"Weak base SAE at {zoo_nano.hookpoint}"]
    assert "a property of the SAE, not of the fine-tune" in weak_finding.text
    assert "dominated by the SAE's own error" in findings[f"Explained ratio at {zoo_nano.hookpoint}"].text


class _Findings(HTMLParser):
    """The rendered page's findings (tone, text), its goal line and the cards' badges."""

    def __init__(self) -> None:
        super().__init__()
        self.findings: list[list[str]] = []
        self.goal = ""
        self.badges: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "li" and set(classes) & {"alarm", "notice", "ok", "neutral"}:
            self.findings.append([classes[0], ""])
            self._in = "finding"
        elif attrs.get("id") == "goal":
            self._in = "goal"
        elif "badge" in classes:
            self._in = "badge"
            self.badges.append("")

    def handle_endtag(self, tag):
        if tag in ("li", "p", "span"):
            self._in = None

    def handle_data(self, data):
        if self._in == "finding":
            self.findings[-1][1] += data
        elif self._in == "goal":
            self.goal += data
        elif self._in == "badge":
            self.badges[-1] += data


def test_align_report_in_chromium_states_the_goal_and_raises_no_alarm_about_fading(align_run, tmp_path):
    """Base → chat: the base model never refused, so its refusal features being replaced is what
    the run is for. Rendered by headless Chromium, the report says the goal and why, tells the
    emergence, and shows nothing the goal expects in the alarm tone."""
    from test_report_browser import console_messages, run_chromium

    from featuredrift.reports.html import write_run_report

    result, _ = align_run
    with RunStore(result.store_url) as store:
        files = write_run_report(store, result.run_name, tmp_path / "report")
    dom = run_chromium(files.html.as_uri(), "--dump-dom", cwd=tmp_path)
    assert dom.returncode == 0 and console_messages(dom.stderr) == [], dom.stderr[-2000:]
    page = _Findings()
    page.feed(dom.stdout)
    assert page.goal.startswith("Goal: align") and "refuses 0% of harmful probes" in page.goal
    tones = {text.split(". ", 1)[0]: tone for tone, text in page.findings}
    assert page.findings[0][1].startswith("Monitoring goal: align") and page.findings[0][0] == "neutral"
    alarms = [text for tone, text in page.findings if tone == "alarm"]
    assert not [t for t in alarms if any(word in t.lower() for word in ("fading", "strength", "weaken", "replaced"))], alarms
    hookpoint = next(iter(result.reports[0].layers))
    assert tones[f"Refusal emerging at {hookpoint}"] == "ok"
    assert tones["Refusal rate"] == "ok"
    assert tones.get(f"Reference refusal features replaced at {hookpoint} (expected)", "neutral") == "neutral"
    assert f"Refusal-feature strength at {hookpoint}" not in tones and f"Refusal features fading at {hookpoint}" not in tones
    assert "Over-refusal" in tones  # the failure to watch in an align run, whatever its tone
    assert "fading" not in page.badges
    shots = Path(os.environ.get("FEATUREDRIFT_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    shot = run_chromium(files.html.as_uri(), f"--screenshot={shots / 'align-report.png'}", "--window-size=1400,3000",
                        cwd=tmp_path)
    assert shot.returncode == 0 and (shots / "align-report.png").stat().st_size > 50_000
