"""The paper's readings: every place where the Feature Drift paper (its text or its code,
avgalichin/FeatureDrifting) can be read more than one way, as a named choice.

Each reading has our default ("ours": what the live monitor and `featuredrift replicate` do
unless told otherwise) and the paper's ("paper": its code where it has code, else its text).
`MonitorConfig` carries the ones that apply to the live monitor; `replicate`'s
`paper_readings` carries all of them. ``paper_readings: paper`` selects every paper choice at
once; the run records the readings it used.
"""

from __future__ import annotations

from typing import NamedTuple


class Reading(NamedTuple):
    name: str
    choices: tuple[str, ...]
    ours: str
    paper: str
    paper_source: str
    """Where the paper's choice is read from."""
    meaning: str
    monitor: bool
    """Whether the live monitor has it (`MonitorConfig.<name>`)."""
    moves: tuple[str, ...]
    """The numbers it can change (replicate stages)."""


READINGS: tuple[Reading, ...] = (
    Reading(
        "scale_reading", ("sigma", "energy", "unit_norm"), "sigma", "unit_norm",
        "code: estimate_scaling_factor (x · √d / mean‖x‖)",
        "ER's per-model normaliser: sigma = ÷√E‖x‖², energy = ÷E‖x‖² (Appx. B's text), unit_norm = ×√d/mean‖x‖",
        True, ("drift",),
    ),
    Reading(
        "er_aggregate", ("ratio_of_sums", "median", "mean"), "ratio_of_sums", "ratio_of_sums",
        "text: Eq. 3, a ratio of two MSEs over the filtered tokens",
        "the headline ER over divergent tokens", True, ("drift",),
    ),
    Reading(
        "token_mask", ("content", "bos_eos"), "content", "bos_eos",
        "text: Appx. A.2 ('all tokens except BOS, EOS')",
        "content: no control, template or first (sink) tokens; bos_eos: only BOS/EOS out", True,
        ("activations", "transfer", "drift", "diffsae", "steering"),
    ),
    Reading(
        "fvu_reading", ("batch", "per_token"), "batch", "per_token",
        "code: _calculate_fvu, per token, then averaged",
        "batch: Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over the token set (sparsify); per_token: each token centred on "
        "its own mean over dimensions, averaged over tokens", True, ("transfer",),
    ),
    Reading(
        "outlier_rule", ("norm", "quantile"), "norm", "quantile",
        "code: notebook cell 9 (chat FVU < q99.8 and MSE < q99.8)",
        "norm: tokens whose base-model norm exceeds sink_norm_ratio × the median are left out; quantile: "
        "tokens at or above the 99.8 % quantile of the chat model's per-token FVU or of MSE(x_chat, x_base)",
        True, ("activations", "transfer", "drift", "diffsae", "steering"),
    ),
    Reading(
        "ir_reading", ("active", "top_min_l0"), "active", "top_min_l0",
        "code: calculate_feature_metrics (k = min(L0_chat, L0_base, 100); empty union = 0)",
        "active: Jaccard of the active (> 0) feature sets, two empty sets = 1; top_min_l0: each side's "
        "min(L0, L0', 100) largest features, two empty sets = 0", True, ("drift",),
    ),
    Reading(
        "refusal_feature_reading", ("positive", "top_k"), "positive", "top_k",
        "code: notebook cell 13 (diff_in_means.topk(k))",
        "positive: the k largest positive entries of d̄ (fewer when fewer are positive); top_k: the literal "
        "top-k of d̄, whatever its sign", True, ("refusal", "interventions"),
    ),
    Reading(
        "decoder_norm", ("as_trained", "folded"), "as_trained", "folded",
        "code: notebook cell 6 (sae.fold_W_dec_norm() before the diff-in-means)",
        "folded: codes scaled by their decoder row norms before d̄ (a no-op for unit-norm sparsify "
        "decoders, not for Gemma Scope's)", True, ("refusal", "interventions"),
    ),
    Reading(
        "refusal_direction", ("last_token", "arditi"), "last_token", "last_token",
        "text: §5 Setup (the last token before the response, the middle layer)",
        "last_token: at the readout token and the refusal hookpoint; arditi: Arditi et al.'s selection "
        "over post-instruction positions and the hookpoints", False, ("refusal", "interventions"),
    ),
    Reading(
        "base_prompt", ("instruction", "chat_template", "auto"), "instruction", "instruction",
        "text: §5 Setup and Appx. C.2 ('{instruction}\\n{response}', read at the '\\n')",
        "how the base model reads refusal prompts: '{instruction}\\n', the chat template, or the template "
        "when its tokenizer has one (the live monitor reads both models alike: `prompt_format`)",
        False, ("refusal", "interventions"),
    ),
    Reading(
        "ablation_reading", ("unit", "unnormalised"), "unit", "unnormalised",
        "text: Eq. 5 as printed (x ← x − r_k r_kᵀx)",
        "unit: x ← x − û ûᵀx (a projection); unnormalised: x ← x − r (rᵀx) with the reconstruction itself",
        False, ("interventions",),
    ),
)
READING_NAMES = tuple(r.name for r in READINGS)
SIDES = ("ours", "paper")


def reading(name: str) -> Reading:
    for r in READINGS:
        if r.name == name:
            return r
    raise KeyError(f"unknown paper reading {name!r}: expected one of {READING_NAMES}")


def readings_of(side: str, *, monitor: bool = False) -> dict[str, str]:
    """Every reading's value on one side ('ours' or 'paper'); `monitor` keeps the live monitor's."""
    if side not in SIDES:
        raise ValueError(f"paper_readings: expected one of {SIDES} or a mapping of readings, found {side!r}")
    return {r.name: getattr(r, side) for r in READINGS if r.monitor or not monitor}


def side_of(values: dict[str, str]) -> str:
    """'ours', 'paper' or 'mixed': which side a set of reading values is on."""
    for side in SIDES:
        if all(values.get(r.name, getattr(r, side)) == getattr(r, side) for r in READINGS):
            return side
    return "mixed"
