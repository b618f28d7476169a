"""Training-data audit: which fine-tuning examples push refusal down, and which teach over-refusal.

The reference model reads each example's prompt once, through the monitor's own prompt pass
(the read-out token before the response, as for the harmful and harmless probes), and each
example gets:

- a **harmfulness** score of its prompt: where its read-out activation lies between the probe
  set's harmless mean (0) and harmful mean (1), along the reference refusal direction and on the
  summed activation of the reference refusal features (the mean of the two);
- a **refusal** reading of its target: the refusal judge on the target text (does the data
  answer with a refusal?) and the reference's logit refusal score at the target's first token
  (would the reference itself refuse there?).

Examples that erode refusal are compliant targets to harmful-looking prompts (ranked by
harmfulness: harmful requests answered compliantly first, then the benign ones closest to
them); examples that teach over-refusal are refusing targets to harmless-looking prompts.
Everything here is pure computation on rows and tensors; `DriftMonitor.audit` runs the pass.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from featuredrift.lm.capture import EncodedPrompt, encode_prompt_texts
from featuredrift.lm.prompts import format_chat_messages
from featuredrift.monitor import metrics, refusal
from featuredrift.monitor.audit_report import AuditedExample, DataAudit
from featuredrift.monitor.judges import is_refusal

__all__ = ["AuditInput", "AuditedExample", "DataAudit", "audit_inputs", "audited_examples", "auroc",
           "harmfulness_scores", "sample_indices"]

TEXT_KEPT = 400  # characters of a prompt or target kept with the audit
TARGET_MASK_COLUMNS = ("assistant_masks", "completion_mask")


class AuditInput(NamedTuple):
    """One training example as the audit reads it."""

    example: int  # index in the dataset
    prompt: EncodedPrompt  # token ids up to the target's first token, and the read-out position
    prompt_text: str  # what the user asked (for people)
    target: str  # the response the example trains on


# ------------------------------------------------------------------------------ reading rows
def sample_indices(size: int, limit: int, seed: int = 0) -> list[int]:
    """At most `limit` dataset positions, spread over the whole set (reproducible), ascending."""
    if size <= limit:
        return list(range(size))
    return sorted(random.Random(seed).sample(range(size), limit))


def audit_inputs(rows: Sequence[tuple[int, Mapping[str, Any]]], tokenizer, prompt_format: str, *,
                 max_length: int) -> tuple[list[AuditInput], list[str]]:
    """(the examples the audit can read, why each other row could not be read). Rows are
    (index, row) of a conversational dataset (`messages`), a prompt-completion one (`prompt`,
    `completion`: strings or message lists), or one already tokenised with a target mask
    (`input_ids` with `assistant_masks` / `completion_mask`, or `labels` at -100 on the prompt)."""
    read: list[AuditInput] = []
    problems: list[str] = []
    texts: list[tuple[int, str, bool, str, str]] = []  # (index, formatted prompt, add special, shown, target)
    for index, row in rows:
        try:
            if "input_ids" in row:
                item = _tokenised_example(index, row, tokenizer, max_length)
                if item is not None:
                    read.append(item)
                continue
            texts.append((index, *_text_example(row, tokenizer, prompt_format)))
        except (KeyError, TypeError, ValueError) as error:
            problems.append(f"row {index}: {error}")
    if texts:
        encoded = encode_prompt_texts(tokenizer, [t[1] for t in texts], add_special_tokens=texts[0][2],
                                      max_length=max_length)
        read += [AuditInput(index, prompt, shown, target) for (index, _, _, shown, target), prompt
                 in zip(texts, encoded, strict=True)]
    return sorted(read, key=lambda item: item.example), problems


def _text_example(row: Mapping[str, Any], tokenizer, prompt_format: str) -> tuple[str, bool, str, str]:
    """(formatted prompt, whether the tokenizer adds special tokens, the user's text, the target)."""
    if "messages" in row:
        messages = list(row["messages"])
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        if last is None or last == 0:
            raise ValueError("expected a conversation ending in an assistant turn after a prompt, found none")
        prompt, target = messages[:last], str(messages[last]["content"])
    elif "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        target = completion if isinstance(completion, str) else " ".join(str(m["content"]) for m in completion)
    else:
        raise KeyError(f"expected 'messages' or 'prompt' and 'completion', found columns {sorted(row)}")
    if isinstance(prompt, str):
        return prompt, True, prompt, target
    shown = next((str(m["content"]) for m in reversed(prompt) if m.get("role") == "user"), str(prompt[-1]["content"]))
    if prompt_format != "chat":
        return shown + "\n", True, shown, target
    return format_chat_messages(tokenizer, prompt), False, shown, target


def _tokenised_example(index: int, row: Mapping[str, Any], tokenizer, max_length: int) -> AuditInput | None:
    """A tokenised row split at its first target token (None: the row trains on no target)."""
    ids = [int(i) for i in row["input_ids"]]
    mask_column = next((c for c in TARGET_MASK_COLUMNS if c in row), None)
    if mask_column is not None:
        target_mask = [bool(m) for m in row[mask_column]]
    elif "labels" in row:
        target_mask = [int(label) != -100 for label in row["labels"]]
    else:
        raise KeyError(f"expected a target mask ({', '.join(TARGET_MASK_COLUMNS)} or labels), found columns {sorted(row)}")
    first = next((i for i, m in enumerate(target_mask) if m), None)
    if first is None or first == 0:
        return None
    end = next((i for i in range(first, len(ids)) if not target_mask[i]), len(ids))
    prompt_ids = ids[:first][-max_length:]
    return AuditInput(index, EncodedPrompt(prompt_ids, len(prompt_ids) - 1),
                      tokenizer.decode(ids[:first], skip_special_tokens=True).strip(),
                      tokenizer.decode(ids[first:end], skip_special_tokens=True).strip())


# ---------------------------------------------------------------------------------- scoring
class Scale(NamedTuple):
    """Where the probe set's harmless (0) and harmful (1) prompts sit on a score."""

    harmless: float
    harmful: float

    def place(self, values: Tensor) -> Tensor:
        span = self.harmful - self.harmless
        return (values - self.harmless) / span if span > 0 else torch.full_like(values, math.nan)


def direction_projection(x: Tensor, direction: Tensor) -> Tensor:
    """Each row's projection on the unit refusal direction, float64."""
    unit = direction.double() / direction.double().norm().clamp_min(1e-12)
    return x.double() @ unit.to(x.device)


def harmfulness_scores(acts: Tensor, sae, direction: Tensor, features: Tensor, probe_acts: Mapping[str, Tensor],
                       probe_codes: Mapping[str, metrics.SaeCodes], *, encode_batch_size: int = 4096
                       ) -> tuple[Tensor, Tensor, Tensor | None]:
    """(harmfulness, direction score, feature score or None) of each read-out activation, each
    scaled so the harmless probes average 0 and the harmful probes 1."""
    direction_scale = Scale(float(direction_projection(probe_acts["harmless"], direction).mean()),
                            float(direction_projection(probe_acts["harmful"], direction).mean()))
    on_direction = direction_scale.place(direction_projection(acts, direction))
    if features.numel() == 0:
        return on_direction, on_direction, None
    codes = metrics.encode_batched(sae, acts, batch_size=encode_batch_size)

    def summed(c) -> Tensor:
        return refusal.feature_columns(c, features, sae.num_latents).sum(1)

    feature_scale = Scale(float(summed(probe_codes["harmless"]).mean()), float(summed(probe_codes["harmful"]).mean()))
    on_features = feature_scale.place(summed(codes)).to(on_direction.device)
    return (on_direction + on_features) / 2, on_direction, on_features


def audited_examples(inputs: Sequence[AuditInput], harmfulness: Tensor, on_direction: Tensor,
                     on_features: Tensor | None, refusal_probability: Tensor | None) -> list[AuditedExample]:
    def value(t: Tensor | None, i: int) -> float | None:
        return None if t is None else float(t[i])

    return [
        AuditedExample(
            example=item.example, prompt=item.prompt_text[:TEXT_KEPT], target=item.target[:TEXT_KEPT],
            harmfulness=float(harmfulness[i]), direction_score=float(on_direction[i]),
            feature_score=value(on_features, i), target_refuses=is_refusal(item.target),
            refusal_probability=value(refusal_probability, i),
        )
        for i, item in enumerate(inputs)
    ]


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve of `scores` for picking the `labels` rows (ties count half);
    NaN when one class is empty. The Mann-Whitney U statistic over ranks."""
    from scipy.stats import rankdata

    positives = sum(bool(label) for label in labels)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = rankdata(list(scores))
    rank_sum = sum(rank for rank, label in zip(ranks, labels, strict=True) if label)
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))
