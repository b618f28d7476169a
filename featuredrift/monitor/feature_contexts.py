"""Top-activating probe contexts: the probe tokens where an SAE feature fires most.

The monitor already holds the SAE codes of every probe token it reads. `ProbeTokens` maps
those rows back to their probe and token position (built once at start), `top_rows` picks,
for a few features, the rows where each fires most (a dense view of just those features and
one `torch.topk` over tokens), and `contexts` decodes a few tokens either side. The reference's
top rows are picked once per run for every latent (`top_rows_all_latents`), so an evaluation
only looks up the features it lists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from featuredrift.monitor.metrics import cat_codes
from featuredrift.monitor.reading import TEXT_SUBSETS
from featuredrift.monitor.report import FeatureContext

# Largest dense [tokens, features] block built at once when ranking every latent of the reference.
_DENSE_BLOCK_ELEMENTS = 2**24
# Text subsets are read at every content token; every other subset is a prompt read at its read-out
# token (the last before the response, often a newline or a template token): its context is the
# prompt before it, decoded without the template's control tokens, up to this many tokens.
READOUT_CONTEXT_TOKENS = 24


class TopRows(NamedTuple):
    """Per feature, its strongest rows: `values` and `rows` are [features, n], strongest first."""

    values: Tensor
    rows: Tensor


@dataclass
class ProbeTokens:
    """Where every row of a reading comes from: its subset, its probe and its token position.

    Rows follow the reading's order: subsets in `subsets` order, then batches, then the read
    positions of each batch row by row, without the rows `keep` leaves out (norm outliers).
    """

    subsets: list[str]
    subset_of_row: list[int]
    probe_of_row: list[int]
    position_of_row: list[int]  # index into the probe's tokens (padding excluded)
    tokens: dict[str, list[list[int]]]  # subset → per probe, its token ids without padding
    _decoded: dict[tuple[int, int], tuple[str, str, str]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_batches(cls, batches: Mapping[str, Sequence], keep: Mapping[str, Tensor]) -> ProbeTokens:
        subsets, subset_of_row, probe_of_row, position_of_row = [], [], [], []
        tokens: dict[str, list[list[int]]] = {}
        for number, (subset, subset_batches) in enumerate(batches.items()):
            subsets.append(subset)
            probes, positions, ids = [], [], []
            for batch in subset_batches:
                for row in range(batch.input_ids.shape[0]):
                    attended = batch.attention_mask[row].bool()
                    start = int(attended.nonzero()[0]) if attended.any() else 0
                    read = batch.read_mask[row].nonzero().flatten().tolist()
                    probes += [len(ids)] * len(read)
                    positions += [p - start for p in read]
                    ids.append(batch.input_ids[row][attended].tolist())
            tokens[subset] = ids
            kept = keep[subset].tolist() if subset in keep else [True] * len(probes)
            if len(kept) != len(probes):
                raise ValueError(f"probe subset {subset!r}: expected a keep mask of {len(probes)} rows, found {len(kept)}")
            for probe, position, keep_row in zip(probes, positions, kept, strict=True):
                if keep_row:
                    subset_of_row.append(number)
                    probe_of_row.append(probe)
                    position_of_row.append(position)
        return cls(subsets, subset_of_row, probe_of_row, position_of_row, tokens)

    def __len__(self) -> int:
        return len(self.probe_of_row)

    def text_around(self, row: int, tokenizer, window: int) -> tuple[str, str, str]:
        """(left, token, right) of a row, `window` tokens either side, decoded once and cached."""
        key = (row, window)
        if key not in self._decoded:
            subset = self.subsets[self.subset_of_row[row]]
            ids = self.tokens[subset][self.probe_of_row[row]]
            position = self.position_of_row[row]
            if subset in TEXT_SUBSETS:
                left = tokenizer.decode(ids[max(0, position - window) : position])
            else:  # a read-out: what the user asked, without the chat template around it
                before = ids[max(0, position - max(window, READOUT_CONTEXT_TOKENS)) : position]
                left = tokenizer.decode(before, skip_special_tokens=True).strip()
            self._decoded[key] = (
                left,
                tokenizer.decode(ids[position : position + 1]),
                tokenizer.decode(ids[position + 1 : position + 1 + window]),
            )
        return self._decoded[key]


def concat_codes(codes: Mapping[str, object], subsets: Sequence[str]) -> tuple[Tensor, Tensor]:
    """The top-k activations and indices of every subset, stacked in `ProbeTokens` row order."""
    return cat_codes([codes[s].top_acts for s in subsets], [codes[s].top_indices for s in subsets])


def top_rows(top_acts: Tensor, top_indices: Tensor, features: Tensor, num_latents: int, n: int) -> TopRows:
    """For each of `features`, the `n` rows where it fires most (rows where it is not among the
    top-k count as 0). Builds a dense [rows, features] view of only these features."""
    features = features.to(top_indices.device).long()
    column = torch.full((num_latents,), -1, dtype=torch.long, device=top_indices.device)
    column[features] = torch.arange(len(features), device=top_indices.device)
    columns = column[top_indices.long()]
    listed = (columns >= 0) & (top_acts != 0)  # zero slots (variable-L0 padding) may repeat an index
    dense = torch.zeros(top_acts.shape[0], len(features), dtype=torch.float32, device=top_acts.device)
    token_rows = torch.arange(top_acts.shape[0], device=top_acts.device).unsqueeze(1).expand_as(columns)
    dense[token_rows[listed], columns[listed]] = top_acts[listed].float()
    values, rows = torch.topk(dense, min(n, dense.shape[0]), dim=0)
    return TopRows(values.T.contiguous(), rows.T.contiguous())


def top_rows_all_latents(top_acts: Tensor, top_indices: Tensor, num_latents: int, n: int) -> TopRows:
    """`top_rows` for every latent, in blocks of latents so the dense view stays small (run once)."""
    block = max(1, _DENSE_BLOCK_ELEMENTS // max(1, top_acts.shape[0]))
    parts = [
        top_rows(top_acts, top_indices, torch.arange(start, min(start + block, num_latents)), num_latents, n)
        for start in range(0, num_latents, block)
    ]
    return TopRows(torch.cat([p.values for p in parts]), torch.cat([p.rows for p in parts]))


def contexts(
    features: Sequence[int], top: TopRows, probe_tokens: ProbeTokens, tokenizer, *, model: str, window: int
) -> list[FeatureContext]:
    """The decoded contexts of `top` (aligned with `features`); rows where the feature does not fire are left out."""
    values, rows = top.values.cpu().tolist(), top.rows.cpu().tolist()
    out = []
    for feature, feature_values, feature_rows in zip(features, values, rows, strict=True):
        for rank, (value, row) in enumerate(zip(feature_values, feature_rows, strict=True)):
            if value <= 0:
                break
            left, token, right = probe_tokens.text_around(row, tokenizer, window)
            out.append(FeatureContext(
                feature=int(feature), model=model, rank=rank,
                subset=probe_tokens.subsets[probe_tokens.subset_of_row[row]],
                probe_index=probe_tokens.probe_of_row[row], position=probe_tokens.position_of_row[row],
                left=left, token=token, right=right, activation=float(value),
            ))
    return out
