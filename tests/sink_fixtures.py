"""The sink/no-BOS test pair, built once per test session (imported by conftest.py): a ChatML
tokenizer that adds no BOS, the sink model of tests/sink_model.py as the base, its SAE trained
with `featuredrift sae train`, and a short refusal SFT run with FeatureDriftCallback attached,
whose fine-tuned model is saved beside the base for `replicate`."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["sink_pair"]  # build_sink_pair and the constants are imported by name

HOOKPOINT = "layers.2"
PROBES = Path(__file__).parents[1] / "featuredrift" / "monitor" / "data" / "probes"
REFUSAL = "I'm sorry, I can't help with that."


@dataclass
class SinkPair:
    root: Path
    base: Path  # model + tokenizer folders
    chat: Path
    sae: Path  # sparsify layout: sae/layers.2/
    sae_training: dict  # sae/training.json
    texts: Path  # the SAE's training text (one per line)
    store_url: str
    reports: list = field(default_factory=list)  # the callback's EvaluationReports, step 0 first
    provenance: dict = field(default_factory=dict)
    hookpoint: str = HOOKPOINT


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (PROBES / f"{name}.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]


def corpus() -> list[str]:
    """The shipped probe set's words: the tokenizer's and the SAE's training text."""
    texts = [r["text"] for r in _rows("base_text")]
    texts += [r["instruction"] for name in ("harmful", "harmless") for r in _rows(name)]
    texts += [m["content"] for r in _rows("chat_text") for m in r["messages"]]
    return texts


def sft_conversations(seed: int = 0) -> list[dict]:
    """Refusals for the train-split harmful prompts, the probe chats' answers for harmless ones."""
    answers = [m["content"] for r in _rows("chat_text") for m in r["messages"] if m["role"] == "assistant"]
    rows = [{"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": REFUSAL}]}
            for r in _rows("harmful") if r.get("split") == "train"]
    rows += [{"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": answers[i % len(answers)]}]}
             for i, r in enumerate(r for r in _rows("harmless") if r.get("split") == "train")]
    random.Random(seed).shuffle(rows)
    return rows


def monitor_settings(pair_root: Path, sae: Path) -> dict:
    return dict(sae=str(sae), hookpoints=[HOOKPOINT], probes="default", refusal_score_every=0, kl_every=1,
                store_url=f"sqlite:///{pair_root}/runs.db", metrics_port=-1, run_name="sink-sft")


def build_sink_pair(root: Path) -> SinkPair:
    """Build the pair in `root`: tokenizer, sink base model, SAE (`featuredrift sae train`), SFT
    with the callback attached, the fine-tuned model saved."""
    from chat_tokenizers import build_tokenizer
    from sink_model import build_sink_model, sink_config
    from transformers import AutoTokenizer
    from typer.testing import CliRunner

    from featuredrift.callbacks.feature_drift import FeatureDriftCallback
    from featuredrift.cli.main import app
    from featuredrift.monitor.config import MonitorConfig
    from featuredrift.zoo.finetune import make_sft_trainer

    texts = corpus()
    # Saved beside a Qwen2 config and read back first: beside a model, transformers loads it as a
    # Qwen2 tokenizer (its own pre-tokenizer, an added <|endoftext|>), as every later reader
    # (replicate, watch) will, so the live run must tokenize with that one too.
    build_tokenizer("qwen2.5-chatml", texts * 2, vocab_size=2000).save_pretrained(root / "base")
    sink_config(vocab_size=1).save_pretrained(root / "base")
    tokenizer = AutoTokenizer.from_pretrained(root / "base")
    base = build_sink_model(tokenizer)
    base.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")

    lines = root / "sae_text.txt"
    rng = random.Random(0)
    lines.write_text("\n".join(rng.sample(texts, len(texts)) * 4), encoding="utf-8")
    result = CliRunner().invoke(app, [
        "sae", "train", "--model", str(root / "base"), "--data", str(lines), "--hookpoint", HOOKPOINT,
        "--out", str(root / "sae"), "--num-latents", "256", "--k", "8", "--ctx-len", "32", "--batch-size", "8",
        "--lr", "0.004", "--device", "cpu",
    ])
    if result.exit_code != 0:
        raise RuntimeError(f"featuredrift sae train failed: {result.output}")

    settings = monitor_settings(root, root / "sae")
    callback = FeatureDriftCallback(MonitorConfig(**settings, eval_every=10))
    trainer = make_sft_trainer(base, tokenizer, sft_conversations(), output_dir=root / "sft", max_steps=20,
                               learning_rate=3e-4, batch_size=8, callbacks=[callback])
    trainer.train()
    trainer.model.save_pretrained(root / "chat")
    tokenizer.save_pretrained(root / "chat")
    return SinkPair(
        root=root, base=root / "base", chat=root / "chat", sae=root / "sae",
        sae_training=json.loads((root / "sae" / "training.json").read_text()), texts=lines,
        store_url=settings["store_url"], reports=list(callback.reports), provenance=callback.monitor.provenance(),
    )


def replicate_config(pair: SinkPair):
    """`replicate` on the pair's saved base/fine-tuned models, its SAE and the probe texts the
    live monitor read (all of them)."""
    from featuredrift.replicate.config import load_config

    probes = {name: str(PROBES / f"{name}.jsonl") for name in ("base_text", "chat_text", "harmful", "harmless")}
    return load_config({
        "name": "sink-pair", "base_model": str(pair.base), "chat_model": str(pair.chat),
        "hookpoints": [pair.hookpoint], "device": "cpu", "batch_size": 16,
        "data": {
            "base_text_train": probes["base_text"], "base_text_eval": probes["base_text"],
            "chat_text_train": probes["chat_text"], "chat_text_eval": probes["chat_text"],
            "harmful": probes["harmful"], "harmless": probes["harmless"],
            "harmful_eval": probes["harmful"], "harmless_eval": probes["harmless"],
            "max_length": 128, "max_eval_texts": 1000,
        },
        "sae": {"base": str(pair.sae), "train_missing": False, "chat": False},
    })


def live_and_replicated(pair: SinkPair, results: dict) -> dict[str, tuple[float, float]]:
    """name → (the callback's value, replicate's) for every number both compute on the sink pair."""
    return paired_numbers(pair.reports[0], pair.reports[-1], pair.hookpoint, results)


def paired_numbers(first_report, last_report, hookpoint: str, results: dict) -> dict[str, tuple[float, float]]:
    """name → (the live monitor's value, replicate's): FVU of the four transfer settings (the first
    evaluation for the base model, the last for the fine-tuned one), σ, divergent fraction and IR
    on base text."""
    transfer = results["stages"]["transfer"]["hookpoints"][hookpoint]["base_sae"]
    drift = results["stages"]["drift"]["hookpoints"][hookpoint]["base"]
    first, last = (report.layers[hookpoint] for report in (first_report, last_report))
    return {
        "B-LLM+B-Data FVU": (first.fvu["reference/base"], transfer["B-LLM+B-Data"]),
        "B-LLM+C-Data FVU": (first.fvu["reference/chat"], transfer["B-LLM+C-Data"]),
        "C-LLM+B-Data FVU": (last.fvu["current/base"], transfer["C-LLM+B-Data"]),
        "C-LLM+C-Data FVU": (last.fvu["current/chat"], transfer["C-LLM+C-Data"]),
        "sigma base": (last.scale_reference, drift["scale_base"]),
        "sigma fine-tuned": (last.scale_current, drift["scale_chat"]),
        "divergent fraction": (last.divergent_fraction, drift["divergent_fraction"]),
        "IR (all)": (last.intersection_ratio_all, drift["intersection_ratio_all"]),
    }


@pytest.fixture(scope="session")
def sink_pair(tmp_path_factory) -> SinkPair:
    return build_sink_pair(tmp_path_factory.mktemp("sink-pair"))
