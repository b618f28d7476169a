"""One evaluation of the zoo's chat model against its base model on two ranks (torchrun, gloo),
with the models replicated (DDP) or sharded (FSDP2 `fully_shard` on a CPU mesh). The probe set
has an odd number of batches per subset, so one rank runs a padding pass. Each rank writes the
report it ended with. Arguments come as JSON in argv[1]."""

import json
import os
import sys

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from featuredrift.monitor.config import MonitorConfig  # noqa: E402
from featuredrift.monitor.drift_monitor import DriftMonitor  # noqa: E402
from featuredrift.zoo import ensure_zoo, load_zoo_models  # noqa: E402


def shard(model, mode: str):
    if mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    return torch.nn.parallel.DistributedDataParallel(model)


def main() -> None:
    opts = json.loads(sys.argv[1])
    dist.init_process_group("gloo")
    zoo = ensure_zoo("nano", progress=False)
    base, tokenizer = load_zoo_models(zoo, "base")
    chat, _ = load_zoo_models(zoo, "chat")
    base, chat = shard(base, opts["mode"]), shard(chat, opts["mode"])
    monitor = DriftMonitor(MonitorConfig(**opts["config"]))
    monitor.start(base, tokenizer)
    report = monitor.evaluate(chat, step=1, final=True)
    rank = dist.get_rank()
    with open(os.path.join(opts["out"], f"report-{opts['mode']}-rank{rank}.json"), "w") as f:
        f.write(report.to_json())
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
