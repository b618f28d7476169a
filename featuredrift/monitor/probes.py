"""Probe sets: the fixed inputs every evaluation runs through the model.

A probe set holds harmful and harmless instructions (for the refusal direction and features),
optionally borderline ones (safe requests that look unsafe: over-refusal), base-like text and
chat-like conversations (for FVU, drift and KL). Sources: `"default"` (the project-written set
shipped in `monitor/data/probes/`), a directory with the same files, one CSV file with a
`subset` column, or `"zoo:<size>"`; `monitor.probe_sources` composes such a set with benchmark
files. Single instruction lists load from JSONL, JSON, CSV, plain text or a Hugging Face
dataset (`hf:NAME:SPLIT:COLUMN`, only fetched when asked for).

Directory files, each `.jsonl` or `.csv` (same columns): `harmful` / `harmless` (rows
`{"instruction", "category", "split"}`; both required), `borderline` (same rows, optional),
`base_text` (`{"text"}`, optional) and `chat_text.jsonl` (`{"messages": [...]}`, optional). A
row without `split` belongs to every split. A single CSV file holds rows
`subset,instruction[,category][,split]` with subset one of harmful, harmless, borderline,
base_text (the text column may also be called `text`).

Every CSV error (a malformed row, a field over `csv.field_size_limit`, a NUL byte, bytes that
are not UTF-8) names the file and the line.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from featuredrift.sources import named_source

HF_PREFIX = "hf:"
INSTRUCTION_FILES = ("harmful.jsonl", "harmless.jsonl")
TEXT_FILES = ("base_text.jsonl", "chat_text.jsonl")
TABLE_SUFFIXES = (".jsonl", ".csv")
PROMPT_SUBSETS = ("harmful", "harmless", "borderline")  # instructions read at the prompt's last token
REQUIRED_PROMPT_SUBSETS = ("harmful", "harmless")  # the refusal direction needs both
CSV_SUBSETS = (*PROMPT_SUBSETS, "base_text")
TEXT_COLUMNS = ("instruction", "prompt", "text")  # what a plain instruction table's text column may be called
ALL_SPLITS = "all"
CHAT_ROLES = ("system", "user", "assistant")


class ProbeError(ValueError):
    """An empty, malformed or missing probe file."""


@dataclass(frozen=True)
class ProbeOrigin:
    """Where one probe subset came from: recorded with the run and shown by `probes inspect`."""

    source: str  # the spec as given (`harmbench:/data/harmbench_behaviors_text_val.csv`)
    file: str | None = None  # the file read (None for the Hub or a shipped set)
    sha256: str | None = None  # of that file's bytes
    benchmark: str | None = None  # harmbench | advbench | strongreject | xstest (None: a plain probe file)
    layout: str | None = None  # which column layout was found
    split: str = ALL_SPLITS  # the benchmark's split (HarmBench val/test, a Hub split), or the probe split
    rows: int = 0  # prompts read for this subset, before the bound on probes per subset
    dataset: str | None = None  # Hub dataset id when loaded through `datasets`

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


class PromptRows(NamedTuple):
    """One prompt subset as read: texts with, per text, its split label and category (None: none)."""

    texts: list[str]
    splits: list[str | None]
    categories: list[str | None]


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
    # Safe requests that look unsafe (XSTest-style): their refusal rate is over-refusal. Empty: none.
    borderline: list[str] = field(default_factory=list)
    borderline_splits: list[str | None] = field(default_factory=list)
    # Prompt subset → per instruction, its category (HarmBench semantic category, XSTest type, …).
    categories: dict[str, list[str | None]] = field(default_factory=dict)
    # Subset → where it came from (benchmark, file and its sha256, split); absent: `source`.
    origins: dict[str, ProbeOrigin] = field(default_factory=dict)

    def prompt_subsets(self) -> list[str]:
        """The prompt subsets this set evaluates: harmful, harmless and, when present, borderline."""
        return [s for s in PROMPT_SUBSETS if s in REQUIRED_PROMPT_SUBSETS or getattr(self, s)]

    def subset_rows(self, subset: str) -> PromptRows:
        texts = list(getattr(self, subset))
        splits = list(getattr(self, f"{subset}_splits")) or [None] * len(texts)
        categories = list(self.categories.get(subset) or []) or [None] * len(texts)
        return PromptRows(texts, splits, categories)

    def with_subset(self, subset: str, rows: PromptRows, origin: ProbeOrigin | None = None) -> ProbeSet:
        """This set with one prompt subset replaced (or, for borderline, added)."""
        categories = {**self.categories, subset: list(rows.categories)}
        if not any(c is not None for c in rows.categories):
            categories.pop(subset)
        origins = {**self.origins, subset: origin} if origin is not None else self.origins
        return replace(self, **{subset: list(rows.texts), f"{subset}_splits": list(rows.splits)},
                       categories=categories, origins=origins)

    def limit(self, n: int | None) -> ProbeSet:
        """The first `n` items of every subset (None: unchanged)."""
        if n is None:
            return self
        if n < 1:
            raise ProbeError(f"limit: expected a positive number of probes per subset, found {n}")
        prompts = {s: PromptRows(*(column[:n] for column in self.subset_rows(s))) for s in PROMPT_SUBSETS}
        limited = replace(self, base_text=self.base_text[:n], chat_text=self.chat_text[:n])
        for subset, rows in prompts.items():
            limited = limited.with_subset(subset, rows, self.origins.get(subset))
        return limited

    def sizes(self) -> dict[str, int]:
        """Items per subset (prompt subsets, base_text, chat_text)."""
        return {**{s: len(getattr(self, s)) for s in PROMPT_SUBSETS}, "base_text": len(self.base_text),
                "chat_text": len(self.chat_text)}

    def split(self, name: str) -> ProbeSet:
        """Only the instructions of one split (`"train"`, `"heldout"`, or `"all"`)."""
        if name == ALL_SPLITS:
            return self
        selected = self
        for subset in PROMPT_SUBSETS:
            if not getattr(self, subset) or not getattr(self, f"{subset}_splits"):
                continue
            rows = select_split(self.subset_rows(subset), name, f"{self.origin_of(subset)}/{subset}")
            selected = selected.with_subset(subset, rows, self.origins.get(subset))
        return selected

    def splits(self) -> list[str]:
        labels = [s for subset in PROMPT_SUBSETS for s in getattr(self, f"{subset}_splits")]
        return sorted({s for s in labels if s is not None})

    def origin_of(self, subset: str) -> str:
        origin = self.origins.get(subset)
        return origin.source if origin is not None else self.source


def select_split(rows: PromptRows, name: str, where: str) -> PromptRows:
    kept = [row for row in zip(*rows, strict=True) if row[1] is None or row[1] == name]
    if not kept:
        found = sorted({label for label in rows.splits if label is not None})
        raise ProbeError(
            f"{where}: expected instructions in split {name!r}, found splits {found} "
            f"(choose one with probe_split= / FEATUREDRIFT_PROBE_SPLIT, or 'all')"
        )
    return PromptRows(*(list(column) for column in zip(*kept, strict=True)))


# --- reading files ------------------------------------------------------------------------


def rows_fingerprint(rows: PromptRows | list[str]) -> str:
    """sha256 of a subset's texts (and categories) in order: equal when the probes are equal,
    whichever file or layout they were read from."""
    texts, categories = (rows.texts, rows.categories) if isinstance(rows, PromptRows) else (rows, [])
    return hashlib.sha256(json.dumps([texts, categories], ensure_ascii=False).encode()).hexdigest()


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise ProbeError(f"{path}: missing probe file")


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    _require_file(path)
    rows = []
    with open(path, encoding="utf-8") as handle:
        try:
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
        except UnicodeDecodeError as err:
            raise ProbeError(f"{path}:{len(rows) + 1}: expected UTF-8 text, found bytes that are not ({err.reason})") from err
    return rows


def _read_json_array(path: Path) -> list[tuple[int, dict]]:
    """A `.json` file holding one array of objects; the "line" is the item's position (1-based)."""
    _require_file(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ProbeError(f"{path}: expected a JSON array of objects, found unreadable JSON ({err})") from err
    if not isinstance(data, list):
        raise ProbeError(f"{path}: expected a JSON array of objects, found a {type(data).__name__}")
    for number, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise ProbeError(f"{path}:{number}: expected a JSON object in the array, found {type(row).__name__}")
    return list(enumerate(data, start=1))


def csv_records(path: Path) -> Iterator[tuple[int, dict[str, str | None]]]:
    """(line number, row) of a CSV file with a header, every csv and decoding error naming the file
    and line. The header is the first `(0, {column: column})` item, so callers see columns first."""
    _require_file(path)
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header: list[str] | None = None
        try:
            for values in reader:
                if header is None:
                    if not values:
                        continue
                    header = [v.strip() for v in values]
                    yield 0, {name: name for name in header}
                    continue
                if not values:  # a blank line, as csv.DictReader skips it
                    continue
                row: dict[str, str | None] = dict.fromkeys(header)
                row.update({k: v for k, v in zip(header, values, strict=False)})
                yield reader.line_num, row
        except csv.Error as err:
            limit = csv.field_size_limit()
            if "field larger than field limit" in str(err):
                raise ProbeError(
                    f"{path}:{reader.line_num}: expected CSV fields of at most {limit:,} characters (Python's "
                    f"csv.field_size_limit), found a longer one; probe texts are cut to max_length tokens anyway, "
                    "so shorten that field"
                ) from err
            raise ProbeError(f"{path}:{reader.line_num}: expected a well-formed CSV row, found one the csv "
                             f"reader rejects ({err})") from err
        except UnicodeDecodeError as err:
            raise ProbeError(f"{path}:{reader.line_num + 1}: expected UTF-8 text, found bytes that are not "
                             f"({err.reason} at byte {err.start} of the chunk read)") from err
    if header is None:
        raise ProbeError(f"{path}:1: expected a CSV header row, found an empty file")
def read_json_lines(path: Path | str) -> list[tuple[int, dict]]:
    """(line number, object) of every non-empty line of a JSONL file; an error names the line."""
    return _read_jsonl(Path(path))


def _read_csv_rows(path: Path) -> list[tuple[int, dict]]:
    """Rows of a CSV file (header first skipped); empty cells count as absent."""
    rows = [(n, {k: v for k, v in row.items() if v not in (None, "")}) for n, row in csv_records(path) if n]
    return rows


def read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) of a JSONL, JSON (array) or CSV file; empty CSV cells count as absent."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv_rows(path)
    if suffix == ".json":
        return _read_json_array(path)
    return _read_jsonl(path)


def _string_field(row: dict, field_name: str, where: str) -> str:
    value = row.get(field_name)
    if not isinstance(value, str) or not value.strip():
        found = f"fields {sorted(row)}" if field_name not in row else f"{field_name}={value!r}"
        raise ProbeError(f"{where}: expected field {field_name!r} (a non-empty string), found {found}")
    return value


def _optional_string(row: dict, field_name: str, where: str) -> str | None:
    value = row.get(field_name)
    if value is not None and not isinstance(value, str):
        raise ProbeError(f"{where}: expected field {field_name!r} to be a string, found {value!r}")
    return value or None


def _require_rows(rows: list, path: Path | str, what: str) -> None:
    if not rows:
        raise ProbeError(f"{path}: no probes found: expected {what}")


def read_prompt_file(path: Path | str, field_name: str | None = "instruction") -> PromptRows:
    """Instructions with their split labels and categories from a JSONL, JSON or CSV file.
    `field_name=None` takes the first of `instruction`, `prompt`, `text` the file has."""
    path = Path(path)
    rows = read_rows(path)
    wanted = field_name or "instruction"
    _require_rows(rows, path, f"one JSON object per line with field {wanted!r}")
    if field_name is None:
        columns = {key for _, row in rows for key in row}
        field_name = next((c for c in TEXT_COLUMNS if c in columns), TEXT_COLUMNS[0])
    texts, splits, categories = [], [], []
    for number, row in rows:
        where = f"{path}:{number}"
        texts.append(_string_field(row, field_name, where))
        splits.append(_optional_string(row, "split", where))
        categories.append(_optional_string(row, "category", where))
    return PromptRows(texts, splits, categories)


def read_instruction_file(path: Path | str, field_name: str = "instruction") -> tuple[list[str], list[str | None]]:
    """Instructions and their split labels from a JSONL or CSV file."""
    rows = read_prompt_file(path, field_name)
    return rows.texts, rows.splits


def read_text_file(path: Path | str) -> list[str]:
    path = Path(path)
    rows = read_rows(path)
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
    values = []
    for number, row in csv_records(path):
        if number == 0:
            if field_name not in row:
                raise ProbeError(f"{path}:1: expected a CSV header with column {field_name!r}, found columns {list(row)}")
            continue
        value = row.get(field_name)
        if value is None or not value.strip():
            raise ProbeError(f"{path}:{number}: expected a non-empty {field_name!r}, found {value!r}")
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
    """One list of strings from `.jsonl`/`.json` (rows with `field`), `.csv` (column `field`),
    plain text (one per non-empty line) or `hf:NAME:SPLIT:COLUMN`."""
    spec_text = str(spec)
    if spec_text.startswith(HF_PREFIX):
        return _read_hf(spec_text)
    path = Path(spec_text)
    if not path.is_file():
        raise ProbeError(f"{path}: no such file: expected a .jsonl, .json, .csv or text file, or hf:NAME:SPLIT:COLUMN")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return read_prompt_file(path, field).texts
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
    tables = {stem: _find_table(directory, stem) for stem in (*PROMPT_SUBSETS, "base_text")}
    for stem in REQUIRED_PROMPT_SUBSETS:
        if tables[stem] is None:
            raise ProbeError(f"{directory / (stem + '.jsonl')}: missing probe file: expected harmful and harmless (.jsonl or .csv)")
    chat_file = directory / "chat_text.jsonl"
    probes = ProbeSet(
        harmful=[], harmless=[],
        base_text=read_text_file(tables["base_text"]) if tables["base_text"] else [],
        chat_text=read_conversation_file(chat_file) if chat_file.is_file() else [],
        source=source or str(directory),
    )
    for subset in PROMPT_SUBSETS:
        if tables[subset] is not None:
            probes = probes.with_subset(subset, read_prompt_file(tables[subset]))
    return probes


def read_probe_csv(path: Path | str) -> ProbeSet:
    """One CSV file: rows `subset,instruction[,category][,split]` (or a `text` column), subset one
    of harmful, harmless, borderline, base_text."""
    path = Path(path)
    collected: dict[str, list[tuple[str, str | None, str | None]]] = {name: [] for name in CSV_SUBSETS}
    rows = _read_csv_rows(path)
    _require_rows(rows, path, "CSV rows with columns subset and instruction (or text)")
    for number, row in rows:
        where = f"{path}:{number}"
        subset = row.get("subset")
        if subset not in collected:
            raise ProbeError(f"{where}: expected column 'subset' to be one of {CSV_SUBSETS}, found {subset!r}")
        column = "instruction" if "instruction" in row else "text"
        collected[subset].append((_string_field(row, column, where), row.get("split"), row.get("category")))
    for subset in REQUIRED_PROMPT_SUBSETS:
        _require_rows(collected[subset], path, f"rows with subset={subset}")
    probes = ProbeSet(harmful=[], harmless=[], base_text=[text for text, _, _ in collected["base_text"]],
                      chat_text=[], source=str(path))
    for subset in PROMPT_SUBSETS:
        if collected[subset]:
            texts, splits, categories = (list(column) for column in zip(*collected[subset], strict=True))
            probes = probes.with_subset(subset, PromptRows(texts, splits, categories))
    return probes


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
