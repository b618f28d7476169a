"""Why a diff-SAE's best latents may align with the KL-reducing direction no better than the base
SAE's: dictionary size, training budget, BatchTopK vs TopK, and the statistic itself.

For one `featuredrift replicate --preset zoo` output folder (its activations, SAEs and refusal
stages), every row is a dictionary at the zoo's layers.2: the base SAE, the base SAE cut to 256
random latents, random unit dictionaries, and diff-SAEs trained here with the preset's recipe
and one change each. Columns: the first-order alignment `mean_p max_v cos(−∇KL_p, v)` over the
48 highest-KL positions, its chance level (random unit dictionaries of the same size), and the
finite-λ effect the post's step 3 relies on (the mean KL change when the base model is steered
at the 16 highest-KL positions with each position's top latent, at the best common λ).

    SPARSIFY_DISABLE_TRITON=1 .venv/bin/featuredrift replicate --preset zoo --out OUT
    SPARSIFY_DISABLE_TRITON=1 .venv/bin/python tests/scripts/diff_sae_alignment.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from featuredrift import sae_store  # noqa: F401  (Triton guard)
from featuredrift.replicate import stage_diffsae, stage_steering
from featuredrift.replicate.config import load_config
from featuredrift.replicate.context import RunContext
from featuredrift.replicate.sae_training import train_sparse_coder
from featuredrift.replicate.saes import load_stage_saes


def main(out: Path) -> None:
    config = load_config("zoo")
    ctx = RunContext(config=config, out=out)
    for stage in ("activations", "saes", "refusal"):
        ctx.stage_dirs[stage] = out / "stages" / stage
        ctx.results[stage] = json.loads((out / "stages" / stage / "done.json").read_text())["result"]
    hookpoint = config.diff_hookpoint
    texts, special = ctx.texts("chat_text_eval", config.data.max_eval_texts)
    tokens, positions, _, _ = stage_diffsae.high_kl_positions_of(ctx, texts, special, config.diffsae.high_kl_positions)
    base_sae = load_stage_saes(ctx, "base")[hookpoint]
    gradient = stage_diffsae.attribution_at(ctx, tokens, positions, base_sae.W_dec.detach(), hookpoint)[0].gradient.cpu()
    unit = stage_steering.mean_diff_norm(ctx.stage_dirs["activations"], hookpoint)
    scales = [m * unit for m in config.steering.scales]

    def row(name: str, decoder: torch.Tensor, fvu: float | None = None) -> None:
        alignment = stage_diffsae.alignment_of(gradient, decoder)
        chance = stage_diffsae.chance_alignment(gradient, decoder.shape[0], config.seed)
        summary, _ = stage_steering.validate(ctx, tokens, positions[: config.steering.positions], decoder, hookpoint,
                                             scales, unit, name)
        print(f"| {name} | {decoder.shape[0]} | {alignment:.3f} | {chance:.3f} | {alignment - chance:+.3f} | "
              f"{summary['kl_change_at_common_scale']:+.0%} (λ {summary['common_scale']:g}×) | "
              f"{summary['chat_token_probability_at_common_scale']:.2f} | " + ("—" if fvu is None else f"{fvu:.3f}") + " |",
              flush=True)

    print("| dictionary | latents | alignment | chance | excess | KL change at one λ | P(chat token) | final train FVU |")
    print("|---|---|---|---|---|---|---|---|")
    row("base SAE (the zoo's)", base_sae.W_dec.detach())
    subset = torch.randperm(base_sae.num_latents, generator=torch.Generator().manual_seed(config.seed))[:256]
    row("base SAE, 256 random latents", base_sae.W_dec.detach()[subset])
    for seed in (1, 2, 3):
        row(f"random unit dictionary (seed {seed})", stage_steering.random_directions(base_sae.d_in, 256, seed))
    recipe = config.diffsae.train.model_copy(update={"activation": "topk", "num_tokens": 153_600})
    variants = {
        "diff-SAE TopK, 150 steps (the earlier preset)": {},
        "diff-SAE TopK, 600 steps": {"num_tokens": 614_400},
        "diff-SAE TopK, 2,400 steps": {"num_tokens": 2_457_600},
        "diff-SAE TopK, 512 latents, k 16, 150 steps": {"num_latents": 512, "k": 16},
        "diff-SAE TopK, 512 latents, k 16, 600 steps": {"num_latents": 512, "k": 16, "num_tokens": 614_400},
        "diff-SAE BatchTopK, 150 steps": {"activation": "batchtopk"},
        "diff-SAE BatchTopK, 600 steps (the preset)": {"activation": "batchtopk", "num_tokens": 614_400},
        "diff-SAE BatchTopK, 512 latents, k 16, 600 steps": {"activation": "batchtopk", "num_latents": 512, "k": 16,
                                                             "num_tokens": 614_400},
    }
    for name, change in variants.items():
        stream = stage_diffsae.diff_stream(ctx, stage_diffsae.training_texts(ctx), hookpoint)
        sae, summary = train_sparse_coder(stream, base_sae.d_in, recipe.model_copy(update=change), seed=config.seed)
        row(name, sae.W_dec.detach(), summary.final_fvu)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
