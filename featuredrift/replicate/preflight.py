"""Checks that need more than the config text, run before any stage starts: the models exist
and agree, every hookpoint is inside both models, the base SAE fits the model, the data specs
and the judge resolve. Reads configs and headers only (never weights). Returns the identities
(model locations and fingerprints of local files) that stage cache keys hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

from featuredrift.replicate.config import ConfigError, ReplicateConfig
from featuredrift.replicate.sources import ZOO_PARTS, is_local_path, split_slice, zoo_size


def model_shape(spec: str, field: str) -> tuple[int, int, int]:
    size = zoo_size(spec)
    if size is not None:
        from featuredrift.zoo.config import get_zoo_config

        try:
            zoo = get_zoo_config(size)
        except ValueError as error:
            raise ConfigError(f"{field}: {error}") from None
        return zoo.num_layers, zoo.hidden_size, zoo.vocab_size
    from transformers import AutoConfig

    if is_local_path(spec):
        path = Path(spec).expanduser()
        if not (path / "config.json").is_file():
            raise ConfigError(f"{field}: expected a model directory with config.json at {path}, found none")
        location = str(path)
    else:
        location = spec
    try:
        config = AutoConfig.from_pretrained(location)
    except Exception as error:  # Hub errors, malformed configs
        raise ConfigError(f"{field}: cannot read the model config of {spec!r}: {type(error).__name__}: {error}") from error
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.num_hidden_layers), int(text.hidden_size), int(getattr(text, "vocab_size", 0) or 0)


def identity(spec: str) -> str:
    """What a model or SAE spec resolves to, with a fingerprint of local config/weight files
    (names, sizes, modification times) so replacing a model invalidates cached stages."""
    if not is_local_path(spec) or spec.startswith("zoo:"):
        return spec
    path = Path(spec).expanduser().resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors", ".bin", ".model"))
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"{path}#{digest.hexdigest()[:16]}"


def _zoo_identity(spec: str) -> str:
    """The zoo records its build in a manifest; hash it when the zoo is already built."""
    try:
        from featuredrift.replicate.sources import zoo_paths

        root = Path(zoo_paths(zoo_size(spec)).root)
    except Exception:  # not built yet: the spec is the identity
        return spec
    manifest = root / "manifest.json" if (root / "manifest.json").is_file() else None
    return spec if manifest is None else f"{spec}#{hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]}"


def check_saes(config: ReplicateConfig, hidden: int) -> None:
    source = config.sae.base
    if source is None:
        return
    from featuredrift.sae_store.validate import SaeError, read_sae_config

    if source.startswith("zoo:"):
        from featuredrift.zoo.config import get_zoo_config

        zoo = get_zoo_config(zoo_size(source))
        available = {zoo.hookpoint: zoo.hidden_size}
    else:
        from featuredrift.sae_store.load import locate_sae_dirs

        try:
            dirs = locate_sae_dirs(source, config.hookpoints)
            available = {h: read_sae_config(p)["d_in"] for h, p in dirs.items()}
        except SaeError as error:
            raise ConfigError(f"sae.base: {error}") from error
    for hookpoint in config.hookpoints:
        if hookpoint in available and available[hookpoint] != hidden:
            raise ConfigError(
                f"sae.base: SAE for {hookpoint} has d_in={available[hookpoint]}, expected the models' hidden size {hidden}"
            )
    missing = [h for h in config.hookpoints if h not in available]
    if missing and not config.sae.train_missing:
        raise ConfigError(
            f"sae.base: source {source!r} has no SAE for {missing} (found {sorted(available)}) and sae.train_missing is false"
        )


def check_data(config: ReplicateConfig) -> None:
    for field_name, specs in config.data.model_dump().items():
        if not isinstance(specs, list):
            continue
        if not specs:
            raise ConfigError(f"data.{field_name}: expected at least one source, found none")
        for raw in specs:
            spec, _ = split_slice(raw)
            if spec.startswith("zoo:"):
                parts = spec.split(":")
                if len(parts) != 3 or parts[2] not in ZOO_PARTS:
                    raise ConfigError(f"data.{field_name}: expected 'zoo:<size>:<part>' with part in {ZOO_PARTS}, found {spec!r}")
            elif spec.startswith("hf:"):
                if len(spec.split(":")) != 4:
                    raise ConfigError(f"data.{field_name}: expected 'hf:NAME:SPLIT:COLUMN', found {spec!r}")
            elif not Path(spec).expanduser().is_file():
                raise ConfigError(f"data.{field_name}: expected an existing .jsonl/.txt file, found no file at {spec!r}")


def preflight(config: ReplicateConfig) -> dict:
    shapes = {role: model_shape(getattr(config, f"{role}_model"), f"{role}_model") for role in ("base", "chat")}
    (base_layers, base_hidden, base_vocab), (chat_layers, chat_hidden, chat_vocab) = shapes["base"], shapes["chat"]
    if (base_layers, base_hidden) != (chat_layers, chat_hidden):
        raise ConfigError(
            f"chat_model: expected the base model's shape ({base_layers} layers, hidden {base_hidden}), "
            f"found {chat_layers} layers, hidden {chat_hidden}"
        )
    if base_vocab and chat_vocab and abs(base_vocab - chat_vocab) > 256:
        raise ConfigError(f"chat_model: expected a vocabulary like the base model's ({base_vocab}), found {chat_vocab}")
    from featuredrift.lm.hookpoints import layer_index

    for hookpoint in config.hookpoints:
        if layer_index(hookpoint) >= base_layers:
            raise ConfigError(
                f"hookpoints: {hookpoint!r} is out of range: expected layers.0 … layers.{base_layers - 1} "
                f"({base_layers} decoder blocks in {config.base_model})"
            )
    check_saes(config, base_hidden)
    check_data(config)
    from featuredrift.monitor.judges import get_judge

    try:
        get_judge(config.interventions.judge)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(f"interventions.judge: {error}") from error

    def ident(spec: str) -> str:
        return _zoo_identity(spec) if spec.startswith("zoo:") else identity(spec)

    return {
        "base": ident(config.base_model),
        "chat": ident(config.chat_model),
        "sae": ident(config.sae.base) if config.sae.base else None,
        "shape": {"num_layers": base_layers, "hidden_size": base_hidden, "vocab_size": base_vocab},
    }
