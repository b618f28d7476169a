"""Load the SAEs the `saes` stage recorded (base, chat) as frozen sparsify `SparseCoder`s."""

from __future__ import annotations


def load_stage_saes(ctx, which: str) -> dict:
    """hookpoint → SparseCoder for `which` in ('base', 'chat'), on the run's device."""
    from featuredrift.sae_store.load import load_sae_dir

    entries = ctx.results["saes"][which]
    return {h: load_sae_dir(e["path"], device=ctx.device) for h, e in entries.items()}
