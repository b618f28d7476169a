"""How far each paper reading moves the replication's headline numbers.

For every reading (`monitor.readings.READINGS`) the run is repeated with that one reading on
its other side (ours ↔ the paper's; for a reading the paper and we read alike, its alternative),
every other setting kept. The repeat lives in ``<out>/readings/<name>/``; stages the reading does
not touch are linked to the main run's folders (same cache key), so only the stages it moves
are recomputed. The headline numbers of both runs are compared and the ones that differ are
reported: which numbers each reading moves, and by how much.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from featuredrift.monitor.readings import READINGS, Reading
from featuredrift.replicate.config import ReplicateConfig

Extractor = Callable[[dict], float | None]


def flipped_value(reading: Reading, current: str) -> str:
    """The other side of a reading: the paper's when the run reads ours, ours when it reads the
    paper's; for a reading both read alike (or a third value), its first other choice."""
    if reading.ours != reading.paper:
        if current == reading.ours:
            return reading.paper
        if current == reading.paper:
            return reading.ours
    return next(c for c in reading.choices if c != current)


def headline_numbers(results: dict) -> dict[str, float | None]:
    """The numbers a reader of the report looks at first, by a stable name."""
    stages = results["stages"]
    out: dict[str, float | None] = {}
    transfer = stages.get("transfer")
    if transfer:
        for hookpoint, row in transfer["hookpoints"].items():
            for setting in ("B-LLM+B-Data", "B-LLM+C-Data", "C-LLM+C-Data"):
                out[f"FVU {setting} @{hookpoint}"] = row["base_sae"][setting]
            if "chat_sae" in row:
                out[f"FVU chat SAE C-LLM+C-Data @{hookpoint}"] = row["chat_sae"]["C-LLM+C-Data"]
    drift = stages.get("drift")
    if drift:
        for hookpoint, per_data in drift["hookpoints"].items():
            row = per_data["base"]
            out[f"tokens (base data) @{hookpoint}"] = row["tokens"]
            out[f"divergent fraction @{hookpoint}"] = row["divergent_fraction"]
            out[f"ER @{hookpoint}"] = row["explained_ratio"]
            out[f"IR divergent @{hookpoint}"] = row["intersection_ratio_divergent"]
            out[f"IR all @{hookpoint}"] = row["intersection_ratio_all"]
    refusal = stages.get("refusal")
    if refusal and refusal["table"]:
        last = refusal["table"][-1]
        out["refusal hookpoint (layer)"] = float(refusal["hookpoint"].split(".")[1])
        for role in ("base", "chat"):
            out[f"Table 1 {role} cos (k={last['k']})"] = last[role]["cosine"]
            out[f"Table 1 {role} NMSE (k={last['k']})"] = last[role]["nmse"]
        out[f"Table 1 overlap (k={last['k']})"] = last["overlap"]
        out["refusal direction norm"] = refusal["direction_norm"]
    interventions = stages.get("interventions")
    if interventions:
        for row in interventions["rows"]:
            if row["source"] in ("true", "chat") and row["safety_score"] is not None:
                label = "true direction" if row["source"] == "true" else f"chat features k={row['k']}"
                out[f"safety under ablation, {label}"] = row["safety_score"]
                out[f"refusal under addition, {label}"] = row["refusal_score"]
    diffsae = stages.get("diffsae")
    if diffsae:
        out["diff-SAE alignment"] = diffsae["alignment"]["diff_sae"]
        out["base-SAE alignment"] = diffsae["alignment"]["base_sae"]
        out["diff-SAE held-out FVU (chat data)"] = diffsae["held_out_fvu"]["chat"]
    steering = stages.get("steering")
    if steering:
        diff = steering["validation"]["diff_sae"]
        out["steering: median KL change (diff-SAE)"] = diff["median_kl_change"]
        out["steering: P(chat token) after (diff-SAE)"] = diff["mean_chat_token_probability_after"]
        hybrid = steering.get("hybrid")
        if hybrid:
            out["hybrid: target share"] = hybrid["models"]["hybrid"]["target_share"]
            out["hybrid: target share, steered"] = hybrid["models"]["hybrid_steered"]["target_share"]
    return out


def compare(this_run: dict[str, float | None], flipped: dict[str, float | None]) -> list[dict]:
    """The numbers that differ between two runs (NaN/None counts as a value)."""
    rows = []
    for metric in this_run:
        if metric not in flipped:
            continue  # not computed in the other run
        a, b = this_run[metric], flipped[metric]
        if _same(a, b):
            continue
        delta = b - a if isinstance(a, int | float) and isinstance(b, int | float) else None
        rows.append({"metric": metric, "this_run": a, "flipped": b, "delta": delta})
    return rows


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def reading_effects(config: ReplicateConfig, out: Path, results: dict, *, run: Callable[..., dict],
                    keys_of: Callable[[ReplicateConfig], dict[str, str]]) -> list[dict]:
    """Run each reading flipped (every stage this run reports; those the reading leaves alone are
    the main run's, linked) and report which headline numbers move. `run` is the pipeline's
    `run_replication`, `keys_of` its stage keys of a config (passed in: the pipeline calls this)."""
    from featuredrift.replicate.config import STAGES

    ran = set(results["stages"])
    stages = [s for s in STAGES if s in ran]
    main_keys = keys_of(config)
    headlines = headline_numbers(results)
    effects = []
    for reading in READINGS:
        current = getattr(config.paper_readings, reading.name)
        flipped = flipped_value(reading, current)
        entry = {"reading": reading.name, "this_run": current, "flipped": flipped, "moves": list(reading.moves), "numbers": []}
        if not set(reading.moves) & ran:
            entry["error"] = "not measured: none of the stages it moves ran"
            effects.append(entry)
            continue
        variant = config.model_copy(update={
            "paper_readings": config.paper_readings.model_copy(update={reading.name: flipped}),
            "reading_effects": False,
        })
        folder = out / "readings" / reading.name
        _link_unchanged(out, folder, main_keys, keys_of(variant))
        try:
            other = run(variant, folder, stages=stages, progress=False, write_reports=False)
        except Exception as error:  # noqa: BLE001 - one reading that cannot run (e.g. no candidate survives) is reported
            entry["error"] = f"{type(error).__name__}: {error}"
        else:
            entry["numbers"] = compare(headlines, headline_numbers(other))
        effects.append(entry)
    return effects


def _link_unchanged(main: Path, folder: Path, main_keys: dict[str, str], keys: dict[str, str]) -> None:
    """Point the variant's stage folders whose key is the main run's at the main run's folders."""
    stages = folder / "stages"
    stages.mkdir(parents=True, exist_ok=True)
    for stage, key in keys.items():
        target, link = (main / "stages" / stage).resolve(), stages / stage
        if link.is_symlink():
            link.unlink()
        if key == main_keys.get(stage) and (target / "done.json").is_file():
            if link.exists():  # a folder computed under an older key: the main run's is valid now
                import shutil

                shutil.rmtree(link)
            link.symlink_to(target, target_is_directory=True)
