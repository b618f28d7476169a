"""How far a refusal judge agrees with people: precision, recall and F1 on human-labelled responses.

A labelled set is a CSV file in PyRIT's refusal-scorer evaluation layout, which the `pyrit`
package ships (`pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv`):
`objective,assistant_response,human_score[,data_type]` with `human_score` 1 where people judged the
response a refusal (PyRIT counts an answer to a different request as a refusal too); leading `#`
lines are comments. The plain layout `prompt,response,refused` (1/0, true/false, yes/no) reads too.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from featuredrift.monitor.probes import ProbeError

LAYOUTS = (
    ("objective", "assistant_response", "human_score"),  # PyRIT's refusal-scorer evaluation set
    ("prompt", "response", "refused"),
)
TRUE_LABELS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


class LabelledResponse(NamedTuple):
    prompt: str
    response: str
    refused: bool  # what people said
    where: str  # file:line


class JudgeScore(NamedTuple):
    judge: str
    true_positives: int
    false_positives: int
    false_negatives: int
    true_negatives: int

    @property
    def rows(self) -> int:
        return sum(self[1:])

    @property
    def precision(self) -> float:
        called = self.true_positives + self.false_positives
        return self.true_positives / called if called else math.nan

    @property
    def recall(self) -> float:
        refusals = self.true_positives + self.false_negatives
        return self.true_positives / refusals if refusals else math.nan

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else math.nan

    def as_dict(self) -> dict:
        return {**self._asdict(), "rows": self.rows, "precision": self.precision, "recall": self.recall, "f1": self.f1}


class _Uncommented:
    """The file's lines after its leading `#` comment lines; `skipped` of them, to give the csv
    reader's line numbers back as the file's."""

    def __init__(self, handle):
        self.handle, self.skipped, self.leading = handle, 0, True

    def __iter__(self) -> Iterator[str]:
        for line in self.handle:
            if self.leading and line.startswith("#"):
                self.skipped += 1
                continue
            self.leading = False
            yield line


def read_labelled_responses(path: Path | str) -> list[LabelledResponse]:
    path = Path(path)
    if not path.is_file():
        raise ProbeError(f"{path}: no such file: expected a CSV of human-labelled responses")
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        lines = _Uncommented(handle)
        reader = csv.DictReader(iter(lines))
        try:
            columns = reader.fieldnames or []
            layout = next((layout for layout in LAYOUTS if set(layout) <= set(columns)), None)
            if layout is None:
                expected = " or ".join(", ".join(layout) for layout in LAYOUTS)
                raise ProbeError(f"{path}: expected columns {expected}, found columns {columns}")
            prompt, response, label = layout
            ended = reader.line_num  # the header's last line; a record starts on the next one
            for row in reader:
                where = f"{path}:{ended + 1 + lines.skipped}"
                ended = reader.line_num
                value = (row.get(label) or "").strip().lower()
                if value not in TRUE_LABELS:
                    raise ProbeError(f"{where}: expected {label} to be 1/0 (true/false, yes/no), found {row.get(label)!r}")
                rows.append(LabelledResponse(row.get(prompt) or "", row.get(response) or "", TRUE_LABELS[value], where))
        except csv.Error as error:
            raise ProbeError(f"{path}:{reader.line_num + lines.skipped}: expected a well-formed CSV row ({error})") from error
    if not rows:
        raise ProbeError(f"{path}: no labelled responses found")
    return rows


def answers_to_another_request(rows: Sequence[LabelledResponse]) -> list[bool]:
    """Per row, whether it is labelled a refusal only because the response answers another request:
    the same response appears in the set, labelled no refusal, under a different prompt. PyRIT's
    set builds such rows on purpose; a judge that reads only the response cannot tell them."""
    answered: dict[str, set[str]] = {}
    for row in rows:
        if not row.refused:
            answered.setdefault(row.response.strip(), set()).add(row.prompt.strip())
    return [row.refused and bool(answered.get(row.response.strip(), set()) - {row.prompt.strip()}) for row in rows]


def score_judge(judge, rows: Sequence[LabelledResponse]) -> tuple[JudgeScore, list[tuple[LabelledResponse, bool]]]:
    """The judge's agreement with the labels, and the rows it got wrong (with its verdict)."""
    verdicts = judge.refusals([r.prompt for r in rows], [r.response for r in rows])
    counts = {(True, True): 0, (True, False): 0, (False, True): 0, (False, False): 0}  # (said, truth)
    wrong = []
    for row, said in zip(rows, verdicts, strict=True):
        counts[(bool(said), row.refused)] += 1
        if bool(said) != row.refused:
            wrong.append((row, bool(said)))
    score = JudgeScore(judge.name, counts[(True, True)], counts[(True, False)], counts[(False, True)],
                       counts[(False, False)])
    return score, wrong
