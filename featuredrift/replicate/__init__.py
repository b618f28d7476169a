"""Batch replication of the Feature Drift paper (and the diff-SAE post) for any model pair:
staged, cached, resumable; see `pipeline.run_replication` and presets/README.md."""

from featuredrift.replicate.config import STAGES, ConfigError, ReplicateConfig, load_config

__all__ = ["STAGES", "ConfigError", "ReplicateConfig", "load_config"]
