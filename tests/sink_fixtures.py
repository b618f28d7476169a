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

__all__ = ["sink_pair"]

HOOKPOINT = "layers.2"
PROBES = Path(__file__).parents[1] / "monitor" / "data" / "probes"
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


@pytest.fixture(scope="session")
def sink_pair(tmp_path_factory) -> SinkPair:
    """Build the pair: tokenizer, sink base model, SAE (`featuredrift sae train`), SFT with the callback."""
    from chat_tokenizers import build_tokenizer
    from sink_model import build_sink_model, sink_config
    from transformers import AutoTokenizer
    from typer.testing import CliRunner

    from featuredrift.callbacks.feature_drift import FeatureDriftCallback
    from featuredrift.monitor.cli import app
    from featuredrift.monitor.config import MonitorConfig
    from featuredrift.monitor.finetune import make_sft_trainer

    root = tmp_path_factory.mktemp("sink-pair")
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
    assert result.exit_code == 0, result.output

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
