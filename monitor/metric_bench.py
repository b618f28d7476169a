"""Cost of one full metric pass relative to the bare probe forward pass, on the zoo.

`metric_pass` runs every drift and refusal metric on cached activations of a reference and a
current model (everything an evaluation does after its forward pass, except generation);
`benchmark_metric_pass` times it against the current model's plain forward pass over the same
probe set. Numbers are printed by `featuredrift bench`, never asserted (shared machines).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from monitor import kl, metrics, refusal


class Readings(NamedTuple):
    """One model's cached outputs on the probe set."""

    text: Tensor  # [N, d] content-token activations at the hookpoint
    harmful: Tensor  # [P, d] last-prompt-token activations
    harmless: Tensor  # [Q, d]
    logits: Tensor  # [N_kl, V] next-token logits at the KL positions


@dataclass
class MetricPassTimings:
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def _timed(timings: MetricPassTimings, name: str, device: torch.device, fn: Callable):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timings.seconds[name] = timings.seconds.get(name, 0.0) + time.perf_counter() - start
    return result


def metric_pass(
    ref: Readings,
    cur: Readings,
    sae,
    *,
    ks: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
    top_n: int = 50,
    tau: float = metrics.DIVERGENCE_THRESHOLD,
    encode_batch_size: int = 4096,
) -> tuple[dict[str, float], MetricPassTimings]:
    """Every metric of one evaluation from both models' readings; returns (values, timings).
    Nothing is cached between the two models: both are encoded, as the worst case."""
    timings = MetricPassTimings()
    device = cur.text.device
    values: dict[str, float] = {}

    def step(name, fn):
        return _timed(timings, name, device, fn)

    codes = {}
    for model_name, readings in (("ref", ref), ("cur", cur)):
        for subset in ("text", "harmful", "harmless"):
            codes[model_name, subset] = step(
                "encode", lambda r=readings, s=subset: metrics.encode_batched(sae, getattr(r, s), encode_batch_size)
            )
    values["fvu_ref"] = float(step("fvu", lambda: metrics.fvu(ref.text, codes["ref", "text"].reconstruction)))
    values["fvu_cur"] = float(step("fvu", lambda: metrics.fvu(cur.text, codes["cur", "text"].reconstruction)))
    scale0 = step("scale", lambda: metrics.activation_scale(ref.text))
    scalet = step("scale", lambda: metrics.activation_scale(cur.text))
    divergent = step("divergence", lambda: metrics.divergent_mask(ref.text, cur.text, tau))
    values["divergent_fraction"] = float(divergent.double().mean())
    if bool(divergent.any()):
        er = step("er", lambda: metrics.explained_ratio(
            ref.text, cur.text, codes["cur", "text"].reconstruction, divergent, scale0, scalet
        ))
        values["er"], values["er_median"] = float(er.ratio), float(er.median)
    ir = step("ir", lambda: metrics.intersection_ratio(
        codes["ref", "text"], codes["cur", "text"], mask=divergent if bool(divergent.any()) else None
    ))
    values["ir_all"] = float(ir.all)
    stats = {
        name: step("feature_stats", lambda n=name: metrics.feature_statistics(
            codes[n, "text"].top_acts, codes[n, "text"].top_indices, sae.num_latents
        ))
        for name in ("ref", "cur")
    }
    step("drift_ranking", lambda: metrics.feature_drift_ranking(
        stats["ref"], stats["cur"], min(top_n, sae.num_latents)
    ))
    for name, readings in (("ref", ref), ("cur", cur)):
        r = step("refusal_direction", lambda rd=readings: refusal.refusal_direction(rd.harmful, rd.harmless))
        dbar = step("diff_in_means", lambda n=name: refusal.feature_diff_in_means(
            codes[n, "harmful"], codes[n, "harmless"], sae.num_latents
        ))
        features = step("top_k", lambda d=dbar: refusal.top_refusal_features(
            d, min(max(ks), sae.num_latents), strict=False
        ))
        for k in ks:
            if 0 < k <= features.numel():
                rec = step("nnls", lambda f=features[:k], rr=r: refusal.reconstruct_direction(sae.W_dec, f, rr))
                values[f"nnls_cos_{name}_k{k}"] = rec.cosine
    summary = step("kl", lambda: kl.kl_summary(ref.logits, cur.logits))
    values["kl_mean"], values["kl_p95"] = float(summary.mean), float(summary.p95)
    return values, timings


def _best_of(repeats: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(repeats))


def benchmark_metric_pass(size: str = "tiny", *, repeats: int = 3, device: str | None = None) -> dict:
    """Time `metric_pass` on the zoo (base = reference, chat = current) against the chat
    model's bare forward pass over the same probe batches. Returns seconds and the ratio."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import sae_store
    from monitor.capture import (
        collect_prompt_activations,
        content_token_mask,
        encode_prompts,
        pad_id_of,
        pad_token_lists,
        tokenize_texts,
    )
    from monitor.probes import read_probe_dir
    from monitor.zoo import ensure_zoo

    zoo = ensure_zoo(size)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokenizer = AutoTokenizer.from_pretrained(zoo.chat)
    reference = AutoModelForCausalLM.from_pretrained(zoo.base).to(device).eval()
    current = AutoModelForCausalLM.from_pretrained(zoo.chat).to(device).eval()
    sae = sae_store.load_sae(zoo.sae, hookpoint=zoo.hookpoint, device=device)
    probes = read_probe_dir(zoo.probes).split("heldout")
    batch_size = 32

    text_batches = [
        tokenize_texts(tokenizer, probes.base_text[i : i + batch_size], max_length=128)
        for i in range(0, len(probes.base_text), batch_size)
    ]
    prompt_batches = []
    for subset in (probes.harmful, probes.harmless):
        encoded = encode_prompts(tokenizer, subset, "chat")
        prompt_batches += [
            pad_token_lists([p.input_ids for p in encoded[i : i + batch_size]], pad_id_of(tokenizer), "left")
            for i in range(0, len(encoded), batch_size)
        ]

    def bare_forward() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for batch in text_batches + prompt_batches:
                current(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    def readings(model) -> Readings:
        texts, logits = [], []
        hidden = {}

        def hook(_m, _a, out):
            hidden["x"] = out[0] if isinstance(out, tuple) else out

        from monitor.hookpoints import resolve_hookpoint

        handle = resolve_hookpoint(model, zoo.hookpoint).register_forward_hook(hook)
        try:
            with torch.inference_mode():
                for batch in text_batches:
                    out = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device))
                    mask = content_token_mask(batch.input_ids, batch.attention_mask, tokenizer).to(device)
                    texts.append(hidden["x"][mask].float())
                    logits.append(out.logits[mask].float())
        finally:
            handle.remove()
        prompts = {
            name: collect_prompt_activations(model, tokenizer, subset, [zoo.hookpoint], batch_size=batch_size)[zoo.hookpoint]
            for name, subset in (("harmful", probes.harmful), ("harmless", probes.harmless))
        }
        return Readings(torch.cat(texts), prompts["harmful"], prompts["harmless"], torch.cat(logits))

    ref, cur = readings(reference), readings(current)
    bare_forward()  # warm-up
    forward_s = _best_of(repeats, bare_forward)
    metric_pass(ref, cur, sae)  # warm-up
    runs = [metric_pass(ref, cur, sae)[1] for _ in range(repeats)]
    best = min(runs, key=lambda t: t.total)
    values, _ = metric_pass(ref, cur, sae)
    return {
        "size": size,
        "device": str(device),
        "tokens": int(cur.text.shape[0]),
        "prompts": int(cur.harmful.shape[0] + cur.harmless.shape[0]),
        "forward_s": forward_s,
        "metric_pass_s": best.total,
        "ratio": best.total / forward_s,
        "stages_s": dict(best.seconds),
        "values": values,
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(benchmark_metric_pass(sys.argv[1] if len(sys.argv) > 1 else "tiny"), indent=2))
