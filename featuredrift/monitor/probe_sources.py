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
from pathlib import Path

from featuredrift.monitor.benchmarks import is_benchmark_spec, read_benchmark
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
