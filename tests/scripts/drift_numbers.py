"""Print a model pair's drift numbers, as the issue's closing note states them: FVU, σ, divergent
fraction at τ = 0.9, ER and IR for the base model and the fine-tuned one, with the sink excluded
(ours) and read (Appx. A.2's literal mask, no norm-outlier rule), and the largest difference
between the live monitor's numbers and `replicate`'s on the same pair.

    SPARSIFY_DISABLE_TRITON=1 .venv/bin/python tests/scripts/drift_numbers.py sink [OUT_DIR]
    SPARSIFY_DISABLE_TRITON=1 .venv/bin/python tests/scripts/drift_numbers.py zoo [OUT_DIR]

`sink`: the sink/no-BOS test pair (built in OUT_DIR; live numbers from its SFT's callback).
`zoo`: the nano zoo's base and chat models (live numbers from a monitor started on the base).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from featuredrift import sae_store  # noqa: E402,F401  (Triton guard)

BLIND = {"token_mask": "bos_eos", "sink_norm_ratio": None}


def table(settings: dict, base, chat, tokenizer, hookpoint: str) -> list:
    """Print the with/without-sink table; return the (ours) monitor's step-0 and final reports."""
    from featuredrift.monitor.config import MonitorConfig
    from featuredrift.monitor.drift_monitor import DriftMonitor

    print("| sink | model | FVU base text | FVU chat text | σ | div@0.9 | ER | IR (div) | ER top10% | IR top10% | cos q0.01 | KL |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    ours = []
    for label, extra in (("excluded", {}), ("read", BLIND)):
        monitor = DriftMonitor(MonitorConfig(**settings, **extra))
        monitor.start(base, tokenizer)
        for name, model in (("base", base), ("fine-tuned", chat)):
            report = monitor.evaluate(model, 0)
            layer = report.layers[hookpoint]
            if not extra:
                ours.append(report)
            print(f"| {label} | {name} | {layer.fvu['current/base']:.4f} | {layer.fvu['current/chat']:.4f} | "
                  f"{layer.scale_current:.2f} | {layer.divergent_fraction:.4f} | {layer.explained_ratio:.4f} | "
                  f"{layer.intersection_ratio_divergent:.4f} | {layer.explained_ratio_most_divergent:.4f} | "
                  f"{layer.intersection_ratio_most_divergent:.4f} | {layer.cosine_quantiles['0.01']:.4f} | {report.kl_mean:.4f} |")
    return ours


def agreement(pairs: dict[str, tuple[float, float]]) -> None:
    for name, (live, batch) in pairs.items():
        print(f"live vs replicate: {name}: {live:.6f} vs {batch:.6f}")
    print(f"max |live − replicate| = {max(abs(a - b) for a, b in pairs.values()):.3g}")


def sink(out: Path) -> None:
    from sink_fixtures import (
        build_sink_pair,
        live_and_replicated,
        monitor_settings,
        replicate_config,
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from featuredrift.replicate.pipeline import run_replication

    pair = build_sink_pair(out)
    base = AutoModelForCausalLM.from_pretrained(pair.base).eval()
    chat = AutoModelForCausalLM.from_pretrained(pair.chat).eval()
    table(monitor_settings(pair.root, pair.sae), base, chat, AutoTokenizer.from_pretrained(pair.base), pair.hookpoint)
    results = run_replication(replicate_config(pair), out / "replicate", stages="transfer,drift", progress=False)
    agreement(live_and_replicated(pair, results))
    print("sae train:", {k: pair.sae_training[k] for k in ("initial_fvu", "final_fvu", "num_steps", "exclude_tokens")})


def zoo(out: Path) -> None:
    from featuredrift.replicate.config import PRESETS_DIR, load_config
    from featuredrift.replicate.pipeline import run_replication
    from featuredrift.zoo import ensure_zoo, load_zoo_models

    paths = ensure_zoo("nano", progress=False)
    base, _ = load_zoo_models(paths, "base")
    chat, tokenizer = load_zoo_models(paths, "chat")
    settings = dict(sae=str(paths.sae), hookpoints=[paths.hookpoint], probes=str(paths.probes), probe_split="all",
                    refusal_score_every=0, kl_every=1)
    first, last = table(settings, base, chat, tokenizer, paths.hookpoint)
    import yaml
    from sink_fixtures import paired_numbers

    preset = yaml.safe_load((PRESETS_DIR / "zoo.yaml").read_text())
    preset.update(hookpoints=[paths.hookpoint], refusal_hookpoint=paths.hookpoint)
    preset["sae"].update(chat=False, train_missing=False)
    preset["data"]["max_eval_texts"] = 1000  # every probe text, as the live monitor reads them
    results = run_replication(load_config(preset), out / "replicate", stages="transfer,drift", progress=False)
    drift = results["stages"]["drift"]["hookpoints"][paths.hookpoint]["base"]
    layer = last.layers[paths.hookpoint]
    agreement({
        **paired_numbers(first, last, paths.hookpoint, results),
        "ER": (layer.explained_ratio, drift["explained_ratio"]),  # defined on the zoo, where tokens pass τ
        "IR (divergent)": (layer.intersection_ratio_divergent, drift["intersection_ratio_divergent"]),
    })

if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "sink"
    folder = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp(prefix=f"{which}-numbers-"))
    {"sink": sink, "zoo": zoo}[which](folder)
