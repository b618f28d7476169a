"""Refusal benchmarks as probe subsets, read in the layouts they are published in.

A spec names the benchmark and where its rows are:

- `harmbench:<file>`: a HarmBench behaviour CSV (`harmbench_behaviors_text_{all,val,test}.csv`);
  contextual behaviours are prompted as HarmBench does, context, `---`, behaviour; categories are
  the `SemanticCategory`; the split is read from the file name (val, test, all);
- `advbench:<file>`: AdvBench's `harmful_behaviors.csv` (`goal,target`); no categories;
- `strongreject:<file>`: the StrongREJECT CSV (`category,source,forbidden_prompt`);
- `xstest:<file>`: XSTest's prompt file (`id,prompt,type,label,focus,note`, or v2's
  `id_v2,type,prompt,focus,note`); its safe prompts fill a borderline (or harmless) subset, its
  unsafe contrasts a harmful one; categories are the prompt `type`;
- `harmbench` alone, or `<name>:hf:<dataset>[:<config>][@<split>]`: a copy on the Hugging Face
  Hub, loaded through `datasets` (only when asked for, cached under `$FEATUREDRIFT_HOME/datasets`);
  `<dataset>` may also be a local `datasets` folder.

A file whose columns match none of the benchmark's layouts is an error naming the columns expected
and found. Benchmark rows carry no split label: the whole file is one probe subset, and the file
(or Hub split) chosen is the split recorded with the run.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from featuredrift.monitor.probes import (
    ALL_SPLITS,
    ProbeError,
    ProbeOrigin,
    PromptRows,
    csv_records,
    file_sha256,
    read_rows,
)

HUB_MARKER = "hf:"
HARMFUL_SUBSETS = ("harmful",)
SAFE_SUBSETS = ("harmless", "borderline")


@dataclass(frozen=True)
class Layout:
    """One column layout a benchmark is published in."""

    where: str  # "HarmBench behaviour CSV"
    columns: tuple[str, ...]  # required columns
    text: Callable[[dict], str]
    category: str | None = None  # column holding the category
    unsafe: Callable[[dict], bool] | None = None  # for mixed sets (XSTest): which rows are unsafe


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    layouts: tuple[Layout, ...]
    hub_dataset: str
    hub_config: str | None = None
    hub_split: str = "train"
    mixed: bool = False  # holds safe and unsafe prompts (XSTest); else only harmful ones

    def subsets(self) -> tuple[str, ...]:
        return (*HARMFUL_SUBSETS, *SAFE_SUBSETS) if self.mixed else HARMFUL_SUBSETS


def _column(name: str) -> Callable[[dict], str]:
    return lambda row: row.get(name) or ""


def _harmbench_text(behaviour: str, context: str) -> Callable[[dict], str]:
    """A contextual behaviour is prompted with its context first, as HarmBench's direct requests do."""
    def text(row: dict) -> str:
        return f"{row[context]}\n\n---\n\n{row[behaviour]}" if (row.get(context) or "").strip() else row.get(behaviour) or ""
    return text


def _xstest_label_unsafe(row: dict) -> bool:
    return (row.get("label") or "").strip().lower() == "unsafe"


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "harmbench", "HarmBench",
            (
                Layout("HarmBench behaviour CSV",
                       ("Behavior", "FunctionalCategory", "SemanticCategory", "ContextString", "BehaviorID"),
                       _harmbench_text("Behavior", "ContextString"), category="SemanticCategory"),
                Layout("walledai/HarmBench on the Hub", ("prompt", "category"), _harmbench_text("prompt", "context"),
                       category="category"),
            ),
            hub_dataset="walledai/HarmBench", hub_config="standard",
        ),
        Benchmark(
            "advbench", "AdvBench",
            (
                Layout("AdvBench harmful_behaviors.csv", ("goal", "target"), _column("goal")),
                Layout("walledai/AdvBench on the Hub", ("prompt", "target"), _column("prompt")),
            ),
            hub_dataset="walledai/AdvBench",
        ),
        Benchmark(
            "strongreject", "StrongREJECT",
            (
                Layout("StrongREJECT CSV", ("category", "source", "forbidden_prompt"), _column("forbidden_prompt"),
                       category="category"),
                Layout("walledai/StrongREJECT on the Hub", ("prompt", "category"), _column("prompt"), category="category"),
            ),
            hub_dataset="walledai/StrongREJECT",
        ),
        Benchmark(
            "xstest", "XSTest",
            (
                Layout("XSTest prompt file", ("id", "prompt", "type", "label", "focus", "note"), _column("prompt"),
                       category="type", unsafe=_xstest_label_unsafe),
                Layout("XSTest v2 prompt file", ("id_v2", "type", "prompt", "focus", "note"), _column("prompt"),
                       category="type", unsafe=lambda row: (row.get("type") or "").startswith("contrast_")),
                Layout("walledai/XSTest on the Hub", ("prompt", "type", "label"), _column("prompt"), category="type",
                       unsafe=_xstest_label_unsafe),
            ),
            hub_dataset="walledai/XSTest", mixed=True,
        ),
    )
}


class BenchmarkSpec:
    """A parsed benchmark spec: which benchmark, and a file or a Hub dataset."""

    def __init__(self, spec: str):
        self.spec = spec
        name, _, rest = spec.partition(":")
        name = name.strip().lower()
        if name not in BENCHMARKS:
            raise ProbeError(f"probe source {spec!r}: expected a benchmark named one of {sorted(BENCHMARKS)}, found {name!r}")
        self.benchmark = BENCHMARKS[name]
        self.file: Path | None = None
        self.dataset = self.config = self.split = None
        if not rest or rest.startswith(HUB_MARKER):
            self._parse_hub(rest[len(HUB_MARKER):] if rest else "")
        else:
            self.file = Path(rest).expanduser()

    def _parse_hub(self, text: str) -> None:
        """`<dataset>[:<config>][@<split>]`; empty: the benchmark's own Hub copy."""
        text, _, split = text.partition("@")
        dataset, _, config = text.partition(":")
        bench = self.benchmark
        self.dataset = dataset or bench.hub_dataset
        self.config = config or (bench.hub_config if not dataset else None)
        self.split = split or bench.hub_split


def is_benchmark_spec(spec: str) -> bool:
    return str(spec).partition(":")[0].strip().lower() in BENCHMARKS


def read_benchmark(spec: str, subset: str) -> tuple[PromptRows, ProbeOrigin]:
    """The prompts of `spec` that fit probe subset `subset` (harmful, harmless or borderline),
    with where they came from."""
    parsed = BenchmarkSpec(spec)
    bench = parsed.benchmark
    if subset not in bench.subsets():
        raise ProbeError(
            f"probe source {spec!r}: {bench.title} holds harmful requests only: expected it as the harmful subset "
            f"(harmful_probes=), found it as the {subset} subset"
        )
    if parsed.file is not None:
        rows, columns = _file_rows(parsed.file)
        where, sha256, split = str(parsed.file), file_sha256(parsed.file), _split_from_name(parsed.file)
    else:
        rows, columns = _hub_rows(parsed)
        where, sha256, split = f"{parsed.dataset} (Hub)", None, parsed.split
    layout = _find_layout(bench, columns, where)
    texts, categories = [], []
    for number, row in rows:
        if layout.unsafe is not None and layout.unsafe(row) != (subset in HARMFUL_SUBSETS):
            continue
        text = layout.text(row)
        if not text.strip():
            raise ProbeError(f"{where}:{number}: expected a non-empty prompt ({layout.where}), found {text!r}")
        texts.append(text)
        categories.append((row.get(layout.category) or None) if layout.category else None)
    if not texts:
        kind = "unsafe" if subset in HARMFUL_SUBSETS else "safe"
        raise ProbeError(f"{where}: no probes found: expected {kind} prompts for the {subset} subset in the {layout.where}")
    origin = ProbeOrigin(source=spec, file=str(parsed.file) if parsed.file else None, sha256=sha256,
                         benchmark=bench.name, layout=layout.where, split=split, rows=len(texts),
                         dataset=parsed.dataset if parsed.file is None else None)
    return PromptRows(texts, [None] * len(texts), categories), origin


def _file_rows(path: Path) -> tuple[list[tuple[int, dict]], list[str]]:
    """Rows and columns of a benchmark file: a CSV's header, or every key a JSON(L) row has."""
    if not path.is_file():
        raise ProbeError(f"{path}: no such file: expected a benchmark file in its published layout")
    if path.suffix.lower() == ".csv":
        records = csv_records(path)
        _, header = next(records)
        return list(records), list(header)
    rows = read_rows(path)
    columns: dict[str, None] = {}
    for _, row in rows:
        columns.update(dict.fromkeys(row))
    return rows, list(columns)


def _find_layout(bench: Benchmark, columns: list[str], where: str) -> Layout:
    for layout in bench.layouts:
        if set(layout.columns) <= set(columns):
            return layout
    expected = " or ".join(f"{', '.join(layout.columns)} ({layout.where})" for layout in bench.layouts)
    raise ProbeError(f"{where}: not a {bench.title} file: expected columns {expected}, found columns {columns}")


def _split_from_name(path: Path) -> str:
    """HarmBench ships `_val` and `_test` files; anything else is the whole benchmark."""
    match = re.search(r"(?:^|[_\-.])(val|validation|test|train|dev)(?:[_\-.]|$)", path.stem.lower())
    return {"validation": "val"}.get(match.group(1), match.group(1)) if match else ALL_SPLITS


def hub_cache_dir() -> Path:
    from featuredrift.sae_store.registry import featuredrift_home

    return featuredrift_home() / "datasets"


def _hub_rows(parsed: BenchmarkSpec) -> tuple[list[tuple[int, dict]], list[str]]:
    from featuredrift.extras import require_extra

    require_extra("benchmarks", f"reading {parsed.spec} from the Hugging Face Hub", modules=("datasets",))
    try:
        from datasets import load_dataset

        dataset = load_dataset(parsed.dataset, parsed.config, split=parsed.split, cache_dir=str(hub_cache_dir()))
    except Exception as err:  # offline, unknown dataset, config or split
        raise ProbeError(
            f"{parsed.spec}: cannot load Hugging Face dataset {parsed.dataset!r} (config {parsed.config!r}, split "
            f"{parsed.split!r}): {type(err).__name__}: {err}; a local file in the benchmark's own layout works offline "
            f"({parsed.benchmark.name}:<file>)"
        ) from err
    columns = list(dataset.column_names)
    rows = [(number, {k: (v if isinstance(v, str) or v is None else str(v)) for k, v in row.items()})
            for number, row in enumerate(dataset, start=1)]
    return rows, columns
