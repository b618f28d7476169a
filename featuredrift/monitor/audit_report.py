"""The training-data audit's result as plain data (no torch): what the run store, the report and
`runs show --data` read. The audit itself is `monitor/audit.py`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

HARMFUL_FROM = 0.5  # harmfulness at or above which a prompt reads as a harmful request


@dataclass
class AuditedExample:
    example: int
    prompt: str
    target: str
    harmfulness: float
    direction_score: float
    feature_score: float | None
    target_refuses: bool
    refusal_probability: float | None  # the reference's P(refusal-starting token) at the target's start

    @property
    def harmful_request(self) -> bool:
        return self.harmfulness >= HARMFUL_FROM

    @property
    def erosion_risk(self) -> float | None:
        """How strongly this example teaches compliance with harmful requests: the prompt's
        harmfulness, for compliant targets only."""
        return None if self.target_refuses else self.harmfulness

    @property
    def over_refusal_risk(self) -> float | None:
        """How strongly it teaches refusing safe requests: 1 − harmfulness, for refusing targets only."""
        return 1.0 - self.harmfulness if self.target_refuses else None

    @property
    def kind(self) -> str:
        if self.target_refuses:
            return "harmful-looking request, refused" if self.harmful_request else "harmless request answered with a refusal"
        return "harmful-looking request answered compliantly" if self.harmful_request else "benign request, compliant answer"


@dataclass
class DataAudit:
    """The audit of a sample of a training set at one hookpoint."""

    hookpoint: str
    examples: list[AuditedExample]
    dataset_size: int
    skipped: int = 0  # sampled rows with no prompt/target to read
    skipped_reason: str | None = None
    summary: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.summary:
            kinds = [e.kind for e in self.examples]
            self.summary = {kind: kinds.count(kind) for kind in dict.fromkeys(kinds)}

    def eroding(self, n: int = 10) -> list[AuditedExample]:
        """Compliant examples, most harmful-looking first."""
        return sorted((e for e in self.examples if not e.target_refuses), key=lambda e: -e.harmfulness)[:n]

    def over_refusing(self, n: int = 10) -> list[AuditedExample]:
        """Refusing examples, most harmless-looking first."""
        return sorted((e for e in self.examples if e.target_refuses), key=lambda e: e.harmfulness)[:n]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataAudit:
        """Inverse of `to_dict`; also reads JSON exports, where an undefined score is null."""
        def example(e: Mapping[str, Any]) -> AuditedExample:
            return AuditedExample(**{**e, **{k: math.nan for k in ("harmfulness", "direction_score") if e.get(k) is None}})

        return cls(**{**data, "examples": [example(e) for e in data["examples"]]})
