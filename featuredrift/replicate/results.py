"""results.json: every number of the replication, its provenance, and the paper's qualitative
findings checked against them. `validate_results` checks a results dict against its schema
version (pydantic), so consumers can rely on the layout."""

from __future__ import annotations

import math
import platform
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from featuredrift.replicate.config import STAGES, ReplicateConfig

SCHEMA_VERSION = 1


class StageTiming(BaseModel):
    seconds: float
    cached: bool
    key: str


class Finding(BaseModel):
    id: str
    claim: str
    holds: bool | None = Field(
        description="None when the stage it needs did not run, had no data, or the difference is within its tolerance."
    )
    evidence: str


class Provenance(BaseModel):
    model_config = ConfigDict(extra="allow")
    models: dict[str, str]
    model_shape: dict[str, int]
    saes: dict[str, dict[str, Any]]
    data: dict[str, Any]
    paper_readings: dict[str, str]
    seed: int
    device: str
    packages: dict[str, str]
    timings: dict[str, StageTiming]
    total_seconds: float


class ReadingEffect(BaseModel):
    """How far flipping one paper reading (to its other side) moves the headline numbers."""

    reading: str
    this_run: str
    flipped: str
    moves: list[str]
    numbers: list[dict[str, Any]]  # {"metric", "this_run", "flipped", "delta"}
    error: str | None = None


class ResultsV1(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: int = Field(SCHEMA_VERSION, ge=SCHEMA_VERSION, le=SCHEMA_VERSION)
    name: str
    selected_stages: list[str]
    config: dict[str, Any]
    provenance: Provenance
    findings: list[Finding]
    stages: dict[str, dict[str, Any]]
    reading_effects: list[ReadingEffect] | None = None


def validate_results(results: dict) -> ResultsV1:
    """Raise (pydantic ValidationError) unless `results` matches schema version 1."""
    version = results.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(f"results.json: expected schema_version {SCHEMA_VERSION}, found {version!r}")
    parsed = ResultsV1.model_validate(results)
    unknown = set(parsed.stages) - set(STAGES)
    if unknown:
        raise ValueError(f"results.json: unknown stages {sorted(unknown)}")
    return parsed


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("featuredrift", "torch", "transformers", "eai-sparsify", "numpy", "scipy", "datasets"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def build_results(config: ReplicateConfig, identities: dict, records, selected: list[str], total_seconds: float) -> dict:
    import torch

    stages = {r.name: r.result for r in records}
    saes = stages.get("saes", {})
    provenance = {
        "models": {"base": identities["base"], "chat": identities["chat"]},
        "model_shape": identities["shape"],
        "saes": {
            kind: {h: {"path": e["path"], "fingerprint": e["fingerprint"], "trained_here": e["trained_here"]} for h, e in saes.get(kind, {}).items()}
            for kind in ("base", "chat")
        },
        "data": config.data.model_dump(),
        # The paper's ambiguities as this run read them (the live monitor records the same names).
        "paper_readings": config.paper_readings.model_dump(),
        "paper_readings_side": config.paper_readings.side,
        "seed": config.seed,
        "device": config.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        "packages": package_versions(),
        "timings": {r.name: {"seconds": r.seconds, "cached": r.cached, "key": r.key} for r in records},
        "total_seconds": total_seconds,
    }
    results = {
        "schema_version": SCHEMA_VERSION,
        "name": config.name,
        "selected_stages": selected,
        "config": config.model_dump(mode="json"),
        "provenance": provenance,
        "findings": [f.model_dump() for f in findings(stages)],
        "stages": stages,
    }
    return _finite(results)


def _finite(value):
    """NaN/inf are not JSON: store them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# ------------------------------------------------------------------------------ findings


# A claim "x is lower than y" holds only beyond these margins; inside them the run cannot tell.
RELATIVE_TOLERANCE = 0.02  # for FVU and alignment cosines
RATE_TOLERANCE = 0.05  # for safety and refusal scores (fractions of prompts)


def lower(x: float, y: float, *, relative: float | None = None, absolute: float | None = None) -> bool | None:
    """True when x < y beyond the margin, False when x > y beyond it, None inside it (or NaN)."""
    if x is None or y is None or math.isnan(x) or math.isnan(y):
        return None
    margin = absolute if absolute is not None else (relative or 0.0) * max(abs(x), abs(y))
    if x < y - margin:
        return True
    if x > y + margin:
        return False
    return None


def _all(verdicts: list[bool | None]) -> bool | None:
    """False if any claim fails, None if any is inconclusive, else True."""
    if any(v is False for v in verdicts):
        return False
    return None if any(v is None for v in verdicts) or not verdicts else True


def findings(stages: dict) -> list[Finding]:
    """The paper's qualitative claims, each checked on this run's numbers with a tolerance:
    a difference inside it is reported as inconclusive (holds = None), not as holds/does not."""
    out = []
    transfer = stages.get("transfer")
    if transfer:
        rows = transfer["hookpoints"]
        gaps = {h: r["base_sae"]["C-LLM+C-Data"] - r["base_sae"]["B-LLM+B-Data"] for h, r in rows.items()}
        out.append(Finding(
            id="transfer",
            claim="Base SAEs transfer to the chat model: FVU on C-LLM+C-Data stays within 0.15 of B-LLM+B-Data (§3.2).",
            holds=all(g <= 0.15 for g in gaps.values()),
            evidence=", ".join(f"{h}: ΔFVU={g:+.3f}" for h, g in gaps.items()),
        ))
        ceilings = {h: (r["chat_sae"]["C-LLM+C-Data"], r["base_sae"]["C-LLM+C-Data"]) for h, r in rows.items() if "chat_sae" in r}
        if ceilings:
            out.append(Finding(
                id="chat_sae_ceiling",
                claim="Chat SAEs reconstruct chat activations better than base SAEs (the ceiling, Fig. 1).",
                holds=_all([lower(c, b, relative=RELATIVE_TOLERANCE) for c, b in ceilings.values()]),
                evidence=", ".join(f"{h}: chat {c:.3f} vs base {b:.3f}" for h, (c, b) in ceilings.items()),
            ))
    drift = stages.get("drift")
    if drift:
        ers = {h: r["base"]["explained_ratio"] for h, r in drift["hookpoints"].items()}
        known = {h: v for h, v in ers.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
        out.append(Finding(
            id="explained_ratio_below_one",
            claim="ER < 1 at every layer: the base SAE explains chat activations better than base activations do (§4).",
            holds=all(v < 1 for v in known.values()) if known else None,
            evidence=", ".join(f"{h}: ER={v:.3f}" for h, v in known.items()) or "no divergent tokens",
        ))
        irs = {h: r["base"]["intersection_ratio_divergent"] for h, r in drift["hookpoints"].items()}
        known_ir = {h: v for h, v in irs.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
        out.append(Finding(
            id="intersection_ratio_low",
            claim="Different features fire on divergent token pairs: IR < 0.5 (§4 reports 0.1–0.5).",
            holds=all(v < 0.5 for v in known_ir.values()) if known_ir else None,
            evidence=", ".join(f"{h}: IR={v:.3f}" for h, v in known_ir.items()) or "no divergent tokens",
        ))
    refusal = stages.get("refusal")
    if refusal and refusal["table"]:
        last = refusal["table"][-1]
        better = sum(row["chat"]["cosine"] > row["base"]["cosine"] for row in refusal["table"])
        out.append(Finding(
            id="chat_features_reconstruct_better",
            claim="Chat-model refusal features reconstruct the refusal direction better than base-model ones (Table 1).",
            holds=last["chat"]["cosine"] > last["base"]["cosine"] and last["chat"]["nmse"] < last["base"]["nmse"],
            evidence=(
                f"k={last['k']}: cos chat {last['chat']['cosine']:.3f} vs base {last['base']['cosine']:.3f}, "
                f"NMSE chat {last['chat']['nmse']:.3f} vs base {last['base']['nmse']:.3f}; "
                f"chat higher cos at {better}/{len(refusal['table'])} k"
            ),
        ))
    interventions = stages.get("interventions")
    if interventions:
        rows = {(r["source"], r["k"]): r for r in interventions["rows"]}
        scored_ks = sorted({r["k"] for r in interventions["rows"] if r["k"] and r["safety_score"] is not None})
        none = rows[("none", None)]
        if scored_ks:
            k = scored_ks[-1]
            base, chat = rows.get(("base", k)), rows.get(("chat", k))
            if base and chat and base["safety_score"] is not None and chat["safety_score"] is not None:
                out.append(Finding(
                    id="chat_ablation_lowers_safety_more",
                    claim="Ablating the chat-feature reconstruction lowers the safety score more than the base-feature one (Fig. 2).",
                    holds=lower(chat["safety_score"], base["safety_score"], absolute=RATE_TOLERANCE),
                    evidence=(
                        f"k={k}: safety chat {chat['safety_score']:.2f} vs base {base['safety_score']:.2f} "
                        f"(no intervention {none['safety_score']:.2f}, judge {interventions['judge']})"
                    ),
                ))
                out.append(Finding(
                    id="addition_induces_refusal",
                    claim="Adding the chat-feature reconstruction induces refusal on harmless prompts (Fig. 2).",
                    holds=lower(none["refusal_score"], chat["refusal_score"], absolute=RATE_TOLERANCE),
                    evidence=(
                        f"k={k}: refusal chat {chat['refusal_score']:.2f} vs none {none['refusal_score']:.2f} "
                        f"(base features {base['refusal_score']:.2f})"
                    ),
                ))
        true = rows.get(("true", None))
        if true:
            out.append(Finding(
                id="true_direction_mediates_refusal",
                claim="The true refusal direction mediates refusal: ablation lowers safety, addition raises refusal (Arditi et al.).",
                holds=true["safety_score"] < none["safety_score"] and true["refusal_score"] > none["refusal_score"],
                evidence=(
                    f"safety {none['safety_score']:.2f} → {true['safety_score']:.2f}, "
                    f"refusal {none['refusal_score']:.2f} → {true['refusal_score']:.2f}"
                ),
            ))
    diffsae = stages.get("diffsae")
    if diffsae:
        a = diffsae["alignment"]
        chance = diffsae.get("alignment_chance")
        extra = (f"; random unit dictionaries of the same sizes: {chance['diff_sae']:.3f} and {chance['base_sae']:.3f}"
                 if chance else "")
        out.append(Finding(
            id="diff_sae_latents_explain_kl",
            claim="Diff-SAE latents align better with KL-reducing directions than base-SAE latents (the post).",
            holds=lower(a["base_sae"], a["diff_sae"], relative=RELATIVE_TOLERANCE),
            evidence=f"mean best cos(−∇KL, v): diff-SAE {a['diff_sae']:.3f} vs base SAE {a['base_sae']:.3f}{extra}",
        ))
    steering = stages.get("steering")
    if steering:
        out += steering_findings(steering)
    return out


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def steering_findings(steering: dict) -> list[Finding]:
    """The post's causal claims, each with the post's number beside ours."""
    out = []
    post = steering["post"]
    v = steering["validation"]
    diff, base, random = v["diff_sae"], v["base_sae"], v["random"]
    out.append(Finding(
        id="steering_lowers_kl",
        claim="Steering the base model with a position's top diff-SAE latent moves it to the chat model there: KL "
              f"falls and the chat token's probability rises (the post: KL {post['kl_change']:+.0%}, P(chat token) "
              f"{post['chat_token_probability_after']}), more than a random direction does.",
        holds=_all([lower(diff["median_kl_change"], 0.0, absolute=RATE_TOLERANCE),
                    lower(diff["kl_change_at_common_scale"], random["kl_change_at_common_scale"], absolute=RATE_TOLERANCE)]),
        evidence=(
            f"{diff['positions']} highest-KL positions, λ in {steering['scales']} × {steering['unit']['value']:.2f}; best λ "
            f"per position: diff-SAE median KL change {diff['median_kl_change']:+.0%} (halved at "
            f"{_pct(diff['kl_halved_share'])}), P(chat token) {diff['mean_chat_token_probability_before']:.2f} → "
            f"{diff['mean_chat_token_probability_after']:.2f}, top token becomes the chat's at "
            f"{_pct(diff['top_token_becomes_chat_share'])}; one λ for all (diff-SAE {diff['common_scale']:g}×): mean KL "
            f"diff-SAE {diff['kl_change_at_common_scale']:+.0%}, base SAE {base['kl_change_at_common_scale']:+.0%}, "
            f"random dictionaries {random['kl_change_at_common_scale']:+.0%}" + (
                " ({:+.0%} … {:+.0%} over {} draws)".format(*random["kl_change_at_common_scale_range"], random["draws"])
                if "draws" in random else "")
        ),
    ))
    out.append(Finding(
        id="diff_sae_latents_steer_better",
        claim="Steering with the diff-SAE's top latent lowers the KL more than steering with the base SAE's (the "
              "finite-λ form of the alignment claim above: what the post's step 3 relies on).",
        holds=lower(diff["kl_change_at_common_scale"], base["kl_change_at_common_scale"], absolute=RATE_TOLERANCE),
        evidence=(f"mean KL change at each dictionary's best common λ: diff-SAE {diff['kl_change_at_common_scale']:+.0%} "
                  f"(λ {diff['common_scale']:g}×, P(chat token) {diff['chat_token_probability_at_common_scale']:.2f}), base "
                  f"SAE {base['kl_change_at_common_scale']:+.0%} (λ {base['common_scale']:g}×, P "
                  f"{base['chat_token_probability_at_common_scale']:.2f}); first-order cos {diff['first_order']:.3f} vs "
                  f"{base['first_order']:.3f}"),
    ))
    hybrid = steering.get("hybrid")
    if hybrid:
        models = hybrid["models"]
        before, after = models["hybrid"]["target_share"], models["hybrid_steered"]["target_share"]
        s = hybrid["sampling"]
        out.append(Finding(
            id="hybrid_steering_moves_rollouts",
            claim="Steering the hybrid model (base blocks through the hookpoint, chat blocks after) with the latent "
                  "changes the share of a continuation (the post: 42 % → 2 % of 1,000 rollouts).",
            holds=lower(after, before, absolute=RATE_TOLERANCE),
            evidence=(
                f"{hybrid['target']!r} after the context: hybrid {_pct(before)} → steered {_pct(after)} of "
                f"{s['num_rollouts']} rollouts (base {_pct(models['base']['target_share'])}, chat "
                f"{_pct(models['chat']['target_share'])}); latent {hybrid['latent']} at λ = {hybrid['scale']:.2f}; "
                f"temperature {s['temperature']}, top-p {s['top_p']}, top-k {s['top_k']}, seed {s['seed']}"
            ),
        ))
    for dataset in steering.get("datasets", []):
        out += _dataset_findings(dataset)
    return out


def _usable(entry: dict | None) -> bool:
    return entry is not None and entry.get("degenerate", 0.0) < 0.5


def _dataset_findings(dataset: dict) -> list[Finding]:
    rows = dataset["steering"]
    start, steered = rows[0], rows[1:]
    name = dataset["name"]
    removes = [lower(r["chat_negative"]["rate"], start["chat_negative"]["rate"], absolute=RATE_TOLERANCE) is True
               and lower(r["chat_negative"]["rate"], r["chat_negative_random"]["rate"], absolute=RATE_TOLERANCE) is True
               for r in steered if _usable(r["chat_negative"])]
    negative = ", ".join(
        f"{r['scale']:g}×: {_pct(r['chat_negative']['rate'])} (random {_pct(r['chat_negative_random']['rate'])}"
        f"{', degenerate ' + _pct(r['chat_negative']['degenerate']) if r['chat_negative'].get('degenerate') else ''})"
        for r in steered
    )
    out = [Finding(
        id=f"dataset_negative_steering_{name}",
        claim=f"Subtracting the latent of lowest KL attribution over the chat model's responses ({name} prompts) "
              "removes the behaviour from its responses, beyond a random direction (the post's roleplay latent).",
        holds=(any(removes) if removes else None),
        evidence=f"latent {dataset['latent']} over {dataset['response_tokens']} response tokens; behaviour "
                 f"{_pct(start['chat_negative']['rate'])} unsteered, {negative}",
    )]
    if start.get("chat_positive") is not None:
        induced = [lower(start["chat_positive"]["rate"], r["chat_positive"]["rate"], absolute=RATE_TOLERANCE) is True
                   for r in steered if _usable(r["chat_positive"])]
        positive = ", ".join(f"{r['scale']:g}×: {_pct(r['chat_positive']['rate'])}" for r in steered)
        base = ", ".join(f"{r['scale']:g}×: {_pct(r['base_positive']['rate'])}" for r in steered)
        out.append(Finding(
            id=f"dataset_positive_steering_{name}",
            claim="Adding the same latent makes the behaviour appear on control prompts (the post: positive steering "
                  "induces it, even bypassing refusal).",
            holds=(any(induced) if induced else None),
            evidence=f"chat model on control prompts {_pct(start['chat_positive']['rate'])} unsteered, {positive}; "
                     f"base model on the {name} prompts {_pct(start['base_positive']['rate'])} unsteered, {base}",
        ))
    return out
