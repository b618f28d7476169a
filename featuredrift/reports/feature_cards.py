"""Feature cards: what the run store knows about each SAE feature a run singled out.

A feature gets a card when the latest evaluation lists it among the most drifted features of
a layer, or among the refusal features (top-k diff-in-means) now or at the reference. The card
says why it is listed, how its firing changed on each probe subset (reference vs now) and its
trajectory over steps, and its top-activating probe contexts at the reference and now.
Everything comes from the store's `drifted_features`, `refusal_features` and
`feature_contexts` tables, so `runs show --features`, the HTML report and Grafana agree.

Runs recorded before contexts were captured (or with `feature_contexts=0`) have none:
`contexts_captured` is False and renderers say so.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from featuredrift.store.rows import DriftedFeatureRow, RefusalFeatureRow
    from featuredrift.store.run_store import RunStore

DRIFTED_PER_LAYER = 6
TEXT_SUBSETS = ("base", "chat")  # read at every content token; other subsets are prompts read at their read-out
NEURONPEDIA = "https://neuronpedia.org"  # as SAELens links it
_VISIBLE_WHITESPACE = str.maketrans({"\n": "⏎", " ": "␣", "\t": "⇥", "\r": "⏎"})


def is_readout(subset: str) -> bool:
    """Whether contexts of this probe subset sit at a prompt's read-out token (the last before
    the response), rather than inside a text."""
    return subset not in TEXT_SUBSETS


def shown_token(token: str) -> str:
    """A context's token as it can be seen: whitespace and empty tokens get a visible glyph."""
    if token.strip():
        return token
    return token.translate(_VISIBLE_WHITESPACE) or "∅"


@dataclass(frozen=True)
class SubsetFiring:
    """Firing of the feature on one probe subset, at the reference and now."""

    subset: str
    freq_reference: float | None
    freq_now: float | None
    mean_reference: float | None
    mean_now: float | None


@dataclass(frozen=True)
class TrajectoryPoint:
    step: int
    drift_score: float | None  # largest drift score over subsets, when listed as drifted at that step
    diff_in_means: float | None  # d̄ when it was a refusal feature (now or reference) at that step
    in_refusal_top_k: bool = False  # among the current top-k refusal features at that step


@dataclass(frozen=True)
class ContextExample:
    """One top-activating probe context: the token, the text either side, the activation."""

    model: str  # "reference" or "current"
    subset: str
    left: str
    token: str
    right: str
    activation: float

    @property
    def readout(self) -> bool:
        return is_readout(self.subset)


@dataclass
class FeatureCard:
    hookpoint: str
    feature: int
    step: int  # the evaluation the card describes (the run's latest)
    reasons: list[str] = field(default_factory=list)
    drift_rank: int | None = None  # 1-based, at `step`
    drift_score: float | None = None
    refusal_status: str | None = None  # "emerging", "fading", "held" or None
    refusal_rank_now: int | None = None  # 1-based rank in the current top-k
    refusal_rank_reference: int | None = None  # 1-based rank in the reference top-k
    firing: list[SubsetFiring] = field(default_factory=list)
    trajectory: list[TrajectoryPoint] = field(default_factory=list)
    contexts: list[ContextExample] = field(default_factory=list)
    contexts_captured: bool = False  # whether the evaluation stored contexts at all
    neuronpedia_id: str | None = None  # the SAE's Neuronpedia id, when Neuronpedia hosts it

    @property
    def neuronpedia_url(self) -> str | None:
        """The feature's Neuronpedia page (public explanation, dashboards); None for SAEs it does not host."""
        return f"{NEURONPEDIA}/{self.neuronpedia_id}/{self.feature}" if self.neuronpedia_id else None

    @property
    def contexts_note(self) -> str | None:
        """What to say instead of contexts, when a card has none."""
        if not self.contexts_captured:
            return "not captured for this run"
        return None if self.contexts else "does not fire on any probe token"

    @property
    def title(self) -> str:
        return f"feature {self.feature} · {self.hookpoint}"

    def diff_in_means_first_and_now(self) -> tuple[float | None, float | None]:
        values = [p.diff_in_means for p in self.trajectory if p.diff_in_means is not None]
        return (values[0], values[-1]) if values else (None, None)


def headline_refusal_rows(rows: list[RefusalFeatureRow], refusal_k: int | None) -> list[RefusalFeatureRow]:
    """The rows of the headline top-k sets: those carrying d̄ (the NNLS reconstructions' sets do not).

    Reports older than per-feature d̄ fall back to the configured `refusal_k`, else the largest k.
    """
    with_values = [r for r in rows if r.diff_in_means is not None]
    if with_values:
        return with_values
    ks = {r.k for r in rows}
    k = refusal_k if refusal_k in ks else max(ks, default=None)
    return [r for r in rows if r.k == k]


def build_cards(store: RunStore, run: str) -> list[FeatureCard]:
    """Cards for the latest evaluation of `run`, per layer: refusal features that emerged or
    faded first, then the most drifted features by rank, then refusal features that held."""
    info = store.get_run(run)
    if info.last_step is None:
        return []
    drifted = store.drifted_features(run)
    refusal = headline_refusal_rows(store.refusal_features(run), info.config.get("refusal_k"))
    cards: dict[tuple[str, int], FeatureCard] = {}
    for hookpoint in sorted({r.hookpoint for r in drifted} | {r.hookpoint for r in refusal}):
        layer_drifted = [r for r in drifted if r.hookpoint == hookpoint]
        layer_refusal = [r for r in refusal if r.hookpoint == hookpoint]
        _add_refusal_cards(cards, hookpoint, layer_refusal, info.last_step)
        _add_drifted_cards(cards, hookpoint, layer_drifted, info.last_step)
        for card in (c for c in cards.values() if c.hookpoint == hookpoint):
            card.trajectory = _trajectory(card.feature, layer_drifted, layer_refusal)
    _add_contexts(cards, store, run, info.last_step)
    neuronpedia = info.extra.get("neuronpedia_ids") or {}
    for card in cards.values():
        card.neuronpedia_id = neuronpedia.get(card.hookpoint)
    order = {"emerging": 0, "fading": 0, None: 1, "held": 2}
    return sorted(cards.values(), key=lambda c: (c.hookpoint, order[c.refusal_status], c.drift_rank or 10**6,
                                                 c.refusal_rank_now or c.refusal_rank_reference or 0, c.feature))


def _card(cards: dict, hookpoint: str, feature: int, step: int) -> FeatureCard:
    return cards.setdefault((hookpoint, feature), FeatureCard(hookpoint, feature, step))


def _add_drifted_cards(cards: dict, hookpoint: str, rows: list[DriftedFeatureRow], step: int) -> None:
    # A drift score of 0 is no drift (the reference compared with itself, at step 0): no card claims it.
    latest = sorted((r for r in rows if r.step == step and (r.score or 0) > 0), key=lambda r: r.rank)
    ranked: list[int] = []
    for row in latest:
        if row.feature not in ranked:
            ranked.append(row.feature)
    for rank, feature in enumerate(ranked[:DRIFTED_PER_LAYER], start=1):
        card = _card(cards, hookpoint, feature, step)
        mine = [r for r in latest if r.feature == feature]
        card.drift_rank = rank
        card.drift_score = max((r.score for r in mine if r.score is not None), default=None)
        card.firing = [SubsetFiring(r.subset, r.freq_reference, r.freq_current, r.mean_reference, r.mean_current)
                       for r in mine]
        subsets = ", ".join(r.subset for r in mine)
        card.reasons.append(f"drifted: rank {rank} at step {step} (score {card.drift_score:.3g}, {subsets} prompts)"
                            if card.drift_score is not None else f"drifted: rank {rank} at step {step}")


def _add_refusal_cards(cards: dict, hookpoint: str, rows: list[RefusalFeatureRow], step: int) -> None:
    now = {r.feature: r.rank + 1 for r in rows if r.step == step and r.source == "current"}
    reference = {r.feature: r.rank + 1 for r in rows if r.step == step and r.source == "reference"}
    current_steps: dict[int, list[int]] = defaultdict(list)
    for r in rows:
        if r.source == "current":
            current_steps[r.feature].append(r.step)
    for feature in list(reference) + [f for f in now if f not in reference]:
        card = _card(cards, hookpoint, feature, step)
        card.refusal_rank_now, card.refusal_rank_reference = now.get(feature), reference.get(feature)
        if feature in reference and feature in now:
            card.refusal_status = "held"
            card.reasons.append(f"refusal feature: rank {reference[feature]} at the reference, {now[feature]} now")
        elif feature in reference:
            card.refusal_status = "fading"
            last = max((s for s in current_steps[feature] if s < step), default=None)
            since = f"; last in the top-k at step {last}" if last is not None else ""
            card.reasons.append(f"refusal feature fading: rank {reference[feature]} at the reference, "
                                f"no longer in the top-k{since}")
        else:
            card.refusal_status = "emerging"
            first = min(current_steps[feature])
            card.reasons.append(f"refusal feature emerging: rank {now[feature]} now, in the top-k since step {first}, "
                                "not one at the reference")


def _add_contexts(cards: dict, store: RunStore, run: str, step: int) -> None:
    stored = store.feature_contexts(run, step=step)
    for row in stored:
        card = cards.get((row.hookpoint, row.feature))
        if card is not None:
            card.contexts.append(ContextExample(row.model, row.subset, row.left, row.token, row.right, row.activation))
    for card in cards.values():
        card.contexts_captured = bool(stored)


def _trajectory(feature: int, drifted: list[DriftedFeatureRow], refusal: list[RefusalFeatureRow]) -> list[TrajectoryPoint]:
    scores: dict[int, float] = {}
    for r in drifted:
        if r.feature == feature and r.score is not None:
            scores[r.step] = max(scores.get(r.step, float("-inf")), r.score)
    values: dict[int, float] = {}
    in_top_k: set[int] = set()
    for r in refusal:
        if r.feature == feature:
            if r.diff_in_means is not None:
                values[r.step] = r.diff_in_means
            if r.source == "current":
                in_top_k.add(r.step)
    steps = sorted(set(scores) | set(values) | in_top_k)
    return [TrajectoryPoint(s, scores.get(s), values.get(s), s in in_top_k) for s in steps]
