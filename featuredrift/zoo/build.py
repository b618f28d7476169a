"""Building a zoo directory, stage by stage, into a temporary folder that is renamed into
place only when complete (a killed build never leaves a half zoo).

Layout of a zoo `DIR`:
    base/, chat/             model + tokenizer (`save_pretrained`), load with `Auto*.from_pretrained`
    sae/layers.N/            the base SAE in sparsify's format (`SparseCoder.load_from_disk`)
    probes/*.jsonl           harmful, harmless ({"instruction", "category"}), base_text ({"text"}),
                             chat_text ({"messages"})
    data/*.jsonl             chat_sft, erosion_sft, base_chats ({"messages"}), base_corpus ({"text"})
    manifest.json            config, seed, package versions, sha256 of every file, stage timings
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from featuredrift.zoo.config import ZooConfig
from featuredrift.zoo.manifest import fingerprint_tree, identity, write_manifest

STAGES = ("world", "tokenizer", "base model", "chat model", "base SAE", "manifest")


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_world(root: Path, world) -> None:
    probes, data = root / "probes", root / "data"
    write_jsonl(probes / "harmful.jsonl", world.harmful_probes)
    write_jsonl(probes / "harmless.jsonl", world.harmless_probes)
    write_jsonl(probes / "base_text.jsonl", ({"text": t} for t in world.base_text_probes))
    write_jsonl(probes / "chat_text.jsonl", ({"messages": m} for m in world.chat_text_probes))
    write_jsonl(data / "chat_sft.jsonl", ({"messages": m} for m in world.chat_sft))
    write_jsonl(data / "erosion_sft.jsonl", ({"messages": m} for m in world.erosion_sft))
    write_jsonl(data / "base_corpus.jsonl", ({"text": t} for t in world.base_corpus))
    write_jsonl(data / "base_chats.jsonl", ({"messages": m} for m in world.base_chats))


def tokenizer_training_texts(world) -> list[str]:
    """Base text plus the chat replies, so refusal words get their own tokens."""
    chats = [" ".join(m["content"] for m in c) for c in world.chat_sft]
    return world.base_corpus + chats


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence training libraries' warnings and progress bars for the duration of a build."""
    import datasets
    import transformers

    was_enabled = datasets.is_progress_bar_enabled()
    verbosity = transformers.logging.get_verbosity()
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers.utils.logging.enable_progress_bar()
        transformers.logging.set_verbosity(verbosity)
        if was_enabled:
            datasets.enable_progress_bars()


@contextlib.contextmanager
def build_threads() -> Iterator[None]:
    """Run the build on a fixed number of intra-op threads (`FEATUREDRIFT_ZOO_THREADS`, default 1).

    A fixed count keeps CPU reductions in the same order, so weights are reproducible; and on a
    shared small machine one thread per process is much faster than oversubscribed OpenMP teams.
    """
    import torch

    previous = torch.get_num_threads()
    threads = int(os.environ.get("FEATUREDRIFT_ZOO_THREADS", "1"))
    if threads < 1:
        raise ValueError(f"FEATUREDRIFT_ZOO_THREADS: expected a positive integer, found {threads}")
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class StageTimer:
    """Runs named stages, records their durations and reports them to an optional callback."""

    def __init__(self, on_stage: Callable[[str, str], None] | None):
        self.on_stage = on_stage
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.on_stage:
            self.on_stage(name, "start")
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        if self.on_stage:
            self.on_stage(name, "done")


def fit_and_save_sae(config: ZooConfig, base, tokenizer, world, layer: int, sae, seed: int, out: Path) -> dict:
    """Train one base SAE on the base corpus, save it, and measure it on held-out base text."""
    import torch

    from featuredrift.monitor.metrics import fvu
    from featuredrift.zoo.base_sae import residual_activations, train_base_sae

    acts = residual_activations(base, tokenizer, world.base_corpus, layer, max_length=config.max_length)
    summary = train_base_sae(config, sae, acts, seed)
    sae.save_to_disk(out / "sae" / f"layers.{layer}")
    probe_acts = residual_activations(
        base, tokenizer, world.base_text_probes, layer, max_length=config.max_length
    )
    with torch.no_grad():
        probe_fvu = float(fvu(probe_acts, sae(probe_acts).sae_out))
    return {
        "train_fvu": round(summary.fvu, 4),
        "base_text_fvu": round(probe_fvu, 4),
        "dead_fraction": round(summary.dead_fraction, 4),
        "train_tokens": summary.num_tokens,
    }


def build_into(
    out: Path,
    config: ZooConfig,
    seed: int,
    *,
    all_layers: bool = False,
    on_stage: Callable[[str, str], None] | None = None,
) -> dict:
    """Build every zoo part into the (new, empty) directory `out`; returns the manifest."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    from featuredrift.zoo.base_sae import new_sparse_coder
    from featuredrift.zoo.chat_sft import supervised_finetune
    from featuredrift.zoo.pretrain import pretrain_base_model
    from featuredrift.zoo.tokenizer import train_tokenizer
    from featuredrift.zoo.world import build_world

    started = time.perf_counter()
    timer = StageTimer(on_stage)
    work = out / ".work"
    metrics: dict[str, dict] = {"sae": {}}
    with quiet_libraries(), torch.random.fork_rng(devices=[]), build_threads():
        set_seed(seed)
        with timer.stage("world"):
            world = build_world(config, seed)
            write_world(out, world)
        with timer.stage("tokenizer"):
            tokenizer = train_tokenizer(tokenizer_training_texts(world), config.vocab_size)
        with timer.stage("base model"):
            base = pretrain_base_model(
                config, tokenizer, world.base_corpus, world.base_chats, seed, str(work / "base")
            )
            base.save_pretrained(out / "base")
            # Saved before any padded/truncated call can leave its settings in tokenizer.json.
            tokenizer.save_pretrained(out / "base")
            tokenizer.save_pretrained(out / "chat")
        layers = list(range(config.num_layers)) if all_layers else [config.sae_layer]
        # SAEs are created here, before SFT seeds the global RNG; they train in a worker thread
        # (own generators only) while the chat model trains: two cores, two jobs.
        saes = {layer: new_sparse_coder(config, config.hidden_size, seed + layer) for layer in layers}
        threads = torch.get_num_threads()
        # The worker gets its own tokenizer: a fast tokenizer's padding state is not thread-safe.
        sae_tokenizer = AutoTokenizer.from_pretrained(out / "base")

        def train_saes() -> None:
            torch.set_num_threads(threads)  # OpenMP settings are per thread
            with timer.stage("base SAE"):
                for layer, sae in saes.items():
                    metrics["sae"][f"layers.{layer}"] = fit_and_save_sae(
                        config, base, sae_tokenizer, world, layer, sae, seed + layer, out
                    )

        with ThreadPoolExecutor(max_workers=1) as pool:
            sae_job = pool.submit(train_saes)
            with timer.stage("chat model"):
                chat = AutoModelForCausalLM.from_pretrained(out / "base")
                chat = supervised_finetune(
                    config, chat, tokenizer, world.chat_sft, seed, str(work / "chat")
                )
                chat.save_pretrained(out / "chat")
            sae_job.result()
        with timer.stage("manifest"):
            shutil.rmtree(work, ignore_errors=True)
            manifest = {
                **identity(config.to_dict(), seed, all_layers),
                "size": config.size,
                "hookpoint": config.hookpoint,
                "hookpoints": [f"layers.{layer}" for layer in layers],
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "metrics": metrics,
                "files": fingerprint_tree(out),
            }
    manifest["timings_s"] = {**timer.seconds, "total": round(time.perf_counter() - started, 2)}
    write_manifest(out, manifest)
    return manifest


def replace_atomically(built: Path, root: Path) -> None:
    """Move a finished build to `root`, replacing any previous zoo there."""
    old = None
    if root.exists():
        old = root.with_name(f".{root.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        root.rename(old)
    built.rename(root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_builds(root: Path) -> None:
    """Leftovers of killed builds (callers hold the build lock, so none is in progress)."""
    for leftover in root.parent.glob(f".{root.name}.building-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in root.parent.glob(f".{root.name}.old-*"):
        shutil.rmtree(leftover, ignore_errors=True)


ZOO_ENTRIES = frozenset({"base", "chat", "sae", "probes", "data", "manifest.json"})


def refuse_to_replace_foreign_dir(root: Path) -> None:
    """A rebuild replaces `root`: never do that to a folder that does not look like a zoo."""
    if not root.exists():
        return
    entries = {p.name for p in root.iterdir()} if root.is_dir() else {"?"}
    if not entries <= ZOO_ENTRIES:
        raise FileExistsError(
            f"{root} exists and is not a zoo: expected only {sorted(ZOO_ENTRIES)}, found "
            f"{sorted(entries - ZOO_ENTRIES)[:5]}; choose another --out or remove it"
        )


def build_zoo(
    root: Path,
    config: ZooConfig,
    seed: int,
    *,
    all_layers: bool = False,
    on_stage: Callable[[str, str], None] | None = None,
) -> dict:
    """Build a zoo at `root` through a temporary sibling folder; returns the manifest."""
    root = Path(root)
    refuse_to_replace_foreign_dir(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_builds(root)
    building = root.with_name(f".{root.name}.building-{os.getpid()}")
    building.mkdir()
    try:
        manifest = build_into(building, config, seed, all_layers=all_layers, on_stage=on_stage)
        replace_atomically(building, root)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return manifest
