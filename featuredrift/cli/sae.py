"""`featuredrift sae …` commands."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="Inspect and train sparse autoencoders.", no_args_is_help=True)


def _fail(err: Exception) -> None:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command()
def inspect(
    source: str = typer.Argument(..., help="A sparsify or SAELens SAE directory, a Hub id or zoo:<size>."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Show config, fingerprint, sizes and decoder-norm statistics of every hookpoint's SAE."""
    import contextlib
    import sys

    from featuredrift.sae_store.validate import SaeError

    # sparsify prints its decoder choice when first loaded (here, or by a SAELens load): not on stdout.
    with contextlib.redirect_stdout(sys.stderr):
        from featuredrift.sae_store.summary import summarize_source

        try:
            summaries = summarize_source(source)
        except SaeError as err:
            _fail(err)
    if as_json:
        typer.echo(json.dumps([s.as_dict() for s in summaries], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"SAEs in {source}")
    table.add_column("")
    for s in summaries:
        table.add_column(s.hookpoint)
    rows = {
        "path": lambda s: s.path,
        "d_in": lambda s: str(s.d_in),
        "num_latents": lambda s: f"{s.num_latents:,}",
        "k": lambda s: "—" if s.k is None else str(s.k),
        "activation": lambda s: s.activation + (" + multi-TopK" if s.multi_topk else ""),
        "unit-norm decoder": lambda s: str(s.normalize_decoder),
        "dtype": lambda s: s.dtype,
        "size": lambda s: f"{s.weights_bytes / 2**20:.2f} MiB",
        "parameters": lambda s: f"{s.num_parameters:,}",
        "‖W_dec‖ min": lambda s: f"{s.decoder_norm_min:.4f}",
        "‖W_dec‖ mean": lambda s: f"{s.decoder_norm_mean:.4f}",
        "‖W_dec‖ max": lambda s: f"{s.decoder_norm_max:.4f}",
        "sha256": lambda s: s.fingerprint,
    }
    for label, render in rows.items():
        table.add_row(label, *(render(s) for s in summaries))
    Console().print(table)


def _load_model(spec: str, device: str | None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec.startswith("zoo:"):
        from featuredrift.zoo import ensure_zoo

        spec = str(ensure_zoo(spec[len("zoo:"):]).base)
    tokenizer = AutoTokenizer.from_pretrained(spec)
    model = AutoModelForCausalLM.from_pretrained(spec, dtype="auto")
    if device:
        model = model.to(device)
    return model, tokenizer


# Defaults of `train` when neither an option nor --paper-preset sets them.
TRAIN_DEFAULTS = dict(num_latents=4096, k=32, batch_size=8, lr=None, optimizer="adam", lr_warmup_steps=0)


@app.command()
def train(
    model: str = typer.Option(..., "--model", help="Model directory, Hub id or zoo:<size>."),
    data: str = typer.Option(..., "--data", help="Training text: .jsonl (field 'text'), .txt, .csv or hf:NAME:SPLIT:COLUMN."),
    hookpoint: list[str] = typer.Option(..., "--hookpoint", help="layers.N (repeat for several)."),
    out: Path = typer.Option(Path("sae"), "--out", help="Output directory (sparsify layout: OUT/layers.N/)."),
    num_latents: int | None = typer.Option(None, "--num-latents", help="Latents per SAE \\[default: 4096]."),
    k: int | None = typer.Option(None, "--k", help="Active latents per token \\[default: 32]."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Sequences per step \\[default: 8]."),
    ctx_len: int = typer.Option(256, "--ctx-len", help="Tokens per sequence."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Stop reading data after this many tokens."),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate \\[default: sparsify's, scaled by latents]."),
    optimizer: str | None = typer.Option(None, "--optimizer", help="adam, signum or muon \\[default: adam]."),
    warmup: int | None = typer.Option(None, "--warmup", help="Adam warm-up steps \\[default: 0]."),
    text_field: str = typer.Option("text", "--text-field", help="JSONL/CSV field holding the text."),
    paper_preset: bool = typer.Option(
        False, "--paper-preset", help="Paper hyperparameters (Appx. A.2); options given explicitly still win."
    ),
    device: str | None = typer.Option(None, "--device"),
    seed: int = typer.Option(0, "--seed"),
    wandb: bool = typer.Option(False, "--wandb/--no-wandb", help="Log to Weights & Biases."),
) -> None:
    """Train TopK SAEs on a model's residual stream with sparsify's trainer."""
    from featuredrift import sae_store  # noqa: F401
    from featuredrift.monitor.probes import ProbeError
    from featuredrift.sae_store.train import PAPER_PRESET, train_sae
    from featuredrift.sae_store.validate import SaeError

    options = dict(TRAIN_DEFAULTS)
    if paper_preset:
        options.update(PAPER_PRESET.train_kwargs(ctx_len))
        options.pop("ctx_len")
    given = dict(num_latents=num_latents, k=k, batch_size=batch_size, lr=lr, optimizer=optimizer, lr_warmup_steps=warmup)
    options.update({name: value for name, value in given.items() if value is not None})
    try:
        lm, tokenizer = _load_model(model, device)
        texts = _training_texts(data, text_field, tokenizer)
        result = train_sae(
            lm, tokenizer, texts, hookpoint, out_dir=out, ctx_len=ctx_len, max_tokens=max_tokens,
            seed=seed, log_to_wandb=wandb, **options,
        )
    except (ProbeError, SaeError) as err:
        _fail(err)
    for h in result.sae_dirs:
        typer.echo(
            f"{h}: FVU {result.initial_fvu[h]:.4f} → {result.final_fvu[h]:.4f} "
            f"({result.num_tokens:,} tokens, {result.num_steps} steps) → {result.sae_dirs[h]}"
        )
        for warning in training_warnings(result.num_steps, result.final_fvu[h]):
            typer.secho(f"warning: {h}: {warning}", fg=typer.colors.YELLOW, err=True)


MIN_TRAINING_STEPS = 100


def training_warnings(num_steps: int, final_fvu: float) -> list[str]:
    """What makes a freshly trained SAE unfit to monitor with, in words."""
    warnings = []
    if num_steps < MIN_TRAINING_STEPS:
        warnings.append(f"only {num_steps} training steps (expected at least {MIN_TRAINING_STEPS}): give it more text")
    if final_fvu >= 1.0:
        warnings.append(f"FVU {final_fvu:.3f} ≥ 1: it reconstructs worse than the mean; it cannot be used to monitor")
    return warnings


def _training_texts(spec: str, field: str, tokenizer) -> list[str]:
    """Texts from --data; a JSONL of chat `messages` (the project's own SFT format) is rendered
    with the model's chat template."""
    from featuredrift.monitor.probes import load_instructions, read_conversation_file

    path = Path(spec)
    if path.suffix == ".jsonl" and path.is_file():
        with open(path, encoding="utf-8") as handle:
            first = next((line for line in handle if line.strip()), "")
        if '"messages"' in first and f'"{field}"' not in first:
            from featuredrift.lm.prompts import render_conversation

            return [render_conversation(tokenizer, messages) for messages in read_conversation_file(path)]
    return load_instructions(spec, field=field)
