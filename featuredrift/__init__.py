"""featuredrift: monitor how fine-tuning makes a model's sparse-autoencoder features drift.

The public API is imported lazily, so `import featuredrift` (and the CLI's `--help`) does not
import torch until a symbol that needs it is used::

    from featuredrift import FeatureDriftCallback, MonitorConfig

    trainer.add_callback(FeatureDriftCallback(MonitorConfig(sae="path/to/sae", hookpoints=["layers.12"])))

The product's parts are subpackages: `featuredrift.monitor` (probes, capture, metrics, the
DriftMonitor, exporters, the run store, replication, the zoo, the CLI), `featuredrift.callbacks`
(the Trainer callback), `featuredrift.sae_store` (SAE loading and training) and
`featuredrift.alerts` (alert definitions and the in-process engine).
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
    "RunStore": "featuredrift.monitor.store.run_store",
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
    from featuredrift.monitor.store.run_store import RunStore
    from featuredrift.sae_store.load import load_sae, load_saes
    from featuredrift.sae_store.validate import SaeError


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'featuredrift' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
