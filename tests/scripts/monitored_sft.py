"""A monitored SFT run on the zoo, as a separate process: used by the DDP (torchrun), the
kill-and-resume and the interrupted-run tests. Arguments come as JSON in argv[1]; with
"interrupt_at" the process sends itself SIGINT (Ctrl-C) when that step ends."""

import json
import os
import signal
import sys

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")

from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402

from featuredrift.callbacks.feature_drift import FeatureDriftCallback  # noqa: E402
from featuredrift.monitor.config import MonitorConfig  # noqa: E402
from featuredrift.monitor.distributed import padded_shard, world  # noqa: E402
from featuredrift.zoo.finetune import make_sft_trainer, read_conversations  # noqa: E402


class CtrlC(TrainerCallback):
    """Presses Ctrl-C on this process when step `at` ends."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            os.kill(os.getpid(), signal.SIGINT)


def main() -> None:
    opts = json.loads(sys.argv[1])
    zoo = opts["zoo"]
    model = AutoModelForCausalLM.from_pretrained(zoo + "/base")
    tokenizer = AutoTokenizer.from_pretrained(zoo + "/base")
    conversations = read_conversations(zoo + "/data/chat_sft.jsonl")[: opts.get("conversations", 256)]
    config = MonitorConfig(
        sae=zoo + "/sae",
        probes=zoo + "/probes",
        eval_every=opts["eval_every"],
        max_probes=opts.get("max_probes", 16),
        refusal_score_every=opts.get("refusal_score_every", 0),
        max_new_tokens=8,
        batch_size=4,
        store_url=opts["store_url"],
        pushgateway_url=opts.get("pushgateway_url"),
        metrics_port=0,
        run_name=opts["run_name"],
        keep_group_on_end=opts.get("keep_group", False),
        heartbeat_s=opts.get("heartbeat_s", 60.0),
        audit_examples=opts.get("audit_examples", 0),
    )
    drift = FeatureDriftCallback(config)
    callbacks = [drift] + ([CtrlC(opts["interrupt_at"])] if opts.get("interrupt_at") else [])
    extra = {"ddp_backend": "gloo"} if int(os.environ.get("WORLD_SIZE", "1")) > 1 else {}
    trainer = make_sft_trainer(
        model,
        tokenizer,
        conversations,
        output_dir=opts["output_dir"],
        max_steps=opts["max_steps"],
        learning_rate=2e-3,
        batch_size=8,
        save_steps=opts.get("save_steps"),
        callbacks=callbacks,
        **extra,
    )
    trainer.train(resume_from_checkpoint=opts.get("resume") or None)
    rank, size = world()
    summary = {
        "rank": rank,
        "run_id": drift.run_id,
        "world_size": size,
        "steps": [r.step for r in drift.reports],
        "batches": {k: len(v) for k, v in drift.monitor.probe_batches.items()},
        "shard_batches": {k: len(padded_shard(v)[0]) for k, v in drift.monitor.probe_batches.items()},
        "refusal_rates": [r.refusal_rate for r in drift.reports],
        "fvu": [r.layers[next(iter(r.layers))].fvu for r in drift.reports],
        "pushes": getattr(drift.session.exporter, "delivered", 0) if drift.session else None,
    }
    with open(os.path.join(opts["output_dir"], f"summary-rank{rank}.json"), "w") as f:
        json.dump(summary, f)


if __name__ == "__main__":
    main()
