"""Which checkpoint to go back to: the newest saved one whose evaluation passed every critical alert.

One rule for the live session (from the alerts it just raised) and for the run store (from the
alerts it recorded): an evaluation fails while any critical alert is firing after it, i.e. from
the step the alert fired at until the step it resolved at (an alert the run's end closed never
resolved). A checkpoint saved at an evaluated step is judged by that evaluation; one saved
between two evaluations must pass both, since its weights lie between theirs (the one after it
may not exist yet). Only checkpoints whose folder still exists are named: `save_total_limit`
may have removed older ones.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SafeCheckpoint:
    step: int
    path: str
    judged_by: tuple[int, ...]  # the evaluated steps that passed it

    def describe(self) -> str:
        judged = " and ".join(str(s) for s in self.judged_by)
        how = "evaluated there" if self.judged_by == (self.step,) else f"between the evaluations at steps {judged}"
        return f"{Path(self.path).name} (step {self.step}, {how}) at {self.path}"


def failing_steps(evaluated: Iterable[int], critical: Iterable[tuple[int | None, int | None]]) -> set[int]:
    """The evaluated steps after which a critical alert was firing; `critical` holds
    (fired at step, resolved at step or None)."""
    intervals = [(fired, resolved) for fired, resolved in critical if fired is not None]
    return {e for e in evaluated if any(fired <= e and (resolved is None or e < resolved) for fired, resolved in intervals)}


def last_safe_checkpoint(
    checkpoints: Iterable[tuple[int, str]],
    evaluated: Iterable[int],
    critical: Iterable[tuple[int | None, int | None]],
    *,
    exists: Callable[[str], bool] = lambda path: Path(path).is_dir(),
) -> SafeCheckpoint | None:
    """The newest checkpoint (step, folder) that passed every critical alert and still exists."""
    steps = sorted(set(evaluated))
    failing = failing_steps(steps, critical)
    for step, path in sorted(checkpoints, reverse=True):
        position = bisect_left(steps, step)
        if position < len(steps) and steps[position] == step:
            judges: tuple[int, ...] = (step,)
        else:
            before = steps[position - 1] if position > 0 else None
            after_index = bisect_right(steps, step)
            after = steps[after_index] if after_index < len(steps) else None
            if before is None:
                continue  # saved before any evaluation: nothing says it is safe
            judges = (before,) if after is None else (before, after)
        if not failing & set(judges) and exists(path):
            return SafeCheckpoint(step, path, judges)
    return None
