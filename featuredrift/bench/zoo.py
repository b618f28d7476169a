"""`featuredrift bench`: the performance targets, measured side by side on the zoo.

Printed as ratios, never asserted by tests (timings on shared CI machines are noise):
- training-time overhead of the callback at the default cadence (target ≤ 3%),
- one evaluation's time over the bare probe forward pass (target ≤ 1.3×),
- SAE encode time over a dense matmul of the same shape,
- peak memory with vs without the callback.
Training runs happen in fresh subprocesses so that peak memory and warm caches do not leak
from one measurement into the other.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch


@dataclass
class TrainingRun:
    seconds: float
    peak_rss_mb: float
    peak_cuda_mb: float
    evaluations: int
    callback_seconds: float  # time spent inside the callback (0 without it)


def _train_once(size: str, steps: int, with_callback: bool, eval_every: int) -> TrainingRun:
    """One SFT run of the zoo base model, optionally monitored (executed in a subprocess)."""
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from featuredrift.callbacks.feature_drift import FeatureDriftCallback
    from featuredrift.monitor.config import MonitorConfig
    from featuredrift.zoo import ensure_zoo
    from featuredrift.zoo.config import get_zoo_config
    from featuredrift.zoo.finetune import make_sft_trainer, read_conversations

    zoo = ensure_zoo(size, progress=False)
    zoo_config = get_zoo_config(size)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(zoo.base)
    tokenizer = AutoTokenizer.from_pretrained(zoo.base)
    conversations = read_conversations(zoo.data / "chat_sft.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        callbacks = []
        if with_callback:
            config = MonitorConfig(
                sae=str(zoo.sae), probes=str(zoo.probes), eval_every=eval_every,
                store_url=f"sqlite:///{tmp}/bench.db", metrics_port=0, run_name="bench",
            )
            callbacks.append(FeatureDriftCallback(config))
        trainer = make_sft_trainer(
            model, tokenizer, conversations, output_dir=tmp, max_steps=steps,
            learning_rate=zoo_config.sft_lr, batch_size=zoo_config.sft_batch_size,
            max_length=zoo_config.max_length, callbacks=callbacks,
        )
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    peak_cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    evaluations = len(callbacks[0].reports) if callbacks else 0
    callback_seconds = callbacks[0].seconds if callbacks else 0.0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return TrainingRun(seconds, rss, peak_cuda, evaluations, callback_seconds)


def _train_in_subprocess(size: str, steps: int, with_callback: bool, eval_every: int) -> TrainingRun:
    args = [sys.executable, "-m", "featuredrift.bench.zoo", size, str(steps), str(int(with_callback)), str(eval_every)]
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"benchmark training run failed:\n{done.stderr[-4000:]}")
    return TrainingRun(**json.loads(done.stdout.strip().splitlines()[-1]))


def _best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def measure_evaluation(size: str, repeats: int = 3) -> dict[str, float]:
    """One evaluation (no generation) vs the bare probe forward over the same batches."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from featuredrift.monitor.config import MonitorConfig
    from featuredrift.monitor.drift_monitor import DriftMonitor
    from featuredrift.zoo import ensure_zoo

    zoo = ensure_zoo(size, progress=False)
    model = AutoModelForCausalLM.from_pretrained(zoo.chat).eval()
    tokenizer = AutoTokenizer.from_pretrained(zoo.chat)
    monitor = DriftMonitor(MonitorConfig(sae=str(zoo.sae), probes=str(zoo.probes), refusal_score_every=0))
    monitor.start(model, tokenizer)
    batches = [b for subset in monitor.probe_batches.values() for b in subset]

    def bare_forward():
        with torch.inference_mode():
            for batch in batches:
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)

    monitor.evaluate(model, 0)  # warm-up
    bare = _best_of(bare_forward, repeats)
    reports = []
    evaluation = _best_of(lambda: reports.append(monitor.evaluate(model, 1)), repeats)
    # The metric pass alone: every metric after the forward (encode, FVU, ER, IR, feature drift,
    # refusal direction and features, NNLS, KL), from the evaluation's own timings.
    metric_pass = min(r.timings["metrics"] + r.timings.get("kl", 0.0) for r in reports)
    return {
        "bare_forward_s": bare,
        "evaluation_s": evaluation,
        "evaluation_over_forward": evaluation / bare,
        "metric_pass_s": metric_pass,
        "metric_pass_over_forward": metric_pass / bare,
    }


def measure_sae_encode(size: str, tokens: int = 8192, repeats: int = 5) -> dict[str, float]:
    """sparsify's TopK encode vs a dense matmul of the same [tokens, d] × [d, latents] shape."""
    from featuredrift import sae_store
    from featuredrift.zoo import ensure_zoo

    zoo = ensure_zoo(size, progress=False)
    sae = sae_store.load_sae(str(zoo.sae), hookpoint=zoo.hookpoint)
    x = torch.randn(tokens, sae.d_in, dtype=sae.dtype)
    weight = sae.encoder.weight.detach().clone()
    with torch.inference_mode():
        encode = _best_of(lambda: sae.encode(x), repeats)
        matmul = _best_of(lambda: x @ weight.T, repeats)
    return {"sae_encode_s": encode, "dense_matmul_s": matmul, "encode_over_matmul": encode / matmul}


def run_benchmark(
    size: str = "tiny", steps: int = 200, eval_every: int = 50, repeats: int = 2, progress=lambda message: None
) -> dict[str, dict]:
    """Alternate runs without and with the callback and keep each one's fastest, so a busy
    machine inflates neither side; the time spent inside the callback is the steadier measure.
    `progress(message)` is told what runs next."""
    runs = []
    for attempt in range(1, repeats + 1):
        progress(f"training {steps} steps without the callback ({attempt}/{repeats})")
        bare_run = _train_in_subprocess(size, steps, False, eval_every)
        progress(f"training {steps} steps with the callback ({attempt}/{repeats})")
        runs.append((bare_run, _train_in_subprocess(size, steps, True, eval_every)))
    bare = min((r[0] for r in runs), key=lambda r: r.seconds)
    monitored = min((r[1] for r in runs), key=lambda r: r.seconds)
    training = {
        "steps": steps,
        "eval_every": eval_every,
        "evaluations": monitored.evaluations,
        "without_callback_s": bare.seconds,
        "with_callback_s": monitored.seconds,
        "overhead_ratio": monitored.seconds / bare.seconds - 1.0,
        "callback_s": monitored.callback_seconds,
        "callback_share": monitored.callback_seconds / bare.seconds,
        "peak_rss_without_mb": bare.peak_rss_mb,
        "peak_rss_with_mb": monitored.peak_rss_mb,
        "peak_rss_ratio": monitored.peak_rss_mb / bare.peak_rss_mb,
    }
    if torch.cuda.is_available():
        training["peak_cuda_ratio"] = monitored.peak_cuda_mb / max(bare.peak_cuda_mb, 1e-9)
    progress("one evaluation against the bare probe forward")
    evaluation = measure_evaluation(size)
    progress("SAE encode against a dense matmul")
    return {"training": training, "evaluation": evaluation, "sae_encode": measure_sae_encode(size)}


# Performance targets: (results section, key, bound); a measurement meets its target when ≤ bound.
TARGETS = {
    "overhead_ratio": ("training", 0.03),
    "callback_share": ("training", 0.03),
    "evaluation_over_forward": ("evaluation", 1.3),
}


def target_verdicts(results: dict[str, dict]) -> dict[str, bool]:
    """For each target, whether the measurement meets it."""
    return {key: results[section][key] <= bound for key, (section, bound) in TARGETS.items()}


def print_benchmark(results: dict[str, dict], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t, e, s = results["training"], results["evaluation"], results["sae_encode"]
    verdicts = target_verdicts(results)

    def verdict(key: str, target: str) -> str:
        return f"{target}  [green]met[/]" if verdicts[key] else f"{target}  [red]missed[/]"

    table = Table(title="featuredrift bench")
    table.add_column("measurement")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_row(
        f"training overhead ({t['steps']} steps, eval every {t['eval_every']}, {t['evaluations']} evaluations)",
        f"{t['overhead_ratio']:+.1%}  ({t['with_callback_s']:.1f}s vs {t['without_callback_s']:.1f}s)",
        verdict("overhead_ratio", "≤ +3%"),
    )
    table.add_row(
        "time inside the callback / training without it",
        f"{t['callback_share']:.1%}  ({t['callback_s']:.2f}s)", verdict("callback_share", "≤ 3%"),
    )
    table.add_row(
        "evaluation / bare probe forward",
        f"{e['evaluation_over_forward']:.2f}×  ({e['evaluation_s'] * 1e3:.0f} ms vs {e['bare_forward_s'] * 1e3:.0f} ms)",
        verdict("evaluation_over_forward", "≤ 1.3×"),
    )
    table.add_row(
        "metric pass alone / bare probe forward",
        f"{e['metric_pass_over_forward']:.2f}×  ({e['metric_pass_s'] * 1e3:.0f} ms)", "—",
    )
    table.add_row(
        "SAE encode / dense matmul of the same shape",
        f"{s['encode_over_matmul']:.2f}×  ({s['sae_encode_s'] * 1e3:.1f} ms vs {s['dense_matmul_s'] * 1e3:.1f} ms)", "—",
    )
    table.add_row("peak memory with / without callback", f"{t['peak_rss_ratio']:.2f}×  ({t['peak_rss_with_mb']:.0f} MB vs {t['peak_rss_without_mb']:.0f} MB)", "—")
    console.print(table)


if __name__ == "__main__":  # subprocess entry point of `_train_in_subprocess`
    size, steps, with_callback, eval_every = sys.argv[1], int(sys.argv[2]), bool(int(sys.argv[3])), int(sys.argv[4])
    print(json.dumps(asdict(_train_once(size, steps, with_callback, eval_every))))
