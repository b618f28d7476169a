"""Run the replication: preflight, then each selected stage in order, each cached under a key
that hashes the config slice it reads and the keys of the stages it depends on; then write
results.json, report.md and report.html."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from featuredrift.replicate.cache import (
    CODE_VERSION,
    StageDir,
    stable_hash,
    write_json_atomic,
)
from featuredrift.replicate.config import SOURCE_FIELDS, STAGES, ReplicateConfig, parse_stages
from featuredrift.replicate.context import RunContext

DEPENDENCIES: dict[str, tuple[str, ...]] = {
    "activations": (),
    "saes": (),
    "transfer": ("activations", "saes"),
    "drift": ("activations", "saes"),
    "refusal": ("saes",),
    "interventions": ("refusal",),
    "diffsae": ("activations", "saes", "refusal"),
    "steering": ("activations", "saes", "diffsae"),
}


def stage_inputs(config: ReplicateConfig, stage: str, identities: dict) -> dict:
    """The part of the config (and of the world: model and SAE identities) a stage reads."""
    data = config.data
    readings = config.paper_readings
    models = {"base": identities["base"], "chat": identities["chat"], "dtype": config.dtype}
    if stage == "activations":
        return {
            **models, "hookpoints": config.hookpoints, "activation_dtype": config.activation_dtype,
            "shard_tokens": config.shard_tokens, "max_length": data.max_length, "max_eval_texts": data.max_eval_texts,
            "base_text_eval": data.base_text_eval, "chat_text_eval": data.chat_text_eval,
            "token_mask": readings.token_mask, "splits": data.splits,
            "sink_norm_ratio": config.sink_norm_ratio if readings.outlier_rule == "norm" else None,
        }
    if stage == "saes":
        return {
            **models, "hookpoints": config.hookpoints, "sae": config.sae.model_dump(), "sae_source": identities["sae"],
            "seed": config.seed, "max_length": data.max_length, "max_train_texts": data.max_train_texts,
            "base_text_train": data.base_text_train, "chat_text_train": data.chat_text_train, "splits": data.splits,
        }
    outliers = {"outlier_rule": readings.outlier_rule, "outlier_quantile": config.outlier_quantile}
    if stage == "transfer":
        return {"fvu_reading": readings.fvu_reading, **outliers}
    if stage == "drift":
        return {"threshold": config.divergence_threshold, "scale_reading": readings.scale_reading,
                "er_aggregate": readings.er_aggregate, "ir_reading": readings.ir_reading, **outliers}
    if stage == "refusal":
        return {
            **models, "hookpoint": config.main_hookpoint, "hookpoints": config.hookpoints, "ks": config.refusal.ks,
            "max_prompts": data.max_prompts, "harmful": data.harmful, "harmless": data.harmless, "splits": data.splits,
            "prompt_format": config.refusal.prompt_format,
            "selection": [config.refusal.selection_prompts, config.refusal.selection_kl_threshold,
                          config.refusal.selection_induce_threshold, config.refusal.selection_prune_layers]
            if readings.refusal_direction == "arditi" else None,
            **{name: getattr(readings, name) for name in
               ("refusal_feature_reading", "decoder_norm", "refusal_direction", "base_prompt")},
        }
    if stage == "interventions":
        return {
            **models, "settings": config.interventions.model_dump(), "max_eval_prompts": data.max_eval_prompts,
            "harmful_eval": data.harmful_eval, "harmless_eval": data.harmless_eval, "splits": data.splits,
            "ablation_reading": readings.ablation_reading,
        }
    if stage == "diffsae":
        return {
            **models, "hookpoint": config.diff_hookpoint, "settings": config.diffsae.model_dump(), "seed": config.seed,
            "max_length": data.max_length, "max_train_texts": data.max_train_texts, "max_eval_texts": data.max_eval_texts,
            "train": [data.base_text_train, data.chat_text_train], "eval": data.chat_text_eval, "splits": data.splits,
        }
    if stage == "steering":
        return {
            **models, "settings": config.steering.model_dump(), "seed": config.seed, "diffsae": config.diffsae.model_dump(),
            "max_length": data.max_length, "max_eval_texts": data.max_eval_texts, "eval": data.chat_text_eval,
            "sources": {field: getattr(data, field) for field in SOURCE_FIELDS}, "splits": data.splits,
        }
    raise KeyError(stage)


def stage_keys(config: ReplicateConfig, identities: dict) -> dict[str, str]:
    keys: dict[str, str] = {}
    for stage in STAGES:
        payload = {
            "stage": stage, "code": CODE_VERSION, "inputs": stage_inputs(config, stage, identities),
            "upstream": {d: keys[d] for d in DEPENDENCIES[stage]},
        }
        keys[stage] = stable_hash(payload)
    return keys


def with_dependencies(selected: list[str]) -> list[str]:
    needed = set()

    def visit(stage: str) -> None:
        if stage not in needed:
            needed.add(stage)
            for dep in DEPENDENCIES[stage]:
                visit(dep)

    for stage in selected:
        visit(stage)
    return [s for s in STAGES if s in needed]


@dataclass
class StageRecord:
    name: str
    key: str
    cached: bool
    seconds: float
    result: dict


def _runner(stage: str) -> Callable:
    from importlib import import_module

    return import_module(f"featuredrift.replicate.stage_{stage}").run


def run_replication(
    config: ReplicateConfig,
    out: Path | str,
    *,
    stages: list[str] | str | None = None,
    force: bool = False,
    progress: bool = True,
    write_reports: bool = True,
) -> dict:
    """Run (or load from cache) the selected stages and their dependencies; returns results.json's
    content. Selected stages recompute when `force`; dependencies are reused when cached."""
    from featuredrift.replicate.preflight import preflight
    from featuredrift.replicate.results import build_results

    out = Path(out)
    selected = parse_stages(stages) if stages is not None else list(config.stages)
    identities = preflight(config)  # raises before any work
    keys = stage_keys(config, identities)
    out.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(config=config, out=out)
    records: list[StageRecord] = []
    started = time.time()
    display = _progress() if progress else None
    with display if display is not None else _nullcontext():
        ctx.progress = display
        for stage in with_dependencies(selected):
            stage_dir = StageDir(out, stage, keys[stage])
            ctx.stage_dirs[stage] = stage_dir.path
            cached = stage_dir.cached_result()
            if cached is not None and not (force and stage in selected):
                ctx.results[stage] = cached["result"]
                records.append(StageRecord(stage, keys[stage], True, cached["seconds"], cached["result"]))
                _log(display, f"[green]{stage}[/]: cache hit ({keys[stage]})")
                continue
            _log(display, f"[bold]{stage}[/]: running ({keys[stage]})")
            folder = stage_dir.begin(force=force and stage in selected)
            t0 = time.perf_counter()
            result = _runner(stage)(ctx, folder)
            seconds = time.perf_counter() - t0
            result = json.loads(json.dumps(result, default=_jsonable))
            stage_dir.finish(result, seconds)
            ctx.results[stage] = result
            records.append(StageRecord(stage, keys[stage], False, seconds, result))
            _log(display, f"[bold]{stage}[/]: done in {seconds:.1f}s")
    done = {r.name for r in records}
    for stage in STAGES:  # earlier runs' results that are still valid under this config
        cached = StageDir(out, stage, keys[stage]).cached_result() if stage not in done else None
        if cached is not None:
            records.append(StageRecord(stage, keys[stage], True, cached["seconds"], cached["result"]))
    records.sort(key=lambda r: STAGES.index(r.name))
    results = build_results(config, identities, records, selected, time.time() - started)
    if config.reading_effects:
        from featuredrift.replicate.readings import reading_effects

        results["reading_effects"] = reading_effects(config, out, results, run=run_replication,
                                                     keys_of=lambda c: stage_keys(c, identities))
    write_json_atomic(out / "results.json", results)
    if write_reports:
        from featuredrift.replicate.report import write_reports as write

        write(results, out)
    return results


def _jsonable(value):
    try:
        import torch

        if isinstance(value, torch.Tensor):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True)


def _log(display, message: str) -> None:
    if display is not None:
        display.console.log(message)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
