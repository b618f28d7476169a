"""Print the sink/no-BOS test pair's drift numbers: FVU, σ, divergent fraction at τ = 0.9, ER and
IR for the base model (step 0) and after its short SFT, with the sink excluded (ours) and with
it read (Appx. A.2's literal mask, no norm-outlier rule), and the largest difference between
the live callback's numbers and `replicate`'s on the saved pair.

    SPARSIFY_DISABLE_TRITON=1 .venv/bin/python tests/scripts/sink_numbers.py [OUT_DIR]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from sink_fixtures import build_sink_pair, live_and_replicated, monitor_settings, replicate_config  # noqa: E402

from featuredrift import sae_store  # noqa: E402,F401  (Triton guard)


def main(out: Path) -> None:
    from transformers import AutoModelForCausalLM

    from featuredrift.monitor.config import MonitorConfig
    from featuredrift.monitor.drift_monitor import DriftMonitor
    from featuredrift.monitor.replicate.pipeline import run_replication

    pair = build_sink_pair(out)
    base = AutoModelForCausalLM.from_pretrained(pair.base).eval()
    chat = AutoModelForCausalLM.from_pretrained(pair.chat).eval()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pair.base)
    settings = {**monitor_settings(pair.root, pair.sae), "kl_every": 1}
    print("| sink | model | FVU base text | FVU chat text | σ | div@0.9 | ER | IR (div) | ER top10% | IR top10% | cos q0.01 | KL |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, extra in (("excluded", {}), ("read", {"token_mask": "bos_eos", "sink_norm_ratio": None})):
        monitor = DriftMonitor(MonitorConfig(**settings, **extra))
        monitor.start(base, tokenizer)
        for name, model in (("base (step 0)", base), ("after SFT", chat)):
            report = monitor.evaluate(model, 0)
            layer = report.layers[pair.hookpoint]
            print(f"| {label} | {name} | {layer.fvu['current/base']:.4f} | {layer.fvu['current/chat']:.4f} | "
                  f"{layer.scale_current:.2f} | {layer.divergent_fraction:.4f} | {layer.explained_ratio:.4f} | "
                  f"{layer.intersection_ratio_divergent:.4f} | {layer.explained_ratio_most_divergent:.4f} | "
                  f"{layer.intersection_ratio_most_divergent:.4f} | {layer.cosine_quantiles['0.01']:.4f} | {report.kl_mean:.5f} |")
    results = run_replication(replicate_config(pair), out / "replicate", stages="transfer,drift", progress=False)
    pairs = live_and_replicated(pair, results)
    for name, (live, batch) in pairs.items():
        print(f"live vs replicate: {name}: {live:.6f} vs {batch:.6f}")
    print(f"max |live − replicate| = {max(abs(a - b) for a, b in pairs.values()):.3g}")
    print("sae train:", {k: pair.sae_training[k] for k in ("initial_fvu", "final_fvu", "num_steps", "exclude_tokens")})


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="sink-numbers-")))
