"""Stage `interventions` (Fig. 2): on the chat model, the safety score of held-out harmful
prompts under directional ablation of each reconstructed direction (every layer, every
position) and the refusal score of held-out harmless prompts under its addition at the SAE's
layer, for base-feature and chat-feature reconstructions at every k, the true direction and no
intervention. The safety judge is named in the result; `paper_readings.ablation_reading` says
whether the ablation projects out the unit direction or applies Eq. 5 with the direction itself."""

from __future__ import annotations

from safetensors.torch import load_file

from featuredrift.replicate.context import RunContext
from featuredrift.replicate.stage_refusal import DIRECTIONS_FILE, direction_key


def run(ctx: RunContext, folder) -> dict:
    from featuredrift.monitor.interventions import (
        activation_addition,
        directional_ablation,
        refusal_judge,
        score_under,
    )
    from featuredrift.monitor.judges import get_judge

    cfg = ctx.config
    settings = cfg.interventions
    model, tokenizer = ctx.model("chat")
    directions = load_file(str(ctx.stage_dirs["refusal"] / DIRECTIONS_FILE))
    hookpoint = ctx.results["refusal"]["hookpoint"]
    harmful = ctx.instructions("harmful_eval", cfg.data.max_eval_prompts)
    harmless = ctx.instructions("harmless_eval", cfg.data.max_eval_prompts)
    judge = get_judge(settings.judge)
    reading = cfg.paper_readings.ablation_reading
    table_ks = [row["k"] for row in ctx.results["refusal"]["table"]]
    ks = [k for k in (settings.ks or table_ks) if k in table_ks]
    jobs = [("none", None)] + [("true", None)] + [(s, k) for k in ks for s in ("base", "chat")]
    common = dict(max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size, prompt_format="chat")
    rows, examples = [], {}
    for source, k in ctx.track(jobs, "interventions (generation)", len(jobs)):
        if source == "none":
            ablate = add = None
        else:
            vector = directions[direction_key(source, k)].to(ctx.device)
            if float(vector.norm()) == 0.0:  # NNLS put zero weight on every feature
                rows.append({"source": source, "k": k, "safety_score": None, "refusal_score": None, "zero_direction": True})
                continue
            ablate = lambda v=vector: directional_ablation(model, v, reading=reading)  # noqa: E731
            add = lambda v=vector: activation_addition(model, hookpoint, v)  # noqa: E731
        safety = score_under(model, tokenizer, harmful, ablate, judge=judge, **common)
        refusal = score_under(model, tokenizer, harmless, add, judge=refusal_judge, **common)
        rows.append({"source": source, "k": k, "safety_score": safety.score, "refusal_score": refusal.score})
        examples[f"{source}" + (f"_k{k}" if k else "")] = {
            "ablation": [[i, c] for i, c in zip(harmful[:2], safety.completions[:2], strict=True)],
            "addition": [[i, c] for i, c in zip(harmless[:2], refusal.completions[:2], strict=True)],
        }
    return {
        "hookpoint": hookpoint,
        "judge": judge.name,
        "judge_spec": settings.judge,
        "num_harmful": len(harmful),
        "num_harmless": len(harmless),
        "max_new_tokens": settings.max_new_tokens,
        "ablation_reading": reading,
        "rows": rows,
        "examples": examples,
    }
