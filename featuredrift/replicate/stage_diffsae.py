"""Stage `diffsae` (the "SAE on activation differences" post): a TopK SAE trained on
``x_chat − x_base`` (same tokens) at one hookpoint; the highest-KL positions of chat-like text
(``KL(p_base ‖ p_chat)`` of the next token); KL attribution of every diff-SAE latent there
(``(∇KL) · v`` on the base model); KL dashboards of the latents most often among the three most
negative attributions; and the same attribution with the base SAE's latents for comparison."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator

import torch
from torch import Tensor

from featuredrift.replicate.context import RunContext
from featuredrift.replicate.saes import load_stage_saes
from featuredrift.replicate.shards import iter_paired
from featuredrift.replicate.stage_refusal import DIRECTIONS_FILE

MEMORY_CACHE_BYTES = 1 << 30


def diff_stream(ctx: RunContext, texts: list[tuple[str, bool]], hookpoint: str) -> Iterator[Tensor]:
    """Endless shuffled batches of ``x_chat − x_base`` on the training texts; the first epoch is
    kept in memory when it fits, so later epochs cost no forward pass."""
    from featuredrift.lm.capture import collect_token_activations

    cfg = ctx.config
    rng = random.Random(cfg.seed)
    cache: list[Tensor] = []
    cacheable, held = True, 0
    while True:
        if cache and cacheable:
            order = list(range(len(cache)))
            rng.shuffle(order)
            yield from (cache[i] for i in order)
            continue
        starts = list(range(0, len(texts), cfg.batch_size))
        rng.shuffle(starts)
        for start in starts:
            batch = texts[start : start + cfg.batch_size]
            diffs = []
            for special in (False, True):
                group = [t for t, s in batch if s == special]
                if not group:
                    continue
                base, chat = (
                    collect_token_activations(
                        ctx.model(role)[0], ctx.tokenizer, group, [hookpoint], batch_size=cfg.batch_size,
                        max_length=cfg.data.max_length, add_special_tokens=not special,
                    ).activations[hookpoint].float()
                    for role in ("base", "chat")
                )
                diffs.append(chat - base)
            diff = torch.cat(diffs)
            if cacheable:
                cache.append(diff.cpu())
                held += diff.numel() * 4
                cacheable = held <= MEMORY_CACHE_BYTES
            yield diff
        if not cacheable:
            cache = []


def training_texts(ctx: RunContext) -> list[tuple[str, bool]]:
    cfg = ctx.config
    out = []
    for field_name in ("base_text_train", "chat_text_train"):
        texts, special = ctx.texts(field_name, cfg.data.max_train_texts)
        out.extend((t, special) for t in texts)
    return out


def _held_out_fvu(sae, folder, hookpoint: str, device) -> dict:
    from featuredrift.monitor.metrics import encode_batched
    from featuredrift.replicate.streaming import FvuSum, MomentSum

    result = {}
    for data in ("base", "chat"):
        moments = MomentSum()
        for x_base, x_chat, _ in iter_paired(folder, data, hookpoint):
            moments.add(x_chat - x_base)
        total = FvuSum(moments.mean)
        for x_base, x_chat, _ in iter_paired(folder, data, hookpoint):
            diff = (x_chat - x_base).to(device)
            total.add(diff, encode_batched(sae, diff).reconstruction.float())
        result[data] = total.value
    return result


def high_kl_positions_of(ctx: RunContext, texts: list[str], special: bool, n: int):
    """Tokenised texts and the n highest-KL (text, position) pairs over them."""
    from featuredrift.lm.capture import capture_activations, content_token_mask, tokenize_texts
    from featuredrift.monitor.kl import next_token_kl

    cfg = ctx.config
    hookpoint = ctx.config.hookpoints[0]
    tokens = tokenize_texts(ctx.tokenizer, texts, max_length=cfg.data.max_length, add_special_tokens=not special)
    content = content_token_mask(tokens.input_ids, tokens.attention_mask, ctx.tokenizer)
    predicts_content = torch.zeros_like(content)
    predicts_content[:, :-1] = content[:, 1:]
    kl = torch.zeros(tokens.input_ids.shape, dtype=torch.float32)
    for start in range(0, len(texts), cfg.batch_size):
        rows = slice(start, start + cfg.batch_size)
        logits = {
            role: capture_activations(
                ctx.model(role)[0], tokens.input_ids[rows], tokens.attention_mask[rows], [hookpoint], return_logits=True
            ).logits
            for role in ("base", "chat")
        }
        kl[rows] = next_token_kl(logits["base"], logits["chat"]).float().cpu()
    kl = torch.where(predicts_content, kl, 0.0)
    flat = kl.flatten()
    n = min(n, int(predicts_content.sum()))
    values, index = flat.topk(n)
    positions = torch.stack(torch.unravel_index(index, kl.shape), dim=-1)
    mean_kl = float(kl[predicts_content].double().mean())
    return tokens, positions, values, mean_kl


def attribution_at(ctx: RunContext, tokens, positions: Tensor, decoder: Tensor, hookpoint: str):
    """kl_attribution over only the rows that hold a chosen position, a few rows at a time (the
    chat logits of a row are recomputed and never held for all rows). Positions in the result
    index `rows` (the returned list of text indices)."""
    from featuredrift.lm.capture import capture_activations
    from featuredrift.monitor.kl import KLAttribution, kl_attribution

    rows = sorted(set(positions[:, 0].tolist()))
    remap = {r: i for i, r in enumerate(rows)}
    local = torch.tensor([[remap[int(r)], int(t)] for r, t in positions.tolist()], dtype=torch.long)
    step = max(1, ctx.config.batch_size)
    parts = []
    for first in range(0, len(rows), step):
        group = rows[first : first + step]
        chosen = (local[:, 0] >= first) & (local[:, 0] < first + len(group))
        if not bool(chosen.any()):
            continue
        input_ids, attention = tokens.input_ids[group], tokens.attention_mask[group]
        logits_chat = capture_activations(ctx.model("chat")[0], input_ids, attention, [hookpoint], return_logits=True).logits
        shifted = local[chosen] - torch.tensor([first, 0])
        part = kl_attribution(
            ctx.model("base")[0], input_ids, logits_chat, shifted, decoder, hookpoint,
            attention_mask=attention, batch_size=ctx.config.batch_size,
        )
        parts.append(part._replace(positions=part.positions + torch.tensor([first, 0])))
    merged = KLAttribution(*(torch.cat([getattr(p, f) for p in parts]) for f in KLAttribution._fields))
    return merged, rows


def _alignment(result) -> float:
    """Mean over positions of max_v cos(−∇KL, v) with unit-norm decoder rows: how well the
    dictionary's best latent points along the KL-reducing direction."""
    gradient_norm = result.gradient.norm(dim=1).clamp_min(1e-12)
    return float((-(result.attribution.min(dim=1).values) / gradient_norm).mean())


CHANCE_DRAWS = 16


def alignment_of(gradient: Tensor, decoder: Tensor) -> float:
    """`_alignment` for any dictionary (rows normalised here) from the positions' ∇KL."""
    g = gradient.double() / gradient.double().norm(dim=1, keepdim=True).clamp_min(1e-12)
    rows = decoder.double().to(g.device)
    rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return float((-(g @ rows.T)).max(dim=1).values.mean())


def chance_alignment(gradient: Tensor, num_latents: int, seed: int) -> float:
    """The alignment random unit dictionaries of `num_latents` rows reach (mean of a few draws):
    the max over M latents of a cosine grows with M, so this is the baseline a dictionary's
    alignment must be read against."""
    generator = torch.Generator().manual_seed(seed)
    draws = [alignment_of(gradient, torch.randn(num_latents, gradient.shape[1], generator=generator))
             for _ in range(CHANCE_DRAWS)]
    return sum(draws) / len(draws)


def equal_size_alignment(gradient: Tensor, decoder: Tensor, num_latents: int, seed: int) -> float:
    """The alignment of random `num_latents`-row subsets of `decoder` (mean of a few draws)."""
    if num_latents >= decoder.shape[0]:
        return alignment_of(gradient, decoder)
    generator = torch.Generator().manual_seed(seed)
    draws = [alignment_of(gradient, decoder[torch.randperm(decoder.shape[0], generator=generator)[:num_latents]])
             for _ in range(CHANCE_DRAWS)]
    return sum(draws) / len(draws)


def run(ctx: RunContext, folder) -> dict:
    from featuredrift.monitor.kl import kl_dashboard, most_negative_latents
    from featuredrift.replicate.sae_training import train_sparse_coder

    cfg = ctx.config
    hookpoint = cfg.diff_hookpoint
    settings = cfg.diffsae
    d_in = ctx.model("base")[0].config.get_text_config().hidden_size
    if settings.sae:  # a diff-SAE trained elsewhere (the post's, yours): analysed, not trained
        from featuredrift.sae_store.load import load_sae_dir

        sae = load_sae_dir(settings.sae, device=ctx.device)
        if sae.d_in != d_in:
            from featuredrift.replicate.config import ConfigError

            raise ConfigError(f"diffsae.sae: expected an SAE of the models' hidden size {d_in}, found d_in={sae.d_in}")
        summary = {"loaded": str(settings.sae), "steps": 0, "tokens": 0}
    else:
        stream = diff_stream(ctx, training_texts(ctx), hookpoint)
        sae, trained = train_sparse_coder(stream, d_in, settings.train, device=ctx.device, seed=cfg.seed)
        summary = trained._asdict()
    sae.save_to_disk(folder / "diff_sae" / hookpoint)
    held_out = _held_out_fvu(sae, ctx.stage_dirs["activations"], hookpoint, ctx.device)

    texts, special = ctx.texts("chat_text_eval", cfg.data.max_eval_texts)
    tokens, positions, kl_values, mean_kl = high_kl_positions_of(ctx, texts, special, settings.high_kl_positions)
    base_sae = load_stage_saes(ctx, "base")[hookpoint]
    diff_result, rows = attribution_at(ctx, tokens, positions, sae.W_dec.detach(), hookpoint)
    base_result, _ = attribution_at(ctx, tokens, positions, base_sae.W_dec.detach(), hookpoint)

    top3 = most_negative_latents(diff_result, min(3, sae.num_latents))
    counts = Counter(top3.flatten().tolist())
    mean_attr = diff_result.attribution.mean(0)
    ranked = sorted(counts, key=lambda j: (-counts[j], float(mean_attr[j])))[: settings.top_latents]
    refusal_direction = None
    if "refusal" in ctx.stage_dirs and (ctx.stage_dirs["refusal"] / DIRECTIONS_FILE).is_file():
        from safetensors.torch import load_file

        refusal_direction = load_file(str(ctx.stage_dirs["refusal"] / DIRECTIONS_FILE))["true"]
    latents = []
    for latent in ranked:
        dashboard = kl_dashboard(
            diff_result, latent, top_rank=3, num_up=settings.dashboard_tokens,
            num_down=settings.dashboard_tokens, tokenizer=ctx.tokenizer,
        )[: settings.dashboard_rows]
        entry = {
            "latent": int(latent),
            "top3_count": counts[latent],
            "mean_attribution": float(mean_attr[latent]),
            "dashboard": [_dashboard_row(row, rows, tokens, ctx.tokenizer) for row in dashboard],
        }
        if refusal_direction is not None and refusal_direction.shape[0] == d_in:
            entry["refusal_cosine"] = float(
                torch.nn.functional.cosine_similarity(sae.W_dec[latent].detach().cpu().float(), refusal_direction.float(), dim=0)
            )
        latents.append(entry)
    return {
        "hookpoint": hookpoint,
        "training": summary,
        "held_out_fvu": held_out,
        "mean_kl": mean_kl,
        "high_kl": {"positions": len(kl_values), "mean": float(kl_values.mean()), "max": float(kl_values.max())},
        "alignment": {"diff_sae": _alignment(diff_result), "base_sae": _alignment(base_result)},
        # What the alignment has to be read against: chance at each size, and the base SAE at the diff-SAE's size.
        "alignment_chance": {"diff_sae": chance_alignment(diff_result.gradient.cpu(), sae.num_latents, cfg.seed),
                             "base_sae": chance_alignment(diff_result.gradient.cpu(), base_sae.num_latents, cfg.seed)},
        "alignment_base_sae_at_diff_size": equal_size_alignment(diff_result.gradient.cpu(), base_sae.W_dec.detach().cpu(),
                                                                sae.num_latents, cfg.seed),
        "num_latents": {"diff_sae": sae.num_latents, "base_sae": base_sae.num_latents},
        "min_attribution_mean": {
            "diff_sae": float(diff_result.attribution.min(dim=1).values.mean()),
            "base_sae": float(base_result.attribution.min(dim=1).values.mean()),
        },
        "top_latents": latents,
    }


def _dashboard_row(row, rows: list[int], tokens, tokenizer) -> dict:
    text_row = rows[row.row]
    ids = tokens.input_ids[text_row][tokens.attention_mask[text_row].bool()].tolist()
    context = tokenizer.decode(ids[max(0, row.position - 15) : row.position + 1], skip_special_tokens=False)
    return {
        "text": text_row,
        "position": row.position,
        "context": context,
        "kl": row.kl,
        "attribution": row.attribution,
        "rank": row.rank,
        "change": [row.top_ref.token, row.top_cur.token],
        "upweighted": [[s.token, s.value] for s in row.upweighted],
        "downweighted": [[s.token, s.value] for s in row.downweighted],
    }
