"""A run's probe fields composed into the one ProbeSet it evaluates, bounded per subset.

`probes` names the base set (`default`, a probe directory or CSV, `zoo:<size>`). The harmful,
harmless and borderline subsets can each come from elsewhere: a benchmark in its own layout
(`harmbench:<file>`, `advbench:<file>`, `strongreject:<file>`, `xstest:<file>`, or a Hub copy,
see `monitor.benchmarks`) or a plain instruction file (`.jsonl`, `.json` array or `.csv` with an
`instruction`, `prompt` or `text` column and optional `category` and `split`)::

    MonitorConfig(probes="default", harmful_probes="harmbench:data/harmbench_behaviors_text_test.csv",
                  borderline_probes="xstest:data/xstest_prompts.csv")

Every subset is then bounded at `max_probes` (the first ones kept): each evaluation runs every
probe, so an unbounded file would make every evaluation as slow as the file is long. What was
left out is logged with the setting that changes it.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from featuredrift.monitor.benchmarks import BenchmarkSpec, is_benchmark_spec, read_benchmark
from featuredrift.monitor.probes import (
    ALL_SPLITS,
    PROMPT_SUBSETS,
    ProbeError,
    ProbeOrigin,
    ProbeSet,
    PromptRows,
    file_sha256,
    load_probe_set,
    read_prompt_file,
    rows_fingerprint,
    select_split,
)

logger = logging.getLogger(__name__)
SUBSET_FIELDS = {subset: f"{subset}_probes" for subset in PROMPT_SUBSETS}  # MonitorConfig field per subset


def load_subset(spec: str, subset: str, split: str = ALL_SPLITS) -> tuple[PromptRows, ProbeOrigin]:
    """One prompt subset from a benchmark spec or a plain instruction file (restricted to `split`
    when its rows carry split labels)."""
    if is_benchmark_spec(spec):
        return read_benchmark(spec, subset)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ProbeError(
            f"{SUBSET_FIELDS[subset]}={spec!r}: expected a benchmark spec (harmbench:<file>, advbench:<file>, "
            "strongreject:<file>, xstest:<file>) or an instruction file (.jsonl, .json, .csv), found no such file"
        )
    rows = read_prompt_file(path, None)
    if any(label is not None for label in rows.splits) and split != ALL_SPLITS:
        rows = select_split(rows, split, f"{path}")
    origin = ProbeOrigin(source=spec, file=str(path), sha256=file_sha256(path),
                         split=split if any(s is not None for s in rows.splits) else ALL_SPLITS, rows=len(rows.texts))
    return rows, origin


def compose_probe_set(probes: str = "default", *, split: str = "heldout", harmful: str | None = None,
                      harmless: str | None = None, borderline: str | None = None) -> ProbeSet:
    """The base set `probes` with the given subsets replaced (borderline: added) from their sources."""
    composed = load_probe_set(probes, split=split)
    for subset, spec in (("harmful", harmful), ("harmless", harmless), ("borderline", borderline)):
        if spec:
            rows, origin = load_subset(spec, subset, split)
            composed = composed.with_subset(subset, rows, origin)
    return composed


def bound_probe_set(probes: ProbeSet, max_probes: int | None) -> tuple[ProbeSet, dict[str, tuple[int, int]]]:
    """At most `max_probes` items per subset; (the bounded set, subset → (kept, found)) for every
    subset that lost some."""
    if max_probes is None:
        return probes, {}
    sizes = probes.sizes()
    dropped = {subset: (max_probes, n) for subset, n in sizes.items() if n > max_probes}
    return (probes.limit(max_probes) if dropped else probes), dropped


def bound_with_warning(probes: ProbeSet, max_probes: int | None) -> ProbeSet:
    bounded, dropped = bound_probe_set(probes, max_probes)
    for subset, (kept, found) in dropped.items():
        logger.warning(
            "featuredrift: probe subset %s (%s) holds %s probes; evaluating the first %s and leaving out %s: "
            "every evaluation runs every probe. Raise max_probes= (FEATUREDRIFT_MAX_PROBES), or set it to None "
            "for no bound", subset, probes.origin_of(subset) if subset in PROMPT_SUBSETS else probes.source,
            f"{found:,}", f"{kept:,}", f"{found - kept:,}")
    return bounded


def configured_probe_set(config) -> ProbeSet:
    """What a MonitorConfig's probe fields name, composed and bounded."""
    probes = compose_probe_set(
        config.probes, split=config.probe_split,
        **{subset: getattr(config, name) for subset, name in SUBSET_FIELDS.items()},
    )
    return bound_with_warning(probes, config.max_probes)


@dataclass
class SubsetSummary:
    """What one subset of a probe source holds (`featuredrift probes inspect`)."""

    subset: str
    rows: int
    splits: dict[str, int] = field(default_factory=dict)  # split label → rows ("(every split)" for unlabelled)
    categories: dict[str, int] = field(default_factory=dict)
    fingerprint: str = ""  # sha256 of the texts (and categories), as recorded with a run
    origin: ProbeOrigin | None = None

    def as_dict(self) -> dict:
        data = {k: v for k, v in self.__dict__.items() if k != "origin"}
        return {**data, **({"origin": self.origin.as_dict()} if self.origin else {})}


EVERY_SPLIT = "(every split)"


def _summary(subset: str, rows: PromptRows, origin: ProbeOrigin | None) -> SubsetSummary:
    splits = Counter(s if s is not None else EVERY_SPLIT for s in rows.splits)
    categories = Counter(c for c in rows.categories if c is not None)
    return SubsetSummary(subset, len(rows.texts), dict(sorted(splits.items())), dict(categories.most_common()),
                         rows_fingerprint(rows), origin)


def inspect_source(spec: str) -> list[SubsetSummary]:
    """Every subset a probe source holds: a probe set (default, directory, CSV, zoo:<size>), a
    benchmark spec (each subset it can fill) or an instruction file."""
    if is_benchmark_spec(spec):
        found, errors = [], []
        for subset in BenchmarkSpec(spec).benchmark.subsets():
            if subset == "harmless":
                continue  # the same safe rows as borderline
            try:
                found.append(_summary(subset, *read_benchmark(spec, subset)))
            except ProbeError as error:  # XSTest file with only safe (or only unsafe) prompts
                errors.append(error)
        if not found:
            raise errors[0]
        return found
    path = Path(spec).expanduser()
    suffix = path.suffix.lower()
    if path.is_file() and (suffix in (".jsonl", ".json") or suffix == ".csv" and "subset" not in _csv_columns(path)):
        rows, origin = load_subset(spec, "harmful")
        return [_summary("instructions", rows, origin)]
    probes = load_probe_set(spec, split=ALL_SPLITS)
    summaries = [_summary(s, probes.subset_rows(s), probes.origins.get(s)) for s in PROMPT_SUBSETS if getattr(probes, s)]
    for subset in ("base_text", "chat_text"):
        if getattr(probes, subset):
            texts = getattr(probes, subset)
            summaries.append(SubsetSummary(subset, len(texts), {EVERY_SPLIT: len(texts)},
                                           fingerprint=rows_fingerprint([str(t) for t in texts])))
    return summaries


def _csv_columns(path: Path) -> list[str]:
    from featuredrift.monitor.probes import csv_records

    return list(next(csv_records(path))[1])
