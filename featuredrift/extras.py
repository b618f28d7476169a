"""Optional dependencies: which extra brings which module, and a one-line error when it is missing.

The core (callback, monitor, SQLite store, Prometheus) needs none of these; each entry point
that does calls `require_extra` first, so a user sees `pip install 'featuredrift[demo]'`
instead of a traceback from deep inside a build.
"""

from __future__ import annotations

import importlib.util

EXTRAS: dict[str, tuple[str, ...]] = {
    "demo": ("trl", "peft", "datasets"),
    "replicate": ("datasets", "matplotlib"),
    "report": ("matplotlib",),
    "grafana": ("grafana_client",),
    "postgres": ("psycopg",),
    "saelens": ("sae_lens",),
    "benchmarks": ("datasets",),
}


class MissingExtraError(ImportError):
    """An optional dependency of featuredrift is not installed."""


def require_extra(extra: str, purpose: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise MissingExtraError naming the `pip install` to run when `extra`'s modules are absent."""
    wanted = modules if modules is not None else EXTRAS[extra]
    missing = [name for name in wanted if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError(
            f"{purpose} needs {', '.join(missing)}, which is not installed: pip install 'featuredrift[{extra}]'"
        )
