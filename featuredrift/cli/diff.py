"""`featuredrift diff …`: the "SAE on activation differences" tools for your own model pair.

* `diff run`: the whole analysis (diff-SAE, KL attribution and dashboards, steering validation,
  hybrid rollouts, dataset-level attribution) as the `replicate` stages `diffsae` and `steering`,
  with a config built from the flags (your texts and prompts; your diff-SAE when you have one);
* `diff steer`: KL attribution at one context and steering the base model with the top latent;
* `diff hybrid`: rollouts of the base/chat hybrid from one context, with and without a latent.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="Diff two models with an SAE on their activation differences.", no_args_is_help=True)

DEFAULT_PROMPTS = Path(__file__).resolve().parents[1] / "monitor" / "data" / "probes"
HELD_OUT = 64  # texts kept out of diff-SAE training


def _fail(error: Exception) -> None:
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, found {text!r}") from None
    if not values:
        raise typer.BadParameter(f"expected at least one number, found {text!r}")
    return values


@app.command("run")
def run_command(
    base: str = typer.Option(..., "--base", help="Base model: a directory, a Hub id or zoo:<size>."),
    chat: str = typer.Option(..., "--chat", help="Its fine-tune (same tokenizer)."),
    hookpoint: str = typer.Option(..., "--hookpoint", help="layers.N: where the diff-SAE reads x_chat − x_base."),
    texts: str = typer.Option(..., "--texts", help="Chat-like texts (.jsonl with messages/text, .txt, zoo:<size>:chat_sft)."),
    out: Path = typer.Option(..., "--out", help="Output folder (stage caches, results.json, report.md/html)."),
    prompts: str = typer.Option(str(DEFAULT_PROMPTS / "harmful.jsonl"), "--prompts",
                                help="The behaviour's prompt set for dataset-level attribution (default: shipped harmful probes)."),
    control: str = typer.Option(str(DEFAULT_PROMPTS / "harmless.jsonl"), "--control", help="Control prompts for positive steering."),
    behaviour: str = typer.Option(None, "--behaviour", help="Comma-separated phrases marking the behaviour (default: refusal phrases)."),
    diff_sae: str = typer.Option(None, "--diff-sae", help="Your diff-SAE (a sparsify SAE directory); default: train one."),
    sae: str = typer.Option(None, "--sae", help="The base model's SAE source (for comparison); default: train a small one."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config field: KEY.PATH=VALUE (see `replicate`)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """The diff-SAE post's analysis for your pair, written like a `replicate` run."""
    from featuredrift.cli.replicate import print_findings
    from featuredrift.replicate.config import ConfigError, deep_merge, load_config, parse_override
    from featuredrift.replicate.pipeline import run_replication

    config = diff_config(base, chat, hookpoint, texts, prompts, control, behaviour, diff_sae, sae)
    try:
        for text in overrides:
            config = deep_merge(config, parse_override(text))
        cfg = load_config(config)
        results = run_replication(cfg, out, stages="steering", progress=not quiet)
    except ConfigError as error:
        typer.echo(f"config error: {error}", err=True)
        raise typer.Exit(2) from None
    print_findings(results, out)


def diff_config(base: str, chat: str, hookpoint: str, texts: str, prompts: str, control: str, behaviour: str | None,
                diff_sae: str | None, sae: str | None) -> dict:
    """A replicate config for the diff-SAE stages of one pair: the first 64 of `texts` are held out
    (activations, high-KL positions), the rest train; the shipped probes give the refusal direction
    the dashboards cite."""
    harmful, harmless = str(DEFAULT_PROMPTS / "harmful.jsonl"), str(DEFAULT_PROMPTS / "harmless.jsonl")
    small = {"num_latents": 4096, "k": 32, "lr": 5e-4, "batch_size": 1024, "num_tokens": 2_000_000,
             "lr_warmup_steps": 50, "dead_feature_threshold": 500_000, "multi_topk": False}
    return {
        "name": "diff", "base_model": base, "chat_model": chat, "hookpoints": [hookpoint], "refusal_hookpoint": hookpoint,
        "data": {
            "base_text_train": f"{texts}[{HELD_OUT}:]", "chat_text_train": f"{texts}[{HELD_OUT}:]",
            "base_text_eval": f"{texts}[:{HELD_OUT}]", "chat_text_eval": f"{texts}[:{HELD_OUT}]",
            "harmful": harmful, "harmless": harmless, "harmful_eval": harmful, "harmless_eval": harmless,
        },
        "sae": {"base": sae, "base_train": small, "chat": False, "train_missing": True},
        "diffsae": {"hookpoint": hookpoint, "sae": diff_sae, "train": {**small, "activation": "batchtopk"}},
        "steering": {"datasets": [{"name": "prompts", "prompts": prompts, "control": control,
                                   "behaviour": [b.strip() for b in behaviour.split(",")] if behaviour else None}]},
    }


@app.command("steer")
def steer_command(
    base: str = typer.Option(..., "--base"),
    chat: str = typer.Option(..., "--chat"),
    diff_sae: str = typer.Option(..., "--diff-sae", help="A sparsify SAE directory trained on x_chat − x_base."),
    hookpoint: str = typer.Option(..., "--hookpoint"),
    text: str = typer.Option(..., "--text", help="The context (rendered text; special tokens as the tokenizer writes them)."),
    positions: int = typer.Option(3, "--positions", help="Highest-KL positions of the text to steer at."),
    scales: str = typer.Option("0.5,1,2,4,8", "--scales", help="λ values (absolute: the decoder rows are unit norm)."),
    device: str = typer.Option(None, "--device"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """At the text's highest-KL positions: the latent of most negative KL attribution, and what
    adding it to the base model does to the KL and to the chat model's token."""
    import torch

    from featuredrift.lm.capture import capture_activations
    from featuredrift.monitor.kl import (
        high_kl_positions,
        kl_attribution,
        most_negative_latents,
        next_token_kl,
    )
    from featuredrift.monitor.steering import steer_positions

    base_model, chat_model, tokenizer, decoder = _load_pair(base, chat, diff_sae, device)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=not _has_bos(tokenizer, text)).input_ids
    logits = {name: capture_activations(m, ids, torch.ones_like(ids), [hookpoint], return_logits=True).logits
              for name, m in (("base", base_model), ("chat", chat_model))}
    kl = next_token_kl(logits["base"], logits["chat"])
    chosen = high_kl_positions(kl, n=positions).index
    attribution = kl_attribution(base_model, ids, logits["chat"], chosen, decoder, hookpoint)
    latents = most_negative_latents(attribution, 1)[:, 0]
    effect = steer_positions(base_model, ids, attribution.log_probs_cur, chosen, decoder[latents.to(decoder.device)].float(),
                             hookpoint, _floats(scales))
    rows = []
    for p in range(len(chosen)):
        t, best = int(chosen[p, 1]), int(effect.best[p])
        rows.append({
            "position": t, "context": tokenizer.decode(ids[0, max(0, t - 12) : t + 1]),
            "base_token": tokenizer.decode([int(effect.top_token[p, 0])]), "chat_token": tokenizer.decode([int(effect.target[p])]),
            "latent": int(latents[p]), "scale": float(effect.scales[best]),
            "kl_before": float(effect.kl[p, 0]), "kl_after": float(effect.kl[p, best]),
            "p_before": float(effect.target_probability[p, 0]), "p_after": float(effect.target_probability[p, best]),
        })
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Steering the base model at {hookpoint} with the top diff-SAE latent")
    for column in ("pos", "context", "base → chat", "latent", "λ", "KL before → after", "P(chat token)"):
        table.add_column(column)
    for r in rows:
        table.add_row(str(r["position"]), repr(r["context"][-40:]), f"{r['base_token']!r} → {r['chat_token']!r}", str(r["latent"]),
                      f"{r['scale']:g}", f"{r['kl_before']:.3f} → {r['kl_after']:.3f}", f"{r['p_before']:.3f} → {r['p_after']:.3f}")
    Console().print(table)


@app.command("hybrid")
def hybrid_command(
    base: str = typer.Option(..., "--base"),
    chat: str = typer.Option(..., "--chat"),
    hookpoint: str = typer.Option(..., "--hookpoint", help="layers.N: the base model's blocks through N, the chat's after."),
    context: str = typer.Option(..., "--context", help="The fixed context (rendered text)."),
    target: str = typer.Option(None, "--target", help="A continuation whose share to report (e.g. ' or concerns')."),
    diff_sae: str = typer.Option(None, "--diff-sae", help="With --latent: steer the hybrid with this SAE's latent."),
    latent: int = typer.Option(None, "--latent"),
    scale: float = typer.Option(1.0, "--scale", help="λ of the latent (absolute)."),
    rollouts: int = typer.Option(1000, "--rollouts"),
    max_new_tokens: int = typer.Option(4, "--max-new-tokens"),
    temperature: float = typer.Option(1.0, "--temperature"),
    top_p: float = typer.Option(1.0, "--top-p"),
    top_k: int = typer.Option(0, "--top-k", help="0: no top-k truncation."),
    seed: int = typer.Option(0, "--seed"),
    continuation_tokens: int = typer.Option(2, "--continuation-tokens"),
    device: str = typer.Option(None, "--device"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Sample rollouts of base, chat, their hybrid and (with --latent) the steered hybrid from one context."""
    from featuredrift.lm.generation import SamplingSettings, sample_rollouts
    from featuredrift.lm.hybrid import base_blocks_through, hybrid_model
    from featuredrift.monitor.interventions import activation_addition
    from featuredrift.monitor.steering import continuation_shares

    if (diff_sae is None) != (latent is None):
        raise typer.BadParameter("expected --diff-sae and --latent together (or neither)")
    base_model, chat_model, tokenizer, decoder = _load_pair(base, chat, diff_sae, device)
    ids = tokenizer(context, add_special_tokens=not _has_bos(tokenizer, context)).input_ids
    settings = SamplingSettings(rollouts, max_new_tokens, temperature, top_p, top_k, seed, min(rollouts, 250))
    hybrid = hybrid_model(base_model, chat_model, base_blocks_through(hookpoint))
    models = {"base": (base_model, None), "chat": (chat_model, None), "hybrid": (hybrid, None)}
    if decoder is not None:
        if not 0 <= latent < decoder.shape[0]:
            _fail(ValueError(f"--latent: expected 0 … {decoder.shape[0] - 1}, found {latent}"))
        models["hybrid + latent"] = (hybrid, decoder[latent].float())
    result = {"settings": settings._asdict(), "target": target, "models": {}}
    for name, (model, vector) in models.items():
        if vector is None:
            found = sample_rollouts(model, tokenizer, ids, settings)
        else:
            with activation_addition(model, hookpoint, vector.to(next(model.parameters()).device), scale):
                found = sample_rollouts(model, tokenizer, ids, settings)
        shares = continuation_shares(found, tokenizer, target=target, tokens=continuation_tokens)
        result["models"][name] = {"target_share": shares.target_share, "top": shares.top}
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"{rollouts} rollouts, temperature {temperature}, top-p {top_p}, top-k {top_k}, seed {seed}")
    for name, entry in result["models"].items():
        share = "" if entry["target_share"] is None else f"{target!r}: {entry['target_share']:.1%}; "
        typer.echo(f"{name:>16}: {share}" + ", ".join(f"{t!r} {s:.0%}" for t, s in entry["top"]))


def _has_bos(tokenizer, text: str) -> bool:
    return bool(tokenizer.bos_token) and text.startswith(tokenizer.bos_token)


def _load_pair(base: str, chat: str, diff_sae: str | None, device: str | None):
    import torch

    from featuredrift.replicate.config import ConfigError
    from featuredrift.replicate.sources import load_model_and_tokenizer
    from featuredrift.sae_store.load import load_sae_dir

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        base_model, _ = load_model_and_tokenizer(base, "base", device=device, dtype="float32")
        chat_model, tokenizer = load_model_and_tokenizer(chat, "chat", device=device, dtype="float32")
        decoder = load_sae_dir(diff_sae, device=device).W_dec.detach() if diff_sae else None
    except (ConfigError, OSError, ValueError) as error:
        _fail(error)
    return base_model, chat_model, tokenizer, decoder
