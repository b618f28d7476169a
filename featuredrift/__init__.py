"""featuredrift: monitor how fine-tuning makes a model's sparse-autoencoder features drift.

The public API is imported lazily, so `import featuredrift` (and the CLI's `--help`) does not
import torch until a symbol that needs it is used::

    from featuredrift import FeatureDriftCallback, MonitorConfig

    trainer.add_callback(FeatureDriftCallback(MonitorConfig(sae="path/to/sae", hookpoints=["layers.12"])))

The product's parts are subpackages, layered from the science core up (pyproject.toml's
import-linter contract keeps every import pointing down): `lm` (reading a causal LM),
`sae_store` (SAEs), `monitor` (probes, metrics, refusal analysis, the DriftMonitor), `store`
and `exporters`, `alerts`, `reports` and `dashboards`, `callbacks` (the Trainer callback and
the checkpoint watcher), `zoo` (the embedded models and the demo), `replicate`, `bench`, `cli`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_EXPORTS = {
    "FeatureDriftCallback": "featuredrift.callbacks.feature_drift",
    "DriftMonitor": "featuredrift.monitor.drift_monitor",
    "MonitorError": "featuredrift.monitor.drift_monitor",
    "MonitorConfig": "featuredrift.monitor.config",
    "EvaluationReport": "featuredrift.monitor.report",
    "LayerReport": "featuredrift.monitor.report",
    "load_sae": "featuredrift.sae_store.load",
    "load_saes": "featuredrift.sae_store.load",
    "SaeError": "featuredrift.sae_store.validate",
    "load_probe_set": "featuredrift.monitor.probes",
    "ProbeSet": "featuredrift.monitor.probes",
    "RunStore": "featuredrift.store.run_store",
}
__all__ = [
    "DriftMonitor",
    "EvaluationReport",
    "FeatureDriftCallback",
    "LayerReport",
    "MonitorConfig",
    "MonitorError",
    "ProbeSet",
    "RunStore",
    "SaeError",
    "__version__",
    "load_probe_set",
    "load_sae",
    "load_saes",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these load on first use
    from featuredrift.callbacks.feature_drift import FeatureDriftCallback
    from featuredrift.monitor.config import MonitorConfig
    from featuredrift.monitor.drift_monitor import DriftMonitor, MonitorError
    from featuredrift.monitor.probes import ProbeSet, load_probe_set
    from featuredrift.monitor.report import EvaluationReport, LayerReport
    from featuredrift.sae_store.load import load_sae, load_saes
    from featuredrift.sae_store.validate import SaeError
    from featuredrift.store.run_store import RunStore


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'featuredrift' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
