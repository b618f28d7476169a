"""What every stage shares during one replication: the config, the output folder, the device,
lazily loaded models and data, results of earlier stages, and the progress display."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featuredrift.replicate.config import ReplicateConfig
from featuredrift.replicate.sources import (
    instructions_of,
    load_items,
    load_model_and_tokenizer,
    render_texts,
)


@dataclass
class RunContext:
    config: ReplicateConfig
    out: Path
    progress: Any = None  # rich.progress.Progress or None
    results: dict[str, dict] = field(default_factory=dict)  # stage → its result
    stage_dirs: dict[str, Path] = field(default_factory=dict)
    _models: dict[str, tuple] = field(default_factory=dict)

    @property
    def device(self) -> str:
        import torch

        return self.config.device or ("cuda" if torch.cuda.is_available() else "cpu")

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.config.dtype)

    def model(self, role: str):
        """(model, tokenizer) for role 'base' or 'chat', loaded once."""
        if role not in self._models:
            spec = self.config.base_model if role == "base" else self.config.chat_model
            self._models[role] = load_model_and_tokenizer(spec, role, device=self.device, dtype=self.config.dtype)
        return self._models[role]

    @property
    def tokenizer(self):
        """The chat model's tokenizer: renders conversations and tokenizes text for both models."""
        return self.model("chat")[1]

    def _items(self, field_name: str, limit: int):
        data = self.config.data
        return load_items(getattr(data, field_name), field_name, limit, data.split_of(field_name))

    def texts(self, field_name: str, limit: int) -> tuple[list[str], bool]:
        """Rendered texts of a data field and whether they already hold special tokens."""
        items = self._items(field_name, limit)
        return render_texts(items, self.tokenizer)

    def conversations(self, field_name: str, limit: int) -> list | None:
        """The conversations behind a data field's rendered texts (None for plain texts), so
        captures read only message contents, as the live monitor does."""
        items = self._items(field_name, limit)
        return None if all(isinstance(i, str) for i in items) else [i if not isinstance(i, str) else [] for i in items]

    def instructions(self, field_name: str, limit: int) -> list[str]:
        items = self._items(field_name, limit)
        return instructions_of(items, field_name)

    def prompts(self, spec: str, limit: int) -> list[str]:
        """Instructions from a data field name (its sources and split) or from a source spec."""
        from featuredrift.replicate.config import SOURCE_FIELDS

        if spec in SOURCE_FIELDS:
            return self.instructions(spec, limit)
        return instructions_of(load_items([spec], spec, limit), spec)

    def track(self, iterable, description: str, total: int | None = None):
        """Iterate with a progress bar when a display is attached."""
        if self.progress is None:
            yield from iterable
            return
        task = self.progress.add_task(description, total=total)
        try:
            for item in iterable:
                yield item
                self.progress.advance(task)
        finally:
            self.progress.remove_task(task)
