"""Stage `steering` (the post's evidence that attributed latents cause the change):

* steering validation: at the highest-KL positions of chat-like text, the base model is run
  with the decoder row of the latent of most negative KL attribution added at the diff-SAE's
  hookpoint (λ over a grid), and the KL to the chat model and the probability of the chat
  model's token are read again; for the diff-SAE, the base SAE and a random unit direction
  (the control every steering claim needs);
* hybrid model: base blocks through the hookpoint, chat blocks after; rollouts from the fixed
  context where the hybrid most keeps a token the chat model suppresses, with and without the
  latent added, with the sampling settings recorded;
* dataset-level attribution: for each prompt set, the KL summed over the chat model's own
  greedy response tokens is attributed to every diff-SAE latent; the lowest-attribution latent
  is then subtracted from the chat model on those prompts (the behaviour should fade), added to
  it on control prompts and added to the base model (it should appear), against a random
  direction of the same norm.

λ is in units of the mean ‖x_chat − x_base‖ at the hookpoint on held-out tokens: the size of
what fine-tuning changed there.
"""

from __future__ import annotations

import torch
from torch import Tensor

from featuredrift.replicate.context import RunContext
from featuredrift.replicate.saes import load_stage_saes
from featuredrift.replicate.shards import iter_paired
from featuredrift.replicate.stage_diffsae import attribution_at, high_kl_positions_of

# The post's numbers (Gemma-2-2B, layer 13, BatchTopK diff-SAE with 18k latents).
POST = {
    "chat_token_probability_after": 0.9,
    "kl_change": -0.5,
    "rollout_share_before": 0.42,
    "rollout_share_after": 0.02,
    "num_rollouts": 1000,
}


def run(ctx: RunContext, folder) -> dict:
    from featuredrift.sae_store.load import load_sae_dir

    cfg = ctx.config
    hookpoint = cfg.diff_hookpoint
    diff_sae = load_sae_dir(ctx.stage_dirs["diffsae"] / "diff_sae" / hookpoint, device=ctx.device)
    base_sae = load_stage_saes(ctx, "base")[hookpoint]
    unit = mean_diff_norm(ctx.stage_dirs["activations"], hookpoint)
    scales = [m * unit for m in cfg.steering.scales]
    texts, special = ctx.texts("chat_text_eval", cfg.data.max_eval_texts)
    tokens, positions, _, _ = high_kl_positions_of(ctx, texts, special, cfg.steering.positions)
    dictionaries = {"diff_sae": diff_sae.W_dec.detach(), "base_sae": base_sae.W_dec.detach()}
    validation, chosen = {}, {}
    for name, decoder in dictionaries.items():
        validation[name], chosen[name] = validate(ctx, tokens, positions, decoder, hookpoint, scales, unit, name)
    # The control: random unit dictionaries of the diff-SAE's size, their best latent at each
    # position steered alike. One draw varies a lot (large λ flattens a confidently wrong
    # prediction whatever the direction), so several are averaged.
    draws = [validate(ctx, tokens, positions, random_directions(diff_sae.W_dec.shape[1], diff_sae.num_latents, cfg.seed + r),
                      hookpoint, scales, unit, "random")[0] for r in range(cfg.steering.random_draws)]
    validation["random"] = mean_of_draws(draws)
    result = {
        "hookpoint": hookpoint,
        "unit": {"what": "mean |x_chat - x_base| at the hookpoint, held-out chat data", "value": unit},
        "scales": list(cfg.steering.scales),
        "post": POST,
        "validation": validation,
    }
    if cfg.steering.hybrid:
        result["hybrid"] = hybrid_rollouts(ctx, tokens, chosen["diff_sae"], diff_sae.W_dec.detach(), hookpoint, unit)
    result["datasets"] = [dataset_steering(ctx, spec, diff_sae.W_dec.detach(), hookpoint, unit)
                          for spec in cfg.steering.datasets]
    return result


def mean_diff_norm(folder, hookpoint: str) -> float:
    """Mean per-token ‖x_chat − x_base‖ over the held-out chat-data shards."""
    total, count = 0.0, 0
    for x_base, x_chat, _ in iter_paired(folder, "chat", hookpoint):
        total += float((x_chat - x_base).double().norm(dim=1).sum())
        count += x_base.shape[0]
    return total / max(count, 1)


def random_directions(d: int, n: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed + 1)
    directions = torch.randn(n, d, generator=generator)
    return directions / directions.norm(dim=1, keepdim=True)


# ------------------------------------------------------------------ steering validation


def validate(ctx: RunContext, tokens, positions: Tensor, decoder: Tensor, hookpoint: str, scales: list[float],
             unit: float, name: str) -> tuple[dict, dict]:
    """Steer the base model at each position with its most negative-attribution latent of `decoder`."""
    from featuredrift.monitor.kl import most_negative_latents
    from featuredrift.monitor.steering import steer_positions

    attribution, rows = attribution_at(ctx, tokens, positions, decoder, hookpoint)
    latents = most_negative_latents(attribution, 1)[:, 0].cpu()
    row_ids = torch.tensor(rows)[attribution.positions[:, 0]]
    global_positions = torch.stack([row_ids, attribution.positions[:, 1]], dim=1)
    effect = steer_positions(
        ctx.model("base")[0], tokens.input_ids, attribution.log_probs_cur, global_positions,
        decoder.to(ctx.device)[latents.to(ctx.device)].float(), hookpoint, scales,
        attention_mask=tokens.attention_mask, batch_size=ctx.config.batch_size,
    )
    best = effect.best
    index = torch.arange(len(best))
    before, after = effect.target_probability[:, 0], effect.target_probability[index, best]
    became = (effect.top_token[index, best] == effect.target)
    change = effect.kl_change
    tokenizer = ctx.tokenizer
    per_position = []
    for p in range(len(best)):
        row, t = int(global_positions[p, 0]), int(global_positions[p, 1])
        ids = tokens.input_ids[row][: t + 1].tolist()
        per_position.append({
            "text": row, "position": t, "context": tokenizer.decode(ids[-16:], skip_special_tokens=False),
            "latent": int(latents[p]), "attribution": float(attribution.attribution[p, latents[p]]),
            "chat_token": tokenizer.decode([int(effect.target[p])]),
            "base_token": tokenizer.decode([int(effect.top_token[p, 0])]),
            "steered_token": tokenizer.decode([int(effect.top_token[p, best[p]])]),
            "kl_before": float(effect.kl[p, 0]), "kl_after": float(effect.kl[p, best[p]]), "kl_change": float(change[p]),
            "scale": float(effect.scales[best[p]] / unit) if unit else 0.0,
            "chat_token_probability_before": float(before[p]), "chat_token_probability_after": float(after[p]),
            "kl_by_scale": [float(v) for v in effect.kl[p]],
        })
    summary = {
        "dictionary": name,
        "positions": len(best),
        "mean_kl_change": float(change.mean()),
        "median_kl_change": float(change.double().quantile(0.5)),  # the mean of the middle two for an even count
        "kl_halved_share": float((change <= -0.5).double().mean()),
        "kl_lowered_share": float((change < -0.01).double().mean()),
        "mean_chat_token_probability_before": float(before.mean()),
        "mean_chat_token_probability_after": float(after.mean()),
        "top_token_becomes_chat_share": float(became.double().mean()),
        "mean_kl_by_scale": [float(v) for v in effect.kl.mean(0)],
        # One λ for every position (the post steers with one coefficient): the λ of lowest mean KL.
        "common_scale": float(effect.scales[int(effect.kl.mean(0).argmin())] / unit) if unit else 0.0,
        "kl_change_at_common_scale": float(effect.kl.mean(0).min() / effect.kl[:, 0].mean().clamp_min(1e-12) - 1.0),
        "chat_token_probability_at_common_scale": float(effect.target_probability[:, int(effect.kl.mean(0).argmin())].mean()),
        "first_order": float((-attribution.attribution.min(dim=1).values / attribution.gradient.norm(dim=1).clamp_min(1e-12)).mean()),
        "per_position": per_position,
    }
    best_of = {"positions": global_positions, "latents": latents, "scale_index": best, "effect": effect,
               "log_probs_cur": attribution.log_probs_cur, "log_probs_ref": attribution.log_probs_ref}
    return summary, best_of


def mean_of_draws(draws: list[dict]) -> dict:
    """One summary for several random dictionaries: numbers averaged, the spread of the KL change
    at the common λ kept, per-position rows of the first draw."""
    summary = dict(draws[0])
    for key, value in draws[0].items():
        if isinstance(value, float):
            summary[key] = sum(d[key] for d in draws) / len(draws)
        elif isinstance(value, list) and value and isinstance(value[0], float):
            summary[key] = [sum(d[key][i] for d in draws) / len(draws) for i in range(len(value))]
    summary["draws"] = len(draws)
    summary["kl_change_at_common_scale_range"] = [min(d["kl_change_at_common_scale"] for d in draws),
                                                   max(d["kl_change_at_common_scale"] for d in draws)]
    return summary


# ------------------------------------------------------------------ hybrid-model rollouts


def hybrid_rollouts(ctx: RunContext, tokens, chosen: dict, decoder: Tensor, hookpoint: str, unit: float) -> dict:
    """Rollouts of the hybrid (base through `hookpoint`, chat after) from one fixed context, with
    and without the context's top diff-SAE latent added at `hookpoint`."""
    from featuredrift.lm.capture import capture_activations
    from featuredrift.lm.generation import SamplingSettings, sample_rollouts
    from featuredrift.lm.hybrid import base_blocks_through, hybrid_model
    from featuredrift.monitor.interventions import activation_addition
    from featuredrift.monitor.kl import token_shifts
    from featuredrift.monitor.steering import continuation_shares

    cfg = ctx.config
    base, chat = ctx.model("base")[0], ctx.model("chat")[0]
    hybrid = hybrid_model(base, chat, base_blocks_through(hookpoint))
    tokenizer = ctx.tokenizer
    positions = chosen["positions"][: cfg.steering.hybrid_candidates]
    # The token the chat model suppresses most at each candidate (its most down-weighted one).
    _, _, _, down = token_shifts(chosen["log_probs_ref"][: len(positions)], chosen["log_probs_cur"][: len(positions)], 1)
    scored = []
    for p, (row, t) in enumerate(positions.tolist()):
        ids = tokens.input_ids[row, : t + 1][None]
        logits = capture_activations(hybrid, ids, torch.ones_like(ids), [hookpoint], return_logits=True).logits[0, -1]
        scored.append((float(torch.softmax(logits.float(), -1)[int(down[p, 0])]), p))
    probability, p = max(scored)
    row, t = positions[p].tolist()
    context = tokens.input_ids[row, : t + 1].tolist()
    target = tokenizer.decode([int(down[p, 0])])
    latent = int(chosen["latents"][p])
    index = int(chosen["scale_index"][p])
    scale = float(chosen["effect"].scales[index]) if index > 0 else cfg.steering.scales[len(cfg.steering.scales) // 2] * unit
    sampling = cfg.steering.sampling
    settings = SamplingSettings(sampling.num_rollouts, sampling.max_new_tokens, sampling.temperature, sampling.top_p,
                                sampling.top_k, cfg.seed, sampling.batch_size)
    vector = decoder[latent].to(ctx.device).float()

    def shares(model, steer: bool) -> dict:
        if steer:
            with activation_addition(model, hookpoint, vector, scale):
                rollouts = sample_rollouts(model, tokenizer, context, settings)
        else:
            rollouts = sample_rollouts(model, tokenizer, context, settings)
        found = continuation_shares(rollouts, tokenizer, target=target, tokens=cfg.steering.continuation_tokens)
        return {"target_share": found.target_share, "top": [[text, share] for text, share in found.top]}

    return {
        "base_blocks": base_blocks_through(hookpoint),
        "context": tokenizer.decode(context[-24:], skip_special_tokens=False),
        "context_tokens": len(context),
        "target": target,
        "target_probability_hybrid": probability,
        "latent": latent,
        "scale": scale / unit if unit else 0.0,
        "sampling": settings._asdict(),
        "models": {
            "base": shares(base, False),
            "chat": shares(chat, False),
            "hybrid": shares(hybrid, False),
            "hybrid_steered": shares(hybrid, True),
        },
    }


# ------------------------------------------------------------------ dataset-level attribution


def dataset_steering(ctx: RunContext, spec, decoder: Tensor, hookpoint: str, unit: float) -> dict:
    """Attribute the KL summed over the chat model's response tokens on `spec`'s prompts, then
    steer with the lowest-attribution latent (and a random direction of the same norm)."""
    from featuredrift.lm.generation import generate_greedy_ids
    from featuredrift.lm.prompts import format_prompts
    from featuredrift.monitor.interventions import activation_addition, score_under

    cfg = ctx.config
    settings = cfg.steering
    base, chat = ctx.model("base")[0], ctx.model("chat")[0]
    tokenizer = ctx.tokenizer
    prompts = ctx.prompts(spec.prompts, spec.max_prompts)
    control = ctx.prompts(spec.control, spec.max_prompts) if spec.control else []
    formatted = format_prompts(tokenizer, prompts, "chat")
    pairs = generate_greedy_ids(chat, tokenizer, formatted, max_new_tokens=settings.max_new_tokens, batch_size=cfg.batch_size)
    total, per_prompt, positions = _summed_attribution(ctx, pairs, decoder, hookpoint)
    latent = int(total.argmin())
    vector = decoder[latent].to(ctx.device).float()
    random = random_directions(decoder.shape[1], 1, cfg.seed + 7)[0].to(ctx.device)
    judge = _behaviour_judge(spec.behaviour)
    common = dict(judge=judge, prompt_format="chat", max_new_tokens=settings.max_new_tokens, batch_size=cfg.batch_size)

    def rate(model, instructions, direction=None, scale=0.0) -> dict:
        intervention = None if direction is None else (lambda: activation_addition(model, hookpoint, direction, scale))
        scored = score_under(model, tokenizer, instructions, intervention, **common)
        return {"rate": scored.score, "degenerate": degenerate_share(scored.completions),
                "examples": [[i, c] for i, c in zip(instructions[:2], scored.completions[:2], strict=False)]}

    rows = [{"scale": 0.0, "chat_negative": rate(chat, prompts), "chat_negative_random": None,
             "chat_positive": rate(chat, control) if control else None, "base_positive": rate(base, prompts)}]
    for multiplier in settings.dataset_scales:
        lam = multiplier * unit
        rows.append({
            "scale": multiplier,
            "chat_negative": rate(chat, prompts, vector, -lam),
            "chat_negative_random": rate(chat, prompts, random, -lam),
            "chat_positive": rate(chat, control, vector, lam) if control else None,
            "base_positive": rate(base, prompts, vector, lam),
        })
    order = total.argsort()
    return {
        "name": spec.name,
        "prompts": len(prompts),
        "control_prompts": len(control),
        "behaviour": spec.behaviour or "refusal phrases",
        "response_tokens": positions,
        "summed_kl": float(per_prompt.sum()),
        "latent": latent,
        "attribution": float(total[latent]),
        "lowest": [[int(j), float(total[j])] for j in order[:5].tolist()],
        "steering": rows,
    }


def _summed_attribution(ctx: RunContext, pairs, decoder: Tensor, hookpoint: str):
    """Σ over prompts of the dataset-level attribution, per-prompt summed KL, response positions."""
    from featuredrift.lm.capture import capture_activations, pad_id_of, pad_token_lists
    from featuredrift.monitor.kl import summed_kl_attribution

    base, chat = ctx.model("base")[0], ctx.model("chat")[0]
    sequences = [prompt + new for prompt, new in pairs if new]
    spans = [(len(prompt), len(new)) for prompt, new in pairs if new]
    if not sequences:
        raise ValueError("dataset steering: the chat model gave an empty response to every prompt")
    total, kls, count = None, [], 0
    step = max(1, ctx.config.batch_size)
    for start in range(0, len(sequences), step):
        batch = pad_token_lists(sequences[start : start + step], pad_id_of(ctx.tokenizer), "right")
        mask = torch.zeros_like(batch.input_ids, dtype=torch.bool)
        for i, (prompt_len, new_len) in enumerate(spans[start : start + step]):
            mask[i, prompt_len - 1 : prompt_len + new_len - 1] = True  # positions predicting each response token
        logits_chat = capture_activations(chat, *batch, [hookpoint], return_logits=True).logits
        part = summed_kl_attribution(base, batch.input_ids, logits_chat, mask, decoder, hookpoint,
                                     attention_mask=batch.attention_mask, batch_size=step)
        total = part.attribution if total is None else total + part.attribution
        kls.append(part.kl)
        count += part.num_positions
    return total.cpu(), torch.cat(kls).cpu(), count


def degenerate_share(completions: list[str], min_words: int = 6) -> float:
    """Fraction of completions that collapsed into repetition (one word is half of them or more):
    a steered model can lose a behaviour by losing coherence, which is not the same finding."""
    from collections import Counter

    def collapsed(text: str) -> bool:
        words = text.split()
        return len(words) >= min_words and Counter(words).most_common(1)[0][1] * 2 >= len(words)

    return sum(collapsed(c) for c in completions) / len(completions) if completions else 0.0


def _behaviour_judge(markers: list[str] | None):
    from featuredrift.monitor.interventions import refusal_judge

    if not markers:
        return refusal_judge
    wanted = [m.lower() for m in markers]

    def behaviour(instructions, completions):
        return [any(m in c.lower() for m in wanted) for c in completions]

    return behaviour
