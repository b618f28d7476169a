"""Probe sets: the fixed inputs every evaluation runs through the model.

A probe set holds harmful and harmless instructions (for the refusal direction and features),
base-like text and chat-like conversations (for FVU, drift and KL). Sources: `"default"` (the
project-written set shipped in `monitor/data/probes/`), a directory with the same files, one
CSV file with a `subset` column, or `"zoo:<size>"`. Single instruction lists load from JSONL,
CSV, plain text or a Hugging Face dataset (`hf:NAME:SPLIT:COLUMN`, only fetched when asked for).

Directory files, each `.jsonl` or `.csv` (same columns): `harmful` / `harmless` (rows
`{"instruction", "category", "split"}`; both required), `base_text` (`{"text"}`, optional) and
`chat_text.jsonl` (`{"messages": [...]}`, optional). A row without `split` belongs to every
split. A single CSV file holds rows `subset,instruction[,split]` with subset one of harmful,
harmless, base_text (the text column may also be called `text`).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from featuredrift.sources import named_source

HF_PREFIX = "hf:"
INSTRUCTION_FILES = ("harmful.jsonl", "harmless.jsonl")
TEXT_FILES = ("base_text.jsonl", "chat_text.jsonl")
TABLE_SUFFIXES = (".jsonl", ".csv")
CSV_SUBSETS = ("harmful", "harmless", "base_text")
ALL_SPLITS = "all"
CHAT_ROLES = ("system", "user", "assistant")


class ProbeError(ValueError):
    """An empty, malformed or missing probe file."""


@dataclass
class ProbeSet:
    harmful: list[str]
    harmless: list[str]
    base_text: list[str]
    chat_text: list[list[dict[str, str]]]
    source: str
    # Per instruction, its split label (None: in every split); empty when unknown.
    harmful_splits: list[str | None] = field(default_factory=list)
    harmless_splits: list[str | None] = field(default_factory=list)

    def limit(self, n: int | None) -> ProbeSet:
        """The first `n` items of every subset (None: unchanged)."""
        if n is None:
            return self
        if n < 1:
            raise ProbeError(f"limit: expected a positive number of probes per subset, found {n}")
        return replace(
            self,
            harmful=self.harmful[:n],
            harmless=self.harmless[:n],
            base_text=self.base_text[:n],
            chat_text=self.chat_text[:n],
            harmful_splits=self.harmful_splits[:n],
            harmless_splits=self.harmless_splits[:n],
        )

    def split(self, name: str) -> ProbeSet:
        """Only the instructions of one split (`"train"`, `"heldout"`, or `"all"`)."""
        if name == ALL_SPLITS:
            return self
        harmful, harmful_splits = _select_split(self.harmful, self.harmful_splits, name, f"{self.source}/harmful")
        harmless, harmless_splits = _select_split(self.harmless, self.harmless_splits, name, f"{self.source}/harmless")
        return replace(
            self, harmful=harmful, harmless=harmless, harmful_splits=harmful_splits, harmless_splits=harmless_splits
        )

    def splits(self) -> list[str]:
        return sorted({s for s in [*self.harmful_splits, *self.harmless_splits] if s is not None})


def _select_split(items: list[str], labels: list[str | None], name: str, where: str):
    if not labels:
        return items, labels
    kept = [(item, label) for item, label in zip(items, labels, strict=True) if label is None or label == name]
    if not kept:
        found = sorted({label for label in labels if label is not None})
        raise ProbeError(
            f"{where}: expected instructions in split {name!r}, found splits {found} "
            f"(choose one with probe_split= / FEATUREDRIFT_PROBE_SPLIT, or 'all')"
        )
    return [item for item, _ in kept], [label for _, label in kept]


# --- reading files ------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise ProbeError(f"{path}: missing probe file")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ProbeError(f"{path}:{number}: expected a JSON object, found invalid JSON ({err.msg})") from err
            if not isinstance(row, dict):
                raise ProbeError(f"{path}:{number}: expected a JSON object, found {type(row).__name__}")
            rows.append((number, row))
    return rows


def read_json_lines(path: Path | str) -> list[tuple[int, dict]]:
    """(line number, object) of every non-empty line of a JSONL file; an error names the line."""
    return _read_jsonl(Path(path))


def _read_csv_rows(path: Path) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise ProbeError(f"{path}: missing probe file")
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            raise ProbeError(f"{path}:1: expected a CSV header row, found an empty file")
        rows = [(reader.line_num, {k: v for k, v in row.items() if k is not None and v not in (None, "")}) for row in reader]
    return rows


def _read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) of a JSONL or CSV file; empty CSV cells count as absent."""
    return _read_csv_rows(path) if path.suffix.lower() == ".csv" else _read_jsonl(path)


def _string_field(row: dict, field_name: str, where: str) -> str:
    value = row.get(field_name)
    if not isinstance(value, str) or not value.strip():
        found = f"fields {sorted(row)}" if field_name not in row else f"{field_name}={value!r}"
        raise ProbeError(f"{where}: expected field {field_name!r} (a non-empty string), found {found}")
    return value


def _require_rows(rows: list, path: Path | str, what: str) -> None:
    if not rows:
        raise ProbeError(f"{path}: no probes found: expected {what}")


def read_instruction_file(path: Path | str, field_name: str = "instruction") -> tuple[list[str], list[str | None]]:
    """Instructions and their split labels from a JSONL or CSV file."""
    path = Path(path)
    rows = _read_rows(path)
    _require_rows(rows, path, f"one JSON object per line with field {field_name!r}")
    instructions, splits = [], []
    for number, row in rows:
        instructions.append(_string_field(row, field_name, f"{path}:{number}"))
        split = row.get("split")
        if split is not None and not isinstance(split, str):
            raise ProbeError(f"{path}:{number}: expected field 'split' to be a string, found {split!r}")
        splits.append(split)
    return instructions, splits


def read_text_file(path: Path | str) -> list[str]:
    path = Path(path)
    rows = _read_rows(path)
    _require_rows(rows, path, "one JSON object per line with field 'text'")
    return [_string_field(row, "text", f"{path}:{number}") for number, row in rows]


def read_conversation_file(path: Path | str) -> list[list[dict[str, str]]]:
    path = Path(path)
    rows = _read_jsonl(path)
    _require_rows(rows, path, "one JSON object per line with field 'messages'")
    conversations = []
    for number, row in rows:
        where = f"{path}:{number}"
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ProbeError(f"{where}: expected field 'messages' (a non-empty list of {{role, content}}), found fields {sorted(row)}")
        for index, message in enumerate(messages):
            ok = (
                isinstance(message, dict)
                and message.get("role") in CHAT_ROLES
                and isinstance(message.get("content"), str)
            )
            if not ok:
                raise ProbeError(
                    f"{where}: messages[{index}]: expected {{'role': one of {CHAT_ROLES}, 'content': str}}, found {message!r}"
                )
        conversations.append([{"role": m["role"], "content": m["content"]} for m in messages])
    return conversations


def _read_csv(path: Path, field_name: str) -> list[str]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or field_name not in reader.fieldnames:
            raise ProbeError(f"{path}:1: expected a CSV header with column {field_name!r}, found columns {reader.fieldnames or []}")
        values = []
        for row in reader:
            value = row.get(field_name)
            if value is None or not value.strip():
                raise ProbeError(f"{path}:{reader.line_num}: expected a non-empty {field_name!r}, found {value!r}")
            values.append(value)
    _require_rows(values, path, f"CSV rows with column {field_name!r}")
    return values


def _read_hf(spec: str) -> list[str]:
    parts = spec[len(HF_PREFIX):].split(":")
    if len(parts) != 3 or not all(parts):
        raise ProbeError(f"{spec}: expected 'hf:NAME:SPLIT:COLUMN', found {len(parts)} part(s)")
    name, split, column = parts
    from featuredrift.extras import require_extra

    require_extra("replicate", f"reading {spec}", modules=("datasets",))
    try:
        from datasets import load_dataset

        dataset = load_dataset(name, split=split)
    except Exception as err:  # offline, unknown dataset or split
        raise ProbeError(f"{spec}: cannot load Hugging Face dataset {name!r} split {split!r}: {type(err).__name__}: {err}") from err
    if column not in dataset.column_names:
        raise ProbeError(f"{spec}: expected column {column!r}, found columns {dataset.column_names}")
    values = [v for v in dataset[column] if isinstance(v, str) and v.strip()]
    _require_rows(values, spec, f"non-empty strings in column {column!r}")
    return values


def load_instructions(spec: str | Path, field: str = "instruction") -> list[str]:
    """One list of strings from `.jsonl` (rows with `field`), `.csv` (column `field`), plain text
    (one per non-empty line) or `hf:NAME:SPLIT:COLUMN`."""
    spec_text = str(spec)
    if spec_text.startswith(HF_PREFIX):
        return _read_hf(spec_text)
    path = Path(spec_text)
    if not path.is_file():
        raise ProbeError(f"{path}: no such file: expected a .jsonl, .csv or text file, or hf:NAME:SPLIT:COLUMN")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return read_instruction_file(path, field)[0]
    if suffix == ".csv":
        return _read_csv(path, field)
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    _require_rows(lines, path, "one instruction per non-empty line")
    return lines


# --- probe sets ---------------------------------------------------------------------------


def default_probe_dir() -> Path:
    return Path(str(resources.files("featuredrift.monitor.data.probes")))


def _find_table(directory: Path, stem: str) -> Path | None:
    """`<stem>.jsonl` or `<stem>.csv` in a probe directory (both present is ambiguous)."""
    found = [directory / f"{stem}{suffix}" for suffix in TABLE_SUFFIXES if (directory / f"{stem}{suffix}").is_file()]
    if len(found) > 1:
        raise ProbeError(f"{directory}: expected one of {stem}.jsonl or {stem}.csv, found both")
    return found[0] if found else None


def read_probe_dir(directory: Path | str, source: str | None = None) -> ProbeSet:
    """All files of a probe directory (JSONL or CSV), every split."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ProbeError(
            f"{directory}: expected a probe directory holding harmful and harmless (.jsonl or .csv), "
            "base_text and chat_text.jsonl, or a probe CSV file"
        )
    tables = {stem: _find_table(directory, stem) for stem in ("harmful", "harmless", "base_text")}
    for stem in ("harmful", "harmless"):
        if tables[stem] is None:
            raise ProbeError(f"{directory / (stem + '.jsonl')}: missing probe file: expected harmful and harmless (.jsonl or .csv)")
    harmful, harmful_splits = read_instruction_file(tables["harmful"])
    harmless, harmless_splits = read_instruction_file(tables["harmless"])
    chat_file = directory / "chat_text.jsonl"
    return ProbeSet(
        harmful=harmful,
        harmless=harmless,
        base_text=read_text_file(tables["base_text"]) if tables["base_text"] else [],
        chat_text=read_conversation_file(chat_file) if chat_file.is_file() else [],
        source=source or str(directory),
        harmful_splits=harmful_splits,
        harmless_splits=harmless_splits,
    )


def read_probe_csv(path: Path | str) -> ProbeSet:
    """One CSV file: rows `subset,instruction[,split]` (or a `text` column), subset one of
    harmful, harmless, base_text."""
    path = Path(path)
    collected: dict[str, list[tuple[str, str | None]]] = {name: [] for name in CSV_SUBSETS}
    rows = _read_csv_rows(path)
    _require_rows(rows, path, "CSV rows with columns subset and instruction (or text)")
    for number, row in rows:
        where = f"{path}:{number}"
        subset = row.get("subset")
        if subset not in collected:
            raise ProbeError(f"{where}: expected column 'subset' to be one of {CSV_SUBSETS}, found {subset!r}")
        column = "instruction" if "instruction" in row else "text"
        collected[subset].append((_string_field(row, column, where), row.get("split")))
    for subset in ("harmful", "harmless"):
        _require_rows(collected[subset], path, f"rows with subset={subset}")
    return ProbeSet(
        harmful=[text for text, _ in collected["harmful"]],
        harmless=[text for text, _ in collected["harmless"]],
        base_text=[text for text, _ in collected["base_text"]],
        chat_text=[],
        source=str(path),
        harmful_splits=[split for _, split in collected["harmful"]],
        harmless_splits=[split for _, split in collected["harmless"]],
    )


def load_probe_set(source: str, split: str = "heldout") -> ProbeSet:
    """`"default"`, `"zoo:<size>"`, a probe directory or a probe CSV file, restricted to `split`
    (`"all"`: every row)."""
    if source == "default":
        probes = read_probe_dir(default_probe_dir(), source="default")
    elif (named := named_source(source)) is not None:
        plugin, name = named
        try:
            directory = plugin.probes(name)
        except ValueError as err:
            raise ProbeError(f"probe source {source!r}: {err}") from err
        probes = read_probe_dir(directory, source=source)
    elif Path(source).suffix.lower() == ".csv" and Path(source).is_file():
        probes = read_probe_csv(source)
    else:
        probes = read_probe_dir(source)
    return probes.split(split)
