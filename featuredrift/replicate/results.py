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


class ResultsV1(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: int = Field(SCHEMA_VERSION, ge=SCHEMA_VERSION, le=SCHEMA_VERSION)
    name: str
    selected_stages: list[str]
    config: dict[str, Any]
    provenance: Provenance
    findings: list[Finding]
    stages: dict[str, dict[str, Any]]


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
        out.append(Finding(
            id="diff_sae_latents_explain_kl",
            claim="Diff-SAE latents align better with KL-reducing directions than base-SAE latents (the post).",
            holds=lower(a["base_sae"], a["diff_sae"], relative=RELATIVE_TOLERANCE),
            evidence=f"mean best cos(−∇KL, v): diff-SAE {a['diff_sae']:.3f} vs base SAE {a['base_sae']:.3f}",
        ))
    return out
